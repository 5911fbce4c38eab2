//! Origin pools: which server of a site's origin gets each request, whether it is fit to,
//! and what happens when it fails. A site's origin is always a pool: a `[[pools]]` entry,
//! or the pool of its one `origin` URL (which never ejects and never fails over: there is
//! nowhere else to go).
//!
//! A pool's members are its servers, a server configured by host name (over `http://`)
//! standing for every address the name resolves to, re-resolved every `resolve_interval`.
//! Selection ([`select`]) works on the members that may take requests now ([`health`]):
//! not drained by the operator, not failing active checks, not ejected for failing real
//! requests; backups only when no primary may. A failure before any of the response
//! arrived (no connection, a reset, no head in time, a configured 5xx) moves an idempotent
//! request with a replayable body to another member, within the pool's retry budget.
//!
//! A reload builds new pools but keeps the members (and their health) of servers that
//! remain; background checks and resolution run while the pools live.

pub mod health;
mod resolve;
pub mod select;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use parking_lot::Mutex;

use super::{replay_copy, OriginBody, Sent, Upstream, UpstreamSetupError};
use crate::body::Body;
use crate::config::{Config, OriginProtocol, OriginUrl, PoolConfig, Selection};
use crate::error::ProxyError;
use crate::limit::Limiter;
use crate::telemetry::metrics::{Metrics, PoolLabels, ServerErrorLabels, ServerLabels};
use health::{Health, Outcome, RetryBudget};
use select::{Candidate, Ring};

/// One address of a pool server: where requests go.
pub struct Member {
    /// `host:port` requests go to: the label in metrics and the admin API.
    pub address: String,
    /// The configured server it comes from, as written.
    pub server: String,
    /// `scheme://address/base-path`.
    pub url: OriginUrl,
    pub weight: u32,
    pub backup: bool,
    outstanding: AtomicUsize,
    /// Smooth round robin's running weight.
    current_weight: AtomicI64,
    health: Mutex<Health>,
    drained: AtomicBool,
    /// Its metric labels, made once rather than per request.
    labels: ServerLabels,
    /// Scheme, authority and Host value of forwarded requests, parsed once rather than
    /// formatted and parsed again per request; `None` if the address is no URI authority.
    target: Option<Target>,
}

/// What a forwarded request's URI and Host take from a member.
#[derive(Debug)]
struct Target {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    host: Option<HeaderValue>,
}

impl Member {
    fn new(pool: &str, server: &str, url: OriginUrl, weight: u32, backup: bool) -> Member {
        let port = url.url().port_or_known_default().unwrap_or(80);
        let host = url.authority();
        // Always with the port: the label operators name a member by.
        let address = match url.url().port() {
            Some(_) => host,
            None => format!("{host}:{port}"),
        };
        let target = address.parse().ok().map(|authority| Target {
            scheme: if url.is_https() {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            authority,
            host: HeaderValue::from_str(&url.authority()).ok(),
        });
        Member {
            target,
            labels: ServerLabels {
                pool: pool.to_string(),
                server: address.clone(),
            },
            address,
            server: server.to_string(),
            url,
            weight,
            backup,
            outstanding: AtomicUsize::new(0),
            current_weight: AtomicI64::new(0),
            health: Mutex::new(Health::default()),
            drained: AtomicBool::new(false),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test(address: &str, weight: u32) -> Member {
        let url: OriginUrl = format!("http://{address}").parse().expect("test address");
        Member::new("test", address, url, weight, false)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Relaxed)
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Relaxed)
    }

    /// `up`, `ejected`, `check-down` or `drained`, at `now`.
    pub fn state(&self, now: Instant) -> &'static str {
        let health = self.health.lock();
        if self.is_drained() {
            "drained"
        } else if health.is_check_down {
            "check-down"
        } else if health.is_ejected(now) {
            "ejected"
        } else {
            "up"
        }
    }
}

/// Counts a request on a member, for as long as it lives: until its response body is done
/// (the body holds it), or until the exchange fails.
struct Outstanding(Arc<Member>);

impl Outstanding {
    fn begin(member: &Arc<Member>) -> Outstanding {
        member.outstanding.fetch_add(1, Relaxed);
        Outstanding(Arc::clone(member))
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Relaxed);
    }
}

/// A pool's members and the hash ring over them, replaced whole when membership changes.
struct Membership {
    members: Vec<Arc<Member>>,
    ring: Ring,
}

/// How a request should be routed within the pool.
#[derive(Clone, Copy, Default)]
pub struct Routing<'a> {
    /// Bytes that choose the member on the hash ring: the cache key (consistent hashing)
    /// or a sticky cookie's value.
    pub affinity: Option<&'a [u8]>,
    /// Whether the value is a sticky session's (it applies whatever the selection).
    pub is_sticky: bool,
    /// Send the member's authority as Host (`host_header = "origin"`).
    pub host_from_server: bool,
}

/// What [`Pool::send`] got, from which member, in how many exchanges.
pub struct PoolSent {
    pub result: Result<Response<OriginBody>, ProxyError>,
    /// Exchanges with origins, retries on a closing connection included.
    pub exchanges: u32,
    pub member: Option<Arc<Member>>,
}

/// A named set of origin servers and how requests are spread over them.
pub struct Pool {
    pub name: String,
    config: PoolConfig,
    /// Configured with `[[pools]]` (else the pool of one site `origin`).
    is_configured: bool,
    membership: ArcSwap<Membership>,
    /// Serialises smooth round robin's weight updates.
    pick_lock: Mutex<()>,
    rotation: AtomicUsize,
    rng: Mutex<rand::rngs::SmallRng>,
    budget: RetryBudget,
    metrics: Arc<Metrics>,
    hosts_file: Option<PathBuf>,
    /// The longest wait for one try's response head.
    header_timeout: Duration,
    /// The HTTP version its servers speak.
    protocol: OriginProtocol,
    /// Its own clients, when it sets TLS of its own ([`Pools::connect_with`]); else the
    /// shared ones are used.
    own_upstream: OnceLock<Upstream>,
    /// The connection caps its servers' own `max_connections` are set with.
    limiter: OnceLock<Arc<Limiter>>,
}

impl Pool {
    fn new(
        config: PoolConfig,
        is_configured: bool,
        previous: Option<&Pool>,
        settings: &Config,
        metrics: &Arc<Metrics>,
    ) -> Pool {
        let hosts_file = settings.upstream.hosts_file.clone();
        let existing = previous.map(Pool::members).unwrap_or_default();
        let mut members = Vec::new();
        for server in &config.servers {
            let addresses = if is_configured && needs_resolution(&server.url) {
                resolve_now(&server.url, hosts_file.as_deref())
            } else {
                Vec::new()
            };
            members.extend(members_of(&config.name, server, &addresses, &existing));
        }
        // Per try: the retry setting, else the pool's, else the upstream default.
        let header_timeout = config
            .retry
            .per_try_timeout
            .or(config.response_header_timeout)
            .map_or(settings.upstream.response_header_timeout.get(), |t| t.get());
        let protocol = config.protocol.unwrap_or(settings.upstream.protocol);
        Pool {
            name: config.name.clone(),
            budget: RetryBudget::new(config.retry.budget, config.retry.budget_reserve),
            membership: ArcSwap::from_pointee(Membership {
                ring: Ring::new(&members),
                members,
            }),
            config,
            is_configured,
            pick_lock: Mutex::new(()),
            rotation: AtomicUsize::new(0),
            rng: Mutex::new(rand::SeedableRng::seed_from_u64(select::hash(
                format!("{:?}", std::time::SystemTime::now()).as_bytes(),
            ))),
            metrics: Arc::clone(metrics),
            hosts_file,
            header_timeout,
            protocol,
            own_upstream: OnceLock::new(),
            limiter: OnceLock::new(),
        }
    }

    /// Sets each member's own connection cap (its server's `max_connections`) with the
    /// limiter, before any connection to it is admitted.
    fn cap_members(&self) {
        let Some(limiter) = self.limiter.get() else {
            return;
        };
        for member in self.members() {
            let cap = self
                .config
                .servers
                .iter()
                .find(|server| server.url.to_string() == member.server)
                .and_then(|server| server.max_connections);
            if let (Some(cap), Some(target)) = (cap, &member.target) {
                limiter.cap_peer(target.authority.as_str(), cap);
            }
        }
    }

    /// The clients its exchanges and checks go through: its own, else `shared`.
    fn upstream<'a>(&'a self, shared: &'a Upstream) -> &'a Upstream {
        self.own_upstream.get().unwrap_or(shared)
    }

    /// A pool of the one server `url`, named `name`, that never ejects or fails over (a
    /// site's `origin` URL, a forward-proxy target).
    pub fn single(name: &str, url: OriginUrl, settings: &Config, metrics: &Arc<Metrics>) -> Pool {
        Pool::new(
            PoolConfig::from_origins(name, vec![url]),
            false,
            None,
            settings,
            metrics,
        )
    }

    /// Brings the per-member `up` gauge (1: may take requests) to the state at `now`.
    pub fn export_states(&self, now: Instant) {
        for member in self.members() {
            let labels = &member.labels;
            let up = member.state(now) == "up";
            self.metrics
                .pool_server_up
                .get_or_create(labels)
                .set(i64::from(up));
        }
    }

    /// Its members now.
    pub fn members(&self) -> Vec<Arc<Member>> {
        self.membership.load().members.clone()
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// A sticky session's value in `headers`: the configured cookie's or header's.
    pub fn sticky_value<'h>(&self, headers: &'h http::HeaderMap) -> Option<&'h [u8]> {
        if let Some(name) = &self.config.sticky_header {
            if let Some(value) = headers.get(name.get()) {
                return Some(value.as_bytes());
            }
        }
        let cookie = self.config.sticky_cookie.as_deref()?;
        headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == cookie)
            .map(|(_, value)| value.as_bytes())
    }

    /// Drains (no new requests) or enables the member at `address`; false if none is.
    pub fn set_drained(&self, address: &str, drained: bool) -> bool {
        let membership = self.membership.load();
        let mut found = false;
        for member in membership.members.iter().filter(|m| m.address == address) {
            member.drained.store(drained, Relaxed);
            found = true;
        }
        found
    }

    /// The member for a request: by the pool's selection among those that may take it,
    /// avoiding `tried` while another may. Primaries first, then backups; if every one is
    /// out, those out only for failed requests are used anyway (as nginx does), since
    /// answering nothing is no better.
    fn pick(
        &self,
        routing: &Routing<'_>,
        tried: &[Arc<Member>],
        now: Instant,
    ) -> Option<Arc<Member>> {
        let membership = self.membership.load();
        let slow_start = self.config.passive.slow_start.get();
        for despite_ejection in [false, true] {
            for despite_tried in [false, true] {
                for backups in [false, true] {
                    let may_take = |member: &Arc<Member>| {
                        if member.backup != backups
                            || member.is_drained()
                            || (!despite_tried && tried.iter().any(|t| Arc::ptr_eq(t, member)))
                        {
                            return None;
                        }
                        let health = member.health.lock();
                        let is_out =
                            health.is_check_down || (!despite_ejection && health.is_ejected(now));
                        (!is_out).then(|| health.effective_weight(member.weight, slow_start, now))
                    };
                    if let Some(chosen) = self.choose(&membership, routing, &may_take) {
                        return Some(chosen);
                    }
                }
            }
        }
        None
    }

    fn choose(
        &self,
        membership: &Membership,
        routing: &Routing<'_>,
        may_take: &dyn Fn(&Arc<Member>) -> Option<u64>,
    ) -> Option<Arc<Member>> {
        let hashed = routing.is_sticky || self.config.selection == Selection::ConsistentHash;
        if let (true, Some(key)) = (hashed, routing.affinity) {
            return membership
                .ring
                .walk(key)
                .map(|index| &membership.members[index])
                .find(|member| may_take(member).is_some())
                .cloned();
        }
        let candidates: Vec<Candidate<'_>> = membership
            .members
            .iter()
            .filter_map(|member| {
                Some(Candidate {
                    member,
                    weight: may_take(member)?,
                })
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let chosen = match self.config.selection {
            Selection::RoundRobin | Selection::ConsistentHash => {
                let _serial = self.pick_lock.lock();
                select::round_robin(&candidates)
            }
            Selection::LeastOutstanding => {
                select::least_outstanding(&candidates, self.rotation.fetch_add(1, Relaxed))
            }
            Selection::PowerOfTwo => select::power_of_two(&candidates, &mut *self.rng.lock()),
        };
        chosen.cloned()
    }

    /// Sends `request` (its URI origin-form) to a member, and to others while it fails in
    /// a way worth another try and the budget allows (see the module doc).
    pub async fn send(
        &self,
        upstream: &Upstream,
        request: Request<Body>,
        routing: Routing<'_>,
    ) -> PoolSent {
        self.budget.deposit();
        let max_attempts = if self.is_configured {
            self.config.retry.max_attempts.max(1)
        } else {
            1
        };
        let mut request = Some(request);
        let mut tried: Vec<Arc<Member>> = Vec::new();
        let mut exchanges = 0;
        loop {
            let Some(current) = request.take() else {
                return self.failed(ProxyError::Internal("no request to send".into()), exchanges);
            };
            let Some(member) = self.pick(&routing, &tried, Instant::now()) else {
                return self.failed(
                    ProxyError::NoServer {
                        pool: self.name.clone(),
                    },
                    exchanges,
                );
            };
            let spare = (tried.len() + 1 < max_attempts as usize)
                .then(|| replay_copy(&current))
                .flatten();
            let sent = self
                .exchange(self.upstream(upstream), current, &member, routing)
                .await;
            exchanges += sent.attempts;
            let retry = spare.is_some() && self.is_worth_retrying(&sent.result);
            // A try that never reached an origin adds no load anywhere by being made again:
            // the budget is for tries that did.
            if retry && (never_reached_an_origin(&sent.result) || self.budget.try_withdraw()) {
                self.metrics
                    .pool_retries
                    .get_or_create(&PoolLabels {
                        pool: self.name.clone(),
                    })
                    .inc();
                tried.push(member);
                request = spare;
                continue;
            }
            if retry {
                self.metrics
                    .pool_retry_budget_exhausted
                    .get_or_create(&PoolLabels {
                        pool: self.name.clone(),
                    })
                    .inc();
            }
            let attempts = tried.len() as u32 + 1;
            let result = match sent.result {
                Err(last) if attempts > 1 => Err(ProxyError::Retried {
                    attempts,
                    last: Box::new(last),
                }),
                result => result,
            };
            return PoolSent {
                result,
                exchanges,
                member: Some(member),
            };
        }
    }

    fn failed(&self, err: ProxyError, exchanges: u32) -> PoolSent {
        PoolSent {
            result: Err(err),
            exchanges,
            member: None,
        }
    }

    /// One exchange with `member`: addressed to it, timed, and recorded for its health and
    /// metrics.
    async fn exchange(
        &self,
        upstream: &Upstream,
        request: Request<Body>,
        member: &Arc<Member>,
        routing: Routing<'_>,
    ) -> Sent {
        let origin = member.url.url().as_str();
        let request = match address(request, member, routing.host_from_server) {
            Ok(request) => request,
            Err(err) => {
                return Sent {
                    result: Err(err),
                    attempts: 0,
                }
            }
        };
        let outstanding = Outstanding::begin(member);
        let started = Instant::now();
        let mut sent = upstream
            .send(request, origin, self.protocol, self.header_timeout)
            .await;
        // A large body keeps its server busy after the head: least-outstanding counts it
        // until the body is done, as nginx's least_conn counts the connection.
        sent.result = sent
            .result
            .map(|response| response.map(|body| body.holding(outstanding)));
        let labels = &member.labels;
        self.metrics
            .pool_server_requests
            .get_or_create(labels)
            .inc();
        self.metrics
            .pool_server_latency
            .get_or_create(labels)
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &sent.result {
            Ok(response) if response.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            // Our own limits, or the client's broken request body: no sign of the server's
            // health (a client must not be able to eject servers).
            Err(err) if err.fault() == crate::error::Fault::Downstream => Outcome::Neutral,
            Err(_) => Outcome::Failure,
        };
        if let Err(err) = &sent.result {
            self.metrics
                .pool_server_errors
                .get_or_create(&ServerErrorLabels {
                    pool: self.name.clone(),
                    server: member.address.clone(),
                    error: err.proxy_status_error().as_str(),
                })
                .inc();
        }
        self.record(member, outcome);
        sent
    }

    fn record(&self, member: &Member, outcome: Outcome) {
        if !self.is_configured || outcome == Outcome::Neutral {
            return;
        }
        let now = Instant::now();
        let may_eject = self.may_eject_one_more(now);
        let ejected = member
            .health
            .lock()
            .record(outcome, &self.config.passive, may_eject, now);
        if ejected {
            tracing::warn!(pool = %self.name, server = %member.address, "server ejected after consecutive failures");
            self.metrics
                .pool_server_ejections
                .get_or_create(&member.labels)
                .inc();
        }
    }

    /// The cap on ejected members: at most `max_ejected_share` of them, and one at least.
    fn may_eject_one_more(&self, now: Instant) -> bool {
        let membership = self.membership.load();
        let total = membership.members.len();
        let ejected = membership
            .members
            .iter()
            .filter(|m| m.health.lock().is_ejected(now))
            .count();
        let cap = ((total as f64) * self.config.passive.max_ejected_share).floor() as usize;
        ejected < cap.max(1)
    }

    fn is_worth_retrying(&self, result: &Result<Response<OriginBody>, ProxyError>) -> bool {
        match result {
            Ok(response) => self
                .config
                .retry
                .statuses
                .contains(&response.status().as_u16()),
            Err(err) => matches!(
                err,
                ProxyError::ConnectionRefused { .. }
                    | ProxyError::ConnectionTimeout { .. }
                    | ProxyError::ConnectFailed { .. }
                    | ProxyError::DnsError { .. }
                    | ProxyError::ResponseHeaderTimeout { .. }
                    | ProxyError::ResponseIncomplete { .. }
                    | ProxyError::LimitReached { .. }
            ),
        }
    }

    /// Runs one round of active checks, when configured.
    async fn check_all(&self, upstream: &Upstream) {
        let Some(check) = &self.config.health else {
            return;
        };
        let members = self.members();
        let upstream = self.upstream(upstream);
        let probes = members.iter().map(|member| async move {
            let host = check.host.clone().unwrap_or_else(|| member.address.clone());
            let url = format!(
                "{}://{}{}",
                member.url.url().scheme(),
                member.address,
                check.path
            );
            let status = upstream
                .probe(&url, &host, self.protocol, check.timeout.get())
                .await;
            let passed = status.is_ok_and(|status| {
                if check.statuses.is_empty() {
                    (200..400).contains(&status.as_u16())
                } else {
                    check.statuses.contains(&status.as_u16())
                }
            });
            (member, passed)
        });
        for (member, passed) in futures_util::future::join_all(probes).await {
            let changed = member
                .health
                .lock()
                .record_check(passed, check, Instant::now());
            match changed {
                Some(true) => {
                    tracing::info!(pool = %self.name, server = %member.address, "server passes its health checks again")
                }
                Some(false) => {
                    tracing::warn!(pool = %self.name, server = %member.address, "server failed its health checks")
                }
                None => {}
            }
        }
    }

    /// Resolves the pool's host names again; members of addresses that remain are kept.
    async fn resolve_again(&self) {
        let current = self.membership.load_full();
        let mut members = Vec::new();
        for server in &self.config.servers {
            let addresses = if needs_resolution(&server.url) {
                let host = server.url.url().host_str().unwrap_or_default().to_string();
                let port = server.url.url().port_or_known_default().unwrap_or(80);
                resolve::resolve(&host, port, self.hosts_file.as_deref()).await
            } else {
                Vec::new()
            };
            let previous = current
                .members
                .iter()
                .filter(|m| m.server == server.url.to_string());
            if needs_resolution(&server.url) && addresses.is_empty() {
                // A name that stops resolving keeps the members it had.
                members.extend(previous.cloned());
                continue;
            }
            members.extend(members_of(&self.name, server, &addresses, &current.members));
        }
        let changed = members.len() != current.members.len()
            || members
                .iter()
                .zip(&current.members)
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            tracing::info!(pool = %self.name, members = members.len(), "pool membership follows DNS");
            self.membership.store(Arc::new(Membership {
                ring: Ring::new(&members),
                members,
            }));
            self.cap_members();
        }
    }
}

/// A failure to connect (or to get a connection slot): the request was never sent.
fn never_reached_an_origin(result: &Result<Response<OriginBody>, ProxyError>) -> bool {
    matches!(
        result,
        Err(ProxyError::ConnectionRefused { .. }
            | ProxyError::ConnectionTimeout { .. }
            | ProxyError::ConnectFailed { .. }
            | ProxyError::DnsError { .. }
            | ProxyError::LimitReached { .. })
    )
}

/// Whether `url` names a host to resolve into members: a name (not an address) over
/// plain HTTP (over HTTPS the name is needed for the certificate, and each connection
/// resolves it).
fn needs_resolution(url: &OriginUrl) -> bool {
    url.url().scheme() == "http"
        && url
            .url()
            .host_str()
            .is_some_and(|host| host.trim_matches(['[', ']']).parse::<IpAddr>().is_err())
}

/// The addresses of `url`'s host from the hosts file alone (start-up must not wait for
/// DNS; the first resolution round follows at once).
fn resolve_now(url: &OriginUrl, hosts_file: Option<&std::path::Path>) -> Vec<std::net::SocketAddr> {
    let (Some(path), Some(host)) = (hosts_file, url.url().host_str()) else {
        return Vec::new();
    };
    let port = url.url().port_or_known_default().unwrap_or(80);
    std::fs::read_to_string(path)
        .map(|text| resolve::from_hosts(&text, host, port))
        .unwrap_or_default()
}

/// The members of one configured server of `pool`: one per resolved address, or the
/// server itself; a member of `existing` for the same address is kept (with its health and
/// drain).
fn members_of(
    pool: &str,
    server: &crate::config::PoolServerConfig,
    addresses: &[std::net::SocketAddr],
    existing: &[Arc<Member>],
) -> Vec<Arc<Member>> {
    let name = server.url.to_string();
    let urls: Vec<OriginUrl> = if addresses.is_empty() {
        vec![server.url.clone()]
    } else {
        addresses
            .iter()
            .filter_map(|address| {
                let mut url = server.url.url().clone();
                url.set_ip_host(address.ip()).ok()?;
                url.set_port(Some(address.port())).ok()?;
                url.as_str().parse().ok()
            })
            .collect()
    };
    urls.into_iter()
        .map(|url| {
            let reused = existing.iter().find(|m| {
                m.server == name
                    && m.url == url
                    && m.weight == server.weight
                    && m.backup == server.backup
            });
            reused.cloned().unwrap_or_else(|| {
                Arc::new(Member::new(pool, &name, url, server.weight, server.backup))
            })
        })
        .collect()
}

/// `request` (origin-form) addressed to `member`: absolute URI under its base path, and
/// its authority as Host when asked.
fn address(
    request: Request<Body>,
    member: &Member,
    host_from_server: bool,
) -> Result<Request<Body>, ProxyError> {
    const UNFORWARDABLE: ProxyError = ProxyError::BadRequest("request target cannot be forwarded");
    let target = member.target.as_ref().ok_or(UNFORWARDABLE)?;
    let (mut parts, body) = request.into_parts();
    let path_and_query = match (member.url.base_path(), parts.uri.path_and_query()) {
        ("", Some(path_and_query)) => path_and_query.clone(),
        (base, path_and_query) => {
            let path_and_query = path_and_query.map_or("/", |pq| pq.as_str());
            format!("{base}{path_and_query}")
                .parse()
                .map_err(|_| UNFORWARDABLE)?
        }
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(target.scheme.clone());
    uri.authority = Some(target.authority.clone());
    uri.path_and_query = Some(path_and_query);
    parts.uri = Uri::from_parts(uri).map_err(|_| UNFORWARDABLE)?;
    // An HTTP/1.0 client may send no Host (RFC 9112 §3.2 asks it only of HTTP/1.1); the
    // origin's request is HTTP/1.1 and must carry one, the authority it is addressed to
    // (RFC 9110 §7.2).
    if host_from_server || !parts.headers.contains_key(HOST) {
        if let Some(host) = &target.host {
            parts.headers.insert(HOST, host.clone());
        }
    }
    Ok(Request::from_parts(parts, body))
}

/// Every pool of a configuration: the `[[pools]]`, and one per distinct site `origin`.
pub struct Pools {
    named: HashMap<String, Arc<Pool>>,
    by_origin: HashMap<String, Arc<Pool>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Pools {
    /// Builds the pools of `config`, keeping members of `previous` (a reload) that remain.
    pub fn new(config: &Config, previous: Option<&Pools>, metrics: &Arc<Metrics>) -> Pools {
        let named = config
            .pools
            .iter()
            .map(|pool| {
                let before = previous
                    .and_then(|p| p.named.get(&pool.name))
                    .map(Arc::as_ref);
                let built = Pool::new(pool.clone(), true, before, config, metrics);
                (pool.name.clone(), Arc::new(built))
            })
            .collect();
        let sites = config.all_sites();
        let origins = config
            .origin
            .iter()
            .chain(sites.iter().filter_map(|site| site.origin.as_ref()));
        let mut by_origin = HashMap::new();
        for origin in origins {
            let name = origin.to_string();
            by_origin
                .entry(name.clone())
                .or_insert_with(|| Arc::new(Pool::single(&name, origin.clone(), config, metrics)));
        }
        Pools {
            named,
            by_origin,
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// The pool named `name` (`[[pools]]`).
    pub fn named(&self, name: &str) -> Option<&Arc<Pool>> {
        self.named.get(name)
    }

    /// The pool of a site's one `origin` URL.
    pub fn for_origin(&self, origin: &OriginUrl) -> Option<&Arc<Pool>> {
        self.by_origin.get(&origin.to_string())
    }

    /// The configured pools, by name.
    pub fn configured(&self) -> impl Iterator<Item = &Arc<Pool>> {
        let mut pools: Vec<&Arc<Pool>> = self.named.values().collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        pools.into_iter()
    }

    /// Gives each configured pool that sets TLS of its own (a CA file, a client
    /// certificate) clients of its own, under `upstream`'s connection caps, and sets its
    /// servers' own caps (`max_connections`) with those.
    ///
    /// # Errors
    /// A pool's TLS file that cannot be used.
    pub fn connect_with(
        &self,
        config: &Config,
        upstream: &Upstream,
    ) -> Result<(), UpstreamSetupError> {
        for pool in self.named.values() {
            if let Some(own) = upstream.for_pool(config, &pool.config)? {
                let _ = pool.own_upstream.set(own);
            }
            let _ = pool.limiter.set(Arc::clone(upstream.limiter()));
            pool.cap_members();
        }
        Ok(())
    }

    /// Starts the configured pools' health checks and name resolution (on the current
    /// tokio runtime; none outside one, as in `outpost check`). They end with the pools.
    pub fn start(&self, upstream: &Upstream) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut tasks = self.tasks.lock();
        for pool in self.named.values() {
            if let Some(check) = &pool.config.health {
                let interval = check.interval.get();
                let upstream = upstream.clone();
                let task = runtime.spawn(every(Arc::downgrade(pool), interval, move |pool| {
                    let upstream = upstream.clone();
                    async move { pool.check_all(&upstream).await }
                }));
                tasks.push(task.abort_handle());
            }
            if pool.config.servers.iter().any(|s| needs_resolution(&s.url)) {
                let interval = pool.config.resolve_interval.get();
                let task =
                    runtime.spawn(every(Arc::downgrade(pool), interval, |pool| async move {
                        pool.resolve_again().await;
                    }));
                tasks.push(task.abort_handle());
            }
        }
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

/// Runs `round` on the pool every `interval` (the first at once) for as long as it lives.
async fn every<F, Fut>(pool: Weak<Pool>, interval: Duration, round: F)
where
    F: Fn(Arc<Pool>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        round(pool).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(servers: &str) -> Config {
        let toml = format!("pool = \"app\"\n[[pools]]\nname = \"app\"\nservers = [{servers}]\n");
        Config::from_toml_str(&toml, &Default::default()).unwrap()
    }

    fn addressed(server: &str, target: &str, host_from_server: bool) -> Request<Body> {
        let url: OriginUrl = server.parse().unwrap();
        let member = Member::new("app", server, url, 1, false);
        let request = Request::get(target)
            .header(HOST, "client.example")
            .body(Body::empty())
            .unwrap();
        address(request, &member, host_from_server).unwrap()
    }

    /// A forwarded request's URI is the member's scheme and authority, its base path, then
    /// the client's path and query as they came (RFC 9110 §7.1); Host is the client's
    /// unless the server's is asked for.
    #[test]
    fn requests_are_addressed_to_the_member_under_its_base_path() {
        let plain = addressed("http://10.0.0.1:8080", "/a/b?q=1&r", false);
        assert_eq!(plain.uri(), "http://10.0.0.1:8080/a/b?q=1&r");
        assert_eq!(plain.headers()[HOST], "client.example");

        let based = addressed("https://origin.example/base/", "/a?q", true);
        assert_eq!(based.uri(), "https://origin.example:443/base/a?q");
        assert_eq!(based.headers()[HOST], "origin.example");

        let absolute = addressed("http://[::1]:9000/v1", "http://client.example/x", true);
        assert_eq!(absolute.uri(), "http://[::1]:9000/v1/x");
        assert_eq!(absolute.headers()[HOST], "[::1]:9000");
    }

    /// A reload keeps the members (health, drain) of servers that remain, and adds the new.
    #[test]
    fn a_reload_keeps_the_state_of_servers_that_remain() {
        let metrics = Arc::new(Metrics::new());
        let first = Pools::new(&config("{ url = \"http://10.0.0.1:80\" }"), None, &metrics);
        let pool = first.named("app").unwrap();
        assert!(pool.set_drained("10.0.0.1:80", true));
        let servers = "{ url = \"http://10.0.0.1:80\" }, { url = \"http://10.0.0.2:80\" }";
        let second = Pools::new(&config(servers), Some(&first), &metrics);
        let members = second.named("app").unwrap().members();
        assert_eq!(members.len(), 2);
        assert!(Arc::ptr_eq(&members[0], &pool.members()[0]));
        assert!(members[0].is_drained() && !members[1].is_drained());
    }
}
