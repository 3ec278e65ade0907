//! A local environment: etcd, kube-apiserver, kube-controller-manager, RabbitMQ and Redis
//! as plain processes on loopback, with fresh state in one directory.
//!
//! Start one with [`Environment::start`] (or `aios-env start` from a shell); its
//! description is written to `<dir>/state.json` so another process can [`Environment::load`]
//! it and share it. [`Environment::stop`] ends only the processes it started, by pid,
//! and removes the directory.

use std::{
    env, fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde::{Deserialize, Serialize};

use crate::{
    binaries::{self, BinariesError},
    pki::{self, Pki, PkiError},
    process::{self, ProcessError, ServerProcess},
};

/// Environment variable naming the state directory of a running environment that tests
/// should share instead of starting their own.
pub const ENV_STATE_DIR: &str = "AIOS_E2E_ENV";
/// The file, inside the state directory, that describes the environment.
pub const STATE_FILE: &str = "state.json";

/// How long a restarted server may take to be ready again.
const RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // each says whether one part starts
pub struct EnvOptions {
    /// The state directory; a new temporary one when unset. It must not exist yet.
    pub dir: Option<PathBuf>,
    /// Start RabbitMQ.
    pub rabbitmq: bool,
    /// Start Redis.
    pub redis: bool,
    /// Start kube-controller-manager (garbage collection, Deployments to ReplicaSets).
    pub controller_manager: bool,
    /// How long each server may take to become ready.
    pub ready_timeout: Duration,
    /// Stop everything when this process exits (a watchdog polls for it).
    pub owner_pid: Option<u32>,
    /// Start a node (containerd, kubelet, kube-scheduler, kube-proxy, CoreDNS) that runs
    /// pods from the locally built images; needs root.
    pub node: bool,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            dir: None,
            rabbitmq: true,
            redis: true,
            controller_manager: true,
            ready_timeout: Duration::from_secs(90),
            owner_pid: None,
            node: false,
        }
    }
}

/// Why an environment could not be started, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The control-plane binaries could not be built or found.
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    /// A server failed to start or become ready.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// The keys and certificates could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The local node could not be started.
    #[error("starting the node")]
    Node(#[from] crate::node::NodeError),
    /// The state directory already exists: another environment may live there.
    #[error("state directory {0} already exists; stop that environment or pick another directory")]
    DirExists(String),
    /// A file of the environment could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `state.json` is not an environment description.
    #[error("{path} does not describe an environment")]
    State {
        /// The file.
        path: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A command (kubectl, rabbitmqctl) failed.
    #[error("{command} failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> EnvError + 'a {
    move |source| EnvError::Io {
        action,
        path: path.display().to_string(),
        source,
    }
}

/// The RabbitMQ node of an environment, for its command-line tools.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RabbitNode {
    /// The Erlang node name.
    pub node: String,
    /// The node's HOME (its Erlang cookie lives there).
    pub home: PathBuf,
    /// The private epmd's port.
    pub epmd_port: u16,
    /// The AMQP port.
    pub amqp_port: u16,
    /// The Erlang distribution port.
    #[serde(default)]
    pub dist_port: u16,
    /// The AMQPS (TLS) port, when the node has a TLS listener.
    #[serde(default)]
    pub amqps_port: Option<u16>,
    /// The management API's HTTP port (loopback), when the plugin is enabled.
    #[serde(default)]
    pub management_port: Option<u16>,
}

/// A server's TLS listener: its port, and the certificate and key it presents (the
/// environment's serving certificate, for `127.0.0.1` and `localhost`, signed by the
/// environment's CA).
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// The port.
    pub port: u16,
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// Its key, PEM.
    pub key: PathBuf,
    /// The CA that signed it.
    pub ca: PathBuf,
}

/// A running environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Environment {
    /// The state directory: data, certificates, logs, the kubeconfig.
    pub dir: PathBuf,
    /// The admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The API server's URL.
    pub apiserver_url: String,
    /// `kubectl`, built with the control plane.
    pub kubectl: PathBuf,
    /// RabbitMQ's AMQP URL, when it was started.
    pub amqp_url: Option<String>,
    /// Redis's URL, when it was started.
    pub redis_url: Option<String>,
    /// Redis's TLS URL (`rediss://`), when it was started.
    #[serde(default)]
    pub rediss_url: Option<String>,
    /// The CA certificate (PEM file) that signed the TLS listeners' certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How to reach the RabbitMQ node with its CLI, when it was started.
    #[serde(default)]
    pub rabbitmq: Option<RabbitNode>,
    /// The processes started, in start order.
    pub processes: Vec<ServerProcess>,
    /// The node's programs, when a node was started (its clean-up needs kube-proxy).
    #[serde(default)]
    pub node_bin: Option<PathBuf>,
}

impl Environment {
    /// Starts an environment. On failure, whatever was started is stopped again; the
    /// directory stays, for its logs.
    ///
    /// The directory is the owner's alone (mode 0700): it holds the admin kubeconfig and
    /// the servers' keys.
    pub fn start(options: &EnvOptions) -> Result<Self, EnvError> {
        let dir = match &options.dir {
            Some(dir) if dir.exists() => {
                return Err(EnvError::DirExists(dir.display().to_string()));
            }
            Some(dir) => dir.clone(),
            None => unique_temp_dir(),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("creating", &dir))?;
        fs::create_dir_all(dir.join("logs")).map_err(io_err("creating", &dir))?;
        let bin = binaries::controlplane_bin_dir()?;
        let mut env = Self {
            kubeconfig: dir.join("kubeconfig"),
            apiserver_url: String::new(),
            kubectl: bin.join("kubectl"),
            amqp_url: None,
            redis_url: None,
            rediss_url: None,
            ca_file: None,
            rabbitmq: None,
            processes: Vec::new(),
            node_bin: None,
            dir,
        };
        match env.start_servers(&bin, options) {
            Ok(()) => Ok(env),
            Err(err) => {
                env.stop_processes();
                Err(err)
            }
        }
    }

    fn start_servers(&mut self, bin: &Path, options: &EnvOptions) -> Result<(), EnvError> {
        // Order matters: etcd before the API server that stores in it; the controller
        // manager after the API server it watches. The brokers are independent and go
        // last so a control-plane problem is reported first.
        let pki = Pki::generate()?;
        let pki_dir = self.dir.join("pki");
        fs::create_dir_all(&pki_dir).map_err(io_err("creating", &pki_dir))?;
        pki.write_server_files(&pki_dir)?;
        self.ca_file = Some(pki_dir.join(pki::files::CA_CERT));

        let etcd_port = self.start_etcd(bin, options)?;
        self.start_apiserver(bin, &pki, &pki_dir, etcd_port, options)?;
        if options.controller_manager {
            self.start_controller_manager(bin, &pki_dir)?;
        }
        if options.node {
            self.start_node(bin, &pki_dir, options)?;
        }
        if options.redis {
            self.start_redis(options)?;
        }
        if options.rabbitmq {
            self.start_rabbitmq(options)?;
        }
        if options.node {
            self.start_relays(options)?;
        }
        self.save()?;
        if let Some(owner) = options.owner_pid {
            self.spawn_watchdog(owner)?;
        }
        Ok(())
    }

    /// Starts the local node (see [`crate::node`]) with the AIOS images imported.
    fn start_node(
        &mut self,
        bin: &Path,
        pki_dir: &Path,
        options: &EnvOptions,
    ) -> Result<(), EnvError> {
        let node_bin = binaries::node_bin_dir()?;
        let mut images = binaries::images()?;
        images.extend(binaries::model_server_image());
        self.node_bin = Some(node_bin.clone());
        let started = crate::node::start(&crate::node::NodeConfig {
            bin: node_bin,
            pki_dir: pki_dir.to_owned(),
            admin_kubeconfig: self.kubeconfig.clone(),
            apiserver_url: self.apiserver_url.clone(),
            kubectl: bin.join("kubectl"),
            log_dir: self.dir.join("logs"),
            images,
            ready_timeout: options.ready_timeout,
        })?;
        self.processes.extend(started);
        Ok(())
    }

    /// Pods reach RabbitMQ and Redis on the node's address: a relay per port there,
    /// connecting to the server's loopback port (RabbitMQ then sees a loopback peer, so
    /// its `guest` user works for pods too).
    fn start_relays(&mut self, options: &EnvOptions) -> Result<(), EnvError> {
        let mut ports: Vec<(u16, u16)> = [&self.amqp_url, &self.redis_url]
            .into_iter()
            .flatten()
            .filter_map(|url| loopback_port(url))
            .map(|port| (port, port))
            .collect();
        // The API server, for pods (the operator's) that use the `kubernetes` Service.
        if let Some(port) = loopback_port(&self.apiserver_url) {
            ports.push((APISERVER_NODE_PORT, port));
        }
        let socat = binaries::service_program("socat")?;
        for (port, target) in ports {
            let relay = process::spawn(
                &format!("relay-{port}"),
                &socat,
                &[
                    format!(
                        "TCP-LISTEN:{port},bind={},fork,reuseaddr",
                        crate::node::NODE_IP
                    ),
                    format!("TCP:127.0.0.1:{target}"),
                ],
                &[],
                &self.log(&format!("relay-{port}")),
            )?;
            self.processes.push(relay.clone());
            relay.wait_ready(options.ready_timeout, || {
                std::net::TcpStream::connect((crate::node::NODE_IP, port)).is_ok()
            })?;
        }
        // The `kubernetes` Service's endpoint: the relay (the API server's own endpoint
        // reconciler is off, since it would publish a loopback address).
        let slice = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes-aios-node",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "aios-env",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [crate::node::NODE_IP], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": APISERVER_NODE_PORT, "protocol": "TCP"}],
        });
        self.kubectl_with_input(&["apply", "-f", "-"], Some(&slice.to_string()))?;
        Ok(())
    }

    /// `url` (a server of this environment on loopback) as pods on the node reach it:
    /// through its relay on the node's address. `None` without a node.
    pub fn for_pods(&self, url: &str) -> Option<String> {
        self.node_bin.as_ref()?;
        Some(url.replacen("127.0.0.1:", &format!("{}:", crate::node::NODE_IP), 1))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    fn start_etcd(&mut self, bin: &Path, options: &EnvOptions) -> Result<u16, EnvError> {
        let client = process::free_port()?;
        let peer = process::free_port()?;
        let data = self.dir.join("etcd");
        let args = [
            "--name=aios".to_owned(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=aios=http://127.0.0.1:{peer}"),
            // Test data is thrown away; skipping fsync makes the suite much faster.
            "--unsafe-no-fsync=true".to_owned(),
            "--log-level=warn".to_owned(),
        ];
        let etcd = process::spawn("etcd", &bin.join("etcd"), &args, &[], &self.log("etcd"))?;
        self.processes.push(etcd.clone());
        etcd.wait_ready(options.ready_timeout, || {
            process::http_get(client, "/health").is_some_and(|b| b.contains("\"health\":\"true\""))
        })?;
        Ok(client)
    }

    fn start_apiserver(
        &mut self,
        bin: &Path,
        pki: &Pki,
        pki_dir: &Path,
        etcd_port: u16,
        options: &EnvOptions,
    ) -> Result<(), EnvError> {
        let port = process::free_port()?;
        let file = |name: &str| pki_dir.join(name).display().to_string();
        let args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            // The `kubernetes` Service's endpoints may not be a loopback address; nothing
            // in the local environment reaches the API server through that Service.
            "--endpoint-reconciler-type=none".to_owned(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", pki_dir.display()),
            format!("--tls-cert-file={}", file(pki::files::SERVING_CERT)),
            format!("--tls-private-key-file={}", file(pki::files::SERVING_KEY)),
            format!("--client-ca-file={}", file(pki::files::CA_CERT)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            format!("--service-account-key-file={}", file(pki::files::SA_PUB)),
            format!(
                "--service-account-signing-key-file={}",
                file(pki::files::SA_KEY)
            ),
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
            // Node: the local node's kubelet acts for its own node and pods only.
            "--authorization-mode=Node,RBAC".to_owned(),
            // The local node's kubelet is reached by its IP (no DNS name resolves here),
            // with a client certificate and its serving certificate checked.
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
            format!(
                "--kubelet-client-certificate={}",
                file(pki::files::APISERVER_KUBELET_CLIENT_CERT)
            ),
            format!(
                "--kubelet-client-key={}",
                file(pki::files::APISERVER_KUBELET_CLIENT_KEY)
            ),
            format!(
                "--kubelet-certificate-authority={}",
                file(pki::files::CA_CERT)
            ),
            "--allow-privileged=true".to_owned(),
            "--v=1".to_owned(),
        ];
        let apiserver = process::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &args,
            &[],
            &self.log("kube-apiserver"),
        )?;
        self.processes.push(apiserver.clone());
        self.apiserver_url = format!("https://127.0.0.1:{port}");
        self.write_kubeconfig(pki)?;
        apiserver.wait_ready(options.ready_timeout, || {
            self.kubectl(&["get", "--raw", "/readyz"]).is_ok()
        })?;
        Ok(())
    }

    fn write_kubeconfig(&self, pki: &Pki) -> Result<(), EnvError> {
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "aios-local",
                "cluster": {
                    "server": self.apiserver_url,
                    "certificate-authority-data": BASE64.encode(&pki.ca_cert),
                },
            }],
            "users": [{
                "name": "aios-admin",
                "user": {
                    "client-certificate-data": BASE64.encode(&pki.admin_cert),
                    "client-key-data": BASE64.encode(&pki.admin_key),
                },
            }],
            "contexts": [{
                "name": "aios-local",
                "context": {"cluster": "aios-local", "user": "aios-admin", "namespace": "default"},
            }],
            "current-context": "aios-local",
        });
        // JSON is YAML, and every kubeconfig reader accepts it.
        fs::write(&self.kubeconfig, config.to_string()).map_err(io_err("writing", &self.kubeconfig))
    }

    fn start_controller_manager(&mut self, bin: &Path, pki_dir: &Path) -> Result<(), EnvError> {
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            "--bind-address=127.0.0.1".to_owned(),
            "--secure-port=0".to_owned(),
            "--leader-elect=false".to_owned(),
            format!(
                "--service-account-private-key-file={}",
                pki_dir.join(pki::files::SA_KEY).display()
            ),
            format!(
                "--root-ca-file={}",
                pki_dir.join(pki::files::CA_CERT).display()
            ),
            "--v=1".to_owned(),
        ];
        let kcm = process::spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            &args,
            &[],
            &self.log("kube-controller-manager"),
        )?;
        self.processes.push(kcm.clone());
        // It has no port to probe with --secure-port=0; it is ready when it has made the
        // default namespace's ServiceAccount, which pods need.
        kcm.wait_ready(Duration::from_secs(60), || {
            self.kubectl(&["get", "serviceaccount", "default", "-n", "default"])
                .is_ok()
        })?;
        Ok(())
    }

    fn start_redis(&mut self, options: &EnvOptions) -> Result<(), EnvError> {
        let port = process::free_port()?;
        let tls_port = process::free_port()?;
        self.launch_redis(port, Some(tls_port), options.ready_timeout)?;
        self.redis_url = Some(format!("redis://127.0.0.1:{port}/"));
        self.rediss_url = Some(format!("rediss://127.0.0.1:{tls_port}/"));
        Ok(())
    }

    /// The TLS listener on `port` with the environment's serving certificate.
    fn tls_listener(&self, port: u16) -> TlsListener {
        let pki_dir = self.dir.join("pki");
        TlsListener {
            port,
            cert: pki_dir.join(pki::files::SERVING_CERT),
            key: pki_dir.join(pki::files::SERVING_KEY),
            ca: pki_dir.join(pki::files::CA_CERT),
        }
    }

    /// Starts Redis on `port` (and TLS on `tls_port`), without persistence (a restart
    /// empties it, as a Redis without persistence does in a cluster).
    fn launch_redis(
        &mut self,
        port: u16,
        tls_port: Option<u16>,
        timeout: Duration,
    ) -> Result<(), EnvError> {
        let data = self.dir.join("redis");
        let tls = tls_port.map(|p| self.tls_listener(p));
        let redis = start_redis(port, tls.as_ref(), &data, &self.log("redis"), timeout)?;
        self.processes.push(redis);
        Ok(())
    }

    fn start_rabbitmq(&mut self, options: &EnvOptions) -> Result<(), EnvError> {
        let epmd_program = binaries::service_program("epmd")?;
        let amqp = process::free_port()?;
        let dist = process::free_port()?;
        let epmd_port = process::free_port()?;
        let base = self.dir.join("rabbitmq");
        fs::create_dir_all(base.join("log")).map_err(io_err("creating", &base))?;
        let plugins = base.join("enabled_plugins");
        // The management plugin: the operator reads queue depths (ready and
        // unacknowledged messages) from its HTTP API.
        fs::write(&plugins, "[rabbitmq_management].\n").map_err(io_err("writing", &plugins))?;
        let management = process::free_port()?;
        // A config file of our own keeps the system's /etc/rabbitmq out of the run; the
        // listener is set through RABBITMQ_NODE_IP_ADDRESS and RABBITMQ_NODE_PORT below.
        // The TLS listener, with the environment's serving certificate; clients are not
        // asked for certificates.
        let amqps = process::free_port()?;
        let tls = self.tls_listener(amqps);
        let config = base.join("rabbitmq.conf");
        fs::write(
            &config,
            format!(
                "# AIOS local environment: the plain listener comes from the environment\n\
                 listeners.ssl.1 = 127.0.0.1:{amqps}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n\
                 management.tcp.ip = 127.0.0.1\n\
                 management.tcp.port = {management}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ),
        )
        .map_err(io_err("writing", &config))?;

        // Erlang's port mapper, our own on a private port, so nothing outlives stop().
        let epmd_env = [
            ("ERL_EPMD_PORT".to_owned(), epmd_port.to_string()),
            ("ERL_EPMD_ADDRESS".to_owned(), "127.0.0.1".to_owned()),
        ];
        let epmd = process::spawn(
            "epmd",
            &epmd_program,
            &["-port".to_owned(), epmd_port.to_string()],
            &epmd_env,
            &self.log("epmd"),
        )?;
        self.processes.push(epmd);

        let node = RabbitNode {
            node: format!("aios-{amqp}@localhost"),
            home: base,
            epmd_port,
            amqp_port: amqp,
            dist_port: dist,
            amqps_port: Some(amqps),
            management_port: Some(management),
        };
        self.launch_rabbitmq(&node, options.ready_timeout)?;
        self.amqp_url = Some(format!("amqp://guest:guest@127.0.0.1:{amqp}/%2f"));
        self.rabbitmq = Some(node);
        Ok(())
    }

    /// Starts the RabbitMQ node `node` describes (its data, vhosts and durable queues
    /// are kept in its directory across starts).
    fn launch_rabbitmq(&mut self, node: &RabbitNode, timeout: Duration) -> Result<(), EnvError> {
        let program = binaries::service_program("rabbitmq-server")?;
        let (base, amqp, dist) = (&node.home, node.amqp_port, node.dist_port);
        let plugins = base.join("enabled_plugins");
        let config = base.join("rabbitmq.conf");
        let mut envs = vec![
            ("ERL_EPMD_PORT".to_owned(), node.epmd_port.to_string()),
            ("ERL_EPMD_ADDRESS".to_owned(), "127.0.0.1".to_owned()),
        ];
        envs.extend([
            ("HOME".to_owned(), base.display().to_string()),
            (
                "RABBITMQ_NODENAME".to_owned(),
                format!("aios-{amqp}@localhost"),
            ),
            (
                "RABBITMQ_NODE_IP_ADDRESS".to_owned(),
                "127.0.0.1".to_owned(),
            ),
            ("RABBITMQ_NODE_PORT".to_owned(), amqp.to_string()),
            ("RABBITMQ_DIST_PORT".to_owned(), dist.to_string()),
            (
                "RABBITMQ_MNESIA_BASE".to_owned(),
                base.join("mnesia").display().to_string(),
            ),
            (
                "RABBITMQ_LOG_BASE".to_owned(),
                base.join("log").display().to_string(),
            ),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".to_owned(),
                plugins.display().to_string(),
            ),
            (
                "RABBITMQ_CONFIG_FILE".to_owned(),
                config.display().to_string(),
            ),
            (
                "RABBITMQ_PID_FILE".to_owned(),
                base.join("rabbitmq.pid").display().to_string(),
            ),
            ("RABBITMQ_ALLOW_INPUT".to_owned(), String::new()),
        ]);
        let rabbit = process::spawn("rabbitmq", &program, &[], &envs, &self.log("rabbitmq"))?;
        self.processes.push(rabbit.clone());
        rabbit.wait_ready(timeout, || {
            process::amqp_handshake(amqp)
                && node
                    .amqps_port
                    .is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok())
        })?;
        Ok(())
    }

    /// Stops RabbitMQ and starts it again on the same port with the same data: what a
    /// broker restart does to its clients (every connection dropped; durable queues and
    /// their messages kept; exclusive queues gone). For fault tests on an environment of
    /// their own: a shared environment's other users would see the restart too.
    pub fn restart_rabbitmq(&mut self) -> Result<(), EnvError> {
        let node = self.rabbitmq.clone().ok_or_else(|| EnvError::Command {
            command: "restarting RabbitMQ".to_owned(),
            stderr: "this environment runs no RabbitMQ".to_owned(),
        })?;
        self.stop_process("rabbitmq");
        self.launch_rabbitmq(&node, RESTART_TIMEOUT)?;
        self.save_if_shared()
    }

    /// Stops Redis and starts it again on the same port, empty (it keeps nothing on
    /// disk): what a restart of a Redis without persistence does. For fault tests on an
    /// environment of their own.
    pub fn restart_redis(&mut self) -> Result<(), EnvError> {
        let port = self
            .redis_url
            .as_deref()
            .and_then(loopback_port)
            .ok_or_else(|| EnvError::Command {
                command: "restarting Redis".to_owned(),
                stderr: "this environment runs no Redis".to_owned(),
            })?;
        let tls_port = self.rediss_url.as_deref().and_then(loopback_port);
        self.stop_process("redis");
        self.launch_redis(port, tls_port, RESTART_TIMEOUT)?;
        self.save_if_shared()
    }

    /// Stops the process named `name` and forgets it.
    fn stop_process(&mut self, name: &str) {
        self.processes.retain(|p| {
            if p.name == name {
                p.stop(Duration::from_secs(15));
                false
            } else {
                true
            }
        });
    }

    /// Rewrites `state.json` when there is one, so other users of the environment see
    /// the restarted process.
    fn save_if_shared(&self) -> Result<(), EnvError> {
        if self.dir.join(STATE_FILE).exists() {
            self.save()?;
        }
        Ok(())
    }

    /// A shell loop, in its own process group, that stops the environment's processes
    /// and removes its directory once `owner` has exited.
    fn spawn_watchdog(&self, owner: u32) -> Result<(), EnvError> {
        let pids: Vec<String> = self.processes.iter().map(|p| p.pid.to_string()).collect();
        let pids = pids.join(" ");
        let script = format!(
            "while kill -0 {owner} 2>/dev/null; do sleep 1; done; \
             kill -TERM {pids} 2>/dev/null; sleep 5; kill -KILL {pids} 2>/dev/null; \
             rm -rf '{}'",
            self.dir.display()
        );
        let sh = PathBuf::from("/bin/sh");
        process::spawn(
            "watchdog",
            &sh,
            &["-c".to_owned(), script],
            &[],
            &self.dir.join("logs").join("watchdog.log"),
        )?;
        Ok(())
    }

    /// Writes `state.json` so other processes can share the environment.
    pub fn save(&self) -> Result<(), EnvError> {
        let path = self.dir.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|source| EnvError::State {
            path: path.display().to_string(),
            source,
        })?;
        fs::write(&path, json).map_err(io_err("writing", &path))
    }

    /// Reads the description of a running environment from its state directory.
    pub fn load(dir: &Path) -> Result<Self, EnvError> {
        let path = dir.join(STATE_FILE);
        let raw = fs::read(&path).map_err(io_err("reading", &path))?;
        serde_json::from_slice(&raw).map_err(|source| EnvError::State {
            path: path.display().to_string(),
            source,
        })
    }

    /// Stops every process this environment started and removes its directory.
    pub fn stop(&self) -> Result<(), EnvError> {
        self.stop_processes();
        process::remove_dir_settled(&self.dir).map_err(io_err("removing", &self.dir))
    }

    fn stop_processes(&self) {
        // Reverse start order: clients before the servers they depend on.
        for server in self.processes.iter().rev() {
            server.stop(Duration::from_secs(15));
        }
        if let Some(node_bin) = &self.node_bin {
            let left = crate::node::clean(Some(&node_bin.join("kube-proxy")));
            if !left.is_empty() {
                eprintln!("aios-env: the node left behind: {}", left.join(", "));
            }
        }
    }

    /// The environment variables a process needs to use this environment.
    pub fn exports(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            (ENV_STATE_DIR, self.dir.display().to_string()),
            ("KUBECONFIG", self.kubeconfig.display().to_string()),
        ];
        if let Some(url) = &self.amqp_url {
            vars.push(("AIOS_AMQP_URL", url.clone()));
        }
        if let Some(url) = &self.redis_url {
            vars.push(("AIOS_REDIS_URL", url.clone()));
        }
        vars
    }

    /// A kubeconfig that acts as ServiceAccount `service_account` of `namespace`
    /// (impersonation by the admin), so a process using it has exactly that account's
    /// permissions. Written beside the admin kubeconfig; returns its path.
    pub fn impersonating_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<PathBuf, EnvError> {
        let admin =
            fs::read_to_string(&self.kubeconfig).map_err(io_err("reading", &self.kubeconfig))?;
        let mut config: serde_json::Value =
            serde_json::from_str(&admin).map_err(|e| EnvError::Command {
                command: format!("reading {}", self.kubeconfig.display()),
                stderr: e.to_string(),
            })?;
        if let Some(users) = config["users"].as_array_mut() {
            for user in users {
                user["user"]["as"] = serde_json::Value::from(format!(
                    "system:serviceaccount:{namespace}:{service_account}"
                ));
                user["user"]["as-groups"] = serde_json::json!([
                    "system:serviceaccounts",
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated"
                ]);
            }
        }
        let path = self
            .dir
            .join(format!("kubeconfig-{namespace}-{service_account}"));
        fs::write(&path, config.to_string()).map_err(io_err("writing", &path))?;
        Ok(path)
    }

    /// Runs kubectl against the environment; stdout on success.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, EnvError> {
        self.kubectl_with_input(args, None)
    }

    /// Runs kubectl with `input` on its stdin; stdout on success.
    pub fn kubectl_with_input(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, EnvError> {
        let out = self.kubectl_output(args, input)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(EnvError::Command {
                command: format!("kubectl {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Runs kubectl and returns its whole output, success or not.
    pub fn kubectl_output(
        &self,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<std::process::Output, EnvError> {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("running", &self.kubectl))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .map_err(io_err("writing to", &self.kubectl))?;
        }
        child
            .wait_with_output()
            .map_err(io_err("running", &self.kubectl))
    }

    /// Installs the CRDs under `crds/` with server-side apply and waits until the API
    /// server has established them; kubectl's output of the apply.
    pub fn install_crds(&self) -> Result<String, EnvError> {
        let crds = crate::repo_root().join("crds");
        let out = self.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=aios-e2e",
            "-f",
            &crds.display().to_string(),
        ])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/projects.aios.dev",
            "crd/tasks.aios.dev",
            "crd/agents.aios.dev",
            "crd/modelproviders.aios.dev",
        ])?;
        Ok(out)
    }

    /// The AMQPS URL of the same vhost and user as `amqp_url` (one of this
    /// environment's), on the TLS listener; `None` without one.
    pub fn over_tls(&self, amqp_url: &str) -> Option<String> {
        let node = self.rabbitmq.as_ref()?;
        let tls = node.amqps_port?;
        let plain = format!("127.0.0.1:{}/", node.amqp_port);
        amqp_url.contains(&plain).then(|| {
            amqp_url.replacen("amqp://", "amqps://", 1).replacen(
                &plain,
                &format!("127.0.0.1:{tls}/"),
                1,
            )
        })
    }

    /// RabbitMQ's management API, with guest's credentials (allowed on loopback);
    /// `None` without the plugin.
    pub fn rabbitmq_management_url(&self) -> Option<String> {
        let port = self.rabbitmq.as_ref()?.management_port?;
        Some(format!("http://guest:guest@127.0.0.1:{port}"))
    }

    /// Creates a RabbitMQ virtual host that guest may use, so a test has queues and
    /// exchanges of its own; returns its AMQP URL.
    pub fn create_vhost(&self, name: &str) -> Result<String, EnvError> {
        self.rabbitmqctl(&["add_vhost", name])?;
        self.rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"])?;
        let node = self.rabbitmq.as_ref().ok_or_else(|| EnvError::Command {
            command: format!("rabbitmqctl add_vhost {name}"),
            stderr: "this environment runs no RabbitMQ".to_owned(),
        })?;
        Ok(format!(
            "amqp://guest:guest@127.0.0.1:{}/{name}",
            node.amqp_port
        ))
    }

    /// `rabbitmqctl <args>` against the environment's node; its output.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Result<String, EnvError> {
        let node = self.rabbitmq.as_ref().ok_or_else(|| EnvError::Command {
            command: format!("rabbitmqctl {}", args.join(" ")),
            stderr: "this environment runs no RabbitMQ".to_owned(),
        })?;
        let ctl = PathBuf::from("/usr/lib/rabbitmq/bin/rabbitmqctl");
        let out = Command::new(&ctl)
            .args(["-n", &node.node, "-q"])
            .args(args)
            .env("HOME", &node.home)
            .env("ERL_EPMD_PORT", node.epmd_port.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running", &ctl))?;
        if !out.status.success() {
            return Err(EnvError::Command {
                command: format!("rabbitmqctl {}", args.join(" ")),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a namespace no other test uses: `<prefix>-<unique suffix>`.
    pub fn create_namespace(&self, prefix: &str) -> Result<String, EnvError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        self.kubectl(&["create", "namespace", &name])?;
        Ok(name)
    }
}

/// Where pods on the local node reach the API server: a relay on the node's address.
pub const APISERVER_NODE_PORT: u16 = 6443;

/// The port of a `scheme://[user@]127.0.0.1:<port>/...` URL.
/// Starts `redis-server` on loopback `port` without persistence (a restart starts it
/// empty), its working directory `data` and its output in `log`, and waits until it
/// answers. The environment's Redis, and a test's own.
pub fn start_redis(
    port: u16,
    tls: Option<&TlsListener>,
    data: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<ServerProcess, EnvError> {
    let program = binaries::service_program("redis-server")?;
    fs::create_dir_all(data).map_err(io_err("creating", data))?;
    let mut args = vec![
        "--bind".to_owned(),
        "127.0.0.1".to_owned(),
        "--port".to_owned(),
        port.to_string(),
        "--dir".to_owned(),
        data.display().to_string(),
        "--save".to_owned(),
        String::new(),
        "--appendonly".to_owned(),
        "no".to_owned(),
        "--daemonize".to_owned(),
        "no".to_owned(),
    ];
    if let Some(tls) = tls {
        // Clients are not asked for certificates.
        args.extend([
            "--tls-port".to_owned(),
            tls.port.to_string(),
            "--tls-cert-file".to_owned(),
            tls.cert.display().to_string(),
            "--tls-key-file".to_owned(),
            tls.key.display().to_string(),
            "--tls-ca-cert-file".to_owned(),
            tls.ca.display().to_string(),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ]);
    }
    let redis = process::spawn("redis", &program, &args, &[], log)?;
    let ready = || {
        process::redis_ping(port)
            && tls.is_none_or(|t| std::net::TcpStream::connect(("127.0.0.1", t.port)).is_ok())
    };
    if let Err(err) = redis.wait_ready(timeout, ready) {
        redis.stop(Duration::from_secs(5));
        return Err(err.into());
    }
    Ok(redis)
}

fn loopback_port(url: &str) -> Option<u16> {
    let rest = url.split("127.0.0.1:").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn unique_temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    env::temp_dir().join(format!("aios-env-{}-{nanos}", std::process::id()))
}
