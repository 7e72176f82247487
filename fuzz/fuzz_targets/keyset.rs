//! A KeySet Secret's data as someone may have edited it (`index=value` lines): read, checked
//! and rotated without a panic; a rotation keeps at most `size` keys and a staged key 0.
#![no_main]

use std::collections::BTreeMap;

use bulkhead::resources::keyset;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, &str)| {
    let (size, text) = input;
    let size = usize::from(size % 20);
    let data: BTreeMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let keys = keyset::from_data(&data);
    let _ = keyset::is_well_formed(&keys, size);
    let _ = keyset::primary(&keys);
    let mut n = 0u32;
    let rotated = keyset::rotate(&keys, size.max(2), || {
        n += 1;
        format!("new-{n}")
    });
    assert!(rotated.contains_key(&0), "no staged key after a rotation");
});
