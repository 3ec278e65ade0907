//! TLS to RabbitMQ and Redis with a private CA: the environment's listeners present a
//! certificate its own throwaway CA signed. Trusting that CA, the bus and a Redis client
//! connect; trusting another CA (or only the system's roots), they fail, and the bus's
//! error names the endpoint (without its password) and the certificate problem.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use aios_bus::{Bus, CaBundle, tls};

/// A CA of nobody's: certificates the environment presents were not signed by it.
fn stranger_ca() -> CaBundle {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "a stranger's CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    CaBundle::from_pem(cert.pem(), "the stranger's CA").unwrap()
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bus_connects_over_amqps_only_when_it_trusts_the_servers_ca() {
    install_crypto();
    let env = aios_e2e::shared();
    let ca = CaBundle::read(env.ca_file.as_deref().expect("the environment's CA")).unwrap();
    let vhost = format!("tls-{}", std::process::id());
    let url = env
        .over_tls(&env.create_vhost(&vhost).unwrap())
        .expect("a TLS listener");
    assert!(url.starts_with("amqps://guest:guest@127.0.0.1:"), "{url}");

    // Trusted: it connects and declares the topology over TLS.
    let bus = Bus::connect_once(&url, Some(&ca)).await.unwrap();
    assert!(bus.is_connected());
    bus.close().await;

    // The wrong CA, or none but the system's roots: refused, naming the endpoint.
    let endpoint = url.replacen("guest:guest@", "", 1);
    for trusted in [Some(stranger_ca()), None] {
        let err = Bus::connect_once(&url, trusted.as_ref())
            .await
            .expect_err("an untrusted certificate is refused");
        let message = err.to_string();
        assert!(
            message.contains(&format!("connecting to RabbitMQ at {endpoint}")),
            "{message}"
        );
        assert!(
            message.to_lowercase().contains("certificate") || message.contains("UnknownIssuer"),
            "the cause is said: {message}"
        );
        assert!(!message.contains("guest:guest"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_answers_over_rediss_only_when_the_client_trusts_its_ca() {
    install_crypto();
    let env = aios_e2e::shared();
    let ca = CaBundle::read(env.ca_file.as_deref().expect("the environment's CA")).unwrap();
    let url = env.rediss_url.clone().expect("a TLS listener");

    let client = tls::redis_client(&url, Some(&ca)).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(pong, "PONG");

    let client = tls::redis_client(&url, Some(&stranger_ca())).unwrap();
    let err = client
        .get_multiplexed_async_connection()
        .await
        .expect_err("an untrusted certificate is refused");
    assert!(
        err.to_string().to_lowercase().contains("certificate")
            || err.to_string().contains("UnknownIssuer"),
        "{err}"
    );
}
