//! The CustomResourceDefinitions, generated from the types: the single source the Helm
//! chart, the plain manifests and the tests install.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{Agent, ModelProvider, Project, Task};

/// First line of every generated file.
pub const GENERATED_HEADER: &str =
    "# Generated from crds/src by `cargo run -p aios-crds --bin crdgen`. Do not edit.\n";

/// Where the Helm chart keeps its copy of the CRDs, relative to the `crds/` folder: a
/// chart reads only files inside itself, so the copy is generated with the original.
pub const CHART_CRDS_DIR: &str = "../charts/aios/files/crds";

/// Every AIOS CustomResourceDefinition, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Project::crd(),
        Task::crd(),
        Agent::crd(),
        ModelProvider::crd(),
    ]
}

/// The file a CRD is written to: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.{}.yaml", crd.spec.names.plural, crd.spec.group)
}

/// A CRD as the YAML document committed under `crds/`. Object keys are sorted: whether
/// `serde_json` keeps insertion order is a feature another crate of the build may turn
/// on, and the file must not depend on what else is built.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml_ng::Error> {
    let mut value =
        serde_json::to_value(crd).map_err(<serde_yaml_ng::Error as serde::ser::Error>::custom)?;
    sort_keys(&mut value);
    Ok(format!(
        "{GENERATED_HEADER}{}",
        serde_yaml_ng::to_string(&value)?
    ))
}

fn sort_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.sort_keys();
            map.values_mut().for_each(sort_keys);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(sort_keys),
        _ => {}
    }
}
