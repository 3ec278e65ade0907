//! Passes the operator asks for itself. When the event consumer writes an agent's
//! outcome, the Project it belongs to gets a pass at once, rather than when the Task
//! watch shows the write: under load the watch runs seconds behind the writes (twenty
//! Projects finishing 2,000 tasks at once), and the dependents of the outcome would wait
//! that long for a pass that has all it needs in the Task index already.
//!
//! A nudge is a hint: lost (shutting down) or merged with a pass already asked for, it
//! costs only the wait for the watch, which still asks for the pass too.

use std::sync::{Mutex, PoisonError};

use aios_crds::{Project, Task};
use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;

/// The Projects whose passes the operator asked for, until the Project controller takes
/// them.
#[derive(Debug)]
pub struct Nudges {
    sender: mpsc::UnboundedSender<ObjectRef<Project>>,
    /// The other end, until [`Nudges::take`].
    receiver: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<Project>>>>,
}

impl Default for Nudges {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded();
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Nudges {
    /// Asks for a pass of `task`'s Project.
    pub fn nudge(&self, task: &Task) {
        if let Some(project) = super::project_of(task) {
            // Closed only when the controller has gone: the operator is stopping.
            let _ = self.sender.unbounded_send(project);
        }
    }

    /// The Projects asked for, as a stream for the Project controller; empty after the
    /// first call.
    pub fn take(&self) -> impl futures::Stream<Item = ObjectRef<Project>> + Send + 'static {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        futures::StreamExt::flatten(futures::stream::iter(receiver))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::testing::task;

    #[tokio::test]
    async fn a_nudge_names_the_tasks_project_once_taken() {
        let nudges = Nudges::default();
        nudges.nudge(&task("a", &[]));
        let mut asked = Box::pin(nudges.take());
        let project = asked.next().await.unwrap();
        assert_eq!(project.name, "shop");
        assert_eq!(project.namespace.as_deref(), Some("team-a"));
        // Taken once: a second taker gets nothing.
        assert!(nudges.take().next().await.is_none());
    }
}
