//! Credentials from the operator, one attempt at a time: the agent asks the operator's
//! credential endpoint for the Secret keys an attempt needs (its Project's repository
//! token, the API keys of the model providers the router may use), proving the attempt
//! with the token its dispatch carried. Agent pods carry no credential of their own, so
//! adding a model provider changes no pod, and an agent holds only what its Tasks used.
//!
//! Model keys are kept for the router (it reads them as `AIOS_SECRET_<SECRET>_<KEY>`,
//! falling back to the process environment); a repository token is returned to the
//! attempt that asked and not kept.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use aios_crds::{
    bus::TaskDispatch,
    common::SecretKeyRef,
    credentials::{CredentialRequest, CredentialResponse, PATH, Purpose},
    names::env::secret_variable,
};

use crate::llm::router::EnvLookup;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a request the operator could not answer is made.
const TRIES: u32 = 5;

/// Why a credential was not had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The operator refused: this attempt may not have it (the reason names the Secret).
    #[error("the operator refused Secret {secret:?} key {key:?}: {why}")]
    Refused {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
        /// The operator's reason.
        why: String,
    },
    /// The operator could not be asked, or could not answer now.
    #[error("asking the operator ({url}) for Secret {secret:?} key {key:?}: {why}")]
    Unavailable {
        /// The endpoint.
        url: String,
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
        /// What went wrong.
        why: String,
    },
}

/// Asks the operator for credentials and keeps the model keys it gave.
#[derive(Debug)]
pub struct CredentialBroker {
    http: reqwest::Client,
    url: String,
    /// Model keys given, by the variable the router reads them from.
    model_keys: Mutex<HashMap<String, String>>,
}

impl CredentialBroker {
    /// A broker asking the operator at `base` (`http://host:port`).
    pub fn new(base: &str) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(TIMEOUT).build()?,
            url: format!("{}{PATH}", base.trim_end_matches('/')),
            model_keys: Mutex::new(HashMap::new()),
        })
    }

    /// The value of `secret` for `purpose`, for attempt `dispatch`. An operator that
    /// cannot answer now (a standby replica behind the same Service, a restart) is asked
    /// again, up to [`TRIES`] times, a second apart; a refusal is final.
    pub async fn ask(
        &self,
        dispatch: &TaskDispatch,
        purpose: Purpose,
        secret: &SecretKeyRef,
    ) -> Result<String, CredentialError> {
        let mut tried = 1;
        loop {
            match self.ask_once(dispatch, purpose, secret).await {
                Err(CredentialError::Unavailable { .. }) if tried < TRIES => {
                    tried += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                answer => return answer,
            }
        }
    }

    async fn ask_once(
        &self,
        dispatch: &TaskDispatch,
        purpose: Purpose,
        secret: &SecretKeyRef,
    ) -> Result<String, CredentialError> {
        let unavailable = |why: String| CredentialError::Unavailable {
            url: self.url.clone(),
            secret: secret.name.clone(),
            key: secret.key.clone(),
            why,
        };
        let request = CredentialRequest {
            task: dispatch.task.clone(),
            attempt: dispatch.attempt,
            token: dispatch.token.clone(),
            purpose,
            secret: secret.clone(),
        };
        let response = self
            .http
            .post(&self.url)
            .json(&request)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = response.status();
        let answer: CredentialResponse = response
            .json()
            .await
            .map_err(|e| unavailable(format!("HTTP {status}, not an answer: {e}")))?;
        match (status.as_u16(), answer.value) {
            (200, Some(value)) => {
                if purpose == Purpose::Model {
                    self.model_keys
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(secret_variable(&secret.name, &secret.key), value.clone());
                }
                Ok(value)
            }
            (403, _) => {
                // A key refused now is not used from an earlier answer either.
                if purpose == Purpose::Model {
                    self.model_keys
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&secret_variable(&secret.name, &secret.key));
                }
                Err(CredentialError::Refused {
                    secret: secret.name.clone(),
                    key: secret.key.clone(),
                    why: answer.refused.unwrap_or_default(),
                })
            }
            _ => Err(unavailable(format!(
                "HTTP {status}: {}",
                answer.refused.unwrap_or_default()
            ))),
        }
    }

    /// Asks for the key of each model provider in `providers` that names one, keeping
    /// those given for the router; a refusal or failure is logged, and that provider's
    /// calls then go without its key (and fail over to the next provider).
    pub async fn ask_model_keys(&self, dispatch: &TaskDispatch, providers: &[SecretKeyRef]) {
        for secret in providers {
            if let Err(err) = self.ask(dispatch, Purpose::Model, secret).await {
                tracing::warn!(error = %err, "a model provider's key was not given");
            }
        }
    }

    /// How the router reads API keys: the model keys given, else the process
    /// environment (an Agent's `env` may still set one).
    pub fn env_lookup(self: &std::sync::Arc<Self>) -> EnvLookup {
        let broker = self.clone();
        std::sync::Arc::new(move |name| {
            broker
                .model_keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok().filter(|v| !v.is_empty()))
        })
    }
}
