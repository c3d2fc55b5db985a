//! seccomp-BPF programs: the `networking`, `process` and `filesystem` denials (docs/security.md), and what
//! no plugin may do (docs/security.md).
//!
//! Each filter allows everything but a few syscalls, which fail with an errno (never a kill):
//! a plugin sees an ordinary error (`PermissionError`, `EACCES`…) it can report. One seccompiler
//! filter has one match action, hence one program per errno.
//!
//! Denied to every plugin (`EPERM`):
//! - changing its parent-death signal to anything but SIGKILL (clearing it would let it outlive
//!   plugind);
//! - the mount syscalls (the mount namespace's covers must stay; Landlock and the dropped
//!   capabilities forbid this too: defence in depth);
//! - changing another process's resource limits, scheduling, CPU affinity, nice value or I/O
//!   priority. Only the same uid is needed for these (no ptrace check, and Landlock does not
//!   cover them), so without this a plugin could set plugind's `RLIMIT_NOFILE` to 8 (its control
//!   socket stops accepting) or its `RLIMIT_CPU` to 1 s (the kernel kills it), or starve another
//!   plugin with `SCHED_IDLE`. The forms that name the caller itself (pid 0) stay allowed:
//!   `setrlimit`, `nice`, `os.sched_setaffinity(0, …)` work as usual;
//! - the kernel keyrings (`add_key`, `keyctl`, `request_key`): a plugin's user keyring is the
//!   user's, shared with plugind, every other plugin and every process of that uid, so it could
//!   read the secrets kept there and leave keys for other plugins (as Docker's default profile).
//!
//! Without `filesystem` (`EPERM`): metadata changes, which Landlock does not cover: chmod, chown,
//! utime and the xattr calls, in their path and fd forms, and the ioctls that set inode flags
//! (`chattr`: a read-only descriptor is enough), everywhere (its `TMPDIR` included).
//!
//! Every x32 syscall (x86-64 only) is refused (`EPERM`): the rules match x86-64 numbers.
//!
//! io_uring needs `networking` and `filesystem` both: its operations run without the syscalls
//! they stand for, past these filters (`IORING_OP_SOCKET` past the socket rule,
//! `IORING_OP_SETXATTR` past the metadata rule; Landlock still applies to what it opens).

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// What an instance's filters deny.
#[derive(Debug, Clone, Copy)]
pub struct Denials {
    /// Sockets beyond `AF_UNIX` (no `networking`).
    pub network: bool,
    /// New processes (no `process`).
    pub process: bool,
    /// Metadata changes (no `filesystem`).
    pub metadata: bool,
}

/// Syscalls that change file metadata (the fd forms too: open, then fchmod, works otherwise).
const METADATA: &[i64] = &[
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    452, // fchmodat2 (Linux 6.6)
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    463, // setxattrat (Linux 6.13)
    466, // removexattrat (Linux 6.13)
    469, // file_setattr (Linux 6.17)
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chmod,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lchown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utime,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utimes,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_futimesat,
];

/// The ioctls that change an inode's flags or attributes (`chattr`, `FS_IOC_FSSETXATTR`), in
/// their 64- and 32-bit forms: the file's owner may make them on a descriptor opened read-only.
const SET_INODE_FLAGS: &[u64] = &[
    0x4008_6602, // FS_IOC_SETFLAGS
    0x4004_6602, // FS_IOC32_SETFLAGS
    0x401c_5820, // FS_IOC_FSSETXATTR
    0x4008_7602, // FS_IOC_SETVERSION
    0x4004_7602, // FS_IOC32_SETVERSION
];

/// The mount API, old and new (the new syscalls have one number on every architecture).
const MOUNTS: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    428, // open_tree
    429, // move_mount
    430, // fsopen
    431, // fsconfig
    432, // fsmount
    433, // fspick
    442, // mount_setattr
    467, // open_tree_attr
];

/// The programs for an instance, in installation order.
pub fn filters(deny: Denials) -> Result<Vec<BpfProgram>, BackendError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let mut out = Vec::new();
    if deny.network {
        let mut rules = BTreeMap::new();
        // Every address family but AF_UNIX: AF_INET/AF_INET6, and also AF_PACKET, AF_NETLINK…,
        // which reach the network as well. AF_UNIX stays for local IPC (and libc's own use).
        let not_unix = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?;
        rules.insert(libc::SYS_socket, vec![SeccompRule::new(vec![not_unix])?]);
        // io_uring can open and connect sockets without the socket syscall.
        rules.insert(libc::SYS_io_uring_setup, vec![]);
        out.push(program(rules, libc::EACCES, arch)?);
    }
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let pdeathsig = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::PR_SET_PDEATHSIG as u64)?;
    let not_kill = SeccompCondition::new(1, SeccompCmpArgLen::Qword, SeccompCmpOp::Ne, libc::SIGKILL as u64)?;
    eperm.insert(libc::SYS_prctl, vec![SeccompRule::new(vec![pdeathsig, not_kill])?]);
    eperm.extend(MOUNTS.iter().map(|&nr| (nr, vec![])));
    eperm.extend([libc::SYS_add_key, libc::SYS_keyctl, libc::SYS_request_key].map(|nr| (nr, vec![])));
    // pid (the first argument) other than 0, the caller.
    let other_pid = || SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, 0);
    for nr in [
        libc::SYS_prlimit64,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setattr,
        libc::SYS_sched_setaffinity,
    ] {
        eperm.insert(nr, vec![SeccompRule::new(vec![other_pid()?])?]);
    }
    // `setpriority(which, who, prio)` and `ioprio_set(which, who, prio)`: only the caller itself
    // (a process group or a uid would reach plugind and the other plugins).
    let arg_ne = |arg, value: u64| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, value);
    const IOPRIO_WHO_PROCESS: u64 = 1;
    for (nr, own) in [(libc::SYS_setpriority, libc::PRIO_PROCESS as u64), (libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS)] {
        eperm.insert(nr, vec![SeccompRule::new(vec![arg_ne(0, own)?])?, SeccompRule::new(vec![arg_ne(1, 0)?])?]);
    }
    if deny.metadata {
        eperm.extend(METADATA.iter().map(|&nr| (nr, vec![])));
        let cmd = |c: u64| SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, c);
        let ioctls: Vec<SeccompRule> =
            SET_INODE_FLAGS.iter().map(|&c| SeccompRule::new(vec![cmd(c)?])).collect::<Result<_, _>>()?;
        eperm.insert(libc::SYS_ioctl, ioctls);
        if !deny.network {
            // (Without `networking` the socket program refuses it already.)
            eperm.insert(libc::SYS_io_uring_setup, vec![]);
        }
    }
    // CLONE_PARENT makes the new process a child of plugind, which does not know it: a zombie
    // plugind never reaps, outliving the plugin (3,000 in 2 s, audit 16). For every plugin.
    let parent = || {
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_PARENT as u64),
            libc::CLONE_PARENT as u64,
        )
    };
    eperm.insert(libc::SYS_clone, vec![SeccompRule::new(vec![parent()?])?]);
    if deny.process {
        // clone without CLONE_THREAD makes a process; with it, a thread (which stays allowed).
        let no_thread =
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64), 0)?;
        eperm.insert(libc::SYS_clone, vec![SeccompRule::new(vec![no_thread])?, SeccompRule::new(vec![parent()?])?]);
        #[cfg(target_arch = "x86_64")]
        {
            eperm.insert(libc::SYS_fork, vec![]);
            eperm.insert(libc::SYS_vfork, vec![]);
        }
    }
    let mut eperm = program(eperm, libc::EPERM, arch)?;
    refuse_x32_first(&mut eperm);
    out.push(eperm);
    // clone3 passes its flags in memory, out of BPF's reach. ENOSYS makes glibc (pthread_create,
    // posix_spawn, fork) fall back to clone, where the rules above see the flags.
    let clone3 = BTreeMap::from([(libc::SYS_clone3, vec![])]);
    out.push(program(clone3, libc::ENOSYS, arch)?);
    Ok(out)
}

/// The x32 ABI's bit in a syscall number (`__X32_SYSCALL_BIT`).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Puts in front of `prog` a check that refuses (`EPERM`) every x32 syscall. seccompiler checks
/// the architecture (`AUDIT_ARCH_X86_64`, which x32 calls share) and then exact numbers: on a
/// kernel with the x32 ABI on, `socket`, `clone`, `prlimit64`… with the x32 bit set would match
/// no rule and pass every denial (audit 21). libseccomp adds the same check. No x86-64 program
/// makes x32 calls.
fn refuse_x32_first(prog: &mut BpfProgram) {
    #[cfg(target_arch = "x86_64")]
    {
        use seccompiler::sock_filter;
        // BPF opcodes (linux/filter.h) and seccomp's return values (linux/seccomp.h).
        const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
        const JMP_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
        const RET_K: u16 = 0x06; // BPF_RET | BPF_K
        const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
        let nr_offset = 0; // seccomp_data.nr
        let check = [
            sock_filter { code: LD_W_ABS, jt: 0, jf: 0, k: nr_offset },
            sock_filter { code: JMP_JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
            sock_filter { code: RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | libc::EPERM as u32 },
        ];
        prog.splice(0..0, check);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = prog;
}

fn program(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32, arch: TargetArch) -> Result<BpfProgram, BackendError> {
    SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch)?.try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_program_per_errno() {
        let d = |network, process, metadata| Denials { network, process, metadata };
        // Every plugin gets the EPERM program (parent-death signal, mounts, CLONE_PARENT) and
        // the ENOSYS one (clone3).
        assert_eq!(filters(d(false, false, false)).unwrap().len(), 2);
        assert_eq!(filters(d(true, false, true)).unwrap().len(), 3);
        assert_eq!(filters(d(false, true, false)).unwrap().len(), 2);
        assert_eq!(filters(d(true, true, true)).unwrap().len(), 3);
    }
}
