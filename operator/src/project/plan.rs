//! Validating a plan (from `Project.spec.tasks` or from Hera's planning task), turning
//! it into Task objects, and keeping Hera's plan in ConfigMaps of its own.
//!
//! Hera's plan is not kept in the planning Task's status: a 1,000-task plan with wide
//! fan-ins is larger than one object may be. Its compact JSON is cut into parts of at
//! most [`PLAN_PART_BYTES`], each an immutable ConfigMap owned by the planning Task and
//! named after the plan's digest (the same plan gives the same objects, another plan
//! other objects), and the Task's `status.result.planRef` names them with the digest.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use aios_crds::{
    PlannedTask, Project, Task, TaskSpec,
    limits::PLAN_PART_BYTES,
    names::{annotations, labels, plan::PART_KEY},
    plan::plan_json,
    task::{ModelPin, PlanRef},
    text,
};
pub use aios_crds::{
    limits::{EXPLICIT_PLAN, HERA_PLAN, PlanLimits},
    plan::{PlanError, ValidatedPlan, task_object_name, validate_plan},
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Resource, ResourceExt, api::ObjectMeta};
use sha2::{Digest, Sha256};

/// The Task objects a validated plan becomes: owned by the Project, labelled with it,
/// dependencies mapped to object names; a task whose dependencies Hera dropped
/// (`dropped`, see [`judge_plan`]) names them in an annotation.
pub fn plan_tasks(
    project: &Project,
    plan: &ValidatedPlan,
    plan_attempt: Option<i32>,
    dropped: &[PlanError],
) -> Vec<Task> {
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
            let mut notes = BTreeMap::new();
            if let Some(attempt) = plan_attempt {
                notes.insert(annotations::PLAN_ATTEMPT.to_owned(), attempt.to_string());
            }
            let own: Vec<&str> = dropped
                .iter()
                .filter_map(|e| match e {
                    PlanError::UnknownDependency { task, dependency }
                        if planned.name == task.as_str() =>
                    {
                        Some(dependency.as_str())
                    }
                    PlanError::SelfDependency(task) if planned.name == task.as_str() => {
                        Some(task.as_str())
                    }
                    _ => None,
                })
                .collect();
            if !own.is_empty() {
                notes.insert(annotations::DROPPED_DEPENDENCIES.to_owned(), own.join(","));
            }
            if !notes.is_empty() {
                meta.annotations = Some(notes);
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
                        .map(|d| task_object_name(&project_name, d.as_str()).into())
                        .collect(),
                    complexity: planned.complexity,
                    acceptance_criteria: planned.acceptance_criteria.clone(),
                    max_retries: planned.max_retries,
                    timeout_seconds: planned.timeout_seconds,
                    priority: planned.priority,
                    model: None::<ModelPin>,
                    verify: None,
                },
                status: None,
            }
        })
        .collect()
}

/// The verdict on a Project's explicit plan (`spec.tasks`): the plan, or its problems.
pub type Verdict = Arc<Result<ValidatedPlan, Vec<PlanError>>>;

/// Explicit plans already judged, by Project uid, with the generation each was judged
/// at: a Project's spec changes only with its generation, so its plan is validated once
/// per generation rather than on every pass.
#[derive(Debug, Default)]
pub struct ValidatedPlans(Mutex<HashMap<String, (i64, Verdict)>>);

impl ValidatedPlans {
    /// The verdict on `project`'s explicit plan `tasks`, judged now only if this
    /// generation of the Project was not judged yet.
    pub fn explicit(&self, project: &Project, tasks: &[PlannedTask]) -> Verdict {
        let judge = || {
            Arc::new(validate_plan(
                &project.name_any(),
                tasks,
                None,
                &EXPLICIT_PLAN,
            ))
        };
        let (Some(uid), Some(generation)) = (project.uid(), project.metadata.generation) else {
            return judge();
        };
        let mut plans = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match plans.get(&uid) {
            Some((judged, verdict)) if *judged == generation => verdict.clone(),
            _ => {
                let verdict = judge();
                plans.insert(uid, (generation, verdict.clone()));
                verdict
            }
        }
    }

    /// Forgets the plan of the Project with uid `uid` (it is being deleted).
    pub fn forget(&self, uid: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid);
    }
}

/// The names of the Task objects of `plan` (a plan of Project `project`) that are not
/// among `existing`.
pub fn missing_tasks<'a>(
    project: &str,
    plan: &ValidatedPlan,
    existing: impl IntoIterator<Item = &'a Task>,
) -> std::collections::HashSet<String> {
    // The plan's names of the existing Tasks (an object name less `{project}-`): no
    // object name is made for a Task that exists, as on every pass once all do.
    let existing: std::collections::HashSet<&str> = existing
        .into_iter()
        .filter_map(|t| {
            t.metadata
                .name
                .as_deref()?
                .strip_prefix(project)?
                .strip_prefix('-')
        })
        .collect();
    plan.tasks
        .iter()
        .filter(|planned| !existing.contains(planned.name.as_str()))
        .map(|planned| task_object_name(project, planned.name.as_str()))
        .collect()
}

/// A plan Hera accepted, and the dependencies it dropped from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The plan, each task after its dependencies.
    pub plan: ValidatedPlan,
    /// The dependencies that named no other task of the plan, as the problems they were.
    pub dropped: Vec<PlanError>,
}

/// Whether `error` is a dependency that names no other task of the plan.
fn is_dangling(error: &PlanError) -> bool {
    matches!(
        error,
        PlanError::UnknownDependency { .. } | PlanError::SelfDependency(_)
    )
}

/// Hera's verdict on the plan of its planning task, held to [`HERA_PLAN`] and, when
/// given, the roles the namespace serves. One tolerance, for small models that name a
/// role or a made-up task as a dependency: when every problem is a dependency that
/// names no other task of the plan, those dependencies are dropped and the plan is
/// accepted, saying which ([`Accepted::dropped`]). Any other problem refuses the plan,
/// with every problem.
pub fn judge_plan(
    project: &str,
    tasks: &[PlannedTask],
    served_roles: Option<&std::collections::BTreeSet<String>>,
) -> Result<Accepted, Vec<PlanError>> {
    let errors = match validate_plan(project, tasks, served_roles, &HERA_PLAN) {
        Ok(plan) => {
            return Ok(Accepted {
                plan,
                dropped: Vec::new(),
            });
        }
        Err(errors) if errors.iter().all(is_dangling) => errors,
        Err(errors) => return Err(errors),
    };
    let names: std::collections::BTreeSet<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    let kept: Vec<PlannedTask> = tasks
        .iter()
        .map(|task| {
            let mut task = task.clone();
            let name = task.name.to_string();
            task.depends_on
                .retain(|dep| dep.as_str() != name && names.contains(dep.as_str()));
            task
        })
        .collect();
    match validate_plan(project, &kept, served_roles, &HERA_PLAN) {
        Ok(plan) => Ok(Accepted {
            plan,
            dropped: errors,
        }),
        Err(mut more) => {
            more.extend(errors);
            Err(more)
        }
    }
}

/// The dependencies Hera dropped from the plan `tasks` were created from, as the
/// problems they were, from the tasks' annotations (see [`plan_tasks`]).
pub fn dropped_dependencies<'a>(tasks: impl IntoIterator<Item = &'a Task>) -> Vec<PlanError> {
    let mut dropped = Vec::new();
    for task in tasks {
        let Some(names) = task.annotations().get(annotations::DROPPED_DEPENDENCIES) else {
            continue;
        };
        let name = task
            .labels()
            .get(labels::PLAN_TASK)
            .cloned()
            .unwrap_or_else(|| task.name_any());
        for dependency in names.split(',').filter(|d| !d.is_empty()) {
            dropped.push(if dependency == name {
                PlanError::SelfDependency(name.clone())
            } else {
                PlanError::UnknownDependency {
                    task: name.clone(),
                    dependency: dependency.to_owned(),
                }
            });
        }
    }
    dropped
}

/// A plan as its ConfigMaps keep it, and the reference the planning Task records.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// The ConfigMaps, in part order.
    pub config_maps: Vec<ConfigMap>,
    /// What `status.result.planRef` records.
    pub plan_ref: PlanRef,
}

/// Why a kept plan could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum PlanReadError {
    /// A part's ConfigMap is gone, or has no part.
    #[error("part {0} of the plan is missing")]
    MissingPart(String),
    /// The parts read back are not the plan that was kept.
    #[error("the plan's parts do not match its digest: they were changed or replaced")]
    Digest,
    /// The parts are not a plan.
    #[error("the kept plan is not a plan: {0}")]
    Malformed(#[source] serde_json::Error),
}

/// The lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write;
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// The ConfigMaps that keep `plan`, reported by `planner` (the planning Task), and the
/// reference to them. A plan over [`HERA_PLAN`]'s bytes is not kept: that is a problem
/// with the plan, reported as [`PlanError::TooLarge`].
pub fn stored_plan(planner: &Task, plan: &[PlannedTask]) -> Result<StoredPlan, PlanError> {
    let json = plan_json(plan);
    if json.len() > HERA_PLAN.bytes {
        return Err(PlanError::TooLarge {
            bytes: json.len(),
            max: HERA_PLAN.bytes,
        });
    }
    let sha256 = sha256_hex(json.as_bytes());
    let mut parts = Vec::new();
    let mut rest = json.as_str();
    while !rest.is_empty() {
        let part = text::truncate(rest, PLAN_PART_BYTES);
        parts.push(part);
        rest = &rest[part.len()..];
    }
    let planner_name = planner.name_any();
    let config_maps: Vec<ConfigMap> = parts
        .iter()
        .enumerate()
        .map(|(i, part)| ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("{planner_name}-{}-{i}", &sha256[..12])),
                namespace: planner.namespace(),
                owner_references: planner.controller_owner_ref(&()).map(|o| vec![o]),
                labels: Some(BTreeMap::from([
                    (labels::PROJECT.to_owned(), planner.spec.project.clone()),
                    (
                        labels::MANAGED_BY.to_owned(),
                        labels::MANAGED_BY_VALUE.to_owned(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(PART_KEY.to_owned(), (*part).to_owned())])),
            immutable: Some(true),
            ..ConfigMap::default()
        })
        .collect();
    let plan_ref = PlanRef {
        config_maps: config_maps.iter().map(ResourceExt::name_any).collect(),
        sha256,
        tasks: i32::try_from(plan.len()).unwrap_or(i32::MAX),
        bytes: i64::try_from(json.len()).unwrap_or(i64::MAX),
    };
    Ok(StoredPlan {
        config_maps,
        plan_ref,
    })
}

/// The plan `plan_ref` names, from its parts' ConfigMaps (`None` for one that is gone),
/// in the order the reference lists them.
pub fn read_plan(
    plan_ref: &PlanRef,
    parts: &[Option<ConfigMap>],
) -> Result<Vec<PlannedTask>, PlanReadError> {
    let mut json = String::new();
    for (name, part) in plan_ref.config_maps.iter().zip(parts) {
        let text = part
            .as_ref()
            .and_then(|cm| cm.data.as_ref())
            .and_then(|data| data.get(PART_KEY))
            .ok_or_else(|| PlanReadError::MissingPart(name.clone()))?;
        json.push_str(text);
    }
    if sha256_hex(json.as_bytes()) != plan_ref.sha256 {
        return Err(PlanReadError::Digest);
    }
    serde_json::from_str(&json).map_err(PlanReadError::Malformed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
        let ok = validate_plan(
            "shop",
            &plan,
            Some(&roles(&["backend", "frontend", "qa"])),
            &EXPLICIT_PLAN,
        )
        .unwrap();
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
        let errs = validate_plan("shop", &plan, None, &EXPLICIT_PLAN).unwrap_err();
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
        let errs =
            validate_plan("shop", &plan, Some(&roles(&["backend"])), &EXPLICIT_PLAN).unwrap_err();
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
            validate_plan("shop", &[], None, &EXPLICIT_PLAN).unwrap_err(),
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
            &EXPLICIT_PLAN,
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
            &EXPLICIT_PLAN,
        )
        .unwrap();
        let tasks = plan_tasks(&project, &plan, Some(2), &[]);
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

    fn planner() -> Task {
        let mut planner = crate::project::dispatch::planning_task(&crate::testing::project("shop"));
        planner.metadata.uid = Some("uid-shop-plan".into());
        planner
    }

    /// A `width`-task plan whose tasks carry `description_bytes` of description, and a
    /// task that depends on all of them.
    fn wide_plan(width: usize, description_bytes: usize) -> Vec<PlannedTask> {
        let parts: Vec<String> = (0..width).map(|i| format!("part-{i}")).collect();
        let mut plan: Vec<PlannedTask> = parts
            .iter()
            .map(|p| {
                let mut t = task(p, "backend", &[]);
                t.description = "é".repeat(description_bytes / 2);
                t
            })
            .collect();
        let deps: Vec<&str> = parts.iter().map(String::as_str).collect();
        plan.push(task("join", "qa", &deps));
        plan
    }

    #[test]
    fn a_thousand_task_plan_is_kept_in_parts_and_read_back_whole() {
        let plan = wide_plan(999, 2000);
        let stored = stored_plan(&planner(), &plan).unwrap();
        assert!(
            stored.config_maps.len() >= 4,
            "{} parts",
            stored.config_maps.len()
        );
        for cm in &stored.config_maps {
            let part = &cm.data.as_ref().unwrap()[PART_KEY];
            assert!(part.len() <= PLAN_PART_BYTES, "{}", part.len());
            assert_eq!(cm.immutable, Some(true));
            assert_eq!(cm.metadata.namespace.as_deref(), Some("team-a"));
            assert_eq!(cm.labels()[labels::PROJECT], "shop");
            let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("Task", "uid-shop-plan")
            );
        }
        let r = &stored.plan_ref;
        assert_eq!(r.tasks, 1000);
        assert_eq!(r.sha256.len(), 64);
        assert!(r.config_maps[0].starts_with(&format!("shop-plan-{}-", &r.sha256[..12])));
        let parts: Vec<Option<ConfigMap>> = stored.config_maps.iter().cloned().map(Some).collect();
        assert_eq!(read_plan(r, &parts).unwrap(), plan);
        assert_eq!(
            stored_plan(&planner(), &plan).unwrap(),
            stored,
            "the same plan gives the same objects"
        );
        let other = stored_plan(&planner(), &plan[1..]).unwrap();
        assert_ne!(other.plan_ref.config_maps[0], r.config_maps[0]);
    }

    #[test]
    fn a_missing_or_changed_part_is_not_read_as_the_plan() {
        let stored = stored_plan(&planner(), &wide_plan(400, 2000)).unwrap();
        let r = &stored.plan_ref;
        let mut parts: Vec<Option<ConfigMap>> =
            stored.config_maps.iter().cloned().map(Some).collect();
        parts[1] = None;
        assert!(matches!(
            read_plan(r, &parts),
            Err(PlanReadError::MissingPart(name)) if name == r.config_maps[1]
        ));
        let mut changed = stored.config_maps[1].clone();
        changed
            .data
            .as_mut()
            .unwrap()
            .insert(PART_KEY.to_owned(), "[]".to_owned());
        parts[1] = Some(changed);
        assert!(matches!(read_plan(r, &parts), Err(PlanReadError::Digest)));
    }

    #[test]
    fn a_plan_too_large_to_keep_is_a_plan_problem() {
        let err = stored_plan(&planner(), &wide_plan(200, 30_000)).unwrap_err();
        assert!(
            matches!(err, PlanError::TooLarge { max, .. } if max == HERA_PLAN.bytes),
            "{err}"
        );
    }

    #[test]
    fn hera_drops_dependencies_on_no_task_of_the_plan_and_says_which() {
        let plan = [
            task("api", "backend", &["api"]),
            task("test", "qa", &["api", "backend"]),
        ];
        let accepted = judge_plan("shop", &plan, Some(&roles(&["backend", "qa"]))).unwrap();
        let kept: Vec<_> = accepted
            .plan
            .tasks
            .iter()
            .map(|t| (t.name.to_string(), t.depends_on.clone()))
            .collect();
        assert_eq!(
            kept,
            [
                ("api".to_owned(), vec![]),
                ("test".to_owned(), vec![DnsLabel::new("api").unwrap()])
            ]
        );
        assert_eq!(
            accepted.dropped,
            [
                PlanError::SelfDependency("api".into()),
                PlanError::UnknownDependency {
                    task: "test".into(),
                    dependency: "backend".into()
                }
            ]
        );
        let clean = [task("api", "backend", &[])];
        assert!(judge_plan("shop", &clean, None).unwrap().dropped.is_empty());
    }

    #[test]
    fn any_other_problem_refuses_the_plan_with_every_problem() {
        let plan = [
            task("a", "backend", &["b", "ghost"]),
            task("b", "backend", &["a"]),
        ];
        let errors = judge_plan("shop", &plan, None).unwrap_err();
        assert!(
            matches!(errors[0], PlanError::Cycle(_)),
            "the cycle, found once the dangling dependency is dropped: {errors:?}"
        );
        assert!(errors.contains(&PlanError::UnknownDependency {
            task: "a".into(),
            dependency: "ghost".into()
        }));
        let unserved = [task("a", "security", &["ghost"])];
        let errors = judge_plan("shop", &unserved, Some(&roles(&["backend"]))).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn the_tasks_of_a_plan_name_the_dependencies_hera_dropped() {
        let project = crate::testing::project("shop");
        let plan = [
            task("api", "backend", &["api"]),
            task("test", "qa", &["api", "backend"]),
            task("docs", "backend", &[]),
        ];
        let accepted = judge_plan("shop", &plan, None).unwrap();
        let tasks = plan_tasks(&project, &accepted.plan, Some(1), &accepted.dropped);
        let noted: Vec<Option<&String>> = tasks
            .iter()
            .map(|t| t.annotations().get(annotations::DROPPED_DEPENDENCIES))
            .collect();
        assert_eq!(
            noted,
            [Some(&"api".to_owned()), None, Some(&"backend".to_owned())],
            "api, docs, test in dependency order"
        );
        assert_eq!(dropped_dependencies(&tasks), accepted.dropped);
    }

    #[test]
    fn an_explicit_plan_is_judged_once_per_generation() {
        let plans = ValidatedPlans::default();
        let mut project = crate::testing::project("shop");
        let good = [task("api", "backend", &[])];
        let first = plans.explicit(&project, &good);
        assert!(first.is_ok());
        // Another pass over the same generation gets the same verdict, not a new one.
        assert!(Arc::ptr_eq(&first, &plans.explicit(&project, &good)));
        // A new generation is judged again: its plan now has a cycle.
        project.metadata.generation = Some(2);
        let cyclic = [task("a", "backend", &["b"]), task("b", "backend", &["a"])];
        assert!(plans.explicit(&project, &cyclic).is_err());
        plans.forget(&project.uid().unwrap());
        assert!(plans.explicit(&project, &good).is_ok());
    }

    #[test]
    fn only_the_plan_tasks_without_an_object_are_missing() {
        let project = crate::testing::project("shop");
        let plan = validate_plan(
            "shop",
            &[task("api", "backend", &[]), task("ui", "backend", &["api"])],
            None,
            &EXPLICIT_PLAN,
        )
        .unwrap();
        let objects = plan_tasks(&project, &plan, None, &[]);
        assert_eq!(
            missing_tasks("shop", &plan, &objects[..1]),
            std::collections::HashSet::from([objects[1].name_any()])
        );
        assert!(missing_tasks("shop", &plan, &objects).is_empty());
        // Only a Task named `shop-ui` is plan task `ui`'s.
        let mut stray = objects[1].clone();
        stray.metadata.name = Some("shopping-ui".into());
        assert_eq!(
            missing_tasks("shop", &plan, [&objects[0], &stray]),
            std::collections::HashSet::from([objects[1].name_any()])
        );
    }
}
