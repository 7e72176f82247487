//! The identity Secret (`tls.crt`, `tls.key`, `ca.crt`: PEM holding DER) as anyone with
//! access to it may have written it: loaded or refused with a reason, never a panic.
#![no_main]

use std::collections::BTreeMap;

use bulkhead::controlplane::identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], &[u8], &[u8])| {
    let (crt, key, ca) = input;
    let data: BTreeMap<String, Vec<u8>> = [("tls.crt", crt), ("tls.key", key), ("ca.crt", ca)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    let now = jiff::Timestamp::from_second(1_800_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    if let Err(err) = identity::load("bulkhead-identity", &data, now) {
        let _ = err.reason();
        let _ = err.to_string();
    }
    let _ = identity::inspect("bulkhead-identity", &data);
});
