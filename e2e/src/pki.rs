//! The local control plane's keys and certificates: a throwaway CA, the API server's
//! serving certificate, an admin client certificate (group `system:masters`) and the
//! service-account signing key pair.

use std::{fs, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Why the PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key or certificate generation failed.
    #[error("generating {what}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The generator's error.
        #[source]
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// PEM material for one run of the control plane.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate clients trust.
    pub ca_cert: String,
    /// The API server's serving certificate (for `127.0.0.1` and `localhost`).
    pub serving_cert: String,
    /// The serving certificate's key.
    pub serving_key: String,
    /// The admin client certificate.
    pub admin_cert: String,
    /// The admin client certificate's key.
    pub admin_key: String,
    /// The service-account token signing key.
    pub service_account_key: String,
    /// The public half of the service-account key, for token verification.
    pub service_account_pub: String,
}

/// File names the PKI is written under, inside the environment's directory.
pub mod files {
    /// The CA certificate.
    pub const CA_CERT: &str = "ca.crt";
    /// The serving certificate.
    pub const SERVING_CERT: &str = "apiserver.crt";
    /// The serving key.
    pub const SERVING_KEY: &str = "apiserver.key";
    /// The service-account signing key.
    pub const SA_KEY: &str = "sa.key";
    /// The service-account public key.
    pub const SA_PUB: &str = "sa.pub";
}

fn generate<T>(what: &'static str, result: Result<T, rcgen::Error>) -> Result<T, PkiError> {
    result.map_err(|source| PkiError::Generate { what, source })
}

impl Pki {
    /// Makes fresh keys and certificates.
    pub fn generate() -> Result<Self, PkiError> {
        let ca_key = generate("the CA key", KeyPair::generate())?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = name("aios-local-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = generate("the CA certificate", ca_params.self_signed(&ca_key))?;
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = generate("the serving key", KeyPair::generate())?;
        let mut serving = generate(
            "the serving certificate parameters",
            CertificateParams::new(vec![
                "127.0.0.1".to_owned(),
                "localhost".to_owned(),
                "kubernetes".to_owned(),
                "kubernetes.default.svc".to_owned(),
            ]),
        )?;
        serving.distinguished_name = name("kube-apiserver", None);
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = generate(
            "the serving certificate",
            serving.signed_by(&serving_key, &issuer),
        )?;

        let admin_key = generate("the admin key", KeyPair::generate())?;
        let mut admin = CertificateParams::default();
        admin.distinguished_name = name("aios-admin", Some("system:masters"));
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = generate(
            "the admin certificate",
            admin.signed_by(&admin_key, &issuer),
        )?;

        let sa_key = generate("the service-account key", KeyPair::generate())?;

        Ok(Self {
            ca_cert: ca_cert.pem(),
            serving_cert: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            admin_cert: admin_cert.pem(),
            admin_key: admin_key.serialize_pem(),
            service_account_key: sa_key.serialize_pem(),
            service_account_pub: sa_key.public_key_pem(),
        })
    }

    /// Writes the files the servers read into `dir`.
    pub fn write_server_files(&self, dir: &Path) -> Result<(), PkiError> {
        for (file, pem) in [
            (files::CA_CERT, &self.ca_cert),
            (files::SERVING_CERT, &self.serving_cert),
            (files::SERVING_KEY, &self.serving_key),
            (files::SA_KEY, &self.service_account_key),
            (files::SA_PUB, &self.service_account_pub),
        ] {
            let path = dir.join(file);
            fs::write(&path, pem).map_err(|source| PkiError::Write {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}
