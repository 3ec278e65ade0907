//! What the GitOps tests use from the tools those users run: the status the kstatus
//! library computes for objects (Flux's health checks, helm's `--wait` and
//! `kubectl wait` rest on it), or Flux's own CEL status reader with a Kustomization's
//! `healthCheckExprs` (`e2e/tools/kstatus`, built by `e2e/tools/build.sh`); and the Argo
//! CD and Flux CRDs taken from those projects' published Go modules
//! (`e2e/tools/gitops-crds.sh`).

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use crate::binaries::{BinariesError, tools_bin_dir};

/// Environment variable that names a directory holding the Argo CD and Flux CRDs (what
/// `e2e/tools/gitops-crds.sh` prints), skipping the script.
pub const ENV_GITOPS_CRDS: &str = "AIOS_GITOPS_CRDS";

/// Why a GitOps tool gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum GitopsError {
    /// The tool or the CRDs are not available.
    #[error("the GitOps tools are not available")]
    Unavailable(#[from] BinariesError),
    /// kstatus could not be run.
    #[error("running {program}")]
    Run {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// kstatus refused its input (or the Kustomization) or failed; its stderr says why.
    #[error("kstatus failed ({status}): {stderr}")]
    Failed {
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// kstatus printed a line that is not `<object> <status> [<message>]`.
    #[error("kstatus printed an unexpected line: {line:?}")]
    Output {
        /// The line.
        line: String,
    },
}

/// The directory holding the Argo CD and Flux CRDs: the one `AIOS_GITOPS_CRDS` names,
/// else the one `e2e/tools/gitops-crds.sh` fills (or finds cached) and prints.
pub fn crds_dir() -> Result<PathBuf, BinariesError> {
    if let Some(dir) = std::env::var_os(ENV_GITOPS_CRDS) {
        return Ok(PathBuf::from(dir));
    }
    printed_dir(&tools_dir().join("gitops-crds.sh"))
}

/// The kstatus command. `AIOS_TOOLS_BIN` may name a directory built before kstatus was
/// one of the tools; then `e2e/tools/build.sh` builds the current set. Found once per
/// process.
pub fn kstatus_path() -> Result<PathBuf, BinariesError> {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    if let Some(path) = PATH.get() {
        return Ok(path.clone());
    }
    let mut path = tools_bin_dir()?.join("kstatus");
    if !path.exists() {
        path = printed_dir(&tools_dir().join("build.sh"))?.join("kstatus");
    }
    Ok(PATH.get_or_init(|| path).clone())
}

/// The status kstatus computes for `objects_json` (one object, or a `List` as `kubectl
/// get -o json` prints it): for each object, in order, `(<Kind>/<namespace>/<name>,
/// status, message)`, the status one of `InProgress`, `Current`, `Failed`,
/// `Terminating`, `NotFound`, `Unknown`.
pub fn kstatus(objects_json: &str) -> Result<Vec<(String, String, String)>, GitopsError> {
    run_kstatus(&[], objects_json)
}

/// As [`kstatus`], but the status Flux's kustomize-controller computes while it waits for
/// the objects, with the `healthCheckExprs` of the Flux Kustomization in the YAML file
/// `kustomization`: Flux's own CEL status reader for the kinds they cover (`Unknown`,
/// the error as message, when an expression cannot be evaluated), kstatus for the rest.
pub fn flux_status(
    kustomization: &Path,
    objects_json: &str,
) -> Result<Vec<(String, String, String)>, GitopsError> {
    run_kstatus(
        &["-flux-health-exprs".as_ref(), kustomization.as_os_str()],
        objects_json,
    )
}

fn run_kstatus(
    args: &[&std::ffi::OsStr],
    objects_json: &str,
) -> Result<Vec<(String, String, String)>, GitopsError> {
    let program = kstatus_path()?;
    let run_err = |source| GitopsError::Run {
        program: program.display().to_string(),
        source,
    };
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(run_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(objects_json.as_bytes()).map_err(run_err)?;
    }
    let out = child.wait_with_output().map_err(run_err)?;
    if !out.status.success() {
        return Err(GitopsError::Failed {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(parse_line)
        .collect()
}

/// One line of kstatus's output: `<object> <status>`, then ` <message>` when there is one.
fn parse_line(line: &str) -> Result<(String, String, String), GitopsError> {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(object), Some(status), message) if object.contains('/') && !status.is_empty() => {
            Ok((
                object.to_owned(),
                status.to_owned(),
                message.unwrap_or_default().to_owned(),
            ))
        }
        _ => Err(GitopsError::Output {
            line: line.to_owned(),
        }),
    }
}

fn tools_dir() -> PathBuf {
    crate::repo_root().join("e2e").join("tools")
}

/// Runs `script` (its progress on our stderr) and returns the directory it printed.
fn printed_dir(script: &Path) -> Result<PathBuf, BinariesError> {
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
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_splits_into_object_status_and_message() {
        let (object, status, message) =
            parse_line("Deployment/shop/web InProgress Replicas: 0/1 ready").unwrap();
        assert_eq!(object, "Deployment/shop/web");
        assert_eq!(status, "InProgress");
        assert_eq!(message, "Replicas: 0/1 ready");
    }

    #[test]
    fn a_line_without_a_message_has_an_empty_one() {
        let parsed = parse_line("Namespace//shop Current").unwrap();
        assert_eq!(parsed.2, "");
    }

    #[test]
    fn a_line_without_a_status_is_refused() {
        assert!(parse_line("Deployment/shop/web").is_err());
        assert!(parse_line("kstatus: something").is_err());
    }
}
