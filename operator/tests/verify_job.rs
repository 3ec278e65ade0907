//! The cluster path of verification, on the local API server (no kubelet): the
//! operator creates the run's Job and NetworkPolicy; the Job's pod passes Pod Security
//! `restricted`; when the pod's status says how the command ended (written here, as a
//! kubelet would), the Job controller finishes the Job and the operator reads the
//! result into the Task, the same result the local sandbox gives.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use std::time::Duration;

use support::{FakeAgents, Harness, Reply, done};

const TIMEOUT: Duration = Duration::from_secs(90);

const PROJECT: &str = "\
apiVersion: aios.dev/v1alpha1
kind: Project
metadata:
  name: checked
spec:
  description: One task, verified
  repository:
    url: https://git.example.com/team/checked.git
  policy:
    maxFixRounds: 1
  verify:
    command: python3 -m pytest -q
    image: ghcr.io/aios-dev/aios-verify-python:0.1.0
    timeoutSeconds: 60
  tasks:
    - name: api
      title: Write the API
      role: backend
";

/// Writes the run pod's status as a kubelet would once its containers ended.
fn finish_pod(h: &Harness, pod: &str, exit_code: i32, message: &str) {
    let terminated = |name: &str, code: i32, message: &str| {
        serde_json::json!({
            "name": name, "ready": false, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"terminated": {"exitCode": code, "message": message,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": "2026-12-03T10:00:00Z", "finishedAt": "2026-12-03T10:00:07Z"}}
        })
    };
    let status = serde_json::json!({"status": {
        "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
        "initContainerStatuses": [terminated("checkout", 0, "")],
        "containerStatuses": [terminated("verify", exit_code, message)],
    }});
    h.kubectl(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

/// The name of a Job of the namespace not in `seen`, once there is one.
async fn job_other_than(h: &Harness, seen: &[&str]) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let jobs = h.kubectl(&["get", "jobs", "-o", "jsonpath={.items[*].metadata.name}"]);
        if let Some(next) = jobs.split_whitespace().find(|j| !seen.contains(j)) {
            return next.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new Job besides {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run_pod(h: &Harness, job: &str) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let pods = h.kubectl(&[
            "get",
            "pods",
            "-l",
            &format!("job-name={job}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        if let Some(pod) = pods.split_whitespace().next() {
            return pod.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the Job controller created no pod for {job}: {}",
            h.kubectl(&["describe", "job", job])
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[allow(clippy::too_many_lines)] // one run, in order: fail, fix, pass, verify the head
async fn a_verification_job_is_restricted_and_its_result_reaches_the_task() {
    let mut h = Harness::new("verify-job");
    h.enforce_restricted();
    h.serve_models().await;
    h.apply_agents(&["backend"]);
    h.start_operator("op-1");
    let _agents = FakeAgents::start(&h, &["backend"], Duration::ZERO, |d| {
        Reply::Succeed(done(d))
    })
    .await;
    h.apply(PROJECT);
    h.wait_for_value("task/checked-api", "{.status.phase}", "Verifying", TIMEOUT)
        .await;

    // The run's Job, owned by the Task, and its NetworkPolicy.
    h.wait_for_value(
        "task/checked-api",
        "{.status.verification.phase}",
        "Running",
        TIMEOUT,
    )
    .await;
    let job = job_other_than(&h, &[]).await;
    assert_eq!(
        h.jsonpath(&format!("job/{job}"), "{.metadata.ownerReferences[0].name}"),
        "checked-api"
    );
    assert_eq!(
        h.jsonpath(&format!("networkpolicy/{job}"), "{.spec.policyTypes[*]}"),
        "Ingress Egress"
    );
    // Pod Security admission ran when the Job controller created the pod: it exists,
    // in a namespace enforcing `restricted`.
    let pod = run_pod(&h, &job).await;
    assert_eq!(
        h.jsonpath(
            &format!("pod/{pod}"),
            "{.spec.automountServiceAccountToken}"
        ),
        "false"
    );

    // The command failed: the Job fails, the operator reads why, a fix round starts.
    finish_pod(
        &h,
        &pod,
        1,
        "c0ffee1234\nFAILED test_api.py::test_list - assert 0 == 1\n1 failed in 0.02s\n",
    );
    // (The fake agent delivers the fix at once: the Task's own record of the failure is
    // replaced within a pass, so the fix task's description is where it shows.)
    h.wait_for_value(
        "task/checked-api-fix-1",
        "{.metadata.annotations.aios\\.dev/fixes}",
        "checked-api",
        TIMEOUT,
    )
    .await;
    let fix = h.task("checked-api-fix-1");
    for read in [
        "`python3 -m pytest -q` exited 1 on commit c0ffee1234",
        "FAILED test_api.py::test_list - assert 0 == 1",
    ] {
        assert!(
            fix.spec.description.contains(read),
            "{read} in {}",
            fix.spec.description
        );
    }
    // The fix is delivered (by the fake agent); its commit is verified by a new Job,
    // which passes.
    h.wait_for_value(
        "task/checked-api",
        "{.status.verification.commit}",
        "c-checked-api-fix-1",
        TIMEOUT,
    )
    .await;
    let second = job_other_than(&h, &[&job]).await;
    let pod = run_pod(&h, &second).await;
    finish_pod(&h, &pod, 0, "c-checked-api-fix-1\n1 passed in 0.01s\n");
    h.wait_for_value("task/checked-api", "{.status.phase}", "Succeeded", TIMEOUT)
        .await;
    let verification = h.task("checked-api").status.unwrap().verification.unwrap();
    assert_eq!(
        (
            verification.phase,
            verification.round,
            verification.exit_code,
            verification.commit.as_deref(),
            verification.output.as_deref()
        ),
        (
            aios_crds::VerificationPhase::Passed,
            1,
            Some(0),
            Some("c-checked-api-fix-1"),
            Some("1 passed in 0.01s\n")
        )
    );
    // Then the branch head, a third Job; it passes and the Project is verified.
    let third = job_other_than(&h, &[&job, &second]).await;
    assert_eq!(
        h.jsonpath(
            &format!("job/{third}"),
            "{.metadata.ownerReferences[0].kind}"
        ),
        "Project"
    );
    let pod = run_pod(&h, &third).await;
    finish_pod(&h, &pod, 0, "headcommit\n1 passed in 0.01s\n");
    h.wait_for_phase("checked", "Succeeded", TIMEOUT).await;
    assert_eq!(
        h.jsonpath("project/checked", "{.status.verification.commit}"),
        "headcommit"
    );
    assert_eq!(
        h.jsonpath(
            "project/checked",
            "{.status.conditions[?(@.type==\"Verified\")].status}"
        ),
        "True"
    );
}
