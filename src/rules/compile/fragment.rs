//! A Service's compiled contribution (`Fragment`): its own chains and its entries in the
//! shared chains, and the compact copy kept once the kernel has them.

use std::sync::Arc;

use super::{ServiceHealth, UdpServicePort};
use crate::model::ServicePortName;
use crate::rules::chain::ChainName;
use crate::rules::dispatch::Entry;
use crate::rules::port_dispatch::PortEntry;
use crate::rules::rule::{ChainGroup, Rule, RuleText};

/// Everything one Service contributes: its own chains, and its entries in the shared chains.
/// Fragments are cached by [`IncrementalCompiler`] and reused while the Service, its slices and
/// the configuration are unchanged.
#[derive(Debug)]
pub(super) struct Fragment {
    /// The Service's own nat chains while they are compiled (then moved to `group`).
    pub(super) nat: OwnChains,
    /// The Service's own nat chains (SVC, SVL, EXT, FW, SEP).
    pub(super) group: Arc<ChainGroup>,
    /// Destination entries for nat KUBE-SERVICES (dispatched linearly or by the tree).
    pub(super) entries: Vec<Entry>,
    /// Rules for nat KUBE-NODEPORTS (dispatched linearly or by the port tree).
    pub(super) nodeport_entries: Vec<PortEntry>,
    /// Rules for the shared filter chains (most Services have none).
    pub(super) filter: FilterRules,
    pub(super) health: Option<Box<ServiceHealth>>,
    pub(super) no_local_internal: usize,
    pub(super) no_local_external: usize,
    /// Which service port owns the group's chains: each port's chains are declared together,
    /// so per port the number of chains declared once its own were, and the port.
    pub(super) owners: Vec<(usize, Arc<ServicePortName>)>,
    pub(super) udp: Vec<UdpServicePort>,
    /// A copy made by [`Fragment::compacted`]: text released, owners dropped.
    pub(super) compact: bool,
}

impl Fragment {
    /// A deep copy in fresh allocations with the group's text released (digests kept) and
    /// without `owners` (explanations use fresh compilations). An empty group is shared.
    pub(super) fn compacted(&self) -> Fragment {
        let group = if self.group.chain_count() == 0 {
            self.group.clone()
        } else {
            Arc::new(self.group.released())
        };
        Fragment {
            nat: OwnChains::default(),
            group,
            entries: self.entries.iter().map(Entry::rendered).collect(),
            nodeport_entries: self
                .nodeport_entries
                .iter()
                .map(PortEntry::rendered)
                .collect(),
            filter: self.filter.clone(),
            health: self.health.clone(),
            no_local_internal: self.no_local_internal,
            no_local_external: self.no_local_external,
            owners: Vec::new(),
            udp: self.udp.clone(),
            compact: true,
        }
    }
}

/// A Service's own chains in the order they were first declared.
#[derive(Debug, Default)]
pub(super) struct OwnChains(pub(super) Vec<RuleText>);

impl OwnChains {
    /// Declares a chain (empty if new) and returns its rules for appending. Policy chains are
    /// declared before the endpoint chains, so the search is short.
    pub(super) fn chain(&mut self, name: &ChainName) -> &mut RuleText {
        let index = match self.0.iter().position(|c| c.chain() == name) {
            Some(index) => index,
            None => {
                self.0.push(RuleText::new(name.clone()));
                self.0.len() - 1
            }
        };
        &mut self.0[index]
    }

    pub(super) fn push(&mut self, chain: &ChainName, rule: Rule) {
        self.chain(chain).push_rule(&rule);
    }

    /// Adds a complete chain that was not declared before.
    pub(super) fn set(&mut self, rules: RuleText) {
        self.0.push(rules);
    }
}

/// A Service's rules in the four shared filter chains. Most Services have none, so the four
/// lists are boxed and made with the first rule: a fragment is 256 bytes smaller (2.5 MB at
/// 10,000 Services, twice while the compiler keeps both a fragment and its compact copy).
#[derive(Debug, Clone, Default)]
pub(super) struct FilterRules(Option<Box<FilterChains>>);

/// The four lists, for filter KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL and
/// KUBE-NODEPORTS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FilterChains {
    pub(super) services: RuleText,
    pub(super) external: RuleText,
    pub(super) firewall: RuleText,
    pub(super) nodeports: RuleText,
}

impl FilterChains {
    fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.external.is_empty()
            && self.firewall.is_empty()
            && self.nodeports.is_empty()
    }
}

impl FilterRules {
    /// The lists for appending (made empty on first use).
    pub(super) fn lists(&mut self) -> &mut FilterChains {
        self.0.get_or_insert_with(|| {
            Box::new(FilterChains {
                services: RuleText::new(ChainName::fixed(ChainName::KUBE_SERVICES)),
                external: RuleText::new(ChainName::fixed(ChainName::KUBE_EXTERNAL_SERVICES)),
                firewall: RuleText::new(ChainName::fixed(ChainName::KUBE_PROXY_FIREWALL)),
                nodeports: RuleText::new(ChainName::fixed(ChainName::KUBE_NODEPORTS)),
            })
        })
    }

    /// The lists, if any rule was added.
    pub(super) fn chains(&self) -> Option<&FilterChains> {
        self.0.as_deref().filter(|c| !c.is_empty())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.chains().is_none()
    }
}

/// The same rules (no lists and empty lists alike).
impl PartialEq for FilterRules {
    fn eq(&self, other: &Self) -> bool {
        self.chains() == other.chains()
    }
}
