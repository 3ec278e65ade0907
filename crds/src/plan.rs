//! Checking a plan (from `Project.spec.tasks` or from Hera's planning task): the
//! operator checks it before creating Tasks, and the `cto` agent before reporting it, so
//! both hold a plan to the same rules — the DAG's and the [`limits`] the Task schema
//! and the plan's store set.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    PlannedTask,
    common::OBJECT_NAME_MAX_LEN,
    limits::{self, PlanLimits},
};

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
    /// The plan has more tasks than its limit.
    #[error("the plan has {count} tasks; at most {max} are allowed")]
    TooManyTasks {
        /// How many it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The plan's JSON is larger than its limit.
    #[error("the plan takes {bytes} bytes as JSON; at most {max} are allowed")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A task names more dependencies than its limit.
    #[error("task {task:?} has {count} dependencies; at most {max} are allowed")]
    TooManyDependencies {
        /// The task.
        task: String,
        /// How many it names.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A task's title is empty.
    #[error("task {0:?} has an empty title")]
    EmptyTitle(String),
    /// A text field of a task is longer than its limit.
    #[error("task {task:?} has a {field} of {length} characters; at most {max} are allowed")]
    TooLong {
        /// The task.
        task: String,
        /// The field (`title`, `description`).
        field: &'static str,
        /// Its length, in characters.
        length: usize,
        /// The limit.
        max: usize,
    },
    /// A task lists more acceptance criteria than its limit.
    #[error("task {task:?} has {count} acceptance criteria; at most {max} are allowed")]
    TooManyCriteria {
        /// The task.
        task: String,
        /// How many it lists.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A task's retries or timeout are out of range.
    #[error("task {task:?} has {field} {value}; it must be between 0 and {max}")]
    OutOfRange {
        /// The task.
        task: String,
        /// The field (`maxRetries`, `timeoutSeconds`).
        field: &'static str,
        /// Its value.
        value: i32,
        /// The largest value allowed.
        max: i32,
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

/// The size of a plan as its store keeps it and [`PlanLimits::bytes`] counts it: the
/// compact JSON of its tasks.
pub fn plan_json(tasks: &[PlannedTask]) -> String {
    serde_json::to_string(tasks).unwrap_or_default()
}

/// Checks a plan: non-empty, within `limits` and the Task schema's limits, unique
/// names, known and acyclic dependencies, roles served by an Agent (when
/// `served_roles` is given), object names within limits. Every problem is reported,
/// not just the first.
pub fn validate_plan(
    project: &str,
    tasks: &[PlannedTask],
    served_roles: Option<&BTreeSet<String>>,
    limits: &PlanLimits,
) -> Result<ValidatedPlan, Vec<PlanError>> {
    let mut errors = Vec::new();
    if tasks.is_empty() {
        return Err(vec![PlanError::Empty]);
    }
    if tasks.len() > limits.tasks {
        errors.push(PlanError::TooManyTasks {
            count: tasks.len(),
            max: limits.tasks,
        });
    }
    let bytes = plan_json(tasks).len();
    if bytes > limits.bytes {
        errors.push(PlanError::TooLarge {
            bytes,
            max: limits.bytes,
        });
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
        check_fields(task, limits, &mut errors);
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

/// The checks of one task's fields that the Task schema makes.
fn check_fields(task: &PlannedTask, limits: &PlanLimits, errors: &mut Vec<PlanError>) {
    let name = task.name.as_str();
    if task.depends_on.len() > limits.dependencies {
        errors.push(PlanError::TooManyDependencies {
            task: name.to_owned(),
            count: task.depends_on.len(),
            max: limits.dependencies,
        });
    }
    if task.title.is_empty() {
        errors.push(PlanError::EmptyTitle(name.to_owned()));
    }
    for (field, text, max) in [
        ("title", &task.title, limits::TITLE_MAX_CHARS),
        (
            "description",
            &task.description,
            limits::DESCRIPTION_MAX_CHARS,
        ),
    ] {
        let length = text.chars().count();
        if length > max {
            errors.push(PlanError::TooLong {
                task: name.to_owned(),
                field,
                length,
                max,
            });
        }
    }
    if task.acceptance_criteria.len() > limits::ACCEPTANCE_CRITERIA_MAX {
        errors.push(PlanError::TooManyCriteria {
            task: name.to_owned(),
            count: task.acceptance_criteria.len(),
            max: limits::ACCEPTANCE_CRITERIA_MAX,
        });
    }
    let ranges = [
        ("maxRetries", task.max_retries, limits::RETRIES_MAX),
        ("timeoutSeconds", task.timeout_seconds, i32::MAX),
    ];
    for (field, value, max) in ranges {
        if let Some(value) = value.filter(|v| !(0..=max).contains(v)) {
            errors.push(PlanError::OutOfRange {
                task: name.to_owned(),
                field,
                value,
                max,
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Complexity, DnsLabel, limits::HERA_PLAN};

    fn task(name: &str, deps: &[String]) -> PlannedTask {
        PlannedTask {
            name: DnsLabel::new(name).unwrap(),
            title: format!("Do {name}"),
            role: DnsLabel::new("backend").unwrap(),
            description: String::new(),
            depends_on: deps.iter().map(|d| DnsLabel::new(d).unwrap()).collect(),
            complexity: Complexity::Low,
            acceptance_criteria: vec![],
            max_retries: None,
            timeout_seconds: None,
            priority: 0,
        }
    }

    /// `width` independent tasks and one that depends on all of them.
    fn fan_in(width: usize) -> Vec<PlannedTask> {
        let parts: Vec<String> = (0..width).map(|i| format!("part-{i}")).collect();
        let mut plan: Vec<PlannedTask> = parts.iter().map(|p| task(p, &[])).collect();
        plan.push(task("join", &parts));
        plan
    }

    #[test]
    fn hera_may_plan_a_thousand_tasks_with_one_depending_on_all_the_others() {
        let plan = fan_in(999);
        let valid = validate_plan("shop", &plan, None, &HERA_PLAN).unwrap();
        assert_eq!(valid.tasks.len(), 1000);
        assert_eq!(valid.tasks[999].name, "join");
        let errors = validate_plan("shop", &fan_in(1000), None, &HERA_PLAN).unwrap_err();
        assert_eq!(
            errors,
            [PlanError::TooManyTasks {
                count: 1001,
                max: 1000
            }]
        );
    }

    #[test]
    fn a_wide_fan_in_is_hera_s_to_plan_not_an_explicit_plan_s() {
        let plan = fan_in(200);
        assert!(validate_plan("shop", &plan, None, &HERA_PLAN).is_ok());
        let errors = validate_plan("shop", &plan, None, &limits::EXPLICIT_PLAN).unwrap_err();
        assert!(
            errors.contains(&PlanError::TooManyTasks {
                count: 201,
                max: 100
            }),
            "{errors:?}"
        );
        assert!(
            errors.contains(&PlanError::TooManyDependencies {
                task: "join".into(),
                count: 200,
                max: 20
            }),
            "{errors:?}"
        );
    }

    #[test]
    fn what_the_task_schema_refuses_is_a_plan_problem() {
        let mut long_title = task("long-title", &[]);
        long_title.title = "é".repeat(limits::TITLE_MAX_CHARS + 1);
        let mut fits = task("fits", &[]);
        fits.title = "é".repeat(limits::TITLE_MAX_CHARS);
        let mut untitled = task("untitled", &[]);
        untitled.title = String::new();
        let mut verbose = task("verbose", &[]);
        verbose.description = "x".repeat(limits::DESCRIPTION_MAX_CHARS + 1);
        let mut picky = task("picky", &[]);
        picky.acceptance_criteria = vec!["ok".into(); limits::ACCEPTANCE_CRITERIA_MAX + 1];
        let mut stubborn = task("stubborn", &[]);
        stubborn.max_retries = Some(limits::RETRIES_MAX + 1);
        stubborn.timeout_seconds = Some(-1);
        let plan = [long_title, fits, untitled, verbose, picky, stubborn];
        let errors = validate_plan("shop", &plan, None, &HERA_PLAN).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "task \"long-title\" has a title of 257 characters; at most 256 are allowed",
                "task \"untitled\" has an empty title",
                "task \"verbose\" has a description of 32769 characters; at most 32768 are allowed",
                "task \"picky\" has 65 acceptance criteria; at most 64 are allowed",
                "task \"stubborn\" has maxRetries 101; it must be between 0 and 100",
                "task \"stubborn\" has timeoutSeconds -1; it must be between 0 and 2147483647",
            ]
        );
    }

    #[test]
    fn a_plan_larger_than_its_store_takes_is_refused() {
        let mut plan = fan_in(200);
        for t in &mut plan {
            t.description = "x".repeat(limits::DESCRIPTION_MAX_CHARS);
        }
        let bytes = plan_json(&plan).len();
        assert!(bytes > HERA_PLAN.bytes);
        assert_eq!(
            validate_plan("shop", &plan, None, &HERA_PLAN).unwrap_err(),
            [PlanError::TooLarge {
                bytes,
                max: HERA_PLAN.bytes
            }]
        );
    }
}
