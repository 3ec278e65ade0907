//! `aios-models`: the model layer the agents and Hermes (the `aios` command line) share.
//! Providers and the [`llm::router`] that routes each call local-first with cloud
//! fallback, the Project [`budget`] counters, usage accounting, embeddings, and
//! long-term [`memory`] (the embedded store or Qdrant). It holds no worker code: no
//! queues, claims or repositories.

pub mod budget;
pub mod llm;
pub mod memory;
