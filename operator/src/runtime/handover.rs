//! Work a pass hands over to be done beside it, by one writer task that drains it a
//! few items at a time (what waiting Tasks say, the Project statuses).

use std::sync::{Mutex, PoisonError};

use futures::{Future, StreamExt, stream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A queue of handed-over items and, until [`Handover::drain`] takes it, its other end.
#[derive(Debug)]
pub struct Handover<T> {
    queue: mpsc::UnboundedSender<T>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<T>>>,
}

impl<T> Default for Handover<T> {
    fn default() -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        Self {
            queue,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl<T> Handover<T> {
    /// Hands `item` over; gives it back when nothing drains the queue any more
    /// (shutting down).
    pub fn send(&self, item: T) -> Result<(), T> {
        self.queue
            .send(item)
            .map_err(|mpsc::error::SendError(item)| item)
    }

    /// The queue's other end, once: `None` after the first call.
    pub fn take(&self) -> Option<mpsc::UnboundedReceiver<T>> {
        self.receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Does `work` for each item handed over, `at_once` at a time, until `shutdown`;
    /// returns at once if another caller drains the queue already.
    pub async fn drain<F, Fut>(&self, at_once: usize, shutdown: CancellationToken, work: F)
    where
        F: FnMut(T) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Some(mut receiver) = self.take() else {
            return;
        };
        stream::poll_fn(|cx| receiver.poll_recv(cx))
            .take_until(shutdown.cancelled_owned())
            .for_each_concurrent(at_once, work)
            .await;
    }
}
