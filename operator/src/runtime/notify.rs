//! Waiting, until a deadline, for a condition that whoever changes it announces on a
//! [`Notify`] (a Task's lane hearing its agent's report, the urgent writes running out).

use tokio::{sync::Notify, time::Instant};

/// Whether `holds` is true by `deadline`, looked at again on each announcement on
/// `notify` (`notify_waiters`).
pub async fn holds_by(notify: &Notify, deadline: Instant, holds: impl Fn() -> bool) -> bool {
    let wait = async {
        loop {
            // Made before the look: an announcement in between is heard.
            let announced = notify.notified();
            if holds() {
                return;
            }
            announced.await;
        }
    };
    tokio::time::timeout_at(deadline, wait).await.is_ok()
}
