use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = aios_agent::Config::parse();
    aios_agent::run(&config)?;
    Ok(())
}
