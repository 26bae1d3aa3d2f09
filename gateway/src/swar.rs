//! Byte-class tests eight bytes at a time, on a `u64` word: for the short strings of a request (a
//! request line, an access-log field), too short for the compiler's vectorised loops, which would run
//! their byte-at-a-time tail. Each test gives the high bit of every byte that matches, exactly: no
//! carry or borrow crosses from one byte into the next, so the flags can be masked and counted.

const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// `b` in every byte.
const fn splat(b: u8) -> u64 {
    ONES * b as u64
}

/// The zero bytes of `v`.
fn zero(v: u64) -> u64 {
    !(((v & LOW7) + LOW7) | v | LOW7)
}

/// The bytes of `v` equal to `b`.
pub fn eq(v: u64, b: u8) -> u64 {
    zero(v ^ splat(b))
}

/// The bytes of `v` below `n` (`n` at most 0x80): the high bit clear, and the low seven bits plus
/// `0x80 - n` still below 0x80 (at most 0xff: no carry).
pub fn below(v: u64, n: u8) -> u64 {
    debug_assert!(n <= 0x80);
    !(((v & LOW7) + splat(0x80 - n)) | v) & HIGH
}

/// How many bytes are flagged in `flags` (a result of the tests above): the multiply sums the eight
/// bytes' low bits into the top byte.
pub fn count(flags: u64) -> usize {
    (((flags >> 7).wrapping_mul(ONES)) >> 56) as usize
}

/// `bytes` as little-endian words, each with the mask of its bytes not in an earlier word: the whole
/// words, then the last eight bytes (overlapping the words before, whose bytes the mask drops), or for
/// fewer than eight bytes one word padded with zeros that the mask drops.
pub fn words(bytes: &[u8]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let (whole, rest) = bytes.as_chunks::<8>();
    let tail = match (rest.len(), bytes.last_chunk::<8>()) {
        (0, _) => None,
        (n, Some(last)) => Some((u64::from_le_bytes(*last), u64::MAX << (8 * (8 - n)))),
        (n, None) => {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(rest);
            Some((u64::from_le_bytes(b), u64::MAX >> (8 * (8 - n))))
        }
    };
    whole
        .iter()
        .map(|w| (u64::from_le_bytes(*w), u64::MAX))
        .chain(tail)
}

/// Every byte value at every position of strings up to 19 bytes long, among neighbours that could
/// borrow or carry into it (0x00, 0x01, 0x20, 0x21, 0x7f, 0x80, 0xff) or not: the strings a test of a
/// word-at-a-time scan checks it on, against a byte-at-a-time one.
#[cfg(test)]
pub(crate) fn each_probe(mut f: impl FnMut(&[u8])) {
    for len in 0..20 {
        for at in 0..len {
            for fill in [b'a', 0x00, 0x01, b' ', b'!', 0x7f, 0x80, 0xff] {
                for b in 0..=255u8 {
                    let mut s = vec![fill; len];
                    s[at] = b;
                    f(&s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every probe ([`each_probe`]) against a byte-at-a-time test.
    #[test]
    fn every_byte_is_tested_exactly_and_once() {
        each_probe(|s| {
            let (mut under, mut spaces) = (0, 0);
            for (w, keep) in words(s) {
                under += count(below(w, 0x20) & keep);
                spaces += count(eq(w, b' ') & keep);
            }
            assert_eq!(under, s.iter().filter(|&&c| c < 0x20).count(), "{s:?}");
            assert_eq!(spaces, s.iter().filter(|&&c| c == b' ').count(), "{s:?}");
        });
    }
}
