//! The live view's frame, drawn from the dashboard's state: a header, a panel per
//! agent, the Project's tasks by DAG level, the feed, and a footer with usage and
//! queues. Pure: state, time and palette in, a frame out.

use aios_crds::{Agent, Task, task::TaskPhase};
use jiff::Timestamp;
use kube::ResourceExt;
use ratatui::{
    Frame,
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Wrap},
};

use super::state::Dashboard;
use crate::view::{
    format,
    tree::{dependency_order, mark, short_name},
};

/// Colours, or none (`NO_COLOR`).
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    color: bool,
}

impl Palette {
    /// Colours unless `no_color`.
    pub fn new(no_color: bool) -> Self {
        Self { color: !no_color }
    }

    fn fg(self, color: Color) -> Style {
        if self.color {
            Style::default().fg(color)
        } else {
            Style::default()
        }
    }

    fn phase(self, phase: Option<TaskPhase>) -> Style {
        self.fg(match phase {
            Some(TaskPhase::Succeeded) => Color::Green,
            Some(TaskPhase::Failed | TaskPhase::Cancelled) => Color::Red,
            Some(TaskPhase::Running | TaskPhase::Verifying) => Color::Cyan,
            Some(TaskPhase::Queued) => Color::Yellow,
            Some(TaskPhase::Skipped | TaskPhase::Pending) | None => Color::DarkGray,
        })
    }

    fn selected(self) -> Style {
        let _ = self;
        Style::default().add_modifier(Modifier::REVERSED)
    }

    fn title(self) -> Style {
        let _ = self;
        Style::default().add_modifier(Modifier::BOLD)
    }
}

/// The emoji of a persona, by its name, and a star for one the pantheon does not know.
pub fn emoji(persona: &str) -> &'static str {
    match persona.to_lowercase().as_str() {
        "apollo" => "🌞",
        "aphrodite" => "🌹",
        "athena" => "🦉",
        "hephaestus" => "🔨",
        "hera" => "👑",
        "hermes" => "🪽",
        _ => "✨",
    }
}

/// The narrowest an agent's panel gets: four fit in 80 columns.
const PANEL_MIN_WIDTH: u16 = 20;

/// Draws the dashboard at `now`.
pub fn draw(frame: &mut Frame<'_>, d: &Dashboard, now: Timestamp, palette: Palette) {
    let area = frame.area();
    let [header, agents, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(5),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(d, now, palette)), header);
    draw_agents(frame, agents, d, now, palette);
    let [tasks, feed] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
    draw_tasks(frame, tasks, d, now, palette);
    draw_feed(frame, feed, d, palette);
    frame.render_widget(Paragraph::new(footer_line(d)), footer);
    if d.details {
        draw_details(frame, area, d, now, palette);
    }
}

fn header_line(d: &Dashboard, now: Timestamp, palette: Palette) -> Line<'static> {
    let mut spans = vec![Span::styled("AIOS ", palette.title())];
    match d.project() {
        Some(p) => {
            let status = p.status.clone().unwrap_or_default();
            spans.push(Span::styled(
                format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                palette.title(),
            ));
            spans.push(Span::raw(format!(
                "  {}  {}  {}",
                status
                    .phase
                    .map_or_else(|| "-".to_owned(), |ph| format!("{ph:?}")),
                status.progress.unwrap_or_else(|| "-".to_owned()),
                format::duration(
                    status.start_time.as_ref(),
                    status.completion_time.as_ref(),
                    now
                ),
            )));
        }
        None => spans.push(Span::raw("waiting for a Project…")),
    }
    spans.push(Span::styled(
        "  ←→ project ↑↓ task ⏎ details q quit",
        palette.fg(Color::DarkGray),
    ));
    Line::from(spans)
}

/// The Tasks an agent works on: Running or Verifying Tasks of its role, in its
/// namespace.
fn current_tasks<'a>(d: &'a Dashboard, agent: &Agent) -> Vec<&'a Task> {
    let ns = agent.namespace().unwrap_or_default();
    d.tasks
        .iter()
        .filter(|((tns, _), t)| {
            *tns == ns
                && t.spec.role == agent.spec.role
                && matches!(
                    t.status.as_ref().and_then(|s| s.phase),
                    Some(TaskPhase::Running)
                )
        })
        .map(|(_, t)| t)
        .collect()
}

fn draw_agents(frame: &mut Frame<'_>, area: Rect, d: &Dashboard, now: Timestamp, palette: Palette) {
    let mut shown: Vec<&Agent> = d
        .agents
        .values()
        .filter(|a| d.project().is_none_or(|p| a.namespace() == p.namespace()))
        .collect();
    if shown.is_empty() {
        frame.render_widget(
            Paragraph::new("no Agents in this namespace")
                .block(Block::bordered().title(" agents ")),
            area,
        );
        return;
    }
    // As many panels as fit, PANEL_MIN_WIDTH columns each at least; busy agents first.
    shown.sort_by_key(|a| current_tasks(d, a).is_empty());
    let count = shown
        .len()
        .min(usize::from(area.width / PANEL_MIN_WIDTH).max(1));
    let share = Constraint::Ratio(1, u32::try_from(count).unwrap_or(1));
    let columns = Layout::horizontal(vec![share; count]).split(area);
    for (agent, column) in shown.iter().zip(columns.iter()) {
        let tasks = current_tasks(d, agent);
        let status = agent.status.clone().unwrap_or_default();
        let mut title = format!(
            " {} {} · {} ",
            emoji(&agent.spec.persona.name),
            agent.spec.persona.name,
            agent.spec.role
        );
        if unicode_width::UnicodeWidthStr::width(title.as_str()) + 2 > usize::from(column.width) {
            title = format!(
                " {} {} ",
                emoji(&agent.spec.persona.name),
                agent.spec.persona.name
            );
        }
        let lines: Vec<Line<'static>> = match tasks.first() {
            Some(task) => {
                let s = task.status.clone().unwrap_or_default();
                let usage = s.usage.clone().unwrap_or_default();
                vec![
                    Line::styled(
                        format!("● {}", short_name(&task.spec.project, &task.name_any())),
                        palette.fg(Color::Cyan),
                    ),
                    Line::raw(format!(
                        "{} · try {}{}",
                        format::duration(s.start_time.as_ref(), None, now),
                        s.attempt,
                        if tasks.len() > 1 {
                            format!(" · +{}", tasks.len() - 1)
                        } else {
                            String::new()
                        }
                    )),
                    Line::styled(
                        usage.model.map_or_else(
                            || "no model call yet".to_owned(),
                            |m| format!("{m}@{}", usage.provider.unwrap_or_default()),
                        ),
                        palette.fg(Color::DarkGray),
                    ),
                ]
            }
            None => vec![
                Line::styled("idle", palette.fg(Color::DarkGray)),
                Line::raw(format!(
                    "{}/{} ready",
                    status.ready_replicas, status.desired_replicas
                )),
                Line::raw(format!("{} queued", status.queued_tasks)),
            ],
        };
        frame.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(title)),
            *column,
        );
    }
}

fn draw_tasks(frame: &mut Frame<'_>, area: Rect, d: &Dashboard, now: Timestamp, palette: Palette) {
    let tasks = d.project_tasks();
    let ordered = dependency_order(&tasks);
    let project = d.project().map(ResourceExt::name_any).unwrap_or_default();
    let mut lines: Vec<Line<'static>> = Vec::new();
    let mut selected_line = 0;
    let mut level_seen = None;
    for (index, (level, task)) in ordered.iter().enumerate() {
        if level_seen != Some(*level) {
            level_seen = Some(*level);
            let at_level: Vec<&&Task> = ordered
                .iter()
                .filter(|(l, _)| l == level)
                .map(|(_, t)| t)
                .collect();
            let done = at_level
                .iter()
                .filter(|t| {
                    matches!(
                        t.status.as_ref().and_then(|s| s.phase),
                        Some(TaskPhase::Succeeded)
                    )
                })
                .count();
            lines.push(Line::styled(
                format!(
                    "level {level} {} {done}/{}",
                    bar(done, at_level.len(), 10),
                    at_level.len()
                ),
                palette.title(),
            ));
        }
        let s = task.status.clone().unwrap_or_default();
        let text = format!(
            " {} {:<18} {:<9} {}",
            mark(s.phase),
            format::line(short_name(&project, &task.name_any()), 18),
            s.phase
                .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}")),
            format::duration(s.start_time.as_ref(), s.completion_time.as_ref(), now),
        );
        let mut style = palette.phase(s.phase);
        if index == d.task_index {
            style = style.patch(palette.selected());
            selected_line = lines.len();
        }
        lines.push(Line::styled(text, style));
    }
    if lines.is_empty() {
        lines.push(Line::raw("no tasks yet"));
    }
    let inner_height = usize::from(area.height.saturating_sub(2));
    let scroll = selected_line.saturating_sub(inner_height.saturating_sub(1));
    frame.render_widget(
        Paragraph::new(lines)
            .scroll((u16::try_from(scroll).unwrap_or(u16::MAX), 0))
            .block(Block::bordered().title(" tasks ")),
        area,
    );
}

/// A progress bar of `width` cells.
fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(0);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn draw_feed(frame: &mut Frame<'_>, area: Rect, d: &Dashboard, palette: Palette) {
    let shown = d
        .project()
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()));
    let height = usize::from(area.height.saturating_sub(2));
    let width = usize::from(area.width.saturating_sub(2));
    // Wrapped here, not by the widget, so the newest rows are the ones kept.
    let mut rows: Vec<Line<'static>> = Vec::new();
    for l in d
        .feed
        .iter()
        .filter(|l| l.project.is_none() || l.project == shown)
    {
        let style = if l.warning {
            palette.fg(Color::Red)
        } else {
            Style::default()
        };
        let time = l.time.strftime("%H:%M").to_string();
        for (i, chunk) in wrap(&l.text, width.saturating_sub(6))
            .into_iter()
            .enumerate()
        {
            let lead = if i == 0 {
                format!("{time} ")
            } else {
                " ".repeat(6)
            };
            rows.push(Line::from(vec![
                Span::styled(lead, palette.fg(Color::DarkGray)),
                Span::styled(chunk, style),
            ]));
        }
    }
    let start = rows.len().saturating_sub(height);
    frame.render_widget(
        Paragraph::new(rows.split_off(start)).block(Block::bordered().title(" feed ")),
        area,
    );
}

/// `text` in rows of at most `width` columns, broken between words where it can be.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let w = |s: &str| unicode_width::UnicodeWidthStr::width(s);
    let mut rows = vec![String::new()];
    for word in text.split(' ') {
        let row = rows.last_mut().map_or(0, |r| w(r));
        let gap = usize::from(row > 0);
        if row + gap + w(word) <= width {
            if let Some(r) = rows.last_mut() {
                if gap == 1 {
                    r.push(' ');
                }
                r.push_str(word);
            }
            continue;
        }
        // The word starts a row of its own, cut where it is wider than a row.
        rows.push(String::new());
        for c in word.chars() {
            let cw = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
            if rows.last().map_or(0, |r| w(r)) + cw > width {
                rows.push(String::new());
            }
            if let Some(r) = rows.last_mut() {
                r.push(c);
            }
        }
    }
    if rows.len() > 1 && rows[0].is_empty() {
        rows.remove(0);
    }
    rows
}

fn footer_line(d: &Dashboard) -> Line<'static> {
    let mut parts = Vec::new();
    if let Some(p) = d.project() {
        let status = p.status.clone().unwrap_or_default();
        parts.push(format!(
            "tokens {}",
            format::tokens(status.usage.input_tokens + status.usage.output_tokens)
        ));
        parts.push(format!("cost {}", format::cost(status.usage.cost_usd)));
        parts.push(format!(
            "local {} (target {})",
            status
                .local_ratio
                .map_or_else(|| "-".to_owned(), format::percent),
            format::percent(p.spec.models.target_local_ratio)
        ));
    }
    let queues: Vec<String> = d
        .agents
        .values()
        .filter_map(|a| {
            let queued = a.status.as_ref().map_or(0, |s| s.queued_tasks);
            (queued > 0).then(|| format!("{} {queued}", a.spec.role))
        })
        .collect();
    if queues.is_empty() {
        parts.push("queues empty".to_owned());
    } else {
        parts.push(format!("queued {}", queues.join(" ")));
    }
    Line::raw(parts.join(" · "))
}

fn draw_details(
    frame: &mut Frame<'_>,
    area: Rect,
    d: &Dashboard,
    now: Timestamp,
    palette: Palette,
) {
    let tasks = d.project_tasks();
    let ordered = dependency_order(&tasks);
    let Some((_, task)) = ordered.get(d.task_index) else {
        return;
    };
    let s = task.status.clone().unwrap_or_default();
    let usage = s.usage.clone().unwrap_or_default();
    let mut lines = vec![
        Line::styled(task.spec.title.clone(), palette.title()),
        Line::raw(format!(
            "role {} · {} · attempt {} · {}",
            task.spec.role,
            s.phase
                .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}")),
            s.attempt,
            format::duration(s.start_time.as_ref(), s.completion_time.as_ref(), now)
        )),
        Line::raw(format!(
            "agent {}",
            s.agent.clone().unwrap_or_else(|| "-".to_owned())
        )),
        Line::raw(format!(
            "model {} · {} tokens · {}",
            usage.model.clone().unwrap_or_else(|| "-".to_owned()),
            format::tokens(usage.input_tokens + usage.output_tokens),
            format::cost(usage.cost_usd)
        )),
    ];
    if let Some(result) = &s.result {
        if let Some(commit) = &result.commit {
            lines.push(Line::raw(format!(
                "commit {}",
                format::short_commit(commit)
            )));
        }
        lines.push(Line::raw(result.summary.clone()));
    }
    if let Some(message) = &s.message {
        lines.push(Line::styled(message.clone(), palette.fg(Color::Yellow)));
    }
    let popup = centered(area, 80, 60);
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: true }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {} (esc closes) ", task.name_any())),
        ),
        popup,
    );
}

fn centered(area: Rect, width_percent: u16, height_percent: u16) -> Rect {
    let [_, middle, _] = Layout::vertical([
        Constraint::Percentage((100 - height_percent) / 2),
        Constraint::Percentage(height_percent),
        Constraint::Percentage((100 - height_percent) / 2),
    ])
    .areas(area);
    let [_, center, _] = Layout::horizontal([
        Constraint::Percentage((100 - width_percent) / 2),
        Constraint::Percentage(width_percent),
        Constraint::Percentage((100 - width_percent) / 2),
    ])
    .areas(middle);
    center
}

/// A buffer as text, one line per row, trailing spaces trimmed; a wide character's
/// second cell is not repeated.
pub fn buffer_text(buffer: &Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        let mut skip = 0;
        for x in area.left()..area.right() {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let symbol = buffer[(x, y)].symbol();
            skip = unicode_width::UnicodeWidthStr::width(symbol).saturating_sub(1);
            line.push_str(symbol);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One frame of `d` at `width`×`height`, as text (`aios watch --once`).
pub fn render_text(
    d: &Dashboard,
    now: Timestamp,
    width: u16,
    height: u16,
    palette: Palette,
) -> String {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
        .unwrap_or_else(|e| match e {});
    terminal
        .draw(|frame| draw(frame, d, now, palette))
        .unwrap_or_else(|e| match e {});
    buffer_text(terminal.backend().buffer())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        view::fixtures::{NOW, project, task},
        watch::state::{Change, Msg, Press},
    };

    fn agent(name: &str, persona: &str, role: &str) -> Agent {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aios.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"role": role, "persona": {"name": persona}},
            "status": {"desiredReplicas": 1, "readyReplicas": 1, "queuedTasks": 2}
        }))
        .unwrap()
    }

    fn dashboard() -> Dashboard {
        let now: Timestamp = NOW.parse().unwrap();
        let mut d = Dashboard::new("team-a", Some("shop"));
        d.apply(
            Msg::Project(Change::Applied(project("shop", "Running"))),
            now,
        );
        d.apply(
            Msg::Agent(Change::Applied(agent("apollo", "Apollo", "backend"))),
            now,
        );
        d.apply(
            Msg::Agent(Change::Applied(agent("athena", "Athena", "qa"))),
            now,
        );
        d.apply(
            Msg::Task(Change::Applied(task(
                "shop-design",
                "backend",
                &[],
                "Succeeded",
                Some("apollo-0"),
            ))),
            now,
        );
        d.apply(
            Msg::Task(Change::Applied(task(
                "shop-api",
                "backend",
                &["shop-design"],
                "",
                None,
            ))),
            now,
        );
        d.apply(
            Msg::Task(Change::Applied(task(
                "shop-api",
                "backend",
                &["shop-design"],
                "Running",
                Some("apollo-0"),
            ))),
            now,
        );
        d.apply(
            Msg::Task(Change::Applied(task(
                "shop-tests",
                "qa",
                &["shop-api"],
                "",
                None,
            ))),
            now,
        );
        d
    }

    #[test]
    fn an_80_by_24_frame_shows_agents_tasks_by_level_feed_and_footer() {
        let now: Timestamp = NOW.parse().unwrap();
        let text = render_text(&dashboard(), now, 80, 24, Palette::new(true));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 24);
        assert!(
            lines[0].starts_with("AIOS team-a/shop  Running  1/3  4m0s"),
            "{text}"
        );
        assert!(text.contains("🌞 Apollo · backend"), "{text}");
        assert!(text.contains("🦉 Athena · qa"), "{text}");
        assert!(text.contains("● api"), "the agent's current task: {text}");
        assert!(
            text.contains("qwen2.5-coder@ollama"),
            "its last model call: {text}"
        );
        assert!(text.contains("idle"), "Athena has nothing to do: {text}");
        assert!(text.contains("level 0 ██████████ 1/1"), "{text}");
        assert!(text.contains("level 1 ░░░░░░░░░░ 0/1"), "{text}");
        assert!(
            text.contains("12:00 api: new → Running on apollo-0"),
            "{text}"
        );
        let footer = lines[23];
        assert!(
            footer.starts_with("tokens 1.5k · cost $0.42 · local 67% (target 80%)"),
            "{footer}"
        );
        assert!(footer.contains("queued backend 2 qa 2"), "{footer}");
        for line in &lines {
            assert!(unicode_width::UnicodeWidthStr::width(*line) <= 80, "{line}");
        }
    }

    #[test]
    fn a_200_by_50_frame_has_room_for_every_task_and_the_details() {
        let now: Timestamp = NOW.parse().unwrap();
        let mut d = dashboard();
        d.apply(Msg::Key(Press::Down), now);
        d.apply(Msg::Key(Press::Details), now);
        let text = render_text(&d, now, 200, 50, Palette::new(true));
        assert_eq!(text.lines().count(), 50);
        assert!(text.contains("shop-api (esc closes)"), "{text}");
        assert!(text.contains("The shop-api task"), "{text}");
        assert!(text.contains("agent apollo-0"), "{text}");
        for name in ["design", "api", "tests"] {
            assert!(text.contains(&format!(" {name} ")), "{name}: {text}");
        }
    }

    #[test]
    fn busy_agents_get_the_panels_that_fit() {
        let now: Timestamp = NOW.parse().unwrap();
        let mut d = dashboard();
        for (name, persona, role) in [
            ("aphrodite", "Aphrodite", "frontend"),
            ("hephaestus", "Hephaestus", "devops"),
            ("hera", "Hera", "cto"),
        ] {
            d.apply(Msg::Agent(Change::Applied(agent(name, persona, role))), now);
        }
        d.apply(
            Msg::Task(Change::Applied(task("shop-plan", "cto", &[], "", None))),
            now,
        );
        d.apply(
            Msg::Task(Change::Applied(task(
                "shop-plan",
                "cto",
                &[],
                "Running",
                Some("hera-0"),
            ))),
            now,
        );
        let text = render_text(&d, now, 80, 24, Palette::new(true));
        let panels = text.lines().nth(1).unwrap();
        assert_eq!(
            panels.matches('┐').count(),
            4,
            "four fit in 80 columns: {text}"
        );
        assert!(
            panels.contains("Hera") && panels.contains("Apollo"),
            "the busy ones: {text}"
        );
        let wide = render_text(&d, now, 200, 50, Palette::new(true));
        assert_eq!(
            wide.lines().nth(1).unwrap().matches('┐').count(),
            5,
            "{wide}"
        );
    }

    #[test]
    fn hostile_text_reaches_the_frame_without_its_controls() {
        // The summary and the message are the agent's (and its model's) to write, an
        // Event anyone's with RBAC on Events: bidirectional controls would reorder what
        // a reader sees, escape sequences and other controls would rewrite the
        // terminal. The frame (and `aios watch --once`) keeps the words, not those.
        let now: Timestamp = NOW.parse().unwrap();
        let mut d = dashboard();
        let mut hostile = task("shop-design", "backend", &[], "Succeeded", Some("apollo-0"));
        let status = hostile.status.as_mut().unwrap();
        status.result.as_mut().unwrap().summary = "report\u{202E}fdp.exe\u{1b}[2J".into();
        status.message = Some("done\u{2066}\u{200F}\u{7}\r over".into());
        hostile.spec.title = "The \u{061C}design\u{202D} task".into();
        d.apply(Msg::Task(Change::Applied(hostile)), now);
        let event =
            serde_json::from_value::<k8s_openapi::api::core::v1::Event>(serde_json::json!({
                "metadata": {"name": "e1", "namespace": "team-a", "uid": "e1"},
                "involvedObject": {"kind": "Project", "name": "shop", "namespace": "team-a"},
                "reason": "Planned", "type": "Normal", "count": 1, "lastTimestamp": NOW,
                "message": "planned\u{202E}hs.txt\u{1b}]0;owned\u{7} tasks"
            }))
            .unwrap();
        d.apply(Msg::Event(Box::new(event)), now);
        let feed = render_text(&d, now, 200, 50, Palette::new(true));
        d.apply(Msg::Key(Press::Details), now);
        let details = render_text(&d, now, 200, 50, Palette::new(true));
        for (text, words) in [
            (&feed, &["planned", "hs.txt", "tasks"][..]),
            (
                &details,
                &["fdp.exe", "done", "over", "The design task"][..],
            ),
        ] {
            for word in words {
                assert!(text.contains(word), "{word}: {text}");
            }
            let smuggled: Vec<char> = text
                .chars()
                .filter(|&c| (c.is_control() && c != '\n') || aios_crds::text::is_bidi_control(c))
                .collect();
            assert!(
                smuggled.is_empty(),
                "{smuggled:?} reached the frame: {text}"
            );
        }
    }

    #[test]
    fn long_feed_lines_wrap_by_display_width() {
        assert_eq!(wrap("abcdef", 4), ["abcd", "ef"]);
        assert_eq!(wrap("🌞🌞🌞", 4), ["🌞🌞", "🌞"]);
        assert_eq!(wrap("", 4), [""]);
        assert_eq!(
            wrap("test: Queued → Running on qa-local", 20),
            ["test: Queued →", "Running on qa-local"]
        );
        assert_eq!(wrap("a verylongword", 6), ["a", "verylo", "ngword"]);
    }

    #[test]
    fn no_project_yet_says_so() {
        let now: Timestamp = NOW.parse().unwrap();
        let text = render_text(
            &Dashboard::new("team-a", None),
            now,
            80,
            24,
            Palette::new(false),
        );
        assert!(text.starts_with("AIOS waiting for a Project…"), "{text}");
        assert!(text.contains("no tasks yet"), "{text}");
    }
}
