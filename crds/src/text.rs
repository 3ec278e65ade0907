//! What text from a model or a manifest may carry into the records people read: commit
//! messages (the agent) and Kubernetes Events (the operator). Both follow one rule, kept
//! here so the two writers cannot drift apart.
//!
//! Control characters (C0, DEL, C1) can rewrite a terminal's display, and the Unicode
//! bidirectional controls reorder what a reader sees (`git log` showing a name that reads
//! backwards from how it is stored). Neither has a place in such a record, so both are
//! removed.

/// How many lines the text may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One line (a commit subject, a name): line breaks and tabs become spaces.
    Line,
    /// Lines (a commit body, an Event note): line feeds and tabs are kept.
    Lines,
}

/// Whether `c` is one of the Unicode bidirectional controls: the embeddings and
/// overrides (U+202A–U+202E), the isolates (U+2066–U+2069), and the marks (U+200E,
/// U+200F, U+061C).
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

/// `text` fit for a record people read: control characters and bidirectional controls
/// removed. A [`Shape::Lines`] text keeps its line feeds and tabs (a carriage return is
/// removed: it would let a later part of a line overwrite an earlier one); a
/// [`Shape::Line`] text has them as spaces and no surrounding whitespace.
pub fn sanitize(text: &str, shape: Shape) -> String {
    let kept: String = text
        .chars()
        .filter_map(|c| match (c, shape) {
            ('\n' | '\t', Shape::Lines) => Some(c),
            ('\n' | '\t' | '\r', Shape::Line) => Some(' '),
            _ if c.is_control() || is_bidi_control(c) => None,
            _ => Some(c),
        })
        .collect();
    match shape {
        Shape::Line => kept.trim().to_owned(),
        Shape::Lines => kept,
    }
}

/// The longest start of `text` that fits in `max_bytes` bytes, cut at a character
/// boundary (the API server measures some fields, an Event's note, in bytes).
pub fn truncate(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let end = (0..=max_bytes)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

/// `url` without the user name and password it may carry (`https://user:pass@host/...`
/// becomes `https://host/...`): what a message may show of a URL someone wrote.
pub fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_cuts_in_bytes_at_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 5), "éé");
        assert_eq!(truncate("ééé", 4), "éé");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn every_bidirectional_control_is_removed() {
        let controls = [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
            '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ];
        for c in controls {
            assert!(is_bidi_control(c), "{:04X}", u32::from(c));
            assert_eq!(sanitize(&format!("a{c}b"), Shape::Line), "ab");
            assert_eq!(sanitize(&format!("a{c}b"), Shape::Lines), "ab");
        }
        assert!(!is_bidi_control('\u{2065}'));
        assert!(!is_bidi_control('\u{202F}'), "a narrow no-break space");
        assert_eq!(
            sanitize("Add invoice\u{202E}fdp.exe", Shape::Line),
            "Add invoicefdp.exe"
        );
    }

    #[test]
    fn control_characters_go_and_a_body_keeps_its_lines_and_tabs() {
        assert_eq!(
            sanitize("red \u{1b}[31malert\u{7}\u{7f}\u{85}\u{9b}\0", Shape::Lines),
            "red [31malert"
        );
        assert_eq!(
            sanitize("first\r\n\tsecond\rthird\n", Shape::Lines),
            "first\n\tsecondthird\n"
        );
    }

    #[test]
    fn a_line_has_its_breaks_and_tabs_as_spaces_and_no_ends() {
        assert_eq!(
            sanitize("  Fix it\n\nAIOS-Attempt: x\t", Shape::Line),
            "Fix it  AIOS-Attempt: x"
        );
    }

    #[test]
    fn ordinary_text_in_any_script_is_left_as_it_is() {
        let text = "Ajouter l'API — العربية, 日本語, emoji 🚀, zero\u{200B}width";
        assert_eq!(sanitize(text, Shape::Line), text);
        assert_eq!(sanitize(text, Shape::Lines), text);
    }

    #[test]
    fn a_url_loses_its_user_and_password() {
        assert_eq!(
            without_userinfo("http://user:secret@git.example:8080/team/app.git"),
            "http://git.example:8080/team/app.git"
        );
        assert_eq!(
            without_userinfo("https://git.example/a@b"),
            "https://git.example/a@b"
        );
        assert_eq!(without_userinfo("git@host:path"), "git@host:path");
        assert_eq!(without_userinfo("http://u:hunter2@[bad"), "http://[bad");
    }
}
