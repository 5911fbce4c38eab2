//! The integration suite: a real origin and a real outpost on loopback, spoken to over real
//! HTTP, one module per theme.
//!
//! One test binary rather than one per theme: each binary links all of outpost and its
//! dependencies, so twenty of them cost twenty links and gigabytes of disk for the same tests.
//! `streaming` stays its own binary because it measures the process's peak memory, which
//! other tests running beside it in one process would disturb; `properties` has no servers.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod cache;
mod cli;
mod client_certs;
mod coalescing;
mod compression;
mod crash;
mod disk;
mod fills;
mod forward_proxy;
mod h2_origins;
mod hostile;
mod memory_files;
mod memory_policy;
mod mirror;
mod origin_connections;
mod pools;
mod prepared_hits;
mod proxy;
mod proxy_protocol;
mod ranges;
mod replay;
mod rfc9111_edges;
mod status_page;
mod tls;
mod tls_listen;
mod tunnels;
mod validation;
