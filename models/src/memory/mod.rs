//! Long-term memory: texts (briefs, decisions, results) stored with their project, task
//! and role, and searched by meaning before a task.
//!
//! Two stores implement [`Memory`]: [`edge::EdgeMemory`], embedded in the agent process on
//! a local directory, and [`qdrant::QdrantMemory`], on a Qdrant server. Both keep the same
//! payload (this module's field names) and read [`Filter`] through the same neutral
//! [`Conditions`], so a record means the same thing in either.

pub mod edge;
pub mod qdrant;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

/// The Qdrant collection the agents and Hermes share.
pub const COLLECTION: &str = "aios-memory";

/// What a remembered text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A Project's brief.
    Brief,
    /// A decision, such as a plan.
    Decision,
    /// A task's result summary.
    Result,
    /// A verification's result, noted by the operator: the command, its outcome and
    /// the last lines of its output.
    Verification,
}

impl Kind {
    /// The name stored with the text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Brief => "brief",
            Self::Decision => "decision",
            Self::Result => "result",
            Self::Verification => "verification",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "brief" => Some(Self::Brief),
            "decision" => Some(Self::Decision),
            "result" => Some(Self::Result),
            "verification" => Some(Self::Verification),
            _ => None,
        }
    }
}

/// A text and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The text.
    pub text: String,
    /// `<namespace>/<project>`.
    pub project: String,
    /// The Task's name, when the text is about one.
    pub task: Option<String>,
    /// The role that wrote it.
    pub role: String,
    /// What it is.
    pub kind: Kind,
}

/// Which records a search may return. Every search is bounded to one namespace: a
/// filter without one is refused by both stores, so no caller can forget it and read
/// another namespace's memories (with a shared Qdrant collection, another team's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only records of this namespace's projects; required.
    pub namespace: String,
    /// Only this project's records.
    pub project: Option<String>,
    /// Every project's records but this one's.
    pub not_project: Option<String>,
    /// Only records of this kind.
    pub kind: Option<Kind>,
    /// Only records written by this role.
    pub role: Option<String>,
}

impl Filter {
    /// Every record of `namespace`'s projects; narrow it with the other fields.
    pub fn in_namespace(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            ..Self::default()
        }
    }
}

/// The namespace of a project key (`<namespace>/<project>`).
pub fn namespace_of(project: &str) -> &str {
    project
        .split_once('/')
        .map_or("", |(namespace, _)| namespace)
}

/// A record found by a search, with its similarity to the query (higher is closer).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The record.
    pub record: Record,
    /// Cosine similarity.
    pub score: f32,
}

/// Why memory failed. Memory is context, not truth: callers log and go on.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The embeddings could not be computed.
    #[error("embedding failed: {0}")]
    Embed(String),
    /// The store failed.
    #[error("the vector store failed: {0}")]
    Store(String),
}

/// Turns texts into vectors (one per text, in order, all of one dimension). The router
/// implements it with a provider's embeddings endpoint.
pub trait Embedder: Send + Sync {
    /// The vectors of `texts`.
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>>;
}

/// A long-term memory.
pub trait Memory: Send + Sync {
    /// Stores a record.
    fn store<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<(), MemoryError>>;
    /// The `limit` records nearest to `query` that pass `filter`, nearest first.
    fn search<'a>(
        &'a self,
        query: &'a str,
        filter: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Hit>, MemoryError>>;
}

/// No memory at all: stores nothing, finds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMemory;

impl Memory for NoMemory {
    fn store<'a>(&'a self, _record: &'a Record) -> BoxFuture<'a, Result<(), MemoryError>> {
        Box::pin(async { Ok(()) })
    }

    fn search<'a>(
        &'a self,
        _query: &'a str,
        _filter: &'a Filter,
        _limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Hit>, MemoryError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

// Payload field names. Operators and tools read these documents too, so they are part of
// the stored format: renaming one orphans what is already stored.
const TEXT: &str = "text";
const PROJECT: &str = "project";
const TASK: &str = "task";
const ROLE: &str = "role";
const KIND: &str = "kind";
const NAMESPACE: &str = "namespace";

/// The fields filters test; both stores give them keyword indexes so a filtered search
/// does not read every payload.
const FILTERED_FIELDS: [&str; 4] = [NAMESPACE, PROJECT, KIND, ROLE];

/// One payload field equal to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldMatch {
    field: &'static str,
    value: String,
}

/// A [`Filter`] in a form each store translates into its own condition types: every `must`
/// match holds and no `must_not` match does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Conditions {
    must: Vec<FieldMatch>,
    must_not: Vec<FieldMatch>,
}

impl Conditions {
    fn is_empty(&self) -> bool {
        self.must.is_empty() && self.must_not.is_empty()
    }
}

/// The conditions of `filter`: its namespace always, then what else it names. Refused
/// without a namespace.
fn filter_conditions(filter: &Filter) -> Result<Conditions, MemoryError> {
    let matching = |field: &'static str, value: &str| FieldMatch {
        field,
        value: value.to_owned(),
    };
    if filter.namespace.is_empty() {
        return Err(MemoryError::Store(
            "a memory search must name its namespace".to_owned(),
        ));
    }
    let mut conditions = Conditions::default();
    conditions.must.push(matching(NAMESPACE, &filter.namespace));
    if let Some(project) = &filter.project {
        conditions.must.push(matching(PROJECT, project));
    }
    if let Some(kind) = filter.kind {
        conditions.must.push(matching(KIND, kind.as_str()));
    }
    if let Some(role) = &filter.role {
        conditions.must.push(matching(ROLE, role));
    }
    if let Some(project) = &filter.not_project {
        conditions.must_not.push(matching(PROJECT, project));
    }
    Ok(conditions)
}

/// The payload stored with `record`.
fn record_payload(record: &Record) -> Map<String, Value> {
    let mut payload = Map::new();
    payload.insert(TEXT.into(), record.text.clone().into());
    payload.insert(
        NAMESPACE.into(),
        namespace_of(&record.project).to_owned().into(),
    );
    payload.insert(PROJECT.into(), record.project.clone().into());
    payload.insert(
        TASK.into(),
        record.task.clone().map_or(Value::Null, Value::String),
    );
    payload.insert(ROLE.into(), record.role.clone().into());
    payload.insert(KIND.into(), record.kind.as_str().into());
    payload
}

/// The record a stored payload holds, or `None` when it is not one of ours (a missing
/// field or an unknown kind).
fn payload_record(payload: &Map<String, Value>) -> Option<Record> {
    let text = |field: &str| payload.get(field).and_then(Value::as_str);
    Some(Record {
        text: text(TEXT)?.to_owned(),
        project: text(PROJECT)?.to_owned(),
        task: text(TASK).map(str::to_owned),
        role: text(ROLE)?.to_owned(),
        kind: Kind::parse(text(KIND)?)?,
    })
}

/// The hit a scored payload stands for; payloads that are not records are skipped with a
/// warning rather than failing the whole search.
fn payload_hit(payload: &Map<String, Value>, score: f32) -> Option<Hit> {
    let record = payload_record(payload);
    if record.is_none() {
        tracing::warn!("skipping a stored point whose payload is not a memory record");
    }
    record.map(|record| Hit { record, score })
}

/// The point id of `record`: a 64-bit FNV-1a hash of its project, task, kind and text, so
/// storing the same record again overwrites it instead of adding a copy. Each field is
/// length-prefixed so that moving bytes between fields changes the id.
fn point_id(record: &Record) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    let fields = [
        Some(record.project.as_str()),
        record.task.as_deref(),
        Some(record.kind.as_str()),
        Some(record.text.as_str()),
    ];
    for field in fields {
        match field {
            Some(value) => {
                feed(&[1]);
                feed(&(value.len() as u64).to_le_bytes());
                feed(value.as_bytes());
            }
            None => feed(&[0]),
        }
    }
    hash
}

/// A store failure, from either store's error type.
fn store_error(err: impl std::fmt::Display) -> MemoryError {
    MemoryError::Store(err.to_string())
}

/// The vectors of `texts`, checked: one per text, all of one non-zero dimension.
async fn embed_texts(
    embedder: &dyn Embedder,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, MemoryError> {
    let vectors = embedder.embed(texts).await?;
    if vectors.len() != texts.len() {
        return Err(MemoryError::Embed(format!(
            "asked for {} vectors, got {}",
            texts.len(),
            vectors.len()
        )));
    }
    if let Some(first) = vectors.first() {
        let dimension = first.len();
        if dimension == 0 {
            return Err(MemoryError::Embed("got an empty vector".into()));
        }
        if let Some(other) = vectors.iter().find(|vector| vector.len() != dimension) {
            return Err(MemoryError::Embed(format!(
                "got vectors of {dimension} and {} dimensions in one batch",
                other.len()
            )));
        }
    }
    Ok(vectors)
}

/// The vector of one text.
async fn embed_query(embedder: &dyn Embedder, query: &str) -> Result<Vec<f32>, MemoryError> {
    embed_texts(embedder, &[query.to_owned()])
        .await?
        .pop()
        .ok_or_else(|| MemoryError::Embed("got no vector for the query".into()))
}

/// A record as both stores write it.
#[derive(Debug)]
struct Point {
    id: u64,
    payload: Map<String, Value>,
    vector: Vec<f32>,
}

/// The points of `records`, embedded in one call, with their common dimension (0 when
/// there are none).
async fn embed_records(
    embedder: &dyn Embedder,
    records: &[Record],
) -> Result<(Vec<Point>, usize), MemoryError> {
    let texts: Vec<String> = records.iter().map(|record| record.text.clone()).collect();
    let vectors = embed_texts(embedder, &texts).await?;
    let dimension = vectors.first().map_or(0, Vec::len);
    let points = records
        .iter()
        .zip(vectors)
        .map(|(record, vector)| Point {
            id: point_id(record),
            payload: record_payload(record),
            vector,
        })
        .collect();
    Ok((points, dimension))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &str, task: Option<&str>) -> Record {
        Record {
            text: text.into(),
            project: "shop/web".into(),
            task: task.map(str::to_owned),
            role: "planner".into(),
            kind: Kind::Decision,
        }
    }

    #[test]
    fn a_payload_reads_back_as_its_record() {
        for original in [
            record("use postgres", Some("db")),
            record("use redis", None),
        ] {
            assert_eq!(payload_record(&record_payload(&original)), Some(original));
        }
    }

    #[test]
    fn point_ids_depend_on_content_and_not_on_field_boundaries() {
        let a = record("use postgres", Some("db"));
        assert_eq!(point_id(&a), point_id(&a.clone()));
        assert_ne!(point_id(&a), point_id(&record("use postgres", None)));
        let mut shifted = record("b use postgres", Some("d"));
        shifted.project = "shop/web".into();
        assert_ne!(point_id(&a), point_id(&shifted));
    }

    #[test]
    fn a_filter_becomes_must_and_must_not_matches() {
        let filter = Filter {
            namespace: "shop".into(),
            project: Some("shop/web".into()),
            not_project: Some("shop/api".into()),
            kind: Some(Kind::Result),
            role: Some("coder".into()),
        };
        let conditions = filter_conditions(&filter).unwrap();
        let fields: Vec<_> = conditions
            .must
            .iter()
            .map(|m| (m.field, m.value.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                (NAMESPACE, "shop"),
                (PROJECT, "shop/web"),
                (KIND, "result"),
                (ROLE, "coder")
            ]
        );
        assert_eq!(
            conditions.must_not,
            [FieldMatch {
                field: PROJECT,
                value: "shop/api".into()
            }]
        );
        assert!(
            filter_conditions(&Filter::default()).is_err(),
            "no search without a namespace"
        );
        assert_eq!(
            filter_conditions(&Filter::in_namespace("blog"))
                .unwrap()
                .must,
            [FieldMatch {
                field: NAMESPACE,
                value: "blog".into()
            }]
        );
        assert_eq!(namespace_of("team-a/shop"), "team-a");
    }
}
