//! The committed CRD YAML is exactly what the types generate.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::{fs, path::PathBuf};

use aios_crds::generate;

#[test]
fn committed_crd_yaml_matches_the_types() {
    // At run time: the build cache may be shared with another clone.
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // The Helm chart's copy too: one source, no second copy drifting.
    let chart = dir.join(generate::CHART_CRDS_DIR);
    for (crd, dir) in generate::crds()
        .into_iter()
        .flat_map(|crd| [(crd.clone(), dir.clone()), (crd, chart.clone())])
    {
        let path = dir.join(generate::file_name(&crd));
        let committed = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} is missing ({e}); run crdgen", path.display()));
        let generated = generate::to_yaml(&crd).unwrap();
        assert!(
            committed == generated,
            "{} differs from what the types generate; run `cargo run -p aios-crds --bin crdgen` and commit",
            path.display()
        );
    }
}

#[test]
fn every_crd_is_namespaced_in_the_aios_group_and_category() {
    let crds = generate::crds();
    let names: Vec<_> = crds.iter().map(|c| c.spec.names.kind.as_str()).collect();
    assert_eq!(names, ["Project", "Task", "Agent", "ModelProvider"]);
    for crd in &crds {
        assert_eq!(crd.spec.group, "aios.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["aios".to_owned()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(
            subresources.status.is_some(),
            "{} has no status subresource",
            crd.spec.names.kind
        );
    }
    let short: Vec<_> = crds
        .iter()
        .map(|c| {
            c.spec
                .names
                .short_names
                .clone()
                .unwrap_or_default()
                .join(",")
        })
        .collect();
    assert_eq!(short, ["proj", "tk", "ag", "mp"]);
}
