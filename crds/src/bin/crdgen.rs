//! Writes the CRD YAML under `crds/` from the types, and the Helm chart's copy under
//! `charts/aios/files/crds/`, or checks that both are current.

use std::{fs, path::PathBuf, process::ExitCode};

use aios_crds::generate;
use clap::Parser;

/// Generate `crds/<plural>.aios.dev.yaml` from the AIOS API types.
#[derive(Debug, Parser)]
struct Args {
    /// Directory to write to; the crate's directory (`cargo run` sets
    /// `CARGO_MANIFEST_DIR`) when unset.
    #[arg(env = "CARGO_MANIFEST_DIR")]
    dir: PathBuf,
    /// Write nothing; exit 1 if any file differs from what the types generate.
    #[arg(long)]
    check: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let mut stale = Vec::new();
    let chart_dir = args.dir.join(generate::CHART_CRDS_DIR);
    for crd in generate::crds() {
        let yaml = generate::to_yaml(&crd)?;
        for dir in [&args.dir, &chart_dir] {
            let path = dir.join(generate::file_name(&crd));
            if args.check {
                if fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    stale.push(path);
                }
            } else {
                fs::write(&path, &yaml)?;
                println!("wrote {}", path.display());
            }
        }
    }
    if stale.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for path in &stale {
        eprintln!("{} is out of date", path.display());
    }
    eprintln!("run `cargo run -p aios-crds --bin crdgen` and commit the result");
    Ok(ExitCode::FAILURE)
}
