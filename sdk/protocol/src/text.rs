//! Text a plugin wrote, made safe to print where people read it.
//!
//! A plugin's log message or stderr line shown as it came could forge lines (a `\n` followed by
//! what looks like plugind's own entry) or drive the reader's terminal (escape sequences that
//! set its title, clear it, or move the cursor) (audit 16). Wherever such text is printed as
//! text (plugind's own log, `pluginctl`'s tables and logs), its control characters are written
//! as escapes; JSON output keeps the text as it was (JSON escapes them anyway).

use std::borrow::Cow;

/// `text` with every control character but the tab written as an escape: `\n`, `\r`, `\e` for
/// ESC, `\u{…}` for the rest (C0, DEL and the C1 controls) and for the bidirectional
/// formatting characters (U+202E and its kin turn what follows around: a name that reads as
/// another, audit 18). Unchanged (borrowed) when it has none.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| (c.is_control() && c != '\t') || is_bidi(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push('\t'),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1b}' => out.push_str("\\e"),
            c if c.is_control() || is_bidi(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The bidirectional formatting characters: marks, embeddings, overrides and isolates.
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_borrowed() {
        assert!(matches!(printable("plain\ttext é"), Cow::Borrowed(_)));
        assert_eq!(
            printable("ok\n2026 p1 [plugind] error: crashed\r\u{1b}]0;title\u{7}\u{9b}2J"),
            "ok\\n2026 p1 [plugind] error: crashed\\r\\e]0;title\\u{7}\\u{9b}2J"
        );
        assert_eq!(printable("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    }
}
