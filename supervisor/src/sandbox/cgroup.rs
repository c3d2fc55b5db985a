//! One cgroup per plugin instance, for the limits rlimits cannot hold (docs/security.md).
//!
//! rlimits are per process: a plugin's children get fresh budgets, RLIMIT_NPROC counts every
//! process of the user (and does not bind root), RLIMIT_DATA misses shared memory. A cgroup holds
//! the whole process tree, and its counters tell afterwards which limit fired.
//!
//! Where: below plugind's own cgroup (from /proc/self/cgroup), so a service manager's delegation
//! (`Delegate=yes`) or a container's cgroup namespace bounds what plugind can do. Which trees:
//! - cgroup v2 (unified), when plugind may create children there: `memory.max`, `pids.max` and
//!   `cpu.max` where those controllers are available; even without controllers the cgroup gives
//!   CPU accounting (`cpu.stat`) and `cgroup.kill` for leftovers;
//! - else the v1 `memory` and `pids` hierarchies (hybrid hosts), each where writable;
//! - else nothing: rlimits only.
//!
//! Instance cgroups are named `plugind.<daemon pid>.<plugin>.<instance>`. The name is how plugind
//! recognises its plugins' processes ([`in_instance_cgroup`]), and how a later plugind finds what
//! a dead one left behind: it kills what is still inside and removes the cgroups.

use super::SandboxError;
use plugind_protocol::manifest::Limits;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of every directory plugind creates in a cgroup tree.
pub const PREFIX: &str = "plugind.";

/// The state dir's record of the cgroup trees runs on it used ([`CgroupSupport::sweep_recorded`]).
const RECORD: &str = "cgroups";

/// How many trees the record keeps (three a run at most; the rest are earlier runs').
const RECORD_MAX: usize = 12;

/// cgroup v2 controllers plugind uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Controllers {
    /// `memory.max`, `memory.events`.
    pub memory: bool,
    /// `pids.max`, `pids.events`.
    pub pids: bool,
    /// `cpu.max`.
    pub cpu: bool,
}

/// The cgroup trees plugind can create instance cgroups in (found once at startup).
#[derive(Debug, Clone, Default)]
pub struct CgroupSupport {
    /// plugind's own v2 cgroup, when it may create children there.
    v2: Option<PathBuf>,
    /// Controllers enabled for those children.
    v2_controllers: Controllers,
    /// plugind's own cgroup in a writable v1 memory hierarchy (used when v2 lacks memory).
    v1_memory: Option<PathBuf>,
    /// plugind's own cgroup in a writable v1 pids hierarchy (used when v2 lacks pids).
    v1_pids: Option<PathBuf>,
}

impl CgroupSupport {
    /// Finds plugind's cgroups and which of them it can create children in.
    pub fn probe() -> Self {
        let (Ok(mountinfo), Ok(own)) =
            (std::fs::read_to_string("/proc/self/mountinfo"), std::fs::read_to_string("/proc/self/cgroup"))
        else {
            return CgroupSupport::default();
        };
        let mut s = CgroupSupport::default();
        if let Some(dir) = own_dir(&mountinfo, &own, None).filter(|d| can_create_children(d)) {
            s.v2_controllers = enable_v2_controllers(&dir);
            s.v2 = Some(dir);
        }
        if !s.v2_controllers.memory {
            s.v1_memory = own_dir(&mountinfo, &own, Some("memory")).filter(|d| can_create_children(d));
        }
        if !s.v2_controllers.pids {
            s.v1_pids = own_dir(&mountinfo, &own, Some("pids")).filter(|d| can_create_children(d));
        }
        for dir in s.trees() {
            remove_stale(dir);
        }
        s
    }

    /// Whether every instance gets a cgroup in at least one tree (the v1 pids tree alone, which
    /// does not account memory or CPU, does not count).
    pub fn any(&self) -> bool {
        self.v2.is_some() || self.v1_memory.is_some()
    }

    /// The trees this run makes instance cgroups in (plugind's own cgroup in each).
    fn trees(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.v2, &self.v1_memory, &self.v1_pids].into_iter().flatten()
    }

    /// Sweeps the trees that earlier runs on `state_dir` recorded, then records this run's.
    ///
    /// [`CgroupSupport::probe`] sweeps below plugind's own cgroup only. A plugind started again
    /// from elsewhere (another login session's scope, another service unit) has another one,
    /// and would never find what an OOM-killed or SIGKILLed run left in its cgroups. The state
    /// dir, which only one plugind holds at a time, names them (`cgroups`, one directory a line);
    /// a line that is not a cgroup filesystem's directory is ignored.
    pub fn sweep_recorded(&self, state_dir: &Path) {
        let record = state_dir.join(RECORD);
        let earlier: Vec<PathBuf> = read(&record).unwrap_or_default().lines().map(PathBuf::from).collect();
        let mine: Vec<&PathBuf> = self.trees().collect();
        for dir in earlier.iter().filter(|d| !mine.contains(d) && is_cgroup_dir(d)) {
            remove_stale(dir);
        }
        let mut keep: Vec<&PathBuf> = mine;
        for dir in earlier.iter().filter(|d| d.is_dir()) {
            if !keep.contains(&dir) && keep.len() < RECORD_MAX {
                keep.push(dir);
            }
        }
        let text: String = keep.iter().filter_map(|d| d.to_str()).map(|d| format!("{d}\n")).collect();
        let tmp = state_dir.join(format!("{RECORD}.tmp"));
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &record)) {
            tracing::warn!(file = %record.display(), "cannot record this run's cgroup trees: {e}");
        }
    }

    /// SIGKILLs every process in this plugind's instance cgroups, now: for an exit that cannot
    /// wait for the plugins to stop (a second SIGTERM). The parent-death signal ends each
    /// instance's own process, but not what it started in a session of its own (audit 18: a
    /// setsid grandchild outlived plugind, reparented to init).
    pub fn kill_own_instances(&self) {
        for dir in self.own_instance_dirs() {
            if write(&dir, "cgroup.kill", "1").is_ok() {
                continue;
            }
            for pid in procs_of(&dir) {
                // SAFETY: plain kill(2); a stale pid at worst gets ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// Removes this plugind's instance cgroups still there at its exit, retrying for up to
    /// `within` while killed processes leave them. An instance's own removal retries in the
    /// background, and the runtime ended first: an empty cgroup was left after every graceful
    /// exit (audit 20), until the next run on the state dir swept it.
    pub async fn remove_own_instances(&self, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        loop {
            let left = self.own_instance_dirs().into_iter().filter(|d| std::fs::remove_dir(d).is_err()).count();
            if left == 0 || tokio::time::Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The instance cgroups of this plugind (`plugind.PID.…`), in every tree it uses.
    fn own_instance_dirs(&self) -> Vec<PathBuf> {
        let own = std::process::id().to_string();
        let mut dirs = Vec::new();
        for tree in self.trees() {
            let Ok(entries) = std::fs::read_dir(tree) else { continue };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                let mine = name.strip_prefix(PREFIX).and_then(|r| r.split_once('.')).is_some_and(|(pid, _)| pid == own);
                if mine && is_instance_cgroup(name) {
                    dirs.push(e.path());
                }
            }
        }
        dirs
    }

    /// How `memory_mb` is held beyond RLIMIT_DATA, if it is.
    pub fn memory(&self) -> Option<&'static str> {
        if self.v2_controllers.memory {
            Some("cgroup v2")
        } else {
            self.v1_memory.as_ref().map(|_| "cgroup v1")
        }
    }

    /// How `processes` is held (else RLIMIT_NPROC only).
    pub fn pids(&self) -> Option<&'static str> {
        if self.v2_controllers.pids {
            Some("cgroup v2")
        } else {
            self.v1_pids.as_ref().map(|_| "cgroup v1")
        }
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        let c = self.v2_controllers;
        let names: Vec<&str> = [(c.memory, "memory"), (c.pids, "pids"), (c.cpu, "cpu")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        let v2 = match &self.v2 {
            Some(d) => format!("cgroup v2 at {} (controllers: {})", d.display(), names.join(" ")),
            None => "no writable cgroup v2".to_owned(),
        };
        format!(
            "{v2}; memory_mb: RLIMIT_DATA + {}; processes: {}; cpu_seconds: RLIMIT_CPU; open_files: RLIMIT_NOFILE",
            self.memory().unwrap_or("no cgroup"),
            self.pids().unwrap_or("RLIMIT_NPROC only"),
        )
    }

    /// Creates the cgroups of one instance of a plugin of `instances` and opens their
    /// `cgroup.procs` for the child to join. None when this host has no usable tree.
    pub fn create(
        &self,
        name: &str,
        limits: &Limits,
        instances: u32,
    ) -> Result<Option<(Cgroup, Vec<File>)>, SandboxError> {
        let mut cg = Cgroup { dirs: Vec::new(), pids_limited: false };
        let tasks = limits.processes.unwrap_or_else(|| default_tasks(instances)).to_string();
        let mut procs = Vec::new();
        let memory = limits.memory_mb.saturating_mul(1024 * 1024).to_string();
        // Joining a v2 cgroup costs ~11 ms per spawn on this kernel (the migration waits for an
        // RCU grace period). Without a controller to apply it only serves accounting and
        // `cgroup.kill`: join it when CPU time must be accounted (`cpu_seconds`) or when no v1
        // memory group holds the instance's processes instead.
        let c = self.v2_controllers;
        let v2_needed = c.memory || c.pids || limits.cpu_seconds.is_some() || self.v1_memory.is_none();
        if let (Some(base), true) = (&self.v2, v2_needed) {
            let dir = cg.make(base, Tree::V2, name)?;
            if c.memory {
                write(&dir, "memory.max", &memory)?;
                // Else the cgroup may swap out past memory.max (ENOENT: the host has no swap).
                let _ = write(&dir, "memory.swap.max", "0");
            }
            if c.pids {
                write(&dir, "pids.max", &tasks)?;
                cg.pids_limited = limits.processes.is_some();
            }
            if let (true, Some(_)) = (c.cpu, limits.cpu_seconds) {
                // cpu_seconds is a budget (RLIMIT_CPU); the rate cap of one CPU keeps a plugin
                // that burns it from taking every core meanwhile.
                write(&dir, "cpu.max", "100000 100000")?;
            }
            procs.push(open_procs(&dir)?);
        }
        if let Some(base) = &self.v1_memory {
            let dir = cg.make(base, Tree::V1Memory, name)?;
            write(&dir, "memory.limit_in_bytes", &memory)?;
            procs.push(open_procs(&dir)?);
        }
        if let Some(base) = &self.v1_pids {
            let dir = cg.make(base, Tree::V1Pids, name)?;
            write(&dir, "pids.max", &tasks)?;
            cg.pids_limited = limits.processes.is_some();
            procs.push(open_procs(&dir)?);
        }
        Ok((!cg.dirs.is_empty()).then_some((cg, procs)))
    }
}

/// The tasks (processes and threads) an instance of a plugin of `instances` may have when its
/// manifest sets no `processes`: the plugin's share, 4096 or 15 % of the kernel's pid space when
/// that is less (systemd's default `TasksMax=`), split among its instances (at least 64 each).
/// Without it one plugin with no permission started 9,000 threads, 27 % of the host's pids
/// (audit 16); with it per instance, two instances took 8,190 and eight would take them all
/// (audit 19).
fn default_tasks(instances: u32) -> u64 {
    let pid_max: u64 = read(Path::new("/proc/sys/kernel/pid_max")).and_then(|t| t.trim().parse().ok()).unwrap_or(32768);
    ((pid_max * 15 / 100).clamp(64, 4096) / u64::from(instances.max(1))).max(64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tree {
    V2,
    V1Memory,
    V1Pids,
}

/// An instance's cgroups. Dropping it kills whatever is still inside and removes them.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<(Tree, PathBuf)>,
    pids_limited: bool,
}

/// Counters read after the instance exited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Processes the OOM killer killed inside (v2 `memory.events`, v1 `memory.oom_control`).
    pub oom_kills: u64,
    /// Forks refused by `pids.max` (`pids.events`).
    pub pids_max_hits: u64,
    /// CPU time of everything that ran inside (v2 `cpu.stat`), in µs.
    pub cpu_usec: Option<u64>,
}

impl Cgroup {
    /// Whether a pids cgroup holds `processes` (then RLIMIT_NPROC, which counts every process of
    /// the user, is not needed).
    pub fn limits_processes(&self) -> bool {
        self.pids_limited
    }

    /// Forks `pids.max` has refused so far (`pids.events` `max`); None where no pids cgroup
    /// holds `processes`.
    pub fn pids_refused(&self) -> Option<u64> {
        self.pids_limited.then(|| self.dirs.iter().filter_map(|(_, dir)| key(&dir.join("pids.events"), "max")).sum())
    }

    /// The directories, for logs and tests.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }

    fn make(&mut self, base: &Path, tree: Tree, name: &str) -> Result<PathBuf, SandboxError> {
        let dir = base.join(name);
        std::fs::create_dir(&dir).map_err(|source| SandboxError::Cgroup { path: dir.clone(), source })?;
        // Registered at once, so a later failure removes it again (Drop).
        self.dirs.push((tree, dir.clone()));
        Ok(dir)
    }

    /// Reads the counters that tell which limit fired.
    pub fn stats(&self) -> CgroupStats {
        let mut s = CgroupStats::default();
        for (tree, dir) in &self.dirs {
            match tree {
                Tree::V2 => {
                    s.oom_kills += key(&dir.join("memory.events"), "oom_kill").unwrap_or(0);
                    s.pids_max_hits += key(&dir.join("pids.events"), "max").unwrap_or(0);
                    s.cpu_usec = key(&dir.join("cpu.stat"), "usage_usec");
                }
                Tree::V1Memory => {
                    // oom_kill exists since 4.13; before, failcnt (limit hits) is the best sign.
                    s.oom_kills += key(&dir.join("memory.oom_control"), "oom_kill").unwrap_or_else(|| {
                        read(&dir.join("memory.failcnt")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
                    });
                }
                Tree::V1Pids => s.pids_max_hits += key(&dir.join("pids.events"), "max").unwrap_or(0),
            }
        }
        s
    }

    /// SIGKILLs every process still inside: children that left the process group (`setsid`)
    /// escape `killpg`, not the cgroup.
    pub fn kill_all(&self) {
        for (tree, dir) in &self.dirs {
            if *tree == Tree::V2 && write(dir, "cgroup.kill", "1").is_ok() {
                continue;
            }
            // v1, or v2 before 5.14: one by one, and again while any is listed: a process that
            // forks between the read and its kill leaves a child the first pass did not see.
            // Bounded (killed processes stay listed until they have exited); `Drop` retries
            // the removal of the cgroup, which fails while any process is left.
            for _ in 0..KILL_PASSES {
                let pids = procs_of(dir);
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    // SAFETY: plain kill(2); a stale pid at worst gets ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// Passes of [`Cgroup::kill_all`] over a cgroup without `cgroup.kill`.
const KILL_PASSES: usize = 32;

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        let mut left: Vec<PathBuf> =
            self.dirs.drain(..).map(|(_, d)| d).filter(|d| std::fs::remove_dir(d).is_err()).collect();
        if left.is_empty() {
            return;
        }
        // Killed processes take a moment to leave (EBUSY until then): retry in the background.
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                left.retain(|d| std::fs::remove_dir(d).is_err() && d.exists());
                if left.is_empty() {
                    return;
                }
            }
            tracing::warn!(?left, "cannot remove instance cgroups");
        });
    }
}

/// plugind's own cgroup directory in the v2 tree (`controller` None) or a v1 hierarchy.
fn own_dir(mountinfo: &str, own: &str, controller: Option<&str>) -> Option<PathBuf> {
    // /proc/self/cgroup: "0::/path" (v2) or "4:memory:/path" (v1).
    let path = own.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctls, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match controller {
            None => ctls.is_empty(),
            Some(c) => ctls.split(',').any(|x| x == c),
        };
        hit.then_some(path)
    })?;
    // mountinfo: "id parent maj:min root mountpoint opts... - fstype source superopts".
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let (fstype, superopts) = (right.next()?, right.nth(1)?);
        let wanted = match controller {
            None => fstype == "cgroup2",
            Some(c) => fstype == "cgroup" && superopts.split(',').any(|o| o == c),
        };
        if !wanted {
            return None;
        }
        let (root, mountpoint) = (left.get(3)?, left.get(4)?);
        // A bind mount of a sub-cgroup: our path must lie below its root.
        let rel = path.strip_prefix(root.trim_end_matches('/')).filter(|r| r.is_empty() || r.starts_with('/'))?;
        let rel = rel.trim_start_matches('/');
        Some(if rel.is_empty() { PathBuf::from(mountpoint) } else { Path::new(mountpoint).join(rel) })
    })
}

/// Tries to create (and removes) a child cgroup.
fn can_create_children(dir: &Path) -> bool {
    let probe = dir.join(format!("{PREFIX}{}.probe", std::process::id()));
    std::fs::create_dir(&probe).is_ok() && std::fs::remove_dir(&probe).is_ok()
}

/// Makes the memory, pids and cpu controllers available to children of `dir` (v2).
///
/// Not verified on a v2 host with these controllers (the test host's v2 tree has only hugetlb).
/// v2 forbids enabling controllers for children of a cgroup that holds processes (EBUSY), which
/// is plugind's situation under systemd `Delegate=yes`: then plugind moves itself into a leaf
/// child first, the usual pattern for delegated subtrees.
fn enable_v2_controllers(dir: &Path) -> Controllers {
    let available = read(&dir.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| available.split_whitespace().any(|x| x == c);
    let enable = |c: &str| -> bool {
        if !has(c) {
            return false;
        }
        let line = format!("+{c}");
        match write(dir, "cgroup.subtree_control", &line) {
            Ok(()) => true,
            Err(SandboxError::Cgroup { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                let leaf = dir.join(format!("{PREFIX}{}.daemon", std::process::id()));
                let moved = (leaf.is_dir() || std::fs::create_dir(&leaf).is_ok())
                    && write(&leaf, "cgroup.procs", &std::process::id().to_string()).is_ok();
                moved && write(dir, "cgroup.subtree_control", &line).is_ok()
            }
            Err(_) => false,
        }
    };
    Controllers { memory: enable("memory"), pids: enable("pids"), cpu: enable("cpu") }
}

/// Kills what is left in the instance cgroups of plugind processes that no longer exist, and
/// removes those cgroups. A plugind killed with SIGKILL cannot clean up: its plugins die with it
/// (parent-death signal) but their children, in new sessions of their own, would live on. They
/// cannot have left their cgroup (it is hidden from them and they hold no capability), so this
/// finds every one of them before the new run starts anything.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut stale = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if crate::procfs::dead(pid) {
            stale.push(e.path());
        }
    }
    for _ in 0..250 {
        stale.retain(|dir| {
            let left = procs_of(dir);
            if !left.is_empty() {
                tracing::warn!(cgroup = %dir.display(), pids = ?left, "killing processes a dead plugind left behind");
                // v2 has cgroup.kill; v1 (and v2 before 5.14) one by one.
                if write(dir, "cgroup.kill", "1").is_err() {
                    for pid in left {
                        // SAFETY: plain kill(2); a stale pid at worst gets ESRCH.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            std::fs::remove_dir(dir).is_err() && dir.exists()
        });
        if stale.is_empty() {
            return;
        }
        // Killed processes take a moment to leave their cgroup (EBUSY until then).
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(?stale, "cannot remove the cgroups of a dead plugind");
}

/// Whether `dir` is a directory of a cgroup filesystem (v1 or v2), so never a plain directory
/// whose `cgroup.procs` could name anybody's processes.
fn is_cgroup_dir(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    statfs(dir)
        .is_ok_and(|fs| fs.filesystem_type() == CGROUP_SUPER_MAGIC || fs.filesystem_type() == CGROUP2_SUPER_MAGIC)
}

/// The pids in a cgroup.
fn procs_of(dir: &Path) -> Vec<i32> {
    read(&dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
}

/// Whether process `pid` runs in an instance cgroup of this plugind or of any other
/// (`/proc/PID/cgroup`): a plugin instance or anything it started, `setsid` or not, whatever its
/// ancestry. A plugin of another plugind on the host reached this one's socket and stopped its
/// plugins (audit 16): no plugin is a client. None when the process is gone (its cgroup cannot
/// be read).
pub fn in_instance_cgroup(pid: u32) -> Option<bool> {
    let text = read(Path::new(&format!("/proc/{pid}/cgroup")))?;
    Some(text.lines().any(|l| l.splitn(3, ':').nth(2).unwrap_or("").split('/').any(is_instance_cgroup)))
}

/// Whether a cgroup directory name is an instance's (`plugind.<pid>.<plugin>.<instance>`), not a
/// daemon's own leaf (`plugind.<pid>.daemon`).
fn is_instance_cgroup(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else { return false };
    let Some((pid, tail)) = rest.split_once('.') else { return false };
    !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && tail != "daemon"
}

fn open_procs(dir: &Path) -> Result<File, SandboxError> {
    let path = dir.join("cgroup.procs");
    // Opened now, written by the child: std opens with O_CLOEXEC, so the plugin never holds it.
    OpenOptions::new().write(true).open(&path).map_err(|source| SandboxError::Cgroup { path, source })
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), SandboxError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| SandboxError::Cgroup { path, source })
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The number after `key` in a flat-keyed cgroup file (`oom_kill 1`).
fn key(path: &Path, key: &str) -> Option<u64> {
    read(path)?.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN: &str = "8:pids:/\n4:memory:/svc/x\n0::/\n";

    #[test]
    fn finds_own_cgroup_in_each_tree() {
        assert_eq!(own_dir(MOUNTINFO, OWN, None), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(own_dir(MOUNTINFO, OWN, Some("memory")), Some(PathBuf::from("/sys/fs/cgroup/memory/svc/x")));
        assert_eq!(own_dir(MOUNTINFO, OWN, Some("pids")), Some(PathBuf::from("/sys/fs/cgroup/pids")));
        assert_eq!(own_dir(MOUNTINFO, OWN, Some("cpu")), None);
    }

    #[test]
    fn reads_flat_keyed_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n").unwrap();
        assert_eq!(key(&f, "oom_kill"), Some(1));
        assert_eq!(key(&f, "max"), Some(3));
        assert_eq!(key(&f, "oom"), Some(1));
        assert_eq!(key(&f, "gone"), None);
    }
}
