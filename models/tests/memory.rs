//! Long-term memory stores against real storage: the embedded Qdrant Edge shard on a
//! temporary directory always, a Qdrant server only when `QDRANT_URL` names one.
//!
//! Texts are embedded by a hashed bag of words in 384 dimensions (the shape of
//! all-MiniLM-L6-v2's vectors), so texts sharing words are nearer and every result is
//! deterministic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aios_models::memory::edge::EdgeMemory;
use aios_models::memory::qdrant::QdrantMemory;
use aios_models::memory::{Embedder, Filter, Hit, Kind, Memory, MemoryError, Record};
use futures::future::BoxFuture;

const DIMENSION: usize = 384;

/// A hashed bag of lowercase words, normalized; counts its calls.
#[derive(Debug, Default)]
struct WordEmbedder {
    dimension: usize,
    calls: AtomicUsize,
}

impl WordEmbedder {
    fn new(dimension: usize) -> Arc<Self> {
        Arc::new(Self {
            dimension,
            calls: AtomicUsize::new(0),
        })
    }

    fn vector(&self, text: &str) -> Vec<f32> {
        let mut vector = vec![0.0_f32; self.dimension];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
        {
            let hash = word
                .to_lowercase()
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
                });
            let slot = usize::try_from(hash % self.dimension as u64).unwrap();
            vector[slot] += 1.0;
        }
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for x in &mut vector {
                *x /= norm;
            }
        } else {
            vector[0] = 1.0;
        }
        vector
    }
}

impl Embedder for WordEmbedder {
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move { Ok(texts.iter().map(|text| self.vector(text)).collect()) })
    }
}

fn record(project: &str, task: Option<&str>, role: &str, kind: Kind, text: &str) -> Record {
    Record {
        text: text.into(),
        project: project.into(),
        task: task.map(str::to_owned),
        role: role.into(),
        kind,
    }
}

/// Records of three projects, kinds and roles.
fn shop_records() -> Vec<Record> {
    vec![
        record(
            "shop/web",
            None,
            "planner",
            Kind::Brief,
            "build an online shop with a product catalogue and a checkout",
        ),
        record(
            "shop/web",
            Some("db"),
            "architect",
            Kind::Decision,
            "store orders in postgres with one table per aggregate",
        ),
        record(
            "shop/web",
            Some("ui"),
            "coder",
            Kind::Result,
            "the checkout page renders the cart total and a pay button",
        ),
        record(
            "shop/api",
            Some("db"),
            "architect",
            Kind::Decision,
            "store sessions in redis with a one hour expiry",
        ),
        record(
            "blog/site",
            Some("posts"),
            "coder",
            Kind::Result,
            "posts are markdown files rendered to static html",
        ),
    ]
}

/// Every memory of namespace `shop` (projects `shop/web` and `shop/api`).
fn shop() -> Filter {
    Filter::in_namespace("shop")
}

/// How many of `records` are in namespace `shop`.
fn in_shop(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| r.project.starts_with("shop/"))
        .count()
}

async fn store_all(memory: &dyn Memory, records: &[Record]) {
    for record in records {
        memory.store(record).await.unwrap();
    }
}

async fn search(memory: &dyn Memory, query: &str, filter: &Filter, limit: usize) -> Vec<Hit> {
    memory.search(query, filter, limit).await.unwrap()
}

fn texts(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|hit| hit.record.text.as_str()).collect()
}

/// The nearest text comes first, whole, with cosine scores in descending order.
async fn assert_round_trip(memory: &dyn Memory) {
    let records = shop_records();
    store_all(memory, &records).await;

    let hits = search(memory, "where are orders stored postgres", &shop(), 3).await;
    assert_eq!(hits.len(), 3);
    assert_eq!(
        hits[0].record, records[1],
        "the nearest record comes back whole"
    );
    assert!(hits.windows(2).all(|pair| pair[0].score >= pair[1].score));
    assert!(hits[0].score > 0.0 && hits[0].score <= 1.0 + 1e-5);

    let exact = search(memory, &records[4].text, &Filter::in_namespace("blog"), 1).await;
    assert_eq!(exact[0].record, records[4]);
    assert!(
        (exact[0].score - 1.0).abs() < 1e-4,
        "the same text scores 1, got {}",
        exact[0].score
    );
}

/// Each filter field keeps only the records it names (or, for `not_project`, excludes),
/// always within one namespace: nothing of another namespace comes back, and a search
/// naming none is refused.
async fn assert_filters(memory: &dyn Memory) {
    let query = "store orders sessions checkout posts";
    let everything = 10;

    let project = Filter {
        project: Some("shop/web".into()),
        ..shop()
    };
    let hits = search(memory, query, &project, everything).await;
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|hit| hit.record.project == "shop/web"));

    let not_project = Filter {
        not_project: Some("shop/web".into()),
        ..shop()
    };
    let hits = search(memory, query, &not_project, everything).await;
    let projects: Vec<_> = hits.iter().map(|hit| hit.record.project.as_str()).collect();
    assert_eq!(projects, ["shop/api"], "the namespace's other project only");

    let kind = Filter {
        kind: Some(Kind::Decision),
        ..shop()
    };
    let hits = search(memory, query, &kind, everything).await;
    assert_eq!(hits.len(), 2);
    assert!(hits.iter().all(|hit| hit.record.kind == Kind::Decision));

    let role = Filter {
        role: Some("coder".into()),
        ..shop()
    };
    let hits = search(memory, query, &role, everything).await;
    assert_eq!(
        texts(&hits),
        ["the checkout page renders the cart total and a pay button"],
        "blog's coder is in another namespace"
    );

    let combined = Filter {
        not_project: Some("blog/other".into()),
        kind: Some(Kind::Result),
        role: Some("coder".into()),
        ..Filter::in_namespace("blog")
    };
    let hits = search(memory, query, &combined, everything).await;
    assert_eq!(
        texts(&hits),
        ["posts are markdown files rendered to static html"]
    );

    // Two namespaces: each sees its own, however the query is worded.
    for shop_text in shop_records()
        .iter()
        .filter(|r| r.project.starts_with("shop/"))
    {
        let hits = search(
            memory,
            &shop_text.text,
            &Filter::in_namespace("blog"),
            everything,
        )
        .await;
        assert!(
            hits.iter().all(|hit| hit.record.project == "blog/site"),
            "blog recalled another namespace's memory: {:?}",
            texts(&hits)
        );
    }
    let hits = search(memory, "posts markdown html", &shop(), everything).await;
    assert!(
        hits.iter()
            .all(|hit| hit.record.project.starts_with("shop/"))
    );
    assert!(
        search(memory, query, &Filter::in_namespace("nobody"), everything)
            .await
            .is_empty()
    );
    let err = memory
        .search(query, &Filter::default(), everything)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must name its namespace"), "{err}");

    let nobody = Filter {
        role: Some("auditor".into()),
        ..shop()
    };
    assert!(search(memory, query, &nobody, everything).await.is_empty());
}

#[tokio::test]
async fn the_embedded_store_finds_the_nearest_text_first() {
    let dir = tempfile::tempdir().unwrap();
    let memory = EdgeMemory::open(dir.path(), WordEmbedder::new(DIMENSION)).unwrap();
    assert_round_trip(&memory).await;
}

#[tokio::test]
async fn the_embedded_store_filters_by_project_kind_and_role() {
    let dir = tempfile::tempdir().unwrap();
    let memory = EdgeMemory::open(dir.path(), WordEmbedder::new(DIMENSION)).unwrap();
    store_all(&memory, &shop_records()).await;
    assert_filters(&memory).await;
}

#[tokio::test]
async fn an_empty_embedded_store_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let memory = EdgeMemory::open(dir.path(), WordEmbedder::new(DIMENSION)).unwrap();
    assert!(search(&memory, "anything", &shop(), 5).await.is_empty());
}

#[tokio::test]
async fn the_embedded_store_keeps_its_records_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let records = shop_records();
    {
        let memory = EdgeMemory::open(dir.path(), WordEmbedder::new(DIMENSION)).unwrap();
        store_all(&memory, &records).await;
    }

    let memory = EdgeMemory::open(dir.path(), WordEmbedder::new(DIMENSION)).unwrap();
    let hits = search(&memory, "where are orders stored postgres", &shop(), 10).await;
    assert_eq!(hits.len(), in_shop(&records));
    assert_eq!(hits[0].record, records[1]);
    assert_filters(&memory).await;

    // The reopened store takes new records at the dimension it remembered.
    let later = record(
        "shop/web",
        Some("search"),
        "architect",
        Kind::Decision,
        "index products in a search engine",
    );
    memory.store(&later).await.unwrap();
    let hits = search(&memory, "search engine products", &shop(), 1).await;
    assert_eq!(hits[0].record, later);
}

/// Set in the child process of the crash test: the directory to store into before dying.
const CRASH_DIR: &str = "AIOS_MEMORY_TEST_CRASH_DIR";
/// The exit code that shows the child stored its records and then died.
const CRASHED: i32 = 17;

/// A killed agent never drops its memory: what `store` returned for must already be on
/// disk. A child process (this test again) stores and exits without running destructors.
#[tokio::test]
async fn a_stored_record_survives_a_killed_process() {
    let records = shop_records();
    if let Ok(dir) = std::env::var(CRASH_DIR) {
        let memory = EdgeMemory::open(dir.as_ref(), WordEmbedder::new(DIMENSION)).unwrap();
        store_all(&memory, &records).await;
        std::process::exit(CRASHED);
    }

    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_stored_record_survives_a_killed_process",
            "--nocapture",
        ])
        .env(CRASH_DIR, dir.path())
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(CRASHED),
        "the child did not get to exit"
    );

    let memory = EdgeMemory::open(dir.path(), WordEmbedder::new(DIMENSION)).unwrap();
    let hits = search(&memory, &records[2].text, &shop(), 10).await;
    assert_eq!(hits.len(), in_shop(&records));
    assert_eq!(hits[0].record, records[2]);
}

#[tokio::test]
async fn the_embedded_store_rejects_embeddings_of_another_dimension() {
    let dir = tempfile::tempdir().unwrap();
    {
        let memory = EdgeMemory::open(dir.path(), WordEmbedder::new(DIMENSION)).unwrap();
        store_all(&memory, &shop_records()).await;
    }

    let memory = EdgeMemory::open(dir.path(), WordEmbedder::new(DIMENSION * 2)).unwrap();
    let err = memory.search("orders", &shop(), 5).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("768 dimensions but the memory holds 384"),
        "{err}"
    );
}

#[tokio::test]
async fn storing_the_same_record_twice_keeps_one_copy() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = WordEmbedder::new(DIMENSION);
    let memory = EdgeMemory::open(dir.path(), embedder.clone()).unwrap();
    let records = shop_records();
    store_all(&memory, &records).await;
    memory.store(&records[1]).await.unwrap();
    memory.store_many(&records).await.unwrap();

    let hits = search(&memory, &records[1].text, &shop(), 10).await;
    assert_eq!(hits.len(), in_shop(&records), "{:?}", texts(&hits));
    let copies = hits.iter().filter(|hit| hit.record == records[1]).count();
    assert_eq!(copies, 1);

    // The same text in another task is another record.
    let mut elsewhere = records[1].clone();
    elsewhere.task = Some("orders".into());
    memory.store(&elsewhere).await.unwrap();
    let hits = search(&memory, &records[1].text, &shop(), 10).await;
    assert_eq!(hits.len(), in_shop(&records) + 1);
}

#[tokio::test]
async fn storing_many_embeds_them_in_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let embedder = WordEmbedder::new(DIMENSION);
    let memory = EdgeMemory::open(dir.path(), embedder.clone()).unwrap();
    memory.store_many(&shop_records()).await.unwrap();
    assert_eq!(embedder.calls.load(Ordering::Relaxed), 1);
    assert_filters(&memory).await;
}

/// The same round trip and filters on a Qdrant server, in a collection of its own that is
/// deleted afterwards.
#[tokio::test]
async fn a_qdrant_server_finds_and_filters_like_the_embedded_store() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        println!("skipped: QDRANT_URL is not set");
        return;
    };
    let api_key = std::env::var("QDRANT_API_KEY").ok();
    let collection = format!(
        "aios-memory-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let memory = QdrantMemory::new(
        &url,
        api_key.clone(),
        &collection,
        WordEmbedder::new(DIMENSION),
    )
    .await
    .unwrap();
    assert!(
        search(&memory, "anything", &shop(), 5).await.is_empty(),
        "a collection that does not exist yet finds nothing"
    );

    assert_round_trip(&memory).await;
    assert_filters(&memory).await;
    let records = shop_records();
    memory.store(&records[1]).await.unwrap();
    let hits = search(&memory, &records[1].text, &shop(), 10).await;
    assert_eq!(
        hits.len(),
        in_shop(&records),
        "storing again keeps one copy"
    );

    let client = qdrant_client::Qdrant::from_url(&url)
        .api_key(api_key)
        .skip_compatibility_check()
        .build()
        .unwrap();
    client.delete_collection(&collection).await.unwrap();
}
