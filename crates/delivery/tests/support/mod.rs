//! Local servers for the delivery tests, all on loopback addresses with ephemeral ports:
//! a UDP name server, an HTTPS `/mxdeliv` endpoint and an SMTP server with STARTTLS.

#![allow(dead_code)]

pub mod dns;
pub mod https;
pub mod smtp;

use std::sync::Arc;

use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A server configuration with a fresh self-signed certificate for `localhost` (valid for
/// no test host name, so only relaxed clients accept it) and ALPN `alpn`.
pub fn self_signed_tls(alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(certified.cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der())),
        )
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TCP port on 127.0.0.1 nothing listens on (bound, then released).
pub async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}
