//! The embedded memory's store rate and search latency at 10,000 and 100,000 records of
//! 384 dimensions (all-MiniLM-L6-v2's shape), with vectors drawn from a hash of each text
//! so no model is needed. Searches ask for 5 records of one project, as an agent does
//! before a task. Run with:
//!
//! `cargo bench -p aios-models --bench memory`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aios_models::memory::edge::EdgeMemory;
use aios_models::memory::{Embedder, Filter, Kind, Memory, MemoryError, Record};
use futures::future::BoxFuture;

const DIMENSION: usize = 384;
const SIZES: [usize; 2] = [10_000, 100_000];
const BATCH: usize = 1_000;
const SEARCHES: usize = 500;
const PROJECTS: usize = 20;
const ROLES: [&str; 4] = ["planner", "architect", "coder", "reviewer"];
const KINDS: [Kind; 3] = [Kind::Brief, Kind::Decision, Kind::Result];

/// Unit vectors drawn from a xorshift generator seeded with the text's hash: the same
/// text always gets the same vector, different texts scatter like real embeddings.
#[derive(Debug)]
struct HashEmbedder;

fn hash_vector(text: &str) -> Vec<f32> {
    let mut state = text.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    }) | 1;
    let mut vector: Vec<f32> = (0..DIMENSION)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    for x in &mut vector {
        *x /= norm;
    }
    vector
}

impl Embedder for HashEmbedder {
    fn embed<'a>(
        &'a self,
        texts: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Vec<f32>>, MemoryError>> {
        Box::pin(async move { Ok(texts.iter().map(|text| hash_vector(text)).collect()) })
    }
}

fn project(i: usize) -> String {
    format!("bench/project-{}", i % PROJECTS)
}

fn bench_record(i: usize) -> Record {
    Record {
        text: format!(
            "record {i}: a decision about component {} of the system",
            i % 97
        ),
        project: project(i),
        task: Some(format!("task-{}", i / 10)),
        role: ROLES[i % ROLES.len()].to_owned(),
        kind: KINDS[i % KINDS.len()],
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn disk_usage(path: &Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() => disk_usage(&entry.path()),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

async fn time_searches(memory: &EdgeMemory) -> (Duration, Duration) {
    let mut latencies = Vec::with_capacity(SEARCHES);
    for i in 0..SEARCHES {
        let project_key = project(i * 7);
        let filter = Filter {
            project: Some(project_key.clone()),
            ..Filter::in_namespace(aios_models::memory::namespace_of(&project_key))
        };
        let query = format!("what was decided about component {}", i % 97);
        let started = Instant::now();
        let hits = memory.search(&query, &filter, 5).await.unwrap();
        latencies.push(started.elapsed());
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|hit| hit.record.project == project(i * 7)));
    }
    latencies.sort_unstable();
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

async fn bench_size(size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let memory = EdgeMemory::open(dir.path(), Arc::new(HashEmbedder)).unwrap();
    let records: Vec<Record> = (0..size).map(bench_record).collect();

    let started = Instant::now();
    for batch in records.chunks(BATCH) {
        memory.store_many(batch).await.unwrap();
    }
    let stored = started.elapsed();
    println!(
        "{size} records: stored in {:.1} s ({:.0} records/s, batches of {BATCH}), {:.0} MiB on disk",
        stored.as_secs_f64(),
        size as f64 / stored.as_secs_f64(),
        disk_usage(dir.path()) as f64 / f64::from(1 << 20),
    );

    let (p50, p99) = time_searches(&memory).await;
    println!(
        "{size} records: {SEARCHES} searches (limit 5, one project of {PROJECTS}), unindexed: p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );

    let started = Instant::now();
    memory.optimize().await.unwrap();
    println!(
        "{size} records: optimize (vector index) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (p50, p99) = time_searches(&memory).await;
    println!(
        "{size} records: {SEARCHES} searches (limit 5, one project of {PROJECTS}), indexed: p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    runtime.block_on(async {
        for size in SIZES {
            bench_size(size).await;
        }
    });
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
