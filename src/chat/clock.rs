//! The wall clock as text: session ids (`YYYYMMDD-HHMMSS-mmm`), RFC 3339 timestamps for
//! session files, and the `strftime` the chat templates call (`strftime_now`). Calendar
//! arithmetic is the `time` crate's; everything here is UTC.
//!
//! Invariants: ids from [`new_id`] strictly increase within a process (so they are
//! unique and sort by creation time); timestamps have milliseconds and a `Z`, so they sort
//! as strings; a time before 1970 (or past the `time` crate's range) shows as the epoch.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// A new session id, `YYYYMMDD-HHMMSS-mmm` (UTC, milliseconds). Ids from one process
/// strictly increase (a clash moves the id a millisecond on), so they are unique and sort
/// by creation time.
pub fn new_id() -> String {
    static LAST_MS: Mutex<u64> = Mutex::new(0);
    let now = unix_ms(SystemTime::now());
    let ms = match LAST_MS.lock() {
        Ok(mut last) => {
            *last = now.max(*last + 1);
            *last
        }
        // A panic elsewhere while holding the lock; the clock alone still gives an id.
        Err(poisoned) => {
            let mut last = poisoned.into_inner();
            *last = now.max(*last + 1);
            *last
        }
    };
    let t = utc_from_unix_ms(ms);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}-{:03}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Now as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    format_rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T09:05:00.123Z`. Times before
/// 1970 are shown as the epoch.
pub fn format_rfc3339(t: SystemTime) -> String {
    let t = utc_from_unix_ms(unix_ms(t));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The calendar date and time (UTC) of `ms` milliseconds after the Unix epoch.
fn utc_from_unix_ms(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Seconds since the Unix epoch now (0 for a clock set before it).
pub fn unix_secs_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A small `strftime` for a UTC timestamp (seconds since the epoch); a time past the
/// `time` crate's range (±9999 years) is shown as the epoch.
pub fn strftime_utc(format: &str, unix_secs: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(unix_secs).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (year, month, day) = (t.year(), u8::from(t.month()), t.day());
    let (hour, minute, second) = (t.hour(), t.minute(), t.second());
    let month_name = t.month().to_string();
    let day_name = t.weekday().to_string();
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{hour12:02}")),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(&month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(&day_name),
            Some('a') => out.push_str(&day_name[..3]),
            Some('j') => out.push_str(&format!("{:03}", t.ordinal())),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::chat::session_store::validate_name;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_000 + 3_723_456);
        assert_eq!(format_rfc3339(t), "2000-02-29T01:02:03.456Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(format_rfc3339(t), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn new_ids_are_unique_increasing_and_valid_names() {
        let ids: Vec<String> = (0..50).map(|_| new_id()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        assert!(ids
            .iter()
            .all(|id| validate_name(id).is_ok() && id.len() == 19));
    }

    #[test]
    fn strftime_formats_known_timestamps() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60 of the year.
        let ts = 1_709_211_909;
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %y %%", ts),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 01PM 24 %"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
    }
}
