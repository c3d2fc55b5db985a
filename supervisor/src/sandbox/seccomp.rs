//! seccomp-BPF programs for the `networking` and `process` denials (SPEC §6).
//!
//! Each filter allows everything but a few syscalls, which fail with an errno (never a kill):
//! a plugin sees an ordinary error (`PermissionError`, `EACCES`…) it can report. One seccompiler
//! filter has one match action, hence one program per errno.

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// The programs for a plugin that lacks `networking` (`deny_net`) and/or `process`
/// (`deny_process`), in installation order. Empty if it has both.
pub fn filters(deny_net: bool, deny_process: bool) -> Result<Vec<BpfProgram>, BackendError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)?;
    let mut out = Vec::new();
    if deny_net {
        let mut rules = BTreeMap::new();
        // Every address family but AF_UNIX: AF_INET/AF_INET6, and also AF_PACKET, AF_NETLINK…,
        // which reach the network as well. AF_UNIX stays for local IPC (and libc's own use).
        let not_unix = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?;
        rules.insert(libc::SYS_socket, vec![SeccompRule::new(vec![not_unix])?]);
        // io_uring can open and connect sockets without the socket syscall.
        rules.insert(libc::SYS_io_uring_setup, vec![]);
        out.push(program(rules, libc::EACCES, arch)?);
    }
    if deny_process {
        let mut rules = BTreeMap::new();
        // clone without CLONE_THREAD makes a process; with it, a thread (which stays allowed).
        let no_thread =
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64), 0)?;
        rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![no_thread])?]);
        #[cfg(target_arch = "x86_64")]
        {
            rules.insert(libc::SYS_fork, vec![]);
            rules.insert(libc::SYS_vfork, vec![]);
        }
        out.push(program(rules, libc::EPERM, arch)?);
        // clone3 passes its flags in memory, out of BPF's reach. ENOSYS makes glibc (pthread_create,
        // posix_spawn) fall back to clone, where the rule above sees the flags.
        let clone3 = BTreeMap::from([(libc::SYS_clone3, vec![])]);
        out.push(program(clone3, libc::ENOSYS, arch)?);
    }
    Ok(out)
}

fn program(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32, arch: TargetArch) -> Result<BpfProgram, BackendError> {
    SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), arch)?.try_into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_program_per_errno() {
        assert!(filters(false, false).unwrap().is_empty());
        assert_eq!(filters(true, false).unwrap().len(), 1);
        assert_eq!(filters(false, true).unwrap().len(), 2);
        assert_eq!(filters(true, true).unwrap().len(), 3);
    }
}
