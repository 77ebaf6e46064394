//! Parsing one rule specification (the words after `-A CHAIN`) into a typed [`Rule`].
//!
//! As in iptables, options are global: a module's options may follow other options, and
//! `--dport` after `-p tcp` loads the `tcp` module implicitly. Each `--option` is given to the most
//! recently loaded extension that knows it. Anything not understood is kept verbatim in
//! `Rule::unknown`, grouped with the `-m MODULE` it belongs to. Packet counters (`-c P B`) are
//! ignored: they are not part of a rule's meaning.

use thiserror::Error;

use super::extensions::{
    Opt, build_match, build_target, is_known_module, is_target_extension, is_typed_target,
    match_option_arity, target_option_arity,
};
use super::matches::{Match, canonical_sort};
use super::model::Rule;
use super::target::Target;
use super::values::{ValueError, normalise_protocol, parse_net};
use super::words::{Word, quote_arg};

/// Errors in a rule specification.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    /// An option that needs arguments was the last word. Not retryable: the rule is malformed.
    #[error("option `{0}` needs an argument")]
    MissingArgument(String),
    /// `!` at the end of the rule. Not retryable: the rule is malformed.
    #[error("`!` must be followed by an option")]
    DanglingBang,
    /// `!` before an option that cannot be negated (`-m`, `-j`, `-g`). Not retryable.
    #[error("`{0}` cannot be negated")]
    BadNegation(String),
    /// Two `-j`/`-g` in one rule. Not retryable: iptables rejects it too.
    #[error("more than one target (-j/-g) in one rule")]
    MultipleTargets,
    /// A value iptables would refuse. Not retryable: the rule is malformed.
    #[error(transparent)]
    Value(#[from] ValueError),
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Module,
    Target,
}

#[derive(Debug)]
struct Instance {
    kind: Kind,
    name: String,
    opts: Vec<Opt>,
}

impl Instance {
    fn arity(&self, opt: &str) -> Option<usize> {
        match self.kind {
            Kind::Module => match_option_arity(&self.name, opt),
            Kind::Target => target_option_arity(&self.name, opt),
        }
    }

    /// Unknown extensions accept any option.
    fn is_unknown(&self) -> bool {
        match self.kind {
            Kind::Module => !is_known_module(&self.name),
            Kind::Target => !is_typed_target(&self.name),
        }
    }
}

const PORT_OPTIONS: [&str; 4] = ["--dport", "--sport", "--destination-port", "--source-port"];

struct Cursor<'a> {
    words: &'a [Word],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn next(&mut self) -> Option<&'a Word> {
        let w = self.words.get(self.pos)?;
        self.pos += 1;
        Some(w)
    }

    fn peek(&self) -> Option<&'a Word> {
        self.words.get(self.pos)
    }

    fn args(&mut self, option: &str, n: usize) -> Result<Vec<String>, RuleError> {
        (0..n)
            .map(|_| {
                self.next()
                    .map(|w| w.text.clone())
                    .ok_or_else(|| RuleError::MissingArgument(option.to_string()))
            })
            .collect()
    }

    fn arg(&mut self, option: &str) -> Result<String, RuleError> {
        self.next()
            .map(|w| w.text.clone())
            .ok_or_else(|| RuleError::MissingArgument(option.to_string()))
    }

    /// Arguments of an option whose arity is unknown: the following non-option words.
    fn greedy(&mut self) -> Vec<String> {
        let mut args = Vec::new();
        while let Some(w) = self.peek() {
            if w.is_option() || w.is_bang() {
                break;
            }
            args.push(w.text.clone());
            self.pos += 1;
        }
        args
    }
}

#[derive(Default)]
struct Collected {
    matches: Vec<Match>,
    unknown: Vec<String>,
    instances: Vec<Instance>,
    target: Option<(String, bool, Option<usize>)>,
    protocol: Option<String>,
}

/// Parses the words of a rule specification. `line` and `text` are recorded in the rule.
pub fn parse_rule(words: &[Word], line: usize, text: String) -> Result<Rule, RuleError> {
    let mut cur = Cursor { words, pos: 0 };
    let mut c = Collected::default();
    while let Some(first) = cur.next() {
        let (negated, word) = if first.is_bang() {
            (true, cur.next().ok_or(RuleError::DanglingBang)?)
        } else {
            (false, first)
        };
        if word.quoted {
            c.unknown.push(render(negated, &word.text, &[]));
            continue;
        }
        top_level(&mut cur, &mut c, negated, &word.text)?;
    }
    finish(c, line, text)
}

fn top_level(
    cur: &mut Cursor<'_>,
    c: &mut Collected,
    negated: bool,
    word: &str,
) -> Result<(), RuleError> {
    match word {
        "-p" | "--protocol" => {
            let name = normalise_protocol(&cur.arg(word)?);
            if !negated {
                c.protocol = Some(name.clone());
            }
            // `-p all` is a no-op, and iptables-save leaves it out.
            if negated || name != "all" {
                c.matches.push(Match::Protocol { negated, name });
            }
        }
        "-s" | "--source" | "--src" => {
            let net = parse_net(&cur.arg(word)?)?;
            c.matches.push(Match::Source { negated, net });
        }
        "-d" | "--destination" | "--dst" => {
            let net = parse_net(&cur.arg(word)?)?;
            c.matches.push(Match::Destination { negated, net });
        }
        "-i" | "--in-interface" => {
            let name = cur.arg(word)?;
            c.matches.push(Match::InInterface { negated, name });
        }
        "-o" | "--out-interface" => {
            let name = cur.arg(word)?;
            c.matches.push(Match::OutInterface { negated, name });
        }
        "-m" | "--match" => {
            if negated {
                return Err(RuleError::BadNegation(word.to_string()));
            }
            let name = cur.arg(word)?;
            c.instances.push(Instance {
                kind: Kind::Module,
                name,
                opts: Vec::new(),
            });
        }
        "-j" | "--jump" | "-g" | "--goto" => {
            if negated {
                return Err(RuleError::BadNegation(word.to_string()));
            }
            if c.target.is_some() {
                return Err(RuleError::MultipleTargets);
            }
            let name = cur.arg(word)?;
            let goto = matches!(word, "-g" | "--goto");
            let mut index = None;
            if !goto && is_target_extension(&name) {
                index = Some(c.instances.len());
                c.instances.push(Instance {
                    kind: Kind::Target,
                    name: name.clone(),
                    opts: Vec::new(),
                });
            }
            c.target = Some((name, goto, index));
        }
        "-c" | "--set-counters" => {
            cur.args(word, 2)?;
        }
        w if w.starts_with("--") => extension_option(cur, c, negated, w)?,
        w => {
            let args = cur.greedy();
            c.unknown.push(render(negated, w, &args));
        }
    }
    Ok(())
}

/// Gives `--option` to the extension that owns it.
fn extension_option(
    cur: &mut Cursor<'_>,
    c: &mut Collected,
    negated: bool,
    name: &str,
) -> Result<(), RuleError> {
    let owner = c
        .instances
        .iter()
        .rposition(|i| i.arity(name).is_some())
        .or_else(|| implicit_port_module(c, name));
    let (index, args) = match owner {
        Some(index) => {
            let n = c.instances[index].arity(name).unwrap_or(0);
            (Some(index), cur.args(name, n)?)
        }
        None => {
            let fallback = c
                .instances
                .iter()
                .rposition(Instance::is_unknown)
                .or_else(|| c.instances.len().checked_sub(1));
            (fallback, cur.greedy())
        }
    };
    let opt = Opt {
        negated,
        name: name.to_string(),
        args,
    };
    match index {
        Some(i) => c.instances[i].opts.push(opt),
        None => c.unknown.push(opt.words().join(" ")),
    }
    Ok(())
}

/// `--dport` after `-p tcp` without `-m tcp` loads the protocol's module implicitly.
fn implicit_port_module(c: &mut Collected, name: &str) -> Option<usize> {
    if !PORT_OPTIONS.contains(&name) {
        return None;
    }
    let protocol = c.protocol.clone()?;
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    if let Some(i) = c
        .instances
        .iter()
        .rposition(|i| i.kind == Kind::Module && i.name == protocol)
    {
        return Some(i);
    }
    c.instances.push(Instance {
        kind: Kind::Module,
        name: protocol,
        opts: Vec::new(),
    });
    Some(c.instances.len() - 1)
}

fn finish(mut c: Collected, line: usize, text: String) -> Result<Rule, RuleError> {
    let mut target = Target::None;
    let target_index = c.target.as_ref().and_then(|t| t.2);
    for (index, inst) in c.instances.iter().enumerate() {
        if Some(index) == target_index {
            target = build_target(&inst.name, &inst.opts)?;
            continue;
        }
        if inst.kind == Kind::Target {
            continue;
        }
        let built = build_match(&inst.name, &inst.opts)?;
        c.matches.extend(built.matches);
        if !built.leftover.is_empty() || !is_known_module(&inst.name) {
            let mut words = vec!["-m".to_string(), inst.name.clone()];
            words.extend(built.leftover.iter().flat_map(Opt::words));
            c.unknown.push(join_words(&words));
        }
    }
    if let Some((name, goto, None)) = c.target {
        target = if goto {
            Target::Goto(name)
        } else {
            Target::Jump(name)
        };
    }
    canonical_sort(&mut c.matches);
    Ok(Rule {
        line,
        text,
        matches: c.matches,
        target,
        unknown: c.unknown,
    })
}

fn render(negated: bool, word: &str, args: &[String]) -> String {
    let mut words = Vec::with_capacity(args.len() + 2);
    if negated {
        words.push("!".to_string());
    }
    words.push(word.to_string());
    words.extend(args.iter().cloned());
    join_words(&words)
}

fn join_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| quote_arg(w))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::matches::{PortRange, StatisticMode};
    use crate::dump::words::split;

    fn parse(spec: &str) -> Rule {
        let words = split(spec).expect("tokenize");
        parse_rule(&words, 1, spec.to_string()).expect("parse")
    }

    fn parse_err(spec: &str) -> RuleError {
        let words = split(spec).expect("tokenize");
        match parse_rule(&words, 1, spec.to_string()) {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn knat_and_save_spellings_are_equal() {
        let knat = parse(
            r#"-m comment --comment "ns/svc:p cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-X"#,
        );
        let saved = parse(
            r#"-d 172.30.0.41/32 -p tcp -m comment --comment "ns/svc:p cluster IP" -m tcp --dport 80 -j KUBE-SVC-X"#,
        );
        assert_eq!(knat, saved);
        assert_eq!(knat.matches, saved.matches);
        assert!(knat.unknown.is_empty());
        assert_eq!(knat.target, Target::Jump("KUBE-SVC-X".into()));
        assert_eq!(
            knat.canonical(),
            r#"-d 172.30.0.41/32 -p tcp -m comment --comment "ns/svc:p cluster IP" -m tcp --dport 80 -j KUBE-SVC-X"#
        );
    }

    #[test]
    fn implicit_port_module() {
        let r = parse("-p udp --dport 53 -j ACCEPT");
        assert!(r.matches.contains(&Match::DestinationPort {
            negated: false,
            ports: PortRange::single(53)
        }));
        assert_eq!(r.canonical(), "-p udp -m udp --dport 53 -j ACCEPT");
    }

    #[test]
    fn negations() {
        let r = parse("! -s 10.0.0.0/8 ! -i cbr0 -m mark ! --mark 0x4000/0x4000 -j RETURN");
        assert_eq!(r.matches.len(), 3);
        assert!(r.matches.contains(&Match::Mark {
            negated: true,
            value: 0x4000,
            mask: 0x4000
        }));
        assert!(r.matches.contains(&Match::InInterface {
            negated: true,
            name: "cbr0".into()
        }));
        assert_eq!(r.target, Target::Return);
    }

    #[test]
    fn statistic_and_recent() {
        let r = parse(
            "-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j KUBE-SEP-A",
        );
        assert!(r.unknown.is_empty(), "{:?}", r.unknown);
        let s = parse("-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-B");
        assert_eq!(
            s.matches,
            vec![Match::Statistic {
                negated: false,
                mode: StatisticMode::Random {
                    probability: 1 << 30
                }
            }]
        );
        let nth = parse("-m statistic --mode nth --every 3 --packet 1 -j X");
        assert!(nth.unknown.is_empty());
    }

    #[test]
    fn unknown_parts_are_kept_with_their_module() {
        let r = parse(
            "-p tcp -m tcp --dport 22 --tcp-flags SYN,RST SYN -m limit --limit 5/s --limit-burst 10 -f -j LOG --log-prefix \"ssh in: \"",
        );
        assert_eq!(
            r.unknown,
            vec![
                "-f".to_string(),
                "-m tcp --tcp-flags SYN,RST SYN".to_string(),
                "-m limit --limit 5/s --limit-burst 10".to_string(),
            ]
        );
        assert_eq!(
            r.target,
            Target::Other {
                name: "LOG".into(),
                args: vec!["--log-prefix".into(), "ssh in: ".into()]
            }
        );
        assert!(r.matches.contains(&Match::DestinationPort {
            negated: false,
            ports: PortRange::single(22)
        }));
    }

    #[test]
    fn module_options_may_come_later() {
        let r = parse("-m comment -p tcp --comment hello -j ACCEPT");
        assert!(r.matches.contains(&Match::Comment("hello".into())));
        assert!(r.unknown.is_empty());
    }

    #[test]
    fn goto_and_no_target() {
        assert_eq!(parse("-g KUBE-X").target, Target::Goto("KUBE-X".into()));
        let counting = parse("-m comment --comment \"other traffic will be dropped\"");
        assert_eq!(counting.target, Target::None);
        assert_eq!(parse("").target, Target::None);
    }

    #[test]
    fn counters_are_ignored() {
        let r = parse("-c 10 200 -j ACCEPT");
        assert!(r.unknown.is_empty());
        assert_eq!(r.target, Target::Accept);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_err("-s"), RuleError::MissingArgument("-s".into()));
        assert_eq!(parse_err("-j ACCEPT !"), RuleError::DanglingBang);
        assert_eq!(
            parse_err("! -j ACCEPT"),
            RuleError::BadNegation("-j".into())
        );
        assert_eq!(parse_err("-j ACCEPT -j DROP"), RuleError::MultipleTargets);
        assert!(matches!(parse_err("-s 300.1.1.1"), RuleError::Value(_)));
        assert!(matches!(
            parse_err("-p tcp --dport 99999"),
            RuleError::Value(_)
        ));
        assert_eq!(
            parse_err("-m comment --comment"),
            RuleError::MissingArgument("--comment".into())
        );
    }

    #[test]
    fn dnat_forms() {
        let v6 = parse("-p tcp -m tcp -j DNAT --to-destination [fd00::5]:8080");
        assert_eq!(
            v6.target.to_string(),
            "-j DNAT --to-destination [fd00::5]:8080"
        );
        let bare = parse("-j DNAT --to-destination 10.0.0.1");
        assert_eq!(bare.target.to_string(), "-j DNAT --to-destination 10.0.0.1");
        let masq = parse("-j MASQUERADE --random-fully");
        assert_eq!(
            masq.target,
            Target::Masquerade {
                to_ports: None,
                random: false,
                random_fully: true
            }
        );
    }
}
