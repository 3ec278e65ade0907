//! The Kubernetes edge: the client from the kubeconfig (`KUBECONFIG`, `--context`),
//! and the lists and watches the views read. Nothing here formats anything.

use aios_crds::{Project, Task};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Event;
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams},
    config::KubeConfigOptions,
    runtime::{WatchStreamExt, watcher},
};
use serde::de::DeserializeOwned;

use crate::CliError;

/// A connection to the cluster the kubeconfig names, and the namespace to work in.
#[derive(Clone)]
pub struct Cluster {
    /// The API client.
    pub client: Client,
    /// `-n`, or the context's namespace, or `default`.
    pub namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Which objects to list.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Every namespace (`-A`).
    pub all_namespaces: bool,
    /// A label selector (`-l`).
    pub selector: Option<String>,
}

impl Scope {
    fn params(&self) -> ListParams {
        match &self.selector {
            Some(selector) => ListParams::default().labels(selector),
            None => ListParams::default(),
        }
    }
}

impl Cluster {
    /// Connects with the kubeconfig's `context` (its current one when `None`), in
    /// `namespace` when given.
    pub async fn connect(context: Option<&str>, namespace: Option<&str>) -> Result<Self, CliError> {
        let options = KubeConfigOptions {
            context: context.map(str::to_owned),
            ..KubeConfigOptions::default()
        };
        let config = match Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            // In a pod without a kubeconfig: the service account.
            Err(kubeconfig) if context.is_none() => Config::incluster().map_err(|_| {
                CliError::Kubeconfig(format!("{kubeconfig}; set KUBECONFIG or pass --context"))
            })?,
            Err(err) => return Err(CliError::Kubeconfig(err.to_string())),
        };
        let namespace = namespace.map_or_else(|| config.default_namespace.clone(), str::to_owned);
        let client = Client::try_from(config).map_err(|e| CliError::Kubeconfig(e.to_string()))?;
        Ok(Self { client, namespace })
    }

    /// The API of `K` in the namespace, or in all of them.
    pub fn api<K>(&self, all_namespaces: bool) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        if all_namespaces {
            Api::all(self.client.clone())
        } else {
            Api::namespaced(self.client.clone(), &self.namespace)
        }
    }

    /// The objects of `K` in `scope`, by namespace and name.
    pub async fn list<K>(&self, scope: &Scope) -> Result<Vec<K>, CliError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let params = scope.params();
        let mut items = self
            .api::<K>(scope.all_namespaces)
            .list(&params)
            .await
            .map_err(|e| self.api_error::<K>(&e, None))?
            .items;
        items.sort_by_key(|o| (o.namespace(), o.name_any()));
        Ok(items)
    }

    /// The objects of `K` in `scope` as the API server serves them, every field kept
    /// (`-o json|yaml`).
    pub async fn list_raw<K>(&self, scope: &Scope) -> Result<Vec<DynamicObject>, CliError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        let resource = ApiResource::erase::<K>(&Default::default());
        let api: Api<DynamicObject> = if scope.all_namespaces {
            Api::all_with(self.client.clone(), &resource)
        } else {
            Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
        };
        let params = scope.params();
        let mut items = api
            .list(&params)
            .await
            .map_err(|e| self.api_error::<K>(&e, None))?
            .items;
        for item in &mut items {
            item.types = Some(kube::api::TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            });
        }
        items.sort_by_key(|o| (o.namespace(), o.name_any()));
        Ok(items)
    }

    /// One object of `K` by name.
    pub async fn get<K>(&self, name: &str) -> Result<K, CliError>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        self.api::<K>(false)
            .get(name)
            .await
            .map_err(|e| self.api_error::<K>(&e, Some(name)))
    }

    /// The Tasks of Project `project`.
    pub async fn project_tasks(&self, project: &str) -> Result<Vec<Task>, CliError> {
        let tasks: Vec<Task> = self.list(&Scope::default()).await?;
        Ok(tasks
            .into_iter()
            .filter(|t| t.spec.project == project)
            .collect())
    }

    /// The Events of `project` and of its `tasks`.
    pub async fn project_events(
        &self,
        project: &Project,
        tasks: &[Task],
    ) -> Result<Vec<Event>, CliError> {
        let names: std::collections::HashSet<String> =
            tasks.iter().map(ResourceExt::name_any).collect();
        let events: Vec<Event> = self.list(&Scope::default()).await?;
        Ok(events
            .into_iter()
            .filter(|e| {
                let o = &e.involved_object;
                match (o.kind.as_deref(), o.name.as_deref()) {
                    (Some("Project"), Some(name)) => name == project.name_any(),
                    (Some("Task"), Some(name)) => names.contains(name),
                    _ => false,
                }
            })
            .collect())
    }

    /// Watches `K` in `scope`: every change; after an error it backs off and resumes
    /// (re-listing when its resource version is gone).
    pub fn watch<K>(
        &self,
        scope: &Scope,
    ) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
        <K as Resource>::DynamicType: Default,
    {
        let mut config = watcher::Config::default();
        if let Some(selector) = &scope.selector {
            config = config.labels(selector);
        }
        watcher(self.api::<K>(scope.all_namespaces), config)
            .default_backoff()
            .boxed()
    }

    /// Names `K`, `name` and the namespace in an API error, and says what to do.
    pub fn api_error<K: Resource>(&self, err: &kube::Error, name: Option<&str>) -> CliError
    where
        <K as Resource>::DynamicType: Default,
    {
        let kind = K::kind(&Default::default()).to_lowercase();
        match (err, name) {
            (kube::Error::Api(status), Some(name)) if status.is_not_found() => {
                CliError::NotFound(format!(
                    "{kind} {name} not found in namespace {}: list them with `aios get {kind}s -n {}`",
                    self.namespace, self.namespace
                ))
            }
            (kube::Error::Api(status), _) if status.code == 404 => CliError::NotFound(format!(
                "the API server does not serve {kind}s: install AIOS's CRDs (`aios crds | kubectl apply --server-side -f -`)"
            )),
            (kube::Error::Api(status), _) if status.code == 403 => CliError::Forbidden(format!(
                "not allowed to read {kind}s in namespace {}: {}",
                self.namespace, status.message
            )),
            _ => CliError::Api(format!(
                "reading {kind}s in namespace {}: {err}",
                self.namespace
            )),
        }
    }
}
