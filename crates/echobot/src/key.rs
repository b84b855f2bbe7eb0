//! The bot's OpenPGP key and its account credentials, both persisted in the state
//! directory (mode 0600, written atomically).
//!
//! The key follows Delta Chat core's: a v4 key, Ed25519 ("EdDSA legacy") primary key for
//! certification and signing, user ID `<addr>`, a Curve25519 ECDH subkey for encryption,
//! preferences AES256/AES192/AES128, SHA256/SHA384/SHA512/SHA224, ZLIB/ZIP. The SEIPDv2
//! feature is only advertised when the OpenPGP backend can decrypt AES-OCB (Nettle ≥ 3.9):
//! a peer's client encrypts with SEIPDv2 to a key that advertises it, and the bot must be
//! able to read what it is sent.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::Rng;
use sequoia_openpgp as openpgp;

use openpgp::Packet;
use openpgp::cert::Cert;
use openpgp::packet::UserID;
use openpgp::packet::key::{Key4, PrimaryRole, SecretParts, SubordinateRole};
use openpgp::packet::signature::SignatureBuilder;
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::SerializeInto;
use openpgp::types::{
    CompressionAlgorithm, Curve, Features, HashAlgorithm, KeyFlags, SignatureType,
    SymmetricAlgorithm,
};

use crate::error::{Error, Result};
use crate::state::{read_optional, write_private};

/// File name of the secret key (ASCII-armored transferable secret key) in the state dir.
pub const KEY_FILE: &str = "secret-key.asc";
/// File name of the account credentials in the state dir.
pub const CREDENTIALS_FILE: &str = "credentials";

/// The bot's own key pair.
#[derive(Debug, Clone, PartialEq)]
pub struct BotKey {
    /// The certificate with its secret key material; never leaves the state directory.
    cert: Cert,
}

impl BotKey {
    /// Generates a fresh key for `addr`, shaped like Delta Chat core's.
    pub fn generate(addr: &str) -> Result<Self> {
        generate(addr).map_err(Error::pgp)
    }

    /// Reads an armored (or binary) transferable secret key; refuses a certificate without
    /// secret keys or without an encryption subkey.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let cert = Cert::from_bytes(bytes).map_err(Error::pgp)?;
        if !cert.is_tsk() {
            return Err(Error::Pgp("key has no secret key material".into()));
        }
        let key = BotKey { cert };
        key.encryption_keys_check()?;
        Ok(key)
    }

    /// The armored transferable secret key, as persisted.
    pub fn to_armored_secret(&self) -> Result<Vec<u8>> {
        self.cert.as_tsk().armored().to_vec().map_err(Error::pgp)
    }

    /// The certificate including secret key material (for signing and decryption).
    pub fn secret_cert(&self) -> &Cert {
        &self.cert
    }

    /// The public certificate, as sent in `Autocrypt:` headers.
    pub fn public_cert(&self) -> Cert {
        self.cert.clone().strip_secret_key_material()
    }

    /// Fingerprint as in invite links: 40 upper-case hex digits.
    pub fn fingerprint(&self) -> String {
        self.cert.fingerprint().to_hex()
    }

    /// Loads the key from `dir`, or generates one for `addr` and persists it first.
    pub fn load_or_generate(dir: &Path, addr: &str) -> Result<Self> {
        let path = dir.join(KEY_FILE);
        if let Some(bytes) = read_optional(&path)? {
            return BotKey::from_bytes(&bytes).map_err(|err| Error::BadStateFile {
                path: path.clone(),
                reason: err.to_string(),
            });
        }
        let key = BotKey::generate(addr)?;
        write_private(&path, &key.to_armored_secret()?)?;
        tracing::info!("generated OpenPGP key {}", key.fingerprint());
        Ok(key)
    }

    fn encryption_keys_check(&self) -> Result<()> {
        let policy = StandardPolicy::new();
        let valid = self.cert.with_policy(&policy, None).map_err(Error::pgp)?;
        if valid
            .keys()
            .secret()
            .for_transport_encryption()
            .next()
            .is_none()
        {
            return Err(Error::Pgp("key has no usable encryption subkey".into()));
        }
        Ok(())
    }
}

fn generate(addr: &str) -> openpgp::Result<BotKey> {
    // A minute in the past, so that a peer whose clock lags a little does not see a key
    // from the future.
    let created = SystemTime::now() - Duration::from_secs(60);
    let mut primary: openpgp::packet::Key<SecretParts, PrimaryRole> =
        Key4::generate_ecc(true, Curve::Ed25519)?.into();
    primary.set_creation_time(created)?;
    let mut subkey: openpgp::packet::Key<SecretParts, SubordinateRole> =
        Key4::generate_ecc(false, Curve::Cv25519)?.into();
    subkey.set_creation_time(created)?;

    let mut features = Features::empty().set_seipdv1();
    if crate::pgp::can_decrypt_seipdv2() {
        features = features.set_seipdv2();
    }
    let mut signer = primary.clone().into_keypair()?;
    let userid = UserID::from(format!("<{addr}>"));
    let userid_sig = SignatureBuilder::new(SignatureType::PositiveCertification)
        .set_signature_creation_time(created)?
        .set_key_flags(KeyFlags::empty().set_certification().set_signing())?
        .set_features(features)?
        .set_preferred_symmetric_algorithms(vec![
            SymmetricAlgorithm::AES256,
            SymmetricAlgorithm::AES192,
            SymmetricAlgorithm::AES128,
        ])?
        .set_preferred_hash_algorithms(vec![
            HashAlgorithm::SHA256,
            HashAlgorithm::SHA384,
            HashAlgorithm::SHA512,
            HashAlgorithm::SHA224,
        ])?
        .set_preferred_compression_algorithms(vec![
            CompressionAlgorithm::Zlib,
            CompressionAlgorithm::Zip,
        ])?
        .set_primary_userid(true)?
        .sign_userid_binding(&mut signer, primary.parts_as_public(), &userid)?;
    let subkey_sig = SignatureBuilder::new(SignatureType::SubkeyBinding)
        .set_signature_creation_time(created)?
        .set_key_flags(
            KeyFlags::empty()
                .set_transport_encryption()
                .set_storage_encryption(),
        )?
        .sign_subkey_binding(&mut signer, primary.parts_as_public(), &subkey)?;
    let cert = Cert::try_from(vec![
        Packet::SecretKey(primary),
        userid.into(),
        userid_sig.into(),
        Packet::SecretSubkey(subkey),
        subkey_sig.into(),
    ])?;
    Ok(BotKey { cert })
}

/// The bot's account on the relay: an ordinary account that the first IMAP login creates
/// (doveauth's auto-creation), so that no relay-side special case is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `<localpart>@<mail_domain>`; the local part is random `[a-z0-9]`.
    pub addr: String,
    /// The login password, random `[A-Za-z0-9]`, never logged.
    pub password: String,
}

/// Length of the random local part: 9 like newemail's, within the relay's limits.
const LOCALPART_LEN: usize = 9;
/// Length of the random password when the relay does not ask for more.
const PASSWORD_LEN: usize = 32;

impl Credentials {
    /// Fresh credentials for `mail_domain`, respecting the relay's length rules.
    pub fn generate(config: &chatmail_config::Config) -> Self {
        let len = LOCALPART_LEN
            .max(config.username_min_length)
            .min(config.username_max_length.max(1));
        let localpart = random_string(len, b"abcdefghijklmnopqrstuvwxyz0123456789");
        let password = random_string(
            PASSWORD_LEN.max(config.password_min_length + 3),
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        );
        Credentials {
            addr: format!("{localpart}@{}", config.mail_domain),
            password,
        }
    }

    /// The persisted form: `addr=…` and `password=…` lines.
    pub fn to_file(&self) -> String {
        format!("addr={}\npassword={}\n", self.addr, self.password)
    }

    /// Parses [`Credentials::to_file`]'s output.
    pub fn from_file(text: &str) -> Option<Self> {
        let mut addr = None;
        let mut password = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("addr", value)) => addr = Some(value.trim().to_owned()),
                Some(("password", value)) => password = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        match (addr, password) {
            (Some(addr), Some(password))
                if addr.contains('@') && !password.is_empty() && !addr.contains(' ') =>
            {
                Some(Credentials { addr, password })
            }
            _ => None,
        }
    }

    /// Loads the credentials from `dir`, or generates and persists new ones.
    pub fn load_or_generate(dir: &Path, config: &chatmail_config::Config) -> Result<Self> {
        let path = credentials_path(dir);
        if let Some(bytes) = read_optional(&path)? {
            let text = String::from_utf8_lossy(&bytes);
            return Credentials::from_file(&text).ok_or_else(|| Error::BadStateFile {
                path: path.clone(),
                reason: "expected addr= and password= lines".into(),
            });
        }
        let credentials = Credentials::generate(config);
        write_private(&path, credentials.to_file().as_bytes())?;
        tracing::info!("new account {}", credentials.addr);
        Ok(credentials)
    }
}

fn credentials_path(dir: &Path) -> PathBuf {
    dir.join(CREDENTIALS_FILE)
}

fn random_string(len: usize, alphabet: &[u8]) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| {
            let i = rng.random_range(0..alphabet.len());
            alphabet.get(i).map_or('x', |&b| char::from(b))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use openpgp::cert::Preferences;
    use std::sync::OnceLock;

    /// Fixed test keys, generated once per test run.
    pub(crate) fn alice() -> &'static BotKey {
        static KEY: OnceLock<BotKey> = OnceLock::new();
        KEY.get_or_init(|| BotKey::generate("bot@example.org").unwrap())
    }

    pub(crate) fn bob() -> &'static BotKey {
        static KEY: OnceLock<BotKey> = OnceLock::new();
        KEY.get_or_init(|| BotKey::generate("bob@example.org").unwrap())
    }

    fn config() -> chatmail_config::Config {
        chatmail_config::Config::parse(
            "[params]\nmail_domain = example.org\n",
            Path::new("chatmail.ini"),
        )
        .unwrap()
    }

    #[test]
    fn generated_key_is_shaped_like_core() {
        let key = alice();
        let cert = key.secret_cert();
        let policy = StandardPolicy::new();
        let valid = cert.with_policy(&policy, None).unwrap();
        assert_eq!(
            cert.primary_key().key().pk_algo(),
            openpgp::types::PublicKeyAlgorithm::EdDSA
        );
        assert_eq!(cert.primary_key().key().version(), 4);
        let uids: Vec<_> = cert.userids().map(|u| u.userid().to_string()).collect();
        assert_eq!(uids, ["<bot@example.org>"]);
        let flags = valid.primary_key().key_flags().unwrap();
        assert!(flags.for_certification() && flags.for_signing());
        let enc: Vec<_> = valid.keys().subkeys().for_transport_encryption().collect();
        assert_eq!(enc.len(), 1);
        assert_eq!(
            enc[0].key().pk_algo(),
            openpgp::types::PublicKeyAlgorithm::ECDH
        );
        let uid = valid.primary_userid().unwrap();
        assert_eq!(
            uid.preferred_symmetric_algorithms().unwrap(),
            [
                SymmetricAlgorithm::AES256,
                SymmetricAlgorithm::AES192,
                SymmetricAlgorithm::AES128
            ]
        );
        assert_eq!(
            uid.preferred_hash_algorithms().unwrap()[0],
            HashAlgorithm::SHA256
        );
        let fp = key.fingerprint();
        assert_eq!(fp.len(), 40);
        assert!(
            fp.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert!(!key.public_cert().is_tsk());
    }

    #[test]
    fn key_persists_and_reloads_identically() {
        let dir = tempfile::tempdir().unwrap();
        let first = BotKey::load_or_generate(dir.path(), "bot@example.org").unwrap();
        let second = BotKey::load_or_generate(dir.path(), "other@example.org").unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert!(second.secret_cert().is_tsk());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn public_only_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let public = alice().public_cert().armored().to_vec().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), public).unwrap();
        let err = BotKey::load_or_generate(dir.path(), "bot@example.org").unwrap_err();
        assert!(matches!(err, Error::BadStateFile { .. }), "{err}");
    }

    #[test]
    fn credentials_follow_relay_rules_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let config = config();
        let first = Credentials::load_or_generate(dir.path(), &config).unwrap();
        let (local, domain) = first.addr.split_once('@').unwrap();
        assert_eq!(domain, "example.org");
        assert_eq!(local.len(), 9);
        assert!(
            local
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        assert!(first.password.len() >= config.password_min_length);
        let second = Credentials::load_or_generate(dir.path(), &config).unwrap();
        assert_eq!(first, second);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CREDENTIALS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn damaged_credentials_file_is_an_error_not_a_new_account() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CREDENTIALS_FILE), "garbage\n").unwrap();
        assert!(Credentials::load_or_generate(dir.path(), &config()).is_err());
    }
}
