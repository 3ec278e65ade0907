//! Argo CD's health checks for the AIOS kinds, run as Argo CD runs them: every
//! `health.lua` under `manifests/gitops/argocd/resource_customizations/aios.dev/` by a real
//! Lua 5.1 (Debian's `lua5.1`; Argo CD runs gopher-lua, the same language), with the
//! global `obj` set to each of its `testdata` objects (exported from an end-to-end run by
//! `health_testdata.rs`) and only the libraries Argo CD opens; the status and message it
//! returns must be what `health_test.yaml` says. The `argocd-cm` patch users install must
//! be the one generated from the scripts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use aios_e2e::argocd::{self, KINDS};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The interpreter; `e2e/controlplane/install-services.sh` installs it.
const LUA: &str = "lua5.1";

/// What Argo CD accepts from a health script; anything else reads as Unknown.
const STATUSES: [&str; 6] = [
    "Healthy",
    "Progressing",
    "Degraded",
    "Suspended",
    "Missing",
    "Unknown",
];

/// `health_test.yaml`, in Argo CD's format.
#[derive(Debug, Deserialize)]
struct HealthTests {
    tests: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    health_status: Health,
    input_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Health {
    status: String,
    #[serde(default)]
    message: String,
}

/// Panics, saying how to install it, when `lua5.1` cannot be run.
fn require_lua() {
    let found = Command::new(LUA)
        .arg("-v")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "`{LUA}` is not installed: the Argo CD health checks run on a real Lua 5.1. \
         Install it with e2e/controlplane/install-services.sh (as root; Debian's `lua5.1` package)"
    );
}

/// Runs `script` with `obj` as Argo CD does: a global `obj`, the base, table and (a few
/// functions of the) os libraries and nothing else — no string, math or io library, and no
/// string methods — and the chunk's return value as the health.
fn run_health(script: &Path, obj: &Value) -> Result<Health, String> {
    let chunk = format!(
        r#"local script = assert(loadfile({path}))
local sandbox = {{
  obj = {obj},
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  pcall = pcall, rawequal = rawequal, rawget = rawget, rawset = rawset, select = select,
  getmetatable = getmetatable, setmetatable = setmetatable, tonumber = tonumber,
  tostring = tostring, type = type, unpack = unpack, xpcall = xpcall,
  table = table,
  os = {{ clock = os.clock, date = os.date, difftime = os.difftime, time = os.time }},
}}
sandbox._G = sandbox
setfenv(script, sandbox)
local strings = getmetatable("")
local methods = strings.__index
strings.__index = nil
local ok, hs = pcall(script)
strings.__index = methods
if not ok then
  io.stderr:write("health.lua failed: ", tostring(hs), "\n")
  os.exit(2)
end
if type(hs) ~= "table" then
  io.stderr:write("health.lua returned a ", type(hs), ", not a table\n")
  os.exit(3)
end
if hs.message ~= nil and type(hs.message) ~= "string" then
  io.stderr:write("health.lua returned a message that is a ", type(hs.message), "\n")
  os.exit(4)
end
io.write(tostring(hs.status), "\n", hs.message or "")
"#,
        path = argocd::lua_literal(&Value::String(script.display().to_string())),
        obj = argocd::lua_literal(obj),
    );
    let out = run_lua(&chunk)?;
    let (status, message) = out.split_once('\n').unwrap_or((out.as_str(), ""));
    Ok(Health {
        status: status.to_owned(),
        message: message.to_owned(),
    })
}

/// Runs `chunk` with `lua5.1`, returning its standard output.
fn run_lua(chunk: &str) -> Result<String, String> {
    let mut child = Command::new(LUA)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {LUA}: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(chunk.as_bytes())
        .map_err(|e| format!("writing to {LUA}: {e}"))?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    String::from_utf8(out.stdout).map_err(|e| format!("{LUA} wrote non-UTF-8: {e}"))
}

fn health_tests(kind: &str) -> HealthTests {
    let path = argocd::kind_dir(&aios_e2e::repo_root(), kind).join("health_test.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn testdata(kind: &str, input_path: &str) -> Value {
    let path = argocd::kind_dir(&aios_e2e::repo_root(), kind).join(input_path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_health_check_returns_what_its_health_test_expects() {
    require_lua();
    let root = aios_e2e::repo_root();
    let mut failures = String::new();
    let mut cases = 0;
    for kind in KINDS {
        let script = argocd::kind_dir(&root, kind).join("health.lua");
        for case in health_tests(kind).tests {
            cases += 1;
            let object = testdata(kind, &case.input_path);
            match run_health(&script, &object) {
                Ok(got) if got == case.health_status => {}
                Ok(got) => {
                    let _ = writeln!(
                        failures,
                        "{kind} {}:\n  expected {} {:?}\n  got      {} {:?}",
                        case.input_path,
                        case.health_status.status,
                        case.health_status.message,
                        got.status,
                        got.message
                    );
                }
                Err(err) => {
                    let _ = writeln!(failures, "{kind} {}: {err}", case.input_path);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures}");
    assert!(cases > 0, "no health_test.yaml case ran");
}

#[test]
fn every_kind_is_tested_healthy_progressing_and_degraded_on_exported_objects() {
    let root = aios_e2e::repo_root();
    for kind in KINDS {
        let tests = health_tests(kind).tests;
        let statuses: BTreeSet<&str> = tests
            .iter()
            .map(|case| case.health_status.status.as_str())
            .collect();
        let mut wanted = vec!["Healthy", "Progressing", "Degraded"];
        if kind == "Project" {
            wanted.push("Suspended");
        }
        for status in wanted {
            assert!(
                statuses.contains(status),
                "{kind}'s health_test.yaml has no {status} case: {statuses:?}"
            );
        }
        for status in &statuses {
            assert!(
                STATUSES.contains(status),
                "{kind}: {status} is not an Argo CD health status"
            );
        }
        // Every testdata object is tested, and every one was exported from a run (the
        // exporter's header), not written by hand.
        let used: BTreeSet<String> = tests.iter().map(|c| c.input_path.clone()).collect();
        let dir = argocd::kind_dir(&root, kind).join("testdata");
        let mut files = BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with(aios_e2e::argocd::EXPORT_HEADER),
                "{}: not exported by e2e/tests/health_testdata.rs",
                path.display()
            );
            let object: Value = serde_yaml_ng::from_str(&text).unwrap();
            assert_eq!(
                object["kind"].as_str(),
                Some(kind),
                "{} holds another kind",
                path.display()
            );
            files.insert(format!("testdata/{name}"));
        }
        assert_eq!(
            used, files,
            "{kind}: health_test.yaml's inputPaths and the testdata files differ"
        );
    }
}

#[test]
fn the_argocd_cm_patch_is_the_one_generated_from_the_health_checks() {
    let root = aios_e2e::repo_root();
    let generated = argocd::argocd_cm(&root).unwrap();
    let path = root.join(argocd::ARGOCD_CM_FILE);
    if std::env::var_os("AIOS_WRITE_ARGOCD_CM").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not the one generated from the health.lua files; regenerate it with\n  \
         AIOS_WRITE_ARGOCD_CM=1 cargo test -p aios-e2e --test argocd_health",
        path.display()
    );
    // What Argo CD reads from it: each kind's script, byte for byte, under its key.
    let config_map: Value = serde_yaml_ng::from_str(&committed).unwrap();
    assert_eq!(config_map["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(config_map["metadata"]["name"].as_str(), Some("argocd-cm"));
    let data = config_map["data"].as_mapping().unwrap();
    assert_eq!(data.len(), KINDS.len(), "{data:?}");
    for kind in KINDS {
        let script =
            std::fs::read_to_string(argocd::kind_dir(&root, kind).join("health.lua")).unwrap();
        assert_eq!(
            data.get(argocd::health_key(kind)).and_then(Value::as_str),
            Some(script.as_str()),
            "{kind}'s script in the argocd-cm patch"
        );
    }
}

#[test]
fn lua_literals_carry_every_value_exactly() {
    require_lua();
    let text = "name: \"quote \\\" backslash \\\\ tab \\t\"\nlines: |\n  first\n  second — ünïcode ✓\nn: 42\nbig: 9007199254740993\nratio: 0.85\nflag: false\nempty: {}\nlist: [a, b]\n";
    let value: Value = serde_yaml_ng::from_str(text).unwrap();
    let chunk = format!(
        "local v = {}\nio.write(v.name, '|', v.lines, '|', tostring(v.n), '|', tostring(v.ratio), '|', tostring(v.flag), '|', tostring(next(v.empty)), '|', v.list[1], v.list[2], '|', tostring(#v.list))",
        argocd::lua_literal(&value)
    );
    let out = run_lua(&chunk).unwrap();
    assert_eq!(
        out,
        "quote \" backslash \\ tab \t|first\nsecond — ünïcode ✓\n|42|0.85|false|nil|ab|2"
    );
}
