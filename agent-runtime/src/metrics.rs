//! The agent's Prometheus metrics, all prefixed `aios_agent_`. Label values are
//! bounded: roles, outcomes, provider and model names from the provider list, tiers.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};

use crate::llm::{Call, CallRecorder};

/// The agent's metrics and the registry that serves them.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Attempts finished, by role and outcome (succeeded, failed, cancelled, requeued,
    /// duplicate).
    pub tasks: IntCounterVec,
    /// Seconds an attempt took, by role and outcome.
    pub task_duration: HistogramVec,
    /// Model calls by provider, model, tier and outcome (ok, or an error category).
    pub llm_requests: IntCounterVec,
    /// Tokens by provider, model, tier and direction (input, output).
    pub llm_tokens: IntCounterVec,
    /// Cost in US dollars by provider, model and tier: a counter, as it only grows.
    pub llm_cost: CounterVec,
    /// Seconds a model call took, by provider, model, tier and outcome.
    pub llm_latency: HistogramVec,
    /// Share of answered calls served by a Local tier provider, since the agent started.
    pub llm_local_ratio: GaugeVec,
    /// Pushes rejected because the branch moved first; each is rebased and pushed
    /// again within its attempt.
    pub push_rejections: IntCounter,
    /// Memory notes from the operator, by outcome (stored, failed, ignored).
    pub notes: IntCounterVec,
    answered: Arc<AtomicU64>,
    answered_locally: Arc<AtomicU64>,
}

fn must<T>(result: prometheus::Result<T>) -> T {
    // Names and labels are static; registration fails only on a duplicate name, a
    // programming error the tests catch.
    result.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let dollars = |name: &str, help: &str, labels: &[&str]| {
            let c = must(CounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let plain_counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = must(GaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = must(HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                labels,
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let seconds = vec![
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ];
        let call = ["provider", "model", "tier"];
        Self {
            tasks: counter(
                "aios_agent_tasks_total",
                "Attempts finished, by role and outcome",
                &["role", "outcome"],
            ),
            task_duration: histogram(
                "aios_agent_task_duration_seconds",
                "Seconds an attempt took, by role and outcome",
                &["role", "outcome"],
                seconds.clone(),
            ),
            llm_requests: counter(
                "aios_agent_llm_requests_total",
                "Model calls by provider, model, tier and outcome",
                &[call[0], call[1], call[2], "outcome"],
            ),
            llm_tokens: counter(
                "aios_agent_llm_tokens_total",
                "Tokens by provider, model, tier and direction",
                &[call[0], call[1], call[2], "direction"],
            ),
            llm_cost: dollars(
                "aios_agent_llm_cost_usd_total",
                "Cost in US dollars by provider, model and tier",
                &call,
            ),
            llm_latency: histogram(
                "aios_agent_llm_request_duration_seconds",
                "Seconds a model call took, by provider, model, tier and outcome",
                &[call[0], call[1], call[2], "outcome"],
                seconds,
            ),
            llm_local_ratio: gauge(
                "aios_agent_llm_local_ratio",
                "Share of answered model calls served by a Local tier provider",
                &[],
            ),
            push_rejections: plain_counter(
                "aios_agent_push_rejections_total",
                "Pushes rejected because the branch moved first, then rebased and pushed again",
            ),
            notes: counter(
                "aios_agent_memory_notes_total",
                "Memory notes from the operator (verification results), by outcome",
                &["outcome"],
            ),
            registry,
            answered: Arc::default(),
            answered_locally: Arc::default(),
        }
    }

    #[allow(clippy::cast_precision_loss)] // request counts stay far below 2^52
    fn update_local_ratio(&self, tier: aios_crds::Tier) {
        let all = self.answered.fetch_add(1, Ordering::Relaxed) + 1;
        let local = if tier == aios_crds::Tier::Local {
            self.answered_locally.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.answered_locally.load(Ordering::Relaxed)
        };
        self.llm_local_ratio
            .with_label_values(&[] as &[&str])
            .set(local as f64 / all as f64);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %err, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Every model call the router makes is counted here.
impl CallRecorder for Metrics {
    fn answered(&self, call: &Call) {
        let tier = tier_label(call.tier);
        let labels = [call.provider.as_str(), call.model.as_str(), tier];
        self.llm_requests
            .with_label_values(&[labels[0], labels[1], labels[2], "ok"])
            .inc();
        self.llm_tokens
            .with_label_values(&[labels[0], labels[1], labels[2], "input"])
            .inc_by(call.input_tokens);
        self.llm_tokens
            .with_label_values(&[labels[0], labels[1], labels[2], "output"])
            .inc_by(call.output_tokens);
        // Prices are at least zero (the CRD says so); a counter never goes down.
        self.llm_cost
            .with_label_values(&labels)
            .inc_by(call.cost_usd.max(0.0));
        self.llm_latency
            .with_label_values(&[labels[0], labels[1], labels[2], "ok"])
            .observe(call.latency.as_secs_f64());
        self.update_local_ratio(call.tier);
    }

    fn failed(
        &self,
        provider: &str,
        model: &str,
        tier: aios_crds::Tier,
        category: &str,
        seconds: f64,
    ) {
        let tier = tier_label(tier);
        self.llm_requests
            .with_label_values(&[provider, model, tier, category])
            .inc();
        self.llm_latency
            .with_label_values(&[provider, model, tier, category])
            .observe(seconds);
    }
}

/// The label of a tier.
pub fn tier_label(tier: aios_crds::Tier) -> &'static str {
    match tier {
        aios_crds::Tier::Local => "local",
        aios_crds::Tier::Cloud => "cloud",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aios_crds::Tier;

    use super::*;

    /// What `promtool check metrics` says about suffixes: a counter's name ends in
    /// `_total`, no other type's does. One line per metric that breaks the rule.
    fn suffix_problems(text: &str) -> Vec<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_once(' '))
            .filter_map(|(name, kind)| match (kind, name.ends_with("_total")) {
                ("counter", false) => Some(format!("counter {name} does not end in _total")),
                ("counter", true) | (_, false) => None,
                (_, true) => Some(format!("{kind} {name} ends in _total")),
            })
            .collect()
    }

    #[test]
    fn the_suffix_check_finds_a_gauge_named_total_and_a_counter_without() {
        let text =
            "# TYPE a_total gauge\n# TYPE b counter\n# TYPE c_total counter\n# TYPE d gauge\n";
        assert_eq!(
            suffix_problems(text),
            [
                "gauge a_total ends in _total",
                "counter b does not end in _total"
            ]
        );
    }

    #[test]
    fn every_counter_and_only_counters_end_in_total() {
        let metrics = Metrics::new();
        metrics
            .tasks
            .with_label_values(&["backend", "succeeded"])
            .inc();
        metrics
            .task_duration
            .with_label_values(&["backend", "succeeded"])
            .observe(1.0);
        metrics.answered(&Call {
            provider: "ollama".to_owned(),
            model: "coder".to_owned(),
            tier: Tier::Local,
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: 0.25,
            latency: Duration::from_millis(30),
        });
        metrics.failed("claude", "sonnet", Tier::Cloud, "timeout", 1.5);
        metrics.push_rejections.inc();
        let text = metrics.render();
        let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(families, 8, "every metric is rendered:\n{text}");
        assert_eq!(suffix_problems(&text), Vec::<String>::new());
        assert!(
            text.contains("# TYPE aios_agent_llm_cost_usd_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"aios_agent_llm_cost_usd_total{model="coder",provider="ollama",tier="local"} 0.25"#
            ),
            "{text}"
        );
    }
}
