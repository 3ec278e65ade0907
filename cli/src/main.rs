use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = aios::Cli::parse();
    aios::run(&cli, &mut std::io::stdout().lock())?;
    Ok(())
}
