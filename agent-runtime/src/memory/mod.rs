//! Long-term memory: texts (briefs, decisions, results) stored with their project, task
//! and role, and searched by meaning before a task.

use futures::future::BoxFuture;

/// What a remembered text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A Project's brief.
    Brief,
    /// A decision, such as a plan.
    Decision,
    /// A task's result summary.
    Result,
}

impl Kind {
    /// The name stored with the text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Brief => "brief",
            Self::Decision => "decision",
            Self::Result => "result",
        }
    }

    /// The kind a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "brief" => Some(Self::Brief),
            "decision" => Some(Self::Decision),
            "result" => Some(Self::Result),
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

/// Which records a search may return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this project's records.
    pub project: Option<String>,
    /// Every project's records but this one's.
    pub not_project: Option<String>,
    /// Only records of this kind.
    pub kind: Option<Kind>,
    /// Only records written by this role.
    pub role: Option<String>,
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
