//! "Now" and the dates in upstream's output.
//!
//! Upstream takes "now" as `datetime.utcnow().timestamp()`, the UTC wall clock read as
//! local time: off by the UTC offset on hosts not running in UTC. We use the real epoch
//! time and print dates in UTC, which is what upstream does on a relay set to UTC (the
//! normal case).

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Microseconds since the epoch (upstream's clock has microsecond resolution).
pub fn now_micros() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Float seconds from microseconds, as Python's `timestamp()` returns them.
pub fn micros_to_secs(micros: i64) -> f64 {
    (micros / 1_000_000) as f64 + (micros % 1_000_000) as f64 / 1e6
}

/// (year, month 1..=12, day 1..=31) of a day number counted from 1970-01-01, by the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `%b %d` of a timestamp in UTC, e.g. `Jan 05`: the date in upstream's verbose lines.
pub fn month_day(secs: f64) -> String {
    let (_, month, day) = civil_from_days((secs.floor() as i64).div_euclid(86_400));
    let name = MONTHS
        .get(month.saturating_sub(1) as usize)
        .copied()
        .unwrap_or("???");
    format!("{name} {day:02}")
}

/// Python's `str(datetime)` of a UTC timestamp in microseconds:
/// `YYYY-MM-DD HH:MM:SS.ffffff`, the fraction left out when it is zero.
pub fn datetime_string(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let tod = secs.rem_euclid(86_400);
    let (h, m, s) = (tod / 3600, tod / 60 % 60, tod % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}");
    if frac != 0 {
        out.push_str(&format!(".{frac:06}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_python() {
        assert_eq!(month_day(0.0), "Jan 01");
        // 2026-11-30 18:30:00 UTC
        assert_eq!(month_day(1_796_063_400.0), "Nov 30");
        assert_eq!(
            datetime_string(1_796_063_400_000_000),
            "2026-11-30 18:30:00"
        );
        assert_eq!(
            datetime_string(951_782_400_000_001),
            "2000-02-29 00:00:00.000001"
        );
        assert_eq!(micros_to_secs(1_500_000), 1.5);
    }
}
