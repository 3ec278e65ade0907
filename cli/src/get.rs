//! `aios get` and `aios describe`: read from the cluster, print a view.

use std::io::Write;

use aios_crds::{Agent, ModelProvider, Project, Task};
use futures::StreamExt;
use kube::{Resource, ResourceExt, runtime::watcher};
use serde::de::DeserializeOwned;

use crate::{
    CliError, GetArgs, Kind, Output,
    cluster::{Cluster, Scope},
    view::{table, tree},
};

/// Runs `aios get`.
pub async fn get(
    cluster: &Cluster,
    args: &GetArgs,
    out: &mut (impl Write + Send),
) -> Result<(), CliError> {
    match args.kind {
        Kind::Projects => get_kind::<Project>(cluster, args, out).await,
        Kind::Tasks => get_kind::<Task>(cluster, args, out).await,
        Kind::Agents => get_kind::<Agent>(cluster, args, out).await,
        Kind::Providers => get_kind::<ModelProvider>(cluster, args, out).await,
    }
}

/// A kind `aios get` lists, prints and watches.
trait Listed:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + table::Columns
    + Clone
    + DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + 'static
{
}

impl<K> Listed for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + table::Columns
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static
{
}

async fn get_kind<K>(
    cluster: &Cluster,
    args: &GetArgs,
    out: &mut (impl Write + Send),
) -> Result<(), CliError>
where
    K: Listed,
{
    let scope = Scope {
        all_namespaces: args.all_namespaces,
        selector: args.selector.clone(),
    };
    if args.name.is_some() && args.all_namespaces {
        return Err(CliError::Usage(
            "a name and --all-namespaces do not go together: name the namespace with -n".to_owned(),
        ));
    }
    match args.output {
        Output::Json | Output::Yaml => {
            let mut items = cluster.list_raw::<K>(&scope).await?;
            if !args.show_managed_fields {
                for item in &mut items {
                    item.metadata.managed_fields = None;
                }
            }
            let value = if let Some(name) = &args.name {
                items.retain(|o| o.name_any() == *name);
                let Some(one) = items.pop() else {
                    return Err(not_found::<K>(cluster, name));
                };
                serde_json::to_value(one)?
            } else {
                serde_json::json!({
                    "apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": ""},
                    "items": items,
                })
            };
            print_value(&value, args.output, out)?;
        }
        Output::Table | Output::Wide | Output::Name => {
            let mut items: Vec<K> = cluster.list(&scope).await?;
            if let Some(name) = &args.name {
                items.retain(|o| o.name_any() == *name);
                if items.is_empty() {
                    return Err(not_found::<K>(cluster, name));
                }
            }
            if items.is_empty() && !args.watch {
                let place = if args.all_namespaces {
                    "any namespace".to_owned()
                } else {
                    format!("namespace {}", cluster.namespace)
                };
                eprintln!("No {} found in {place}.", K::plural(&()));
                return Ok(());
            }
            print_rows(&items, args, true, out)?;
        }
    }
    if args.watch {
        follow::<K>(cluster, &scope, args, out).await?;
    }
    Ok(())
}

fn not_found<K: Resource<DynamicType = ()>>(cluster: &Cluster, name: &str) -> CliError {
    let kind = K::kind(&()).to_lowercase();
    CliError::NotFound(format!(
        "{kind} {name} not found in namespace {}: list them with `aios get {} -n {}`",
        cluster.namespace,
        K::plural(&()),
        cluster.namespace
    ))
}

fn print_value(
    value: &serde_json::Value,
    output: Output,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if output == Output::Json {
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)?;
    } else {
        out.write_all(serde_yaml_ng::to_string(value)?.as_bytes())?;
    }
    Ok(())
}

fn print_rows<K>(
    items: &[K],
    args: &GetArgs,
    header: bool,
    out: &mut impl Write,
) -> Result<(), CliError>
where
    K: Resource<DynamicType = ()> + table::Columns,
{
    if args.output == Output::Name {
        for item in items {
            writeln!(
                out,
                "{}.{}/{}",
                K::kind(&()).to_lowercase(),
                K::group(&()),
                item.name_any()
            )?;
        }
        return Ok(());
    }
    let text = table::render(
        items,
        args.output == Output::Wide,
        args.all_namespaces,
        jiff::Timestamp::now(),
    );
    let body = if header {
        text.as_str()
    } else {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    };
    out.write_all(body.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `--watch`: every change after the listing, as rows (or objects) without headers.
async fn follow<K>(
    cluster: &Cluster,
    scope: &Scope,
    args: &GetArgs,
    out: &mut (impl Write + Send),
) -> Result<(), CliError>
where
    K: Listed,
{
    let mut stream = std::pin::pin!(cluster.watch::<K>(scope));
    let mut initial = true;
    while let Some(event) = stream.next().await {
        let object = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
            Ok(watcher::Event::InitDone) => {
                initial = false;
                continue;
            }
            // The listing already printed what the watch starts from.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Err(err) => {
                eprintln!("watch interrupted (retrying): {err}");
                continue;
            }
        };
        if initial {
            continue;
        }
        if args.name.as_ref().is_some_and(|n| *n != object.name_any()) {
            continue;
        }
        match args.output {
            Output::Json | Output::Yaml => {
                print_value(&serde_json::to_value(&object)?, args.output, out)?;
            }
            _ => print_rows(std::slice::from_ref(&object), args, false, out)?,
        }
        out.flush()?;
    }
    Ok(())
}

/// Runs `aios describe project NAME`.
pub async fn describe_project(
    cluster: &Cluster,
    name: &str,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let project: Project = cluster.get(name).await?;
    let tasks = cluster.project_tasks(name).await?;
    let events = cluster.project_events(&project, &tasks).await?;
    let text = tree::describe_project(&project, &tasks, &events, jiff::Timestamp::now());
    out.write_all(text.as_bytes())?;
    Ok(())
}
