//! Typed rule targets (`-j`/`-g`) and their canonical rendering.
//!
//! `MARK` is kept in the kernel's `(value, mask)` form, which is what `iptables-save` prints as
//! `--set-xmark V/M`: `--or-mark V` is `(V, V)`, `--xor-mark V` is `(V, 0)`, `--and-mark V` is
//! `(0, !V)` and `--set-mark V[/M]` is `(V, V | M)`. A plain `REJECT` and one with the default
//! `--reject-with icmp-port-unreachable` compare equal.

use std::fmt;
use std::net::IpAddr;

use super::words::quote_arg;

/// A NAT address with an optional port: `10.0.0.1`, `10.0.0.1:80` or `[fd00::1]:80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NatAddr {
    /// The address.
    pub ip: IpAddr,
    /// The port, when given.
    pub port: Option<u16>,
}

impl fmt::Display for NatAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (IpAddr::V4(ip), Some(port)) => write!(f, "{ip}:{port}"),
            (IpAddr::V6(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
            (ip, None) => write!(f, "{ip}"),
        }
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// No `-j`: the rule only counts packets.
    None,
    /// `-j CHAIN`: call a user chain.
    Jump(String),
    /// `-g CHAIN`: go to a user chain; its RETURN returns to this chain's caller.
    Goto(String),
    /// `-j ACCEPT`
    Accept,
    /// `-j DROP`
    Drop,
    /// `-j RETURN`
    Return,
    /// `-j REJECT [--reject-with X]` (`None` is the default port-unreachable).
    Reject {
        /// A non-default `--reject-with`.
        with: Option<String>,
    },
    /// `-j DNAT --to-destination ADDR [--random] [--persistent]`
    Dnat {
        /// The new destination.
        to: NatAddr,
        /// `--random`
        random: bool,
        /// `--persistent`
        persistent: bool,
    },
    /// `-j SNAT --to-source ADDR [--random] [--random-fully] [--persistent]`
    Snat {
        /// The new source.
        to: NatAddr,
        /// `--random`
        random: bool,
        /// `--random-fully`
        random_fully: bool,
        /// `--persistent`
        persistent: bool,
    },
    /// `-j MASQUERADE [--to-ports P] [--random] [--random-fully]`
    Masquerade {
        /// `--to-ports`, verbatim.
        to_ports: Option<String>,
        /// `--random`
        random: bool,
        /// `--random-fully`
        random_fully: bool,
    },
    /// `-j MARK`: `mark = (mark & !mask) ^ value`.
    Mark {
        /// The value XORed in.
        value: u32,
        /// The bits cleared first.
        mask: u32,
    },
    /// A target this model does not interpret (LOG, CT, a DNAT range, ...), kept verbatim.
    Other {
        /// The target name.
        name: String,
        /// Its option words, in order.
        args: Vec<String>,
    },
}

impl Target {
    /// The user chain this target calls or goes to.
    pub fn chain(&self) -> Option<&str> {
        match self {
            Target::Jump(c) | Target::Goto(c) => Some(c),
            _ => None,
        }
    }

    /// Applies a MARK target to a packet mark.
    pub fn apply_mark(value: u32, mask: u32, mark: u32) -> u32 {
        (mark & !mask) ^ value
    }
}

/// The `--reject-with` values that are the defaults and so are rendered away.
pub const DEFAULT_REJECTS: [&str; 2] = ["icmp-port-unreachable", "icmp6-port-unreachable"];

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::None => Ok(()),
            Target::Jump(c) => write!(f, "-j {c}"),
            Target::Goto(c) => write!(f, "-g {c}"),
            Target::Accept => f.write_str("-j ACCEPT"),
            Target::Drop => f.write_str("-j DROP"),
            Target::Return => f.write_str("-j RETURN"),
            Target::Reject { with } => {
                f.write_str("-j REJECT")?;
                if let Some(w) = with {
                    write!(f, " --reject-with {w}")?;
                }
                Ok(())
            }
            Target::Dnat {
                to,
                random,
                persistent,
            } => {
                write!(f, "-j DNAT --to-destination {to}")?;
                flag(f, *random, "--random")?;
                flag(f, *persistent, "--persistent")
            }
            Target::Snat {
                to,
                random,
                random_fully,
                persistent,
            } => {
                write!(f, "-j SNAT --to-source {to}")?;
                flag(f, *random, "--random")?;
                flag(f, *random_fully, "--random-fully")?;
                flag(f, *persistent, "--persistent")
            }
            Target::Masquerade {
                to_ports,
                random,
                random_fully,
            } => {
                f.write_str("-j MASQUERADE")?;
                if let Some(p) = to_ports {
                    write!(f, " --to-ports {p}")?;
                }
                flag(f, *random, "--random")?;
                flag(f, *random_fully, "--random-fully")
            }
            Target::Mark { value, mask } => {
                write!(f, "-j MARK --set-xmark {value:#x}/{mask:#x}")
            }
            Target::Other { name, args } => {
                write!(f, "-j {name}")?;
                for a in args {
                    write!(f, " {}", quote_arg(a))?;
                }
                Ok(())
            }
        }
    }
}

fn flag(f: &mut fmt::Formatter<'_>, on: bool, name: &str) -> fmt::Result {
    if on { write!(f, " {name}") } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_addr_formats_v4_v6_and_bare() {
        let v4 = NatAddr {
            ip: "10.244.1.5".parse().expect("ip"),
            port: Some(8080),
        };
        let v6 = NatAddr {
            ip: "fd00::5".parse().expect("ip"),
            port: Some(8080),
        };
        let bare = NatAddr {
            ip: "10.0.0.1".parse().expect("ip"),
            port: None,
        };
        assert_eq!(v4.to_string(), "10.244.1.5:8080");
        assert_eq!(v6.to_string(), "[fd00::5]:8080");
        assert_eq!(bare.to_string(), "10.0.0.1");
    }

    #[test]
    fn mark_renders_as_set_xmark() {
        let t = Target::Mark {
            value: 0x4000,
            mask: 0,
        };
        assert_eq!(t.to_string(), "-j MARK --set-xmark 0x4000/0x0");
    }

    #[test]
    fn mark_arithmetic_matches_the_kernel() {
        // --or-mark 0x4000 == (0x4000, 0x4000)
        assert_eq!(Target::apply_mark(0x4000, 0x4000, 0x1), 0x4001);
        // --xor-mark 0x4000 == (0x4000, 0)
        assert_eq!(Target::apply_mark(0x4000, 0, 0x4001), 0x1);
        // --set-mark 0x10 == (0x10, 0xffffffff)
        assert_eq!(Target::apply_mark(0x10, u32::MAX, 0xabcd), 0x10);
    }

    #[test]
    fn other_targets_keep_their_words() {
        let t = Target::Other {
            name: "LOG".into(),
            args: vec!["--log-prefix".into(), "kube drop: ".into()],
        };
        assert_eq!(t.to_string(), "-j LOG --log-prefix \"kube drop: \"");
    }
}
