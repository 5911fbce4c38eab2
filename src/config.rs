//! Configuration: the layered raw settings (built-in defaults < TOML file < `OUTPOST_`
//! environment < command-line flags) and their validation into a [`Config`] the rest of the
//! crate can trust.
//!
//! Every failure is a [`ConfigError`] that names the file and the key, because an operator
//! reading a startup error should not have to guess which line to fix. What the settings *mean*
//! at run time belongs to the modules that use them; this module only checks that they are
//! well-formed and consistent.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use url::Url;

/// Prefix of environment overrides; nesting uses `__` (`OUTPOST_SERVER__IDLE_TIMEOUT=30s`).
pub const ENV_PREFIX: &str = "OUTPOST_";

/// Top-level keys of [`Config`]. Only `OUTPOST_` variables naming one of these are read:
/// other tools put their own variables under our prefix (`OUTPOST_BIN`, `OUTPOST_ARGS`), and
/// those must not stop the proxy from starting. [`ignored_env_vars`] lists the others.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "admin",
    "admin_token",
    "origin",
    "pool",
    "host_header",
    "pools",
    "proxy_name",
    "server",
    "tls",
    "forward_proxy",
    "upstream",
    "forwarding",
    "log",
    "cache",
    "compression",
    "debug",
    "sites",
    "mirror",
];

fn is_config_env_key(key: &str) -> bool {
    let top = key.split("__").next().unwrap_or(key);
    TOP_LEVEL_KEYS
        .iter()
        .any(|known| top.eq_ignore_ascii_case(known))
}

/// The `OUTPOST_` environment variables that name no setting, for a startup warning.
pub fn ignored_env_vars() -> Vec<String> {
    std::env::vars()
        .filter_map(|(name, _)| {
            let key = name.strip_prefix(ENV_PREFIX)?;
            (!is_config_env_key(key)).then_some(name)
        })
        .collect()
}

/// The environment layer: `OUTPOST_` variables naming a setting, nested by `__`.
pub fn env_layer() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| is_config_env_key(key.as_str()))
        .split("__")
}

/// Why a configuration could not be loaded. Each variant says where to look.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The cause is part of the message, not a source in the chain, so that a report
    /// of the whole chain does not say it twice.
    #[error("config file {path}: not found or not readable: {cause}")]
    FileUnreadable {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// Syntax errors, unknown keys and values of the wrong type or unit.
    #[error("{}", describe_figment_error(.0))]
    Invalid(Box<figment::Error>),
    /// Values that parse but do not make sense (alone or together): every one found,
    /// one line each.
    #[error("{}", describe_problems(source_name, problems))]
    Rejected {
        source_name: String,
        /// Key and what is wrong with it.
        problems: Vec<(String, String)>,
    },
}

fn describe_problems(source_name: &str, problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(key, message)| format!("{source_name}: key `{key}`: {message}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line per problem: where (file path or environment variable), which key, what is wrong.
fn describe_figment_error(error: &figment::Error) -> String {
    let lines: Vec<String> = (*error)
        .clone()
        .into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let place = match &err.metadata {
                Some(meta) => match &meta.source {
                    Some(figment::Source::File(path)) => path.display().to_string(),
                    // The variable itself, as it was set (figment names only the prefix).
                    _ if meta.name.contains(ENV_PREFIX) && !key.is_empty() => {
                        let name = err.path.join("__").to_ascii_uppercase();
                        format!("environment variable {ENV_PREFIX}{name}")
                    }
                    _ => meta.name.to_string(),
                },
                None => "configuration".to_string(),
            };
            let what = describe_kind(&err.kind);
            if key.is_empty() {
                format!("{place}: {what}")
            } else {
                format!("{place}: key `{key}`: {what}")
            }
        })
        .collect();
    lines.join("\n")
}

/// What is wrong, in words; a mistyped setting or choice gets the nearest known one.
fn describe_kind(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::UnknownField(found, known) => {
            format!("no such setting{}", nearest_and_known(found, known))
        }
        Kind::UnknownVariant(found, known) => {
            format!(
                "`{found}` is not a choice here{}",
                nearest_and_known(found, known)
            )
        }
        _ => kind.to_string(),
    }
}

/// "; did you mean `x`? (known here: ...)" for `found` among `known`.
fn nearest_and_known(found: &str, known: &[&str]) -> String {
    let nearest = known
        .iter()
        .map(|name| (strsim::damerau_levenshtein(found, name), *name))
        .filter(|(distance, name)| *distance <= 2.max(name.len() / 4))
        .min();
    let listed = known
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ");
    match nearest {
        Some((_, name)) => format!("; did you mean `{name}`? (known here: {listed})"),
        None => format!(" (known here: {listed})"),
    }
}

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        ConfigError::Invalid(Box::new(err))
    }
}

/// A byte count written with human units in config (`64KiB`, `1MiB`, `512`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn as_u64(self) -> u64 {
        self.0
    }
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        bytesize::ByteSize::from_str(text.trim())
            .map(|size| ByteSize(size.as_u64()))
            .map_err(|_| format!("`{text}` is not a size (examples: 512, 64KiB, 10MiB, 2GiB)"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (unit, name) in UNITS {
            if self.0 >= unit && self.0 % unit == 0 {
                return write!(f, "{}{}", self.0 / unit, name);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written with human units in config (`30s`, `250ms`, `1h 30m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|err| format!("`{text}` is not a duration ({err}; examples: 250ms, 30s, 5m)"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// An origin base URL: `http` or `https`, a host, no query or fragment. A path, if any, is
/// prefixed to every forwarded request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginUrl(Url);

impl OriginUrl {
    pub fn url(&self) -> &Url {
        &self.0
    }
    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }
    /// `host[:port]` as it belongs in a URI authority (IPv6 bracketed).
    pub fn authority(&self) -> String {
        let host = match self.0.host() {
            Some(url::Host::Ipv6(addr)) => format!("[{addr}]"),
            Some(host) => host.to_string(),
            None => String::new(),
        };
        match self.0.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        }
    }
    /// The path to prefix, without its trailing slash (empty for the root).
    pub fn base_path(&self) -> &str {
        self.0.path().trim_end_matches('/')
    }
}

impl FromStr for OriginUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(text.trim()).map_err(|err| format!("`{text}` is not a URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{text}`: origin scheme must be http or https"));
        }
        if url.host().is_none() {
            return Err(format!("`{text}`: origin URL needs a host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "`{text}`: origin URL must not have a query or fragment"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "`{text}`: credentials in the origin URL are not supported"
            ));
        }
        Ok(OriginUrl(url))
    }
}

impl fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// Settings written as one string: parsed with `FromStr` (its error names the problem;
/// figment adds the file and key), printed with `Display` (for `outpost check`).
macro_rules! string_setting {
    ($($setting:ty),+) => {$(
        impl<'de> Deserialize<'de> for $setting {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $setting {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )+};
}

string_setting!(
    HumanDuration,
    OriginUrl,
    HeaderNameSetting,
    HostHeaderSetting,
    AccessLogTarget
);

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A secret in config (the admin token): never printed, by `outpost check` or `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for comparing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// A header field name in config, checked when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderNameSetting(pub http::HeaderName);

impl HeaderNameSetting {
    pub fn get(&self) -> &http::HeaderName {
        &self.0
    }
}

impl FromStr for HeaderNameSetting {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        http::HeaderName::from_bytes(text.trim().as_bytes())
            .map(HeaderNameSetting)
            .map_err(|_| format!("`{text}` is not a header name"))
    }
}

impl fmt::Display for HeaderNameSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// The Host header a site sends to its origin, when not the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostHeaderSetting {
    /// `"origin"`: the origin URL's authority.
    Origin,
    /// Any other value, sent as written.
    Fixed(http::HeaderValue),
}

impl FromStr for HostHeaderSetting {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "origin" {
            return Ok(HostHeaderSetting::Origin);
        }
        match http::HeaderValue::from_str(text) {
            Ok(value) if !text.is_empty() => Ok(HostHeaderSetting::Fixed(value)),
            _ => Err(format!("`{text}` is not a Host value")),
        }
    }
}

impl fmt::Display for HostHeaderSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostHeaderSetting::Origin => f.write_str("origin"),
            HostHeaderSetting::Fixed(value) => f.write_str(value.to_str().unwrap_or("")),
        }
    }
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

impl FromStr for AccessLogTarget {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "stdout" => AccessLogTarget::Stdout,
            "stderr" => AccessLogTarget::Stderr,
            "" => return Err("empty: use stdout, stderr or a file path".to_string()),
            path => AccessLogTarget::File(PathBuf::from(path)),
        })
    }
}

impl fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessLogTarget::Stdout => f.write_str("stdout"),
            AccessLogTarget::Stderr => f.write_str("stderr"),
            AccessLogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A content coding outpost can produce (RFC 9110 §8.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentCoding {
    Br,
    Zstd,
    Gzip,
}

/// The whole configuration, after layering and validation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Downstream listen address.
    pub listen: SocketAddr,
    /// Admin listener (health, metrics, purge, status, reload). Off when unset.
    pub admin: Option<SocketAddr>,
    /// Bearer token required on admin endpoints other than /healthz and /readyz; needed to
    /// bind the admin listener to a non-loopback address.
    pub admin_token: Option<Secret>,
    /// Origin of the default site: serves every Host no `[[sites]]` entry claims.
    pub origin: Option<OriginUrl>,
    /// Or a pool (`[[pools]]` by name) for the default site instead of one origin.
    pub pool: Option<String>,
    /// Host header the default site sends to its origin, as a site's `host_header`: unset
    /// keeps the client's Host; `"origin"` uses the origin server's authority.
    pub host_header: Option<HostHeaderSetting>,
    /// Named pools of origin servers that sites (and the default site) may use.
    pub pools: Vec<PoolConfig>,
    /// Name this proxy uses in `Via`, `Proxy-Status` and `Cache-Status`.
    pub proxy_name: String,
    pub server: ServerConfig,
    /// TLS termination: listeners and certificates.
    pub tls: TlsConfig,
    /// Forward-proxy use: CONNECT tunnels to allowed targets.
    pub forward_proxy: ForwardProxyConfig,
    pub upstream: UpstreamConfig,
    pub forwarding: ForwardingConfig,
    pub log: LogConfig,
    pub cache: CacheConfig,
    pub compression: CompressionConfig,
    pub debug: DebugConfig,
    pub sites: Vec<SiteConfig>,
    /// Package registries mounted under paths (the package-mirror profile).
    pub mirror: MirrorConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: None,
            admin_token: None,
            origin: None,
            pool: None,
            host_header: None,
            pools: Vec::new(),
            proxy_name: "outpost".to_string(),
            server: ServerConfig::default(),
            tls: TlsConfig::default(),
            forward_proxy: ForwardProxyConfig::default(),
            upstream: UpstreamConfig::default(),
            forwarding: ForwardingConfig::default(),
            log: LogConfig::default(),
            cache: CacheConfig::default(),
            compression: CompressionConfig::default(),
            debug: DebugConfig::default(),
            sites: Vec::new(),
            mirror: MirrorConfig::default(),
        }
    }
}

/// TLS termination (rustls): listeners, the default certificate, and per-site ones chosen
/// by SNI (`[[sites]] tls_cert`, `tls_key`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Addresses to serve HTTPS on (HTTP/1.1 and HTTP/2 by ALPN).
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain for names no site's certificate covers.
    pub cert: Option<PathBuf>,
    /// Its PEM private key.
    pub key: Option<PathBuf>,
    /// A DER OCSP response for `cert`, stapled to every handshake that asks for one (RFC
    /// 6066 §8, RFC 8446 §4.4.2.1), so clients need not ask the CA. outpost does not fetch
    /// it: refresh the file before it expires (`openssl ocsp ... -respout FILE`) and reload.
    pub ocsp_response: Option<PathBuf>,
    /// PEM certificates of the CAs whose client certificates the TLS listeners accept. Set,
    /// every TLS client must present a certificate one of them issued (mutual TLS, RFC 8446
    /// §4.3.2), unless `client_cert_optional`. Applies to every listener and site.
    pub client_ca_file: Option<PathBuf>,
    /// Serve clients that present no certificate too; one that is presented is still
    /// verified, and refused when it fails.
    pub client_cert_optional: bool,
    /// PEM certificate revocation lists: a client certificate they revoke is refused. Every
    /// CA in a client's chain needs its own list here, as nginx's `ssl_crl` asks.
    pub client_crl_files: Vec<PathBuf>,
    /// Tell origins the verified client certificate as `Client-Cert` and the rest of the
    /// chain the client sent as `Client-Cert-Chain` (RFC 9440). Either way, those fields
    /// from clients are removed unless they come from `forwarding.trusted_proxies`.
    pub forward_client_cert: bool,
}

/// What a TLS listener asks clients for: a certificate from `ca_file`'s CAs (required
/// unless `optional`) that no CRL in `crl_files` revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub ca_file: PathBuf,
    pub optional: bool,
    pub crl_files: Vec<PathBuf>,
}

impl ClientAuth {
    /// A client without a certificate is refused.
    pub fn is_required(&self) -> bool {
        !self.optional
    }
}

/// CONNECT tunnels for clients that use outpost as their forward proxy (RFC 9110 §9.3.6).
/// Never an open proxy: with no patterns, every CONNECT is refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardProxyConfig {
    /// `host:port` patterns a CONNECT may reach (`*` matches within the host or the port:
    /// `*.example.com:443`, `mirror.internal:*`).
    pub connect_allow: Vec<String>,
    /// `host:port` patterns that absolute-form requests (`GET http://host/path` from a
    /// client using outpost as its HTTP proxy) are forwarded to and cached for; other
    /// absolute-form requests are routed by their authority like any request.
    pub allow: Vec<String>,
    /// `user:password` a client must present as `Proxy-Authorization: Basic ...`; unset: none.
    pub credentials: Option<Secret>,
}

/// Downstream connection limits and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Connections accepted at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Longest a client may take to send a request's header section (slowloris guard).
    pub header_read_timeout: HumanDuration,
    /// A connection with no request in flight and no bytes moving is closed after this.
    pub idle_timeout: HumanDuration,
    /// A response the client reads nothing of for this long (its socket stays full) is cut
    /// off with its connection (nginx's `send_timeout`).
    pub send_timeout: HumanDuration,
    /// Connections at once from one client address (0: no limit); more are closed at once.
    pub max_connections_per_client: usize,
    /// Peers (CIDR) whose connections may begin with a PROXY protocol v1/v2 header (a TCP
    /// load balancer): the client address it gives stands for the peer. Empty: none.
    pub proxy_protocol_from: Vec<IpNet>,
    /// An upgraded connection (WebSocket) closes after this long with no byte either way.
    pub tunnel_idle_timeout: HumanDuration,
    /// ... and after this long in all.
    pub tunnel_max_duration: HumanDuration,
    /// Largest request header section accepted (HTTP/1 read buffer, HTTP/2 header list).
    pub max_header_bytes: ByteSize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_grace: HumanDuration,
    /// Repeated plain memory hits on cleartext HTTP/1.1 connections are answered from the
    /// response head prepared for the first (`pipeline::prepared`): the same bytes, with
    /// Age and Cache-Status for the moment, for a fraction of the work. Off: every request
    /// goes through the full pipeline.
    pub prepared_hits: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 10_000,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            send_timeout: HumanDuration(Duration::from_secs(60)),
            max_connections_per_client: 0,
            proxy_protocol_from: Vec::new(),
            tunnel_idle_timeout: HumanDuration(Duration::from_secs(600)),
            tunnel_max_duration: HumanDuration(Duration::from_secs(24 * 3600)),
            max_header_bytes: ByteSize(64 * 1024),
            max_headers: 100,
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            prepared_hits: true,
        }
    }
}

/// Origin-side connection pool and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout: HumanDuration,
    /// From the request being sent to the origin's response header section arriving.
    pub response_header_timeout: HumanDuration,
    /// Longest wait for the next piece of an origin's response body; past it the exchange
    /// fails (the client's response is aborted, nothing is stored).
    pub body_read_timeout: HumanDuration,
    /// Exchanges with origins in flight at once, in all (each holds one connection); more
    /// wait in a queue of `connection_queue`, then get 503.
    pub max_connections: usize,
    /// Exchanges in flight at once per origin.
    pub max_connections_per_origin: usize,
    pub connection_queue: usize,
    pub connection_queue_timeout: HumanDuration,
    /// Pooled idle connections to an origin are closed after this. The default (4 s) is
    /// below the keep-alive timeouts origins commonly use (Node and Apache 5 s), so outpost
    /// closes an idle connection before the origin does, rather than racing it.
    pub pool_idle_timeout: HumanDuration,
    pub pool_max_idle_per_host: usize,
    /// How large an HTTP/1 origin connection's read buffer may grow (it starts at 8 KiB),
    /// which is also the largest response head accepted from an origin (larger ones get 502
    /// `http_response_header_section_size`). Every body chunk read is a slice of that
    /// buffer, and a chunk still held by a fill or a client pins all of it, so each read
    /// goes to a new buffer: hyper's own limit (about 400 KiB) made 64 concurrent unique
    /// 1 MiB misses hold 80 MiB of heap on a 128 MiB tier, 128 KiB 42 MiB. Larger reads
    /// cost less CPU per byte when large bodies are kept (at 128 KiB a kept 1 MiB miss took
    /// 1.2x the CPU of hyper's default; streamed through unstored, the same).
    /// Unset, it follows the memory the node is given: a thousandth of
    /// `cache.memory_capacity`, between 32 KiB and 128 KiB (see [`Config::origin_read_buffer`]).
    pub max_read_buffer: Option<ByteSize>,
    /// Extra PEM certificate authorities trusted for HTTPS origins (besides the built-in roots).
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain outpost presents to HTTPS origins that ask for one (RFC 8446
    /// §4.3.2: authenticated origin pulls, so the origin serves only its CDN). With
    /// `client_key`; both are read at start and on every reload.
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert` (PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// A hosts-format file (an address, then names) consulted before DNS when pool server
    /// names are resolved: for air-gapped setups and tests.
    pub hosts_file: Option<PathBuf>,
    /// The HTTP version spoken to origins (a pool's `protocol` overrides it).
    pub protocol: OriginProtocol,
    /// Requests in flight at once over HTTP/2 to one origin server; more wait (within the
    /// response header timeout).
    pub max_streams_per_origin: usize,
    /// Streams one HTTP/2 connection to an origin server carries at once; past it another
    /// connection is opened. A server whose SETTINGS_MAX_CONCURRENT_STREAMS is lower (RFC
    /// 9113 §6.5.2 recommends at least 100; nginx and Go use 128 and 250) gets that many.
    pub max_streams_per_connection: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: HumanDuration(Duration::from_secs(5)),
            response_header_timeout: HumanDuration(Duration::from_secs(60)),
            body_read_timeout: HumanDuration(Duration::from_secs(60)),
            max_connections: 4096,
            max_connections_per_origin: 1024,
            connection_queue: 4096,
            connection_queue_timeout: HumanDuration(Duration::from_secs(10)),
            pool_idle_timeout: HumanDuration(Duration::from_secs(4)),
            pool_max_idle_per_host: 256,
            max_read_buffer: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            hosts_file: None,
            protocol: OriginProtocol::default(),
            max_streams_per_origin: 100,
            max_streams_per_connection: 100,
        }
    }
}

/// The HTTP version outpost speaks to an origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OriginProtocol {
    /// HTTP/1.1, on a pool of keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 only: by ALPN over TLS, by prior knowledge (h2c) over cleartext (RFC 9113
    /// §3.3). One multiplexed connection per server.
    H2,
    /// Over TLS, HTTP/2 when the server picks it by ALPN, else HTTP/1.1; cleartext is
    /// HTTP/1.1 (RFC 9113 dropped the h2c upgrade).
    Auto,
}

/// The trust boundary for forwarding headers (RFC 9110 §7.6, RFC 7239).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// Peers whose X-Forwarded-*, Forwarded and X-Real-IP headers are extended, not replaced.
    pub trusted_proxies: Vec<IpNet>,
    /// Further request headers that origins treat as overrides of host, scheme, path or
    /// method; removed from requests of untrusted peers (added to a built-in list).
    pub strip_override_headers: Vec<HeaderNameSetting>,
    /// Take X-Forwarded-Host, -Proto and -Port from `trusted_proxies` (a TLS terminator or
    /// load balancer in front that sets them); off, outpost sets them from what it saw. The
    /// other override headers are removed from every peer.
    pub trust_forwarded_host: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `outpost=debug`); `RUST_LOG` overrides it.
    pub level: String,
    /// One line per finished request.
    pub access_log: bool,
    /// `json` (one object per line) or `combined` (Apache/nginx, plus cache and timing).
    pub access_log_format: AccessLogFormat,
    /// `stdout`, `stderr`, or a file path (appended to).
    pub access_log_path: AccessLogTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogFormat {
    Json,
    Combined,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
            access_log: true,
            access_log_format: AccessLogFormat::Json,
            access_log_path: AccessLogTarget::Stdout,
        }
    }
}

/// Whose unsafe requests invalidate (RFC 9111 §4.4): any client can otherwise evict a page
/// with a request the origin answers 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsafeInvalidation {
    /// Every client's (the RFC's behaviour).
    All,
    /// Only those of peers in `cache.purge_allowed`.
    Trusted,
    /// Nobody's: stored responses change only by expiry, revalidation and purges.
    Off,
}

/// How the memory tier chooses what to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryPolicy {
    /// Window TinyLFU by bytes (the default): new objects pass a 1% window, then win
    /// their place in main one cold object at a time by being asked for more often. Scans
    /// of one-hit objects pass through; a popular large object still gets in.
    Wtinylfu,
    /// Admit everything, evict the least recently used.
    Lru,
    /// TinyLFU admission with LRU eviction: resists one-hit scans, but weighted admission
    /// compares a newcomer with the summed popularity of everything it would evict, so a
    /// large object may never get into a tier full of small ones.
    Tinylfu,
}

/// The shared cache (RFC 9111).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Off: every request goes to the origin (Cache-Status says `fwd=bypass`).
    pub enabled: bool,
    /// Bytes the process may hold in memory: the memory tier (bodies, headers, keys and
    /// per-entry overhead) and, out of the same capacity, `fill_memory_budget` for bodies on
    /// their way in and `memory_reserve` for the process's own needs. The tier keeps the
    /// rest, at least an eighth.
    pub memory_capacity: ByteSize,
    /// Memory the process needs beside its caches (its executable's pages, the runtime,
    /// connections' buffers, the allocator's slack), set aside from `memory_capacity` so a
    /// full node stays near it. Unset: `DEFAULT_PROCESS_NEEDS` (30 MiB, measured under
    /// load) from 72 MiB of capacity up, and three quarters of what the capacity has past
    /// 32 MiB below that: a smaller capacity keeps its caches, since the process alone
    /// would take most of it.
    pub memory_reserve: Option<ByteSize>,
    /// What the memory tier keeps when full.
    pub memory_policy: MemoryPolicy,
    /// Larger responses are not kept in memory: with a disk tier they stream to disk (up to
    /// `disk_max_object_size`), without one they stream through unstored.
    pub max_object_size: ByteSize,
    /// Variants (Vary) kept per URL; the oldest goes first.
    pub max_variants: usize,
    /// Heuristic freshness: this fraction of the time since Last-Modified (RFC 9111
    /// §4.2.2), for heuristically cacheable statuses or `public` responses without
    /// explicit freshness.
    pub heuristic_fraction: f64,
    /// Upper bound on any heuristic freshness.
    pub heuristic_max: HumanDuration,
    /// Store responses that carry Set-Cookie (and serve the cookie to everyone). Off by
    /// default: almost always a personalised response.
    pub store_set_cookie: bool,
    /// Followers of a coalesced fetch wait at most this long for its response head, then
    /// go to the origin themselves.
    pub coalesce_wait: HumanDuration,
    /// After a response turns out uncacheable, requests for that URL skip coalescing for
    /// this long (hit-for-miss), so the next burst is not queued behind one request.
    pub hit_for_miss_ttl: HumanDuration,
    /// Targeted cache-control fields (RFC 9213) that override Cache-Control and Expires for
    /// this cache, first present wins.
    pub targeted_cache_control: Vec<HeaderNameSetting>,
    /// Response header whose space-separated keys tag a response for purge by tag (besides
    /// RFC 9875 Cache-Groups).
    pub surrogate_key_header: HeaderNameSetting,
    /// Peers allowed to use the PURGE method on the proxy listener (CIDR list; empty: none).
    pub purge_allowed: Vec<IpNet>,
    /// Whose unsafe requests (POST, PUT, DELETE, ...) may invalidate stored responses when
    /// the origin answers them without error (RFC 9111 §4.4, RFC 9875 §3).
    pub unsafe_invalidation: UnsafeInvalidation,
    /// Directory of the disk tier (sled index + body files); unset: memory only. Also
    /// `--cache-dir`.
    pub dir: Option<PathBuf>,
    /// Bytes the disk tier may hold (bodies plus their index rows); least recently used
    /// objects go first when it is full.
    pub disk_capacity: ByteSize,
    /// Free space the disk tier leaves on its file system: below it (or under 1000 free
    /// inodes) nothing more is written, so a full disk refuses objects instead of failing.
    pub disk_min_free: ByteSize,
    /// After a disk failure the tier is off; it is probed this long after, then at doubling
    /// intervals (up to 10 minutes), and back in use once a probe succeeds.
    pub disk_retry_after: HumanDuration,
    /// Larger responses are not kept on disk. Objects above `max_object_size` but within
    /// this stream to disk without being held in memory.
    pub disk_max_object_size: ByteSize,
    /// Objects (stored variants) the disk tier may hold; beyond, the least recently used
    /// go even if bytes are left. The index keeps each row it has read in memory (a few
    /// hundred bytes), so this bounds the disk tier's memory. 0: no limit but the bytes.
    pub disk_max_objects: u64,
    /// Bodies up to this size (at most 1 MiB) are appended to the disk tier's pack files
    /// rather than given a file of their own (a file takes at least a 4 KiB block and an
    /// inode). 0: every body in a file.
    pub disk_inline_max: ByteSize,
    /// fsync each body file (and its directory) before indexing it. Off, a power cut may
    /// lose recent objects; a torn file is still never served (every read is verified).
    pub fsync: bool,
    /// Send disk hits on cleartext HTTP/1 connections straight from their file
    /// (sendfile), and read them without hashing on other connections, once the file has
    /// been verified in full and while its status shows no change (re-verified every
    /// minute). Off, every disk hit reads and verifies every byte.
    /// On a disk much slower than memory, a hit whose file has left the page cache then
    /// waits for the disk on a server thread, as with nginx's sendfile.
    pub disk_sendfile: bool,
    /// Memory-tier bodies of at least this size are kept in sealed memory files (Linux
    /// memfd) rather than on the heap, so hits on cleartext HTTP/1 connections are sent
    /// with sendfile instead of being copied into the socket. Each costs a file
    /// descriptor and a mapping; at most a quarter of either limit is used, and past it
    /// bodies stay on the heap. 0: every body on the heap.
    pub memory_sendfile_min: ByteSize,
    /// How long past its freshness a stored response may still answer when the origin
    /// cannot (refused, timed out, reset, or 500/502/503/504), unless the response forbids
    /// stale use (RFC 9111 §4.2.4: must-revalidate, proxy-revalidate, s-maxage, no-cache).
    /// A response's or request's own `stale-if-error` (RFC 5861 §4) may extend it. 0 turns
    /// it off, leaving only `stale-if-error`.
    pub stale_on_error: HumanDuration,
    /// Offline mode: serve whatever is stored, fresh or not, never ask the origin, and
    /// answer 504 for the rest. Also switched at run time by the admin API.
    pub offline: bool,
    /// In offline mode, serve even entries that forbid stale use (must-revalidate,
    /// proxy-revalidate, no-cache).
    pub offline_ignores_revalidation: bool,
    /// Per-path policy rules, first match wins.
    pub rules: Vec<PathRule>,
    /// A fill whose every client has gone is abandoned (its origin download stopped) once
    /// its body passes this size; smaller storable bodies finish and are stored.
    pub unread_fill_limit: ByteSize,
    /// ... or once it has had no client for this long.
    pub unread_fill_timeout: HumanDuration,
    /// Body bytes all fills in flight may keep in memory together (each counts for its
    /// declared length from its start, and fills streaming through unstored for what they
    /// read ahead and their connections' buffers); past it, new bodies go to a disk file
    /// (or stream through unstored, reading no further ahead than their clients). Unset:
    /// an eighth of `memory_capacity`, which the memory tier leaves to it. One fill alone
    /// may pass it (up to `max_object_size`), so bodies in memory, kept and arriving, stay
    /// within the capacity, or one object past it.
    pub fill_memory_budget: Option<ByteSize>,
    /// Fills (origin fetches that store) running at once, in all; more wait in a queue.
    pub max_fills: usize,
    /// Fills running at once per origin.
    pub max_fills_per_origin: usize,
    /// Requests that may wait for a fill slot; past it, or after `fill_queue_timeout`,
    /// they get 503 with `Proxy-Status: ...; error=connection_limit_reached`.
    pub fill_queue: usize,
    pub fill_queue_timeout: HumanDuration,
    /// Memory for partial entries: the byte ranges of representations kept from the
    /// origin's 206 responses (RFC 9111 §3.3), and the start of 200s that did not complete;
    /// 0 keeps none. What they hold comes out of the memory tier's capacity. The disk tier,
    /// if any, keeps as much again.
    pub partial_capacity: ByteSize,
    /// A Range miss whose first byte is at most this far into the representation fetches
    /// the whole representation once and serves the range from it; one starting further
    /// is forwarded with its Range, and the 206 is kept as a partial entry.
    pub range_fill_max_offset: ByteSize,
}

/// A policy override for matching paths (`[[cache.rules]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// Glob on the path (`*` crosses `/`): `*.deb`, `/simple/*`.
    #[serde(default, rename = "match")]
    pub glob: Option<String>,
    /// Plain path prefix: `/packages/`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Only for these site names (empty: every site).
    #[serde(default)]
    pub sites: Vec<String>,
    /// Freshness lifetime to use instead of the origin's.
    #[serde(default)]
    pub ttl: Option<HumanDuration>,
    /// Treat as immutable (RFC 8246): fresh for `ttl` (default a year), and a client's
    /// `max-age=0` / `no-cache` does not force a trip to the origin.
    #[serde(default)]
    pub immutable: bool,
    /// Always validate with the origin before use (as `no-cache`), falling back to the
    /// stored response when the origin cannot be reached (`stale_if_error`).
    #[serde(default)]
    pub revalidate: bool,
    /// stale-if-error window (RFC 5861 §4) when the origin does not give one.
    #[serde(default)]
    pub stale_if_error: Option<HumanDuration>,
    /// stale-while-revalidate window (RFC 5861 §3) when the origin does not give one.
    #[serde(default)]
    pub stale_while_revalidate: Option<HumanDuration>,
    /// The longest an error response (status 400 and above) stays fresh on matching paths,
    /// whatever freshness the origin gave it. Without it (the default) an error is stored
    /// for exactly the explicit freshness the origin gives it (RFC 9111 §3), and never
    /// heuristically.
    #[serde(default)]
    pub error_ttl: Option<HumanDuration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            memory_capacity: ByteSize(256 << 20),
            memory_reserve: None,
            memory_policy: MemoryPolicy::Wtinylfu,
            max_object_size: ByteSize(32 << 20),
            max_variants: 16,
            heuristic_fraction: 0.1,
            heuristic_max: HumanDuration(Duration::from_secs(24 * 3600)),
            store_set_cookie: false,
            coalesce_wait: HumanDuration(Duration::from_secs(10)),
            hit_for_miss_ttl: HumanDuration(Duration::from_secs(30)),
            targeted_cache_control: vec![HeaderNameSetting(http::HeaderName::from_static(
                "cdn-cache-control",
            ))],
            surrogate_key_header: HeaderNameSetting(http::HeaderName::from_static("surrogate-key")),
            purge_allowed: Vec::new(),
            unsafe_invalidation: UnsafeInvalidation::All,
            dir: None,
            disk_capacity: ByteSize(10 << 30),
            disk_max_object_size: ByteSize(2 << 30),
            disk_inline_max: ByteSize(8 << 10),
            disk_max_objects: 0,
            disk_min_free: ByteSize(256 << 20),
            disk_retry_after: HumanDuration(Duration::from_secs(30)),
            fsync: false,
            disk_sendfile: true,
            memory_sendfile_min: ByteSize(64 << 10),
            stale_on_error: HumanDuration(Duration::from_secs(24 * 3600)),
            offline: false,
            offline_ignores_revalidation: false,
            rules: Vec::new(),
            unread_fill_limit: ByteSize(8 << 20),
            unread_fill_timeout: HumanDuration(Duration::from_secs(30)),
            fill_memory_budget: None,
            max_fills: 1024,
            max_fills_per_origin: 256,
            fill_queue: 4096,
            fill_queue_timeout: HumanDuration(Duration::from_secs(10)),
            partial_capacity: ByteSize(64 << 20),
            range_fill_max_offset: ByteSize(1 << 20),
        }
    }
}

impl CacheConfig {
    /// `fill_memory_budget`, or its default: an eighth of `memory_capacity`.
    pub fn effective_fill_memory_budget(&self) -> u64 {
        self.fill_memory_budget
            .map_or(self.memory_capacity.as_u64() / 8, |budget| budget.as_u64())
    }

    /// `memory_reserve`, or its default: the process's measured needs
    /// ([`DEFAULT_PROCESS_NEEDS`]), ramped in from 32 MiB of capacity (three quarters of
    /// each byte past it, less than the seven eighths the tier would get) so that no
    /// capacity gives the tier less than a smaller capacity would.
    pub fn effective_memory_reserve(&self) -> u64 {
        self.memory_reserve.map_or_else(
            || {
                let capacity = self.memory_capacity.as_u64();
                (capacity.saturating_sub(RESERVE_RAMP_START) / 4 * 3).min(DEFAULT_PROCESS_NEEDS)
            },
            |reserve| reserve.as_u64(),
        )
    }

    /// Bytes the memory tier may hold: `memory_capacity` less the fills' budget and the
    /// process's reserve, down to an eighth of it. Bodies on their way in are counted
    /// against the capacity beside the stored ones, so a full tier with its fills in flight
    /// stays within it; the budget is set aside rather than lent to the tier while it is
    /// idle, because a tier that shrinks as fills come evicts small objects whose heap the
    /// allocator keeps.
    pub fn memory_tier_capacity(&self) -> u64 {
        let capacity = self.memory_capacity.as_u64();
        capacity
            .saturating_sub(self.effective_fill_memory_budget())
            .saturating_sub(self.effective_memory_reserve())
            .max(capacity / MEMORY_TIER_LEAST_SHARE)
    }
}

/// What the process holds beside its caches with a full tier and its fills' budget in use,
/// measured with `benches/memory_footprint.sh` (Linux, x86-64, 2 cores) under 100 KiB and
/// 1 MiB misses: 30-32 MiB, of which about 12 MiB are its executable's pages and 2 MiB its
/// runtime at rest; the rest is connections' buffers, thread caches and heap the allocator
/// has not yet returned. Bursts beyond that (many stalled clients) are what the 1.2x of
/// slack over the capacity is for.
pub const DEFAULT_PROCESS_NEEDS: u64 = 30 << 20;

/// Below this capacity the default reserve is nothing: the process alone (14 MiB at rest,
/// 30 MiB and more under load) would take most of it, and the caches need every byte.
const RESERVE_RAMP_START: u64 = 32 << 20;

/// The memory tier keeps at least this fraction (one in this many) of its capacity, whatever
/// is taken out of it (the fills' budget here, the disk tier's memory as it runs): the
/// hottest objects stay in memory.
pub const MEMORY_TIER_LEAST_SHARE: u64 = 8;

/// On-the-fly compression (RFC 9110 §8.4), stored once per coding.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    pub enabled: bool,
    /// Smaller bodies are sent as they are.
    pub min_size: ByteSize,
    /// Media types to compress besides text/*, JSON, JavaScript, XML, SVG and wasm.
    pub types: Vec<String>,
    /// Server preference among codings of equal client weight.
    pub preference: Vec<ContentCoding>,
    pub gzip_level: i32,
    pub brotli_level: i32,
    pub zstd_level: i32,
    /// Heap the encoders running at once may hold together (each counted for what its
    /// coding, level and body length need); past it, a response is sent as it is (identity)
    /// rather than encoded. One encoder alone is always allowed. Unset: a sixteenth of
    /// `cache.memory_capacity`.
    pub encoder_memory_budget: Option<ByteSize>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            enabled: true,
            min_size: ByteSize(512),
            types: Vec::new(),
            preference: vec![ContentCoding::Br, ContentCoding::Zstd, ContentCoding::Gzip],
            gzip_level: 6,
            brotli_level: 5,
            zstd_level: 9,
            encoder_memory_budget: None,
        }
    }
}

/// The path view: what outpost did with a request, shown to trusted clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// Clients that get an `Outpost-Path` response header when they send `Outpost-Debug: 1`.
    pub trusted_clients: Vec<IpNet>,
    /// Give trusted clients the header on every response, asked or not.
    pub always: bool,
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            trusted_clients: vec![
                IpNet::from(std::net::IpAddr::from([127, 0, 0, 1])),
                IpNet::from(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
            ],
            always: false,
        }
    }
}

/// One site: the Host names (and optional path prefix) it answers, and its origin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Host names, exact (`example.com`) or one leading wildcard label (`*.example.com`).
    pub hosts: Vec<String>,
    /// Only requests whose path starts with this prefix belong to the site.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The site's origin: one URL ...
    #[serde(default)]
    pub origin: Option<OriginUrl>,
    /// ... or a pool (`[[pools]]` by name).
    #[serde(default)]
    pub pool: Option<String>,
    /// PEM certificate chain served (by SNI) for the site's hosts on the TLS listeners.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// A DER OCSP response for `tls_cert`, stapled (as `tls.ocsp_response`).
    #[serde(default)]
    pub tls_ocsp_response: Option<PathBuf>,
    /// PEM CAs whose client certificates TLS connections for the site's hosts (by SNI)
    /// must present, in place of `tls.client_ca_file`'s.
    #[serde(default)]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Serve the site's clients without a certificate too (as `tls.client_cert_optional`).
    #[serde(default)]
    pub tls_client_cert_optional: bool,
    /// PEM CRLs for the site's client CAs (as `tls.client_crl_files`).
    #[serde(default)]
    pub tls_client_crl_files: Vec<PathBuf>,
    /// Answer cleartext requests with a permanent redirect to https.
    #[serde(default)]
    pub redirect_https: bool,
    /// `Strict-Transport-Security` value added to the site's responses over TLS.
    #[serde(default)]
    pub hsts: Option<String>,
    /// Host header sent to the origin: unset keeps the client's Host; `"origin"` uses the
    /// authority of the origin server the request goes to; any other value is sent as
    /// written.
    #[serde(default)]
    pub host_header: Option<HostHeaderSetting>,
    /// Remove `path_prefix` from the path sent to the origin (a registry mounted under a
    /// path of the mirror: `/pypi/simple/x/` goes to the origin as `/simple/x/`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// The name rules (`[[cache.rules]] sites`) and logs use; the first host when unset.
    #[serde(default)]
    pub name: Option<String>,
}

/// The package-mirror profile: registries mounted under paths of one base URL, with their
/// index documents rewritten to point back at the mirror and their artifacts checked
/// against the digests the indexes publish.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    /// The URL clients reach the mirror at (`https://mirror.example.org`), under which
    /// rewritten links point. Unset: the scheme and Host each request came with (every
    /// Host has its own cache entries, so one client's Host never reaches another's links).
    pub public_url: Option<String>,
    /// Index documents up to this size are rewritten; a larger one is relayed as it came.
    pub rewrite_max: ByteSize,
    /// Artifacts with a published digest up to this size are held and checked before their
    /// first byte goes out (a mismatch is a 502); larger ones are checked as they stream
    /// (a mismatch aborts the transfer). Either way a mismatch is never stored.
    pub hold_max: ByteSize,
    pub registries: Vec<RegistryConfig>,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            public_url: None,
            rewrite_max: ByteSize(256 << 20),
            hold_max: ByteSize(64 << 20),
            registries: Vec::new(),
        }
    }
}

/// One registry: where it is mounted and where its upstream is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Names the registry in rules, metrics and the status page.
    pub name: String,
    pub kind: RegistryKind,
    /// Where it is mounted: `/pypi/`, `/crates/`, `/npm/`, `/debian/`.
    pub path: String,
    /// The index (PyPI: the host serving `/simple/`; cargo: the sparse index root; npm: the
    /// registry; Debian: the archive root, `https://deb.debian.org/debian`).
    pub upstream: OriginUrl,
    /// Where the index links artifacts to when that is another host (PyPI:
    /// `https://files.pythonhosted.org`; cargo: `https://static.crates.io/crates`), mounted
    /// at `PATH_files/`.
    #[serde(default)]
    pub files: Option<OriginUrl>,
}

impl RegistryConfig {
    /// The mount of the artifacts host.
    pub fn files_path(&self) -> String {
        format!("{}{}", self.path, FILES_SEGMENT)
    }
}

/// The path segment the artifacts host of a registry is mounted at, under the registry's
/// path. No registry's own paths start with `_` (npm names may not; crates names and PyPI
/// and Debian paths do not), so it cannot shadow one.
pub const FILES_SEGMENT: &str = "_files/";

/// The formats outpost knows how to rewrite and verify.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// PEP 503 / PEP 691 simple index.
    Pypi,
    /// The cargo sparse index.
    Cargo,
    /// The npm registry.
    Npm,
    /// A Debian or Ubuntu archive.
    Debian,
}

impl RegistryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistryKind::Pypi => "pypi",
            RegistryKind::Cargo => "cargo",
            RegistryKind::Npm => "npm",
            RegistryKind::Debian => "debian",
        }
    }
}

/// A named pool of origin servers (`[[pools]]`): load balancing, health and failover.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    pub servers: Vec<PoolServerConfig>,
    #[serde(default)]
    pub selection: Selection,
    /// Pass-through (uncached) requests carrying this cookie go to the server its value
    /// hashes to, so a session stays on one server while it is up.
    #[serde(default)]
    pub sticky_cookie: Option<String>,
    /// ... or this request header.
    #[serde(default)]
    pub sticky_header: Option<HeaderNameSetting>,
    /// Host names of `http://` servers are resolved again this often, one member per
    /// address, so membership follows DNS.
    #[serde(default = "PoolConfig::default_resolve_interval")]
    pub resolve_interval: HumanDuration,
    /// Active HTTP checks; none unless configured.
    #[serde(default)]
    pub health: Option<HealthCheckConfig>,
    #[serde(default)]
    pub passive: PassiveHealthConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Overrides `upstream.response_header_timeout` for this pool's servers.
    #[serde(default)]
    pub response_header_timeout: Option<HumanDuration>,
    /// Overrides `upstream.protocol` for this pool's servers.
    #[serde(default)]
    pub protocol: Option<OriginProtocol>,
    /// Certificate authorities (PEM) trusted for this pool's `https://` servers besides the
    /// web roots, in place of `upstream.ca_file`: origins behind a private CA of their own.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The client certificate (PEM chain) presented to this pool's servers, in place of
    /// `upstream.client_cert`, with `client_key`: an origin that admits only its CDN by a
    /// certificate of its own. Both or neither; unset, the pool presents upstream's.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl PoolConfig {
    fn default_resolve_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }

    /// The pool `--origin` given several times makes: default selection and health.
    pub fn from_origins(name: &str, origins: Vec<OriginUrl>) -> PoolConfig {
        PoolConfig {
            name: name.to_string(),
            servers: origins
                .into_iter()
                .map(|url| PoolServerConfig {
                    url,
                    weight: 1,
                    backup: false,
                    max_connections: None,
                })
                .collect(),
            selection: Selection::default(),
            sticky_cookie: None,
            sticky_header: None,
            resolve_interval: PoolConfig::default_resolve_interval(),
            health: None,
            passive: PassiveHealthConfig::default(),
            retry: RetryConfig::default(),
            response_header_timeout: None,
            protocol: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }

    /// Whether it sets TLS of its own towards its servers (a CA file or a client
    /// certificate), so its connections cannot be shared with other pools'.
    pub fn has_own_tls(&self) -> bool {
        self.ca_file.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
}

/// One server of a pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolServerConfig {
    pub url: OriginUrl,
    /// Its share of requests relative to the others (round robin, power of two, hashing).
    #[serde(default = "PoolServerConfig::default_weight")]
    pub weight: u32,
    /// Used only while no other server can take requests.
    #[serde(default)]
    pub backup: bool,
    /// At most this many connections open to it at once (each of its addresses, when its
    /// name resolves to several), in place of `upstream.max_connections_per_origin`:
    /// nginx's `max_conns`, for a server that takes fewer than the others. Requests past it
    /// wait in the connection queue. A server named by two pools takes the smaller cap.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

impl PoolServerConfig {
    fn default_weight() -> u32 {
        1
    }
}

/// How a pool picks the server for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Smooth weighted round robin (nginx's).
    #[default]
    RoundRobin,
    /// The server with the fewest requests awaiting their response (weights divide).
    LeastOutstanding,
    /// Two servers at random (by weight), the less loaded of them.
    PowerOfTwo,
    /// A ring of virtual nodes hashed on the cache key: each object comes from one
    /// server, and removing one of N moves about 1/N of the keys.
    ConsistentHash,
}

/// Active health checks of every server of a pool.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Path (and query) requested with GET.
    pub path: String,
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    /// Consecutive passing checks that bring a server back.
    pub healthy_threshold: u32,
    /// Consecutive failing checks that take it out.
    pub unhealthy_threshold: u32,
    /// Statuses that pass (default: 200-399).
    pub statuses: Vec<u16>,
    /// Host header of the check (default: the server's authority).
    pub host: Option<String>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/".to_string(),
            interval: HumanDuration(Duration::from_secs(5)),
            timeout: HumanDuration(Duration::from_secs(2)),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            statuses: Vec::new(),
            host: None,
        }
    }
}

/// Ejection of servers that fail real requests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealthConfig {
    /// Consecutive failures (no connection, no complete response head, or a 5xx) that
    /// eject a server; 0 never ejects.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one doubles it up to `max_ejection`.
    pub ejection: HumanDuration,
    pub max_ejection: HumanDuration,
    /// The most of a pool's servers ejected at once (at least one may be).
    pub max_ejected_share: f64,
    /// After an ejection or failed checks, a server's weight climbs from a tenth to whole
    /// over this long.
    pub slow_start: HumanDuration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            consecutive_failures: 5,
            ejection: HumanDuration(Duration::from_secs(10)),
            max_ejection: HumanDuration(Duration::from_secs(300)),
            max_ejected_share: 0.5,
            slow_start: HumanDuration(Duration::ZERO),
        }
    }
}

/// Moving a failed request to another server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries in all, the first included; only idempotent requests whose body is in memory
    /// are tried again, and only before anything of a response reached the client.
    pub max_attempts: u32,
    /// Statuses that count as failures worth another server.
    pub statuses: Vec<u16>,
    /// Extra requests that retries may add, as a share of requests (0.2: at most 20%).
    /// Tries that never reached an origin (no connection) are retried outside it.
    pub budget: f64,
    /// Retries always allowed besides the share, so a quiet pool can still fail over.
    pub budget_reserve: u32,
    /// Longest wait for one try's response head (default: the response-head timeout).
    pub per_try_timeout: Option<HumanDuration>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 2,
            statuses: vec![502, 503, 504],
            budget: 0.2,
            budget_reserve: 10,
            per_try_timeout: None,
        }
    }
}

/// Values given on the command line; they override every other layer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// `--origin`, as often as given: one makes the default site's origin, several a pool
    /// named `origin` of them.
    #[serde(skip)]
    pub origins: Vec<String>,
    /// `--host-header`: the default site's `host_header`.
    #[serde(skip)]
    pub host_header: Option<HostHeaderSetting>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// `--tls-listen`, `--tls-cert`, `--tls-key`.
    #[serde(skip)]
    pub tls_listen: Vec<SocketAddr>,
    #[serde(skip)]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip)]
    pub tls_key: Option<PathBuf>,
}

/// The name of the pool several `--origin` flags make.
pub const FLAG_POOL: &str = "origin";

impl FlagOverrides {
    /// Several `--origin`s: the default site uses a pool of them (replacing a pool of that
    /// name from the file), not the file's `origin`.
    fn apply_origin_pool(&self, config: &mut Config) -> Result<(), ConfigError> {
        if self.origins.len() < 2 {
            return Ok(());
        }
        let urls = self
            .origins
            .iter()
            .map(|text| text.parse::<OriginUrl>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| ConfigError::Rejected {
                source_name: "command line".to_string(),
                problems: vec![("--origin".to_string(), message)],
            })?;
        config.origin = None;
        config.pools.retain(|pool| pool.name != FLAG_POOL);
        config.pools.push(PoolConfig::from_origins(FLAG_POOL, urls));
        Ok(())
    }

    fn merge_into(&self, mut figment: Figment) -> Figment {
        if let Some(listen) = self.listen {
            figment = figment.merge(("listen", listen.to_string()));
        }
        if let Some(admin) = self.admin {
            figment = figment.merge(("admin", admin.to_string()));
        }
        match self.origins.as_slice() {
            [] => {}
            [origin] => figment = figment.merge(("origin", origin.clone())),
            // Several make a pool, added once the rest is extracted (`apply_origin_pool`).
            _ => figment = figment.merge(("pool", FLAG_POOL)),
        }
        if let Some(host_header) = &self.host_header {
            figment = figment.merge(("host_header", host_header.to_string()));
        }
        if let Some(format) = self.log_format {
            figment = figment.merge(("log.format", format));
        }
        if let Some(dir) = &self.cache_dir {
            figment = figment.merge(("cache.dir", dir.display().to_string()));
        }
        if !self.tls_listen.is_empty() {
            let listen: Vec<String> = self.tls_listen.iter().map(ToString::to_string).collect();
            figment = figment.merge(("tls.listen", listen));
        }
        if let Some(cert) = &self.tls_cert {
            figment = figment.merge(("tls.cert", cert.display().to_string()));
        }
        if let Some(key) = &self.tls_key {
            figment = figment.merge(("tls.key", key.display().to_string()));
        }
        figment
    }
}

/// The default origin read buffer is this share (one in this many bytes) of
/// `cache.memory_capacity`, within [`ORIGIN_READ_BUFFER_LEAST`] and
/// [`ORIGIN_READ_BUFFER_MOST`].
///
/// Every stream to or from an origin holds about two of them (the one being read into and
/// the chunk last handed on), which no budget bounds: 128 concurrent streams (64 clients
/// stalled on unstored 1 MiB bodies beside 64 unique 1 MiB misses) took a 64 MiB node to
/// 1.27x its capacity at 128 KiB and 1.07x at 64 KiB, while kept 1 MiB misses cost about
/// 1.08x the CPU at 64 KiB and 100 KiB and unstored 1 MiB misses the same
/// (`benches/memory_footprint.sh`, `benches/cpu_per_request.sh`). A node given little
/// memory gets the smaller buffers; one of 128 MiB and more reads as before.
const ORIGIN_READ_BUFFER_SHARE: u64 = 1024;
/// The least default origin read buffer: reads below it cost more CPU per byte than the
/// memory they save is worth, and the largest response head taken from an origin stays
/// four times nginx's default (`proxy_buffer_size`, 8 KiB).
const ORIGIN_READ_BUFFER_LEAST: u64 = 32 << 10;
/// The most a default origin read buffer is (what it was before it followed the capacity).
const ORIGIN_READ_BUFFER_MOST: u64 = 128 << 10;

impl Config {
    /// How large an HTTP/1 origin connection's read buffer may grow:
    /// `upstream.max_read_buffer`, or its default for `cache.memory_capacity`.
    pub fn origin_read_buffer(&self) -> ByteSize {
        self.upstream.max_read_buffer.unwrap_or_else(|| {
            ByteSize(
                (self.cache.memory_capacity.as_u64() / ORIGIN_READ_BUFFER_SHARE)
                    .clamp(ORIGIN_READ_BUFFER_LEAST, ORIGIN_READ_BUFFER_MOST),
            )
        })
    }

    /// Loads defaults < `file` < `OUTPOST_` environment < `flags`, then validates.
    ///
    /// # Errors
    /// A missing or unreadable file, a syntax error, an unknown key, a malformed value (URL,
    /// size, duration, address, CIDR) or an inconsistent combination; each names its source
    /// and key.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        Self::load_with_env(file, flags, env_layer())
    }

    /// As [`Config::load`], with the environment layer supplied (tests pass a fixed one).
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_with_env(
        file: Option<&Path>,
        flags: &FlagOverrides,
        env: Env,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            // figment silently ignores a missing file and searches parent folders for a
            // relative one: check the operator's path ourselves and read exactly it.
            std::fs::metadata(path).map_err(|cause| ConfigError::FileUnreadable {
                path: path.to_path_buf(),
                cause,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = flags.merge_into(figment.merge(env));
        let source_name =
            file.map_or_else(|| "configuration".to_string(), |p| p.display().to_string());
        Self::extract(&figment, flags, &source_name)
    }

    /// Builds a config from TOML text over the defaults, with no environment layer: for
    /// embedding and tests.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_toml_str(text: &str, flags: &FlagOverrides) -> Result<Config, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        Self::extract(&flags.merge_into(figment), flags, "TOML text")
    }

    /// What TLS connections are asked for unless their SNI names a site with its own
    /// (`tls.client_ca_file`).
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.tls.client_ca_file.as_ref().map(|ca_file| ClientAuth {
            ca_file: ca_file.clone(),
            optional: self.tls.client_cert_optional,
            crl_files: self.tls.client_crl_files.clone(),
        })
    }

    /// What TLS connections for `site`'s hosts are asked for: its own, else the global.
    pub fn site_client_auth(&self, site: &SiteConfig) -> Option<ClientAuth> {
        match &site.tls_client_ca_file {
            Some(ca_file) => Some(ClientAuth {
                ca_file: ca_file.clone(),
                optional: site.tls_client_cert_optional,
                crl_files: site.tls_client_crl_files.clone(),
            }),
            None => self.client_auth(),
        }
    }

    /// The distinct client authentications of the TLS listeners: the global one first,
    /// then each that a site sets, in the order of `all_sites`. A connection is verified
    /// under one of them, and serves only sites that ask the same
    /// ([`Config::client_auth_index`]).
    pub fn client_auths(&self) -> Vec<Option<ClientAuth>> {
        let mut auths = vec![self.client_auth()];
        for site in self.all_sites() {
            let auth = self.site_client_auth(&site);
            if !auths.contains(&auth) {
                auths.push(auth);
            }
        }
        auths
    }

    /// Where `site`'s client authentication is in [`Config::client_auths`].
    pub fn client_auth_index(&self, site: &SiteConfig, auths: &[Option<ClientAuth>]) -> usize {
        let auth = self.site_client_auth(site);
        auths.iter().position(|known| *known == auth).unwrap_or(0)
    }

    /// The configured sites and those the mirror's registries mount (any Host, a path
    /// prefix each, stripped before the origin).
    pub fn all_sites(&self) -> Vec<SiteConfig> {
        let mut sites = self.sites.clone();
        for registry in &self.mirror.registries {
            let mount = |path: String, origin: &OriginUrl, name: String| SiteConfig {
                hosts: vec!["*".to_string()],
                path_prefix: Some(path),
                origin: Some(origin.clone()),
                pool: None,
                tls_cert: None,
                tls_key: None,
                tls_ocsp_response: None,
                tls_client_ca_file: None,
                tls_client_cert_optional: false,
                tls_client_crl_files: Vec::new(),
                redirect_https: false,
                hsts: None,
                host_header: Some(HostHeaderSetting::Origin),
                strip_prefix: true,
                name: Some(name),
            };
            sites.push(mount(
                registry.path.clone(),
                &registry.upstream,
                registry.name.clone(),
            ));
            if let Some(files) = &registry.files {
                sites.push(mount(
                    registry.files_path(),
                    files,
                    format!("{}-files", registry.name),
                ));
            }
        }
        sites
    }

    fn extract(
        figment: &Figment,
        flags: &FlagOverrides,
        source_name: &str,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract()?;
        flags.apply_origin_pool(&mut config)?;
        config.validate(source_name)?;
        Ok(config)
    }

    /// Checks what types alone cannot: ranges and consistency between settings. Every
    /// problem is reported, not just the first.
    fn validate(&self, source_name: &str) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        self.check_identity(&mut problems);
        check_server(&self.server, &mut problems);
        check_upstream(&self.upstream, &mut problems);
        check_forward_proxy(&self.forward_proxy, &mut problems);
        check_cache(&self.cache, &mut problems);
        check_compression(&self.compression, &mut problems);
        for (index, site) in self.sites.iter().enumerate() {
            check_site(index, site, &mut problems);
            check_origin_choice(
                &format!("sites[{index}]"),
                (site.origin.as_ref(), site.pool.as_deref()),
                &self.pools,
                &mut problems,
            );
        }
        if self.origin.is_some() || self.pool.is_some() {
            check_origin_choice(
                "",
                (self.origin.as_ref(), self.pool.as_deref()),
                &self.pools,
                &mut problems,
            );
        }
        for (index, pool) in self.pools.iter().enumerate() {
            check_pool(index, pool, &self.pools[..index], &mut problems);
        }
        check_mirror(&self.mirror, &mut problems);
        self.check_tls(&mut problems);
        problems.into_result(source_name)
    }

    /// A certificate comes with its key; TLS listeners need some certificate to serve; HSTS
    /// values are header values.
    fn check_tls(&self, problems: &mut Problems) {
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            problems.add("tls.key", "set tls.cert and tls.key together");
        }
        if self.tls.ocsp_response.is_some() && self.tls.cert.is_none() {
            problems.add("tls.ocsp_response", "an OCSP response needs tls.cert");
        }
        if self.tls.client_ca_file.is_none() {
            let needing_it = [
                ("tls.client_cert_optional", self.tls.client_cert_optional),
                (
                    "tls.client_crl_files",
                    !self.tls.client_crl_files.is_empty(),
                ),
                (
                    "tls.forward_client_cert",
                    self.tls.forward_client_cert
                        && !self.sites.iter().any(|s| s.tls_client_ca_file.is_some()),
                ),
            ];
            for (setting, _) in needing_it.iter().filter(|(_, set)| *set) {
                problems.add(
                    *setting,
                    "client certificates need tls.client_ca_file (the CAs that issue them), or a site's tls_client_ca_file for tls.forward_client_cert",
                );
            }
        }
        let any_site_cert = self.sites.iter().any(|site| site.tls_cert.is_some());
        if !self.tls.listen.is_empty() && self.tls.cert.is_none() && !any_site_cert {
            problems.add(
                "tls.cert",
                "TLS listeners need a certificate: tls.cert/tls.key or a site's tls_cert/tls_key",
            );
        }
        self.check_site_client_auth(problems);
        for (index, site) in self.sites.iter().enumerate() {
            if site.tls_cert.is_some() != site.tls_key.is_some() {
                problems.add(
                    format!("sites[{index}].tls_key"),
                    "set tls_cert and tls_key together",
                );
            }
            if site.tls_ocsp_response.is_some() && site.tls_cert.is_none() {
                problems.add(
                    format!("sites[{index}].tls_ocsp_response"),
                    "an OCSP response needs tls_cert",
                );
            }
            if let Some(hsts) = &site.hsts {
                if http::HeaderValue::from_str(hsts).is_err() || !hsts.contains("max-age=") {
                    problems.add(format!("sites[{index}].hsts"), format!("`{hsts}` is not a Strict-Transport-Security value (max-age=SECONDS[; includeSubDomains])"));
                }
            }
        }
    }

    /// A site's client-certificate settings need its CA file; sites sharing a host ask
    /// its clients for the same certificates, since TLS asks once per connection, by SNI.
    fn check_site_client_auth(&self, problems: &mut Problems) {
        for (index, site) in self.sites.iter().enumerate() {
            if site.tls_client_ca_file.is_none()
                && (site.tls_client_cert_optional || !site.tls_client_crl_files.is_empty())
            {
                problems.add(
                    format!("sites[{index}].tls_client_ca_file"),
                    "tls_client_cert_optional and tls_client_crl_files need tls_client_ca_file",
                );
            }
            let auth = self.site_client_auth(site);
            let clash = self.sites[..index]
                .iter()
                .enumerate()
                .find_map(|(earlier, other)| {
                    let shared = site
                        .hosts
                        .iter()
                        .find(|host| other.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))?;
                    (self.site_client_auth(other) != auth).then_some((earlier, shared))
                });
            if let Some((earlier, host)) = clash {
                problems.add(
                    format!("sites[{index}].tls_client_ca_file"),
                    format!("host `{host}` is also sites[{earlier}]'s, which asks its clients for other certificates: a TLS connection is asked once, by its SNI, so sites sharing a host must agree"),
                );
            }
        }
    }

    fn check_identity(&self, problems: &mut Problems) {
        let is_token = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
        if self.proxy_name.is_empty() || !self.proxy_name.bytes().all(is_token) {
            problems.add(
                "proxy_name",
                format!(
                    "`{}` must be a non-empty token of letters, digits, `-`, `.` or `_`",
                    self.proxy_name
                ),
            );
        }
        if self.origin.is_none()
            && self.pool.is_none()
            && self.sites.is_empty()
            && self.mirror.registries.is_empty()
        {
            problems.add(
                "origin",
                "no origin: set `origin` (or --origin) or at least one [[sites]] entry",
            );
        }
        if let Some(admin) = self.admin {
            if !admin.ip().is_loopback() && self.admin_token.is_none() {
                problems.add(
                    "admin",
                    format!("{admin} is not a loopback address: set admin_token to expose the admin listener"),
                );
            }
        }
        if let Some(token) = self.admin_token.as_ref().map(Secret::expose) {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                problems.add(
                    "admin_token",
                    "must be at least 16 printable characters without spaces",
                );
            }
        }
    }
    /// The effective settings as TOML, for `outpost check`.
    pub fn to_toml(&self) -> String {
        // invariant: every field serialises to TOML (no maps with non-string keys, no None
        // inside arrays); the test `effective_config_round_trips` guards it.
        toml::to_string_pretty(self).expect("config serialises to TOML")
    }

    /// `compression.encoder_memory_budget`, or its default: a sixteenth of
    /// `cache.memory_capacity` (half the fills' default budget: an encoder holds its tables
    /// for as long as its client takes, as a fill holds its body).
    pub fn effective_encoder_memory_budget(&self) -> u64 {
        self.compression
            .encoder_memory_budget
            .map_or(self.cache.memory_capacity.as_u64() / 16, |budget| {
                budget.as_u64()
            })
    }

    /// Settings left unset whose value is worked out from others, as TOML comments (so
    /// `outpost check`'s output stays a config file that still derives them).
    pub fn derived_comments(&self) -> String {
        let mut derived = Vec::new();
        if self.cache.fill_memory_budget.is_none() {
            let budget = ByteSize(self.cache.effective_fill_memory_budget());
            derived.push(format!(
                "# cache.fill_memory_budget = \"{budget}\"  # an eighth of cache.memory_capacity\n"
            ));
        }
        if self.cache.memory_reserve.is_none() {
            let reserve = ByteSize(self.cache.effective_memory_reserve());
            derived.push(format!(
                "# cache.memory_reserve = \"{reserve}\"  # the process's own needs, out of cache.memory_capacity\n"
            ));
        }
        // Not a setting, but what the capacity comes to once the rest is set aside.
        derived.push(format!(
            "# the memory tier holds {}: cache.memory_capacity less cache.fill_memory_budget and cache.memory_reserve\n",
            ByteSize(self.cache.memory_tier_capacity())
        ));
        if self.compression.encoder_memory_budget.is_none() {
            let budget = ByteSize(self.effective_encoder_memory_budget());
            derived.push(format!(
                "# compression.encoder_memory_budget = \"{budget}\"  # a sixteenth of cache.memory_capacity\n"
            ));
        }
        if self.upstream.max_read_buffer.is_none() {
            let buffer = self.origin_read_buffer();
            derived.push(format!(
                "# upstream.max_read_buffer = \"{buffer}\"  # a thousandth of cache.memory_capacity, 32KiB-128KiB\n"
            ));
        }
        derived.extend(self.client_auth_comments());
        if derived.is_empty() {
            return String::new();
        }
        format!("\n# Derived (unset above):\n{}", derived.concat())
    }

    /// Which TLS clients must present a certificate, site by site, once any is asked for:
    /// what the handshake asks by SNI, spelled out for an operator checking it.
    fn client_auth_comments(&self) -> Vec<String> {
        let any_site_asks = self.sites.iter().any(|s| s.tls_client_ca_file.is_some());
        if self.tls.client_ca_file.is_none() && !any_site_asks {
            return Vec::new();
        }
        let asks = |auth: Option<&ClientAuth>| match auth {
            None => "no certificate asked".to_string(),
            Some(auth) => format!(
                "a certificate {} from {}",
                if auth.optional {
                    "verified if sent,"
                } else {
                    "required,"
                },
                auth.ca_file.display()
            ),
        };
        let mut lines = vec![format!(
            "# TLS clients, by default: {}\n",
            asks(self.client_auth().as_ref())
        )];
        for (index, site) in self.sites.iter().enumerate() {
            if site.tls_client_ca_file.is_some() {
                lines.push(format!(
                    "# TLS clients of sites[{index}] ({}): {}\n",
                    site.hosts.join(", "),
                    asks(self.site_client_auth(site).as_ref())
                ));
            }
        }
        lines.push(
            "# cleartext requests to a site that requires one: 403, but from forwarding.trusted_proxies\n"
                .to_string(),
        );
        lines
    }
}

/// Problems found while validating; each names its key.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push((key.into(), message.into()));
    }

    fn at_least_one(&mut self, key: &str, value: usize) {
        if value == 0 {
            self.add(key, "must be at least 1");
        }
    }

    fn at_least_bytes(&mut self, key: &str, value: ByteSize, minimum: ByteSize) {
        if value < minimum {
            self.add(key, format!("{value} is below the {minimum} minimum"));
        }
    }

    fn positive(&mut self, key: &str, value: HumanDuration) {
        if value.get().is_zero() {
            self.add(key, "must be greater than zero");
        }
    }

    fn into_result(self, source_name: &str) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(ConfigError::Rejected {
            source_name: source_name.to_string(),
            problems: self.0,
        })
    }
}

/// The smallest buffer hyper's HTTP/1 connections take (it refuses a smaller one).
const HTTP1_MIN_BUFFER: ByteSize = ByteSize(8 * 1024);

fn check_server(server: &ServerConfig, problems: &mut Problems) {
    problems.positive("server.tunnel_idle_timeout", server.tunnel_idle_timeout);
    problems.positive("server.tunnel_max_duration", server.tunnel_max_duration);
    problems.at_least_one("server.max_connections", server.max_connections);
    problems.at_least_one("server.max_headers", server.max_headers);
    problems.at_least_bytes(
        "server.max_header_bytes",
        server.max_header_bytes,
        HTTP1_MIN_BUFFER,
    );
    problems.positive("server.header_read_timeout", server.header_read_timeout);
    problems.positive("server.idle_timeout", server.idle_timeout);
}

fn check_forward_proxy(forward: &ForwardProxyConfig, problems: &mut Problems) {
    let lists = [
        ("forward_proxy.connect_allow", &forward.connect_allow),
        ("forward_proxy.allow", &forward.allow),
    ];
    for (key, patterns) in lists {
        for (index, pattern) in patterns.iter().enumerate() {
            let valid = pattern.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !port.is_empty()
                    && glob::Pattern::new(host).is_ok()
                    && glob::Pattern::new(port).is_ok()
            });
            if !valid {
                problems.add(
                    format!("{key}[{index}]"),
                    format!("`{pattern}` is not a host:port pattern (`*.example.com:80`)"),
                );
            }
        }
    }
}

fn check_upstream(upstream: &UpstreamConfig, problems: &mut Problems) {
    problems.positive("upstream.connect_timeout", upstream.connect_timeout);
    if let Some(max_read_buffer) = upstream.max_read_buffer {
        problems.at_least_bytes(
            "upstream.max_read_buffer",
            max_read_buffer,
            HTTP1_MIN_BUFFER,
        );
    }
    problems.positive(
        "upstream.response_header_timeout",
        upstream.response_header_timeout,
    );
    problems.positive("upstream.body_read_timeout", upstream.body_read_timeout);
    problems.at_least_one("upstream.max_connections", upstream.max_connections);
    problems.at_least_one(
        "upstream.max_connections_per_origin",
        upstream.max_connections_per_origin,
    );
    problems.at_least_one(
        "upstream.max_streams_per_origin",
        upstream.max_streams_per_origin,
    );
    problems.at_least_one(
        "upstream.max_streams_per_connection",
        upstream.max_streams_per_connection,
    );
    check_origin_tls(
        "upstream",
        [
            &upstream.ca_file,
            &upstream.client_cert,
            &upstream.client_key,
        ],
        problems,
    );
}

/// The TLS files of `section` (`ca_file`, `client_cert`, `client_key`): each readable, and
/// the certificate and its key set together.
fn check_origin_tls(section: &str, files: [&Option<PathBuf>; 3], problems: &mut Problems) {
    let names = ["ca_file", "client_cert", "client_key"];
    for (name, path) in names.iter().zip(files) {
        if let Some(path) = path {
            if let Err(err) = std::fs::metadata(path) {
                problems.add(
                    format!("{section}.{name}"),
                    format!("{}: {err}", path.display()),
                );
            }
        }
    }
    if files[1].is_some() != files[2].is_some() {
        problems.add(
            format!("{section}.client_cert"),
            "client_cert and client_key go together: set both or neither".to_string(),
        );
    }
}

fn check_cache(cache: &CacheConfig, problems: &mut Problems) {
    for (index, rule) in cache.rules.iter().enumerate() {
        let key = format!("cache.rules[{index}]");
        if rule.glob.is_none() == rule.prefix.is_none() {
            problems.add(&key, "needs exactly one of `match` (a glob) or `prefix`");
        }
        if let Some(glob) = &rule.glob {
            if let Err(err) = glob::Pattern::new(glob) {
                problems.add(format!("{key}.match"), format!("`{glob}`: {err}"));
            }
        }
        if rule.immutable && rule.revalidate {
            problems.add(&key, "cannot be both `immutable` and `revalidate`");
        }
    }
    if !(0.0..=1.0).contains(&cache.heuristic_fraction) {
        problems.add(
            "cache.heuristic_fraction",
            format!("{} is not between 0 and 1", cache.heuristic_fraction),
        );
    }
    problems.at_least_one("cache.max_variants", cache.max_variants);
    problems.at_least_one("cache.max_fills", cache.max_fills);
    problems.at_least_one("cache.max_fills_per_origin", cache.max_fills_per_origin);
    if cache.max_object_size > cache.memory_capacity {
        problems.add(
            "cache.max_object_size",
            format!(
                "{} is larger than cache.memory_capacity ({})",
                cache.max_object_size, cache.memory_capacity
            ),
        );
    }
    if let Some(reserve) = cache
        .memory_reserve
        .filter(|reserve| *reserve >= cache.memory_capacity)
    {
        problems.add(
            "cache.memory_reserve",
            format!(
                "{reserve} leaves nothing of cache.memory_capacity ({}) to the caches",
                cache.memory_capacity
            ),
        );
    }
    // Small bodies share pack files; a large one belongs in a file of its own.
    if cache.disk_inline_max.as_u64() > MAX_DISK_INLINE {
        problems.add(
            "cache.disk_inline_max",
            format!(
                "{} is larger than {} (bodies this small share pack files; larger ones get a file of their own)",
                cache.disk_inline_max,
                ByteSize(MAX_DISK_INLINE)
            ),
        );
    }
}

/// The largest `cache.disk_inline_max`.
const MAX_DISK_INLINE: u64 = 1 << 20;

fn check_compression(compression: &CompressionConfig, problems: &mut Problems) {
    for (key, level, range) in [
        ("compression.gzip_level", compression.gzip_level, 1..=9),
        ("compression.brotli_level", compression.brotli_level, 0..=11),
        ("compression.zstd_level", compression.zstd_level, 1..=19),
    ] {
        if !range.contains(&level) {
            problems.add(
                key,
                format!("{level} is outside {}..={}", range.start(), range.end()),
            );
        }
    }
}

/// A site (or the default site, `prefix` empty) names exactly one of an origin URL and a
/// pool, and the pool exists.
fn check_origin_choice(
    prefix: &str,
    (origin, pool): (Option<&OriginUrl>, Option<&str>),
    pools: &[PoolConfig],
    problems: &mut Problems,
) {
    let key = |field: &str| {
        if prefix.is_empty() {
            field.to_string()
        } else {
            format!("{prefix}.{field}")
        }
    };
    match (origin, pool) {
        (Some(_), Some(_)) => problems.add(key("pool"), "set `origin` or `pool`, not both"),
        (None, None) => problems.add(key("origin"), "set `origin` or `pool`"),
        (None, Some(name)) if !pools.iter().any(|p| p.name == name) => {
            problems.add(key("pool"), format!("no [[pools]] entry is named `{name}`"));
        }
        _ => {}
    }
}

fn check_pool(index: usize, pool: &PoolConfig, earlier: &[PoolConfig], problems: &mut Problems) {
    let key = |field: &str| format!("pools[{index}].{field}");
    let is_name_byte = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
    if pool.name.is_empty() || !pool.name.bytes().all(is_name_byte) {
        problems.add(
            key("name"),
            format!("`{}` must be letters, digits, `-`, `.` or `_`", pool.name),
        );
    }
    if earlier.iter().any(|p| p.name == pool.name) {
        problems.add(key("name"), format!("`{}` names two pools", pool.name));
    }
    if pool.servers.is_empty() {
        problems.add(key("servers"), "a pool needs at least one server");
    }
    if pool.servers.iter().all(|server| server.backup) && !pool.servers.is_empty() {
        problems.add(
            key("servers"),
            "every server is a backup: at least one must not be",
        );
    }
    for (n, server) in pool.servers.iter().enumerate() {
        if server.weight == 0 || server.weight > 1000 {
            problems.add(
                format!("pools[{index}].servers[{n}].weight"),
                "must be 1 to 1000",
            );
        }
        if server.max_connections == Some(0) {
            problems.add(
                format!("pools[{index}].servers[{n}].max_connections"),
                "must be at least 1",
            );
        }
    }
    problems.positive(&key("resolve_interval"), pool.resolve_interval);
    check_origin_tls(
        &format!("pools[{index}]"),
        [&pool.ca_file, &pool.client_cert, &pool.client_key],
        problems,
    );
    if let Some(health) = &pool.health {
        problems.positive(&key("health.interval"), health.interval);
        problems.positive(&key("health.timeout"), health.timeout);
        problems.at_least_one(
            &key("health.healthy_threshold"),
            health.healthy_threshold as usize,
        );
        problems.at_least_one(
            &key("health.unhealthy_threshold"),
            health.unhealthy_threshold as usize,
        );
        if !health.path.starts_with('/') {
            problems.add(
                key("health.path"),
                format!("`{}` must start with `/`", health.path),
            );
        }
        if health.statuses.iter().any(|s| !(100..=599).contains(s)) {
            problems.add(key("health.statuses"), "statuses are 100 to 599");
        }
    }
    if !(0.0..=1.0).contains(&pool.passive.max_ejected_share) {
        problems.add(key("passive.max_ejected_share"), "must be between 0 and 1");
    }
    problems.at_least_one(&key("retry.max_attempts"), pool.retry.max_attempts as usize);
    if !(0.0..=10.0).contains(&pool.retry.budget) {
        problems.add(key("retry.budget"), "must be between 0 and 10");
    }
    if pool.retry.statuses.iter().any(|s| !(500..=599).contains(s)) {
        problems.add(key("retry.statuses"), "only 5xx statuses are retried");
    }
}

fn check_site(index: usize, site: &SiteConfig, problems: &mut Problems) {
    let key = |field: &str| format!("sites[{index}].{field}");
    if site.hosts.is_empty() {
        problems.add(key("hosts"), "a site needs at least one host");
    }
    for host in &site.hosts {
        let bare = host.strip_prefix("*.").unwrap_or(host);
        let is_host_byte = |b: u8| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b);
        if bare.is_empty() || bare.contains('*') || !bare.bytes().all(is_host_byte) {
            problems.add(key("hosts"), format!("`{host}` is not a host name"));
        }
    }
    if let Some(prefix) = &site.path_prefix {
        if !prefix.starts_with('/') {
            problems.add(
                key("path_prefix"),
                format!("`{prefix}` must start with `/`"),
            );
        }
    }
}

fn check_mirror(mirror: &MirrorConfig, problems: &mut Problems) {
    if let Some(url) = &mirror.public_url {
        match Url::parse(url) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https")
                    && parsed.host().is_some()
                    && parsed.query().is_none() => {}
            _ => problems.add(
                "mirror.public_url",
                format!("`{url}` is not an http(s) URL without a query"),
            ),
        }
    }
    for (index, registry) in mirror.registries.iter().enumerate() {
        let key = |field: &str| format!("mirror.registries[{index}].{field}");
        let path = &registry.path;
        if !path.starts_with('/') || !path.ends_with('/') || path.len() < 3 {
            problems.add(
                key("path"),
                format!("`{path}` must start and end with `/` (`/pypi/`)"),
            );
        }
        let earlier = &mirror.registries[..index];
        if earlier.iter().any(|r| r.name == registry.name) {
            problems.add(
                key("name"),
                format!("`{}` names two registries", registry.name),
            );
        }
        if let Some(other) = earlier
            .iter()
            .find(|r| r.path.starts_with(path.as_str()) || path.starts_with(r.path.as_str()))
        {
            problems.add(
                key("path"),
                format!(
                    "`{path}` overlaps registry `{}` at `{}`",
                    other.name, other.path
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The admin token is never printed: not by `outpost check`, not by `Debug`.
    #[test]
    fn the_admin_token_is_never_printed() {
        let config = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\nadmin_token = \"s3cret-token-0123456789\"",
            &FlagOverrides::default(),
        )
        .unwrap();
        assert!(!config.to_toml().contains("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
        assert_eq!(
            config.admin_token.as_ref().map(Secret::expose),
            Some("s3cret-token-0123456789")
        );
    }

    /// Unset, the origin read buffer follows the memory the node is given, within its
    /// bounds; set, it is what it says.
    #[test]
    fn the_origin_read_buffer_follows_the_memory_capacity_unless_set() {
        let at = |capacity: u64| {
            let mut config = Config::default();
            config.cache.memory_capacity = ByteSize(capacity);
            config.origin_read_buffer().as_u64()
        };
        assert_eq!(at(16 << 20), 32 << 10, "never below the least");
        assert_eq!(at(64 << 20), 64 << 10);
        assert_eq!(at(100 << 20), 100 << 10);
        assert_eq!(at(256 << 20), 128 << 10, "never above the most");
        let set = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\n[cache]\nmemory_capacity = \"64MiB\"\n\
             [upstream]\nmax_read_buffer = \"256KiB\"\n",
            &FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(set.origin_read_buffer().as_u64(), 256 << 10);
        assert!(!set.derived_comments().contains("max_read_buffer"));
        let mut derived = Config::default();
        derived.cache.memory_capacity = ByteSize(64 << 20);
        assert!(derived
            .derived_comments()
            .contains("# upstream.max_read_buffer = \"64KiB\""));
    }

    /// Every problem in a configuration is reported at once, each with its key.
    #[test]
    fn all_problems_are_reported_together() {
        let err = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\n[cache]\nmax_variants = 0\nheuristic_fraction = 2.0\n\
             disk_inline_max = \"2MiB\"\n[compression]\ngzip_level = 42\n[upstream]\nmax_read_buffer = \"4KiB\"\n\
             [[sites]]\nhosts = [\"bad host\"]\norigin = \"http://127.0.0.1:2\"\n",
            &FlagOverrides::default(),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "cache.max_variants",
            "cache.heuristic_fraction",
            "cache.disk_inline_max",
            "compression.gzip_level",
            "upstream.max_read_buffer",
            "sites[0].hosts",
        ] {
            assert!(
                err.contains(&format!("key `{key}`")),
                "{key} missing from:\n{err}"
            );
        }
        assert_eq!(err.lines().count(), 6, "{err}");
    }

    /// Unset, the fills' memory budget is an eighth of the memory tier's capacity.
    #[test]
    fn the_fill_budget_follows_the_memory_capacity_unless_set() {
        let derived = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\n[cache]\nmemory_capacity = \"64MiB\"\n",
            &FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(derived.cache.effective_fill_memory_budget(), 8 << 20);
        let set = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\n[cache]\nfill_memory_budget = \"100MiB\"\n",
            &FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(set.cache.effective_fill_memory_budget(), 100 << 20);
        // The tier keeps the capacity less the fills' budget and the reserve (at 64 MiB,
        // three quarters of what passes 32 MiB), and never less than an eighth.
        assert_eq!(derived.cache.effective_memory_reserve(), 24 << 20);
        assert_eq!(derived.cache.memory_tier_capacity(), 32 << 20);
        assert!(derived
            .derived_comments()
            .contains("# the memory tier holds 32MiB"));
        assert_eq!(set.cache.memory_tier_capacity(), (256 - 100 - 30) << 20);
        let mut greedy = set.cache.clone();
        greedy.fill_memory_budget = Some(ByteSize(300 << 20));
        assert_eq!(greedy.memory_tier_capacity(), 32 << 20);
        assert_eq!(derived.effective_encoder_memory_budget(), 4 << 20);
        assert!(derived
            .derived_comments()
            .contains("# compression.encoder_memory_budget = \"4MiB\""));
        let encoders = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\n[compression]\nencoder_memory_budget = \"1MiB\"\n",
            &FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(encoders.effective_encoder_memory_budget(), 1 << 20);
        assert!(!encoders
            .derived_comments()
            .contains("encoder_memory_budget"));
    }

    /// `outpost check` spells out which TLS clients must present a certificate, site by
    /// site, once any is asked for; a site sharing a host with another that asks other
    /// certificates is refused (a TLS connection is asked once, by SNI).
    #[test]
    fn check_says_which_clients_must_present_certificates() {
        let site = |host: &str, extra: &str| {
            format!("[[sites]]\nhosts = [\"{host}\"]\norigin = \"http://127.0.0.1:1\"\n{extra}\n")
        };
        let plain = Config::from_toml_str(&site("a.test", ""), &FlagOverrides::default()).unwrap();
        assert!(!plain.derived_comments().contains("TLS clients"));
        let toml = format!(
            "[tls]\nclient_ca_file = \"/ca/staff.pem\"\nclient_cert_optional = true\n{}{}",
            site("a.test", ""),
            site("b.test", "tls_client_ca_file = \"/ca/b.pem\"")
        );
        let mixed = Config::from_toml_str(&toml, &FlagOverrides::default()).unwrap();
        let said = mixed.derived_comments();
        assert!(
            said.contains(
                "# TLS clients, by default: a certificate verified if sent, from /ca/staff.pem\n"
            ) && said.contains(
                "# TLS clients of sites[1] (b.test): a certificate required, from /ca/b.pem\n"
            ),
            "{said}"
        );
        let clash = format!("{toml}{}", site("B.test", "path_prefix = \"/x/\""));
        let refused = Config::from_toml_str(&clash, &FlagOverrides::default()).unwrap_err();
        assert!(
            refused.to_string().contains("sites[2].tls_client_ca_file"),
            "{refused}"
        );
    }

    /// The process's reserve comes out of the tier's share: in full from 72 MiB up, ramped
    /// in above 32 MiB so a larger capacity never leaves the tier less; set, it is taken as
    /// given, and one that leaves the caches nothing is refused.
    #[test]
    fn the_process_reserve_comes_out_of_the_tier_from_mid_sized_capacities() {
        let with_capacity = |mib: u64| CacheConfig {
            memory_capacity: ByteSize(mib << 20),
            ..CacheConfig::default()
        };
        assert_eq!(with_capacity(128).effective_memory_reserve(), 30 << 20);
        assert_eq!(
            with_capacity(128).memory_tier_capacity(),
            (128 - 16 - 30) << 20
        );
        assert_eq!(with_capacity(48).effective_memory_reserve(), 12 << 20);
        assert_eq!(with_capacity(32).effective_memory_reserve(), 0);
        assert_eq!(with_capacity(8).memory_tier_capacity(), 7 << 20);
        let mut previous = 0;
        for mib in (1..=512).step_by(3) {
            let tier = with_capacity(mib).memory_tier_capacity();
            assert!(
                tier >= previous,
                "{mib} MiB leaves the tier less than a smaller capacity"
            );
            previous = tier;
        }
        let set = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\n[cache]\nmemory_capacity = \"128MiB\"\nmemory_reserve = \"0\"\n",
            &FlagOverrides::default(),
        )
        .unwrap();
        assert_eq!(set.cache.memory_tier_capacity(), 112 << 20);
        assert!(!set.derived_comments().contains("memory_reserve ="));
        let derived = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\n[cache]\nmemory_capacity = \"128MiB\"\n",
            &FlagOverrides::default(),
        )
        .unwrap();
        assert!(derived
            .derived_comments()
            .contains("# cache.memory_reserve = \"30MiB\""));
        let err = Config::from_toml_str(
            "origin = \"http://127.0.0.1:1\"\n[cache]\nmemory_capacity = \"32MiB\"\nmemory_reserve = \"32MiB\"\n",
            &FlagOverrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cache.memory_reserve"), "{err}");
    }

    /// A mistyped setting is named with the nearest known one, and the known ones listed;
    /// a name near none gets the list alone.
    #[test]
    fn a_mistyped_setting_gets_the_nearest_known_name() {
        for (toml, expected) in [
            (
                "[cache]\nmemory_capacty = \"1GiB\"",
                "did you mean `memory_capacity`?",
            ),
            ("[cach]\nx = 1", "did you mean `cache`?"),
            (
                "[upstream]\nconect_timeout = \"1s\"",
                "did you mean `connect_timeout`?",
            ),
        ] {
            let text = format!("origin = \"http://127.0.0.1:1\"\n{toml}");
            let err = Config::from_toml_str(&text, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{expected} missing from: {err}");
            assert!(err.contains("known here:"), "{err}");
        }
        let text = "[upstream]\nprotocol = \"http2\"";
        let err = Config::from_toml_str(text, &FlagOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`http2` is not a choice here; did you mean `http1`?"),
            "{err}"
        );
        let err = Config::from_toml_str("[cache]\nzzz = 1", &FlagOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("did you mean"), "{err}");
        assert!(err.contains("no such setting"), "{err}");
    }

    /// Header names, Host values and codings are checked when read, naming the key.
    #[test]
    fn typed_values_are_checked_when_read() {
        for (toml, key) in [
            ("[cache]\nsurrogate_key_header = \"not a header\"", "cache.surrogate_key_header"),
            ("[compression]\npreference = [\"lzma\"]", "compression.preference"),
            (
                "[[sites]]\nhosts = [\"a\"]\norigin = \"http://127.0.0.1:2\"\nhost_header = \"a\\u0001\"",
                "sites.0.host_header",
            ),
            ("[forward_proxy]\nallow = [\"example.com\"]", "forward_proxy.allow[0]"),
            ("[forward_proxy]\nconnect_allow = [\":443\"]", "forward_proxy.connect_allow[0]"),
            ("[upstream]\nprotocol = \"h3\"", "protocol"),
        ] {
            let text = format!("origin = \"http://127.0.0.1:1\"\n{toml}");
            let err = Config::from_toml_str(&text, &FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key} missing from: {err}");
        }
    }

    /// The env filter must know every top-level key, or that key could not be set from the
    /// environment.
    #[test]
    fn top_level_keys_match_the_config_struct() {
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        let mut known = TOP_LEVEL_KEYS.to_vec();
        known.sort_unstable();
        assert_eq!(fields, known);
    }

    #[test]
    fn env_keys_are_matched_by_their_top_level_segment() {
        assert!(is_config_env_key("SERVER__IDLE_TIMEOUT"));
        assert!(is_config_env_key("listen"));
        assert!(!is_config_env_key("BIN"));
        assert!(!is_config_env_key("ARGS"));
    }

    #[test]
    fn byte_sizes_and_durations_round_trip_through_text() {
        for text in ["512", "64KiB", "10MiB", "2GiB"] {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.to_string(), text);
        }
        assert_eq!(
            "1h 30m".parse::<HumanDuration>().unwrap().get().as_secs(),
            5400
        );
        assert!("soon".parse::<HumanDuration>().is_err());
    }
}
