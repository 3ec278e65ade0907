//! Delivery into a local bare repository through the real git code, with no broker:
//! several deliverers (one `Git` each, as separate agent processes have) pushing to one
//! branch at once, and two tasks that change the same lines.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{path::Path, time::Duration};

use aios_agent::{
    git::{Delivered, DeliveryError, Git},
    metrics::Metrics,
    output::FileOutput,
    persona,
};
use aios_crds::project::Repository;
use support::{commits, commits_with_attempt, file_on_main, seeded_repository};

const MAX_FILE_BYTES: u64 = 1024 * 1024;

fn repository(repo: &Path) -> Repository {
    Repository {
        url: format!("file://{}", repo.display()),
        branch: "main".to_owned(),
        secret_ref: None,
    }
}

/// One deliverer: its own work directory and in-process push lock, like one agent.
fn deliverer(root: &Path, metrics: &Metrics) -> Git {
    Git::new(
        root.to_path_buf(),
        MAX_FILE_BYTES,
        Duration::from_secs(120),
        metrics.push_rejections.clone(),
    )
}

/// Opens the branch and delivers `files` as attempt `attempt` of `task`.
async fn deliver(
    git: &Git,
    repository: &Repository,
    task: &str,
    attempt: &str,
    files: &[(&str, &str)],
) -> Result<Delivered, DeliveryError> {
    let workspace = git.open(repository, None).await?;
    let files: Vec<FileOutput> = files
        .iter()
        .map(|(path, content)| FileOutput {
            path: (*path).to_owned(),
            content: (*content).to_owned(),
        })
        .collect();
    workspace
        .deliver(
            &files,
            &persona::built_in("backend"),
            task,
            "Done.",
            &format!("tests/{task}"),
            attempt,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliverers_racing_on_one_branch_all_land_in_their_first_attempt() {
    const DELIVERERS: usize = 4;
    const TASKS_EACH: usize = 15;
    let dir = tempfile::tempdir().unwrap();
    let repo = seeded_repository(dir.path());
    let repository = repository(&repo);
    let metrics = Metrics::new();
    let runs = (0..DELIVERERS).map(|agent| {
        let git = deliverer(&dir.path().join(format!("agent-{agent}")), &metrics);
        let repository = repository.clone();
        async move {
            let mut outcomes = Vec::new();
            for task in 0..TASKS_EACH {
                let name = format!("task-{agent}-{task}");
                let path = format!("src/{name}.txt");
                let outcome = deliver(
                    &git,
                    &repository,
                    &name,
                    &format!("{name}-uid-1"),
                    &[(&path, &format!("{name}\n"))],
                )
                .await;
                outcomes.push((name, outcome));
            }
            outcomes
        }
    });
    let outcomes: Vec<_> = futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();

    let failed: Vec<_> = outcomes
        .iter()
        .filter_map(|(name, outcome)| outcome.as_ref().err().map(|e| format!("{name}: {e}")))
        .collect();
    assert!(failed.is_empty(), "every attempt lands: {failed:#?}");
    for (name, outcome) in &outcomes {
        let delivered = outcome.as_ref().unwrap();
        assert_eq!(
            commits_with_attempt(&repo, &format!("{name}-uid-1")),
            1,
            "one commit for {name}"
        );
        assert_eq!(delivered.files, [format!("src/{name}.txt")]);
        let subject = support::git(&repo, &["log", "-1", "--format=%s", &delivered.commit]);
        assert_eq!(
            subject.trim(),
            name,
            "the reported commit is the task's own"
        );
        assert_eq!(
            file_on_main(&repo, &format!("src/{name}.txt")),
            Some(format!("{name}\n"))
        );
    }
    assert_eq!(commits(&repo).len(), 1 + DELIVERERS * TASKS_EACH);
    assert!(
        metrics.push_rejections.get() > 0,
        "the deliverers did race: some pushes were rejected and rebased"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_writing_the_same_content_each_keep_their_own_commit() {
    let dir = tempfile::tempdir().unwrap();
    let repo = seeded_repository(dir.path());
    let repository = repository(&repo);
    let metrics = Metrics::new();
    let (one, two) = (
        deliverer(&dir.path().join("one"), &metrics),
        deliverer(&dir.path().join("two"), &metrics),
    );
    // Both work trees start from the seed, so the second push is rejected and rebased
    // onto a branch that already has exactly its change.
    let first = one.open(&repository, None).await.unwrap();
    let second = two.open(&repository, None).await.unwrap();
    let file = [FileOutput {
        path: "VERSION".to_owned(),
        content: "1.0\n".to_owned(),
    }];
    let author = persona::built_in("backend");
    let a = first
        .deliver(&file, &author, "One", "Done.", "tests/one", "one-uid-1")
        .await
        .unwrap();
    let b = second
        .deliver(&file, &author, "Two", "Done.", "tests/two", "two-uid-1")
        .await
        .unwrap();
    assert_ne!(a.commit, b.commit, "each task reports its own commit");
    assert_eq!(commits_with_attempt(&repo, "one-uid-1"), 1);
    assert_eq!(commits_with_attempt(&repo, "two-uid-1"), 1);
    assert_eq!(
        support::git(&repo, &["rev-parse", "main"]).trim(),
        b.commit,
        "the later delivery is the branch's tip"
    );
    assert_eq!(metrics.push_rejections.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_that_keeps_moving_fails_the_delivery_at_the_push_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let repo = seeded_repository(dir.path());
    let repository = repository(&repo);
    let metrics = Metrics::new();
    let late = Git::new(
        dir.path().join("late"),
        MAX_FILE_BYTES,
        Duration::ZERO,
        metrics.push_rejections.clone(),
    );
    let workspace = late.open(&repository, None).await.unwrap();
    deliver(
        &deliverer(&dir.path().join("early"), &metrics),
        &repository,
        "early",
        "early-uid-1",
        &[("early.txt", "early\n")],
    )
    .await
    .unwrap();
    let err = workspace
        .deliver(
            &[FileOutput {
                path: "late.txt".to_owned(),
                content: "late\n".to_owned(),
            }],
            &persona::built_in("backend"),
            "Late",
            "Done.",
            "tests/late",
            "late-uid-1",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, DeliveryError::PushDeadline { rejected: 1, .. }),
        "{err:?}"
    );
    assert_eq!(err.reason(), "DeliveryFailed");
    assert!(err.retryable());
    assert_eq!(commits_with_attempt(&repo, "late-uid-1"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_conflict_still_fails_the_delivery_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let repo = seeded_repository(dir.path());
    let repository = repository(&repo);
    let metrics = Metrics::new();
    let (one, two) = (
        deliverer(&dir.path().join("one"), &metrics),
        deliverer(&dir.path().join("two"), &metrics),
    );
    // Both start from the seed and change the README's only line differently.
    let first = one.open(&repository, None).await.unwrap();
    let second = two.open(&repository, None).await.unwrap();
    let author = persona::built_in("backend");
    let readme = |content: &str| {
        [FileOutput {
            path: "README.md".to_owned(),
            content: content.to_owned(),
        }]
    };
    first
        .deliver(
            &readme("# shop\n"),
            &author,
            "Name it shop",
            "Done.",
            "tests/one",
            "one-uid-1",
        )
        .await
        .unwrap();
    let err = second
        .deliver(
            &readme("# store\n"),
            &author,
            "Name it store",
            "Done.",
            "tests/two",
            "two-uid-1",
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Conflict { paths } if paths == &["README.md"]),
        "{err:?}"
    );
    assert_eq!(err.reason(), "DeliveryConflict");
    assert!(err.to_string().contains("README.md"), "{err}");
    assert_eq!(
        file_on_main(&repo, "README.md").as_deref(),
        Some("# shop\n")
    );
    assert_eq!(commits(&repo).len(), 2, "the seed and the one that landed");
    assert_eq!(commits_with_attempt(&repo, "two-uid-1"), 0);
}
