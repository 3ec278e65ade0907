//! How numbers, times and phases read in every view: kubectl's short ages and
//! durations, costs in dollars, token counts with SI suffixes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A span as kubectl prints ages: `45s`, `3m12s`, `2h5m`, `3d4h`.
pub fn span(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..600 => format!("{}m{}s", s / 60, s % 60),
        600..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Seconds from `from` to `to`.
pub fn seconds_between(from: &Time, to: Timestamp) -> i64 {
    to.as_second() - from.0.as_second()
}

/// How long something took: from `start` to `end`, or to `now` while it runs; `-` when
/// it has not started.
pub fn duration(start: Option<&Time>, end: Option<&Time>, now: Timestamp) -> String {
    match (start, end) {
        (Some(start), Some(end)) => span(seconds_between(start, end.0)),
        (Some(start), None) => span(seconds_between(start, now)),
        _ => "-".to_owned(),
    }
}

/// The age of an object created at `created`.
pub fn age(created: Option<&Time>, now: Timestamp) -> String {
    created.map_or_else(|| "<unknown>".to_owned(), |t| span(seconds_between(t, now)))
}

/// Dollars: four decimals under a cent, two above.
pub fn cost(usd: f64) -> String {
    if usd == 0.0 {
        "$0".to_owned()
    } else if usd < 0.01 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

/// A token count: `950`, `12.3k`, `4.1M`.
#[allow(clippy::cast_precision_loss)] // display only
pub fn tokens(n: i64) -> String {
    match n {
        ..1000 => n.to_string(),
        1000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// A ratio as a percentage: `83%`.
pub fn percent(ratio: f64) -> String {
    format!("{:.0}%", ratio * 100.0)
}

/// The first line of `text`, at most `max` characters (an ellipsis marks the cut).
pub fn line(text: &str, max: usize) -> String {
    let first = readable(text.lines().next().unwrap_or_default());
    let first = first.trim();
    if first.chars().count() <= max {
        first.to_owned()
    } else {
        let mut cut: String = first.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// `text` as one line fit for a terminal: what the cluster holds was written by agents
/// and the models behind them, and whoever else may write a status, so control and
/// bidirectional characters are removed here too (`aios_crds::text`), whatever wrote it;
/// line breaks and tabs become spaces. Leading spaces stay (a tree's indentation).
pub fn readable(text: &str) -> String {
    aios_crds::text::sanitize(text, aios_crds::text::Shape::Lines).replace(['\n', '\t'], " ")
}

/// A commit as people quote it: its first seven characters.
pub fn short_commit(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// Lays `rows` out as kubectl does: upper-case headers, columns padded to their widest
/// cell and three spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| readable(cell)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_like_kubectl_ages() {
        assert_eq!(span(-3), "0s");
        assert_eq!(span(45), "45s");
        assert_eq!(span(192), "3m12s");
        assert_eq!(span(1500), "25m");
        assert_eq!(span(7500), "2h5m");
        assert_eq!(span(3 * 86_400 + 4 * 3600 + 59), "3d4h");
    }

    #[test]
    fn costs_tokens_and_percentages() {
        assert_eq!(cost(0.0), "$0");
        assert_eq!(cost(0.00123), "$0.0012");
        assert_eq!(cost(1.5), "$1.50");
        assert_eq!(tokens(950), "950");
        assert_eq!(tokens(12_345), "12.3k");
        assert_eq!(tokens(4_100_000), "4.1M");
        assert_eq!(percent(0.834), "83%");
    }

    #[test]
    fn a_line_is_cut_with_an_ellipsis_and_only_its_first_line_kept() {
        assert_eq!(line("short\nsecond", 10), "short");
        assert_eq!(line("exactly ten", 11), "exactly ten");
        assert_eq!(line("a longer message here", 8), "a longe…");
    }

    #[test]
    fn a_table_pads_columns_to_the_widest_cell() {
        let text = table(
            &["name", "phase"],
            &[
                vec!["a".into(), "Running".into()],
                vec!["longer-name".into(), "-".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME          PHASE\na             Running\nlonger-name   -\n"
        );
    }

    /// A status written by a hostile agent, or by anyone able to write one: its escapes
    /// and bidirectional controls never reach the terminal, and columns still line up.
    #[test]
    fn cells_and_lines_reach_the_terminal_without_control_characters() {
        let hostile = "\u{1b}]0;pwned\u{7}tests\u{202E} fail\u{1b}[2J";
        assert_eq!(line(hostile, 80), "]0;pwnedtests fail[2J");
        let text = table(
            &["name", "message"],
            &[
                vec!["a".into(), hostile.into()],
                vec!["b\tc".into(), "fine".into()],
                vec!["  d".into(), "indented".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME   MESSAGE\na      ]0;pwnedtests fail[2J\nb c    fine\n  d    indented\n"
        );
    }
}
