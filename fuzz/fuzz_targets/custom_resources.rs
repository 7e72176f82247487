//! Tenants and Credentials as the API server may hand them over (any JSON, e.g. written under
//! another CRD bundle): decoded each on its own, or reported as undecodable with a field path;
//! a decoded Credential's rotation is checked without a panic.
#![no_main]

use bulkhead::api::{Credential, Guarded, Tenant};
use bulkhead::resources::schedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match serde_json::from_slice::<Guarded<Credential>>(body) {
        Ok(Guarded(Ok(credential))) => {
            if let Some(rotation) = &credential.spec.rotation {
                let _ = schedule::policy(rotation);
            }
        }
        Ok(Guarded(Err(bad))) => {
            let _ = bad.explain("Credential");
        }
        Err(_) => {}
    }
    if let Ok(Guarded(Err(bad))) = serde_json::from_slice::<Guarded<Tenant>>(body) {
        let _ = bad.explain("Tenant");
    }
});
