//! A small table of recently seen tokens in front of the large token
//! caches: a client sends the same token again and again, and finding it
//! here costs a cheap keyed hash and a comparison of the token, instead of
//! a SHA-256 and a lookup in the bounded cache.
//!
//! The table is direct-mapped: a slot holds one token, compared in full,
//! so a token that hashes to an occupied slot only displaces it — there
//! are no chains an attacker could lengthen. Only what the large cache
//! would answer is put here; whether an entry is still good (expiry, key
//! generation) is for the caller to check, as with the large cache.

use std::sync::Mutex;

/// Slots per table.
const SLOTS: usize = 256;

type Slot<V> = Mutex<Option<(Box<str>, V)>>;

pub struct RecentTokens<V> {
    slots: Box<[Slot<V>]>,
    /// Key of the slot hash, random per table.
    seed: u64,
}

impl<V: Clone> Default for RecentTokens<V> {
    fn default() -> Self {
        RecentTokens {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            seed: rand::random::<u64>() | 1,
        }
    }
}

impl<V: Clone> RecentTokens<V> {
    /// The value remembered for exactly `token`.
    pub fn get(&self, token: &str) -> Option<V> {
        let slot = self.slots[self.slot(token)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((t, v)) if **t == *token => Some(v.clone()),
            _ => None,
        }
    }

    /// Remembers `value` for `token`.
    pub fn put(&self, token: &str, value: V) {
        *self.slots[self.slot(token)]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((token.into(), value));
    }

    /// A keyed multiply-rotate hash of the token's length and its last 32
    /// bytes (a JWT's signature, an opaque token's random tail): enough to
    /// spread tokens over the slots, and cheap for long tokens. Tokens
    /// that share their tail only share a slot; the full comparison keeps
    /// lookups exact.
    fn slot(&self, token: &str) -> usize {
        let bytes = token.as_bytes();
        let tail = &bytes[bytes.len().saturating_sub(32)..];
        let mut h = self.seed ^ bytes.len() as u64;
        for chunk in tail.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
        (h >> 40) as usize % SLOTS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token() {
        let t: RecentTokens<u32> = RecentTokens::default();
        t.put("aaaa.bbbb.cccc", 1);
        assert_eq!(t.get("aaaa.bbbb.cccc"), Some(1));
        assert_eq!(t.get("aaaa.bbbb.cccd"), None);
        assert_eq!(t.get("aaaa.bbbb.ccc"), None);
        // Same tail and length, different token: never confused.
        t.put("xaaa.bbbb.cccc", 3);
        if let Some(v) = t.get("aaaa.bbbb.cccc") {
            assert_eq!(v, 1);
        }
        assert_eq!(t.get("xaaa.bbbb.cccc"), Some(3));
    }

    #[test]
    fn colliding_tokens_displace_each_other() {
        let t: RecentTokens<usize> = RecentTokens::default();
        // More tokens than slots: every lookup is either right or a miss.
        for i in 0..4 * SLOTS {
            t.put(&format!("token-{i}"), i);
        }
        for i in 0..4 * SLOTS {
            if let Some(v) = t.get(&format!("token-{i}")) {
                assert_eq!(v, i);
            }
        }
    }
}
