//! The local control plane's keys and certificates: a throwaway CA, the API server's
//! serving certificate, an admin client certificate (group `system:masters`), the
//! service-account signing key pair, and the local node's: the kubelet's serving and
//! client certificates and the API server's client certificate towards it.

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

/// The `kubernetes` Service's ClusterIP: the first address of the Service range.
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";

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
    /// The local node's kubelet serving certificate (for the node's IP and name).
    pub kubelet_serving_cert: String,
    /// Its key.
    pub kubelet_serving_key: String,
    /// The kubelet's client certificate (`system:node:<node>` in `system:nodes`).
    pub kubelet_client_cert: String,
    /// Its key.
    pub kubelet_client_key: String,
    /// The API server's client certificate towards kubelets (logs, exec).
    pub apiserver_kubelet_client_cert: String,
    /// Its key.
    pub apiserver_kubelet_client_key: String,
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
    /// The kubelet's serving certificate.
    pub const KUBELET_SERVING_CERT: &str = "kubelet.crt";
    /// The kubelet's serving key.
    pub const KUBELET_SERVING_KEY: &str = "kubelet.key";
    /// The kubelet's client certificate.
    pub const KUBELET_CLIENT_CERT: &str = "kubelet-client.crt";
    /// The kubelet's client key.
    pub const KUBELET_CLIENT_KEY: &str = "kubelet-client.key";
    /// The API server's client certificate towards kubelets.
    pub const APISERVER_KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client.crt";
    /// Its key.
    pub const APISERVER_KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client.key";
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
                // Pods on the local node reach the API server through the `kubernetes`
                // Service's ClusterIP and a relay on the node's address.
                KUBERNETES_SERVICE_IP.to_owned(),
                crate::node::NODE_IP.to_owned(),
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

        let client =
            |common_name: &str, organization: &str| -> Result<(String, String), PkiError> {
                let key = generate("a client key", KeyPair::generate())?;
                let mut params = CertificateParams::default();
                params.distinguished_name = name(common_name, Some(organization));
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                let cert = generate("a client certificate", params.signed_by(&key, &issuer))?;
                Ok((cert.pem(), key.serialize_pem()))
            };
        let (kubelet_client_cert, kubelet_client_key) = client(
            &format!("system:node:{}", crate::node::NODE_NAME),
            "system:nodes",
        )?;
        let (apiserver_kubelet_client_cert, apiserver_kubelet_client_key) =
            client("kube-apiserver-kubelet-client", "system:masters")?;
        let kubelet_key = generate("the kubelet serving key", KeyPair::generate())?;
        let mut kubelet = generate(
            "the kubelet serving certificate parameters",
            CertificateParams::new(vec![
                crate::node::NODE_IP.to_owned(),
                crate::node::NODE_NAME.to_owned(),
            ]),
        )?;
        kubelet.distinguished_name = name(crate::node::NODE_NAME, None);
        kubelet.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let kubelet_cert = generate(
            "the kubelet serving certificate",
            kubelet.signed_by(&kubelet_key, &issuer),
        )?;

        Ok(Self {
            ca_cert: ca_cert.pem(),
            serving_cert: serving_cert.pem(),
            serving_key: serving_key.serialize_pem(),
            admin_cert: admin_cert.pem(),
            admin_key: admin_key.serialize_pem(),
            service_account_key: sa_key.serialize_pem(),
            service_account_pub: sa_key.public_key_pem(),
            kubelet_serving_cert: kubelet_cert.pem(),
            kubelet_serving_key: kubelet_key.serialize_pem(),
            kubelet_client_cert,
            kubelet_client_key,
            apiserver_kubelet_client_cert,
            apiserver_kubelet_client_key,
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
            (files::KUBELET_SERVING_CERT, &self.kubelet_serving_cert),
            (files::KUBELET_SERVING_KEY, &self.kubelet_serving_key),
            (files::KUBELET_CLIENT_CERT, &self.kubelet_client_cert),
            (files::KUBELET_CLIENT_KEY, &self.kubelet_client_key),
            (
                files::APISERVER_KUBELET_CLIENT_CERT,
                &self.apiserver_kubelet_client_cert,
            ),
            (
                files::APISERVER_KUBELET_CLIENT_KEY,
                &self.apiserver_kubelet_client_key,
            ),
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
