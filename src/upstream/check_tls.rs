//! TLS for the active health checks of a TLS upstream: the same SNI, roots (`ca` or the
//! system's) and verification as the proxied requests, so a check passes only where a request
//! would connect.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

use crate::config::UpstreamTls;

/// The connector the checks of one upstream use.
pub fn connector(tls: &UpstreamTls) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable!("ring supports the default versions"));
    let builder = if tls.verify {
        let mut roots = RootCertStore::empty();
        match &tls.ca {
            Some(ders) => {
                for der in ders {
                    let _ = roots.add(CertificateDer::from(der.clone()));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs().unwrap_or_default();
                roots.add_parsable_certificates(native);
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    let identity = tls.client.as_ref().and_then(|c| {
        let chain = c
            .chain
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect();
        PrivateKeyDer::try_from(c.key.clone())
            .ok()
            .map(|key| (chain, key))
    });
    let mut config = match identity {
        // Checked when the config loaded: the pair matches.
        Some((chain, key)) => match builder.clone().with_client_auth_cert(chain, key) {
            Ok(config) => config,
            Err(e) => {
                log::warn!("health checks cannot use the client certificate: {e}");
                builder.with_no_client_auth()
            }
        },
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// The name to send for `backend` (`host:port` as written): the SNI, else its IP address.
pub fn server_name(
    tls: &UpstreamTls,
    backend: &str,
    addr: std::net::SocketAddr,
) -> ServerName<'static> {
    let sni = tls.sni_for(backend);
    ServerName::try_from(sni).unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()))
}

/// `verify: false`: any certificate, signatures still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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
