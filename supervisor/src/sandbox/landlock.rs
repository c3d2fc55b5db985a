//! The Landlock domain every plugin instance runs in (docs/security.md).
//!
//! Without `filesystem`: reads and execution stay allowed everywhere (interpreters load their
//! libraries from anywhere); every write-like right (write, truncate, create, remove, rename,
//! device ioctl) is allowed only below the instance's `TMPDIR`, the data dir (with `storage`) and
//! a few character devices that interpreters and shells open for writing.
//!
//! With `filesystem`: every right is allowed everywhere (the mount namespace has already hidden
//! what must stay private). The domain still matters: a process in a Landlock domain that
//! handles filesystem rights cannot `mount` or `umount`, so the namespace's covers stay on.
//!
//! For every plugin, where the kernel has Landlock ABI 6: **scopes**. A plugin can signal only
//! processes of its own domain (itself and its children, not plugind nor another plugin), and
//! cannot connect to abstract Unix sockets made outside it. Any Landlock domain also confines
//! ptrace (and with it `/proc/PID/mem`, `pidfd_getfd`, `process_vm_readv`) to its own processes.

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetError,
    Scope, ABI,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The ABI whose rights we ask for. Landlock's default best-effort mode drops what an older
/// kernel lacks (status `PartiallyEnforced`); V5 is the last ABI with new filesystem rights.
const ABI_FS: ABI = ABI::V5;

/// The first ABI with scopes (signals, abstract Unix sockets): Linux 6.12.
pub const ABI_SCOPES: i32 = 6;

/// Builds (in the parent) the ruleset the child will restrict itself with. `writes_anywhere`:
/// the plugin has `filesystem`. `scoped`: the kernel has scopes (ABI ≥ 6).
/// Paths that do not exist (a missing `/dev/tty`) are skipped.
pub fn ruleset(
    tmp_dir: &Path,
    data_dir: Option<&Path>,
    writes_anywhere: bool,
    scoped: bool,
) -> Result<RulesetCreated, RulesetError> {
    let all = AccessFs::from_all(ABI_FS);
    let mut ruleset = Ruleset::default().handle_access(all)?;
    if scoped {
        ruleset = ruleset.scope(Scope::Signal | Scope::AbstractUnixSocket)?;
    }
    let created = ruleset.create()?;
    if writes_anywhere {
        return created.add_rules(path_beneath_rules(["/"], all));
    }
    let writable = std::iter::once(tmp_dir).chain(data_dir);
    // For a file (a device), path_beneath_rules keeps only the rights that apply to files.
    created
        .add_rules(path_beneath_rules(["/"], AccessFs::from_read(ABI_FS)))?
        .add_rules(path_beneath_rules(writable, all))?
        // The devices of the plugin's own `/dev`: writing to them reaches no file.
        .add_rules(path_beneath_rules(
            super::namespace::DEVICES.map(|d| Path::new(OsStr::from_bytes(d.to_bytes()))),
            all,
        ))
}
