use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // reqwest's TLS needs a process-wide crypto provider: ring, as kube's client uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = aios_operator::Config::parse();
    aios_operator::init_tracing(&config.log_format);
    let shutdown = CancellationToken::new();
    aios_operator::cancel_on_signal(shutdown.clone());
    aios_operator::run(config, shutdown).await?;
    Ok(())
}
