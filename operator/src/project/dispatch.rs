//! What the operator creates and sends, as pure builders: the planning Task of a Project
//! and the `TaskDispatch` for one attempt of a task.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use aios_crds::{
    DnsLabel, Project, Task, TaskSpec,
    bus::{DependencyResult, DispatchedTask, ModelHints, ObjectRef, SCHEMA_VERSION, TaskDispatch},
    conditions::{self, reasons},
    names::labels,
};
use jiff::Timestamp;
use kube::{Resource, ResourceExt, api::ObjectMeta};

use crate::task::lifecycle::{ByName, TaskPolicy, after, condition};

/// The role that plans Projects.
pub const PLANNING_ROLE: &str = "cto";

/// Name of the planning Task of `project`.
pub fn planning_task_name(project: &str) -> String {
    format!("{project}-plan")
}

/// Whether `task` is a Project's planning task.
pub fn is_planning_task(task: &Task) -> bool {
    task.labels()
        .get(labels::PLANNING)
        .is_some_and(|v| v == "true")
}

/// The planning Task Hera creates for a Project without `spec.tasks`.
pub fn planning_task(project: &Project) -> Task {
    let name = project.name_any();
    Task {
        metadata: ObjectMeta {
            name: Some(planning_task_name(&name)),
            namespace: project.namespace(),
            owner_references: project.controller_owner_ref(&()).map(|o| vec![o]),
            labels: Some(BTreeMap::from([
                (labels::PROJECT.to_owned(), name.clone()),
                (labels::PLANNING.to_owned(), "true".to_owned()),
                (labels::ROLE.to_owned(), PLANNING_ROLE.to_owned()),
                (
                    labels::MANAGED_BY.to_owned(),
                    labels::MANAGED_BY_VALUE.to_owned(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: TaskSpec {
            project: name,
            title: "Plan the project".to_owned(),
            description: "Break the project's brief into tasks for the available roles: \
                          names, titles, roles, descriptions, dependencies, complexity and \
                          acceptance criteria."
                .to_owned(),
            role: DnsLabel::new(PLANNING_ROLE).unwrap_or_else(|_| unreachable!("a valid label")),
            depends_on: Vec::new(),
            complexity: aios_crds::Complexity::High,
            acceptance_criteria: vec![
                "every task has a role served by an Agent".to_owned(),
                "dependencies form no cycle".to_owned(),
            ],
            max_retries: None,
            timeout_seconds: None,
            priority: 0,
            model: None,
            verify: None,
        },
        status: None,
    }
}

/// Separator of plan problems in the planning task's condition message.
pub const FEEDBACK_SEPARATOR: &str = "; ";

/// The problems with the previous plan, for a re-planning attempt.
pub fn plan_feedback(task: &Task) -> Vec<String> {
    task.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, conditions::SUCCEEDED))
        .filter(|c| c.reason == reasons::PLAN_INVALID)
        .map(|c| {
            c.message
                .split(FEEDBACK_SEPARATOR)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn object_ref<K: Resource>(object: &K) -> ObjectRef {
    ObjectRef {
        namespace: object.meta().namespace.clone().unwrap_or_default(),
        name: object.meta().name.clone().unwrap_or_default(),
        uid: object.meta().uid.clone().unwrap_or_default(),
    }
}

/// How often an agent must send heartbeats: a quarter of the heartbeat timeout, at
/// least every 5 seconds.
pub fn heartbeat_interval(policy: &TaskPolicy) -> u32 {
    u32::try_from((policy.heartbeat_timeout.as_secs() / 4).max(5)).unwrap_or(u32::MAX)
}

/// Each dependency's result as its dependents are told it, made once for all the
/// dispatches of a pass (a layer's dependents share their dependencies).
#[derive(Debug)]
pub struct DependencyResults<'n, 'a> {
    by_name: &'n ByName<'a>,
    made: Vec<Option<Arc<DependencyResult>>>,
}

impl<'n, 'a> DependencyResults<'n, 'a> {
    /// Results of the tasks in `by_name`, made as they are first asked for.
    pub fn new(by_name: &'n ByName<'a>) -> Self {
        Self {
            by_name,
            made: vec![None; by_name.len()],
        }
    }

    /// The results of `task`'s dependencies, in its order; a name no task has is left
    /// out.
    fn of(&mut self, task: &Task) -> Vec<Arc<DependencyResult>> {
        task.spec
            .depends_on
            .iter()
            .filter_map(|name| {
                let (i, dep) = self.by_name.find(name.as_str())?;
                let made = self.made.get_mut(i)?;
                Some(Arc::clone(
                    made.get_or_insert_with(|| Arc::new(dependency_result(dep))),
                ))
            })
            .collect()
    }
}

/// What `dep`'s dependents are told of it: its result's notes and plan stay behind.
fn dependency_result(dep: &Task) -> DependencyResult {
    let result = dep.status.as_ref().and_then(|s| s.result.as_ref());
    DependencyResult {
        task: dep.name_any(),
        title: dep.spec.title.clone(),
        role: dep.spec.role.to_string(),
        summary: result.map(|r| r.summary.clone()).unwrap_or_default(),
        files: result.map(|r| r.files.clone()).unwrap_or_default(),
        commit: result.and_then(|r| r.commit.clone()),
    }
}

/// Everything an agent needs for attempt `attempt` of `task`.
#[allow(clippy::too_many_arguments)]
pub fn dispatch_message(
    project: &Project,
    task: &Task,
    attempt: i32,
    policy: &TaskPolicy,
    dependencies: &mut DependencyResults<'_, '_>,
    served_roles: &BTreeSet<String>,
    preferred_providers: Vec<String>,
    now: Timestamp,
) -> TaskDispatch {
    let planning = is_planning_task(task);
    let dependencies = dependencies.of(task);
    TaskDispatch {
        schema_version: SCHEMA_VERSION,
        project: object_ref(project),
        task: object_ref(task),
        attempt: u32::try_from(attempt).unwrap_or(0),
        brief: project.spec.description.clone(),
        repository: project.spec.repository.clone(),
        spec: DispatchedTask {
            role: task.spec.role.to_string(),
            title: task.spec.title.clone(),
            description: task.spec.description.clone(),
            complexity: task.spec.complexity,
            acceptance_criteria: task.spec.acceptance_criteria.clone(),
            planning,
        },
        dependencies,
        models: ModelHints {
            routing: project.spec.models.routing,
            target_local_ratio: Some(project.spec.models.target_local_ratio),
            pin: task.spec.model.clone(),
            preferred_providers,
            budget: project.spec.models.budget.clone(),
        },
        available_roles: if planning {
            served_roles.iter().cloned().collect()
        } else {
            Vec::new()
        },
        plan_feedback: if planning {
            plan_feedback(task)
        } else {
            Vec::new()
        },
        deadline: policy.timeout.map(|t: Duration| after(now, t)),
        heartbeat_interval_seconds: heartbeat_interval(policy),
        paths: project.spec.policy.paths.clone(),
        recall_across_projects: project.spec.policy.recall_across_projects,
        token: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use aios_crds::{TaskPhase, TaskResult, project::TaskDefaults};

    use super::*;
    use crate::{
        task::lifecycle::{fail_attempt, task_policy},
        testing::{project, task, ts, with_phase},
    };

    #[test]
    fn a_dispatch_carries_the_brief_the_task_and_its_dependencies_results() {
        let mut p = project("shop");
        p.spec.policy.paths.allow_protected = vec![".github/workflows/**".into()];
        let mut api = with_phase(task("shop-api", &[]), TaskPhase::Succeeded);
        api.status.as_mut().unwrap().result = Some(TaskResult {
            summary: "REST API in src/main.rs".into(),
            files: vec!["src/main.rs".into()],
            commit: Some("abc".into()),
            ..TaskResult::default()
        });
        let qa = task("shop-qa", &["shop-api"]);
        let by_name = crate::task::lifecycle::by_name([&api, &qa]);
        let policy = task_policy(&qa, &TaskDefaults::default());
        let d = dispatch_message(
            &p,
            &qa,
            3,
            &policy,
            &mut DependencyResults::new(&by_name),
            &BTreeSet::new(),
            vec!["ollama".into()],
            ts(0),
        );
        assert_eq!(d.attempt, 3);
        assert_eq!(d.attempt_id().message_id(), "uid-shop-qa-3");
        assert_eq!(d.brief, "the shop project");
        assert_eq!(d.task.name, "shop-qa");
        assert_eq!(d.project.uid, "uid-shop");
        assert_eq!(d.dependencies.len(), 1);
        assert_eq!(d.dependencies[0].summary, "REST API in src/main.rs");
        assert_eq!(d.dependencies[0].commit.as_deref(), Some("abc"));
        assert_eq!(d.deadline, Some(ts(1800)));
        assert_eq!(d.heartbeat_interval_seconds, 30);
        assert_eq!(d.models.preferred_providers, ["ollama"]);
        assert!(!d.spec.planning && d.available_roles.is_empty());
        assert_eq!(d.paths, p.spec.policy.paths, "the Project's path rules");
        assert!(!d.recall_across_projects, "off by default");
    }

    #[test]
    fn dependents_dispatched_together_share_each_dependency_s_result() {
        let p = project("shop");
        let mut api = with_phase(task("shop-api", &[]), TaskPhase::Succeeded);
        api.status.as_mut().unwrap().result = Some(TaskResult {
            summary: "REST API".into(),
            notes: Some("not for the dependents".into()),
            ..TaskResult::default()
        });
        let db = with_phase(task("shop-db", &[]), TaskPhase::Succeeded);
        let qa = task("shop-qa", &["shop-api", "shop-gone", "shop-db"]);
        let docs = task("shop-docs", &["shop-db", "shop-api"]);
        let by_name = crate::task::lifecycle::by_name([&api, &db, &qa, &docs]);
        let mut results = DependencyResults::new(&by_name);
        let mut dispatch = |t: &Task| {
            let policy = task_policy(t, &TaskDefaults::default());
            let roles = BTreeSet::new();
            dispatch_message(&p, t, 1, &policy, &mut results, &roles, vec![], ts(0))
        };
        let (qa, docs) = (dispatch(&qa), dispatch(&docs));
        let names = |d: &TaskDispatch| -> Vec<String> {
            d.dependencies.iter().map(|r| r.task.clone()).collect()
        };
        assert_eq!(
            names(&qa),
            ["shop-api", "shop-db"],
            "in order, the unknown left out"
        );
        assert_eq!(names(&docs), ["shop-db", "shop-api"]);
        assert!(Arc::ptr_eq(&qa.dependencies[0], &docs.dependencies[1]));
        assert!(Arc::ptr_eq(&qa.dependencies[1], &docs.dependencies[0]));
        assert_eq!(qa.dependencies[0].summary, "REST API");
        let wire = serde_json::to_value(&qa).unwrap();
        assert_eq!(
            wire["dependencies"][0],
            serde_json::json!({"task": "shop-api", "title": "do shop-api", "role": "backend",
                               "summary": "REST API", "files": []}),
            "each dependency's result is sent whole, as before, without its notes"
        );
    }

    #[test]
    fn a_replanning_dispatch_carries_the_roles_and_what_was_wrong() {
        let p = project("shop");
        let mut planner = planning_task(&p);
        planner.metadata.uid = Some("uid-plan".into());
        assert_eq!(planner.metadata.name.as_deref(), Some("shop-plan"));
        assert!(is_planning_task(&planner));
        planner.status = Some(crate::task::lifecycle::queued(&planner, 1, ts(0)));
        let policy = task_policy(&planner, &TaskDefaults::default());
        planner.status = Some(fail_attempt(
            &planner,
            &policy,
            reasons::PLAN_INVALID,
            "task \"a\" depends on itself; a cycle",
            true,
            ts(1),
        ));
        let roles = BTreeSet::from(["backend".to_owned(), "cto".to_owned()]);
        let d = dispatch_message(
            &p,
            &planner,
            2,
            &policy,
            &mut DependencyResults::new(&ByName::default()),
            &roles,
            vec![],
            ts(2),
        );
        assert!(d.spec.planning);
        assert_eq!(d.available_roles, ["backend", "cto"]);
        assert_eq!(d.plan_feedback, ["task \"a\" depends on itself", "a cycle"]);
    }
}
