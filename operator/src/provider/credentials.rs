//! Whether a Secret may be used as a credential, and where: its owner says so on the
//! Secret (label [`labels::CREDENTIAL_TYPE`], `git` or `model`; annotation
//! [`annotations::CREDENTIAL_HOSTS`], the hosts it may be sent to), and it is only ever
//! sent over `https://`. Without that, creating a Project or a ModelProvider would be
//! enough to send any Secret of the namespace to a server of one's choosing.
//!
//! [`check`] is the pure decision; [`fetch`] finds the Secret and applies it. A refusal
//! names the Secret and the host, never the Secret's value.
//!
//! The operator reads no Secret by name: it watches only the Secrets that carry the
//! label (a label-selected watch, [`watch_config`]) and looks credentials up in that
//! cache. A Secret without the label is never fetched, so its value never reaches the
//! operator at all.

use aios_crds::{
    common::SecretKeyRef,
    names::{annotations, labels},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    ResourceExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};

/// The reason a refused use carries in conditions and Task failures.
pub const REFUSED: &str = "CredentialRefused";
/// The reason when the Secret or its key is missing.
pub const UNAVAILABLE: &str = "CredentialUnavailable";

/// What a credential is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A Project's repository token.
    Git,
    /// A ModelProvider's API key.
    Model,
}

impl Use {
    fn label(self) -> &'static str {
        match self {
            Self::Git => labels::CREDENTIAL_GIT,
            Self::Model => labels::CREDENTIAL_MODEL,
        }
    }
}

/// The host of an `https://` URL, lower-cased; `None` for any other URL.
fn https_host(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    (parsed.scheme() == "https")
        .then(|| parsed.host_str().map(str::to_ascii_lowercase))
        .flatten()
}

/// Whether `secret` may be used for `purpose` with `url`; the error says why not, in a
/// sentence naming the Secret and the host.
pub fn check(secret: &Secret, purpose: Use, url: &str) -> Result<(), String> {
    let name = secret.name_any();
    let Some(host) = https_host(url) else {
        return Err(format!(
            "Secret {name:?} is sent only over https://, not to {:?}",
            aios_crds::text::without_userinfo(url)
        ));
    };
    let declared = secret.labels().get(labels::CREDENTIAL_TYPE);
    if declared.map(String::as_str) != Some(purpose.label()) {
        return Err(format!(
            "Secret {name:?} is not labelled {}={} (it says {}), so it is not sent to {host}",
            labels::CREDENTIAL_TYPE,
            purpose.label(),
            declared.map_or("nothing".to_owned(), |d| format!("{d:?}")),
        ));
    }
    let allowed = secret
        .annotations()
        .get(annotations::CREDENTIAL_HOSTS)
        .map(String::as_str)
        .unwrap_or_default();
    if allowed
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .any(|h| !h.is_empty() && h == host)
    {
        Ok(())
    } else {
        Err(format!(
            "Secret {name:?} may not be sent to {host}: its {} annotation lists {:?}",
            annotations::CREDENTIAL_HOSTS,
            allowed
        ))
    }
}

/// The watch of the Secrets the operator may read: those labelled
/// [`labels::CREDENTIAL_TYPE`], whatever its value ([`check`] judges the value).
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().labels(labels::CREDENTIAL_TYPE)
}

/// Why a credential could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The Secret's owner did not allow this use (see [`check`]), or the Secret is not
    /// one the operator reads.
    #[error("{0}")]
    Refused(String),
    /// The Secret has no such key.
    #[error("{0}")]
    Missing(String),
}

/// The Secret `reference` names in `namespace`, from `secrets` (the labelled Secrets'
/// cache), checked: it may be used for `purpose` with `url` and holds the key.
pub fn checked(
    secrets: &Store<Secret>,
    namespace: &str,
    reference: &SecretKeyRef,
    purpose: Use,
    url: &str,
) -> Result<std::sync::Arc<Secret>, CredentialError> {
    let Some(secret) = secrets.get(&ObjectRef::new(&reference.name).within(namespace)) else {
        return Err(CredentialError::Refused(format!(
            "Secret {:?} is not labelled {}={} or does not exist: the operator reads only \
             Secrets that carry the label, so it is not sent to {}",
            reference.name,
            labels::CREDENTIAL_TYPE,
            purpose.label(),
            https_host(url).unwrap_or_else(|| aios_crds::text::without_userinfo(url)),
        )));
    };
    check(&secret, purpose, url).map_err(CredentialError::Refused)?;
    if secret
        .data
        .as_ref()
        .is_some_and(|d| d.contains_key(&reference.key))
    {
        Ok(secret)
    } else {
        Err(CredentialError::Missing(format!(
            "Secret {:?} has no key {:?}",
            reference.name, reference.key
        )))
    }
}

/// The value of the key `reference` names, when [`checked`] allows it.
pub fn fetch(
    secrets: &Store<Secret>,
    namespace: &str,
    reference: &SecretKeyRef,
    purpose: Use,
    url: &str,
) -> Result<String, CredentialError> {
    let secret = checked(secrets, namespace, reference, purpose, url)?;
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&reference.key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned());
    Ok(value.unwrap_or_default())
}

/// Why `project`'s repository credential may not be used, as a reason and a message
/// (`None` when it names none, or its Secret allows git to the repository's host): the
/// agent would send it there.
pub fn refuse_repository_credential(
    secrets: &Store<Secret>,
    project: &aios_crds::Project,
) -> Option<(&'static str, String)> {
    let reference = project.spec.repository.secret_ref.as_ref()?;
    let namespace = project.namespace().unwrap_or_default();
    match checked(
        secrets,
        &namespace,
        reference,
        Use::Git,
        &project.spec.repository.url,
    ) {
        Ok(_) => None,
        Err(err @ CredentialError::Refused(_)) => {
            Some((REFUSED, format!("repository secretRef: {err}")))
        }
        Err(err @ CredentialError::Missing(_)) => {
            Some((UNAVAILABLE, format!("repository secretRef: {err}")))
        }
    }
}

/// Why an agent's credential request was not answered with the credential.
#[derive(Debug, thiserror::Error)]
pub enum GiveError {
    /// The request does not prove an attempt that needs this credential now, or the
    /// Secret's owner does not allow the use: nothing is given.
    #[error("{0}")]
    Refused(String),
    /// The credential may be given but cannot be had now (no such key; the API server
    /// failed): the agent may ask again.
    #[error("{0}")]
    Unavailable(String),
}

/// Answers an agent's request for a credential: the value of the Secret key it names,
/// when the request carries the token of the Task's current attempt, the Task uses that
/// credential for that purpose (its Project's repository Secret for git; the
/// `credentialsRef` of a ModelProvider of its namespace for a model), and the Secret
/// allows the use ([`check`]). Everything is read from the operator's caches but the
/// Project, which is read from the API server.
pub async fn give(
    ctx: &crate::runtime::context::Context,
    request: &aios_crds::credentials::CredentialRequest,
) -> Result<String, GiveError> {
    use aios_crds::credentials::Purpose;
    let refused = |why: String| GiveError::Refused(why);
    let Some(task) = crate::task::events::cached_task(ctx, &request.task) else {
        return Err(refused(format!(
            "no Task {}/{} with that uid",
            request.task.namespace, request.task.name
        )));
    };
    let verdict = ctx.attempt_key.verify(
        &crate::task::tokens::Attempt::of(&task, request.attempt),
        &request.token,
    );
    if verdict != crate::task::tokens::Verdict::Valid {
        ctx.metrics
            .rejected_messages
            .with_label_values(&["CredentialRequest", verdict.label()])
            .inc();
        return Err(refused(format!(
            "the request does not carry the token of attempt {} of Task {}/{} ({})",
            request.attempt,
            request.task.namespace,
            request.task.name,
            verdict.label()
        )));
    }
    let current = task.status.as_ref().map_or(0, |s| s.attempt);
    if i64::from(request.attempt) != i64::from(current)
        || crate::task::lifecycle::phase(&task).is_terminal()
    {
        return Err(refused(format!(
            "attempt {} is not the running attempt of Task {}/{}",
            request.attempt, request.task.namespace, request.task.name
        )));
    }
    let namespace = request.task.namespace.as_str();
    let checked_value = |purpose: Use, url: &str| {
        fetch(&ctx.credentials, namespace, &request.secret, purpose, url).map_err(|err| match err {
            CredentialError::Refused(why) => GiveError::Refused(why),
            CredentialError::Missing(why) => GiveError::Unavailable(why),
        })
    };
    match request.purpose {
        Purpose::Git => {
            let project =
                kube::Api::<aios_crds::Project>::namespaced(ctx.client.clone(), namespace)
                    .get_opt(&task.spec.project)
                    .await
                    .map_err(|e| {
                        GiveError::Unavailable(format!("reading the Task's Project: {e}"))
                    })?
                    .ok_or_else(|| {
                        refused(format!(
                            "the Task's Project {:?} does not exist",
                            task.spec.project
                        ))
                    })?;
            if project.spec.repository.secret_ref.as_ref() != Some(&request.secret) {
                return Err(refused(format!(
                    "Secret {:?} key {:?} is not the repository secretRef of Project {:?}",
                    request.secret.name, request.secret.key, task.spec.project
                )));
            }
            checked_value(Use::Git, &project.spec.repository.url)
        }
        Purpose::Model => {
            // Given when the Secret allows it for the endpoint of any provider naming it.
            let mut answer = Err(refused(format!(
                "no ModelProvider of namespace {namespace} names Secret {:?} key {:?}",
                request.secret.name, request.secret.key
            )));
            for endpoint in ctx
                .providers_of(namespace)
                .iter()
                .filter_map(|p| p.spec.endpoint.clone())
                .filter(|e| e.credentials_ref.as_ref() == Some(&request.secret))
            {
                answer = checked_value(Use::Model, &endpoint.url);
                if answer.is_ok() {
                    break;
                }
            }
            answer
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn secret(kind: Option<&str>, hosts: Option<&str>) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some("anthropic".to_owned());
        if let Some(kind) = kind {
            s.metadata.labels = Some(BTreeMap::from([(
                labels::CREDENTIAL_TYPE.to_owned(),
                kind.to_owned(),
            )]));
        }
        if let Some(hosts) = hosts {
            s.metadata.annotations = Some(BTreeMap::from([(
                annotations::CREDENTIAL_HOSTS.to_owned(),
                hosts.to_owned(),
            )]));
        }
        s
    }

    #[test]
    fn a_labelled_secret_goes_to_its_hosts_over_https_only() {
        let key = secret(Some("model"), Some("api.anthropic.com, API.OpenAI.com"));
        assert_eq!(check(&key, Use::Model, "https://api.anthropic.com"), Ok(()));
        assert_eq!(
            check(&key, Use::Model, "https://api.openai.com:443/v1"),
            Ok(()),
            "any port, any case"
        );
        for (url, needle) in [
            (
                "https://capture.example/v1",
                "may not be sent to capture.example",
            ),
            ("http://api.anthropic.com", "only over https://"),
            ("https://api.anthropic.com.evil.example", "may not be sent"),
            (
                "https://user@capture.example",
                "may not be sent to capture.example",
            ),
        ] {
            let err = check(&key, Use::Model, url).unwrap_err();
            assert!(
                err.contains(needle) && err.contains("\"anthropic\""),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn a_refusal_never_repeats_a_password_from_the_url() {
        let key = secret(Some("model"), Some("api.anthropic.com"));
        let err = check(&key, Use::Model, "http://user:hunter2@capture.example/v1").unwrap_err();
        assert!(
            err.contains("capture.example") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_is_used_only_for_what_its_label_says() {
        let model_key = secret(Some("model"), Some("git.example.com"));
        let err = check(&model_key, Use::Git, "https://git.example.com/a.git").unwrap_err();
        assert!(
            err.contains("not labelled aios.dev/credential-type=git"),
            "{err}"
        );
        let unlabelled = secret(None, Some("api.anthropic.com"));
        let err = check(&unlabelled, Use::Model, "https://api.anthropic.com").unwrap_err();
        assert!(err.contains("it says nothing"), "{err}");
        let no_hosts = secret(Some("git"), None);
        assert!(check(&no_hosts, Use::Git, "https://git.example.com/a.git").is_err());
    }

    #[test]
    fn credentials_come_from_the_labelled_secrets_cache_only() {
        let (store, mut writer) = kube::runtime::reflector::store::<Secret>();
        let mut key = secret(Some("model"), Some("api.anthropic.com"));
        key.metadata.namespace = Some("team-a".to_owned());
        key.data = Some(BTreeMap::from([(
            "apiKey".to_owned(),
            k8s_openapi::ByteString(b"sk-test\n".to_vec()),
        )]));
        writer.apply_watcher_event(&watcher::Event::Apply(key));
        let reference = |name: &str, key: &str| SecretKeyRef {
            name: name.to_owned(),
            key: key.to_owned(),
        };
        let url = "https://api.anthropic.com/v1";
        assert_eq!(
            fetch(
                &store,
                "team-a",
                &reference("anthropic", "apiKey"),
                Use::Model,
                url
            )
            .unwrap(),
            "sk-test"
        );
        // Not in the cache: unlabelled, absent, or of another namespace.
        for (namespace, name) in [("team-a", "db-password"), ("team-b", "anthropic")] {
            let err = fetch(
                &store,
                namespace,
                &reference(name, "apiKey"),
                Use::Model,
                url,
            )
            .unwrap_err();
            assert!(
                matches!(err, CredentialError::Refused(_))
                    && err.to_string().contains(&format!(
                        "{name:?} is not labelled aios.dev/credential-type=model"
                    ))
                    && err.to_string().contains("api.anthropic.com"),
                "{namespace}/{name}: {err}"
            );
        }
        let err = fetch(
            &store,
            "team-a",
            &reference("anthropic", "token"),
            Use::Model,
            url,
        )
        .unwrap_err();
        assert!(matches!(err, CredentialError::Missing(_)), "{err}");
    }
}
