//! HTTP-date parsing as RFC 9110 §5.6.7 asks of a recipient, for the dates caching turns
//! on (Date, Expires, Last-Modified, If-Modified-Since): all three formats (IMF-fixdate,
//! and the obsolete RFC 850 and asctime ones), and, being "robust in parsing timestamps"
//! as it encourages, month, weekday and zone names in any case, and a weekday that does not
//! match the date (it is redundant). nginx reads these; the `httpdate` crate refuses them,
//! and an `Expires` it refuses counts as already expired (RFC 9111 §5.3). The formats'
//! shapes stay strict: a value off them (no comma, doubled spaces, a two-digit year in
//! IMF-fixdate) is invalid.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The time `text` names, or `None` when it is no HTTP-date. `now` places an RFC 850
/// two-digit year: one that would be more than 50 years ahead of it is in the past century.
///
/// The formats' shapes are kept exactly (single spaces, the comma, four-digit years in
/// IMF-fixdate, two-digit clock fields): a value off those shapes is invalid, and an
/// invalid `Expires` means already expired (RFC 9111 §5.3).
pub fn parse(text: &str, now: SystemTime) -> Option<SystemTime> {
    let text = text.trim().as_bytes();
    let fields = imf_fixdate(text)
        .or_else(|| rfc850_date(text, now))
        .or_else(|| asctime_date(text))?;
    fields.to_time()
}

/// A date's fields, before they are checked against the calendar.
struct Fields {
    year: u32,
    /// 0-based.
    month: usize,
    day: u32,
    clock: (u32, u32, u32),
}

impl Fields {
    fn to_time(&self) -> Option<SystemTime> {
        let Fields {
            year,
            month,
            day,
            clock: (hour, minute, second),
        } = *self;
        if day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        // A leap second is read as the second after it.
        let seconds = days_since_epoch(year, month, day)? * 86_400
            + i64::from(hour * 3600 + minute * 60 + second);
        UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(seconds).ok()?))
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(s: &[u8]) -> Option<Fields> {
    if s.len() != 29 || &s[3..5] != b", " || s[7] != b' ' || s[11] != b' ' || s[16] != b' ' {
        return None;
    }
    if s[25] != b' ' || !s[26..].eq_ignore_ascii_case(b"gmt") || !is_name(&s[..3], &WEEKDAYS) {
        return None;
    }
    Some(Fields {
        day: number(&s[5..7])?,
        month: month(&s[8..11])?,
        year: number(&s[12..16])?,
        clock: clock(&s[17..25])?,
    })
}

/// `Sunday, 06-Nov-94 08:49:37 GMT`
fn rfc850_date(s: &[u8], now: SystemTime) -> Option<Fields> {
    let comma = s.iter().position(|&b| b == b',')?;
    let (weekday, rest) = (&s[..comma], s[comma..].strip_prefix(b", ")?);
    if !is_name(weekday, &FULL_WEEKDAYS) || rest.len() != 22 {
        return None;
    }
    if rest[2] != b'-' || rest[6] != b'-' || rest[9] != b' ' || rest[18] != b' ' {
        return None;
    }
    if !rest[19..].eq_ignore_ascii_case(b"gmt") {
        return None;
    }
    Some(Fields {
        day: number(&rest[..2])?,
        month: month(&rest[3..6])?,
        year: two_digit_year(number(&rest[7..9])?, now),
        clock: clock(&rest[10..18])?,
    })
}

/// `Sun Nov  6 08:49:37 1994`
fn asctime_date(s: &[u8]) -> Option<Fields> {
    if s.len() != 24 || s[3] != b' ' || s[7] != b' ' || s[10] != b' ' || s[19] != b' ' {
        return None;
    }
    if !is_name(&s[..3], &WEEKDAYS) {
        return None;
    }
    // `( 2DIGIT / ( SP DIGIT ) )`
    let day = match s[8] {
        b' ' => number(&s[9..10])?,
        _ => number(&s[8..10])?,
    };
    Some(Fields {
        day,
        month: month(&s[4..7])?,
        year: number(&s[20..24])?,
        clock: clock(&s[11..19])?,
    })
}

fn is_name(text: &[u8], names: &[&str]) -> bool {
    names
        .iter()
        .any(|name| text.eq_ignore_ascii_case(name.as_bytes()))
}

fn month(text: &[u8]) -> Option<usize> {
    MONTHS
        .iter()
        .position(|name| text.eq_ignore_ascii_case(name.as_bytes()))
}

/// Every byte of `text` an ASCII digit: their number.
fn number(text: &[u8]) -> Option<u32> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        text.iter()
            .fold(0, |value, digit| value * 10 + u32::from(digit - b'0')),
    )
}

/// `hh:mm:ss`, two digits each.
fn clock(text: &[u8]) -> Option<(u32, u32, u32)> {
    if text.len() != 8 || text[2] != b':' || text[5] != b':' {
        return None;
    }
    Some((
        number(&text[..2])?,
        number(&text[3..5])?,
        number(&text[6..])?,
    ))
}

/// RFC 9110 §5.6.7: a two-digit year more than 50 years in the future is the most recent
/// past year with those digits.
fn two_digit_year(two_digits: u32, now: SystemTime) -> u32 {
    let now_year = year_of(now);
    let candidate = now_year - now_year % 100 + two_digits;
    if candidate > now_year + 50 {
        candidate - 100
    } else {
        candidate
    }
}

fn year_of(time: SystemTime) -> u32 {
    let days = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let mut year = 1970;
    let mut left = days;
    loop {
        let length = if is_leap(year) { 366 } else { 365 };
        if left < length {
            return year;
        }
        left -= length;
        year += 1;
    }
}

fn is_leap(year: u32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: u32, month: usize) -> u32 {
    match month {
        1 if is_leap(year) => 29,
        1 => 28,
        3 | 5 | 8 | 10 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date (`month` 0-based), by the civil-from-days inverse
/// (H. Hinnant's algorithm); `None` before 1970.
fn days_since_epoch(year: u32, month: usize, day: u32) -> Option<i64> {
    let (year, month, day) = (i64::from(year), month as i64 + 1, i64::from(day));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    (days >= 0).then_some(days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// 2026-12-03, for the two-digit years.
    fn now() -> SystemTime {
        at(1_796_256_000)
    }

    /// RFC 9110 §5.6.7's example, in its three formats.
    #[test]
    fn reads_the_three_formats_of_rfc_9110() {
        let expected = Some(at(784_111_777));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT", now()), expected);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT", now()), expected);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994", now()), expected);
    }

    /// Robust as §5.6.7 encourages: names in any case, a weekday that does not match.
    #[test]
    fn reads_names_in_any_case_and_a_wrong_weekday() {
        let expected = parse("Thu, 18 Aug 2050 02:01:18 GMT", now());
        assert!(expected.is_some());
        for text in [
            "THU, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 AUG 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 gmt",
            "Mon, 18 Aug 2050 02:01:18 GMT",
            "Thu Aug 18 02:01:18 2050",
        ] {
            assert_eq!(parse(text, now()), expected, "{text}");
        }
    }

    /// §5.6.7: a two-digit year more than 50 years ahead is in the past century.
    #[test]
    fn places_two_digit_years_within_fifty_years() {
        let year = |text: &str| year_of(parse(text, now()).expect(text));
        assert_eq!(year("Sunday, 06-Nov-76 08:49:37 GMT"), 2076);
        assert_eq!(year("Sunday, 06-Nov-77 08:49:37 GMT"), 1977);
        assert_eq!(year("Sunday, 06-Nov-26 08:49:37 GMT"), 2026);
    }

    #[test]
    fn refuses_what_is_no_date() {
        for text in [
            "0",
            "",
            "-1",
            "Thu, 31 Feb 2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 24:01:18 GMT",
            "Thu, 18 Aug 2050 02:01 GMT",
            "Thu, 18 Aug 2050 02:01:18 PST",
            "Thu, 18 Aug 2050 02:01:18",
            "Foo, 18 Aug 2050 02:01:18 GMT",
            "Thu, 18 Aug 1969 02:01:18 GMT",
            "Thu, 18 Aug 20500 02:01:18 GMT",
            // Off the formats' shapes (http-tests/cache-tests' required invalid dates).
            "Thu, 18 Aug 50 02:01:18 GMT",
            "Thu 18 Aug 2050 02:01:18 GMT",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 02.01.18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thursday, 18-Aug-2050 02:01:18 GMT",
            "Thu, 18-Aug-50 02:01:18 GMT",
            "Thu Aug 18 02:01:18 50",
        ] {
            assert_eq!(parse(text, now()), None, "{text:?}");
        }
    }

    proptest! {
        /// Every date `httpdate` writes (IMF-fixdate) reads back as that time.
        #[test]
        fn reads_back_what_httpdate_writes(seconds in 0u64..253_402_300_799) {
            let time = at(seconds);
            prop_assert_eq!(parse(&httpdate::fmt_http_date(time), now()), Some(time));
        }
    }
}
