use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = aios_agent::Config::parse();
    aios_agent::init_logging(config.log_format);
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("installing the TLS provider"))?;
    aios_agent::run(config).await
}
