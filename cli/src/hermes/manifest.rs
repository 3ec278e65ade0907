//! The Project manifest Hermes proposes: built from what the user said and the model's
//! draft, then checked against the Project CRD's own OpenAPI schema. Pure.

use aios_crds::{Project, common::DnsLabel};
use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::{Value, json};

/// The longest Project name Hermes proposes: Task names add `-<task>` to it.
pub const NAME_MAX: usize = 40;

/// What the user told Hermes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// What to build, in their words.
    pub brief: String,
    /// Hermes' clarifying questions and their answers.
    pub answers: Vec<(String, String)>,
    /// The git repository to deliver into.
    pub repository: String,
    /// Its branch.
    pub branch: String,
    /// The namespace the Project goes to.
    pub namespace: String,
    /// A name the user chose (`--name`).
    pub name: Option<String>,
    /// How to test the delivered code, when the user said (`--test-command`).
    pub test_command: Option<String>,
}

impl Facts {
    /// Everything the user wrote: the brief and their answers.
    pub fn user_words(&self) -> String {
        let mut words = self.brief.clone();
        for (_, answer) in &self.answers {
            words.push('\n');
            words.push_str(answer);
        }
        words
    }
}

/// The model's draft: the parts of the manifest it writes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Draft {
    /// A short name for the Project.
    pub name: String,
    /// The brief, complete and specific: what the agents plan from.
    pub description: String,
    /// How to test the delivered code, when the user named it.
    #[serde(default)]
    pub test_command: Option<String>,
}

/// A manifest Hermes proposes: only the fields the user and the model set (the API
/// server fills the defaults, and a server-side apply owns no more than was said), and
/// its typed form.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// What is printed, written and applied.
    pub object: Value,
    /// The same, as the Project it is.
    pub project: Project,
}

/// The JSON schema the model's draft must match.
pub fn draft_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "lower-case letters, digits and '-', at most 40 characters"},
            "description": {"type": "string", "description": "the complete brief the agents plan from"},
            "testCommand": {"type": "string", "description": "the shell command that runs the tests, only if the user named one; else empty"}
        },
        "required": ["name", "description"],
        "additionalProperties": false
    })
}

/// The Project `draft` and `facts` make, or every problem with it. The user's choices
/// win over the model's; a test command is only kept when the user named it (a model
/// must not invent what decides whether the delivered code works).
pub fn build(draft: &Draft, facts: &Facts) -> Result<Manifest, Vec<String>> {
    let mut problems = Vec::new();
    let name = facts
        .name
        .clone()
        .unwrap_or_else(|| draft.name.trim().to_owned());
    if let Err(err) = DnsLabel::new(name.clone()) {
        problems.push(format!("name {name:?}: {err}"));
    } else if name.len() > NAME_MAX {
        problems.push(format!(
            "name {name:?} is longer than {NAME_MAX} characters"
        ));
    }
    // An empty one is refused by the schema (`minLength`).
    let description = draft.description.trim();
    let words = facts.user_words();
    let test_command = facts.test_command.clone().or_else(|| {
        draft
            .test_command
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty() && words.contains(c))
            .map(str::to_owned)
    });
    let mut spec = json!({
        "description": description,
        "repository": {"url": facts.repository, "branch": facts.branch},
    });
    if let Some(command) = test_command {
        spec["verify"] = json!({"command": command});
    }
    let object = json!({
        "apiVersion": "aios.dev/v1alpha1",
        "kind": "Project",
        "metadata": {"name": name, "namespace": facts.namespace},
        "spec": spec,
    });
    problems.extend(validate(&object));
    if !problems.is_empty() {
        return Err(problems);
    }
    let project = serde_json::from_value(object.clone()).map_err(|e| vec![e.to_string()])?;
    Ok(Manifest { object, project })
}

/// The problems the Project CRD's OpenAPI schema finds in `object`.
pub fn validate(object: &Value) -> Vec<String> {
    let crd = Project::crd();
    let Some(schema) = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
    else {
        return vec!["the Project CRD has no schema".to_owned()];
    };
    let schema = match serde_json::to_value(schema) {
        Ok(schema) => schema,
        Err(err) => return vec![format!("the Project CRD's schema: {err}")],
    };
    let validator = match jsonschema::validator_for(&schema) {
        Ok(v) => v,
        Err(err) => return vec![format!("the Project CRD's schema: {err}")],
    };
    let mut problems: Vec<String> = validator
        .iter_errors(object)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    // The typed form checks what the schema leaves to the API server's types.
    if let Err(err) = serde_json::from_value::<Project>(object.clone()) {
        problems.push(err.to_string());
    }
    problems
}

/// The manifest as YAML, as `kubectl apply -f` takes it.
pub fn to_yaml(manifest: &Manifest) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&manifest.object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            brief: "A todo API in Python; test it with python3 -m pytest -q".to_owned(),
            repository: "https://git.example/todo.git".to_owned(),
            branch: "main".to_owned(),
            namespace: "team-a".to_owned(),
            ..Facts::default()
        }
    }

    fn draft(name: &str, test: Option<&str>) -> Draft {
        Draft {
            name: name.to_owned(),
            description: "Build a todo REST API in Python with tests.".to_owned(),
            test_command: test.map(str::to_owned),
        }
    }

    #[test]
    fn a_good_draft_becomes_a_project_the_schema_accepts() {
        let project = build(&draft("todo-api", Some("python3 -m pytest -q")), &facts())
            .unwrap()
            .project;
        assert_eq!(project.metadata.name.as_deref(), Some("todo-api"));
        assert_eq!(project.spec.repository.url, "https://git.example/todo.git");
        assert_eq!(project.spec.verify.unwrap().command, "python3 -m pytest -q");
        let yaml = to_yaml(&build(&draft("todo-api", None), &facts()).unwrap()).unwrap();
        assert!(
            yaml.starts_with("apiVersion: aios.dev/v1alpha1\nkind: Project\n"),
            "{yaml}"
        );
        assert!(!yaml.contains("policy:"), "only what was said: {yaml}");
    }

    #[test]
    fn a_test_command_the_user_never_named_is_dropped() {
        let mut f = facts();
        f.brief = "A todo API".to_owned();
        let project = build(&draft("todo-api", Some("rm -rf / && pytest")), &f)
            .unwrap()
            .project;
        assert!(project.spec.verify.is_none());
        f.test_command = Some("make test".to_owned());
        let project = build(&draft("todo-api", Some("pytest")), &f)
            .unwrap()
            .project;
        assert_eq!(project.spec.verify.unwrap().command, "make test");
    }

    #[test]
    fn a_bad_name_and_an_empty_description_are_named() {
        let mut d = draft("Todo API!", None);
        d.description = "  ".to_owned();
        let problems = build(&d, &facts()).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("Todo API!"), "{problems:?}");
        assert!(
            problems[1].starts_with("/spec/description: "),
            "{problems:?}"
        );
        let long = "a".repeat(NAME_MAX + 1);
        assert!(build(&draft(&long, None), &facts()).is_err());
    }

    #[test]
    fn the_crd_schema_refuses_what_the_api_server_would() {
        let bad = json!({
            "apiVersion": "aios.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": "x"},
            "spec": {"description": "d", "repository": {"url": "u"}, "verify": {"command": "t", "timeoutSeconds": 0}}
        });
        let problems = validate(&bad);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("/spec/verify/timeoutSeconds")),
            "{problems:?}"
        );
        let missing = json!({"apiVersion": "aios.dev/v1alpha1", "kind": "Project", "metadata": {"name": "x"}, "spec": {"description": "d"}});
        assert!(
            validate(&missing).iter().any(|p| p.contains("repository")),
            "{:?}",
            validate(&missing)
        );
    }
}
