//! Index documents of package registries: rewriting the absolute links in them so every
//! download comes back through the mirror, and reading the digests they publish for each
//! artifact. Pure functions of a document's bytes; `mirror` decides which document is which
//! and stores the result.
//!
//! - PyPI simple pages: PEP 503 HTML (`<a href="URL#sha256=HEX" data-core-metadata=
//!   "sha256=HEX">`) and PEP 691 JSON (`files[].url`, `.hashes.sha256`, `.core-metadata`).
//! - cargo: the sparse index `config.json` (`dl`, `api`) and index files (a JSON line per
//!   version, `cksum` the sha256 of the `.crate`).
//! - npm: package documents (`versions.*.dist.tarball`, `.integrity`, `.shasum`).
//! - Debian: `Packages` (`Filename:` and `SHA256:` per paragraph).

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::Value;

use super::digests::{Algorithm, DigestRecords, DigestStore, Expected};

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not UTF-8 text")]
    NotText,
    #[error("not a JSON object")]
    NotAnObject,
    /// Reading it on a blocking thread did not finish (the thread panicked or the runtime
    /// is shutting down).
    #[error("reading it failed: {0}")]
    Failed(String),
}

/// Where links go: each upstream URL prefix and the mirror path it is mounted at.
pub struct Links<'a> {
    /// (upstream prefix without trailing slash, mirror path without trailing slash),
    /// longest upstream first.
    pub mounts: &'a [(String, String)],
    /// The mirror's base URL, without trailing slash.
    pub base: &'a str,
}

/// A link of a document, located.
struct Located {
    /// The link as clients get it, when it changes.
    rewritten: Option<String>,
    /// The mirror path a client downloads it from (no query or fragment).
    path: String,
}

impl Links<'_> {
    /// Where `href`, found in the document at `page_path`, leads. `None` for links to hosts
    /// the mirror does not serve.
    fn locate(&self, href: &str, page_path: &str) -> Option<Located> {
        let (target, fragment) = match href.split_once('#') {
            Some((target, fragment)) => (target, Some(fragment)),
            None => (href, None),
        };
        let target = &*same_origin_spelling(target);
        for (upstream, mount) in self.mounts {
            let Some(rest) = target.strip_prefix(upstream.as_str()) else {
                continue;
            };
            if !(rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')) {
                continue;
            }
            let path = format!("{mount}{}", rest.split('?').next().unwrap_or_default());
            let mut rewritten = format!("{}{mount}{rest}", self.base);
            if let Some(fragment) = fragment {
                rewritten.push('#');
                rewritten.push_str(fragment);
            }
            return Some(Located {
                rewritten: Some(rewritten),
                path,
            });
        }
        if target.contains("://") || target.starts_with("//") {
            return None;
        }
        let page = url::Url::parse("http://mirror.invalid")
            .ok()?
            .join(page_path)
            .ok()?;
        let resolved = page.join(target).ok()?;
        Some(Located {
            rewritten: None,
            path: resolved.path().to_string(),
        })
    }
}

/// `target` with its scheme in lower case and its authority as outpost spells every
/// authority ([`crate::cache::key::canonical_authority`]: lower case, no default port), as
/// the mounts are written (RFC 3986 §6.2.2.1, §6.2.3): a document may spell its own host
/// `https://index.crates.io:443` (an Artifactory-fronted crates.io does, in `config.json`'s
/// `dl`), and a link left unrewritten sends the client past the mirror. The rest of the
/// link is kept byte for byte.
fn same_origin_spelling(target: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = target.split_once("://") else {
        return Cow::Borrowed(target);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // Userinfo is case-sensitive, and mounts never carry any: such a link is left as it is.
    if authority.contains('@') {
        return Cow::Borrowed(target);
    }
    // Borrowed when already canonical: a package document has thousands of links.
    let scheme_is_lower = !scheme.bytes().any(|b| b.is_ascii_uppercase());
    let scheme = if scheme_is_lower {
        Cow::Borrowed(scheme)
    } else {
        Cow::Owned(scheme.to_ascii_lowercase())
    };
    match crate::cache::key::canonical_authority(&scheme, authority) {
        Cow::Borrowed(_) if scheme_is_lower => Cow::Borrowed(target),
        canonical => Cow::Owned(format!("{scheme}://{canonical}{tail}")),
    }
}

/// A document after the mirror read it.
#[derive(Default)]
pub struct Read {
    /// The rewritten document; `None` when no link changed.
    pub body: Option<Bytes>,
    /// Digest records for the artifacts it lists.
    pub records: DigestRecords,
}

/// A PEP 503 HTML page: `href`s rewritten in place (the rest of the page byte for byte),
/// `#sha256=` fragments and `data-core-metadata` / `data-dist-info-metadata` recorded.
pub fn pypi_html(text: &str, links: &Links<'_>, page_path: &str) -> Read {
    let mut read = Read::default();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut copied = 0;
    let mut changed = false;
    for (start, tag) in anchor_tags(text) {
        let Some((value_start, value)) = attribute(tag, "href") else {
            continue;
        };
        let href = html_unescape(value);
        let Some(located) = links.locate(&href, page_path) else {
            continue;
        };
        if let Some(hex) = href.split_once("#sha256=").map(|(_, hex)| hex) {
            if let Some(expected) = Expected::from_hex(Algorithm::Sha256, hex) {
                DigestStore::record(&mut read.records, &located.path, &expected);
            }
        }
        for name in ["data-core-metadata", "data-dist-info-metadata"] {
            let hex = attribute(tag, name).and_then(|(_, v)| v.strip_prefix("sha256="));
            if let Some(expected) = hex.and_then(|h| Expected::from_hex(Algorithm::Sha256, h)) {
                let metadata = format!("{}.metadata", located.path);
                DigestStore::record(&mut read.records, &metadata, &expected);
            }
        }
        if let Some(rewritten) = located.rewritten {
            let value_at = start + value_start;
            out.push_str(&text[copied..value_at]);
            out.push_str(&rewritten.replace('&', "&amp;"));
            copied = value_at + value.len();
            changed = true;
        }
    }
    if changed {
        out.push_str(&text[copied..]);
        read.body = Some(Bytes::from(out));
    }
    read
}

/// The `href` of every `<a>` of a PEP 503 page (unescaped), and whether it announces a
/// metadata file (PEP 658 / 714).
pub fn html_links(text: &str) -> Vec<(String, bool)> {
    let mut links = Vec::new();
    for (_, tag) in anchor_tags(text) {
        if let Some((_, href)) = attribute(tag, "href") {
            let metadata = ["data-core-metadata", "data-dist-info-metadata"]
                .iter()
                .any(|name| attribute(tag, name).is_some_and(|(_, v)| v != "false"));
            links.push((html_unescape(href), metadata));
        }
    }
    links
}

/// Each `<a ...` tag of an HTML page (case-insensitive, up to its `>`) and where it starts.
fn anchor_tags(text: &str) -> impl Iterator<Item = (usize, &str)> + '_ {
    let lower = text.to_ascii_lowercase();
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at + lower[at..].find("<a")?;
        let len = lower[start..].find('>')?;
        at = start + len;
        Some((start, &text[start..start + len]))
    })
}

/// The value of attribute `name` in `tag` (`<a ...` up to its `>`), and where the value
/// starts in the tag.
fn attribute<'t>(tag: &'t str, name: &str) -> Option<(usize, &'t str)> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find(name) {
        let at = from + found;
        from = at + name.len();
        let before = lower[..at].chars().next_back();
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let rest = tag[from..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        let offset = tag.len() - rest.len();
        let quote = rest.chars().next()?;
        if quote == '"' || quote == '\'' {
            let end = rest[1..].find(quote)?;
            return Some((offset + 1, &rest[1..=end]));
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '>')
            .unwrap_or(rest.len());
        return Some((offset, &rest[..end]));
    }
    None
}

fn html_unescape(value: &str) -> String {
    value
        .replace("&amp;", "&")
        .replace("&#x3D;", "=")
        .replace("&#61;", "=")
}

/// A PEP 691 JSON page: `files[].url` rewritten, `hashes.sha256` and `core-metadata`
/// recorded.
///
/// # Errors
/// [`DocumentError::Json`] for a page that is not JSON.
pub fn pypi_json(bytes: &[u8], links: &Links<'_>, page_path: &str) -> Result<Read, DocumentError> {
    let sha256_of = |hashes: Option<&RawValue>| {
        let [hex] = picked(hashes?, ["sha256"])?;
        Expected::from_hex(Algorithm::Sha256, &string(hex?)?)
    };
    let (text, page) = json_document(bytes)?;
    let [files] = picked(page, ["files"]).ok_or(DocumentError::NotAnObject)?;
    let mut read = Read::default();
    let mut splices = Splices::new(text);
    let files: Vec<&RawValue> = files.and_then(lenient).unwrap_or_default();
    let names = ["url", "hashes", "core-metadata", "dist-info-metadata"];
    for [url, hashes, core_metadata, dist_info_metadata] in
        files.into_iter().filter_map(|file| picked(file, names))
    {
        let Some((url_value, url)) = string_at(url) else {
            continue;
        };
        let Some(located) = links.locate(&url, page_path) else {
            continue;
        };
        if let Some(expected) = sha256_of(hashes) {
            DigestStore::record(&mut read.records, &located.path, &expected);
        }
        for metadata in [core_metadata, dist_info_metadata] {
            if let Some(expected) = sha256_of(metadata) {
                let metadata = format!("{}.metadata", located.path);
                DigestStore::record(&mut read.records, &metadata, &expected);
            }
        }
        if let Some(rewritten) = located.rewritten {
            splices.replace(url_value, &rewritten);
        }
    }
    read.body = splices.finish();
    Ok(read)
}

/// The note key of a cargo registry's download template (the rewritten `dl`, as a mirror
/// path template).
pub fn cargo_template_key(registry_path: &str) -> Vec<u8> {
    format!("cargo-dl:{registry_path}").into_bytes()
}

/// A cargo `config.json`: `dl` and `api` rewritten when they point at a mounted upstream;
/// the download template (as a mirror path) recorded for reading index files.
///
/// # Errors
/// [`DocumentError::Json`] for a file that is not JSON.
pub fn cargo_config(
    bytes: &[u8],
    links: &Links<'_>,
    registry_path: &str,
) -> Result<Read, DocumentError> {
    let (text, config) = json_document(bytes)?;
    let [dl, api] = picked(config, ["dl", "api"]).ok_or(DocumentError::NotAnObject)?;
    let mut read = Read::default();
    let mut splices = Splices::new(text);
    for (field, value) in [("dl", dl), ("api", api)] {
        let Some((value, url)) = string_at(value) else {
            continue;
        };
        // Markers (`{crate}`) are not URL syntax: locate the part before the first one.
        let cut = url.find('{').unwrap_or(url.len());
        let Some(located) = links.locate(&url[..cut], registry_path) else {
            continue;
        };
        let Some(rewritten) = located.rewritten else {
            continue;
        };
        if field == "dl" {
            let template = format!("{}{}", located.path, &url[cut..]);
            read.records
                .push((cargo_template_key(registry_path), template.into_bytes()));
        }
        splices.replace(value, &format!("{rewritten}{}", &url[cut..]));
    }
    read.body = splices.finish();
    Ok(read)
}

/// The mirror path of a crate file under a `dl` template (cargo's rules: without markers,
/// `/{crate}/{version}/download` is appended).
pub fn cargo_download_path(template: &str, name: &str, version: &str, cksum: &str) -> String {
    const MARKERS: [&str; 5] = [
        "{crate}",
        "{version}",
        "{prefix}",
        "{lowerprefix}",
        "{sha256-checksum}",
    ];
    if !MARKERS.iter().any(|m| template.contains(m)) {
        return format!(
            "{}/{name}/{version}/download",
            template.trim_end_matches('/')
        );
    }
    let prefix = cargo_index_prefix(name);
    template
        .replace("{crate}", name)
        .replace("{version}", version)
        .replace("{prefix}", &prefix)
        .replace("{lowerprefix}", &prefix.to_lowercase())
        .replace("{sha256-checksum}", cksum)
}

/// The folder of a crate's file in the sparse index (`1`, `2`, `3/a`, `se/rd`), as cargo
/// spells it for `name` (the index lower-cases; `{prefix}` in `dl` does not).
pub fn cargo_index_prefix(name: &str) -> String {
    match name.len() {
        1 => "1".to_string(),
        2 => "2".to_string(),
        3 => format!("3/{}", &name[..1]),
        _ => format!("{}/{}", &name[..2], &name[2..4]),
    }
}

/// A cargo index file: each version's `cksum` recorded for its download path.
pub fn cargo_index(bytes: &[u8], template: &str) -> Read {
    let mut read = Read::default();
    for line in bytes.split(|&b| b == b'\n') {
        let Ok(version) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let field = |name: &str| version.get(name).and_then(Value::as_str);
        let (Some(name), Some(vers), Some(cksum)) = (field("name"), field("vers"), field("cksum"))
        else {
            continue;
        };
        if let Some(expected) = Expected::from_hex(Algorithm::Sha256, cksum) {
            let path = cargo_download_path(template, name, vers, cksum);
            DigestStore::record(&mut read.records, &path, &expected);
        }
    }
    read
}

/// An npm package document (full or abbreviated): every version's `dist.tarball`
/// rewritten, its `integrity` (or legacy `shasum`) recorded.
///
/// # Errors
/// [`DocumentError::Json`] for a document that is not JSON.
pub fn npm_packument(
    bytes: &[u8],
    links: &Links<'_>,
    page_path: &str,
) -> Result<Read, DocumentError> {
    let (text, document) = json_document(bytes)?;
    let [versions] = picked(document, ["versions"]).ok_or(DocumentError::NotAnObject)?;
    let mut read = Read::default();
    let mut splices = Splices::new(text);
    let versions = versions.and_then(member_values).unwrap_or_default();
    for [dist] in versions.into_iter().filter_map(|v| picked(v, ["dist"])) {
        let Some([tarball, integrity, shasum]) =
            dist.and_then(|dist| picked(dist, ["tarball", "integrity", "shasum"]))
        else {
            continue;
        };
        let Some((tarball_value, tarball)) = string_at(tarball) else {
            continue;
        };
        let Some(located) = links.locate(&tarball, page_path) else {
            continue;
        };
        let expected = integrity
            .and_then(string)
            .and_then(|sri| Expected::from_sri(&sri))
            .or_else(|| Expected::from_hex(Algorithm::Sha1, &string(shasum?)?));
        if let Some(expected) = expected {
            DigestStore::record(&mut read.records, &located.path, &expected);
        }
        if let Some(rewritten) = located.rewritten {
            splices.replace(tarball_value, &rewritten);
        }
    }
    read.body = splices.finish();
    Ok(read)
}

/// A JSON document's text, checked to be JSON (as a tree of it would have been), and the
/// document as a value left unparsed (`RawValue`): its members are read where wanted, one
/// version or file at a time, never built into a tree (a 20 MB npm document took over
/// 100 MB as a `serde_json::Value`).
fn json_document(bytes: &[u8]) -> Result<(&str, &RawValue), DocumentError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DocumentError::NotText)?;
    Ok((text, serde_json::from_str(text)?))
}

/// The members of the JSON object `raw` named in `names`, each value unparsed; the last
/// of a name given twice wins (as in a tree of it, and in the clients' own parsers).
/// Other members are skipped, their names compared where they lie, never copied. `None`
/// for another kind of value.
fn picked<'a, const N: usize>(
    raw: &'a RawValue,
    names: [&'static str; N],
) -> Option<[Option<&'a RawValue>; N]> {
    read_with(raw, Picker(names))
}

/// The values of the JSON object `raw`, unparsed, in order (a name given twice gives
/// each); `None` for another kind of value.
fn member_values(raw: &RawValue) -> Option<Vec<&RawValue>> {
    read_with(raw, AllValues)
}

/// `raw` read by `seed`, which must take the whole value; `None` when it cannot.
fn read_with<'a, S: serde::de::DeserializeSeed<'a>>(
    raw: &'a RawValue,
    seed: S,
) -> Option<S::Value> {
    let mut reader = serde_json::Deserializer::from_str(raw.get());
    let value = seed.deserialize(&mut reader).ok()?;
    reader.end().ok()?;
    Some(value)
}

/// Reads an object for [`picked`]: the values of the members `.0` names, by position.
struct Picker<const N: usize>([&'static str; N]);

impl<'de, const N: usize> serde::de::DeserializeSeed<'de> for Picker<N> {
    type Value = [Option<&'de RawValue>; N];

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<Self::Value, D::Error> {
        reader.deserialize_map(self)
    }
}

impl<'de, const N: usize> serde::de::Visitor<'de> for Picker<N> {
    type Value = [Option<&'de RawValue>; N];

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = [None; N];
        while let Some(position) = map.next_key_seed(NamePosition(&self.0))? {
            match position {
                Some(position) => values[position] = Some(map.next_value()?),
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }
}

/// A member's name as its position among the names wanted: compared, never copied.
struct NamePosition<'n>(&'n [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for NamePosition<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<Self::Value, D::Error> {
        reader.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NamePosition<'_> {
    type Value = Option<usize>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a member's name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|wanted| *wanted == name))
    }
}

/// Reads an object for [`member_values`].
struct AllValues;

impl<'de> serde::de::DeserializeSeed<'de> for AllValues {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, reader: D) -> Result<Self::Value, D::Error> {
        reader.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AllValues {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            values.push(map.next_value()?);
        }
        Ok(values)
    }
}

/// `raw` read as `T`; `None` when it has another shape, as a lookup in a tree of it would
/// have found nothing.
fn lenient<'a, T: serde::Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

/// `raw` as a string, if it is one.
fn string(raw: &RawValue) -> Option<String> {
    lenient::<String>(raw)
}

/// A string member: its value where it lies in the text (to be replaced) and the string.
fn string_at(raw: Option<&RawValue>) -> Option<(&RawValue, String)> {
    let raw = raw?;
    Some((raw, string(raw)?))
}

/// Values of a JSON document replaced in its text, the rest of it byte for byte.
struct Splices<'a> {
    text: &'a str,
    /// Where each replaced value starts in `text`, its length, and the JSON to put there.
    edits: Vec<(usize, usize, String)>,
}

impl<'a> Splices<'a> {
    fn new(text: &'a str) -> Splices<'a> {
        Splices {
            text,
            edits: Vec::new(),
        }
    }

    /// Replaces the value `raw` (a part of the text) with the string `value`.
    fn replace(&mut self, raw: &'a RawValue, value: &str) {
        let start = (raw.get().as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        let within = self.text.get(start..start + raw.get().len());
        // Always so for a value borrowed from the text; checked rather than trusted.
        if within.is_some_and(|found| std::ptr::eq(found, raw.get())) {
            if let Ok(json) = serde_json::to_string(value) {
                self.edits.push((start, raw.get().len(), json));
            }
        }
    }

    /// The text with the replacements made; `None` when there were none.
    fn finish(mut self) -> Option<Bytes> {
        if self.edits.is_empty() {
            return None;
        }
        self.edits.sort_unstable_by_key(|&(start, ..)| start);
        let grown: usize = self.edits.iter().map(|(_, _, json)| json.len()).sum();
        let mut out = String::with_capacity(self.text.len() + grown);
        let mut copied = 0;
        for (start, len, json) in &self.edits {
            out.push_str(&self.text[copied..*start]);
            out.push_str(json);
            copied = start + len;
        }
        out.push_str(&self.text[copied..]);
        Some(Bytes::from(out))
    }
}

/// The value of field `name` in one paragraph of a Debian control file (`Packages`).
pub fn debian_field<'a>(paragraph: &'a str, name: &str) -> Option<&'a str> {
    paragraph.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Paragraphs of a Debian `Packages` file (whole ones: the caller splits the file at blank
/// lines): each paragraph's `SHA256` recorded into `records` for `archive_root` +
/// `Filename`.
pub fn debian_packages(text: &str, archive_root: &str, records: &mut DigestRecords) {
    for paragraph in text.split("\n\n") {
        // One walk over the paragraph's lines for both fields: an index has tens of
        // thousands of paragraphs, most of them long descriptions.
        let (mut filename, mut sha256) = (None, None);
        for line in paragraph.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if filename.is_none() && key.eq_ignore_ascii_case("Filename") {
                filename = Some(value.trim());
            } else if sha256.is_none() && key.eq_ignore_ascii_case("SHA256") {
                sha256 = Some(value.trim());
            }
            if filename.is_some() && sha256.is_some() {
                break;
            }
        }
        let (Some(filename), Some(sha256)) = (filename, sha256) else {
            continue;
        };
        if let Some(expected) = Expected::from_hex(Algorithm::Sha256, sha256) {
            let path = format!("{}/{}", archive_root.trim_end_matches('/'), filename);
            DigestStore::record(records, &path, &expected);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<(String, String)> {
        vec![
            ("https://files.example".into(), "/pypi/_files".into()),
            ("https://index.example".into(), "/pypi".into()),
        ]
    }

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn html_links_to_mounted_hosts_are_rewritten_and_their_digests_recorded() {
        let mounts = mounts();
        let links = Links {
            mounts: &mounts,
            base: "http://m:8080",
        };
        let page = format!(
            "<html><body>\n<A HREF=\"https://files.example/packages/a/x-1.whl#sha256={HEX}\" data-core-metadata=\"sha256={HEX}\">x-1.whl</A>\n\
             <a href='../../elsewhere/y.tar.gz#sha256={HEX}'>y</a>\n<a href=\"https://other.example/z.whl\">z</a></body></html>"
        );
        let read = pypi_html(&page, &links, "/pypi/simple/x/");
        let body = String::from_utf8(read.body.unwrap().to_vec()).unwrap();
        assert!(body.contains(&format!(
            "HREF=\"http://m:8080/pypi/_files/packages/a/x-1.whl#sha256={HEX}\" data-core"
        )));
        assert!(
            body.contains("https://other.example/z.whl"),
            "foreign links stay"
        );
        assert!(
            body.contains("'../../elsewhere/y.tar.gz"),
            "relative links stay"
        );
        let keys: Vec<String> = read
            .records
            .iter()
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(
            keys,
            [
                "digest:/pypi/_files/packages/a/x-1.whl",
                "digest:/pypi/_files/packages/a/x-1.whl.metadata",
                "digest:/pypi/elsewhere/y.tar.gz"
            ]
        );
    }

    #[test]
    fn json_pages_packuments_and_cargo_config_are_rewritten() {
        let mounts = mounts();
        let links = Links {
            mounts: &mounts,
            base: "https://mirror",
        };
        let page = format!(
            r#"{{"meta":{{"api-version":"1.1"}},"files":[{{"filename":"x.whl","url":"https://files.example/p/x.whl","hashes":{{"sha256":"{HEX}"}}}}]}}"#
        );
        let read = pypi_json(page.as_bytes(), &links, "/pypi/simple/x/").unwrap();
        let body: Value = serde_json::from_slice(&read.body.unwrap()).unwrap();
        assert_eq!(
            body["files"][0]["url"],
            "https://mirror/pypi/_files/p/x.whl"
        );
        assert_eq!(read.records.len(), 1);

        let config = br#"{"dl":"https://files.example/crates","api":"https://crates.example"}"#;
        let read = cargo_config(config, &links, "/pypi/").unwrap();
        // The rest of the file byte for byte; an unmounted API stays.
        assert_eq!(
            read.body.unwrap(),
            &br#"{"dl":"https://mirror/pypi/_files/crates","api":"https://crates.example"}"#[..]
        );
        assert_eq!(read.records[0].1, b"/pypi/_files/crates");

        let packument = br#"{"name":"a","versions":{"1.0.0":{"dist":{"tarball":"https://index.example/a/-/a-1.0.0.tgz","shasum":"aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"}}}}"#;
        let read = npm_packument(packument, &links, "/pypi/a").unwrap();
        let body: Value = serde_json::from_slice(&read.body.unwrap()).unwrap();
        assert_eq!(
            body["versions"]["1.0.0"]["dist"]["tarball"],
            "https://mirror/pypi/a/-/a-1.0.0.tgz"
        );
        assert_eq!(read.records[0].0, b"digest:/pypi/a/-/a-1.0.0.tgz");
    }

    /// Only the links change: the rest of a package document stays byte for byte (key
    /// order, spacing, escapes), and values of unexpected shapes are passed over, as a
    /// lookup in a tree would have found nothing there.
    #[test]
    fn json_documents_change_only_their_links() {
        let mounts = mounts();
        let links = Links {
            mounts: &mounts,
            base: "https://mirror",
        };
        let packument = r#"{ "versions" : {
  "2.0.0": {"z": 1, "dist": {"shasum": "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", "tarball": "https:\/\/index.example\/a\/-\/a-2.0.0.tgz"}},
  "1.0.0": {"dist": {"integrity": null, "tarball": "https://index.example/a/-/a-1.0.0.tgz"}},
  "0.1.0": {"dist": "not an object"},
  "0.0.1": ["not an object"],
  "3.0.0": {"dist": {"tarball": "https://other.example/a.tgz", "shasum": "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", "tarball": "https://index.example/a/-/a-3.0.0.tgz"}},
  "4.0.0": {"dis\u0074": {"tarball": "https://index.example/a/-/a-4.0.0.tgz"}}
}, "name": "a\u0041"}"#;
        let read = npm_packument(packument.as_bytes(), &links, "/pypi/a").unwrap();
        let body = String::from_utf8(read.body.unwrap().to_vec()).unwrap();
        let expected = packument
            .replace(
                r#""https:\/\/index.example\/a\/-\/a-2.0.0.tgz""#,
                r#""https://mirror/pypi/a/-/a-2.0.0.tgz""#,
            )
            .replace(
                r#""https://index.example/a/-/a-1.0.0.tgz""#,
                r#""https://mirror/pypi/a/-/a-1.0.0.tgz""#,
            )
            // A name given twice: the last wins, as in a tree and in the clients' parsers.
            .replace(
                r#""https://index.example/a/-/a-3.0.0.tgz""#,
                r#""https://mirror/pypi/a/-/a-3.0.0.tgz""#,
            )
            // A name spelled with an escape is the same name.
            .replace(
                r#""https://index.example/a/-/a-4.0.0.tgz""#,
                r#""https://mirror/pypi/a/-/a-4.0.0.tgz""#,
            );
        assert_eq!(body, expected);
        let mut keys: Vec<&[u8]> = read.records.iter().map(|(key, _)| key.as_slice()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                b"digest:/pypi/a/-/a-2.0.0.tgz".as_slice(),
                b"digest:/pypi/a/-/a-3.0.0.tgz".as_slice()
            ]
        );

        let page = r#"{"meta": {"api-version": "1.1"}, "files": [
  {"url": "https://files.example/p/x.whl", "hashes": {"sha256": "HEX"}, "core-metadata": {"sha256": "HEX"}},
  {"url": "https://files.example/p/y.whl", "hashes": [], "core-metadata": true},
  {"url": 7}
]}"#
        .replace("HEX", HEX);
        let read = pypi_json(page.as_bytes(), &links, "/pypi/simple/x/").unwrap();
        let body = String::from_utf8(read.body.unwrap().to_vec()).unwrap();
        assert_eq!(
            body,
            page.replace("https://files.example/", "https://mirror/pypi/_files/")
        );
        assert_eq!(read.records.len(), 2, "x.whl and its metadata");

        for not_read in [&b"{\"versions\": "[..], b"[1, 2]", b"\xff"] {
            assert!(npm_packument(not_read, &links, "/pypi/a").is_err());
        }
        let unchanged = npm_packument(br#"{"versions": 3}"#, &links, "/pypi/a").unwrap();
        assert!(unchanged.body.is_none() && unchanged.records.is_empty());
    }

    #[test]
    fn cargo_templates_follow_cargos_rules() {
        assert_eq!(
            cargo_download_path("/c/_files/crates", "serde", "1.0.0", "x"),
            "/c/_files/crates/serde/1.0.0/download"
        );
        assert_eq!(
            cargo_download_path(
                "/c/_files/{prefix}/{crate}-{version}.crate",
                "ab",
                "0.1.0",
                "x"
            ),
            "/c/_files/2/ab-0.1.0.crate"
        );
        assert_eq!(
            cargo_download_path("/c/{lowerprefix}/{crate}", "Abcd", "1", "x"),
            "/c/ab/cd/Abcd"
        );
        let line = format!(
            "{{\"name\":\"ab\",\"vers\":\"0.1.0\",\"deps\":[],\"cksum\":\"{HEX}\"}}\nnot json\n"
        );
        let read = cargo_index(line.as_bytes(), "/c/_files");
        assert_eq!(read.records[0].0, b"digest:/c/_files/ab/0.1.0/download");
    }

    /// RFC 3986 §6.2.2.1, §6.2.3: `HTTPS://Index.Example:443/x` is the mounted
    /// `https://index.example`; another port, or userinfo, is another place.
    #[test]
    fn links_to_a_mounted_host_match_however_its_origin_is_spelled() {
        let mounts = mounts();
        let links = Links {
            mounts: &mounts,
            base: "http://m:8080",
        };
        let config = br#"{"dl": "https://index.example:443/artifactory/crates", "api": "HTTPS://Index.Example/api"}"#;
        let read = cargo_config(config, &links, "/pypi/").unwrap();
        let body: Value = serde_json::from_slice(&read.body.unwrap()).unwrap();
        assert_eq!(body["dl"], "http://m:8080/pypi/artifactory/crates");
        assert_eq!(body["api"], "http://m:8080/pypi/api");
        assert_eq!(read.records[0].1, b"/pypi/artifactory/crates");
        for elsewhere in [
            "https://index.example:8443/x",
            "https://user@index.example/x",
            "http://index.example:443/x",
            "https://index.example.evil/x",
        ] {
            assert!(links.locate(elsewhere, "/pypi/").is_none(), "{elsewhere}");
        }
    }

    #[test]
    fn debian_packages_record_every_file() {
        let packages = format!(
            "Package: a\nFilename: pool/main/a/a_1.0+b1_all.deb\nSHA256: {HEX}\n\nPackage: b\nFilename: pool/b.deb\n"
        );
        let mut records = Vec::new();
        debian_packages(&packages, "/debian/", &mut records);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0, b"digest:/debian/pool/main/a/a_1.0+b1_all.deb");
        // Fields in any order and case (deb822); a description's continuation line that
        // reads like a field is part of the description.
        let packages = format!(
            "Package: c
sha256: {HEX}
Description: c
 Filename: pool/forged.deb
filename: pool/c.deb
"
        );
        let mut records = Vec::new();
        debian_packages(&packages, "/debian/", &mut records);
        let keys: Vec<&[u8]> = records.iter().map(|(key, _)| key.as_slice()).collect();
        assert_eq!(keys, [b"digest:/debian/pool/c.deb".as_slice()]);
    }
}
