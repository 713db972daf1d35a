//! Pre-encoded gets. Every key of a run has the same length (the prefix and
//! a fixed-width index), so with every codec a get's bytes differ from one
//! key to the next only in the index digits. The request is encoded once per
//! run; each get is then one copy of it with the digits written in place,
//! instead of a pass through the encoder.

use super::Codec;
use crate::workload::KeySpace;

/// Templates up to this long are copied with one fixed-size copy (a few
/// vector stores inlined) instead of a call to `memcpy`.
const SHORT: usize = 64;

/// A get request with a hole where the key's index digits go.
#[derive(Debug, Clone)]
pub struct GetTemplate {
    bytes: Vec<u8>,
    /// `bytes` zero-padded to `SHORT`, when they fit.
    short: Option<[u8; SHORT]>,
    /// Where the digits start in `bytes`.
    digits_at: usize,
    /// How many digits.
    width: usize,
}

impl GetTemplate {
    /// The template of `codec`'s get for the keys of `keys`; `None` when
    /// the encoding is not the key copied verbatim into fixed bytes (then
    /// the caller encodes every request). Found by encoding keys with
    /// different digits and checking that only the digits changed, so it
    /// needs no knowledge of any protocol.
    pub fn new(codec: &Codec, keys: &KeySpace) -> Option<Self> {
        let width = keys.width();
        let nines = |_: usize| b'9';
        let mixed = |i: usize| b'0' + (i % 10) as u8;
        let encode = |digits: &dyn Fn(usize) -> u8| {
            let mut key = keys.prefix().to_vec();
            key.extend((0..width).map(digits));
            let mut out = Vec::new();
            codec.encode_get(&mut out, &key);
            out
        };
        let zeros = encode(&|_| b'0');
        let first = zeros.iter().zip(encode(&nines)).position(|(a, b)| *a != b)?;
        if first + width > zeros.len() {
            return None;
        }
        let short = (zeros.len() <= SHORT).then(|| {
            let mut a = [0; SHORT];
            a[..zeros.len()].copy_from_slice(&zeros);
            a
        });
        let template = GetTemplate {
            bytes: zeros,
            short,
            digits_at: first,
            width,
        };
        // Every other byte the same whatever the digits, and the digits
        // copied as they are.
        let filled = |digits: &dyn Fn(usize) -> u8| {
            let mut b = template.bytes.clone();
            for (i, d) in b[first..first + width].iter_mut().enumerate() {
                *d = digits(i);
            }
            b
        };
        (filled(&nines) == encode(&nines) && filled(&mixed) == encode(&mixed)).then_some(template)
    }

    /// Appends a get of key `index` of `keys` (the key space the template
    /// was made for).
    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>, keys: &KeySpace, index: u64) {
        let start = out.len();
        match &self.short {
            Some(short) => {
                out.reserve(SHORT);
                // SAFETY: `reserve` made room for SHORT bytes after `start`;
                // the copy writes all of them, so the first `bytes.len()`
                // (<= SHORT) are initialised before `set_len` exposes them.
                unsafe {
                    std::ptr::copy_nonoverlapping(short.as_ptr(), out.as_mut_ptr().add(start), SHORT);
                    out.set_len(start + self.bytes.len());
                }
            }
            None => out.extend_from_slice(&self.bytes),
        }
        let at = start + self.digits_at;
        keys.write_digits(index, &mut out[at..at + self.width]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::MAX_KEY_LEN;

    fn codecs() -> Vec<Codec> {
        vec![
            Codec::Binary,
            Codec::Http {
                host: "127.0.0.1:8080".into(),
            },
            Codec::Resp,
            Codec::Memcache,
        ]
    }

    #[test]
    fn template_gets_equal_encoded_gets_for_every_codec() {
        for codec in codecs() {
            // Short templates and ones past the fixed-size copy.
            let long_prefix = "p".repeat(100);
            for (count, prefix) in [
                (100_000, "key:0000000"),
                (1, "k"),
                (10, ""),
                (1_000_000, "character:"),
                (1_000, long_prefix.as_str()),
            ] {
                let keys = KeySpace::new(count, prefix, None).unwrap();
                let t = GetTemplate::new(&codec, &keys)
                    .unwrap_or_else(|| panic!("{codec:?} has no get template"));
                let mut key = [0u8; MAX_KEY_LEN];
                for index in [0, 1, count / 2, count - 1] {
                    let n = keys.format(index, &mut key);
                    let mut want = b"tail".to_vec();
                    codec.encode_get(&mut want, &key[..n]);
                    let mut got = b"tail".to_vec();
                    t.encode(&mut got, &keys, index);
                    assert_eq!(got, want, "{codec:?} key {index} of {count}");
                }
            }
        }
    }
}
