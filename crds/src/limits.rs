//! The limits a plan and its tasks are held to, defined once. The CRD schemas take them
//! (`schemars` attributes on `Project.spec.tasks` and `Task.spec`), the agent checks its
//! model's plan against them, and Hera validates every plan with them
//! ([`crate::plan::validate_plan`]), so a plan one of them accepts is never refused by
//! another.
//!
//! Two plans differ in size. An explicit plan (`Project.spec.tasks`) is checked by the
//! API server's CEL rules, whose cost grows with tasks × dependencies, so it is small
//! ([`EXPLICIT_PLAN`]). Hera's plan is checked by the operator and kept in ConfigMaps of
//! its own, not inside an object's status, so it may hold a 1,000-task DAG with a task
//! depending on all the others ([`HERA_PLAN`]).

use crate::common::OBJECT_NAME_MAX_LEN;

/// The longest a task's title may be, in characters (as the API server counts them).
pub const TITLE_MAX_CHARS: usize = 256;
/// The longest a task's description may be, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 32_768;
/// The most acceptance criteria a task may list.
pub const ACCEPTANCE_CRITERIA_MAX: usize = 64;
/// The most retries a task may set.
pub const RETRIES_MAX: i32 = 100;
/// The most dependencies a Task object may name (`Task.spec.dependsOn`): as many as
/// Hera's plan allows, so every task of a valid plan fits in its Task.
pub const TASK_DEPENDENCIES_MAX: usize = HERA_PLAN.dependencies;
/// The longest one `Task.spec.dependsOn` entry (a Task's name) may be.
pub const DEPENDENCY_NAME_MAX_LEN: usize = OBJECT_NAME_MAX_LEN;

/// How large one plan may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    /// The most tasks.
    pub tasks: usize,
    /// The most dependencies one task may name.
    pub dependencies: usize,
    /// The most bytes the plan's tasks take as compact JSON.
    pub bytes: usize,
}

/// An explicit plan in `Project.spec.tasks`: bounded so the API server's CEL checks of
/// unique names and known dependencies stay within its cost budget.
pub const EXPLICIT_PLAN: PlanLimits = PlanLimits {
    tasks: 100,
    dependencies: 20,
    bytes: HERA_PLAN.bytes,
};

/// Hera's plan, from the planning task: a 1,000-task DAG, any task depending on all
/// the others. Its bytes fit the bus and [`PLAN_PART_BYTES`]-sized ConfigMaps.
pub const HERA_PLAN: PlanLimits = PlanLimits {
    tasks: 1000,
    dependencies: 1000,
    bytes: 4 * 1024 * 1024,
};

/// The most bytes of a plan one ConfigMap holds. The API server takes at most 1 MiB of
/// data in a ConfigMap; half of it leaves room for the object around it.
pub const PLAN_PART_BYTES: usize = 512 * 1024;
/// The most ConfigMaps one plan takes (a part may end a few bytes short of
/// [`PLAN_PART_BYTES`], at a character boundary, hence the one more).
pub const PLAN_PARTS_MAX: usize = HERA_PLAN.bytes.div_ceil(PLAN_PART_BYTES) + 1;
