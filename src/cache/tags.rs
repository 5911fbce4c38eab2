//! Cache tags of stored responses, and the index purges by tag use.
//!
//! A response's tags are the strings of `Cache-Groups` (RFC 9875 §2, an RFC 9651 list of
//! strings) and the space-separated keys of the surrogate-key header. [`TagIndex`] maps
//! each tag to the resources stored with it, so a purge by tag (an admin purge, or an
//! origin's `Cache-Group-Invalidation`, which any client can provoke) looks at those
//! resources only instead of scanning both tiers.

use std::collections::HashMap;

use http::{HeaderMap, HeaderName};
use parking_lot::Mutex;

use super::key::PrimaryKey;

/// The tags of a response with `headers`.
pub fn of<'a>(
    headers: &'a HeaderMap,
    surrogate_key: &'a HeaderName,
) -> impl Iterator<Item = String> + 'a {
    let lines: Vec<&str> = headers
        .get_all("cache-groups")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    // Most responses have no Cache-Groups: no parse for them (this runs on every store).
    let groups = if lines.is_empty() {
        Vec::new()
    } else {
        sf_strings(&lines.join(", "))
    }
    .into_iter();
    let keys = headers
        .get_all(surrogate_key)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split_ascii_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
    groups.chain(keys)
}

/// The string members of an RFC 9651 List (RFC 9875 §2: Cache-Groups), all lines of
/// the field together; a field that does not parse as a List names no group.
pub fn sf_strings(text: &str) -> Vec<String> {
    let Ok(list) = sfv::Parser::new(text).parse::<sfv::List>() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|member| match member {
            sfv::ListEntry::Item(sfv::Item {
                bare_item: sfv::BareItem::String(value),
                ..
            }) => Some(value.as_str().to_string()),
            _ => None,
        })
        .collect()
}

/// Tag → the resources stored with it, and each one's origin (`scheme://authority`, for
/// purges scoped to one origin). Entries are added when a response is stored; they are not
/// removed on eviction, so the index may name resources no longer stored (a purge checks
/// each resource's stored tags before removing it). It is rebuilt from the tiers when the
/// disk tier opens (until then it is not trusted and purges scan) and when it grows past
/// `capacity` pairs, which also drops the evicted resources it still names.
pub struct TagIndex {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Default)]
struct State {
    current: Tagged,
    /// Whether `current` names every stored tagged resource.
    is_complete: bool,
    /// A rebuild in progress: what the tiers hold, plus what is stored meanwhile.
    rebuilding: Option<Tagged>,
}

#[derive(Default)]
struct Tagged {
    by_tag: HashMap<String, HashMap<PrimaryKey, Box<str>>>,
    pairs: usize,
}

impl Tagged {
    fn add(&mut self, key: PrimaryKey, origin: &str, tag: String) {
        if self
            .by_tag
            .entry(tag)
            .or_default()
            .insert(key, origin.into())
            .is_none()
        {
            self.pairs += 1;
        }
    }
}

impl Tagged {
    fn forget(&mut self, tag: &str, key: &PrimaryKey) {
        let Some(keys) = self.by_tag.get_mut(tag) else {
            return;
        };
        if keys.remove(key).is_some() {
            if keys.is_empty() {
                self.by_tag.remove(tag);
            }
            self.pairs -= 1;
        }
    }
}

impl TagIndex {
    /// An index trusted from the start when `is_complete` (nothing stored yet: no disk tier
    /// to read), else only after a rebuild.
    pub fn new(is_complete: bool, capacity: usize) -> TagIndex {
        TagIndex {
            state: Mutex::new(State {
                is_complete,
                ..State::default()
            }),
            capacity,
        }
    }

    /// Records that `key`, whose URL is `url`, is stored with `tags`. Returns true when the
    /// index has outgrown its capacity and a rebuild should start.
    pub fn add(&self, key: PrimaryKey, url: &str, tags: impl Iterator<Item = String>) -> bool {
        let origin = origin_of(url);
        let mut state = self.state.lock();
        for tag in tags {
            if let Some(rebuilding) = &mut state.rebuilding {
                rebuilding.add(key, origin, tag.clone());
            }
            state.current.add(key, origin, tag);
        }
        let overflows = state.current.pairs > self.capacity;
        if overflows && state.is_complete {
            state.is_complete = false;
            tracing::warn!(
                pairs = state.current.pairs,
                "tag index over capacity: rebuilding it; purges by tag scan until then"
            );
        }
        overflows && state.rebuilding.is_none()
    }

    /// Starts a rebuild; false when one is already running.
    pub fn begin_rebuild(&self) -> bool {
        let mut state = self.state.lock();
        if state.rebuilding.is_some() {
            return false;
        }
        state.rebuilding = Some(Tagged::default());
        true
    }

    /// During a rebuild: `key` (with `url`) is stored with `tags`, as a tier says.
    pub fn add_rebuilt(&self, key: PrimaryKey, url: &str, tags: impl Iterator<Item = String>) {
        let origin = origin_of(url);
        let mut state = self.state.lock();
        if let Some(rebuilding) = &mut state.rebuilding {
            for tag in tags {
                rebuilding.add(key, origin, tag);
            }
        }
    }

    /// Ends a rebuild: its result becomes the index, trusted if it fits.
    pub fn finish_rebuild(&self) {
        let mut state = self.state.lock();
        if let Some(rebuilt) = state.rebuilding.take() {
            state.is_complete = rebuilt.pairs <= self.capacity;
            state.current = rebuilt;
        }
    }

    /// The resources stored with `tag` (within `origin`, when given), or `None` when the
    /// index is not trusted and the tiers must be scanned.
    pub fn keys(&self, tag: &str, origin: Option<&str>) -> Option<Vec<PrimaryKey>> {
        let state = self.state.lock();
        if !state.is_complete {
            return None;
        }
        let Some(keys) = state.current.by_tag.get(tag) else {
            return Some(Vec::new());
        };
        Some(
            keys.iter()
                .filter(|(_, key_origin)| origin.is_none_or(|o| &***key_origin == o))
                .map(|(key, _)| *key)
                .collect(),
        )
    }

    /// Forgets `key` under `tag` (it was purged, or no longer carries the tag).
    pub fn forget(&self, tag: &str, key: &PrimaryKey) {
        let mut state = self.state.lock();
        state.current.forget(tag, key);
        if let Some(rebuilding) = &mut state.rebuilding {
            rebuilding.forget(tag, key);
        }
    }
}

/// `scheme://authority` of a stored URL.
pub fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |at| after_scheme + at);
    &url[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc_8941_string_lists() {
        assert_eq!(
            sf_strings(r#""scripts", "shop";x=1, "a\"b""#),
            ["scripts", "shop", "a\"b"]
        );
        assert!(sf_strings("token, 1").is_empty());
        assert!(
            sf_strings(r#""a", "unterminated"#).is_empty(),
            "a field that is not a List names no group"
        );
    }

    /// Purges by tag see only the resources stored with the tag, scoped to an origin;
    /// an overflowing index is not trusted.
    #[test]
    fn index_finds_tagged_resources_by_origin() {
        let index = TagIndex::new(true, 3);
        let a = PrimaryKey([1; 32]);
        let b = PrimaryKey([2; 32]);
        index.add(a, "http://a.test/x", ["news".to_string()].into_iter());
        index.add(b, "https://b.test/y?q", ["news".to_string()].into_iter());
        let mut all = index.keys("news", None).unwrap();
        all.sort();
        assert_eq!(all, [a, b]);
        assert_eq!(index.keys("news", Some("https://b.test")).unwrap(), [b]);
        assert!(index.keys("sport", None).unwrap().is_empty());
        index.forget("news", &a);
        assert_eq!(index.keys("news", None).unwrap(), [b]);
        let wants_rebuild = index.add(
            a,
            "http://a.test/x",
            ["1", "2", "3"].map(String::from).into_iter(),
        );
        assert!(wants_rebuild);
        assert!(index.keys("news", None).is_none(), "over capacity: scan");
        assert!(index.begin_rebuild());
        assert!(!index.begin_rebuild(), "one rebuild at a time");
        index.add_rebuilt(b, "https://b.test/y", ["news".to_string()].into_iter());
        // Stored while the rebuild runs: kept.
        index.add(a, "http://a.test/x", ["news".to_string()].into_iter());
        index.finish_rebuild();
        let mut rebuilt = index.keys("news", None).unwrap();
        rebuilt.sort();
        assert_eq!(rebuilt, [a, b]);
        assert!(
            index.keys("1", None).unwrap().is_empty(),
            "evicted pairs dropped"
        );
        assert_eq!(origin_of("http://a.test"), "http://a.test");
    }
}
