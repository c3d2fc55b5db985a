//! Instance temp dirs (`STATE_DIR/tmp/PLUGIN-ID`, the plugin's `TMPDIR`): made fresh for each
//! instance, and removed after it ends without costing plugind anything.
//!
//! A temp dir is the plugin's own to fill, and a hostile plugin fills it to hurt the remover: a
//! chain of 19,000 nested directories overflowed the stack of `std::fs::remove_dir_all` (which
//! recurses) and killed plugind, and 300,000 files kept its async worker busy for 7.7 s (audit
//! 16). So a dir is first renamed aside (one syscall: its name is free for the next instance at
//! once), then removed on a blocking thread by [`remove_tree`], which walks down and up the tree
//! by descriptors, one level at a time, with no recursion and two descriptors open at most.
//! A dead run's dirs are discarded the same way before anything starts ([`discard_leftovers`]).

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::CString;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Names of dirs renamed aside start with this; they are never an instance's.
const DISCARDED: &str = ".discarded-";

/// How many times [`remove_tree`] looks again at a directory that changed under it.
const RETRIES: u32 = 1000;

/// Renames `dir` aside within its parent and removes it on a blocking thread. Nothing happens if
/// it does not exist. If it cannot be renamed, it is removed in place, still off the async
/// workers.
pub fn discard(dir: &Path) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let aside =
        dir.with_file_name(format!("{DISCARDED}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let target = match std::fs::rename(dir, &aside) {
        Ok(()) => aside,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(_) => dir.to_path_buf(),
    };
    remove_in_background(target);
}

/// Discards every entry of the temp dirs' root `tmp` (what a dead run left) before this run
/// makes any: renamed at once, removed in the background.
pub fn discard_leftovers(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        discard(&e.path());
    }
}

fn remove_in_background(dir: PathBuf) {
    let work = move || {
        if let Err(e) = remove_tree(&dir) {
            tracing::warn!(dir = %dir.display(), "cannot remove a plugin's temp dir: {e}");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(work)),
        Err(_) => drop(std::thread::Builder::new().name("plugind-rmtree".into()).spawn(work)),
    }
}

/// Removes `root` and everything below it: depth-first, by descriptors (`openat`, `unlinkat`),
/// without recursion and with at most three directories open, so neither depth nor path length
/// matters. Symbolic links are removed, never followed.
///
/// The walk goes back up through `..`, and the tree may move under it: a process of the plugin
/// that outlived its instance can rename the directory being emptied to a shallower place, and
/// then `..` is no longer the directory the walk came from (audit 20: the walk climbed out of the
/// temp dir and emptied the state dir). So every step up checks that `..` is the directory it
/// came down from (device and inode, remembered on the way down); when it is not, the walk
/// starts again from `root`, which it holds open, and never leaves it.
pub fn remove_tree(root: &Path) -> io::Result<()> {
    remove_tree_observed(root, |_| {})
}

/// [`remove_tree`], calling `descended` with the depth each time the walk has gone down a
/// level: where a test moves the tree under the walk.
fn remove_tree_observed(root: &Path, mut descended: impl FnMut(usize)) -> io::Result<()> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let top = match Dir::open(root, flags, Mode::empty()) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTDIR | Errno::ELOOP) => return std::fs::remove_file(root),
        Err(e) => return Err(e.into()),
    };
    let mut cur = Dir::openat(top.as_fd(), c".", flags, Mode::empty())?;
    // The names from `root` down to `cur`, and the identity of the directory each was found in
    // (`parents[i]` holds `names[i]`).
    let mut names: Vec<CString> = Vec::new();
    let mut parents: Vec<(libc::dev_t, libc::ino_t)> = Vec::new();
    // Passes over a directory that still held something when it was to be removed (a plugin
    // process that outlived its instance could still be writing), and restarts from the top
    // after the tree moved: a bound, not a livelock.
    let mut retries = 0u32;
    loop {
        // Unlink what is not a directory; stop at the first subdirectory, to go down into it.
        let mut sub: Option<CString> = None;
        let fd = cur.as_fd().try_clone_to_owned()?;
        for entry in cur.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                Some(t) => t == Type::Directory,
                None => nix::sys::stat::fstatat(&fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
            };
            if is_dir {
                sub = Some(name.to_owned());
                break;
            }
            match unlinkat(&fd, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(name) = sub {
            let st = nix::sys::stat::fstat(&fd)?;
            cur = match Dir::openat(&fd, name.as_c_str(), flags, Mode::empty()) {
                Ok(d) => d,
                // Gone or replaced (by a symlink, a file) since it was listed: look again.
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) if retries < RETRIES => {
                    retries += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            names.push(name);
            parents.push((st.st_dev, st.st_ino));
            descended(names.len());
            continue;
        }
        let Some(name) = names.pop() else { break };
        let expected = parents.pop().expect("a parent per name");
        let parent = Dir::openat(&fd, c"..", flags, Mode::empty())?;
        let st = nix::sys::stat::fstat(parent.as_fd())?;
        if (st.st_dev, st.st_ino) != expected {
            // Moved while being emptied: `..` is somewhere else now. Start again from the top.
            if retries >= RETRIES {
                return Err(io::Error::other("the tree kept moving while it was being removed"));
            }
            retries += 1;
            names.clear();
            parents.clear();
            cur = Dir::openat(top.as_fd(), c".", flags, Mode::empty())?;
            continue;
        }
        match unlinkat(parent.as_fd(), name.as_c_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => cur = parent,
            Err(Errno::ENOTEMPTY) if retries < RETRIES => {
                // Something came in meanwhile: that directory again.
                retries += 1;
                names.push(name);
                parents.push(expected);
                cur = Dir::openat(parent.as_fd(), names.last().map_or(c".", |n| n.as_c_str()), flags, Mode::empty())?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    drop(cur);
    drop(top);
    match std::fs::remove_dir(root) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process of the plugin that outlived its instance moves the directory being emptied
    /// up a level or two (`a/b/c` to `c`): the walk must not follow `..` out of the tree. It
    /// did (audit 20): with the names it came down by, each step up went a level higher, out of
    /// the temp dir and through the state dir, removing everything it met there.
    #[test]
    fn a_tree_moved_while_it_is_removed_is_not_left_through_dotdot() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("tmp").join("victim-1");
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        for i in 0..20 {
            std::fs::write(root.join(format!("a/b/c/f{i}")), b"x").unwrap();
        }
        // What lies beside and above the temp dir: the state dir's files.
        std::fs::write(top.path().join("kv.sqlite"), b"every plugin's data").unwrap();
        std::fs::write(top.path().join("tmp/other-2"), b"another plugin's").unwrap();
        std::fs::create_dir(top.path().join("data")).unwrap();
        std::fs::write(top.path().join("data/important.txt"), b"keep").unwrap();
        let mut moved = false;
        remove_tree_observed(&root, |depth| {
            if depth == 3 && !moved {
                moved = true;
                std::fs::rename(root.join("a/b/c"), root.join("c")).unwrap();
            }
        })
        .unwrap();
        assert!(moved);
        assert!(!root.exists(), "the tree is removed, the moved part too");
        for kept in ["kv.sqlite", "tmp/other-2", "data/important.txt"] {
            assert!(top.path().join(kept).exists(), "{kept} was removed: the walk left the tree");
        }
    }

    #[test]
    fn removes_a_tree_deeper_than_a_path_can_name_without_recursion() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("deep");
        std::fs::create_dir(&root).unwrap();
        // 3,000 levels of 40-byte names: a 120 KB path, 30 times PATH_MAX.
        let name = CString::new("d".repeat(40)).unwrap();
        let mut dir = Dir::open(&root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        for i in 0..3_000 {
            nix::sys::stat::mkdirat(dir.as_fd(), name.as_c_str(), Mode::from_bits_truncate(0o700)).unwrap();
            if i % 100 == 0 {
                let file = CString::new(format!("f{i}")).unwrap();
                let fd = nix::fcntl::openat(
                    dir.as_fd(),
                    file.as_c_str(),
                    OFlag::O_CREAT | OFlag::O_WRONLY,
                    Mode::from_bits_truncate(0o600),
                )
                .unwrap();
                drop(fd);
            }
            dir =
                Dir::openat(dir.as_fd(), name.as_c_str(), OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        }
        drop(dir);
        // A symlink inside is removed, not followed.
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        // On a small stack, as a tokio worker's can be: recursion would overflow it.
        let r = root.clone();
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || remove_tree(&r))
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        assert!(!root.exists());
        assert!(Path::new("/etc/passwd").exists());
    }
}
