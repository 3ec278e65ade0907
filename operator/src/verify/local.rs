//! The local sandbox, where no kubelet runs (the operator as a process): the run's
//! repository is cloned into a directory of its own, and the command runs there as a
//! process with no network (a network namespace of its own with only a loopback that is
//! down: `unshare --map-root-user --net`), an address-space limit (`prlimit --as`), a
//! clean environment (no credential of the operator's), and a timeout, after which its
//! whole process group is killed.
//!
//! Runs live in this process: after a restart a run is started again (a verification
//! is repeatable by nature).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use aios_crds::{VerificationPhase, verify::OUTPUT_MAX_CHARS};
use futures::{FutureExt, future::BoxFuture};
use tokio::process::Command;

use super::{Outcome, Run, Sandbox, SandboxError, tail};

/// Verification runs as local processes, each in `dir/<run id>`.
#[derive(Debug)]
pub struct LocalSandbox {
    dir: PathBuf,
    runs: Mutex<HashMap<String, Arc<OnceLock<Outcome>>>>,
    /// Runs whose outcome was recorded: a late poll of one (from a stale cache) must not
    /// start it again.
    forgotten: Mutex<std::collections::HashSet<String>>,
}

impl LocalSandbox {
    /// A sandbox keeping its runs' checkouts under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            runs: Mutex::new(HashMap::new()),
            forgotten: Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OnceLock<Outcome>>>> {
        self.runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Sandbox for LocalSandbox {
    fn poll<'a>(&'a self, run: &'a Run) -> BoxFuture<'a, Result<Option<Outcome>, SandboxError>> {
        async move {
            if self
                .forgotten
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&run.id)
            {
                return Ok(None);
            }
            let slot = {
                let mut runs = self.runs();
                if let Some(slot) = runs.get(&run.id) {
                    return Ok(slot.get().cloned());
                }
                let slot = Arc::new(OnceLock::new());
                runs.insert(run.id.clone(), slot.clone());
                slot
            };
            let (run, dir) = (run.clone(), self.dir.join(&run.id));
            tokio::spawn(async move {
                let outcome = execute(&run, &dir).await;
                tracing::info!(run = %run.id, phase = ?outcome.phase, exit_code = ?outcome.exit_code, "verification finished");
                let _ = tokio::fs::remove_dir_all(&dir).await;
                let _ = slot.set(outcome);
            });
            Ok(None)
        }
        .boxed()
    }

    fn forget<'a>(&'a self, run: &'a Run) -> BoxFuture<'a, Result<(), SandboxError>> {
        async move {
            self.runs().remove(&run.id);
            self.forgotten
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(run.id.clone());
            Ok(())
        }
        .boxed()
    }
}

fn error(message: impl Into<String>, started: Instant, commit: Option<String>) -> Outcome {
    Outcome::error(message, started.elapsed(), commit)
}

/// Runs `git` with `args`; its standard output, or why it failed.
async fn git(cwd: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("git could not start: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The program and arguments that run `command` under the sandbox's limits.
pub fn sandboxed(command: &str, memory_mib: i32, allow_network: bool) -> Vec<String> {
    let bytes = u64::try_from(memory_mib.max(16)).unwrap_or(16) * 1024 * 1024;
    let mut argv = vec![
        "prlimit".to_owned(),
        format!("--as={bytes}"),
        "--".to_owned(),
    ];
    if !allow_network {
        argv.extend(["unshare", "--map-root-user", "--net", "--"].map(str::to_owned));
    }
    argv.extend(["sh", "-c", command].map(str::to_owned));
    argv
}

async fn execute(run: &Run, dir: &Path) -> Outcome {
    let started = Instant::now();
    if run.repository.secret_ref.is_some() {
        return error(
            "not supported yet: the local sandbox checks out only repositories that need no credentials",
            started,
            None,
        );
    }
    let _ = tokio::fs::remove_dir_all(dir).await;
    let (src, home, tmp) = (dir.join("src"), dir.join("home"), dir.join("tmp"));
    for d in [&home, &tmp] {
        if let Err(e) = tokio::fs::create_dir_all(d).await {
            return error(format!("creating {}: {e}", d.display()), started, None);
        }
    }
    let src_arg = src.display().to_string();
    let clone = [
        "clone",
        "--quiet",
        "--branch",
        run.repository.branch.as_str(),
        "--",
        run.repository.url.as_str(),
        src_arg.as_str(),
    ];
    if let Err(e) = git(dir, &clone).await {
        return error(format!("the checkout failed: {e}"), started, None);
    }
    if let Some(commit) = &run.commit
        && let Err(e) = git(&src, &["checkout", "--quiet", "--detach", commit]).await
    {
        return error(format!("the checkout failed: {e}"), started, None);
    }
    let head = git(&src, &["rev-parse", "HEAD"]).await.ok();
    if !run.spec.allow_network
        && let Err(e) = probe_network_namespace().await
    {
        return error(
            format!("the sandbox cannot deny the network here, so it does not run: {e}"),
            started,
            head,
        );
    }
    let log = dir.join("output.log");
    let (stdout, stderr) = match std::fs::File::create(&log).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(files) => files,
        Err(e) => return error(format!("creating {}: {e}", log.display()), started, head),
    };
    let argv = sandboxed(&run.command, run.spec.memory_mib, run.spec.allow_network);
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .current_dir(&src)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        )
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("LANG", "C.UTF-8")
        .env("CI", "true")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return error(format!("starting the command: {e}"), started, head),
    };
    let timeout = Duration::from_secs(u64::try_from(run.spec.timeout_seconds.max(1)).unwrap_or(1));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let (phase, exit_code) = match waited {
        Ok(Ok(status)) => match status.code() {
            Some(0) => (VerificationPhase::Passed, Some(0)),
            code => (VerificationPhase::Failed, code),
        },
        Ok(Err(e)) => return error(format!("waiting for the command: {e}"), started, head),
        Err(_) => {
            kill_group(child.id());
            let _ = child.kill().await;
            (VerificationPhase::TimedOut, None)
        }
    };
    let output = read_tail(&log).await;
    Outcome {
        phase,
        exit_code,
        duration: started.elapsed(),
        output,
        commit: head,
        message: None,
    }
}

/// Kills the process group `pid` leads (the command and everything it started).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether a network namespace can be made here; why not otherwise.
async fn probe_network_namespace() -> Result<(), String> {
    let out = Command::new("unshare")
        .args(["--map-root-user", "--net", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("unshare could not start: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

async fn read_tail(log: &Path) -> String {
    let bytes = tokio::fs::read(log).await.unwrap_or_default();
    let start = bytes.len().saturating_sub(OUTPUT_MAX_CHARS * 4);
    tail(&String::from_utf8_lossy(&bytes[start..]), OUTPUT_MAX_CHARS)
}
