//! The chains every rule set has (KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-FORWARD,
//! KUBE-FIREWALL, the empty shared chains) and the hooks from the builtin chains.

use super::assemble::Compiler;
use super::builders::{comment_match, loopback_net};
use crate::rules::chain::ChainName;
use crate::rules::rule::{Addr, Hook, Match, Rule, TableName, Target};

impl Compiler<'_> {
    pub(super) fn fixed_chains(&mut self) {
        let mark = self.mark.clone();
        for name in [
            ChainName::KUBE_SERVICES,
            ChainName::KUBE_EXTERNAL_SERVICES,
            ChainName::KUBE_FORWARD,
            ChainName::KUBE_NODEPORTS,
            ChainName::KUBE_PROXY_FIREWALL,
        ] {
            self.rs.filter.chain(&ChainName::fixed(name));
        }
        for name in [
            ChainName::KUBE_SERVICES,
            ChainName::KUBE_NODEPORTS,
            ChainName::KUBE_POSTROUTING,
            ChainName::KUBE_MARK_MASQ,
        ] {
            self.rs.nat.chain(&ChainName::fixed(name));
        }
        let postrouting = ChainName::fixed(ChainName::KUBE_POSTROUTING);
        let nat = &mut self.rs.nat;
        nat.push(
            &postrouting,
            Rule::new(
                vec![Match::Mark {
                    negated: true,
                    mark: mark.clone(),
                }],
                Target::Return,
            ),
        );
        nat.push(
            &postrouting,
            Rule::new(vec![], Target::MarkXor(mark.clone())),
        );
        nat.push(
            &postrouting,
            Rule::new(
                vec![comment_match("kubernetes service traffic requiring SNAT")],
                Target::Masquerade {
                    random_fully: self.cfg.random_fully,
                },
            ),
        );
        nat.push(
            &self.kube_mark_masq,
            Rule::new(vec![], Target::MarkOr(mark.clone())),
        );

        let forward = ChainName::fixed(ChainName::KUBE_FORWARD);
        let filter = &mut self.rs.filter;
        if self.cfg.drop_invalid {
            let mut matches = vec![Match::CtState {
                negated: false,
                states: "INVALID",
            }];
            if self.cfg.nfacct {
                matches.push(Match::Nfacct("ct_state_invalid_dropped_pkts"));
            }
            filter.push(&forward, Rule::new(matches, Target::Drop));
        }
        filter.push(
            &forward,
            Rule::new(
                vec![
                    comment_match("kubernetes forwarding rules"),
                    Match::Mark {
                        negated: false,
                        mark: mark.clone(),
                    },
                ],
                Target::Accept,
            ),
        );
        filter.push(
            &forward,
            Rule::new(
                vec![
                    comment_match("kubernetes forwarding conntrack rule"),
                    Match::CtState {
                        negated: false,
                        states: "RELATED,ESTABLISHED",
                    },
                ],
                Target::Accept,
            ),
        );
        // Upstream v1.37 ensures KUBE-FIREWALL and its INPUT/OUTPUT jumps in every family
        // (`iptablesKubeletJumpChains`); its rule exists only with IPv4 localhost NodePorts.
        let fw = ChainName::fixed(ChainName::KUBE_FIREWALL);
        filter.chain(&fw);
        if self.cfg.localhost_nodeports_effective() {
            filter.push(
                &fw,
                Rule::new(
                    vec![
                        comment_match("block incoming localnet connections"),
                        Match::Dst {
                            negated: false,
                            addr: Addr::Net(loopback_net()),
                        },
                        Match::Src {
                            negated: true,
                            addr: Addr::Net(loopback_net()),
                        },
                        Match::CtState {
                            negated: true,
                            states: "RELATED,ESTABLISHED,DNAT",
                        },
                    ],
                    Target::Drop,
                ),
            );
        }
        self.hooks();
    }

    /// The jumps from the builtin chains, in their final top-to-bottom order (upstream inserts
    /// them one by one at position 1, so its list is the reverse of this one per chain).
    pub(super) fn hooks(&mut self) {
        const EXT: &str = "kubernetes externally-visible service portals";
        const PORTALS: &str = "kubernetes service portals";
        const LB_FIREWALL: &str = "kubernetes load balancer firewall";
        const HEALTH: &str = "kubernetes health check service ports";
        const FORWARDING: &str = "kubernetes forwarding rules";
        const POSTROUTING: &str = "kubernetes postrouting rules";
        // (table, builtin chain, only NEW connections, comment, target); a `None` comment is
        // kubelet's own uncommented jump to KUBE-FIREWALL.
        let f = TableName::Filter;
        let n = TableName::Nat;
        let table: [(TableName, &str, bool, Option<&str>, &str); 14] = [
            (f, "INPUT", false, None, ChainName::KUBE_FIREWALL),
            (
                f,
                "INPUT",
                true,
                Some(LB_FIREWALL),
                ChainName::KUBE_PROXY_FIREWALL,
            ),
            (f, "INPUT", false, Some(HEALTH), ChainName::KUBE_NODEPORTS),
            (
                f,
                "INPUT",
                true,
                Some(EXT),
                ChainName::KUBE_EXTERNAL_SERVICES,
            ),
            (
                f,
                "FORWARD",
                true,
                Some(LB_FIREWALL),
                ChainName::KUBE_PROXY_FIREWALL,
            ),
            (
                f,
                "FORWARD",
                false,
                Some(FORWARDING),
                ChainName::KUBE_FORWARD,
            ),
            (f, "FORWARD", true, Some(PORTALS), ChainName::KUBE_SERVICES),
            (
                f,
                "FORWARD",
                true,
                Some(EXT),
                ChainName::KUBE_EXTERNAL_SERVICES,
            ),
            (f, "OUTPUT", false, None, ChainName::KUBE_FIREWALL),
            (
                f,
                "OUTPUT",
                true,
                Some(LB_FIREWALL),
                ChainName::KUBE_PROXY_FIREWALL,
            ),
            (f, "OUTPUT", true, Some(PORTALS), ChainName::KUBE_SERVICES),
            (
                n,
                "PREROUTING",
                false,
                Some(PORTALS),
                ChainName::KUBE_SERVICES,
            ),
            (n, "OUTPUT", false, Some(PORTALS), ChainName::KUBE_SERVICES),
            (
                n,
                "POSTROUTING",
                false,
                Some(POSTROUTING),
                ChainName::KUBE_POSTROUTING,
            ),
        ];
        self.rs.hooks = table
            .into_iter()
            .map(|(table, chain, new_only, comment, to)| {
                let mut matches = Vec::new();
                if new_only {
                    matches.push(Match::CtState {
                        negated: false,
                        states: "NEW",
                    });
                }
                matches.extend(comment.map(comment_match));
                Hook {
                    table,
                    chain: ChainName::fixed(chain),
                    rule: Rule::new(matches, Target::Jump(ChainName::fixed(to))),
                }
            })
            .collect();
    }
}
