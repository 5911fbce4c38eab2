//! The caching rules of RFC 9111 for a shared cache: may this response be stored (§3),
//! how long is it fresh (§4.2), may this request reuse it (§4.2, §5.2.1), how is it
//! revalidated (§4.3), and does a client's conditional request match it (RFC 9110 §13).
//!
//! Storability is decided by `http-cache-semantics` ([`CachePolicy::is_storable`]) together
//! with rules it leaves to us: GET/HEAD only (it would store a POST), `Set-Cookie` (ours is
//! configurable), qualified `private`/`no-cache`, `Vary: *`, and targeted fields (RFC 9213
//! `CDN-Cache-Control`, which replace Cache-Control and Expires for our decisions).
//! Freshness and age are computed here rather than by the library, because the library
//! leaves out parts of §4.2.3 (apparent age, response delay), applies heuristics to every
//! status, ends freshness on `proxy-revalidate`, and reads only one date format; the tests
//! cross-check the two where they should agree. Every function takes `now`.
//! Where entries live is `memory`'s business; what they hold is `entry`'s.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_cache_semantics::{CacheOptions, CachePolicy};

use super::http_date;

/// RFC 9111 §1.2.2: delta-seconds too large to represent are taken as 2^31.
const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// Status codes whose responses are heuristically cacheable (RFC 9110 §15.1).
const HEURISTICALLY_CACHEABLE: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Settings of the policy, from the `[cache]` config section.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// Fraction of (Date - Last-Modified) used as heuristic freshness (RFC 9111 §4.2.2).
    pub heuristic_fraction: f32,
    /// Upper bound on any heuristic freshness lifetime.
    pub heuristic_max: Duration,
    /// Whether responses carrying Set-Cookie may be stored (and served to others).
    pub store_set_cookie: bool,
    /// Targeted cache-control fields in priority order (RFC 9213 §2), lower-case.
    pub targeted_fields: Vec<HeaderName>,
    /// How long past freshness a response may answer when the origin cannot, unless it
    /// forbids stale use (RFC 9111 §4.2.4, `cache.stale_on_error`).
    pub stale_on_error: Duration,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(24 * 3600),
            store_set_cookie: false,
            targeted_fields: vec![HeaderName::from_static("cdn-cache-control")],
            stale_on_error: Duration::ZERO,
        }
    }
}

/// Cache-Control directives (response or request) as this cache understands them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_store: bool,
    /// The unqualified `no-cache` (RFC 9111 §5.2.2.4): every reuse is validated first.
    pub no_cache: bool,
    /// `no-cache="field, ..."`, lower-cased: those fields alone may not be reused without
    /// validation, so a shared cache stores the response without them (§5.2.2.4).
    pub no_cache_fields: Vec<String>,
    /// The unqualified `private` (§5.2.2.7): not stored.
    pub private: bool,
    /// `private="field, ..."`, lower-cased: those fields are for one user; the response is
    /// stored without them (§5.2.2.7).
    pub private_fields: Vec<String>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    /// RFC 9111 §5.2.2.3: store only if this cache understands the status code (and then
    /// `no-store` is ignored).
    pub must_understand: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `Some(None)`: max-stale without a value (any staleness).
    pub max_stale: Option<Option<u64>>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// A freshness directive (max-age, s-maxage) was repeated with different values or had
    /// an invalid value: RFC 9111 §4.2.1 lets the cache consider the response stale.
    pub has_conflicting_freshness: bool,
}

impl Directives {
    /// The fields a qualified `no-cache` or `private` names: stored responses go without.
    pub fn unshared_fields(&self) -> impl Iterator<Item = &str> {
        self.no_cache_fields
            .iter()
            .chain(&self.private_fields)
            .map(String::as_str)
    }

    /// Whether `name` (lower case) is among [`Self::unshared_fields`].
    pub fn is_unshared(&self, name: &str) -> bool {
        self.unshared_fields().any(|field| field == name)
    }

    /// Parses every line of a Cache-Control-like field. Unknown directives are ignored;
    /// quoted values may contain commas.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Directives {
        let mut directives = Directives::default();
        for value in values {
            let Ok(text) = value.to_str() else { continue };
            for member in split_members(text) {
                let (name, argument) = match member.split_once('=') {
                    Some((name, argument)) => (name, Some(argument)),
                    None => (member, None),
                };
                // RFC 9111 §5.2: `token [ "=" ( token / quoted-string ) ]`, no whitespace
                // around the "=". `max-age =3600` is not a max-age; a directive that would
                // allow reuse is then invalid (§4.2.1: stale), one that restricts it is
                // still obeyed.
                let is_spaced = name.ends_with(is_ows)
                    || argument.is_some_and(|argument| argument.starts_with(is_ows));
                let argument = argument.map(|argument| unquote(argument.trim()));
                directives.apply(&lower_case(name.trim()), argument.as_deref(), is_spaced);
            }
        }
        directives
    }

    fn apply(&mut self, name: &str, argument: Option<&str>, is_spaced: bool) {
        // A malformed argument reads as no valid value, for the directives that allow reuse.
        let granting = if is_spaced { None } else { argument };
        match name {
            "no-store" => self.no_store = true,
            "no-cache" => match field_names(argument) {
                Some(names) => self.no_cache_fields.extend(names),
                None => self.no_cache = true,
            },
            "private" => match field_names(argument) {
                Some(names) => self.private_fields.extend(names),
                None => self.private = true,
            },
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "immutable" => self.immutable = true,
            "must-understand" => self.must_understand = true,
            "only-if-cached" => self.only_if_cached = true,
            "max-age" => set_freshness(
                &mut self.max_age,
                granting,
                &mut self.has_conflicting_freshness,
            ),
            "s-maxage" => set_freshness(
                &mut self.s_maxage,
                granting,
                &mut self.has_conflicting_freshness,
            ),
            "min-fresh" => self.min_fresh = self.min_fresh.or(argument.and_then(delta_seconds)),
            "max-stale" if self.max_stale.is_none() => {
                self.max_stale = Some(argument.and_then(delta_seconds))
            }
            "stale-while-revalidate" => {
                self.stale_while_revalidate = self
                    .stale_while_revalidate
                    .or(granting.and_then(delta_seconds));
            }
            "stale-if-error" => {
                self.stale_if_error = self.stale_if_error.or(granting.and_then(delta_seconds))
            }
            _ => {}
        }
    }
}

/// RFC 9110 §5.6.3 optional whitespace.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn set_freshness(slot: &mut Option<u64>, argument: Option<&str>, conflicting: &mut bool) {
    match argument.and_then(delta_seconds) {
        Some(seconds) => match *slot {
            Some(previous) if previous != seconds => *conflicting = true,
            Some(_) => {}
            None => *slot = Some(seconds),
        },
        None => *conflicting = true,
    }
}

/// RFC 9111 §1.2.2 delta-seconds: digits only, clamped to 2^31.
/// RFC 9111 §5.1: the Age field's value. A list (`Age: 3600, 0`, or several lines) counts
/// by its first member; a first member that is not a non-negative integer makes the whole
/// field invalid, and it is ignored. Parameters after the integer (`7200;foo=bar`, as a
/// Structured Field Item would carry them, RFC 9651 §3.3) leave its value as it is: read as
/// invalid, they would make an old response look fresh.
pub fn age_field(headers: &HeaderMap) -> Option<u64> {
    let first_line = headers.get(header::AGE)?.to_str().ok()?;
    let first_member = first_line.split(',').next().unwrap_or_default();
    let integer = first_member.split(';').next().unwrap_or_default();
    delta_seconds(integer.trim())
}

fn delta_seconds(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u64>()
            .unwrap_or(DELTA_SECONDS_MAX)
            .min(DELTA_SECONDS_MAX),
    )
}

fn unquote(text: &str) -> Cow<'_, str> {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => Cow::Owned(inner.replace("\\\"", "\"").replace("\\\\", "\\")),
        None => Cow::Borrowed(text),
    }
}

/// `name` in lower case, copied only when it has upper case (directive names rarely do,
/// and a miss reads every directive of the response).
fn lower_case(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Fields a response cannot be stored or served without, or that decide how it is stored
/// and reused: a qualified `no-cache` or `private` naming one of them is taken as the
/// unqualified form (RFC 9111 §5.2.2.4 allows that; stripping them would change framing,
/// variants or freshness, not hide something private).
const UNSTRIPPABLE: [&str; 13] = [
    "age",
    "cache-control",
    "cdn-cache-control",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expires",
    "last-modified",
    "transfer-encoding",
    "vary",
];

/// The field names a qualified `no-cache` or `private` lists, lower-cased; `None` for the
/// unqualified form (no argument, one naming no field, or one naming a field in
/// [`UNSTRIPPABLE`] or that is no field name).
fn field_names(argument: Option<&str>) -> Option<Vec<String>> {
    let names: Vec<String> = argument?
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    let strippable = names.iter().all(|name| {
        !UNSTRIPPABLE.contains(&name.as_str()) && HeaderName::from_bytes(name.as_bytes()).is_ok()
    });
    (!names.is_empty() && strippable).then_some(names)
}

/// Splits a list on commas that are not inside a quoted string.
fn split_members<'a>(text: &'a str) -> Vec<&'a str> {
    let mut members = Vec::new();
    let keep = |members: &mut Vec<&'a str>, member: &'a str| {
        let member = member.trim();
        if !member.is_empty() {
            members.push(member);
        }
    };
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    for (index, byte) in text.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => {
                keep(&mut members, &text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    keep(&mut members, &text[start..]);
    members
}

/// The response's directives for this cache: the first targeted field with a valid,
/// non-empty value (RFC 9213 §2.2), else Cache-Control (and `Pragma: no-cache` when there
/// is no Cache-Control, RFC 9111 §5.4). Returns whether a targeted field was used, in which
/// case Expires is ignored too.
pub fn response_directives(headers: &HeaderMap, settings: &PolicySettings) -> ResponseDirectives {
    for field in &settings.targeted_fields {
        if let Some(directives) = targeted_directives(headers, field) {
            return ResponseDirectives {
                directives,
                is_targeted: true,
            };
        }
    }
    let mut directives = Directives::parse(headers.get_all(header::CACHE_CONTROL));
    if !headers.contains_key(header::CACHE_CONTROL) && pragma_no_cache(headers) {
        directives.no_cache = true;
    }
    ResponseDirectives {
        directives,
        is_targeted: false,
    }
}

/// A response's directives for this cache (see [`response_directives`]): read once by the
/// storability check and handed on to the freshness computation.
#[derive(Debug, Clone)]
pub struct ResponseDirectives {
    pub directives: Directives,
    /// A targeted field (RFC 9213) gave them: Expires is ignored too.
    pub is_targeted: bool,
}

/// RFC 9213 §2.1: a targeted field is a Structured Field Dictionary. One that is absent,
/// empty, does not parse (all its lines together), or gives a known directive a value of
/// the wrong type is ignored as a whole (`None`), and the next field applies.
fn targeted_directives(headers: &HeaderMap, field: &HeaderName) -> Option<Directives> {
    let lines: Vec<&str> = headers
        .get_all(field)
        .iter()
        .map(|v| v.to_str())
        .collect::<Result<_, _>>()
        .ok()?;
    let joined = lines.join(", ");
    if joined.trim().is_empty() {
        return None;
    }
    let dictionary: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
    let mut directives = Directives::default();
    for (key, member) in &dictionary {
        let name = key.as_str();
        let item = match member {
            sfv::ListEntry::Item(item) => item,
            // Inner lists: the field names of a qualified no-cache or private.
            sfv::ListEntry::InnerList(list) if matches!(name, "no-cache" | "private") => {
                let names: Option<Vec<&str>> = list
                    .items
                    .iter()
                    .map(|item| match &item.bare_item {
                        sfv::BareItem::String(text) => Some(text.as_str()),
                        sfv::BareItem::Token(token) => Some(token.as_str()),
                        _ => None,
                    })
                    .collect();
                directives.apply(name, Some(&names?.join(",")), false);
                continue;
            }
            sfv::ListEntry::InnerList(_) => return None,
        };
        match (name, &item.bare_item) {
            (
                "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error",
                sfv::BareItem::Integer(seconds),
            ) if i64::from(*seconds) >= 0 => {
                directives.apply(name, Some(&i64::from(*seconds).to_string()), false);
            }
            ("max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error", _) => {
                return None
            }
            (_, sfv::BareItem::Boolean(true)) => directives.apply(name, None, false),
            (
                "no-store" | "no-cache" | "private" | "public" | "must-revalidate"
                | "proxy-revalidate" | "immutable" | "must-understand",
                _,
            ) => return None,
            // Extension directives may carry any value; we know none of them.
            _ => {}
        }
    }
    Some(directives)
}

/// The request's directives, with `Pragma: no-cache` honoured when there is no
/// Cache-Control (RFC 9111 §5.4).
pub fn request_directives(headers: &HeaderMap) -> Directives {
    let mut directives = Directives::parse(headers.get_all(header::CACHE_CONTROL));
    if !headers.contains_key(header::CACHE_CONTROL) && pragma_no_cache(headers) {
        directives.no_cache = true;
    }
    // The request no-cache takes no argument (§5.2.1.4); one given anyway still asks for
    // validation rather than naming fields.
    if !directives.no_cache_fields.is_empty() {
        directives.no_cache = true;
    }
    directives
}

fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|m| m.trim().eq_ignore_ascii_case("no-cache"))
        })
}

/// Why a response is not stored. The strings are used in Cache-Status `detail`, logs and
/// metrics alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStoreReason {
    Method,
    Status,
    PartialContent,
    RequestNoStore,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    TooLarge,
    /// The library found nothing that allows storing (no explicit freshness on a status
    /// that is not cacheable by default, and no `public`).
    NotCacheable,
}

impl NoStoreReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NoStoreReason::Method => "method",
            NoStoreReason::Status => "status",
            NoStoreReason::PartialContent => "partial-content",
            NoStoreReason::RequestNoStore => "request-no-store",
            NoStoreReason::NoStore => "no-store",
            NoStoreReason::Private => "private",
            NoStoreReason::Authorization => "authorization",
            NoStoreReason::SetCookie => "set-cookie",
            NoStoreReason::VaryStar => "vary-star",
            NoStoreReason::TooLarge => "too-large",
            NoStoreReason::NotCacheable => "not-cacheable",
        }
    }
}

/// What storage needs to know about the request that fetched a response.
pub struct FetchedFor<'a> {
    pub method: &'a Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
}

/// RFC 9111 §3: may this response be stored by a shared cache? If so, its directives as
/// read for the check, for [`Freshness::from_directives`].
///
/// # Errors
/// The first [`NoStoreReason`] that forbids it.
pub fn check_storable(
    request: &FetchedFor<'_>,
    status: StatusCode,
    response_headers: &HeaderMap,
    settings: &PolicySettings,
    response_time: SystemTime,
) -> Result<ResponseDirectives, NoStoreReason> {
    if request.method != Method::GET && request.method != Method::HEAD {
        return Err(NoStoreReason::Method);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(NoStoreReason::PartialContent);
    }
    if status.is_informational() || status == StatusCode::NOT_MODIFIED {
        return Err(NoStoreReason::Status);
    }
    let request_cc = request_directives(request.headers);
    if request_cc.no_store {
        return Err(NoStoreReason::RequestNoStore);
    }
    let read = response_directives(response_headers, settings);
    let (directives, is_targeted) = (&read.directives, read.is_targeted);
    let is_understood = UNDERSTOOD_BY_US.contains(&status.as_u16());
    // §5.2.2.3: must-understand overrides no-store for a status we understand, and forbids
    // storing one we do not, whatever else the response says.
    if directives.must_understand && !is_understood {
        return Err(NoStoreReason::Status);
    }
    if directives.no_store && !(directives.must_understand && is_understood) {
        return Err(NoStoreReason::NoStore);
    }
    if directives.private {
        return Err(NoStoreReason::Private);
    }
    // A cookie a qualified no-cache or private names is stored without, like any field
    // they name (`remove_unshared_fields`).
    if response_headers.contains_key(header::SET_COOKIE)
        && !settings.store_set_cookie
        && !directives.is_unshared("set-cookie")
    {
        return Err(NoStoreReason::SetCookie);
    }
    if crate::cache::key::Vary::from_response(response_headers) == crate::cache::key::Vary::Star {
        return Err(NoStoreReason::VaryStar);
    }
    if request.headers.contains_key(header::AUTHORIZATION)
        && !is_shareable_with_authorization(directives)
    {
        return Err(NoStoreReason::Authorization);
    }
    // §3: any final status may be stored when the response gives explicit freshness (or
    // `public`); the library only knows a list of statuses, and knows nothing of
    // must-understand (it sees no-store).
    let is_explicit = directives.max_age.is_some()
        || directives.s_maxage.is_some()
        || directives.public
        || (!is_targeted && response_headers.contains_key(header::EXPIRES));
    let must_understand_allows = directives.must_understand && is_understood;
    // Asked last, only when the rules above do not already allow: building its view of
    // the exchange (two header maps cloned, Cache-Control parsed again) was 5% of a miss.
    let library_allows = || {
        library_allows(
            request,
            status,
            &effective_headers(response_headers, directives, is_targeted),
            settings,
            response_time,
        )
    };
    if is_explicit || must_understand_allows || library_allows() {
        Ok(read)
    } else if !is_understood {
        Err(NoStoreReason::Status)
    } else {
        Err(NoStoreReason::NotCacheable)
    }
}

/// RFC 9110 §9.3.3: whether a response to POST may be stored for later GET and HEAD
/// requests of the target as far as its status and freshness go: a 200 or 203 with
/// explicit freshness (RFC 9111 §4.2.1: `s-maxage`, `max-age` or `Expires`; `public` or a
/// heuristic is not enough). The caller also checks that its `Content-Location` names the
/// target, which makes its content the target's current representation (RFC 9110 §8.7),
/// and the usual rules of RFC 9111 §3, as for a GET.
pub fn post_response_reusable(
    status: StatusCode,
    response_headers: &HeaderMap,
    settings: &PolicySettings,
) -> bool {
    if !matches!(status.as_u16(), 200 | 203) {
        return false;
    }
    let read = response_directives(response_headers, settings);
    let directives = &read.directives;
    directives.max_age.is_some()
        || directives.s_maxage.is_some()
        || (!read.is_targeted && response_headers.contains_key(header::EXPIRES))
}

/// Whether http-cache-semantics would store the response (it reads Cache-Control and
/// Expires, so it gets `effective`: the targeted field's view).
fn library_allows(
    request: &FetchedFor<'_>,
    status: StatusCode,
    effective: &HeaderMap,
    settings: &PolicySettings,
    response_time: SystemTime,
) -> bool {
    let policy_view = http::Response::builder()
        .status(status)
        .body(())
        .map(|mut response| {
            *response.headers_mut() = effective.clone();
            response
        });
    let request_view = http::Request::builder()
        .method(request.method.clone())
        .uri(request.uri.clone())
        .body(())
        .map(|mut r| {
            *r.headers_mut() = request.headers.clone();
            r
        });
    let (Ok(policy_view), Ok(request_view)) = (policy_view, request_view) else {
        return false;
    };
    let options = CacheOptions {
        shared: true,
        cache_heuristic: settings.heuristic_fraction,
        ..CacheOptions::default()
    };
    CachePolicy::new_options(&request_view, &policy_view, response_time, options).is_storable()
}

/// Status codes whose semantics this cache understands well enough to store them.
const UNDERSTOOD_BY_US: [u16; 21] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501, 400, 403, 500, 502, 503,
    504, 451,
];

/// RFC 9111 §3.5: a response to a request with Authorization may be stored and reused by a
/// shared cache only if it says so.
pub fn is_shareable_with_authorization(directives: &Directives) -> bool {
    directives.public || directives.must_revalidate || directives.s_maxage.is_some()
}

/// The headers the library should see: with a targeted field, its value replaces
/// Cache-Control and Expires is dropped (RFC 9213 §2.2). The library knows qualified
/// no-cache and private only as their unqualified forms, so it is shown the response as
/// it will be stored: the fields they name removed, and the two directives left out.
fn effective_headers(headers: &HeaderMap, directives: &Directives, is_targeted: bool) -> HeaderMap {
    let mut view = headers.clone();
    let is_qualified = directives.unshared_fields().next().is_some();
    if is_targeted {
        view.remove(header::EXPIRES);
    }
    if is_targeted || is_qualified {
        view.remove(header::CACHE_CONTROL);
        if let Ok(value) = HeaderValue::from_str(&render_directives(directives)) {
            view.insert(header::CACHE_CONTROL, value);
        }
    }
    for name in directives.unshared_fields() {
        view.remove(name);
    }
    view
}

fn render_directives(d: &Directives) -> String {
    let mut parts: Vec<String> = Vec::new();
    let flags = [
        (d.no_store, "no-store"),
        (d.no_cache, "no-cache"),
        (d.private, "private"),
        (d.public, "public"),
        (d.must_revalidate, "must-revalidate"),
        (d.proxy_revalidate, "proxy-revalidate"),
        (d.immutable, "immutable"),
    ];
    parts.extend(
        flags
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| name.to_string()),
    );
    if let Some(v) = d.max_age {
        parts.push(format!("max-age={v}"));
    }
    if let Some(v) = d.s_maxage {
        parts.push(format!("s-maxage={v}"));
    }
    parts.join(", ")
}

/// How long a stored response stays fresh and how old it is: everything the hit path needs,
/// computed once when the response is stored (or freshened by a 304).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// RFC 9111 §4.2.1 freshness lifetime.
    pub lifetime: Duration,
    pub is_heuristic: bool,
    /// RFC 9111 §4.2.3 corrected_initial_age.
    pub corrected_initial_age: Duration,
    pub response_time: SystemTime,
    /// Response `no-cache` (§5.2.2.4): every reuse must be validated first.
    pub requires_validation: bool,
    /// must-revalidate, proxy-revalidate, s-maxage (§5.2.2.10) or no-cache: never served
    /// stale, whatever the request allows (§4.2.4).
    pub forbids_stale: bool,
    /// RFC 8246: fresh responses are not revalidated on a client's reload.
    pub is_immutable: bool,
    /// RFC 5861 windows, kept for the stale-serving rules.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// Stored under RFC 9111 §3.5 rules: reusable for requests with Authorization.
    pub is_shareable_with_authorization: bool,
}

impl Freshness {
    /// RFC 9111 §4.2.1, §4.2.2 and §4.2.3 for a response received at `response_time` to a
    /// request sent at `request_time`.
    pub fn compute(
        status: StatusCode,
        headers: &HeaderMap,
        settings: &PolicySettings,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Freshness {
        let read = response_directives(headers, settings);
        Freshness::from_directives(status, headers, read, settings, request_time, response_time)
    }

    /// [`Freshness::compute`] with the response's directives already read from `headers`.
    pub fn from_directives(
        status: StatusCode,
        headers: &HeaderMap,
        read: ResponseDirectives,
        settings: &PolicySettings,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Freshness {
        let ResponseDirectives {
            directives,
            is_targeted,
        } = read;
        let date = single_date(headers, header::DATE, response_time)
            .ok()
            .flatten();
        let date_value = date.unwrap_or(response_time);

        let (lifetime, is_heuristic) = if directives.has_conflicting_freshness {
            (Duration::ZERO, false)
        } else if let Some(s_maxage) = directives.s_maxage {
            (Duration::from_secs(s_maxage), false)
        } else if let Some(max_age) = directives.max_age {
            (Duration::from_secs(max_age), false)
        } else if !is_targeted && headers.contains_key(header::EXPIRES) {
            // §5.3: an invalid Expires (such as "0"), or several that disagree, is in the past.
            match single_date(headers, header::EXPIRES, response_time) {
                Ok(Some(expires)) => (
                    expires.duration_since(date_value).unwrap_or_default(),
                    false,
                ),
                _ => (Duration::ZERO, false),
            }
        } else if HEURISTICALLY_CACHEABLE.contains(&status.as_u16()) || directives.public {
            // §4.2.2: heuristics apply to heuristically cacheable statuses "and on responses
            // ... marked as explicitly cacheable (e.g., with a public response directive)".
            (heuristic_lifetime(headers, date_value, settings), true)
        } else {
            (Duration::ZERO, false)
        };

        // §4.2.3 age calculation.
        let age_value = age_field(headers).map_or(Duration::ZERO, Duration::from_secs);
        let apparent_age = response_time.duration_since(date_value).unwrap_or_default();
        let response_delay = response_time
            .duration_since(request_time)
            .unwrap_or_default();
        let corrected_age_value = age_value + response_delay;
        let corrected_initial_age = apparent_age.max(corrected_age_value);

        let requires_validation = directives.no_cache;
        Freshness {
            lifetime,
            is_heuristic,
            corrected_initial_age,
            response_time,
            requires_validation,
            forbids_stale: directives.must_revalidate
                || directives.proxy_revalidate
                || directives.s_maxage.is_some()
                || requires_validation,
            is_immutable: directives.immutable,
            stale_while_revalidate: Duration::from_secs(
                directives.stale_while_revalidate.unwrap_or(0),
            ),
            stale_if_error: Duration::from_secs(directives.stale_if_error.unwrap_or(0)),
            is_shareable_with_authorization: is_shareable_with_authorization(&directives),
        }
    }

    /// RFC 9111 §4.2.3 current_age.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        self.corrected_initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Seconds of freshness left; negative once stale (Cache-Status `ttl`, RFC 9211 §2.5).
    pub fn ttl_seconds(&self, now: SystemTime) -> i64 {
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        let age = i64::try_from(self.current_age(now).as_secs()).unwrap_or(i64::MAX);
        lifetime.saturating_sub(age)
    }

    /// Fresh (§4.2): lifetime greater than current age.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        self.lifetime > self.current_age(now)
    }
}

/// §4.2.2: a fraction of the time since Last-Modified, capped by config.
fn heuristic_lifetime(
    headers: &HeaderMap,
    date_value: SystemTime,
    settings: &PolicySettings,
) -> Duration {
    let Ok(Some(last_modified)) = single_date(headers, header::LAST_MODIFIED, date_value) else {
        return Duration::ZERO;
    };
    let since = date_value.duration_since(last_modified).unwrap_or_default();
    since
        .mul_f64(f64::from(settings.heuristic_fraction).clamp(0.0, 1.0))
        .min(settings.heuristic_max)
}

/// Parses a date field that must appear once (RFC 9110 §5.6.7, see [`http_date`]; `now`
/// places two-digit years). `Ok(None)` when absent; `Err` when invalid or repeated with
/// different values.
fn single_date(
    headers: &HeaderMap,
    name: HeaderName,
    now: SystemTime,
) -> Result<Option<SystemTime>, ()> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|other| other != first) {
        return Err(());
    }
    let text = first.to_str().map_err(|_| ())?;
    http_date::parse(text, now).map(Some).ok_or(())
}

/// May a stored response answer this request, and if not, why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it: fresh and acceptable to the request.
    Fresh,
    /// Serve it stale: the request's `max-stale` allows it and the response does not forbid.
    StaleAllowed,
    /// Serve it stale and validate it in the background: within the response's
    /// `stale-while-revalidate` window (RFC 5861 §3).
    StaleWhileRevalidate,
    /// Validate with the origin first: the stored response is stale (or needs validation).
    ValidateStale,
    /// Validate with the origin first: the response is fresh but the request's directives
    /// (no-cache, max-age, min-fresh) do not accept it.
    ValidateForRequest,
}

/// RFC 9111 §4.2, §4.3 and §5.2.1 (with RFC 8246 for immutable): may `freshness` serve a
/// request with `request` directives at `now`?
pub fn evaluate_reuse(freshness: &Freshness, request: &Directives, now: SystemTime) -> Reuse {
    let is_fresh = freshness.is_fresh(now) && !freshness.requires_validation;
    let age = freshness.current_age(now);
    if is_fresh {
        // RFC 8246 §2: a reload of an immutable response during its lifetime does not
        // need the origin.
        let reloads = request.no_cache || request.max_age == Some(0);
        if freshness.is_immutable && reloads {
            return Reuse::Fresh;
        }
        if request.no_cache {
            return Reuse::ValidateForRequest;
        }
        if request
            .max_age
            .is_some_and(|max_age| age > Duration::from_secs(max_age))
        {
            return Reuse::ValidateForRequest;
        }
        if request.min_fresh.is_some_and(|min_fresh| {
            freshness.lifetime.saturating_sub(age) < Duration::from_secs(min_fresh)
        }) {
            return Reuse::ValidateForRequest;
        }
        return Reuse::Fresh;
    }
    if freshness.forbids_stale || freshness.requires_validation || request.no_cache {
        return Reuse::ValidateStale;
    }
    let staleness = age.saturating_sub(freshness.lifetime);
    let max_age_ok = request
        .max_age
        .is_none_or(|max_age| age <= Duration::from_secs(max_age));
    match request.max_stale {
        Some(None) if max_age_ok => Reuse::StaleAllowed,
        Some(Some(limit)) if max_age_ok && staleness <= Duration::from_secs(limit) => {
            Reuse::StaleAllowed
        }
        // RFC 5861 §3: the cache would validate now; within the window it may serve the
        // stale response and validate in the background instead. A response that needs
        // validation on every use (no-cache) was turned away above.
        _ if !freshness.requires_validation
            && !freshness.stale_while_revalidate.is_zero()
            && staleness <= freshness.stale_while_revalidate
            && request.max_age.is_none() =>
        {
            Reuse::StaleWhileRevalidate
        }
        _ => Reuse::ValidateStale,
    }
}

/// RFC 5861 §4 with RFC 9111 §4.2.4: may a stale response be served because validating it
/// failed (the cache is disconnected from the origin)? Within the longest of the
/// response's and the request's `stale-if-error` windows and the operator's
/// `disconnected_window`, unless the response forbids serving it stale (must-revalidate,
/// proxy-revalidate, s-maxage, no-cache).
pub fn allows_stale_on_error(
    freshness: &Freshness,
    request: &Directives,
    disconnected_window: Duration,
    now: SystemTime,
) -> bool {
    if freshness.forbids_stale {
        return false;
    }
    let staleness = freshness
        .current_age(now)
        .saturating_sub(freshness.lifetime);
    let window = freshness
        .stale_if_error
        .max(Duration::from_secs(request.stale_if_error.unwrap_or(0)))
        .max(disconnected_window);
    !window.is_zero() && staleness <= window
}

/// A client's conditional GET/HEAD evaluated against a stored response with fields `stored`,
/// received at `received_at` (RFC 9110 §13.2.2): If-None-Match wins over
/// If-Modified-Since. Returns true when the answer is 304.
///
/// `now` places two-digit years in the dates (RFC 9110 §5.6.7).
pub fn is_not_modified(
    request: &HeaderMap,
    stored: &HeaderMap,
    received_at: SystemTime,
    now: SystemTime,
) -> bool {
    if let Some(_first) = request.get(header::IF_NONE_MATCH) {
        let Some(etag) = stored.get(header::ETAG).map(field_text) else {
            return false;
        };
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .map(field_text)
            .any(|list| {
                entity_tags(&list).any(|candidate| candidate == "*" || weak_eq(candidate, &etag))
            });
    }
    let Some(since) = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| http_date::parse(v, now))
    else {
        return false;
    };
    // RFC 9111 §4.3.2: with no Last-Modified stored, the stored response's Date stands in
    // for it, or failing that the time it was received; neither is earlier than the last
    // change of what it carries.
    let modified = match stored.get(header::LAST_MODIFIED) {
        Some(_) => single_date(stored, header::LAST_MODIFIED, now),
        None if stored.contains_key(header::DATE) => single_date(stored, header::DATE, now),
        None => Ok(Some(received_at)),
    };
    let Ok(Some(modified)) = modified else {
        return false;
    };
    modified <= since
}

/// A field value as text. An entity tag may hold obs-text (RFC 9110 §8.8.3: bytes 0x80 to
/// 0xFF), which is not UTF-8: such bytes are read one for one as Latin-1 characters, so
/// that two values compare equal exactly when their bytes do.
fn field_text(value: &HeaderValue) -> std::borrow::Cow<'_, str> {
    match value.to_str() {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => value
            .as_bytes()
            .iter()
            .map(|&byte| char::from(byte))
            .collect(),
    }
}

/// The members of an entity-tag list (`If-None-Match`, RFC 9110 §13.1.2), split at the
/// commas between them; a comma inside a quoted tag (etagc allows it) stays in its tag. A
/// malformed member (unquoted) runs to the next comma.
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    let mut rest = list;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return None;
        }
        let opening = rest.strip_prefix("W/").unwrap_or(rest);
        let end = match opening.strip_prefix('"') {
            Some(quoted) => quoted
                .find('"')
                .map_or(rest.len(), |close| rest.len() - quoted.len() + close + 1),
            None => rest.find(',').unwrap_or(rest.len()),
        };
        let (member, after) = rest.split_at(end);
        rest = after;
        Some(member.trim())
    })
}

/// Weak comparison of entity tags (RFC 9110 §8.8.3.2). The coding suffix outpost gives
/// encoded representations (`"abc-br"`) is ignored, so either form matches the other.
/// A malformed tag (unquoted, `w/` in lower case) matches only the very same text, as
/// nginx and Varnish compare them: an origin that sends `ETag: abc` and a client that
/// echoes it mean the same response.
pub fn weak_eq(a: &str, b: &str) -> bool {
    fn strip(tag: &str) -> std::borrow::Cow<'_, str> {
        crate::transform::compress::strip_coding_suffix(tag.trim().trim_start_matches("W/"))
    }
    let (a, b) = (strip(a), strip(b));
    !a.is_empty() && a == b
}

/// Headers that make a request conditional on the client's own cache state; removed from a
/// request that fills ours, so the origin sends a complete response we can store.
pub const CLIENT_CONDITIONALS: [HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Where a stored representation that outpost transformed (a mirror's rewritten index
/// document, which has a weak ETag of its own) keeps the origin's ETag, for validating it
/// with the origin. Never sent to clients.
pub const ORIGIN_ETAG: &str = "outpost-origin-etag";

/// The ETag the origin gave a stored response.
fn origin_etag(stored: &HeaderMap) -> Option<&HeaderValue> {
    stored.get(ORIGIN_ETAG).or_else(|| stored.get(header::ETAG))
}

/// Adds validators of `stored` to a request that revalidates it (RFC 9111 §4.3.1).
pub fn add_validators(request: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = origin_etag(stored) {
        request.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(last_modified) = stored.get(header::LAST_MODIFIED) {
        request.insert(header::IF_MODIFIED_SINCE, last_modified.clone());
    }
}

/// Removes the validators [`add_validators`] and [`add_entity_tags`] add.
pub fn remove_validators(request: &mut HeaderMap) {
    request.remove(header::IF_NONE_MATCH);
    request.remove(header::IF_MODIFIED_SINCE);
}

/// Adds the entity tags of `stored` alone (no dates: see [`validates_other_variants`]),
/// as one If-None-Match list, to a request that validates other variants.
pub fn add_entity_tags<'a>(
    request: &mut HeaderMap,
    stored: impl IntoIterator<Item = &'a HeaderMap>,
) {
    let mut list = Vec::new();
    for etag in stored.into_iter().filter_map(origin_etag) {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(etag.as_bytes());
    }
    if list.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_bytes(&list) {
        request.insert(header::IF_NONE_MATCH, value);
    }
}

/// Whether two stored responses carry the same entity tag.
pub fn same_entity_tag(a: &HeaderMap, b: &HeaderMap) -> bool {
    match (
        origin_etag(a).and_then(|v| v.to_str().ok()),
        origin_etag(b).and_then(|v| v.to_str().ok()),
    ) {
        (Some(a), Some(b)) => weak_eq(a, b),
        _ => false,
    }
}

/// Whether a stored origin response with fields `stored` may be validated for requests its
/// Vary rule does not select (see `MissPlan::other_variants`): it has a strong entity tag,
/// which changes with the representation's bytes (RFC 9110 §8.8.3), so a 304 for it means
/// the same bytes. A weak tag or a date would only say "equivalent" for another request's
/// representation.
pub fn validates_other_variants(stored: &HeaderMap) -> bool {
    origin_etag(stored).is_some_and(|etag| etag.as_bytes().first() == Some(&b'"'))
}

/// Does a 304 name this stored response (RFC 9111 §4.3.4)? Its ETag must equal the stored
/// one: how a 304 to a request that offered several entity tags says which it selects.
pub fn not_modified_names(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    not_modified.contains_key(header::ETAG) && not_modified_selects(stored, not_modified)
}

/// Does a 304 select this stored response for update (RFC 9111 §4.3.4)? A strong ETag in
/// the 304 must equal the stored one; without one, the validator we sent is what matched.
pub fn not_modified_selects(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    match (
        not_modified.get(header::ETAG).and_then(|v| v.to_str().ok()),
        origin_etag(stored).and_then(|v| v.to_str().ok()),
    ) {
        (Some(new), Some(old)) => weak_eq(new, old),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Removes from headers about to be stored for everyone the fields that are not for
/// everyone: those a qualified `no-cache` or `private` names (RFC 9111 §5.2.2.4,
/// §5.2.2.7), and `Set-Cookie` unless storing cookies is configured (`store_set_cookie`: a
/// cookie on a 304 or a HEAD is its requester's). Returns what it removed, for the client
/// whose request brought the response.
pub fn remove_unshared_fields(headers: &mut HeaderMap, settings: &PolicySettings) -> HeaderMap {
    let read = response_directives(headers, settings);
    let unshared = unshared_field_names(&read.directives, settings);
    remove_fields(headers, unshared)
}

/// The fields [`remove_unshared_fields`] removes from a response whose directives are
/// `directives`: for a caller that has read them already (reading them is a tenth of the
/// policy work of a miss).
pub fn unshared_field_names(directives: &Directives, settings: &PolicySettings) -> Vec<HeaderName> {
    let mut unshared: Vec<HeaderName> = directives
        .unshared_fields()
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    if !settings.store_set_cookie {
        unshared.push(header::SET_COOKIE);
    }
    unshared
}

/// Removes every line of each of `names` from `headers` and returns them.
pub fn remove_fields(headers: &mut HeaderMap, names: Vec<HeaderName>) -> HeaderMap {
    let mut removed = HeaderMap::new();
    for name in names {
        if let http::header::Entry::Occupied(entry) = headers.entry(name) {
            let (name, values) = entry.remove_entry_mult();
            for value in values {
                removed.append(name.clone(), value);
            }
        }
    }
    removed
}

/// RFC 9111 §3.2 / §4.3.4: the stored header fields updated with a 304's, keeping every
/// repeated field line of either side (http-cache-semantics collapses them). Content-Length
/// and hop-by-hop fields are never taken from the 304.
pub fn freshen_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    const NOT_UPDATED: [HeaderName; 4] = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::CONTENT_ENCODING,
    ];
    let mut merged = stored.clone();
    // The stored Age was that response's age when it arrived; the freshened response's age
    // is the 304's own (its Age, if any, and the new response time).
    merged.remove(header::AGE);
    let transformed = stored.contains_key(ORIGIN_ETAG);
    for name in not_modified.keys() {
        if NOT_UPDATED.contains(name) {
            continue;
        }
        // A transformed representation keeps its own validator; the origin's is updated.
        let target = if transformed && name == header::ETAG {
            HeaderName::from_static(ORIGIN_ETAG)
        } else {
            name.clone()
        };
        merged.remove(&target);
        for value in not_modified.get_all(name) {
            merged.append(target.clone(), value.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(at(secs))
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn fresh(pairs: &[(&str, &str)]) -> Freshness {
        Freshness::compute(
            StatusCode::OK,
            &headers(pairs),
            &PolicySettings::default(),
            at(0),
            at(0),
        )
    }

    fn storable(
        status: u16,
        request: &[(&str, &str)],
        response: &[(&str, &str)],
    ) -> Result<(), NoStoreReason> {
        let uri: http::Uri = "http://example.com/x".parse().unwrap();
        let request = headers(request);
        check_storable(
            &FetchedFor {
                method: &Method::GET,
                uri: &uri,
                headers: &request,
            },
            StatusCode::from_u16(status).unwrap(),
            &headers(response),
            &PolicySettings::default(),
            at(0),
        )
        .map(drop)
    }

    /// The directives the storability check read give the freshness a fresh read would,
    /// whichever field supplied them (RFC 9213 targeted, Cache-Control, Pragma, Expires).
    #[test]
    fn freshness_from_the_checked_directives_is_the_freshness_computed_afresh() {
        let uri: http::Uri = "http://example.com/x".parse().unwrap();
        let request = HeaderMap::new();
        let settings = PolicySettings::default();
        let cases: [&[(&str, &str)]; 5] = [
            &[("cache-control", "max-age=60, stale-while-revalidate=30")],
            &[
                ("cdn-cache-control", "max-age=600"),
                ("cache-control", "max-age=5"),
            ],
            &[(
                "cache-control",
                "public, s-maxage=9, must-revalidate, immutable",
            )],
            &[
                ("expires", "Thu, 01 Jan 1970 00:01:40 GMT"),
                ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ],
            &[
                ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT"),
                ("pragma", "no-cache"),
            ],
        ];
        for fields in cases {
            let response = headers(fields);
            let fetched_for = FetchedFor {
                method: &Method::GET,
                uri: &uri,
                headers: &request,
            };
            let read = check_storable(&fetched_for, StatusCode::OK, &response, &settings, at(10))
                .unwrap_or_else(|reason| panic!("{fields:?}: {reason:?}"));
            assert_eq!(
                Freshness::from_directives(
                    StatusCode::OK,
                    &response,
                    read,
                    &settings,
                    at(5),
                    at(10)
                ),
                Freshness::compute(StatusCode::OK, &response, &settings, at(5), at(10)),
                "{fields:?}"
            );
        }
    }

    /// RFC 9111 §4.2.1: s-maxage beats max-age beats Expires - Date.
    #[test]
    fn freshness_lifetime_precedence() {
        let d = date(0);
        let e = date(300);
        assert_eq!(
            fresh(&[
                ("cache-control", "max-age=60, s-maxage=120"),
                ("expires", &e),
                ("date", &d)
            ])
            .lifetime
            .as_secs(),
            120
        );
        assert_eq!(
            fresh(&[
                ("cache-control", "max-age=60"),
                ("expires", &e),
                ("date", &d)
            ])
            .lifetime
            .as_secs(),
            60
        );
        assert_eq!(
            fresh(&[("expires", &e), ("date", &d)]).lifetime.as_secs(),
            300
        );
        // §5.3: invalid Expires means already expired.
        assert_eq!(
            fresh(&[("expires", "0"), ("date", &d)]).lifetime,
            Duration::ZERO
        );
    }

    /// RFC 9111 §5.2: no whitespace around a directive's "=". A malformed max-age or
    /// s-maxage is invalid freshness information (§4.2.1: stale); a malformed directive
    /// that restricts reuse still restricts it. Whitespace around the commas is allowed.
    #[test]
    fn whitespace_around_the_equals_sign_makes_a_granting_directive_invalid() {
        for spaced in [
            "max-age =3600",
            "max-age= 3600",
            "s-maxage\t=60",
            "max-age = 60",
        ] {
            let response = fresh(&[("cache-control", spaced)]);
            assert_eq!(response.lifetime, Duration::ZERO, "{spaced}");
        }
        assert_eq!(
            fresh(&[("cache-control", " max-age=60 ,\tpublic ")])
                .lifetime
                .as_secs(),
            60
        );
        let parse = |text: &'static str| Directives::parse([&HeaderValue::from_static(text)]);
        assert_eq!(
            parse("no-cache= \"set-cookie\"").no_cache_fields,
            ["set-cookie"]
        );
        assert!(parse("private =\"x-user\"").is_unshared("x-user"));
        assert_eq!(
            parse("stale-while-revalidate= 30").stale_while_revalidate,
            None
        );
        assert_eq!(parse("stale-if-error=30").stale_if_error, Some(30));
    }

    /// RFC 9111 §4.2.1: conflicting duplicate directives make the response stale; an
    /// identical duplicate is harmless.
    #[test]
    fn conflicting_or_invalid_max_age_is_stale() {
        assert_eq!(
            fresh(&[
                ("cache-control", "max-age=60"),
                ("cache-control", "max-age=30")
            ])
            .lifetime,
            Duration::ZERO
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=abc")]).lifetime,
            Duration::ZERO
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=60, max-age=60")])
                .lifetime
                .as_secs(),
            60
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=99999999999")])
                .lifetime
                .as_secs(),
            1 << 31
        );
        assert_eq!(
            fresh(&[("cache-control", "max-age=\"60\"")])
                .lifetime
                .as_secs(),
            60
        );
    }

    /// RFC 9111 §4.2.2: heuristic freshness is 10% of Date - Last-Modified, capped, and only
    /// without explicit freshness, for heuristically cacheable statuses or `public` ones.
    #[test]
    fn heuristic_freshness_only_when_allowed() {
        let lm = date(0);
        let d = date(100_000);
        let h = fresh(&[("last-modified", &lm), ("date", &d)]);
        assert_eq!((h.lifetime.as_secs(), h.is_heuristic), (10_000, true));
        let capped = Freshness::compute(
            StatusCode::OK,
            &headers(&[("last-modified", &date(0)), ("date", &date(10_000_000))]),
            &PolicySettings::default(),
            at(10_000_000),
            at(10_000_000),
        );
        assert_eq!(capped.lifetime.as_secs(), 24 * 3600);
        let redirect = Freshness::compute(
            StatusCode::FOUND,
            &headers(&[("last-modified", &lm), ("date", &d)]),
            &PolicySettings::default(),
            at(0),
            at(0),
        );
        assert_eq!(
            redirect.lifetime,
            Duration::ZERO,
            "302 is not heuristically cacheable"
        );
        // "... and on responses without explicit freshness that have been marked as
        // explicitly cacheable (e.g., with a public response directive)."
        let public_unknown = Freshness::compute(
            StatusCode::from_u16(599).unwrap(),
            &headers(&[
                ("last-modified", &lm),
                ("date", &d),
                ("cache-control", "public"),
            ]),
            &PolicySettings::default(),
            at(100_000),
            at(100_000),
        );
        assert_eq!(
            (
                public_unknown.lifetime.as_secs(),
                public_unknown.is_heuristic
            ),
            (10_000, true)
        );
    }

    /// RFC 9111 §4.2.3: the origin's Age, the response delay and the apparent age all count.
    #[test]
    fn age_calculation_follows_4_2_3() {
        let response = headers(&[
            ("age", "30"),
            ("date", &date(0)),
            ("cache-control", "max-age=100"),
        ]);
        let f = Freshness::compute(
            StatusCode::OK,
            &response,
            &PolicySettings::default(),
            at(0),
            at(2),
        );
        // corrected_age_value = 30 + 2 (delay) beats apparent_age = 2.
        assert_eq!(f.corrected_initial_age.as_secs(), 32);
        assert_eq!(f.current_age(at(12)).as_secs(), 42);
        assert_eq!(f.ttl_seconds(at(12)), 58);
        // A Date far in the past makes the apparent age win.
        let old = headers(&[("date", &date(0)), ("cache-control", "max-age=100")]);
        let f = Freshness::compute(
            StatusCode::OK,
            &old,
            &PolicySettings::default(),
            at(500),
            at(500),
        );
        assert_eq!(f.corrected_initial_age.as_secs(), 500);
        assert!(!f.is_fresh(at(500)));
    }

    /// Cross-check with http-cache-semantics where both follow the RFC the same way: a
    /// plain max-age with Date at receipt and no Age.
    #[test]
    fn freshness_agrees_with_http_cache_semantics_on_simple_responses() {
        for max_age in [0u64, 1, 60, 3600, 86_400] {
            let cc = format!("public, max-age={max_age}");
            let response_headers = headers(&[("cache-control", &cc), ("date", &date(0))]);
            let ours = Freshness::compute(
                StatusCode::OK,
                &response_headers,
                &PolicySettings::default(),
                at(0),
                at(0),
            );
            let mut response = http::Response::new(());
            *response.headers_mut() = response_headers.clone();
            let request = http::Request::get("http://example.com/").body(()).unwrap();
            let theirs =
                CachePolicy::new_options(&request, &response, at(0), CacheOptions::default());
            for later in [0u64, 1, 59, 61, 7200] {
                let now = at(later);
                assert_eq!(
                    ours.lifetime.saturating_sub(ours.current_age(now)),
                    theirs.time_to_live(now),
                    "max-age={max_age} at +{later}s"
                );
            }
        }
    }

    /// RFC 9111 §3: what a shared cache must not store.
    #[test]
    fn storability_rules() {
        assert_eq!(
            storable(200, &[], &[("cache-control", "max-age=60")]),
            Ok(())
        );
        assert_eq!(
            storable(200, &[], &[("cache-control", "no-store, max-age=60")]),
            Err(NoStoreReason::NoStore)
        );
        assert_eq!(
            storable(200, &[], &[("cache-control", "private, max-age=60")]),
            Err(NoStoreReason::Private)
        );
        assert_eq!(
            storable(
                200,
                &[],
                &[("cache-control", "max-age=60"), ("set-cookie", "a=1")]
            ),
            Err(NoStoreReason::SetCookie)
        );
        assert_eq!(
            storable(200, &[], &[("cache-control", "max-age=60"), ("vary", "*")]),
            Err(NoStoreReason::VaryStar)
        );
        assert_eq!(
            storable(
                200,
                &[("cache-control", "no-store")],
                &[("cache-control", "max-age=60")]
            ),
            Err(NoStoreReason::RequestNoStore)
        );
        // §3.5: Authorization needs public, s-maxage or must-revalidate.
        assert_eq!(
            storable(
                200,
                &[("authorization", "Basic x")],
                &[("cache-control", "max-age=60")]
            ),
            Err(NoStoreReason::Authorization)
        );
        assert_eq!(
            storable(
                200,
                &[("authorization", "Basic x")],
                &[("cache-control", "public, max-age=60")]
            ),
            Ok(())
        );
        assert_eq!(
            storable(
                200,
                &[("authorization", "Basic x")],
                &[("cache-control", "s-maxage=60")]
            ),
            Ok(())
        );
        // Cacheable by default (heuristic) vs needs explicit freshness.
        assert_eq!(storable(404, &[], &[]), Ok(()));
        assert_eq!(storable(302, &[], &[]), Err(NoStoreReason::NotCacheable));
        assert_eq!(
            storable(302, &[], &[("cache-control", "max-age=60")]),
            Ok(())
        );
        assert_eq!(
            storable(206, &[], &[("cache-control", "max-age=60")]),
            Err(NoStoreReason::PartialContent)
        );
    }

    /// RFC 9213 §2.2: CDN-Cache-Control replaces Cache-Control and Expires for this cache.
    #[test]
    fn cdn_cache_control_takes_precedence() {
        let f = fresh(&[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=600"),
        ]);
        assert_eq!(f.lifetime.as_secs(), 600);
        assert_eq!(
            storable(
                200,
                &[],
                &[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=600")
                ]
            ),
            Ok(())
        );
        assert_eq!(
            storable(
                200,
                &[],
                &[
                    ("cache-control", "max-age=600"),
                    ("cdn-cache-control", "no-store")
                ]
            ),
            Err(NoStoreReason::NoStore)
        );
        let e = date(300);
        assert_eq!(
            fresh(&[
                ("expires", &e),
                ("date", &date(0)),
                ("cdn-cache-control", "public")
            ])
            .lifetime,
            Duration::ZERO
        );
    }

    /// RFC 9111 §5.2.1 request directives, §4.2.4 stale rules, RFC 8246 immutable.
    #[test]
    fn reuse_follows_request_and_response_directives() {
        let f = fresh(&[("cache-control", "max-age=100")]);
        let req = |cc: &str| Directives::parse([&HeaderValue::from_str(cc).unwrap()]);
        assert_eq!(
            evaluate_reuse(&f, &Directives::default(), at(50)),
            Reuse::Fresh
        );
        assert_eq!(
            evaluate_reuse(&f, &req("no-cache"), at(50)),
            Reuse::ValidateForRequest
        );
        assert_eq!(
            evaluate_reuse(&f, &req("max-age=10"), at(50)),
            Reuse::ValidateForRequest
        );
        assert_eq!(
            evaluate_reuse(&f, &req("min-fresh=60"), at(50)),
            Reuse::ValidateForRequest
        );
        assert_eq!(
            evaluate_reuse(&f, &req("min-fresh=40"), at(50)),
            Reuse::Fresh
        );
        assert_eq!(
            evaluate_reuse(&f, &Directives::default(), at(150)),
            Reuse::ValidateStale
        );
        assert_eq!(
            evaluate_reuse(&f, &req("max-stale"), at(150)),
            Reuse::StaleAllowed
        );
        assert_eq!(
            evaluate_reuse(&f, &req("max-stale=60"), at(150)),
            Reuse::StaleAllowed
        );
        assert_eq!(
            evaluate_reuse(&f, &req("max-stale=10"), at(150)),
            Reuse::ValidateStale
        );
        let strict = fresh(&[("cache-control", "max-age=100, must-revalidate")]);
        assert_eq!(
            evaluate_reuse(&strict, &req("max-stale"), at(150)),
            Reuse::ValidateStale
        );
        let proxy = fresh(&[("cache-control", "max-age=100, proxy-revalidate")]);
        assert_eq!(
            evaluate_reuse(&proxy, &Directives::default(), at(50)),
            Reuse::Fresh,
            "proxy-revalidate does not end freshness"
        );
        assert_eq!(
            evaluate_reuse(&proxy, &req("max-stale"), at(150)),
            Reuse::ValidateStale
        );
        let no_cache = fresh(&[("cache-control", "no-cache, max-age=100")]);
        assert_eq!(
            evaluate_reuse(&no_cache, &Directives::default(), at(1)),
            Reuse::ValidateStale
        );
        let immutable = fresh(&[("cache-control", "max-age=100, immutable")]);
        assert_eq!(
            evaluate_reuse(&immutable, &req("no-cache"), at(50)),
            Reuse::Fresh
        );
        assert_eq!(
            evaluate_reuse(&immutable, &req("max-age=0"), at(50)),
            Reuse::Fresh
        );
    }

    /// RFC 5861 §4 and RFC 9111 §4.2.4: stale-if-error windows from the response or the
    /// request, and the operator's window for a disconnected cache, never past
    /// must-revalidate.
    #[test]
    fn stale_if_error_windows() {
        let req = |cc: &str| Directives::parse([&HeaderValue::from_str(cc).unwrap()]);
        let none = Duration::ZERO;
        let allows = |f: &Freshness, request: &Directives, window: Duration, t: u64| {
            allows_stale_on_error(f, request, window, at(t))
        };
        let f = fresh(&[("cache-control", "max-age=100, stale-if-error=60")]);
        assert!(allows(&f, &Directives::default(), none, 150));
        assert!(!allows(&f, &Directives::default(), none, 200));
        assert!(allows(&f, &req("stale-if-error=300"), none, 200));
        let plain = fresh(&[("cache-control", "max-age=100")]);
        assert!(!allows(&plain, &Directives::default(), none, 150));
        let hour = Duration::from_secs(3600);
        assert!(allows(&plain, &Directives::default(), hour, 150));
        assert!(allows(&plain, &Directives::default(), hour, 3700));
        assert!(!allows(&plain, &Directives::default(), hour, 3701));
        for forbidding in [
            "max-age=100, must-revalidate, stale-if-error=60",
            "max-age=100, proxy-revalidate",
            "max-age=100, s-maxage=100",
            "max-age=100, no-cache",
        ] {
            let strict = fresh(&[("cache-control", forbidding)]);
            assert!(
                !allows(&strict, &Directives::default(), hour, 150),
                "{forbidding}"
            );
        }
    }

    #[test]
    fn quoted_commas_do_not_split_directives() {
        let d = Directives::parse([&HeaderValue::from_static(
            "no-cache=\"set-cookie, x-a\", max-age=5",
        )]);
        assert!(!d.no_cache);
        assert_eq!(d.no_cache_fields, ["set-cookie", "x-a"]);
        assert_eq!(d.max_age, Some(5));
    }

    /// RFC 9111 §5.2.2.4, §5.2.2.7: qualified forms list field names (lower-cased, quoted
    /// or as a Structured Field inner list); one that names nothing, or an essential field,
    /// is the unqualified form.
    #[test]
    fn qualified_no_cache_and_private_name_fields() {
        let parse = |value: &'static str| Directives::parse([&HeaderValue::from_static(value)]);
        let d = parse("private=\"X-User, Set-Cookie\", max-age=5");
        assert!(!d.private);
        assert_eq!(d.private_fields, ["x-user", "set-cookie"]);
        assert!(d.is_unshared("set-cookie") && !d.is_unshared("x-other"));
        for unqualified in ["private", "private=\"\"", "private=\"content-length\""] {
            let d = parse(unqualified);
            assert!(d.private && d.private_fields.is_empty(), "{unqualified}");
        }
        let targeted = headers(&[("cdn-cache-control", "max-age=60, no-cache=(\"set-cookie\")")]);
        let read = response_directives(&targeted, &PolicySettings::default());
        assert!(!read.directives.no_cache);
        assert_eq!(read.directives.no_cache_fields, ["set-cookie"]);
    }

    /// §5.2.1.4: a request's no-cache asks for validation even with a (stray) argument.
    #[test]
    fn a_request_no_cache_with_an_argument_still_validates() {
        let request = headers(&[("cache-control", "no-cache=\"x-a\"")]);
        assert!(request_directives(&request).no_cache);
    }

    /// §5.2.2.4: fields a qualified no-cache names leave the stored response (and go to
    /// the requester, every line of them); the rest is fresh without validation.
    #[test]
    fn qualified_no_cache_strips_only_its_fields() {
        let mut stored = headers(&[
            ("cache-control", "max-age=60, no-cache=\"set-cookie\""),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-kept", "1"),
        ]);
        let settings = PolicySettings::default();
        let fresh = Freshness::compute(StatusCode::OK, &stored, &settings, at(0), at(0));
        assert!(!fresh.requires_validation && fresh.is_fresh(at(30)));
        let removed = remove_unshared_fields(&mut stored, &settings);
        let cookies: Vec<_> = removed.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(!stored.contains_key(header::SET_COOKIE) && stored.contains_key("x-kept"));
    }

    /// RFC 9110 §8.8.3.2: well-formed tags compare by their opaque part, weak or not;
    /// malformed ones only as the very same text.
    #[test]
    fn entity_tags_compare_weakly_and_malformed_ones_as_text() {
        assert!(weak_eq("W/\"v1\"", "\"v1\""));
        assert!(weak_eq("\"v1-br\"", "\"v1\""));
        assert!(!weak_eq("\"v1\"", "\"v2\""));
        for malformed in ["v1", "w/\"v1\"", "W\\\"v1\"", "W\"v1\""] {
            assert!(weak_eq(malformed, malformed), "{malformed}");
            assert!(!weak_eq(malformed, "\"v2\""), "{malformed}");
        }
        assert!(
            !weak_eq("v1", "\"v1\""),
            "an unquoted tag is not its quoted form"
        );
        assert!(!weak_eq("", ""), "an empty field matches nothing");
    }

    /// RFC 9110 §8.8.3, §13.1.2: an entity-tag list splits between tags, not inside one
    /// (a comma is a legal etagc), and tags with obs-text compare by their bytes.
    #[test]
    fn entity_tag_lists_split_between_tags_and_obs_text_compares_by_bytes() {
        let tags: Vec<&str> = entity_tags(" \"a,b\", W/\"c\" ,x, \"d\"").collect();
        assert_eq!(tags, ["\"a,b\"", "W/\"c\"", "x", "\"d\""]);
        assert_eq!(entity_tags("*").collect::<Vec<_>>(), ["*"]);
        assert_eq!(entity_tags(" , ").count(), 0);
        // A quote closes where the next one is; what is left is a malformed member.
        let misquoted: Vec<&str> = entity_tags("\"open, \"b\"").collect();
        assert_eq!(misquoted, ["\"open, \"", "b\""]);
        assert_eq!(
            entity_tags("\"unclosed").collect::<Vec<_>>(),
            ["\"unclosed"]
        );

        let with_obs_text = |tag: &[u8]| {
            let mut map = HeaderMap::new();
            map.insert(header::ETAG, HeaderValue::from_bytes(tag).unwrap());
            map
        };
        let stored = with_obs_text(b"\"caf\xe9\"");
        let mut request = HeaderMap::new();
        let asked = |request: &mut HeaderMap, tag: &[u8]| {
            request.insert(header::IF_NONE_MATCH, HeaderValue::from_bytes(tag).unwrap());
        };
        asked(&mut request, b"\"caf\xe9\"");
        assert!(is_not_modified(&request, &stored, at(0), at(0)));
        asked(&mut request, b"\"caf\xe8\"");
        assert!(!is_not_modified(&request, &stored, at(0), at(0)));
        asked(&mut request, b"\"x\", \"a,b\"");
        assert!(is_not_modified(
            &request,
            &with_obs_text(b"\"a,b\""),
            at(0),
            at(0)
        ));
    }

    /// RFC 9110 §13.1.2 and §13.2.2: If-None-Match (weak comparison) wins over
    /// If-Modified-Since.
    #[test]
    fn conditional_requests_against_stored_headers() {
        let stored = headers(&[("etag", "\"v1\""), ("last-modified", &date(0))]);
        assert!(is_not_modified(
            &headers(&[("if-none-match", "W/\"v1\"")]),
            &stored,
            at(0),
            at(0)
        ));
        assert!(is_not_modified(
            &headers(&[("if-none-match", "\"v0\", \"v1\"")]),
            &stored,
            at(0),
            at(0)
        ));
        assert!(!is_not_modified(
            &headers(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", &date(10))
            ]),
            &stored,
            at(0),
            at(0)
        ));
        assert!(is_not_modified(
            &headers(&[("if-modified-since", &date(10))]),
            &stored,
            at(0),
            at(0)
        ));
        assert!(!is_not_modified(
            &headers(&[("if-modified-since", &date(0).replace("2023", "2020"))]),
            &stored,
            at(0),
            at(0)
        ));
    }

    /// RFC 9111 §5.1, §1.2.2: Age counts by its first member, as digits only; parameters
    /// after the integer do not make it invalid.
    #[test]
    fn age_values_and_their_parameters() {
        let age = |text: &str| age_field(&headers(&[("age", text)]));
        assert_eq!(age("7200"), Some(7200));
        assert_eq!(age("7200, 0"), Some(7200));
        assert_eq!(age("0, 7200"), Some(0));
        assert_eq!(age("7200;foo=bar"), Some(7200));
        assert_eq!(age("7200 ; n=1, 5"), Some(7200));
        assert_eq!(age("99999999999999999999"), Some(DELTA_SECONDS_MAX));
        for invalid in ["7200.0", "-7200", "abc", ";x=1", ""] {
            assert_eq!(age(invalid), None, "{invalid}");
        }
    }

    /// RFC 9111 §4.3.2: with no Last-Modified stored, If-Modified-Since is evaluated
    /// against the stored Date, or without one against the time the response was received.
    #[test]
    fn if_modified_since_without_last_modified_uses_date_then_receipt() {
        let since = |secs| headers(&[("if-modified-since", &date(secs))]);
        let dated = headers(&[("date", &date(10))]);
        assert!(is_not_modified(&since(10), &dated, at(50), at(60)));
        assert!(!is_not_modified(&since(9), &dated, at(0), at(60)));
        let undated = HeaderMap::new();
        assert!(is_not_modified(&since(20), &undated, at(20), at(60)));
        assert!(!is_not_modified(&since(19), &undated, at(20), at(60)));
        let twice = headers(&[("date", &date(10)), ("date", &date(11))]);
        assert!(!is_not_modified(&since(30), &twice, at(0), at(60)));
    }

    /// RFC 9111 §4.3.1: other variants are offered as one If-None-Match list of their
    /// entity tags; with several offered, only a 304 that names one selects it (§4.3.4).
    #[test]
    fn other_variants_are_offered_as_one_list_and_a_304_must_name_its_choice() {
        let tagged = |etag: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ETAG, HeaderValue::from_static(etag));
            headers
        };
        let (small, large) = (tagged("\"small\""), tagged("\"large\""));
        let mut request = HeaderMap::new();
        add_entity_tags(&mut request, [&small, &large, &HeaderMap::new()]);
        assert_eq!(request[header::IF_NONE_MATCH], "\"small\", \"large\"");
        let mut untouched = HeaderMap::new();
        add_entity_tags(&mut untouched, [&HeaderMap::new()]);
        assert!(untouched.is_empty());

        assert!(same_entity_tag(&large, &tagged("\"large\"")));
        assert!(!same_entity_tag(&large, &small));
        assert!(!same_entity_tag(&HeaderMap::new(), &HeaderMap::new()));

        let names_large = tagged("\"large\"");
        assert!(not_modified_names(&large, &names_large));
        assert!(!not_modified_names(&small, &names_large));
        assert!(!not_modified_names(&large, &HeaderMap::new()));
        assert!(not_modified_selects(&large, &HeaderMap::new()));
    }

    /// RFC 9111 §4.3.4: a 304 replaces the fields it carries, keeps repeated lines, and
    /// never changes Content-Length.
    #[test]
    fn freshening_keeps_repeated_fields_and_content_length() {
        let stored = headers(&[
            ("content-length", "10"),
            ("link", "<a>"),
            ("link", "<b>"),
            ("cache-control", "max-age=1"),
            ("age", "3600"),
        ]);
        let not_modified = headers(&[
            ("cache-control", "max-age=60"),
            ("content-length", "0"),
            ("x-new", "1"),
        ]);
        let merged = freshen_headers(&stored, &not_modified);
        assert_eq!(merged["content-length"], "10");
        assert_eq!(merged.get_all("link").iter().count(), 2);
        assert_eq!(merged["cache-control"], "max-age=60");
        assert_eq!(merged["x-new"], "1");
        // The stored Age described the first response; the 304 brings its own or none.
        assert!(!merged.contains_key("age"));
    }
}
