//! The Landlock ruleset for a plugin without `filesystem` (SPEC §6).
//!
//! Reads and execution stay allowed everywhere (interpreters load their libraries from anywhere);
//! every write-like right (write, truncate, create, remove, rename, device ioctl) is allowed only
//! below the instance's `TMPDIR`, the data dir (with `storage`) and a few character devices that
//! interpreters and shells open for writing.

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError, ABI,
};
use std::path::Path;

/// The ABI whose rights we ask for. Landlock's default best-effort mode drops what an older
/// kernel lacks (status `PartiallyEnforced`); V5 is the last ABI with new filesystem rights.
const ABI_FS: ABI = ABI::V5;

/// Devices writable by everybody on any system: writing to them reaches no file.
const DEVICES: [&str; 6] = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"];

/// Builds (in the parent) the ruleset the child will restrict itself with.
/// Paths that do not exist (a missing `/dev/tty`) are skipped.
pub fn ruleset(tmp_dir: &Path, data_dir: Option<&Path>) -> Result<RulesetCreated, RulesetError> {
    let all = AccessFs::from_all(ABI_FS);
    let writable = std::iter::once(tmp_dir).chain(data_dir);
    // For a file (a device), path_beneath_rules keeps only the rights that apply to files.
    Ruleset::default()
        .handle_access(all)?
        .create()?
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(ABI_FS)))?
        .add_rules(path_beneath_rules(writable, all))?
        .add_rules(path_beneath_rules(DEVICES, all))
}
