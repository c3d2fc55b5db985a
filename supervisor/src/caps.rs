//! Caps on what a plugin can make plugind hold (`docs/protocol.md`, "Caps").
//!
//! A plugin is untrusted, and everything it sends or declares that plugind keeps (log lines,
//! registered services, metric series) or forwards would otherwise grow plugind without bound:
//! one plugin sending `log` notifications of 4 MiB, or a million metric series, could take the
//! daemon and every other plugin down with it. So each such string and list has a cap here,
//! in one place, with the rule for going over it: truncated (text a human reads) or dropped
//! (anything a program matches on, where a cut value would be a wrong value). Either way the
//! plugin's log gets one warning per cap, not one per offence: a plugin that floods gets its
//! flood cut, not mirrored into plugind's log (see [`Overflows`]).
//!
//! The figures are documented for plugin authors in `docs/protocol.md` ("Caps").

use crate::logs::PluginLog;
use plugind_protocol::methods::ServiceDecl;
use std::sync::atomic::{AtomicU32, Ordering};

/// Bytes of a `log` message kept; the rest is cut.
pub const LOG_MESSAGE_BYTES: usize = 64 * 1024;
/// Bytes of a `log` notification's `fields`, as compact JSON; larger fields are dropped whole
/// (half an object is not an object).
pub const LOG_FIELDS_BYTES: usize = 16 * 1024;
/// Bytes of log text one plugin's ring keeps, whatever its line count: 1000 lines of 64 KiB
/// would otherwise be 64 MiB per plugin.
pub const LOG_RING_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of the longest notification line a plugin's is handled at all (a `log` line with its
/// 64 KiB message and 16 KiB of fields, even escaped, is far shorter); a longer one is reported
/// and ignored unparsed, but for a `log`'s message, read alone and cut. Its params read into a
/// tree would be about 36 times their text: 500 MB for a 14 MiB line.
pub const NOTIFICATION_BYTES: usize = 1 << 20;
/// Bytes of a handshake error kept for `last_error` (it quotes the plugin's own error message).
pub const ERROR_TEXT_BYTES: usize = 4 * 1024;
/// Bytes of a `$/progress` message kept.
pub const PROGRESS_MESSAGE_BYTES: usize = 1024;
/// Services one `register` answer may list; later ones are dropped.
pub const REGISTER_SERVICES: usize = 64;
/// Methods one registered service may list; later ones are dropped.
pub const REGISTER_METHODS: usize = 256;
/// Capability tags one registered service may list; later ones are dropped.
pub const REGISTER_CAPABILITIES: usize = 32;
/// Bytes of one name in a `register` answer (service, version, method, capability); a longer
/// one is dropped (a service with one is dropped whole).
pub const REGISTER_NAME_BYTES: usize = 128;
/// Methods one `register` answer's `methods` object may declare; later ones are dropped.
pub const REGISTER_CATALOG_METHODS: usize = 256;
/// Bytes of one method of a `register` answer's `methods`, as compact JSON (its schemas
/// included); a larger one is dropped whole (half a schema is not a schema).
pub const REGISTER_METHOD_BYTES: usize = 64 * 1024;
/// Bytes of one `register` answer's `methods`, all together (compact JSON); the methods past it
/// are dropped. 256 methods of 60 KB each made a 15 MB catalog per instance (audit 16).
pub const REGISTER_CATALOG_BYTES: usize = 1024 * 1024;
/// Metric series (name plus label values) one plugin may create.
pub const METRIC_SERIES: usize = 1000;
/// Labels one `metrics.emit` sample may carry besides `plugin`.
pub const METRIC_LABELS: usize = 16;
/// Bytes of a metric name, a label name or a label value.
pub const METRIC_TEXT_BYTES: usize = 256;
/// Bytes of exposition text one plugin's series may take (estimated as each series is made:
/// its lines, a histogram's buckets each, times the name and labels). Within the other caps a
/// plugin could otherwise make 54 MB of text, rebuilt at every scrape and every `metrics.get`.
pub const METRIC_PLUGIN_TEXT_BYTES: usize = 1024 * 1024;

/// A cap a plugin can go over, each reported once per plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// [`LOG_MESSAGE_BYTES`].
    LogMessage,
    /// [`LOG_FIELDS_BYTES`].
    LogFields,
    /// [`PROGRESS_MESSAGE_BYTES`].
    ProgressMessage,
    /// [`REGISTER_SERVICES`], [`REGISTER_METHODS`], [`REGISTER_CAPABILITIES`],
    /// [`REGISTER_NAME_BYTES`].
    Register,
    /// [`REGISTER_CATALOG_METHODS`], [`REGISTER_METHOD_BYTES`].
    RegisterCatalog,
    /// [`METRIC_SERIES`] and [`METRIC_PLUGIN_TEXT_BYTES`].
    MetricSeries,
    /// [`METRIC_LABELS`] and [`METRIC_TEXT_BYTES`].
    MetricLabels,
    /// A metric name first registered with another kind.
    MetricKind,
    /// Any other refused `metrics.emit` (bad name, label mismatch, counter going down).
    MetricInvalid,
}

impl Cap {
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// Which caps one plugin went over already, so each is warned about once per plugin: the
/// warning is for the plugin's author, and a repeat would only grow the log the cap protects.
#[derive(Debug, Default)]
pub struct Overflows(AtomicU32);

impl Overflows {
    /// True the first time `cap` is hit.
    pub fn first(&self, cap: Cap) -> bool {
        self.0.fetch_or(cap.bit(), Ordering::Relaxed) & cap.bit() == 0
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, ending it with a marker that
/// says how long it was; returns whether it was cut. A cut string gets a new, small buffer:
/// keeping the plugin's 4 MiB allocation behind 64 KiB of text would defeat the cap.
pub fn truncate(text: &mut String, max: usize) -> bool {
    match cut(text, max) {
        Some(short) => {
            *text = short;
            true
        }
        None => false,
    }
}

/// `text` cut to at most `max` bytes with the marker of [`truncate`], if it is longer.
fn cut(text: &str, max: usize) -> Option<String> {
    if text.len() <= max {
        return None;
    }
    let marker = format!(" …[truncated: {} bytes in all]", text.len());
    let mut end = max.saturating_sub(marker.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Some(format!("{}{marker}", &text[..end]))
}

/// A `$/progress` message cut to [`PROGRESS_MESSAGE_BYTES`] if longer (None: kept whole).
pub fn cut_progress(message: &str) -> Option<String> {
    cut(message, PROGRESS_MESSAGE_BYTES)
}

/// A `$/progress` message as plugind keeps it: cut to [`PROGRESS_MESSAGE_BYTES`], the first
/// cut warned about in the plugin's log.
pub fn progress_message(message: &str, log: &PluginLog) -> String {
    cut(message, PROGRESS_MESSAGE_BYTES).map_or_else(
        || message.to_owned(),
        |short| {
            log.over_cap(
                Cap::ProgressMessage,
                format!("a `$/progress` message was cut to {PROGRESS_MESSAGE_BYTES} bytes"),
            );
            short
        },
    )
}

/// Applies the `register` caps to the services a plugin listed, in place; returns whether
/// anything was dropped.
pub fn register(services: &mut Vec<ServiceDecl>) -> bool {
    let fits = |s: &String| s.len() <= REGISTER_NAME_BYTES;
    let before = services.len();
    services.truncate(REGISTER_SERVICES);
    services.retain(|s| fits(&s.name) && fits(&s.version));
    let mut cut = services.len() != before;
    for s in services.iter_mut() {
        for (list, max) in [(&mut s.methods, REGISTER_METHODS), (&mut s.capabilities, REGISTER_CAPABILITIES)] {
            let n = list.len();
            list.truncate(max);
            list.retain(fits);
            cut |= list.len() != n;
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_cap_and_char_boundaries() {
        let mut s = "é".repeat(100);
        assert!(truncate(&mut s, 64));
        assert!(s.len() <= 64, "{}", s.len());
        assert!(s.ends_with("[truncated: 200 bytes in all]"), "{s}");
        let mut short = "ok".to_owned();
        assert!(!truncate(&mut short, 64));
        assert_eq!(short, "ok");
    }

    #[test]
    fn each_cap_is_reported_once() {
        let o = Overflows::default();
        assert!(o.first(Cap::LogMessage));
        assert!(!o.first(Cap::LogMessage));
        assert!(o.first(Cap::MetricInvalid));
        assert!(!o.first(Cap::MetricInvalid));
        assert!(o.first(Cap::Register));
    }

    #[test]
    fn register_lists_are_cut() {
        let decl = |name: &str, n: usize| ServiceDecl {
            name: name.to_owned(),
            version: "1.0.0".into(),
            methods: (0..n).map(|i| format!("m{i}")).collect(),
            capabilities: vec!["x".repeat(REGISTER_NAME_BYTES + 1), "ok".into()],
        };
        let mut many: Vec<ServiceDecl> = (0..REGISTER_SERVICES + 5).map(|i| decl(&format!("s{i}"), 1)).collect();
        many.insert(0, decl(&"n".repeat(REGISTER_NAME_BYTES + 1), 1));
        many[1].methods = (0..REGISTER_METHODS * 2).map(|i| format!("m{i}")).collect();
        assert!(register(&mut many));
        assert_eq!(many.len(), REGISTER_SERVICES - 1, "the first 64, less the one with a long name");
        assert_eq!(many[0].methods.len(), REGISTER_METHODS);
        assert_eq!(many[0].capabilities, ["ok"]);
        let mut fine =
            vec![ServiceDecl { name: "a".into(), version: "1.0.0".into(), methods: vec![], capabilities: vec![] }];
        assert!(!register(&mut fine));
    }
}
