//! What the chart gives people who watch AIOS, checked with the tools they run: the alert
//! rules with `promtool check rules` and their unit tests with `promtool test rules`; the
//! Grafana dashboard's structure (a datasource variable every query uses, the rows);
//! the chart shipping both, and the ServiceMonitor and PodMonitor, only when asked; and
//! a real Prometheus (Debian's package) scraping a local target, answering queries, and
//! evaluating every dashboard and alert query against the metrics AIOS exports.
//!
//! The end-to-end check — a Project run with Prometheus scraping the real operator and
//! agents — uses the same `aios_e2e::prometheus::failed_expressions`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aios_e2e::{
    chart,
    prometheus::{self, Prometheus, Target, Variables, When},
};
use serde_json::Value;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rules() -> Value {
    serde_yaml_ng::from_str(&read(&prometheus::rules_path())).unwrap()
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&prometheus::dashboard_path())).expect("the dashboard is JSON")
}

fn alerts(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter(|r| r["alert"].is_string())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The alert rules

#[test]
fn promtool_accepts_the_rules() {
    let out = prometheus::check_rules(&prometheus::rules_path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_rules_unit_tests_pass_and_cover_every_alert_firing_and_quiet() {
    let out =
        prometheus::test_rules(&prometheus::rules_test_path()).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("SUCCESS"), "{out}");

    let tests: Value = serde_yaml_ng::from_str(&read(&prometheus::rules_test_path())).unwrap();
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    for alert in alerts(&rules()) {
        let name = alert["alert"].as_str().unwrap();
        let of_alert = || cases.iter().filter(|c| c["alertname"] == name);
        let fires = of_alert().any(|c| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()));
        let quiet = of_alert().any(|c| c["exp_alerts"].as_array().is_none_or(Vec::is_empty));
        assert!(fires, "no unit test of {name} expects it to fire");
        assert!(quiet, "no unit test of {name} expects it to stay quiet");
    }
}

/// The labels an expression's outermost aggregations keep: `by (a, b)`.
fn by_labels(expr: &str) -> BTreeSet<String> {
    expr.match_indices("by (")
        .filter_map(|(at, _)| expr[at + 4..].split_once(')'))
        .flat_map(|(inside, _)| inside.split(',').map(|l| l.trim().to_owned()))
        .filter(|l| l != "le")
        .collect()
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_description_naming_what_it_is_about() {
    let rules = rules();
    let alerts = alerts(&rules);
    assert_eq!(
        alerts
            .iter()
            .map(|a| a["alert"].as_str().unwrap())
            .collect::<BTreeSet<_>>(),
        [
            "AIOSOperatorDown",
            "AIOSNoLeader",
            "AIOSReconcileErrorsRising",
            "AIOSQueueBacklogNotDraining",
            "AIOSDispatchesDeadLettered",
            "AIOSModelProviderUnready",
            "AIOSBudgetNearlySpent",
            "AIOSLocalRatioBelowTarget",
        ]
        .into_iter()
        .collect()
    );
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
        let description = alert["annotations"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(
            !summary.is_empty() && description.len() > summary.len(),
            "{name}: a summary and a longer description"
        );
        // Whatever the alert is about (its labels), the text names it.
        for label in by_labels(alert["expr"].as_str().unwrap()) {
            assert!(
                summary.contains(&format!("$labels.{label}"))
                    || description.contains(&format!("$labels.{label}")),
                "{name}: the annotations do not name its {label}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The dashboard

#[test]
fn every_dashboard_panel_and_query_asks_the_datasource_variable() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    for name in ["namespace", "role"] {
        let v = variable(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
        assert_eq!(v["allValue"], ".*", "{name}: All must match as a regex");
    }

    let panels = prometheus::dashboard_panels(&dashboard);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            queries += 1;
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(refs.insert(target["refId"].as_str().unwrap()), "{title}");
            assert!(
                !target["expr"].as_str().unwrap_or_default().is_empty(),
                "{title}"
            );
        }
    }
    assert!(queries > 30, "{queries} queries");
}

#[test]
fn the_dashboard_has_its_rows_each_with_panels() {
    let dashboard = dashboard();
    let top = dashboard["panels"].as_array().unwrap();
    let mut rows: BTreeMap<String, usize> = BTreeMap::new();
    let mut current = None;
    for panel in top {
        if panel["type"] == "row" {
            let title = panel["title"].as_str().unwrap().to_owned();
            // A collapsed row holds its panels; an open one is followed by them.
            let nested = panel["panels"].as_array().map_or(0, Vec::len);
            rows.insert(title.clone(), nested);
            current = Some(title);
        } else if let Some(row) = &current {
            *rows.get_mut(row).unwrap() += 1;
        } else {
            panic!("panel {} comes before any row", panel["title"]);
        }
    }
    for (row, about) in [
        ("Projects", ["aios_projects", "aios_tasks", "Failed"]),
        (
            "Agents",
            [
                "aios_pool_desired_replicas",
                "aios_queue_messages",
                "aios_agent_task_duration_seconds",
            ],
        ),
        (
            "Models",
            [
                "aios_agent_llm_requests_total",
                "aios_project_local_ratio_target",
                "aios_agent_llm_cost_usd_total",
            ],
        ),
        (
            "Operator",
            [
                "aios_reconciles_total",
                "aios_reconcile_errors_total",
                "aios_leader",
            ],
        ),
    ] {
        assert!(
            rows.get(row).is_some_and(|n| *n >= 3),
            "row {row}: {rows:?}"
        );
        let exprs = row_exprs(top, row);
        for needle in about {
            assert!(exprs.contains(needle), "row {row} shows no {needle}");
        }
    }
}

/// The queries of a row's panels, nested or following it, as one text.
fn row_exprs(top: &[Value], row: &str) -> String {
    let at = top
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == row)
        .unwrap();
    let nested = top[at]["panels"].as_array().cloned().unwrap_or_default();
    let following = top[at + 1..]
        .iter()
        .take_while(|p| p["type"] != "row")
        .cloned();
    nested
        .into_iter()
        .chain(following)
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_dashboards_queries_use_only_its_variables_and_grafanas() {
    let dashboard = dashboard();
    let defined: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    for expression in prometheus::dashboard_expressions(&dashboard, &Variables::default()).unwrap()
    {
        assert!(
            !expression.expr.contains('$'),
            "{}: a variable neither the dashboard nor Grafana defines: {}",
            expression.source,
            expression.expr
        );
    }
    // The queries name only the dashboard's own variables (and Grafana's `$__…`).
    let raw = dashboard.to_string();
    for (at, _) in raw.match_indices('$') {
        let name: String = raw[at + 1..]
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            name.starts_with("__") || defined.contains(&name),
            "${name} is not a variable of the dashboard"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The chart

fn render(sets: &[&str]) -> Vec<Value> {
    chart::render("aios", "aios-system", sets).unwrap_or_else(|e| panic!("{e}"))
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn dashboards(objects: &[Value]) -> Vec<&Value> {
    of_kind(objects, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"].is_string())
        .collect()
}

const ALL_ON: [&str; 4] = [
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.grafanaDashboard.enabled=true",
];

#[test]
fn the_chart_ships_nothing_for_monitoring_unless_asked() {
    let objects = render(&[]);
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(
            of_kind(&objects, kind).is_empty(),
            "{kind} rendered by default"
        );
    }
    assert!(dashboards(&objects).is_empty());
    // Each toggle brings its own object and no other.
    for (set, kind) in ALL_ON.iter().zip([
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    ]) {
        let objects = render(&[set]);
        let monitoring: Vec<&str> = objects
            .iter()
            .filter(|o| {
                ["ServiceMonitor", "PodMonitor", "PrometheusRule"]
                    .contains(&o["kind"].as_str().unwrap())
                    || o["metadata"]["labels"]["grafana_dashboard"].is_string()
            })
            .map(|o| o["kind"].as_str().unwrap())
            .collect();
        assert_eq!(monitoring, [kind], "{set}");
    }
}

#[test]
fn the_chart_ships_the_dashboard_and_the_rules_as_they_are_in_its_files() {
    let objects = render(&[
        ALL_ON[2],
        ALL_ON[3],
        "monitoring.grafanaDashboard.namespace=grafana",
    ]);
    let configmaps = dashboards(&objects);
    assert_eq!(configmaps.len(), 1);
    let configmap = configmaps[0];
    assert_eq!(configmap["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(configmap["metadata"]["namespace"], "grafana");
    let shipped: Value =
        serde_json::from_str(configmap["data"]["aios-dashboard.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard());

    let rule = of_kind(&objects, "PrometheusRule");
    assert_eq!(rule.len(), 1);
    assert_eq!(rule[0]["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule[0]["spec"]["groups"], rules()["groups"]);
}

#[test]
fn the_monitors_scrape_the_operator_and_the_agents_under_the_rules_job_names() {
    let objects = render(&ALL_ON);
    let monitor = of_kind(&objects, "ServiceMonitor")[0];
    let spec = &monitor["spec"];
    // The Service it selects exists, has the port it scrapes, and names the job.
    let service = of_kind(&objects, "Service")
        .into_iter()
        .find(|s| {
            spec["selector"]["matchLabels"]
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| s["metadata"]["labels"][k] == *v)
        })
        .expect("a Service the ServiceMonitor selects");
    let endpoint = &spec["endpoints"][0];
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == endpoint["port"]),
        "the Service has no port {}",
        endpoint["port"]
    );
    let job_label = spec["jobLabel"].as_str().unwrap();
    assert_eq!(
        service["metadata"]["labels"][job_label],
        prometheus::OPERATOR_JOB
    );
    assert_eq!(endpoint["honorLabels"], true);

    // Agent pods carry these labels (the operator's pod template); the job comes from the name.
    let pods = &of_kind(&objects, "PodMonitor")[0]["spec"];
    let selector = &pods["selector"]["matchLabels"];
    assert_eq!(
        selector[aios_crds::names::labels::NAME],
        prometheus::AGENT_JOB
    );
    assert_eq!(selector[aios_crds::names::labels::COMPONENT], "agent");
    assert_eq!(pods["jobLabel"], aios_crds::names::labels::NAME);
    assert_eq!(pods["namespaceSelector"]["any"], true);
    assert_eq!(pods["podMetricsEndpoints"][0]["port"], "health");
    assert_eq!(pods["podMetricsEndpoints"][0]["honorLabels"], true);

    // With one watched namespace, the agents are looked for there.
    let watched = render(&[ALL_ON[1], "operator.watchNamespace=team-a"]);
    assert_eq!(
        of_kind(&watched, "PodMonitor")[0]["spec"]["namespaceSelector"]["matchNames"],
        serde_json::json!(["team-a"])
    );
}

#[test]
fn a_service_monitor_without_the_metrics_service_is_refused() {
    let out = chart::render(
        "aios",
        "aios-system",
        &[ALL_ON[0], "metrics.service.enabled=false"],
    )
    .expect_err("a ServiceMonitor with no Service to scrape must be refused");
    assert!(out.to_string().contains("metrics.service.enabled"), "{out}");
}

// ---------------------------------------------------------------------------------------
// A real Prometheus

/// A loopback HTTP server answering every request with the body it holds now.
struct MetricsServer {
    address: String,
    body: Arc<Mutex<String>>,
}

impl MetricsServer {
    fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let body = Arc::new(Mutex::new(body));
        let served = Arc::clone(&body);
        // Lives as long as the test process: nothing to clean up outside it.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = served.lock().unwrap().clone();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { address, body }
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until Prometheus holds a few scrapes of every target, enough for `rate()`.
fn wait_for_samples(prom: &Prometheus) {
    wait_until(
        "three scrapes of every target",
        Duration::from_secs(30),
        || {
            prom.query("min(count_over_time(up[30s])) >= 3")
                .is_ok_and(|s| !s.is_empty())
        },
    );
}

#[test]
fn prometheus_scrapes_a_target_and_answers_queries_and_refuses_bad_ones() {
    let target = MetricsServer::start(
        "# HELP aios_leader Whether this replica leads.\n# TYPE aios_leader gauge\naios_leader 1\n"
            .to_owned(),
    );
    let prom = Prometheus::start(
        &[Target::operator(target.address.clone())],
        &[prometheus::rules_path()],
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    prom.wait_for_targets(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", prom.log_tail()));

    let answer = prom.query("aios_leader").unwrap();
    assert_eq!(answer.len(), 1, "{answer:?}");
    assert_eq!(answer[0].metric["job"], prometheus::OPERATOR_JOB);
    assert_eq!(answer[0].metric["instance"], target.address);
    assert!((answer[0].value() - 1.0).abs() < f64::EPSILON);
    assert!(prom.query("aios_no_such_metric").unwrap().is_empty());

    let refused = prom.query("sum(aios_leader").expect_err("a syntax error");
    assert!(
        matches!(&refused, prometheus::PrometheusError::Query { kind, .. } if kind == "bad_data"),
        "{refused}"
    );

    // The chart's rules load into the real server and evaluate without errors.
    wait_for_samples(&prom);
    wait_until("every rule evaluated", Duration::from_secs(30), || {
        prom.unhealthy_rules().is_ok_and(|bad| bad.is_empty())
    });

    // A target that stops answering is reported as down, with its error.
    let down = Prometheus::start(&[Target::operator("127.0.0.1:1")], &[]).unwrap();
    let err = down
        .wait_for_targets(Duration::from_secs(6))
        .expect_err("nothing listens on port 1");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Every dashboard and alert query against the metrics AIOS exports

/// The text format of `spec`: one series a line, `<type> <name>{<labels>} <value>`, a
/// family's series together; histograms get buckets, sum and count. Only the series
/// `keep(name, labels)` accepts.
fn exposition(spec: &str, keep: impl Fn(&str, &str) -> bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut last = "";
    for line in spec.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (kind, rest) = line.split_once(' ').unwrap();
        let (selector, value) = rest.rsplit_once(' ').unwrap();
        let (name, labels) = selector
            .split_once('{')
            .map_or((selector, ""), |(n, l)| (n, l.trim_end_matches('}')));
        if !keep(name, labels) {
            continue;
        }
        if name != last {
            writeln!(
                out,
                "# HELP {name} Test series of {name}.\n# TYPE {name} {kind}"
            )
            .unwrap();
            last = name;
        }
        if kind == "histogram" {
            let sep = if labels.is_empty() { "" } else { "," };
            for le in ["0.1", "1", "10", "+Inf"] {
                writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {value}").unwrap();
            }
            writeln!(out, "{name}_sum{{{labels}}} {value}").unwrap();
            writeln!(out, "{name}_count{{{labels}}} {value}").unwrap();
        } else {
            writeln!(out, "{name}{{{labels}}} {value}").unwrap();
        }
    }
    out
}

/// What the operator exports after a run in namespace team-a: one of each series, with
/// the label names and values the operator uses.
const OPERATOR_SERIES: &str = r#"
    gauge aios_leader 1
    counter aios_reconciles_total{controller="project"} 40
    counter aios_reconciles_total{controller="agent"} 12
    counter aios_reconcile_errors_total{controller="project",category="conflict"} 2
    histogram aios_reconcile_duration_seconds{controller="project"} 40
    gauge aios_tasks{phase="Succeeded",role="backend"} 2
    gauge aios_tasks{phase="Running",role="backend"} 1
    gauge aios_tasks{phase="Failed",role="qa"} 1
    histogram aios_dispatch_latency_seconds{role="backend"} 3
    counter aios_dispatches_total{role="backend"} 3
    counter aios_bus_publish_failures_total{kind="dispatch",category="broker"} 1
    counter aios_task_events_total{type="succeeded",outcome="applied"} 3
    counter aios_rejected_messages_total{message="event",reason="bad_token"} 1
    counter aios_credential_requests_total{purpose="git",outcome="given"} 3
    counter aios_verifications_total{kind="task",outcome="Passed"} 2
    counter aios_verifications_total{kind="task",outcome="Failed"} 1
    histogram aios_verification_duration_seconds{kind="task",outcome="Passed"} 2
    gauge aios_queue_messages{namespace="team-a",role="backend",state="ready"} 1
    gauge aios_queue_messages{namespace="team-a",role="backend",state="unacked"} 1
    gauge aios_queue_consumers{namespace="team-a",role="backend"} 1
    gauge aios_pool_desired_replicas{namespace="team-a",agent="apollo",role="backend"} 1
    gauge aios_pool_ready_replicas{namespace="team-a",agent="apollo",role="backend"} 1
    gauge aios_projects{namespace="team-a",phase="Running"} 1
    gauge aios_usage_tokens{namespace="team-a",direction="input"} 800
    gauge aios_usage_tokens{namespace="team-a",direction="output"} 300
    gauge aios_usage_cost_usd{namespace="team-a"} 0.02
    gauge aios_project_local_ratio{namespace="team-a",project="hello"} 1
    gauge aios_project_local_ratio_target{namespace="team-a",project="hello"} 0.5
    gauge aios_project_budget_used_ratio{namespace="team-a",project="hello",limit="tokens"} 0.1
    counter aios_plan_rejections_total{namespace="team-a"} 1
    counter aios_dead_lettered_dispatches_total{role="backend"} 1
    gauge aios_model_provider_ready{namespace="team-a",provider="local",tier="Local"} 1
"#;

/// What an agent serving role backend exports after a run.
const AGENT_SERIES: &str = r#"
    counter aios_agent_tasks_total{role="backend",outcome="succeeded"} 2
    histogram aios_agent_task_duration_seconds{role="backend",outcome="succeeded"} 2
    counter aios_agent_llm_requests_total{provider="local",model="fixture",tier="local",outcome="ok"} 4
    counter aios_agent_llm_requests_total{provider="local",model="fixture",tier="local",outcome="timeout"} 1
    counter aios_agent_llm_tokens_total{provider="local",model="fixture",tier="local",direction="input"} 800
    counter aios_agent_llm_tokens_total{provider="local",model="fixture",tier="local",direction="output"} 300
    counter aios_agent_llm_cost_usd_total{provider="local",model="fixture",tier="local"} 0
    histogram aios_agent_llm_request_duration_seconds{provider="local",model="fixture",tier="local",outcome="ok"} 4
    gauge aios_agent_llm_local_ratio 1
    counter aios_agent_push_rejections_total 0
    counter aios_agent_memory_notes_total{outcome="stored"} 1
"#;

/// Families that exist only once something went wrong (or, the budget ratio, for a
/// Project with a budget).
const ONLY_AFTER_FAILURES: [&str; 7] = [
    "aios_reconcile_errors_total",
    "aios_bus_publish_failures_total",
    "aios_rejected_messages_total",
    "aios_plan_rejections_total",
    "aios_dead_lettered_dispatches_total",
    "aios_project_budget_used_ratio",
    "aios_credential_requests_total",
];

/// The operator's metrics without the families in `leave_out`; without `failed`, what
/// it exports when nothing went wrong: no failure counters, no failed Task or
/// verification, no Project with a budget.
fn operator_metrics(failed: bool, leave_out: &[&str]) -> String {
    exposition(OPERATOR_SERIES, |name, labels| {
        !leave_out.contains(&name)
            && (failed || !(ONLY_AFTER_FAILURES.contains(&name) || labels.contains("Failed")))
    })
}

/// An agent's metrics; with `failed`, one model call timed out.
fn agent_metrics(failed: bool) -> String {
    exposition(AGENT_SERIES, |_, labels| {
        failed || !labels.contains("timeout")
    })
}

#[test]
fn promtool_passes_the_test_metrics_and_finds_a_bad_one() {
    for failed in [true, false] {
        prometheus::check_metrics(&operator_metrics(failed, &[])).unwrap_or_else(|e| panic!("{e}"));
        prometheus::check_metrics(&agent_metrics(failed)).unwrap_or_else(|e| panic!("{e}"));
    }
    let bad = "# HELP aios_calls Calls.\n# TYPE aios_calls counter\naios_calls 1\n";
    let err = prometheus::check_metrics(bad).expect_err("a counter without _total");
    assert!(err.to_string().contains("_total"), "{err}");
}

fn report(failures: &[prometheus::Failure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prometheus scraping an operator and an agent (backend, in team-a) serving these
/// bodies, with a few scrapes of each.
fn scraping(operator: &MetricsServer, agent: &MetricsServer) -> Prometheus {
    let prom = Prometheus::start(
        &[
            Target::operator(operator.address.clone()),
            Target::agent(agent.address.clone(), "team-a", "apollo", "backend"),
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("{e:#?}"));
    prom.wait_for_targets(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", prom.log_tail()));
    wait_for_samples(&prom);
    prom
}

/// All namespaces and roles now, the run's own now, and all over the last minute.
fn evaluations() -> [(Variables, When); 3] {
    let now = prometheus::unix_now();
    [
        (Variables::default(), When::Now),
        (
            Variables::default()
                .with("namespace", "team-a")
                .with("role", "backend"),
            When::Now,
        ),
        (
            Variables::default(),
            When::Range {
                start: now - 60.0,
                end: now,
                step: 5.0,
            },
        ),
    ]
}

#[test]
fn every_dashboard_and_alert_query_evaluates_against_aios_metrics() {
    let operator = MetricsServer::start(operator_metrics(true, &[]));
    let agent = MetricsServer::start(agent_metrics(true));
    let prom = scraping(&operator, &agent);
    for (variables, when) in evaluations() {
        let failures = prometheus::failed_expressions(&prom, when, &variables).unwrap();
        assert!(
            failures.is_empty(),
            "{variables:?} {when:?}:\n{}",
            report(&failures)
        );
    }

    // A metric a panel and an alert read goes missing: both are reported, no other.
    operator.serve(operator_metrics(true, &["aios_queue_messages"]));
    wait_until(
        "the queue gauge gone stale",
        Duration::from_secs(30),
        || {
            prom.query("aios_queue_messages")
                .is_ok_and(|s| s.is_empty())
        },
    );
    let failures = prometheus::failed_expressions(&prom, When::Now, &Variables::default()).unwrap();
    let sources: BTreeSet<&str> = failures.iter().map(|f| f.source.as_str()).collect();
    assert_eq!(
        sources,
        [
            r#"panel "Queue depth" (A)"#,
            "alert AIOSQueueBacklogNotDraining"
        ]
        .into_iter()
        .collect(),
        "{}",
        report(&failures)
    );
}

#[test]
fn a_run_where_nothing_failed_leaves_only_the_documented_queries_empty() {
    let operator = MetricsServer::start(operator_metrics(false, &[]));
    let agent = MetricsServer::start(agent_metrics(false));
    let prom = scraping(&operator, &agent);
    for (variables, when) in evaluations() {
        let failures = prometheus::failed_expressions(&prom, when, &variables).unwrap();
        assert!(
            failures.is_empty(),
            "{variables:?} {when:?}:\n{}",
            report(&failures)
        );
    }
    // And those queries are empty indeed: the allowance is used, not idle.
    for empty in [
        "aios_reconcile_errors_total",
        r#"aios_agent_llm_requests_total{outcome!="ok"}"#,
        r#"aios_tasks{phase="Failed"}"#,
    ] {
        assert!(prom.query(empty).unwrap().is_empty(), "{empty}");
    }
}
