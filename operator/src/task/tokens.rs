//! Per-attempt tokens: what makes an agent's report believable.
//!
//! Every namespace's agents share one bus, so the bus cannot tell who sent a message.
//! Each dispatch therefore carries a token, an HMAC-SHA256 of exactly one attempt (the
//! Task's namespace, name, uid and role, and the attempt number) under a key only the
//! operator holds. An agent sends the token back with each event about that attempt.
//! The operator recomputes it from the Task it reads, not from what the event claims:
//! an agent holding the token of its own attempt cannot derive one for another attempt,
//! Task, role or namespace, and an event without the right token changes nothing.
//!
//! The key lives in a Secret in the operator's namespace, made by the first leader
//! (32 random bytes) and read by every later one, so tokens outlive a restart or a
//! change of leader.

use std::fmt;

use aios_crds::Task;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, Client, ResourceExt, api::PostParams};
use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};

/// How long the key is, in bytes (the HMAC-SHA256 block size recommends at least 32).
pub const KEY_BYTES: usize = 32;
/// The Secret's data key that holds the key.
pub const SECRET_DATA_KEY: &str = "key";
/// Binds a token to its purpose and this scheme's version.
const DOMAIN: &[u8] = b"aios.dev/attempt-token/v1";

/// The attempt a token vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    /// The Task's namespace.
    pub namespace: &'a str,
    /// The Task's name.
    pub name: &'a str,
    /// The Task's uid.
    pub uid: &'a str,
    /// The role the Task was dispatched to.
    pub role: &'a str,
    /// The attempt number.
    pub attempt: u32,
}

impl<'a> Attempt<'a> {
    /// Attempt `attempt` of `task`, as the Task object says (never as a message says).
    pub fn of(task: &'a Task, attempt: u32) -> Self {
        Self {
            namespace: task.metadata.namespace.as_deref().unwrap_or_default(),
            name: task.metadata.name.as_deref().unwrap_or_default(),
            uid: task.metadata.uid.as_deref().unwrap_or_default(),
            role: task.spec.role.as_str(),
            attempt,
        }
    }

    /// The bytes signed: each field length-prefixed, so no two attempts share them.
    fn message(&self) -> Vec<u8> {
        let attempt = self.attempt.to_string();
        let mut out = Vec::with_capacity(DOMAIN.len() + 128);
        for field in [
            DOMAIN,
            self.namespace.as_bytes(),
            self.name.as_bytes(),
            self.uid.as_bytes(),
            self.role.as_bytes(),
            attempt.as_bytes(),
        ] {
            out.extend_from_slice(&(field.len() as u64).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

/// What a received token came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The token is the attempt's.
    Valid,
    /// The message carries no token (an agent older than tokens, or a forgery).
    Missing,
    /// The token is not the attempt's.
    Forged,
}

impl Verdict {
    /// A bounded label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Missing => "missing_token",
            Self::Forged => "bad_token",
        }
    }
}

/// The operator's signing key.
pub struct AttemptKey(hmac::Key);

impl fmt::Debug for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttemptKey(..)")
    }
}

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The Secret exists but does not hold a usable key.
    #[error(
        "Secret {namespace}/{name} must hold a key of at least {KEY_BYTES} bytes under {SECRET_DATA_KEY:?}; delete it to have a new one made (agents' in-flight attempts are then retried)"
    )]
    Unusable {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
    /// No randomness for a new key.
    #[error("the system gave no randomness for a new key")]
    Random,
    /// The API server failed.
    #[error("reading or creating the token key Secret {namespace}/{name}")]
    Kube {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

impl AttemptKey {
    /// A key from its bytes; `None` when they are too few.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= KEY_BYTES).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// A fresh random key's bytes.
    pub fn generate() -> Result<[u8; KEY_BYTES], KeyError> {
        let mut bytes = [0u8; KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(bytes)
    }

    /// The token of `attempt`.
    pub fn sign(&self, attempt: &Attempt<'_>) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.0, &attempt.message()).as_ref())
    }

    /// Whether `token` is the token of `attempt` (compared in constant time).
    pub fn verify(&self, attempt: &Attempt<'_>, token: &str) -> Verdict {
        if token.is_empty() {
            return Verdict::Missing;
        }
        match URL_SAFE_NO_PAD.decode(token) {
            Ok(tag) if hmac::verify(&self.0, &attempt.message(), &tag).is_ok() => Verdict::Valid,
            _ => Verdict::Forged,
        }
    }

    /// Reads the key from Secret `namespace/name`, making the Secret with a random key
    /// when there is none (a replica racing to make it reads the winner's).
    pub async fn load_or_create(
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Self, KeyError> {
        let api = Api::<Secret>::namespaced(client.clone(), namespace);
        let kube = |source| KeyError::Kube {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        };
        let secret = match api.get_opt(name).await.map_err(kube)? {
            Some(secret) => secret,
            None => match api.create(&PostParams::default(), &new_secret(name)?).await {
                Ok(created) => {
                    tracing::info!(%namespace, %name, "made a new key for attempt tokens");
                    created
                }
                Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await.map_err(kube)?,
                Err(err) => return Err(kube(err)),
            },
        };
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(SECRET_DATA_KEY))
            .and_then(|bytes| Self::from_bytes(&bytes.0))
            .ok_or_else(|| KeyError::Unusable {
                namespace: namespace.to_owned(),
                name: secret.name_any(),
            })
    }
}

/// The Secret that keeps a new random key; immutable, so it cannot be swapped under a
/// running operator.
fn new_secret(name: &str) -> Result<Secret, KeyError> {
    let key = AttemptKey::generate()?;
    Ok(Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_owned(),
                    "aios-operator".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some([(SECRET_DATA_KEY.to_owned(), ByteString(key.to_vec()))].into()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt<'a>(namespace: &'a str, name: &'a str, role: &'a str, n: u32) -> Attempt<'a> {
        Attempt {
            namespace,
            name,
            uid: "8c1e-uid",
            role,
            attempt: n,
        }
    }

    #[test]
    fn a_token_vouches_for_its_own_attempt_only() {
        let key = AttemptKey::from_bytes(&[7; KEY_BYTES]).unwrap();
        let own = attempt("team-a", "shop-api", "backend", 1);
        let token = key.sign(&own);
        assert_eq!(key.verify(&own, &token), Verdict::Valid);
        for other in [
            attempt("team-b", "shop-api", "backend", 1),
            attempt("team-a", "shop-ui", "backend", 1),
            attempt("team-a", "shop-api", "cto", 1),
            attempt("team-a", "shop-api", "backend", 2),
            Attempt {
                uid: "other-uid",
                ..own
            },
            // Moving bytes between fields does not make another attempt's message.
            attempt("team-as", "hop-api", "backend", 1),
        ] {
            assert_eq!(key.verify(&other, &token), Verdict::Forged, "{other:?}");
        }
        let other_key = AttemptKey::from_bytes(&[8; KEY_BYTES]).unwrap();
        assert_eq!(other_key.verify(&own, &token), Verdict::Forged);
        assert_eq!(key.verify(&own, ""), Verdict::Missing);
        assert_eq!(key.verify(&own, "not base64!"), Verdict::Forged);
        assert_eq!(key.verify(&own, &token[..token.len() - 2]), Verdict::Forged);
    }

    #[test]
    fn a_short_key_is_refused_and_generated_keys_differ() {
        assert!(AttemptKey::from_bytes(&[1; KEY_BYTES - 1]).is_none());
        assert_ne!(
            AttemptKey::generate().unwrap(),
            AttemptKey::generate().unwrap()
        );
    }
}
