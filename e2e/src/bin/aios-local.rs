//! Runs AIOS's main job on a running local environment (`aios-env start`): the
//! operator, the agents, a local ModelProvider and a Project, followed to its end. With
//! `--pods` (an environment with a node) the operator is installed with the Helm chart,
//! the model is served by a pod from the local model-server image, and the agents run as
//! the pods the operator scales; otherwise the operator and one agent per role run as
//! local processes against the model server at `--model-url`. `scripts/run-local.sh` is
//! the way in; this is the part in Rust.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use aios_e2e::{
    Environment,
    local::{LocalError, LocalRun, ModelServer, Operator},
};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "aios-local",
    about = "Runs a Project to its end on the local environment"
)]
struct Args {
    /// The environment's state directory (`aios-env start --dir`).
    #[arg(long)]
    state: PathBuf,
    /// Where aios-operator and aios-agent are.
    #[arg(long)]
    bin_dir: PathBuf,
    /// Logs, agents' work directories, the delivery repository.
    #[arg(long)]
    work_dir: PathBuf,
    /// The Project manifest (`file:///REPOSITORY` is replaced by the delivery repository).
    #[arg(long)]
    project: PathBuf,
    /// The model server's base URL (Ollama's API). Required without `--pods`; with it,
    /// the model is served by a pod unless this names a server the pods can reach.
    #[arg(long, required_unless_present = "pods")]
    model_url: Option<String>,
    /// Its chat model.
    #[arg(long)]
    chat_model: String,
    /// Its embeddings model.
    #[arg(long)]
    embed_model: Option<String>,
    /// How long the Project may take, in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_seconds: u64,
    /// Run everything on the environment's node (`aios-env start --node`): the operator
    /// from the Helm chart, the model server and the agents as pods.
    #[arg(long)]
    pods: bool,
}

/// Providers beyond the local one, when their keys or host are in the environment.
fn extra_models() -> Vec<ModelServer> {
    let mut extra = Vec::new();
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(host) = set("OLLAMA_HOST") {
        let url = if host.starts_with("http") {
            host
        } else {
            format!("http://{host}")
        };
        extra.push(ModelServer {
            name: "ollama-host".to_owned(),
            provider_type: "Ollama".to_owned(),
            tier: "Local".to_owned(),
            priority: 20,
            url,
            chat_model: set("AIOS_OLLAMA_MODEL").unwrap_or_else(|| "qwen2.5-coder:7b".to_owned()),
            embed_model: None,
            image: None,
        });
    }
    if set("ANTHROPIC_API_KEY").is_some() {
        extra.push(ModelServer {
            name: "claude".to_owned(),
            provider_type: "Anthropic".to_owned(),
            tier: "Cloud".to_owned(),
            priority: 10,
            url: "https://api.anthropic.com".to_owned(),
            chat_model: set("AIOS_ANTHROPIC_MODEL")
                .unwrap_or_else(|| "claude-sonnet-4-5".to_owned()),
            embed_model: None,
            image: None,
        });
    }
    if set("OPENAI_API_KEY").is_some() {
        extra.push(ModelServer {
            name: "openai".to_owned(),
            provider_type: "OpenAI".to_owned(),
            tier: "Cloud".to_owned(),
            priority: 5,
            url: "https://api.openai.com".to_owned(),
            chat_model: set("AIOS_OPENAI_MODEL").unwrap_or_else(|| "gpt-4o-mini".to_owned()),
            embed_model: None,
            image: None,
        });
    }
    extra
}

fn print_outcome(outcome: &aios_e2e::local::Outcome) {
    println!("\n{}", outcome.summary.trim_end());
    println!(
        "\nThe delivery repository {}:\n{}",
        outcome.repository.display(),
        outcome.git_log.trim_end()
    );
    if let Some(usage) = outcome.project.status.as_ref().map(|s| &s.usage) {
        let ratio = usage
            .local_ratio()
            .map_or_else(|| "n/a".to_owned(), |r| format!("{:.0}%", r * 100.0));
        println!(
            "\nUsage: {} tokens in, {} out; {} local and {} cloud requests (local ratio {ratio}); ${:.4}",
            usage.input_tokens,
            usage.output_tokens,
            usage.local_requests,
            usage.cloud_requests,
            usage.cost_usd
        );
    }
    println!("Logs: {}", outcome.logs.display());
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env = match Environment::load(&args.state) {
        Ok(env) => env,
        Err(err) => {
            eprintln!(
                "aios-local: loading the environment in {}: {err}",
                args.state.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let project = match std::fs::read_to_string(&args.project) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("aios-local: reading {}: {err}", args.project.display());
            return ExitCode::FAILURE;
        }
    };
    // On the node the model is served by a pod from the local model-server image, unless
    // a model server is named (the scripted one, on the node's address).
    let image = if args.pods && args.model_url.is_none() {
        let Some((_, image)) = aios_e2e::binaries::model_server_image() else {
            eprintln!(
                "aios-local: the model-server image is not built (e2e/model/build.sh, then e2e/model/image.sh)"
            );
            return ExitCode::FAILURE;
        };
        Some(image)
    } else {
        None
    };
    let mut models = vec![ModelServer {
        name: "local".to_owned(),
        provider_type: "Ollama".to_owned(),
        tier: "Local".to_owned(),
        priority: 1,
        url: args.model_url.unwrap_or_default(),
        chat_model: args.chat_model,
        embed_model: args.embed_model,
        image,
    }];
    models.extend(extra_models());
    let namespace = "aios-local".to_owned();
    let amqp_url = match env.create_vhost(&namespace) {
        Ok(url) => url,
        Err(err) => {
            eprintln!("aios-local: creating the RabbitMQ vhost: {err}");
            return ExitCode::FAILURE;
        }
    };
    let run = LocalRun {
        namespace,
        amqp_url,
        bin_dir: args.bin_dir,
        work_dir: args.work_dir,
        models,
        project,
        timeout: Duration::from_secs(args.timeout_seconds),
        verbose: true,
        agents_in_pods: args.pods,
        operator: if args.pods {
            Operator::Chart
        } else {
            Operator::Process
        },
        ..LocalRun::default()
    };
    match run.run(&env) {
        Ok(outcome) => {
            print_outcome(&outcome);
            let verification = outcome
                .project
                .status
                .as_ref()
                .and_then(|s| s.verification.as_ref());
            match verification {
                Some(v) => println!(
                    "\nThe Project Succeeded, verified: `{}` passed on {}.",
                    v.command,
                    v.commit.as_deref().unwrap_or("the branch head")
                ),
                None => println!("\nThe Project Succeeded (not verified: it has no spec.verify)."),
            }
            ExitCode::SUCCESS
        }
        Err(LocalError::Project {
            phase,
            message,
            outcome,
        }) => {
            print_outcome(&outcome);
            eprintln!("\naios-local: the Project ended {phase}: {message}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("aios-local: {err}");
            ExitCode::FAILURE
        }
    }
}
