//! Cache keys: the primary key (which resource) and the variant key (which of its
//! representations, chosen by the request headers the response's `Vary` names).
//!
//! The primary key always includes scheme, normalised host and port, path and query: a key
//! without them lets one site's response answer another's requests (cache poisoning). The
//! path is used exactly as received: `/debian/./InRelease` and `%2b` stay as they are,
//! because "normalising" a path can turn it into another resource. GET and HEAD share a key
//! (a stored GET answers a HEAD). What is *stored* under a key is `entry`'s business.

use std::borrow::Cow;
use std::fmt;

use http::header::{HeaderMap, HeaderName, ACCEPT_ENCODING, ACCEPT_LANGUAGE, CONTENT_LANGUAGE};

/// Identifies a resource: blake3 over method class, scheme, authority, path and query.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrimaryKey(pub [u8; 32]);

impl std::hash::Hash for PrimaryKey {
    /// The digest in one write (a derived impl writes its length first, a second round of
    /// the hasher on every lookup).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// Hashes for maps keyed by [`PrimaryKey`] that every request touches (the memory tier,
/// the status board): seeded XXH3 over the digest instead of SipHash, at a fraction of its
/// cost. The seed is drawn per map from the process's random hash keys, so bucket
/// positions cannot be predicted from outside even though the keys are public digests.
#[derive(Clone)]
pub struct DigestHasher {
    seed: u64,
}

impl Default for DigestHasher {
    fn default() -> Self {
        use std::hash::BuildHasher;
        DigestHasher {
            seed: std::collections::hash_map::RandomState::new().hash_one(0u64),
        }
    }
}

impl std::hash::BuildHasher for DigestHasher {
    type Hasher = SeededXxh3;
    fn build_hasher(&self) -> SeededXxh3 {
        SeededXxh3 { hash: self.seed }
    }
}

/// The hasher of [`DigestHasher`]: each write folds its bytes in, seeded with what came
/// before.
pub struct SeededXxh3 {
    hash: u64,
}

impl std::hash::Hasher for SeededXxh3 {
    fn write(&mut self, bytes: &[u8]) {
        self.hash = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.hash);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

impl crate::cache::replacement::PolicyKey for PrimaryKey {
    fn fingerprint(&self) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(head)
    }
}

impl PrimaryKey {
    /// A key naming one variant of this resource, for memories kept per variant (an
    /// encoding too large to keep).
    pub fn for_variant(self, variant: VariantKey) -> PrimaryKey {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.0);
        hasher.update(b"\0variant\0");
        hasher.update(&variant.0);
        PrimaryKey(*hasher.finalize().as_bytes())
    }

    /// `authority` should be canonical already ([`canonical_authority`], as routing makes
    /// it); it is folded again here so that no caller can key one resource two ways.
    pub fn new(scheme: &str, authority: &str, path_and_query: &str) -> PrimaryKey {
        let authority = canonical_authority(scheme, authority);
        let (host, port) = split_authority(&authority);
        // Method class: GET and HEAD share entries; nothing else is stored.
        let parts: [&[u8]; 8] = [
            b"GET\0",
            scheme.as_bytes(),
            b"\0",
            host.as_bytes(),
            b"\0",
            port.unwrap_or("").as_bytes(),
            b"\0",
            path_and_query.as_bytes(),
        ];
        // One hash of the joined bytes (the same digest as hashing them piece by piece,
        // so stored keys stay valid), joined on the stack when they fit: a hit computes
        // this for every request.
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut stack = [0u8; 512];
        let mut heap = Vec::new();
        let joined: &mut [u8] = if len <= stack.len() {
            &mut stack[..len]
        } else {
            heap.resize(len, 0);
            &mut heap
        };
        let mut at = 0;
        for part in parts {
            joined[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        PrimaryKey(*blake3::hash(joined).as_bytes())
    }

    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Debug for PrimaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrimaryKey({})", &self.to_hex()[..16])
    }
}

/// Adds `field` to the response's Vary unless it is named there already (or Vary is `*`):
/// for a response known to differ by that request field whether or not its origin said so.
pub fn vary_on(headers: &mut http::HeaderMap, field: &'static str) {
    let named = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| {
            let name = name.trim();
            name == "*" || name.eq_ignore_ascii_case(field)
        });
    if !named {
        headers.append(http::header::VARY, http::HeaderValue::from_static(field));
    }
}

/// The one spelling of an authority that outpost keys, forwards, stores and purges by:
/// lower case, no trailing dot on the host, no port when it is the scheme's default or
/// empty. So `Example.COM.:80`, `example.com:` and `example.com` are one resource over
/// http, and a poisoned spelling cannot hide an entry from purges.
///
/// Borrowed when `authority` is canonical already (as routing hands it to the key), so the
/// hit path does not allocate for it.
pub fn canonical_authority<'a>(scheme: &str, authority: &'a str) -> Cow<'a, str> {
    let (host, port) = split_authority(authority);
    let drops_port = matches!(
        (scheme, port),
        ("http", Some("80")) | ("https", Some("443")) | (_, Some(""))
    );
    if !drops_port && !host.ends_with('.') && !authority.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(authority);
    }
    let lower = authority.to_ascii_lowercase();
    let (host, port) = split_authority(&lower);
    let host = host.trim_end_matches('.');
    Cow::Owned(match (scheme, port) {
        ("http", Some("80")) | ("https", Some("443")) | (_, Some("") | None) => host.to_string(),
        (_, Some(port)) => format!("{host}:{port}"),
    })
}

fn split_authority(authority: &str) -> (&str, Option<&str>) {
    if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => (&authority[..=end], authority[end + 1..].strip_prefix(':')),
            None => (authority, None),
        }
    } else {
        match split_at_last_colon(authority) {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    }
}

/// `text` around its last `:`, found byte by byte from the end: every request splits its
/// authority several times (validation, routing, the key), and `str::rsplit_once` with a
/// char pattern costs several times more on such short strings.
pub fn split_at_last_colon(text: &str) -> Option<(&str, &str)> {
    let colon = text.as_bytes().iter().rposition(|&b| b == b':')?;
    Some((&text[..colon], &text[colon + 1..]))
}

/// What a stored response's `Vary` says (RFC 9110 §12.5.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No Vary: one representation for every request.
    None,
    /// `Vary: *`: never matches a later request (RFC 9111 §4.1).
    Star,
    /// The nominated request fields, lower-cased, sorted and deduplicated.
    Fields(Vec<HeaderName>),
}

/// Fields outpost writes itself, per client, into the origin's request (the client's
/// address, `pipeline::forwarding`). A response that varies on one varies per client, on a
/// value the client's own request does not carry, so no later request can be matched to
/// it: it counts as `Vary: *`. (Fields outpost sets from the key's own parts, such as
/// X-Forwarded-Proto and X-Forwarded-Host from the scheme and Host, match as they are.)
const PER_CLIENT_FORWARDED: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

impl Vary {
    pub fn from_response(headers: &HeaderMap) -> Vary {
        let mut names = Vec::new();
        for value in headers.get_all(http::header::VARY) {
            let Ok(text) = value.to_str() else {
                // An unreadable Vary cannot be honoured: treat it as matching nothing.
                return Vary::Star;
            };
            for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                if member == "*"
                    || PER_CLIENT_FORWARDED
                        .iter()
                        .any(|field| member.eq_ignore_ascii_case(field))
                {
                    return Vary::Star;
                }
                match HeaderName::from_bytes(member.as_bytes()) {
                    Ok(name) => names.push(name),
                    Err(_) => return Vary::Star,
                }
            }
        }
        if names.is_empty() {
            return Vary::None;
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        Vary::Fields(names)
    }

    /// The variant key of `request` under this Vary, or `None` for `Vary: *`.
    pub fn variant_key(&self, request: &HeaderMap) -> Option<VariantKey> {
        match self {
            Vary::None => Some(VariantKey::NONE),
            Vary::Star => None,
            Vary::Fields(names) => {
                let mut hasher = blake3::Hasher::new();
                for name in names {
                    hasher.update(name.as_str().as_bytes());
                    hasher.update(b"\0");
                    normalised_value(name, request, &mut hasher);
                    hasher.update(b"\xff");
                }
                Some(VariantKey(*hasher.finalize().as_bytes()))
            }
        }
    }

    /// RFC 9111 §4.1 by the fields' semantics: whether a stored response of one language
    /// (its `Content-Language`, `stored`) is the one the origin would select for `request`
    /// when the response varies by `Accept-Language` alone (and `Accept-Encoding`, which the
    /// origin never sees from clients). It is when that language is the request's one most
    /// preferred: the origin has it, and chooses by preference (RFC 9110 §12.5.4). Ties,
    /// ranges with subtags of their own and `*` never select this way.
    pub fn selects_by_language(&self, stored: &HeaderMap, request: &HeaderMap) -> bool {
        let Vary::Fields(names) = self else {
            return false;
        };
        let by_language_alone = names
            .iter()
            .all(|name| name == ACCEPT_LANGUAGE || name == ACCEPT_ENCODING)
            && names.contains(&ACCEPT_LANGUAGE);
        if !by_language_alone {
            return false;
        }
        let mut languages = stored.get_all(CONTENT_LANGUAGE).iter();
        let (Some(language), None) = (languages.next(), languages.next()) else {
            return false;
        };
        let language = language.as_bytes().trim_ascii();
        if language.contains(&b',') {
            return false;
        }
        let Some(members) = weighted_members(request.get_all(ACCEPT_LANGUAGE)) else {
            return false;
        };
        match members.as_slice() {
            [(top, weight), rest @ ..] => {
                *weight > 0
                    && rest.first().is_none_or(|(_, next)| next < weight)
                    && top.as_slice() != b"*"
                    && top.eq_ignore_ascii_case(language)
            }
            [] => false,
        }
    }

    pub fn field_names(&self) -> &[HeaderName] {
        match self {
            Vary::Fields(names) => names,
            _ => &[],
        }
    }
}

/// Identifies one representation under a primary key: blake3 over the normalised values of
/// the request fields the response's Vary names.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VariantKey(pub [u8; 32]);

impl VariantKey {
    /// The key of every request when the response has no Vary.
    pub const NONE: VariantKey = VariantKey([0; 32]);

    /// The key of a representation outpost derives from this variant (an encoding).
    pub fn derived(self, transform: &str) -> VariantKey {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.0);
        hasher.update(b"\0derived\0");
        hasher.update(transform.as_bytes());
        VariantKey(*hasher.finalize().as_bytes())
    }
}

impl fmt::Debug for VariantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.0[..8].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "VariantKey({hex})")
    }
}

/// Feeds the request's value of `name` in a form with identical semantics for every
/// spelling (RFC 9111 §4.1): field lines combined, whitespace around list members removed,
/// and case folded where the field is case-insensitive. An absent field hashes differently
/// from an empty one.
///
/// `Accept-Encoding` is the exception: the cache asks the origin with its own normalised
/// `Accept-Encoding: gzip` whatever the client sent ([`ORIGIN_ACCEPT_ENCODING`]), so every
/// client shares the origin's variant and gets it encoded or decoded as it accepts.
fn normalised_value(name: &HeaderName, request: &HeaderMap, hasher: &mut blake3::Hasher) {
    if name == ACCEPT_ENCODING {
        hasher.update(ORIGIN_ACCEPT_ENCODING.as_bytes());
        return;
    }
    let mut values = request.get_all(name).iter().peekable();
    if values.peek().is_none() {
        hasher.update(b"\x01absent");
        return;
    }
    if matches!(name.as_str(), "accept-language" | "accept-charset") {
        if let Some(members) = weighted_members(request.get_all(name)) {
            for (index, (range, weight)) in members.iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                hasher.update(range);
                if *weight != QVALUE_ONE {
                    hasher.update(b";q=");
                    hasher.update(&weight.to_be_bytes());
                }
            }
            return;
        }
    }
    let case_insensitive = matches!(
        name.as_str(),
        "accept" | "accept-language" | "accept-charset"
    );
    for (index, member) in list_members(values).enumerate() {
        if index > 0 {
            hasher.update(b",");
        }
        if case_insensitive {
            hasher.update(&member.to_ascii_lowercase());
        } else {
            hasher.update(member);
        }
    }
}

/// The members of a list field's lines, without the whitespace around them and without
/// empty ones (RFC 9110 §5.6.1).
pub(crate) fn list_members<'a>(
    values: impl IntoIterator<Item = &'a http::HeaderValue>,
) -> impl Iterator<Item = &'a [u8]> {
    values.into_iter().flat_map(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|m| !m.is_empty())
    })
}

/// The most members a weighted list is read for (browsers send a handful): a longer one,
/// hostile or not, is compared as written rather than parsed and sorted on every lookup.
const MAX_WEIGHTED_MEMBERS: usize = 32;

/// A weight of 1 in thousandths (RFC 9110 §12.4.2).
const QVALUE_ONE: u16 = 1000;

/// The members of an `Accept-Language` or `Accept-Charset` (RFC 9110 §12.5.4, §12.5.2: a
/// token and an optional weight) in a form that keeps only what they mean: each token in
/// lower case with its weight in thousandths, ordered by weight, then by token. Order
/// among equal weights says nothing (§12.4.2: preference is the weight), so `en, de` and
/// `de, en` are one request, as are `en;q=0.50` and `EN; Q=0.5`. `None` when a member is
/// anything else, or there are more than [`MAX_WEIGHTED_MEMBERS`] (the value is then
/// compared as written).
pub(crate) fn weighted_members<'a>(
    values: impl IntoIterator<Item = &'a http::HeaderValue>,
) -> Option<Vec<(Vec<u8>, u16)>> {
    let mut members = Vec::new();
    for member in list_members(values) {
        let mut parts = member.split(|b| *b == b';').map(<[u8]>::trim_ascii);
        let token = parts.next()?;
        if token.is_empty()
            || !token
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'*' | b'_' | b'.'))
        {
            return None;
        }
        let weight = match (parts.next(), parts.next()) {
            (None, _) => QVALUE_ONE,
            (Some(parameter), None) => qvalue(parameter)?,
            (Some(_), Some(_)) => return None,
        };
        if members.len() == MAX_WEIGHTED_MEMBERS {
            return None;
        }
        members.push((token.to_ascii_lowercase(), weight));
    }
    members.sort_by(|(a, a_weight), (b, b_weight)| b_weight.cmp(a_weight).then_with(|| a.cmp(b)));
    Some(members)
}

/// `q=<qvalue>` (RFC 9110 §12.4.2, the name case-insensitive) in thousandths.
pub(crate) fn qvalue(parameter: &[u8]) -> Option<u16> {
    let (name, value) = parameter.split_at_checked(2)?;
    if !name.eq_ignore_ascii_case(b"q=") {
        return None;
    }
    let (whole, fraction) = match value.iter().position(|b| *b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &[][..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let thousandths = fraction
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(3)
        .fold(0u16, |sum, digit| sum * 10 + u16::from(digit - b'0'));
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(QVALUE_ONE),
        _ => None,
    }
}

/// What the cache sends as Accept-Encoding when it fills: origins that compress send gzip
/// (stored once, decoded for clients that cannot take it); others send identity.
pub const ORIGIN_ACCEPT_ENCODING: &str = "gzip";

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// Keys stored on disk by earlier builds must still be found: the key is the digest of
    /// the same bytes, however they are fed to blake3 (short targets and long ones).
    #[test]
    fn keys_are_the_digest_they_always_were() {
        for path in ["/a?b=c".to_string(), format!("/{}", "x".repeat(700))] {
            let mut hasher = blake3::Hasher::new();
            for piece in [
                &b"GET\0"[..],
                b"http",
                b"\0",
                b"example.com",
                b"\0",
                b"8080",
                b"\0",
            ] {
                hasher.update(piece);
            }
            hasher.update(path.as_bytes());
            let expected = PrimaryKey(*hasher.finalize().as_bytes());
            assert_eq!(PrimaryKey::new("http", "example.com:8080", &path), expected);
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    /// Scheme, host and port are always part of the key: another site's response never
    /// answers (a key without them is a cache-poisoning bug).
    #[test]
    fn primary_key_separates_scheme_host_port_and_path() {
        let base = PrimaryKey::new("http", "example.com", "/a?x=1");
        assert_ne!(base, PrimaryKey::new("https", "example.com", "/a?x=1"));
        assert_ne!(base, PrimaryKey::new("http", "example.org", "/a?x=1"));
        assert_ne!(base, PrimaryKey::new("http", "example.com:8080", "/a?x=1"));
        assert_ne!(base, PrimaryKey::new("http", "example.com", "/a?x=2"));
        assert_ne!(base, PrimaryKey::new("http", "example.com", "/a"));
        assert_eq!(base, PrimaryKey::new("http", "example.com:80", "/a?x=1"));
        assert_eq!(base, PrimaryKey::new("http", "example.com.", "/a?x=1"));
        assert_eq!(base, PrimaryKey::new("http", "Example.COM.:", "/a?x=1"));
        assert_ne!(base, PrimaryKey::new("http", "example.com:443", "/a?x=1"));
        assert_eq!(
            PrimaryKey::new("https", "example.com:443", "/"),
            PrimaryKey::new("https", "example.com", "/")
        );
        // apt's literal "./" and "%2b" are different resources from their "normalised" forms.
        assert_ne!(
            PrimaryKey::new("http", "d", "/debian/./InRelease"),
            PrimaryKey::new("http", "d", "/debian/InRelease")
        );
        assert_ne!(
            PrimaryKey::new("http", "d", "/sl_5.02-1%2bb1.deb"),
            PrimaryKey::new("http", "d", "/sl_5.02-1+b1.deb")
        );
    }

    /// RFC 9111 §4.1: values with identical semantics select the same variant;
    /// Accept-Encoding is normalised away (the origin always sees ORIGIN_ACCEPT_ENCODING).
    #[test]
    fn variant_key_normalises_whitespace_case_and_accept_encoding() {
        let vary = Vary::from_response(&headers(&[
            ("vary", "Accept-Encoding, accept-language"),
            ("vary", "X-Device"),
        ]));
        let a = vary.variant_key(&headers(&[
            ("accept-encoding", "gzip, br;q=0.8"),
            ("accept-language", "en-GB,en;q=0.5"),
            ("x-device", "mobile"),
        ]));
        let b = vary.variant_key(&headers(&[
            ("accept-encoding", "BR;q=1,gzip,identity;q=0"),
            ("accept-language", "EN-gb , en;q=0.5"),
            ("x-device", "mobile"),
        ]));
        assert_eq!(a, b);
        let c = vary.variant_key(&headers(&[
            ("accept-encoding", "gzip"),
            ("accept-language", "en-GB,en;q=0.5"),
            ("x-device", "desktop"),
        ]));
        assert_ne!(a, c);
        let d = vary.variant_key(&headers(&[
            ("accept-encoding", "gzip, br"),
            ("accept-language", "en-GB,en;q=0.5"),
        ]));
        assert_ne!(a, d, "absent X-Device differs from present");
    }

    /// RFC 9111 §4.1 matches the presented request's fields; outpost writes the client's
    /// address into X-Forwarded-For, X-Real-IP and Forwarded itself, so a Vary naming one
    /// cannot be matched from a client's request and never is.
    #[test]
    fn vary_on_a_per_client_forwarded_field_never_matches() {
        for field in ["accept, X-Forwarded-For", "x-real-ip", "Forwarded, accept"] {
            let vary = Vary::from_response(&headers(&[("vary", field)]));
            assert_eq!(vary, Vary::Star, "{field}");
        }
        let by_scheme = Vary::from_response(&headers(&[("vary", "x-forwarded-proto")]));
        assert!(matches!(by_scheme, Vary::Fields(_)));
    }

    /// RFC 9110 §12.4.2, §12.5.4: a language list means its weights; order among equal
    /// weights, case, spacing and how a weight is spelled do not change it, and a weight
    /// does.
    #[test]
    fn accept_language_keys_by_what_its_weights_say() {
        let vary = Vary::from_response(&headers(&[("vary", "Accept-Language")]));
        let key = |value: &'static str| vary.variant_key(&headers(&[("accept-language", value)]));
        assert_eq!(key("en, de"), key("de, en"));
        assert_eq!(key("en, de"), key("DE ,En;q=1.000"));
        assert_eq!(key("fr;q=0.5, de"), key("de;q=1, fr; Q=0.50"));
        assert_ne!(key("en, de;q=0.5"), key("de, en;q=0.5"));
        assert_ne!(key("en"), key("en;q=0"));
        assert_ne!(key("en"), key("en, de"));
        // Not a weighted list: compared as written (still case-folded).
        assert_eq!(key("en;q=2, de"), key("EN;q=2, de"));
        assert_ne!(key("en;q=2, de"), key("de, en;q=2"));
        // Past 32 members a list is not parsed (nor sorted) on every lookup.
        let long: &'static str = Box::leak(
            (0..33)
                .map(|i| format!("l{i}"))
                .collect::<Vec<_>>()
                .join(",")
                .into_boxed_str(),
        );
        let reversed: &'static str = Box::leak(
            (0..33)
                .rev()
                .map(|i| format!("l{i}"))
                .collect::<Vec<_>>()
                .join(",")
                .into_boxed_str(),
        );
        assert_ne!(key(long), key(reversed));
    }

    /// RFC 9111 §4.1 by semantics: a response in the language a request prefers most is
    /// the one the origin would choose for it, whatever else the request lists.
    #[test]
    fn a_stored_language_is_selected_by_the_request_that_prefers_it_most() {
        let vary = Vary::from_response(&headers(&[("vary", "Accept-Language, Accept-Encoding")]));
        let german = headers(&[("content-language", "de")]);
        let asks = |value: &'static str| {
            vary.selects_by_language(&german, &headers(&[("accept-language", value)]))
        };
        assert!(asks("fr;q=0.5, de;q=1.0"));
        assert!(asks("DE, en;q=0.9"));
        assert!(!asks("en, de"), "a tie says nothing");
        assert!(!asks("en, de;q=0.5"));
        assert!(!asks("de-AT, de;q=0.5"), "the origin may have de-AT");
        assert!(!asks("de;q=0"));
        assert!(!vary.selects_by_language(&german, &HeaderMap::new()));
        let two = headers(&[("content-language", "de, en")]);
        assert!(!vary.selects_by_language(&two, &headers(&[("accept-language", "de")])));
        let also_by_device =
            Vary::from_response(&headers(&[("vary", "Accept-Language, X-Device")]));
        assert!(
            !also_by_device.selects_by_language(&german, &headers(&[("accept-language", "de")]))
        );
    }

    #[test]
    fn vary_star_never_matches() {
        let vary = Vary::from_response(&headers(&[("vary", "accept, *")]));
        assert_eq!(vary, Vary::Star);
        assert_eq!(vary.variant_key(&HeaderMap::new()), None);
    }
}
