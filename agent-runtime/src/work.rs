//! Doing one attempt: gather the context (for a work task, the repository within the
//! model's context window: [`crate::context`]), ask the model for a structured answer
//! (repairing it once), check it (for a work task, applying its edits to the files it
//! was shown: [`crate::edit`]), deliver it, remember it. No I/O with the bus here; the
//! worker reports what this returns.

use std::{collections::BTreeMap, sync::Arc};

use aios_crds::{
    TaskResult, Usage,
    bus::{MemoryNote, TaskDispatch, TaskOutput},
    common::SecretKeyRef,
    credentials::Purpose,
    limits::HERA_PLAN,
    names::env::secret_variable,
};

use crate::{
    context::{self, Relevance, RepositoryContext},
    credentials::{CredentialBroker, CredentialError},
    edit,
    git::{Delivered, DeliveryError, Git, TOKEN_VARIABLE, Unsafe, Workspace},
    llm::{self, ChatMessage, ChatRequest, Llm, LlmError, router::EnvLookup},
    memory::{Filter, Hit, Kind, Memory, MemoryError, Record},
    output::{self, Checked, FileOutput, WorkOutput},
    paths::PathRules,
    persona::Persona,
    prompt,
};

/// How many memories go into a prompt, from this project and from others.
const MEMORIES_PER_SCOPE: usize = 3;
/// The most files of the work tree listed: a bound on the walk of a huge repository.
const LISTED_FILES: usize = 50_000;

/// Where Hera's plan is committed.
pub const PLAN_FILE: &str = ".aios/plan.json";
/// The most bytes of [`PLAN_FILE`] read back: the largest plan allowed, with room for
/// the file's indentation.
const PLAN_FILE_BYTES: u64 = 4 * HERA_PLAN.bytes as u64;

/// What an attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Success {
    /// The result for the Task's status, and a planning task's plan.
    pub output: TaskOutput,
    /// What the model calls used.
    pub usage: Usage,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// CamelCase reason.
    pub reason: String,
    /// A sentence a person can act on.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// What the model calls used before the failure.
    pub usage: Usage,
}

impl Failure {
    fn new(reason: &str, message: impl Into<String>, retryable: bool, usage: &Usage) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
            retryable,
            usage: usage.clone(),
        }
    }

    fn llm(err: &LlmError, usage: &Usage) -> Self {
        Self::new(err.reason(), err.to_string(), err.retryable(), usage)
    }

    fn delivery(err: &DeliveryError, usage: &Usage) -> Self {
        Self::new(err.reason(), err.to_string(), err.retryable(), usage)
    }
}

/// Everything an attempt needs, shared by the worker's tasks.
pub struct Worker {
    /// The role served.
    pub role: String,
    /// Who the agent is.
    pub persona: Persona,
    /// The models.
    pub llm: Arc<dyn Llm>,
    /// Long-term memory.
    pub memory: Arc<dyn Memory>,
    /// Delivery.
    pub git: Git,
    /// Reads repository tokens.
    pub env: EnvLookup,
    /// Where the attempt's credentials come from, when the operator gives them.
    pub credentials: Option<Credentials>,
}

/// The operator's credential endpoint, and which model keys to ask it for.
#[derive(Clone)]
pub struct Credentials {
    /// Asks the operator.
    pub broker: Arc<CredentialBroker>,
    /// The Secret keys of the model providers the router may use now.
    pub model_secrets: Arc<dyn Fn() -> Vec<SecretKeyRef> + Send + Sync>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("role", &self.role)
            .field("persona", &self.persona.name)
            .finish_non_exhaustive()
    }
}

fn project_key(dispatch: &TaskDispatch) -> String {
    object_key(&dispatch.project)
}

/// `<namespace>/<name>`: how memory names a project.
fn object_key(object: &aios_crds::bus::ObjectRef) -> String {
    format!("{}/{}", object.namespace, object.name)
}

impl Worker {
    /// Does one attempt.
    pub async fn perform(&self, dispatch: &TaskDispatch) -> Result<Success, Failure> {
        if let Some(credentials) = &self.credentials {
            credentials
                .broker
                .ask_model_keys(dispatch, &(credentials.model_secrets)())
                .await;
        }
        if dispatch.spec.planning {
            self.plan(dispatch).await
        } else {
            self.build(dispatch).await
        }
    }

    /// The repository token: the Project's Secret, from the operator for this attempt
    /// (or, without the operator's endpoint, from the environment variable an Agent's
    /// `env` may set), else the agent's default token; only ever for an `https://` URL.
    /// A Project naming a Secret for any other URL is refused (the API server refuses it
    /// too; this holds for objects stored before that rule).
    /// The error is the reason, why, and whether another attempt may do better.
    async fn token(
        &self,
        dispatch: &TaskDispatch,
    ) -> Result<Option<String>, (&'static str, String, bool)> {
        let repository = &dispatch.repository;
        if !repository.url.starts_with("https://") {
            if let Some(secret) = &repository.secret_ref {
                return Err((
                    "CredentialRefused",
                    format!(
                        "the repository credential (Secret {:?}, key {:?}) is sent only over https://, not to {}",
                        secret.name,
                        secret.key,
                        aios_crds::text::without_userinfo(&repository.url)
                    ),
                    false,
                ));
            }
            return Ok(None);
        }
        if let Some(secret) = &repository.secret_ref {
            if let Some(credentials) = &self.credentials {
                return match credentials.broker.ask(dispatch, Purpose::Git, secret).await {
                    Ok(token) => Ok(Some(token)),
                    Err(err @ CredentialError::Refused { .. }) => {
                        Err(("CredentialRefused", err.to_string(), false))
                    }
                    Err(err) => Err(("CredentialUnavailable", err.to_string(), true)),
                };
            }
            if let Some(token) = (self.env)(&secret_variable(&secret.name, &secret.key)) {
                return Ok(Some(token));
            }
        }
        Ok((self.env)(TOKEN_VARIABLE))
    }

    /// The memories nearest to the task: its Project's, and, when the Project allows
    /// it, its namespace's other Projects'; never another namespace's.
    async fn recall(&self, dispatch: &TaskDispatch) -> Vec<Hit> {
        let project = project_key(dispatch);
        let query = format!("{}\n{}", dispatch.spec.title, dispatch.spec.description);
        let namespace = &dispatch.project.namespace;
        let mut filters = vec![Filter {
            project: Some(project.clone()),
            ..Filter::in_namespace(namespace)
        }];
        if dispatch.recall_across_projects {
            filters.push(Filter {
                not_project: Some(project.clone()),
                ..Filter::in_namespace(namespace)
            });
        }
        let mut hits = Vec::new();
        for filter in filters {
            match self
                .memory
                .search(&query, &filter, MEMORIES_PER_SCOPE)
                .await
            {
                Ok(found) => hits.extend(found),
                Err(err) => {
                    tracing::warn!(error = %err, "memory search failed; working without it");
                }
            }
        }
        hits
    }

    async fn remember(&self, dispatch: &TaskDispatch, kind: Kind, text: String) {
        let record = Record {
            text,
            project: project_key(dispatch),
            task: Some(dispatch.task.name.clone()),
            role: self.role.clone(),
            kind,
        };
        if let Err(err) = self.memory.store(&record).await {
            tracing::warn!(error = %err, "storing a memory failed");
        }
    }

    /// Stores a note the operator sent this role (a verification's result) in long-term
    /// memory, as this role's. `Ok(false)` for a kind this build does not know (sent by
    /// a newer operator): nothing is stored.
    pub async fn remember_note(&self, note: &MemoryNote) -> Result<bool, MemoryError> {
        let Some(kind) = Kind::parse(&note.kind) else {
            return Ok(false);
        };
        let record = Record {
            text: note.text.clone(),
            project: object_key(&note.project),
            task: note.task.clone(),
            role: self.role.clone(),
            kind,
        };
        self.memory.store(&record).await.map(|()| true)
    }

    fn request(
        &self,
        dispatch: &TaskDispatch,
        schema: serde_json::Value,
        name: &str,
        repository: &RepositoryContext,
        memories: &[Hit],
    ) -> ChatRequest {
        ChatRequest {
            messages: vec![
                prompt::system_message(&self.persona),
                prompt::task_message(dispatch, repository, memories),
            ],
            schema,
            schema_name: name.to_owned(),
            complexity: dispatch.spec.complexity,
            hints: dispatch.models.clone(),
            project: project_key(dispatch),
        }
    }

    /// Opens the repository and finds an earlier delivery of this attempt: a commit
    /// for it on the branch means an earlier delivery of this message got that far
    /// before its worker died, so it is reported, not redone.
    async fn open(
        &self,
        dispatch: &TaskDispatch,
    ) -> Result<(Workspace, Option<Delivered>), Failure> {
        let usage = Usage::default();
        let token = self
            .token(dispatch)
            .await
            .map_err(|(reason, why, retryable)| Failure::new(reason, why, retryable, &usage))?;
        let workspace = self
            .git
            .open(&dispatch.repository, token)
            .await
            .map_err(|err| Failure::delivery(&err, &usage))?;
        let delivered = workspace
            .find_delivered(&dispatch.attempt_id().message_id())
            .await
            .map_err(|err| Failure::delivery(&err, &usage))?;
        if let Some(delivered) = &delivered {
            tracing::info!(commit = %delivered.commit, "the attempt was delivered before; reporting that commit");
        }
        Ok((workspace, delivered))
    }

    async fn deliver(
        &self,
        dispatch: &TaskDispatch,
        workspace: &Workspace,
        files: &[FileOutput],
        summary: &str,
        usage: &Usage,
    ) -> Result<Delivered, Failure> {
        let rules = PathRules::new(&dispatch.paths, dispatch.spec.planning)
            .map_err(|e| Failure::new("InvalidPolicy", e, false, usage))?;
        for file in files {
            rules.check(&file.path).map_err(|refusal| {
                let err = DeliveryError::UnsafePath {
                    path: file.path.clone(),
                    why: Unsafe::Policy(refusal),
                };
                Failure::delivery(&err, usage)
            })?;
        }
        let task = format!("{}/{}", dispatch.task.namespace, dispatch.task.name);
        workspace
            .deliver(
                files,
                &self.persona,
                &dispatch.spec.title,
                summary,
                &task,
                &dispatch.attempt_id().message_id(),
            )
            .await
            .map_err(|err| Failure::delivery(&err, usage))
    }

    /// Plans, and commits the plan as [`PLAN_FILE`] so the decision is in the
    /// repository's history too.
    async fn plan(&self, dispatch: &TaskDispatch) -> Result<Success, Failure> {
        let mut usage = Usage::default();
        let project = dispatch.project.name.clone();
        let roles = dispatch.available_roles.clone();
        let (workspace, delivered) = self.open(dispatch).await?;
        if let Some(delivered) = delivered
            && let Some(plan) = workspace
                .read_file(PLAN_FILE, PLAN_FILE_BYTES)
                .and_then(|text| output::parse_plan(&project, &roles, &text).usable())
        {
            let mut done = success(delivered, None, usage);
            done.output.plan = Some(plan);
            return Ok(done);
        }
        self.remember(dispatch, Kind::Brief, dispatch.brief.clone())
            .await;
        let memories = self.recall(dispatch).await;
        let request = self.request(
            dispatch,
            output::plan_schema(&dispatch.available_roles),
            "plan",
            &RepositoryContext::default(),
            &memories,
        );
        // A plan with problems after the repair is reported all the same: the verdict is
        // Hera's, which refuses it with every problem and asks for another.
        let answer = ask(self.llm.as_ref(), true, request, &mut usage, |text| {
            output::parse_plan(&project, &roles, text)
        })
        .await?;
        let plan = answer.value;
        let notes = answer.problems.map(|problems| {
            format!("The agent's checks still found, after one repair: {problems}.")
        });
        let summary = format!(
            "Planned {} tasks: {}.",
            plan.len(),
            plan.iter()
                .map(|t| format!("{} ({})", t.name, t.role))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let file = FileOutput {
            path: PLAN_FILE.to_owned(),
            content: serde_json::to_string_pretty(&serde_json::json!({ "tasks": plan }))
                .unwrap_or_default()
                + "\n",
        };
        let delivered = self
            .deliver(dispatch, &workspace, &[file], &summary, &usage)
            .await?;
        self.remember(dispatch, Kind::Decision, summary).await;
        let mut done = success(delivered, notes, usage);
        done.output.plan = Some(plan);
        Ok(done)
    }

    /// What the work prompt shows of the repository: as much as the context window of
    /// the models that may answer leaves once the rest of the prompt, the answer and
    /// the repair round have their room.
    fn repository(
        &self,
        dispatch: &TaskDispatch,
        workspace: &Workspace,
        memories: &[Hit],
    ) -> RepositoryContext {
        let fixed = llm::estimate_request_tokens(&self.request(
            dispatch,
            output::work_schema(),
            "result",
            &RepositoryContext::default(),
            memories,
        ));
        let window = self
            .llm
            .context_window(dispatch.spec.complexity, &dispatch.models);
        let budget = context::repository_budget(window, fixed);
        let spec = &dispatch.spec;
        let task = format!(
            "{}\n{}\n{}",
            spec.title,
            spec.description,
            spec.acceptance_criteria.join("\n")
        );
        let delivered: Vec<String> = dispatch
            .dependencies
            .iter()
            .flat_map(|dep| dep.files.iter().cloned())
            .collect();
        let remembered: Vec<String> = memories.iter().map(|h| h.record.text.clone()).collect();
        let files = workspace.list_files(LISTED_FILES);
        let repository = context::build_context(
            &files,
            &Relevance {
                task: &task,
                delivered: &delivered,
                memories: &remembered,
            },
            budget,
            |path, limit| workspace.read_file(path, limit),
        );
        tracing::info!(
            window,
            fixed,
            budget,
            listed = files.len(),
            shown = %context::describe(&repository),
            "repository context"
        );
        repository
    }

    async fn build(&self, dispatch: &TaskDispatch) -> Result<Success, Failure> {
        let mut usage = Usage::default();
        let (workspace, delivered) = self.open(dispatch).await?;
        if let Some(delivered) = delivered {
            return Ok(success(delivered, None, usage));
        }
        let memories = self.recall(dispatch).await;
        let repository = self.repository(dispatch, &workspace, &memories);
        let shown: BTreeMap<String, String> = repository
            .files
            .iter()
            .map(|f| (f.path.clone(), f.content.clone()))
            .collect();
        let request = self.request(
            dispatch,
            output::work_schema(),
            "result",
            &repository,
            &memories,
        );
        let work: WorkOutput =
            ask(
                self.llm.as_ref(),
                false,
                request,
                &mut usage,
                |text| match output::parse_work(text) {
                    Ok(work) => edit::resolve(work, &shown, |path| workspace.exists(path))
                        .map_or_else(Checked::from, Checked::Good),
                    Err(problem) => Checked::Unusable(problem),
                },
            )
            .await?
            .value;
        let delivered = self
            .deliver(dispatch, &workspace, &work.files, &work.summary, &usage)
            .await?;
        self.remember(
            dispatch,
            Kind::Result,
            format!("{}: {}", dispatch.spec.title, work.summary),
        )
        .await;
        Ok(success(delivered, work.notes, usage))
    }
}

/// A model's answer that was used, and what was still wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    /// The answer.
    pub value: T,
    /// The problems the checks found in it after the repair, when it was usable all the
    /// same (a plan: Hera gives the verdict); `None` when it passed.
    pub problems: Option<String>,
}

/// Asks `llm` for a structured answer and checks it with `check`. An answer with
/// problems gets one repair request carrying them. After it, a usable answer (the
/// repair's, else the first) is returned with its problems; only when neither is
/// usable does the attempt fail (`InvalidPlan` for a planning task, else
/// `InvalidOutput`; retryable).
///
/// A plan's repair request carries the plan it repairs. A work task's is its first
/// request plus the repair message, without the first answer: its prompt was sized to
/// the context window with room for one answer, not for an answer echoed back, and
/// the problems name each file and hunk to redo.
pub async fn ask<T>(
    llm: &dyn Llm,
    planning: bool,
    mut request: ChatRequest,
    usage: &mut Usage,
    check: impl Fn(&str) -> Checked<T>,
) -> Result<Answer<T>, Failure> {
    let mut problem = String::new();
    let mut refused: Option<&'static str> = None;
    let mut flawed: Option<Answer<T>> = None;
    for round in 0..2 {
        if round == 1 {
            request.messages.push(prompt::repair_message(&problem));
            tracing::info!(problem = %problem, "asking the model to repair its answer");
        }
        let response = llm
            .chat(&request)
            .await
            .map_err(|err| Failure::llm(&err, usage))?;
        response.call.add_to(usage);
        match check(&response.content) {
            Checked::Good(value) => {
                return Ok(Answer {
                    value,
                    problems: None,
                });
            }
            Checked::Flawed(value, found) => {
                problem.clone_from(&found);
                flawed = Some(Answer {
                    value,
                    problems: Some(found),
                });
            }
            Checked::Unusable(found) => {
                problem = found;
                refused = None;
            }
            Checked::Refused(reason, found) => {
                problem = found;
                refused = Some(reason);
            }
        }
        if planning {
            request.messages.push(ChatMessage::new(
                crate::llm::Role::Assistant,
                response.content,
            ));
        }
    }
    if let Some(answer) = flawed {
        return Ok(answer);
    }
    if let Some(reason) = refused {
        return Err(Failure::new(
            reason,
            format!("the model's answer was refused after one repair: {problem}"),
            false,
            usage,
        ));
    }
    let what = if planning {
        "InvalidPlan"
    } else {
        "InvalidOutput"
    };
    Err(Failure::new(
        what,
        format!("the model's answer was unusable after one repair: {problem}"),
        true,
        usage,
    ))
}

fn success(delivered: Delivered, notes: Option<String>, usage: Usage) -> Success {
    Success {
        output: TaskResult {
            summary: delivered.summary,
            files: delivered.files,
            commit: Some(delivered.commit),
            notes: notes.filter(|n| !n.trim().is_empty()),
            plan_ref: None,
        }
        .into(),
        usage,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use aios_crds::{Complexity, Tier};
    use futures::future::BoxFuture;

    use super::*;
    use crate::llm::{Call, ChatResponse, Role};

    /// A model that gives its scripted answers in turn and keeps the requests.
    #[derive(Debug, Default)]
    struct Scripted {
        answers: Mutex<VecDeque<String>>,
        requests: Arc<Mutex<Vec<ChatRequest>>>,
    }

    impl Scripted {
        fn new(answers: &[&str]) -> Self {
            Self {
                answers: Mutex::new(answers.iter().map(|a| (*a).to_owned()).collect()),
                requests: Arc::default(),
            }
        }
    }

    impl Llm for Scripted {
        fn chat<'a>(
            &'a self,
            request: &'a ChatRequest,
        ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
            self.requests.lock().unwrap().push(request.clone());
            let content = self.answers.lock().unwrap().pop_front().unwrap();
            Box::pin(async move {
                Ok(ChatResponse {
                    content,
                    call: Call {
                        provider: "local".into(),
                        model: "tiny".into(),
                        tier: Tier::Local,
                        input_tokens: 10,
                        output_tokens: 5,
                        cost_usd: 0.0,
                        latency: Duration::from_millis(1),
                    },
                })
            })
        }
    }

    fn request() -> ChatRequest {
        ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "Plan the shop")],
            schema: output::plan_schema(&[]),
            schema_name: "plan".into(),
            complexity: Complexity::High,
            hints: aios_crds::bus::ModelHints::default(),
            project: "team-a/shop".into(),
        }
    }

    const CYCLIC: &str = r#"{"tasks":[
        {"name":"api","title":"API","role":"backend","description":"d","dependsOn":["tests"]},
        {"name":"tests","title":"Tests","role":"qa","description":"d","dependsOn":["api"]}]}"#;

    fn check_plan(text: &str) -> Checked<Vec<aios_crds::PlannedTask>> {
        output::parse_plan("shop", &[], text)
    }

    #[tokio::test]
    async fn a_plan_still_invalid_after_its_repair_is_reported_for_hera_to_judge() {
        let llm = Scripted::new(&[CYCLIC, CYCLIC]);
        let mut usage = Usage::default();
        let answer = ask(&llm, true, request(), &mut usage, check_plan)
            .await
            .unwrap();
        assert_eq!(answer.value.len(), 2, "the model's plan, as it is");
        let problems = answer.problems.unwrap();
        assert!(problems.contains("in a cycle"), "{problems}");
        let requests = llm.requests.lock().unwrap();
        assert_eq!(requests.len(), 2, "one repair request");
        let repair = &requests[1].messages.last().unwrap().content;
        assert!(repair.contains("in a cycle"), "{repair}");
        assert_eq!(usage.local_requests, 2);
    }

    #[tokio::test]
    async fn a_repaired_plan_is_used_and_an_unusable_repair_keeps_the_first_plan() {
        let good = CYCLIC.replacen(r#""dependsOn":["tests"]"#, r#""dependsOn":[]"#, 1);
        let llm = Scripted::new(&[CYCLIC, &good]);
        let answer = ask(&llm, true, request(), &mut Usage::default(), check_plan)
            .await
            .unwrap();
        assert_eq!(answer.problems, None);
        assert_eq!(answer.value[0].name, "api");

        let llm = Scripted::new(&[CYCLIC, "not a plan"]);
        let answer = ask(&llm, true, request(), &mut Usage::default(), check_plan)
            .await
            .unwrap();
        assert!(answer.problems.unwrap().contains("in a cycle"));
    }

    #[tokio::test]
    async fn an_answer_unusable_after_its_repair_fails_the_attempt() {
        let llm = Scripted::new(&["not a plan", "still not"]);
        let failure = ask(&llm, true, request(), &mut Usage::default(), check_plan)
            .await
            .unwrap_err();
        assert_eq!(failure.reason, "InvalidPlan");
        assert!(failure.retryable);
        assert_eq!(failure.usage.local_requests, 2);
    }
}
