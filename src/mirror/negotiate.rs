//! PyPI's Simple API is one URL in several forms chosen by `Accept` (PEP 691): JSON, the
//! versioned HTML and the legacy `text/html`. Each client writes its `Accept` its own way
//! (pip and uv differ, and pip's changed between releases), so keyed on the field as sent
//! (`Vary: Accept`) a page stored for one client is a miss for the next, and offline, where
//! a miss cannot be fetched, an install that `outpost warm` prepared with pip fails under
//! uv. The mirror asks the upstream in one of three canonical spellings instead, the form
//! the client prefers, and stores each page as varying on it: at most three copies, and
//! never a JSON page for a client that can read only HTML, even from an upstream that
//! negotiates without saying so.
//!
//! npm's package documents are the same in two forms: the abbreviated one installers ask
//! for and the full one (`npm view`, plain HTTP tools), asked for and stored the same way.

use http::header::GetAll;
use http::HeaderValue;

use crate::cache::key::{list_members, qvalue};

/// The JSON form (PEP 691).
pub const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";
/// The versioned HTML form (PEP 691).
pub const SIMPLE_HTML: &str = "application/vnd.pypi.simple.v1+html";
/// The legacy HTML of PEP 503, what a client that names neither form gets.
pub const LEGACY_HTML: &str = "text/html";

/// npm's abbreviated package document ("corgi"), in npm's own spelling (yarn, pnpm and bun
/// send the same): an upstream without abbreviated documents answers it with the full one.
pub const NPM_ABBREVIATED: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";
/// npm's full package document.
pub const NPM_FULL: &str = "application/json";

/// The canonical `Accept` for a Simple API request with `accept`: of the forms the client
/// accepts (q above 0), the one it weights highest; on a tie JSON, then the versioned
/// HTML. Wildcards and no `Accept` at all stand for the legacy HTML (PEP 691: a server
/// that cannot tell must answer as PEP 503 did).
pub fn simple_api_accept(accept: GetAll<'_, HeaderValue>) -> &'static str {
    let forms = weighted_ranges(accept).filter_map(|(range, weight)| {
        let (rank, form) =
            match range.as_str() {
                "application/vnd.pypi.simple.v1+json"
                | "application/vnd.pypi.simple.latest+json" => (2, SIMPLE_JSON),
                "application/vnd.pypi.simple.v1+html"
                | "application/vnd.pypi.simple.latest+html" => (1, SIMPLE_HTML),
                "text/html" | "text/*" | "*/*" => (0, LEGACY_HTML),
                _ => return None,
            };
        Some((weight, rank, form))
    });
    best_form(forms).unwrap_or(LEGACY_HTML)
}

/// The canonical `Accept` for an npm package document request with `accept`: the
/// abbreviated document when the client weights it at least as high as any other form it
/// accepts, else the full one (what a client that names neither, or only `*/*`, gets).
pub fn npm_document_accept(accept: GetAll<'_, HeaderValue>) -> &'static str {
    let forms = weighted_ranges(accept).filter_map(|(range, weight)| {
        let (rank, form) = match range.as_str() {
            "application/vnd.npm.install-v1+json" => (1, NPM_ABBREVIATED),
            "application/json" | "application/*" | "*/*" => (0, NPM_FULL),
            _ => return None,
        };
        Some((weight, rank, form))
    });
    best_form(forms).unwrap_or(NPM_FULL)
}

/// Of `(weight, preference on a tie, form)`, the form weighted highest above 0.
fn best_form(forms: impl Iterator<Item = (u16, u8, &'static str)>) -> Option<&'static str> {
    forms
        .filter(|(weight, _, _)| *weight > 0)
        .max_by_key(|(weight, rank, _)| (*weight, *rank))
        .map(|(_, _, form)| form)
}

/// The media ranges of `accept`, lower case, with their weights in thousandths; a weight
/// that is no qvalue counts as 0 (never chosen).
fn weighted_ranges(accept: GetAll<'_, HeaderValue>) -> impl Iterator<Item = (String, u16)> + '_ {
    list_members(accept).map(|member| {
        let mut parts = member.split(|b| *b == b';').map(<[u8]>::trim_ascii);
        let range = String::from_utf8_lossy(parts.next().unwrap_or_default()).to_ascii_lowercase();
        let weight = parts
            .find(|param| {
                param
                    .get(..2)
                    .is_some_and(|name| name.eq_ignore_ascii_case(b"q="))
            })
            .map_or(1000, |param| qvalue(param).unwrap_or(0));
        (range, weight)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    /// `choose` applied to a request whose Accept is `accept` (none for `None`).
    fn chosen(
        choose: fn(GetAll<'_, HeaderValue>) -> &'static str,
        accept: Option<&str>,
    ) -> &'static str {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(http::header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        }
        choose(headers.get_all(http::header::ACCEPT))
    }

    fn canonical(accept: Option<&str>) -> &'static str {
        chosen(simple_api_accept, accept)
    }

    /// PEP 691 §"Content negotiation", as pip, uv and older clients write it.
    #[test]
    fn each_client_gets_the_form_it_prefers() {
        let pip = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
        let uv = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";
        assert_eq!(canonical(Some(pip)), SIMPLE_JSON);
        assert_eq!(canonical(Some(uv)), SIMPLE_JSON);
        assert_eq!(canonical(None), LEGACY_HTML);
        assert_eq!(canonical(Some("text/html")), LEGACY_HTML);
        assert_eq!(canonical(Some("*/*")), LEGACY_HTML);
        assert_eq!(
            canonical(Some("application/vnd.pypi.simple.v1+html")),
            SIMPLE_HTML
        );
        assert_eq!(
            canonical(Some(
                "text/html, application/vnd.pypi.simple.latest+json;q=0.5"
            )),
            LEGACY_HTML
        );
        assert_eq!(
            canonical(Some("Application/Vnd.PyPI.Simple.Latest+JSON")),
            SIMPLE_JSON
        );
        // RFC 9110 §5.6.1: empty members and whitespace around members and parameters.
        assert_eq!(
            canonical(Some(
                " , text/html ; q=0.1 ,, application/vnd.pypi.simple.v1+json ;q=0.9 ,"
            )),
            SIMPLE_JSON
        );
    }

    /// RFC 9110 §12.4.2: q=0 is "not acceptable"; a malformed weight counts as 0.
    #[test]
    fn refused_and_malformed_weights_never_win() {
        assert_eq!(
            canonical(Some("application/vnd.pypi.simple.v1+json;q=0, text/html")),
            LEGACY_HTML
        );
        assert_eq!(
            canonical(Some(
                "application/vnd.pypi.simple.v1+json;q=2, text/html;q=0.5"
            )),
            LEGACY_HTML
        );
        assert_eq!(canonical(Some("image/png")), LEGACY_HTML);
        assert_eq!(
            canonical(Some(
                "application/vnd.pypi.simple.v1+json;q=0.0001, text/html;q=0.001"
            )),
            LEGACY_HTML
        );
    }

    fn npm(accept: Option<&str>) -> &'static str {
        chosen(npm_document_accept, accept)
    }

    /// npm, yarn, pnpm and bun ask for the abbreviated document in npm's spelling, some
    /// tools in their own; `npm view` and plain HTTP tools want the full one.
    #[test]
    fn npm_clients_get_the_document_they_prefer() {
        assert_eq!(npm(Some(NPM_ABBREVIATED)), NPM_ABBREVIATED);
        assert_eq!(
            npm(Some("application/vnd.npm.install-v1+json")),
            NPM_ABBREVIATED
        );
        assert_eq!(
            npm(Some("application/vnd.npm.install-v1+json;q=0.9, */*;q=0.8")),
            NPM_ABBREVIATED
        );
        assert_eq!(npm(Some("application/json")), NPM_FULL);
        assert_eq!(npm(Some("*/*")), NPM_FULL);
        assert_eq!(npm(None), NPM_FULL);
        assert_eq!(
            npm(Some(
                "application/vnd.npm.install-v1+json;q=0.5, application/json"
            )),
            NPM_FULL
        );
        assert_eq!(
            npm(Some("application/vnd.npm.install-v1+json;q=0")),
            NPM_FULL
        );
    }
}
