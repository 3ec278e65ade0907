//! Condition types and reasons, shared by the operator (which writes them) and the CLI
//! and tests (which read them).

/// Project: the plan exists and its Tasks were created.
pub const PLANNED: &str = "Planned";
/// Project and Task: Unknown while in flight, True or False with a reason when done.
pub const SUCCEEDED: &str = "Succeeded";
/// Project: the model budget is spent; no further dispatches.
pub const BUDGET_EXCEEDED: &str = "BudgetExceeded";
/// Project: the latest plan was refused; the message says why.
pub const PLAN_INVALID: &str = "PlanInvalid";
/// Project: the work was verified on the branch head (True), or why not (False:
/// `NotVerified` without `spec.verify`, or the verification's failure).
pub const VERIFIED: &str = "Verified";
/// Every kind (kstatus): True when the object did what it was asked (a Project or Task
/// succeeded, an Agent's pool has its desired replicas, a ModelProvider answers).
pub const READY: &str = "Ready";
/// Every kind (kstatus): True while work is in flight (planning, running, scaling, a
/// model server rolling out); a CamelCase reason says which.
pub const RECONCILING: &str = "Reconciling";
/// Every kind (kstatus): True when the object cannot progress without a person (a failed
/// Project or Task, a spent budget, a provider that cannot be probed, a Deployment the
/// API server refuses).
pub const STALLED: &str = "Stalled";
/// ModelProvider with `serve`: the model cache volume is as the spec says; False when
/// the API server refused a change to it (immutable fields).
pub const CACHE_VOLUME: &str = "CacheVolume";

/// Reasons, in CamelCase, carried by conditions and Task failures.
pub mod reasons {
    /// Every task succeeded.
    pub const SUCCEEDED: &str = "Succeeded";
    /// A task failed with no retries left.
    pub const TASK_FAILED: &str = "TaskFailed";
    /// An attempt ran past its timeout.
    pub const TIMED_OUT: &str = "TimedOut";
    /// An attempt's heartbeats stopped.
    pub const HEARTBEAT_LOST: &str = "HeartbeatLost";
    /// A dispatch was dead-lettered by the bus.
    pub const POISON_MESSAGE: &str = "PoisonMessage";
    /// A dependency failed, so the task was not run.
    pub const DEPENDENCY_FAILED: &str = "DependencyFailed";
    /// The project failed or was deleted while the task was in flight.
    pub const CANCELLED: &str = "Cancelled";
    /// The plan was refused too many times.
    pub const PLAN_INVALID: &str = "PlanInvalid";
    /// The planning task failed for good without a plan to judge (its own reason is in
    /// the message); `Planned` carries it.
    pub const PLANNING_FAILED: &str = "PlanningFailed";
    /// Hera accepted a plan without its dependencies that name no other task of it (small
    /// models name roles there); `Planned` and a Warning Event say which.
    pub const DEPENDENCIES_DROPPED: &str = "DependenciesDropped";
    /// The API server refused to record an attempt's result as invalid; the message is
    /// the API server's.
    pub const RESULT_REFUSED: &str = "ResultRefused";
    /// The model budget is spent.
    pub const BUDGET_EXCEEDED: &str = "BudgetExceeded";
    /// The operator's passes over the object keep failing on something a person must
    /// fix (a permission refused, an object the API server or an admission webhook will
    /// not take); the message is the API server's.
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
    /// Work is in flight.
    pub const RUNNING: &str = "Running";
    /// Delivered work is being verified, or fixed after a failed verification.
    pub const VERIFYING: &str = "Verifying";
    /// The verification passed.
    pub const VERIFIED: &str = "Verified";
    /// The Project has no `spec.verify`: the work was not checked.
    pub const NOT_VERIFIED: &str = "NotVerified";
    /// The verification failed and the fix rounds ran out; the message ends with the
    /// last output.
    pub const VERIFICATION_FAILED: &str = "VerificationFailed";
    /// The verification ran past its timeout (in the last fix round allowed).
    pub const VERIFICATION_TIMED_OUT: &str = "VerificationTimedOut";
    /// The sandbox could not run the verification (checkout, set-up).
    pub const VERIFICATION_ERROR: &str = "VerificationError";
    /// Waiting to be dispatched.
    pub const PENDING: &str = "Pending";
    /// The Project is suspended: neither in flight nor stalled.
    pub const SUSPENDED: &str = "Suspended";
    /// The status is as the latest spec asks; nothing in flight.
    pub const IDLE: &str = "Idle";
    /// An Agent's pool is scaling to its desired replicas.
    pub const SCALING: &str = "Scaling";
    /// The API server refused an Agent's Deployment (RBAC, admission, an immutable
    /// field); the message is the API server's.
    pub const DEPLOYMENT_REFUSED: &str = "DeploymentRefused";
    /// A served model's server is starting; probes wait for it.
    pub const MODEL_SERVER_STARTING: &str = "ModelServerStarting";
}
