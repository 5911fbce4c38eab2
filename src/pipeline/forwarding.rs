//! Speaking for the client inside a trust boundary (RFC 9110 §7.6, RFC 7239): hop-by-hop
//! stripping, `Via`, and the forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`).
//!
//! Forwarding headers from a peer in `trusted_proxies` are extended; from anyone else they are
//! replaced, and headers that origins read as overrides of host, scheme, path or method are
//! removed, so that no client can make the origin build (and us cache) a response for another
//! URL. Which site the request goes to and what Host the origin sees is `route`'s business.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;
use ipnet::IpNet;

use crate::config::ForwardingConfig;

/// Hop-by-hop fields that are never forwarded, whatever `Connection` says (RFC 9110 §7.6.1),
/// plus `Proxy-Connection` and the proxy credentials, which are meant for a proxy, not the
/// origin.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Request headers that popular origin frameworks read as overrides of the request's host,
/// scheme, port, path or method. From an untrusted peer they would let a client choose the
/// resource the origin renders while the cache files it under the requested URL.
const OVERRIDE_HEADERS: [&str; 15] = [
    "x-host",
    "x-forwarded-server",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-url-scheme",
    "front-end-https",
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// The fields [`ForwardingPolicy::apply`] writes, or keeps from a trusted terminator, and
/// the client certificate's (`super::client_cert`): who the client is and how it came.
pub const FORWARDING_FIELDS: [HeaderName; 8] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
    X_REAL_IP,
    header::FORWARDED,
    super::client_cert::CLIENT_CERT,
    super::client_cert::CLIENT_CERT_CHAIN,
];

/// Fields a request's trailer section does not carry on to the origin: those RFC 9110
/// §6.5.1 rules out of trailers (framing, routing, request modifiers, authentication, how
/// to process the content), the hop-by-hop ones, and the fields this edge polices in the
/// header section (forwarding, client certificate, overrides). A trailer is the client's
/// alone, after every check: an origin that merged trailers into headers (against §6.5.2)
/// would otherwise believe a client's `X-Forwarded-For` or `Client-Cert` there.
pub fn scrub_request_trailers(trailers: &mut HeaderMap) {
    const RULED_OUT: [HeaderName; 18] = [
        header::HOST,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_TYPE,
        header::CONTENT_RANGE,
        header::AUTHORIZATION,
        header::COOKIE,
        header::EXPECT,
        header::RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::MAX_FORWARDS,
        header::CACHE_CONTROL,
        header::PRAGMA,
        header::VIA,
    ];
    let is_ruled_out = |name: &HeaderName| {
        RULED_OUT.contains(name)
            || HOP_BY_HOP.contains(name)
            || FORWARDING_FIELDS.contains(name)
            || OVERRIDE_HEADERS.contains(&name.as_str())
    };
    let ruled_out: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| is_ruled_out(name))
        .cloned()
        .collect();
    for name in ruled_out {
        trailers.remove(name);
    }
}

/// Removes the hop-by-hop fields and every field the `Connection` header names.
///
/// Call it before adding anything of our own, so a hostile `Connection: X-Forwarded-For`
/// cannot remove what we add.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: one pass over their few names beats nine lookups.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // Only the fields present are removed: Node's and Java's clients send `Connection:
    // keep-alive` on every request, and parsing each token into a name and removing all
    // nine fixed names, present or not, cost 2.3k instructions (a tenth of a hit).
    let connection: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || connection
                    .iter()
                    .any(|token| token.eq_ignore_ascii_case(name.as_str()))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Whether the request's `TE` field lists `trailers` (RFC 9110 §10.1.4): the client will
/// take a trailer section, so the origin may be told the same.
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|member| {
            let coding = member.split(';').next().unwrap_or("").trim();
            coding.eq_ignore_ascii_case("trailers")
        })
}

/// The header fields of an origin's response as outpost passes or stores them: framed by
/// Transfer-Encoding, a Content-Length beside it is wrong and goes (RFC 9112 §6.3), then
/// the hop-by-hop fields go.
pub fn clean_response_head(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
}

/// Appends our `received-protocol received-by` member (`ours`, made once per version by
/// [`crate::pipeline::Proxy`]) to `Via` (RFC 9110 §7.6.3).
pub fn append_via(headers: &mut HeaderMap, ours: &HeaderValue) {
    if headers.contains_key(header::VIA) {
        if let Ok(text) = ours.to_str() {
            append_list_value(headers, header::VIA, text);
        }
    } else {
        // The common case: no proxy before us, and a shared value instead of a new one.
        headers.insert(header::VIA, ours.clone());
    }
}

/// Via's received-protocol for a message received in `version` (RFC 9110 §7.6.3).
pub fn received_protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Appends `item` to a comma-separated list field, folding existing lines into one.
fn append_list_value(headers: &mut HeaderMap, name: HeaderName, item: &str) {
    let mut combined = String::new();
    for value in headers.get_all(&name) {
        if let Ok(text) = value.to_str() {
            combined.push_str(text);
            combined.push_str(", ");
        }
    }
    combined.push_str(item);
    if let Ok(value) = HeaderValue::from_str(&combined) {
        headers.insert(name, value);
    }
}

/// The facts about the client connection that go into forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct Downstream<'a> {
    pub peer: SocketAddr,
    /// `http` or `https`, as the client reached us.
    pub scheme: &'a str,
    /// The Host (or `:authority`) the client asked for.
    pub host: Option<&'a str>,
}

/// The configured trust boundary.
#[derive(Debug, Clone)]
pub struct ForwardingPolicy {
    trusted_proxies: Vec<IpNet>,
    override_headers: Vec<HeaderName>,
    trust_forwarded_host: bool,
}

/// What a trusted TLS terminator may tell the origin about the client's side, when
/// `forwarding.trust_forwarded_host` is on.
const EDGE_FIELDS: [HeaderName; 3] = [X_FORWARDED_HOST, X_FORWARDED_PROTO, X_FORWARDED_PORT];

impl ForwardingPolicy {
    pub fn new(config: &ForwardingConfig) -> ForwardingPolicy {
        let mut override_headers: Vec<HeaderName> = OVERRIDE_HEADERS
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect();
        override_headers.extend(
            config
                .strip_override_headers
                .iter()
                .map(|name| name.get().clone()),
        );
        ForwardingPolicy {
            trusted_proxies: config.trusted_proxies.clone(),
            override_headers,
            trust_forwarded_host: config.trust_forwarded_host,
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Rewrites the forwarding headers of a request about to go upstream and returns the
    /// address of the client as far as the trust boundary lets us know it.
    pub fn apply(&self, headers: &mut HeaderMap, downstream: Downstream<'_>) -> IpAddr {
        let peer_ip = canonical_ip(downstream.peer.ip());
        let is_trusted = self.is_trusted(peer_ip);
        // Override headers are removed from every peer: a trusted proxy passes its client's
        // fields along, and those are the client's word. Only the edge fields of a trusted
        // terminator are kept, and only when configured.
        let keeps_edge_fields = is_trusted && self.trust_forwarded_host;
        // Made once: up to three fields carry it.
        let peer_text = address_text(peer_ip);
        let peer_value = HeaderValue::from_str(&peer_text).ok();
        // Found by one walk over the request's few fields: removing each of the many
        // override names hashed it, present or not (most requests carry none of them).
        let overriding: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.override_headers.contains(name))
            .filter(|name| !(keeps_edge_fields && EDGE_FIELDS.contains(name)))
            .cloned()
            .collect();
        for name in overriding {
            headers.remove(name);
        }
        if !keeps_edge_fields {
            headers.remove(&X_FORWARDED_HOST);
            headers.remove(&X_FORWARDED_PROTO);
        }
        if is_trusted {
            let client = self.client_behind_trusted_chain(headers, peer_ip);
            append_list_value(headers, X_FORWARDED_FOR, &peer_text);
            if !headers.contains_key(&X_FORWARDED_PROTO) {
                set(headers, X_FORWARDED_PROTO, downstream.scheme);
            }
            if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), downstream.host)
            {
                set(headers, X_FORWARDED_HOST, host);
            }
            if !headers.contains_key(&X_REAL_IP) {
                if client == peer_ip {
                    set_value(headers, X_REAL_IP, peer_value);
                } else {
                    set(headers, X_REAL_IP, &client.to_string());
                }
            }
            append_list_value(
                headers,
                header::FORWARDED,
                &forwarded_element(peer_ip, &peer_text, downstream),
            );
            client
        } else {
            set_value(headers, X_FORWARDED_FOR, peer_value.clone());
            set_value(headers, X_FORWARDED_PROTO, scheme_value(downstream.scheme));
            match downstream.host {
                Some(host) => set(headers, X_FORWARDED_HOST, host),
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
            set_value(headers, X_REAL_IP, peer_value);
            set(
                headers,
                header::FORWARDED,
                &forwarded_element(peer_ip, &peer_text, downstream),
            );
            peer_ip
        }
    }

    /// The forwarding fields ([`FORWARDING_FIELDS`]) [`ForwardingPolicy::apply`] would
    /// write for a request with `headers` from `downstream`: what a request made later on
    /// this client's behalf (the rest of a body it fell behind on) carries in place of
    /// another client's.
    pub fn fields_for(&self, headers: &HeaderMap, downstream: Downstream<'_>) -> HeaderMap {
        let mut own = HeaderMap::new();
        for name in &FORWARDING_FIELDS {
            for value in headers.get_all(name) {
                own.append(name.clone(), value.clone());
            }
        }
        self.apply(&mut own, downstream);
        own
    }

    /// The right-most address in `X-Forwarded-For` that is not a trusted proxy: the first hop
    /// we cannot vouch for is the client (anything left of it could be forged).
    fn client_behind_trusted_chain(&self, headers: &HeaderMap, peer_ip: IpAddr) -> IpAddr {
        let hops: Vec<IpAddr> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|hop| hop.trim().parse::<IpAddr>().ok())
            .collect();
        hops.into_iter()
            .rev()
            .find(|ip| !self.is_trusted(*ip))
            .unwrap_or(peer_ip)
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    set_value(headers, name, HeaderValue::from_str(value).ok());
}

/// Sets `name` to `value`, or removes it when there is no valid value to give it.
fn set_value(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(value) => {
            headers.insert(name, value);
        }
        None => {
            headers.remove(name);
        }
    }
}

/// `X-Forwarded-Proto`'s value: the two schemes we listen for are static, anything else
/// is checked.
fn scheme_value(scheme: &str) -> Option<HeaderValue> {
    match scheme {
        "http" => Some(HeaderValue::from_static("http")),
        "https" => Some(HeaderValue::from_static("https")),
        other => HeaderValue::from_str(other).ok(),
    }
}

/// An address as the forwarding fields write it. IPv4 is written digit by digit: std's
/// `Display` goes through the formatting machinery, about 1.6k instructions a call, a
/// quarter of the forwarding work of a miss (callgrind).
fn address_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// An IPv4-mapped IPv6 peer (`::ffff:1.2.3.4`, seen on dual-stack listeners) is the IPv4
/// address; trust lists and headers use that form.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// One RFC 7239 §4 forwarded-element: `for=...;host=...;proto=...`, IPv6 quoted and
/// bracketed (§6), host quoted whenever it is not a token. `client_text` is the client's
/// address as text.
fn forwarded_element(client: IpAddr, client_text: &str, downstream: Downstream<'_>) -> String {
    let mut element = String::with_capacity(64);
    match client {
        IpAddr::V4(_) => {
            element.push_str("for=");
            element.push_str(client_text);
        }
        // RFC 7239 §6: an IPv6 node is bracketed and, holding colons, quoted.
        IpAddr::V6(_) => {
            element.push_str("for=\"[");
            element.push_str(client_text);
            element.push_str("]\"");
        }
    }
    if let Some(host) = downstream.host {
        element.push_str(";host=");
        element.push_str(&token_or_quoted(host));
    }
    element.push_str(";proto=");
    element.push_str(downstream.scheme);
    element
}

fn token_or_quoted(value: &str) -> String {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !value.is_empty() && value.bytes().all(is_tchar) {
        return value.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for ch in value.chars() {
        if ch == '"' || ch == '\\' {
            quoted.push('\\');
        }
        quoted.push(ch);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9110 §6.5.1: fields ruled out of trailers, hop-by-hop ones and the forwarding
    /// fields go; others (a digest of the content, RFC 9530) stay, every value of them.
    #[test]
    fn request_trailers_keep_only_what_a_trailer_may_say() {
        let mut trailers = HeaderMap::new();
        for (name, value) in [
            ("content-digest", "sha-256=:AAAA:"),
            ("x-forwarded-for", "6.6.6.6"),
            ("client-cert", ":Zm9v:"),
            ("authorization", "Bearer stolen"),
            ("x-original-url", "/admin"),
            ("host", "elsewhere.test"),
            ("connection", "close"),
            ("x-note", "one"),
            ("x-note", "two"),
        ] {
            trailers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        scrub_request_trailers(&mut trailers);
        let kept: Vec<(&str, &str)> = trailers
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(
            kept,
            vec![
                ("content-digest", "sha-256=:AAAA:"),
                ("x-note", "one"),
                ("x-note", "two")
            ]
        );
    }

    fn policy(trusted: &[&str]) -> ForwardingPolicy {
        ForwardingPolicy::new(&ForwardingConfig {
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            strip_override_headers: vec!["x-custom-override".parse().unwrap()],
            ..ForwardingConfig::default()
        })
    }

    fn downstream(peer: &str) -> Downstream<'static> {
        Downstream {
            peer: peer.parse().unwrap(),
            scheme: "http",
            host: Some("example.com"),
        }
    }

    /// RFC 7239 §6 and the X-Forwarded-* fields carry the address as `Display` writes it.
    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let edges = [0u8, 1, 9, 10, 99, 100, 199, 200, 255];
        for a in edges {
            for b in edges {
                let v4 = IpAddr::from([a, b, 255 - b, 255 - a]);
                assert_eq!(address_text(v4), v4.to_string());
            }
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(address_text(v6), "2001:db8::1");
    }

    /// RFC 9110 §7.6.1: Connection-named fields go, and so do the fixed hop-by-hop ones.
    #[test]
    fn connection_named_fields_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static(" x-other ,close"),
        );
        headers.insert("x-other", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    /// RFC 7239 §6: an IPv6 node is bracketed and quoted; a host with a port is quoted.
    #[test]
    fn forwarded_quotes_ipv6_and_host_with_port() {
        let mut headers = HeaderMap::new();
        let down = Downstream {
            peer: "[2001:db8::1]:5000".parse().unwrap(),
            scheme: "http",
            host: Some("example.com:8080"),
        };
        policy(&[]).apply(&mut headers, down);
        assert_eq!(
            headers[header::FORWARDED],
            "for=\"[2001:db8::1]\";host=\"example.com:8080\";proto=http"
        );
    }

    /// The fields for a request made later on a client's behalf are exactly the forwarding
    /// fields `apply` writes for it, and nothing else of its request.
    #[test]
    fn fields_for_a_client_are_what_apply_writes_for_it() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.insert("x-original-url", HeaderValue::from_static("/admin"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let policy = policy(&["10.0.0.0/8"]);
        let own = policy.fields_for(&headers, downstream("10.1.1.1:1234"));
        let mut applied = headers.clone();
        policy.apply(&mut applied, downstream("10.1.1.1:1234"));
        for name in &FORWARDING_FIELDS {
            let want: Vec<_> = applied.get_all(name).iter().collect();
            let got: Vec<_> = own.get_all(name).iter().collect();
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(own[X_FORWARDED_FOR], "203.0.113.9, 10.1.1.1");
        assert!(
            own.keys().all(|name| FORWARDING_FIELDS.contains(name)),
            "{own:?}"
        );
    }

    /// A trusted terminator's edge fields (`trust_forwarded_host`) belong to its client
    /// too: a request made later for that client carries its port, and a client that came
    /// without one carries none, rather than another client's.
    #[test]
    fn fields_for_a_client_keep_its_terminators_port() {
        let config = ForwardingConfig {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            trust_forwarded_host: true,
            ..ForwardingConfig::default()
        };
        let policy = ForwardingPolicy::new(&config);
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_PORT, HeaderValue::from_static("8443"));
        let own = policy.fields_for(&headers, downstream("10.1.1.1:1234"));
        assert_eq!(own[X_FORWARDED_PORT], "8443");
        let own = policy.fields_for(&HeaderMap::new(), downstream("10.1.1.1:1234"));
        assert!(!own.contains_key(X_FORWARDED_PORT), "{own:?}");
        // From a peer outside the boundary the port is an override and is never kept.
        let own = policy.fields_for(&headers, downstream("192.0.2.7:1234"));
        assert!(!own.contains_key(X_FORWARDED_PORT), "{own:?}");
    }

    #[test]
    fn untrusted_peer_forwarding_headers_are_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
        headers.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        headers.insert("x-original-url", HeaderValue::from_static("/admin"));
        headers.insert("x-custom-override", HeaderValue::from_static("1"));
        let client = policy(&["10.0.0.0/8"]).apply(&mut headers, downstream("192.0.2.7:1234"));
        assert_eq!(client.to_string(), "192.0.2.7");
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(
            headers[header::FORWARDED],
            "for=192.0.2.7;host=example.com;proto=http"
        );
        assert!(!headers.contains_key("x-original-url"));
        assert!(!headers.contains_key("x-custom-override"));
    }

    #[test]
    fn trusted_peer_chain_is_extended_and_client_is_first_untrusted_hop() {
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 203.0.113.9, 10.1.1.1"),
        );
        headers.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.9"),
        );
        let client = policy(&["10.0.0.0/8"]).apply(&mut headers, downstream("10.2.2.2:1234"));
        assert_eq!(client.to_string(), "203.0.113.9");
        assert_eq!(
            headers[X_FORWARDED_FOR],
            "6.6.6.6, 203.0.113.9, 10.1.1.1, 10.2.2.2"
        );
        assert_eq!(
            headers[header::FORWARDED],
            "for=203.0.113.9, for=10.2.2.2;host=example.com;proto=http"
        );
    }

    #[test]
    fn ipv4_mapped_peer_matches_ipv4_trust_list() {
        assert!(policy(&["127.0.0.0/8"]).is_trusted("::ffff:127.0.0.1".parse().unwrap()));
    }
}
