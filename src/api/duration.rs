//! Go-style durations (`90s`, `5m`, `720h`, `1h30m`), the format Kubernetes users already write
//! in every other manifest. The CRD validates them with CEL's `duration()`; this parser is the
//! controller's own check, so a value the API server let through is still never misread.
//! It accepts exactly the CRD's grammar `^([0-9]+(ms|s|m|h))+$` and never panics;
//! `kube::core::Duration` does neither (see the test
//! `kube_core_duration_is_not_our_grammar_and_panics_on_overflow`).

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a duration: {why} (write it like 90s, 5m, 720h or 1h30m)")]
pub struct ParseDurationError {
    pub value: String,
    pub why: &'static str,
}

/// Parse a Go-style duration: one or more `<integer><unit>` pairs, units `ms`, `s`, `m`, `h`.
pub fn parse(value: &str) -> Result<Duration, ParseDurationError> {
    let err = |why| ParseDurationError {
        value: value.to_owned(),
        why,
    };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    let mut total: u64 = 0;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(err("each part must start with a whole number"));
        }
        let (number, tail) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| err("a number is too large"))?;
        let unit_len = tail.chars().take_while(char::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" => return Err(err("a number has no unit")),
            _ => return Err(err("units are ms, s, m and h")),
        };
        let part = number
            .checked_mul(millis_per_unit)
            .ok_or_else(|| err("it is too long"))?;
        total = total
            .checked_add(part)
            .ok_or_else(|| err("it is too long"))?;
        rest = tail;
    }
    Ok(Duration::from_millis(total))
}

/// Format a duration the way Go prints it (`1h30m0s` style is noisy; this drops zero parts).
pub fn format(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let mut out = String::new();
    let hours = secs / 3600;
    secs %= 3600;
    let minutes = secs / 60;
    secs %= 60;
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if secs > 0 {
        out.push_str(&format!("{secs}s"));
    }
    // Milliseconds too: dropping them printed 2250ms as 2s (found by the duration fuzz target).
    let millis = duration.subsec_millis();
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn format_keeps_milliseconds_past_a_second() {
        for text in ["2250ms", "1h30m", "90m1ms", "59s999ms"] {
            let d = parse(text).unwrap();
            assert_eq!(parse(&format(d)).unwrap(), d, "{text} -> {}", format(d));
        }
        assert_eq!(format(parse("2250ms").unwrap()), "2s250ms");
    }

    use super::*;

    #[test]
    fn parses_single_and_compound_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("720h"), Ok(Duration::from_secs(720 * 3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn refuses_malformed_durations_with_the_reason() {
        for (input, why) in [
            ("", "it is empty"),
            ("10", "a number has no unit"),
            ("5d", "units are ms, s, m and h"),
            ("h", "each part must start with a whole number"),
            ("-5m", "each part must start with a whole number"),
            ("1.5h", "a number has no unit"),
            ("99999999999999999999h", "a number is too large"),
            ("9999999999999999h", "it is too long"),
        ] {
            let err = parse(input).unwrap_err();
            assert_eq!(err.why, why, "input {input:?}");
            assert!(
                err.to_string().contains("720h"),
                "the message shows the fix"
            );
        }
    }

    /// Why this parser and not `kube::core::Duration` (already compiled in): that one parses
    /// Go's whole grammar (signs, fractions, ns/us, a bare "0", the empty string as zero) and
    /// multiplies with `Duration::mul_f64` / `+=`, which panic on overflow. The CRD's CEL
    /// (`^([0-9]+(ms|s|m|h))+$`) and this parser refuse all of those; a flag has no CEL in front
    /// of it, and a controller must not panic on an object an older CRD let through.
    #[test]
    fn kube_core_duration_is_not_our_grammar_and_panics_on_overflow() {
        let kube_parse = |text: &str| text.parse::<kube::core::Duration>();
        // Agrees on what the CEL accepts.
        for text in ["90s", "5m", "720h", "1h30m", "250ms", "24h"] {
            let ours = parse(text).unwrap();
            assert_eq!(Duration::from(kube_parse(text).unwrap()), ours, "{text}");
        }
        // Accepts what the CEL and this parser refuse.
        for text in ["", "0", "1.5h", "-5m", "+5m", "10ns", "3us"] {
            assert!(kube_parse(text).is_ok(), "kube accepts {text:?}");
            assert!(parse(text).is_err(), "we refuse {text:?}");
        }
        assert_eq!(Duration::from(kube_parse("").unwrap()), Duration::ZERO);
        assert!(kube_parse("-5m").unwrap().is_negative());
        // Panics where this parser returns an error.
        for (text, why) in [
            ("99999999999999999999h", "a number is too large"),
            ("9999999999999999h", "it is too long"),
        ] {
            let outcome = std::panic::catch_unwind(|| kube_parse(text));
            assert!(outcome.is_err(), "kube panics on {text:?}");
            assert_eq!(parse(text).unwrap_err().why, why);
        }
    }

    #[test]
    fn format_round_trips() {
        for secs in [1, 59, 60, 61, 3600, 5400, 720 * 3600 + 1] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
    }
}
