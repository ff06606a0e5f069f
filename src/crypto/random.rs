//! Random values from the operating system's CSPRNG.

use rand::RngCore;
use rand::rngs::OsRng;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Bytes from here up are dropped, so that each character is equally likely (248 = 4 × 62).
const UNBIASED_BELOW: u8 = 248;

/// `len` characters of base62 drawn from the OS CSPRNG (~5.95 bits each). The bytes
/// come in one system call rather than one per character, which cost 52 `getrandom`
/// calls per refresh grant (3% of the token endpoint's CPU).
pub fn base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        // A few spare bytes make up for the ~3% that are dropped.
        let want = (len - out.len() + 4).min(buf.len());
        OsRng.fill_bytes(&mut buf[..want]);
        for &b in &buf[..want] {
            if b < UNBIASED_BELOW && out.len() < len {
                out.push(BASE62[usize::from(b % 62)] as char);
            }
        }
    }
    out
}

/// A prefixed identifier such as `org_4f9Kx…`: not secret, but unguessable (≈95 bits).
pub fn id(prefix: &str) -> String {
    format!("{prefix}_{}", base62(16))
}

/// A prefixed identifier that stands alone as an unguessable value, such as a
/// `client_id` (22 base62 characters ≈ 131 bits, at least the 128 OAuth 2.1 §7.7 asks).
pub fn long_id(prefix: &str) -> String {
    format!("{prefix}_{}", base62(22))
}

pub(crate) fn encode_base62(mut n: u64, width: usize) -> String {
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out).unwrap_or_default()
}

pub(crate) fn is_base62(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base62_has_requested_length_and_alphabet() {
        let s = base62(40);
        assert_eq!(s.len(), 40);
        assert!(is_base62(&s));
        assert_ne!(s, base62(40));
    }

    #[test]
    fn base62_draws_every_character_about_equally() {
        let s = base62(62 * 400);
        let mut counts = [0u32; 62];
        for b in s.bytes() {
            let i = BASE62
                .iter()
                .position(|c| *c == b)
                .expect("a base62 character");
            counts[i] += 1;
        }
        // 400 expected each; the bounds (about ±7 standard deviations) catch a broken
        // mapping, such as a character never drawn or drawn twice as often. The small
        // bias that keeping bytes 248..=255 would cause is ruled out by construction.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 260 && *max < 540, "counts {counts:?}");
    }

    #[test]
    fn encode_base62_is_fixed_width() {
        assert_eq!(encode_base62(0, 3), "000");
        assert_eq!(encode_base62(61, 2), "0z");
        assert_eq!(encode_base62(62, 2), "10");
    }
}
