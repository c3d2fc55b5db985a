//! A private mount namespace per instance: what a plugin must not read is not there (docs/security.md).
//!
//! Like bubblewrap or systemd's `InaccessiblePaths=`/`PrivateTmp=`, the child unshares its mount
//! namespace between `fork` and `exec` and lays empty read-only tmpfs mounts over what it must not
//! see, then brings back what is its own:
//! - plugind's state dir (kv database, logs, every plugin's data dir and temp dir) is covered;
//!   the instance's own `TMPDIR` and data dir are bind-mounted back at their usual paths;
//! - every plugin root (`--plugins DIR`) is covered; the plugin's own directory is bind-mounted
//!   back at its usual path, so other plugins' code and files are gone; its `plugin.json` is
//!   made read-only (with `filesystem` a plugin could otherwise grant itself any permission at
//!   the next hot reload);
//! - the directory of plugind's config file and of its token file is covered whole when it holds
//!   nothing else ([`own_directory`]: a cover on a file alone is dropped when the file is
//!   replaced by a rename); otherwise, and for the control socket, the file gets a read-only
//!   `/dev/null` on top;
//! - every directory above those and the covers is bound onto itself: a mount point cannot be
//!   renamed or removed in its namespace, so a `filesystem` plugin cannot move them aside and
//!   put its own in their place;
//! - `/sys/fs/cgroup` is covered (a plugin cannot move itself out of its cgroup, which is how
//!   plugind recognises its processes), and `/sys` (every mount below it too) and `/proc/sys`
//!   are made read-only (as root, all of `/proc`); `/proc/keys` and
//!   `/proc/key-users` (the uid's keys, listed) get `/dev/null` on top;
//! - as root, `/proc` is a new, read-only instance with `hidepid=ptraceable`: plugind and other
//!   plugins are not even listed, and no host setting in it (`/proc/irq`, `/proc/sysrq-trigger`)
//!   can be written;
//! - `/dev` is a read-only tmpfs of its own, as bubblewrap's `--dev` makes it: `null`, `zero`,
//!   `full`, `random`, `urandom` and `tty` bound from the host's, the `fd`/`stdin`/`stdout`/
//!   `stderr` links, a `/dev/shm` of its own and a new `devpts` instance. No disk or other
//!   device is there: a root plugin read plugind's state dir, token and other plugins' kv data
//!   through the raw block device under it, past every cover (audit 19), and the host's
//!   `/dev/shm` was a place shared by every plugin.
//!
//! The same `unshare` gives it an IPC namespace of its own (`CLONE_NEWIPC`): SysV shared memory,
//! semaphores and message queues and POSIX message queues are its own, and die with the instance.
//! In the host's, a segment a plugin made and detached outlived it, its restarts and plugind
//! (300 MB each, outside `memory_mb` once its cgroup was gone), and others of its uid could
//! attach it by key.
//!
//! As root the child only needs `CLONE_NEWNS | CLONE_NEWIPC`. An ordinary user's plugind also
//! unshares a user namespace that maps the plugin's uid and gid to themselves (the plugin sees
//! its own ids, and loses the namespace's capabilities at `exec`).
//!
//! The mounts cannot be undone from inside: the child drops every capability before `exec`, the
//! Landlock domain every plugin gets forbids `mount`/`umount`, and seccomp denies the mount
//! syscalls. Everything is computed in the parent ([`MountPlan::new`]): [`MountPlan::apply`] runs
//! between `fork` and `exec` and only makes syscalls on prebuilt C strings.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::null;

/// What plugind hides from every plugin, set once at startup ([`super::protect`]).
#[derive(Debug, Clone, Default)]
pub struct PrivatePaths {
    /// The state dirs: plugind's own (`check` hides every running plugind's).
    pub state_dirs: Vec<PathBuf>,
    /// The plugin roots (`--plugins`).
    pub plugin_roots: Vec<PathBuf>,
    /// Single files: the control socket (and, once [`canonical`](Self::canonical), each secret
    /// whose directory is not hidden whole).
    pub files: Vec<PathBuf>,
    /// The config and token files: hidden with their whole directory where it is plugind's own
    /// ([`own_directory`]), else as single files.
    pub secrets: Vec<PathBuf>,
    /// The secrets' directories hidden whole (set by [`canonical`](Self::canonical)).
    pub secret_dirs: Vec<PathBuf>,
    /// The secrets hidden as single files, with why their directory is not hidden
    /// (set by [`canonical`](Self::canonical), for plugind to warn).
    pub exposed: Vec<(PathBuf, String)>,
}

impl PrivatePaths {
    /// Canonical forms (what the kernel resolves), dropping directories that do not exist. A
    /// file may not exist yet (the socket is bound later): its directory is resolved instead.
    /// Each secret goes to `secret_dirs` or, with the reason, to `files` and `exposed`.
    pub fn canonical(self) -> Self {
        let canon = |p: PathBuf| std::fs::canonicalize(&p).ok();
        let canon_file = |p: PathBuf| {
            std::fs::canonicalize(&p).ok().or_else(|| {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
            })
        };
        let state_dirs: Vec<PathBuf> = self.state_dirs.into_iter().filter_map(canon).collect();
        let plugin_roots: Vec<PathBuf> = self.plugin_roots.into_iter().filter_map(canon).collect();
        let mut files: Vec<PathBuf> = self.files.into_iter().filter_map(canon_file).collect();
        // A secret is hidden where it is, and where it is reached from: the directory of its
        // name as given (its directory resolved, not the name: `cm/token -> ..data/token`, as
        // Kubernetes mounts a Secret) and that of the file the name resolves to.
        let reached_from = |p: &PathBuf| {
            let p = std::path::absolute(p).ok()?;
            Some(std::fs::canonicalize(p.parent()?).ok()?.join(p.file_name()?))
        };
        let mut secrets: Vec<PathBuf> = Vec::new();
        for given in &self.secrets {
            for form in [reached_from(given), canon_file(given.clone())].into_iter().flatten() {
                if !secrets.contains(&form) {
                    secrets.push(form);
                }
            }
        }
        let own: Vec<PathBuf> = files.iter().chain(&secrets).cloned().collect();
        let (mut secret_dirs, mut exposed) = (self.secret_dirs, self.exposed);
        for secret in &secrets {
            // Inside what is covered whole already: nothing to add.
            if state_dirs.iter().chain(&plugin_roots).any(|d| secret.starts_with(d)) {
                continue;
            }
            match own_directory(secret, &own) {
                Ok(dir) => secret_dirs.push(dir),
                Err(why) => {
                    files.push(secret.clone());
                    exposed.push((secret.clone(), why));
                }
            }
        }
        secret_dirs.sort();
        secret_dirs.dedup();
        PrivatePaths { state_dirs, plugin_roots, files, secrets, secret_dirs, exposed }
    }
}

/// The directory of `secret` (the config or token file) when it is plugind's own: it holds only
/// plugind's files (`own`: config, token, socket) and their editors' and tools' variants
/// (`plugind.toml~`, `.plugind.toml.swp`, `#plugind.toml#`, `token.new`…), and names beginning
/// with `..` (Kubernetes' `..data` and its timestamped directories). Such a directory is
/// hidden whole. A file alone is covered by a mount on it, which the kernel drops when the file
/// is replaced by a rename (`sed -i`, most editors, `mv token.new token`), from plugind's side of
/// the namespace too: every running plugin could then read the new config and token (audit 21).
/// A whole directory keeps its cover through renames inside it. Err: why it is not plugind's own.
pub fn own_directory(secret: &Path, own: &[PathBuf]) -> Result<PathBuf, String> {
    let Some(dir) = secret.parent().filter(|d| d.parent().is_some()) else {
        return Err("it is in /".to_owned());
    };
    let names: Vec<&std::ffi::OsStr> =
        own.iter().filter(|f| f.parent() == Some(dir)).filter_map(|f| f.file_name()).collect();
    let variant = |name: &[u8]| {
        if name.starts_with(b"..") {
            return true;
        }
        let bare = [&b".#"[..], b"#", b"."].iter().find_map(|p| name.strip_prefix(*p)).unwrap_or(name);
        names.iter().any(|n| bare.starts_with(n.as_bytes()) || name.starts_with(n.as_bytes()))
    };
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{} cannot be listed: {e}", dir.display()))?;
    for entry in entries {
        let name = entry.map_err(|e| format!("{} cannot be listed: {e}", dir.display()))?.file_name();
        if !variant(name.as_bytes()) {
            return Err(format!("{} also holds {}", dir.display(), name.to_string_lossy()));
        }
    }
    Ok(dir.to_path_buf())
}

/// Why a mount plan could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot prepare the mount namespace ({path}): {source}")]
pub struct PlanError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// A directory the instance keeps: bind-mounted back at its usual path after the covers.
struct Kept {
    /// Its usual path.
    target: CString,
    /// Every ancestor of `target` below `/`, shallow first: created (in a cover's tmpfs) if missing.
    ancestors: Vec<CString>,
}

/// At most the plugin dir, the `TMPDIR` and the data dir come back.
const MAX_KEPT: usize = 3;

/// Everything the child does to its mount namespace, prebuilt.
pub struct MountPlan {
    /// For an unprivileged plugind: the user namespace's maps (`uid_map`, `gid_map` contents).
    user_ns: Option<(CString, CString)>,
    /// The directories above the covers and the covered files, shallow first, bound onto
    /// themselves: a mount point cannot be renamed or removed in its namespace.
    pins: Vec<CString>,
    /// Directories covered by an empty tmpfs, shallow first.
    covers: Vec<CString>,
    /// What comes back inside the covers.
    kept: Vec<Kept>,
    /// Files covered by a read-only `/dev/null`.
    files: Vec<CString>,
    /// The plugin's own manifest, bound onto itself read-only.
    manifest: CString,
    /// The working directory to enter again once its path leads to the bind mount.
    cwd: CString,
}

/// The directories of other plugins that live outside the plugin roots: a plugin root's entry
/// may be a symlink to a directory elsewhere (`plugins/x -> /srv/x`), and covering the root
/// hides only the link (audit 19: a plugin read such a plugin's config and `.env`, and with
/// `filesystem` could rewrite its code). Their targets are covered too; not one that holds
/// `plugin_dir`'s own files, a plugin root or the state dir (covering it would hide them, or
/// everything, as a link to `/` would).
fn other_plugins_elsewhere(private: &PrivatePaths, plugin_dir: &Path) -> Vec<PathBuf> {
    let own = std::fs::canonicalize(plugin_dir).unwrap_or_else(|_| plugin_dir.to_owned());
    let roots: Vec<&PathBuf> = private.plugin_roots.iter().chain(&private.state_dirs).collect();
    let mut found = Vec::new();
    for root in &private.plugin_roots {
        let Ok(entries) = std::fs::read_dir(root) else { continue };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let Ok(target) = std::fs::canonicalize(entry.path()) else { continue };
            let holds = |p: &Path| p.starts_with(&target);
            if target.is_dir() && !holds(&own) && !roots.iter().any(|r| holds(r) || target.starts_with(r)) {
                found.push(target);
            }
        }
    }
    found
}

const TMPFS_OPTS: &CStr = c"size=16k,mode=0755";
const CGROUP_FS: &CStr = c"/sys/fs/cgroup";
const PROC_SYS: &CStr = c"/proc/sys";
const SYS: &CStr = c"/sys";
/// `hidepid=ptraceable`, by number (Linux 5.8).
const HIDEPID: &CStr = c"hidepid=4";

fn cstr(p: &Path) -> CString {
    // Paths from the OS never hold a NUL byte.
    CString::new(p.as_os_str().as_bytes()).expect("UNWRAP: OS paths hold no NUL byte")
}

impl MountPlan {
    /// The plan for an instance whose own directories are `plugin_dir`, `tmp_dir` and `data_dir`.
    /// `user_ns`: whether plugind is unprivileged (then the child needs a user namespace).
    pub fn new(
        private: &PrivatePaths,
        plugin_dir: &Path,
        tmp_dir: &Path,
        data_dir: Option<&Path>,
        user_ns: bool,
    ) -> Result<MountPlan, PlanError> {
        let mut covers: Vec<PathBuf> =
            private.plugin_roots.iter().chain(&private.state_dirs).chain(&private.secret_dirs).cloned().collect();
        covers.extend(other_plugins_elsewhere(private, plugin_dir));
        covers.sort_by_key(|p| p.components().count());
        covers.dedup();
        // A cover inside another cover is hidden already (and its path gone in the namespace).
        let nested = |p: &PathBuf, all: &[PathBuf]| all.iter().any(|o| o != p && p.starts_with(o));
        let outer: Vec<PathBuf> = covers.iter().filter(|p| !nested(p, &covers)).cloned().collect();
        let mut kept = Vec::new();
        // The plugin dir's usual path is root/NAME even when NAME is a symlink to elsewhere.
        for dir in std::iter::once(plugin_dir).chain(Some(tmp_dir)).chain(data_dir) {
            let dir = std::path::absolute(dir).map_err(|source| PlanError { path: dir.into(), source })?;
            if !outer.iter().any(|c| dir.starts_with(c)) {
                continue;
            }
            kept.push(Self::keep(&dir)?);
            debug_assert!(kept.len() <= MAX_KEPT);
        }
        let files: Vec<CString> =
            private.files.iter().filter(|f| !outer.iter().any(|c| f.starts_with(c))).map(|f| cstr(f)).collect();
        // A `filesystem` plugin renamed the directory above the state dir and the socket, made
        // its own in their place, and took the operator's next `pluginctl` and plugind's next
        // rescan (audit 16). Every directory above what is covered becomes a mount point of its
        // own: in this namespace it can be neither renamed nor removed (EBUSY).
        let mut pins: Vec<&Path> = outer
            .iter()
            .chain(&private.files)
            .flat_map(|p| p.ancestors().skip(1))
            .filter(|a| a.parent().is_some() && !outer.iter().any(|c| a.starts_with(c)))
            .collect();
        pins.sort_by_key(|p| (p.components().count(), p.to_path_buf()));
        pins.dedup();
        let user_ns = user_ns.then(|| {
            let line = |id: u32| CString::new(format!("{id} {id} 1")).expect("UNWRAP: digits hold no NUL byte");
            (line(nix::unistd::geteuid().as_raw()), line(nix::unistd::getegid().as_raw()))
        });
        Ok(MountPlan {
            user_ns,
            pins: pins.into_iter().map(cstr).collect(),
            covers: outer.iter().map(|p| cstr(p)).collect(),
            kept,
            files,
            manifest: cstr(&std::path::absolute(plugin_dir.join("plugin.json")).unwrap_or_default()),
            cwd: cstr(&std::path::absolute(plugin_dir).unwrap_or_else(|_| plugin_dir.into())),
        })
    }

    fn keep(dir: &Path) -> Result<Kept, PlanError> {
        if !dir.is_dir() {
            let source = io::Error::from_raw_os_error(libc::ENOTDIR);
            return Err(PlanError { path: dir.into(), source });
        }
        let ancestors = dir.ancestors().skip(1).filter(|a| a.parent().is_some()).collect::<Vec<_>>();
        let ancestors = ancestors.into_iter().rev().map(cstr).collect();
        Ok(Kept { target: cstr(dir), ancestors })
    }

    /// Runs in the child between `fork` and `exec`: syscalls only, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        let flags = namespace_flags(self.user_ns.is_some());
        // SAFETY: every call below gets NUL-terminated strings that outlive it, or null where the
        // kernel allows it; return values are checked.
        unsafe {
            cvt(libc::unshare(flags))?;
            if let Some((uid_map, gid_map)) = &self.user_ns {
                // plugind is not dumpable, and neither is this fork of it until `exec`: its
                // /proc/self files belong to root and its own maps could not be written. Other
                // plugins still cannot look inside: each is in a Landlock domain, which denies
                // ptrace-mode access (mem, environ) to any process outside it.
                cvt(libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0))?;
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/uid_map", uid_map.as_bytes())?;
                write_file(c"/proc/self/gid_map", gid_map.as_bytes())?;
            }
            // Our mounts must not propagate back to the host's namespace (shared "/" under systemd).
            cvt(libc::mount(null(), c"/".as_ptr(), null(), libc::MS_REC | libc::MS_PRIVATE, null()))?;
            for pin in &self.pins {
                if libc::mount(pin.as_ptr(), pin.as_ptr(), null(), libc::MS_BIND | libc::MS_REC, null()) != 0
                    && io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // The kept dirs are opened in this namespace before the covers hide them: a bind
            // source must be a mount of the caller's namespace (a descriptor opened by the
            // parent, in the host's namespace, would give EINVAL).
            let mut fds = [-1; MAX_KEPT];
            for (fd, k) in fds.iter_mut().zip(&self.kept) {
                *fd = libc::open(k.target.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
                if *fd < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for cover in &self.covers {
                // A directory gone since the plan was made has nothing left to hide (`check`
                // covers other pluginds' dirs, which vanish as those stop; the ENOENT of the
                // mount failed the spawn as if the interpreter were missing).
                match mount_tmpfs(cover, 0) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    r => r?,
                }
            }
            for (&fd, k) in fds.iter().zip(&self.kept) {
                for a in &k.ancestors {
                    // Exists already (EEXIST) outside the covers; inside, made in the tmpfs.
                    libc::mkdir(a.as_ptr(), 0o755);
                }
                libc::mkdir(k.target.as_ptr(), 0o755);
                // "." after fchdir: the kept dir itself, under the cover.
                cvt(libc::fchdir(fd))?;
                cvt(libc::mount(c".".as_ptr(), k.target.as_ptr(), null(), libc::MS_BIND | libc::MS_REC, null()))?;
                libc::close(fd);
            }
            for cover in &self.covers {
                match remount_read_only(cover, false) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    r => r?,
                }
            }
            // The manifest says what the plugin may do: with `filesystem` it could otherwise
            // grant itself every permission, taking effect at the next hot reload. (As a mount
            // point it cannot be renamed over or removed either.)
            cvt(libc::mount(self.manifest.as_ptr(), self.manifest.as_ptr(), null(), libc::MS_BIND, null()))?;
            remount_file_read_only(&self.manifest)?;
            for f in &self.files {
                // A file that is gone (a socket removed meanwhile) needs no cover.
                if libc::mount(c"/dev/null".as_ptr(), f.as_ptr(), null(), libc::MS_BIND, null()) == 0 {
                    remount_read_only(f, true)?;
                } else if io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::access(CGROUP_FS.as_ptr(), libc::F_OK) == 0 {
                mount_tmpfs(CGROUP_FS, libc::MS_RDONLY)?;
            }
            // /sys read-only, every mount below it too: a root plugin with `filesystem` wrote
            // kernel settings there (KSM, transparent huge pages, a disk's read-ahead; CPU
            // offlining and suspend are there too), as it could in /proc/sys (audit 16).
            if libc::mount(SYS.as_ptr(), SYS.as_ptr(), null(), libc::MS_BIND | libc::MS_REC, null()) == 0 {
                let done = read_only_recursively(SYS).or_else(|e| match e.raw_os_error() {
                    Some(libc::ENOSYS) => remount_read_only(SYS, true),
                    _ => Err(e),
                });
                // In a user namespace (an unprivileged plugind) the plugin holds no power over
                // /sys anyway: best effort there.
                if self.user_ns.is_none() {
                    done?;
                }
            }
            let mut fresh_proc = false;
            if self.user_ns.is_none() {
                // A /proc of its own that lists only processes the plugin may ptrace: its own
                // (Landlock confines ptrace to its domain). A root plugin would otherwise list
                // plugind's /proc/PID/fd: the directory of a non-dumpable process belongs to
                // root. (A user namespace cannot mount proc without a pid namespace of its own,
                // and there the directory is not the plugin's uid's anyway.)
                // Read-only, as a whole: a uid-0 plugin with `filesystem` wrote host settings
                // outside /proc/sys (/proc/irq: every interrupt onto one CPU, audit 20;
                // /proc/sysrq-trigger, where the kernel has it, takes any key, reboot included,
                // from uid 0 without a capability) and lowered its own `oom_score_adj` where
                // plugind cannot make 500 a floor. Docker makes those read-only one by one;
                // nothing a plugin needs writes a /proc file (its own name, limits and
                // scheduling go through syscalls).
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
                if libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, HIDEPID.as_ptr().cast())
                    == 0
                {
                    fresh_proc = true;
                } else if io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                    // EINVAL: a kernel before 5.8 without hidepid=4; the ptrace checks still hold.
                    return Err(io::Error::last_os_error());
                }
            }
            // The host's /proc (in a user namespace, or before 5.8): its kernel settings at least.
            if !fresh_proc
                && libc::mount(PROC_SYS.as_ptr(), PROC_SYS.as_ptr(), null(), libc::MS_BIND | libc::MS_REC, null()) == 0
            {
                remount_read_only(PROC_SYS, true)?;
            }
            // The uid's keys are listed there (ids, descriptions), though seccomp refuses the
            // key syscalls: covered, as Docker does. Best effort: a kernel without keys has no
            // such files, and a user namespace may refuse a mount over /proc.
            for keys in [c"/proc/keys", c"/proc/key-users"] {
                if libc::mount(c"/dev/null".as_ptr(), keys.as_ptr(), null(), libc::MS_BIND, null()) == 0 {
                    let _ = remount_read_only(keys, true);
                }
            }
            private_dev()?;
            // The working directory was entered before the covers: enter it again through the
            // bind mount, so `getcwd` and relative paths agree with what the plugin sees.
            cvt(libc::chdir(self.cwd.as_ptr()))?;
        }
        Ok(())
    }
}

/// The devices a plugin finds in its `/dev`, bound from the host's (those that exist): each
/// reaches no file, and Landlock lets every plugin write them ([`super::landlock`]).
pub const DEVICES: [&CStr; 6] =
    [c"/dev/null", c"/dev/zero", c"/dev/full", c"/dev/random", c"/dev/urandom", c"/dev/tty"];

/// The links of a usual `/dev` (target, link).
const DEV_LINKS: [(&CStr, &CStr); 5] = [
    (c"/proc/self/fd", c"/dev/fd"),
    (c"/proc/self/fd/0", c"/dev/stdin"),
    (c"/proc/self/fd/1", c"/dev/stdout"),
    (c"/proc/self/fd/2", c"/dev/stderr"),
    (c"pts/ptmx", c"/dev/ptmx"),
];

/// Replaces `/dev` with a tmpfs holding only [`DEVICES`], [`DEV_LINKS`], a `shm` tmpfs and a
/// `devpts` of its own, then makes it read-only (`shm` stays writable). Runs in the child: no
/// allocation (a device's source path is written into a stack buffer). Only ever called
/// between `fork` and `exec`, in the instance's own mount namespace.
fn private_dev() -> io::Result<()> {
    const DEV: &CStr = c"/dev";
    const SHM: &CStr = c"/dev/shm";
    const PTS: &CStr = c"/dev/pts";
    // SAFETY: NUL-terminated strings (constants, or a stack buffer) that outlive each call; fds
    // this function opened and closes; return values checked.
    unsafe {
        let mut fds = [-1; DEVICES.len()];
        for (fd, dev) in fds.iter_mut().zip(DEVICES) {
            // A device this host lacks (no /dev/tty in a container) is left out.
            *fd = libc::open(dev.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
        }
        let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
        cvt(libc::mount(c"tmpfs".as_ptr(), DEV.as_ptr(), c"tmpfs".as_ptr(), flags, TMPFS_OPTS.as_ptr().cast()))?;
        for (&fd, dev) in fds.iter().zip(DEVICES) {
            if fd < 0 {
                continue;
            }
            let node = libc::open(dev.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o666);
            if node < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::close(node);
            let source = FdPath::of(fd);
            cvt(libc::mount(source.as_ptr(), dev.as_ptr(), null(), libc::MS_BIND, null()))?;
            libc::close(fd);
        }
        for (target, link) in DEV_LINKS {
            cvt(libc::symlink(target.as_ptr(), link.as_ptr()))?;
        }
        cvt(libc::mkdir(SHM.as_ptr(), 0o1777))?;
        let shm_flags = libc::MS_NOSUID | libc::MS_NODEV;
        cvt(libc::mount(c"tmpfs".as_ptr(), SHM.as_ptr(), c"tmpfs".as_ptr(), shm_flags, c"mode=1777".as_ptr().cast()))?;
        cvt(libc::mkdir(PTS.as_ptr(), 0o755))?;
        // Best effort: a kernel without devpts (or that refuses it in a user namespace) leaves
        // the plugin without pseudo-terminals, nothing more.
        let pts_opts = c"newinstance,ptmxmode=0666,mode=620";
        libc::mount(
            c"devpts".as_ptr(),
            PTS.as_ptr(),
            c"devpts".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            pts_opts.as_ptr().cast(),
        );
        remount_read_only(DEV, false).or_else(|e| match e.raw_os_error() {
            // In a user namespace a remount must keep the tmpfs's own flags, which nodev is not.
            Some(libc::EPERM) => {
                cvt(libc::mount(null(), DEV.as_ptr(), null(), libc::MS_REMOUNT | libc::MS_RDONLY | flags, null()))
            }
            _ => Err(e),
        })
    }
}

/// `/proc/self/fd/N` in a stack buffer, for a bind mount's source between `fork` and `exec`.
struct FdPath([u8; 32]);

impl FdPath {
    fn of(fd: libc::c_int) -> FdPath {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let (mut n, mut len) = (fd.unsigned_abs(), 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (i, d) in digits[..len].iter().rev().enumerate() {
            buf[PREFIX.len() + i] = *d;
        }
        FdPath(buf)
    }

    fn as_ptr(&self) -> *const libc::c_char {
        self.0.as_ptr().cast()
    }
}

fn mount_tmpfs(target: &CStr, extra: libc::c_ulong) -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | extra;
    // SAFETY: NUL-terminated strings that outlive the call.
    cvt(unsafe {
        libc::mount(c"tmpfs".as_ptr(), target.as_ptr(), c"tmpfs".as_ptr(), flags, TMPFS_OPTS.as_ptr().cast())
    })
}

fn remount_read_only(target: &CStr, bind: bool) -> io::Result<()> {
    // nosuid, nodev and noexec too: inside a user namespace a remount must keep the flags the
    // original mount had (/proc has all three), and adding them is always allowed.
    let flags = libc::MS_REMOUNT
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | if bind { libc::MS_BIND } else { 0 };
    // SAFETY: a NUL-terminated string that outlives the call; null where the kernel allows it.
    cvt(unsafe { libc::mount(null(), target.as_ptr(), null(), flags, null()) })
}

/// Makes the mount at `target` and every mount below it read-only (`mount_setattr` with
/// `AT_RECURSIVE`, Linux 5.12; ENOSYS before).
fn read_only_recursively(target: &CStr) -> io::Result<()> {
    /// `struct mount_attr` (linux/mount.h).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: a NUL-terminated path and a struct that outlive the call, with its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            target.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes the bind mount at `target` (a plugin's file) read-only, keeping its other flags as they
/// were: in a user namespace a remount may not clear a flag the original mount had.
fn remount_file_read_only(target: &CStr) -> io::Result<()> {
    // SAFETY: a NUL-terminated path and a stack struct that outlive the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::statvfs(target.as_ptr(), &mut st) })?;
    let kept = [
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    for (st_flag, ms_flag) in kept {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    // SAFETY: as above; null where the kernel allows it.
    cvt(unsafe { libc::mount(null(), target.as_ptr(), null(), flags, null()) })
}

fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: a NUL-terminated path, a buffer that outlives the write, an fd we own and close.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// The namespaces an instance gets: mounts and IPC, in a user namespace of its own for a
/// plugind that is not root.
fn namespace_flags(user_ns: bool) -> libc::c_int {
    let own = libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
    if user_ns {
        libc::CLONE_NEWUSER | own
    } else {
        own
    }
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether this host lets plugind give a child its own mount namespace: root needs nothing else;
/// an ordinary user needs unprivileged user namespaces. Probed by forking a child that tries.
pub fn probe(user_ns: bool) -> Result<(), String> {
    let flags = namespace_flags(user_ns);
    // SAFETY: the child only calls unshare and _exit.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: {}", io::Error::last_os_error())),
        0 => unsafe {
            let code = if libc::unshare(flags) == 0 { 0 } else { *libc::__errno_location() };
            libc::_exit(code)
        },
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            match libc::WEXITSTATUS(status) {
                0 => Ok(()),
                errno => Err(format!(
                    "unshare({}) fails: {}",
                    if user_ns { "CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWIPC" } else { "CLONE_NEWNS|CLONE_NEWIPC" },
                    io::Error::from_raw_os_error(errno)
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secrets_directory_is_its_own_only_when_it_holds_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (config, token) = (dir.path().join("plugind.toml"), dir.path().join("token"));
        let own = [config.clone(), token.clone()];
        for name in [
            "plugind.toml",
            "token",
            "plugind.toml~",
            ".plugind.toml.swp",
            "#plugind.toml#",
            ".#plugind.toml",
            "token.new",
            "..data",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(own_directory(&config, &own), Ok(dir.path().to_path_buf()));
        std::fs::write(dir.path().join("README"), "").unwrap();
        let why = own_directory(&token, &own).unwrap_err();
        assert!(why.ends_with("also holds README"), "{why}");
        assert_eq!(own_directory(Path::new("/plugind.toml"), &own), Err("it is in /".to_owned()));
    }

    /// A covered directory removed after the plan names it (`check` covers other pluginds' dirs,
    /// which go away as they stop) is skipped: its mount failed with ENOENT, and the spawn with
    /// it, reported as a missing interpreter (CI, this session).
    #[test]
    fn a_cover_gone_before_the_spawn_is_skipped() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: a mount namespace without a user namespace needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let (plugins, gone, tmp) = (root.path().join("plugins"), root.path().join("gone"), root.path().join("tmp"));
        for d in [plugins.join("p"), gone.clone(), tmp.clone()] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(plugins.join("p/plugin.json"), "{}").unwrap();
        let private =
            PrivatePaths { state_dirs: vec![gone.clone()], plugin_roots: vec![plugins.clone()], ..Default::default() };
        let plan = MountPlan::new(&private.canonical(), &plugins.join("p"), &tmp, None, false).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        // SAFETY: the child only applies the prebuilt plan (syscalls) and exits.
        match unsafe { libc::fork() } {
            0 => unsafe {
                let code = match plan.apply() {
                    Ok(()) => 0,
                    Err(e) => e.raw_os_error().unwrap_or(1),
                };
                libc::_exit(code)
            },
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(libc::WEXITSTATUS(status), 0, "the plan failed: errno {}", libc::WEXITSTATUS(status));
            }
        }
    }
}
