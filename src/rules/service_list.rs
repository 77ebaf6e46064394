//! A persistent list of per-Service values in Service order (the rule set's and the planner's
//! Service chain groups, the compiler's fragments).
//!
//! The values sit in shared chunks of about [`CHUNK`] entries under one shared index: cloning
//! the list is one reference-count increment, and changing one Service copies one chunk and
//! the index of chunk pointers (a few hundred pointers at 50,000 Services), not one pointer
//! per Service. A sync that changes nothing therefore hands the same list on in O(1), and one
//! that changes a Service pays for that Service, not for the cluster.

use std::fmt;
use std::sync::Arc;

use crate::model::ServiceName;

/// Entries per chunk when a list is built; a chunk is split in two past twice as many.
const CHUNK: usize = 128;

/// A value filed under one Service, with what it adds to the list's totals.
pub trait Keyed {
    /// The Service the value belongs to (unique in a list).
    fn key(&self) -> &ServiceName;
    /// Chains and rules the value contributes (summed over the list, kept up to date).
    fn counts(&self) -> (usize, usize) {
        (0, 0)
    }
}

/// Values in Service order, at most one per Service (see the module header).
#[derive(Clone)]
pub struct ServiceList<V> {
    /// Non-empty chunks, each sorted, all in order.
    chunks: Arc<Vec<Arc<Vec<V>>>>,
    len: usize,
    chains: usize,
    rules: usize,
}

impl<V> Default for ServiceList<V> {
    fn default() -> Self {
        ServiceList {
            chunks: Arc::new(Vec::new()),
            len: 0,
            chains: 0,
            rules: 0,
        }
    }
}

impl<V: Keyed + Clone> ServiceList<V> {
    /// A list of `values`, which must be in Service order without repeats.
    pub fn from_sorted(values: impl IntoIterator<Item = V>) -> Self {
        let mut list = ServiceList::default();
        let mut chunks = Vec::new();
        let mut chunk = Vec::with_capacity(CHUNK);
        for value in values {
            debug_assert!(
                chunk
                    .last()
                    .or_else(|| chunks.last().and_then(|c: &Arc<Vec<V>>| c.last()))
                    .is_none_or(|last: &V| last.key() < value.key()),
                "values in Service order"
            );
            list.add_counts(&value);
            list.len += 1;
            chunk.push(value);
            if chunk.len() == CHUNK {
                chunks.push(Arc::new(std::mem::replace(
                    &mut chunk,
                    Vec::with_capacity(CHUNK),
                )));
            }
        }
        if !chunk.is_empty() {
            chunk.shrink_to_fit();
            chunks.push(Arc::new(chunk));
        }
        list.chunks = Arc::new(chunks);
        list
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sum of the values' chain counts.
    pub fn chain_count(&self) -> usize {
        self.chains
    }

    /// Sum of the values' rule counts.
    pub fn rule_count(&self) -> usize {
        self.rules
    }

    /// The values in Service order.
    pub fn iter(&self) -> impl Iterator<Item = &V> + '_ {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// The chunk that holds `key` or would take it, and the position in it.
    fn locate(&self, key: &ServiceName) -> Option<(usize, Result<usize, usize>)> {
        if self.chunks.is_empty() {
            return None;
        }
        let after = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|last| last.key() < key));
        let index = after.min(self.chunks.len() - 1);
        let position = self.chunks[index].binary_search_by(|value| value.key().cmp(key));
        Some((index, position))
    }

    /// The value of Service `key`.
    pub fn get(&self, key: &ServiceName) -> Option<&V> {
        match self.locate(key)? {
            (chunk, Ok(position)) => self.chunks[chunk].get(position),
            (_, Err(_)) => None,
        }
    }

    /// Adds `value`, or replaces the value of the same Service (returned).
    pub fn insert(&mut self, value: V) -> Option<V> {
        self.add_counts(&value);
        let Some((index, position)) = self.locate(value.key()) else {
            self.len = 1;
            self.chunks = Arc::new(vec![Arc::new(vec![value])]);
            return None;
        };
        let chunks = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut chunks[index]);
        match position {
            Ok(position) => {
                let old = std::mem::replace(&mut chunk[position], value);
                self.sub_counts(&old);
                Some(old)
            }
            Err(position) => {
                chunk.insert(position, value);
                self.len += 1;
                if chunk.len() > 2 * CHUNK {
                    let tail = chunk.split_off(CHUNK);
                    chunks.insert(index + 1, Arc::new(tail));
                }
                None
            }
        }
    }

    /// Removes the value of Service `key`.
    pub fn remove(&mut self, key: &ServiceName) -> Option<V> {
        let (index, Ok(position)) = self.locate(key)? else {
            return None;
        };
        let chunks = Arc::make_mut(&mut self.chunks);
        let chunk = Arc::make_mut(&mut chunks[index]);
        let old = chunk.remove(position);
        if chunk.is_empty() {
            chunks.remove(index);
        }
        self.len -= 1;
        self.sub_counts(&old);
        Some(old)
    }

    fn add_counts(&mut self, value: &V) {
        let (chains, rules) = value.counts();
        self.chains += chains;
        self.rules += rules;
    }

    fn sub_counts(&mut self, value: &V) {
        let (chains, rules) = value.counts();
        self.chains -= chains;
        self.rules -= rules;
    }
}

/// Equal values in the same order, however chunked.
impl<V: Keyed + Clone + PartialEq> PartialEq for ServiceList<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<V: Keyed + Clone + Eq> Eq for ServiceList<V> {}

impl<V: Keyed + Clone + fmt::Debug> fmt::Debug for ServiceList<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Item(ServiceName, usize);

    impl Keyed for Item {
        fn key(&self) -> &ServiceName {
            &self.0
        }
        fn counts(&self) -> (usize, usize) {
            (1, self.1)
        }
    }

    fn name(i: usize) -> ServiceName {
        ServiceName::new("ns", format!("svc{i:05}"))
    }

    #[test]
    fn behaves_as_an_ordered_map_across_splits_removals_and_copies() {
        let mut list: ServiceList<Item> = ServiceList::from_sorted((0..1000).map(|i| {
            let i = i * 3;
            Item(name(i), i)
        }));
        let mut model: BTreeMap<ServiceName, usize> =
            (0..1000).map(|i| (name(i * 3), i * 3)).collect();
        let mut copies = Vec::new();
        for step in 0..6000usize {
            let i = (step * 7919) % 3100;
            if step % 3 == 0 {
                assert_eq!(list.remove(&name(i)).map(|v| v.1), model.remove(&name(i)));
            } else {
                assert_eq!(
                    list.insert(Item(name(i), step)).map(|v| v.1),
                    model.insert(name(i), step)
                );
            }
            if step % 1499 == 0 {
                copies.push((list.clone(), model.clone()));
            }
        }
        let expect = |list: &ServiceList<Item>, model: &BTreeMap<ServiceName, usize>| {
            let items: Vec<(ServiceName, usize)> =
                list.iter().map(|v| (v.0.clone(), v.1)).collect();
            let wanted: Vec<(ServiceName, usize)> =
                model.iter().map(|(k, v)| (k.clone(), *v)).collect();
            assert_eq!(items, wanted);
            assert_eq!(list.len(), model.len());
            assert_eq!(list.chain_count(), model.len());
            assert_eq!(list.rule_count(), model.values().sum::<usize>());
            for i in 0..3100 {
                assert_eq!(
                    list.get(&name(i)).map(|v| v.1),
                    model.get(&name(i)).copied()
                );
            }
        };
        expect(&list, &model);
        assert_eq!(
            list,
            ServiceList::from_sorted(model.iter().map(|(k, v)| Item(k.clone(), *v)))
        );
        // Copies taken earlier are unaffected by later changes.
        for (copy, model) in &copies {
            expect(copy, model);
        }
        // Emptied completely, then used again.
        for i in 0..3100 {
            list.remove(&name(i));
        }
        assert!(list.is_empty());
        assert_eq!((list.chain_count(), list.rule_count()), (0, 0));
        list.insert(Item(name(5), 2));
        assert_eq!(list.get(&name(5)).map(|v| v.1), Some(2));
    }
}
