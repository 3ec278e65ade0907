//! TLS to the backing services: `amqps://` for RabbitMQ and `rediss://` for Redis,
//! trusting the system's roots and, when given, a CA bundle of the platform's own (a
//! PEM file, or the PEM text an agent pod gets from its connection Secret).
//!
//! Errors name the endpoint they were about, with any password taken out of the URL, so
//! a wrong CA reads as "which server, and why", not as a bare handshake failure.

use std::path::Path;

use aios_crds::text::without_userinfo;
use lapin::tcp::OwnedTLSConfig;
use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Why a CA bundle or a TLS client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The bundle's file could not be read.
    #[error("reading the CA bundle {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle holds no PEM certificate, or a malformed one.
    #[error("the CA bundle {origin} {problem}")]
    Invalid {
        /// Where the bundle came from.
        origin: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The Redis URL or its TLS settings were refused.
    #[error("Redis at {endpoint}: {source}")]
    Redis {
        /// The URL, without its password.
        endpoint: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
}

/// Certificates, PEM-encoded, to trust besides the system's roots.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    pem: String,
    origin: String,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl CaBundle {
    /// The bundle in the PEM file at `path`.
    pub fn read(path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(pem, &path.display().to_string())
    }

    /// The bundle in `pem`, which came from `origin` (a file, a variable), for messages.
    /// It must hold at least one certificate, and every certificate must decode.
    pub fn from_pem(pem: String, origin: &str) -> Result<Self, TlsError> {
        let invalid = |problem: String| TlsError::Invalid {
            origin: origin.to_owned(),
            problem,
        };
        let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| invalid(format!("has a malformed certificate: {err}")))?;
        if certificates.is_empty() {
            return Err(invalid(
                "holds no certificate (expected PEM, -----BEGIN CERTIFICATE-----)".to_owned(),
            ));
        }
        Ok(Self {
            pem,
            origin: origin.to_owned(),
        })
    }

    /// Where the bundle came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// The CA bundle a process was configured with: the PEM file `file`, else the PEM text
/// `pem` (from the variable `AIOS_CA_CERT`); none when neither is set or the text is
/// empty (an optional Secret key).
pub fn configured_ca(file: Option<&Path>, pem: Option<&str>) -> Result<Option<CaBundle>, TlsError> {
    if let Some(path) = file {
        return CaBundle::read(path).map(Some);
    }
    pem.filter(|pem| !pem.trim().is_empty())
        .map(|pem| CaBundle::from_pem(pem.to_owned(), "AIOS_CA_CERT"))
        .transpose()
}

/// How long the TLS check of an `amqps://` endpoint may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Makes one TLS handshake with the server of `url` (`amqps://`), trusting the system's
/// roots and `ca`, and closes it; the error says why it failed (for example
/// `invalid peer certificate: UnknownIssuer`). The AMQP client retries a failed
/// connection for minutes before it says anything, so this runs first: a certificate
/// that does not verify is reported at once.
pub async fn check_amqps(url: &str, ca: Option<&CaBundle>) -> Result<(), String> {
    let uri: lapin::uri::AMQPUri = url.parse()?;
    let host = uri.authority.host.clone();
    let port = uri.authority.port;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca {
        roots.add_parsable_certificates(
            CertificateDer::pem_slice_iter(ca.pem.as_bytes()).filter_map(Result::ok),
        );
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| format!("{host:?} is not a server name: {e}"))?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()))?
}

/// The AMQP client's TLS settings: the system's roots, and `ca` when given.
pub fn amqp_tls(ca: Option<&CaBundle>) -> OwnedTLSConfig {
    OwnedTLSConfig {
        identity: None,
        cert_chain: ca.map(|ca| ca.pem.clone()),
    }
}

/// A Redis client for `url`: over TLS for `rediss://`, trusting `ca` when given (else
/// the system's roots). Nothing is connected yet.
pub fn redis_client(url: &str, ca: Option<&CaBundle>) -> Result<redis::Client, TlsError> {
    let client = match ca {
        Some(ca) if url.starts_with("rediss://") => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.pem.clone().into_bytes()),
            },
        ),
        _ => redis::Client::open(url),
    };
    client.map_err(|source| TlsError::Redis {
        endpoint: without_userinfo(url),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_must_hold_certificates() {
        let err = CaBundle::from_pem("not a certificate".to_owned(), "AIOS_CA_CERT").unwrap_err();
        assert!(
            err.to_string()
                .contains("the CA bundle AIOS_CA_CERT holds no certificate"),
            "{err}"
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = CaBundle::from_pem(broken.to_owned(), "ca.pem").unwrap_err();
        assert!(err.to_string().contains("malformed"), "{err}");
        let err = CaBundle::read(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_refused_redis_url_is_named_without_its_password() {
        let err = redis_client("rediss://:hunter2@[::1", None).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("Redis at rediss://") && !message.contains("hunter2"),
            "{message}"
        );
    }
}
