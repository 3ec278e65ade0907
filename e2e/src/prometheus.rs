//! A real Prometheus for tests (Debian's `prometheus` package, installed by
//! `e2e/controlplane/install-services.sh` when missing): a server on loopback with a fresh data
//! directory that scrapes given targets every second, queried through its HTTP API; its
//! `promtool`; and the PromQL the chart ships — every expression of the Grafana dashboard
//! (`charts/aios/files/grafana/aios-dashboard.json`) and of the alert rules
//! (`charts/aios/files/prometheus/rules.yaml`) — with [`failed_expressions`] evaluating
//! them all against a server that scraped AIOS.
//!
//! Job names are the ones the rules and the dashboard expect ([`OPERATOR_JOB`],
//! [`AGENT_JOB`]); targets carry the labels the chart's ServiceMonitor and PodMonitor
//! give them (`namespace`, `role` and `agent` on agents' targets), and are scraped with
//! `honor_labels` as the monitors do, so the operator's own `namespace` labels win.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use crate::process::{self, ProcessError, ServerProcess};

/// The job of the operator's targets in the rules and the dashboard.
pub const OPERATOR_JOB: &str = "aios-operator";
/// The job of the agents' targets in the rules and the dashboard.
pub const AGENT_JOB: &str = "aios-agent";

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Why Prometheus could not be run, reached or asked.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// A program of the `prometheus` package is missing and could not be installed.
    #[error("{program} is not installed and could not be installed: run {script} as root")]
    Missing {
        /// The program.
        program: String,
        /// The install script.
        script: String,
    },
    /// A file or directory could not be read or written.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be started or did not become ready.
    #[error("starting Prometheus")]
    Process(#[from] ProcessError),
    /// The HTTP API could not be reached or answered something unreadable.
    #[error("Prometheus' HTTP API at {path}: {reason}")]
    Http {
        /// The request path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Prometheus refused a query.
    #[error("query {query:?} failed ({kind}): {message}")]
    Query {
        /// The query.
        query: String,
        /// Prometheus' error type (`bad_data`, `execution`, ...).
        kind: String,
        /// Prometheus' error message.
        message: String,
    },
    /// Targets were not all up in time.
    #[error("targets not up within {seconds}s: {down}")]
    TargetsDown {
        /// How long we waited.
        seconds: u64,
        /// The targets not up, with their last scrape error.
        down: String,
    },
    /// A file of the chart is not what it should be.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// promtool found problems (or could not run); its output says which.
    #[error("promtool {args} failed: {output}")]
    Promtool {
        /// The arguments.
        args: String,
        /// What promtool printed.
        output: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PrometheusError {
    let what = what.into();
    move |source| PrometheusError::Io { what, source }
}

/// The path of a program of Debian's `prometheus` package, installing the package (and
/// Lua, see the script) when it is missing.
fn packaged(program: &str) -> Result<PathBuf, PrometheusError> {
    let path = PathBuf::from(program);
    if path.exists() {
        return Ok(path);
    }
    let script = crate::repo_root()
        .join("e2e")
        .join("controlplane")
        .join("install-services.sh");
    let installed = Command::new(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success());
    if installed && path.exists() {
        Ok(path)
    } else {
        Err(PrometheusError::Missing {
            program: program.to_owned(),
            script: script.display().to_string(),
        })
    }
}

/// promtool, from the same package as the server.
pub fn promtool() -> Result<PathBuf, PrometheusError> {
    packaged(PROMTOOL)
}

/// Runs promtool with `args` (and `stdin`, when given); an error with its output unless
/// it succeeded.
fn run_promtool(args: &[&str], stdin: Option<&str>) -> Result<String, PrometheusError> {
    let mut child = Command::new(promtool()?)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error("running promtool"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(io_error("writing to promtool"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(io_error("running promtool"))?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(output)
    } else {
        Err(PrometheusError::Promtool {
            args: args.join(" "),
            output: output.trim().to_owned(),
        })
    }
}

/// `promtool check metrics` on a `/metrics` body: an error listing the problems it found
/// (names without units or `_total`, missing help, malformed lines).
pub fn check_metrics(body: &str) -> Result<(), PrometheusError> {
    run_promtool(&["check", "metrics"], Some(body)).map(drop)
}

/// `promtool check rules` on a rule file.
pub fn check_rules(path: &Path) -> Result<String, PrometheusError> {
    run_promtool(&["check", "rules", &path.display().to_string()], None)
}

/// `promtool test rules` on a rule unit-test file.
pub fn test_rules(path: &Path) -> Result<String, PrometheusError> {
    run_promtool(&["test", "rules", &path.display().to_string()], None)
}

/// The chart's alert rules.
pub fn rules_path() -> PathBuf {
    crate::chart::chart_dir()
        .join("files")
        .join("prometheus")
        .join("rules.yaml")
}

/// The unit tests of the chart's alert rules.
pub fn rules_test_path() -> PathBuf {
    crate::chart::chart_dir()
        .join("files")
        .join("prometheus")
        .join("rules.test.yaml")
}

/// The chart's Grafana dashboard.
pub fn dashboard_path() -> PathBuf {
    crate::chart::chart_dir()
        .join("files")
        .join("grafana")
        .join("aios-dashboard.json")
}

/// One target Prometheus scrapes (`/metrics` over plain HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The job, [`OPERATOR_JOB`] or [`AGENT_JOB`] for AIOS's own.
    pub job: String,
    /// `host:port`.
    pub address: String,
    /// Labels added to every series of the target, as a monitor's relabelling would.
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// An operator replica at `address`.
    pub fn operator(address: impl Into<String>) -> Self {
        Self {
            job: OPERATOR_JOB.to_owned(),
            address: address.into(),
            labels: BTreeMap::new(),
        }
    }

    /// An agent of Agent `agent` (serving `role`) in `namespace` at `address`, with the
    /// labels the chart's PodMonitor gives agent pods.
    pub fn agent(address: impl Into<String>, namespace: &str, agent: &str, role: &str) -> Self {
        Self {
            job: AGENT_JOB.to_owned(),
            address: address.into(),
            labels: [("namespace", namespace), ("agent", agent), ("role", role)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// One series of a query's answer: its labels and its samples (one for an instant
/// query; values as Prometheus writes them, `"NaN"` included).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The labels.
    pub metric: BTreeMap<String, String>,
    /// `(unix seconds, value)`.
    pub samples: Vec<(f64, String)>,
}

impl Series {
    /// The last sample's value as a number (`NaN` when unreadable or absent).
    pub fn value(&self) -> f64 {
        self.samples
            .last()
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

/// When to evaluate queries: now, or over a window (a range query: a series counts if
/// it had a sample anywhere in it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    /// An instant query at the server's present.
    Now,
    /// A range query.
    Range {
        /// Unix seconds.
        start: f64,
        /// Unix seconds.
        end: f64,
        /// Seconds between evaluations.
        step: f64,
    },
}

/// The present as unix seconds, for [`When::Range`].
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A Prometheus server this process started; stopped, and its directory removed, on drop.
#[derive(Debug)]
pub struct Prometheus {
    process: ServerProcess,
    port: u16,
    dir: PathBuf,
    targets: usize,
}

/// Unique directory names within this process.
static STARTED: AtomicU32 = AtomicU32::new(0);

impl Prometheus {
    /// Starts Prometheus on a free loopback port with a fresh data directory, scraping
    /// `targets` every second (with `honor_labels`) and evaluating `rule_files` every
    /// second; returns once it is ready (not once the targets are up: see
    /// [`Prometheus::wait_for_targets`]).
    pub fn start(targets: &[Target], rule_files: &[PathBuf]) -> Result<Self, PrometheusError> {
        let program = packaged(PROMETHEUS)?;
        let dir = std::env::temp_dir().join(format!(
            "aios-prometheus-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data"))
            .map_err(io_error(format!("creating {}", dir.display())))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets, rule_files))
            .map_err(io_error(format!("writing {}", config.display())))?;
        let port = process::free_port()?;
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--storage.tsdb.retention.time=1d".to_owned(),
            "--log.level=warn".to_owned(),
        ];
        let started = process::spawn(
            "prometheus",
            &program,
            &args,
            &[],
            &dir.join("prometheus.log"),
        );
        let server = Self {
            process: started?,
            port,
            dir,
            targets: targets.len(),
        };
        server.process.wait_ready(Duration::from_secs(60), || {
            process::http_get(port, "/-/ready").is_some()
        })?;
        Ok(server)
    }

    /// The port its HTTP API listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Waits until every target has been scraped successfully; an error naming those
    /// that are not, with their last scrape error, after `timeout`.
    pub fn wait_for_targets(&self, timeout: Duration) -> Result<(), PrometheusError> {
        let start = Instant::now();
        loop {
            let answer = self.api("/api/v1/targets?state=active")?;
            let active = answer["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let down: Vec<String> = active
                .iter()
                .filter(|t| t["health"] != "up")
                .map(|t| {
                    format!(
                        "{} {} ({}: {})",
                        t["labels"]["job"].as_str().unwrap_or("?"),
                        t["scrapeUrl"].as_str().unwrap_or("?"),
                        t["health"].as_str().unwrap_or("?"),
                        t["lastError"].as_str().unwrap_or("")
                    )
                })
                .collect();
            if down.is_empty() && active.len() >= self.targets {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(PrometheusError::TargetsDown {
                    seconds: timeout.as_secs(),
                    down: if down.is_empty() {
                        format!("{} of {} targets known", active.len(), self.targets)
                    } else {
                        down.join("; ")
                    },
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// An instant query now; the series of its answer (a scalar is one series with no
    /// labels). An error when Prometheus refuses it.
    pub fn query(&self, query: &str) -> Result<Vec<Series>, PrometheusError> {
        self.evaluate(query, When::Now)
    }

    /// A range query from `start` to `end` (unix seconds) every `step` seconds.
    pub fn query_range(
        &self,
        query: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<Series>, PrometheusError> {
        self.evaluate(query, When::Range { start, end, step })
    }

    /// A query evaluated `when`.
    pub fn evaluate(&self, query: &str, when: When) -> Result<Vec<Series>, PrometheusError> {
        let encoded = percent_encode(query);
        let path = match when {
            When::Now => format!("/api/v1/query?query={encoded}"),
            When::Range { start, end, step } => format!(
                "/api/v1/query_range?query={encoded}&start={start:.3}&end={end:.3}&step={step}"
            ),
        };
        let (status, body) = self.get(&path)?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| PrometheusError::Http {
            path: path.clone(),
            reason: format!("HTTP {status}, not JSON ({e}): {body}"),
        })?;
        if answer["status"] != "success" {
            return Err(PrometheusError::Query {
                query: query.to_owned(),
                kind: answer["errorType"].as_str().unwrap_or("?").to_owned(),
                message: answer["error"].as_str().unwrap_or(&body).to_owned(),
            });
        }
        series(&answer["data"]).ok_or_else(|| PrometheusError::Http {
            path,
            reason: format!("an answer in an unknown shape: {body}"),
        })
    }

    /// A JSON API's `data`, when it answered `success`.
    fn api(&self, path: &str) -> Result<Value, PrometheusError> {
        let (status, body) = self.get(path)?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| PrometheusError::Http {
            path: path.to_owned(),
            reason: format!("HTTP {status}, not JSON ({e})"),
        })?;
        if answer["status"] == "success" {
            Ok(answer["data"].clone())
        } else {
            Err(PrometheusError::Http {
                path: path.to_owned(),
                reason: format!("HTTP {status}: {body}"),
            })
        }
    }

    /// The rules Prometheus loaded (see [`Prometheus::start`]) whose last evaluation
    /// failed, each with its error; empty when all evaluate. An error when none is loaded.
    pub fn unhealthy_rules(&self) -> Result<Vec<String>, PrometheusError> {
        let data = self.api("/api/v1/rules")?;
        let rules: Vec<&Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        if rules.is_empty() {
            return Err(PrometheusError::Http {
                path: "/api/v1/rules".to_owned(),
                reason: "no rule is loaded".to_owned(),
            });
        }
        Ok(rules
            .into_iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| {
                format!(
                    "{} ({}): {}",
                    r["name"].as_str().unwrap_or("?"),
                    r["health"].as_str().unwrap_or("?"),
                    r["lastError"].as_str().unwrap_or("")
                )
            })
            .collect())
    }

    /// An HTTP/1.0 GET on the API: status and body, whatever the status.
    fn get(&self, path: &str) -> Result<(u16, String), PrometheusError> {
        let http = |reason: String| PrometheusError::Http {
            path: path.to_owned(),
            reason,
        };
        let timeout = Duration::from_secs(30);
        let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], self.port).into(), timeout)
            .map_err(|e| http(e.to_string()))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| http(e.to_string()))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| http(e.to_string()))?;
        // HTTP/1.0: the server closes the connection after the whole answer.
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .map_err(|e| http(e.to_string()))?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| http(format!("no HTTP answer: {text}")))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| http(format!("no HTTP status: {head}")))?;
        Ok((status, body.to_owned()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The configuration file: one scrape job per distinct job name, one static config per
/// target (so each has its own labels).
fn scrape_config(targets: &[Target], rule_files: &[PathBuf]) -> String {
    let jobs: BTreeSet<&str> = targets.iter().map(|t| t.job.as_str()).collect();
    let scrape_configs: Vec<Value> = jobs
        .into_iter()
        .map(|job| {
            let statics: Vec<Value> = targets
                .iter()
                .filter(|t| t.job == job)
                .map(|t| json!({ "targets": [t.address], "labels": t.labels }))
                .collect();
            json!({ "job_name": job, "honor_labels": true, "static_configs": statics })
        })
        .collect();
    let config = json!({
        "global": { "scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s" },
        "rule_files": rule_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "scrape_configs": scrape_configs,
    });
    // JSON is YAML; Prometheus reads it as such.
    config.to_string()
}

/// The series of a query answer's `data`.
fn series(data: &Value) -> Option<Vec<Series>> {
    let labels = |m: &Value| -> BTreeMap<String, String> {
        m.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect()
    };
    let sample = |s: &Value| -> Option<(f64, String)> {
        Some((s.get(0)?.as_f64()?, s.get(1)?.as_str()?.to_owned()))
    };
    let result = &data["result"];
    match data["resultType"].as_str()? {
        "vector" => result
            .as_array()?
            .iter()
            .map(|s| {
                Some(Series {
                    metric: labels(&s["metric"]),
                    samples: vec![sample(&s["value"])?],
                })
            })
            .collect(),
        "matrix" => result
            .as_array()?
            .iter()
            .map(|s| {
                Some(Series {
                    metric: labels(&s["metric"]),
                    samples: s["values"]
                        .as_array()?
                        .iter()
                        .map(sample)
                        .collect::<Option<_>>()?,
                })
            })
            .collect(),
        "scalar" | "string" => Some(vec![Series {
            metric: BTreeMap::new(),
            samples: vec![sample(result)?],
        }]),
        _ => None,
    }
}

fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
    out
}

/// Values for the dashboard's template variables (`$namespace`, `${role}`, Grafana's
/// `$__rate_interval`, ...) when its queries are run outside Grafana.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variables(BTreeMap<String, String>);

impl Default for Variables {
    /// Every namespace and role (the variables' "All", `.*`), and intervals that suit a
    /// server scraping every second: `$__rate_interval` 30s (Grafana makes it at least
    /// four scrape intervals), `$__interval` 15s, `$__range` 5m.
    fn default() -> Self {
        Self(
            [
                ("namespace", ".*"),
                ("role", ".*"),
                ("__rate_interval", "30s"),
                ("__interval", "15s"),
                ("__interval_ms", "15000"),
                ("__range", "5m"),
                ("__range_s", "300"),
                ("__range_ms", "300000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        )
    }
}

impl Variables {
    /// These values with `name` set to `value` (a regex for `namespace` and `role`,
    /// which the dashboard matches with `=~`).
    #[must_use]
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }

    /// `text` with every `$name`, `${name}` and `${name:format}` of a known variable
    /// replaced by its value; unknown ones are left for Prometheus to refuse.
    pub fn substitute(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let (name, used) = if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) => {
                        let inner = &braced[..end];
                        (inner.split(':').next().unwrap_or(inner), end + 2)
                    }
                    None => ("", 0),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            match self.0.get(name) {
                Some(value) if !name.is_empty() => {
                    out.push_str(value);
                    rest = &after[used..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// One PromQL expression the chart ships, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    /// Where it is: `panel "Queue depth" (B)`, `variable role`, `alert AIOSNoLeader`.
    pub source: String,
    /// The expression, variables substituted.
    pub expr: String,
    /// Whether it is an alert's or a recording rule's expression.
    pub is_rule: bool,
}

/// Every panel of a dashboard, rows' nested panels included, in order.
pub fn dashboard_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL expression of a dashboard with `variables` substituted: each panel's
/// targets' `expr` (rows' nested panels included), and each query variable's
/// `label_values(selector, label)` as the PromQL Grafana runs for it
/// (`group by (label) (selector)`).
pub fn dashboard_expressions(
    dashboard: &Value,
    variables: &Variables,
) -> Result<Vec<Expression>, PrometheusError> {
    let mut out = Vec::new();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
    {
        let name = variable["name"].as_str().unwrap_or("?");
        let query = variable["query"]
            .as_str()
            .or_else(|| variable["query"]["query"].as_str())
            .unwrap_or_default();
        let expr = label_values_query(query).ok_or_else(|| PrometheusError::File {
            path: dashboard_path().display().to_string(),
            reason: format!("variable {name}: {query:?} is not label_values(selector, label)"),
        })?;
        out.push(Expression {
            source: format!("variable {name}"),
            expr: variables.substitute(&expr),
            is_rule: false,
        });
    }
    for panel in dashboard_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push(Expression {
                    source: format!(
                        "panel {title:?} ({})",
                        target["refId"].as_str().unwrap_or("?")
                    ),
                    expr: variables.substitute(expr),
                    is_rule: false,
                });
            }
        }
    }
    Ok(out)
}

/// `label_values(selector, label)` as PromQL.
fn label_values_query(query: &str) -> Option<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")?
        .strip_suffix(')')?;
    let (selector, label) = inner.rsplit_once(',')?;
    Some(format!("group by ({}) ({})", label.trim(), selector.trim()))
}

/// Every rule's expression in a rule file's text (`groups[].rules[].expr`).
pub fn rule_expressions(rules_yaml: &str) -> Result<Vec<Expression>, PrometheusError> {
    let file: Value = serde_yaml_ng::from_str(rules_yaml).map_err(|e| PrometheusError::File {
        path: rules_path().display().to_string(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for rule in file["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
    {
        let (kind, name) = match (rule["alert"].as_str(), rule["record"].as_str()) {
            (Some(name), _) => ("alert", name),
            (None, Some(name)) => ("record", name),
            (None, None) => ("rule", "?"),
        };
        out.push(Expression {
            source: format!("{kind} {name}"),
            expr: rule["expr"].as_str().unwrap_or_default().trim().to_owned(),
            is_rule: true,
        });
    }
    Ok(out)
}

/// The metric names (`aios_…`) an expression reads, histograms' `_bucket` series as
/// written; quoted strings (label values) are skipped.
pub fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if !escaped && d == c {
                    break;
                }
                escaped = !escaped && d == '\\';
            }
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut end = at + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = i + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[at..end];
            if word.starts_with("aios_") {
                names.insert(word.to_owned());
            }
        }
    }
    names
}

/// Metrics that exist only once something went wrong, or only for some objects, so a
/// run where all went well may have no series of them; each with why.
pub const MAY_BE_ABSENT: &[(&str, &str)] = &[
    (
        "aios_reconcile_errors_total",
        "counted from the first failed reconcile on",
    ),
    (
        "aios_bus_publish_failures_total",
        "counted from the first failed publish on",
    ),
    (
        "aios_rejected_messages_total",
        "counted from the first message without a valid attempt token on",
    ),
    (
        "aios_dead_lettered_dispatches_total",
        "counted from the first dead-lettered dispatch on",
    ),
    (
        "aios_plan_rejections_total",
        "counted from the first plan of Hera's the operator rejected on",
    ),
    (
        "aios_credential_requests_total",
        "asked only for a Project repository or a ModelProvider that names a Secret",
    ),
    (
        "aios_project_budget_used_ratio",
        "exported only for unfinished Projects with a budget",
    ),
];

/// Selections that are empty while nothing fails, in expressions of metrics that do
/// exist; each with why.
pub const EMPTY_WHILE_NOTHING_FAILS: &[(&str, &str)] = &[
    (r#"outcome!="ok""#, "model calls that failed"),
    (
        r#"outcome!="Passed""#,
        "verification runs that did not pass",
    ),
    (r#"phase="Failed""#, "Tasks that failed for good"),
];

/// Why an expression is allowed to return no series, if it is.
pub fn allowed_empty(expression: &Expression) -> Option<String> {
    if expression.is_rule {
        return Some("an alert's expression is empty while its alert does not fire".to_owned());
    }
    let metrics = referenced_metrics(&expression.expr);
    MAY_BE_ABSENT
        .iter()
        .find(|(metric, _)| metrics.contains(*metric))
        .map(|(metric, why)| format!("{metric}: {why}"))
        .or_else(|| {
            EMPTY_WHILE_NOTHING_FAILS
                .iter()
                .find(|(needle, _)| expression.expr.contains(needle))
                .map(|(needle, why)| format!("{needle}: {why}"))
        })
}

/// An expression that failed in [`failed_expressions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where it is.
    pub source: String,
    /// The expression (or, for a metric a rule reads, the query that looked for it).
    pub expr: String,
    /// What went wrong.
    pub problem: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}\n    {}", self.source, self.problem, self.expr)
    }
}

/// Evaluates every expression of the chart's dashboard and alert rules against `prom`
/// (`when`: now, or over the window a run took), with the dashboard's `variables`; the
/// ones that fail:
///
/// - any expression Prometheus refuses (a syntax error, an unknown function, a variable
///   left unsubstituted);
/// - a dashboard expression that returns no series, unless [`allowed_empty`] says why it
///   may ([`MAY_BE_ABSENT`], [`EMPTY_WHILE_NOTHING_FAILS`]);
/// - an alert's expression is empty while the alert does not fire, so instead each
///   metric it reads must have series, unless it is one of [`MAY_BE_ABSENT`]: an alert
///   on a metric that is never exported (a misspelt name) would never fire.
///
/// Empty when all is well. An error only when the chart's files cannot be read.
pub fn failed_expressions(
    prom: &Prometheus,
    when: When,
    variables: &Variables,
) -> Result<Vec<Failure>, PrometheusError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(io_error(format!("reading {}", path.display())))
    };
    let dashboard: Value =
        serde_json::from_str(&read(dashboard_path())?).map_err(|e| PrometheusError::File {
            path: dashboard_path().display().to_string(),
            reason: e.to_string(),
        })?;
    let mut expressions = dashboard_expressions(&dashboard, variables)?;
    expressions.extend(rule_expressions(&read(rules_path())?)?);

    let mut failures = Vec::new();
    let mut checked_metrics = BTreeSet::new();
    for expression in &expressions {
        let fail = |problem: String| Failure {
            source: expression.source.clone(),
            expr: expression.expr.clone(),
            problem,
        };
        match prom.evaluate(&expression.expr, when) {
            Err(err) => failures.push(fail(err.to_string())),
            Ok(series) if series.is_empty() && allowed_empty(expression).is_none() => {
                failures.push(fail("no series".to_owned()));
            }
            Ok(_) => {}
        }
        if !expression.is_rule {
            continue;
        }
        for metric in referenced_metrics(&expression.expr) {
            if MAY_BE_ABSENT.iter().any(|(m, _)| *m == metric)
                || !checked_metrics.insert(metric.clone())
            {
                continue;
            }
            let query = format!("count({{__name__={metric:?}}})");
            match prom.evaluate(&query, when) {
                Err(err) => failures.push(fail(err.to_string())),
                Ok(series) if series.is_empty() => failures.push(Failure {
                    source: expression.source.clone(),
                    expr: query,
                    problem: format!("reads {metric}, which has no series"),
                }),
                Ok(_) => {}
            }
        }
    }
    Ok(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_substituted_in_every_form_and_unknown_ones_kept() {
        let vars = Variables::default().with("namespace", "team-a");
        assert_eq!(
            vars.substitute(
                r#"rate(x{namespace=~"$namespace", role=~"${role}", a="${role:regex}"}[$__rate_interval]) $unknown $"#
            ),
            r#"rate(x{namespace=~"team-a", role=~".*", a=".*"}[30s]) $unknown $"#
        );
    }

    #[test]
    fn metric_names_are_found_outside_strings() {
        let names = referenced_metrics(
            r#"sum by (le) (rate(aios_a_bucket{x="aios_not_me"}[5m])) / on() aios_b unless up"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["aios_a_bucket", "aios_b"]
        );
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"sum(a{b=~"c.*"}) / 2"#),
            "sum%28a%7Bb%3D~%22c.%2A%22%7D%29%20%2F%202"
        );
    }

    #[test]
    fn label_values_become_a_group_by() {
        assert_eq!(
            label_values_query(r#"label_values(aios_x{namespace=~"$namespace"}, role)"#).as_deref(),
            Some(r#"group by (role) (aios_x{namespace=~"$namespace"})"#)
        );
        assert_eq!(label_values_query("query_result(up)"), None);
    }

    #[test]
    fn query_answers_of_each_shape_are_read() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"role": "qa"}, "value": [1.5, "2"]}]});
        let read = series(&vector).unwrap();
        assert_eq!(read[0].metric["role"], "qa");
        assert!((read[0].value() - 2.0).abs() < f64::EPSILON);
        let matrix = json!({"resultType": "matrix", "result": [
            {"metric": {}, "values": [[1, "1"], [2, "NaN"]]}]});
        assert_eq!(series(&matrix).unwrap()[0].samples.len(), 2);
        let scalar = json!({"resultType": "scalar", "result": [1, "7"]});
        assert!((series(&scalar).unwrap()[0].value() - 7.0).abs() < f64::EPSILON);
    }

    #[test]
    fn failure_only_expressions_may_be_empty_and_others_may_not() {
        let panel = |expr: &str| Expression {
            source: "panel".to_owned(),
            expr: expr.to_owned(),
            is_rule: false,
        };
        assert!(allowed_empty(&panel("sum(rate(aios_reconcile_errors_total[1m]))")).is_some());
        assert!(allowed_empty(&panel(r#"sum(aios_tasks{phase="Failed"})"#)).is_some());
        assert!(allowed_empty(&panel("sum(aios_tasks)")).is_none());
        assert!(allowed_empty(&panel("aios_reconcile_errors_total_not")).is_none());
    }

    #[test]
    fn the_scrape_configuration_has_a_job_per_name_and_labels_per_target() {
        let config: Value = serde_json::from_str(&scrape_config(
            &[
                Target::operator("127.0.0.1:1"),
                Target::agent("127.0.0.1:2", "team-a", "apollo", "backend"),
                Target::operator("127.0.0.1:3"),
            ],
            &[],
        ))
        .unwrap();
        let jobs = config["scrape_configs"].as_array().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0]["job_name"], AGENT_JOB);
        assert_eq!(jobs[0]["static_configs"][0]["labels"]["role"], "backend");
        assert_eq!(jobs[1]["job_name"], OPERATOR_JOB);
        assert_eq!(jobs[1]["honor_labels"], true);
        assert_eq!(jobs[1]["static_configs"].as_array().unwrap().len(), 2);
    }
}
