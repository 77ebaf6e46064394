//! A map that is cheap to copy and to change a little: a shared base plus a small overlay of
//! changes, folded into a fresh base once it grows past a fraction of the base. The planner's
//! record of the kernel is one: a partial sync copies it and changes a few Services, in time
//! proportional to the change (amortised), not to the cluster.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// Overlay entries allowed before folding, beyond an eighth of the base.
const FOLD_SLACK: usize = 64;

#[derive(Debug, Clone)]
pub struct Layered<K, V> {
    base: Arc<HashMap<K, V>>,
    /// Changes over `base`: `Some` replaces or adds, `None` removes.
    overlay: HashMap<K, Option<V>>,
}

impl<K, V> Default for Layered<K, V> {
    fn default() -> Self {
        Layered {
            base: Arc::new(HashMap::new()),
            overlay: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Layered<K, V> {
    pub fn from_map(map: HashMap<K, V>) -> Self {
        Layered {
            base: Arc::new(map),
            overlay: HashMap::new(),
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.overlay.get(key) {
            Some(value) => value.as_ref(),
            None => self.base.get(key),
        }
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.overlay.insert(key, Some(value));
        self.fold_if_large();
    }

    pub fn remove(&mut self, key: &K) {
        if self.base.contains_key(key) {
            self.overlay.insert(key.clone(), None);
            self.fold_if_large();
        } else {
            self.overlay.remove(key);
        }
    }

    /// Every entry (each key once), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let base = self
            .base
            .iter()
            .filter(|(key, _)| !self.overlay.contains_key(*key));
        let overlay = self
            .overlay
            .iter()
            .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)));
        base.chain(overlay)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Moves the overlay into a base of its own once it is large (one copy of the base per
    /// about `base/8` changes).
    fn fold_if_large(&mut self) {
        if self.overlay.len() <= FOLD_SLACK + self.base.len() / 8 {
            return;
        }
        let base = Arc::make_mut(&mut self.base);
        for (key, value) in self.overlay.drain() {
            match value {
                Some(value) => base.insert(key, value),
                None => base.remove(&key),
            };
        }
    }
}

/// Equal when they hold the same entries, however layered.
impl<K: Hash + Eq + Clone, V: Clone + PartialEq> PartialEq for Layered<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Hash + Eq + Clone, V: Clone + Eq> Eq for Layered<K, V> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_across_folds_and_copies() {
        let mut layered: Layered<u32, u32> = Layered::default();
        let mut model: HashMap<u32, u32> = HashMap::new();
        let mut copies = Vec::new();
        for i in 0..5000u32 {
            let key = (i * 7919) % 1000;
            if i % 3 == 0 {
                layered.remove(&key);
                model.remove(&key);
            } else {
                layered.insert(key, i);
                model.insert(key, i);
            }
            if i % 997 == 0 {
                copies.push((layered.clone(), model.clone()));
            }
        }
        assert_eq!(layered.len(), model.len());
        for (k, v) in &model {
            assert_eq!(layered.get(k), Some(v));
        }
        assert_eq!(layered, Layered::from_map(model));
        // Copies taken earlier are unaffected by later changes.
        for (copy, snapshot) in copies {
            assert_eq!(copy, Layered::from_map(snapshot));
        }
    }
}
