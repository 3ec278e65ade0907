//! Validating a plan (from `Project.spec.tasks` or from Hera's planning task) and
//! turning it into Task objects.

use std::collections::{BTreeMap, BTreeSet};

use aios_crds::{
    PlannedTask, Project, Task, TaskSpec,
    common::OBJECT_NAME_MAX_LEN,
    names::{annotations, labels},
    task::ModelPin,
};
use kube::{Resource, ResourceExt, api::ObjectMeta};

/// What is wrong with a plan, in words a person (or the planning model) can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The plan has no tasks.
    #[error("the plan has no tasks")]
    Empty,
    /// Two tasks share a name.
    #[error("task name {0:?} is used more than once")]
    DuplicateName(String),
    /// A task names itself as a dependency.
    #[error("task {0:?} depends on itself")]
    SelfDependency(String),
    /// A task depends on a task the plan does not have.
    #[error("task {task:?} depends on {dependency:?}, which is not in the plan")]
    UnknownDependency {
        /// The task.
        task: String,
        /// The missing dependency.
        dependency: String,
    },
    /// Dependencies form a cycle.
    #[error("tasks {} depend on each other in a cycle", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// No Agent in the namespace serves the task's role.
    #[error(
        "task {task:?} has role {role:?}, which no Agent in the namespace serves (served: {served})"
    )]
    UnknownRole {
        /// The task.
        task: String,
        /// Its role.
        role: String,
        /// The roles that are served.
        served: String,
    },
    /// The Task object's name would be too long.
    #[error(
        "task {task:?} would be named {object:?}, longer than {OBJECT_NAME_MAX_LEN} characters"
    )]
    NameTooLong {
        /// The task.
        task: String,
        /// The object name it would get.
        object: String,
    },
}

/// A plan that passed every check, in dependency order (each task after its dependencies).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedPlan {
    /// The tasks, topologically sorted.
    pub tasks: Vec<PlannedTask>,
}

/// The Task object name of plan task `task` of `project`.
pub fn task_object_name(project: &str, task: &str) -> String {
    format!("{project}-{task}")
}

/// Checks a plan: non-empty, unique names, known and acyclic dependencies, roles served
/// by an Agent (when `served_roles` is given), object names within limits. Every
/// problem is reported, not just the first.
pub fn validate_plan(
    project: &str,
    tasks: &[PlannedTask],
    served_roles: Option<&BTreeSet<String>>,
) -> Result<ValidatedPlan, Vec<PlanError>> {
    let mut errors = Vec::new();
    if tasks.is_empty() {
        return Err(vec![PlanError::Empty]);
    }
    let mut by_name: BTreeMap<&str, &PlannedTask> = BTreeMap::new();
    for task in tasks {
        if by_name.insert(task.name.as_str(), task).is_some() {
            errors.push(PlanError::DuplicateName(task.name.to_string()));
        }
    }
    for task in tasks {
        let name = task.name.as_str();
        for dep in &task.depends_on {
            if dep == name {
                errors.push(PlanError::SelfDependency(name.to_owned()));
            } else if !by_name.contains_key(dep.as_str()) {
                errors.push(PlanError::UnknownDependency {
                    task: name.to_owned(),
                    dependency: dep.to_string(),
                });
            }
        }
        if let Some(served) = served_roles
            && !served.contains(task.role.as_str())
        {
            errors.push(PlanError::UnknownRole {
                task: name.to_owned(),
                role: task.role.to_string(),
                served: served.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        let object = task_object_name(project, name);
        if object.len() > OBJECT_NAME_MAX_LEN {
            errors.push(PlanError::NameTooLong {
                task: name.to_owned(),
                object,
            });
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    match topological_order(tasks) {
        Ok(order) => Ok(ValidatedPlan { tasks: order }),
        Err(cycle) => Err(vec![PlanError::Cycle(cycle)]),
    }
}

/// Kahn's algorithm; on a cycle, returns one cycle's task names. Assumes names are
/// unique and dependencies known (checked before).
fn topological_order(tasks: &[PlannedTask]) -> Result<Vec<PlannedTask>, Vec<String>> {
    let index: BTreeMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut indegree: Vec<usize> = tasks.iter().map(|t| t.depends_on.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); tasks.len()];
    for (i, task) in tasks.iter().enumerate() {
        for dep in &task.depends_on {
            dependents[index[dep.as_str()]].push(i);
        }
    }
    // Process in input order among the ready ones, so the result is stable.
    let mut ready: std::collections::VecDeque<usize> =
        (0..tasks.len()).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(tasks.len());
    while let Some(i) = ready.pop_front() {
        order.push(tasks[i].clone());
        for &d in &dependents[i] {
            indegree[d] -= 1;
            if indegree[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    if order.len() == tasks.len() {
        return Ok(order);
    }
    Err(find_cycle(tasks, &index, &indegree))
}

/// Walks dependencies from a task left with unmet dependencies until a task repeats.
fn find_cycle(
    tasks: &[PlannedTask],
    index: &BTreeMap<&str, usize>,
    indegree: &[usize],
) -> Vec<String> {
    let Some(start) = (0..tasks.len()).find(|&i| indegree[i] > 0) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut current = start;
    loop {
        let next = tasks[current]
            .depends_on
            .iter()
            .map(|d| index[d.as_str()])
            .find(|&d| indegree[d] > 0)
            .unwrap_or(start);
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle: Vec<String> = path[pos..]
                .iter()
                .map(|&i| tasks[i].name.to_string())
                .collect();
            cycle.push(tasks[next].name.to_string());
            return cycle;
        }
        path.push(next);
        current = next;
    }
}

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
    use aios_crds::DnsLabel;

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
