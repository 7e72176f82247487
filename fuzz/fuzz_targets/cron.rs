//! `spec.rotation.schedule`: any text is refused or gives a schedule whose next match is
//! strictly later, found by a bounded search (a slow input is a finding: libFuzzer's timeout).
#![no_main]

use bulkhead::api::credential::RotationSpec;
use bulkhead::resources::schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let spec = RotationSpec {
        every: None,
        schedule: Some(text.to_owned()),
        keep_previous: true,
    };
    if let Ok(policy) = schedule::policy(&spec) {
        let last = jiff::Timestamp::from_second(1_800_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        if let Some(next) = schedule::next_after(&policy, last) {
            assert!(next > last, "{text:?}: {next} is not after {last}");
        }
    }
});
