//! Validating a plan (from `Project.spec.tasks` or from Hera's planning task) and
//! turning it into Task objects.

use std::collections::BTreeMap;

pub use aios_crds::plan::{PlanError, ValidatedPlan, task_object_name, validate_plan};
use aios_crds::{
    Project, Task, TaskSpec,
    names::{annotations, labels},
    task::ModelPin,
};
use kube::{Resource, ResourceExt, api::ObjectMeta};

/// The Task objects a validated plan becomes: owned by the Project, labelled with it,
/// dependencies mapped to object names.
pub fn plan_tasks(project: &Project, plan: &ValidatedPlan, plan_attempt: Option<i32>) -> Vec<Task> {
    let project_name = project.name_any();
    plan.tasks
        .iter()
        .map(|planned| {
            let mut meta = ObjectMeta {
                name: Some(task_object_name(&project_name, planned.name.as_str())),
                namespace: project.namespace(),
                owner_references: project.controller_owner_ref(&()).map(|o| vec![o]),
                labels: Some(BTreeMap::from([
                    (labels::PROJECT.to_owned(), project_name.clone()),
                    (labels::PLAN_TASK.to_owned(), planned.name.to_string()),
                    (labels::ROLE.to_owned(), planned.role.to_string()),
                    (
                        labels::MANAGED_BY.to_owned(),
                        labels::MANAGED_BY_VALUE.to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            };
            if let Some(attempt) = plan_attempt {
                meta.annotations = Some(BTreeMap::from([(
                    annotations::PLAN_ATTEMPT.to_owned(),
                    attempt.to_string(),
                )]));
            }
            Task {
                metadata: meta,
                spec: TaskSpec {
                    project: project_name.clone(),
                    title: planned.title.clone(),
                    description: planned.description.clone(),
                    role: planned.role.clone(),
                    depends_on: planned
                        .depends_on
                        .iter()
                        .map(|d| task_object_name(&project_name, d.as_str()))
                        .collect(),
                    complexity: planned.complexity,
                    acceptance_criteria: planned.acceptance_criteria.clone(),
                    max_retries: planned.max_retries,
                    timeout_seconds: planned.timeout_seconds,
                    priority: planned.priority,
                    model: None::<ModelPin>,
                },
                status: None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aios_crds::{DnsLabel, PlannedTask};

    use super::*;

    fn task(name: &str, role: &str, deps: &[&str]) -> PlannedTask {
        PlannedTask {
            name: DnsLabel::new(name).unwrap(),
            title: format!("do {name}"),
            role: DnsLabel::new(role).unwrap(),
            description: String::new(),
            depends_on: deps.iter().map(|d| DnsLabel::new(*d).unwrap()).collect(),
            complexity: aios_crds::Complexity::Medium,
            acceptance_criteria: vec![],
            max_retries: None,
            timeout_seconds: None,
            priority: 0,
        }
    }

    fn roles(r: &[&str]) -> BTreeSet<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_diamond_is_ordered_dependencies_first() {
        let plan = [
            task("test", "qa", &["api", "ui"]),
            task("ui", "frontend", &["design"]),
            task("api", "backend", &["design"]),
            task("design", "backend", &[]),
        ];
        let ok =
            validate_plan("shop", &plan, Some(&roles(&["backend", "frontend", "qa"]))).unwrap();
        let order: Vec<_> = ok.tasks.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(order, ["design", "ui", "api", "test"]);
    }

    #[test]
    fn cycles_are_found_and_named() {
        let plan = [
            task("a", "backend", &["c"]),
            task("b", "backend", &["a"]),
            task("c", "backend", &["b"]),
            task("d", "backend", &[]),
        ];
        let errs = validate_plan("shop", &plan, None).unwrap_err();
        let [PlanError::Cycle(cycle)] = errs.as_slice() else {
            panic!("{errs:?}")
        };
        assert_eq!(
            cycle.first(),
            cycle.last(),
            "a cycle ends where it starts: {cycle:?}"
        );
        assert_eq!(cycle.len(), 4);
        assert!(errs[0].to_string().contains("in a cycle"));
    }

    #[test]
    fn every_problem_is_reported() {
        let plan = [
            task("a", "backend", &["a"]),
            task("b", "security", &["missing"]),
            task("b", "backend", &[]),
        ];
        let errs = validate_plan("shop", &plan, Some(&roles(&["backend"]))).unwrap_err();
        assert!(
            errs.contains(&PlanError::DuplicateName("b".into())),
            "{errs:?}"
        );
        assert!(
            errs.contains(&PlanError::SelfDependency("a".into())),
            "{errs:?}"
        );
        assert!(
            errs.contains(&PlanError::UnknownDependency {
                task: "b".into(),
                dependency: "missing".into()
            }),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| matches!(e, PlanError::UnknownRole { role, .. } if role == "security")),
            "{errs:?}"
        );
        assert_eq!(
            validate_plan("shop", &[], None).unwrap_err(),
            [PlanError::Empty]
        );
    }

    #[test]
    fn object_names_must_fit() {
        let long_project = "p".repeat(200);
        let errs = validate_plan(
            &long_project,
            &[task(&"t".repeat(60), "backend", &[])],
            None,
        )
        .unwrap_err();
        assert!(matches!(errs[0], PlanError::NameTooLong { .. }), "{errs:?}");
    }

    #[test]
    fn plan_tasks_are_owned_labelled_and_depend_on_object_names() {
        let mut project: Project = serde_json::from_value(serde_json::json!({
            "apiVersion": "aios.dev/v1alpha1", "kind": "Project",
            "metadata": {"name": "shop", "namespace": "team-a", "uid": "p-uid"},
            "spec": {"description": "a shop", "repository": {"url": "file:///x"}}
        }))
        .unwrap();
        project.metadata.uid = Some("p-uid".into());
        let plan = validate_plan(
            "shop",
            &[task("api", "backend", &[]), task("qa", "qa", &["api"])],
            None,
        )
        .unwrap();
        let tasks = plan_tasks(&project, &plan, Some(2));
        assert_eq!(tasks[1].metadata.name.as_deref(), Some("shop-qa"));
        assert_eq!(tasks[1].spec.depends_on, ["shop-api"]);
        assert_eq!(tasks[1].spec.project, "shop");
        let owner = &tasks[1].metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Project", "p-uid", Some(true))
        );
        assert_eq!(tasks[1].labels()[labels::PROJECT], "shop");
        assert_eq!(tasks[1].annotations()[annotations::PLAN_ATTEMPT], "2");
    }
}
