//! What the control plane answers: every body type and the `Retry-After` header, decoded or
//! refused, never a panic; a honoured wait is never longer than the cap.
#![no_main]

use bulkhead::controlplane::client::{
    HeartbeatReply, IssuedRegistryCredentials, IssuedToken, MAX_RETRY_AFTER, Problem,
    TenantRecord, retry_after,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
        let _ = problem.to_string();
    }
    let _ = serde_json::from_slice::<TenantRecord>(body);
    let _ = serde_json::from_slice::<HeartbeatReply>(body);
    let _ = serde_json::from_slice::<IssuedToken>(body);
    let _ = serde_json::from_slice::<IssuedRegistryCredentials>(body);
    if let Ok(value) = http::HeaderValue::from_bytes(body) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, value);
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        if let Some(wait) = retry_after(&headers, now) {
            assert!(wait <= MAX_RETRY_AFTER);
        }
    }
});
