//! The Helm chart as tests and tools use it: helm (built from its Go module, see
//! `e2e/tools/build.sh`) rendering `charts/aios`, and the operator's RBAC from it, so a
//! process can run with exactly the chart's permissions.

use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use crate::binaries::{BinariesError, tools_bin_dir};

/// Why rendering the chart failed.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// helm is not available.
    #[error("helm is not available")]
    Helm(#[from] BinariesError),
    /// helm could not be run.
    #[error("running helm")]
    Run(#[source] std::io::Error),
    /// helm failed; its stderr says why.
    #[error("helm {args} failed: {stderr}")]
    Failed {
        /// The arguments.
        args: String,
        /// What helm printed on stderr.
        stderr: String,
    },
    /// helm printed something that is not YAML.
    #[error("helm's output is not YAML")]
    Yaml(#[source] serde_yaml_ng::Error),
}

/// A helm command, with its caches and configuration in a directory of this process's
/// (nothing is read from or written to the user's helm setup).
pub fn helm() -> Result<Command, ChartError> {
    let mut command = Command::new(tools_bin_dir()?.join("helm"));
    let home = std::env::temp_dir().join(format!("aios-helm-home-{}", std::process::id()));
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    Ok(command)
}

/// `helm <args>` against `env`'s cluster; its stdout.
pub fn run(env: &crate::Environment, args: &[&str]) -> Result<String, ChartError> {
    let out = helm()?
        .args(args)
        .envs(env.exports())
        .output()
        .map_err(ChartError::Run)?;
    if !out.status.success() {
        return Err(ChartError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the chart as release `aios` in `namespace` for a local environment: the
/// operator watches that namespace, reads the connection Secret the run created
/// (`connection.existingSecret`), and uses the environment's RabbitMQ and Redis rather
/// than the chart's; `sets` add values. Waits until the operator's pods are ready.
pub fn install_operator(
    env: &crate::Environment,
    namespace: &str,
    connection_secret: &str,
    sets: &[&str],
) -> Result<(), ChartError> {
    let chart = chart_dir().display().to_string();
    let existing = format!("connection.existingSecret={connection_secret}");
    let watch = format!("operator.watchNamespace={namespace}");
    let mut args = vec![
        "install",
        "aios",
        chart.as_str(),
        "-n",
        namespace,
        "--wait",
        "--timeout=5m",
    ];
    for set in [
        existing.as_str(),
        "rabbitmq.enabled=false",
        "redis.enabled=false",
        watch.as_str(),
    ]
    .iter()
    .chain(sets)
    {
        args.extend(["--set", set]);
    }
    run(env, &args).map(drop)
}

/// The chart's directory.
pub fn chart_dir() -> std::path::PathBuf {
    crate::repo_root().join("charts").join("aios")
}

/// `helm template <release> charts/aios --namespace <namespace>` with `sets`, as objects.
pub fn render(release: &str, namespace: &str, sets: &[&str]) -> Result<Vec<Value>, ChartError> {
    let chart = chart_dir().display().to_string();
    let mut args = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = helm()?.args(&args).output().map_err(ChartError::Run)?;
    if !out.status.success() {
        return Err(ChartError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    documents(&String::from_utf8_lossy(&out.stdout))
}

/// The objects of a multi-document YAML stream.
pub fn documents(yaml: &str) -> Result<Vec<Value>, ChartError> {
    let mut objects = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).map_err(ChartError::Yaml)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// The operator's identity and permissions from the chart for `release` in `namespace`
/// (its ServiceAccount, ClusterRole and binding, the Lease Role and binding) as a YAML
/// stream for `kubectl apply`, keeping only the ClusterRole rules `keep` accepts.
pub fn operator_rbac(
    namespace: &str,
    release: &str,
    keep: impl Fn(&Value) -> bool,
) -> Result<String, ChartError> {
    let mut yaml = String::new();
    for mut object in render(release, namespace, &["crds.install=false"])? {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let wanted = [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ];
        if !wanted.contains(&kind.as_str()) {
            continue;
        }
        if kind == "ClusterRole"
            && let Some(rules) = object["rules"].as_array()
        {
            let kept: Vec<Value> = rules.iter().filter(|r| keep(r)).cloned().collect();
            object["rules"] = Value::from(kept);
        }
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml_ng::to_string(&object).map_err(ChartError::Yaml)?);
    }
    Ok(yaml)
}

/// The name of the operator's ServiceAccount (and roles) for `release`.
pub fn operator_account(release: &str) -> String {
    if release.contains("aios") {
        format!("{release}-operator")
    } else {
        format!("{release}-aios-operator")
    }
}
