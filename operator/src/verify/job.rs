//! The cluster sandbox: a verification run is a Kubernetes Job, owned by the Task (or
//! the Project) it verifies.
//!
//! - The pod passes Pod Security `restricted`: non-root, no privilege escalation, every
//!   capability dropped, the runtime's seccomp profile, a read-only root filesystem, no
//!   service-account token, no credentials of any kind, no Service links.
//! - An init container (the agent image, which has git) clones the repository into an
//!   `emptyDir` and checks out the commit; the command then runs in `spec.verify.image`.
//! - Unless the Project allows the network, a NetworkPolicy selecting the run's pod
//!   denies all ingress and all egress but DNS and the repository's port, which the
//!   checkout needs. (The command could still reach that port on other hosts: a tighter
//!   policy needs the checkout served from inside the cluster.)
//! - The verify container writes its result to its termination message: the commit on
//!   the first line, then the output's last lines; the exit code is its container state.
//!   [`job_outcome`] reads a finished Job and its pod into the same [`Outcome`] as the
//!   local sandbox.

use std::{collections::BTreeMap, time::Duration};

use aios_crds::{VerificationPhase, names::labels};
use futures::{FutureExt, future::BoxFuture};
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Container, EnvVar, Pod, PodSpec, PodTemplateSpec, ResourceRequirements, VolumeMount,
        },
        networking::v1::{
            NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPort, NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams, PostParams},
};

use super::{Outcome, Run, Sandbox, SandboxError};
use crate::pods::{restricted_container, restricted_pod, scratch_volume};

/// The most the checkout and the command may write to the work volume.
const WORK_LIMIT: &str = "2Gi";
/// Time allowed for the checkout, on top of the command's timeout.
const CHECKOUT_SECONDS: i64 = 120;
/// How long a finished Job is kept for people to read.
const KEEP_FINISHED_SECONDS: i32 = 3600;
/// Where the repository is checked out in the pod.
const WORK: &str = "/work";
/// The field manager of what this sandbox applies.
const MANAGER: &str = "aios-operator/verify";

/// The checkout: clone the branch, check out the commit, note the commit.
const CHECKOUT_SCRIPT: &str = r#"set -eu
mkdir -p /work/home
git clone --quiet --branch "$AIOS_BRANCH" -- "$AIOS_REPOSITORY" /work/src
cd /work/src
if [ -n "$AIOS_COMMIT" ]; then git checkout --quiet --detach "$AIOS_COMMIT"; fi
git rev-parse HEAD > /work/commit
"#;

/// The run: the command's output to the log and a file; then the commit and the
/// output's last lines to the termination message; the command's exit code as ours.
const VERIFY_SCRIPT: &str = r#"cd /work/src
{ sh -c "$AIOS_VERIFY_COMMAND" 2>&1; echo $? > /work/code; } | tee /work/output
code=$(cat /work/code)
{ cat /work/commit; tail -c 3500 /work/output; } > /dev/termination-log
exit "$code"
"#;

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn run_labels(run: &Run) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::VERIFY_RUN.to_owned(), run.id.clone()),
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::COMPONENT.to_owned(), "verification".to_owned()),
    ])
}

fn meta(run: &Run) -> ObjectMeta {
    ObjectMeta {
        name: Some(run.id.clone()),
        namespace: Some(run.namespace.clone()),
        labels: Some(run_labels(run)),
        owner_references: Some(vec![run.owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn checkout_container(
    run: &Run,
    git_image: &str,
    work: &VolumeMount,
    home: &[EnvVar],
) -> Container {
    Container {
        name: "checkout".to_owned(),
        image: Some(git_image.to_owned()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            CHECKOUT_SCRIPT.to_owned(),
        ]),
        env: Some(
            [
                env("AIOS_REPOSITORY", &run.repository.url),
                env("AIOS_BRANCH", &run.repository.branch),
                env("AIOS_COMMIT", run.commit.as_deref().unwrap_or_default()),
                env("GIT_TERMINAL_PROMPT", "0"),
            ]
            .into_iter()
            .chain(home.iter().cloned())
            .collect(),
        ),
        volume_mounts: Some(vec![work.clone()]),
        security_context: Some(restricted_container()),
        resources: Some(ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("memory".to_owned(), Quantity("256Mi".to_owned())),
                ("cpu".to_owned(), Quantity("500m".to_owned())),
            ])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

fn verify_container(run: &Run, image: String, work: VolumeMount, home: &[EnvVar]) -> Container {
    let memory = Quantity(format!("{}Mi", run.spec.memory_mib));
    let cpu = Quantity(format!("{}m", run.spec.cpu_millis));
    Container {
        name: "verify".to_owned(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            VERIFY_SCRIPT.to_owned(),
        ]),
        env: Some(
            std::iter::once(env("AIOS_VERIFY_COMMAND", &run.command))
                .chain([env("CI", "true")])
                .chain(home.iter().cloned())
                .collect(),
        ),
        volume_mounts: Some(vec![work]),
        security_context: Some(restricted_container()),
        resources: Some(ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("memory".to_owned(), memory.clone()),
                ("cpu".to_owned(), cpu),
            ])),
            requests: Some(BTreeMap::from([
                ("memory".to_owned(), memory),
                ("cpu".to_owned(), Quantity("100m".to_owned())),
            ])),
            ..ResourceRequirements::default()
        }),
        termination_message_policy: Some("File".to_owned()),
        ..Container::default()
    }
}

/// The Job of `run`, its checkout done by `git_image`. `None` when the run cannot be a
/// Job (the Project names no image), with why.
pub fn verify_job(run: &Run, git_image: &str) -> Result<Job, String> {
    let Some(image) = run.spec.image.clone() else {
        return Err(
            "spec.verify.image is required to verify on a cluster: the command runs in it"
                .to_owned(),
        );
    };
    let work = VolumeMount {
        name: "work".to_owned(),
        mount_path: WORK.to_owned(),
        ..VolumeMount::default()
    };
    let home = [env("HOME", "/work/home"), env("TMPDIR", "/work")];
    let checkout = checkout_container(run, git_image, &work, &home);
    let verify = verify_container(run, image, work, &home);
    let pod = PodSpec {
        restart_policy: Some("Never".to_owned()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod()),
        init_containers: Some(vec![checkout]),
        containers: vec![verify],
        volumes: Some(vec![scratch_volume("work", WORK_LIMIT)]),
        ..PodSpec::default()
    };
    Ok(Job {
        metadata: meta(run),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(i64::from(run.spec.timeout_seconds) + CHECKOUT_SECONDS),
            ttl_seconds_after_finished: Some(KEEP_FINISHED_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(run_labels(run)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    })
}

/// The TCP port of a clone URL (`None` for `file://`).
fn repository_port(url: &str) -> Option<i32> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ssh", url));
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        "git" => 9418,
        "ssh" => 22,
        _ => return None,
    };
    let host = rest.split('/').next().unwrap_or_default();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let explicit = host
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<i32>().ok());
    Some(explicit.unwrap_or(default))
}

/// The NetworkPolicy of `run`'s pod when the Project does not allow the network: no
/// ingress; egress only to DNS and the repository's port.
pub fn verify_network_policy(run: &Run) -> Option<NetworkPolicy> {
    if run.spec.allow_network {
        return None;
    }
    let port = |protocol: &str, port: i32| NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(port)),
        ..NetworkPolicyPort::default()
    };
    let mut ports = vec![port("UDP", 53), port("TCP", 53)];
    ports.extend(repository_port(&run.repository.url).map(|p| port("TCP", p)));
    Some(NetworkPolicy {
        metadata: meta(run),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    labels::VERIFY_RUN.to_owned(),
                    run.id.clone(),
                )])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(Vec::new()),
            egress: Some(vec![NetworkPolicyEgressRule {
                ports: Some(ports),
                to: None,
            }]),
        }),
    })
}

fn condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// What a finished Job (and its pod, when it is still there) found; `None` while it
/// runs.
pub fn job_outcome(job: &Job, pod: Option<&Pod>) -> Option<Outcome> {
    let complete = condition(job, "Complete");
    let failed = condition(job, "Failed");
    let finished = complete.or(failed)?;
    let status = job.status.as_ref()?;
    let start = status.start_time.as_ref().map(|t| t.0);
    let end = status
        .completion_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| finished.last_transition_time.as_ref().map(|t| t.0));
    let duration = match (start, end) {
        (Some(s), Some(e)) => Duration::try_from(e.duration_since(s)).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let terminated = |name: &str, init: bool| {
        let statuses = pod?.status.as_ref()?;
        let list = if init {
            statuses.init_container_statuses.as_ref()
        } else {
            statuses.container_statuses.as_ref()
        }?;
        list.iter()
            .find(|c| c.name == name)?
            .state
            .as_ref()?
            .terminated
            .clone()
    };
    let verify = terminated("verify", false);
    let (commit, output) = verify.as_ref().and_then(|t| t.message.as_deref()).map_or(
        (None, String::new()),
        |message| {
            let (first, rest) = message.split_once('\n').unwrap_or((message, ""));
            (
                Some(first.trim().to_owned()).filter(|c| !c.is_empty()),
                rest.to_owned(),
            )
        },
    );
    let exit_code = verify.as_ref().map(|t| t.exit_code);
    let outcome = |phase, message: Option<String>| Outcome {
        phase,
        exit_code,
        duration,
        output: output.clone(),
        commit: commit.clone(),
        message,
    };
    if complete.is_some() {
        return Some(outcome(VerificationPhase::Passed, None));
    }
    let reason = failed.and_then(|c| c.reason.as_deref()).unwrap_or_default();
    if reason == "DeadlineExceeded" {
        return Some(outcome(VerificationPhase::TimedOut, None));
    }
    if verify.is_some() {
        return Some(outcome(VerificationPhase::Failed, None));
    }
    let checkout = terminated("checkout", true);
    let why = match checkout {
        Some(t) if t.exit_code != 0 => format!(
            "the checkout failed (exit {}): {}",
            t.exit_code,
            t.message.unwrap_or_default().trim()
        ),
        _ => format!(
            "the Job failed before the command ran ({reason}): {}",
            failed.and_then(|c| c.message.clone()).unwrap_or_default()
        ),
    };
    Some(outcome(VerificationPhase::Error, Some(why)))
}

/// Verification runs as Jobs in the runs' namespaces.
#[derive(Clone)]
pub struct JobSandbox {
    client: Client,
    git_image: String,
}

impl std::fmt::Debug for JobSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSandbox")
            .field("git_image", &self.git_image)
            .finish_non_exhaustive()
    }
}

impl JobSandbox {
    /// A sandbox creating Jobs through `client`, checking out with `git_image`.
    pub fn new(client: Client, git_image: String) -> Self {
        Self { client, git_image }
    }

    async fn poll_job(&self, run: &Run) -> Result<Option<Outcome>, SandboxError> {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &run.namespace);
        let Some(job) = jobs.get_opt(&run.id).await? else {
            if run.repository.secret_ref.is_some() {
                return Ok(Some(Outcome::error(
                    "not supported yet: verifying a repository that needs credentials (the checkout has none)",
                    Duration::ZERO,
                    None,
                )));
            }
            let job = match verify_job(run, &self.git_image) {
                Ok(job) => job,
                Err(why) => return Ok(Some(Outcome::error(why, Duration::ZERO, None))),
            };
            if let Some(policy) = verify_network_policy(run) {
                let policies: Api<NetworkPolicy> =
                    Api::namespaced(self.client.clone(), &run.namespace);
                policies
                    .patch(
                        &run.id,
                        &PatchParams::apply(MANAGER).force(),
                        &Patch::Apply(&policy),
                    )
                    .await?;
            }
            match jobs.create(&PostParams::default(), &job).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(None);
        };
        if condition(&job, "Complete").is_none() && condition(&job, "Failed").is_none() {
            return Ok(None);
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &run.namespace);
        let listed = pods
            .list(&ListParams::default().labels(&format!("{}={}", labels::VERIFY_RUN, run.id)))
            .await?;
        Ok(job_outcome(&job, listed.items.first()))
    }
}

impl Sandbox for JobSandbox {
    fn poll<'a>(&'a self, run: &'a Run) -> BoxFuture<'a, Result<Option<Outcome>, SandboxError>> {
        self.poll_job(run).boxed()
    }

    fn forget<'a>(&'a self, _run: &'a Run) -> BoxFuture<'a, Result<(), SandboxError>> {
        // Nothing to drop: the finished Job stays for people to read until its TTL, and
        // it and its NetworkPolicy go with their owner (the operator deletes nothing).
        async { Ok(()) }.boxed()
    }
}
