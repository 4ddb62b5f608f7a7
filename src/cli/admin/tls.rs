//! TLS from `kluis admin` to an `https://` server: the certificates in `--ca-cert` as roots,
//! verified the usual way (chain, name, dates), and one more case an operator meets on day one:
//! a server certificate that is itself in `--ca-cert`, self-signed as `openssl req -x509`
//! makes it (marked as a CA, which the usual verification refuses as a server certificate).
//! That exact certificate is trusted as given (pinned), within its validity dates.
//!
//! Must never: accept a certificate that is not in `--ca-cert` and does not chain to one.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects `endpoint` (whose URL says `http://`: the TLS is done here, beneath tonic) to
/// `host:port` over TLS, trusting what `ca_pem` holds.
pub async fn connect(
    endpoint: Endpoint,
    host: String,
    ca_pem: &[u8],
) -> Result<Channel, Result<tonic::transport::Error, String>> {
    let config = Arc::new(client_config(ca_pem).map_err(Err)?);
    let connector = tower::service_fn(move |uri: Uri| {
        let config = Arc::clone(&config);
        let host = host.clone();
        async move {
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint.connect_with_connector(connector).await.map_err(Ok)
}

/// A client configuration trusting the certificates of `ca_pem`, speaking HTTP/2.
fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(ca_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--ca-cert holds no readable PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("--ca-cert holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    let (_added, ignored) = roots.add_parsable_certificates(certs.iter().cloned());
    if ignored > 0 && roots.is_empty() {
        return Err("--ca-cert holds no certificate that can serve as a root".into());
    }
    let webpki =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|e| format!("--ca-cert: {e}"))?;
    let verifier = Arc::new(PinnedOrChained {
        pinned: certs,
        webpki,
        provider: Arc::clone(&provider),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Verifies as webpki does, and failing that accepts a server certificate that is byte for byte
/// one of the `--ca-cert` certificates, within its validity dates.
#[derive(Debug)]
struct PinnedOrChained {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedOrChained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refused = match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => return Ok(verified),
            Err(e) => e,
        };
        let pinned = self
            .pinned
            .iter()
            .any(|c| c.as_ref() == end_entity.as_ref());
        if pinned && within_validity(end_entity, now) {
            return Ok(ServerCertVerified::assertion());
        }
        Err(refused)
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Whether `now` lies within the certificate's notBefore and notAfter.
fn within_validity(cert: &CertificateDer<'_>, now: UnixTime) -> bool {
    use x509_cert::der::Decode;
    let Ok(cert) = x509_cert::Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    let validity = &cert.tbs_certificate.validity;
    let now = now.as_secs();
    validity.not_before.to_unix_duration().as_secs() <= now
        && now <= validity.not_after.to_unix_duration().as_secs()
}
