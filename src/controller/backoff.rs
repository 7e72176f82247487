//! Per-object exponential backoff: about 1 s doubling to 5 min, reset on success.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kube::core::DynamicObject;
use kube::runtime::reflector::ObjectRef;

/// First retry delay.
pub const INITIAL: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX: Duration = Duration::from_secs(300);

/// The delay before retry number `failures` (1-based), before jitter.
pub fn delay_for(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    INITIAL.saturating_mul(1 << exponent).min(MAX)
}

/// Up to +10 % jitter, derived from the key and attempt so retries of many objects spread out
/// without a random number generator in the hot path.
fn jitter(delay: Duration, key: &str, failures: u32) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(failures.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let tenth = delay / 10;
    let extra = u32::try_from(h % 1000).unwrap_or(0);
    delay + tenth.mul_f64(f64::from(extra) / 1000.0)
}

/// Failure counts per object.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<ObjectRef<DynamicObject>, u32>>,
}

impl Backoff {
    /// Count one more failure for the object and return how long to wait.
    pub fn next_delay(&self, key: &ObjectRef<DynamicObject>) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(key.clone()).or_insert(0);
        *count = count.saturating_add(1);
        jitter(delay_for(*count), &key.to_string(), *count)
    }

    /// Forget the object's failures after a success.
    pub fn reset(&self, key: &ObjectRef<DynamicObject>) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Tenant;

    #[test]
    fn doubles_from_one_second_to_five_minutes() {
        let delays: Vec<u64> = (1..=11).map(|n| delay_for(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(delay_for(u32::MAX), MAX);
    }

    #[test]
    fn per_object_and_reset_on_success() {
        let backoff = Backoff::default();
        let a = ObjectRef::<Tenant>::new("tenant").within("a").erase();
        let b = ObjectRef::<Tenant>::new("tenant").within("b").erase();
        let first = backoff.next_delay(&a);
        let second = backoff.next_delay(&a);
        let third = backoff.next_delay(&a);
        assert!(first >= Duration::from_secs(1) && first < Duration::from_millis(1100));
        assert!(second >= Duration::from_secs(2) && second < Duration::from_millis(2200));
        assert!(third >= Duration::from_secs(4) && third < Duration::from_millis(4400));
        // Another object starts from the beginning.
        assert!(backoff.next_delay(&b) < Duration::from_millis(1100));
        backoff.reset(&a);
        assert!(backoff.next_delay(&a) < Duration::from_millis(1100));
    }
}
