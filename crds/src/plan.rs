//! Checking a plan (from `Project.spec.tasks` or from Hera's planning task): the
//! operator checks it before creating Tasks, and the `cto` agent before reporting it, so
//! both hold a plan to the same rules.

use std::collections::{BTreeMap, BTreeSet};

use crate::{PlannedTask, common::OBJECT_NAME_MAX_LEN};

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
