//! Where the environment's programs come from: the control plane built from the pinned
//! Go modules (`e2e/controlplane/build.sh`, cached outside the clone), and RabbitMQ,
//! Erlang's epmd and Redis from Debian's packages (installed when missing).

use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

/// Environment variable that names a directory holding etcd, kube-apiserver,
/// kube-controller-manager and kubectl, skipping the build.
pub const ENV_CONTROLPLANE_BIN: &str = "AIOS_CONTROLPLANE_BIN";

/// Why a program is not available.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    /// The build script could not be run.
    #[error("running {script}")]
    Run {
        /// The script.
        script: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The build script failed; it printed why on stderr.
    #[error("{script} failed (exit status {status}); its output above says why")]
    Failed {
        /// The script.
        script: String,
        /// Its exit status.
        status: String,
    },
    /// A program is still missing after the install step.
    #[error("{program} is not installed and could not be installed: {hint}")]
    Missing {
        /// The program.
        program: String,
        /// What to do about it.
        hint: String,
    },
}

/// The directory of this crate's control-plane scripts.
pub fn controlplane_dir() -> PathBuf {
    crate::repo_root().join("e2e").join("controlplane")
}

/// The directory holding the control-plane binaries, building them on first use.
pub fn controlplane_bin_dir() -> Result<PathBuf, BinariesError> {
    built_dir(ENV_CONTROLPLANE_BIN, &controlplane_dir().join("build.sh"))
}

/// Environment variable that names a directory holding the client tools (helm),
/// skipping the build.
pub const ENV_TOOLS_BIN: &str = "AIOS_TOOLS_BIN";

/// The directory holding the client tools the tests run as users do (helm), building
/// them from their pinned Go modules on first use.
pub fn tools_bin_dir() -> Result<PathBuf, BinariesError> {
    built_dir(
        ENV_TOOLS_BIN,
        &crate::repo_root()
            .join("e2e")
            .join("tools")
            .join("build.sh"),
    )
}

/// Environment variable that names a directory holding the node's programs, skipping
/// the build.
pub const ENV_NODE_BIN: &str = "AIOS_NODE_BIN";

/// The directory holding the local node's programs (kubelet, kube-scheduler,
/// kube-proxy, CoreDNS, pause and its image), installing the Debian packages the node
/// runs (containerd, runc, CNI plugins, iptables) and building the rest on first use.
pub fn node_bin_dir() -> Result<PathBuf, BinariesError> {
    let node = crate::repo_root().join("e2e").join("node");
    run_installer(&node.join("install-packages.sh"))?;
    built_dir(ENV_NODE_BIN, &node.join("build.sh"))
}

/// The AIOS images (`images/build.py`, cached), each with the name it is imported
/// under: `ghcr.io/aios-dev/<image>:<version>`, what the chart and the operator name.
pub fn images() -> Result<Vec<(PathBuf, String)>, BinariesError> {
    let out = script_output(&crate::repo_root().join("images").join("build.py"))?;
    let version = env!("CARGO_PKG_VERSION");
    Ok(out
        .lines()
        .filter_map(|line| {
            let path = PathBuf::from(line.trim());
            let file = path.file_name()?.to_str()?.to_owned();
            let image = file.split(&format!("-{version}-")).next()?.to_owned();
            Some((path, format!("ghcr.io/aios-dev/{image}:{version}")))
        })
        .collect())
}

/// The model server's image (`e2e/model/image.sh`: Ollama with the local models in
/// it) and the name it is imported under, when the model server is built (building it
/// takes minutes and the model weights; `e2e/model/build.sh` does it); else `None`.
pub fn model_server_image() -> Option<(PathBuf, String)> {
    let model = crate::repo_root().join("e2e").join("model");
    let built = Command::new(model.join("build.sh"))
        .arg("--check")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !built {
        return None;
    }
    let out = Command::new(model.join("image.sh"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let file = path.file_name()?.to_str()?.to_owned();
    let version = file
        .strip_prefix("aios-model-server-")?
        .split('-')
        .next()?
        .to_owned();
    Some((path, format!("{MODEL_SERVER_IMAGE}:{version}")))
}

/// The name the model server's image is imported under (its tag is Ollama's version).
pub const MODEL_SERVER_IMAGE: &str = "ghcr.io/aios-dev/aios-model-server";

/// The directory `variable` names, else the one `script` builds (or finds cached) and
/// prints on stdout.
fn built_dir(variable: &str, script: &std::path::Path) -> Result<PathBuf, BinariesError> {
    if let Some(dir) = env::var_os(variable) {
        return Ok(PathBuf::from(dir));
    }
    Ok(PathBuf::from(script_output(script)?.trim()))
}

/// Runs an install script (its output on ours); an error unless it succeeded.
fn run_installer(script: &std::path::Path) -> Result<(), BinariesError> {
    let status = Command::new(script)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|source| BinariesError::Run {
            script: script.display().to_string(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(BinariesError::Failed {
            script: script.display().to_string(),
            status: status.to_string(),
        })
    }
}

/// Runs `script` (its progress on our stderr) and returns what it printed on stdout.
fn script_output(script: &std::path::Path) -> Result<String, BinariesError> {
    let out = Command::new(script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| BinariesError::Run {
            script: script.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(BinariesError::Failed {
            script: script.display().to_string(),
            status: out.status.to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where a Debian-packaged service program lives.
fn service_path(program: &str) -> PathBuf {
    match program {
        // The packaged /usr/sbin wrapper switches to the rabbitmq user and its system
        // paths; the script behind it honours our environment variables.
        "rabbitmq-server" => PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmq-server"),
        "epmd" => PathBuf::from("/usr/bin/epmd"),
        "socat" => PathBuf::from("/usr/bin/socat"),
        _ => PathBuf::from("/usr/bin").join(program),
    }
}

/// The path of `program` (`redis-server`, `rabbitmq-server`, `epmd`), installing the
/// Debian packages when it is missing.
pub fn service_program(program: &str) -> Result<PathBuf, BinariesError> {
    let path = service_path(program);
    if path.exists() {
        return Ok(path);
    }
    let script = controlplane_dir().join("install-services.sh");
    if run_installer(&script).is_ok() && path.exists() {
        Ok(path)
    } else {
        Err(BinariesError::Missing {
            program: program.to_owned(),
            hint: format!("run {} as root", script.display()),
        })
    }
}
