//! Per-path policy rules (`[[cache.rules]]`): an operator's override of the origin's
//! freshness for matching paths, applied when a response is stored or freshened.
//!
//! A rule can set the lifetime (`ttl`), mark a path immutable (RFC 8246: a client's reload
//! does not reach the origin), force validation before every use (while still allowing the
//! stored response when the origin is unreachable, through `stale_if_error`), and supply
//! RFC 5861 windows the origin did not, and cap how long error responses stay fresh. First
//! match wins.

use std::time::Duration;

use crate::config::PathRule;

use super::policy::Freshness;

/// How long an `immutable` rule keeps a response fresh when it sets no `ttl`.
const IMMUTABLE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

enum Matcher {
    Glob(glob::Pattern),
    Prefix(String),
}

/// The configured rules, compiled.
#[derive(Default)]
pub struct PathRules {
    rules: Vec<(Matcher, PathRule)>,
}

impl PathRules {
    /// Rules whose glob does not compile are skipped (config validation refuses them).
    pub fn new(rules: &[PathRule]) -> PathRules {
        let rules = rules
            .iter()
            .filter_map(|rule| {
                let matcher = match (&rule.glob, &rule.prefix) {
                    (Some(glob), _) => Matcher::Glob(glob::Pattern::new(glob).ok()?),
                    (None, Some(prefix)) => Matcher::Prefix(prefix.clone()),
                    (None, None) => return None,
                };
                Some((matcher, rule.clone()))
            })
            .collect();
        PathRules { rules }
    }

    /// The first rule for `path` (without query) on the site named `site`.
    pub fn find(&self, site: &str, path: &str) -> Option<&PathRule> {
        self.rules.iter().find_map(|(matcher, rule)| {
            let site_ok = rule.sites.is_empty() || rule.sites.iter().any(|s| s == site);
            let path_ok = match matcher {
                Matcher::Glob(pattern) => pattern.matches(path),
                Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            };
            (site_ok && path_ok).then_some(rule)
        })
    }
}

/// `freshness` of a `status` response as `rule` overrides it.
pub fn apply(freshness: &mut Freshness, rule: &PathRule, status: http::StatusCode) {
    if let Some(ttl) = rule.ttl {
        freshness.lifetime = ttl.get();
        freshness.is_heuristic = false;
    }
    if rule.immutable {
        if rule.ttl.is_none() {
            freshness.lifetime = IMMUTABLE_LIFETIME;
            freshness.is_heuristic = false;
        }
        freshness.is_immutable = true;
        freshness.requires_validation = false;
        freshness.forbids_stale = false;
    }
    if rule.revalidate {
        freshness.requires_validation = true;
        freshness.is_immutable = false;
        // Validation first, but the stored copy may still answer when the origin cannot.
        freshness.forbids_stale = false;
    }
    if let Some(window) = rule.stale_if_error {
        freshness.stale_if_error = freshness.stale_if_error.max(window.get());
    }
    if let Some(window) = rule.stale_while_revalidate {
        freshness.stale_while_revalidate = freshness.stale_while_revalidate.max(window.get());
    }
    if let (Some(cap), true) = (rule.error_ttl, status.as_u16() >= 400) {
        freshness.lifetime = freshness.lifetime.min(cap.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn rule(glob: Option<&str>, prefix: Option<&str>) -> PathRule {
        PathRule {
            glob: glob.map(str::to_string),
            prefix: prefix.map(str::to_string),
            sites: Vec::new(),
            ttl: None,
            immutable: false,
            revalidate: false,
            stale_if_error: None,
            stale_while_revalidate: None,
            error_ttl: None,
        }
    }

    #[test]
    fn globs_cross_slashes_and_first_match_wins() {
        let mut deb = rule(Some("*.deb"), None);
        deb.immutable = true;
        let mut packages = rule(Some("*/Packages*"), None);
        packages.revalidate = true;
        let mut pypi = rule(None, Some("/packages/"));
        pypi.ttl = Some(HumanDuration(Duration::from_secs(60)));
        let rules = PathRules::new(&[deb, packages, pypi]);
        assert!(rules
            .find("default", "/debian/pool/main/s/sl/sl_5.02-1%2bb1_amd64.deb")
            .is_some_and(|r| r.immutable));
        assert!(rules
            .find(
                "default",
                "/debian/dists/bookworm/main/binary-amd64/Packages.xz"
            )
            .is_some_and(|r| r.revalidate));
        assert!(rules
            .find("default", "/packages/ab/cd/x.whl")
            .is_some_and(|r| r.ttl.is_some()));
        assert!(rules.find("default", "/index.html").is_none());
    }

    #[test]
    fn rules_can_be_limited_to_sites() {
        let mut only = rule(None, Some("/"));
        only.sites = vec!["mirror".into()];
        let rules = PathRules::new(&[only]);
        assert!(rules.find("mirror", "/a").is_some());
        assert!(rules.find("other", "/a").is_none());
    }
}
