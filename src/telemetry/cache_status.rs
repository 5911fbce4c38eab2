//! [`CacheStatus`]: what the cache did with a request, rendered as an RFC 9211 Cache-Status
//! member and as the label the access log uses, from one value so they never disagree.

use std::fmt::Write;

use http::{HeaderName, HeaderValue};

use super::{CacheOutcome, Detail};

/// The field's name, parsed once: every response carries it.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went forward to the origin (RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwdReason {
    /// The cache was configured not to handle this request (disabled, Range, preconditions
    /// it does not evaluate, refused before lookup).
    Bypass,
    /// The method is not cacheable (unsafe methods are forwarded, never stored).
    Method,
    /// Nothing stored for the URL.
    UriMiss,
    /// The URL is stored, but no variant matches the request's Vary'd fields.
    VaryMiss,
    /// A stored response was found but is stale (or must be validated on every use).
    Stale,
    /// A fresh response was found but the request's directives did not allow it.
    Request,
}

impl FwdReason {
    fn outcome(self) -> CacheOutcome {
        match self {
            FwdReason::Bypass => CacheOutcome::Bypass,
            FwdReason::Method => CacheOutcome::Method,
            FwdReason::UriMiss => CacheOutcome::UriMiss,
            FwdReason::VaryMiss => CacheOutcome::VaryMiss,
            FwdReason::Stale => CacheOutcome::Stale,
            FwdReason::Request => CacheOutcome::Request,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FwdReason::Bypass => "bypass",
            FwdReason::Method => "method",
            FwdReason::UriMiss => "uri-miss",
            FwdReason::VaryMiss => "vary-miss",
            FwdReason::Stale => "stale",
            FwdReason::Request => "request",
        }
    }
}

/// The largest RFC 9651 Integer.
const SF_INTEGER_MAX: i64 = 999_999_999_999_999;

/// One Cache-Status member for this cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    pub hit: bool,
    pub fwd: Option<FwdReason>,
    pub fwd_status: Option<u16>,
    /// Seconds of freshness left; negative when a stale response was served.
    pub ttl: Option<i64>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<Detail>,
}

impl CacheStatus {
    pub fn hit(ttl: i64) -> CacheStatus {
        CacheStatus {
            hit: true,
            ttl: Some(ttl),
            ..CacheStatus::default()
        }
    }

    pub fn forward(reason: FwdReason) -> CacheStatus {
        CacheStatus {
            fwd: Some(reason),
            ..CacheStatus::default()
        }
    }

    pub fn with_detail(mut self, detail: Detail) -> CacheStatus {
        self.detail = Some(detail);
        self
    }

    /// The outcome for logs and metrics: `hit`, `stale-hit`, or the forward reason.
    pub fn outcome(&self) -> CacheOutcome {
        match (self.hit, self.fwd) {
            (true, _) if self.ttl.is_some_and(|ttl| ttl < 0) => CacheOutcome::StaleHit,
            (true, _) => CacheOutcome::Hit,
            (false, Some(reason)) => reason.outcome(),
            (false, None) => CacheOutcome::None,
        }
    }

    /// `name; hit; ttl=42` or `name; fwd=uri-miss; fwd-status=200; stored; collapsed`.
    pub fn to_header_value(&self, proxy_name: &str) -> HeaderValue {
        // Rendered on the stack and copied once into the value: every response carries
        // this field, and a growable string costs a second allocation on conversion.
        let mut short = arrayvec::ArrayString::<128>::new();
        let rendered = match self.render(proxy_name, &mut short) {
            Ok(()) => HeaderValue::from_bytes(short.as_bytes()),
            // Too long for the stack (a long proxy name): rendered whole into a string.
            Err(_) => {
                let mut text = String::new();
                let _ = self.render(proxy_name, &mut text);
                HeaderValue::from_bytes(text.as_bytes())
            }
        };
        rendered.unwrap_or_else(|_| HeaderValue::from_static("outpost"))
    }

    fn render(&self, proxy_name: &str, text: &mut impl Write) -> std::fmt::Result {
        text.write_str(proxy_name)?;
        if self.hit {
            text.write_str("; hit")?;
        }
        // Numbers by itoa, not `write!`: every response carries this field.
        let mut digits = itoa::Buffer::new();
        if let Some(reason) = self.fwd {
            text.write_str("; fwd=")?;
            text.write_str(reason.as_str())?;
        }
        if let Some(status) = self.fwd_status {
            text.write_str("; fwd-status=")?;
            text.write_str(digits.format(status))?;
        }
        if let Some(ttl) = self.ttl {
            // An sf-integer has at most 15 digits (RFC 9651 §3.3.1); an origin can claim
            // lifetimes far beyond.
            let ttl = ttl.clamp(-SF_INTEGER_MAX, SF_INTEGER_MAX);
            text.write_str("; ttl=")?;
            text.write_str(digits.format(ttl))?;
        }
        if self.stored {
            text.write_str("; stored")?;
        }
        if self.collapsed {
            text.write_str("; collapsed")?;
        }
        if let Some(detail) = self.detail {
            let detail = crate::error::sf_string(detail.as_str());
            write!(text, "; detail={detail}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9211 §2: member syntax with the parameters in the RFC's spelling.
    #[test]
    fn renders_rfc_9211_members() {
        assert_eq!(
            CacheStatus::hit(42).to_header_value("edge"),
            "edge; hit; ttl=42"
        );
        let miss = CacheStatus {
            fwd: Some(FwdReason::UriMiss),
            fwd_status: Some(200),
            ttl: Some(60),
            stored: true,
            collapsed: true,
            ..CacheStatus::default()
        };
        assert_eq!(
            miss.to_header_value("edge"),
            "edge; fwd=uri-miss; fwd-status=200; ttl=60; stored; collapsed"
        );
        let detail = CacheStatus::forward(FwdReason::Bypass).with_detail(Detail::Precondition);
        assert_eq!(
            detail.to_header_value("edge"),
            "edge; fwd=bypass; detail=\"precondition\""
        );
        assert_eq!(CacheStatus::hit(-3).outcome(), CacheOutcome::StaleHit);
    }

    /// A proxy name too long for the stack buffer is rendered whole, not cut or replaced.
    #[test]
    fn long_proxy_name_is_rendered_whole() {
        let name = "edge-".repeat(40);
        let status = CacheStatus::hit(7).with_detail(Detail::Offline);
        let value = status.to_header_value(&name);
        assert_eq!(
            value,
            format!("{name}; hit; ttl=7; detail=\"offline\"").as_str()
        );
    }

    /// RFC 9211 §2: Cache-Status is an RFC 9651 List. The header is written by hand (it is
    /// on every hit); `sfv` checks that every parameter we write parses.
    #[test]
    fn rendered_members_parse_as_a_structured_list() {
        let everything = CacheStatus {
            hit: true,
            fwd: Some(FwdReason::Stale),
            fwd_status: Some(304),
            ttl: Some(-5),
            stored: true,
            collapsed: true,
            detail: Some(Detail::NotStored("no-store \"quoted\"")),
        };
        let value = everything.to_header_value("edge-1");
        let list: sfv::List = sfv::Parser::new(value.to_str().unwrap()).parse().unwrap();
        let sfv::ListEntry::Item(member) = &list[0] else {
            panic!("a member is an item")
        };
        assert_eq!(member.params.len(), 7);
    }
}
