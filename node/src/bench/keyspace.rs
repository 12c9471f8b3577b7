//! The keys and values a bench run uses, generated once before the run so
//! that issuing a request allocates nothing: a request carries cheap clones
//! (`Bytes`, reference-counted) of these buffers.

use bytes::Bytes;

/// How many distinct values are pre-generated; requests cycle through them.
const VALUE_VARIANTS: usize = 16;

/// Why a key space cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeySpaceError {
    #[error("--keys must be at least 1")]
    NoKeys,
    #[error(
        "--key-size {key_size} is too small for {keys} distinct keys: they need at least {needed} bytes"
    )]
    KeySizeTooSmall {
        key_size: usize,
        keys: u64,
        needed: usize,
    },
}

/// `keys` fixed-size keys and a few values of `value_size` bytes.
#[derive(Debug, Clone)]
pub struct KeySpace {
    keys: Vec<Bytes>,
    values: Vec<Bytes>,
}

impl KeySpace {
    /// Keys are `k` followed by the zero-padded key number, `key_size` bytes
    /// long; values are printable pseudo-random bytes (printable so that a
    /// person reading them with `etcdctl get` sees something sensible).
    pub fn new(keys: u64, key_size: usize, value_size: usize) -> Result<Self, KeySpaceError> {
        if keys == 0 {
            return Err(KeySpaceError::NoKeys);
        }
        let digits = (keys - 1).to_string().len();
        let needed = digits + 1;
        if key_size < needed {
            return Err(KeySpaceError::KeySizeTooSmall {
                key_size,
                keys,
                needed,
            });
        }
        let width = key_size - 1;
        let keys = (0..keys)
            .map(|i| Bytes::from(format!("k{i:0width$}")))
            .collect();
        let mut rng = XorShift::new(0x5eed);
        let values = (0..VALUE_VARIANTS)
            .map(|_| {
                (0..value_size)
                    .map(|_| b'a' + (rng.next_u64() % 26) as u8)
                    .collect::<Vec<u8>>()
                    .into()
            })
            .collect();
        Ok(KeySpace { keys, values })
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a key space holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key at `index` (taken modulo the key count).
    pub fn key(&self, index: usize) -> Bytes {
        self.keys[index % self.keys.len()].clone()
    }

    /// One of the pre-generated values, chosen by `n`.
    pub fn value(&self, n: u64) -> Bytes {
        self.values[(n % VALUE_VARIANTS as u64) as usize].clone()
    }
}

/// A tiny, fast, per-client pseudo-random generator (xorshift64*): choosing a
/// key must cost next to nothing and needs no cryptographic quality.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed; a zero seed is replaced (xorshift's one
    /// fixed point).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True with probability `p` (0.0..=1.0).
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_are_distinct() {
        let ks = KeySpace::new(1000, 8, 256).unwrap();
        assert_eq!(ks.len(), 1000);
        assert_eq!(&ks.key(0)[..], b"k0000000");
        assert_eq!(&ks.key(999)[..], b"k0000999");
        let all: std::collections::HashSet<_> = (0..1000).map(|i| ks.key(i)).collect();
        assert_eq!(all.len(), 1000);
        assert!((0..1000).all(|i| ks.key(i).len() == 8));
        assert_eq!(ks.value(3).len(), 256);
    }

    #[test]
    fn a_key_size_too_small_for_the_key_count_is_refused() {
        assert_eq!(
            KeySpace::new(100_000, 5, 1).unwrap_err(),
            KeySpaceError::KeySizeTooSmall {
                key_size: 5,
                keys: 100_000,
                needed: 6
            }
        );
        assert_eq!(KeySpace::new(0, 8, 1).unwrap_err(), KeySpaceError::NoKeys);
    }

    #[test]
    fn the_generator_spreads_over_the_whole_range() {
        let mut rng = XorShift::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[rng.below(10)] = true;
        }
        assert!(seen.iter().all(|s| *s));
        let hits = (0..10_000).filter(|_| rng.chance(0.3)).count();
        assert!((2500..3500).contains(&hits), "{hits}");
    }
}
