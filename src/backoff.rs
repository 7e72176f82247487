//! The one retry schedule of the operator: a first delay doubling per failure up to a cap.
//!
//! Used by the reconciles (per object, [`Backoff`]), preflight, leader election and the
//! control-plane client; each picks its own numbers and its own jitter, none writes the
//! doubling again.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use kube::core::DynamicObject;
use kube::runtime::reflector::ObjectRef;

/// Doublings past which the delay no longer grows (the cap is reached long before anyway);
/// keeps the multiplication far from overflow.
const MAX_DOUBLINGS: u32 = 16;

/// An exponential schedule: `initial` after the first failure, doubling per failure, at most
/// `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub initial: Duration,
    pub max: Duration,
}

impl Schedule {
    /// Reconciles and preflight: about 1 s doubling to 5 min.
    pub const RECONCILE: Self = Self::new(Duration::from_secs(1), Duration::from_secs(300));

    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The delay after failure number `failures` (1-based; 0 counts as 1), before jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(MAX_DOUBLINGS);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }

    /// Sleep for the delay after failure number `failures`, scaled by `factor` (see [`scale`]).
    pub async fn sleep(&self, failures: u32, factor: f64) {
        tokio::time::sleep(scale(self.delay(failures), factor)).await;
    }
}

/// Shorten a delay by a factor in [0.5, 1.0] (values outside are clamped), so that many
/// processes retrying one server do not retry in step.
pub fn scale(delay: Duration, factor: f64) -> Duration {
    delay.mul_f64(factor.clamp(0.5, 1.0))
}

/// A random factor in [0.5, 1.0] for [`scale`]. A failing OS RNG only makes it
/// deterministic, which is harmless for a retry delay.
pub fn random_factor() -> f64 {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    0.5 + f64::from(byte[0]) / 510.0
}

/// Lengthen a delay by up to +10 %, derived from `key` and the attempt, so retries of many
/// objects spread out without a random number generator in the hot path.
pub fn spread(delay: Duration, key: &str, failures: u32) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain(failures.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let tenth = delay / 10;
    let extra = u32::try_from(h % 1000).unwrap_or(0);
    delay + tenth.mul_f64(f64::from(extra) / 1000.0)
}

/// Per-object failure counts on [`Schedule::RECONCILE`], reset on success.
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
        spread(Schedule::RECONCILE.delay(*count), &key.to_string(), *count)
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
        let delays: Vec<u64> = (1..=11)
            .map(|n| Schedule::RECONCILE.delay(n).as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(Schedule::RECONCILE.delay(u32::MAX), Schedule::RECONCILE.max);
        assert_eq!(Schedule::RECONCILE.delay(0), Schedule::RECONCILE.initial);
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

    #[test]
    fn scaling_only_shortens_and_at_most_by_half() {
        let s = Schedule::new(Duration::from_millis(250), Duration::from_secs(5));
        assert_eq!(scale(s.delay(1), 1.0), Duration::from_millis(250));
        assert_eq!(scale(s.delay(2), 1.0), Duration::from_millis(500));
        assert_eq!(scale(s.delay(3), 1.0), Duration::from_secs(1));
        assert_eq!(scale(s.delay(30), 1.0), Duration::from_secs(5));
        assert_eq!(scale(s.delay(2), 0.5), Duration::from_millis(250));
        assert_eq!(scale(s.delay(2), 0.0), Duration::from_millis(250));
        assert_eq!(scale(s.delay(2), 7.0), Duration::from_millis(500));
        for _ in 0..100 {
            let f = random_factor();
            assert!((0.5..=1.0).contains(&f), "{f}");
        }
    }

    #[test]
    fn spread_adds_at_most_a_tenth_and_differs_per_key() {
        let d = Duration::from_secs(10);
        let spreads: Vec<Duration> = (0..50).map(|i| spread(d, &format!("ns/{i}"), 1)).collect();
        assert!(spreads.iter().all(|s| *s >= d && *s <= d + d / 10));
        assert!(spreads.iter().any(|s| *s != spreads[0]), "keys spread out");
        assert_eq!(spread(d, "ns/a", 3), spread(d, "ns/a", 3), "deterministic");
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_waits_the_scheduled_delay_on_the_tokio_clock() {
        let s = Schedule::new(Duration::from_secs(2), Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        s.sleep(3, 1.0).await;
        assert_eq!(start.elapsed(), Duration::from_secs(8));
        let start = tokio::time::Instant::now();
        s.sleep(3, 0.5).await;
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        let start = tokio::time::Instant::now();
        s.sleep(100, 1.0).await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
