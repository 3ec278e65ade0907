//! The generated schemas are structural, documented, and every printer column points at
//! a field that exists.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use aios_crds::generate;
use serde_json::Value;

fn schema_of(kind: &str) -> Value {
    let crd = generate::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    let schema = crd.spec.versions[0]
        .schema
        .clone()
        .unwrap()
        .open_api_v3_schema
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

const KINDS: [&str; 4] = ["Project", "Task", "Agent", "ModelProvider"];

/// Walks a schema node and its children, calling `visit` with each node and its path.
fn walk(node: &Value, path: &str, visit: &mut dyn FnMut(&str, &Value)) {
    visit(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(child, &format!("{path}.{name}"), visit);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}[]"), visit);
    }
    if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(extra, &format!("{path}{{}}"), visit);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for (i, child) in node
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            walk(child, &format!("{path}<{key}{i}>"), visit);
        }
    }
}

#[test]
fn schemas_are_structural() {
    for kind in KINDS {
        let schema = schema_of(kind);
        let mut problems = Vec::new();
        walk(&schema, kind, &mut |path, node| {
            let preserve =
                node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
            let in_combinator = path.ends_with('>');
            if node.get("type").is_none() && !preserve && !int_or_string && !in_combinator {
                problems.push(format!("{path}: no type"));
            }
            if node.get("type") == Some(&Value::String("object".into()))
                && node.get("properties").is_none()
                && node.get("additionalProperties").is_none()
                && !preserve
            {
                problems.push(format!(
                    "{path}: untyped object without x-kubernetes-preserve-unknown-fields"
                ));
            }
            for key in ["$ref", "definitions", "$defs"] {
                if node.get(key).is_some() {
                    problems.push(format!("{path}: has {key}, which CRD schemas do not allow"));
                }
            }
        });
        assert!(
            problems.is_empty(),
            "{kind} schema is not structural:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn every_spec_field_is_documented() {
    for kind in KINDS {
        let schema = schema_of(kind);
        let mut undocumented = Vec::new();
        walk(
            &schema["properties"]["spec"],
            &format!("{kind}.spec"),
            &mut |path, node| {
                let is_field =
                    !path.ends_with("[]") && !path.ends_with('}') && !path.ends_with('>');
                if is_field && node.get("description").is_none() {
                    undocumented.push(path.to_owned());
                }
            },
        );
        assert!(
            undocumented.is_empty(),
            "fields without a description (kubectl explain text):\n{}",
            undocumented.join("\n")
        );
    }
}

#[test]
fn printer_columns_name_fields_that_exist() {
    for crd in generate::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = schema_of(&kind);
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        assert!(!columns.is_empty(), "{kind} has no printer columns");
        for column in columns {
            let path = column.json_path.trim_start_matches('.');
            let mut segments = path.split('.');
            let first = segments.next().unwrap();
            if first == "metadata" {
                let field = segments.next().unwrap();
                assert!(
                    ["name", "namespace", "creationTimestamp", "generation"].contains(&field),
                    "{kind} column {} names metadata.{field}",
                    column.name
                );
                continue;
            }
            let mut node = &schema["properties"][first];
            for segment in segments {
                node = &node["properties"][segment];
            }
            assert!(
                node.is_object(),
                "{kind} column {} names {} which is not in the schema",
                column.name,
                column.json_path
            );
            let schema_type = node["type"].as_str().unwrap_or_default();
            let compatible = match column.type_.as_str() {
                "integer" => schema_type == "integer",
                "number" => schema_type == "number" || schema_type == "integer",
                "boolean" => schema_type == "boolean",
                _ => schema_type == "string",
            };
            assert!(
                compatible,
                "{kind} column {} is {} but {} is {schema_type}",
                column.name, column.type_, column.json_path
            );
        }
    }
}

#[test]
fn task_project_is_immutable_and_self_dependency_is_refused_in_the_schema() {
    let task = schema_of("Task");
    let project_rules =
        task["properties"]["spec"]["properties"]["project"]["x-kubernetes-validations"].to_string();
    assert!(project_rules.contains("self == oldSelf"), "{project_rules}");
    let root_rules = task["x-kubernetes-validations"].to_string();
    assert!(root_rules.contains("self.metadata.name"), "{root_rules}");
}

#[test]
fn the_schemas_take_their_bounds_from_the_plan_limits() {
    use aios_crds::limits::{self, EXPLICIT_PLAN, HERA_PLAN};
    let task = schema_of("Task");
    let spec = &task["properties"]["spec"]["properties"];
    assert_eq!(spec["dependsOn"]["maxItems"], HERA_PLAN.dependencies);
    assert_eq!(spec["title"]["maxLength"], limits::TITLE_MAX_CHARS);
    assert_eq!(spec["title"]["minLength"], 1);
    assert_eq!(
        spec["description"]["maxLength"],
        limits::DESCRIPTION_MAX_CHARS
    );
    assert_eq!(
        spec["acceptanceCriteria"]["maxItems"],
        limits::ACCEPTANCE_CRITERIA_MAX
    );
    assert_eq!(
        spec["maxRetries"]["maximum"].as_f64(),
        Some(f64::from(limits::RETRIES_MAX))
    );
    let result = &task["properties"]["status"]["properties"]["result"]["properties"];
    assert!(
        result.get("plan").is_none(),
        "a plan is kept apart, not in a Task's status, where the object's size limit would cap it: {result}"
    );
    assert_eq!(
        result["planRef"]["properties"]["configMaps"]["maxItems"],
        limits::PLAN_PARTS_MAX
    );

    let project = schema_of("Project");
    let tasks = &project["properties"]["spec"]["properties"]["tasks"];
    assert_eq!(tasks["maxItems"], EXPLICIT_PLAN.tasks);
    let planned = &tasks["items"]["properties"];
    assert_eq!(planned["dependsOn"]["maxItems"], EXPLICIT_PLAN.dependencies);
    assert_eq!(planned["title"]["maxLength"], limits::TITLE_MAX_CHARS);
    assert_eq!(
        planned["description"]["maxLength"],
        limits::DESCRIPTION_MAX_CHARS
    );
}
