//! End-to-end tooling for AIOS: the local environment its integration tests, end-to-end
//! tests and local run use (a real kube-apiserver with etcd and kube-controller-manager,
//! RabbitMQ and Redis, as plain processes on loopback), and the tests themselves.
//!
//! Tests share one environment per test binary through [`shared`], each working in a
//! namespace of its own ([`Environment::create_namespace`]). When `AIOS_E2E_ENV` names
//! the state directory of an environment started by `aios-env start` (as `.ci/run`
//! does), every test binary uses that one instead of starting its own.

pub mod argocd;
pub mod binaries;
pub mod chart;
pub mod env;
pub mod gitops;
pub mod local;
pub mod node;
pub mod pki;
pub mod process;
pub mod prometheus;

use std::{path::PathBuf, sync::OnceLock};

pub use env::{EnvError, EnvOptions, Environment};

/// The environment shared by the tests of this process: the one `AIOS_E2E_ENV` names,
/// or one started on first use that stops when this process exits.
///
/// Panics with the reason when no environment can be had: a test that needs the
/// control plane cannot run without it, and the message says what to fix.
pub fn shared() -> &'static Environment {
    static SHARED: OnceLock<Result<Environment, String>> = OnceLock::new();
    let env = SHARED.get_or_init(|| {
        let result = match std::env::var_os(env::ENV_STATE_DIR) {
            Some(dir) => Environment::load(&PathBuf::from(dir)),
            None => Environment::start(&EnvOptions {
                owner_pid: Some(std::process::id()),
                ..EnvOptions::default()
            }),
        };
        result.map_err(|err| format!("{:#}", anyhow::Error::new(err)))
    });
    match env {
        Ok(env) => env,
        Err(err) => panic!("the local environment is not available: {err}"),
    }
}

/// An environment of the caller's own — the control plane without its controller
/// manager, and RabbitMQ — for a test that must not share one: it restarts a server, or
/// counts what the API server is asked. A watchdog stops it when this process exits, a
/// failed assertion included. Panics with the reason when it cannot start.
pub async fn own() -> Environment {
    tokio::task::spawn_blocking(|| {
        Environment::start(&EnvOptions {
            controller_manager: false,
            redis: false,
            owner_pid: Some(std::process::id()),
            ..EnvOptions::default()
        })
        .unwrap_or_else(|err| panic!("starting an environment: {err}"))
    })
    .await
    .unwrap_or_else(|err| panic!("starting an environment: {err}"))
}

/// [`shared`], with the AIOS CRDs installed (once per process).
pub fn shared_with_crds() -> &'static Environment {
    static CRDS: OnceLock<Result<(), String>> = OnceLock::new();
    let env = shared();
    let installed = CRDS.get_or_init(|| env.install_crds().map(drop).map_err(|e| e.to_string()));
    if let Err(err) = installed {
        panic!("installing the CRDs failed: {err}");
    }
    env
}

/// The repository's root directory, for tests that read manifests and CRDs.
///
/// Found at run time — from the `CARGO_MANIFEST_DIR` cargo sets for tests (every crate
/// sits one level below the root), else the working directory — because build caches
/// are shared between clones: a binary built in one clone may run in another.
pub fn repo_root() -> PathBuf {
    let is_root = |dir: &std::path::Path| dir.join("e2e/controlplane/build.sh").exists();
    std::env::var_os("CARGO_MANIFEST_DIR")
        .and_then(|dir| PathBuf::from(dir).parent().map(PathBuf::from))
        .filter(|dir| is_root(dir))
        .or_else(|| std::env::current_dir().ok().filter(|dir| is_root(dir)))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default()
        })
}
