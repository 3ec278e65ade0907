//! The agent against real RabbitMQ, Redis and git repositories, with the model played
//! by a local HTTP fixture speaking Ollama's chat API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use aios_crds::bus::{MemoryNote, ObjectRef, SCHEMA_VERSION, TaskEventKind, TaskOutput};
use serde_json::json;
use support::{OwnRedis, World, is_terminal, work_answer};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatched_task_is_committed_and_reported_with_its_usage() {
    let mut world = World::new("agent-basic").await;
    world
        .answer(
            "Write the API",
            &work_answer(
                "Wrote the API.",
                &[("src/api.py", "def hello():\n    return 'hi'\n")],
            ),
            None,
            Duration::ZERO,
        )
        .await;
    let agent = world.agent("backend", &[]);
    agent.wait_ready(WAIT).await;
    let dispatch = world.dispatch("shop-api", "backend", "Write the API");
    world.publish(&dispatch).await;

    let started = world
        .wait_for(WAIT, |e| e.task.uid == dispatch.task.uid)
        .await;
    assert!(
        matches!(started.kind, TaskEventKind::Started),
        "started first: {started:?}"
    );
    assert_eq!(started.agent, agent.name);
    let done = world.wait_for(WAIT, is_terminal).await;
    let TaskEventKind::Succeeded {
        output: TaskOutput { result, .. },
        usage,
    } = done.kind
    else {
        panic!("expected success: {done:?}\n{}", agent.log_tail());
    };
    assert_eq!(result.files, ["src/api.py"]);
    assert_eq!(result.summary, "Wrote the API.");
    assert_eq!(usage.provider.as_deref(), Some("local-ollama"));
    assert_eq!(usage.model.as_deref(), Some("test-model"));
    assert_eq!(
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.local_requests
        ),
        (120, 45, 1)
    );
    assert!(
        (usage.cost_usd - (0.12 * 0.001 + 0.045 * 0.002)).abs() < 1e-9,
        "{}",
        usage.cost_usd
    );

    let commits = world.commits();
    assert_eq!(commits.len(), 2, "the seed and the delivery: {commits:?}");
    let (author, subject, body) = &commits[0];
    assert_eq!(author, "Apollo <apollo@aios.dev>");
    assert_eq!(subject, "Write the API");
    assert!(
        body.contains(&format!(
            "AIOS-Attempt: {}",
            dispatch.attempt_id().message_id()
        )),
        "{body}"
    );
    assert_eq!(
        result.commit.as_deref(),
        Some(support::git(&world.repo, &["rev-parse", "main"]).trim())
    );
    assert_eq!(
        world.file("src/api.py").unwrap(),
        "def hello():\n    return 'hi'\n"
    );

    let metrics = agent.metrics();
    assert!(
        metrics.contains(r#"aios_agent_tasks_total{outcome="succeeded",role="backend"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"aios_agent_llm_requests_total{model="test-model",outcome="ok",provider="local-ollama",tier="local"} 1"#), "{metrics}");
    assert!(
        metrics.contains("aios_agent_llm_local_ratio 1"),
        "{metrics}"
    );
}

/// A note about task `program` of `namespace/project`.
fn note_of(namespace: &str, project: &str, kind: &str, text: &str) -> MemoryNote {
    MemoryNote {
        schema_version: SCHEMA_VERSION,
        project: ObjectRef {
            namespace: namespace.to_owned(),
            name: project.to_owned(),
            uid: format!("{namespace}-{project}-uid"),
        },
        task: Some("program".to_owned()),
        kind: kind.to_owned(),
        text: text.to_owned(),
    }
}

/// The prompts of every chat request the fixture received, in order.
async fn chat_prompts(world: &World) -> Vec<String> {
    world
        .llm
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/api/chat")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn athena_keeps_a_verification_note_in_memory_and_recalls_it_in_her_next_task() {
    let mut world = World::new("agent-note").await;
    world.serve_embeddings().await;
    let failed = "Verification of task `program` (role backend) on commit 0123456789ab: \
                  Failed. Command: `python3 -m pytest -q`, exit code 1.\nLast output:\n\
                  FAILED test_hello.py::test_greet - assert 'Hi, Ada!' == 'Hello, Ada!'";
    // Published before any `qa` agent ran: the notes wait in the role's queue. Two
    // belong elsewhere: another Project of the namespace, and another namespace (whose
    // note waits in that namespace's queue, which this agent never reads).
    let verification = MemoryNote::VERIFICATION;
    for note in [
        note_of("tests", "blog", verification, "NOTE-OF-PROJECT-BLOG"),
        note_of(
            "other-team",
            "shop",
            verification,
            "NOTE-OF-ANOTHER-NAMESPACE",
        ),
        note_of("tests", "shop", "a-newer-kind", "NOTE-OF-AN-UNKNOWN-KIND"),
        note_of("tests", "shop", verification, failed),
    ] {
        world.bus.publish_note("qa", &note).await.unwrap();
    }
    world
        .answer(
            "Test the program",
            &work_answer(
                "Tested greet.",
                &[("test_hello.py", "def test_greet():\n    pass\n")],
            ),
            None,
            Duration::ZERO,
        )
        .await;
    let agent = world.agent("qa", &[]);
    agent.wait_ready(WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let metrics = agent.metrics();
        if metrics.contains(r#"aios_agent_memory_notes_total{outcome="stored"} 2"#)
            && metrics.contains(r#"aios_agent_memory_notes_total{outcome="ignored"} 1"#)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the notes were not taken: {metrics}\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let dispatch = world.dispatch("test", "qa", "Test the program");
    world.publish(&dispatch).await;
    let done = world.wait_for(WAIT, is_terminal).await;
    assert!(
        matches!(done.kind, TaskEventKind::Succeeded { .. }),
        "{done:?}\n{}",
        agent.log_tail()
    );
    let prompts = chat_prompts(&world).await;
    assert_eq!(prompts.len(), 1, "one model call");
    assert!(
        prompts[0].contains("- (verification) Verification of task `program`")
            && prompts[0].contains("assert 'Hi, Ada!' == 'Hello, Ada!'"),
        "Athena's prompt recalls the failed verification: {}",
        prompts[0]
    );
    assert!(
        !prompts[0].contains("NOTE-OF-AN-UNKNOWN-KIND"),
        "a kind this build does not know is not stored: {}",
        prompts[0]
    );
    assert!(
        !prompts[0].contains("NOTE-OF-PROJECT-BLOG")
            && !prompts[0].contains("NOTE-OF-ANOTHER-NAMESPACE"),
        "only the Project's own memories by default: {}",
        prompts[0]
    );

    // A Project that allows it recalls its namespace's other Projects; never another
    // namespace.
    let mut across = world.dispatch("test-2", "qa", "Test the program");
    across.recall_across_projects = true;
    world.publish(&across).await;
    let done = world
        .wait_for(WAIT, |e| e.task.uid == across.task.uid && is_terminal(e))
        .await;
    assert!(
        matches!(done.kind, TaskEventKind::Succeeded { .. }),
        "{done:?}"
    );
    let prompt = chat_prompts(&world).await.pop().unwrap();
    assert!(prompt.contains("NOTE-OF-PROJECT-BLOG"), "{prompt}");
    assert!(!prompt.contains("NOTE-OF-ANOTHER-NAMESPACE"), "{prompt}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_twice_makes_one_commit_and_one_success() {
    let mut world = World::new("agent-twice").await;
    world
        .answer(
            "Write twice",
            &work_answer("Once.", &[("once.txt", "1\n")]),
            None,
            Duration::ZERO,
        )
        .await;
    // Two at once: both copies are in this one process together.
    let agent = world.agent("backend", &[("AIOS_CONCURRENCY", "2")]);
    agent.wait_ready(WAIT).await;
    let dispatch = world.dispatch("shop-twice", "backend", "Write twice");
    world.publish(&dispatch).await;
    world.publish(&dispatch).await;
    world.wait_for(WAIT, is_terminal).await;
    // The second copy is acknowledged without work; give it time to be seen.
    let deadline = std::time::Instant::now() + WAIT;
    while !agent
        .metrics()
        .contains(r#"aios_agent_tasks_total{outcome="duplicate",role="backend"} 1"#)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the duplicate was never acknowledged:\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.drain(Duration::from_secs(1)).await;
    assert_eq!(world.count(&dispatch.task.uid, "task.succeeded"), 1);
    assert_eq!(world.commits_of(&dispatch), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_leaves_it_to_another_with_exactly_one_commit() {
    let mut world = World::new("agent-kill").await;
    // Slow enough that the kill lands while the model is thinking.
    world
        .answer(
            "Survive a crash",
            &work_answer("Survived.", &[("crash.txt", "ok\n")]),
            None,
            Duration::from_secs(3),
        )
        .await;
    let mut first = world.agent("backend", &[]);
    first.wait_ready(WAIT).await;
    let dispatch = world.dispatch("shop-crash", "backend", "Survive a crash");
    world.publish(&dispatch).await;
    let started = world
        .wait_for(WAIT, |e| matches!(e.kind, TaskEventKind::Started))
        .await;
    assert_eq!(started.agent, first.name);
    first.kill();

    let second = world.agent("backend", &[]);
    let done = world.wait_for(WAIT, is_terminal).await;
    assert!(
        matches!(done.kind, TaskEventKind::Succeeded { .. }),
        "{done:?}\n{}",
        second.log_tail()
    );
    assert_eq!(done.agent, second.name, "the survivor finished it");
    world.drain(Duration::from_secs(2)).await;
    assert_eq!(world.commits_of(&dispatch), 1);
    assert_eq!(world.count(&dispatch.task.uid, "task.succeeded"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_task_finishes_it_then_exits() {
    let mut world = World::new("agent-term").await;
    world
        .answer(
            "Finish before leaving",
            &work_answer("Finished.", &[("term.txt", "done\n")]),
            None,
            Duration::from_secs(2),
        )
        .await;
    let mut agent = world.agent("backend", &[("AIOS_SHUTDOWN_GRACE_SECONDS", "30")]);
    agent.wait_ready(WAIT).await;
    let dispatch = world.dispatch("shop-term", "backend", "Finish before leaving");
    world.publish(&dispatch).await;
    world
        .wait_for(WAIT, |e| matches!(e.kind, TaskEventKind::Started))
        .await;
    agent.terminate();
    let done = world.wait_for(WAIT, is_terminal).await;
    assert!(
        matches!(done.kind, TaskEventKind::Succeeded { .. }),
        "{done:?}"
    );
    let status = agent
        .wait_exit(WAIT)
        .expect("the agent exits after the task");
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        agent.log_tail()
    );
    assert_eq!(world.commits_of(&dispatch), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_output_is_repaired_once_and_then_fails_with_a_reason() {
    let mut world = World::new("agent-repair").await;
    // First task: one bad answer, then a good one.
    world
        .answer(
            "Fix yourself",
            &json!({"summary": "no files"}),
            Some(1),
            Duration::ZERO,
        )
        .await;
    world
        .answer(
            "Fix yourself",
            &work_answer("Fixed.", &[("fixed.txt", "ok\n")]),
            None,
            Duration::ZERO,
        )
        .await;
    // Second task: always bad.
    world
        .answer(
            "Never right",
            &json!({"files": "nope"}),
            None,
            Duration::ZERO,
        )
        .await;
    let agent = world.agent("backend", &[]);
    agent.wait_ready(WAIT).await;

    let repaired = world.dispatch("shop-repaired", "backend", "Fix yourself");
    world.publish(&repaired).await;
    let done = world.wait_for(WAIT, is_terminal).await;
    let TaskEventKind::Succeeded { usage, .. } = done.kind else {
        panic!("repaired: {done:?}\n{}", agent.log_tail());
    };
    assert_eq!(usage.local_requests, 2, "the answer and its repair");
    let requests = world.llm.received_requests().await.unwrap();
    let repair = requests
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("Fix yourself"))
        .nth(1)
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&repair.body).unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        last.contains("could not be used") && last.contains("missing field"),
        "{last}"
    );
    assert_eq!(
        body["format"]["required"],
        json!(["summary", "files"]),
        "the schema goes in Ollama's format"
    );

    let broken = world.dispatch("shop-broken", "backend", "Never right");
    world.publish(&broken).await;
    let failed = world
        .wait_for(WAIT, |e| e.task.uid == broken.task.uid && is_terminal(e))
        .await;
    let TaskEventKind::Failed {
        reason,
        message,
        retryable,
        usage,
    } = failed.kind
    else {
        panic!("{failed:?}");
    };
    assert_eq!(reason, "InvalidOutput");
    assert!(message.contains("after one repair"), "{message}");
    assert!(retryable);
    assert_eq!(usage.local_requests, 2);
    assert_eq!(world.commits_of(&broken), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_naming_a_role_nobody_serves_is_reported_for_hera_to_judge() {
    let mut world = World::new("agent-plan").await;
    let plan = |role: &str| {
        json!({"tasks": [
            {"name": "api", "title": "API", "role": "backend", "description": "d", "dependsOn": []},
            {"name": "audit", "title": "Audit", "role": role, "description": "d", "dependsOn": ["api"]}
        ]})
    };
    world
        .answer("Plan it well", &plan("qa"), None, Duration::ZERO)
        .await;
    world
        .answer("Plan it badly", &plan("security"), None, Duration::ZERO)
        .await;
    let agent = world.agent("cto", &[]);
    agent.wait_ready(WAIT).await;
    let planning = |world: &World, task: &str, title: &str| {
        let mut dispatch = world.dispatch(task, "cto", title);
        dispatch.spec.planning = true;
        dispatch.available_roles = vec!["backend".to_owned(), "qa".to_owned()];
        dispatch
    };

    let good = planning(&world, "shop-plan", "Plan it well");
    world.publish(&good).await;
    let done = world.wait_for(WAIT, is_terminal).await;
    let TaskEventKind::Succeeded { output, .. } = done.kind else {
        panic!("{done:?}\n{}", agent.log_tail());
    };
    let plan_names: Vec<String> = output
        .plan
        .unwrap()
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(plan_names, ["api", "audit"]);
    let plan_file = world
        .file(".aios/plan.json")
        .expect("the plan is committed");
    assert!(plan_file.contains("\"audit\""), "{plan_file}");
    assert_eq!(world.commits_of(&good), 1);

    // Still invalid after the repair request: reported all the same, with what the
    // agent's checks found; the verdict is Hera's.
    let bad = planning(&world, "shop-badplan", "Plan it badly");
    world.publish(&bad).await;
    let reported = world
        .wait_for(WAIT, |e| e.task.uid == bad.task.uid && is_terminal(e))
        .await;
    let TaskEventKind::Succeeded { output, usage } = reported.kind else {
        panic!("{reported:?}\n{}", agent.log_tail());
    };
    let roles: Vec<String> = output
        .plan
        .unwrap()
        .iter()
        .map(|t| t.role.to_string())
        .collect();
    assert_eq!(roles, ["backend", "security"]);
    let notes = output.result.notes.unwrap_or_default();
    assert!(
        notes.contains("\"security\"") && notes.contains("after one repair"),
        "{notes}"
    );
    assert_eq!(usage.local_requests, 2, "the answer and its repair");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_unsafe_path_is_refused_and_nothing_is_committed() {
    let mut world = World::new("agent-paths").await;
    let big = "x".repeat(2048);
    let cases = [
        ("absolute", "/etc/passwd", "is absolute"),
        ("parent", "../escape.txt", "'..'"),
        ("gitdir", ".git/hooks/post-commit", "inside .git"),
        ("symlink", "outside/evil.txt", "symbolic link"),
        ("oversize", "big.txt", "size limit"),
    ];
    for (marker, path, _) in &cases {
        let content = if *marker == "oversize" {
            big.as_str()
        } else {
            "bad\n"
        };
        let title = format!("Unsafe {marker}");
        world
            .answer(
                &title,
                &work_answer("Tried.", &[("fine.txt", "ok\n"), (path, content)]),
                None,
                Duration::ZERO,
            )
            .await;
    }
    let agent = world.agent("backend", &[("AIOS_MAX_FILE_BYTES", "1024")]);
    agent.wait_ready(WAIT).await;
    for (marker, path, why) in &cases {
        let dispatch = world.dispatch(
            &format!("shop-{marker}"),
            "backend",
            &format!("Unsafe {marker}"),
        );
        world.publish(&dispatch).await;
        let failed = world
            .wait_for(WAIT, |e| e.task.uid == dispatch.task.uid && is_terminal(e))
            .await;
        let TaskEventKind::Failed {
            reason,
            message,
            retryable,
            ..
        } = failed.kind
        else {
            panic!("{marker} was not refused: {failed:?}");
        };
        assert_eq!(reason, "UnsafePath", "{marker}");
        assert!(
            message.contains(path) && message.contains(why),
            "{marker}: {message}"
        );
        assert!(!retryable);
    }
    assert_eq!(world.commits().len(), 1, "only the seed");
    assert!(!std::path::Path::new("/tmp/evil.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_pushing_to_one_branch_both_land() {
    let mut world = World::new("agent-race").await;
    // Both fetch before either pushes: the second push is rejected, rebased and retried.
    let (first, second, one, two) = world
        .race(
            ("Race one", work_answer("One.", &[("one.txt", "1\n")])),
            ("Race two", work_answer("Two.", &[("two.txt", "2\n")])),
        )
        .await;
    for _ in 0..2 {
        let done = world.wait_for(WAIT, is_terminal).await;
        assert!(
            matches!(done.kind, TaskEventKind::Succeeded { .. }),
            "{done:?}\n{}\n{}",
            first.log_tail(),
            second.log_tail()
        );
    }
    assert_eq!(world.commits_of(&one), 1);
    assert_eq!(world.commits_of(&two), 1);
    assert_eq!(world.file("one.txt").as_deref(), Some("1\n"));
    assert_eq!(world.file("two.txt").as_deref(), Some("2\n"));
    let agents: std::collections::BTreeSet<_> = world
        .seen
        .iter()
        .filter(|e| is_terminal(e))
        .map(|e| e.agent.clone())
        .collect();
    assert_eq!(agents.len(), 2, "each worker took one: {agents:?}");
    let logs = std::fs::read_to_string(&first.log).unwrap()
        + &std::fs::read_to_string(&second.log).unwrap();
    assert!(
        logs.contains("the branch moved; rebasing"),
        "one push was rejected and rebased:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_conflict_fails_the_later_attempt_naming_the_paths() {
    let mut world = World::new("agent-conflict").await;
    // Both write the same new file with different content, from the same starting point.
    let _agents = world
        .race(
            (
                "Claim it first",
                work_answer("Mine.", &[("shared.txt", "first\n")]),
            ),
            (
                "Claim it second",
                work_answer("Also mine.", &[("shared.txt", "second\n")]),
            ),
        )
        .await;
    let (mut succeeded, mut conflicts) = (0, Vec::new());
    for _ in 0..2 {
        let done = world.wait_for(WAIT, is_terminal).await;
        match done.kind {
            TaskEventKind::Succeeded { .. } => succeeded += 1,
            TaskEventKind::Failed {
                reason,
                message,
                retryable,
                ..
            } => {
                assert_eq!(reason, "DeliveryConflict", "{message}");
                assert!(retryable, "a new attempt starts from the new branch head");
                conflicts.push(message);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(succeeded, 1);
    assert_eq!(conflicts.len(), 1);
    assert!(conflicts[0].contains("shared.txt"), "{}", conflicts[0]);
    let content = world.file("shared.txt").unwrap();
    assert!(
        content == "first\n" || content == "second\n",
        "one side landed whole: {content:?}"
    );
    assert_eq!(world.commits().len(), 2, "the seed and the one that landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_within_two_seconds_of_redis_hanging_or_stopping() {
    let mut world = World::new("agent-ready").await;
    let redis = OwnRedis::start(world.dir.path());
    let agent = world.agent("backend", &[("AIOS_REDIS_URL", &redis.url)]);
    agent.wait_ready(WAIT).await;
    // The bound is the agent's two seconds, plus a little for this machine's load.
    let bound = Duration::from_millis(2500);

    redis.freeze();
    let took = agent.wait_unready(Duration::from_secs(15)).await;
    assert!(took <= bound, "unready {took:?} after Redis hung");
    redis.thaw();
    agent.wait_ready(Duration::from_secs(10)).await;

    redis.stop();
    let took = agent.wait_unready(Duration::from_secs(15)).await;
    assert!(took <= bound, "unready {took:?} after Redis stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_cancelled_while_no_agent_listened_is_never_worked_on() {
    let mut world = World::new("agent-cancel-waiting").await;
    world
        .answer(
            "Cancelled before it started",
            &work_answer("Should not exist.", &[("ghost.txt", "boo\n")]),
            None,
            Duration::ZERO,
        )
        .await;
    // The dispatch waits in its queue; the cancel comes while no agent is connected, so
    // only its mark in Redis records it (as the operator writes it).
    let dispatch = world.dispatch("shop-ghost", "backend", "Cancelled before it started");
    world.publish(&dispatch).await;
    world.mark_cancelled(&dispatch).await;
    let agent = world.agent("backend", &[]);
    agent.wait_ready(WAIT).await;
    world
        .wait_for_outcome(&agent, "backend", "cancelled", 1)
        .await;
    world.drain(Duration::from_secs(1)).await;
    assert_eq!(world.count(&dispatch.task.uid, "task.started"), 0);
    assert_eq!(world.commits_of(&dispatch), 0, "nothing was delivered");
    assert_eq!(world.file("ghost.txt"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_attempt_stops_on_a_cancel_mark_it_never_heard_on_the_bus() {
    let mut world = World::new("agent-cancel-running").await;
    world
        .answer(
            "Cancelled mid-task",
            &work_answer("Too late.", &[("late.txt", "late\n")]),
            None,
            Duration::from_secs(20),
        )
        .await;
    let agent = world.agent("backend", &[("AIOS_CLAIM_LEASE_SECONDS", "3")]);
    agent.wait_ready(WAIT).await;
    let dispatch = world.dispatch("shop-late", "backend", "Cancelled mid-task");
    world.publish(&dispatch).await;
    world
        .wait_for(WAIT, |e| matches!(e.kind, TaskEventKind::Started))
        .await;
    // No fanout: only the mark, which the agent reads when it renews its claim.
    world.mark_cancelled(&dispatch).await;
    world
        .wait_for_outcome(&agent, "backend", "cancelled", 1)
        .await;
    world.drain(Duration::from_secs(1)).await;
    assert_eq!(world.count(&dispatch.task.uid, "task.succeeded"), 0);
    assert_eq!(world.commits_of(&dispatch), 0, "nothing was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_survives_a_redis_restart_that_loses_its_claim() {
    let mut world = World::new("agent-redis-restart").await;
    world
        .answer(
            "Outlive Redis",
            &work_answer("Still here.", &[("outlived.txt", "yes\n")]),
            None,
            Duration::from_secs(8),
        )
        .await;
    let mut redis = OwnRedis::start(world.dir.path());
    let agent = world.agent(
        "backend",
        &[
            ("AIOS_REDIS_URL", &redis.url),
            ("AIOS_CLAIM_LEASE_SECONDS", "3"),
        ],
    );
    agent.wait_ready(WAIT).await;
    let dispatch = world.dispatch("shop-outlive", "backend", "Outlive Redis");
    world.publish(&dispatch).await;
    world
        .wait_for(WAIT, |e| matches!(e.kind, TaskEventKind::Started))
        .await;
    // Redis comes back empty while the model thinks: the claim is gone, not taken.
    redis.restart();
    let done = world.wait_for(WAIT, is_terminal).await;
    assert!(
        matches!(done.kind, TaskEventKind::Succeeded { .. }),
        "the attempt finished here rather than being abandoned: {done:?}\n{}",
        agent.log_tail()
    );
    world.drain(Duration::from_secs(1)).await;
    assert_eq!(world.commits_of(&dispatch), 1);
    redis.stop();
}
