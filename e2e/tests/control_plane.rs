//! The local control plane is a real Kubernetes API server, and the AIOS API types work
//! on it: the CRDs install and become Established, the examples are accepted, every
//! invalid example is refused with its rule's message, kubectl shows the printer columns
//! and the field docs, and status is written only through the status subresource.
//!
//! The tests share one environment (`aios_e2e::shared`), each in its own namespace.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{fs, path::PathBuf};

use aios_e2e::{Environment, repo_root};

/// The shared environment with the CRDs installed (once per test binary).
fn env() -> &'static Environment {
    aios_e2e::shared_with_crds()
}

fn yaml_files(dir: PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// A backend Task of `project`, with `extra_metadata` (indented YAML) under metadata.
fn task_manifest(name: &str, project: &str, extra_metadata: &str) -> String {
    format!(
        "apiVersion: aios.dev/v1alpha1\nkind: Task\nmetadata:\n  name: {name}\n{extra_metadata}\
         spec:\n  project: {project}\n  title: Build the API\n  role: backend\n"
    )
}

#[test]
fn crds_apply_server_side_and_become_established() {
    let env = env();
    // Applying again is idempotent, and server-side.
    let out = env.install_crds().unwrap();
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("serverside-applied"))
            .count(),
        4,
        "{out}"
    );
    for crd in [
        "projects.aios.dev",
        "tasks.aios.dev",
        "agents.aios.dev",
        "modelproviders.aios.dev",
    ] {
        let established = env
            .kubectl(&[
                "get",
                "crd",
                crd,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ])
            .unwrap();
        assert_eq!(established, "True", "{crd} is not Established");
        let managers = env
            .kubectl(&[
                "get",
                "crd",
                crd,
                "--show-managed-fields",
                "-o",
                "jsonpath={.metadata.managedFields[*].operation}",
            ])
            .unwrap();
        assert!(
            managers.contains("Apply"),
            "{crd} was not server-side applied: {managers}"
        );
    }
    // The API answers for the new resources, under the aios category too.
    let ns = env.create_namespace("crds").unwrap();
    let out = env
        .kubectl(&["get", "aios", "-n", &ns])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.trim().is_empty(),
        "a fresh namespace has no AIOS objects: {out}"
    );
}

#[test]
fn every_example_passes_server_side_dry_run() {
    let env = env();
    let ns = env.create_namespace("examples").unwrap();
    for file in yaml_files(repo_root().join("manifests/examples")) {
        let out = env
            .kubectl(&[
                "apply",
                "--dry-run=server",
                "-n",
                &ns,
                "-f",
                file.to_str().unwrap(),
            ])
            .unwrap_or_else(|e| panic!("{} was refused: {e}", file.display()));
        assert!(
            out.contains("(server dry run)"),
            "{}: {out}",
            file.display()
        );
    }
}

#[test]
fn every_invalid_example_is_refused_with_its_rules_message() {
    let env = env();
    let ns = env.create_namespace("invalid").unwrap();
    let files = yaml_files(repo_root().join("manifests/examples/invalid"));
    assert!(!files.is_empty());
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        let message = text
            .lines()
            .find_map(|l| l.strip_prefix("# message: "))
            .unwrap();
        let documents: Vec<&str> = text.split("\n---\n").collect();
        // Every document but the last sets the scene (e.g. creates the object an update
        // then breaks); it must be accepted.
        for setup in &documents[..documents.len() - 1] {
            env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(setup))
                .unwrap_or_else(|e| panic!("{}: setup document refused: {e}", file.display()));
        }
        let last = documents[documents.len() - 1];
        let out = env
            .kubectl_output(&["apply", "-n", &ns, "-f", "-"], Some(last))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{} was accepted: {}",
            file.display(),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(message),
            "{}: refusal does not carry {message:?}:\n{stderr}",
            file.display()
        );
    }
}

#[test]
fn kubectl_get_prints_the_printer_columns() {
    let env = env();
    let ns = env.create_namespace("columns").unwrap();
    let diamond = repo_root().join("manifests/examples/project-diamond.yaml");
    env.kubectl(&["apply", "-n", &ns, "-f", diamond.to_str().unwrap()])
        .unwrap();
    let task = task_manifest("todo-app-design-api", "todo-app", "");
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&task))
        .unwrap();

    let projects = env.kubectl(&["get", "projects", "-n", &ns]).unwrap();
    let header: Vec<&str> = projects
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "PHASE", "PROGRESS", "AGE"], "{projects}");
    assert!(projects.contains("todo-app"), "{projects}");

    let tasks = env.kubectl(&["get", "tasks", "-n", &ns]).unwrap();
    let header: Vec<&str> = tasks.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "PROJECT", "ROLE", "PHASE", "AGENT", "ATTEMPT", "AGE"
        ],
        "{tasks}"
    );
    let row: Vec<&str> = tasks.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..3],
        ["todo-app-design-api", "todo-app", "backend"],
        "{tasks}"
    );

    let wide = env
        .kubectl(&["get", "proj", "-n", &ns, "-o", "wide"])
        .unwrap();
    assert!(wide.lines().next().unwrap().contains("COST"), "{wide}");
}

#[test]
fn kubectl_explain_prints_the_field_docs() {
    let env = env();
    let out = env
        .kubectl(&["explain", "project.spec.description"])
        .unwrap();
    assert!(
        out.contains("The brief: what to build, in plain language."),
        "{out}"
    );
    let out = env.kubectl(&["explain", "task.spec.dependsOn"]).unwrap();
    assert!(out.contains("must succeed"), "{out}");
    let out = env
        .kubectl(&["explain", "modelprovider.spec.serve"])
        .unwrap();
    assert!(out.contains("Ollama"), "{out}");
}

#[test]
fn task_status_is_written_only_through_the_status_subresource() {
    let env = env();
    let ns = env.create_namespace("status").unwrap();
    let task = task_manifest("shop-api", "shop", "");
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&task))
        .unwrap();
    let phase = || {
        env.kubectl(&[
            "get",
            "task",
            "shop-api",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase}",
        ])
        .unwrap()
    };

    // A patch of the main resource may carry a status, but the server drops it.
    env.kubectl(&[
        "patch",
        "task",
        "shop-api",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Succeeded"}}"#,
    ])
    .unwrap();
    assert_eq!(phase(), "", "status changed through the main resource");

    env.kubectl(&[
        "patch",
        "task",
        "shop-api",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","attempt":1}}"#,
    ])
    .unwrap();
    assert_eq!(phase(), "Running");

    // And the status subresource does not write the spec.
    env.kubectl(&[
        "patch",
        "task",
        "shop-api",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"spec":{"title":"Changed"}}"#,
    ])
    .unwrap();
    let title = env
        .kubectl(&[
            "get",
            "task",
            "shop-api",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.title}",
        ])
        .unwrap();
    assert_eq!(title, "Build the API");
}

#[test]
fn garbage_collection_removes_tasks_owned_by_a_deleted_project() {
    // kube-controller-manager is part of the environment: owned objects go with their owner.
    let env = env();
    let ns = env.create_namespace("gc").unwrap();
    let project = "apiVersion: aios.dev/v1alpha1\nkind: Project\nmetadata:\n  name: shop\nspec:\n  description: A shop\n  repository:\n    url: file:///tmp/shop.git\n";
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(project))
        .unwrap();
    let uid = env
        .kubectl(&[
            "get",
            "project",
            "shop",
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .unwrap();
    let owner = format!(
        "  ownerReferences:\n  - apiVersion: aios.dev/v1alpha1\n    kind: Project\n    name: shop\n    uid: {uid}\n"
    );
    let task = task_manifest("shop-api", "shop", &owner);
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&task))
        .unwrap();
    env.kubectl(&["delete", "project", "shop", "-n", &ns, "--wait=true"])
        .unwrap();
    env.kubectl(&[
        "wait",
        "--for=delete",
        "task/shop-api",
        "-n",
        &ns,
        "--timeout=60s",
    ])
    .unwrap_or_else(|e| panic!("the owned Task was not garbage collected: {e}"));
}
