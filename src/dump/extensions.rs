//! Knowledge of iptables extensions: which options each match module and target takes (and how
//! many arguments), and how their collected options become typed [`Match`]es and [`Target`]s.
//!
//! Whatever an extension is given that is not understood comes back as leftover options, which
//! the rule parser keeps verbatim in `Rule::unknown`.

use std::net::IpAddr;

use super::matches::{Direction, Match, Recent, RecentMode, StatisticMode};
use super::target::{DEFAULT_REJECTS, Target};
use super::values::{
    ValueError, parse_ctstates, parse_mark, parse_nat_addr, parse_port_list, parse_port_range,
    parse_probability, parse_u32,
};

/// One option given to an extension, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// Preceded by `!`.
    pub negated: bool,
    /// The option, e.g. `--dport`.
    pub name: String,
    /// Its arguments.
    pub args: Vec<String>,
}

impl Opt {
    /// The option as words again (`!`, name, arguments).
    pub fn words(&self) -> Vec<String> {
        let mut w = Vec::with_capacity(self.args.len() + 2);
        if self.negated {
            w.push("!".to_string());
        }
        w.push(self.name.clone());
        w.extend(self.args.iter().cloned());
        w
    }
}

/// How many arguments option `opt` of match module `module` takes, if the module is known and
/// knows the option.
pub fn match_option_arity(module: &str, opt: &str) -> Option<usize> {
    let arity = match (module, opt) {
        ("tcp" | "udp" | "sctp", "--dport" | "--sport")
        | ("tcp" | "udp" | "sctp", "--destination-port" | "--source-port")
        | ("tcp", "--tcp-option")
        | ("sctp", "--chunk-types") => 1,
        ("tcp", "--tcp-flags") => 2,
        ("tcp", "--syn") => 0,
        (
            "multiport",
            "--dports" | "--sports" | "--ports" | "--destination-ports" | "--source-ports",
        ) => 1,
        ("addrtype", "--src-type" | "--dst-type") => 1,
        ("addrtype", "--limit-iface-in" | "--limit-iface-out") => 0,
        ("comment", "--comment") => 1,
        ("mark", "--mark") => 1,
        ("nfacct", "--nfacct-name") => 1,
        (
            "conntrack",
            "--ctstate" | "--ctproto" | "--ctorigsrc" | "--ctorigdst" | "--ctreplsrc"
            | "--ctrepldst" | "--ctorigsrcport" | "--ctorigdstport" | "--ctreplsrcport"
            | "--ctrepldstport" | "--ctstatus" | "--ctexpire" | "--ctdir",
        ) => 1,
        ("statistic", "--mode" | "--probability" | "--every" | "--packet") => 1,
        ("recent", "--name" | "--seconds" | "--hitcount" | "--mask") => 1,
        (
            "recent",
            "--set" | "--rcheck" | "--update" | "--remove" | "--reap" | "--rttl" | "--rsource"
            | "--rdest",
        ) => 0,
        _ => return None,
    };
    Some(arity)
}

/// Whether this model knows the match module (its unknown options are still kept).
pub fn is_known_module(module: &str) -> bool {
    matches!(
        module,
        "tcp"
            | "udp"
            | "sctp"
            | "multiport"
            | "addrtype"
            | "comment"
            | "mark"
            | "nfacct"
            | "conntrack"
            | "statistic"
            | "recent"
    )
}

/// How many arguments option `opt` of target `target` takes, for the targets this model types.
pub fn target_option_arity(target: &str, opt: &str) -> Option<usize> {
    let arity = match (target, opt) {
        ("DNAT", "--to-destination") | ("SNAT", "--to-source") => 1,
        ("DNAT" | "SNAT" | "MASQUERADE", "--random" | "--persistent") => 0,
        ("SNAT" | "MASQUERADE", "--random-fully") => 0,
        ("MASQUERADE", "--to-ports") => 1,
        ("REJECT", "--reject-with") => 1,
        ("MARK", "--set-xmark" | "--set-mark" | "--or-mark" | "--and-mark" | "--xor-mark") => 1,
        _ => return None,
    };
    Some(arity)
}

/// Whether this model types the target (its unknown options are still kept).
pub fn is_typed_target(name: &str) -> bool {
    matches!(
        name,
        "ACCEPT" | "DROP" | "RETURN" | "REJECT" | "DNAT" | "SNAT" | "MASQUERADE" | "MARK"
    )
}

/// Whether `-j NAME` names a target extension rather than a user chain.
pub fn is_target_extension(name: &str) -> bool {
    matches!(
        name,
        "ACCEPT"
            | "DROP"
            | "RETURN"
            | "REJECT"
            | "DNAT"
            | "SNAT"
            | "MASQUERADE"
            | "MARK"
            | "LOG"
            | "NFLOG"
            | "ULOG"
            | "CT"
            | "NOTRACK"
            | "TRACE"
            | "TCPMSS"
            | "CONNMARK"
            | "REDIRECT"
            | "TPROXY"
            | "CLASSIFY"
            | "CHECKSUM"
            | "NETMAP"
            | "TOS"
            | "DSCP"
            | "TTL"
            | "HL"
            | "SET"
            | "AUDIT"
            | "NFQUEUE"
            | "QUEUE"
            | "CONNSECMARK"
            | "SECMARK"
            | "IDLETIMER"
            | "LED"
            | "RATEEST"
            | "SYNPROXY"
            | "TEE"
            | "CLUSTERIP"
            | "ECN"
            | "HMARK"
    )
}

/// The typed matches built from one `-m MODULE` instance, and the options left over.
pub struct Built {
    /// Typed matches.
    pub matches: Vec<Match>,
    /// Options not understood (kept verbatim by the caller).
    pub leftover: Vec<Opt>,
}

/// Builds typed matches from the options given to one instance of `module`.
pub fn build_match(module: &str, opts: &[Opt]) -> Result<Built, ValueError> {
    match module {
        "statistic" => Ok(whole(build_statistic(opts)?, opts)),
        "recent" => Ok(whole(build_recent(opts)?, opts)),
        _ => {
            let mut built = Built {
                matches: Vec::new(),
                leftover: Vec::new(),
            };
            for opt in opts {
                match build_option(module, opt)? {
                    Some(m) => built.matches.push(m),
                    None => built.leftover.push(opt.clone()),
                }
            }
            Ok(built)
        }
    }
}

fn whole(m: Option<Match>, opts: &[Opt]) -> Built {
    match m {
        Some(m) => Built {
            matches: vec![m],
            leftover: Vec::new(),
        },
        None => Built {
            matches: Vec::new(),
            leftover: opts.to_vec(),
        },
    }
}

fn build_option(module: &str, opt: &Opt) -> Result<Option<Match>, ValueError> {
    let negated = opt.negated;
    let Some(arg) = opt.args.first() else {
        return Ok(None);
    };
    let m = match (module, opt.name.as_str()) {
        ("tcp" | "udp" | "sctp", "--dport" | "--destination-port") => Match::DestinationPort {
            negated,
            ports: parse_port_range(arg)?,
        },
        ("tcp" | "udp" | "sctp", "--sport" | "--source-port") => Match::SourcePort {
            negated,
            ports: parse_port_range(arg)?,
        },
        ("multiport", flag) => {
            let direction = match flag {
                "--dports" | "--destination-ports" => Direction::Destination,
                "--sports" | "--source-ports" => Direction::Source,
                "--ports" => Direction::Either,
                _ => return Ok(None),
            };
            Match::Multiport {
                negated,
                direction,
                ports: parse_port_list(arg)?,
            }
        }
        ("addrtype", "--src-type") => Match::SrcType {
            negated,
            types: addr_types(arg),
        },
        ("addrtype", "--dst-type") => Match::DstType {
            negated,
            types: addr_types(arg),
        },
        ("comment", "--comment") if !negated => Match::Comment(arg.clone()),
        ("nfacct", "--nfacct-name") if !negated => Match::Nfacct(arg.clone()),
        ("mark", "--mark") => {
            let (value, mask) = parse_mark(arg)?;
            Match::Mark {
                negated,
                value,
                mask,
            }
        }
        ("conntrack", "--ctstate") => Match::CtState {
            negated,
            states: parse_ctstates(arg)?,
        },
        _ => return Ok(None),
    };
    Ok(Some(m))
}

fn addr_types(arg: &str) -> Vec<String> {
    arg.split(',').map(|t| t.to_ascii_uppercase()).collect()
}

fn build_statistic(opts: &[Opt]) -> Result<Option<Match>, ValueError> {
    let mut negated = false;
    let (mut mode, mut probability, mut every, mut packet) = (None, None, None, None);
    for opt in opts {
        negated |= opt.negated;
        let Some(arg) = opt.args.first() else {
            return Ok(None);
        };
        match opt.name.as_str() {
            "--mode" => mode = Some(arg.as_str()),
            "--probability" => probability = Some(parse_probability(arg)?),
            "--every" => every = Some(parse_u32(arg)?),
            "--packet" => packet = Some(parse_u32(arg)?),
            _ => return Ok(None),
        }
    }
    let mode = match (mode, probability, every) {
        (Some("random"), Some(probability), None) if packet.is_none() => {
            StatisticMode::Random { probability }
        }
        (Some("nth"), None, Some(every)) => StatisticMode::Nth {
            every,
            packet: packet.unwrap_or(0),
        },
        _ => return Ok(None),
    };
    Ok(Some(Match::Statistic { negated, mode }))
}

fn build_recent(opts: &[Opt]) -> Result<Option<Match>, ValueError> {
    let mut r = Recent {
        negated: false,
        name: "DEFAULT".into(),
        mode: RecentMode::Set,
        seconds: None,
        reap: false,
        hitcount: None,
        rttl: false,
        rdest: false,
        mask: None,
    };
    let mut modes = 0;
    for opt in opts {
        let mode = match opt.name.as_str() {
            "--set" => Some(RecentMode::Set),
            "--rcheck" => Some(RecentMode::Rcheck),
            "--update" => Some(RecentMode::Update),
            "--remove" => Some(RecentMode::Remove),
            _ => None,
        };
        if let Some(mode) = mode {
            r.mode = mode;
            r.negated = opt.negated;
            modes += 1;
            continue;
        }
        if opt.negated {
            return Ok(None);
        }
        let arg = opt.args.first();
        match (opt.name.as_str(), arg) {
            ("--name", Some(a)) => r.name = a.clone(),
            ("--seconds", Some(a)) => r.seconds = Some(parse_u32(a)?),
            ("--hitcount", Some(a)) => r.hitcount = Some(parse_u32(a)?),
            ("--mask", Some(a)) => match a.parse::<IpAddr>() {
                Ok(mask) if is_all_ones(mask) => r.mask = None,
                Ok(mask) => r.mask = Some(mask),
                Err(_) => return Ok(None),
            },
            ("--reap", _) => r.reap = true,
            ("--rttl", _) => r.rttl = true,
            ("--rsource", _) => r.rdest = false,
            ("--rdest", _) => r.rdest = true,
            _ => return Ok(None),
        }
    }
    if modes != 1 {
        return Ok(None);
    }
    Ok(Some(Match::Recent(r)))
}

fn is_all_ones(mask: IpAddr) -> bool {
    match mask {
        IpAddr::V4(m) => u32::from(m) == u32::MAX,
        IpAddr::V6(m) => u128::from(m) == u128::MAX,
    }
}

/// Builds the target of `-j NAME` with its options. Targets that are not modelled, or are given
/// options this model does not understand, become [`Target::Other`] with their words.
pub fn build_target(name: &str, opts: &[Opt]) -> Result<Target, ValueError> {
    let typed = match name {
        "ACCEPT" if opts.is_empty() => Some(Target::Accept),
        "DROP" if opts.is_empty() => Some(Target::Drop),
        "RETURN" if opts.is_empty() => Some(Target::Return),
        "REJECT" => build_reject(opts),
        "DNAT" | "SNAT" => build_nat(name, opts),
        "MASQUERADE" => build_masquerade(opts),
        "MARK" => build_mark(opts)?,
        _ => None,
    };
    Ok(typed.unwrap_or_else(|| Target::Other {
        name: name.to_string(),
        args: opts.iter().flat_map(Opt::words).collect(),
    }))
}

fn build_reject(opts: &[Opt]) -> Option<Target> {
    match opts {
        [] => Some(Target::Reject { with: None }),
        [opt] if !opt.negated && opt.name == "--reject-with" => {
            let with = opt.args.first()?;
            Some(Target::Reject {
                with: (!DEFAULT_REJECTS.contains(&with.as_str())).then(|| with.clone()),
            })
        }
        _ => None,
    }
}

fn build_nat(name: &str, opts: &[Opt]) -> Option<Target> {
    let to_flag = if name == "DNAT" {
        "--to-destination"
    } else {
        "--to-source"
    };
    let (mut to, mut random, mut random_fully, mut persistent) = (None, false, false, false);
    for opt in opts {
        if opt.negated {
            return None;
        }
        match opt.name.as_str() {
            f if f == to_flag && to.is_none() => to = Some(parse_nat_addr(opt.args.first()?)?),
            "--random" => random = true,
            "--random-fully" if name == "SNAT" => random_fully = true,
            "--persistent" => persistent = true,
            _ => return None,
        }
    }
    let to = to?;
    Some(if name == "DNAT" {
        Target::Dnat {
            to,
            random,
            persistent,
        }
    } else {
        Target::Snat {
            to,
            random,
            random_fully,
            persistent,
        }
    })
}

fn build_masquerade(opts: &[Opt]) -> Option<Target> {
    let (mut to_ports, mut random, mut random_fully) = (None, false, false);
    for opt in opts {
        if opt.negated {
            return None;
        }
        match opt.name.as_str() {
            "--to-ports" => to_ports = Some(opt.args.first()?.clone()),
            "--random" => random = true,
            "--random-fully" => random_fully = true,
            _ => return None,
        }
    }
    Some(Target::Masquerade {
        to_ports,
        random,
        random_fully,
    })
}

fn build_mark(opts: &[Opt]) -> Result<Option<Target>, ValueError> {
    let [opt] = opts else {
        return Ok(None);
    };
    let Some(arg) = opt.args.first() else {
        return Ok(None);
    };
    if opt.negated {
        return Ok(None);
    }
    let target = match opt.name.as_str() {
        "--set-xmark" => {
            let (value, mask) = parse_mark(arg)?;
            Target::Mark { value, mask }
        }
        "--set-mark" => {
            let (value, mask) = parse_mark(arg)?;
            Target::Mark {
                value,
                mask: value | mask,
            }
        }
        "--or-mark" => {
            let v = parse_u32(arg)?;
            Target::Mark { value: v, mask: v }
        }
        "--xor-mark" => Target::Mark {
            value: parse_u32(arg)?,
            mask: 0,
        },
        "--and-mark" => Target::Mark {
            value: 0,
            mask: !parse_u32(arg)?,
        },
        _ => return Ok(None),
    };
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(name: &str, args: &[&str]) -> Opt {
        Opt {
            negated: false,
            name: name.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn mark_spellings_normalise_to_xmark() {
        let or = build_target("MARK", &[opt("--or-mark", &["0x4000"])]);
        let saved = build_target("MARK", &[opt("--set-xmark", &["0x4000/0x4000"])]);
        assert_eq!(or, saved);
        let xor = build_target("MARK", &[opt("--xor-mark", &["0x4000"])]);
        assert_eq!(
            xor,
            Ok(Target::Mark {
                value: 0x4000,
                mask: 0
            })
        );
        let set = build_target("MARK", &[opt("--set-mark", &["0x10"])]);
        assert_eq!(
            set,
            Ok(Target::Mark {
                value: 0x10,
                mask: u32::MAX
            })
        );
        let and = build_target("MARK", &[opt("--and-mark", &["0xff"])]);
        assert_eq!(
            and,
            Ok(Target::Mark {
                value: 0,
                mask: !0xff
            })
        );
    }

    #[test]
    fn reject_default_is_normalised() {
        assert_eq!(
            build_target(
                "REJECT",
                &[opt("--reject-with", &["icmp-port-unreachable"])]
            ),
            Ok(Target::Reject { with: None })
        );
        assert_eq!(
            build_target("REJECT", &[opt("--reject-with", &["tcp-reset"])]),
            Ok(Target::Reject {
                with: Some("tcp-reset".into())
            })
        );
    }

    #[test]
    fn dnat_range_is_kept_as_other() {
        let t = build_target("DNAT", &[opt("--to-destination", &["10.0.0.1-10.0.0.3"])]);
        assert_eq!(
            t,
            Ok(Target::Other {
                name: "DNAT".into(),
                args: vec!["--to-destination".into(), "10.0.0.1-10.0.0.3".into()]
            })
        );
    }

    #[test]
    fn recent_defaults_are_dropped() {
        let saved = build_match(
            "recent",
            &[
                opt("--rcheck", &[]),
                opt("--seconds", &["10800"]),
                opt("--reap", &[]),
                opt("--name", &["KUBE-SEP-X"]),
                opt("--mask", &["255.255.255.255"]),
                opt("--rsource", &[]),
            ],
        );
        let written = build_match(
            "recent",
            &[
                opt("--name", &["KUBE-SEP-X"]),
                opt("--rcheck", &[]),
                opt("--seconds", &["10800"]),
                opt("--reap", &[]),
            ],
        );
        let (Ok(saved), Ok(written)) = (saved, written) else {
            panic!("recent did not build");
        };
        assert_eq!(saved.matches, written.matches);
        assert_eq!(saved.matches.len(), 1);
        assert!(saved.leftover.is_empty());
    }

    #[test]
    fn recent_with_two_modes_is_left_over() {
        let built = build_match("recent", &[opt("--set", &[]), opt("--rcheck", &[])]);
        let Ok(built) = built else {
            panic!("unexpected error");
        };
        assert!(built.matches.is_empty());
        assert_eq!(built.leftover.len(), 2);
    }

    #[test]
    fn unknown_options_of_known_modules_are_left_over() {
        let built = build_match(
            "tcp",
            &[
                opt("--dport", &["80"]),
                opt("--tcp-flags", &["SYN,RST", "SYN"]),
            ],
        );
        let Ok(built) = built else {
            panic!("unexpected error");
        };
        assert_eq!(built.matches.len(), 1);
        assert_eq!(built.leftover.len(), 1);
        assert_eq!(built.leftover[0].name, "--tcp-flags");
    }
}
