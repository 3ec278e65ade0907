//! Starting servers as plain processes, probing them, and stopping only what we started.

use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// A server process this tooling started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerProcess {
    /// What it is (`etcd`, `kube-apiserver`, ...).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// The executable it runs; checked before it is signalled so a recycled pid is
    /// never killed.
    pub program: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// Why a server could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be executed.
    #[error("starting {name} ({program}) failed")]
    Spawn {
        /// The server.
        name: String,
        /// The executable.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server exited before it became ready.
    #[error("{name} exited before it became ready; its log is {log}:\n{tail}")]
    Exited {
        /// The server.
        name: String,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// The server did not become ready in time.
    #[error("{name} did not become ready within {seconds}s; its log is {log}:\n{tail}")]
    NotReady {
        /// The server.
        name: String,
        /// How long we waited.
        seconds: u64,
        /// Its log file.
        log: String,
        /// The end of its log.
        tail: String,
    },
    /// A log file could not be created.
    #[error("creating log file {path}")]
    Log {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No free port could be found on loopback.
    #[error("finding a free loopback port")]
    NoPort(#[source] std::io::Error),
}

/// Starts `program` with its output appended to `log`, in a process group of its own so
/// a terminal's Ctrl-C reaches only the process that owns the environment.
pub fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    envs: &[(String, String)],
    log: &Path,
) -> Result<ServerProcess, ProcessError> {
    let log_err = |source| ProcessError::Log {
        path: log.display().to_string(),
        source,
    };
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let child = Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            program: program.display().to_string(),
            source,
        })?;
    Ok(ServerProcess {
        name: name.to_owned(),
        pid: child.id(),
        program: program.to_owned(),
        log: log.to_owned(),
    })
}

impl ServerProcess {
    /// Whether the process (or, for a launcher script such as `rabbitmq-server`, a
    /// process it started in its group) is still alive.
    pub fn is_running(&self) -> bool {
        group_members(self.pid) > 0
    }

    /// Whether the group's leader, if it still exists, runs the program we started: a
    /// recycled pid belonging to someone else is never signalled. (A group whose leader
    /// has exited keeps its id reserved while any member lives, so it cannot be recycled.)
    fn leader_is_ours(&self) -> bool {
        let Ok(exe) = fs::read_link(format!("/proc/{}/exe", self.pid)) else {
            return true;
        };
        let wanted = fs::canonicalize(&self.program).unwrap_or_else(|_| self.program.clone());
        // Scripts (rabbitmq-server) run an interpreter; compare by name then.
        exe == wanted || cmdline_mentions(self.pid, &self.program)
    }

    /// Sends SIGTERM to the process group, waits up to `grace` for it to go, then SIGKILL.
    pub fn stop(&self, grace: Duration) {
        if !self.is_running() || !self.leader_is_ours() {
            return;
        }
        let group = Pid::from_raw(-i32::try_from(self.pid).unwrap_or(i32::MAX));
        let _ = kill(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = kill(group, Signal::SIGKILL);
        while self.is_running() && Instant::now() < deadline + Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 20)
    }

    /// Polls `probe` until it answers true, the process exits, or `timeout` passes.
    pub fn wait_ready(
        &self,
        timeout: Duration,
        mut probe: impl FnMut() -> bool,
    ) -> Result<(), ProcessError> {
        let start = Instant::now();
        loop {
            if probe() {
                return Ok(());
            }
            if !self.is_running() {
                return Err(ProcessError::Exited {
                    name: self.name.clone(),
                    log: self.log.display().to_string(),
                    tail: self.log_tail(),
                });
            }
            if start.elapsed() > timeout {
                return Err(ProcessError::NotReady {
                    name: self.name.clone(),
                    seconds: timeout.as_secs(),
                    log: self.log.display().to_string(),
                    tail: self.log_tail(),
                });
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How many live (not zombie) processes are in process group `pgid`.
fn group_members(pgid: u32) -> usize {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // Fields after the parenthesised command: state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            !matches!(state, "Z" | "X") && pgrp == Some(pgid)
        })
        .count()
}

fn cmdline_mentions(pid: u32, program: &Path) -> bool {
    let Some(file_name) = program.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|raw| String::from_utf8_lossy(&raw).contains(file_name))
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The lowest port [`free_port`] picks.
const LOWEST_PORT: u16 = 10_000;

/// Above the ports [`free_port`] picks: Kubernetes' default NodePort range starts here.
const NODE_PORTS: u16 = 30_000;

/// A port on 127.0.0.1 that nothing listens on right now, below the kernel's range for
/// the local ports of outgoing connections: a port from that range (what binding port 0
/// gives) may be taken by any process's outgoing connection between the pick and the
/// server's bind, and the server then fails with "address in use" (seen with RabbitMQ's
/// management listener while other tests' clients were busy). Picked at random below
/// the NodePort range too, and tried; the kernel's own pick if none is free.
pub fn free_port() -> Result<u16, ProcessError> {
    let below = ephemeral_ports_start().clamp(LOWEST_PORT + 1, NODE_PORTS);
    for _ in 0..64 {
        let port = rand::random_range(LOWEST_PORT..below);
        if TcpListener::bind(loopback(port)).is_ok() {
            return Ok(port);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(ProcessError::NoPort)?;
    Ok(listener.local_addr().map_err(ProcessError::NoPort)?.port())
}

/// The first port of the kernel's range for outgoing connections (32768 when unknown).
fn ephemeral_ports_start() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Sends `request` to a loopback port and returns what comes back before the peer
/// closes or goes quiet.
fn exchange(port: u16, request: &[u8]) -> Option<Vec<u8>> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&loopback(port), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.write_all(request).ok()?;
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// An HTTP/1.0 GET on a loopback port; the body of a 200 answer.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&loopback(port), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    // HTTP/1.0: the server closes the connection after the whole answer.
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then_some(())?;
    head.split_whitespace()
        .nth(1)
        .filter(|code| *code == "200")
        .map(|_| body.to_owned())
}

/// Whether a Redis server answers PING on a loopback port.
pub fn redis_ping(port: u16) -> bool {
    exchange(port, b"PING\r\n").is_some_and(|reply| reply.starts_with(b"+PONG"))
}

/// Whether an AMQP 0-9-1 broker on a loopback port opens a connection: it answers the
/// protocol header with a method frame (`Connection.Start`).
pub fn amqp_handshake(port: u16) -> bool {
    exchange(port, b"AMQP\x00\x00\x09\x01").is_some_and(|reply| reply.first() == Some(&1))
}

/// Pids and command lines of the processes (other than this one) whose command line
/// contains `needle`.
pub(crate) fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    other_processes()
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Pids and command lines of the processes (other than this one) that have a file open
/// under `dir` or work in it.
fn processes_holding(dir: &Path) -> Vec<(u32, String)> {
    let under = |link: PathBuf| fs::read_link(link).is_ok_and(|target| target.starts_with(dir));
    other_processes()
        .filter(|pid| {
            under(PathBuf::from(format!("/proc/{pid}/cwd")))
                || fs::read_dir(format!("/proc/{pid}/fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|fd| under(fd.path()))
        })
        .map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid, String::from_utf8_lossy(&raw).replace('\0', " "))
        })
        .collect()
}

fn other_processes() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
}

/// Sends SIGKILL to each of `pids`.
pub(crate) fn kill_all(pids: impl IntoIterator<Item = u32>) {
    for pid in pids {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Removes `dir` and everything in it, ending first whatever still holds it: a process
/// that outlived its stop (a grandchild in another process group, a shim) can still be
/// writing there, and would make the removal fail. A removal that fails all the same is
/// tried again; the last failure names what held the directory.
pub fn remove_dir_settled(dir: &Path) -> std::io::Result<()> {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        let holders = processes_holding(dir);
        kill_all(holders.iter().map(|(pid, _)| *pid));
        if !holders.is_empty() {
            thread::sleep(Duration::from_millis(100));
        }
        let err = match fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => err,
        };
        if attempt == ATTEMPTS {
            let held: Vec<String> = processes_holding(dir)
                .iter()
                .map(|(pid, cmdline)| format!("{pid} ({cmdline})"))
                .collect();
            return Err(std::io::Error::new(
                err.kind(),
                format!("{err}; still held by: [{}]", held.join(", ")),
            ));
        }
        thread::sleep(Duration::from_millis(200) * attempt);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_is_below_the_outgoing_connections_range_and_the_node_ports_and_free() {
        let start = ephemeral_ports_start();
        assert!(
            start > LOWEST_PORT,
            "this machine's range starts at {start}"
        );
        let below = start.min(NODE_PORTS);
        for _ in 0..20 {
            let port = free_port().unwrap();
            assert!((LOWEST_PORT..below).contains(&port), "{port}");
            TcpListener::bind(loopback(port)).unwrap();
        }
    }
}
