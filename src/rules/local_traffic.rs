//! The matches `--detect-local-mode` gives the compiler: "comes from a local pod" and its
//! negation, per [`LocalDetector`] (the detector itself is configuration, in `config`; turning it
//! into rule matches is the rules' job, so `config` does not depend on `rules`).

use crate::config::LocalDetector;

use super::rule::{Addr, Match};

fn matcher(detector: &LocalDetector, negated: bool) -> Option<Match> {
    match detector {
        LocalDetector::None | LocalDetector::NodeCidr => None,
        LocalDetector::Cidr(net) => Some(Match::Src {
            negated,
            addr: Addr::Net(*net),
        }),
        LocalDetector::Bridge(name) => Some(Match::InIface {
            negated,
            name: name.clone(),
        }),
        LocalDetector::InterfacePrefix(prefix) => Some(Match::InIface {
            negated,
            name: format!("{prefix}+"),
        }),
    }
}

/// The match for "comes from a local pod" (none for a detector that detects nothing).
pub fn from_local_pod(detector: &LocalDetector) -> Option<Match> {
    matcher(detector, false)
}

/// The match for "does not come from a local pod".
pub fn not_from_local_pod(detector: &LocalDetector) -> Option<Match> {
    matcher(detector, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_detector_gives_its_match_and_negation() {
        let cidr = LocalDetector::Cidr("10.244.0.0/16".parse().expect("cidr"));
        assert_eq!(
            from_local_pod(&cidr),
            Some(Match::Src {
                negated: false,
                addr: Addr::Net("10.244.0.0/16".parse().expect("cidr")),
            })
        );
        assert_eq!(
            not_from_local_pod(&LocalDetector::Bridge("cni0".into())),
            Some(Match::InIface {
                negated: true,
                name: "cni0".into(),
            })
        );
        assert_eq!(
            from_local_pod(&LocalDetector::InterfacePrefix("veth".into())),
            Some(Match::InIface {
                negated: false,
                name: "veth+".into(),
            })
        );
        assert_eq!(from_local_pod(&LocalDetector::None), None);
        assert_eq!(
            not_from_local_pod(&LocalDetector::NodeCidr),
            None,
            "unresolved"
        );
    }
}
