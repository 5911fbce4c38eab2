//! Expected digests: what a registry's index published about each artifact (PyPI's
//! `sha256`, a crates index `cksum`, npm's `dist.integrity`, Debian's `Packages` SHA256, a
//! `by-hash` path), recorded by the mirror path a client downloads the artifact from, and
//! checked against the bytes the upstream sends.
//!
//! Records live in the disk tier's index when there is one (so a restart, or an offline
//! machine prepared by `outpost warm`, keeps them) and in a bounded memory map otherwise.

use std::borrow::Cow;

use crate::cache::disk::DiskTier;

/// A digest algorithm a registry publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
    /// npm's `shasum`, for packages published before `integrity` existed.
    Sha1,
}

impl Algorithm {
    fn tag(self) -> u8 {
        match self {
            Algorithm::Sha256 => 1,
            Algorithm::Sha512 => 2,
            Algorithm::Sha1 => 3,
        }
    }

    fn from_tag(tag: u8) -> Option<Algorithm> {
        match tag {
            1 => Some(Algorithm::Sha256),
            2 => Some(Algorithm::Sha512),
            3 => Some(Algorithm::Sha1),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Sha1 => "sha1",
        }
    }

    fn len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
            Algorithm::Sha1 => 20,
        }
    }

    fn ring(self) -> &'static ring::digest::Algorithm {
        match self {
            Algorithm::Sha256 => &ring::digest::SHA256,
            Algorithm::Sha512 => &ring::digest::SHA512,
            Algorithm::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        }
    }
}

/// A published digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub algorithm: Algorithm,
    pub digest: Vec<u8>,
}

impl Expected {
    /// From hex text (`sha256=` fragments, `cksum`, Debian's `SHA256:`).
    pub fn from_hex(algorithm: Algorithm, hex: &str) -> Option<Expected> {
        let hex = hex.trim();
        if hex.len() != algorithm.len() * 2 {
            return None;
        }
        let digest = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        Some(Expected { algorithm, digest })
    }

    /// From a Subresource Integrity value (`sha512-<base64> sha1-<base64>`): the strongest
    /// digest it names.
    pub fn from_sri(text: &str) -> Option<Expected> {
        use base64::Engine;
        let mut best: Option<Expected> = None;
        for token in text.split_whitespace() {
            let Some((name, value)) = token.split_once('-') else {
                continue;
            };
            let algorithm = match name {
                "sha512" => Algorithm::Sha512,
                "sha256" => Algorithm::Sha256,
                "sha1" => Algorithm::Sha1,
                _ => continue,
            };
            let value = value.split('?').next().unwrap_or_default();
            let Ok(digest) = base64::engine::general_purpose::STANDARD.decode(value) else {
                continue;
            };
            if digest.len() != algorithm.len() {
                continue;
            }
            let rank = |a: Algorithm| a.len();
            if best
                .as_ref()
                .is_none_or(|b| rank(b.algorithm) < rank(algorithm))
            {
                best = Some(Expected { algorithm, digest });
            }
        }
        best
    }

    /// Whether `body` has this digest.
    pub fn matches(&self, body: &[u8]) -> bool {
        self.is(ring::digest::digest(self.algorithm.ring(), body).as_ref())
    }

    /// Whether `digest` (of this algorithm) is this one.
    pub fn is(&self, digest: &[u8]) -> bool {
        digest == self.digest.as_slice()
    }

    /// A running digest of this algorithm.
    pub fn context(&self) -> ring::digest::Context {
        ring::digest::Context::new(self.algorithm.ring())
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1 + self.digest.len());
        bytes.push(self.algorithm.tag());
        bytes.extend_from_slice(&self.digest);
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Expected> {
        let (&tag, digest) = bytes.split_first()?;
        let algorithm = Algorithm::from_tag(tag)?;
        (digest.len() == algorithm.len()).then(|| Expected {
            algorithm,
            digest: digest.to_vec(),
        })
    }
}

/// The digest a `by-hash` path names (`.../by-hash/SHA256/<hex>`, Debian's archive).
pub fn named_by_path(path: &str) -> Option<Expected> {
    let (_, rest) = path.split_once("/by-hash/")?;
    let (algorithm, hex) = rest.split_once('/')?;
    match algorithm {
        "SHA256" => Expected::from_hex(Algorithm::Sha256, hex),
        "SHA512" => Expected::from_hex(Algorithm::Sha512, hex),
        _ => None,
    }
}

/// The key a record is kept under: the mirror path, percent-decoded, so `%2b` and `+` (apt
/// writes the first, `Packages` the second) are one artifact.
pub fn record_key(path: &str) -> Vec<u8> {
    let mut key = b"digest:".to_vec();
    key.extend_from_slice(&percent_decoded(path));
    key
}

fn percent_decoded(path: &str) -> Cow<'_, [u8]> {
    if !path.contains('%') {
        return Cow::Borrowed(path.as_bytes());
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// Records kept without a disk tier: at most this many (then the oldest half goes).
const MEMORY_RECORDS: usize = 1 << 20;

/// Where records are kept.
pub struct DigestStore {
    disk: Option<DiskTier>,
    memory: parking_lot::Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>,
}

/// Facts to record, as (`key`, `value`): what indexes published for their artifacts.
pub type DigestRecords = Vec<(Vec<u8>, Vec<u8>)>;

impl DigestStore {
    pub fn new(disk: Option<DiskTier>) -> DigestStore {
        DigestStore {
            disk,
            memory: parking_lot::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Records facts (`key`, `value`) at once.
    pub fn put_all(&self, records: DigestRecords) {
        if records.is_empty() {
            return;
        }
        if let Some(disk) = &self.disk {
            disk.put_notes(&records);
            return;
        }
        let mut memory = self.memory.lock();
        if memory.len() + records.len() > MEMORY_RECORDS {
            let doomed: Vec<Vec<u8>> = memory.keys().take(memory.len() / 2).cloned().collect();
            for key in doomed {
                memory.remove(&key);
            }
        }
        memory.extend(records);
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match &self.disk {
            Some(disk) => disk.note(key),
            None => self.memory.lock().get(key).cloned(),
        }
    }

    /// Records what the index published for the artifact at `path`.
    pub fn record(records: &mut DigestRecords, path: &str, expected: &Expected) {
        records.push((record_key(path), expected.encode()));
    }

    /// What the index published for the artifact at `path`, if it was seen.
    pub fn expected(&self, path: &str) -> Option<Expected> {
        named_by_path(path).or_else(|| Expected::decode(&self.get(&record_key(path))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sri_picks_the_strongest_digest_and_hex_round_trips() {
        let body = b"hello";
        let sha512 = ring::digest::digest(&ring::digest::SHA512, body);
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body);
        use base64::Engine;
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let sri = format!(
            "sha1-{} sha512-{}",
            b64(sha1.as_ref()),
            b64(sha512.as_ref())
        );
        let expected = Expected::from_sri(&sri).unwrap();
        assert_eq!(expected.algorithm, Algorithm::Sha512);
        assert!(expected.matches(body));
        assert!(!expected.matches(b"hellO"));
        let hex: String = ring::digest::digest(&ring::digest::SHA256, body)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let expected = Expected::from_hex(Algorithm::Sha256, &hex).unwrap();
        assert!(expected.matches(body));
        assert_eq!(Expected::decode(&expected.encode()), Some(expected));
        assert!(Expected::from_hex(Algorithm::Sha256, "abc").is_none());
    }

    #[test]
    fn keys_fold_percent_encoding_and_by_hash_paths_name_their_digest() {
        assert_eq!(
            record_key("/d/pool/a_1.0%2bb1.deb"),
            record_key("/d/pool/a_1.0+b1.deb")
        );
        let hex = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let named = named_by_path(&format!("/debian/dists/x/main/by-hash/SHA256/{hex}")).unwrap();
        assert!(named.matches(b"hello"));
        assert!(named_by_path("/debian/pool/x.deb").is_none());
    }
}
