//! `spec.rotation.every`, `syncInterval`, `ttl` and the duration flags: any text parses or is
//! refused, never panics; what parses prints back to the same duration.
#![no_main]

use bulkhead::api::duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(d) = duration::parse(text) {
        let printed = duration::format(d);
        assert_eq!(duration::parse(&printed).ok(), Some(d), "{text:?} -> {printed:?}");
    }
});
