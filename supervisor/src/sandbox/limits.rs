//! Which `limits` entry ended an instance (`last_exit.limit`, SPEC §5).
//!
//! The kernel reports a limit in different ways: a signal (SIGXCPU at the soft CPU limit,
//! SIGKILL at the hard one), a cgroup counter (OOM kills, refused forks), or only a failed call
//! inside the plugin (ENOMEM under RLIMIT_DATA, EMFILE), which a plugin that dies of it usually
//! prints last on stderr. Kernel facts go first; stderr is the fallback.

use super::cgroup::CgroupStats;

/// A `limits` entry that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `memory_mb`.
    Memory,
    /// `cpu_seconds`.
    Cpu,
    /// `open_files`.
    OpenFiles,
    /// `processes`.
    Processes,
}

impl Limit {
    /// The manifest field.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Memory => "memory_mb",
            Limit::Cpu => "cpu_seconds",
            Limit::OpenFiles => "open_files",
            Limit::Processes => "processes",
        }
    }
}

/// What is known about an exit that plugind did not ask for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitFacts<'a> {
    /// Exit code.
    pub code: Option<i32>,
    /// Killing signal.
    pub signal: Option<i32>,
    /// The manifest's `cpu_seconds`.
    pub cpu_limit_s: Option<u64>,
    /// The instance cgroup's counters, if it had one.
    pub cgroup: Option<CgroupStats>,
    /// The instance's last stderr lines, oldest first.
    pub stderr: &'a [String],
}

/// What language runtimes print when an allocation is refused (Python, V8, perl, Rust, C++,
/// strerror(ENOMEM)).
const MEMORY_MARKERS: [&str; 6] = [
    "MemoryError",
    "heap out of memory",
    "Out of memory!",
    "memory allocation of",
    "std::bad_alloc",
    "Cannot allocate memory",
];
/// strerror(EMFILE) and the errno name.
const OPEN_FILES_MARKERS: [&str; 2] = ["Too many open files", "EMFILE"];

/// The limit that ended the instance, if one did.
pub fn classify(f: &ExitFacts<'_>) -> Option<Limit> {
    let cg = f.cgroup.unwrap_or_default();
    if f.signal == Some(libc::SIGXCPU) {
        return Some(Limit::Cpu);
    }
    if cg.oom_kills > 0 {
        return Some(Limit::Memory);
    }
    // SIGKILL at the hard CPU limit (soft + 1 s) of a plugin that ignored SIGXCPU: the cgroup's
    // CPU time shows the budget was used up. Without CPU accounting an outside SIGKILL looks
    // the same, so it is not guessed.
    if let (Some(libc::SIGKILL), Some(limit), Some(usec)) = (f.signal, f.cpu_limit_s, cg.cpu_usec) {
        if usec >= limit.saturating_mul(1_000_000) {
            return Some(Limit::Cpu);
        }
    }
    if f.code == Some(0) && f.signal.is_none() {
        return None;
    }
    if cg.pids_max_hits > 0 {
        return Some(Limit::Processes);
    }
    // The last lines are the cause; earlier ones may be errors the plugin survived.
    for line in f.stderr.iter().rev().take(STDERR_LINES) {
        if MEMORY_MARKERS.iter().any(|m| line.contains(m)) {
            return Some(Limit::Memory);
        }
        if OPEN_FILES_MARKERS.iter().any(|m| line.contains(m)) {
            return Some(Limit::OpenFiles);
        }
    }
    None
}

/// How many of the last stderr lines are searched.
const STDERR_LINES: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn signals_and_counters_name_the_limit() {
        let xcpu = ExitFacts { signal: Some(libc::SIGXCPU), ..Default::default() };
        assert_eq!(classify(&xcpu), Some(Limit::Cpu));
        let oom = CgroupStats { oom_kills: 1, ..Default::default() };
        let killed = ExitFacts { signal: Some(libc::SIGKILL), cgroup: Some(oom), ..Default::default() };
        assert_eq!(classify(&killed), Some(Limit::Memory));
        let spent = CgroupStats { cpu_usec: Some(2_050_000), ..Default::default() };
        let hard =
            ExitFacts { signal: Some(libc::SIGKILL), cpu_limit_s: Some(1), cgroup: Some(spent), ..Default::default() };
        assert_eq!(classify(&hard), Some(Limit::Cpu));
        let idle = CgroupStats { cpu_usec: Some(50_000), ..Default::default() };
        let outside = ExitFacts { cgroup: Some(idle), ..hard };
        assert_eq!(classify(&outside), None, "an outside SIGKILL is no limit");
        let forks = CgroupStats { pids_max_hits: 3, ..Default::default() };
        let bomb = ExitFacts { code: Some(1), cgroup: Some(forks), ..Default::default() };
        assert_eq!(classify(&bomb), Some(Limit::Processes));
    }

    #[test]
    fn stderr_names_refused_allocations_and_files() {
        let py = lines(&["Traceback (most recent call last):", "  File \"main.py\"", "MemoryError"]);
        assert_eq!(classify(&ExitFacts { code: Some(1), stderr: &py, ..Default::default() }), Some(Limit::Memory));
        let node = lines(&["FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory"]);
        assert_eq!(
            classify(&ExitFacts { signal: Some(libc::SIGABRT), stderr: &node, ..Default::default() }),
            Some(Limit::Memory)
        );
        let fds = lines(&["OSError: [Errno 24] Too many open files: '/dev/null'"]);
        assert_eq!(classify(&ExitFacts { code: Some(1), stderr: &fds, ..Default::default() }), Some(Limit::OpenFiles));
        assert_eq!(classify(&ExitFacts { code: Some(0), stderr: &fds, ..Default::default() }), None, "clean exit");
        assert_eq!(classify(&ExitFacts { code: Some(3), stderr: &lines(&["boom"]), ..Default::default() }), None);
    }
}
