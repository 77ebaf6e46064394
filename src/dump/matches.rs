//! Typed rule matches (`-p`, `-s`, `-m comment`, `-m statistic`, ...) and their canonical
//! rendering.
//!
//! Values are normalised so that the spelling knat writes and the spelling `iptables-save` prints
//! compare equal: host addresses become `/32` (`/128`) networks, probabilities are kept in the
//! kernel's fixed-point form, marks without a mask get the all-ones mask, conntrack states are
//! sorted, and `recent` defaults (`--mask 255.255.255.255 --rsource`) are dropped.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::words::quote;

/// An inclusive port range; a single port has `start == end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub start: u16,
    /// Last port of the range (inclusive).
    pub end: u16,
}

impl PortRange {
    /// A range holding one port.
    pub fn single(port: u16) -> Self {
        PortRange {
            start: port,
            end: port,
        }
    }

    /// Whether `port` lies inside the range.
    pub fn contains(self, port: u16) -> bool {
        self.start <= port && port <= self.end
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}:{}", self.start, self.end)
        }
    }
}

/// Which packet address or port a match looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// The source (`--src-type`, `--sports`).
    Source,
    /// The destination (`--dst-type`, `--dports`).
    Destination,
    /// Either one (`-m multiport --ports`).
    Either,
}

/// A conntrack state as `-m conntrack --ctstate` names it, in iptables-save's print order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtState {
    /// `INVALID`
    Invalid,
    /// `NEW`
    New,
    /// `RELATED`
    Related,
    /// `ESTABLISHED`
    Established,
    /// `UNTRACKED`
    Untracked,
    /// `SNAT` (the connection's source was translated)
    Snat,
    /// `DNAT` (the connection's destination was translated)
    Dnat,
}

impl CtState {
    /// Parses one state name (case-insensitive, as iptables accepts).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "INVALID" => CtState::Invalid,
            "NEW" => CtState::New,
            "RELATED" => CtState::Related,
            "ESTABLISHED" => CtState::Established,
            "UNTRACKED" => CtState::Untracked,
            "SNAT" => CtState::Snat,
            "DNAT" => CtState::Dnat,
            _ => return None,
        })
    }

    /// The upper-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            CtState::Invalid => "INVALID",
            CtState::New => "NEW",
            CtState::Related => "RELATED",
            CtState::Established => "ESTABLISHED",
            CtState::Untracked => "UNTRACKED",
            CtState::Snat => "SNAT",
            CtState::Dnat => "DNAT",
        }
    }
}

/// `-m statistic` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatisticMode {
    /// `--mode random --probability P`; `probability` is the kernel's fixed point `P * 2^31`.
    Random {
        /// `round(P * 2^31)`, as libxt_statistic stores it.
        probability: u32,
    },
    /// `--mode nth --every N --packet P`.
    Nth {
        /// `--every`
        every: u32,
        /// `--packet` (0 when absent)
        packet: u32,
    },
}

/// The fixed-point scale of `--probability` (2^31).
pub const PROBABILITY_SCALE: f64 = 2_147_483_648.0;

impl StatisticMode {
    /// The probability as a float (1/every for nth).
    pub fn probability(self) -> f64 {
        match self {
            StatisticMode::Random { probability } => f64::from(probability) / PROBABILITY_SCALE,
            StatisticMode::Nth { every, .. } => {
                if every == 0 {
                    0.0
                } else {
                    1.0 / f64::from(every)
                }
            }
        }
    }
}

/// What `-m recent` does with its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecentMode {
    /// `--set`: add the address; always matches.
    Set,
    /// `--rcheck`: match if the address is in the list.
    Rcheck,
    /// `--update`: like rcheck, and refresh the timestamp.
    Update,
    /// `--remove`: match and remove if present.
    Remove,
}

impl RecentMode {
    fn flag(self) -> &'static str {
        match self {
            RecentMode::Set => "--set",
            RecentMode::Rcheck => "--rcheck",
            RecentMode::Update => "--update",
            RecentMode::Remove => "--remove",
        }
    }
}

/// A `-m recent` match.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Recent {
    /// Whether the mode flag was negated (`! --rcheck`).
    pub negated: bool,
    /// `--name` (iptables' default is `DEFAULT`).
    pub name: String,
    /// The mode flag.
    pub mode: RecentMode,
    /// `--seconds`
    pub seconds: Option<u32>,
    /// `--reap`
    pub reap: bool,
    /// `--hitcount`
    pub hitcount: Option<u32>,
    /// `--rttl`
    pub rttl: bool,
    /// `--rdest` (false means the default `--rsource`).
    pub rdest: bool,
    /// `--mask`, `None` for the default all-ones mask.
    pub mask: Option<IpAddr>,
}

/// One typed match of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// `[!] -s NET`
    Source {
        /// `!`
        negated: bool,
        /// The network (a host is `/32` or `/128`).
        net: IpNet,
    },
    /// `[!] -d NET`
    Destination {
        /// `!`
        negated: bool,
        /// The network (a host is `/32` or `/128`).
        net: IpNet,
    },
    /// `[!] -i NAME` (`+` at the end is a prefix wildcard)
    InInterface {
        /// `!`
        negated: bool,
        /// The interface name or prefix.
        name: String,
    },
    /// `[!] -o NAME`
    OutInterface {
        /// `!`
        negated: bool,
        /// The interface name or prefix.
        name: String,
    },
    /// `[!] -p PROTO` (lower-case name; numeric 6/17/132 become tcp/udp/sctp)
    Protocol {
        /// `!`
        negated: bool,
        /// The protocol name.
        name: String,
    },
    /// `-m addrtype [!] --src-type T[,T]`
    SrcType {
        /// `!`
        negated: bool,
        /// Upper-case type names (`LOCAL`, `UNICAST`, ...).
        types: Vec<String>,
    },
    /// `-m addrtype [!] --dst-type T[,T]`
    DstType {
        /// `!`
        negated: bool,
        /// Upper-case type names.
        types: Vec<String>,
    },
    /// `-m comment --comment TEXT`
    Comment(String),
    /// `-m tcp|udp|sctp [!] --sport A[:B]`
    SourcePort {
        /// `!`
        negated: bool,
        /// The port range.
        ports: PortRange,
    },
    /// `-m tcp|udp|sctp [!] --dport A[:B]`
    DestinationPort {
        /// `!`
        negated: bool,
        /// The port range.
        ports: PortRange,
    },
    /// `-m multiport [!] --dports|--sports|--ports A,B:C`
    Multiport {
        /// `!`
        negated: bool,
        /// Which port is compared.
        direction: Direction,
        /// The listed ports and ranges.
        ports: Vec<PortRange>,
    },
    /// `-m mark [!] --mark V[/M]` (M is 0xffffffff when absent)
    Mark {
        /// `!`
        negated: bool,
        /// The value compared after masking.
        value: u32,
        /// The mask.
        mask: u32,
    },
    /// `-m conntrack [!] --ctstate S[,S]`
    CtState {
        /// `!`
        negated: bool,
        /// Sorted, deduplicated states.
        states: Vec<CtState>,
    },
    /// `-m recent ...`
    Recent(Recent),
    /// `-m statistic [!] --mode ...`
    Statistic {
        /// `!`
        negated: bool,
        /// The mode and its parameters.
        mode: StatisticMode,
    },
    /// `-m nfacct --nfacct-name NAME` (accounting only; always matches)
    Nfacct(String),
}

impl Match {
    /// The iptables extension that must be loaded (`-m NAME`) before this match, if any.
    /// `protocol` is the rule's protocol, which names the module of `--sport`/`--dport`.
    pub fn module<'a>(&self, protocol: &'a str) -> Option<&'a str> {
        Some(match self {
            Match::Source { .. }
            | Match::Destination { .. }
            | Match::InInterface { .. }
            | Match::OutInterface { .. }
            | Match::Protocol { .. } => return None,
            Match::SrcType { .. } | Match::DstType { .. } => "addrtype",
            Match::Comment(_) => "comment",
            Match::SourcePort { .. } | Match::DestinationPort { .. } => protocol,
            Match::Multiport { .. } => "multiport",
            Match::Mark { .. } => "mark",
            Match::CtState { .. } => "conntrack",
            Match::Recent(_) => "recent",
            Match::Statistic { .. } => "statistic",
            Match::Nfacct(_) => "nfacct",
        })
    }

    /// The position of this kind of match in canonical order (iptables-save prints the
    /// addresses, interfaces and protocol first).
    pub fn rank(&self) -> u8 {
        match self {
            Match::Source { .. } => 0,
            Match::Destination { .. } => 1,
            Match::InInterface { .. } => 2,
            Match::OutInterface { .. } => 3,
            Match::Protocol { .. } => 4,
            Match::SrcType { .. } => 5,
            Match::DstType { .. } => 6,
            Match::Comment(_) => 7,
            Match::SourcePort { .. } => 8,
            Match::DestinationPort { .. } => 9,
            Match::Multiport { .. } => 10,
            Match::Mark { .. } => 11,
            Match::CtState { .. } => 12,
            Match::Recent(_) => 13,
            Match::Statistic { .. } => 14,
            Match::Nfacct(_) => 15,
        }
    }

    /// Whether consecutive matches of different kinds can share one `-m` (ports of one protocol,
    /// addrtype source and destination).
    pub fn groupable(&self) -> bool {
        matches!(
            self,
            Match::SrcType { .. }
                | Match::DstType { .. }
                | Match::SourcePort { .. }
                | Match::DestinationPort { .. }
        )
    }
}

/// Sorts matches into canonical order (kind, then rendered text).
pub fn canonical_sort(matches: &mut [Match]) {
    matches.sort_by_cached_key(|m| (m.rank(), m.to_string()));
}

fn bang(negated: bool) -> &'static str {
    if negated { "! " } else { "" }
}

fn join<T: fmt::Display>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

/// Formats a mark value/mask pair as iptables-save does (`0x4000/0x4000`, or `0x4000` when the
/// mask is all ones).
pub fn format_mark(value: u32, mask: u32) -> String {
    if mask == u32::MAX {
        format!("{value:#x}")
    } else {
        format!("{value:#x}/{mask:#x}")
    }
}

impl fmt::Display for Match {
    /// The match's own options, without the `-m MODULE` that loads it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Source { negated, net } => write!(f, "{}-s {net}", bang(*negated)),
            Match::Destination { negated, net } => write!(f, "{}-d {net}", bang(*negated)),
            Match::InInterface { negated, name } => write!(f, "{}-i {name}", bang(*negated)),
            Match::OutInterface { negated, name } => write!(f, "{}-o {name}", bang(*negated)),
            Match::Protocol { negated, name } => write!(f, "{}-p {name}", bang(*negated)),
            Match::SrcType { negated, types } => {
                write!(f, "{}--src-type {}", bang(*negated), types.join(","))
            }
            Match::DstType { negated, types } => {
                write!(f, "{}--dst-type {}", bang(*negated), types.join(","))
            }
            Match::Comment(text) => write!(f, "--comment {}", quote(text)),
            Match::SourcePort { negated, ports } => write!(f, "{}--sport {ports}", bang(*negated)),
            Match::DestinationPort { negated, ports } => {
                write!(f, "{}--dport {ports}", bang(*negated))
            }
            Match::Multiport {
                negated,
                direction,
                ports,
            } => {
                let flag = match direction {
                    Direction::Source => "--sports",
                    Direction::Destination => "--dports",
                    Direction::Either => "--ports",
                };
                write!(f, "{}{flag} {}", bang(*negated), join(ports, ","))
            }
            Match::Mark {
                negated,
                value,
                mask,
            } => write!(f, "{}--mark {}", bang(*negated), format_mark(*value, *mask)),
            Match::CtState { negated, states } => {
                let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
                write!(f, "{}--ctstate {}", bang(*negated), names.join(","))
            }
            Match::Recent(r) => {
                write!(f, "{}{}", bang(r.negated), r.mode.flag())?;
                if let Some(s) = r.seconds {
                    write!(f, " --seconds {s}")?;
                }
                if r.reap {
                    f.write_str(" --reap")?;
                }
                if let Some(h) = r.hitcount {
                    write!(f, " --hitcount {h}")?;
                }
                if r.rttl {
                    f.write_str(" --rttl")?;
                }
                write!(f, " --name {}", quote(&r.name))?;
                if let Some(mask) = r.mask {
                    write!(f, " --mask {mask}")?;
                }
                if r.rdest {
                    f.write_str(" --rdest")?;
                }
                Ok(())
            }
            Match::Statistic { negated, mode } => match mode {
                StatisticMode::Random { .. } => write!(
                    f,
                    "--mode random {}--probability {:.11}",
                    bang(*negated),
                    mode.probability()
                ),
                StatisticMode::Nth { every, packet } => write!(
                    f,
                    "--mode nth {}--every {every} --packet {packet}",
                    bang(*negated)
                ),
            },
            Match::Nfacct(name) => write!(f, "--nfacct-name {}", quote(name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    #[test]
    fn renders_like_iptables_save() {
        let cases = [
            (
                Match::Destination {
                    negated: false,
                    net: net("172.30.0.41/32"),
                },
                "-d 172.30.0.41/32",
            ),
            (
                Match::Source {
                    negated: true,
                    net: net("10.0.0.0/8"),
                },
                "! -s 10.0.0.0/8",
            ),
            (
                Match::Comment("ns/svc:p cluster IP".into()),
                "--comment \"ns/svc:p cluster IP\"",
            ),
            (
                Match::Mark {
                    negated: true,
                    value: 0x4000,
                    mask: 0x4000,
                },
                "! --mark 0x4000/0x4000",
            ),
            (
                Match::Statistic {
                    negated: false,
                    mode: StatisticMode::Random {
                        probability: 1 << 30,
                    },
                },
                "--mode random --probability 0.50000000000",
            ),
            (
                Match::CtState {
                    negated: false,
                    states: vec![CtState::Related, CtState::Established],
                },
                "--ctstate RELATED,ESTABLISHED",
            ),
            (
                Match::Multiport {
                    negated: false,
                    direction: Direction::Destination,
                    ports: vec![
                        PortRange::single(80),
                        PortRange {
                            start: 8000,
                            end: 8080,
                        },
                    ],
                },
                "--dports 80,8000:8080",
            ),
        ];
        for (m, text) in cases {
            assert_eq!(m.to_string(), text);
        }
    }

    #[test]
    fn recent_renders_defaults_away() {
        let m = Match::Recent(Recent {
            negated: false,
            name: "KUBE-SEP-X".into(),
            mode: RecentMode::Rcheck,
            seconds: Some(10800),
            reap: true,
            hitcount: None,
            rttl: false,
            rdest: false,
            mask: None,
        });
        assert_eq!(
            m.to_string(),
            "--rcheck --seconds 10800 --reap --name KUBE-SEP-X"
        );
    }

    #[test]
    fn canonical_sort_puts_addresses_first() {
        let mut ms = vec![
            Match::Comment("c".into()),
            Match::DestinationPort {
                negated: false,
                ports: PortRange::single(80),
            },
            Match::Protocol {
                negated: false,
                name: "tcp".into(),
            },
            Match::Destination {
                negated: false,
                net: net("1.2.3.4/32"),
            },
        ];
        canonical_sort(&mut ms);
        let ranks: Vec<u8> = ms.iter().map(Match::rank).collect();
        assert_eq!(ranks, vec![1, 4, 7, 9]);
    }

    #[test]
    fn port_range_contains() {
        let r = PortRange {
            start: 30000,
            end: 32767,
        };
        assert!(r.contains(30000) && r.contains(32767) && !r.contains(80));
        assert_eq!(r.to_string(), "30000:32767");
    }
}
