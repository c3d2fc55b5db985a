//! Capabilities: a plugin keeps none, even when plugind runs as root (docs/security.md).
//!
//! A root child with capabilities could read plugind's `/proc/PID/environ` (`CAP_PERFMON`,
//! `CAP_SYS_ADMIN`), ptrace it (`CAP_SYS_PTRACE`), write any file (`CAP_DAC_OVERRIDE`) or undo
//! its mount namespace (`CAP_SYS_ADMIN`). For uid 0, `execve` sets the permitted set to
//! inheritable | bounding, so emptying the bounding set (plus inheritable and ambient) before
//! `exec` leaves the plugin with no capability at all: root by uid, ordinary by power, like
//! systemd's `CapabilityBoundingSet=` (empty). Runs in the child: syscalls only.

use std::io;

/// The highest capability number this kernel knows (read before the fork).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

/// Empties the bounding, ambient and inheritable sets. Needs `CAP_SETPCAP` (root, or the owner of
/// a fresh user namespace).
pub fn drop_all(last_cap: u32) -> io::Result<()> {
    // SAFETY: prctl and capget/capset with stack structs that outlive the calls.
    unsafe {
        for cap in 0..=last_cap {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
        let mut header = CapHeader { version: 0x2008_0522, pid: 0 };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        for d in &mut data {
            d.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
