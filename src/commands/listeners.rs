//! The listeners (`listen`, cleartext; `tls.listen`, HTTPS; `admin`) on the addresses the
//! configuration in force names: a reload that changes them has bound the new addresses
//! (`outpost::server::bind`: one that cannot be bound refuses the reload), and only once
//! every new address of a kind serves are the old ones of that kind let go, as a stop does
//! (no new connections; those open finish within `server.shutdown_grace`). An address
//! that still cannot be had here is logged and the old ones stay, so a mistyped port never
//! leaves the node serving nothing. At shutdown the admin listener goes last, so health
//! checks are answered while the proxy drains.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use outpost::{Config, Outpost};

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serves {
    Http,
    Https,
    Admin,
}

impl Serves {
    fn setting(self) -> &'static str {
        match self {
            Serves::Http => "listen",
            Serves::Https => "tls.listen",
            Serves::Admin => "admin",
        }
    }
}

/// Listeners bound, not yet serving.
pub type Bound = Vec<(Serves, SocketAddr, TcpListener)>;

/// The running listeners, each with its way to be stopped.
pub struct Listeners {
    outpost: Arc<Outpost>,
    stops: HashMap<(Serves, SocketAddr), watch::Sender<bool>>,
    tasks: JoinSet<(Serves, std::io::Result<()>)>,
    running: HashMap<Serves, usize>,
}

impl Listeners {
    /// Binds every listener `config` names, or fails naming the first that cannot be bound
    /// (at start-up nothing is served yet).
    pub async fn bind(config: &Config) -> Result<Bound> {
        let mut bound = Vec::new();
        for (serves, addr) in wanted(config) {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {} address {addr}", serves.setting()))?;
            bound.push((serves, addr, listener));
        }
        Ok(bound)
    }

    /// Serves on `bound` (from [`Listeners::bind`]).
    pub fn serve(outpost: Arc<Outpost>, bound: Bound) -> Listeners {
        let mut listeners = Listeners {
            outpost,
            stops: HashMap::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
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
            let ended = match serves {
                Serves::Http => outpost.serve_until(listener, until).await,
                Serves::Https => outpost.serve_tls(listener, until).await,
                Serves::Admin => outpost.serve_admin(listener, until).await,
            };
            (serves, ended)
        });
        self.stops.insert((serves, addr), stop);
        *self.running.entry(serves).or_default() += 1;
    }

    /// Moves the listeners to the addresses `config` names (see the module doc).
    pub async fn follow(&mut self, config: &Config) {
        let wanted = wanted(config);
        let mut unbound = HashSet::new();
        for (serves, addr) in &wanted {
            if self.stops.contains_key(&(*serves, *addr)) {
                continue;
            }
            let bound = match self.outpost.take_bound_listener(*addr) {
                Some(listener) => TcpListener::from_std(listener),
                None => TcpListener::bind(addr).await,
            };
            match bound {
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

    /// The next listener to end (stopped, or an accept loop that failed); `None` when none
    /// is running.
    pub async fn next_ended(&mut self) -> Option<std::io::Result<()>> {
        let (serves, ended) = match self.tasks.join_next().await? {
            Ok(ended) => ended,
            Err(join) => return Some(Err(std::io::Error::other(join))),
        };
        if let Some(count) = self.running.get_mut(&serves) {
            *count = count.saturating_sub(1);
        }
        Some(ended)
    }

    /// Stops every listener of a kind `which` picks and waits until they are done, their
    /// connections included; the first error any listener ended with meanwhile.
    pub async fn stop(&mut self, which: impl Fn(Serves) -> bool) -> std::io::Result<()> {
        let stopping: Vec<(Serves, SocketAddr)> = self
            .stops
            .keys()
            .filter(|(serves, _)| which(*serves))
            .copied()
            .collect();
        for key in stopping {
            if let Some(stop) = self.stops.remove(&key) {
                let _ = stop.send(true);
            }
        }
        let mut first_error = Ok(());
        while self
            .running
            .iter()
            .any(|(serves, count)| which(*serves) && *count > 0)
        {
            let Some(ended) = self.next_ended().await else {
                break;
            };
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

/// The listeners `config` names.
fn wanted(config: &Config) -> HashSet<(Serves, SocketAddr)> {
    std::iter::once((Serves::Http, config.listen))
        .chain(config.tls.listen.iter().map(|addr| (Serves::Https, *addr)))
        .chain(config.admin.map(|addr| (Serves::Admin, addr)))
        .collect()
}
