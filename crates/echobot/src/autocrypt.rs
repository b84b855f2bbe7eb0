//! `Autocrypt:` and `Autocrypt-Gossip:` header values (Autocrypt Level 1, as Delta Chat
//! core writes and reads them).
//!
//! Written: `addr=<addr>; prefer-encrypt=mutual; keydata=<base64>` where the base64 of the
//! binary public key has a space every 78 characters, so that the header can be folded
//! there. Gossip headers carry no `prefer-encrypt`.
//!
//! Read tolerantly: attributes split on `;` and trimmed, all whitespace (also folding)
//! inside `keydata` removed, attributes starting with `_` ignored; but a missing `addr` or
//! `keydata`, an unknown attribute without `_`, or a key that does not parse or has no
//! usable encryption key make the header invalid.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::SerializeInto;

use crate::error::{Error, Result};

/// Where Delta Chat core breaks the base64 of `keydata` with a space.
const KEYDATA_CHUNK: usize = 78;

/// Base64 as found in the wild: padding optional.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One parsed `Autocrypt:` or `Autocrypt-Gossip:` header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The address the key belongs to, as written (compare case-insensitively).
    pub addr: String,
    /// `prefer-encrypt=mutual`; anything else means no preference. Always false in gossip.
    pub prefer_mutual: bool,
    /// The public key, without any secret key material.
    pub cert: Cert,
}

impl Header {
    /// A header for `addr` and `cert` (its public part is sent).
    pub fn new(addr: &str, cert: &Cert, prefer_mutual: bool) -> Self {
        Header {
            addr: addr.to_owned(),
            prefer_mutual,
            cert: cert.clone().strip_secret_key_material(),
        }
    }

    /// Parses a header value (folded or not).
    pub fn parse(value: &str) -> Result<Self> {
        let mut addr = None;
        let mut prefer_mutual = false;
        let mut keydata = None;
        for attribute in value.split(';') {
            let attribute = attribute.trim();
            if attribute.is_empty() {
                continue;
            }
            let Some((name, value)) = attribute.split_once('=') else {
                return Err(Error::Autocrypt(format!(
                    "attribute without value: {attribute:?}"
                )));
            };
            let name = name.trim();
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "addr" => addr = Some(value.to_owned()),
                "prefer-encrypt" => prefer_mutual = value == "mutual",
                "keydata" => keydata = Some(value),
                _ if name.starts_with('_') => {}
                _ => return Err(Error::Autocrypt(format!("unknown attribute {name:?}"))),
            }
        }
        let addr = addr.ok_or_else(|| Error::Autocrypt("no addr".into()))?;
        if addr.is_empty() || !addr.contains('@') {
            return Err(Error::Autocrypt(format!("bad addr {addr:?}")));
        }
        let keydata = keydata.ok_or_else(|| Error::Autocrypt("no keydata".into()))?;
        let compact: String = keydata.split_whitespace().collect();
        let bytes = LENIENT
            .decode(compact.as_bytes())
            .map_err(|err| Error::Autocrypt(format!("keydata is not base64: {err}")))?;
        let cert = Cert::from_bytes(&bytes)
            .map_err(|err| Error::Autocrypt(format!("keydata: {err}")))?
            .strip_secret_key_material();
        check_usable(&cert)?;
        Ok(Header {
            addr,
            prefer_mutual,
            cert,
        })
    }

    /// Whether this header is about `addr` (case-insensitive, as addresses are compared).
    pub fn is_for(&self, addr: &str) -> bool {
        self.addr.eq_ignore_ascii_case(addr)
    }

    /// The `Autocrypt:` value: `addr=…; prefer-encrypt=mutual; keydata=…`.
    pub fn to_value(&self) -> Result<String> {
        let keydata = keydata(&self.cert)?;
        let addr = self.addr.to_lowercase();
        Ok(if self.prefer_mutual {
            format!("addr={addr}; prefer-encrypt=mutual; keydata={keydata}")
        } else {
            format!("addr={addr}; keydata={keydata}")
        })
    }

    /// The `Autocrypt-Gossip:` value: `addr=…; keydata=…`.
    pub fn to_gossip_value(&self) -> Result<String> {
        Ok(format!(
            "addr={}; keydata={}",
            self.addr.to_lowercase(),
            keydata(&self.cert)?
        ))
    }
}

/// Base64 of the binary public key, a space after every 78 characters.
fn keydata(cert: &Cert) -> Result<String> {
    let bytes = cert
        .clone()
        .strip_secret_key_material()
        .to_vec()
        .map_err(Error::pgp)?;
    let encoded = STANDARD.encode(bytes);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / KEYDATA_CHUNK + 1);
    for (i, c) in encoded.chars().enumerate() {
        if i > 0 && i % KEYDATA_CHUNK == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    Ok(out)
}

/// A key is only useful to us if it is valid now and can receive encrypted mail.
fn check_usable(cert: &Cert) -> Result<()> {
    let policy = StandardPolicy::new();
    let valid = cert
        .with_policy(&policy, None)
        .map_err(|err| Error::Autocrypt(format!("key not valid: {err}")))?;
    if valid
        .keys()
        .for_transport_encryption()
        .alive()
        .revoked(false)
        .next()
        .is_none()
    {
        return Err(Error::Autocrypt("key has no encryption key".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::{alice, bob};

    fn header() -> Header {
        Header::new("Bot@Example.org", alice().secret_cert(), true)
    }

    #[test]
    fn written_header_has_core_layout() {
        let value = header().to_value().unwrap();
        assert!(value.starts_with("addr=bot@example.org; prefer-encrypt=mutual; keydata="));
        let keydata = value.split_once("keydata=").unwrap().1;
        let chunks: Vec<&str> = keydata.split(' ').collect();
        assert!(chunks.len() > 1);
        for chunk in &chunks[..chunks.len() - 1] {
            assert_eq!(chunk.len(), 78);
        }
        assert!(!value.contains('\n'));
    }

    #[test]
    fn written_header_parses_back_without_secrets() {
        let parsed = Header::parse(&header().to_value().unwrap()).unwrap();
        assert_eq!(parsed.addr, "bot@example.org");
        assert!(parsed.prefer_mutual);
        assert_eq!(
            parsed.cert.fingerprint(),
            alice().secret_cert().fingerprint()
        );
        assert!(!parsed.cert.is_tsk());
        assert!(parsed.is_for("BOT@example.ORG"));
    }

    #[test]
    fn gossip_has_no_prefer_encrypt() {
        let value = Header::new("bob@example.org", bob().secret_cert(), true)
            .to_gossip_value()
            .unwrap();
        assert!(value.starts_with("addr=bob@example.org; keydata="));
        let parsed = Header::parse(&value).unwrap();
        assert!(!parsed.prefer_mutual);
        assert_eq!(parsed.cert.fingerprint(), bob().secret_cert().fingerprint());
    }

    #[test]
    fn folded_and_reordered_header_is_read() {
        let value = header().to_value().unwrap();
        let keydata = value.split_once("keydata=").unwrap().1;
        // Folded with CRLF + tab, unpadded, extra spaces, an underscore attribute, keydata first.
        let folded = keydata
            .replace(' ', "\r\n\t")
            .trim_end_matches('=')
            .to_owned();
        let tolerant = format!(
            " keydata = {folded} ;ADDR=bot@example.org;  _verified=1; prefer-encrypt=nopreference;"
        );
        let parsed = Header::parse(&tolerant).unwrap();
        assert_eq!(parsed.addr, "bot@example.org");
        assert!(!parsed.prefer_mutual);
        assert_eq!(
            parsed.cert.fingerprint(),
            alice().secret_cert().fingerprint()
        );
    }

    #[test]
    fn invalid_headers_are_refused() {
        let value = header().to_value().unwrap();
        let keydata = value.split_once("keydata=").unwrap().1;
        for bad in [
            format!("keydata={keydata}"),
            "addr=bot@example.org; prefer-encrypt=mutual".to_owned(),
            format!("addr=bot@example.org; color=blue; keydata={keydata}"),
            "addr=bot@example.org; keydata=!!!notbase64".to_owned(),
            "addr=bot@example.org; keydata=aGVsbG8gd29ybGQ=".to_owned(),
            format!("addr=nobody; keydata={keydata}"),
            format!("addr=bot@example.org; keydata {keydata}"),
        ] {
            assert!(Header::parse(&bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn key_without_encryption_subkey_is_refused() {
        let cert = alice().public_cert();
        // Keep only the primary key and its user ID.
        let stripped = cert.retain_subkeys(|_| false);
        let value = Header::new("bot@example.org", &stripped, true)
            .to_value()
            .unwrap();
        let err = Header::parse(&value).unwrap_err();
        assert!(err.to_string().contains("no encryption key"), "{err}");
    }
}
