//! Starts and stops the local environment from a shell.
//!
//! ```text
//! eval "$(aios-env start --dir /tmp/aios-env)"   # prints export lines
//! aios-env stop --dir /tmp/aios-env
//! aios-env run -- cargo test                      # start, run, stop
//! ```

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use aios_e2e::{EnvOptions, Environment};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    about = "The AIOS local environment: kube-apiserver, etcd, kube-controller-manager, RabbitMQ, Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start an environment and print `export` lines for a shell to eval.
    Start(StartArgs),
    /// Stop the environment in DIR: its processes, by pid, then the directory.
    Stop {
        /// The environment's state directory.
        #[arg(long, env = "AIOS_E2E_ENV")]
        dir: PathBuf,
    },
    /// Start an environment, run a command with its variables set, then stop it.
    Run {
        #[command(flatten)]
        start: StartArgs,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // command-line switches
struct StartArgs {
    /// State directory (must not exist); a temporary one when unset.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Do not start RabbitMQ.
    #[arg(long)]
    no_rabbitmq: bool,
    /// Do not start Redis.
    #[arg(long)]
    no_redis: bool,
    /// Do not start kube-controller-manager.
    #[arg(long)]
    no_controller_manager: bool,
    /// Seconds each server may take to become ready.
    #[arg(long, default_value_t = 90)]
    ready_timeout: u64,
    /// Also start a node (containerd, kubelet, kube-scheduler, kube-proxy, CoreDNS) that
    /// runs pods from the locally built images; needs root.
    #[arg(long)]
    node: bool,
}

impl StartArgs {
    fn options(&self, owner_pid: Option<u32>) -> EnvOptions {
        EnvOptions {
            dir: self.dir.clone(),
            rabbitmq: !self.no_rabbitmq,
            redis: !self.no_redis,
            controller_manager: !self.no_controller_manager,
            ready_timeout: Duration::from_secs(self.ready_timeout),
            owner_pid,
            node: self.node,
        }
    }
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Cmd::Start(args) => {
            let env = Environment::start(&args.options(None))?;
            for (name, value) in env.exports() {
                println!("export {name}='{value}'");
            }
            eprintln!("environment up; logs in {}", env.dir.join("logs").display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop { dir } => {
            Environment::load(&dir)?.stop()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { start, command } => {
            // The watchdog stops the environment even if this process is killed.
            let env = Environment::start(&start.options(Some(std::process::id())))?;
            eprintln!("environment up; logs in {}", env.dir.join("logs").display());
            let status = Command::new(&command[0])
                .args(&command[1..])
                .envs(env.exports())
                .status()
                .with_context(|| format!("running {}", command[0]));
            env.stop()?;
            let code = status?.code().unwrap_or(1);
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}
