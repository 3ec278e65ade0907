//! Memory embedded in the agent process: a Qdrant Edge shard on a local directory, for
//! agents without a Qdrant server (local runs, a single-node install).
//!
//! The directory holds `memory.json` (the vector dimension, written when the first record
//! creates the shard, since it is unknown until the first embedding) and `shard/`, the
//! Qdrant Edge shard itself. Qdrant Edge calls block, so they run on tokio's blocking
//! pool; a lock keeps writes (an upsert and the flush after it) apart from searches,
//! because Qdrant Edge's flush expects no other operation in flight.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use qdrant_edge::{
    Condition, CreateIndex, DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard,
    EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations, Filter as EdgeFilter, JsonPath,
    Match, NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointInsertOperations,
    PointOperations, PointStruct, QueryEnum, QueryRequest, ScoringQuery, UpdateOperation,
    WithPayloadInterface, WithVector,
};
use serde_json::Value;

use super::{
    Conditions, Embedder, FILTERED_FIELDS, FieldMatch, Filter, Hit, Memory, MemoryError, Record,
    embed_query, embed_records, filter_conditions, payload_hit, store_error,
};

/// The file that records the shard's vector dimension.
const META_FILE: &str = "memory.json";
/// The shard's directory under the memory directory.
const SHARD_DIR: &str = "shard";

/// What `memory.json` holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Meta {
    /// The length of every stored vector.
    dimension: usize,
}

/// The shard, once the first record has created it, with its vector dimension.
#[derive(Debug)]
struct Opened {
    shard: EdgeShard,
    dimension: usize,
}

type State = Arc<RwLock<Option<Opened>>>;

/// Long-term memory in a Qdrant Edge shard on a local directory.
pub struct EdgeMemory {
    dir: PathBuf,
    embedder: Arc<dyn Embedder>,
    state: State,
}

impl fmt::Debug for EdgeMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeMemory")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl EdgeMemory {
    /// Opens the memory in `dir`, creating the directory if needed. A directory that
    /// already holds records is loaded; an empty one gets its shard on the first store.
    /// This reads the shard from disk, so call it before serving, not on a runtime thread
    /// that must stay responsive. Qdrant Edge locks the shard: while one `EdgeMemory`
    /// holds a directory with records, opening it again (here or in another process) fails.
    pub fn open(dir: &Path, embedder: Arc<dyn Embedder>) -> Result<Self, MemoryError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| store_error(format!("cannot create {}: {err}", dir.display())))?;
        let opened = match read_meta(dir)? {
            Some(meta) => Some(Opened {
                shard: load_shard(dir, meta.dimension)?,
                dimension: meta.dimension,
            }),
            None => None,
        };
        Ok(Self {
            dir: dir.to_owned(),
            embedder,
            state: Arc::new(RwLock::new(opened)),
        })
    }

    /// Stores `records` with one embedding call and one upsert: the way to load many.
    /// Storing a record again (same project, task, kind and text) replaces it.
    pub async fn store_many(&self, records: &[Record]) -> Result<(), MemoryError> {
        if records.is_empty() {
            return Ok(());
        }
        let (points, dimension) = embed_records(self.embedder.as_ref(), records).await?;
        let points: Vec<_> = points
            .into_iter()
            .map(|point| {
                PointStruct::new(point.id, point.vector, Value::Object(point.payload)).into()
            })
            .collect();
        let dir = self.dir.clone();
        let state = Arc::clone(&self.state);
        run_blocking(move || {
            let mut state = state.write().map_err(|_| poisoned())?;
            let opened = match state.take() {
                Some(opened) => opened,
                None => create_shard(&dir, dimension)?,
            };
            let opened = state.insert(opened);
            check_dimension(opened, dimension)?;
            opened
                .shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
                ))
                .map_err(store_error)?;
            // Qdrant Edge does not replay its write-ahead log when it loads a shard: only
            // flushed segments survive a restart, so a stored record is flushed at once.
            opened.shard.flush();
            Ok(())
        })
        .await
    }

    /// Builds the vector index over what is stored, in place. Search works without it
    /// (by scanning); after loading many records this makes searches faster. Blocks writes
    /// and searches while it runs.
    pub async fn optimize(&self) -> Result<(), MemoryError> {
        let state = Arc::clone(&self.state);
        run_blocking(move || {
            let state = state.write().map_err(|_| poisoned())?;
            if let Some(opened) = state.as_ref() {
                opened.shard.optimize().map_err(store_error)?;
                opened.shard.flush();
            }
            Ok(())
        })
        .await
    }

    async fn search_shard(
        &self,
        query: &str,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Hit>, MemoryError> {
        let filter = edge_filter(&filter_conditions(filter)?)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let vector = embed_query(self.embedder.as_ref(), query).await?;
        let dimension = vector.len();
        let request = QueryRequest {
            prefetches: Vec::new(),
            query: Some(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: vector.into(),
                using: None,
            }))),
            filter,
            score_threshold: None,
            limit,
            offset: 0,
            params: None,
            with_vector: WithVector::Bool(false),
            with_payload: WithPayloadInterface::Bool(true),
        };
        let state = Arc::clone(&self.state);
        run_blocking(move || {
            let state = state.read().map_err(|_| poisoned())?;
            let Some(opened) = state.as_ref() else {
                return Ok(Vec::new());
            };
            check_dimension(opened, dimension)?;
            let points = opened.shard.query(request).map_err(store_error)?;
            Ok(points
                .into_iter()
                .filter_map(|point| payload_hit(&point.payload?.0, point.score))
                .collect())
        })
        .await
    }
}

impl Memory for EdgeMemory {
    fn store<'a>(&'a self, record: &'a Record) -> BoxFuture<'a, Result<(), MemoryError>> {
        Box::pin(self.store_many(std::slice::from_ref(record)))
    }

    fn search<'a>(
        &'a self,
        query: &'a str,
        filter: &'a Filter,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Hit>, MemoryError>> {
        Box::pin(self.search_shard(query, filter, limit))
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, MemoryError> + Send + 'static,
) -> Result<T, MemoryError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| store_error(format!("the memory task failed: {err}")))?
}

fn poisoned() -> MemoryError {
    MemoryError::Store("a memory operation panicked earlier; the shard may be inconsistent".into())
}

fn check_dimension(opened: &Opened, dimension: usize) -> Result<(), MemoryError> {
    if opened.dimension == dimension {
        Ok(())
    } else {
        Err(MemoryError::Store(format!(
            "the embedding has {dimension} dimensions but the memory holds {}",
            opened.dimension
        )))
    }
}

fn read_meta(dir: &Path) -> Result<Option<Meta>, MemoryError> {
    let path = dir.join(META_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(store_error(format!(
                "cannot read {}: {err}",
                path.display()
            )));
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|err| store_error(format!("cannot parse {}: {err}", path.display())))
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), MemoryError> {
    let path = dir.join(META_FILE);
    let bytes = serde_json::to_vec(meta).map_err(store_error)?;
    // Write then rename, so a crash leaves either no file or a whole one.
    let partial = dir.join(format!("{META_FILE}.partial"));
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|err| store_error(format!("cannot write {}: {err}", path.display())))
}

fn shard_config(dimension: usize) -> EdgeConfig {
    EdgeConfig::builder()
        .vector(
            DEFAULT_VECTOR_NAME,
            EdgeVectorParamsBuilder::new(dimension, Distance::Cosine).build(),
        )
        .build()
}

/// Loads the shard, or creates it when its directory is empty. The config is passed
/// explicitly so a shard of another dimension fails to load instead of being adopted.
fn load_shard(dir: &Path, dimension: usize) -> Result<EdgeShard, MemoryError> {
    let path = dir.join(SHARD_DIR);
    std::fs::create_dir_all(&path)
        .map_err(|err| store_error(format!("cannot create {}: {err}", path.display())))?;
    EdgeShard::load(&path, Some(shard_config(dimension))).map_err(store_error)
}

fn create_shard(dir: &Path, dimension: usize) -> Result<Opened, MemoryError> {
    let shard = load_shard(dir, dimension)?;
    for field in FILTERED_FIELDS {
        shard
            .update(UpdateOperation::FieldIndexOperation(
                FieldIndexOperations::CreateIndex(CreateIndex {
                    field_name: json_path(field)?,
                    field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
                }),
            ))
            .map_err(store_error)?;
    }
    // Written last: until it exists, the next open starts empty and the next store
    // creates the shard again, which is idempotent.
    write_meta(dir, &Meta { dimension })?;
    Ok(Opened { shard, dimension })
}

fn json_path(field: &str) -> Result<JsonPath, MemoryError> {
    field
        .parse()
        .map_err(|()| store_error(format!("{field} is not a payload path")))
}

fn edge_filter(conditions: &Conditions) -> Result<Option<EdgeFilter>, MemoryError> {
    if conditions.is_empty() {
        return Ok(None);
    }
    let translate = |matches: &[FieldMatch]| -> Result<Option<Vec<Condition>>, MemoryError> {
        if matches.is_empty() {
            return Ok(None);
        }
        matches
            .iter()
            .map(|m| {
                Ok(Condition::Field(FieldCondition::new_match(
                    json_path(m.field)?,
                    Match::from(m.value.clone()),
                )))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    Ok(Some(EdgeFilter {
        must: translate(&conditions.must)?,
        must_not: translate(&conditions.must_not)?,
        ..EdgeFilter::default()
    }))
}
