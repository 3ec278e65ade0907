//! The repository as a model sees it: a bounded listing of the work tree with sizes,
//! and the whole content of the files most relevant to the task, within a token budget
//! computed from the model's context window. Pure: the caller lists the tree and reads
//! the files ([`crate::git::Workspace`]), and hands them in.
//!
//! Relevance, most relevant first: files the task names (its title, description and
//! acceptance criteria), files its dependencies delivered, files near those by path,
//! then files the related memories mention. Files are shown whole or not at all, since
//! the model may only edit what it has seen entire; a relevant file that does not fit
//! is named as left out, so the model knows it exists and is off limits.
//!
//! Tokens are estimated with [`estimate_tokens`] (one per three bytes, rounded up):
//! conservative for every current tokenizer, so what is counted to fit does.

use std::{
    collections::{BTreeSet, HashSet},
    fmt::Write as _,
};

use crate::llm::{ANSWER_TOKENS, estimate_tokens};

/// The most lines of the repository listing, whatever the budget.
pub const TREE_LINES: usize = 200;
/// The share of the repository budget the listing may take: one part in this many.
const TREE_SHARE: u64 = 4;
/// Tokens kept for the listing's closing "more files" line.
const TREE_MORE_TOKENS: u64 = 16;
/// How far by path a file may be from one the task names or its dependencies
/// delivered and still count as near it: the directory steps up and down between
/// the two (0: same directory; 1: a parent or child; 2: a sibling directory).
pub const NEAR_DISTANCE: usize = 2;
/// The most bytes of the paths named as left out; the rest are counted, not named.
pub const LEFT_OUT_BYTES: usize = 400;
/// Tokens for what the prompt puts around the repository sections: their headings, the
/// line saying how to treat the files shown, and the note naming the files left out
/// (at most [`LEFT_OUT_BYTES`] of paths and a sentence around them).
pub const SECTION_TOKENS: u64 = (LEFT_OUT_BYTES as u64 + 400).div_ceil(3);
/// Tokens kept for the repair round: the repair request is the first prompt again plus
/// the repair message (at most [`crate::prompt::REPAIR_PROBLEM_BYTES`] of problems and
/// a sentence around them), and its answer fits the same answer room.
pub const REPAIR_TOKENS: u64 = (crate::prompt::REPAIR_PROBLEM_BYTES as u64 + 300).div_ceil(3);

/// A file of the work tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFile {
    /// Its path relative to the repository root, `/`-separated.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A file shown whole to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextFile {
    /// Its path in the repository.
    pub path: String,
    /// Its whole content, exactly as in the work tree.
    pub content: String,
}

/// Where relevance comes from.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relevance<'a> {
    /// The task's title, description and acceptance criteria.
    pub task: &'a str,
    /// The files the task's dependencies delivered.
    pub delivered: &'a [String],
    /// The texts of the related memories.
    pub memories: &'a [String],
}

/// What the prompt shows of the repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepositoryContext {
    /// The listing, one `path (N bytes)` line a file, sorted by path, ending with a
    /// `… N more files` line when truncated; empty for an empty tree.
    pub tree: String,
    /// The files shown whole, most relevant first.
    pub files: Vec<ContextFile>,
    /// Files the task names or its dependencies delivered that are not shown, for lack
    /// of room, most relevant first.
    pub left_out: Vec<String>,
}

impl RepositoryContext {
    /// The shown files as the prompt carries them.
    pub fn files_text(&self) -> String {
        self.files.iter().map(render_file).collect()
    }

    /// The files left out, named within [`LEFT_OUT_BYTES`], the rest counted; empty
    /// when none was.
    pub fn left_out_text(&self) -> String {
        let mut named: Vec<&str> = Vec::new();
        let mut bytes = 0;
        for path in &self.left_out {
            bytes += path.len() + 2;
            if bytes > LEFT_OUT_BYTES {
                break;
            }
            named.push(path);
        }
        let mut text = named.join(", ");
        let more = self.left_out.len() - named.len();
        if more > 0 {
            let _ = write!(
                text,
                "{}{more} more",
                if named.is_empty() { "" } else { " and " }
            );
        }
        text
    }
}

/// The tokens a prompt may spend on the repository: the context window less the rest of
/// the prompt (`fixed_prompt`, estimated), the answer's room, the repair round's room
/// and the sections' headings. Zero when the window leaves none.
pub fn repository_budget(window: u32, fixed_prompt: u64) -> u64 {
    u64::from(window)
        .saturating_sub(fixed_prompt)
        .saturating_sub(u64::from(ANSWER_TOKENS))
        .saturating_sub(REPAIR_TOKENS)
        .saturating_sub(SECTION_TOKENS)
}

/// One shown file as the prompt carries it: a heading with its path and size, and its
/// content in a fence longer than any run of backticks inside it, so the content cannot
/// close the fence early.
pub fn render_file(file: &ContextFile) -> String {
    let longest = file
        .content
        .split(|c| c != '`')
        .map(str::len)
        .max()
        .unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let newline = if file.content.ends_with('\n') || file.content.is_empty() {
        ""
    } else {
        "\n"
    };
    format!(
        "### {} ({} bytes)\n{fence}\n{}{newline}{fence}\n",
        file.path,
        file.content.len(),
        file.content
    )
}

/// Builds what the prompt shows of the repository within `budget` tokens: the listing
/// of `files` (at most a quarter of the budget and [`TREE_LINES`] lines), then the
/// relevant files, most relevant first, each whole, while they fit. `read` gives a
/// file's content given its path and the most bytes that could still fit, or `None`
/// (too large, unreadable, not text).
pub fn build_context(
    files: &[RepoFile],
    relevance: &Relevance<'_>,
    budget: u64,
    mut read: impl FnMut(&str, u64) -> Option<String>,
) -> RepositoryContext {
    let mut sorted: Vec<&RepoFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    sorted.dedup_by(|a, b| a.path == b.path);
    let tree = render_tree(&sorted, budget / TREE_SHARE);
    let mut left = budget.saturating_sub(estimate_tokens(&tree));
    let mut context = RepositoryContext {
        tree,
        ..RepositoryContext::default()
    };
    for Ranked { file, anchor } in rank(&sorted, relevance) {
        // A file's rendering is longer than the file, so its size alone can rule it out.
        let most_bytes = left.saturating_mul(3);
        if file.size > most_bytes {
            if anchor {
                context.left_out.push(file.path.clone());
            }
            continue;
        }
        let Some(text) = read(&file.path, most_bytes) else {
            continue;
        };
        let shown = ContextFile {
            path: file.path.clone(),
            content: text,
        };
        let cost = estimate_tokens(&render_file(&shown));
        if cost > left {
            if anchor {
                context.left_out.push(shown.path);
            }
            continue;
        }
        left -= cost;
        context.files.push(shown);
    }
    context
}

/// The listing within `share` tokens and [`TREE_LINES`] lines.
fn render_tree(files: &[&RepoFile], share: u64) -> String {
    let mut tree = String::new();
    let mut listed = 0;
    for file in files {
        let line = format!("{} ({} bytes)\n", file.path, file.size);
        let room = if listed + 1 == files.len() {
            share
        } else {
            share.saturating_sub(TREE_MORE_TOKENS)
        };
        if listed == TREE_LINES || estimate_tokens(&tree) + estimate_tokens(&line) > room {
            break;
        }
        tree.push_str(&line);
        listed += 1;
    }
    let rest = &files[listed..];
    if !rest.is_empty() {
        let bytes: u64 = rest.iter().map(|f| f.size).sum();
        let more = format!("… {} more files ({bytes} bytes)\n", rest.len());
        if estimate_tokens(&tree) + estimate_tokens(&more) <= share {
            tree.push_str(&more);
        }
    }
    tree
}

/// A file worth showing, and whether the task names it or a dependency delivered it
/// (such a file left out for room is named as left out).
struct Ranked<'a> {
    file: &'a RepoFile,
    anchor: bool,
}

/// The relevant files, most relevant first, each once.
fn rank<'a>(files: &[&'a RepoFile], relevance: &Relevance<'_>) -> Vec<Ranked<'a>> {
    let task_words = words(relevance.task);
    let memory_words: BTreeSet<&str> = relevance.memories.iter().flat_map(|m| words(m)).collect();
    let mut ranked: Vec<Ranked<'a>> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut push = |ranked: &mut Vec<Ranked<'a>>, file: &'a RepoFile, anchor: bool| {
        if seen.insert(file.path.as_str()) {
            ranked.push(Ranked { file, anchor });
        }
    };
    // Named by the task: by a path with a directory first, then by file name alone.
    for file in files {
        if file.path.contains('/') && task_words.contains(file.path.as_str()) {
            push(&mut ranked, file, true);
        }
    }
    for file in files {
        if names_file(&task_words, &file.path) {
            push(&mut ranked, file, true);
        }
    }
    // Delivered by the dependencies, in their order.
    for path in relevance.delivered {
        let path = normal_path(path);
        if let Ok(at) = files.binary_search_by(|f| f.path.as_str().cmp(&path)) {
            push(&mut ranked, files[at], true);
        }
    }
    // Near those by path, nearest first.
    let anchors: BTreeSet<Vec<&str>> = ranked.iter().map(|r| directory(&r.file.path)).collect();
    let mut near: Vec<(usize, &'a RepoFile)> = files
        .iter()
        .filter_map(|file| {
            let here = directory(&file.path);
            let distance = anchors
                .iter()
                .map(|anchor| directory_distance(anchor, &here))
                .min()?;
            (distance <= NEAR_DISTANCE).then_some((distance, *file))
        })
        .collect();
    near.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.path.cmp(&b.1.path)));
    for (_, file) in near {
        push(&mut ranked, file, false);
    }
    // Mentioned by the memories.
    for file in files {
        if (file.path.contains('/') && memory_words.contains(file.path.as_str()))
            || names_file(&memory_words, &file.path)
        {
            push(&mut ranked, file, false);
        }
    }
    ranked
}

/// The words of a text that may name a file: runs of letters, digits and `_ . / -`,
/// without a leading `./` or a trailing `.` or `/` (the end of a sentence).
fn words(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| !(c.is_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')))
        .map(|word| {
            let word = word.strip_prefix("./").unwrap_or(word);
            word.trim_end_matches(['.', '/'])
        })
        .filter(|word| !word.is_empty())
        .collect()
}

/// Whether `words` name the file at `path` by its file name alone. Only distinctive
/// names count: with an extension (`app.py`) or a capital (`Dockerfile`), so that
/// an ordinary word (`api`, `build`) does not pull in a file of that name.
fn names_file(words: &BTreeSet<&str>, path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let distinctive =
        name.trim_start_matches('.').contains('.') || name.chars().any(|c| c.is_ascii_uppercase());
    distinctive && words.contains(name)
}

/// The directories a file is in, outermost first.
fn directory(path: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = path.split('/').collect();
    parts.pop();
    parts
}

/// The steps up and down from one directory to another.
fn directory_distance(a: &[&str], b: &[&str]) -> usize {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    a.len() - common + b.len() - common
}

/// A path as the work tree names it: `/`-separated, without empty or `.` components.
pub fn normal_path(path: &str) -> String {
    path.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// What a context shows, in a few words for the logs.
pub fn describe(context: &RepositoryContext) -> String {
    let mut text = format!("{} files shown", context.files.len());
    if !context.left_out.is_empty() {
        let _ = write!(text, ", {} left out for room", context.left_out.len());
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn file(path: &str, size: u64) -> RepoFile {
        RepoFile {
            path: path.to_owned(),
            size,
        }
    }

    /// A work tree of `(path, content)`, listed with true sizes, and a reader of it.
    struct Tree(BTreeMap<String, String>);

    impl Tree {
        fn new(files: &[(&str, &str)]) -> Self {
            Self(
                files
                    .iter()
                    .map(|(p, c)| ((*p).to_owned(), (*c).to_owned()))
                    .collect(),
            )
        }

        fn listing(&self) -> Vec<RepoFile> {
            self.0
                .iter()
                .map(|(p, c)| file(p, c.len() as u64))
                .collect()
        }

        fn build(&self, relevance: &Relevance<'_>, budget: u64) -> RepositoryContext {
            build_context(&self.listing(), relevance, budget, |path, limit| {
                let content = self.0.get(path)?;
                (content.len() as u64 <= limit).then(|| content.clone())
            })
        }
    }

    fn shown(context: &RepositoryContext) -> Vec<&str> {
        context.files.iter().map(|f| f.path.as_str()).collect()
    }

    /// What the repository sections cost, as the builder counts it.
    fn cost(context: &RepositoryContext) -> u64 {
        estimate_tokens(&context.tree)
            + context
                .files
                .iter()
                .map(|f| estimate_tokens(&render_file(f)))
                .sum::<u64>()
    }

    #[test]
    fn the_listing_is_sorted_with_sizes_and_complete_when_it_fits() {
        let files = [
            file("src/b.rs", 20),
            file("README.md", 7),
            file("src/a.rs", 1500),
        ];
        let context = build_context(&files, &Relevance::default(), 10_000, |_, _| None);
        assert_eq!(
            context.tree,
            "README.md (7 bytes)\nsrc/a.rs (1500 bytes)\nsrc/b.rs (20 bytes)\n"
        );
        assert!(context.files.is_empty(), "nothing relevant, nothing shown");
    }

    #[test]
    fn a_long_listing_stops_at_its_line_cap_and_says_how_many_more() {
        let files: Vec<RepoFile> = (0..250)
            .map(|i| file(&format!("f{i:03}.txt"), 10))
            .collect();
        let context = build_context(&files, &Relevance::default(), 1_000_000, |_, _| None);
        let lines: Vec<&str> = context.tree.lines().collect();
        assert_eq!(lines.len(), TREE_LINES + 1);
        assert_eq!(lines[0], "f000.txt (10 bytes)");
        assert_eq!(lines[TREE_LINES - 1], "f199.txt (10 bytes)");
        assert_eq!(lines[TREE_LINES], "… 50 more files (500 bytes)");
    }

    #[test]
    fn a_listing_takes_at_most_a_quarter_of_a_small_budget() {
        let files: Vec<RepoFile> = (0..100)
            .map(|i| file(&format!("f{i:03}.txt"), 10))
            .collect();
        let budget = 400;
        let context = build_context(&files, &Relevance::default(), budget, |_, _| None);
        assert!(
            estimate_tokens(&context.tree) <= budget / 4,
            "{}",
            context.tree
        );
        let last = context.tree.lines().last().unwrap();
        let listed = context.tree.lines().count() - 1;
        assert!(listed > 0 && listed < 100, "{}", context.tree);
        assert_eq!(
            last,
            format!(
                "… {} more files ({} bytes)",
                100 - listed,
                (100 - listed) * 10
            )
        );
    }

    #[test]
    fn files_come_named_then_delivered_then_near_then_remembered() {
        let tree = Tree::new(&[
            ("README.md", "# shop\n"),
            ("Dockerfile", "FROM x\n"),
            ("api", "a file named like an ordinary word\n"),
            ("docs/guide.md", "guide\n"),
            ("src/app.py", "app\n"),
            ("src/models.py", "models\n"),
            ("src/api/routes.py", "routes\n"),
            ("tests/test_app.py", "tests\n"),
            ("web/index.html", "<html>\n"),
            ("deploy/k8s/far/away.yaml", "far\n"),
            ("deploy/k8s/far/unrelated.yaml", "far\n"),
        ]);
        let delivered = vec!["./src/app.py".to_owned(), "gone.py".to_owned()];
        let memories = vec!["Earlier: wrote deploy/k8s/far/away.yaml.".to_owned()];
        let relevance = Relevance {
            task: "Add tests for the api in `tests/test_app.py`, using models.py.",
            delivered: &delivered,
            memories: &memories,
        };
        let context = tree.build(&relevance, 100_000);
        assert_eq!(
            shown(&context),
            [
                // Named by the task: a full path, then a distinctive file name.
                "tests/test_app.py",
                "src/models.py",
                // Delivered by a dependency (a path no longer in the tree is skipped).
                "src/app.py",
                // Near those: a parent or child directory, then sibling directories.
                "Dockerfile",
                "README.md",
                "api",
                "src/api/routes.py",
                "docs/guide.md",
                "web/index.html",
                // Mentioned by a memory, however far.
                "deploy/k8s/far/away.yaml",
            ]
        );
        assert!(context.left_out.is_empty());
        assert_eq!(context.files[2].content, "app\n", "shown whole, as it is");
    }

    #[test]
    fn nothing_named_or_delivered_shows_only_what_memories_mention() {
        let tree = Tree::new(&[
            ("a/one.rs", "1\n"),
            ("a/two.rs", "2\n"),
            ("b/three.rs", "3\n"),
            ("faster", "an ordinary word is no file name\n"),
        ]);
        let memories = vec!["the parser lives in a/two.rs".to_owned()];
        let context = tree.build(
            &Relevance {
                task: "Make parsing faster.",
                memories: &memories,
                ..Relevance::default()
            },
            10_000,
        );
        assert_eq!(
            shown(&context),
            ["a/two.rs"],
            "no nearness without an anchor"
        );
    }

    #[test]
    fn the_budget_is_the_window_less_the_prompt_the_answer_and_the_repair() {
        assert_eq!(
            repository_budget(32_768, 1_500),
            32_768 - 1_500 - u64::from(ANSWER_TOKENS) - REPAIR_TOKENS - SECTION_TOKENS
        );
        assert_eq!(
            repository_budget(crate::llm::DEFAULT_CONTEXT_WINDOW, 7_000),
            0,
            "a window the prompt and the answer fill leaves nothing, without underflow"
        );
        assert_eq!(
            estimate_tokens("abcdefg"),
            3,
            "a third of the bytes, rounded up"
        );
    }

    #[test]
    fn files_fill_the_budget_in_order_and_one_too_large_is_left_out_not_blocking() {
        let big = "x".repeat(3_000);
        let tree = Tree::new(&[
            ("src/big.rs", big.as_str()),
            ("src/small.rs", "fn small() {}\n"),
            ("src/other.rs", "fn other() {}\n"),
        ]);
        let relevance = Relevance {
            task: "Change src/big.rs and src/small.rs and src/other.rs",
            ..Relevance::default()
        };
        let budget = 200;
        let context = tree.build(&relevance, budget);
        assert_eq!(shown(&context), ["src/other.rs", "src/small.rs"]);
        assert_eq!(context.left_out, ["src/big.rs"]);
        assert!(cost(&context) <= budget, "{} > {budget}", cost(&context));

        // With room for it, the large file is shown whole, and everything still fits.
        let budget = 2_000;
        let context = tree.build(&relevance, budget);
        assert_eq!(
            shown(&context),
            ["src/big.rs", "src/other.rs", "src/small.rs"]
        );
        assert!(cost(&context) <= budget);
        assert_eq!(context.files[0].content.len(), 3_000, "never cut");
    }

    #[test]
    fn a_file_the_reader_cannot_give_is_skipped_and_only_fitting_sizes_are_read() {
        let files = [
            file("logo.png", 40),
            file("huge.txt", 1_000_000),
            file("a.txt", 4),
        ];
        let mut asked = Vec::new();
        let context = build_context(
            &files,
            &Relevance {
                task: "see logo.png, huge.txt and a.txt",
                ..Relevance::default()
            },
            1_000,
            |path, limit| {
                asked.push((path.to_owned(), limit));
                (path == "a.txt").then(|| "a\n".to_owned())
            },
        );
        assert_eq!(shown(&context), ["a.txt"]);
        assert_eq!(context.left_out, ["huge.txt"], "too large, not unreadable");
        assert!(
            asked.iter().all(|(path, _)| path != "huge.txt"),
            "a file too large by its size is not read: {asked:?}"
        );
    }

    #[test]
    fn only_named_or_delivered_files_are_reported_left_out_and_within_bounds() {
        let tree = Tree::new(&[
            ("src/app.py", &"x".repeat(900)),
            ("src/near.py", &"y".repeat(900)),
        ]);
        let context = tree.build(
            &Relevance {
                task: "Fix src/app.py",
                ..Relevance::default()
            },
            100,
        );
        assert!(context.files.is_empty());
        assert_eq!(
            context.left_out,
            ["src/app.py"],
            "a near file that does not fit is only in the listing"
        );
        assert_eq!(context.left_out_text(), "src/app.py");

        let many = RepositoryContext {
            left_out: (0..100).map(|i| format!("src/module_{i:03}.py")).collect(),
            ..RepositoryContext::default()
        };
        let text = many.left_out_text();
        assert!(text.len() <= LEFT_OUT_BYTES + 20, "{text}");
        assert!(
            text.starts_with("src/module_000.py, src/module_001.py"),
            "{text}"
        );
        let named = text.matches(".py").count();
        assert!(
            text.ends_with(&format!(" and {} more", 100 - named)),
            "{text}"
        );
    }

    #[test]
    fn a_shown_file_is_fenced_beyond_its_own_backticks() {
        let rendered = render_file(&ContextFile {
            path: "README.md".to_owned(),
            content: "```sh\nmake\n```".to_owned(),
        });
        assert_eq!(
            rendered,
            "### README.md (14 bytes)\n````\n```sh\nmake\n```\n````\n"
        );
    }
}
