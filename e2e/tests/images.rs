//! The container images, built offline by `images/build.py` from their Dockerfiles:
//! each image's config says what the Dockerfile declares (user 65532, entrypoint,
//! environment, exposed port, OCI labels), and the programs in them run as 65532 on a
//! read-only root file system under runc, as the operator's pod spec runs them — the
//! agent's `git` included, writing only to the work-directory volume.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{
    collections::BTreeMap,
    os::unix::fs::chown,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::{Value, json};

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The OCI archives of the three images, built (or found cached) once per test binary.
fn images() -> &'static BTreeMap<String, PathBuf> {
    static IMAGES: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let root = aios_e2e::repo_root();
        let tools = Command::new(root.join("images/install-tools.sh"))
            .status()
            .unwrap();
        assert!(tools.success(), "installing the image tools failed");
        let out = Command::new(root.join("images/build.py"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "images/build.py failed (its output above says why)"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| {
                let path = PathBuf::from(line.trim());
                let name = path.file_name().unwrap().to_string_lossy();
                let image = name
                    .split(&format!("-{VERSION}-"))
                    .next()
                    .unwrap()
                    .to_owned();
                (image, path)
            })
            .collect()
    })
}

/// An image's archive unpacked into an OCI layout directory.
fn layout(image: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let status = Command::new("tar")
        .args(["-xf"])
        .arg(&images()[image])
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(status.success());
    layout
}

fn blob(layout: &Path, digest: &str) -> Value {
    let (_, hex) = digest.split_once(':').unwrap();
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// The image's config (`config` of the OCI image configuration) and its tag.
fn config(image: &str) -> (Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let layout = layout(image, dir.path());
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    let tag = entry["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap()
        .to_owned();
    let manifest = blob(&layout, entry["digest"].as_str().unwrap());
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    (config["config"].clone(), tag)
}

fn env_of(config: &Value) -> BTreeMap<String, String> {
    config["Env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| v.as_str()?.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn each_image_declares_the_user_entrypoint_environment_port_and_labels_of_its_dockerfile() {
    for (image, port) in [
        ("aios-operator", Some("8080/tcp")),
        ("aios-agent", Some("8080/tcp")),
        ("aios", None),
    ] {
        let (config, tag) = config(image);
        assert_eq!(
            tag, VERSION,
            "{image} is tagged with the version, never latest"
        );
        assert_eq!(config["User"], "65532:65532", "{image} runs as nonroot");
        assert_eq!(
            config["Entrypoint"],
            json!([format!("/usr/local/bin/{image}")]),
            "{image}"
        );
        let ports: Vec<String> = config["ExposedPorts"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        let expected: Vec<String> = port.into_iter().map(str::to_owned).collect();
        assert_eq!(ports, expected, "{image}");
        let labels = &config["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.version"], VERSION,
            "{image}"
        );
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/aios-dev/aios"
        );
        assert_eq!(labels["org.opencontainers.image.title"], image);
    }
    let (agent, _) = config("aios-agent");
    let env = env_of(&agent);
    assert_eq!(
        env["HOME"], "/var/lib/aios",
        "HOME is the writable work volume"
    );
    assert_eq!(env["AIOS_WORK_DIR"], "/var/lib/aios");
    let (operator, _) = config("aios-operator");
    assert_eq!(env_of(&operator)["AIOS_HTTP_ADDR"], "0.0.0.0:8080");
}

/// Runs `args` in `image` under runc as the image's user (65532), with a read-only root
/// file system, `/tmp` as a tmpfs and `work` mounted at `/var/lib/aios` (the volumes the
/// operator's pod spec gives agents). Returns (exit code, stdout + stderr).
fn run_in(image: &str, args: &[&str], work: &Path) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let layout = layout(image, dir.path());
    let bundle = dir.path().join("bundle");
    let unpack = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{VERSION}", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        unpack.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        spec["process"]["user"]["uid"], 65532,
        "the image's own user"
    );
    spec["process"]["args"] = json!(args);
    spec["process"]["terminal"] = json!(false);
    spec["root"]["readonly"] = json!(true);
    let mounts = spec["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}));
    mounts.push(json!({"destination": "/var/lib/aios", "type": "bind", "source": work, "options": ["rbind", "rw"]}));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let id = format!("aios-image-test-{}-{}", std::process::id(), image);
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("runc")
        .args(["delete", "--force", &id])
        .output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn work_volume() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    chown(work.path(), Some(65532), Some(65532)).unwrap();
    work
}

#[test]
fn the_agent_images_git_runs_as_nonroot_on_a_read_only_root() {
    let work = work_volume();
    let (code, out) = run_in("aios-agent", &["git", "--version"], work.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("git version"), "{out}");

    // git writes only to the work volume, as the agent's delivery does.
    let (code, out) = run_in(
        "aios-agent",
        &["git", "init", "--quiet", "/var/lib/aios/repo"],
        work.path(),
    );
    assert_eq!(code, 0, "{out}");
    let head = work.path().join("repo/.git/HEAD");
    assert!(head.exists(), "git init wrote into the volume");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&head).unwrap());
    assert_eq!(owner, 65532, "as the nonroot user");

    // Anywhere else the root file system refuses the write.
    let (code, out) = run_in(
        "aios-agent",
        &["git", "init", "--quiet", "/usr/local/repo"],
        work.path(),
    );
    assert_ne!(code, 0, "a write outside the volumes must fail: {out}");

    // The agent itself starts (its libraries are all there).
    let (code, out) = run_in("aios-agent", &["aios-agent", "--version"], work.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(VERSION), "{out}");
}

#[test]
fn the_operator_and_cli_images_hold_the_binary_and_no_shell() {
    let work = work_volume();
    for (image, binary) in [
        ("aios-operator", "/usr/local/bin/aios-operator"),
        ("aios", "/usr/local/bin/aios"),
    ] {
        let (code, out) = run_in(image, &[binary, "--version"], work.path());
        assert_eq!(code, 0, "{image}: {out}");
        assert!(out.contains(VERSION), "{image}: {out}");
        let (code, _) = run_in(image, &["/bin/sh", "-c", "true"], work.path());
        assert_ne!(code, 0, "{image} has no shell");
    }
}
