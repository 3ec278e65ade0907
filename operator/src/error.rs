//! The error every controller's reconcile returns.

use crate::runtime::bus::BusError;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {0}")]
    Kube(#[source] kube::Error),
    /// Publishing to the bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// This replica does not lead.
    #[error("not the leader")]
    NotLeader,
    /// A cancel could not be made durable.
    #[error(transparent)]
    CancelMark(#[from] crate::task::cancels::CancelError),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

impl Error {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(_) => "kube",
            Self::Bus(e) => e.category(),
            Self::NotLeader => "not_leader",
            Self::CancelMark(_) => "redis",
        }
    }
}
