//! Text that came from outside, made safe for a line of the log or of the terminal.

use std::borrow::Cow;

/// `text` with every character that could start a line of its own, drive a terminal or turn
/// the text around written as its escape (`\n`, `\u{1b}`, `\u{202e}`): control characters,
/// the line and paragraph separators, and the marks and overrides of text direction.
pub fn controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_could_forge_a_line_or_drive_a_terminal_is_escaped() {
        assert_eq!(controls("plain text, é, 日本"), "plain text, é, 日本");
        assert!(matches!(controls("plain"), Cow::Borrowed(_)));
        assert_eq!(
            controls("x\n2026-12-06T00:00:00Z  INFO forged\r\t\u{1b}[31m\u{85}"),
            "x\\n2026-12-06T00:00:00Z  INFO forged\\r\\t\\u{1b}[31m\\u{85}"
        );
        assert_eq!(
            controls("a\u{2028}b\u{2029}c\u{202e}d\u{2066}e\u{200f}"),
            "a\\u{2028}b\\u{2029}c\\u{202e}d\\u{2066}e\\u{200f}"
        );
    }
}
