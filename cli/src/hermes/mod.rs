//! Hermes, the concierge: `aios new`. The conversation and the manifest are in
//! [`conversation`] and [`manifest`]; this module is the edge: the terminal, the
//! provider list, the memory store, and the output (print, write, apply).

pub mod conversation;
pub mod manifest;

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    sync::Arc,
};

use aios_crds::{ModelProvider, Project};
use aios_models::{
    llm::{
        NoRecorder,
        router::{Providers, RetryPolicy, Router},
    },
    memory::{self, Memory},
};
use clap::{Args, ValueEnum};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use crate::{
    Cli, CliError,
    cluster::{Cluster, Scope},
};

/// The field manager of what Hermes applies.
pub const FIELD_MANAGER: &str = "aios-cli";

/// How `aios new` prints the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ManifestFormat {
    /// YAML, for a GitOps repository.
    Yaml,
    /// JSON.
    Json,
}

/// `aios new`'s arguments.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// What to build, in plain language (skips the first question).
    #[arg(long)]
    pub brief: Option<String>,
    /// The git repository to deliver into (skips that question).
    #[arg(long)]
    pub repo: Option<String>,
    /// The repository's branch.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// The Project's name (default: the model proposes one).
    #[arg(long)]
    pub name: Option<String>,
    /// How to test the delivered code: becomes the Project's `verify.command`.
    #[arg(long)]
    pub test_command: Option<String>,
    /// The model providers, as the JSON list agents read (default: the namespace's
    /// ModelProviders that have an endpoint of their own).
    #[arg(long, env = "AIOS_PROVIDERS_FILE")]
    pub providers: Option<PathBuf>,
    /// An embedded memory store to recall earlier Projects from.
    #[arg(long, env = "AIOS_MEMORY_DIR")]
    pub memory_dir: Option<PathBuf>,
    /// A Qdrant server to recall earlier Projects from (the agents' shared memory).
    #[arg(long, env = "QDRANT_URL")]
    pub qdrant_url: Option<String>,
    /// Print the manifest (the default when neither --out nor --apply is given: YAML).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<ManifestFormat>,
    /// Write the manifest to DIR/<name>.yaml.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Apply the Project to the cluster (server-side, field manager `aios-cli`).
    #[arg(long)]
    pub apply: bool,
}

/// Runs `aios new`.
pub async fn run(cli: &Cli, args: &NewArgs, out: &mut (impl Write + Send)) -> Result<(), CliError> {
    if let Some(name) = &args.name {
        aios_crds::common::DnsLabel::new(name.clone())
            .map_err(|e| CliError::Usage(format!("--name {name:?}: {e}")))?;
    }
    // The cluster is needed to apply, and to read the providers when no file is given.
    let cluster = if args.apply || args.providers.is_none() {
        Some(Cluster::connect(cli.context.as_deref(), cli.namespace.as_deref()).await?)
    } else {
        None
    };
    let namespace = cluster
        .as_ref()
        .map(|c| c.namespace.clone())
        .or_else(|| cli.namespace.clone())
        .unwrap_or_else(|| "default".to_owned());
    let providers = match &args.providers {
        Some(path) => Providers::file(path.clone()),
        None => Providers::Fixed(cluster_providers(cluster.as_ref()).await?),
    };
    let router = Arc::new(
        Router::new(
            providers,
            RetryPolicy::default(),
            None,
            Arc::new(NoRecorder),
        )
        .map_err(|e| CliError::Model(format!("building the HTTP client: {e}")))?,
    );
    let memory = open_memory(args, router.clone()).await;
    let mut hermes = conversation::Hermes::new(router.as_ref(), memory.as_deref());
    let facts = manifest::Facts {
        brief: args.brief.clone().unwrap_or_default(),
        repository: args.repo.clone().unwrap_or_default(),
        branch: args.branch.clone(),
        namespace,
        name: args.name.clone(),
        test_command: args.test_command.clone(),
        answers: Vec::new(),
    };
    let interactive =
        std::io::stdin().is_terminal() && (args.brief.is_none() || args.repo.is_none());
    let mut stderr = std::io::stderr();
    let manifest = conversation::converse(
        &mut hermes,
        facts,
        interactive,
        &mut std::io::stdin().lock(),
        &mut stderr,
    )
    .await?;
    deliver(&manifest, args, cluster.as_ref(), out).await
}

/// Prints, writes and applies the manifest as asked.
async fn deliver(
    manifest: &manifest::Manifest,
    args: &NewArgs,
    cluster: Option<&Cluster>,
    out: &mut (impl Write + Send),
) -> Result<(), CliError> {
    let yaml = manifest::to_yaml(manifest)?;
    let name = manifest.project.name_any();
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, &yaml)?;
        eprintln!("Hermes: wrote {}", path.display());
    }
    match args.output {
        Some(ManifestFormat::Json) => {
            serde_json::to_writer_pretty(&mut *out, &manifest.object)?;
            writeln!(out)?;
        }
        Some(ManifestFormat::Yaml) => out.write_all(yaml.as_bytes())?,
        None if args.out.is_none() && !args.apply => out.write_all(yaml.as_bytes())?,
        None => {}
    }
    if args.apply {
        let cluster =
            cluster.ok_or_else(|| CliError::Usage("--apply needs a cluster".to_owned()))?;
        let api: Api<Project> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&manifest.object))
            .await
            .map_err(|e| match &e {
                kube::Error::Api(status) if status.code == 409 => CliError::Forbidden(format!(
                    "project {name} exists and another manager owns its fields ({}); choose another --name",
                    status.message
                )),
                _ => cluster.api_error::<Project>(&e, None),
            })?;
        writeln!(
            out,
            "project.aios.dev/{name} applied in namespace {}",
            cluster.namespace
        )?;
    }
    Ok(())
}

/// The namespace's ModelProviders that can be reached from here: those with an endpoint
/// of their own. A provider the operator serves in the cluster is reached through a
/// Service address this machine cannot resolve.
async fn cluster_providers(
    cluster: Option<&Cluster>,
) -> Result<Vec<aios_crds::model_provider::ProviderEntry>, CliError> {
    let Some(cluster) = cluster else {
        return Ok(Vec::new());
    };
    let providers: Vec<ModelProvider> = cluster.list(&Scope::default()).await?;
    let reachable: Vec<ModelProvider> = providers
        .into_iter()
        .filter(|p| p.spec.endpoint.is_some())
        .collect();
    let list = aios_crds::model_provider::provider_list(&reachable);
    if list.is_empty() {
        return Err(CliError::Model(format!(
            "no ready ModelProvider with an endpoint of its own in namespace {}. Not supported yet: \
             reaching a model server the operator runs in the cluster from outside it; pass \
             --providers FILE naming a reachable endpoint (for example through `kubectl port-forward`)",
            cluster.namespace
        )));
    }
    Ok(list)
}

/// Qdrant when a URL is given, else the embedded store when a directory is given, else
/// none; the router embeds. Memory is context: when it cannot be opened Hermes goes on
/// without it and says so.
async fn open_memory(args: &NewArgs, router: Arc<Router>) -> Option<Box<dyn Memory>> {
    let opened = match (&args.qdrant_url, &args.memory_dir) {
        (Some(url), _) => memory::qdrant::QdrantMemory::new(
            url,
            std::env::var("QDRANT_API_KEY").ok(),
            memory::COLLECTION,
            router,
        )
        .await
        .map(|m| Box::new(m) as Box<dyn Memory>),
        (None, Some(dir)) => {
            memory::edge::EdgeMemory::open(dir, router).map(|m| Box::new(m) as Box<dyn Memory>)
        }
        (None, None) => return None,
    };
    Some(opened.unwrap_or_else(|err| {
        eprintln!("Hermes: (memory unavailable, going without it: {err})");
        Box::new(memory::NoMemory)
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn manifest() -> manifest::Manifest {
        let facts = manifest::Facts {
            brief: "A todo API".into(),
            repository: "https://git.example/todo.git".into(),
            branch: "main".into(),
            namespace: "team-a".into(),
            ..manifest::Facts::default()
        };
        let draft = manifest::Draft {
            name: "todo-api".into(),
            description: "A todo API in Python.".into(),
            test_command: None,
        };
        manifest::build(&draft, &facts).unwrap()
    }

    fn args(line: &[&str]) -> NewArgs {
        let cli = Cli::try_parse_from(line).unwrap();
        match cli.command {
            crate::Command::New(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn out_writes_the_manifest_for_gitops_and_prints_nothing_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let out_dir = dir.path().join("manifests");
        let out_arg = out_dir.to_str().unwrap();
        let mut printed = Vec::new();
        deliver(
            &manifest(),
            &args(&["aios", "new", "--out", out_arg]),
            None,
            &mut printed,
        )
        .await
        .unwrap();
        assert!(printed.is_empty());
        let written = std::fs::read_to_string(out_dir.join("todo-api.yaml")).unwrap();
        let back: Project = serde_yaml_ng::from_str(&written).unwrap();
        assert_eq!(back.spec.repository.url, "https://git.example/todo.git");

        let mut printed = Vec::new();
        deliver(
            &manifest(),
            &args(&["aios", "new", "-o", "json"]),
            None,
            &mut printed,
        )
        .await
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&printed).unwrap();
        assert_eq!(json["metadata"]["name"], "todo-api");
        assert!(json["spec"].get("policy").is_none(), "only what was said");
    }

    #[tokio::test]
    async fn apply_without_a_cluster_is_a_usage_error_and_writes_nothing() {
        let mut printed = Vec::new();
        let err = deliver(
            &manifest(),
            &args(&["aios", "new", "--apply"]),
            None,
            &mut printed,
        )
        .await
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
