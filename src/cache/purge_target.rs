//! What a purge names (a URL, a prefix, a tag), and whether a stored response is among it:
//! one definition for the memory tier, the disk tier and the disk's remembered purges.

use std::sync::Arc;

use http::HeaderName;

use super::entry::EntryMeta;
use super::key::PrimaryKey;
use super::tags;

/// Which stored responses a purge names, as a function of their metadata alone (for the
/// disk tier's listings).
pub type Matcher = Arc<dyn Fn(&EntryMeta) -> bool + Send + Sync>;

/// What a purge removes (all variants of every matching resource).
#[derive(Debug, Clone, PartialEq)]
pub enum PurgeTarget {
    /// One URL, as its primary key.
    Url(PrimaryKey),
    /// Every URL whose canonical form, from the authority on (the scheme left out, so a
    /// prefix names a site's resources over http and https), starts with this.
    Prefix(String),
    /// Every resource tagged so by `Cache-Groups` (RFC 9875) or the surrogate-key header,
    /// optionally only those of one origin, `scheme://authority` (RFC 9875 §3: groups are
    /// scoped to an origin).
    Tag { tag: String, origin: Option<String> },
}

impl PurgeTarget {
    /// [`PurgeTarget::matches`] as a function of the metadata alone, for the disk tier.
    pub fn matcher(&self, surrogate_key: &HeaderName) -> Matcher {
        let (target, header) = (self.clone(), surrogate_key.clone());
        Arc::new(move |meta| target.matches(meta, &header))
    }

    /// This target as the disk tier keeps it while it is off (see [`Selection`]).
    pub fn selection(&self, surrogate_key: &HeaderName) -> Selection {
        Selection::Named {
            target: self.clone(),
            surrogate_key: surrogate_key.clone(),
        }
    }

    pub fn matches(&self, meta: &EntryMeta, surrogate_key: &HeaderName) -> bool {
        match self {
            PurgeTarget::Url(key) => meta.key == *key,
            PurgeTarget::Prefix(prefix) => meta
                .url
                .split_once("://")
                .is_some_and(|(_, rest)| rest.starts_with(prefix.as_str())),
            PurgeTarget::Tag { tag, origin } => {
                let in_scope = origin.as_deref().is_none_or(|origin| {
                    meta.url
                        .strip_prefix(origin)
                        .is_some_and(|path| path.starts_with('/'))
                });
                in_scope && tags::of(&meta.headers, surrogate_key).any(|t| t == *tag)
            }
        }
    }
}

/// A purge by prefix or tag that a disk tier which is off could not list: kept as what it
/// names (not as a closure), so that it can be written down and applied after a restart.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Every stored response: what too many remembered invalidations become.
    Everything,
    /// What `target` names under the surrogate-key header the purge was made with.
    Named {
        target: PurgeTarget,
        surrogate_key: HeaderName,
    },
}

impl Selection {
    pub fn matches(&self, meta: &EntryMeta) -> bool {
        match self {
            Selection::Everything => true,
            Selection::Named {
                target,
                surrogate_key,
            } => target.matches(meta, surrogate_key),
        }
    }
}
