//! Protocol versions and the compatibility rule.
//!
//! plugind sends `protocol_version` in `init`; a plugin may echo the version it speaks in its
//! `init` result. A plugin that answers `{}` is taken to speak the supervisor's version.

/// The only protocol version so far (docs/protocol.md).
pub const PROTOCOL_V1: u32 = 1;

/// The version this build speaks.
pub const PROTOCOL_VERSION: u32 = PROTOCOL_V1;

/// Whether a plugin answering `init` with `plugin_version` (None: it did not say) can be driven
/// by a supervisor speaking [`PROTOCOL_VERSION`].
pub fn is_compatible(plugin_version: Option<u64>) -> bool {
    match plugin_version {
        None => true,
        Some(v) => v == u64::from(PROTOCOL_VERSION),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_plugin_is_compatible() {
        assert!(is_compatible(None));
    }

    #[test]
    fn same_version_is_compatible_other_is_not() {
        assert!(is_compatible(Some(1)));
        assert!(!is_compatible(Some(2)));
        assert!(!is_compatible(Some(0)));
    }
}
