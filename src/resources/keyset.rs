//! Fernet-style key repository: key `0` is staged (the next primary, already accepted by
//! readers), the highest index is primary (used to encrypt), the rest are secondary (decrypt
//! only). Rotation promotes the staged key, stages a fresh one and drops the oldest beyond
//! `size` — the new key always exists before an old one is dropped.

use std::collections::BTreeMap;

/// Keys by index.
pub type KeySet = BTreeMap<u32, String>;

/// Parse a Secret's data into a key set; keys that are not indices are ignored.
pub fn from_data<'a>(data: impl IntoIterator<Item = (&'a String, &'a String)>) -> KeySet {
    data.into_iter()
        .filter_map(|(k, v)| k.parse::<u32>().ok().map(|i| (i, v.clone())))
        .collect()
}

/// A new repository: a staged key 0 and a primary key 1.
pub fn initial(mut new_key: impl FnMut() -> String) -> KeySet {
    let mut keys = KeySet::new();
    keys.insert(1, new_key());
    keys.insert(0, new_key());
    keys
}

/// Whether the key set has a staged key and a primary, and no more than `size` keys.
pub fn is_well_formed(keys: &KeySet, size: usize) -> bool {
    keys.contains_key(&0) && keys.len() >= 2 && keys.len() <= size
}

/// Rotate: staged becomes primary (index max+1), a new staged key 0, oldest secondaries
/// dropped while more than `size` keys remain.
pub fn rotate(keys: &KeySet, size: usize, mut new_key: impl FnMut() -> String) -> KeySet {
    let mut next = keys.clone();
    let max = next.keys().next_back().copied().unwrap_or(0);
    if let Some(staged) = next.remove(&0) {
        next.insert(max.saturating_add(1), staged);
    }
    next.insert(0, new_key());
    let size = size.max(2);
    while next.len() > size {
        // The lowest index above 0 is the oldest secondary.
        let oldest = next.keys().copied().find(|&i| i != 0);
        match oldest {
            Some(i) => {
                next.remove(&i);
            }
            None => break,
        }
    }
    next
}

/// The primary key's index (highest), if any.
pub fn primary(keys: &KeySet) -> Option<u32> {
    keys.keys().copied().filter(|&i| i != 0).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("k{n}")
        }
    }

    #[test]
    fn initial_has_staged_and_primary() {
        let keys = initial(counter());
        assert_eq!(keys.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(primary(&keys), Some(1));
        assert!(is_well_formed(&keys, 2));
    }

    #[test]
    fn rotation_promotes_staged_and_never_loses_the_primary_in_use() {
        let mut keygen = counter();
        let mut keys = initial(&mut keygen);
        for round in 0..50 {
            let before = keys.clone();
            keys = rotate(&keys, 3, &mut keygen);
            // The old staged key is now primary: readers already had it.
            assert_eq!(keys[&primary(&keys).unwrap()], before[&0], "round {round}");
            // The previous primary is still there to decrypt.
            let old_primary = primary(&before).unwrap();
            assert_eq!(
                keys.get(&old_primary),
                before.get(&old_primary),
                "round {round}"
            );
            assert!(keys.len() <= 3);
            assert!(is_well_formed(&keys, 3));
            assert_ne!(keys[&0], before[&0], "a fresh staged key each rotation");
        }
        // After 50 rotations of size 3: staged 0, primary 51, secondary 50.
        assert_eq!(keys.keys().copied().collect::<Vec<_>>(), vec![0, 50, 51]);
    }

    #[test]
    fn growing_then_shrinking_size() {
        let mut keygen = counter();
        let mut keys = initial(&mut keygen);
        for _ in 0..5 {
            keys = rotate(&keys, 16, &mut keygen);
        }
        assert_eq!(keys.len(), 7);
        keys = rotate(&keys, 2, &mut keygen);
        assert_eq!(keys.keys().copied().collect::<Vec<_>>(), vec![0, 7]);
    }

    #[test]
    fn parses_only_index_keys() {
        let data: BTreeMap<String, String> = [("0", "a"), ("3", "b"), ("value", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let keys = from_data(&data);
        assert_eq!(keys.len(), 2);
        assert_eq!(primary(&keys), Some(3));
    }
}
