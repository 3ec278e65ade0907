//! The operator's credential endpoint, as agents call it: an agent asks for one
//! credential its attempt needs, proving the attempt with the token its dispatch
//! carried. The operator gives it only when that attempt is the Task's current one and
//! the credential is one the Task uses (its Project's repository Secret, or the Secret
//! of a model provider of its namespace), and the Secret's owner allows the use. So an
//! agent pod holds no credential until a Task needs it, and never another namespace's.

use serde::{Deserialize, Serialize};

use crate::{bus::ObjectRef, common::SecretKeyRef};

/// The endpoint's path on the operator's HTTP port.
pub const PATH: &str = "/v1/credentials";

/// What a credential is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Purpose {
    /// The Project's repository token.
    Git,
    /// A model provider's API key.
    Model,
}

/// An agent's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialRequest {
    /// The Task the attempt is of.
    pub task: ObjectRef,
    /// The attempt.
    pub attempt: u32,
    /// The token the attempt's dispatch carried.
    pub token: String,
    /// What the credential is for.
    pub purpose: Purpose,
    /// The Secret key asked for.
    pub secret: SecretKeyRef,
}

/// The operator's answer: the credential, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialResponse {
    /// The Secret key's value, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Why it was refused, naming the Secret (never its value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Git => "git",
            Self::Model => "model",
        })
    }
}
