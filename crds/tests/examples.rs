//! Every manifest in manifests/examples parses into the types, and every manifest in
//! manifests/examples/invalid says which rule it breaks and what the refusal says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{fs, path::PathBuf};

use aios_crds::{Agent, ModelProvider, Project, Task};
use serde::Deserialize;
use serde_json::Value;

fn examples_dir() -> PathBuf {
    // At run time: the build cache may be shared with another clone.
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../manifests/examples")
}

fn yaml_files(dir: &PathBuf) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &PathBuf) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn every_valid_example_parses_into_its_type() {
    let mut kinds = Vec::new();
    for path in yaml_files(&examples_dir()) {
        for doc in documents(&path) {
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            let parsed = match kind.as_str() {
                "Project" => serde_json::from_value::<Project>(doc).map(drop),
                "Task" => serde_json::from_value::<Task>(doc).map(drop),
                "Agent" => serde_json::from_value::<Agent>(doc).map(drop),
                "ModelProvider" => serde_json::from_value::<ModelProvider>(doc).map(drop),
                other => panic!("{}: unexpected kind {other:?}", path.display()),
            };
            parsed.unwrap_or_else(|e| panic!("{} ({kind}) does not parse: {e}", path.display()));
            kinds.push(kind);
        }
    }
    for kind in ["Project", "Agent", "ModelProvider"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} example");
    }
    assert!(kinds.iter().filter(|k| *k == "Project").count() >= 3);
    assert_eq!(
        kinds.iter().filter(|k| *k == "Agent").count(),
        5,
        "the pantheon has five Agents"
    );
}

#[test]
fn the_diamond_example_is_a_diamond() {
    let project: Project =
        serde_json::from_value(documents(&examples_dir().join("project-diamond.yaml")).remove(0))
            .unwrap();
    let tasks = project.spec.tasks.as_deref().unwrap();
    let deps = |name: &str| {
        project
            .spec_task(name)
            .unwrap()
            .depends_on
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(tasks.len(), 4);
    assert!(deps("design-api").is_empty());
    assert_eq!(deps("build-api"), ["design-api"]);
    assert_eq!(deps("build-ui"), ["design-api"]);
    assert_eq!(deps("test-app"), ["build-api", "build-ui"]);
}

#[test]
fn every_invalid_example_names_its_rule_and_message() {
    let files = yaml_files(&examples_dir().join("invalid"));
    assert!(
        files.len() >= 12,
        "expected one invalid manifest per rule, found {}",
        files.len()
    );
    for path in files {
        let text = fs::read_to_string(&path).unwrap();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .map(str::to_owned)
        };
        assert!(
            header("breaks").is_some(),
            "{} has no '# breaks:' line",
            path.display()
        );
        assert!(
            header("message").is_some(),
            "{} has no '# message:' line",
            path.display()
        );
    }
}
