//! The environment tooling: servers on loopback, stop ends only what it started, and
//! failures are clear errors, never hangs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output},
};

use aios_e2e::{EnvOptions, Environment, process};

fn aios_env(args: &[&str], bin_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aios-env"))
        .args(args)
        .env("AIOS_CONTROLPLANE_BIN", bin_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// `aios-env start` of the control plane alone (no brokers), its state in `state`, with
/// `extra` arguments.
fn start_control_plane(bin_dir: &Path, state: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "start",
        "--no-rabbitmq",
        "--no-redis",
        "--dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    aios_env(&args, bin_dir)
}

/// A directory of fake control-plane binaries, each running `script`.
fn fake_binaries(dir: &Path, script: &str) {
    fs::create_dir_all(dir).unwrap();
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kubectl",
    ] {
        let path = dir.join(name);
        fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn rabbitmq_and_redis_answer_on_loopback() {
    let env = aios_e2e::shared();
    let port = |url: &str| -> u16 {
        url.rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let amqp = env.amqp_url.as_deref().unwrap();
    let redis = env.redis_url.as_deref().unwrap();
    assert!(amqp.starts_with("amqp://guest:guest@127.0.0.1:"), "{amqp}");
    assert!(redis.starts_with("redis://127.0.0.1:"), "{redis}");
    assert!(
        process::amqp_handshake(port(amqp)),
        "RabbitMQ does not answer at {amqp}"
    );
    assert!(
        process::redis_ping(port(redis)),
        "Redis does not answer at {redis}"
    );
    assert!(
        env.apiserver_url.starts_with("https://127.0.0.1:"),
        "{}",
        env.apiserver_url
    );
}

#[test]
fn stop_ends_only_its_own_processes_and_removes_its_state() {
    let shared = aios_e2e::shared();
    let dir = std::env::temp_dir().join(format!("aios-env-stop-test-{}", std::process::id()));
    let second = Environment::start(&EnvOptions {
        dir: Some(dir.clone()),
        rabbitmq: false,
        controller_manager: false,
        ..EnvOptions::default()
    })
    .unwrap();
    assert!(dir.join("state.json").exists());
    // The admin kubeconfig and the servers' keys are the owner's alone.
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state directory's mode is {mode:o}");
    let loaded = Environment::load(&dir).unwrap();
    assert_eq!(loaded.processes, second.processes);
    let names: Vec<_> = second.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["etcd", "kube-apiserver", "redis"]);
    assert!(
        second
            .processes
            .iter()
            .all(process::ServerProcess::is_running)
    );
    second.kubectl(&["get", "--raw", "/readyz"]).unwrap();

    loaded.stop().unwrap();
    for p in &second.processes {
        assert!(
            !p.is_running(),
            "{} (pid {}) still runs after stop",
            p.name,
            p.pid
        );
    }
    assert!(!dir.exists(), "stop left {} behind", dir.display());
    // The other environment is untouched.
    assert!(
        shared
            .processes
            .iter()
            .all(process::ServerProcess::is_running)
    );
    shared.kubectl(&["get", "--raw", "/readyz"]).unwrap();
}

#[test]
fn an_existing_state_directory_is_refused() {
    let dir = tempfile_dir("exists");
    let err = Environment::start(&EnvOptions {
        dir: Some(dir.clone()),
        ..EnvOptions::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_binary_is_a_clear_error() {
    let scratch = tempfile_dir("missing");
    let state = scratch.join("state");
    let out = start_control_plane(Path::new("/nonexistent/aios-bin"), &state, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("starting etcd (/nonexistent/aios-bin/etcd) failed"),
        "{stderr}"
    );
    fs::remove_dir_all(scratch).unwrap();
}

#[test]
fn a_server_that_exits_at_once_is_reported_with_its_log() {
    let bin = tempfile_dir("exits");
    fake_binaries(
        &bin,
        "echo 'listen tcp 127.0.0.1:2379: bind: address already in use' >&2; exit 1",
    );
    let state = bin.join("state");
    let out = start_control_plane(&bin, &state, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("etcd exited before it became ready; its log is"),
        "{stderr}"
    );
    assert!(
        stderr.contains("address already in use"),
        "the log's tail is shown: {stderr}"
    );
    // The log named stays to be read; the rest of the start was undone.
    let log = state.join("logs").join("etcd.log");
    assert!(
        stderr.contains(log.to_str().unwrap()),
        "the log named is the one in the state directory: {stderr}"
    );
    assert!(
        fs::read_to_string(&log)
            .unwrap()
            .contains("address already in use")
    );
    fs::remove_dir_all(bin).unwrap();
}

#[test]
fn a_server_that_never_becomes_ready_times_out_and_is_stopped() {
    let bin = tempfile_dir("hangs");
    fake_binaries(&bin, "echo 'waiting for peers'; sleep 300");
    let state = bin.join("state");
    let out = start_control_plane(&bin, &state, &["--ready-timeout", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("etcd did not become ready within 2s"),
        "{stderr}"
    );
    assert!(stderr.contains("waiting for peers"), "{stderr}");
    // The hung server was stopped, not left behind.
    let leftover = Command::new("pgrep")
        .args(["-f", &format!("{}/etcd", bin.display())])
        .output()
        .unwrap();
    assert!(leftover.stdout.is_empty(), "the hung etcd was left running");
    fs::remove_dir_all(bin).unwrap();
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("aios-e2e-{name}-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn building_without_a_go_toolchain_says_so() {
    let cache = tempfile_dir("no-go");
    // A PATH with the shell tools the script uses, and no go.
    let tools = cache.join("bin");
    fs::create_dir_all(&tools).unwrap();
    for tool in [
        "dirname",
        "awk",
        "cat",
        "sha256sum",
        "cut",
        "head",
        "mkdir",
        "date",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        let path = String::from_utf8(found.stdout).unwrap();
        std::os::unix::fs::symlink(path.trim(), tools.join(tool)).unwrap();
    }
    let script = aios_e2e::binaries::controlplane_dir().join("build.sh");
    let out = Command::new("/bin/bash")
        .arg(&script)
        .env("PATH", &tools)
        .env("AIOS_CACHE_DIR", &cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no Go toolchain on PATH; install Go 1.26 or newer"),
        "{stderr}"
    );
    fs::remove_dir_all(cache).unwrap();
}

/// A process that outlived its stop and still writes into the environment's directory
/// (its own session, so no process-group signal reached it) does not keep the
/// directory from going: the removal ends it and tries again.
#[test]
fn a_straggler_still_writing_does_not_keep_the_directory() {
    let dir = tempfile_dir("straggler");
    fs::create_dir_all(dir.join("logs")).unwrap();
    let mut writer = Command::new("setsid")
        .args([
            "sh",
            "-c",
            "exec 3>\"$0/logs/own.log\"; i=0; while :; do i=$((i+1)); echo x > \"$0/logs/$i\"; done",
        ])
        .arg(&dir)
        .spawn()
        .unwrap();
    while fs::read_dir(dir.join("logs")).unwrap().count() < 100 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    process::remove_dir_settled(&dir).unwrap();
    assert!(!dir.exists(), "{} is gone", dir.display());
    let status = writer.wait().unwrap();
    assert!(!status.success(), "the writer was ended: {status}");
}
