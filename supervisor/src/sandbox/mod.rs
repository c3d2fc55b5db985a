//! Isolation of plugin processes beyond rlimits (SPEC §5, §6; `docs/security.md`).
//!
//! Three kernel mechanisms, each used only where the host offers it (found once by [`host`]):
//! - **seccomp** ([`seccomp`]): denies non-`AF_UNIX` sockets without `networking`, and new
//!   processes (not threads) without `process`;
//! - **Landlock** ([`landlock`]): without `filesystem`, writes only below the data dir and the
//!   instance's private `TMPDIR`;
//! - **cgroups** ([`cgroup`]): one cgroup per instance for `memory_mb` and `processes`, and the
//!   counters that tell which limit ended an instance ([`limits`]).
//!
//! Everything is built in the parent ([`prepare`]) because the child, between `fork` and `exec`
//! of a multi-threaded parent, must not allocate; [`ChildConfinement`] then only makes syscalls.

pub mod cgroup;
pub mod landlock;
pub mod limits;
pub mod probe;
pub mod seccomp;

pub use limits::{classify, ExitFacts, Limit};
pub use probe::{host, init, HostSupport};

use plugind_protocol::control::PermissionStatus;
use plugind_protocol::manifest::{Manifest, Permission};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why an instance's confinement could not be built. plugind then refuses to start the
/// instance rather than run it with less isolation than its status claims.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Creating the Landlock ruleset failed.
    #[error("cannot build the Landlock ruleset: {0}")]
    Landlock(#[from] ::landlock::RulesetError),
    /// Compiling a seccomp filter failed.
    #[error("cannot build the seccomp filter: {0}")]
    Seccomp(#[from] seccompiler::BackendError),
    /// Creating or configuring the instance's cgroup failed.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// What the sandbox needs to know about one instance.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The plugin's manifest (permissions and limits).
    pub manifest: &'a Manifest,
    /// Its data dir (only with `storage`): writable under Landlock.
    pub data_dir: Option<&'a Path>,
    /// The instance's private `TMPDIR`: writable under Landlock. Must exist already.
    pub tmp_dir: &'a Path,
    /// The instance id (names the cgroup).
    pub instance: u64,
}

/// The confinement of one instance, split into what the child applies and what the parent keeps.
pub struct Confinement {
    /// Moved into the `pre_exec` closure.
    pub child: ChildConfinement,
    /// The instance's cgroup, kept by the parent to read its counters after the exit; dropping
    /// it kills what is left inside and removes it.
    pub cgroup: Option<cgroup::Cgroup>,
}

/// Pre-built kernel objects the child installs on itself before `exec`.
pub struct ChildConfinement {
    /// `cgroup.procs` files of the instance's cgroups, opened before the fork.
    procs: Vec<File>,
    /// The Landlock ruleset (already created and filled), when `filesystem` is denied.
    landlock: Option<::landlock::RulesetCreated>,
    /// Compiled seccomp programs, installed last.
    filters: Vec<seccompiler::BpfProgram>,
    /// Whether they deny new processes (then the exec chain must not fork either).
    denies_process: bool,
}

impl ChildConfinement {
    /// Whether the child may not create processes: its program must not be a script that forks
    /// before it execs the real interpreter (a version manager's shim).
    pub fn denies_process(&self) -> bool {
        self.denies_process
    }

    /// Moves the calling process into the instance's cgroups. Runs in the child: syscalls only.
    pub fn join_cgroups(&self) -> io::Result<()> {
        for f in &self.procs {
            // "0" means the writing process itself (v1 and v2).
            // SAFETY: a valid fd and a 1-byte buffer that outlives the call.
            if unsafe { libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Applies Landlock, then the seccomp filters (last: they forbid what the setup before them
    /// may need). Runs in the child: syscalls only, errors carry an errno and no allocation.
    pub fn restrict(&mut self) -> io::Result<()> {
        if let Some(rs) = self.landlock.take() {
            match rs.restrict_self() {
                Ok(st) if st.ruleset != ::landlock::RulesetStatus::NotEnforced => {}
                // The probe said Landlock works; running unconfined would make the status lie.
                Ok(_) => return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
                Err(_) => return Err(io::Error::last_os_error()),
            }
        }
        for prog in &self.filters {
            // apply_filter sets NO_NEW_PRIVS itself (set earlier anyway).
            if seccompiler::apply_filter(prog).is_err() {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Builds the confinement of one instance: what its manifest does not grant is denied with the
/// mechanisms this host has; its limits get a cgroup where plugind can create one.
pub fn prepare(req: &Request<'_>) -> Result<Confinement, SandboxError> {
    let host = host();
    let m = req.manifest;
    let landlock = if !m.grants(Permission::Filesystem) && host.landlock_abi.is_some() {
        Some(landlock::ruleset(req.tmp_dir, req.data_dir)?)
    } else {
        None
    };
    let denies_process = host.seccomp && !m.grants(Permission::Process);
    let filters =
        if host.seccomp { seccomp::filters(!m.grants(Permission::Networking), denies_process)? } else { Vec::new() };
    let name = format!("{}{}.{}.{}", cgroup::PREFIX, std::process::id(), m.name, req.instance);
    let (cgroup, procs) = match host.cgroups.create(&name, &m.limits)? {
        Some((cg, procs)) => (Some(cg), procs),
        None => (None, Vec::new()),
    };
    Ok(Confinement { child: ChildConfinement { procs, landlock, filters, denies_process }, cgroup })
}

/// Per permission of `m`: granted, whether this host enforces its denial, and how (SPEC §6).
/// Pure apart from the cached host probe, so `pluginctl check` can call it too.
pub fn report(m: &Manifest) -> BTreeMap<String, PermissionStatus> {
    let host = host();
    Permission::ALL
        .iter()
        .map(|&p| {
            let (enforced, mechanism) = match p {
                Permission::Storage => (true, "plugind"),
                Permission::Networking | Permission::Process if host.seccomp => (true, "seccomp"),
                Permission::Filesystem if host.landlock_abi.is_some() => (true, "landlock"),
                _ => (false, "none"),
            };
            let granted = m.grants(p);
            // A granted permission has no denial to enforce: report it as holding.
            let status = PermissionStatus { granted, enforced: granted || enforced, mechanism: mechanism.to_owned() };
            (p.as_str().to_owned(), status)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn report_lists_every_permission_with_its_mechanism() {
        let m =
            Manifest::from_value(&json!({"name": "a", "version": "1.0.0", "main": "a", "permissions": ["storage"]}))
                .unwrap();
        let r = report(&m);
        assert_eq!(r.len(), 4);
        assert!(r["storage"].granted && r["storage"].enforced);
        assert_eq!(r["storage"].mechanism, "plugind");
        let seccomp = host().seccomp;
        assert_eq!(r["networking"].enforced, seccomp);
        assert_eq!(r["networking"].mechanism, if seccomp { "seccomp" } else { "none" });
        assert_eq!(r["filesystem"].enforced, host().landlock_abi.is_some());
    }
}
