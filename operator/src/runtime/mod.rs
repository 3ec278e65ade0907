//! The runtime every controller shares, apart from what they decide: the one watch per
//! kind and the indexes beside its store, the context handed to every reconcile, the
//! bus, leader election, per-object error backoff, metrics and the gauges read at scrape
//! time, and the HTTP endpoints.

pub mod backoff;
pub mod bus;
pub mod context;
pub mod grouped;
pub mod handover;
pub mod http;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod observe;
pub mod urgent;
pub mod watches;
