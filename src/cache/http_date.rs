//! HTTP-date parsing as RFC 9110 §5.6.7 asks of a recipient, for the dates caching turns
//! on (Date, Expires, Last-Modified, If-Modified-Since): all three formats (IMF-fixdate,
//! and the obsolete RFC 850 and asctime ones), and, being "robust in parsing timestamps"
//! as it encourages, month, weekday and zone names in any case, and a weekday that does not
//! match the date (it is redundant). nginx reads these; the `httpdate` crate refuses them,
//! and an `Expires` it refuses counts as already expired (RFC 9111 §5.3).

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
pub fn parse(text: &str, now: SystemTime) -> Option<SystemTime> {
    let mut fields = text
        .split([' ', ',', '-', '\t'])
        .filter(|field| !field.is_empty());
    let weekday = fields.next()?;
    if !is_weekday(weekday) {
        return None;
    }
    let rest: Vec<&str> = fields.collect();
    let (day, month, year, time) = match rest.as_slice() {
        // IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT`.
        [day, month, year, time, zone] if zone.eq_ignore_ascii_case("gmt") => {
            (*day, *month, *year, *time)
        }
        // asctime `Sun Nov  6 08:49:37 1994`.
        [month, day, time, year] => (*day, *month, *year, *time),
        _ => return None,
    };
    let day: u32 = digits(day, 1, 2)?;
    let month = MONTHS
        .iter()
        .position(|name| month.eq_ignore_ascii_case(name))?;
    let year = match year.len() {
        2 => two_digit_year(digits(year, 2, 2)?, now),
        _ => digits(year, 4, 4)?,
    };
    let (hour, minute, second) = clock(time)?;
    if day == 0 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // A leap second is read as the second after it.
    let seconds = days_since_epoch(year, month, day)? * 86_400
        + i64::from(hour * 3600 + minute * 60 + second);
    let seconds = u64::try_from(seconds).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

fn is_weekday(name: &str) -> bool {
    WEEKDAYS
        .iter()
        .chain(FULL_WEEKDAYS.iter())
        .any(|weekday| name.eq_ignore_ascii_case(weekday))
}

/// `text` as a number of `min..=max` ASCII digits.
fn digits(text: &str, min: usize, max: usize) -> Option<u32> {
    if text.len() < min || text.len() > max || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `hh:mm:ss`.
fn clock(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split(':');
    let hour = digits(parts.next()?, 2, 2)?;
    let minute = digits(parts.next()?, 2, 2)?;
    let second = digits(parts.next()?, 2, 2)?;
    parts.next().is_none().then_some((hour, minute, second))
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
