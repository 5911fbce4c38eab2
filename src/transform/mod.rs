//! Response transforms applied between the cache and the client. Today: content-coding
//! ([`compress`]). Each transform decides and rewrites; storing its output is the
//! pipeline's business.

pub mod compress;
