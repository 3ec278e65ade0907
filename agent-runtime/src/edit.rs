//! Turning a work answer into the files to deliver, against what the model was shown:
//! its search-and-replace edits applied strictly to the files it saw whole, and its
//! whole files allowed only where they overwrite nothing it did not see. Anything
//! refused is a problem naming the file and the hunk, for the repair request.
//!
//! Strictly means: a `search` must occur exactly once, byte for byte, in the file as the
//! edits before it left it (one that would match only with whitespace ignored is
//! refused, saying so: a fuzzy match could change lines the model never meant); the
//! edits of one file apply in their order, and one that touches text an earlier edit
//! wrote is refused as overlapping. Unified diffs are not accepted: search-and-replace
//! blocks are what the schema offers.

use std::collections::BTreeMap;

use crate::{
    context::normal_path,
    output::{Checked, EditOutput, FileOutput, WorkOutput},
};

/// Why an answer could not be resolved into files: every problem, `; `-separated, for
/// the repair request, and the paths of the repository's files it would have written or
/// edited without having been shown them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Every problem found.
    pub problems: String,
    /// Existing files the answer wrote or edited blind, in their normal form.
    pub unseen: Vec<String>,
}

/// An answer that would change a file the model was not shown is refused as
/// `UnseenFile` (a refusal, not a slip: the attempt is not retried); one with only
/// other problems is unusable, to be repaired.
impl<T> From<Refused> for Checked<T> {
    fn from(refused: Refused) -> Self {
        if refused.unseen.is_empty() {
            Self::Unusable(refused.problems)
        } else {
            Self::Refused("UnseenFile", refused.problems)
        }
    }
}

/// The most bytes of a hunk quoted in a problem.
const HUNK_EXCERPT_BYTES: usize = 240;

/// Resolves a work answer into whole files: its `files` as they are, then each edited
/// file with its edits applied, in the order the answer first names them. Paths are
/// compared in their normal form but delivered as the model wrote them, so the
/// delivery's path checks see exactly that (`/etc/passwd` must be refused as absolute,
/// not quietly become `etc/passwd`). `shown` holds the files whose whole content was in the prompt, by path;
/// `exists` tells whether a path names a file of the work tree. The error lists every
/// problem found and the existing files the answer would change blind.
pub fn resolve(
    output: WorkOutput,
    shown: &BTreeMap<String, String>,
    exists: impl Fn(&str) -> bool,
) -> Result<WorkOutput, Refused> {
    let mut problems = Vec::new();
    let mut unseen = Vec::new();
    let mut files: Vec<FileOutput> = Vec::with_capacity(output.files.len());
    for file in output.files {
        let path = normal_path(&file.path);
        if files.iter().any(|f| normal_path(&f.path) == path) {
            problems.push(format!("the file {path:?} appears more than once"));
        } else if !shown.contains_key(&path) && exists(&path) {
            problems.push(format!(
                "the file {path:?} exists in the repository and was not shown to you, so it \
                 cannot be overwritten; leave it alone or write a file of another name"
            ));
            unseen.push(path.clone());
        }
        files.push(file);
    }
    let mut edited: Vec<(String, Vec<&EditOutput>)> = Vec::new();
    for edit in &output.edits {
        let path = normal_path(&edit.path);
        match edited.iter_mut().find(|(p, _)| *p == path) {
            Some((_, edits)) => edits.push(edit),
            None => edited.push((path, vec![edit])),
        }
    }
    for (path, edits) in edited {
        if files.iter().any(|f| normal_path(&f.path) == path) {
            problems.push(format!(
                "the file {path:?} is both written whole and edited; do one or the other"
            ));
            continue;
        }
        let Some(content) = shown.get(&path) else {
            problems.push(if exists(&path) {
                unseen.push(path.clone());
                format!(
                    "the file {path:?} was not shown to you, so it cannot be edited; leave it alone"
                )
            } else {
                format!(
                    "the file {path:?} does not exist, so it cannot be edited; write it whole under \"files\""
                )
            });
            continue;
        };
        match apply_edits(&path, content, &edits) {
            Ok(content) => files.push(FileOutput {
                path: edits[0].path.clone(),
                content,
            }),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(WorkOutput {
            files,
            edits: Vec::new(),
            ..output
        })
    } else {
        Err(Refused {
            problems: problems.join("; "),
            unseen,
        })
    }
}

/// Applies `edits` to `content`, the file at `path`, in order; the error names the
/// file, the edit (counted from 1 among this file's) and its hunk.
pub fn apply_edits(path: &str, content: &str, edits: &[&EditOutput]) -> Result<String, String> {
    let mut text = content.to_owned();
    // What each applied edit wrote, as (edit number, start, end) in the current text.
    let mut written: Vec<(usize, usize, usize)> = Vec::with_capacity(edits.len());
    for (index, edit) in edits.iter().enumerate() {
        let number = index + 1;
        let hunk = excerpt(&edit.search);
        let refuse = |why: &str| format!("edit {number} of {path:?} {why}: search {hunk}");
        if edit.search.is_empty() {
            return Err(refuse(
                "has an empty search text; quote the lines to change, or write the file whole",
            ));
        }
        let found = occurrences(&text, &edit.search, 2);
        let start = match found[..] {
            [start] => start,
            [] if matches_ignoring_whitespace(&text, &edit.search) => {
                return Err(refuse(
                    "matches the file only if whitespace is ignored; copy the search text byte \
                     for byte from the file as shown, with its indentation and line ends",
                ));
            }
            [] if number > 1 => {
                return Err(refuse(
                    "does not occur in the file as the edits before it leave it",
                ));
            }
            [] => return Err(refuse("does not occur in the file")),
            _ => {
                return Err(refuse(
                    "occurs more than once in the file; include more of the lines around it so \
                     it occurs exactly once",
                ));
            }
        };
        let end = start + edit.search.len();
        if let Some((earlier, ..)) = written
            .iter()
            .find(|(_, from, to)| overlaps(start, end, *from, *to))
        {
            return Err(refuse(&format!(
                "overlaps the text edit {earlier} wrote; make the two one edit"
            )));
        }
        text.replace_range(start..end, &edit.replace);
        let (removed, added) = (edit.search.len(), edit.replace.len());
        for (_, from, to) in &mut written {
            if *from >= end {
                *from = *from - removed + added;
                *to = *to - removed + added;
            }
        }
        written.push((number, start, start + added));
    }
    Ok(text)
}

/// Where `needle` (not empty) starts in `haystack`, overlapping matches included, up to
/// `most` of them.
fn occurrences(haystack: &str, needle: &str, most: usize) -> Vec<usize> {
    let step = needle.chars().next().map_or(1, char::len_utf8);
    let mut found = Vec::new();
    let mut from = 0;
    while found.len() < most
        && let Some(at) = haystack.get(from..).and_then(|rest| rest.find(needle))
    {
        found.push(from + at);
        from += at + step;
    }
    found
}

/// Whether the match `start..end` touches the text `from..to` an earlier edit wrote. A
/// deletion wrote nothing, and touches a match only strictly inside it.
fn overlaps(start: usize, end: usize, from: usize, to: usize) -> bool {
    if from == to {
        start < from && from < end
    } else {
        start < to && from < end
    }
}

/// Whether `search` occurs in `text` once runs of whitespace are made one space in both.
fn matches_ignoring_whitespace(text: &str, search: &str) -> bool {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let search = squash(search);
    !search.is_empty() && squash(text).contains(&search)
}

/// The start of a hunk, quoted so its whitespace shows.
fn excerpt(text: &str) -> String {
    if text.len() <= HUNK_EXCERPT_BYTES {
        return format!("{text:?}");
    }
    let mut cut = HUNK_EXCERPT_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str =
        "def total(items):\n\treturn sum(items)\n\n\ndef count(items):\n\treturn len(items)\n";

    fn edit(path: &str, search: &str, replace: &str) -> EditOutput {
        EditOutput {
            path: path.to_owned(),
            search: search.to_owned(),
            replace: replace.to_owned(),
        }
    }

    fn answer(files: &[(&str, &str)], edits: Vec<EditOutput>) -> WorkOutput {
        WorkOutput {
            summary: "changed".to_owned(),
            files: files
                .iter()
                .map(|(path, content)| FileOutput {
                    path: (*path).to_owned(),
                    content: (*content).to_owned(),
                })
                .collect(),
            edits,
            notes: Some("note".to_owned()),
        }
    }

    /// `src/app.py` shown; `README.md` exists but was not shown.
    fn shown() -> BTreeMap<String, String> {
        BTreeMap::from([("src/app.py".to_owned(), APP.to_owned())])
    }

    fn exists(path: &str) -> bool {
        matches!(path, "src/app.py" | "README.md")
    }

    fn apply(edits: &[EditOutput]) -> Result<String, String> {
        apply_edits("src/app.py", APP, &edits.iter().collect::<Vec<_>>())
    }

    #[test]
    fn exact_edits_apply_in_order_and_become_a_whole_file() {
        let edits = vec![
            edit(
                "src/app.py",
                "\treturn sum(items)\n",
                "\treturn sum(items, start)\n",
            ),
            edit(
                "./src/app.py",
                "def total(items):",
                "def total(items, start=0):",
            ),
            edit("src/app.py", "def count(items):\n\treturn len(items)\n", ""),
        ];
        let resolved = resolve(
            answer(&[("src/new.py", "x = 1\n")], edits),
            &shown(),
            exists,
        );
        let resolved = resolved.unwrap_or_else(|err| panic!("{err:?}"));
        assert_eq!(
            resolved.files,
            [
                FileOutput {
                    path: "src/new.py".to_owned(),
                    content: "x = 1\n".to_owned()
                },
                FileOutput {
                    path: "src/app.py".to_owned(),
                    content: "def total(items, start=0):\n\treturn sum(items, start)\n\n\n"
                        .to_owned()
                },
            ]
        );
        assert!(resolved.edits.is_empty());
        assert_eq!(resolved.notes.as_deref(), Some("note"));
    }

    #[test]
    fn paths_are_delivered_as_the_model_wrote_them_for_the_delivery_to_judge() {
        // A hostile answer: normalising `/etc/passwd` to `etc/passwd` here would hide
        // from the delivery's checks that the model asked for an absolute path.
        let resolved = resolve(
            answer(&[("/etc/passwd", "root::0:0::/:/bin/sh\n")], Vec::new()),
            &shown(),
            exists,
        )
        .unwrap();
        assert_eq!(resolved.files[0].path, "/etc/passwd");
        let twice = resolve(
            answer(&[("src/a.py", "1\n"), ("./src/a.py", "2\n")], Vec::new()),
            &shown(),
            exists,
        )
        .unwrap_err();
        assert!(twice.problems.contains("more than once"), "{twice:?}");
        assert!(twice.unseen.is_empty(), "a slip, not a refusal: {twice:?}");
    }

    #[test]
    fn a_search_matching_only_with_whitespace_ignored_is_refused_saying_so() {
        let problem = apply(&[edit("src/app.py", "    return sum(items)", "pass")]).unwrap_err();
        assert!(problem.starts_with("edit 1 of \"src/app.py\""), "{problem}");
        assert!(
            problem.contains("only if whitespace is ignored"),
            "{problem}"
        );
        assert!(
            problem.contains(r#"search "    return sum(items)""#),
            "the hunk, quoted: {problem}"
        );
    }

    #[test]
    fn a_search_found_nowhere_or_twice_is_refused_with_the_hunk() {
        let problem = apply(&[edit("src/app.py", "return mean(items)", "x")]).unwrap_err();
        assert!(problem.contains("does not occur in the file"), "{problem}");
        assert!(problem.contains(r#""return mean(items)""#), "{problem}");
        let problem = apply(&[edit("src/app.py", "(items)", "()")]).unwrap_err();
        assert!(problem.contains("occurs more than once"), "{problem}");
        // Matches that overlap each other count twice too.
        let problem = apply_edits("a.txt", "aaa", &[&edit("a.txt", "aa", "b")]).unwrap_err();
        assert!(problem.contains("occurs more than once"), "{problem}");
        let problem = apply(&[edit("src/app.py", "", "x")]).unwrap_err();
        assert!(problem.contains("empty search"), "{problem}");
    }

    #[test]
    fn an_edit_touching_text_an_earlier_edit_wrote_is_refused_as_overlapping() {
        let problem = apply(&[
            edit("src/app.py", "return sum(items)", "return sum(items) + 1"),
            edit("src/app.py", "+ 1\n\n", "+ 2\n\n"),
        ])
        .unwrap_err();
        assert!(
            problem.starts_with("edit 2 of \"src/app.py\" overlaps the text edit 1 wrote"),
            "{problem}"
        );
        // Where an earlier edit deleted text, a later match spanning that spot overlaps.
        let problem = apply(&[
            edit("src/app.py", "\n\n\n", ""),
            edit("src/app.py", "items)def", "items)\n\ndef"),
        ])
        .unwrap_err();
        assert!(
            problem.contains("overlaps the text edit 1 wrote"),
            "{problem}"
        );
        // Edits side by side, after a change of length before them, do not overlap.
        let applied = apply(&[
            edit("src/app.py", "def total", "def grand_total"),
            edit(
                "src/app.py",
                "(items):\n\treturn sum",
                "(things):\n\treturn sum",
            ),
            edit("src/app.py", "(items)\n\n", "(things)\n\n"),
        ])
        .unwrap();
        assert!(
            applied.starts_with("def grand_total(things):\n\treturn sum(things)\n\n\ndef count"),
            "{applied}"
        );
        // A search made unique by an earlier edit is found in the file as it now is.
        let problem = apply(&[
            edit("src/app.py", "def count(items):\n\treturn len(items)\n", ""),
            edit("src/app.py", "len(items)", "0"),
        ])
        .unwrap_err();
        assert!(
            problem.contains("as the edits before it leave it"),
            "{problem}"
        );
    }

    #[test]
    fn a_file_not_shown_is_neither_edited_nor_overwritten_and_new_files_are_free() {
        let problem = resolve(
            answer(&[], vec![edit("README.md", "# shop", "# Shop")]),
            &shown(),
            exists,
        )
        .unwrap_err();
        assert!(
            problem
                .problems
                .contains("\"README.md\" was not shown to you, so it cannot be edited"),
            "{problem:?}"
        );
        assert_eq!(problem.unseen, ["README.md"]);
        let problem = resolve(
            answer(&[("README.md", "# Shop\n")], vec![]),
            &shown(),
            exists,
        )
        .unwrap_err();
        assert!(
            problem
                .problems
                .contains("\"README.md\" exists in the repository and was not shown to you"),
            "{problem:?}"
        );
        assert_eq!(problem.unseen, ["README.md"]);
        let problem = resolve(
            answer(&[], vec![edit("docs/new.md", "a", "b")]),
            &shown(),
            exists,
        )
        .unwrap_err();
        assert!(problem.problems.contains("does not exist"), "{problem:?}");
        assert!(problem.unseen.is_empty(), "{problem:?}");
        // Overwriting a file that was shown, and writing a new one, are allowed.
        let resolved = resolve(
            answer(
                &[("src/app.py", "pass\n"), ("docs/new.md", "new\n")],
                vec![],
            ),
            &shown(),
            exists,
        )
        .unwrap();
        assert_eq!(resolved.files.len(), 2);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problem = resolve(
            answer(
                &[
                    ("src/app.py", "pass\n"),
                    ("./README.md", "x\n"),
                    ("README.md", "y\n"),
                ],
                vec![
                    edit("src/app.py", "def", "fn"),
                    edit("src/other.py", "a", "b"),
                ],
            ),
            &shown(),
            exists,
        )
        .unwrap_err()
        .problems;
        let at = |needle: &str| {
            problem
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in {problem}"))
        };
        let order = [
            at("\"README.md\" exists in the repository"),
            at("\"README.md\" appears more than once"),
            at("\"src/app.py\" is both written whole and edited"),
            at("\"src/other.py\" does not exist"),
        ];
        assert!(order.is_sorted(), "{problem}");
    }

    #[test]
    fn a_long_hunk_is_quoted_in_part() {
        let search = "é".repeat(400);
        let problem = apply(&[edit("src/app.py", &search, "")]).unwrap_err();
        assert!(problem.ends_with("…"), "{problem}");
        assert!(problem.len() < 400, "{}", problem.len());
    }
}
