//! Pieces every pod the operator renders shares: security contexts that pass Pod
//! Security `restricted`, size-limited scratch volumes, plain environment variables.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Capabilities, EmptyDirVolumeSource, EnvVar, PodSecurityContext, SeccompProfile,
        SecurityContext, Volume,
    },
    apimachinery::pkg::api::resource::Quantity,
};

/// The user (and group) AIOS's pods run as: distroless's `nonroot`.
pub const NONROOT: i64 = 65532;

/// A pod running as [`NONROOT`] with the runtime's default seccomp profile; volumes are
/// made writable by its group.
pub fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NONROOT),
        run_as_group: Some(NONROOT),
        fs_group: Some(NONROOT),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..PodSecurityContext::default()
    }
}

/// A container with no capabilities, no privilege escalation and a read-only root.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// An emptyDir of at most `limit`: past it the kubelet evicts the pod rather than let it
/// fill the node's disk.
pub fn scratch_volume(name: &str, limit: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(limit.to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A plain environment variable.
pub fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

/// Resource quantities from `(resource, amount)` pairs.
pub fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
        .collect()
}
