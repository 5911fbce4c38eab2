//! outpost: a caching edge proxy (a mini-CDN node).
//!
//! # The life of a request
//! 1. [`server`] accepts the connection (HTTP/1.1 or h2c on one port; HTTPS with h2 by ALPN
//!    on the TLS listeners), enforces connection
//!    limits (in all and per client address) and the head, idle and send timeouts, and
//!    hands each request head to the pipeline.
//! 2. [`pipeline::handle`] runs the phases in order with one [`pipeline::RequestCtx`]:
//!    request filter ([`pipeline::check_request`]), route ([`pipeline::route`]), cache
//!    lookup ([`cache::Cache::lookup`]: memory, then disk), then the branch the lookup chose,
//!    which ends in a `Delivery`; one `deliver` applies client conditionals, Range,
//!    encoding, `Age` and `Via` to every delivery.
//! 3. Misses go through a coalesced fill ([`cache::fill`]): the pipeline's fill task talks to
//!    the origin ([`upstream`]) and feeds the cache's [`cache::fill::FillWriter`], which
//!    keeps, spills to disk, stores and settles; fills and origin connections are admitted
//!    under caps ([`limit`]).
//! 4. Any failure becomes a response in one place, [`error::ProxyError::to_response`], with a
//!    `Proxy-Status` header; `handle` adds `Cache-Status` to every response.
//! 5. [`server`] streams the response body out; [`pipeline::RequestCtx::finish`] records
//!    metrics, the status board and the access-log line when it ends.
//!
//! # The branches
//! ```text
//! request ─ filter ─ route ─ Cache::lookup ─┬─ Lookup::Hit ─────────────────────────┐
//!                                           │    └ revalidate: Some(plan) ──► fetch::revalidate_in_background
//!                                           │      (stale-while-revalidate, RFC 5861 §3)
//!                                           ├─ Lookup::Partial (a Range, RFC 9111 §3.3) ─ held ─ Delivery::Partial ┤
//!                                           │    └ not held, or must validate: its `otherwise` lookup (Fetch      │
//!                                           │      forwards the Range, with the entry's ETag when it holds it: │
//!                                           │      a 304 answers from the entry, RFC 9111 §4.3.4)              │
//!                                           ├─ Lookup::Fetch ─► fetch::through_cache ─► FillStatus:
//!                                           │    ├ Streaming (miss, stored) ───────── Delivery::Streaming ─┤
//!                                           │    ├ Complete { revalidated } (304) ─── Delivery::Stored ────┤
//!                                           │    ├ StaleOnError (stale-if-error) ──── Delivery::Stored ────┤
//!                                           │    ├ Uncacheable ────────────────────── Delivery::Relayed ───┤
//!                                           │    │   (a 206 kept as a partial entry ─ Delivery::Partial ───┤)
//!                                           │    └ Failed ─────────────────────────── ProxyError ──────────┤
//!                                           ├─ Lookup::Fetch, HEAD ─► head::forward_head ─ Delivery::Forwarded ┤
//!                                           │    (a 200 freshens or drops the stored GET, RFC 9111 §4.3.5)  │
//!                                           ├─ Lookup::Bypass ─► forward ──────────── Delivery::Forwarded ─┤
//!                                           │    (unsafe methods then invalidate, RFC 9111 §4.4)           │
//!                                           ├─ Lookup::OfflineMiss / offline bypass ─ Delivery::Synthetic ─┤
//!                                           └─ Lookup::OnlyIfCachedMiss ───────────── Delivery::Synthetic ─┤
//!                                                                       deliver ◄─ Delivery::Stored ◄───────┘ (hits)
//! ```
//! Before the lookup, an upgrade request (WebSocket) leaves the cache path for
//! [`pipeline::tunnel`], and a site's `redirect_https` answers cleartext with 308.
//! Offline mode serves anything stored through `Lookup::Hit` (Cache-Status
//! `detail="offline"`) and answers 504 for the rest without the origin. While a request
//! waits for the origin, the origin's interim (1xx) responses go to HTTP/1.1 clients
//! through [`pipeline::interim`].
//!
//! # Module map
//! - [`config`]: layered settings, typed and validated (every problem reported at once).
//! - [`body`]: the body type used in both directions.
//! - [`cache`]: keys, RFC 9111 policy, stored entries, the memory and disk tiers, lookup,
//!   fills (coalescing, readers, the writer), partial entries, per-path rules, the tag index.
//! - [`pipeline`]: the phases of a request.
//! - [`upstream`]: the pooled origin client, its connection caps, and origin pools
//!   ([`upstream::pool`]: selection, health, failover).
//! - [`transform`]: response transforms (compression).
//! - [`telemetry`]: outcome types, metrics and the status board.
//! - [`limit`]: bounded admission (fills, origin connections).
//! - [`admin`]: health, metrics, purge, offline switch, reload and the status page on the
//!   admin listener.
//! - [`tools`]: trace replay, the load generator and the sample origin, built on the proxy.
//!
//! # Running in-process
//! [`Outpost::serve`] takes an already-bound listener and a shutdown future, so tests and
//! embedders bind `127.0.0.1:0` and stop it when they like.

pub mod admin;
pub mod body;
pub mod cache;
pub mod config;
pub mod error;
pub mod limit;
pub mod mirror;
pub mod pipeline;
pub mod server;
pub mod telemetry;
pub mod tools;
pub mod transform;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
use config::MemoryPolicy;

/// Why outpost could not start with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Setup(#[from] pipeline::SetupError),
}

/// Why a reload was refused; the configuration in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration source to reload from (started without a loader)")]
    NoSource,
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Listen(#[from] server::bind::ListenError),
}

/// Produces the configuration to reload: the same layers as at start-up, read again.
pub type ConfigLoader = Box<dyn Fn() -> Result<Config, config::ConfigError> + Send + Sync>;

/// A configured proxy, ready to serve listeners, reloadable while it runs.
pub struct Outpost {
    config: arc_swap::ArcSwap<Config>,
    proxy: server::SharedProxy,
    loader: Option<ConfigLoader>,
    /// Serialises reloads (SIGHUP and `POST /reload` may race).
    reloading: std::sync::Mutex<()>,
    /// Each configuration put in force, for whoever binds the listeners
    /// ([`Outpost::follow_listen_addresses`]).
    in_force: tokio::sync::watch::Sender<Arc<Config>>,
    /// Whether someone rebinds the listeners when their addresses change.
    listeners_followed: std::sync::atomic::AtomicBool,
    /// Sockets reloads bound for new listen addresses, until the follower takes them.
    prebound: server::bind::Prebound,
}

impl Outpost {
    /// # Errors
    /// [`StartError`] when the configuration cannot be put to work (an unreadable CA file).
    pub fn new(config: Config) -> Result<Outpost, StartError> {
        let proxy = pipeline::Proxy::new(&config)?;
        let config = Arc::new(config);
        Ok(Outpost {
            config: arc_swap::ArcSwap::new(Arc::clone(&config)),
            proxy: Arc::new(arc_swap::ArcSwap::from_pointee(proxy)),
            loader: None,
            reloading: std::sync::Mutex::new(()),
            in_force: tokio::sync::watch::Sender::new(config),
            listeners_followed: std::sync::atomic::AtomicBool::new(false),
            prebound: server::bind::Prebound::default(),
        })
    }

    /// Each configuration put in force from now on, for a caller that binds the listeners
    /// and moves them when a reload changes `listen`, `tls.listen` or `admin` (as `outpost
    /// serve` does): reloads then no longer report those as needing a restart.
    pub fn follow_listen_addresses(&self) -> tokio::sync::watch::Receiver<Arc<Config>> {
        self.listeners_followed
            .store(true, std::sync::atomic::Ordering::Release);
        self.in_force.subscribe()
    }

    /// The socket the last reload bound for `addr`, a listen address it brought: the
    /// follower serves on it rather than binding again.
    pub fn take_bound_listener(&self, addr: std::net::SocketAddr) -> Option<std::net::TcpListener> {
        self.prebound.take(addr)
    }

    /// Where [`Outpost::reload`] reads the configuration from.
    pub fn with_loader(mut self, loader: ConfigLoader) -> Outpost {
        self.loader = Some(loader);
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The proxy in force (requests started later may see a newer one).
    pub fn proxy(&self) -> Arc<pipeline::Proxy> {
        self.proxy.load_full()
    }

    /// Encoder runs started since start-up (each stored encoded variant costs one; hits on
    /// it cost none).
    pub fn encoder_runs(&self) -> u64 {
        self.proxy().compression().encoder_runs()
    }

    /// Reads the configuration again and puts it in force: sites, origins, forwarding,
    /// upstream timeouts, cache policy, compression, logging flags, and the memory tier's
    /// size (`cache.memory_capacity` and its shares; what no longer fits is evicted). The
    /// cache, fills in flight and metrics are kept; established connections and in-flight
    /// requests go on. `server.*` limits and timeouts apply to connections accepted after
    /// the reload. The listen and admin addresses move when a caller follows them
    /// ([`Outpost::follow_listen_addresses`]); the reload binds the new ones itself, and
    /// one that cannot be bound refuses the reload. Addresses nobody follows, the memory tier's
    /// policy (and its size under one of moka's policies) and the disk tier's settings need
    /// a restart: a warning names those that changed, and so does the returned list.
    ///
    /// # Errors
    /// [`ReloadError`] when there is no loader, the new configuration is invalid, or a new
    /// listen address cannot be bound; the configuration in force is then unchanged.
    pub fn reload(&self) -> Result<Vec<&'static str>, ReloadError> {
        let loader = self.loader.as_ref().ok_or(ReloadError::NoSource)?;
        let _serialised = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let config = loader()?;
        let proxy = self
            .proxy()
            .reconfigured(&config)
            .map_err(StartError::from)?;
        let old = self.config();
        let resizable = old.cache.memory_policy == MemoryPolicy::Wtinylfu
            && config.cache.memory_policy == MemoryPolicy::Wtinylfu;
        let listeners_followed = self
            .listeners_followed
            .load(std::sync::atomic::Ordering::Acquire);
        let needs_restart = restart_only_changes(&old, &config, resizable, listeners_followed);
        if listeners_followed {
            // Before anything is put in force: an address that cannot be had refuses it all.
            self.prebound.prepare(&old, &config)?;
        }
        if !needs_restart.is_empty() {
            tracing::warn!(settings = ?needs_restart, "reloaded, but these settings only change on restart");
        }
        let tier = config.cache.memory_tier_capacity();
        if resizable
            && tier != old.cache.memory_tier_capacity()
            && proxy.cache().resize_memory(tier)
        {
            tracing::info!(bytes = tier, "the memory tier resized");
        }
        self.proxy.store(Arc::new(proxy));
        let config = Arc::new(config);
        self.config.store(Arc::clone(&config));
        self.in_force.send_replace(config);
        tracing::info!("configuration reloaded");
        Ok(needs_restart)
    }

    /// Serves proxy traffic on `listener` until `shutdown` completes, then drains in-flight
    /// requests for up to `server.shutdown_grace`, and finishes the cache's work
    /// ([`Outpost::finish`]).
    ///
    /// # Errors
    /// I/O errors that end the accept loop.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let result = self.serve_until(listener, shutdown).await;
        self.finish().await;
        result
    }

    /// Serves proxy traffic on `listener` until `shutdown` completes, then drains its
    /// connections, as [`Outpost::serve`] does, but leaves the cache running: for one of
    /// several listeners, or one a reload moves. [`Outpost::finish`] once all are done.
    ///
    /// # Errors
    /// I/O errors that end the accept loop.
    pub async fn serve_until(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve(listener, Arc::clone(&self.proxy), shutdown).await
    }

    /// Before the process ends, once no listener is left: fills in flight (within the
    /// grace period) and background disk writes finish, the index is flushed, and a disk
    /// tier that is off is tried once more for the invalidations it missed.
    pub async fn finish(&self) {
        let proxy = self.proxy();
        let (entries, bytes) = proxy.cache().memory_usage().await;
        tracing::info!(entries, bytes, "memory tier at shutdown");
        proxy
            .cache()
            .settle_within(proxy.server.shutdown_grace.get())
            .await;
        proxy.cache().before_exit().await;
        if let Some((entries, bytes)) = proxy.cache().disk_usage() {
            tracing::info!(entries, bytes, "disk tier at shutdown");
        }
    }

    /// Serves HTTPS on `listener` (`tls` settings; certificates re-read on reload) until
    /// `shutdown` completes, then drains its connections like [`Outpost::serve`].
    ///
    /// # Errors
    /// I/O errors that end the accept loop.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve_tls(listener, Arc::clone(&self.proxy), shutdown).await
    }

    /// Serves the admin endpoints on `listener` until `shutdown` completes.
    ///
    /// # Errors
    /// I/O errors that end the accept loop.
    pub async fn serve_admin(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        admin::serve(listener, Arc::clone(self), shutdown).await
    }
}

/// Settings that differ between `old` and `new` but only take effect on restart; the memory
/// tier's size is not one of them when its policy can be `resizable`, nor the proxy's
/// listen addresses when the `listeners_followed`.
fn restart_only_changes(
    old: &Config,
    new: &Config,
    resizable: bool,
    listeners_followed: bool,
) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if !listeners_followed && old.listen != new.listen {
        changed.push("listen");
    }
    if !listeners_followed && old.tls.listen != new.tls.listen {
        changed.push("tls.listen");
    }
    if !listeners_followed && old.admin != new.admin {
        changed.push("admin");
    }
    let (a, b) = (&old.cache, &new.cache);
    if a.memory_policy != b.memory_policy {
        changed.push("cache.memory_policy");
    }
    // A new fills' budget and reserve apply at once; moka's policies keep the tier's size
    // they were built with until a restart, whichever setting moved it.
    if !resizable && a.memory_tier_capacity() != b.memory_tier_capacity() {
        changed.push(
            "cache.memory_capacity/fill_memory_budget/memory_reserve (the memory tier's size)",
        );
    }
    // The disk tier is built once, with all of these.
    if a.dir != b.dir
        || a.disk_capacity != b.disk_capacity
        || a.disk_max_object_size != b.disk_max_object_size
        || a.disk_max_objects != b.disk_max_objects
        || a.disk_inline_max != b.disk_inline_max
        || a.disk_min_free != b.disk_min_free
        || a.disk_retry_after != b.disk_retry_after
        || a.fsync != b.fsync
    {
        changed.push("cache.dir/disk_*/fsync");
    }
    // The memory tier takes a new variant bound at once; a disk tier keeps its own.
    if a.dir.is_some() && a.max_variants != b.max_variants {
        changed.push("cache.max_variants (the disk tier's bound)");
    }
    if old.log.format != new.log.format || old.log.level != new.log.level {
        changed.push("log.format/level");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload that changes a setting the running tiers were built with says so, rather
    /// than silently keeping the old value.
    #[test]
    fn disk_settings_are_reported_as_needing_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.compression.gzip_level = 9;
        assert!(
            restart_only_changes(&old, &new, true, false).is_empty(),
            "compression reloads"
        );
        // The default policy resizes in place; moka's are built with their size.
        let size_moved = vec![
            "cache.memory_capacity/fill_memory_budget/memory_reserve (the memory tier's size)",
        ];
        new.cache.fill_memory_budget = Some(crate::config::ByteSize(1 << 20));
        assert!(restart_only_changes(&old, &new, true, false).is_empty());
        assert_eq!(restart_only_changes(&old, &new, false, false), size_moved);
        new.cache.fill_memory_budget = None;
        new.cache.memory_reserve = Some(crate::config::ByteSize(1 << 20));
        assert_eq!(restart_only_changes(&old, &new, false, false), size_moved);
        new.cache.memory_reserve = None;
        new.cache.memory_capacity = crate::config::ByteSize(64 << 20);
        assert!(restart_only_changes(&old, &new, true, false).is_empty());
        assert_eq!(restart_only_changes(&old, &new, false, false), size_moved);
        new.cache.memory_capacity = old.cache.memory_capacity;
        new.cache.memory_policy = MemoryPolicy::Lru;
        assert_eq!(
            restart_only_changes(&old, &new, false, false),
            vec!["cache.memory_policy"]
        );
        new.cache.memory_policy = old.cache.memory_policy;
        new.cache.max_variants = 2;
        new.cache.hit_for_miss_ttl =
            crate::config::HumanDuration(std::time::Duration::from_secs(1));
        assert!(restart_only_changes(&old, &new, true, false).is_empty());
        // With a disk tier, its own variant bound stays until a restart.
        let mut on_disk = old.clone();
        on_disk.cache.dir = Some("/var/cache/outpost".into());
        let mut bounded = on_disk.clone();
        bounded.cache.max_variants = 2;
        assert_eq!(
            restart_only_changes(&on_disk, &bounded, true, false),
            vec!["cache.max_variants (the disk tier's bound)"]
        );
        new.cache.max_variants = old.cache.max_variants;
        new.cache.disk_max_objects = 1000;
        assert_eq!(
            restart_only_changes(&old, &new, true, false),
            vec!["cache.dir/disk_*/fsync"]
        );
    }

    /// The listen and admin addresses need a restart unless whoever binds the listeners
    /// follows reloads (`outpost serve` does).
    #[test]
    fn listen_addresses_need_a_restart_only_when_nobody_follows_them() {
        let old = Config::default();
        let mut new = old.clone();
        new.listen = "127.0.0.1:8081".parse().unwrap();
        new.tls.listen = vec!["127.0.0.1:8443".parse().unwrap()];
        new.admin = Some("127.0.0.1:9901".parse().unwrap());
        assert_eq!(
            restart_only_changes(&old, &new, true, false),
            vec!["listen", "tls.listen", "admin"]
        );
        assert!(restart_only_changes(&old, &new, true, true).is_empty());
    }
}
