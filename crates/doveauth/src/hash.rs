//! Password hashing for new accounts: `{SHA512-CRYPT}` + glibc-compatible `$6$` crypt with
//! the default 5000 rounds (no `rounds=` field) and a 16-character random salt, the form
//! upstream writes and Dovecot verifies.

use rand::seq::IndexedRandom;
use sha_crypt::{Sha512Params, sha512_crypt_b64};

/// The salt alphabet of crypt(3).
const SALT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SALT_LEN: usize = 16;
const DEFAULT_ROUNDS: usize = 5000;

/// Dovecot's scheme prefix for what [`hash_password`] produces.
pub const SCHEME_PREFIX: &str = "{SHA512-CRYPT}";

/// Hashes `password` with a fresh random salt, ready to store in a password file.
/// CPU-bound (a few milliseconds): call it off the async threads.
pub fn hash_password(password: &str) -> String {
    let mut rng = rand::rng();
    let salt: String = (0..SALT_LEN)
        .filter_map(|_| SALT_ALPHABET.choose(&mut rng).copied().map(char::from))
        .collect();
    format!("{SCHEME_PREFIX}{}", crypt_sha512(password, &salt))
}

/// `$6$<salt>$<hash>` for a given salt (at most 16 characters are used, as crypt(3) does).
pub fn crypt_sha512(password: &str, salt: &str) -> String {
    let salt: String = salt.chars().take(SALT_LEN).collect();
    // Both arguments are always valid: the default round count is in range and the salt
    // is at most 16 bytes of any content, so these errors cannot occur.
    let params = Sha512Params::new(DEFAULT_ROUNDS).expect("5000 rounds is a valid count");
    let hash = sha512_crypt_b64(password.as_bytes(), salt.as_bytes(), &params)
        .expect("sha512-crypt of a bounded salt");
    format!("$6${salt}${hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vector_of_the_sha_crypt_specification() {
        assert_eq!(
            crypt_sha512("Hello world!", "saltstring"),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
    }

    #[test]
    fn fresh_hashes_have_the_stored_form() {
        let a = hash_password("correct horse");
        let b = hash_password("correct horse");
        assert_ne!(a, b, "salts differ");
        let crypt = a.strip_prefix(SCHEME_PREFIX).unwrap();
        let fields: Vec<&str> = crypt.split('$').collect();
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[1], "6");
        assert_eq!(fields[2].len(), 16);
        assert!(fields[2].bytes().all(|b| SALT_ALPHABET.contains(&b)));
        assert_eq!(fields[3].len(), 86);
        assert_eq!(crypt_sha512("correct horse", fields[2]), crypt);
    }
}
