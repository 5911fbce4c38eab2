//! How a stored body is told apart from other bodies ([`super::entry::EntryMeta::body_digest`]).
//!
//! With a disk tier the digest is blake3: it names a body's file, finds identical bodies
//! to store them once, and verifies what is read back, so it must resist collisions. With
//! the memory tier alone nothing of that happens: the digest only tells an encoded
//! variant whether its source still has the body it was made from, within one resource
//! and one process. XXH3-128 does that for about a tenth of blake3's cost per byte, and
//! blake3 was about an eighth of a unique 100 KiB miss's CPU.

/// Which digest stored bodies get; fixed for a process's cache, so every digest compared
/// with another was made the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyDigest {
    /// blake3: a disk tier is configured.
    Blake3,
    /// XXH3-128, zero-padded to the field's 32 bytes: memory only.
    Xxh3,
}

impl BodyDigest {
    /// The digest a cache with (`true`) or without a disk tier gives its bodies.
    pub fn for_disk_tier(configured: bool) -> BodyDigest {
        if configured {
            BodyDigest::Blake3
        } else {
            BodyDigest::Xxh3
        }
    }

    pub fn hasher(self) -> BodyHasher {
        match self {
            BodyDigest::Blake3 => BodyHasher::Blake3(Box::new(blake3::Hasher::new())),
            BodyDigest::Xxh3 => BodyHasher::Xxh3(Box::new(xxhash_rust::xxh3::Xxh3::new())),
        }
    }

    /// The digest of a whole body.
    pub fn of(self, body: &[u8]) -> [u8; 32] {
        match self {
            BodyDigest::Blake3 => *blake3::hash(body).as_bytes(),
            BodyDigest::Xxh3 => padded(xxhash_rust::xxh3::xxh3_128(body)),
        }
    }
}

/// A digest taken as a body arrives in pieces. Boxed: the fill's writer holds one and is
/// moved by value through the miss path's futures (a blake3 state is about 1.9 KB).
pub enum BodyHasher {
    Blake3(Box<blake3::Hasher>),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
}

impl BodyHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            BodyHasher::Blake3(hasher) => {
                hasher.update(bytes);
            }
            BodyHasher::Xxh3(hasher) => hasher.update(bytes),
        }
    }

    pub fn finalize(&self) -> [u8; 32] {
        match self {
            BodyHasher::Blake3(hasher) => *hasher.finalize().as_bytes(),
            BodyHasher::Xxh3(hasher) => padded(hasher.digest128()),
        }
    }
}

impl std::fmt::Debug for BodyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyHasher::Blake3(_) => "BodyHasher::Blake3",
            BodyHasher::Xxh3(_) => "BodyHasher::Xxh3",
        })
    }
}

fn padded(digest: u128) -> [u8; 32] {
    let mut field = [0; 32];
    field[..16].copy_from_slice(&digest.to_le_bytes());
    field
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_hashed_in_pieces_has_the_digest_of_the_whole() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for kind in [BodyDigest::Blake3, BodyDigest::Xxh3] {
            let mut hasher = kind.hasher();
            for piece in body.chunks(16_411) {
                hasher.update(piece);
            }
            assert_eq!(hasher.finalize(), kind.of(&body), "{kind:?}");
        }
    }

    #[test]
    fn blake3_is_what_the_disk_tier_names_files_by() {
        assert_eq!(
            BodyDigest::for_disk_tier(true).of(b"hello"),
            *blake3::hash(b"hello").as_bytes()
        );
    }

    #[test]
    fn bodies_that_differ_in_one_byte_get_different_digests() {
        let (a, mut b) = (vec![1u8; 4096], vec![1u8; 4096]);
        b[4000] = 2;
        for kind in [BodyDigest::Blake3, BodyDigest::Xxh3] {
            assert_ne!(kind.of(&a), kind.of(&b), "{kind:?}");
        }
    }
}
