//! The proxy's listeners (`listen`, cleartext; `tls.listen`, HTTPS) on the addresses the
//! configuration in force names: a reload that changes them binds the new addresses, and
//! only once every new address of a kind is bound lets the old ones of that kind go, as a
//! stop does (no new connections; those open finish within `server.shutdown_grace`). An
//! address that cannot be bound is logged and the old ones stay, so a mistyped port never
//! leaves the node serving nothing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use outpost::{Config, Outpost};

/// What a proxy listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serves {
    Http,
    Https,
}

impl Serves {
    fn setting(self) -> &'static str {
        match self {
            Serves::Http => "listen",
            Serves::Https => "tls.listen",
        }
    }
}

/// The running proxy listeners, each with its way to be stopped.
pub struct ProxyListeners {
    outpost: Arc<Outpost>,
    stops: HashMap<(Serves, SocketAddr), watch::Sender<bool>>,
    tasks: JoinSet<std::io::Result<()>>,
}

impl ProxyListeners {
    /// Binds every proxy listener `config` names, or fails naming the first that cannot be
    /// bound (at start-up nothing is served yet).
    pub async fn bind(config: &Config) -> Result<Vec<(Serves, SocketAddr, TcpListener)>> {
        let mut bound = Vec::new();
        for (serves, addr) in wanted(config) {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {} address {addr}", serves.setting()))?;
            bound.push((serves, addr, listener));
        }
        Ok(bound)
    }

    /// Serves on `bound` (from [`ProxyListeners::bind`]).
    pub fn serve(
        outpost: Arc<Outpost>,
        bound: Vec<(Serves, SocketAddr, TcpListener)>,
    ) -> ProxyListeners {
        let mut listeners = ProxyListeners {
            outpost,
            stops: HashMap::new(),
            tasks: JoinSet::new(),
        };
        for (serves, addr, listener) in bound {
            listeners.start(serves, addr, listener);
        }
        listeners
    }

    fn start(&mut self, serves: Serves, addr: SocketAddr, listener: TcpListener) {
        let (stop, stop_rx) = watch::channel(false);
        let outpost = Arc::clone(&self.outpost);
        let until = stopped(stop_rx);
        self.tasks.spawn(async move {
            match serves {
                Serves::Http => outpost.serve_until(listener, until).await,
                Serves::Https => outpost.serve_tls(listener, until).await,
            }
        });
        self.stops.insert((serves, addr), stop);
    }

    /// Moves the listeners to the addresses `config` names (see the module doc).
    pub async fn follow(&mut self, config: &Config) {
        let wanted = wanted(config);
        let mut unbound = HashSet::new();
        for (serves, addr) in &wanted {
            if self.stops.contains_key(&(*serves, *addr)) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(setting = serves.setting(), %addr, "now listening");
                    self.start(*serves, *addr, listener);
                }
                Err(err) => {
                    tracing::error!(setting = serves.setting(), %addr, error = %err, "cannot listen on the reloaded address; the old addresses stay");
                    unbound.insert(*serves);
                }
            }
        }
        let gone: Vec<(Serves, SocketAddr)> = self
            .stops
            .keys()
            .filter(|key| !wanted.contains(key) && !unbound.contains(&key.0))
            .copied()
            .collect();
        for (serves, addr) in gone {
            tracing::info!(setting = serves.setting(), %addr, "no longer listening (open connections finish)");
            if let Some(stop) = self.stops.remove(&(serves, addr)) {
                let _ = stop.send(true);
            }
        }
    }

    /// The next listener to end by itself (an accept loop that failed); `None` when none
    /// is running.
    pub async fn next_ended(&mut self) -> Option<std::io::Result<()>> {
        let ended = self.tasks.join_next().await?;
        Some(ended.unwrap_or_else(|join| Err(std::io::Error::other(join))))
    }

    /// Stops every listener and waits until their connections are done; the first error
    /// any of them ended with.
    pub async fn stop(mut self) -> std::io::Result<()> {
        for (_, stop) in self.stops.drain() {
            let _ = stop.send(true);
        }
        let mut first_error = Ok(());
        while let Some(ended) = self.next_ended().await {
            if let Err(err) = ended {
                if first_error.is_ok() {
                    first_error = Err(err);
                }
            }
        }
        first_error
    }
}

/// Resolves once `stop` says so (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The proxy listeners `config` names.
fn wanted(config: &Config) -> HashSet<(Serves, SocketAddr)> {
    std::iter::once((Serves::Http, config.listen))
        .chain(config.tls.listen.iter().map(|addr| (Serves::Https, *addr)))
        .collect()
}
