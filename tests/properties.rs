//! Property tests for every parser a client, an origin, an operator or a trace file can
//! feed (issue 12 item 17): none panics on any input, and where a writer exists, what it
//! writes parses back.
//!
//! CI runs proptest's default 256 cases per property. A longer run:
//! `PROPTEST_CASES=20000 cargo test --release --test properties`.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use outpost::cache::key::{canonical_authority, Vary};
use outpost::cache::partial::ContentRange;
use outpost::cache::policy::{self, Directives, Freshness, PolicySettings};
use outpost::cache::tags;
use outpost::config::{ByteSize, HumanDuration};
use outpost::pipeline::range::{self, Ranges};
use outpost::telemetry::cache_status::CacheStatus;
use outpost::transform::compress::{AcceptEncoding, Coding};
use proptest::prelude::*;

/// Text that can be a header value (visible ASCII, spaces, tabs).
fn field_text() -> impl Strategy<Value = String> {
    "[ -~\t]{0,120}"
}

/// Text shaped like the field it stands for, to reach deeper than random bytes do.
fn cache_control_text() -> impl Strategy<Value = String> {
    let directive = prop_oneof![
        "(max-age|s-maxage|stale-while-revalidate|stale-if-error|min-fresh|max-stale)=[0-9a-z\"-]{0,22}",
        "(no-cache|no-store|private|public|must-revalidate|proxy-revalidate|immutable|only-if-cached|must-understand)(=\"[a-z, -]{0,10}\"?)?",
        "[a-z-]{1,10}(=[ -~]{0,10})?",
    ];
    prop::collection::vec(directive, 0..6).prop_map(|parts| parts.join(", "))
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_str(value) {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value);
        }
    }
    map
}

fn header_map_bytes(name: HeaderName, value: &[u8]) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(name, HeaderValue::from_bytes(value).unwrap());
    map
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

proptest! {
    // Failures print their minimal input; nothing is written into the source tree.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// RFC 9111 §5.2: any Cache-Control text parses to some directives.
    #[test]
    fn cache_control_never_panics(text in prop_oneof![cache_control_text(), field_text()]) {
        if let Ok(value) = HeaderValue::from_str(&text) {
            let _ = Directives::parse([&value]);
        }
    }

    /// RFC 9111 §4.2, §5.1, §5.3: freshness from any Cache-Control, Age, Date, Expires and
    /// Last-Modified (numbers, dates, garbage, several lines) never panics, and a fresh
    /// response's TTL is positive.
    #[test]
    fn freshness_never_panics(
        cache_control in prop_oneof![cache_control_text(), field_text()],
        age in prop_oneof!["[0-9]{1,25}(, ?[0-9a-z]{0,5})?", field_text()],
        date in prop_oneof![Just(httpdate::fmt_http_date(at(0))), field_text()],
        expires in prop_oneof![Just(httpdate::fmt_http_date(at(3600))), Just("0".to_string()), field_text()],
        last_modified in prop_oneof![Just(httpdate::fmt_http_date(at(0) - Duration::from_secs(86_400))), field_text()],
        status in 100u16..=999,
        elapsed in 0u64..10_000_000,
    ) {
        let headers = header_map(&[
            ("cache-control", &cache_control),
            ("cdn-cache-control", &cache_control),
            ("age", &age),
            ("date", &date),
            ("expires", &expires),
            ("last-modified", &last_modified),
        ]);
        let status = StatusCode::from_u16(status).unwrap();
        let settings = PolicySettings::default();
        let freshness = Freshness::compute(status, &headers, &settings, at(0), at(1));
        let now = at(elapsed);
        let ttl = freshness.ttl_seconds(now);
        if freshness.is_fresh(now) {
            prop_assert!(ttl >= 0, "fresh with ttl {ttl}");
        }
        let _ = policy::evaluate_reuse(&freshness, &Directives::default(), now);
    }

    /// RFC 9110 §14.1.2, §14.2: any Range header gives ranges inside the representation,
    /// sorted or as asked, never overlapping, never more bytes than the representation.
    #[test]
    fn ranges_stay_inside_and_never_amplify(
        text in prop_oneof![
            prop::collection::vec("[0-9]{0,4}-[0-9]{0,4}", 0..40)
                .prop_map(|specs| format!("bytes={}", specs.join(","))),
            field_text(),
        ],
        len in 0u64..20_000,
    ) {
        if let Ranges::Satisfiable(ranges) = range::parse(&text, len) {
            prop_assert!(!ranges.is_empty() && ranges.len() <= 16);
            let mut total = 0;
            for &(first, last) in &ranges {
                prop_assert!(first <= last && last < len, "{first}-{last} of {len}");
                total += last - first + 1;
            }
            prop_assert!(total <= len, "{total} bytes of a {len}-byte representation");
            let mut sorted = ranges.clone();
            sorted.sort_unstable();
            for pair in sorted.windows(2) {
                prop_assert!(pair[0].1 < pair[1].0, "overlap in {ranges:?}");
            }
        }
    }

    /// RFC 9110 §13.1.2, §13.1.3: any conditional against any stored validators is decided
    /// without a panic, including bytes that are not UTF-8 (obs-text); a stored strong tag
    /// asked for by itself, and among others, is always a 304.
    #[test]
    fn conditionals_never_panic_and_a_listed_tag_matches(
        asked in prop::collection::vec(any::<u8>(), 0..80),
        stored_tag in r#"(W/)?"[!#-~\x{80}-\x{ff}]{0,12}""#,
        others in prop::collection::vec(r#""[!#-+\--~]{0,6}""#, 0..4),
        since in field_text(),
    ) {
        let mut request = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_bytes(&asked) {
            request.insert(http::header::IF_NONE_MATCH, value);
        }
        if let Ok(value) = HeaderValue::from_str(&since) {
            request.insert(http::header::IF_MODIFIED_SINCE, value);
        }
        let mut stored = HeaderMap::new();
        let tag: Vec<u8> = stored_tag.chars().map(|c| c as u32 as u8).collect();
        let Ok(tag_value) = HeaderValue::from_bytes(&tag) else { return Ok(()) };
        stored.insert(http::header::ETAG, tag_value);
        let _ = policy::is_not_modified(&request, &stored, at(0), at(10));
        let _ = policy::is_not_modified(&request, &HeaderMap::new(), at(0), at(10));
        let mut listed = others.join(", ").into_bytes();
        if !others.is_empty() {
            listed.extend_from_slice(b", ");
        }
        listed.extend_from_slice(&tag);
        let asking = header_map_bytes(http::header::IF_NONE_MATCH, &listed);
        prop_assert!(policy::is_not_modified(&asking, &stored, at(0), at(10)));
    }

    /// RFC 9110 §14.4: any Content-Range parses to a range inside its representation or to
    /// nothing.
    #[test]
    fn content_ranges_stay_inside(
        text in prop_oneof![
            "(bytes|BYTES|Bytes) [0-9]{0,20}-[0-9]{0,20}/[0-9*]{0,20}",
            field_text(),
        ],
    ) {
        if let Some(range) = ContentRange::parse(&text) {
            prop_assert!(range.first <= range.last && range.last < range.complete_len);
            prop_assert!(range.byte_count() >= 1);
        }
    }

    /// RFC 9110 §12.5.3: any Accept-Encoding gives a choice.
    #[test]
    fn accept_encoding_never_panics(
        text in prop_oneof![
            prop::collection::vec("(gzip|br|zstd|identity|\\*|[a-z]{1,6})(;q=[0-9.]{0,6})?", 0..6)
                .prop_map(|codings| codings.join(", ")),
            field_text(),
        ],
    ) {
        let headers = header_map(&[("accept-encoding", &text)]);
        let _ = AcceptEncoding::parse(&headers).choose(&[Coding::Br, Coding::Zstd, Coding::Gzip]);
    }

    /// RFC 9110 §12.5.5: any Vary, against any request, gives the same variant key twice.
    #[test]
    fn vary_is_deterministic(
        vary in prop_oneof!["[a-zA-Z, *-]{0,40}", field_text()],
        language in field_text(),
        encoding in field_text(),
    ) {
        let response = header_map(&[("vary", &vary)]);
        let request = header_map(&[("accept-language", &language), ("accept-encoding", &encoding)]);
        let rule = Vary::from_response(&response);
        prop_assert_eq!(rule.variant_key(&request), rule.variant_key(&request));
    }

    /// RFC 9211: whatever the TTL, our Cache-Status member is a valid Structured Field List.
    #[test]
    fn cache_status_parses_as_a_list(ttl in any::<i64>(), hit in any::<bool>(), name in "[a-z][a-z0-9.-]{0,20}") {
        let status = if hit {
            CacheStatus::hit(ttl)
        } else {
            CacheStatus::forward(outpost::telemetry::cache_status::FwdReason::UriMiss)
        };
        let value = status.to_header_value(&name);
        let text = value.to_str().unwrap();
        prop_assert!(sfv::Parser::new(text).parse::<sfv::List>().is_ok(), "{text}");
    }

    /// RFC 9875 §2: Cache-Groups written as an sf List of strings reads back the same;
    /// anything else reads as some list or none, without panicking.
    #[test]
    fn cache_groups_round_trip(groups in prop::collection::vec("[ -~]{0,12}", 0..6), junk in field_text()) {
        let written = groups
            .iter()
            .map(|group| format!("\"{}\"", group.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(", ");
        prop_assert_eq!(tags::sf_strings(&written), groups);
        let _ = tags::sf_strings(&junk);
    }

    /// RFC 9209: whatever an error's details say, Proxy-Status stays a valid sf List.
    #[test]
    fn proxy_status_parses_whatever_the_details(detail in "[ -~]{0,80}", reveal in any::<bool>()) {
        let error = outpost::error::ProxyError::UpstreamProtocol {
            origin: "http://origin.test".to_string(),
            detail,
        };
        let response = error.to_response("outpost", reveal);
        let text = response.headers()["proxy-status"].to_str().unwrap().to_string();
        prop_assert!(sfv::Parser::new(&text).parse::<sfv::List>().is_ok(), "{text}");
    }

    /// Config units: any text parses or is refused; what is written parses back the same.
    #[test]
    fn config_units_round_trip(text in "[ -~]{0,20}", bytes in 0u64..(1 << 50), millis in 0u64..(1 << 40)) {
        let _ = ByteSize::from_str(&text);
        let _ = HumanDuration::from_str(&text);
        let size = ByteSize(bytes);
        prop_assert_eq!(ByteSize::from_str(&size.to_string()).ok(), Some(size));
        let duration = HumanDuration(Duration::from_millis(millis));
        prop_assert_eq!(
            HumanDuration::from_str(&duration.to_string()).ok().map(|d| d.get()),
            Some(duration.get())
        );
    }

    /// One canonical authority: folding is idempotent and case-, dot- and default-port-blind.
    #[test]
    fn canonical_authority_is_idempotent(host in "[a-zA-Z0-9.-]{1,20}", port in prop::option::of("[0-9]{0,5}"), https in any::<bool>()) {
        let scheme = if https { "https" } else { "http" };
        let authority = match &port {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let once = canonical_authority(scheme, &authority).into_owned();
        prop_assert_eq!(canonical_authority(scheme, &once), once.as_str());
        let shouted = authority.to_ascii_uppercase();
        prop_assert_eq!(canonical_authority(scheme, &shouted), once.as_str());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Trace files (CSV, access log, oracleGeneral): any bytes read as requests or as an
    /// error naming the line, never a panic.
    #[test]
    fn traces_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600), text in "[ -~\n,]{0,400}") {
        use outpost::tools::replay::trace::{read, TraceFormat};
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in [("t.bin", bytes.as_slice()), ("t.csv", text.as_bytes()), ("t.log", text.as_bytes())] {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            for format in [TraceFormat::Oracle, TraceFormat::Csv, TraceFormat::Clf] {
                let _ = read(&path, format);
            }
        }
    }
}
