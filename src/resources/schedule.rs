//! Rotation time math, in UTC: `every` counts from the last rotation; `schedule` is the first
//! cron match strictly after it.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::api::credential::RotationSpec;
use crate::api::duration;

/// A validated rotation policy.
#[derive(Clone, Debug)]
pub enum Policy {
    Every(Duration),
    Schedule(Box<Cron>),
}

/// Parse the rotation block; the error names the field and the fix.
pub fn policy(rotation: &RotationSpec) -> Result<Policy, String> {
    match (&rotation.every, &rotation.schedule) {
        (Some(every), None) => {
            let d = duration::parse(every).map_err(|e| format!("spec.rotation.every: {e}"))?;
            if d < Duration::from_secs(60) {
                return Err("spec.rotation.every must be at least 1m".to_owned());
            }
            Ok(Policy::Every(d))
        }
        (None, Some(schedule)) => {
            if schedule.split_whitespace().count() != 5 {
                return Err(format!(
                    "spec.rotation.schedule {schedule:?} must have 5 fields (minute hour day-of-month month day-of-week), e.g. '0 3 * * 1'"
                ));
            }
            CronParser::builder()
                .seconds(Seconds::Disallowed)
                .build()
                .parse(schedule)
                .map(|c| Policy::Schedule(Box::new(c)))
                .map_err(|e| format!("spec.rotation.schedule {schedule:?} is not a valid cron expression ({e}); e.g. '0 3 * * 1'"))
        }
        _ => Err("spec.rotation needs exactly one of every or schedule".to_owned()),
    }
}

/// When the rotation after `last` is due.
pub fn next_after(policy: &Policy, last: Timestamp) -> Option<Timestamp> {
    match policy {
        Policy::Every(d) => {
            let span = jiff::SignedDuration::try_from(*d).ok()?;
            last.checked_add(span).ok()
        }
        Policy::Schedule(cron) => {
            let zoned = last.to_zoned(TimeZone::UTC);
            cron.find_next_occurrence(&zoned, false)
                .ok()
                .map(|z| z.timestamp())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn every(s: &str) -> RotationSpec {
        RotationSpec {
            every: Some(s.into()),
            schedule: None,
            keep_previous: true,
        }
    }

    fn cron(s: &str) -> RotationSpec {
        RotationSpec {
            every: None,
            schedule: Some(s.into()),
            keep_previous: true,
        }
    }

    #[test]
    fn every_counts_from_the_last_rotation() {
        let p = policy(&every("720h")).unwrap();
        assert_eq!(
            next_after(&p, ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-31T00:00:00Z"))
        );
        let p = policy(&every("90m")).unwrap();
        assert_eq!(
            next_after(&p, ts("2026-03-29T00:30:00Z")),
            Some(ts("2026-03-29T02:00:00Z"))
        );
    }

    #[test]
    fn schedule_is_strictly_after_and_in_utc() {
        let p = policy(&cron("0 3 * * 1")).unwrap();
        // 2026-11-23 is a Monday.
        assert_eq!(
            next_after(&p, ts("2026-11-22T12:00:00Z")),
            Some(ts("2026-11-23T03:00:00Z"))
        );
        // Exactly at a match: the next one, a week later (never rotate twice for one slot).
        assert_eq!(
            next_after(&p, ts("2026-11-23T03:00:00Z")),
            Some(ts("2026-11-30T03:00:00Z"))
        );
        // The European DST switch night (2026-03-29) changes nothing in UTC.
        let p = policy(&cron("30 1 * * *")).unwrap();
        assert_eq!(
            next_after(&p, ts("2026-03-29T00:00:00Z")),
            Some(ts("2026-03-29T01:30:00Z"))
        );
        assert_eq!(
            next_after(&p, ts("2026-10-25T01:30:00Z")),
            Some(ts("2026-10-26T01:30:00Z"))
        );
    }

    #[test]
    fn schedule_edges_month_end_leap_day_and_year_end() {
        let p = policy(&cron("0 0 29 2 *")).unwrap();
        assert_eq!(
            next_after(&p, ts("2026-03-01T00:00:00Z")),
            Some(ts("2028-02-29T00:00:00Z"))
        );
        let p = policy(&cron("59 23 31 12 *")).unwrap();
        assert_eq!(
            next_after(&p, ts("2026-12-31T23:59:00Z")),
            Some(ts("2027-12-31T23:59:00Z"))
        );
        let p = policy(&cron("*/15 * * * *")).unwrap();
        assert_eq!(
            next_after(&p, ts("2026-12-31T23:50:00Z")),
            Some(ts("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn bad_policies_name_the_field() {
        assert!(
            policy(&every("30s"))
                .unwrap_err()
                .contains("spec.rotation.every")
        );
        assert!(
            policy(&every("soon"))
                .unwrap_err()
                .contains("spec.rotation.every")
        );
        assert!(policy(&cron("0 3 * *")).unwrap_err().contains("5 fields"));
        assert!(
            policy(&cron("0 25 * * *"))
                .unwrap_err()
                .contains("spec.rotation.schedule")
        );
        let both = RotationSpec {
            every: Some("1h".into()),
            schedule: Some("* * * * *".into()),
            keep_previous: true,
        };
        assert!(policy(&both).unwrap_err().contains("exactly one"));
    }
}
