//! The content hash of a full block, chained over its parent's hash, and the byte
//! hash that turns a `cache_salt` string into the salt the blocks carry.
//!
//! Hand-written rather than `std`'s `DefaultHasher` so that a block's hash is the same
//! in every build and on every replica (the algorithm behind `DefaultHasher` may change
//! between Rust releases), which keeps hashes comparable across engines behind one
//! gateway. It mixes 64-bit words with the SplitMix64 finaliser: fast and well spread,
//! but not collision-resistant against a crafted input. That is fine because the cache
//! never trusts a hash alone: a hit also compares the stored tokens, salt and parent.

/// The parent hash of a sequence's first block.
pub(super) const ROOT_HASH: u64 = 0x6a09_e667_f3bc_c908;

// Distinct tags keep `salt: None` apart from every `Some(salt)`.
const NO_SALT_TAG: u64 = 0x243f_6a88_85a3_08d3;
const SALT_TAG: u64 = 0x1319_8a2e_0370_7344;

/// Chained hash of one block: (parent hash, salt, token ids).
pub(super) fn hash_block(parent_hash: u64, tokens: &[u32], salt: Option<u64>) -> u64 {
    let mut h = mix(parent_hash);
    h = match salt {
        None => mix(h ^ NO_SALT_TAG),
        Some(salt) => mix(mix(h ^ SALT_TAG) ^ salt),
    };
    let mut pairs = tokens.chunks_exact(2);
    for pair in &mut pairs {
        h = mix(h ^ (u64::from(pair[0]) | u64::from(pair[1]) << 32));
    }
    if let [last] = pairs.remainder() {
        h = mix(h ^ u64::from(*last));
    }
    // The length makes an odd trailing token unambiguous.
    mix(h ^ tokens.len() as u64)
}

// Starts `stable_hash_bytes` apart from block hashes, which start at `ROOT_HASH`.
const BYTES_TAG: u64 = 0xa409_3822_299f_31d0;

/// A hash of `bytes` that is the same in every build, process and replica (unlike
/// `DefaultHasher`): for turning a request's `cache_salt` string into the block salt.
/// Like the block hash, not collision-resistant against a crafted input; the cache
/// compares the salt itself on every hit, so a collision only shares blocks between
/// two salts, never K/V of different tokens.
pub fn stable_hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = mix(BYTES_TAG);
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let w: [u8; 8] = w
            .try_into()
            .expect("chunks_exact yields 8 bytes: this is a bug");
        h = mix(h ^ u64::from_le_bytes(w));
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    h = mix(h ^ u64::from_le_bytes(last));
    // The length tells `b"a"` from `b"a\0"`, which pad to the same last word.
    mix(h ^ bytes.len() as u64)
}

/// SplitMix64's finaliser (Steele, Lea, Flood 2014): a bijection on u64 with full
/// avalanche.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_changes_the_hash() {
        let base = hash_block(ROOT_HASH, &[1, 2, 3, 4], None);
        assert_eq!(
            base,
            hash_block(ROOT_HASH, &[1, 2, 3, 4], None),
            "deterministic"
        );
        assert_ne!(base, hash_block(ROOT_HASH, &[1, 2, 3, 5], None));
        assert_ne!(base, hash_block(ROOT_HASH, &[2, 1, 3, 4], None));
        assert_ne!(base, hash_block(ROOT_HASH, &[1, 2, 3], None));
        assert_ne!(base, hash_block(ROOT_HASH, &[1, 2, 3, 4, 0], None));
        assert_ne!(base, hash_block(base, &[1, 2, 3, 4], None), "parent");
        assert_ne!(base, hash_block(ROOT_HASH, &[1, 2, 3, 4], Some(0)), "salt");
        assert_ne!(
            hash_block(ROOT_HASH, &[1, 2, 3, 4], Some(1)),
            hash_block(ROOT_HASH, &[1, 2, 3, 4], Some(2))
        );
    }

    #[test]
    fn hash_is_stable_across_builds() {
        // Pinned so that a change of algorithm is a deliberate, visible decision.
        assert_eq!(
            hash_block(ROOT_HASH, &[1, 2, 3, 4], None),
            PINNED_HASH,
            "block hash algorithm changed"
        );
    }

    const PINNED_HASH: u64 = 0x49b46f8296c3aba9;

    #[test]
    fn byte_hash_sees_every_byte_and_the_length() {
        let base = stable_hash_bytes(b"tenant-a");
        assert_eq!(base, stable_hash_bytes(b"tenant-a"), "deterministic");
        for other in [
            &b"tenant-b"[..],
            b"tenant-a\0",
            b"tenant-",
            b"",
            b"\0",
            b"tenant-a-and-more-than-eight",
        ] {
            assert_ne!(base, stable_hash_bytes(other), "{other:?}");
        }
        assert_ne!(stable_hash_bytes(b""), stable_hash_bytes(b"\0"));
    }
}
