//! Debian `Packages` indexes as apt fetches them: by name (`Packages`, `Packages.gz`,
//! `Packages.xz`) or by digest (`by-hash/SHA256/<hex>`, which Debian's `Release` asks for
//! with `Acquire-By-Hash: yes`, in whatever compression apt chose), decoded to the text the
//! `.deb` digests are read from.

use bytes::Bytes;

use super::decode::{decoded, decoded_prefix};

/// How a `by-hash` file of a Debian archive is recognised as a `Packages` index once
/// decoded: its first paragraph starts with the `Package` field.
const PACKAGES_START: &[u8] = b"Package:";

/// Whether `path` (below a Debian registry) names a `Packages` index by name.
pub fn is_packages_index(path: &str) -> bool {
    ["/Packages", "/Packages.gz", "/Packages.xz"]
        .iter()
        .any(|name| path.ends_with(name))
}

/// Whether `path` names an archive file by its digest.
pub fn is_by_hash(path: &str) -> bool {
    path.contains("/by-hash/")
}

/// `raw` as a `Packages` index's text, if it is one (a `by-hash` file may be any index:
/// `Contents`, translations, AppStream data), an empty one included (a component with no
/// packages for an architecture). Its first bytes are decoded alone first, so that only a
/// `Packages` index is decoded whole.
pub fn packages_text(raw: &Bytes, limit: u64) -> Option<Bytes> {
    if !may_be_packages(raw) {
        return None;
    }
    decoded(raw, limit)
}

/// Whether `raw` (plain, gzip or xz) may be a `Packages` index: its first bytes decode to
/// the start of one, or to nothing (an empty index, or bytes that do not decode at all).
pub fn may_be_packages(raw: &[u8]) -> bool {
    let prefix = decoded_prefix(raw, PACKAGES_START.len());
    prefix.is_empty() || prefix.starts_with(PACKAGES_START)
}

/// What a suite's `Release` (or `InRelease`) says of its index files.
#[derive(Debug, Default)]
pub struct ReleaseIndex {
    /// `Acquire-By-Hash: yes`: apt fetches the indexes as `by-hash/SHA256/<hex>`.
    pub by_hash: bool,
    /// The `SHA256` section: each index file's path below `dists/<suite>/` and digest.
    pub sha256: Vec<(String, String)>,
}

impl ReleaseIndex {
    /// Reads the fields that matter from a `Release` file's text (a signed `InRelease`
    /// reads the same: its signature lines are ignored).
    pub fn parse(text: &str) -> ReleaseIndex {
        let mut index = ReleaseIndex::default();
        let mut in_sha256 = false;
        for line in text.lines() {
            if line.starts_with([' ', '\t']) {
                if in_sha256 {
                    if let [hex, _size, path] = line.split_whitespace().collect::<Vec<_>>()[..] {
                        index
                            .sha256
                            .push((path.to_string(), hex.to_ascii_lowercase()));
                    }
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            in_sha256 = field.eq_ignore_ascii_case("SHA256");
            if field.eq_ignore_ascii_case("Acquire-By-Hash") {
                index.by_hash = value.trim().eq_ignore_ascii_case("yes");
            }
        }
        index
    }

    /// The digest listed for `path` (below `dists/<suite>/`).
    pub fn digest_of(&self, path: &str) -> Option<&str> {
        self.sha256
            .iter()
            .find(|(listed, _)| listed == path)
            .map(|(_, hex)| hex.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = b"Package: a\nFilename: pool/a.deb\nSHA256: 00\n\n";

    fn xz(bytes: &[u8]) -> Bytes {
        let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 1);
        encoder.write_all(bytes).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    fn gz(bytes: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    #[test]
    fn indexes_decode_by_their_leading_bytes_within_the_limit() {
        for raw in [Bytes::from_static(TEXT), gz(TEXT), xz(TEXT)] {
            assert_eq!(packages_text(&raw, 1 << 20).as_deref(), Some(TEXT));
            assert_eq!(decoded(&raw, 10), None, "past the limit");
        }
        let large_contents = xz(&b"usr/bin/a    utils/a\n".repeat(100_000));
        assert_eq!(
            decoded_prefix(&large_contents, PACKAGES_START.len()),
            b"usr/bin/"
        );
        assert_eq!(packages_text(&large_contents, 1 << 30), None);
        let contents = xz(b"usr/bin/a    utils/a\n");
        assert!(decoded(&contents, 1 << 20).is_some());
        assert_eq!(
            packages_text(&contents, 1 << 20),
            None,
            "not a Packages index"
        );
        let mut truncated = xz(TEXT);
        truncated.truncate(truncated.len() - 8);
        assert_eq!(decoded(&truncated, 1 << 20), None);
    }

    /// A file that does not decode is told apart from one that is another index: the first
    /// leaves a `Packages` index's packages unchecked, and is logged.
    #[test]
    fn an_undecodable_packages_index_is_told_from_another_index() {
        let mut truncated = xz(TEXT);
        truncated.truncate(truncated.len() - 8);
        assert_eq!(packages_text(&truncated, 1 << 20), None);
        assert!(may_be_packages(&truncated));
        assert!(may_be_packages(&xz(TEXT)) && may_be_packages(&gz(b"")));
        assert!(may_be_packages(b"\xfd7zXZ\0 not really xz"));
        assert!(!may_be_packages(&xz(b"usr/bin/a    utils/a\n")));
        assert!(!may_be_packages(b"Origin: Debian\n"));
    }

    #[test]
    fn release_files_list_their_indexes_and_say_whether_by_hash() {
        let release = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nSuite: stable\n\
                       Acquire-By-Hash: yes\nMD5Sum:\n 00 1 main/binary-amd64/Packages\n\
                       SHA256:\n AB 12 main/binary-amd64/Packages\n cd 5 main/binary-amd64/Packages.xz\n\
                       -----BEGIN PGP SIGNATURE-----\n";
        let index = ReleaseIndex::parse(release);
        assert!(index.by_hash);
        assert_eq!(index.digest_of("main/binary-amd64/Packages"), Some("ab"));
        assert_eq!(index.digest_of("main/binary-amd64/Packages.xz"), Some("cd"));
        assert_eq!(index.sha256.len(), 2, "MD5Sum lines are not SHA256");
        assert!(!ReleaseIndex::parse("Suite: x\nSHA256:\n ab 1 a\n").by_hash);
    }

    #[test]
    fn index_paths_by_name_and_by_hash() {
        for path in [
            "/debian/dists/x/main/binary-amd64/Packages",
            "/debian/dists/x/main/binary-amd64/Packages.gz",
            "/debian/dists/x/main/binary-amd64/Packages.xz",
        ] {
            assert!(is_packages_index(path), "{path}");
        }
        assert!(!is_packages_index(
            "/debian/dists/x/main/binary-amd64/Packages.diff/Index"
        ));
        assert!(is_by_hash(
            "/debian/dists/x/main/binary-amd64/by-hash/SHA256/ab"
        ));
    }
}
