//! Routing: which site a request belongs to, from its Host and path, and where that site's
//! origin is. Also owns reading the request's host correctly (RFC 9112 §3.2, RFC 9113
//! §8.3.1), because "which host did the client ask for" is the first routing decision.
//!
//! Forwarding headers are `forwarding`'s business; building and sending the upstream request
//! is `upstream`'s.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::HOST;
use http::{HeaderValue, Version};

use crate::cache::key::{canonical_authority, split_at_last_colon};
use crate::config::{ClientAuth, Config, HostHeaderSetting, OriginUrl, SiteConfig};
use crate::error::ProxyError;
use crate::upstream::pool::{Pool, Pools};

/// What Host the origin receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeader {
    /// The client's Host, unchanged.
    Preserve,
    /// The authority of the origin server the request goes to (`host_header = "origin"`).
    Server,
    /// A value the operator wrote.
    Fixed(HeaderValue),
}

impl HostHeader {
    /// As a site's `host_header` setting says (unset: the client's).
    fn from_setting(setting: Option<&HostHeaderSetting>) -> HostHeader {
        match setting {
            None => HostHeader::Preserve,
            Some(HostHeaderSetting::Origin) => HostHeader::Server,
            Some(HostHeaderSetting::Fixed(value)) => HostHeader::Fixed(value.clone()),
        }
    }
}

/// One site as routing uses it.
#[derive(Clone)]
pub struct Site {
    /// A label for logs: the site's first host, or `default`.
    pub name: String,
    /// Its origin servers (one, for a site with an `origin` URL).
    pub pool: Arc<Pool>,
    pub host_header: HostHeader,
    /// Cleartext requests get a permanent redirect to https.
    pub redirect_https: bool,
    /// `Strict-Transport-Security` for the site's responses over TLS.
    pub hsts: Option<HeaderValue>,
    /// What TLS connections for this site ask of clients; a connection whose handshake
    /// asked otherwise is refused.
    pub client_auth: Option<ClientAuth>,
    /// Its clients must present a certificate: cleartext requests are refused.
    pub requires_client_cert: bool,
    path_prefix: Option<String>,
    /// The prefix is removed from the path sent to the origin (a mounted registry).
    strip_prefix: bool,
    hosts: Vec<HostPattern>,
}

#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches any name ending so, not the apex.
    Suffix(String),
    /// `*`: every host (the registries of a mirror, mounted under paths).
    Any,
}

impl HostPattern {
    fn parse(text: &str) -> HostPattern {
        let lower = text.to_ascii_lowercase();
        if lower == "*" {
            return HostPattern::Any;
        }
        match lower.strip_prefix('*') {
            Some(suffix) => HostPattern::Suffix(suffix.to_string()),
            None => HostPattern::Exact(lower),
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
            HostPattern::Any => true,
        }
    }
}

impl Site {
    fn from_config(site: &SiteConfig, pool: Arc<Pool>) -> Site {
        let host_header = HostHeader::from_setting(site.host_header.as_ref());
        Site {
            name: site
                .name
                .clone()
                .or_else(|| site.hosts.first().cloned())
                .unwrap_or_default(),
            pool,
            host_header,
            path_prefix: site.path_prefix.clone(),
            strip_prefix: site.strip_prefix,
            redirect_https: site.redirect_https,
            hsts: site
                .hsts
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok()),
            hosts: site.hosts.iter().map(|h| HostPattern::parse(h)).collect(),
            client_auth: None,
            requires_client_cert: false,
        }
    }

    /// A site every request of its own goes to, with the Host as asked: the default site,
    /// a forward-proxy target.
    pub fn catch_all(name: &str, pool: Arc<Pool>) -> Site {
        Site {
            name: name.to_string(),
            pool,
            host_header: HostHeader::Preserve,
            redirect_https: false,
            hsts: None,
            path_prefix: None,
            strip_prefix: false,
            hosts: Vec::new(),
            client_auth: None,
            requires_client_cert: false,
        }
    }

    fn prefix_len(&self) -> usize {
        self.path_prefix.as_ref().map_or(0, String::len)
    }

    /// The request target as the origin gets it: without the mount prefix of a site that
    /// strips it (keeping the path absolute).
    pub fn origin_target<'a>(&self, path_and_query: &'a str) -> std::borrow::Cow<'a, str> {
        match self.path_prefix.as_deref().filter(|_| self.strip_prefix) {
            Some(prefix) => match path_and_query.strip_prefix(prefix.trim_end_matches('/')) {
                Some(rest) if rest.starts_with('/') => rest.into(),
                Some(rest) => format!("/{rest}").into(),
                None => path_and_query.into(),
            },
            None => path_and_query.into(),
        }
    }

    fn matches_path(&self, path: &str) -> bool {
        self.path_prefix
            .as_ref()
            .is_none_or(|prefix| path.starts_with(prefix.as_str()))
    }
}

/// The pool a site (or the default site) names: its `[[pools]]` entry or its one origin.
/// `None` only for a configuration validation refuses.
fn pool_of(pools: &Pools, origin: Option<&OriginUrl>, pool: Option<&str>) -> Option<Arc<Pool>> {
    match (origin, pool) {
        (_, Some(name)) => pools.named(name).cloned(),
        (Some(origin), None) => pools.for_origin(origin).cloned(),
        (None, None) => None,
    }
}

/// The site table, built once from the config.
#[derive(Clone)]
pub struct Router {
    sites: Vec<Arc<Site>>,
    default_site: Option<Arc<Site>>,
}

impl Router {
    pub fn new(config: &Config, pools: &Pools) -> Router {
        Router {
            sites: config
                .all_sites()
                .iter()
                .filter_map(|site| {
                    let pool = pool_of(pools, site.origin.as_ref(), site.pool.as_deref())?;
                    let mut routed = Site::from_config(site, pool);
                    routed.client_auth = config.site_client_auth(site);
                    routed.requires_client_cert = routed
                        .client_auth
                        .as_ref()
                        .is_some_and(ClientAuth::is_required);
                    Some(Arc::new(routed))
                })
                .collect(),
            default_site: pool_of(pools, config.origin.as_ref(), config.pool.as_deref()).map(
                |pool| {
                    let mut site = Site::catch_all("default", pool);
                    site.host_header = HostHeader::from_setting(config.host_header.as_ref());
                    site.client_auth = config.client_auth();
                    site.requires_client_cert = site
                        .client_auth
                        .as_ref()
                        .is_some_and(ClientAuth::is_required);
                    Arc::new(site)
                },
            ),
        }
    }

    /// Whether a configured site names `host` (a bare host name, no port).
    pub fn names_host(&self, host: &str) -> bool {
        let name = host.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        self.sites.iter().any(|site| {
            site.hosts
                .iter()
                .any(|p| !matches!(p, HostPattern::Any) && p.matches(name))
        })
    }

    /// The site for `host` (already normalised by [`request_host`]) and `path`: among sites
    /// naming the host, the longest matching path prefix wins; else the default site.
    ///
    /// # Errors
    /// [`ProxyError::MisdirectedRequest`] when no site answers and there is no default.
    pub fn route(&self, host: Option<&str>, path: &str) -> Result<&Arc<Site>, ProxyError> {
        // No Host (HTTP/1.0) matches only sites for every host.
        let name = host.map_or("", host_name);
        let best = self
            .sites
            .iter()
            .filter(|site| site.hosts.iter().any(|p| p.matches(name)) && site.matches_path(path))
            .max_by_key(|site| site.prefix_len());
        best.or(self.default_site.as_ref())
            .ok_or_else(|| ProxyError::MisdirectedRequest(host.unwrap_or("").to_string()))
    }
}

/// The authority the client asked for, in its canonical spelling for `scheme`
/// ([`canonical_authority`]: lower case, no trailing dot, no default or empty port); the
/// key, the forwarded Host, X-Forwarded-Host, the stored URL and purges all use it.
///
/// HTTP/2 and absolute-form requests carry it in the request target, which wins over Host
/// (RFC 9112 §3.2.2); an HTTP/1.1 request needs exactly one valid Host (RFC 9112 §3.2).
///
/// # Errors
/// [`ProxyError::BadRequest`] for a missing (HTTP/1.1), repeated or malformed Host.
pub fn request_host<'a>(
    request: &'a http::request::Parts,
    scheme: &str,
) -> Result<Option<Cow<'a, str>>, ProxyError> {
    let mut hosts = request.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if let Some(authority) = request.uri.authority() {
        if authority.as_str().contains('@') {
            return Err(ProxyError::BadRequest("userinfo in request target"));
        }
        return Ok(Some(canonical_authority(scheme, authority.as_str())));
    }
    match header {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ProxyError::BadRequest("Host header is not ASCII"))?;
            if !is_valid_authority(text) {
                return Err(ProxyError::BadRequest("malformed Host header"));
            }
            Ok(Some(canonical_authority(scheme, text)))
        }
        None if request.version == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("missing Host header"))
        }
        None => Ok(None),
    }
}

/// Bytes of a reg-name (RFC 3986 §3.2.2: unreserved, pct-encoded, sub-delims), as a table:
/// every request's Host is checked.
const REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        byte += 1;
    }
    table
};

/// `host[:port]` with a reg-name, IPv4 or bracketed IPv6 host (RFC 3986 §3.2.2), no userinfo.
fn is_valid_authority(text: &str) -> bool {
    let (host_ok, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((v6, tail)) = rest.split_once(']') else {
            return false;
        };
        let port = match tail {
            "" => None,
            tail => match tail.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        };
        (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
    } else {
        let (host, port) = match split_at_last_colon(text) {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        };
        (
            !host.is_empty() && host.bytes().all(|b| REG_NAME[usize::from(b)]),
            port,
        )
    };
    host_ok && port.is_none_or(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The host part of an authority, for matching site names: port and trailing dot removed.
fn host_name(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        split_at_last_colon(authority).map_or(authority, |(host, _)| host)
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn router(toml: &str) -> Router {
        let config = Config::from_toml_str(toml, &Default::default()).unwrap();
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());
        Router::new(&config, &Pools::new(&config, None, &metrics))
    }

    #[test]
    fn longest_prefix_wins_and_wildcards_skip_apex() {
        let router = router(
            r#"
            [[sites]]
            hosts = ["example.com", "*.example.com"]
            origin = "http://127.0.0.1:1"
            [[sites]]
            hosts = ["example.com"]
            path_prefix = "/debian/"
            origin = "http://127.0.0.1:2"
            "#,
        );
        assert_eq!(
            router
                .route(Some("example.com"), "/debian/x")
                .unwrap()
                .pool
                .members()[0]
                .address,
            "127.0.0.1:2"
        );
        assert_eq!(
            router
                .route(Some("example.com:8080"), "/")
                .unwrap()
                .pool
                .members()[0]
                .address,
            "127.0.0.1:1"
        );
        assert_eq!(
            router
                .route(Some("www.example.com."), "/")
                .unwrap()
                .pool
                .members()[0]
                .address,
            "127.0.0.1:1"
        );
        assert!(matches!(
            router.route(Some("other.org"), "/"),
            Err(ProxyError::MisdirectedRequest(_))
        ));
    }

    /// RFC 9112 §3.2: a request with two Host fields, or a malformed one, is a 400.
    #[test]
    fn host_must_be_single_and_well_formed() {
        let two = Request::get("/")
            .header(HOST, "a")
            .header(HOST, "b")
            .body(())
            .unwrap();
        assert!(request_host(&two.into_parts().0, "http").is_err());
        let bad = Request::get("/").header(HOST, "a b").body(()).unwrap();
        assert!(request_host(&bad.into_parts().0, "http").is_err());
        let v6 = Request::get("/")
            .header(HOST, "[::1]:8080")
            .body(())
            .unwrap();
        assert_eq!(
            request_host(&v6.into_parts().0, "http").unwrap().as_deref(),
            Some("[::1]:8080")
        );
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        // One canonical spelling: case, trailing dot, default and empty port folded.
        for spelling in [
            "Example.COM",
            "example.com.",
            "example.com:80",
            "example.com:",
        ] {
            let request = Request::get("/").header(HOST, spelling).body(()).unwrap();
            assert_eq!(
                request_host(&request.into_parts().0, "http")
                    .unwrap()
                    .as_deref(),
                Some("example.com"),
                "{spelling}"
            );
        }
        let none = Request::get("/").body(()).unwrap();
        assert!(
            request_host(&none.into_parts().0, "http").is_err(),
            "HTTP/1.1 without Host"
        );
    }
}
