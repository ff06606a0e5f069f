//! Random values from the operating system's CSPRNG.

use rand::Rng;
use rand::rngs::OsRng;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `len` characters of base62 drawn from the OS CSPRNG (~5.95 bits each).
pub fn base62(len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
        .collect()
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
    fn encode_base62_is_fixed_width() {
        assert_eq!(encode_base62(0, 3), "000");
        assert_eq!(encode_base62(61, 2), "0z");
        assert_eq!(encode_base62(62, 2), "10");
    }
}
