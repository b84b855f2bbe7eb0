//! TLS to the relay: TLS 1.3, system roots; the relay's self-signed certificate is
//! accepted only where chatmail.ini says the relay is self-signed.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{Error, Result};

/// How long connecting (TCP and TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A TLS client configuration: verified against the system roots, or, for a self-signed
/// relay, accepting any certificate (the handshake signatures are still checked).
pub fn client_config(self_signed: bool) -> Result<Arc<ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| Error::Connection(format!("TLS setup: {err}")))?;
    let config = if self_signed {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptSelfSigned(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for cert in found.certs {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(Error::Connection("no system CA certificates found".into()));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Connects to `host:port` and completes the TLS handshake.
pub async fn connect(
    config: &Arc<ClientConfig>,
    host: &str,
    port: u16,
) -> Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|err| Error::Connection(format!("{host}: {err}")))?;
    let connect = async {
        let tcp = TcpStream::connect((host, port)).await?;
        TlsConnector::from(config.clone()).connect(name, tcp).await
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(Error::Connection(format!("{host}:{port}: {err}"))),
        Err(_) => Err(Error::Connection(format!("{host}:{port}: timed out"))),
    }
}

/// Accepts any server certificate: for relays with a self-signed certificate
/// (`_`-prefixed test domains, IPv4 relays), as Delta Chat clients do for them.
#[derive(Debug)]
struct AcceptSelfSigned(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptSelfSigned {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
