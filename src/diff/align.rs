//! Aligning two rule lists: which desired rules are missing from the live chain and which live
//! rules are extra, keeping order (a longest common subsequence over canonical rule text).

/// Above this many cells the alignment falls back to a multiset comparison, which still finds
/// missing and extra rules but not reordering.
const MAX_CELLS: usize = 4_000_000;

/// The result of aligning `desired` with `live`: indices into each list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alignment {
    /// Desired rules that have no partner in the live list.
    pub missing: Vec<usize>,
    /// Live rules that have no partner in the desired list.
    pub extra: Vec<usize>,
}

/// Aligns two lists of canonical rule texts.
pub fn align(desired: &[String], live: &[String]) -> Alignment {
    let prefix = desired.iter().zip(live).take_while(|(a, b)| a == b).count();
    let suffix = desired[prefix..]
        .iter()
        .rev()
        .zip(live[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let d = &desired[prefix..desired.len() - suffix];
    let l = &live[prefix..live.len() - suffix];
    let (missing, extra) = if d.len().saturating_mul(l.len()) > MAX_CELLS {
        multiset(d, l)
    } else {
        lcs(d, l)
    };
    Alignment {
        missing: missing.into_iter().map(|i| i + prefix).collect(),
        extra: extra.into_iter().map(|i| i + prefix).collect(),
    }
}

fn lcs(d: &[String], l: &[String]) -> (Vec<usize>, Vec<usize>) {
    let (n, m) = (d.len(), l.len());
    // table[i][j] = LCS length of d[i..] and l[j..]
    let mut table = vec![0u32; (n + 1) * (m + 1)];
    let at = |i: usize, j: usize| i * (m + 1) + j;
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            table[at(i, j)] = if d[i] == l[j] {
                table[at(i + 1, j + 1)] + 1
            } else {
                table[at(i + 1, j)].max(table[at(i, j + 1)])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    while i < n && j < m {
        if d[i] == l[j] {
            i += 1;
            j += 1;
        } else if table[at(i + 1, j)] >= table[at(i, j + 1)] {
            missing.push(i);
            i += 1;
        } else {
            extra.push(j);
            j += 1;
        }
    }
    missing.extend(i..n);
    extra.extend(j..m);
    (missing, extra)
}

fn multiset(d: &[String], l: &[String]) -> (Vec<usize>, Vec<usize>) {
    use std::collections::HashMap;
    let mut counts: HashMap<&str, isize> = HashMap::new();
    for r in l {
        *counts.entry(r).or_default() += 1;
    }
    let mut missing = Vec::new();
    for (i, r) in d.iter().enumerate() {
        let c = counts.entry(r).or_default();
        if *c > 0 {
            *c -= 1;
        } else {
            missing.push(i);
        }
    }
    let mut wanted: HashMap<&str, isize> = HashMap::new();
    for r in d {
        *wanted.entry(r).or_default() += 1;
    }
    let mut extra = Vec::new();
    for (j, r) in l.iter().enumerate() {
        let c = wanted.entry(r).or_default();
        if *c > 0 {
            *c -= 1;
        } else {
            extra.push(j);
        }
    }
    (missing, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_missing_extra_and_moves() {
        let a = align(&v(&["a", "b", "c", "d"]), &v(&["a", "c", "x", "d"]));
        assert_eq!(
            a,
            Alignment {
                missing: vec![1],
                extra: vec![2]
            }
        );
        let moved = align(&v(&["a", "b", "c"]), &v(&["b", "a", "c"]));
        assert_eq!(moved.missing.len(), 1);
        assert_eq!(moved.extra.len(), 1);
        assert_eq!(align(&v(&["a"]), &v(&["a"])), Alignment::default());
        assert_eq!(
            align(&v(&["a", "b"]), &v(&[])),
            Alignment {
                missing: vec![0, 1],
                extra: vec![]
            }
        );
    }

    #[test]
    fn multiset_fallback_agrees_on_membership() {
        let (m, e) = multiset(&v(&["a", "b", "b"]), &v(&["b", "c"]));
        assert_eq!(m, vec![0, 2]);
        assert_eq!(e, vec![1]);
    }
}
