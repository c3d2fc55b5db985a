//! What this kernel offers, found once per process and cached.
//!
//! Probing is cheap syscalls and /proc reads. plugind logs the result at startup ([`init`]);
//! status reports ([`super::report`]) and spawns ([`super::prepare`]) read the cached answer, so a
//! permission shown as enforced is exactly one that spawns apply.

use super::cgroup::CgroupSupport;
use std::sync::OnceLock;

/// The isolation mechanisms this host offers.
#[derive(Debug)]
pub struct HostSupport {
    /// Landlock ABI version, if Landlock is available (kernel ≥ 5.13 with `lsm=…,landlock`).
    pub landlock_abi: Option<i32>,
    /// seccomp filters with `SECCOMP_RET_ERRNO`, on an architecture seccompiler supports.
    pub seccomp: bool,
    /// Which cgroup trees plugind can create instance cgroups in.
    pub cgroups: CgroupSupport,
    /// plugind runs as root: children need no user namespace, and must shed capabilities.
    pub root: bool,
    /// Whether a child can get its own mount namespace (as an ordinary user: with a user
    /// namespace); else why not.
    pub mount_ns: Result<(), String>,
    /// The highest capability number of this kernel.
    pub last_cap: u32,
}

impl HostSupport {
    /// Landlock with scopes (signals, abstract Unix sockets): ABI 6, Linux 6.12.
    pub fn landlock_scopes(&self) -> bool {
        self.landlock_abi.is_some_and(|abi| abi >= super::landlock::ABI_SCOPES)
    }
}

static HOST: OnceLock<HostSupport> = OnceLock::new();

/// The cached probe (probing on first use).
pub fn host() -> &'static HostSupport {
    HOST.get_or_init(|| {
        let root = nix::unistd::geteuid().is_root();
        HostSupport {
            landlock_abi: landlock_abi(),
            seccomp: seccomp_available(),
            cgroups: CgroupSupport::probe(),
            root,
            mount_ns: super::namespace::probe(!root),
            last_cap: super::privileges::last_cap(),
        }
    })
}

/// Probes once and logs what is enforced on this host, with one warning per missing mechanism.
/// Called by `plugind::run` at startup.
pub fn init() -> &'static HostSupport {
    let h = host();
    match h.landlock_abi {
        Some(abi) => tracing::info!(abi, "sandbox: Landlock enforces `filesystem`"),
        None => tracing::warn!(
            "sandbox: Landlock is not available on this kernel: the `filesystem` permission is advisory only"
        ),
    }
    if h.seccomp {
        tracing::info!("sandbox: seccomp enforces `networking` and `process`");
    } else {
        tracing::warn!(
            "sandbox: seccomp filters are not available: the `networking` and `process` permissions are advisory only"
        );
    }
    match &h.mount_ns {
        Ok(()) => tracing::info!("sandbox: a mount namespace per plugin hides plugind's state, config and other plugins"),
        Err(why) => tracing::warn!(
            "sandbox: no mount namespace for plugins ({why}): they can read plugind's state dir and other plugins' files"
        ),
    }
    if h.landlock_abi.is_some() && !h.landlock_scopes() {
        tracing::warn!("sandbox: Landlock before ABI 6 has no scopes: plugins can signal plugind and each other");
    }
    tracing::info!("sandbox: limits: {}", h.cgroups.describe());
    if h.cgroups.memory().is_none() {
        tracing::warn!("sandbox: no writable memory cgroup: `memory_mb` is enforced by RLIMIT_DATA only");
    }
    if h.cgroups.pids().is_none() {
        tracing::warn!(
            "sandbox: no writable pids cgroup: `processes` is enforced by RLIMIT_NPROC only (per user; does not bind root)"
        );
    }
    h
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)` returns the ABI version.
fn landlock_abi() -> Option<i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the documented version query; no pointers are dereferenced.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v as i32)
}

/// seccomp with filter mode and the `errno` action, on an architecture seccompiler can target.
fn seccomp_available() -> bool {
    if seccompiler::TargetArch::try_from(std::env::consts::ARCH).is_err() {
        return false;
    }
    // Asked of the `seccomp` syscall itself, which installing a filter needs: the kernel's
    // config can have it while something between plugind and the kernel does not (valgrind has
    // no `seccomp`, and every plugin would fail to start under it).
    let errno_action: u32 = 0x0005_0000; // SECCOMP_RET_ERRNO
                                         // SAFETY: SECCOMP_GET_ACTION_AVAIL (2) reads one u32 from the pointer, which outlives the call.
    let answer = unsafe { libc::syscall(libc::SYS_seccomp, 2, 0, &errno_action as *const u32) };
    match answer {
        0 => true,
        // Kernels before 4.14 lack the operation: PR_GET_SECCOMP fails with EINVAL without seccomp.
        // SAFETY: a query without pointers.
        _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) => {
            (unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) }) >= 0
        }
        _ => false,
    }
}
