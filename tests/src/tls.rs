//! TLS for the relay: a self-signed certificate made with the `openssl` command line (as a
//! chatmail relay with an underscore domain makes its own), and a client that accepts any
//! certificate, as Delta Chat does when told to (`ic=2` in a `dclogin:` URL); and the
//! server side of the test's own TLS servers (push gateway, remote relay).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, SignatureScheme,
    StreamOwned,
};

/// Where the `openssl` command line lives on Debian (package `openssl`).
pub const OPENSSL: &str = "/usr/bin/openssl";

/// How long one read or write may block.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes a self-signed EC P-256 certificate for `domain` (plus `127.0.0.1`) to `cert` and
/// its key to `key` (mode 0600), valid for 100 years. Panics with openssl's output on
/// failure.
pub fn self_signed(domain: &str, cert: &Path, key: &Path) {
    let output = Command::new(OPENSSL)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-noenc", "-days", "36500", "-keyout"])
        .arg(key)
        .arg("-out")
        .arg(cert)
        .arg("-subj")
        .arg(format!("/CN={domain}"))
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth,clientAuth"])
        .arg("-addext")
        .arg(format!(
            "subjectAltName=DNS:{domain},DNS:www.{domain},DNS:mta-sts.{domain},IP:127.0.0.1"
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {OPENSSL}: {err}"));
    assert!(
        output.status.success(),
        "openssl req failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A server configuration (no ALPN, so HTTP/1.1 for HTTPS clients) presenting `cert`,
/// whose key is `key`: for the test's own TLS servers.
pub fn server_config(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("a certificate and its key");
    Arc::new(config)
}

/// A TLS connection to a relay service, certificate not checked.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` and completes a TLS handshake with SNI `server_name`, accepting any
/// certificate.
pub fn connect(addr: SocketAddr, server_name: &str) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    wrap(tcp, server_name)
}

/// Starts TLS on an established connection (after STARTTLS, or at once for implicit TLS)
/// and completes the handshake.
pub fn wrap(tcp: TcpStream, server_name: &str) -> io::Result<TlsStream> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let connection = ClientConnection::new(client_config(), name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A connection the IMAP and SMTP clients can use: plain TCP or TLS.
pub trait Stream: Read + Write + Send {}

impl<T: Read + Write + Send> Stream for T {}

fn client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts every server certificate, but still checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
