//! Turning a manifest into a running child process: argv, environment, limits.
//!
//! Everything the child needs is computed before `fork` (the sandbox's BPF programs, Landlock
//! ruleset and cgroup fds too: [`crate::sandbox::prepare`]); the `pre_exec` closure only makes
//! syscalls (no allocation: another thread of the parent may have held the malloc lock at the
//! fork), in this order: new session (so the pid is the process group id), parent-death signal,
//! `no_new_privs`, inherited descriptors marked close-on-exec, joining the instance cgroup, the
//! mount namespace, rlimits, dropping capabilities, Landlock, seccomp filters last (they deny
//! syscalls the steps before may need). See `docs/security.md`.

use crate::sandbox::{self, cgroup::Cgroup, ChildConfinement, SandboxError};
use plugind_protocol::manifest::{Limits, Manifest};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// What to do about a missing `main`: build it, for what is built (no script extension); else
/// the path is wrong or the file not there yet.
fn main_missing_hint(main: &str) -> &'static str {
    let script = Path::new(main)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "py" | "js" | "mjs" | "cjs" | "sh" | "pl" | "rb" | "ts"));
    if script {
        "fix the path, or put the file there"
    } else {
        "a compiled plugin must be built first, e.g. `cargo build --release` in its directory; or fix the path"
    }
}

/// Why a plugin could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The manifest's entry point does not exist.
    #[error("{file}: field /main: file {main:?} not found ({})", main_missing_hint(main))]
    MainMissing {
        /// The manifest file.
        file: PathBuf,
        /// The `main` value.
        main: String,
    },
    /// The manifest's entry point is not a regular file (a FIFO, socket, device or directory).
    #[error("{file}: field /main: {main:?} is not a regular file (a FIFO, socket, device or directory)")]
    MainNotAFile {
        /// The manifest file.
        file: PathBuf,
        /// The `main` value.
        main: String,
    },
    /// The plugin's directory is gone (moved or deleted since it was scanned).
    #[error("its directory {} is gone (moved or deleted): put it back, or rescan (`pluginctl reload`) to forget the plugin", dir.display())]
    DirGone {
        /// The directory.
        dir: PathBuf,
    },
    /// `fork`/`exec` failed.
    #[error("cannot start {argv0:?}: {source}{}", exec_hint(argv0, source))]
    Exec {
        /// The program.
        argv0: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Setting up the private temp dir failed.
    #[error("cannot create temp dir {path}: {source}")]
    TempDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Making the instance's `TMPDIR` or data dir private (mode 0700) failed.
    #[error("cannot make {path} private: {source}")]
    Private {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Building the instance's confinement failed (then it does not start: no silent downgrade).
    #[error("cannot set up the sandbox: {0}")]
    Sandbox(#[from] SandboxError),
}

/// What to do about an `exec` that failed, for the errors a plugin's author meets first: a `main`
/// that is not executable, a script without a `#!` line, an interpreter that is not there.
fn exec_hint(argv0: &str, e: &std::io::Error) -> String {
    let path = argv0.contains('/');
    match e.raw_os_error() {
        Some(libc::EACCES) if path => ": the file is not executable: `chmod +x` it and begin it with a `#!` line \
            (e.g. `#!/usr/bin/env perl`), or set the manifest's `command` (e.g. [\"perl\", \"main.pl\"]); \
            only .py, .js/.mjs/.cjs and .sh files get an interpreter of plugind's choosing"
            .to_owned(),
        Some(libc::ENOEXEC) => ": it is neither a program for this machine nor a script with a `#!` line: \
            add one (e.g. `#!/usr/bin/env perl`), or set the manifest's `command`"
            .to_owned(),
        Some(libc::ENOENT) if path && crate::discovery::first_line(Path::new(argv0)).ends_with("\r\n") => {
            ": its `#!` line ends with \\r (Windows line endings), so the kernel looks for an interpreter whose \
             name ends with \\r: convert the file (`dos2unix`, or `sed -i 's/\\r$//'`)"
                .to_owned()
        }
        Some(libc::ENOENT) if path => {
            ": the interpreter its `#!` line names is not installed here (or the file is gone)".to_owned()
        }
        Some(libc::ENOENT) => format!(": {argv0} is not installed here (not found on the plugin's PATH)"),
        _ => String::new(),
    }
}

/// The program and arguments a manifest asks for (manifests/README.md `main` / `command`).
pub fn argv_for(manifest: &Manifest, dir: &Path) -> Result<Vec<String>, SpawnError> {
    if !dir.is_dir() {
        return Err(SpawnError::DirGone { dir: dir.to_owned() });
    }
    let mut argv: Vec<String> = match (&manifest.command, &manifest.main) {
        (Some(cmd), _) => {
            let mut cmd = cmd.clone();
            // A relative program with a slash is relative to the plugin dir; a bare name is
            // looked up in PATH.
            if cmd[0].contains('/') && !cmd[0].starts_with('/') {
                cmd[0] = dir.join(&cmd[0]).to_string_lossy().into_owned();
            }
            cmd
        }
        (None, Some(main)) => {
            let path = dir.join(main);
            match std::fs::metadata(&path) {
                Err(_) => return Err(SpawnError::MainMissing { file: dir.join("plugin.json"), main: main.clone() }),
                // A FIFO would block whatever opens it (audit 20); a directory or device is no
                // program either.
                Ok(m) if !m.is_file() => {
                    return Err(SpawnError::MainNotAFile { file: dir.join("plugin.json"), main: main.clone() })
                }
                Ok(_) => {}
            }
            let path = path.to_string_lossy().into_owned();
            let ext = Path::new(main).extension().and_then(|e| e.to_str()).unwrap_or("");
            match ext {
                "js" | "mjs" | "cjs" => vec!["node".into(), path],
                "py" => vec!["python3".into(), path],
                "sh" => vec!["sh".into(), path],
                _ => {
                    // The kernel runs neither; the C library's `execvp` would hand it to
                    // /bin/sh, which fails with errors about the script's first words (audit 19:
                    // a Python file without its `#!` line, "import: not found").
                    if !is_program_or_script(Path::new(&path)) {
                        let source = std::io::Error::from_raw_os_error(libc::ENOEXEC);
                        return Err(SpawnError::Exec { argv0: path, source });
                    }
                    vec![path]
                }
            }
        }
        // Manifest validation guarantees one of them.
        (None, None) => unreachable!("manifest without main or command passed validation"),
    };
    argv.extend(manifest.args.iter().cloned());
    Ok(argv)
}

/// Whether `path` begins as something the kernel executes: an ELF program or a `#!` script (one
/// that cannot be read is let through: exec says why).
fn is_program_or_script(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    match crate::discovery::open_regular(path, true).and_then(|mut f| f.read(&mut head)) {
        Ok(n) => head[..n].starts_with(b"#!") || head[..n] == *b"\x7fELF",
        Err(_) => true,
    }
}

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct SpawnPlan {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Working directory: the plugin dir.
    pub cwd: PathBuf,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Resource limits.
    pub limits: Limits,
}

/// The environment of a plugin: a fixed allow-list plus the manifest's `env` (docs/security.md).
/// plugind's own variables (`NOTIFY_SOCKET`, tokens, secrets) never reach a plugin.
pub fn plugin_env(
    manifest: &Manifest,
    data_dir: Option<&Path>,
    tmp_dir: &Path,
    extra: &[(String, String)],
) -> Vec<(String, String)> {
    let inherit = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_owned());
    let mut env = vec![
        ("PATH".to_owned(), inherit("PATH", "/usr/local/bin:/usr/bin:/bin")),
        ("HOME".to_owned(), inherit("HOME", "/")),
        ("LANG".to_owned(), inherit("LANG", "C.UTF-8")),
        ("TMPDIR".to_owned(), tmp_dir.to_string_lossy().into_owned()),
        ("PLUGIND_PLUGIN".to_owned(), manifest.name.clone()),
    ];
    if let Some(d) = data_dir {
        env.push(("PLUGIND_DATA_DIR".to_owned(), d.to_string_lossy().into_owned()));
    }
    for (k, v) in manifest.env.iter().map(|(k, v)| (k.clone(), v.clone())).chain(extra.iter().cloned()) {
        if is_supervisor_variable(&k) {
            continue;
        }
        env.retain(|(existing, _)| existing != &k);
        env.push((k, v));
    }
    env
}

/// Variables that belong to plugind's own service manager contract.
fn is_supervisor_variable(k: &str) -> bool {
    k == "NOTIFY_SOCKET" || k.starts_with("WATCHDOG_") || k == "LISTEN_FDS" || k == "LISTEN_PID"
}

/// A started plugin process.
pub struct Spawned {
    /// The child, with piped stdio.
    pub child: tokio::process::Child,
    /// Its cgroup, if this host gave it one: counters for `last_exit.limit`; dropping it kills
    /// what is left inside and removes it.
    pub cgroup: Option<Cgroup>,
}

/// Spawns the child with piped stdio, in its own session, with limits and the sandbox applied.
pub fn spawn(plan: &SpawnPlan, request: &sandbox::Request<'_>) -> Result<Spawned, SpawnError> {
    // The instance's own dirs are private to it (and plugind), whoever made them.
    for dir in std::iter::once(request.tmp_dir).chain(request.data_dir) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| SpawnError::Private { path: dir.to_path_buf(), source })?;
    }
    let sandbox::Confinement { child: mut confinement, cgroup } = sandbox::prepare(request, &plan.cwd)?;
    let program = match confinement.denies_process().then(|| past_shims(&plan.argv[0], &plan.env)).flatten() {
        Some(p) => {
            tracing::info!(
                plugin = %request.manifest.name,
                "{} on PATH is a script (a version manager's shim?) that cannot fork without the `process` permission; running {} instead",
                plan.argv[0],
                p.display()
            );
            p
        }
        None => PathBuf::from(&plan.argv[0]),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&plan.argv[1..])
        .current_dir(&plan.cwd)
        .env_clear()
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut rl = RlimitPlan::from(&plan.limits);
    if cgroup.as_ref().is_some_and(Cgroup::limits_processes) {
        // RLIMIT_NPROC counts every process of the user, not the plugin's: with a pids cgroup
        // it would only make a busy user's plugins fail to start threads.
        rl.processes = None;
    }
    for dir in cgroup.iter().flat_map(Cgroup::dirs) {
        tracing::debug!("instance cgroup {}", dir.display());
    }
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec; it only makes async-signal-safe syscalls
    // on values computed before the fork.
    unsafe {
        cmd.pre_exec(move || child_setup(&rl, parent, &mut confinement));
    }
    // On failure the cgroup is dropped here, which removes it.
    let child = cmd.spawn().map_err(|source| match plan.cwd.is_dir() {
        // chdir failed: the exec's error would name the interpreter, not the cause.
        false => SpawnError::DirGone { dir: plan.cwd.clone() },
        true => SpawnError::Exec { argv0: plan.argv[0].clone(), source },
    })?;
    Ok(Spawned { child, cgroup })
}

/// For a bare program name whose first match on the plugin's `PATH` is a script: the first match
/// that is not one. Shims of version managers (pyenv, asdf) are shell scripts that fork helpers
/// before they exec the interpreter, which a plugin without `process` cannot do.
fn past_shims(program: &str, env: &[(String, String)]) -> Option<PathBuf> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return None;
    }
    let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str())?;
    let mut first_is_script = false;
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        let executable =
            std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !executable {
            continue;
        }
        let mut magic = [0u8; 2];
        let script =
            crate::discovery::open_regular(&candidate, true).and_then(|mut f| f.read_exact(&mut magic)).is_ok()
                && &magic == b"#!";
        match (script, first_is_script) {
            (true, _) => first_is_script = true,
            (false, true) => return Some(candidate),
            // The first match is a binary: nothing to do.
            (false, false) => return None,
        }
    }
    None
}

/// Limits as raw numbers, ready for `setrlimit` in the child.
#[derive(Debug, Clone, Copy)]
struct RlimitPlan {
    data_bytes: u64,
    cpu_seconds: Option<u64>,
    open_files: u64,
    processes: Option<u64>,
}

impl From<&Limits> for RlimitPlan {
    fn from(l: &Limits) -> Self {
        RlimitPlan {
            data_bytes: l.memory_mb.saturating_mul(1024 * 1024),
            cpu_seconds: l.cpu_seconds,
            open_files: l.open_files,
            processes: l.processes,
        }
    }
}

/// The OOM killer picks a plugin before plugind: a plugin's own memory (and plugind's on its
/// behalf, within the caps) must not get plugind killed with every other plugin when the host or
/// a cgroup above both runs out (audit 16: plugind was the one killed). Written while the child
/// still holds plugind's capabilities, this is also the floor the plugin cannot go below
/// (`oom_score_adj_min`). Best effort: a failure leaves the default.
fn prefer_for_oom_kill() {
    // SAFETY: open/write/close on a static path and buffer, as allowed between fork and exec.
    unsafe {
        let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::write(fd, b"500".as_ptr().cast(), 3);
            libc::close(fd);
        }
    }
}

fn child_setup(rl: &RlimitPlan, parent: u32, confinement: &mut ChildConfinement) -> std::io::Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    use nix::sys::signal::Signal;
    nix::unistd::setsid()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // The parent may have died between fork and prctl: then nobody would kill us.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        return Err(std::io::Error::other("parent exited during spawn"));
    }
    nix::sys::prctl::set_no_new_privs()?;
    prefer_for_oom_kill();
    ChildConfinement::close_inherited_fds()?;
    // Early: whatever the plugin does from here on counts against its cgroup.
    confinement.join_cgroups()?;
    confinement.enter_namespace()?;
    // RLIMIT_DATA, not RLIMIT_AS: V8 reserves far more address space than it uses.
    setrlimit(Resource::RLIMIT_DATA, rl.data_bytes, rl.data_bytes)?;
    if let Some(cpu) = rl.cpu_seconds {
        // Soft limit → SIGXCPU (reported as `cpu_seconds`), hard limit one second later → SIGKILL.
        setrlimit(Resource::RLIMIT_CPU, cpu, cpu.saturating_add(1))?;
    }
    setrlimit(Resource::RLIMIT_NOFILE, rl.open_files, rl.open_files)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    if let Some(n) = rl.processes {
        setrlimit(Resource::RLIMIT_NPROC, n, n)?;
    }
    confinement.restrict()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(v: serde_json::Value) -> Manifest {
        Manifest::from_value(&v).unwrap()
    }

    #[test]
    fn interpreter_follows_the_extension() {
        let dir = tempfile::tempdir().unwrap();
        for (main, first) in [("a.py", "python3"), ("a.mjs", "node"), ("a.js", "node"), ("a.sh", "sh")] {
            std::fs::write(dir.path().join(main), "").unwrap();
            let m = manifest(json!({"name": "a", "version": "1.0.0", "main": main, "args": ["--x"]}));
            let argv = argv_for(&m, dir.path()).unwrap();
            assert_eq!(argv[0], first);
            assert!(argv[1].ends_with(main));
            assert_eq!(argv[2], "--x");
        }
    }

    #[test]
    fn missing_main_names_the_file_and_field() {
        let m = manifest(json!({"name": "a", "version": "1.0.0", "main": "gone.py"}));
        let dir = tempfile::tempdir().unwrap();
        let e = argv_for(&m, dir.path()).unwrap_err().to_string();
        assert!(e.contains("plugin.json") && e.contains("/main") && e.contains("gone.py"), "{e}");
        // A script is not built: no build advice for it (audit 20), only for what is.
        assert!(!e.contains("cargo build"), "{e}");
        let m = manifest(json!({"name": "a", "version": "1.0.0", "main": "target/release/a"}));
        assert!(argv_for(&m, dir.path()).unwrap_err().to_string().contains("cargo build --release"));
        // A directory that is gone is named as such, not as a missing main.
        let e = argv_for(&m, Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent is gone"), "{e}");
    }

    #[test]
    fn environment_is_an_allow_list() {
        std::env::set_var("PLUGIND_TEST_SECRET", "hunter2");
        let m =
            manifest(json!({"name": "a", "version": "1.0.0", "main": "a", "env": {"X": "1", "NOTIFY_SOCKET": "/x"}}));
        let env = plugin_env(&m, None, Path::new("/tmp/x"), &[]);
        let keys: Vec<_> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["PATH", "HOME", "LANG", "TMPDIR", "PLUGIND_PLUGIN", "X"]);
    }
}
