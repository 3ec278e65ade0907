//! `aios watch`: the live view. The watches and the keyboard feed the dashboard's
//! state ([`state`]); the frame is drawn from it ([`ui`]) when it changes, and each
//! second while something shown is running (its clock moves). No polling: every change
//! comes from a watch.

pub mod state;
pub mod ui;

use std::{io::Write, time::Duration};

use aios_crds::{Agent, Project, Task};
use clap::Args;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Event;
use kube::{Resource, runtime::watcher};
use serde::de::DeserializeOwned;
use state::{Change, Dashboard, Msg, Press};
use tokio::sync::mpsc;

use crate::{
    CliError,
    cluster::{Cluster, Scope},
};

/// `aios watch`'s arguments.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The Project to show first (default: the namespace's first).
    pub project: Option<String>,
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
    /// The frame's width with --once (default: the terminal's, else 80).
    #[arg(long, requires = "once")]
    pub width: Option<u16>,
    /// The frame's height with --once (default: the terminal's, else 24).
    #[arg(long, requires = "once")]
    pub height: Option<u16>,
}

/// Runs `aios watch`.
pub async fn run(
    cluster: &Cluster,
    args: &WatchArgs,
    out: &mut (impl Write + Send),
) -> Result<(), CliError> {
    let palette = ui::Palette::new(crate::no_color());
    let mut dashboard = Dashboard::new(&cluster.namespace, args.project.as_deref());
    if let Some(name) = &args.project {
        // Fails with what to do when the Project does not exist.
        let _: Project = cluster.get(name).await?;
    }
    if args.once {
        once(cluster, &mut dashboard).await?;
        let (columns, rows) = ratatui::crossterm::terminal::size().unwrap_or((80, 24));
        let text = ui::render_text(
            &dashboard,
            jiff::Timestamp::now(),
            args.width.unwrap_or(columns),
            args.height.unwrap_or(rows),
            palette,
        );
        out.write_all(text.as_bytes())?;
        return Ok(());
    }
    live(cluster, dashboard, palette).await
}

/// Fills `dashboard` from one list of each kind.
async fn once(cluster: &Cluster, dashboard: &mut Dashboard) -> Result<(), CliError> {
    let scope = Scope::default();
    let now = jiff::Timestamp::now();
    let mut events: Vec<Event> = cluster.list(&scope).await?;
    events.sort_by_key(crate::view::tree::event_time);
    let msgs = cluster
        .list::<Project>(&scope)
        .await?
        .into_iter()
        .map(|o| Msg::Project(Change::Applied(o)))
        .chain(
            cluster
                .list::<Agent>(&scope)
                .await?
                .into_iter()
                .map(|o| Msg::Agent(Change::Applied(o))),
        )
        .chain(
            cluster
                .list::<Task>(&scope)
                .await?
                .into_iter()
                .map(|o| Msg::Task(Change::Applied(o))),
        )
        .chain(events.into_iter().map(|e| Msg::Event(Box::new(e))));
    for msg in msgs {
        dashboard.apply(msg, now);
    }
    Ok(())
}

/// Forwards a watch of `K` as messages until the receiver is gone.
fn forward<K>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    tx: mpsc::Sender<Msg>,
    wrap: fn(Change<K>) -> Msg,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let msg = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    wrap(Change::Applied(o))
                }
                Ok(watcher::Event::Delete(o)) => wrap(Change::Deleted(o)),
                // After an error the watcher backs off and resumes on its own.
                Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(_) => continue,
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    });
}

/// The full-screen view until `q`.
async fn live(
    cluster: &Cluster,
    mut dashboard: Dashboard,
    palette: ui::Palette,
) -> Result<(), CliError> {
    let scope = Scope::default();
    let (tx, mut rx) = mpsc::channel(1024);
    forward(cluster.watch::<Project>(&scope), tx.clone(), Msg::Project);
    forward(cluster.watch::<Task>(&scope), tx.clone(), Msg::Task);
    forward(cluster.watch::<Agent>(&scope), tx.clone(), Msg::Agent);
    let events = cluster.watch::<Event>(&scope);
    let event_tx = tx.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e)) = event
                && event_tx.send(Msg::Event(Box::new(e))).await.is_err()
            {
                return;
            }
        }
    });
    let (redraw_tx, mut redraw) = mpsc::channel::<()>(16);
    spawn_keys(tx, redraw_tx);
    let mut terminal = ratatui::try_init()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut dirty = true;
    let result = loop {
        if dirty {
            let now = jiff::Timestamp::now();
            if let Err(err) = terminal.draw(|frame| ui::draw(frame, &dashboard, now, palette)) {
                break Err(CliError::Io(err));
            }
        }
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => dirty = dashboard.apply(msg, jiff::Timestamp::now()),
                None => break Ok(()),
            },
            Some(()) = redraw.recv() => dirty = true,
            _ = tick.tick(), if dashboard.ticking() => dirty = true,
        }
        if dashboard.quit {
            break Ok(());
        }
    };
    ratatui::try_restore()?;
    result
}

/// Reads the keyboard on a thread of its own (crossterm's reads block).
fn spawn_keys(tx: mpsc::Sender<Msg>, redraw: mpsc::Sender<()>) {
    use ratatui::crossterm::event::{self, Event as Input, KeyCode, KeyEventKind, KeyModifiers};
    std::thread::spawn(move || {
        loop {
            let Ok(input) = event::read() else { return };
            let press = match input {
                Input::Key(key) if key.kind == KeyEventKind::Press => match key.code {
                    KeyCode::Char('q') => Press::Quit,
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        Press::Quit
                    }
                    KeyCode::Esc => Press::Back,
                    KeyCode::Enter => Press::Details,
                    KeyCode::Up | KeyCode::Char('k') => Press::Up,
                    KeyCode::Down | KeyCode::Char('j') => Press::Down,
                    KeyCode::Right | KeyCode::Tab | KeyCode::Char('l') => Press::NextProject,
                    KeyCode::Left | KeyCode::BackTab | KeyCode::Char('h') => Press::PreviousProject,
                    _ => continue,
                },
                Input::Resize(..) => {
                    if redraw.blocking_send(()).is_err() {
                        return;
                    }
                    continue;
                }
                _ => continue,
            };
            if tx.blocking_send(Msg::Key(press)).is_err() {
                return;
            }
        }
    });
}
