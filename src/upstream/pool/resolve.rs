//! Name resolution for pool membership: a server configured by host name stands for every
//! address the name resolves to, so membership follows DNS. `upstream.hosts_file` (hosts
//! format: an address, then names) answers first: air-gapped setups and tests use it.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The addresses `host` resolves to, with `port`; empty when it does not resolve.
pub async fn resolve(host: &str, port: u16, hosts_file: Option<&Path>) -> Vec<SocketAddr> {
    if let Some(path) = hosts_file {
        if let Ok(text) = tokio::fs::read_to_string(path).await {
            let found = from_hosts(&text, host, port);
            if !found.is_empty() {
                return found;
            }
        }
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => {
            let mut addresses: Vec<SocketAddr> = addresses.collect();
            addresses.sort_unstable();
            addresses.dedup();
            addresses
        }
        Err(err) => {
            tracing::warn!(%host, error = %err, "pool server name did not resolve");
            Vec::new()
        }
    }
}

/// The addresses a hosts-format text gives `host`, in order, without repeats.
pub(super) fn from_hosts(text: &str, host: &str, port: u16) -> Vec<SocketAddr> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(address) = fields.next().and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        if fields.any(|name| name.eq_ignore_ascii_case(host)) {
            let address = SocketAddr::new(address, port);
            if !found.contains(&address) {
                found.push(address);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_text_gives_every_address_of_a_name() {
        let text = "127.0.0.1 localhost\n# comment\n10.0.0.1 app app.internal\n\
                    10.0.0.2\tAPP # second\nbad line app\n10.0.0.1 app\n";
        assert_eq!(
            from_hosts(text, "app", 8080),
            vec![
                "10.0.0.1:8080".parse::<SocketAddr>().unwrap(),
                "10.0.0.2:8080".parse().unwrap()
            ]
        );
        assert!(from_hosts(text, "other", 80).is_empty());
    }
}
