//! Certificates made at test time: a [`TestCa`] that signs server certificates for the
//! scripted relay, so that TLS is tested with real verification against a CA the agent is told
//! to trust (`ca_file`), and against one it is not.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority of our own.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose certificate says `name`.
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().context("generating the CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("signing the CA")?;
        Ok(TestCa { issuer })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate (PEM) to `path`, for a relay's `ca_file`.
    pub fn write_pem(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.pem()).with_context(|| format!("writing {}", path.display()))
    }

    /// A certificate for `names` signed by this CA, followed by the CA's, and its private key:
    /// both PEM, for a server of another program (Python's ssl module, nginx).
    pub fn server_pem(&self, names: &[&str]) -> anyhow::Result<(String, String)> {
        let (cert, key) = self.sign(names)?;
        Ok((
            format!("{}{}", cert.pem(), self.issuer.pem()),
            key.serialize_pem(),
        ))
    }

    fn sign(&self, names: &[&str]) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("relay"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().context("generating the server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the server certificate")?;
        Ok((cert, key))
    }

    /// A server configuration with a certificate for `names` (host names or IP addresses)
    /// signed by this CA, the CA certificate sent along.
    pub fn server_config(&self, names: &[&str]) -> anyhow::Result<Arc<ServerConfig>> {
        let (cert, key) = self.sign(names)?;
        let chain: Vec<CertificateDer<'static>> =
            vec![cert.der().clone(), self.issuer.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the server certificate")?;
        Ok(Arc::new(config))
    }
}
