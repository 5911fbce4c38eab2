//! Tools built on the proxy rather than part of it: trace replay through the tiers'
//! policies ([`replay`], `outpost replay`), an HTTP load generator ([`load`],
//! `outpost load`) and its coalescing probe ([`burst`], `outpost load --burst`), warming a package mirror from lock files ([`warm`], `outpost warm`),
//! the client they speak to a running outpost with ([`client`]), and the slow sample origin ([`sample_origin`], `outpost origin` and
//! `outpost demo`). The proxy never imports them.

pub mod burst;
pub mod client;
pub mod load;
pub mod replay;
pub mod sample_origin;
pub mod warm;
