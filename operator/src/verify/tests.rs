use std::time::Duration;

use aios_crds::{
    TaskPhase, TaskResult, VerificationPhase, VerificationStatus, Verify, conditions::reasons,
    names::annotations,
};
use k8s_openapi::api::{
    batch::v1::{Job, JobCondition, JobStatus},
    core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::{
    FixState, Fixes, Outcome, Run, Sandbox, Step, command, fix_name, fix_task, fixer,
    job::{job_outcome, verify_job, verify_network_policy},
    local::{LocalSandbox, sandboxed},
    note, required, run_id, start, step, tail,
};
use crate::testing::{project, task, ts, with_phase};

fn spec(command: &str) -> Verify {
    serde_json::from_value(serde_json::json!({"command": command})).unwrap()
}

fn outcome(phase: VerificationPhase, code: Option<i32>, output: &str) -> Outcome {
    Outcome {
        phase,
        exit_code: code,
        duration: Duration::from_secs(3),
        output: output.to_owned(),
        commit: Some("c0ffee0000000000000000000000000000000000".to_owned()),
        message: None,
    }
}

fn running(round: i32) -> VerificationStatus {
    let mut s = start("pytest -q".to_owned(), Some("abc".to_owned()), ts(0));
    s.round = round;
    s
}

#[test]
fn a_pass_ends_the_chain_with_the_checked_commit() {
    let o = outcome(VerificationPhase::Passed, Some(0), "1 passed");
    let Step::Passed(s) = step(&running(0), None, Some(&o), 3, true, ts(5)) else {
        panic!("passed");
    };
    assert_eq!(s.phase, VerificationPhase::Passed);
    assert_eq!(s.commit.as_deref(), o.commit.as_deref());
    assert_eq!((s.exit_code, s.duration_ms), (Some(0), Some(3000)));
    assert_eq!(s.output.as_deref(), Some("1 passed"));
}

#[test]
fn a_failure_gets_a_fix_while_rounds_remain_then_fails_with_the_output() {
    let o = outcome(
        VerificationPhase::Failed,
        Some(1),
        "E   assert 'Hi' == 'Hello'",
    );
    assert!(
        matches!(
            step(&running(0), None, Some(&o), 3, true, ts(5)),
            Step::Fix { round: 1, .. }
        ),
        "round 1 of 3"
    );
    assert!(matches!(
        step(&running(2), None, Some(&o), 3, true, ts(5)),
        Step::Fix { round: 3, .. }
    ));
    let Step::Failed {
        reason, message, ..
    } = step(&running(3), None, Some(&o), 3, true, ts(5))
    else {
        panic!("rounds ran out");
    };
    assert_eq!(reason, reasons::VERIFICATION_FAILED);
    assert!(
        message.contains("exited 1") && message.ends_with("E   assert 'Hi' == 'Hello'"),
        "{message}"
    );
    let Step::Failed { reason, .. } = step(&running(0), None, Some(&o), 0, true, ts(5)) else {
        panic!("no fix rounds allowed");
    };
    assert_eq!(reason, reasons::VERIFICATION_FAILED);
}

#[test]
fn a_timeout_is_its_own_reason_and_an_error_is_never_fixed() {
    let hung = outcome(VerificationPhase::TimedOut, None, "");
    let Step::Failed { reason, .. } = step(&running(3), None, Some(&hung), 3, true, ts(5)) else {
        panic!("out of rounds");
    };
    assert_eq!(reason, reasons::VERIFICATION_TIMED_OUT);
    let mut broken = outcome(VerificationPhase::Error, None, "");
    broken.message = Some("the checkout failed: no such branch".to_owned());
    let Step::Failed {
        reason, message, ..
    } = step(&running(0), None, Some(&broken), 3, true, ts(5))
    else {
        panic!("an error is final");
    };
    assert_eq!(reason, reasons::VERIFICATION_ERROR);
    assert!(message.contains("no such branch"), "{message}");
}

/// The delivered code prints what it likes, terminal escapes included: the status, and
/// the message a person reads, keep its text without them.
#[test]
fn what_the_delivered_code_printed_is_recorded_without_control_characters() {
    let printed = "\u{1b}[31mFAILED\u{1b}[0m test_it\u{202E}\r\n\u{1b}]0;pwned\u{7}1 failed\n";
    let o = outcome(VerificationPhase::Failed, Some(1), printed);
    let Step::Failed {
        message, status, ..
    } = step(&running(3), None, Some(&o), 3, true, ts(5))
    else {
        panic!("rounds ran out");
    };
    let output = status.output.unwrap();
    assert_eq!(output, "[31mFAILED[0m test_it\n]0;pwned1 failed\n");
    assert!(message.ends_with(&output), "{message}");

    let mut broken = outcome(VerificationPhase::Error, None, "");
    broken.message = Some("checkout failed: \u{1b}[2J\u{9b}gone".to_owned());
    let Step::Failed {
        message, status, ..
    } = step(&running(0), None, Some(&broken), 3, true, ts(5))
    else {
        panic!("an error is final");
    };
    assert_eq!(status.message.as_deref(), Some("checkout failed: [2Jgone"));
    assert!(message.ends_with("checkout failed: [2Jgone"), "{message}");
}

#[test]
fn a_run_in_progress_or_a_fix_in_progress_waits() {
    assert_eq!(step(&running(0), None, None, 3, true, ts(1)), Step::Wait);
    let mut fixing = running(1);
    fixing.phase = VerificationPhase::Failed;
    fixing.fix_task = Some("shop-api-fix-1".to_owned());
    assert_eq!(
        step(&fixing, None, None, 3, true, ts(1)),
        Step::Wait,
        "not cached yet"
    );
    let queued = FixState {
        phase: TaskPhase::Queued,
        commit: None,
        message: None,
    };
    assert_eq!(
        step(&fixing, Some(&queued), None, 3, true, ts(1)),
        Step::Wait
    );
}

#[test]
fn a_delivered_fix_is_verified_next_at_its_commit_or_the_branch_head() {
    let mut fixing = running(1);
    fixing.phase = VerificationPhase::Failed;
    fixing.fix_task = Some("shop-api-fix-1".to_owned());
    let fixed = FixState {
        phase: TaskPhase::Succeeded,
        commit: Some("f1x".to_owned()),
        message: None,
    };
    let Step::Update(next) = step(&fixing, Some(&fixed), None, 3, true, ts(9)) else {
        panic!("verify the fix");
    };
    assert_eq!(
        (
            next.phase,
            next.commit.as_deref(),
            next.round,
            next.fix_task
        ),
        (VerificationPhase::Running, Some("f1x"), 1, None)
    );
    assert_ne!(
        run_id("uid-api", 0),
        run_id("uid-api", next.round),
        "a new run"
    );
    let Step::Update(head) = step(&fixing, Some(&fixed), None, 3, false, ts(9)) else {
        panic!("verify the head");
    };
    assert_eq!(
        head.commit, None,
        "the final verification checks the branch head"
    );
    let failed = FixState {
        phase: TaskPhase::Failed,
        commit: None,
        message: Some("no model".to_owned()),
    };
    let Step::Failed {
        reason, message, ..
    } = step(&fixing, Some(&failed), None, 3, true, ts(9))
    else {
        panic!("a failed fix ends it");
    };
    assert_eq!(reason, reasons::VERIFICATION_FAILED);
    assert!(
        message.contains("shop-api-fix-1") && message.contains("no model"),
        "{message}"
    );
}

#[test]
fn the_fix_task_carries_the_command_the_output_and_the_files_for_the_same_role() {
    let p = project("shop");
    let mut t = with_phase(task("shop-api", &[]), TaskPhase::Verifying);
    t.status.as_mut().unwrap().result = Some(TaskResult {
        files: vec!["app.py".to_owned()],
        ..TaskResult::default()
    });
    let mut failed = running(0);
    failed.phase = VerificationPhase::Failed;
    failed.exit_code = Some(1);
    failed.output = Some("FAILED test_app.py::test_greet - assert 'Hi' == 'Hello'".to_owned());
    let fix = fix_task(
        &p,
        Fixes::Task {
            failed: &t,
            fixer: &t,
        },
        &failed,
        2,
    );
    assert_eq!(fix.name_any(), "shop-api-fix-2");
    assert_eq!(fix.spec.role, t.spec.role);
    assert_eq!(fix.annotations()[annotations::FIXES], "shop-api");
    assert!(
        fix.spec.depends_on.is_empty(),
        "the task it fixes waits for it, not the other way"
    );
    for needle in [
        "`pytest -q` exited 1",
        "test_app.py::test_greet",
        "Files involved: app.py",
    ] {
        assert!(
            fix.spec.description.contains(needle),
            "{needle} in {}",
            fix.spec.description
        );
    }
    assert_eq!(
        fix.owner_references()[0].name,
        "shop",
        "owned by the Project"
    );
    assert!(super::is_fix(&fix));
    assert!(
        !required(
            Some(&{
                let mut v = p.clone();
                v.spec.verify = Some(spec("true"));
                v
            }),
            &fix,
            true
        ),
        "a fix is verified as part of the task it fixes"
    );
}

#[test]
fn athena_is_told_what_was_verified_how_it_ended_and_the_last_output() {
    let p = project("shop");
    let mut t = with_phase(task("shop-api", &[]), TaskPhase::Verifying);
    t.status.as_mut().unwrap().result = Some(TaskResult {
        files: vec!["app.py".to_owned()],
        ..TaskResult::default()
    });
    let long = format!(
        "{}\nFAILED test_app.py::test_greet - assert 'Hi' == 'Hello'",
        "x".repeat(5000)
    );
    let failed = outcome(VerificationPhase::Failed, Some(1), &long);
    let n = note(&p, Some(&t), "pytest -q", &failed).unwrap();
    assert_eq!(n.kind, "verification");
    assert_eq!(
        (
            n.project.namespace.as_str(),
            n.project.name.as_str(),
            n.project.uid.as_str()
        ),
        ("team-a", "shop", "uid-shop")
    );
    assert_eq!(n.task.as_deref(), Some("shop-api"));
    for needle in [
        "task `shop-api` (role backend)",
        "on commit c0ffee000000",
        "Failed",
        "`pytest -q`, exit code 1",
        "Files: app.py.",
        "FAILED test_app.py::test_greet",
    ] {
        assert!(n.text.contains(needle), "{needle} in {}", n.text);
    }
    assert!(n.text.len() < 2000, "the output is cut to its tail");

    let mut slower = failed.clone();
    slower.duration = Duration::from_secs(30);
    assert_eq!(
        note(&p, Some(&t), "pytest -q", &slower),
        Some(n),
        "the same outcome read again is the same note (one memory)"
    );

    let error = Outcome::error("the checkout failed", Duration::ZERO, None);
    let head = note(&p, None, "pytest -q", &error).unwrap();
    assert_eq!(head.task, None);
    assert!(
        head.text
            .starts_with("Verification of the branch head of project `shop`: Error.")
            && head.text.contains("the checkout failed"),
        "{}",
        head.text
    );

    let mut unsaved = p.clone();
    unsaved.metadata.uid = None;
    assert_eq!(note(&unsaved, None, "pytest -q", &error), None);
}

#[test]
fn failing_tests_go_to_the_author_of_the_code_they_test() {
    let delivered = |name: &str, role: &str, files: &[&str]| {
        let mut t = with_phase(task(name, &[]), TaskPhase::Succeeded);
        t.spec.role = aios_crds::DnsLabel::new(role).unwrap();
        t.status.as_mut().unwrap().result = Some(TaskResult {
            files: files.iter().map(|f| (*f).to_owned()).collect(),
            ..TaskResult::default()
        });
        t
    };
    let api = delivered("shop-api", "backend", &["api.py"]);
    let ui = delivered("shop-ui", "frontend", &["ui.js"]);
    let tests = delivered("shop-test", "qa", &["test_api.py"]);
    assert_eq!(
        fixer(&tests, &[&api, &ui], "FAILED ui.js: expected").name_any(),
        "shop-ui"
    );
    assert_eq!(
        fixer(&tests, &[&api, &ui], "assert 1 == 2").name_any(),
        "shop-api"
    );
    assert_eq!(
        fixer(&tests, &[], "assert 1 == 2").name_any(),
        "shop-test",
        "no code under test"
    );
    assert_eq!(
        fixer(&api, &[&ui], "ui.js").name_any(),
        "shop-api",
        "code is fixed by its author"
    );
    let fix = fix_task(
        &project("shop"),
        Fixes::Task {
            failed: &tests,
            fixer: &api,
        },
        &running(0),
        1,
    );
    assert_eq!(
        (fix.name_any().as_str(), fix.spec.role.as_str()),
        ("shop-test-fix-1", "backend")
    );
    assert!(
        fix.spec
            .description
            .contains("Files involved: api.py, test_api.py."),
        "{}",
        fix.spec.description
    );
}

#[test]
fn names_stay_within_the_api_servers_limit() {
    let long = "a".repeat(253);
    let name = fix_name(&long, false, 10);
    assert!(name.len() <= 253 && name.ends_with("-fix-10"), "{name}");
    assert_ne!(
        fix_name(&long, false, 1),
        fix_name(&format!("{long}b"), false, 1)
    );
    assert_eq!(fix_name("shop", true, 1), "shop-final-fix-1");
}

#[test]
fn what_is_verified_and_with_which_command() {
    let mut p = project("shop");
    let t = task("shop-api", &[]);
    assert!(!required(Some(&p), &t, true), "no spec.verify");
    p.spec.verify = Some(spec("pytest -q"));
    assert!(required(Some(&p), &t, true));
    assert!(!required(Some(&p), &t, false), "nothing written");
    let mut own = t.clone();
    own.spec.verify = Some(aios_crds::verify::TaskVerify {
        command: "python3 -m app --check".to_owned(),
    });
    assert_eq!(
        command(p.spec.verify.as_ref().unwrap(), Some(&own.spec)),
        "pytest -q && python3 -m app --check"
    );
}

#[test]
fn tail_keeps_the_last_whole_lines() {
    assert_eq!(tail("short", 10), "short");
    let text = "line one\nline two\nline three\n";
    assert_eq!(tail(text, 15), "line three\n");
}

fn run(command: &str, repo: &str) -> Run {
    let mut verify = spec(command);
    verify.timeout_seconds = 5;
    verify.image = Some("python:3.13-slim".to_owned());
    Run {
        id: run_id("uid-shop-api", 0),
        namespace: "team-a".to_owned(),
        owner: kube::Resource::controller_owner_ref(&task("shop-api", &[]), &()).unwrap(),
        repository: serde_json::from_value(serde_json::json!({"url": repo})).unwrap(),
        commit: None,
        command: command.to_owned(),
        spec: verify,
    }
}

#[test]
fn the_job_is_restricted_has_no_token_and_checks_out_the_commit_first() {
    let mut r = run("pytest -q", "https://git.example.com/team/shop.git");
    r.commit = Some("abc123".to_owned());
    let job = verify_job(&r, "aios-agent:0.1.0").unwrap();
    assert_eq!(job.name_any(), r.id);
    let spec = job.spec.unwrap();
    assert_eq!(spec.backoff_limit, Some(0));
    assert_eq!(spec.active_deadline_seconds, Some(5 + 120));
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.enable_service_links, Some(false));
    let security = pod.security_context.unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
    let init = &pod.init_containers.unwrap()[0];
    let env = init.env.as_ref().unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "AIOS_COMMIT" && e.value.as_deref() == Some("abc123"))
    );
    let verify = &pod.containers[0];
    assert_eq!(verify.image.as_deref(), Some("python:3.13-slim"));
    for c in [init, verify] {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert!(
            c.env.iter().flatten().all(|e| e.value_from.is_none()),
            "no Secret reaches {}",
            c.name
        );
    }
    assert_eq!(
        verify.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "1024Mi"
    );
    let mut no_image = r.clone();
    no_image.spec.image = None;
    assert!(
        verify_job(&no_image, "git")
            .unwrap_err()
            .contains("spec.verify.image")
    );
}

#[test]
fn the_network_policy_denies_all_but_dns_and_the_repositorys_port() {
    let r = run("pytest -q", "https://git.example.com:8443/team/shop.git");
    let policy = verify_network_policy(&r).unwrap().spec.unwrap();
    assert_eq!(policy.ingress, Some(vec![]));
    let ports: Vec<(String, String)> = policy.egress.unwrap()[0]
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.protocol.unwrap(), format!("{:?}", p.port.unwrap())))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("UDP".to_owned(), "Int(53)".to_owned()),
            ("TCP".to_owned(), "Int(53)".to_owned()),
            ("TCP".to_owned(), "Int(8443)".to_owned())
        ]
    );
    let mut open = r;
    open.spec.allow_network = true;
    assert!(verify_network_policy(&open).is_none());
}

fn finished_job(condition: &str, reason: Option<&str>) -> Job {
    Job {
        status: Some(JobStatus {
            start_time: Some(Time(ts(0))),
            completion_time: (condition == "Complete").then(|| Time(ts(42))),
            conditions: Some(vec![JobCondition {
                type_: condition.to_owned(),
                status: "True".to_owned(),
                reason: reason.map(str::to_owned),
                last_transition_time: Some(Time(ts(42))),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        }),
        ..Job::default()
    }
}

fn pod_with(name: &str, init: bool, code: i32, message: &str) -> Pod {
    let status = ContainerStatus {
        name: name.to_owned(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                message: Some(message.to_owned()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }),
        ..ContainerStatus::default()
    };
    Pod {
        status: Some(PodStatus {
            init_container_statuses: init.then(|| vec![status.clone()]),
            container_statuses: (!init).then(|| vec![status]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

#[test]
fn a_finished_job_reads_as_the_same_outcome_as_a_local_run() {
    assert_eq!(job_outcome(&Job::default(), None), None, "still running");
    let pod = pod_with("verify", false, 1, "c0ffee\n1 failed\nE assert 1 == 2\n");
    let failed = job_outcome(
        &finished_job("Failed", Some("BackoffLimitExceeded")),
        Some(&pod),
    )
    .unwrap();
    assert_eq!(
        failed,
        Outcome {
            phase: VerificationPhase::Failed,
            exit_code: Some(1),
            duration: Duration::from_secs(42),
            output: "1 failed\nE assert 1 == 2\n".to_owned(),
            commit: Some("c0ffee".to_owned()),
            message: None,
        }
    );
    let ok = pod_with("verify", false, 0, "c0ffee\n3 passed\n");
    assert_eq!(
        job_outcome(&finished_job("Complete", None), Some(&ok))
            .unwrap()
            .phase,
        VerificationPhase::Passed
    );
    let late = job_outcome(&finished_job("Failed", Some("DeadlineExceeded")), None).unwrap();
    assert_eq!(late.phase, VerificationPhase::TimedOut);
    let checkout = pod_with("checkout", true, 128, "fatal: Remote branch main not found");
    let broken = job_outcome(
        &finished_job("Failed", Some("BackoffLimitExceeded")),
        Some(&checkout),
    )
    .unwrap();
    assert_eq!(broken.phase, VerificationPhase::Error);
    assert!(
        broken
            .message
            .unwrap()
            .contains("Remote branch main not found")
    );
}

#[test]
fn the_local_sandbox_runs_under_limits_and_without_network() {
    let argv = sandboxed("pytest -q", 512, false);
    assert_eq!(
        argv,
        [
            "prlimit",
            "--as=536870912",
            "--",
            "unshare",
            "--map-root-user",
            "--net",
            "--",
            "sh",
            "-c",
            "pytest -q"
        ]
    );
    assert!(!sandboxed("true", 512, true).contains(&"unshare".to_owned()));
}

/// A repository at `dir` with `files` committed on `main`.
fn repository(dir: &std::path::Path, files: &[(&str, &str)]) -> String {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    for (path, content) in files {
        std::fs::write(dir.join(path), content).unwrap();
    }
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "--quiet",
        "-m",
        "work",
    ]);
    format!("file://{}", dir.display())
}

async fn finish(sandbox: &LocalSandbox, r: &Run) -> Outcome {
    for _ in 0..200 {
        if let Some(outcome) = sandbox.poll(r).await.unwrap() {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the run never finished");
}

#[tokio::test]
async fn local_runs_pass_fail_time_out_and_find_no_network() {
    let repo_dir = tempfile::tempdir().unwrap();
    let url = repository(
        repo_dir.path(),
        &[
            ("check.sh", "echo checking; test \"$(cat value)\" = good\n"),
            ("value", "bad\n"),
        ],
    );
    let work = tempfile::tempdir().unwrap();
    let sandbox = LocalSandbox::new(work.path().to_path_buf());
    let mut r = run("sh check.sh", &url);
    let failed = finish(&sandbox, &r).await;
    assert_eq!(
        (failed.phase, failed.exit_code),
        (VerificationPhase::Failed, Some(1)),
        "{failed:?}"
    );
    assert!(failed.output.contains("checking"), "{failed:?}");
    assert_eq!(failed.commit.as_deref().map(str::len), Some(40));
    sandbox.forget(&r).await.unwrap();
    assert_eq!(
        sandbox.poll(&r).await.unwrap(),
        None,
        "a recorded run is not started again"
    );

    r.id = run_id("uid-shop-api", 1);
    r.command = "sleep 30".to_owned();
    r.spec.timeout_seconds = 1;
    let started = std::time::Instant::now();
    let hung = finish(&sandbox, &r).await;
    assert_eq!(hung.phase, VerificationPhase::TimedOut);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "killed at its timeout"
    );

    // The attacker's test: reach a server on this machine. It listens, so only the
    // sandbox's missing network can stop the connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    r.id = run_id("uid-shop-api", 2);
    r.spec.timeout_seconds = 10;
    r.command = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)\""
    );
    let refused = finish(&sandbox, &r).await;
    assert_eq!(refused.phase, VerificationPhase::Failed, "{refused:?}");
    assert!(
        refused.output.contains("unreachable") || refused.output.contains("refused"),
        "{refused:?}"
    );
    assert!(listener.accept().is_err(), "nothing connected");
    r.spec.allow_network = true;
    r.id = run_id("uid-shop-api", 3);
    let allowed = finish(&sandbox, &r).await;
    assert_eq!(
        allowed.phase,
        VerificationPhase::Passed,
        "the Project may allow it: {allowed:?}"
    );
    assert!(listener.accept().is_ok());

    r.id = run_id("uid-shop-api", 4);
    r.command = "env".to_owned();
    // The operator's own environment (its kubeconfig, its bus URL) stays out.
    let leaked = finish(&sandbox, &r).await;
    assert!(
        !leaked.output.contains("KUBECONFIG") && !leaked.output.contains("AIOS_"),
        "{}",
        leaked.output
    );
}
