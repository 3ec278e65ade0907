//! `aios`: Hermes, the concierge, and the views people read. `aios new` turns a
//! conversation into a Project manifest; `aios get`, `describe` and `watch` show the
//! operator's work. A kubectl-style client of any cluster the kubeconfig names, also a
//! kubectl plugin (`kubectl aios …`, with the binary linked as `kubectl-aios`).
//!
//! The views are pure functions from objects to text or frames ([`view`],
//! [`watch::ui`]); the Kubernetes I/O is in [`cluster`], the model calls in [`hermes`].

pub mod cluster;
pub mod get;
pub mod hermes;
pub mod view;
pub mod watch;

use std::io::Write;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The `aios` command line.
#[derive(Debug, Parser)]
#[command(
    name = "aios",
    version,
    about = "Hermes, the AIOS concierge: start Projects and follow the agents at work",
    after_help = "Examples:
  aios new                                  # a conversation with Hermes
  aios new --brief 'A todo API' --repo https://git.example/todo.git --apply
  aios get projects -A
  aios get tasks -l aios.dev/project=shop -o wide
  aios describe project shop
  aios watch shop
  aios completion bash > /etc/bash_completion.d/aios

The cluster is the kubeconfig's (KUBECONFIG, --context); NO_COLOR turns colours off.
Exit codes: 0 done, 1 failed, 2 bad usage, 3 not found, 4 cluster unreachable or refused,
5 the model gave nothing usable."
)]
pub struct Cli {
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `aios` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Talk with Hermes about what to build and get a Project manifest: printed,
    /// written or applied.
    #[command(after_help = "Examples:
  aios new                                  # asks what to build, then a few questions
  aios new --brief 'A URL shortener in Go' --repo https://git.example/short.git -o yaml
  aios new --brief '…' --repo URL --test-command 'go test ./...' --apply
  aios new --providers providers.json --out manifests/")]
    New(hermes::NewArgs),
    /// List Projects, Tasks, Agents or ModelProviders.
    #[command(after_help = "Examples:
  aios get projects
  aios get tasks -A -o wide
  aios get tasks -l aios.dev/project=shop --watch
  aios get agents -o yaml
  aios get project shop -o json")]
    Get(GetArgs),
    /// Show a Project: its tasks as a tree in dependency order, usage, conditions and
    /// recent Events.
    #[command(after_help = "Example:\n  aios describe project shop -n team-a")]
    Describe(DescribeArgs),
    /// The live view: the agents at work, the tasks by DAG level, the event feed and
    /// the cost, redrawn as the cluster changes.
    #[command(
        after_help = "Keys: ←/→ or tab switch Projects, ↑/↓ select a task, enter opens its
details, esc closes them, q quits.

Examples:
  aios watch            # every Project of the namespace
  aios watch shop
  aios watch shop --once --width 120 --height 40   # one frame, for scripts"
    )]
    Watch(watch::WatchArgs),
    /// Print AIOS's CustomResourceDefinitions as YAML: `aios crds | kubectl apply --server-side -f -`.
    Crds,
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  aios completion zsh > \"${fpath[1]}/_aios\"")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// What `aios get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Projects (also: project, proj).
    #[value(alias = "project", alias = "proj")]
    Projects,
    /// Tasks (also: task, tk).
    #[value(alias = "task", alias = "tk")]
    Tasks,
    /// Agents (also: agent, ag).
    #[value(alias = "agent", alias = "ag")]
    Agents,
    /// ModelProviders (also: provider, modelproviders, mp).
    #[value(
        alias = "provider",
        alias = "modelproviders",
        alias = "modelprovider",
        alias = "mp"
    )]
    Providers,
}

/// How `aios get` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// The table.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// `kind.group/name`, one per line.
    Name,
    /// JSON, as the API server serves it.
    Json,
    /// YAML, as the API server serves it.
    Yaml,
}

/// `aios get`'s arguments.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    pub kind: Kind,
    /// One object by name.
    pub name: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// A label selector, e.g. `aios.dev/project=shop`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// The output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// After listing, print every change as it happens.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Keep `metadata.managedFields` in JSON and YAML (hidden by default, as kubectl
    /// hides them).
    #[arg(long)]
    pub show_managed_fields: bool,
}

/// What `aios describe` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DescribeKind {
    /// A Project (also: projects, proj).
    #[value(alias = "projects", alias = "proj")]
    Project,
}

/// `aios describe`'s arguments.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// What to describe.
    pub kind: DescribeKind,
    /// Its name.
    pub name: String,
}

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The kubeconfig could not be loaded.
    #[error("loading the kubeconfig: {0}")]
    Kubeconfig(String),
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The API server refused.
    #[error("{0}")]
    Forbidden(String),
    /// The API server failed or could not be reached.
    #[error("{0}")]
    Api(String),
    /// The input was wrong.
    #[error("{0}")]
    Usage(String),
    /// The model gave nothing usable.
    #[error("{0}")]
    Model(String),
    /// A CRD could not be rendered.
    #[error("rendering YAML: {0}")]
    Render(#[from] serde_yaml_ng::Error),
    /// JSON could not be rendered.
    #[error("rendering JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The output could not be written, or the terminal used.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The process's exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::NotFound(_) => 3,
            Self::Kubeconfig(_) | Self::Forbidden(_) | Self::Api(_) => 4,
            Self::Model(_) => 5,
            Self::Render(_) | Self::Json(_) | Self::Io(_) => 1,
        }
    }
}

/// Whether colours are off: `NO_COLOR` set to anything but the empty string.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Runs one command, writing its output to `out`.
pub async fn run(cli: &Cli, out: &mut (impl Write + Send)) -> Result<(), CliError> {
    match &cli.command {
        Command::Crds => print_crds(out),
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "aios", out);
            Ok(())
        }
        Command::Get(args) => {
            let cluster = connect(cli).await?;
            get::get(&cluster, args, out).await
        }
        Command::Describe(args) => {
            let cluster = connect(cli).await?;
            match args.kind {
                DescribeKind::Project => get::describe_project(&cluster, &args.name, out).await,
            }
        }
        Command::Watch(args) => {
            let cluster = connect(cli).await?;
            watch::run(&cluster, args, out).await
        }
        Command::New(args) => hermes::run(cli, args, out).await,
    }
}

async fn connect(cli: &Cli) -> Result<cluster::Cluster, CliError> {
    cluster::Cluster::connect(cli.context.as_deref(), cli.namespace.as_deref()).await
}

fn print_crds(out: &mut impl Write) -> Result<(), CliError> {
    use aios_crds::generate;
    for (i, crd) in generate::crds().iter().enumerate() {
        if i > 0 {
            writeln!(out, "---")?;
        }
        out.write_all(generate::to_yaml(crd)?.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn crds_prints_every_crd_as_one_multi_document_stream() {
        let mut out = Vec::new();
        print_crds(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  name: "))
            .filter(|n| n.ends_with(".aios.dev"))
            .collect();
        assert_eq!(
            names,
            [
                "projects.aios.dev",
                "tasks.aios.dev",
                "agents.aios.dev",
                "modelproviders.aios.dev"
            ]
        );
        assert_eq!(text.matches("\n---\n").count(), 3);
    }

    #[test]
    fn the_command_line_is_consistent_and_every_command_has_examples() {
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            if sub.get_name() == "crds" || sub.get_name() == "help" {
                continue;
            }
            let help = sub
                .get_after_help()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                help.contains("Example"),
                "{} has no examples",
                sub.get_name()
            );
        }
    }

    #[test]
    fn kinds_take_kubectls_short_names() {
        for (word, kind) in [
            ("proj", Kind::Projects),
            ("tk", Kind::Tasks),
            ("ag", Kind::Agents),
            ("mp", Kind::Providers),
        ] {
            let cli = Cli::try_parse_from(["aios", "get", word]).unwrap();
            let Command::Get(args) = cli.command else {
                panic!()
            };
            assert_eq!(args.kind, kind);
        }
        let err = Cli::try_parse_from(["aios", "get", "pods"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn completion_scripts_name_the_subcommands() {
        let mut command = Cli::command();
        let mut out = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut command, "aios", &mut out);
        let script = String::from_utf8(out).unwrap();
        for word in ["new", "get", "describe", "watch"] {
            assert!(script.contains(word), "{word}");
        }
    }
}
