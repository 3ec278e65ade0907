use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = aios_operator::Config::parse();
    aios_operator::run(&config)?;
    Ok(())
}
