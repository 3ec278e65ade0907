//! The Project passes a Task's change calls for soon rather than now
//! ([`crate::runtime::index::Urgency::Soon`]): a change that can only move the Project's
//! status, which is written at most once every [`SOON`] anyway. Each Project asked for
//! within a period gets one pass at the period's end, however many changes asked: a
//! layer of a hundred outcomes was a hundred passes over the Project's Tasks, of which
//! the last, the one that dispatches the next layer, is called for now.

use std::{collections::HashSet, hash::Hash, time::Duration};

use futures::{Stream, StreamExt, stream};

/// At most how long a pass called for soon waits: the Project status writer's interval.
pub const SOON: Duration = crate::project::status::MIN_INTERVAL;

/// `asked`, each item let through once per `every` at most: those asked for within a
/// period come out together at its end, each once; the rest when `asked` ends.
pub fn coalesced<T>(
    asked: impl Stream<Item = T> + Send + Unpin + 'static,
    every: Duration,
) -> impl Stream<Item = T> + Send + 'static
where
    T: Eq + Hash + Send + 'static,
{
    // The first period ends a period from now, not at once.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (asked.fuse(), HashSet::new(), Vec::new(), tick);
    stream::unfold(
        state,
        |(mut asked, mut waiting, mut due, mut tick)| async move {
            loop {
                if let Some(next) = due.pop() {
                    return Some((next, (asked, waiting, due, tick)));
                }
                tokio::select! {
                    // The period's end first: a steady stream of asks cannot hold it off.
                    biased;
                    _ = tick.tick() => due.extend(waiting.drain()),
                    item = asked.next() => match item {
                        Some(item) => {
                            waiting.insert(item);
                        }
                        None if waiting.is_empty() => return None,
                        None => due.extend(waiting.drain()),
                    },
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn each_project_asked_for_within_a_period_comes_out_once_at_its_end() {
        let (tx, rx) = mpsc::unbounded::<&str>();
        let start = Instant::now();
        let mut out = Box::pin(coalesced(rx, Duration::from_secs(1)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        for project in ["shop", "blog", "shop", "shop"] {
            tx.unbounded_send(project).unwrap();
        }
        let mut first = vec![out.next().await.unwrap(), out.next().await.unwrap()];
        first.sort_unstable();
        assert_eq!(first, ["blog", "shop"], "each once");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "at the period's end"
        );

        // Asked again within the next period: once more, at its end.
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.unbounded_send("shop").unwrap();
        let asked = Instant::now();
        assert_eq!(out.next().await, Some("shop"));
        assert_eq!(asked.elapsed(), Duration::from_millis(700));

        // Those still waiting when asking ends come out; then the stream ends.
        tx.unbounded_send("blog").unwrap();
        drop(tx);
        let asked = Instant::now();
        assert_eq!(out.next().await, Some("blog"));
        assert_eq!(out.next().await, None);
        assert_eq!(asked.elapsed(), Duration::ZERO);
    }
}
