//! A real Kubernetes node on this machine, for the local environment: containerd with
//! its CRI plugin and runc, the CNI bridge and host-local plugins on a bridge of the
//! node's own (`aios0`, 10.88.0.0/16), kube-scheduler, kube-proxy (ClusterIP Services,
//! iptables), CoreDNS (`*.svc` names) and a kubelet registered as `aios-node` with a
//! client certificate from the environment's CA. Images are imported from OCI archives
//! (the offline image build); nothing is pulled.
//!
//! What this machine needs, and the reasons, are in `e2e/node/README.md`. One node runs
//! on a machine at a time: its bridge, its iptables rules and its paths are fixed.
//! [`clean`] removes everything a node leaves — processes, mounts, cgroups, network
//! devices, rules and state — and runs before a start too, so a start after a crash
//! needs no manual cleanup.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::process::{self, ProcessError, ServerProcess, kill_all, processes_mentioning};

/// The node's name.
pub const NODE_NAME: &str = "aios-node";
/// The node's address: the bridge's, where pods reach the node and its services.
pub const NODE_IP: &str = "10.88.0.1";
/// The pods' subnet, on the bridge.
pub const POD_SUBNET: &str = "10.88.0.0/16";
/// The Services' subnet (the API server's `--service-cluster-ip-range`).
pub const SERVICE_SUBNET: &str = "10.96.0.0/16";
/// The node's bridge.
pub const BRIDGE: &str = "aios0";
/// Where the node keeps its state: containerd's images and containers, the kubelet's
/// pods, the CNI's leases.
pub const STATE_DIR: &str = "/var/lib/aios-node";
/// Where the node keeps its sockets and runtime state.
pub const RUN_DIR: &str = "/run/aios-node";
/// The tag on the node's own iptables rules, so they are found and removed.
const RULE_COMMENT: &str = "aios-node";
/// The pod sandbox image the CRI plugin uses; built locally (`e2e/node/build.sh`).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// The iptables arguments that `action` (`-I` or `-D`) the node's rule: pods reach each
/// other and the node, never beyond the machine.
fn forward_rule(action: &str) -> [&str; 13] {
    [
        action,
        "FORWARD",
        "-i",
        BRIDGE,
        "!",
        "-o",
        BRIDGE,
        "-m",
        "comment",
        "--comment",
        RULE_COMMENT,
        "-j",
        "DROP",
    ]
}

/// Why the node could not be started or cleaned.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A node program failed to start or become ready.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A setup command failed.
    #[error("{command} failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// A file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another environment's node is running on this machine.
    #[error("a node is already running here (kubelet pid {0}); stop its environment first")]
    Busy(u32),
    /// The node did not become Ready.
    #[error("the node did not become Ready within {seconds}s; the kubelet's log ({log}):\n{tail}")]
    NotReady {
        /// How long we waited.
        seconds: u64,
        /// The kubelet's log.
        log: String,
        /// Its last lines.
        tail: String,
    },
}

/// What the node needs from the environment.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node programs (`e2e/node/build.sh`).
    pub bin: PathBuf,
    /// The environment's PKI files (CA, kubelet certificates).
    pub pki_dir: PathBuf,
    /// The admin kubeconfig, for the scheduler, kube-proxy and CoreDNS.
    pub admin_kubeconfig: PathBuf,
    /// The API server's URL.
    pub apiserver_url: String,
    /// kubectl, to wait for the node.
    pub kubectl: PathBuf,
    /// Where logs go.
    pub log_dir: PathBuf,
    /// OCI archives to import, with the image name each is imported under.
    pub images: Vec<(PathBuf, String)>,
    /// How long each part may take to become ready.
    pub ready_timeout: Duration,
}

fn run(program: &str, args: &[&str]) -> Result<String, NodeError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NodeError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NodeError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

fn write(path: &Path, contents: &str) -> Result<(), NodeError> {
    if let Some(parent) = path.parent() {
        let _ = fs::create_dir_all(parent);
    }
    fs::write(path, contents).map_err(|source| NodeError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// The containerd configuration: CRI with runc, the local pause image, and
/// `restrict_oom_score_adj` (this VM lacks CAP_SYS_RESOURCE: no process may lower its
/// `oom_score_adj`, and without it every sandbox fails to start).
pub fn containerd_config() -> String {
    format!(
        r#"version = 2
root = "{STATE_DIR}/containerd"
state = "{RUN_DIR}/containerd"
[grpc]
  address = "{RUN_DIR}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{STATE_DIR}/cni"
"#
    )
}

/// The CNI network: the node's bridge with the node as gateway, addresses from
/// host-local, no masquerading, and routes for the pod and Service subnets only (pods
/// have no default route: nothing leaves the machine).
pub fn cni_config() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "aios",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": SERVICE_SUBNET}],
                    "dataDir": format!("{STATE_DIR}/cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
    .to_string()
}

/// The kubelet's configuration. `failCgroupV1: false` (this VM has cgroup v1 only),
/// `oomScoreAdj: 0` (no CAP_SYS_RESOURCE), x509 client authentication against the
/// environment's CA, eviction thresholds a small VM does not trip, and the node's DNS.
pub fn kubelet_config(pki_dir: &Path) -> String {
    let file = |name: &str| pki_dir.join(name).display().to_string();
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": false},
            "x509": {"clientCAFile": file(crate::pki::files::CA_CERT)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": false,
        "oomScoreAdj": 0,
        "containerRuntimeEndpoint": format!("unix://{RUN_DIR}/containerd.sock"),
        "clusterDNS": [NODE_IP],
        "clusterDomain": "cluster.local",
        "resolvConf": format!("{STATE_DIR}/resolv.conf"),
        "failSwapOn": false,
        "tlsCertFile": file(crate::pki::files::KUBELET_SERVING_CERT),
        "tlsPrivateKeyFile": file(crate::pki::files::KUBELET_SERVING_KEY),
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
    })
    .to_string()
}

/// CoreDNS: the cluster's names from the API server on the node's address; every other
/// name is NXDOMAIN (nothing is forwarded off the machine).
pub fn corefile(kubeconfig: &Path, health_port: u16) -> String {
    format!(
        "cluster.local:53 in-addr.arpa:53 {{\n  bind {NODE_IP}\n  kubernetes cluster.local in-addr.arpa {{\n    kubeconfig {}\n    pods insecure\n  }}\n  health 127.0.0.1:{health_port}\n  errors\n}}\n.:53 {{\n  bind {NODE_IP}\n  template ANY ANY {{\n    rcode NXDOMAIN\n  }}\n  errors\n}}\n",
        kubeconfig.display()
    )
}

/// A kubeconfig for the kubelet: its own client certificate, as `system:node:aios-node`.
fn kubelet_kubeconfig(config: &NodeConfig) -> String {
    let file = |name: &str| config.pki_dir.join(name).display().to_string();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": config.apiserver_url,
            "certificate-authority": file(crate::pki::files::CA_CERT),
        }}],
        "users": [{"name": NODE_NAME, "user": {
            "client-certificate": file(crate::pki::files::KUBELET_CLIENT_CERT),
            "client-key": file(crate::pki::files::KUBELET_CLIENT_KEY),
        }}],
        "contexts": [{"name": "node", "context": {"cluster": "local", "user": NODE_NAME}}],
        "current-context": "node",
    })
    .to_string()
}

/// The running kubelet of an earlier node, if any.
fn running_kubelet() -> Option<u32> {
    processes_mentioning(&format!("{STATE_DIR}/kubelet"))
        .into_iter()
        .find(|(_, cmdline)| cmdline.contains("kubelet"))
        .map(|(pid, _)| pid)
}

/// Removes everything a node leaves behind, whether it stopped or crashed: the node's
/// processes and the containers' (by the kubelet's cgroups), the containers' mounts
/// and network namespaces, kube-proxy's and the node's iptables rules, the bridge, and
/// the state directories. Each step is best effort; what could not be removed is
/// returned, for a message.
pub fn clean(kube_proxy: Option<&Path>) -> Vec<String> {
    let mut left = Vec::new();
    // The node's own programs and the container shims (they outlive containerd).
    kill_all(
        processes_mentioning(STATE_DIR)
            .into_iter()
            .chain(processes_mentioning(RUN_DIR))
            .map(|(pid, _)| pid),
    );
    // The containers' processes, by the kubelet's cgroups, deepest first.
    let mut cgroups = Vec::new();
    for controller in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        collect_dirs(&controller.path().join("kubepods"), &mut cgroups);
    }
    for dir in &cgroups {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            kill_all(procs.lines().filter_map(|l| l.trim().parse().ok()));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    cgroups.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in &cgroups {
        let _ = fs::remove_dir(dir);
    }
    // Mounts under the node's directories and the pods' network namespaces, deepest first.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| {
            p.starts_with(STATE_DIR) || p.starts_with(RUN_DIR) || p.starts_with("/run/netns/cni-")
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for point in points {
        if run("umount", &["-l", point]).is_err() {
            left.push(format!("mount {point}"));
        }
    }
    for netns in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        if netns.file_name().to_string_lossy().starts_with("cni-") {
            let _ = fs::remove_file(netns.path());
        }
    }
    // kube-proxy's rules, then the node's own.
    if let Some(kube_proxy) = kube_proxy.filter(|p| p.exists()) {
        let _ = Command::new(kube_proxy)
            .arg("--cleanup")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    while run("iptables", &forward_rule("-D")).is_ok() {}
    if Path::new(&format!("/sys/class/net/{BRIDGE}")).exists()
        && run("ip", &["link", "delete", BRIDGE]).is_err()
    {
        left.push(format!("network device {BRIDGE}"));
    }
    for dir in [STATE_DIR, RUN_DIR] {
        if process::remove_dir_settled(Path::new(dir)).is_err() {
            left.push(dir.to_owned());
        }
    }
    left
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&entry.path(), out);
        }
    }
}

/// Starts the node; returns its processes in start order (the environment stops them in
/// reverse, then calls [`clean`]). On failure, what was started is stopped and cleaned.
pub fn start(config: &NodeConfig) -> Result<Vec<ServerProcess>, NodeError> {
    if let Some(pid) = running_kubelet() {
        return Err(NodeError::Busy(pid));
    }
    // Leftovers of a node that crashed.
    clean(Some(&config.bin.join("kube-proxy")));
    let mut started = Vec::new();
    match start_parts(config, &mut started) {
        Ok(()) => Ok(started),
        Err(err) => {
            for p in started.iter().rev() {
                p.stop(Duration::from_secs(5));
            }
            clean(Some(&config.bin.join("kube-proxy")));
            Err(err)
        }
    }
}

fn start_parts(config: &NodeConfig, started: &mut Vec<ServerProcess>) -> Result<(), NodeError> {
    let state = Path::new(STATE_DIR);
    for dir in [STATE_DIR, RUN_DIR] {
        fs::create_dir_all(dir).map_err(|source| NodeError::Write {
            path: dir.to_owned(),
            source,
        })?;
    }
    // The bridge exists before anything binds to the node's address.
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/16"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    // Pods reach each other and the node, never beyond the machine.
    run("iptables", &forward_rule("-I"))?;
    write(&state.join("cni/10-aios.conflist"), &cni_config())?;
    write(&state.join("containerd.toml"), &containerd_config())?;
    write(
        &state.join("resolv.conf"),
        &format!("nameserver {NODE_IP}\n"),
    )?;
    write(
        &state.join("kubelet.json"),
        &kubelet_config(&config.pki_dir),
    )?;
    write(
        &state.join("kubelet.kubeconfig"),
        &kubelet_kubeconfig(config),
    )?;
    start_containerd(config, started)?;
    let kubelet = process::spawn(
        "kubelet",
        &config.bin.join("kubelet"),
        &[
            format!("--config={}", state.join("kubelet.json").display()),
            format!(
                "--kubeconfig={}",
                state.join("kubelet.kubeconfig").display()
            ),
            format!("--hostname-override={NODE_NAME}"),
            format!("--node-ip={NODE_IP}"),
            format!("--root-dir={STATE_DIR}/kubelet"),
        ],
        &[],
        &config.log_dir.join("kubelet.log"),
    )?;
    started.push(kubelet.clone());
    wait_node_ready(config, &kubelet)?;
    // kube-proxy is healthy only once its Node exists.
    start_services(config, started)
}

/// containerd, with the pause image and the AIOS images imported.
fn start_containerd(
    config: &NodeConfig,
    started: &mut Vec<ServerProcess>,
) -> Result<(), NodeError> {
    let state = Path::new(STATE_DIR);
    let log = |name: &str| config.log_dir.join(format!("{name}.log"));
    let socket = format!("{RUN_DIR}/containerd.sock");
    let containerd = process::spawn(
        "containerd",
        Path::new("/usr/bin/containerd"),
        &[
            "--config".to_owned(),
            state.join("containerd.toml").display().to_string(),
        ],
        &[],
        &log("containerd"),
    )?;
    started.push(containerd.clone());
    containerd.wait_ready(config.ready_timeout, || {
        run("ctr", &["--address", &socket, "version"]).is_ok()
    })?;
    let pause = config.bin.join("pause.oci.tar");
    import_image(&socket, &pause, PAUSE_IMAGE)?;
    for (archive, name) in &config.images {
        import_image(&socket, archive, name)?;
    }
    Ok(())
}

/// What makes the node a cluster's: the scheduler, kube-proxy (ClusterIP Services) and
/// CoreDNS (`*.svc` names).
fn start_services(config: &NodeConfig, started: &mut Vec<ServerProcess>) -> Result<(), NodeError> {
    let state = Path::new(STATE_DIR);
    let log = |name: &str| config.log_dir.join(format!("{name}.log"));
    let admin = config.admin_kubeconfig.display().to_string();
    let scheduler_port = process::free_port()?;
    let scheduler = process::spawn(
        "kube-scheduler",
        &config.bin.join("kube-scheduler"),
        &[
            format!("--kubeconfig={admin}"),
            format!("--authentication-kubeconfig={admin}"),
            format!("--authorization-kubeconfig={admin}"),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={scheduler_port}"),
        ],
        &[],
        &log("kube-scheduler"),
    )?;
    started.push(scheduler);

    let proxy_health = process::free_port()?;
    let proxy_metrics = process::free_port()?;
    let proxy = process::spawn(
        "kube-proxy",
        &config.bin.join("kube-proxy"),
        &[
            format!("--kubeconfig={admin}"),
            format!("--hostname-override={NODE_NAME}"),
            "--proxy-mode=iptables".to_owned(),
            // NodePorts on the node's address only, never on the host's loopback.
            format!("--nodeport-addresses={NODE_IP}/32"),
            "--iptables-localhost-nodeports=false".to_owned(),
            format!("--cluster-cidr={POD_SUBNET}"),
            // No conntrack sysctl writes: the VM's values stand.
            "--conntrack-max-per-core=0".to_owned(),
            format!("--healthz-bind-address=127.0.0.1:{proxy_health}"),
            format!("--metrics-bind-address=127.0.0.1:{proxy_metrics}"),
        ],
        &[],
        &log("kube-proxy"),
    )?;
    started.push(proxy.clone());
    proxy.wait_ready(config.ready_timeout, || {
        process::http_get(proxy_health, "/healthz").is_some()
    })?;

    let dns_health = process::free_port()?;
    write(
        &state.join("Corefile"),
        &corefile(&config.admin_kubeconfig, dns_health),
    )?;
    let dns = process::spawn(
        "coredns",
        &config.bin.join("coredns"),
        &[
            "-conf".to_owned(),
            state.join("Corefile").display().to_string(),
        ],
        &[],
        &log("coredns"),
    )?;
    started.push(dns.clone());
    dns.wait_ready(config.ready_timeout, || {
        process::http_get(dns_health, "/health").is_some()
    })?;
    Ok(())
}

/// Imports an OCI archive into containerd's `k8s.io` namespace as `name`.
fn import_image(socket: &str, archive: &Path, name: &str) -> Result<(), NodeError> {
    let (base, _) = name.rsplit_once(':').unwrap_or((name, ""));
    run(
        "ctr",
        &[
            "--address",
            socket,
            "--namespace",
            "k8s.io",
            "images",
            "import",
            "--base-name",
            base,
            &archive.display().to_string(),
        ],
    )?;
    Ok(())
}

fn wait_node_ready(config: &NodeConfig, kubelet: &ServerProcess) -> Result<(), NodeError> {
    let kubeconfig = config.admin_kubeconfig.display().to_string();
    let kubectl = config.kubectl.display().to_string();
    let start = Instant::now();
    loop {
        let ready = run(
            &kubectl,
            &[
                "--kubeconfig",
                &kubeconfig,
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        );
        if ready.is_ok_and(|s| s.trim() == "True") {
            return Ok(());
        }
        if !kubelet.is_running() || start.elapsed() > config.ready_timeout {
            return Err(NodeError::NotReady {
                seconds: config.ready_timeout.as_secs(),
                log: kubelet.log.display().to_string(),
                tail: kubelet.log_tail(),
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configs_carry_what_this_machine_needs() {
        let containerd = containerd_config();
        assert!(containerd.contains("restrict_oom_score_adj = true"));
        assert!(containerd.contains(PAUSE_IMAGE));
        let kubelet: serde_json::Value =
            serde_json::from_str(&kubelet_config(Path::new("/pki"))).unwrap();
        assert_eq!(kubelet["failCgroupV1"], false);
        assert_eq!(kubelet["oomScoreAdj"], 0);
        assert_eq!(kubelet["clusterDNS"][0], NODE_IP);
        let cni: serde_json::Value = serde_json::from_str(&cni_config()).unwrap();
        let bridge = &cni["plugins"][0];
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(
            bridge["ipam"]["routes"],
            serde_json::json!([{"dst": SERVICE_SUBNET}]),
            "no default route: pods reach nothing beyond the machine"
        );
        let dns = corefile(Path::new("/kc"), 1234);
        assert!(
            !dns.contains("forward"),
            "no name is forwarded off the machine"
        );
    }
}
