//! Which `limits` entry ended an instance (`last_exit.limit`; `docs/security.md`, "Limits").
//!
//! Only the kernel's own accounting names a limit: a signal (SIGXCPU at the soft CPU limit,
//! SIGKILL at the hard one, told apart from an outside SIGKILL by the cgroup's CPU time) or a
//! cgroup counter (OOM kills, forks refused at `pids.max`). Some limits the kernel does not
//! account: an allocation refused under RLIMIT_DATA or an `open` refused with EMFILE is only a
//! failed call inside the plugin, which it may handle or die of; that is an ordinary error, not
//! a limit. What the plugin prints is never read here: a plugin that writes `MemoryError` and
//! exits has exited, and untrusted text must not put words in its status.

use super::cgroup::CgroupStats;

/// A `limits` entry that fired. `open_files` is not one: the kernel keeps no count of refused
/// `open`s, so an EMFILE is only an error the plugin sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `memory_mb`.
    Memory,
    /// `cpu_seconds`.
    Cpu,
    /// `processes`.
    Processes,
}

impl Limit {
    /// The manifest field.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Memory => "memory_mb",
            Limit::Cpu => "cpu_seconds",
            Limit::Processes => "processes",
        }
    }
}

/// What is known about an exit that plugind did not ask for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExitFacts {
    /// Exit code.
    pub code: Option<i32>,
    /// Killing signal.
    pub signal: Option<i32>,
    /// The manifest's `cpu_seconds`.
    pub cpu_limit_s: Option<u64>,
    /// The instance cgroup's counters, if it had one.
    pub cgroup: Option<CgroupStats>,
}

/// The limit that ended the instance, if one did.
pub fn classify(f: &ExitFacts) -> Option<Limit> {
    let cg = f.cgroup.unwrap_or_default();
    // SIGXCPU is the soft CPU limit only if there is one and, where the cgroup counts CPU time,
    // it was largely used: any process may send itself SIGXCPU. Half the budget, not all of it:
    // RLIMIT_CPU is checked against tick-sampled CPU time, which charges a whole tick to the task
    // running when it falls and so, on a busy CPU, runs ahead of the cgroup's exact count (a
    // spinner with a 1 s limit got SIGXCPU at under 0.99 s of cgroup time).
    if f.signal == Some(libc::SIGXCPU) {
        let used_up = match (f.cpu_limit_s, cg.cpu_usec) {
            (Some(limit), Some(usec)) => usec.saturating_mul(2) >= limit.saturating_mul(1_000_000),
            (Some(_), None) => true,
            (None, _) => false,
        };
        return used_up.then_some(Limit::Cpu);
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
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_counters_name_the_limit() {
        let xcpu = ExitFacts { signal: Some(libc::SIGXCPU), cpu_limit_s: Some(1), ..Default::default() };
        assert_eq!(classify(&xcpu), Some(Limit::Cpu));
        let at_limit = CgroupStats { cpu_usec: Some(1_001_000), ..Default::default() };
        assert_eq!(classify(&ExitFacts { cgroup: Some(at_limit), ..xcpu }), Some(Limit::Cpu));
        // SIGXCPU a plugin sent itself: without a CPU limit, or with the budget unspent.
        let own = ExitFacts { signal: Some(libc::SIGXCPU), ..Default::default() };
        assert_eq!(classify(&own), None, "SIGXCPU without a cpu_seconds limit");
        let idle = CgroupStats { cpu_usec: Some(30_000), ..Default::default() };
        assert_eq!(classify(&ExitFacts { cgroup: Some(idle), ..xcpu }), None, "SIGXCPU with the budget unspent");
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
    fn refused_allocations_and_files_are_no_limit() {
        // Without a kernel counter or signal, an exit is an exit, whatever it printed before.
        for code in [Some(1), Some(0)] {
            assert_eq!(classify(&ExitFacts { code, cgroup: Some(CgroupStats::default()), ..Default::default() }), None);
        }
        let abort = ExitFacts { signal: Some(libc::SIGABRT), ..Default::default() };
        assert_eq!(classify(&abort), None, "a runtime aborting on a refused allocation");
    }
}
