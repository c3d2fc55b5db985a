//! What `pluginctl` prints for people: aligned tables and `key: value` blocks, with colour.
//!
//! Everything goes through `anstream`'s `println!`, which keeps the ANSI styles when stdout is a
//! terminal and strips them otherwise: when stdout is a pipe or a file, when `NO_COLOR` is set to
//! anything non-empty, when `TERM` is unset or `dumb`, or with `CLICOLOR=0` (`CLICOLOR_FORCE=1`
//! forces colour). Widths are counted on the plain text, so columns line up either way.
//! `--json` output is never styled.
//!
//! Text from plugins (names of methods and services, descriptions, errors) is printed through
//! [`plain`]: its control characters escaped, so a plugin cannot set the terminal's title, clear
//! the screen or overwrite a row with `\r` (audit 18).

use anstyle::{AnsiColor, Style};
use plugind_protocol::text::printable;
use std::borrow::Cow;

/// `text` with its control characters (tabs too) escaped, for a terminal.
pub fn plain(text: &str) -> Cow<'_, str> {
    match printable(text) {
        Cow::Borrowed(t) if !t.contains('\t') => Cow::Borrowed(t),
        t => Cow::Owned(t.replace('\t', "\\t")),
    }
}

/// Healthy: `running`, a guarantee that holds, a met dependency.
pub const GOOD: Style = AnsiColor::Green.on_default();
/// Needs attention: `failed`, `invalid`, `blocked`, a guarantee that does not hold, an error.
pub const BAD: Style = AnsiColor::Red.on_default();
/// In between: a transition (`starting`, `stopping`…), an advisory-only permission.
pub const WARN: Style = AnsiColor::Yellow.on_default();
/// Table headers and section titles.
pub const HEADER: Style = Style::new().bold();
/// No style.
pub const PLAIN: Style = Style::new();

/// The style of a plugin state word.
pub fn state_style(state: &str) -> Style {
    match state {
        "running" => GOOD,
        "failed" | "invalid" | "blocked" => BAD,
        "starting" | "restarting" | "stopping" => WARN,
        _ => PLAIN,
    }
}

/// `text` in `style` (the escapes vanish when stdout takes no colour).
pub fn paint(style: Style, text: &str) -> String {
    format!("{style}{text}{style:#}")
}

/// [`plain`] line by line: the line breaks of a message of several lines kept.
pub fn plain_lines(text: &str) -> String {
    text.split('\n').map(plain).collect::<Vec<_>>().join("\n")
}

/// One table cell: its text and how to show it.
pub struct Cell {
    text: String,
    style: Style,
}

impl Cell {
    /// A cell in `style`.
    pub fn styled(text: impl Into<String>, style: Style) -> Cell {
        let text = text.into();
        Cell { text: plain(&text).into_owned(), style }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell::styled(text, PLAIN)
    }
}

/// Prints a table: a bold header, then rows, columns two spaces apart.
pub fn table(headers: &[&str], rows: Vec<Vec<Cell>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.text.chars().count());
        }
    }
    let line = |cells: &[Cell]| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            out.push_str(&paint(c.style, &c.text));
            if i != last {
                out.push_str(&" ".repeat(widths[i] - c.text.chars().count() + 2));
            }
        }
        out
    };
    let header: Vec<Cell> = headers.iter().map(|h| Cell::styled(*h, HEADER)).collect();
    anstream::println!("{}", line(&header));
    for r in rows {
        anstream::println!("{}", line(&r));
    }
}

/// Width of the key column of [`row`] (`"last error:  "`).
const KEY_WIDTH: usize = 13;

/// Prints one `key:  value` row of a key/value block, the value in `style`.
/// (An empty `key` continues the row above, aligned under its value.)
pub fn row(key: &str, value: &str, style: Style) {
    let key = if key.is_empty() { String::new() } else { format!("{key}:") };
    anstream::println!("{key:<KEY_WIDTH$}{}", paint(style, &plain(value)));
}

/// Prints a section title of a key/value block (its lines follow, indented by two spaces).
pub fn section(title: &str) {
    anstream::println!("{}", paint(HEADER, &format!("{}:", plain(title))));
}

/// Prints one indented line of a section, as it is: the caller passes a plugin's text in it
/// through [`plain`] (the line may hold styles of its own).
pub fn item(text: &str) {
    anstream::println!("  {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugins_control_characters_are_escaped() {
        let forged = "\u{1b}]0;PWNED\u{7}\u{1b}[2J\rvictim\trunning";
        assert_eq!(plain(forged), "\\e]0;PWNED\\u{7}\\e[2J\\rvictim\\trunning");
        assert!(matches!(plain("echo-python"), Cow::Borrowed(_)));
        assert_eq!(Cell::from(forged.to_owned()).text, plain(forged));
    }

    #[test]
    fn paint_wraps_in_escapes_and_plain_stays_plain() {
        assert_eq!(paint(GOOD, "running"), "\u{1b}[32mrunning\u{1b}[0m");
        assert_eq!(paint(PLAIN, "stopped"), "stopped");
    }

    #[test]
    fn states_map_to_colours() {
        assert_eq!(state_style("running"), GOOD);
        for s in ["failed", "invalid", "blocked"] {
            assert_eq!(state_style(s), BAD, "{s}");
        }
        assert_eq!(state_style("stopped"), PLAIN);
    }
}
