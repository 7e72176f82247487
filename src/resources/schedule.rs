//! Rotation time math, in UTC: `every` counts from the last rotation; `schedule` is the first
//! cron match strictly after it.
//!
//! Every search is bounded: a schedule is scanned day by day for at most [`HORIZON_YEARS`]
//! (a few thousand cheap checks), so no cron string can pin a CPU; one that does not fire
//! within that horizon is refused as invalid.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::api::credential::RotationSpec;
use crate::api::duration;

/// A schedule must fire within this many years of any moment (Feb 29 comes at least every
/// 8 years), or it is refused.
pub const HORIZON_YEARS: i16 = 10;

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
            let cron = CronParser::builder()
                .seconds(Seconds::Disallowed)
                .build()
                .parse(schedule)
                .map_err(|e| format!("spec.rotation.schedule {schedule:?} is not a valid cron expression ({e}); e.g. '0 3 * * 1'"))?;
            for (field, values) in [
                ("minute", cron.pattern.minutes.values()),
                ("hour", cron.pattern.hours.values()),
                ("month", cron.pattern.months.values()),
            ] {
                if values.is_empty() {
                    return Err(format!(
                        "spec.rotation.schedule {schedule:?} selects no {field}, so it never fires; e.g. '0 3 * * 1'"
                    ));
                }
            }
            let policy = Policy::Schedule(Box::new(cron));
            // Any start will do: a schedule that fires at all fires at least every 8 years.
            if next_after(&policy, Timestamp::UNIX_EPOCH).is_none() {
                return Err(format!(
                    "spec.rotation.schedule {schedule:?} never fires (no match within {HORIZON_YEARS} years, e.g. a day that month does not have); e.g. '0 3 * * 1'"
                ));
            }
            Ok(policy)
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
        Policy::Schedule(cron) => next_match(cron, last),
    }
}

/// The first minute strictly after `last` that `cron` matches, looked for day by day within
/// [`HORIZON_YEARS`]. croner's own search runs to the year 5000 when nothing matches (13 s
/// for an empty minute set), so it is not used.
fn next_match(cron: &Cron, last: Timestamp) -> Option<Timestamp> {
    let (minutes, hours) = (cron.pattern.minutes.values(), cron.pattern.hours.values());
    let (&first_minute, &first_hour) = (minutes.first()?, hours.first()?);
    let start = last.to_zoned(TimeZone::UTC);
    let end = start
        .date()
        .checked_add(jiff::Span::new().years(HORIZON_YEARS))
        .ok()?;
    let at = |date: jiff::civil::Date, hour: u16, minute: u16| {
        let hour = i8::try_from(hour).ok()?;
        let minute = i8::try_from(minute).ok()?;
        date.at(hour, minute, 0, 0).to_zoned(TimeZone::UTC).ok()
    };
    // The first day: any matching minute after `last` (at most 1440 checks).
    for &hour in &hours {
        for &minute in &minutes {
            let candidate = at(start.date(), hour, minute)?;
            if candidate.timestamp() > last && cron.is_time_matching(&candidate).ok()? {
                return Some(candidate.timestamp());
            }
        }
    }
    // Later days: the day matches iff its first selected minute does.
    let mut date = start.date().tomorrow().ok()?;
    while date <= end {
        let candidate = at(date, first_hour, first_minute)?;
        if cron.is_time_matching(&candidate).ok()? {
            return Some(candidate.timestamp());
        }
        date = date.tomorrow().ok()?;
    }
    None
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
    fn schedules_that_never_fire_are_refused_with_a_reason() {
        // croner accepts an empty minute set; its search then scans to the year 5000.
        let err = policy(&cron(", * * * *")).unwrap_err();
        assert!(
            err.contains("spec.rotation.schedule") && err.contains("never fires"),
            "{err}"
        );
        let err = policy(&cron("0 0 31 2 *")).unwrap_err();
        assert!(err.contains("never fires"), "{err}");
        let err = policy(&cron("0 0 30 2 *")).unwrap_err();
        assert!(err.contains("never fires"), "{err}");
        // Rare but real: the leap day, across the non-leap 2100 (8 years).
        let p = policy(&cron("0 0 29 2 *")).unwrap();
        assert_eq!(
            next_after(&p, ts("2096-03-01T00:00:00Z")),
            Some(ts("2104-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn a_schedule_that_stops_matching_is_not_searched_for_ever() {
        // The horizon bounds the search even for a start where nothing follows in range.
        let p = Policy::Schedule(Box::new(
            CronParser::builder()
                .seconds(Seconds::Disallowed)
                .build()
                .parse("0 0 31 2 *")
                .unwrap(),
        ));
        assert_eq!(next_after(&p, ts("2026-01-01T00:00:00Z")), None);
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
