//! Reading process facts from `/proc`.

/// Resident set size of `pid` in KiB, if the process exists. From `/proc/PID/statm` (pages), which
/// the kernel produces several times faster than the ~55 lines of `/proc/PID/status`:
/// `plugins.list` reads it for every instance.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    Some(pages * page / 1024)
}

/// Whether `pid` is gone or a zombie (dead, not yet reaped by its parent: `kill(pid, 0)` still
/// succeeds on one).
pub fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z"),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The parent pid, process group and session of `pid`.
pub fn ids(pid: u32) -> Option<(u32, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: parse after its last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace().skip(1); // state
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some((ppid, pgrp, session))
}

#[cfg(test)]
mod tests {
    /// A zombie (exited, not reaped) is dead; a live process is not; a reaped one is.
    #[test]
    fn zombies_are_dead() {
        assert!(!super::dead(std::process::id() as i32));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not reaped yet: wait until its state turns to Z.
        while !super::dead(pid) {
            std::thread::yield_now();
        }
        // SAFETY: signal 0 only checks that the process exists.
        assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "kill(pid, 0) succeeds on a zombie");
        child.wait().unwrap();
        assert!(super::dead(pid));
    }
}
