//! Listening sockets for the addresses a reload brings: bound by the reload itself, before
//! anything is put in force, so that an address that cannot be had (taken, not this
//! host's, a privileged port) refuses the reload whole with its address and the reason
//! (`POST /reload` answers it; nginx's reload does the same), and the old listeners stay.
//! Whoever follows the listen addresses then takes the bound sockets here.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::Config;

/// Pending connections the kernel queues per listener: tokio's default for its own bind,
/// so a moved listener takes bursts as the first one did.
const BACKLOG: i32 = 1024;

/// An address the reload could not listen on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({setting}): {source}")]
pub struct ListenError {
    pub setting: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// The sockets reloads bound and nobody has taken yet, by address.
#[derive(Debug, Default)]
pub struct Prebound(parking_lot::Mutex<HashMap<SocketAddr, std::net::TcpListener>>);

impl Prebound {
    /// Binds every address `new` names that `old` does not, keeping those bound earlier
    /// and still named, and drops those no longer named (a reload that came before this
    /// one was followed).
    ///
    /// # Errors
    /// The first address that cannot be bound; nothing is kept from this call then.
    pub fn prepare(&self, old: &Config, new: &Config) -> Result<(), ListenError> {
        let before: Vec<SocketAddr> = listen_addresses(old).map(|(_, addr)| addr).collect();
        let wanted: Vec<(&'static str, SocketAddr)> = listen_addresses(new).collect();
        let mut bound = self.0.lock();
        let mut fresh = Vec::new();
        for (setting, addr) in &wanted {
            if before.contains(addr) || bound.contains_key(addr) {
                continue;
            }
            let listener = bind(*addr).map_err(|source| ListenError {
                setting,
                addr: *addr,
                source,
            })?;
            fresh.push((*addr, listener));
        }
        bound.retain(|addr, _| wanted.iter().any(|(_, wanted)| wanted == addr));
        bound.extend(fresh);
        Ok(())
    }

    /// The socket a reload bound for `addr`, if any.
    pub fn take(&self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        self.0.lock().remove(&addr)
    }
}

/// The listen addresses `config` names, each with its setting.
fn listen_addresses(config: &Config) -> impl Iterator<Item = (&'static str, SocketAddr)> + '_ {
    std::iter::once(("listen", config.listen))
        .chain(config.tls.listen.iter().map(|addr| ("tls.listen", *addr)))
        .chain(config.admin.map(|addr| ("admin", addr)))
}

/// A non-blocking listening socket on `addr`, as tokio's bind makes one (address reuse,
/// so a restart need not wait out TIME_WAIT), made without a runtime at hand.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FlagOverrides;

    fn config(listen: SocketAddr, admin: Option<SocketAddr>) -> Config {
        let admin = admin.map_or(String::new(), |admin| format!("admin = \"{admin}\"\n"));
        let toml = format!("origin = \"http://127.0.0.1:1\"\nlisten = \"{listen}\"\n{admin}");
        Config::from_toml_str(&toml, &FlagOverrides::default()).unwrap()
    }

    fn free() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[test]
    fn a_reload_binds_only_new_addresses_and_refuses_a_taken_one() {
        let (first, second, admin) = (free(), free(), free());
        let prebound = Prebound::default();
        prebound
            .prepare(&config(first, None), &config(second, Some(admin)))
            .unwrap();
        assert!(prebound.take(first).is_none(), "already in force");
        let taken = prebound.take(second).expect("bound for the follower");
        assert_eq!(taken.local_addr().unwrap(), second);

        let err = prebound
            .prepare(&config(first, None), &config(second, Some(admin)))
            .unwrap_err();
        assert_eq!((err.setting, err.addr), ("listen", second));
        assert!(
            prebound.take(admin).is_some(),
            "kept from the earlier reload"
        );
        drop(taken);

        // A reload overtaken by the next one before it was followed lets its socket go.
        let third = free();
        prebound
            .prepare(&config(first, None), &config(third, None))
            .unwrap();
        prebound
            .prepare(&config(first, None), &config(first, None))
            .unwrap();
        assert!(prebound.take(third).is_none());
        assert!(std::net::TcpListener::bind(third).is_ok(), "released");
    }
}
