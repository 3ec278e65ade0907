//! Every name that crosses a process boundary, defined once.
//!
//! The operator, the agents, the CLI, the Helm chart and the dashboards all agree on these
//! strings; changing one is a wire-protocol change.

/// The API group of every AIOS resource.
pub const GROUP: &str = "aios.dev";
/// The served and stored API version.
pub const VERSION: &str = "v1alpha1";
/// The category every AIOS resource is listed under (`kubectl get aios`).
pub const CATEGORY: &str = "aios";

/// RabbitMQ names: exchanges, queues, routing keys and message headers.
pub mod bus {
    /// Durable direct exchange the operator publishes `TaskDispatch` messages to; the
    /// routing key is the task's namespace and role (see [`routing_key`]).
    pub const TASKS_EXCHANGE: &str = "aios.tasks";
    /// Prefix of the per-namespace, per-role quorum queues bound to [`TASKS_EXCHANGE`];
    /// see [`role_queue`].
    pub const ROLE_QUEUE_PREFIX: &str = "aios.tasks.";
    /// Durable topic exchange agents publish `TaskEvent`s to.
    pub const EVENTS_EXCHANGE: &str = "aios.events";
    /// The operator's queue of task events, bound to [`EVENTS_EXCHANGE`] with `task.#`.
    pub const OPERATOR_EVENTS_QUEUE: &str = "aios.events.operator";
    /// Fanout exchange for `TaskCancel` messages; every agent binds an exclusive queue.
    pub const CONTROL_EXCHANGE: &str = "aios.control";
    /// Exchange that role queues dead-letter into (rejected or over-delivered dispatches).
    pub const DEAD_LETTER_EXCHANGE: &str = "aios.dlx";
    /// The queue the operator drains dead-lettered dispatches from.
    pub const DEAD_LETTER_QUEUE: &str = "aios.dead-letter";
    /// Durable direct exchange the operator publishes `MemoryNote`s to: what a role's
    /// agents should remember (a verification's result, for `qa`). The routing key is the
    /// namespace and role (see [`routing_key`]).
    pub const MEMORY_EXCHANGE: &str = "aios.memory";
    /// Prefix of the per-role quorum queues bound to [`MEMORY_EXCHANGE`]; see
    /// [`memory_queue`].
    pub const MEMORY_QUEUE_PREFIX: &str = "aios.memory.";

    /// Routing key of a `Started` task event.
    pub const EVENT_STARTED: &str = "task.started";
    /// Routing key of a `Heartbeat` task event.
    pub const EVENT_HEARTBEAT: &str = "task.heartbeat";
    /// Routing key of a `Succeeded` task event.
    pub const EVENT_SUCCEEDED: &str = "task.succeeded";
    /// Routing key of a `Failed` task event.
    pub const EVENT_FAILED: &str = "task.failed";
    /// Routing key for an event type this build does not know.
    pub const EVENT_UNKNOWN: &str = "task.unknown";
    /// Binding pattern that matches every task event.
    pub const EVENT_BINDING_ALL: &str = "task.#";

    /// Header carrying the message's schema version, so a consumer can refuse a
    /// major version it does not understand before decoding the body.
    pub const HEADER_SCHEMA_VERSION: &str = "x-aios-schema-version";
    /// Header carrying the Task's uid.
    pub const HEADER_TASK_UID: &str = "x-aios-task-uid";
    /// Header carrying the attempt number.
    pub const HEADER_ATTEMPT: &str = "x-aios-attempt";
    /// Header carrying `<namespace>/<project>`.
    pub const HEADER_PROJECT: &str = "x-aios-project";
    /// Quorum-queue header RabbitMQ sets with the number of earlier delivery attempts.
    pub const HEADER_DELIVERY_COUNT: &str = "x-delivery-count";
    /// Content type of every AIOS message body.
    pub const CONTENT_TYPE_JSON: &str = "application/json";

    /// The routing key of what goes to the agents of `role` in `namespace`:
    /// `<namespace>.<role>`. Both are DNS labels (no dots), so no two pairs share a key,
    /// and one namespace's agents never receive another's work.
    pub fn routing_key(namespace: &str, role: &str) -> String {
        format!("{namespace}.{role}")
    }

    /// The queue that holds dispatches for the agents of `role` in `namespace`.
    pub fn role_queue(namespace: &str, role: &str) -> String {
        format!("{ROLE_QUEUE_PREFIX}{}", routing_key(namespace, role))
    }

    /// The queue that holds memory notes for the agents of `role` in `namespace`.
    pub fn memory_queue(namespace: &str, role: &str) -> String {
        format!("{MEMORY_QUEUE_PREFIX}{}", routing_key(namespace, role))
    }
}

/// Labels the operator puts on what it creates, and selects by.
pub mod labels {
    /// The Project a Task (or anything made for a Project) belongs to.
    pub const PROJECT: &str = "aios.dev/project";
    /// The role of a Task or an Agent's pods.
    pub const ROLE: &str = "aios.dev/role";
    /// The Agent an object was made for.
    pub const AGENT: &str = "aios.dev/agent";
    /// The ModelProvider an object was made for.
    pub const MODEL_PROVIDER: &str = "aios.dev/model-provider";
    /// The name a Task has in its Project's plan (`spec.tasks[].name`).
    pub const PLAN_TASK: &str = "aios.dev/plan-task";
    /// Marks the planning Task of a Project.
    pub const PLANNING: &str = "aios.dev/planning";
    /// Standard Kubernetes label naming the tool that manages an object.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`] on everything the operator creates.
    pub const MANAGED_BY_VALUE: &str = "aios-operator";
    /// Marks a verification's Job, pod and NetworkPolicy: the run's id.
    pub const VERIFY_RUN: &str = "aios.dev/verify-run";
    /// Standard Kubernetes label naming the application.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// Standard Kubernetes label naming the component within the application.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// On the operator's pod: set (`"true"`) by the replica that leads, so a Service
    /// can send requests only the leader can answer (the credential endpoint) to it.
    pub const LEADER: &str = "aios.dev/leader";
    /// On a Secret: what its owner lets AIOS use it for, [`CREDENTIAL_GIT`] (a Project's
    /// `repository.secretRef`) or [`CREDENTIAL_MODEL`] (a ModelProvider's
    /// `endpoint.credentialsRef`). A Secret without it is used for nothing.
    pub const CREDENTIAL_TYPE: &str = "aios.dev/credential-type";
    /// [`CREDENTIAL_TYPE`] of a git credential.
    pub const CREDENTIAL_GIT: &str = "git";
    /// [`CREDENTIAL_TYPE`] of a model provider's API key.
    pub const CREDENTIAL_MODEL: &str = "model";
}

/// Annotations the operator reads or writes.
pub mod annotations {
    /// Hash of the configuration a pod template was rendered from, so a changed
    /// ConfigMap rolls the Deployment.
    pub const CONFIG_HASH: &str = "aios.dev/config-hash";
    /// Set on a Task the operator created from a plan: which planning attempt produced it.
    pub const PLAN_ATTEMPT: &str = "aios.dev/plan-attempt";
    /// Set on a Task Hera created from a plan whose dependencies naming no other task of
    /// the plan it dropped: those names, comma-separated, as the plan had them.
    pub const DROPPED_DEPENDENCIES: &str = "aios.dev/dropped-dependencies";
    /// Set on a fix task: the Task (or, for the Project's final verification, the
    /// Project) whose failed verification it fixes.
    pub const FIXES: &str = "aios.dev/fixes";
    /// On a Secret: the hosts its credential may be sent to, comma-separated
    /// (`api.anthropic.com`, `git.example.com`); any port of those hosts.
    pub const CREDENTIAL_HOSTS: &str = "aios.dev/credential-hosts";
    /// Kubernetes' hint to a ReplicaSet scaling down: pods with a lower cost go first.
    /// The operator sets it on agent pods from the tasks each one is running.
    pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
}

/// Where a planning task's plan is kept (see [`crate::task::PlanRef`]).
pub mod plan {
    /// The key of a plan ConfigMap's part of the plan's JSON.
    pub const PART_KEY: &str = "plan.json";
}

/// Finalizers: only for cleanup outside Kubernetes (the bus, the vector store).
pub mod finalizers {
    /// On a Task: cancel the in-flight attempt on the bus before the Task goes away.
    pub const TASK_CANCEL: &str = "aios.dev/cancel-in-flight";
}

/// Server-side apply field managers, one per writer.
pub mod field_managers {
    /// Hera, the Project controller.
    pub const PROJECT: &str = "aios-operator/project";
    /// Every Task status write (dispatch, retries, timeouts, agents' events): one
    /// manager, so a field a write leaves out is removed.
    pub const TASK: &str = "aios-operator/task";
    /// The ConfigMaps that keep Hera's plans (written from the planning task's event).
    pub const PLAN: &str = "aios-operator/plan";
    /// The cancel finalizer on Tasks.
    pub const FINALIZER: &str = "aios-operator/finalizer";
    /// The Agent controller.
    pub const AGENT: &str = "aios-operator/agent";
    /// The ModelProvider controller.
    pub const MODEL_PROVIDER: &str = "aios-operator/model-provider";
}

/// Redis keys the operator and the agents share.
pub mod redis {
    /// How long a cancel (or done) mark is kept: longer than any dispatch waits in its
    /// queue or is redelivered.
    pub const MARK_TTL_SECONDS: u64 = 7 * 24 * 3600;

    /// The key that marks attempt `attempt` (`<task uid>-<attempt>`, the dispatch's
    /// message id) cancelled: no worker starts it, and one working on it stops.
    pub fn cancel_key(attempt: &str) -> String {
        format!("aios:cancel:{attempt}")
    }
}

/// Environment variables that the operator sets on agent pods and agents read.
pub mod env {
    /// The variable an agent reads the Secret key `key` of Secret `secret` from
    /// (a provider's API key, a repository's token): `AIOS_SECRET_<SECRET>_<KEY>`, upper
    /// case, with every character that is not a letter or digit turned into `_`.
    pub fn secret_variable(secret: &str, key: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        format!("AIOS_SECRET_{}_{}", clean(secret), clean(key))
    }
}
