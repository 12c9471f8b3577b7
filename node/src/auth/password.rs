//! Password hashes: PBKDF2-HMAC-SHA512 (ring), salted per password.
//!
//! A hash is made on the member that received the request, before the
//! command enters the log, so the log, snapshots and backups only ever hold
//! hashes. The stored form names the algorithm and its cost,
//! `pbkdf2-sha512$<iterations>$<salt>$<hash>` (base64), so that the cost can
//! be raised later without breaking the hashes already stored.
//!
//! The cost follows OWASP's recommendation for PBKDF2-HMAC-SHA512
//! (210,000 iterations): a few tens of milliseconds per check, which is
//! why the gRPC API checks a password once per `Authenticate` and then
//! works with tokens.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

const SCHEME: &str = "pbkdf2-sha512";
const ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA512;
/// OWASP's recommended minimum for PBKDF2-HMAC-SHA512.
pub const ITERATIONS: u32 = 210_000;
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 64;

/// Why a password could not be hashed.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RandomFailed;

/// Hashes `password` with a fresh salt.
pub fn hash(password: &str) -> Result<String, RandomFailed> {
    hash_with(password, ITERATIONS)
}

fn hash_with(password: &str, iterations: u32) -> Result<String, RandomFailed> {
    let mut salt = [0u8; SALT_BYTES];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| RandomFailed)?;
    let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    let mut out = [0u8; HASH_BYTES];
    pbkdf2::derive(ALGORITHM, rounds, &salt, password.as_bytes(), &mut out);
    Ok(format!(
        "{SCHEME}${}${}${}",
        rounds.get(),
        B64.encode(salt),
        B64.encode(out)
    ))
}

/// Whether `password` matches `stored` (in constant time). A hash that is
/// not of this form never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iterations), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let Some(rounds) = iterations.parse().ok().and_then(NonZeroU32::new) else {
        return false;
    };
    let (Ok(salt), Ok(expected)) = (B64.decode(salt), B64.decode(expected)) else {
        return false;
    };
    pbkdf2::verify(ALGORITHM, rounds, &salt, password.as_bytes(), &expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        // A low cost keeps the test fast; the format carries it.
        let h = hash_with("s3cret", 1000).unwrap();
        assert!(h.starts_with("pbkdf2-sha512$1000$"));
        assert!(verify("s3cret", &h));
        assert!(!verify("s3cret!", &h));
        assert!(!verify("", &h));
        assert!(!h.contains("s3cret"), "never the plaintext");
    }

    #[test]
    fn two_hashes_of_one_password_differ_by_their_salt() {
        let (a, b) = (hash_with("p", 1000).unwrap(), hash_with("p", 1000).unwrap());
        assert_ne!(a, b);
        assert!(verify("p", &a) && verify("p", &b));
    }

    #[test]
    fn malformed_hashes_never_match() {
        for bad in [
            "",
            "p",
            "pbkdf2-sha512$0$AA$AA",
            "pbkdf2-sha512$x$AA$AA",
            "pbkdf2-sha512$1000$!!$AA",
            "bcrypt$10$AA$AA",
            "pbkdf2-sha512$1000$AA$AA$extra",
        ] {
            assert!(!verify("p", bad), "{bad}");
        }
    }
}
