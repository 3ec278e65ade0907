//! Hermes' side of the conversation: what it recalls, what it asks, and the draft it
//! has the model write. The model is any [`Llm`] (the router, or a script in tests); the
//! person is any reader and writer (the terminal, or a script in tests).

use std::{
    fmt::Write as _,
    io::{BufRead, Write},
};

use aios_crds::{Complexity, bus::ModelHints};
use aios_models::{
    llm::{Call, ChatMessage, ChatRequest, Llm, Role},
    memory::{Filter, Memory},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::manifest::{self, Draft, Facts, Manifest};
use crate::CliError;

/// The most clarifying questions Hermes asks.
pub const QUESTIONS_MAX: usize = 3;
/// How many notes of earlier Projects Hermes recalls.
pub const RECALLED_MAX: usize = 3;

const SYSTEM: &str = "You are Hermes, the concierge of AIOS, a team of AI software agents. \
You help a person describe a software project precisely enough for the agents to plan and \
build it. Answer only with JSON matching the schema you are given.";

/// Hermes, with a model and a memory.
pub struct Hermes<'a> {
    /// The model, through the router.
    pub llm: &'a dyn Llm,
    /// Long-term memory: notes of earlier Projects; none when no store was named.
    pub memory: Option<&'a dyn Memory>,
    /// Every model call made so far.
    pub calls: Vec<Call>,
}

impl std::fmt::Debug for Hermes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hermes")
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Questions {
    questions: Vec<String>,
}

impl<'a> Hermes<'a> {
    /// Hermes over `llm` and `memory`.
    pub fn new(llm: &'a dyn Llm, memory: Option<&'a dyn Memory>) -> Self {
        Self {
            llm,
            memory,
            calls: Vec::new(),
        }
    }

    /// Notes of earlier Projects like `brief` in `namespace`, nearest first; none when
    /// the memory cannot answer (it is context, not state), with the reason.
    pub async fn recall(&self, namespace: &str, brief: &str) -> (Vec<String>, Option<String>) {
        let Some(memory) = self.memory else {
            return (
                Vec::new(),
                Some(
                    "no store named (--memory-dir, or QDRANT_URL for the agents' shared memory)"
                        .to_owned(),
                ),
            );
        };
        match memory
            .search(brief, &Filter::in_namespace(namespace), RECALLED_MAX)
            .await
        {
            Ok(hits) => (hits.into_iter().map(|h| h.record.text).collect(), None),
            Err(err) => (Vec::new(), Some(err.to_string())),
        }
    }

    /// At most [`QUESTIONS_MAX`] questions about what `facts` leave ambiguous (stack,
    /// tests, constraints); the repository is asked by the caller, not the model.
    pub async fn questions(
        &mut self,
        facts: &Facts,
        recalled: &[String],
    ) -> Result<Vec<String>, CliError> {
        let prompt = format!(
            "A person asked for this project:\n\n{}\n\n{}Which details are ambiguous and would change \
             how it is built (language or framework, how to test it, constraints)? Ask at most {QUESTIONS_MAX} \
             short questions; ask none if the request is clear. Do not ask about the git repository.",
            facts.brief,
            recalled_text(recalled)
        );
        let schema = json!({
            "type": "object",
            "properties": {"questions": {"type": "array", "items": {"type": "string"}, "maxItems": QUESTIONS_MAX}},
            "required": ["questions"],
            "additionalProperties": false
        });
        let questions = self
            .ask(prompt, schema, "questions", |text| {
                let q: Questions = serde_json::from_str(text).map_err(|e| vec![e.to_string()])?;
                Ok(q.questions)
            })
            .await?;
        Ok(questions
            .into_iter()
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .take(QUESTIONS_MAX)
            .collect())
    }

    /// The Project the model drafts from `facts`, checked against the CRD's schema.
    pub async fn draft(
        &mut self,
        facts: &Facts,
        recalled: &[String],
    ) -> Result<Manifest, CliError> {
        let mut known = String::new();
        for (q, a) in &facts.answers {
            let _ = writeln!(known, "Q: {q}\nA: {a}");
        }
        let prompt = format!(
            "Write the manifest's parts for this project.\n\nRequest:\n{}\n\n{}{}Write `description` as \
             the complete brief the agents plan from: what to build, the stack, the constraints and \
             how it will be tested, in plain language. `name` is a short DNS label (lower-case \
             letters, digits, '-'; at most {} characters). Set `testCommand` only to a command the \
             person named.",
            facts.brief,
            if known.is_empty() {
                String::new()
            } else {
                format!("Their answers:\n{known}\n")
            },
            recalled_text(recalled),
            manifest::NAME_MAX
        );
        self.ask(prompt, manifest::draft_schema(), "project_draft", |text| {
            let draft: Draft = serde_json::from_str(text).map_err(|e| vec![e.to_string()])?;
            manifest::build(&draft, facts)
        })
        .await
    }

    /// Asks the model for JSON matching `schema`, parsed by `parse`; an unusable answer
    /// gets one repair request naming its problems, then fails.
    async fn ask<T>(
        &mut self,
        prompt: String,
        schema: Value,
        schema_name: &str,
        parse: impl Fn(&str) -> Result<T, Vec<String>>,
    ) -> Result<T, CliError> {
        let mut request = ChatRequest {
            messages: vec![
                ChatMessage::new(Role::System, SYSTEM),
                ChatMessage::new(Role::User, prompt),
            ],
            schema,
            schema_name: schema_name.to_owned(),
            complexity: Complexity::Low,
            hints: ModelHints::default(),
            project: "hermes".to_owned(),
        };
        let mut problems = Vec::new();
        for round in 0..2 {
            let answer = self
                .llm
                .chat(&request)
                .await
                .map_err(|e| CliError::Model(format!("no model answered Hermes: {e}")))?;
            self.calls.push(answer.call.clone());
            match parse(answer.content.trim()) {
                Ok(value) => return Ok(value),
                Err(found) => problems = found,
            }
            if round == 0 {
                request
                    .messages
                    .push(ChatMessage::new(Role::Assistant, answer.content));
                request.messages.push(ChatMessage::new(
                    Role::User,
                    format!(
                        "That answer cannot be used: {}. Answer again with JSON matching the schema.",
                        problems.join("; ")
                    ),
                ));
            }
        }
        Err(CliError::Model(format!(
            "the model's {schema_name} was unusable after one repair request: {}",
            problems.join("; ")
        )))
    }
}

fn recalled_text(recalled: &[String]) -> String {
    if recalled.is_empty() {
        return String::new();
    }
    let mut text = "Notes from earlier projects like this one:\n".to_owned();
    for note in recalled {
        let _ = writeln!(text, "- {}", note.replace('\n', " "));
    }
    text.push('\n');
    text
}

/// Asks `question` on `prompts` and reads one line of `input`; `None` at end of input.
/// The question is a model's: its control and bidirectional characters are removed
/// before it reaches the terminal (`aios_crds::text`).
pub fn ask_person(
    question: &str,
    input: &mut impl BufRead,
    prompts: &mut impl Write,
) -> Result<Option<String>, CliError> {
    let question = aios_crds::text::sanitize(question, aios_crds::text::Shape::Lines);
    write!(prompts, "{question}\n> ")?;
    prompts.flush()?;
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim().to_owned()))
}

/// The whole conversation: what is not known yet is asked of the person (what to build,
/// the repository), the model's clarifying questions are put to them, and the model
/// drafts the manifest. `interactive` false asks nothing: everything must be given.
pub async fn converse(
    hermes: &mut Hermes<'_>,
    mut facts: Facts,
    interactive: bool,
    input: &mut impl BufRead,
    prompts: &mut impl Write,
) -> Result<Manifest, CliError> {
    if facts.brief.trim().is_empty() {
        if !interactive {
            return Err(CliError::Usage(
                "--brief is required when Hermes cannot ask (no terminal)".to_owned(),
            ));
        }
        facts.brief = required(
            ask_person("Hermes: What should the agents build?", input, prompts)?,
            "what to build",
        )?;
    }
    if facts.repository.trim().is_empty() {
        if !interactive {
            return Err(CliError::Usage(
                "--repo is required when Hermes cannot ask (no terminal)".to_owned(),
            ));
        }
        facts.repository = required(
            ask_person(
                "Hermes: Which git repository should the work be delivered into (URL)?",
                input,
                prompts,
            )?,
            "the repository",
        )?;
    }
    let (recalled, unavailable) = hermes.recall(&facts.namespace, &facts.brief).await;
    match (&unavailable, recalled.len()) {
        (Some(_), _) if hermes.memory.is_none() => writeln!(
            prompts,
            "Hermes: (no memory store named: --memory-dir, or QDRANT_URL for the agents' shared \
             memory; no earlier projects recalled)"
        )?,
        (Some(why), _) => writeln!(
            prompts,
            "Hermes: (memory unavailable, going without it: {why})"
        )?,
        (None, 0) => writeln!(
            prompts,
            "Hermes: (no earlier projects like this one in memory)"
        )?,
        (None, n) => writeln!(
            prompts,
            "Hermes: I recalled {n} note(s) from earlier projects like this one and used them."
        )?,
    }
    if interactive {
        for question in hermes.questions(&facts, &recalled).await? {
            let Some(answer) = ask_person(&format!("Hermes: {question}"), input, prompts)? else {
                break;
            };
            if !answer.is_empty() {
                facts.answers.push((question, answer));
            }
        }
    }
    let project = hermes.draft(&facts, &recalled).await?;
    if let Some(call) = hermes.calls.last() {
        writeln!(
            prompts,
            "Hermes: drafted with {} on {} ({:?}); {} model call(s).",
            call.model,
            call.provider,
            call.tier,
            hermes.calls.len()
        )?;
    }
    Ok(project)
}

fn required(answer: Option<String>, what: &str) -> Result<String, CliError> {
    answer
        .filter(|a| !a.is_empty())
        .ok_or_else(|| CliError::Usage(format!("Hermes needs {what}; nothing was given")))
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Mutex, time::Duration};

    use aios_crds::Tier;
    use aios_models::{
        llm::{ChatResponse, LlmError},
        memory::{Hit, Kind, MemoryError, Record},
    };
    use futures::future::BoxFuture;

    use super::*;

    /// A model that answers from a script and keeps every request.
    #[derive(Default)]
    struct Script {
        answers: Mutex<VecDeque<String>>,
        requests: Mutex<Vec<ChatRequest>>,
    }

    impl Script {
        fn new(answers: &[&str]) -> Self {
            Self {
                answers: Mutex::new(answers.iter().map(|a| (*a).to_owned()).collect()),
                requests: Mutex::default(),
            }
        }
        fn requests(&self) -> Vec<ChatRequest> {
            self.requests.lock().unwrap().clone()
        }
    }

    impl Llm for Script {
        fn chat<'a>(
            &'a self,
            request: &'a ChatRequest,
        ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
            self.requests.lock().unwrap().push(request.clone());
            let answer = self.answers.lock().unwrap().pop_front();
            Box::pin(async move {
                let content =
                    answer.ok_or_else(|| LlmError::AllFailed(vec!["script ended".into()]))?;
                Ok(ChatResponse {
                    content,
                    call: Call {
                        provider: "ollama".into(),
                        model: "qwen2.5-coder".into(),
                        tier: Tier::Local,
                        input_tokens: 100,
                        output_tokens: 20,
                        cost_usd: 0.0,
                        latency: Duration::from_millis(5),
                    },
                })
            })
        }
        fn context_window(&self, _: Complexity, _: &ModelHints) -> u32 {
            8192
        }
    }

    /// A memory holding one earlier Project's brief.
    struct Remembers;

    impl Memory for Remembers {
        fn store<'a>(&'a self, _: &'a Record) -> BoxFuture<'a, Result<(), MemoryError>> {
            Box::pin(async { Ok(()) })
        }
        fn search<'a>(
            &'a self,
            _: &'a str,
            filter: &'a Filter,
            _: usize,
        ) -> BoxFuture<'a, Result<Vec<Hit>, MemoryError>> {
            let namespace = filter.namespace.clone();
            Box::pin(async move {
                Ok(vec![Hit {
                    record: Record {
                        text: "todo-v1 used FastAPI and pytest; SQLite was enough".into(),
                        project: format!("{namespace}/todo-v1"),
                        task: None,
                        role: "cto".into(),
                        kind: Kind::Brief,
                    },
                    score: 0.9,
                }])
            })
        }
    }

    /// What a script gives: a brief and a repository, nothing to ask.
    fn given() -> Facts {
        Facts {
            brief: "A todo API".into(),
            repository: "https://git.example/todo.git".into(),
            ..seed()
        }
    }

    /// The conversation without a terminal.
    async fn unattended(model: &Script, facts: Facts) -> Result<Manifest, CliError> {
        let mut hermes = Hermes::new(model, None);
        converse(
            &mut hermes,
            facts,
            false,
            &mut "".as_bytes(),
            &mut Vec::new(),
        )
        .await
    }

    fn seed() -> Facts {
        Facts {
            branch: "main".into(),
            namespace: "team-a".into(),
            ..Facts::default()
        }
    }

    const DRAFT: &str = r#"{"name": "todo-api", "description": "A todo REST API in Python with FastAPI, tested with pytest.", "testCommand": "python3 -m pytest -q"}"#;

    #[tokio::test]
    async fn a_scripted_conversation_becomes_a_validated_manifest() {
        let model = Script::new(&[
            r#"{"questions": ["Which framework?", "How should it be tested?"]}"#,
            DRAFT,
        ]);
        let mut hermes = Hermes::new(&model, Some(&Remembers));
        let mut input =
            "A todo API\nhttps://git.example/todo.git\nFastAPI\npython3 -m pytest -q\n".as_bytes();
        let mut prompts = Vec::new();
        let project = converse(&mut hermes, seed(), true, &mut input, &mut prompts)
            .await
            .unwrap()
            .project;
        let said = String::from_utf8(prompts).unwrap();
        assert!(
            said.contains("Hermes: What should the agents build?"),
            "{said}"
        );
        assert!(said.contains("Hermes: Which framework?"), "{said}");
        assert!(
            said.contains("recalled 1 note(s) from earlier projects"),
            "{said}"
        );
        assert!(
            said.contains("drafted with qwen2.5-coder on ollama (Local); 2 model call(s)"),
            "{said}"
        );
        assert_eq!(project.metadata.name.as_deref(), Some("todo-api"));
        assert_eq!(project.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(project.spec.repository.url, "https://git.example/todo.git");
        assert_eq!(
            project.spec.verify.unwrap().command,
            "python3 -m pytest -q",
            "the person named it"
        );
        let draft_prompt = &model.requests()[1].messages[1].content;
        assert!(
            draft_prompt.contains("Q: Which framework?\nA: FastAPI"),
            "{draft_prompt}"
        );
        assert!(
            draft_prompt.contains("todo-v1 used FastAPI"),
            "the recalled note: {draft_prompt}"
        );
    }

    #[tokio::test]
    async fn an_unusable_answer_gets_one_repair_request_naming_its_problems() {
        let model = Script::new(&["Sure! Here is your project: todo", DRAFT]);
        let project = unattended(&model, given()).await.unwrap().project;
        assert_eq!(project.metadata.name.as_deref(), Some("todo-api"));
        assert!(project.spec.verify.is_none(), "nobody named a test command");
        let requests = model.requests();
        assert_eq!(
            requests.len(),
            2,
            "no questions when not interactive; one repair"
        );
        let repair = &requests[1].messages;
        assert_eq!(repair[2].role, Role::Assistant);
        assert!(
            repair[3]
                .content
                .starts_with("That answer cannot be used: expected value"),
            "{}",
            repair[3].content
        );
    }

    #[tokio::test]
    async fn a_draft_the_schema_refuses_twice_is_a_clear_error() {
        let bad = r#"{"name": "Todo API", "description": "x"}"#;
        let model = Script::new(&[bad, bad, DRAFT]);
        let err = unattended(&model, given()).await.unwrap_err();
        assert_eq!(err.exit_code(), 5);
        let text = err.to_string();
        assert!(
            text.contains("project_draft was unusable after one repair request"),
            "{text}"
        );
        assert!(text.contains("\"Todo API\""), "{text}");
        assert!(model.requests()[1].messages[3].content.contains("Todo API"));
    }

    #[tokio::test]
    async fn a_hostile_draft_cannot_widen_the_manifest_or_escape_the_output_directory() {
        // Extra fields (a spec of its own) and a path for a name: both refused, twice.
        let hostile =
            r#"{"name": "../../etc/cron.d/x", "description": "d", "spec": {"suspend": true}}"#;
        let traversal = r#"{"name": "../../etc/cron.d/x", "description": "d"}"#;
        let model = Script::new(&[hostile, traversal]);
        let err = unattended(&model, given()).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("is not a DNS label"), "{text}");
        let repair = &model.requests()[1].messages[3].content;
        assert!(repair.contains("unknown field `spec`"), "{repair}");
    }

    #[tokio::test]
    async fn without_a_terminal_the_repository_must_be_given() {
        let model = Script::new(&[DRAFT]);
        let facts = Facts {
            repository: String::new(),
            ..given()
        };
        let err = unattended(&model, facts).await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--repo"), "{err}");
        assert!(
            model.requests().is_empty(),
            "no model call for a usage error"
        );
    }

    /// A hostile model asks a question full of terminal escapes: the person's terminal
    /// sees its words only.
    #[tokio::test]
    async fn a_models_question_reaches_the_terminal_without_control_characters() {
        let model = Script::new(&[
            r#"{"questions": ["\u001b]0;pwned\u0007Which \u202eframework?\u001b[2J"]}"#,
            DRAFT,
        ]);
        let mut hermes = Hermes::new(&model, None);
        let mut input = "A todo API\nhttps://git.example/todo.git\nFastAPI\n".as_bytes();
        let mut prompts = Vec::new();
        converse(&mut hermes, seed(), true, &mut input, &mut prompts)
            .await
            .unwrap();
        let said = String::from_utf8(prompts).unwrap();
        assert!(
            said.contains("Hermes: ]0;pwnedWhich framework?[2J\n> "),
            "{said:?}"
        );
        assert!(
            !said
                .chars()
                .any(|c| (c.is_control() && c != '\n') || aios_crds::text::is_bidi_control(c)),
            "{said:?}"
        );
    }

    #[tokio::test]
    async fn more_questions_than_allowed_are_cut_and_blank_ones_dropped() {
        let model = Script::new(&[r#"{"questions": ["a?", " ", "b?", "c?", "d?"]}"#]);
        let mut hermes = Hermes::new(&model, None);
        let mut facts = seed();
        facts.brief = "x".into();
        assert_eq!(
            hermes.questions(&facts, &[]).await.unwrap(),
            ["a?", "b?", "c?"]
        );
    }
}
