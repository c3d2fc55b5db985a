//! Fixtures: a real plugind process in a temp dir, real plugin processes, a real socket.

use plugind_client::{Client, ClientError};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for any condition a test waits for.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("UNWRAP: supervisor/ has a parent").to_path_buf()
}

/// The `pluginctl` binary. It is its own package (it does not link the daemon), so cargo builds
/// it beside `plugind` only for a workspace build: `make test` runs `cargo build --workspace`
/// first.
pub fn pluginctl() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_plugind")).with_file_name("pluginctl");
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as `make test` does)",
        p.display()
    );
    p
}

/// A fixture plugin directory under tests/fixtures/plugins or examples/.
pub fn fixture(name: &str) -> PathBuf {
    let p = repo().join("tests/fixtures/plugins").join(name);
    if p.exists() {
        return p;
    }
    repo().join("examples").join(name)
}

/// Copies a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Polls `f` until it returns Some, or panics after [`TIMEOUT`].
pub async fn wait_for<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    wait_for_at_most(TIMEOUT, what, f).await
}

/// [`wait_for`] with a limit of its own, for what moves hundreds of MB through a debug build.
pub async fn wait_for_at_most<T>(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// plugind's arguments and environment.
type Launch = (Vec<String>, Vec<(String, String)>);

/// A running plugind with its own temp dir.
pub struct Daemon {
    /// plugind's arguments and environment, for [`Daemon::restart`].
    launch: Option<Launch>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub plugins: PathBuf,
    pub child: Option<Child>,
    /// A file plugind inherits open (without close-on-exec) on this fd: (fd, path).
    inherit: Option<(i32, PathBuf)>,
    /// See [`DaemonBuilder::stderr_closed`].
    stderr_pipe: bool,
    /// cgroup directories plugind is moved into when it is next spawned (see [`TestCgroups`]).
    pub cgroups: Vec<PathBuf>,
}

/// Builds a [`Daemon`].
pub struct DaemonBuilder {
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    watch: bool,
    soft_open_files: Option<u64>,
    open_files: Option<u64>,
    address_space_mb: Option<u64>,
    inherit: Option<(i32, PathBuf)>,
    stderr_pipe: bool,
    relative_state_dir: bool,
    cgroups: Vec<PathBuf>,
}

impl DaemonBuilder {
    /// plugind's stderr is a pipe whose reading end is closed at once (a `| tee` that ended).
    pub fn stderr_closed(mut self) -> Self {
        self.stderr_pipe = true;
        self
    }

    /// plugind is started in these cgroups ([`TestCgroups`]).
    pub fn in_cgroups(mut self, dirs: Vec<PathBuf>) -> Self {
        self.cgroups = dirs;
        self
    }

    /// `--state-dir state`, relative to plugind's working directory (the temp dir).
    pub fn relative_state_dir(mut self) -> Self {
        self.relative_state_dir = true;
        self
    }

    /// The temp dir plugind runs in (its default plugins dir is `plugins` in it).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a copy of a fixture plugin (optionally under another directory name).
    pub fn plugin(self, name: &str) -> Self {
        copy_dir(&fixture(name), &self.dir.path().join("plugins").join(name));
        self
    }

    /// Adds a copy of a fixture plugin under another name (directory and manifest `name`).
    pub fn plugin_as(self, fixture_name: &str, name: &str) -> Self {
        copy_dir(&fixture(fixture_name), &self.dir.path().join("plugins").join(name));
        let n = name.to_owned();
        self.manifest(name, move |m| m["name"] = serde_json::json!(n))
    }

    /// Adds a copy of an example plugin from `examples/`, laid out so its relative paths to
    /// `../../sdk` and `../../target` resolve (they are symlinked into the temp dir).
    pub fn example(self, name: &str) -> Self {
        let root = self.dir.path();
        let target = Path::new(env!("CARGO_BIN_EXE_plugind")).parent().unwrap().parent().unwrap().to_path_buf();
        for (link, to) in [("sdk", repo().join("sdk")), ("target", target)] {
            if !root.join(link).exists() {
                std::os::unix::fs::symlink(to, root.join(link)).unwrap();
            }
        }
        copy_dir(&repo().join("examples").join(name), &root.join("plugins").join(name));
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        self.manifest(name, |m| {
            if m["env"].is_null() {
                m["env"] = serde_json::json!({});
            }
            m["env"]["PLUGIND_PROFILE"] = serde_json::json!(profile);
        })
    }

    /// Adds a plugin from files written here.
    pub fn plugin_files(self, dir: &str, files: &[(&str, &str)]) -> Self {
        let d = self.dir.path().join("plugins").join(dir);
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        self
    }

    /// Edits a plugin's manifest.
    pub fn manifest(self, dir: &str, edit: impl FnOnce(&mut Value)) -> Self {
        let p = self.dir.path().join("plugins").join(dir).join("plugin.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        self
    }

    /// Lets plugind watch plugin files (hot reload); tests run with `--no-watch` otherwise.
    pub fn watch(mut self) -> Self {
        self.watch = true;
        self
    }

    /// Starts plugind with this soft `RLIMIT_NOFILE` (through `sh -c 'ulimit -Sn N'`), as a
    /// service manager's default of 1024 would.
    pub fn soft_open_files(mut self, n: u64) -> Self {
        self.soft_open_files = Some(n);
        self
    }

    /// Starts plugind with this soft and hard `RLIMIT_NOFILE` (through `sh -c 'ulimit -n N'`):
    /// a limit plugind cannot raise.
    pub fn open_files(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    /// Starts plugind under this `RLIMIT_AS` (through `sh -c 'ulimit -v N'`), so that a test of
    /// runaway allocation ends plugind instead of the host's memory.
    pub fn address_space_mb(mut self, mb: u64) -> Self {
        self.address_space_mb = Some(mb);
        self
    }

    /// Starts plugind with `path` (created if missing, in the temp dir when relative) open for
    /// appending on `fd` without close-on-exec, as a careless parent process leaks an fd.
    pub fn inherit_fd(mut self, fd: i32, path: &str) -> Self {
        self.inherit = Some((fd, self.dir.path().join(path)));
        self
    }

    /// An extra plugind argument.
    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.to_owned());
        self
    }

    /// An environment variable for plugind.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// Starts plugind and waits until every plugin has settled.
    pub async fn start(self) -> Daemon {
        let d = self.launch();
        d.wait_settled().await;
        d
    }

    /// Starts the plugind process without waiting for anything.
    fn launch(self) -> Daemon {
        let socket = self.dir.path().join("plugind.sock");
        let plugins = self.dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let mut args: Vec<String> = vec!["--plugins".into(), "plugins".into()];
        args.extend(["--socket".into(), socket.to_string_lossy().into_owned()]);
        let state = if self.relative_state_dir { "state".into() } else { self.dir.path().join("state") };
        args.extend(["--state-dir".into(), state.to_string_lossy().into_owned()]);
        if !self.watch {
            args.push("--no-watch".into());
        }
        args.extend(self.extra_args);
        let mut ulimits = Vec::new();
        if let Some(n) = self.soft_open_files {
            ulimits.push(format!("ulimit -Sn {n}"));
        }
        if let Some(n) = self.open_files {
            ulimits.push(format!("ulimit -n {n}"));
        }
        if let Some(mb) = self.address_space_mb {
            ulimits.push(format!("ulimit -v {}", mb * 1024));
        }
        if !ulimits.is_empty() {
            let plugind = env!("CARGO_BIN_EXE_plugind").to_owned();
            let script = format!("{} && exec \"$0\" \"$@\"", ulimits.join(" && "));
            args = [script, plugind].into_iter().chain(args).collect();
        }
        let mut d = Daemon {
            launch: Some((args, self.env)),
            dir: self.dir,
            socket,
            plugins,
            child: None,
            inherit: self.inherit,
            stderr_pipe: self.stderr_pipe,
            cgroups: self.cgroups,
        };
        d.spawn_process();
        d
    }
}

impl Daemon {
    /// Starts the plugind process (relative paths, as an operator types them: it runs in the
    /// temp dir); its log is appended to `plugind.log`.
    fn spawn_process(&mut self) {
        let (args, env) = self.launch.clone().expect("UNWRAP: launch args kept");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("plugind.log")).unwrap();
        // Through `sh -c SCRIPT plugind ARGS…` when a builder option needs a shell first.
        let (program, pre) = match args.first() {
            Some(a) if a.starts_with("ulimit") => ("sh", vec!["-c"]),
            _ => (env!("CARGO_BIN_EXE_plugind"), vec![]),
        };
        let mut cmd = Command::new(program);
        // The leaked file stays open here until plugind has been spawned.
        let _leaked = self.inherit.as_ref().map(|(fd, path)| {
            use std::os::fd::{AsRawFd, OwnedFd};
            use std::os::unix::process::CommandExt;
            let file: OwnedFd = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().into();
            let (from, to) = (file.as_raw_fd(), *fd);
            // dup2 leaves close-on-exec off on the copy (std opens files with O_CLOEXEC).
            unsafe {
                cmd.pre_exec(move || {
                    let r = if from == to { libc::fcntl(to, libc::F_SETFD, 0) } else { libc::dup2(from, to) };
                    if r < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                })
            };
            file
        });
        // Opened here, written in the child before exec (`0` moves the writer): no allocation
        // between fork and exec.
        let procs: Vec<std::fs::File> = self
            .cgroups
            .iter()
            .map(|dir| std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs")).unwrap())
            .collect();
        if !procs.is_empty() {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
            unsafe {
                cmd.pre_exec(move || {
                    for fd in &fds {
                        if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                })
            };
        }
        let (stdout, stderr) =
            if self.stderr_pipe { (Stdio::piped(), Stdio::piped()) } else { (Stdio::null(), log.into()) };
        let mut child = cmd
            .current_dir(self.dir.path())
            .args(pre)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PLUGIND_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("plugind binary runs");
        // The readers go away at once: every later write of plugind's gets EPIPE.
        drop(child.stdout.take());
        drop(child.stderr.take());
        self.child = Some(child);
    }

    /// Stops plugind gracefully (SIGTERM) and starts it again on the same directories.
    pub async fn restart(&mut self) {
        self.signal(libc::SIGTERM);
        assert_eq!(self.wait_exit().await, Some(0));
        self.spawn_process();
        self.wait_settled().await;
    }

    /// Starts plugind again on the same directories after it exited (see [`Daemon::wait_exit`]),
    /// waiting until it has settled.
    pub async fn restart_stopped(&mut self) {
        self.spawn_process();
        self.wait_settled().await;
    }

    /// Kills plugind with SIGKILL (no clean-up at all) and starts it again on the same
    /// directories, waiting until it has settled.
    pub async fn kill_and_restart(&mut self) {
        self.signal(libc::SIGKILL);
        assert_eq!(self.wait_exit().await, None, "plugind died of SIGKILL");
        self.spawn_process();
        self.wait_settled().await;
    }

    /// A builder with an empty plugin dir.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            dir: tempfile::tempdir().unwrap(),
            extra_args: Vec::new(),
            env: Vec::new(),
            watch: false,
            soft_open_files: None,
            open_files: None,
            address_space_mb: None,
            inherit: None,
            stderr_pipe: false,
            relative_state_dir: false,
            cgroups: Vec::new(),
        }
    }

    /// A new control connection.
    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await.expect("control socket accepts")
    }

    /// One control call.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.client().await.call(method, &params).await
    }

    /// `execute` on a plugin.
    pub async fn execute(&self, plugin: &str, method: &str, params: Value) -> Result<Value, ClientError> {
        self.call("execute", json!({ "plugin": plugin, "method": method, "params": params })).await
    }

    /// A plugin's status object.
    pub async fn status(&self, plugin: &str) -> Value {
        self.call("plugins.get", json!({ "name": plugin })).await.expect("plugins.get works")
    }

    /// Waits until the plugin is in `state`.
    pub async fn wait_state(&self, plugin: &str, state: &str) -> Value {
        wait_for(&format!("{plugin} to be {state}"), async || {
            let s = self.call("plugins.get", json!({ "name": plugin })).await.ok()?;
            (s["state"] == state).then_some(s)
        })
        .await
    }

    /// Waits until the socket answers and no plugin is starting.
    pub async fn wait_settled(&self) {
        wait_for("plugind to settle", async || {
            let c = Client::connect(&self.socket).await.ok()?;
            let list = c.call("plugins.list", &json!({})).await.ok()?;
            list.as_array()?.iter().all(|p| p["state"] != "starting" && p["state"] != "stopped").then_some(())
        })
        .await;
    }

    /// Runs pluginctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(pluginctl()).arg("--socket").arg(&self.socket).args(args).output().expect("pluginctl runs")
    }

    /// plugind's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("UNWRAP: running").id()
    }

    /// plugind's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugind.log")).unwrap_or_default()
    }

    /// Sends a signal to plugind.
    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for plugind to exit; returns its exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("UNWRAP: running");
        wait_for("plugind to exit", async || child.try_wait().unwrap().map(|s| s.code())).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- plugind log ----\n{}", self.log());
        }
    }
}

/// The JSON-RPC error code of a failed call.
pub fn code(r: &Result<Value, ClientError>) -> i64 {
    match r {
        Err(ClientError::Rpc(e)) => e.code,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// The error `data` of a failed call.
pub fn data(r: &Result<Value, ClientError>) -> Value {
    match r {
        Err(ClientError::Rpc(e)) => e.data.clone().unwrap_or(Value::Null),
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// The instance cgroup directories plugind logged ("instance cgroup DIR", at debug level).
pub fn instance_cgroups(log: &str) -> Vec<PathBuf> {
    log.lines().filter_map(|l| l.split_once("instance cgroup ").map(|(_, dir)| PathBuf::from(dir.trim()))).collect()
}

// ---- daemon.rs helpers (plugind as a service: config file, signals, --listen) ----

impl DaemonBuilder {
    /// The temp dir the daemon will run in (for config and token files written before start).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts plugind like [`DaemonBuilder::start`], waiting only until its socket answers (for
    /// plugins that stay `stopped`, e.g. disabled in the config file).
    pub async fn spawn(self) -> Daemon {
        let d = self.launch();
        wait_for("plugind to answer", async || {
            let c = Client::connect(&d.socket).await.ok()?;
            c.call("plugins.list", &json!({})).await.ok()
        })
        .await;
        d
    }
}

/// Waits until a line of `plugin`'s stderr tail starts with `prefix`.
pub async fn wait_stderr(d: &Daemon, plugin: &str, prefix: &str) {
    wait_for(&format!("{plugin} to write {prefix:?} on stderr"), async || {
        let s = d.status(plugin).await;
        s["stderr_tail"].as_array()?.iter().any(|l| l.as_str().is_some_and(|l| l.starts_with(prefix))).then_some(())
    })
    .await;
}

/// A plain-Python plugin that forwards `execute` to plugind's `kv.*` (method = kv method).
pub const KV_FORWARDER: &str = r#"import json, sys
next_id = 1
def request(method, params):
    global next_id
    rid = "k%d" % next_id; next_id += 1
    print(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}), flush=True)
    for line in sys.stdin:
        m = json.loads(line)
        if m.get("id") == rid and "method" not in m:
            return m
    sys.exit(0)
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m: continue
    if m["method"] == "execute":
        r = request(m["params"]["method"], m["params"]["params"])
        r["id"] = m["id"]
        print(json.dumps(r), flush=True); continue
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": None if m["method"] == "teardown" else {}}), flush=True)
"#;

/// Live (non-zombie) processes whose command line contains `marker`: how a test counts a
/// plugin's processes without asking plugind.
pub fn procs_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return pids };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        if String::from_utf8_lossy(&cmdline).contains(marker) && alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// xorshift64*: randomness for storms with no dependency, replayed exactly from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Holds 300 idle TCP connections to `addr` (a port of plugind's that anyone who can reach it
/// may connect to): those over the cap (256, or an eighth of plugind's open-file limit when
/// lower) are answered 503 and closed at once, plugind's descriptors stay bounded, its control
/// socket serves throughout, and a silent connection is closed after 10 s.
pub async fn tcp_connections_are_capped(d: &Daemon, addr: &str) {
    use std::io::Read as _;
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let before = fds(d.pid());
    let cap = connection_cap(d);
    let a = addr.to_owned();
    let (held, refused) = tokio::task::spawn_blocking(move || {
        let mut held = Vec::new();
        for _ in 0..300 {
            held.push(std::net::TcpStream::connect(&a).unwrap());
        }
        // Each over the cap is answered 503 and closed; those under it wait, silent (read
        // without blocking, until the 44 refusals are in or 5 s, well before the 10 s timeout).
        let mut answered = vec![false; held.len()];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while answered.iter().filter(|a| **a).count() < 300 - cap && std::time::Instant::now() < deadline {
            for (s, done) in held.iter_mut().zip(answered.iter_mut()).filter(|(_, done)| !**done) {
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(n) => {
                        assert!(buf.starts_with(b"HTTP/1.1 503"), "{:?}", String::from_utf8_lossy(&buf[..n]));
                        *done = true;
                    }
                    Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let held: Vec<_> = held.into_iter().zip(&answered).filter(|(_, a)| !**a).map(|(s, _)| s).collect();
        for mut s in held.iter() {
            let mut buf = [0u8; 1];
            assert_eq!(s.read(&mut buf).unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "held open");
        }
        (held, answered.iter().filter(|a| **a).count())
    })
    .await
    .unwrap();
    assert_eq!(refused, 300 - cap, "connections over the cap of {cap} are refused");
    let during = fds(d.pid());
    assert!(during <= before + cap + 4, "plugind holds {during} descriptors (was {before})");
    assert_eq!(d.execute("perl-echo", "echo", json!(1)).await.unwrap(), json!(1), "the control socket serves");
    // The silent ones are closed after the header timeout (10 s), giving their places back.
    let t = std::time::Instant::now();
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = held.into_iter().next().unwrap();
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        matches!(s.read(&mut buf), Ok(0) | Err(_))
    })
    .await
    .unwrap();
    assert!(closed && t.elapsed() < Duration::from_secs(25), "a silent connection is closed ({:?})", t.elapsed());
}

/// How many TCP connections one of plugind's ports takes at once: 256, or an eighth of its
/// open-file limit when that is lower (at least 8).
pub fn connection_cap(d: &Daemon) -> usize {
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let soft: usize = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    (soft / 8).clamp(8, 256)
}

/// A process's resident memory in KiB (VmRSS).
pub fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS:")
}

/// A process's peak resident memory in KiB (VmHWM): since it started, or since
/// [`reset_peak_rss`].
pub fn peak_rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM:")
}

/// Makes a process's peak resident memory its current one (`/proc/PID/clear_refs`), so that
/// [`peak_rss_kb`] tells the peak of what follows.
pub fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A process's peak resident memory (KiB) while `f` runs, with what `f` gave.
pub async fn peak_rss_during<T>(pid: u32, f: impl std::future::Future<Output = T>) -> (T, u64) {
    reset_peak_rss(pid);
    let out = f.await;
    (out, peak_rss_kb(pid))
}

/// How many calls `plugin` has answered (the count of its call-duration histogram).
pub async fn answered_by(d: &Daemon, plugin: &str) -> u64 {
    let text = d.call("metrics.get", json!({})).await.unwrap()["text"].as_str().unwrap().to_owned();
    let series = format!("plugind_call_duration_seconds_count{{plugin=\"{plugin}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |n| n.trim().parse().unwrap())
}

/// cgroups of the tests' own, one in each tree plugind uses (cgroup v2, v1 `memory` and `pids`),
/// beside the test process's: for running plugind from another cgroup than before, as when it is
/// started again from another login session. Dropped, it kills what is left inside and removes
/// them.
pub struct TestCgroups {
    pub dirs: Vec<PathBuf>,
}

impl TestCgroups {
    /// Creates `it-<pid>-<tag>` beside the test process's cgroup in each tree it can write, or
    /// None when it can write none (not root, no cgroups).
    pub fn new(tag: &str) -> Option<TestCgroups> {
        let mut dirs = Vec::new();
        for own in own_cgroup_dirs() {
            let dir = own.join(format!("it-{}-{tag}", std::process::id()));
            if std::fs::create_dir(&dir).is_ok() {
                dirs.push(dir);
            }
        }
        (!dirs.is_empty()).then_some(TestCgroups { dirs })
    }
}

/// The test process's cgroup directories in the trees plugind uses (v2, pure or hybrid; v1
/// `memory` and `pids`): where the plugind it starts makes its instance cgroups.
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    // `/proc/self/cgroup`: `0::PATH` for v2, `N:memory:PATH` for v1.
    own.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mounts: &[&str] = match names {
                "" => &["/sys/fs/cgroup", "/sys/fs/cgroup/unified"],
                n if n.split(',').any(|c| c == "memory") => &["/sys/fs/cgroup/memory"],
                n if n.split(',').any(|c| c == "pids") => &["/sys/fs/cgroup/pids"],
                _ => &[],
            };
            let path = path.trim_start_matches('/').to_owned();
            mounts.iter().map(|m| Path::new(m).join(&path)).find(|d| d.join("cgroup.procs").exists())
        })
        .collect()
}

impl Drop for TestCgroups {
    fn drop(&mut self) {
        fn empty_and_remove(dir: &Path) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    empty_and_remove(&e.path());
                }
            }
            for _ in 0..100 {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10)); // killed processes leave their cgroup
            }
        }
        for dir in &self.dirs {
            empty_and_remove(dir);
        }
    }
}
