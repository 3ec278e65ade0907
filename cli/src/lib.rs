//! `aios`: Hermes, the concierge. People use it to turn a conversation into a Project
//! manifest and to watch the operator's work. So far it installs AIOS's API: `aios crds`
//! prints the CustomResourceDefinitions for `kubectl apply -f -`.

use std::io::Write;

use aios_crds::generate;
use clap::{Parser, Subcommand};

/// The `aios` command line.
#[derive(Debug, Parser)]
#[command(name = "aios", version, about = "Hermes, the AIOS concierge")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `aios` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print AIOS's CustomResourceDefinitions as YAML: `aios crds | kubectl apply --server-side -f -`.
    Crds,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A CRD could not be rendered.
    #[error("rendering the CRDs")]
    Render(#[from] serde_yaml_ng::Error),
    /// The output could not be written.
    #[error("writing the output")]
    Write(#[from] std::io::Error),
}

/// Runs one command, writing its output to `out`.
pub fn run(cli: &Cli, out: &mut impl Write) -> Result<(), CliError> {
    match cli.command {
        Command::Crds => {
            for (i, crd) in generate::crds().iter().enumerate() {
                if i > 0 {
                    writeln!(out, "---")?;
                }
                out.write_all(generate::to_yaml(crd)?.as_bytes())?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_prints_every_crd_as_one_multi_document_stream() {
        let mut out = Vec::new();
        run(
            &Cli {
                command: Command::Crds,
            },
            &mut out,
        )
        .unwrap();
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
}
