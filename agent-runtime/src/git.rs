//! Delivering work into the Project's repository with the `git` command: a mirror per
//! remote in the work directory (fetched before each attempt), a throw-away work tree
//! per attempt sharing the mirror's objects, one commit per attempt carrying an
//! `AIOS-Attempt` trailer, and a push that, when another agent pushed first, rebases
//! the commit onto the new tip and pushes again until it lands, a real conflict
//! appears or the push deadline passes: losing a race never costs the Task an attempt.
//! The trailer makes delivery idempotent: an attempt whose commit is already on the
//! branch is not done again.

use std::{
    collections::HashMap,
    path::{Component, Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aios_crds::{
    project::Repository,
    text::{self, Shape},
};
use base64::Engine;
use prometheus::IntCounter;
use tokio::{process::Command, sync::Mutex, time::Instant};

use crate::{context::RepoFile, output::FileOutput, persona::Persona};

/// The commit trailer naming the attempt a commit delivers.
pub const ATTEMPT_TRAILER: &str = "AIOS-Attempt";
/// The commit trailer naming the Task.
pub const TASK_TRAILER: &str = "AIOS-Task";
/// The variable a repository token is read from when the Project names no Secret.
pub const TOKEN_VARIABLE: &str = "AIOS_GIT_TOKEN";

/// Why a path from the model is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsafe {
    /// Empty, or with a control or bidirectional character (which would make the name
    /// `git log` shows differ from the stored one).
    Malformed,
    /// Absolute.
    Absolute,
    /// Has a `..` component.
    ParentDirectory,
    /// Inside `.git`.
    GitDirectory,
    /// Goes through a symbolic link that leads out of the work tree, or is one.
    Symlink,
    /// Larger than the limit.
    TooLarge,
    /// By the Project's path rules: a protected path (what it is), or outside its
    /// allow-list.
    Policy(crate::paths::Refusal),
}

impl Unsafe {
    fn describe(self) -> String {
        use crate::paths::Refusal;
        let fixed = match self {
            Self::Policy(Refusal::Protected(what)) => {
                return format!(
                    "is {what}, protected: the Project's spec.policy.paths.allowProtected can allow it"
                );
            }
            Self::Policy(Refusal::NotAllowed) => {
                "is outside the Project's spec.policy.paths.allowed"
            }
            Self::Malformed => "is empty or has control or bidirectional characters",
            Self::Absolute => "is absolute",
            Self::ParentDirectory => "climbs out with '..'",
            Self::GitDirectory => "is inside .git",
            Self::Symlink => "goes through a symbolic link",
            Self::TooLarge => "is larger than the file size limit",
        };
        fixed.to_owned()
    }
}

/// Why delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The model named a path the agent will not write.
    #[error("refused to write {path:?}: the path {}", .why.describe())]
    UnsafePath {
        /// The path as the model gave it.
        path: String,
        /// Why.
        why: Unsafe,
    },
    /// Another commit changed the same lines; rebasing could not resolve it.
    #[error("the delivery conflicts with commits already on the branch, in: {}", .paths.join(", "))]
    Conflict {
        /// The conflicting paths.
        paths: Vec<String>,
    },
    /// The branch kept moving: every push until the push deadline was rejected.
    #[error(
        "the push was rejected {rejected} times in {:.0} s: the branch kept moving until the push deadline",
        .waited.as_secs_f64()
    )]
    PushDeadline {
        /// Pushes rejected.
        rejected: u32,
        /// How long the pushes went on.
        waited: Duration,
    },
    /// A git command failed.
    #[error("git {action} failed: {detail}")]
    Git {
        /// What was being done.
        action: String,
        /// git's message.
        detail: String,
    },
    /// Reading or writing the work tree failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl DeliveryError {
    /// The Task's failure reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnsafePath { .. } => "UnsafePath",
            Self::Conflict { .. } => "DeliveryConflict",
            Self::PushDeadline { .. } | Self::Git { .. } | Self::Io { .. } => "DeliveryFailed",
        }
    }

    /// Whether another attempt may succeed: an unsafe path is refused for good.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::UnsafePath { .. })
    }
}

fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeliveryError {
    let action = action.into();
    move |source| DeliveryError::Io { action, source }
}

/// Checks a path from the model against the work tree `root`: no control or
/// bidirectional characters, relative, no `..`, nothing under `.git`, no symbolic link
/// on the way, content within `max_bytes`.
/// Returns the path to write, below `root`.
pub fn checked_path(
    root: &Path,
    path: &str,
    size: usize,
    max_bytes: u64,
) -> Result<PathBuf, Unsafe> {
    if path.trim().is_empty() || path.contains(|c: char| c.is_control() || text::is_bidi_control(c))
    {
        return Err(Unsafe::Malformed);
    }
    if u64::try_from(size).unwrap_or(u64::MAX) > max_bytes {
        return Err(Unsafe::TooLarge);
    }
    let relative = Path::new(path);
    if relative.is_absolute() || path.starts_with('\\') {
        return Err(Unsafe::Absolute);
    }
    let mut clean = PathBuf::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => {
                if part.eq_ignore_ascii_case(".git") {
                    return Err(Unsafe::GitDirectory);
                }
                clean.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(Unsafe::ParentDirectory),
            Component::RootDir | Component::Prefix(_) => return Err(Unsafe::Absolute),
        }
    }
    if clean.as_os_str().is_empty() {
        return Err(Unsafe::Malformed);
    }
    // Every existing step of the way must be a real directory or file, not a link:
    // a link inside the tree could be changed by a later commit to lead anywhere.
    let mut at = root.to_path_buf();
    for part in clean.components() {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(Unsafe::Symlink),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(root.join(clean))
}

/// What a delivery left on the branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The commit.
    pub commit: String,
    /// The files it wrote.
    pub files: Vec<String>,
    /// The commit message's body (the result summary).
    pub summary: String,
}

/// Delivery settings and the per-remote mirror locks.
#[derive(Debug)]
pub struct Git {
    root: PathBuf,
    max_file_bytes: u64,
    push_deadline: Duration,
    push_rejections: IntCounter,
    mirrors: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// One push at a time per remote branch from this process: tasks in one agent
    /// never race each other; other agents are handled by rebase and retry.
    pushes: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// The mirror directory name of a remote: readable and unique.
fn mirror_name(url: &str) -> String {
    let readable: String = url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let tail: String = readable
        .chars()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    // FNV-1a: stable across builds, unlike the standard hasher.
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{tail}-{hash:016x}.git")
}

impl Git {
    /// Mirrors and work trees live under `root`; files over `max_file_bytes` are
    /// refused; a push that loses a race is rebased and tried again until it lands, for
    /// up to `push_deadline`, counting each rejection in `push_rejections`.
    pub fn new(
        root: PathBuf,
        max_file_bytes: u64,
        push_deadline: Duration,
        push_rejections: IntCounter,
    ) -> Self {
        Self {
            root,
            max_file_bytes,
            push_deadline,
            push_rejections,
            mirrors: Mutex::new(HashMap::new()),
            pushes: Mutex::new(HashMap::new()),
        }
    }

    /// Fetches the remote into its mirror and makes a work tree on the branch (created
    /// from the remote's default branch, or empty, when it does not exist yet).
    pub async fn open(
        &self,
        repository: &Repository,
        token: Option<String>,
    ) -> Result<Workspace, DeliveryError> {
        let auth = auth_env(&repository.url, token.as_deref());
        let mirror = self.root.join("mirrors").join(mirror_name(&repository.url));
        let lock = self
            .mirrors
            .lock()
            .await
            .entry(repository.url.clone())
            .or_default()
            .clone();
        {
            let _guard = lock.lock().await;
            tokio::fs::create_dir_all(self.root.join("mirrors"))
                .await
                .map_err(io("creating the mirror directory"))?;
            if tokio::fs::try_exists(mirror.join("HEAD"))
                .await
                .unwrap_or(false)
            {
                run_git(
                    &mirror,
                    &["fetch", "--prune", "--quiet", "origin"],
                    &auth,
                    "fetch",
                )
                .await?;
            } else {
                let partial = mirror.with_extension("partial");
                let _ = tokio::fs::remove_dir_all(&partial).await;
                run_git(
                    &self.root,
                    &[
                        "clone",
                        "--mirror",
                        "--quiet",
                        "--",
                        &repository.url,
                        path_str(&partial)?,
                    ],
                    &auth,
                    "clone",
                )
                .await?;
                tokio::fs::rename(&partial, &mirror)
                    .await
                    .map_err(io("keeping the mirror"))?;
            }
        }
        self.work_tree(&mirror, repository, auth).await
    }

    /// A throw-away work tree sharing the mirror's objects, on the branch.
    async fn work_tree(
        &self,
        mirror: &Path,
        repository: &Repository,
        auth: Vec<(String, String)>,
    ) -> Result<Workspace, DeliveryError> {
        let work = self.root.join("work");
        tokio::fs::create_dir_all(&work)
            .await
            .map_err(io("creating the work directory"))?;
        let dir = tempfile::Builder::new()
            .prefix("attempt-")
            .tempdir_in(&work)
            .map_err(io("creating a work tree"))?;
        let tree = dir.path();
        run_git(
            tree,
            &[
                "clone",
                "--shared",
                "--no-checkout",
                "--quiet",
                path_str(mirror)?,
                ".",
            ],
            &auth,
            "clone from the mirror",
        )
        .await?;
        run_git(
            tree,
            &["remote", "set-url", "origin", &repository.url],
            &auth,
            "remote set-url",
        )
        .await?;
        let branch = &repository.branch;
        let remote_branch = format!("refs/remotes/origin/{branch}");
        if has_ref(tree, &remote_branch).await {
            run_git(
                tree,
                &["checkout", "--quiet", "-B", branch, &remote_branch],
                &auth,
                "checkout",
            )
            .await?;
        } else if has_ref(tree, "refs/remotes/origin/HEAD").await {
            run_git(
                tree,
                &[
                    "checkout",
                    "--quiet",
                    "-B",
                    branch,
                    "refs/remotes/origin/HEAD",
                ],
                &auth,
                "checkout",
            )
            .await?;
        } else {
            run_git(
                tree,
                &["checkout", "--quiet", "--orphan", branch],
                &auth,
                "checkout",
            )
            .await?;
        }
        Ok(Workspace {
            dir,
            branch: branch.clone(),
            auth,
            max_file_bytes: self.max_file_bytes,
            push_deadline: self.push_deadline,
            push_rejections: self.push_rejections.clone(),
            push_lock: self
                .pushes
                .lock()
                .await
                .entry(format!("{} {}", repository.url, repository.branch))
                .or_default()
                .clone(),
        })
    }
}

/// One attempt's work tree; removed when dropped.
#[derive(Debug)]
pub struct Workspace {
    dir: tempfile::TempDir,
    branch: String,
    auth: Vec<(String, String)>,
    max_file_bytes: u64,
    push_deadline: Duration,
    push_rejections: IntCounter,
    push_lock: Arc<Mutex<()>>,
}

impl Workspace {
    /// The work tree.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The commit that already delivered `attempt` to the branch, if one did.
    pub async fn find_delivered(&self, attempt: &str) -> Result<Option<Delivered>, DeliveryError> {
        if !has_ref(self.path(), "HEAD").await {
            return Ok(None);
        }
        let pattern = format!("^{ATTEMPT_TRAILER}: {attempt}$");
        let commit = run_git(
            self.path(),
            &["log", "--format=%H", "-1", "--grep", &pattern, "HEAD"],
            &self.auth,
            "log",
        )
        .await?;
        let commit = commit.trim();
        if commit.is_empty() {
            return Ok(None);
        }
        let files = run_git(
            self.path(),
            &["show", "--name-only", "--format=", commit],
            &self.auth,
            "show",
        )
        .await?;
        let body = run_git(
            self.path(),
            &["show", "-s", "--format=%b", commit],
            &self.auth,
            "show",
        )
        .await?;
        Ok(Some(Delivered {
            commit: commit.to_owned(),
            files: files
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            summary: summary_of(&body),
        }))
    }

    /// A file of the work tree as text, when it exists, is a regular file inside the
    /// tree and is at most `limit` bytes.
    pub fn read_file(&self, path: &str, limit: u64) -> Option<String> {
        let full = checked_path(self.path(), path, 0, limit).ok()?;
        let meta = std::fs::symlink_metadata(&full).ok()?;
        if !meta.is_file() || meta.len() > limit {
            return None;
        }
        std::fs::read_to_string(full).ok()
    }

    /// Whether `path` names something in the work tree (a file, a directory or a link);
    /// false for a path delivery would refuse anyway.
    pub fn exists(&self, path: &str) -> bool {
        checked_path(self.path(), path, 0, 0)
            .is_ok_and(|full| std::fs::symlink_metadata(full).is_ok())
    }

    /// The regular files of the work tree with their sizes, by `/`-separated path
    /// relative to the root, at most `limit` of them: nothing under a `.git`, no
    /// symbolic link (none is followed) and no name that is not UTF-8.
    pub fn list_files(&self, limit: usize) -> Vec<RepoFile> {
        let mut files = Vec::new();
        let mut directories = vec![(self.path().to_path_buf(), String::new())];
        while let Some((directory, prefix)) = directories.pop() {
            let Ok(entries) = std::fs::read_dir(&directory) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                if name.eq_ignore_ascii_case(".git") {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                let path = format!("{prefix}{name}");
                if kind.is_dir() {
                    directories.push((entry.path(), format!("{path}/")));
                } else if kind.is_file() {
                    if files.len() == limit {
                        return files;
                    }
                    let size = entry.metadata().map_or(0, |m| m.len());
                    files.push(RepoFile { path, size });
                }
            }
        }
        files
    }

    /// Where `file` goes in the work tree, if its path and size are safe.
    fn check(&self, file: &FileOutput) -> Result<PathBuf, DeliveryError> {
        checked_path(
            self.path(),
            &file.path,
            file.content.len(),
            self.max_file_bytes,
        )
        .map_err(|why| DeliveryError::UnsafePath {
            path: file.path.clone(),
            why,
        })
    }

    /// Writes `files`, commits them as `author` with `title` and `summary` and the
    /// attempt's trailers, and pushes; a rejected push is rebased and retried.
    pub async fn deliver(
        &self,
        files: &[FileOutput],
        author: &Persona,
        title: &str,
        summary: &str,
        task: &str,
        attempt: &str,
    ) -> Result<Delivered, DeliveryError> {
        let mut paths = Vec::with_capacity(files.len());
        // Check every path before writing any, so a refusal leaves nothing behind.
        for file in files {
            let full = self.check(file)?;
            paths.push(full);
        }
        let mut written = Vec::with_capacity(files.len());
        for (file, full) in files.iter().zip(&paths) {
            if let Some(parent) = full.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(io(format!("creating the directory of {}", file.path)))?;
            }
            // Checked again after the directories exist: none of them may be a link.
            self.check(file)?;
            tokio::fs::write(full, &file.content)
                .await
                .map_err(io(format!("writing {}", file.path)))?;
            let relative = full.strip_prefix(self.path()).unwrap_or(full);
            written.push(path_str(relative)?.to_owned());
        }
        let mut add = vec!["add", "--"];
        add.extend(written.iter().map(String::as_str));
        run_git(self.path(), &add, &self.auth, "add").await?;
        // The title, the summary and the persona's name come from manifests and the
        // model: nothing in them may reorder or hide what `git log` shows, and the
        // title stays the subject line (no paragraph of it can pose as a trailer).
        let subject = text::sanitize(title, Shape::Line);
        let summary = text::sanitize(summary, Shape::Lines);
        let name = text::sanitize(&author.name, Shape::Line);
        let message = format!(
            "{subject}\n\n{summary}\n\n{TASK_TRAILER}: {task}\n{ATTEMPT_TRAILER}: {attempt}\n"
        );
        let mut identity = self.auth.clone();
        for (variable, value) in [
            ("GIT_AUTHOR_NAME", name.clone()),
            ("GIT_AUTHOR_EMAIL", author.email()),
            ("GIT_COMMITTER_NAME", name),
            ("GIT_COMMITTER_EMAIL", author.email()),
        ] {
            identity.push((variable.to_owned(), value));
        }
        run_git(
            self.path(),
            &[
                "commit",
                "--quiet",
                "--allow-empty",
                "--no-verify",
                "-m",
                &message,
            ],
            &identity,
            "commit",
        )
        .await?;
        self.push(&identity).await?;
        let commit = run_git(self.path(), &["rev-parse", "HEAD"], &self.auth, "rev-parse").await?;
        Ok(Delivered {
            commit: commit.trim().to_owned(),
            files: written,
            summary,
        })
    }

    /// Pushes the attempt's commit. A push rejected because the branch moved waits a
    /// little, fetches, rebases the commit onto the new tip and pushes again, until it
    /// lands, the rebase meets a real conflict, or the next try would start past the
    /// push deadline. The wait comes before the fetch, so the rebased commit goes out
    /// while the tip it was rebased onto is most likely still the branch's tip.
    async fn push(&self, identity: &[(String, String)]) -> Result<(), DeliveryError> {
        let _one_at_a_time = self.push_lock.lock().await;
        let started = Instant::now();
        let target = format!("HEAD:refs/heads/{}", self.branch);
        let mut rejected = 0_u32;
        loop {
            match run_git(
                self.path(),
                &["push", "--quiet", "origin", &target],
                &self.auth,
                "push",
            )
            .await
            {
                Ok(_) => return Ok(()),
                Err(DeliveryError::Git { detail, .. }) if is_rejection(&detail) => {
                    rejected += 1;
                    self.push_rejections.inc();
                    let wait = push_backoff(rejected, rand::random::<f64>());
                    let waited = started.elapsed();
                    if waited + wait >= self.push_deadline {
                        return Err(DeliveryError::PushDeadline { rejected, waited });
                    }
                    tracing::info!(rejected, "the branch moved; rebasing onto it");
                    tokio::time::sleep(wait).await;
                    self.rebase_onto_remote(identity).await?;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Fetches the branch and replays the attempt's commit onto its tip. The commit is
    /// kept even when the branch already has the same change (another task wrote the
    /// same content): it carries this attempt's trailers, and the attempt must report
    /// a commit of its own. A conflict aborts the rebase and names the paths.
    async fn rebase_onto_remote(&self, identity: &[(String, String)]) -> Result<(), DeliveryError> {
        let remote_branch = format!("+refs/heads/{0}:refs/remotes/origin/{0}", self.branch);
        run_git(
            self.path(),
            &["fetch", "--quiet", "origin", &remote_branch],
            &self.auth,
            "fetch",
        )
        .await?;
        let upstream = format!("refs/remotes/origin/{}", self.branch);
        let Err(err) = run_git(
            self.path(),
            &[
                "rebase",
                "--quiet",
                "--reapply-cherry-picks",
                "--empty=keep",
                &upstream,
            ],
            identity,
            "rebase",
        )
        .await
        else {
            return Ok(());
        };
        let conflicted = run_git(
            self.path(),
            &["diff", "--name-only", "--diff-filter=U"],
            &self.auth,
            "diff",
        )
        .await
        .unwrap_or_default();
        let _ = run_git(
            self.path(),
            &["rebase", "--abort"],
            &self.auth,
            "rebase --abort",
        )
        .await;
        let paths: Vec<String> = conflicted
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if paths.is_empty() {
            return Err(err);
        }
        Err(DeliveryError::Conflict { paths })
    }
}

/// The wait before rebasing after the `rejected`-th rejected push: a random share
/// (`jitter`, in `[0, 1]`) of a ceiling that doubles from [`PUSH_BACKOFF_FIRST`] up to
/// [`PUSH_BACKOFF_MAX`], so agents racing on one branch spread out without any of
/// them waiting long.
pub fn push_backoff(rejected: u32, jitter: f64) -> Duration {
    let doublings = rejected.saturating_sub(1).min(16);
    let ceiling = PUSH_BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(PUSH_BACKOFF_MAX);
    ceiling.mul_f64(jitter.clamp(0.0, 1.0))
}

/// The ceiling of the wait after the first rejected push.
pub const PUSH_BACKOFF_FIRST: Duration = Duration::from_millis(20);
/// The largest wait between rejected pushes.
pub const PUSH_BACKOFF_MAX: Duration = Duration::from_secs(1);

fn is_rejection(detail: &str) -> bool {
    [
        "non-fast-forward",
        "fetch first",
        "[rejected]",
        "failed to update ref",
        "cannot lock ref",
    ]
    .iter()
    .any(|needle| detail.contains(needle))
}

/// The summary part of a commit body: everything before the trailers.
fn summary_of(body: &str) -> String {
    body.lines()
        .filter(|l| {
            !l.starts_with(&format!("{ATTEMPT_TRAILER}:"))
                && !l.starts_with(&format!("{TASK_TRAILER}:"))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// Environment for git: never prompt, and for `https://` with a token, send it as an
/// HTTP header through git's environment configuration, so it appears in no URL,
/// command line or file.
fn auth_env(url: &str, token: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned())];
    if let Some(token) = token
        && (url.starts_with("https://") || url.starts_with("http://"))
    {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
        env.push(("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()));
        env.push(("GIT_CONFIG_KEY_0".to_owned(), "http.extraHeader".to_owned()));
        env.push((
            "GIT_CONFIG_VALUE_0".to_owned(),
            format!("Authorization: Basic {basic}"),
        ));
    }
    env
}

fn path_str(path: &Path) -> Result<&str, DeliveryError> {
    path.to_str().ok_or_else(|| DeliveryError::Io {
        action: format!("using the path {}", path.display()),
        source: std::io::Error::other("the path is not UTF-8"),
    })
}

async fn has_ref(dir: &Path, name: &str) -> bool {
    run_git(
        dir,
        &["rev-parse", "--verify", "--quiet", name],
        &[],
        "rev-parse",
    )
    .await
    .is_ok()
}

/// Runs git in `dir`; stdout on success, stderr in the error.
async fn run_git(
    dir: &Path,
    args: &[&str],
    env: &[(String, String)],
    action: &str,
) -> Result<String, DeliveryError> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(io(format!("running git {action}")))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if detail.is_empty() {
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .clone_into(&mut detail);
    }
    Err(DeliveryError::Git {
        action: action.to_owned(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths_are_refused_by_kind() {
        let root = tempfile::tempdir().unwrap();
        let check = |path: &str| checked_path(root.path(), path, 10, 100);
        assert_eq!(
            check("src/main.rs").unwrap(),
            root.path().join("src/main.rs")
        );
        assert_eq!(check("./a.txt").unwrap(), root.path().join("a.txt"));
        assert_eq!(check("/etc/passwd"), Err(Unsafe::Absolute));
        assert_eq!(check("../outside"), Err(Unsafe::ParentDirectory));
        assert_eq!(check("src/../../outside"), Err(Unsafe::ParentDirectory));
        assert_eq!(check(".git/hooks/pre-commit"), Err(Unsafe::GitDirectory));
        assert_eq!(check("sub/.GIT/config"), Err(Unsafe::GitDirectory));
        assert_eq!(check(""), Err(Unsafe::Malformed));
        assert_eq!(check("."), Err(Unsafe::Malformed));
        assert_eq!(check("a\0b"), Err(Unsafe::Malformed));
        assert_eq!(check("src/\u{1b}[8mhidden.py"), Err(Unsafe::Malformed));
        assert_eq!(check("invoice\u{202E}txt.exe"), Err(Unsafe::Malformed));
        assert_eq!(
            check("docs/日本語.md").unwrap(),
            root.path().join("docs/日本語.md")
        );
        assert_eq!(
            checked_path(root.path(), "big.bin", 101, 100),
            Err(Unsafe::TooLarge)
        );
        std::os::unix::fs::symlink("/tmp", root.path().join("escape")).unwrap();
        assert_eq!(check("escape/x"), Err(Unsafe::Symlink));
        assert_eq!(check("escape"), Err(Unsafe::Symlink));
    }

    #[test]
    fn the_token_travels_in_an_environment_header_only_for_http_remotes() {
        let env = auth_env("https://git.example/repo.git", Some("s3cret"));
        let header = &env
            .iter()
            .find(|(k, _)| k == "GIT_CONFIG_VALUE_0")
            .unwrap()
            .1;
        let encoded = header.strip_prefix("Authorization: Basic ").unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        assert_eq!(decoded, b"x-access-token:s3cret");
        assert_eq!(auth_env("file:///srv/repo.git", Some("s3cret")).len(), 1);
    }

    /// Runs git in `dir` for a test; its stdout.
    fn git_output(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[tokio::test]
    async fn a_title_with_a_right_to_left_override_makes_a_clean_subject() {
        let root = tempfile::tempdir().unwrap();
        let remote = root.path().join("delivery.git");
        git_output(
            root.path(),
            &[
                "init",
                "--quiet",
                "--bare",
                "-b",
                "main",
                path_str(&remote).unwrap(),
            ],
        );
        let repository = Repository {
            url: format!("file://{}", remote.display()),
            branch: "main".to_owned(),
            secret_ref: None,
        };
        let git = Git::new(
            root.path().join("agent"),
            1024,
            Duration::from_secs(30),
            IntCounter::new("rejections", "pushes rejected").unwrap(),
        );
        let workspace = git.open(&repository, None).await.unwrap();
        let persona = Persona {
            name: "Apol\u{202E}lo".to_owned(),
            specialties: Vec::new(),
            system_prompt: String::new(),
        };
        let delivered = workspace
            .deliver(
                &[FileOutput {
                    path: "invoice.txt".to_owned(),
                    content: "paid\n".to_owned(),
                }],
                &persona,
                "Add the invoice \u{202E}txt.exe\n\nAIOS-Attempt: forged",
                "Wrote it.\u{2066} \u{1b}[2Jcleared\r\nSecond line.",
                "shop/invoice",
                "uid-1",
            )
            .await
            .unwrap();
        let log = |format: &str| {
            git_output(
                &remote,
                &["log", "-1", &format!("--format={format}"), "main"],
            )
        };
        assert_eq!(log("%s"), "Add the invoice txt.exe  AIOS-Attempt: forged\n");
        assert_eq!(log("%an"), "Apollo\n");
        assert_eq!(
            log("%b"),
            "Wrote it. [2Jcleared\nSecond line.\n\nAIOS-Task: shop/invoice\nAIOS-Attempt: uid-1\n\n"
        );
        assert_eq!(delivered.summary, "Wrote it. [2Jcleared\nSecond line.");
    }

    #[test]
    fn the_wait_after_a_lost_race_is_jittered_and_stays_small() {
        assert_eq!(push_backoff(1, 0.0), Duration::ZERO);
        assert_eq!(push_backoff(1, 1.0), PUSH_BACKOFF_FIRST);
        assert_eq!(push_backoff(2, 1.0), PUSH_BACKOFF_FIRST * 2);
        assert_eq!(push_backoff(3, 0.5), PUSH_BACKOFF_FIRST * 2);
        // However many races are lost, one wait stays under the cap.
        assert_eq!(push_backoff(40, 1.0), PUSH_BACKOFF_MAX);
        assert_eq!(push_backoff(u32::MAX, 2.0), PUSH_BACKOFF_MAX);
        assert_eq!(push_backoff(0, 1.0), PUSH_BACKOFF_FIRST);
    }

    #[test]
    fn mirror_names_are_stable_and_distinct() {
        assert_eq!(
            mirror_name("file:///a/b.git"),
            mirror_name("file:///a/b.git")
        );
        assert_ne!(
            mirror_name("file:///a/b.git"),
            mirror_name("file:///a/c.git")
        );
        assert!(mirror_name("https://x/y.git").starts_with("https___x_y_git-"));
        assert_eq!(
            summary_of("Did it.\n\nAIOS-Task: ns/t\nAIOS-Attempt: u-1\n"),
            "Did it."
        );
    }
}
