//! The operator's Prometheus metrics, all prefixed `aios_`. Label values are bounded:
//! controller names, error categories, phases, roles and namespaces. The gauges read
//! from the caches on each scrape (tasks, projects, pools, providers, queues) are in
//! [`crate::runtime::observe`].

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    proto::MetricFamily,
};

/// The operator's metrics and the registry that serves them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by controller.
    pub reconciles: IntCounterVec,
    /// Reconcile errors by controller and error category.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration by controller.
    pub reconcile_duration: HistogramVec,
    /// Seconds from a task becoming ready (its last dependency's success, or its
    /// creation) to its dispatch being confirmed by the broker.
    pub dispatch_latency: HistogramVec,
    /// Seconds from this replica knowing a task's last dependency succeeded (its success
    /// written, or shown by the watch) to the task's dispatch being confirmed: the
    /// operator's own share of the dispatch latency, without the outcome's write.
    pub dispatch_delay: HistogramVec,
    /// Dispatches published, by role.
    pub dispatches: IntCounterVec,
    /// Bus publish failures by message kind and error category.
    pub publish_failures: IntCounterVec,
    /// Dispatches recorded Queued (`written`), or not because the agent had reported on
    /// the attempt first (`superseded`).
    pub queued_writes: IntCounterVec,
    /// What waiting Tasks say, written beside the passes, by outcome (`written`;
    /// `skipped`: the Task no longer waited, said so already or was gone, or this
    /// replica no longer leads; `conflict`: it changed meanwhile; `failed`).
    pub waiting_writes: IntCounterVec,
    /// Agent events consumed, by event type and outcome (applied; ignored; coalesced: a
    /// heartbeat the status did not need; folded: a Started event written with its
    /// attempt's outcome instead; refused: the API server refused the outcome and the
    /// attempt failed with its message instead; dropped: that was refused too;
    /// malformed, unsupported_version).
    pub events: IntCounterVec,
    /// Messages rejected for want of their attempt's token, by message kind and reason
    /// (`missing_token`, `bad_token`).
    pub rejected_messages: IntCounterVec,
    /// Credentials agents asked for, by purpose (`git`, `model`) and outcome (`given`,
    /// `refused`, `unavailable`).
    pub credential_requests: IntCounterVec,
    /// Verification runs finished, by kind (`task`, `project`) and outcome (`Passed`,
    /// `Failed`, `TimedOut`, `Error`).
    pub verifications: IntCounterVec,
    /// How long verification runs took, by kind and outcome.
    pub verification_duration: HistogramVec,
    /// Plans refused (by Hera's checks or for their size), by namespace.
    pub plan_rejections: IntCounterVec,
    /// Dispatches the bus dead-lettered (delivered too often), by role.
    pub dead_letters: IntCounterVec,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Metric names and labels are static and valid; registration fails only on a
    // duplicate name, which is a programming error caught by the tests.
    result.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Buckets of the histograms of reconciles and dispatches, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the verification runs' durations, in seconds.
const VERIFICATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = must(HistogramVec::new(opts, labels));
            must(registry.register(Box::new(h.clone())));
            h
        };
        Self {
            reconciles: counter(
                "aios_reconciles_total",
                "Reconciles by controller",
                &["controller"],
            ),
            reconcile_errors: counter(
                "aios_reconcile_errors_total",
                "Reconcile errors by controller and error category",
                &["controller", "category"],
            ),
            reconcile_duration: histogram(
                "aios_reconcile_duration_seconds",
                "Reconcile duration by controller",
                &["controller"],
                LATENCY_BUCKETS,
            ),
            dispatch_latency: histogram(
                "aios_dispatch_latency_seconds",
                "From a task becoming ready to its dispatch being confirmed",
                &["role"],
                LATENCY_BUCKETS,
            ),
            dispatch_delay: histogram(
                "aios_dispatch_delay_seconds",
                "From a task's last dependency's success being recorded to its dispatch being confirmed",
                &["role"],
                LATENCY_BUCKETS,
            ),
            dispatches: counter(
                "aios_dispatches_total",
                "Dispatches published, by role",
                &["role"],
            ),
            publish_failures: counter(
                "aios_bus_publish_failures_total",
                "Bus publish failures by message kind and error category",
                &["kind", "category"],
            ),
            queued_writes: counter(
                "aios_task_queued_writes_total",
                "Dispatches recorded Queued, or superseded by the agent's own report",
                &["outcome"],
            ),
            waiting_writes: counter(
                "aios_task_waiting_writes_total",
                "What waiting Tasks say, written beside the Project passes, by outcome",
                &["outcome"],
            ),
            events: counter(
                "aios_task_events_total",
                "Agent events consumed, by type and outcome",
                &["type", "outcome"],
            ),
            rejected_messages: counter(
                "aios_rejected_messages_total",
                "Agent messages rejected for want of their attempt's token, by message kind and reason",
                &["message", "reason"],
            ),
            credential_requests: counter(
                "aios_credential_requests_total",
                "Credentials agents asked the operator for, by purpose and outcome",
                &["purpose", "outcome"],
            ),
            verifications: counter(
                "aios_verifications_total",
                "Verification runs finished, by kind and outcome",
                &["kind", "outcome"],
            ),
            verification_duration: histogram(
                "aios_verification_duration_seconds",
                "How long verification runs took, by kind and outcome",
                &["kind", "outcome"],
                VERIFICATION_BUCKETS,
            ),
            plan_rejections: counter(
                "aios_plan_rejections_total",
                "Plans refused, by namespace",
                &["namespace"],
            ),
            dead_letters: counter(
                "aios_dead_lettered_dispatches_total",
                "Dispatches the bus dead-lettered after too many deliveries, by role",
                &["role"],
            ),
            registry,
        }
    }

    /// Counts and times one reconcile of `controller`.
    pub async fn time_reconcile<T>(&self, controller: &str, work: impl Future<Output = T>) -> T {
        self.reconciles.with_label_values(&[controller]).inc();
        let timer = self
            .reconcile_duration
            .with_label_values(&[controller])
            .start_timer();
        let out = work.await;
        timer.observe_duration();
        out
    }

    /// The metrics in Prometheus' text format, followed by `more` (the families read
    /// at scrape time).
    pub fn render(&self, more: Vec<MetricFamily>) -> String {
        let mut families = self.registry.gather();
        families.extend(more);
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_aios_prefix() {
        let m = Metrics::new();
        m.reconciles.with_label_values(&["project"]).inc();
        m.dead_letters.with_label_values(&["backend"]).inc();
        let text = m.render(Vec::new());
        assert!(
            text.contains("aios_reconciles_total{controller=\"project\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("aios_dead_lettered_dispatches_total{role=\"backend\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("aios_"), "{line}");
        }
    }
}
