//! What a model must answer, as JSON schemas sent with the request, and the checks an
//! answer passes before anything acts on it.

use std::collections::BTreeSet;

use aios_crds::{PlannedTask, limits::HERA_PLAN, plan::validate_plan};
use serde::Deserialize;
use serde_json::{Value, json};

/// A work task's answer: files to deliver and what was done.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkOutput {
    /// What was done, in a few sentences.
    pub summary: String,
    /// The files to write whole, relative to the repository root.
    pub files: Vec<FileOutput>,
    /// Changes to files the model was shown, applied by [`crate::edit::resolve`].
    #[serde(default)]
    pub edits: Vec<EditOutput>,
    /// Anything people or later tasks should know.
    #[serde(default)]
    pub notes: Option<String>,
}

/// One search-and-replace block of a work task's answer: the one place in `path` where
/// `search` occurs, byte for byte, becomes `replace`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EditOutput {
    /// The file, relative to the repository root. Untrusted: checked before writing.
    pub path: String,
    /// The text to replace, exactly as the file has it.
    pub search: String,
    /// What it becomes.
    pub replace: String,
}

/// One file of a work task's answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileOutput {
    /// Where, relative to the repository root. Untrusted: checked before writing.
    pub path: String,
    /// The whole content.
    pub content: String,
}

#[derive(Debug, Deserialize)]
struct PlanOutput {
    tasks: Vec<PlannedTask>,
}

/// Paths the schema allows: relative, each part starting with a letter, digit or `_`
/// (so no `/` at the start, no `..`, no `.git`). Schema-constrained decoding then keeps
/// even a small model inside the work tree; delivery checks every path again.
pub const SAFE_PATH_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$";

/// The JSON schema of a work task's answer: whole `files` (an empty list when the
/// answer only edits) and optional search-and-replace `edits`.
pub fn work_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "summary": {"type": "string"},
            "files": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "pattern": SAFE_PATH_PATTERN},
                        "content": {"type": "string"}
                    },
                    "required": ["path", "content"]
                }
            },
            "edits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "pattern": SAFE_PATH_PATTERN},
                        "search": {"type": "string"},
                        "replace": {"type": "string"}
                    },
                    "required": ["path", "search", "replace"]
                }
            },
            "notes": {"type": "string"}
        },
        "required": ["summary", "files"]
    })
}

/// The JSON schema of a plan: roles limited to those the dispatch lists (when it lists
/// any), so a schema-constrained model cannot name another. The plan limits are not in
/// it: a constrained decoder turns a bound into as many copies of a grammar rule (with a
/// 32,768-character description, Ollama's refuses the grammar as having too many
/// repetitions and its model runner stops), so sizes are checked after the answer, with
/// a repair request.
pub fn plan_schema(roles: &[String]) -> Value {
    let role = if roles.is_empty() {
        json!({"type": "string"})
    } else {
        json!({"type": "string", "enum": roles})
    };
    json!({
        "type": "object",
        "properties": {
            "tasks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                        "title": {"type": "string"},
                        "role": role,
                        "description": {"type": "string"},
                        "dependsOn": {"type": "array", "items": {"type": "string"}},
                        "complexity": {"type": "string", "enum": ["Low", "Medium", "High"]},
                        "acceptanceCriteria": {"type": "array", "items": {"type": "string"}}
                    },
                    "required": ["name", "title", "role", "description", "dependsOn"]
                }
            }
        },
        "required": ["tasks"]
    })
}

/// Models sometimes wrap JSON in a Markdown fence despite the schema; take what is
/// inside.
fn strip_fence(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// What checking a model's answer found.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked<T> {
    /// It passed.
    Good(T),
    /// It can be used, but has problems (a sentence for the repair request); if the
    /// repair has problems too it is used as it is, for another to judge.
    Flawed(T, String),
    /// It cannot be used (a sentence for the repair request).
    Unusable(String),
    /// It cannot be used, for a reason that is a refusal rather than a slip (the
    /// Task's failure reason, and a sentence for the repair request): if the repair is
    /// refused too, the attempt fails with that reason and is not retried.
    Refused(&'static str, String),
}

impl<T> Checked<T> {
    /// The answer, if it can be used at all.
    pub fn usable(self) -> Option<T> {
        match self {
            Self::Good(value) | Self::Flawed(value, _) => Some(value),
            Self::Unusable(_) | Self::Refused(..) => None,
        }
    }
}

impl<T> From<Result<T, String>> for Checked<T> {
    fn from(checked: Result<T, String>) -> Self {
        match checked {
            Ok(value) => Self::Good(value),
            Err(problem) => Self::Unusable(problem),
        }
    }
}

/// Parses and checks a work task's answer on its own; the error is a sentence for the
/// repair request. Whether its edits apply and whether it may write its files depends
/// on what the model was shown: [`crate::edit::resolve`] checks that.
pub fn parse_work(text: &str) -> Result<WorkOutput, String> {
    let output: WorkOutput = serde_json::from_str(strip_fence(text))
        .map_err(|err| format!("the answer is not the JSON object asked for: {err}"))?;
    if output.summary.trim().is_empty() {
        return Err("the summary is empty".to_owned());
    }
    if output.files.is_empty() && output.edits.is_empty() {
        return Err(
            "the answer has no files and no edits; a work task must deliver at least one"
                .to_owned(),
        );
    }
    let mut seen = BTreeSet::new();
    for file in &output.files {
        if file.path.trim().is_empty() {
            return Err("a file has an empty path".to_owned());
        }
        if !seen.insert(file.path.as_str()) {
            return Err(format!("the file {:?} appears more than once", file.path));
        }
    }
    if output.edits.iter().any(|edit| edit.path.trim().is_empty()) {
        return Err("an edit has an empty path".to_owned());
    }
    Ok(output)
}

/// Parses a plan and checks it with the operator's rules: names, known and acyclic
/// dependencies, the plan limits, and roles among `roles` (when the dispatch lists
/// any). A plan that breaks a rule — a dependency on a task the plan does not have
/// included: the plan would otherwise run as a different DAG than it says — is
/// [`Checked::Flawed`]: the model is asked to repair it, and if it cannot, Hera judges
/// it; an answer that is not a plan is [`Checked::Unusable`]. A plan that passes comes
/// back with each task after its dependencies.
pub fn parse_plan(project: &str, roles: &[String], text: &str) -> Checked<Vec<PlannedTask>> {
    let output: PlanOutput = match serde_json::from_str(strip_fence(text)) {
        Ok(output) => output,
        Err(err) => {
            return Checked::Unusable(format!(
                "the answer is not the plan object asked for: {err}"
            ));
        }
    };
    let served: BTreeSet<String> = roles.iter().cloned().collect();
    let served = (!served.is_empty()).then_some(&served);
    match validate_plan(project, &output.tasks, served, &HERA_PLAN) {
        Ok(plan) => Checked::Good(plan.tasks),
        Err(errors) => Checked::Flawed(
            output.tasks,
            format!(
                "the plan is invalid: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_answer_parses_even_inside_a_fence_and_is_checked() {
        let text = "```json\n{\"summary\":\"added\",\"files\":[{\"path\":\"a.py\",\"content\":\"x\"}]}\n```";
        let output = parse_work(text).unwrap();
        assert_eq!(output.files[0].path, "a.py");
        assert!(
            parse_work("not json")
                .unwrap_err()
                .contains("not the JSON object")
        );
        assert!(
            parse_work(r#"{"summary":"","files":[{"path":"a","content":""}]}"#)
                .unwrap_err()
                .contains("summary is empty")
        );
        assert!(
            parse_work(r#"{"summary":"s","files":[]}"#)
                .unwrap_err()
                .contains("no files and no edits")
        );
        let edits_only = parse_work(
            r#"{"summary":"s","files":[],"edits":[{"path":"a","search":"x","replace":"y"}]}"#,
        )
        .unwrap();
        assert_eq!(edits_only.edits[0].replace, "y");
        assert!(
            parse_work(
                r#"{"summary":"s","files":[],"edits":[{"path":" ","search":"x","replace":"y"}]}"#
            )
            .unwrap_err()
            .contains("an edit has an empty path")
        );
        assert!(
            parse_work(
                r#"{"summary":"s","files":[{"path":"a","content":""},{"path":"a","content":""}]}"#
            )
            .unwrap_err()
            .contains("more than once")
        );
    }

    /// The plan of an answer that passed.
    fn good(checked: Checked<Vec<PlannedTask>>) -> Vec<PlannedTask> {
        match checked {
            Checked::Good(plan) => plan,
            other => panic!("{other:?}"),
        }
    }

    /// The problems of an answer that did not pass, and whether it is usable.
    fn problems(checked: Checked<Vec<PlannedTask>>) -> (String, bool) {
        match checked {
            Checked::Good(plan) => panic!("passed: {plan:?}"),
            Checked::Flawed(_, problems) => (problems, true),
            Checked::Unusable(problem) | Checked::Refused(_, problem) => (problem, false),
        }
    }

    const GOOD: &str = r#"{"tasks":[
            {"name":"api","title":"API","role":"backend","description":"d","dependsOn":[]},
            {"name":"tests","title":"Tests","role":"qa","description":"d","dependsOn":["api"]}]}"#;

    #[test]
    fn a_plan_is_held_to_the_operators_rules_and_the_listed_roles() {
        let roles = vec!["backend".to_owned(), "qa".to_owned()];
        let plan = good(parse_plan("shop", &roles, GOOD));
        assert_eq!(plan.len(), 2);
        let duplicate = GOOD.replace(r#""name":"tests""#, r#""name":"api""#);
        let (found, usable) = problems(parse_plan("shop", &roles, &duplicate));
        assert!(found.contains("more than once") && usable, "{found}");
        let unknown_role = GOOD.replace("\"qa\"", "\"security\"");
        let (found, _) = problems(parse_plan("shop", &roles, &unknown_role));
        assert!(found.contains("\"security\""), "{found}");
        let bad_name = GOOD.replace("\"api\"", "\"The API\"");
        let (found, usable) = problems(parse_plan("shop", &roles, &bad_name));
        assert!(found.contains("not the plan") && !usable, "{found}");
        let schema = plan_schema(&roles);
        let task = &schema["properties"]["tasks"]["items"]["properties"];
        assert_eq!(task["role"]["enum"][1], "qa");
        let text = schema.to_string();
        assert!(
            !text.contains("maxItems") && !text.contains("maxLength"),
            "no bounds for a constrained decoder to expand: {text}"
        );
    }

    #[test]
    fn a_dependency_on_no_task_of_the_plan_is_a_problem_not_dropped() {
        let roles = vec!["backend".to_owned(), "qa".to_owned()];
        let dangling = GOOD.replace(
            r#""dependsOn":["api"]"#,
            r#""dependsOn":["api","backend","tests"]"#,
        );
        let Checked::Flawed(plan, found) = parse_plan("shop", &roles, &dangling) else {
            panic!("a dangling dependency is a plan problem")
        };
        assert!(
            found.contains("task \"tests\" depends on \"backend\", which is not in the plan"),
            "{found}"
        );
        assert!(
            found.contains("task \"tests\" depends on itself"),
            "{found}"
        );
        assert_eq!(
            plan[1].depends_on,
            ["api", "backend", "tests"],
            "the plan as the model wrote it, nothing dropped"
        );
    }

    #[test]
    fn a_cyclic_plan_is_flawed_not_unusable_so_hera_gets_to_judge_it() {
        let roles = vec!["backend".to_owned(), "qa".to_owned()];
        let cyclic = GOOD.replace(
            r#""name":"api","title":"API","role":"backend","description":"d","dependsOn":[]"#,
            r#""name":"api","title":"API","role":"backend","description":"d","dependsOn":["tests"]"#,
        );
        let Checked::Flawed(plan, found) = parse_plan("shop", &roles, &cyclic) else {
            panic!("a cyclic plan is a plan with problems")
        };
        assert!(found.contains("in a cycle"), "{found}");
        assert_eq!(plan.len(), 2, "the plan as the model wrote it");
        assert_eq!(plan[0].depends_on[0], "tests");
    }
}
