//! TLS client policy of both channels (filtermail-latest.md §7.5): rustls with the ring
//! provider, TLS 1.2 and 1.3, no client certificate; certificates verified against the
//! system's root store, or not at all ("relaxed") for address literals and `_` domains.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::DeliveryError;

/// The four client configurations: verified or relaxed, each with ALPN (HTTPS: h2 and
/// HTTP/1.1) and without (SMTP).
#[derive(Clone)]
pub(crate) struct TlsConfigs {
    /// HTTPS, certificate verified.
    pub https_verified: ClientConfig,
    /// HTTPS, any certificate accepted.
    pub https_relaxed: ClientConfig,
    /// SMTP STARTTLS, certificate verified.
    pub smtp_verified: Arc<ClientConfig>,
    /// SMTP STARTTLS, any certificate accepted.
    pub smtp_relaxed: Arc<ClientConfig>,
}

impl TlsConfigs {
    /// Loads the system's root certificates (Debian: `/etc/ssl/certs`, kept current by
    /// the `ca-certificates` package) and builds the configurations.
    pub fn system() -> Result<TlsConfigs, DeliveryError> {
        let loaded = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
            return Err(DeliveryError::Roots(format!(
                "none found or none parsable ({})",
                errors.join("; ")
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| DeliveryError::Roots(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let relaxed = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| DeliveryError::Roots(err.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth();
        let alpn = |mut config: ClientConfig| {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config
        };
        Ok(TlsConfigs {
            https_verified: alpn(verified.clone()),
            https_relaxed: alpn(relaxed.clone()),
            smtp_verified: Arc::new(verified),
            smtp_relaxed: Arc::new(relaxed),
        })
    }
}

/// Accepts any certificate chain for any name, but still checks that the server holds
/// the key of the certificate it presented (handshake signatures), so the channel is
/// encrypted to whoever answered.
#[derive(Debug)]
struct AcceptAnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
