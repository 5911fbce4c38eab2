//! Debian `Packages` indexes as apt fetches them: by name (`Packages`, `Packages.gz`,
//! `Packages.xz`) or by digest (`by-hash/SHA256/<hex>`, which Debian's `Release` asks for
//! with `Acquire-By-Hash: yes`, in whatever compression apt chose), decoded to the text the
//! `.deb` digests are read from.

use bytes::Bytes;

use super::decode::{decoded, decoded_prefix};
use super::digests::DigestRecords;

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

/// A `Packages` index read as its decoded text is written to it: each run of whole
/// paragraphs becomes digest records at once and is let go, so the text is never held whole
/// (Debian's main index decodes to 50 MB; its records take about 6). A write fails, and
/// ends the decoding, once the text is past its limit or is not a `Packages` index.
pub struct PackagesRecords {
    /// Text after the last blank line read: the start of a paragraph still arriving.
    pending: Vec<u8>,
    decoded: u64,
    limit: u64,
    archive_root: String,
    records: DigestRecords,
    /// Whether the text has yet to show it starts like a `Packages` index (a `by-hash`
    /// file may be any index).
    unconfirmed: bool,
    stopped: Option<NotRead>,
}

/// Why a `Packages` index's text was not read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRead {
    /// It decodes to more than the limit.
    PastTheLimit,
    /// It starts as another index does.
    OtherIndex,
    /// Its text is not UTF-8.
    NotText,
    /// A paragraph runs past [`MAX_PARAGRAPH`]: not an index apt would read either.
    ParagraphTooLong,
}

/// The longest paragraph read: Debian's longest are tens of kilobytes, and a text with no
/// blank line would otherwise be held whole.
const MAX_PARAGRAPH: usize = 1 << 20;

/// The most text taken in one write: a body held whole arrives as one chunk, and its text
/// is read a slice at a time rather than copied whole into the paragraph being read.
const MAX_WRITE: usize = 64 << 10;

impl PackagesRecords {
    /// `by_hash`: the text must start like a `Packages` index, or be empty, to be read (a
    /// `by-hash` file may be any index).
    pub fn new(archive_root: &str, limit: u64, by_hash: bool) -> PackagesRecords {
        PackagesRecords {
            pending: Vec::new(),
            decoded: 0,
            limit,
            archive_root: archive_root.to_string(),
            records: Vec::new(),
            unconfirmed: by_hash,
            stopped: None,
        }
    }

    /// Why the text stopped being read, if a write failed for it.
    pub fn stopped(&self) -> Option<NotRead> {
        self.stopped
    }

    /// The records of every paragraph, the last one included, once the text has ended
    /// (taken: a second call has none).
    pub fn finish(&mut self) -> Result<DigestRecords, NotRead> {
        if let Some(reason) = self.stopped {
            return Err(reason);
        }
        if self.unconfirmed && !self.pending.is_empty() {
            return Err(NotRead::OtherIndex);
        }
        self.read_paragraphs(self.pending.len())?;
        self.pending.clear();
        Ok(std::mem::take(&mut self.records))
    }

    /// Records the paragraphs of the text read so far up to `end` (whole ones).
    fn read_paragraphs(&mut self, end: usize) -> Result<(), NotRead> {
        let text = std::str::from_utf8(&self.pending[..end]).map_err(|_| NotRead::NotText)?;
        super::documents::debian_packages(text, &self.archive_root, &mut self.records);
        Ok(())
    }

    fn stop(&mut self, reason: NotRead) -> std::io::Error {
        self.stopped = Some(reason);
        std::io::Error::other(format!("Packages index not read: {reason:?}"))
    }
}

impl std::io::Write for PackagesRecords {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(reason) = self.stopped {
            return Err(self.stop(reason));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        self.decoded += data.len() as u64;
        if self.decoded > self.limit {
            return Err(self.stop(NotRead::PastTheLimit));
        }
        // A blank line may straddle two writes: look from the byte before this one.
        let search_from = self.pending.len().saturating_sub(1);
        self.pending.extend_from_slice(data);
        if self.unconfirmed {
            let seen = self.pending.len().min(PACKAGES_START.len());
            if self.pending[..seen] != PACKAGES_START[..seen] {
                return Err(self.stop(NotRead::OtherIndex));
            }
            self.unconfirmed = seen < PACKAGES_START.len();
        }
        let Some(blank) = self.pending[search_from..]
            .windows(2)
            .rposition(|pair| pair == b"\n\n")
        else {
            if self.pending.len() > MAX_PARAGRAPH {
                return Err(self.stop(NotRead::ParagraphTooLong));
            }
            return Ok(data.len());
        };
        let whole = search_from + blank;
        if let Err(reason) = self.read_paragraphs(whole) {
            return Err(self.stop(reason));
        }
        self.pending.drain(..whole + 2);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

    const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn index(packages: usize) -> String {
        (0..packages)
            .map(|i| {
                format!("Package: p{i}\nDescription: d\n long\n\nFilename: pool/p{i}.deb\nSHA256: {HEX}\n")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The text written in pieces of `piece` bytes (the last paragraph has no blank line
    /// after it, as in Debian's files).
    fn records_of(text: &[u8], piece: usize, by_hash: bool) -> Result<Vec<Vec<u8>>, NotRead> {
        let mut records = PackagesRecords::new("/debian/", 1 << 20, by_hash);
        for chunk in text.chunks(piece) {
            if records.write_all(chunk).is_err() {
                break;
            }
        }
        let read = records.finish()?;
        Ok(read.into_iter().map(|(key, _)| key).collect())
    }

    /// Paragraphs and blank lines split anywhere across writes read the same as whole.
    #[test]
    fn packages_read_in_pieces_record_what_the_whole_text_records() {
        let text = index(50);
        let whole = records_of(text.as_bytes(), text.len(), false).unwrap();
        assert_eq!(whole.len(), 50);
        assert_eq!(whole[49], b"digest:/debian/pool/p49.deb");
        for piece in [1, 2, 7, 64, 1000] {
            assert_eq!(
                records_of(text.as_bytes(), piece, false).unwrap(),
                whole,
                "{piece}"
            );
            assert_eq!(
                records_of(text.as_bytes(), piece, true).unwrap(),
                whole,
                "{piece}"
            );
        }
    }

    #[test]
    fn packages_text_stops_past_the_limit_or_when_not_a_packages_index() {
        let text = index(1000);
        let mut records = PackagesRecords::new("/debian/", 4096, false);
        assert!(records.write_all(text.as_bytes()).is_err());
        assert_eq!(records.stopped(), Some(NotRead::PastTheLimit));
        assert_eq!(records.finish(), Err(NotRead::PastTheLimit));
        // A by-hash file that is a Contents or Translation index is not read on.
        for piece in [1, 3, 100] {
            let contents = b"usr/bin/a    utils/a\n".repeat(10);
            assert_eq!(records_of(&contents, piece, true), Err(NotRead::OtherIndex));
            // By name it is read for what it has: nothing.
            assert_eq!(records_of(&contents, piece, false), Ok(Vec::new()));
        }
        assert_eq!(records_of(b"Pack", 1, true), Err(NotRead::OtherIndex));
        assert_eq!(records_of(b"", 1, true), Ok(Vec::new()), "an empty index");
        let endless = format!("Package: a\nDescription: a\n{}", " more\n".repeat(300_000));
        let mut records = PackagesRecords::new("/debian/", 64 << 20, false);
        assert!(records.write_all(endless.as_bytes()).is_err());
        assert_eq!(records.stopped(), Some(NotRead::ParagraphTooLong));
        assert!(
            records.pending.len() <= MAX_PARAGRAPH + MAX_WRITE,
            "never held whole"
        );
        let mut latin1 = index(2).into_bytes();
        latin1.extend_from_slice(b"\n\nPackage: \xe9\n\nPackage: b\n");
        assert_eq!(records_of(&latin1, 5, false), Err(NotRead::NotText));
    }

    /// The compressed forms read as they arrive, a byte at a time, leading bytes included.
    #[test]
    fn compressed_indexes_decode_as_they_stream() {
        use crate::mirror::decode::{Coding, DecodingWriter};
        let text = index(200);
        for raw in [
            Bytes::from(text.clone()),
            gz(text.as_bytes()),
            xz(text.as_bytes()),
        ] {
            let mut decoding = DecodingWriter::new(
                Coding::Sniffed,
                PackagesRecords::new("/debian/", 1 << 20, true),
            );
            for byte in raw.chunks(1) {
                decoding.write_all(byte).unwrap();
            }
            decoding.try_finish().unwrap();
            let records = decoding.get_mut().unwrap().finish().unwrap();
            assert_eq!(records.len(), 200);
        }
        let mut decoding = DecodingWriter::new(
            Coding::Gzip,
            PackagesRecords::new("/debian/", 1 << 20, false),
        );
        decoding.write_all(&gz(text.as_bytes())).unwrap();
        decoding.try_finish().unwrap();
        assert_eq!(decoding.get_mut().unwrap().finish().unwrap().len(), 200);
        for raw in [gz(text.as_bytes()), xz(text.as_bytes())] {
            let truncated = &raw[..raw.len() - 8];
            let mut decoding = DecodingWriter::new(
                Coding::Sniffed,
                PackagesRecords::new("/debian/", 1 << 20, true),
            );
            decoding.write_all(truncated).unwrap();
            assert!(
                decoding.try_finish().is_err(),
                "a truncated index does not decode"
            );
            let records = decoding.get_mut().unwrap();
            assert_eq!(records.stopped(), None, "it was read until it broke off");
        }
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
