//! Isolation of plugin processes (docs/security.md; `docs/security.md` has the threat model).
//!
//! Kernel mechanisms, each used only where the host offers it (found once by [`host`]):
//! - a **mount namespace** ([`namespace`]): plugind's state dir, config, token, control socket and
//!   the other plugins' directories are covered; the instance's own dirs come back;
//! - **capabilities** ([`privileges`]): a root plugind's children keep none;
//! - **Landlock** ([`landlock`]): every instance is its own domain: it can signal and ptrace only
//!   its own processes and reach no abstract socket outside; without `filesystem`, writes only
//!   below the data dir and the instance's private `TMPDIR`;
//! - **seccomp** ([`seccomp`]): denies non-`AF_UNIX` sockets without `networking`, new processes
//!   (not threads) without `process`, metadata changes without `filesystem`, and to everyone the
//!   mount syscalls and a parent-death signal other than SIGKILL;
//! - **cgroups** ([`cgroup`]): one cgroup per instance for `memory_mb` and `processes`, the
//!   counters that tell which limit ended an instance ([`limits`]), and the mark by which plugind
//!   recognises a plugin's processes (on its control socket, and when a dead run left some).
//!
//! Everything is built in the parent ([`prepare`]) because the child, between `fork` and `exec`
//! of a multi-threaded parent, must not allocate; [`ChildConfinement`] then only makes syscalls.

pub mod cgroup;
pub mod landlock;
pub mod limits;
pub mod namespace;
pub mod privileges;
pub mod probe;
pub mod seccomp;

pub use limits::{classify, ExitFacts, Limit};
pub use probe::{host, init, HostSupport};

pub use namespace::PrivatePaths;

use plugind_protocol::control::{PermissionStatus, SandboxGuarantee};
use plugind_protocol::manifest::{Manifest, Permission};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
    /// Preparing the mount namespace failed.
    #[error(transparent)]
    Namespace(#[from] namespace::PlanError),
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
    /// The mount namespace to make, where the host allows it.
    mounts: Option<namespace::MountPlan>,
    /// Drop every capability (the child can: plugind is root, or the child owns a user namespace).
    drop_caps: Option<u32>,
    /// The Landlock ruleset (already created and filled).
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

    /// Marks every inherited descriptor above 2 close-on-exec: the plugin gets 0, 1 and 2 only,
    /// whatever plugind itself inherited. (Marked, not closed: std's exec-error pipe must stay
    /// open until `exec`.)
    pub fn close_inherited_fds() -> io::Result<()> {
        // SAFETY: a plain syscall without pointers.
        if unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the mount namespace. Before the rlimits: it opens descriptors, and the child still
    /// holds every descriptor of plugind (close-on-exec), which may be more than `open_files`.
    /// Runs in the child: syscalls only.
    pub fn enter_namespace(&self) -> io::Result<()> {
        match &self.mounts {
            Some(plan) => plan.apply(),
            None => Ok(()),
        }
    }

    /// Drops capabilities, applies Landlock, then the seccomp filters (last: they forbid what the
    /// setup before them may need). Runs in the child: syscalls only, errors carry an errno and
    /// no allocation.
    pub fn restrict(&mut self) -> io::Result<()> {
        if let Some(last_cap) = self.drop_caps {
            privileges::drop_all(last_cap)?;
        }
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

/// A part of the sandbox that `pluginctl check` can leave out, to find which one a plugin that
/// fails under the full sandbox trips over (its diagnostic mode). plugind never relaxes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relax {
    /// The seccomp denial of network sockets.
    Network,
    /// The seccomp denial of new processes.
    Process,
    /// The seccomp denial of metadata changes.
    Metadata,
    /// Landlock's write restrictions (writes allowed everywhere, as with `filesystem`).
    Writes,
    /// Landlock's scopes (signals, abstract Unix sockets).
    Scopes,
    /// The mount namespace (covers of private paths, `/sys/fs/cgroup`, read-only `/proc/sys`).
    Mounts,
}

impl Relax {
    /// Every part, in the order `check` tries them.
    pub const ALL: [Relax; 6] =
        [Relax::Process, Relax::Network, Relax::Writes, Relax::Metadata, Relax::Mounts, Relax::Scopes];

    /// What the plugin does that this part denies, for `check`'s report.
    pub fn explain(self) -> &'static str {
        match self {
            Relax::Network => "it opens network sockets (denied without the `networking` permission)",
            Relax::Process => "it starts processes, e.g. a shell or launcher that forks (denied without `process`)",
            Relax::Metadata => "it changes file metadata: chmod, chown, utime or xattrs (denied without `filesystem`)",
            Relax::Writes => "it writes outside $TMPDIR and its data dir (denied without `filesystem`)",
            Relax::Scopes => {
                "it signals processes it did not start, or connects to an abstract Unix socket (denied to every plugin)"
            }
            Relax::Mounts => {
                "it reads what plugins cannot see: another plugin's directory, plugind's state, /sys/fs/cgroup, or writes /proc/sys"
            }
        }
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// Parts left out of every sandbox built from now on (`pluginctl check` only).
static RELAXED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Leaves `part` out of the sandboxes built from now on (`None`: the full sandbox again).
pub fn relax(part: Option<Relax>) {
    RELAXED.store(part.map_or(0, Relax::bit), std::sync::atomic::Ordering::Relaxed);
}

fn relaxed(part: Relax) -> bool {
    RELAXED.load(std::sync::atomic::Ordering::Relaxed) & part.bit() != 0
}

/// The parts of the sandbox a plugin with manifest `m` runs under on this host, for `check`'s
/// report when nothing else explains a failure.
pub fn profile(m: &Manifest) -> Vec<Relax> {
    let host = host();
    let mut parts = Vec::new();
    if host.seccomp {
        for (perm, part) in [
            (Permission::Process, Relax::Process),
            (Permission::Networking, Relax::Network),
            (Permission::Filesystem, Relax::Metadata),
        ] {
            if !m.grants(perm) {
                parts.push(part);
            }
        }
    }
    if host.landlock_abi.is_some() && !m.grants(Permission::Filesystem) {
        parts.push(Relax::Writes);
    }
    if host.mount_ns.is_ok() {
        parts.push(Relax::Mounts);
    }
    if host.landlock_scopes() {
        parts.push(Relax::Scopes);
    }
    parts.sort_by_key(|p| Relax::ALL.iter().position(|a| a == p));
    parts
}

/// What plugind hides from every plugin (set once by `plugind::run`; `pluginctl check` has none).
static PRIVATE: OnceLock<PrivatePaths> = OnceLock::new();

/// Hides `paths` from every plugin started from now on (their canonical forms are taken now).
/// Returns the secrets hidden as single files only, and why (see [`namespace::own_directory`]).
pub fn protect(paths: PrivatePaths) -> Vec<(PathBuf, String)> {
    let paths = paths.canonical();
    let exposed = paths.exposed.clone();
    let _ = PRIVATE.set(paths);
    exposed
}

/// Builds the confinement of one instance whose directory is `plugin_dir`: what its manifest does
/// not grant is denied with the mechanisms this host has; its limits get a cgroup where plugind
/// can create one; what is private to plugind and other plugins is hidden.
pub fn prepare(req: &Request<'_>, plugin_dir: &Path) -> Result<Confinement, SandboxError> {
    let host = host();
    let m = req.manifest;
    let fs_granted = m.grants(Permission::Filesystem);
    let landlock = match host.landlock_abi {
        Some(_) => Some(landlock::ruleset(
            req.tmp_dir,
            req.data_dir,
            fs_granted || relaxed(Relax::Writes),
            host.landlock_scopes() && !relaxed(Relax::Scopes),
        )?),
        None => None,
    };
    let denies_process = host.seccomp && !m.grants(Permission::Process) && !relaxed(Relax::Process);
    let denials = seccomp::Denials {
        network: !m.grants(Permission::Networking) && !relaxed(Relax::Network),
        process: denies_process,
        metadata: !fs_granted && !relaxed(Relax::Metadata),
    };
    let filters = if host.seccomp { seccomp::filters(denials)? } else { Vec::new() };
    let mounts = match &host.mount_ns {
        Ok(()) if !relaxed(Relax::Mounts) => {
            let private = PRIVATE.get().cloned().unwrap_or_default();
            Some(namespace::MountPlan::new(&private, plugin_dir, req.tmp_dir, req.data_dir, !host.root)?)
        }
        _ => None,
    };
    // Without a user namespace, an ordinary user's child has no capability to drop.
    let drop_caps = (host.root || mounts.is_some()).then_some(host.last_cap);
    let name = format!("{}{}.{}.{}", cgroup::PREFIX, std::process::id(), m.name, req.instance);
    let (cgroup, procs) = match host.cgroups.create(&name, &m.limits, m.instances)? {
        Some((cg, procs)) => (Some(cg), procs),
        None => (None, Vec::new()),
    };
    Ok(Confinement { child: ChildConfinement { procs, mounts, drop_caps, landlock, filters, denies_process }, cgroup })
}

/// Per permission of `m`: granted, whether this host enforces its denial, and how (docs/security.md).
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

/// The containment guarantees (docs/security.md) for a plugin with manifest `m`, and whether this
/// host's kernel makes each hold: one row each, in the status (`sandbox`) and `pluginctl check`.
/// Nothing is claimed that the probed mechanisms do not enforce.
pub fn guarantees(m: &Manifest) -> Vec<SandboxGuarantee> {
    let host = host();
    let row = |guarantee: &str, held: Result<(), String>, mechanism: &str| SandboxGuarantee {
        guarantee: guarantee.to_owned(),
        held: held.is_ok(),
        mechanism: mechanism.to_owned(),
        why: held.err(),
    };
    let need = |ok: bool, why: &str| if ok { Ok(()) } else { Err(why.to_owned()) };
    let ns = host.mount_ns.clone().map_err(|e| format!("no mount namespace: {e}"));
    let cgroups = host.cgroups.any();
    let scopes = need(host.landlock_scopes(), "Landlock scopes need ABI 6 (Linux 6.12)");
    let fs_granted = m.grants(Permission::Filesystem);
    let writes = if fs_granted {
        ("writes-outside-private-paths", ns.clone(), "mount namespace (read-only covers), Landlock (no umount)")
    } else {
        let ok = host.landlock_abi.is_some() && host.seccomp;
        ("no-writes-without-filesystem", need(ok, "needs Landlock and seccomp"), "Landlock, seccomp (metadata)")
    };
    vec![
        row(
            "control-api",
            if ns.is_ok() || cgroups { Ok(()) } else { Err("neither a mount namespace nor a cgroup".into()) },
            "socket, config and token hidden (mount namespace); peers in a plugin cgroup refused",
        ),
        row("signals-and-ptrace", scopes, "Landlock domain and scopes, no capabilities, plugind not dumpable"),
        row(
            "limits-and-scheduling",
            need(host.seccomp, "needs seccomp"),
            "seccomp: prlimit, sched_set*, setpriority and ioprio_set only on the caller itself",
        ),
        row(
            "private-state",
            ns.clone(),
            "mount namespace: state dir, config, token, other plugins covered; a /dev of its own, no disks",
        ),
        row(
            "private-ipc",
            ns.clone(),
            "IPC namespace: SysV shared memory, semaphores, message queues die with the instance",
        ),
        row("no-keyrings", need(host.seccomp, "needs seccomp"), "seccomp: add_key, keyctl, request_key refused"),
        row(writes.0, writes.1, writes.2),
        row("inherited-fds", Ok(()), "close_range(CLOSE_RANGE_CLOEXEC) before exec"),
        row(
            "outlive-plugind",
            need(host.seccomp && cgroups, "needs seccomp (parent-death signal kept) and a cgroup per instance"),
            "parent-death signal locked by seccomp; a dead run's cgroups killed at start",
        ),
        row("plugind-memory", Ok(()), "plugind caps what it keeps per plugin"),
        row(
            "limit-accounting",
            need(host.cgroups.memory().is_some(), "no memory cgroup: memory_mb is RLIMIT_DATA only, not reported"),
            "cgroup OOM and pids events, SIGXCPU",
        ),
        row("state-file-modes", Ok(()), "state dir 0700, kv database 0600"),
    ]
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
