//! What outpost records about its work, below every layer that records it: the outcome
//! types ([`CacheOutcome`], [`Tier`], [`Detail`], [`cache_status::CacheStatus`]), the
//! Prometheus [`metrics`], and the [`board`] behind the status page. Each outcome has one
//! `as_str()`, used alike by the `Cache-Status` header, the access log, metric labels and
//! the status page; strings are produced only there, at the edge.
//!
//! Serving these (the `/metrics` exposition, `/status.json`) is `admin`'s business.

pub mod board;
pub mod cache_status;
pub mod metrics;

/// Where a response's body came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Tier {
    #[default]
    Memory,
    Disk,
    Origin,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Disk => "disk",
            Tier::Origin => "origin",
        }
    }
}

/// What the cache did with one request: the access-log `cache` field, the `cache` label of
/// `outpost_requests_total` and the status page's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheOutcome {
    Hit,
    StaleHit,
    UriMiss,
    VaryMiss,
    Stale,
    Request,
    Method,
    Bypass,
    None,
}

impl CacheOutcome {
    /// Every outcome, in display order.
    pub const ALL: [CacheOutcome; 9] = [
        CacheOutcome::Hit,
        CacheOutcome::StaleHit,
        CacheOutcome::UriMiss,
        CacheOutcome::VaryMiss,
        CacheOutcome::Stale,
        CacheOutcome::Request,
        CacheOutcome::Method,
        CacheOutcome::Bypass,
        CacheOutcome::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::StaleHit => "stale-hit",
            CacheOutcome::UriMiss => "uri-miss",
            CacheOutcome::VaryMiss => "vary-miss",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Request => "request",
            CacheOutcome::Method => "method",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::None => "none",
        }
    }

    /// Served from the cache (fresh or stale).
    pub fn is_hit(self) -> bool {
        matches!(self, CacheOutcome::Hit | CacheOutcome::StaleHit)
    }

    /// Position in [`CacheOutcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The `detail` parameter of a Cache-Status member (RFC 9211 §2.8): why the cache did what
/// it did, when the other parameters do not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// The cache is switched off.
    Disabled,
    /// The request has preconditions the cache does not evaluate (If-Match, ...).
    Precondition,
    /// RFC 9111 §3.5: the stored response may not answer a request with Authorization.
    Authorization,
    /// Offline mode answered (from the cache, or 504).
    Offline,
    /// RFC 5861 §3: served stale while a validation runs in the background.
    StaleWhileRevalidate,
    /// RFC 9111 §5.2.1.7: `only-if-cached` with nothing usable stored.
    OnlyIfCached,
    /// A PURGE request.
    Purge,
    /// Answered by outpost as the request's final recipient (RFC 9110 §7.6.2:
    /// `Max-Forwards: 0`, or `OPTIONS *`).
    FinalRecipient,
    /// RFC 9111 §3.3: a partial entry answered the range, or a 206 was kept as one.
    Partial,
    /// The response was not stored; the policy's reason.
    NotStored(&'static str),
    /// The origin failed (an RFC 9209 error type, or `http_5xx`) and a stale response
    /// answered (RFC 5861 §4, RFC 9111 §4.2.4).
    Error(crate::error::OriginFailure),
}

impl Detail {
    pub fn as_str(self) -> &'static str {
        match self {
            Detail::Disabled => "disabled",
            Detail::Precondition => "precondition",
            Detail::Authorization => "authorization",
            Detail::Offline => "offline",
            Detail::StaleWhileRevalidate => "stale-while-revalidate",
            Detail::OnlyIfCached => "only-if-cached",
            Detail::Purge => "purge",
            Detail::FinalRecipient => "final-recipient",
            Detail::Partial => "partial",
            Detail::NotStored(reason) => reason,
            Detail::Error(failure) => failure.as_str(),
        }
    }
}
