//! Issue 15: containment. A hostile plugin (tests/fixtures/plugins/hostile, raw Python, no SDK)
//! tries to reach plugind, other plugins and their data, with and without each permission.
//!
//! Every attack answers `{ok, detail}` where `ok: true` means the attack succeeded: each test
//! here passes only when its attack fails. The positive controls at the end check that what a
//! permission grants still works, and that plugins in every supported language (and the SDK
//! examples) still run under the default sandbox.
//!
//! Where a defense needs a kernel mechanism a host may lack, the test first reads the attacking
//! plugin's status `sandbox` rows: a row about that guarantee with `held: false` makes the test
//! print `skipped: why` and stop. No row (or no `sandbox` field) counts as held.
//!
//! The control socket path reaches the plugin through its manifest `config` (and attack params);
//! plugind's pid through `execute` params (it is also the plugin's parent); a sibling plugin's
//! pid is read from its status and passed in the params.

use crate::support::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The permission sets most attacks are tried with: none, `filesystem` alone, all four.
const VARIANTS: [(&str, &[&str]); 3] = [
    ("hostile", &[]),
    ("hostile-fs", &["filesystem"]),
    ("hostile-all", &["filesystem", "networking", "process", "storage"]),
];

/// Plugins without `filesystem`: none, and every other permission.
const NO_FS: [(&str, &[&str]); 2] = [("hostile", &[]), ("hostile-nofs", &["networking", "process", "storage"])];

/// Plugins with `filesystem`.
const WITH_FS: [(&str, &[&str]); 2] =
    [("hostile-fs", &["filesystem"]), ("hostile-all", &["filesystem", "networking", "process", "storage"])];

/// A copy of the hostile fixture as `name`, with `perms` and manifest `config`.
fn hostile(b: DaemonBuilder, name: &str, perms: &[&str], config: Value) -> DaemonBuilder {
    let perms = json!(perms);
    b.plugin_as("hostile", name).manifest(name, move |m| {
        m["permissions"] = perms;
        m["config"] = config;
    })
}

/// One hostile plugin per entry of `set`, all with `config`.
fn hostiles(mut b: DaemonBuilder, set: &[(&str, &[&str])], config: &Value) -> DaemonBuilder {
    for (name, perms) in set {
        b = hostile(b, name, perms, config.clone());
    }
    b
}

/// The victim: the same fixture as `victim`, with `storage`, attacking nothing.
fn victim(b: DaemonBuilder) -> DaemonBuilder {
    hostile(b, "victim", &["storage"], json!({}))
}

/// The hostile fixture copied into `dir` (a plugin directory appearing while plugind runs or is
/// down), its manifest's fields set from `fields`.
fn hostile_dir(dir: &Path, fields: Value) {
    copy_dir(&fixture("hostile"), dir);
    let path = dir.join("plugin.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (k, v) in fields.as_object().expect("UNWRAP: fields are an object") {
        m[k] = v.clone();
    }
    std::fs::write(&path, m.to_string()).unwrap();
}

/// Runs an execute method of a plugin; panics if the call itself failed.
async fn attack(d: &Daemon, plugin: &str, method: &str, params: Value) -> Value {
    d.execute(plugin, method, params.clone()).await.unwrap_or_else(|e| panic!("{plugin} {method} {params}: {e:?}"))
}

/// Asserts that an attack failed.
fn refused(r: &Value, what: &str) {
    assert_eq!(r["ok"], false, "{what}: THE ATTACK SUCCEEDED: {r}");
}

/// A sandbox mechanism this host lacks: the test says `skipped: why` and stops, except under CI
/// (`CI` set), whose host has every mechanism: there a missing one is a failure, so that a
/// probe gone wrong cannot turn the attack tests into silent skips (cargo hides a passing test's
/// output).
pub(crate) fn missing_mechanism(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("{why} (CI's host has every sandbox mechanism: this is a failure here)");
    }
    eprintln!("skipped: {why}");
}

/// Whether `plugin`'s status claims the guarantee named by any of `keywords` holds. A row that
/// says it does not hold prints `skipped: why`; no matching row counts as held.
async fn held(d: &Daemon, plugin: &str, keywords: &[&str]) -> bool {
    let s = d.status(plugin).await;
    for row in s["sandbox"].as_array().into_iter().flatten() {
        let g = row["guarantee"].as_str().unwrap_or("").to_lowercase();
        if keywords.iter().any(|k| g.contains(k)) && row["held"] == false {
            missing_mechanism(&format!("{plugin}: {g} does not hold here: {}", row["why"]));
            return false;
        }
    }
    true
}

/// A plugin's pid from its status.
async fn pid_of(d: &Daemon, plugin: &str) -> u32 {
    d.wait_state(plugin, "running").await["pid"].as_u64().unwrap() as u32
}

/// A plugin's environment as it reports it (TMPDIR, PLUGIND_DATA_DIR, pid, ppid).
async fn env_of(d: &Daemon, plugin: &str) -> Value {
    attack(d, plugin, "env", json!({})).await
}

/// Has the victim create `file` in its data dir and in its TMPDIR, and returns where those
/// files are on the host (found under plugind's state dir; else the paths the victim sees).
async fn victim_files(d: &Daemon, file: &str) -> Vec<PathBuf> {
    let env = env_of(d, "victim").await;
    let mut found = vec![];
    for var in ["PLUGIND_DATA_DIR", "TMPDIR"] {
        let seen = PathBuf::from(env[var].as_str().unwrap()).join(format!("{var}-{file}"));
        let r = attack(d, "victim", "create", json!({"path": seen})).await;
        assert_eq!(r["ok"], true, "the victim writes its own {var}: {r}");
        let on_host = find(&d.dir.path().join("state"), seen.file_name().unwrap());
        found.push(on_host.unwrap_or(seen));
    }
    found
}

/// The first file named `name` under `dir`.
fn find(dir: &Path, name: &std::ffi::OsStr) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if e.file_name() == name {
            return Some(p);
        }
        if e.file_type().ok()?.is_dir() {
            if let Some(f) = find(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

/// Control requests a plugin must get no answer to (any answer at all is a success).
fn control_requests(sock: &Path, victim: &str) -> Vec<Value> {
    let p = |method: &str, params: Value| json!({"path": sock, "method": method, "params": params, "timeout": 5});
    vec![
        p("supervisor.status", json!({})),
        p("plugins.stop", json!({"name": victim})),
        p("execute", json!({"plugin": victim, "method": "who", "params": {}})),
        p("services.register", json!({"name": "evil", "version": "1.0.0"})),
    ]
}

/// The same as `[attack, params]` pairs for a manifest's `on_*` config.
fn control_phase(sock: &Path, victim: &str) -> Value {
    Value::Array(control_requests(sock, victim).into_iter().map(|p| json!(["control", p])).collect())
}

/// Asserts that every attack `plugin` ran during `phase` failed (and that some ran).
async fn phase_refused(d: &Daemon, plugin: &str, phase: &str) {
    let results = attack(d, plugin, "results", json!({})).await;
    let mine: Vec<&Value> = results.as_array().unwrap().iter().filter(|r| r["phase"] == phase).collect();
    assert!(!mine.is_empty(), "{plugin} ran no {phase} attack: {results}");
    for r in mine {
        refused(r, &format!("{plugin} during {phase}"));
    }
}

/// Waits until `plugin`'s log (logs.tail) has a line containing `needle`; returns it.
async fn log_line(d: &Daemon, plugin: &str, needle: &str) -> String {
    wait_for(&format!("{plugin}'s log to say {needle:?}"), async || {
        let r = d.call("logs.tail", json!({"plugin": plugin, "lines": 1000})).await.ok()?;
        let lines = r["lines"].as_array()?.clone();
        lines.iter().filter_map(|l| l["message"].as_str()).find(|m| m.contains(needle)).map(str::to_owned)
    })
    .await
}

/// SIGKILLs a process left behind by a failed test, so a broken sandbox leaks nothing.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

// ---- the control socket (docs/security.md: no answer to any control method, at any moment) ----

/// A running plugin connects to the control socket and sends control requests, plugind's
/// shutdown last.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_gets_no_answer_on_control_socket_while_running() {
    let d = hostiles(victim(Daemon::builder()), &VARIANTS, &json!({})).start().await;
    let victim_pid = pid_of(&d, "victim").await;
    for (name, _) in VARIANTS {
        if !held(&d, name, &["control"]).await {
            continue;
        }
        let mut requests = control_requests(&d.socket, "victim");
        requests.push(json!({"path": d.socket, "method": "supervisor.shutdown", "params": {}}));
        for p in requests {
            refused(&attack(&d, name, "control", p.clone()).await, &format!("{name} {}", p["method"]));
        }
    }
    assert_eq!(pid_of(&d, "victim").await, victim_pid, "the victim was not stopped");
}

/// A plugin of one plugind connects to another plugind's control socket on the same host (not
/// hidden from it: only its own plugind's is): it listed, called and stopped that plugind's
/// plugins and read their kv data (audit 16). A process in any plugind's instance cgroup is
/// refused, not only in this one's.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_of_another_plugind_gets_no_answer_on_its_control_socket() {
    let other = victim(Daemon::builder()).start().await;
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    if !held(&d, "hostile", &["control"]).await {
        return;
    }
    let victim_pid = pid_of(&other, "victim").await;
    let mut requests = control_requests(&other.socket, "victim");
    requests.push(json!({"path": other.socket, "method": "supervisor.shutdown", "params": {}}));
    for p in requests {
        refused(&attack(&d, "hostile", "control", p.clone()).await, &format!("{}", p["method"]));
    }
    assert_eq!(pid_of(&other, "victim").await, victim_pid, "the other plugind's victim was not stopped");
}

/// The plugin connects while plugind waits for its `init` answer.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_gets_no_answer_on_control_socket_during_init() {
    let b = victim(Daemon::builder());
    let config = json!({"on_init": control_phase(&b.path().join("plugind.sock"), "victim")});
    let d = hostiles(b, &VARIANTS, &config).spawn().await;
    for (name, _) in VARIANTS {
        d.wait_state(name, "running").await;
        if held(&d, name, &["control"]).await {
            phase_refused(&d, name, "init").await;
        }
    }
}

/// The plugin connects while plugind waits for its `register` answer.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_gets_no_answer_on_control_socket_during_register() {
    let b = victim(Daemon::builder());
    let config = json!({"on_register": control_phase(&b.path().join("plugind.sock"), "victim")});
    let d = hostiles(b, &VARIANTS, &config).spawn().await;
    for (name, _) in VARIANTS {
        d.wait_state(name, "running").await;
        if held(&d, name, &["control"]).await {
            phase_refused(&d, name, "register").await;
        }
    }
}

/// A `process` plugin's double-forked, setsid'd grandchild (no longer its descendant by
/// ancestry) connects to the control socket.
#[tokio::test(flavor = "multi_thread")]
async fn setsid_grandchild_gets_no_answer_on_control_socket() {
    let d = hostile(victim(Daemon::builder()), "hostile-all", VARIANTS[2].1, json!({})).start().await;
    if !held(&d, "hostile-all", &["control"]).await {
        return;
    }
    for p in control_requests(&d.socket, "victim") {
        let r = attack(&d, "hostile-all", "grandchild", json!({"attack": "control", "params": p})).await;
        assert!(r["grandchild"]["sid"].is_number(), "the grandchild ran: {r}");
        refused(&r, &format!("grandchild {}", p["method"]));
    }
}

/// An instance retiring after a hot reload connects while handling `teardown`.
#[tokio::test(flavor = "multi_thread")]
async fn retiring_instance_gets_no_answer_on_control_socket() {
    let b = victim(Daemon::builder()).watch();
    let sock = b.path().join("plugind.sock");
    let p = json!({"path": sock, "method": "supervisor.status", "params": {}, "timeout": 2});
    let d = hostile(b, "hostile", &[], json!({"on_teardown": [["control", p]]})).start().await;
    if !held(&d, "hostile", &["control"]).await {
        return;
    }
    let old = pid_of(&d, "hostile").await;
    let manifest = d.plugins.join("hostile/plugin.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("Test fixture", "Reloaded test fixture");
    std::fs::write(&manifest, text).unwrap();
    wait_for("the hot reload", async || (d.status("hostile").await["pid"].as_u64()? != old as u64).then_some(())).await;
    let line = log_line(&d, "hostile", "hostile-result teardown control").await;
    assert!(line.contains("ok=false"), "the retiring instance got an answer: {line}");
}

/// A plugin being stopped connects while handling `teardown`.
#[tokio::test(flavor = "multi_thread")]
async fn stopping_plugin_gets_no_answer_on_control_socket() {
    let b = Daemon::builder();
    let p = json!({"path": b.path().join("plugind.sock"), "method": "supervisor.status", "params": {}, "timeout": 2});
    let d = hostile(b, "hostile", &[], json!({"on_teardown": [["control", p]]})).start().await;
    if !held(&d, "hostile", &["control"]).await {
        return;
    }
    d.call("plugins.stop", json!({"name": "hostile"})).await.unwrap();
    let line = log_line(&d, "hostile", "hostile-result teardown control").await;
    assert!(line.contains("ok=false"), "the stopping plugin got an answer: {line}");
}

// ---- plugind's and other plugins' processes (docs/security.md: signal, ptrace, /proc) ----

/// Tries `method` with `params(target pid)` from every variant against plugind and, when
/// `sibling`, the victim plugin.
async fn against_processes(method: &str, sibling: bool, keywords: &[&str], params: impl Fn(u32) -> Value) {
    let d =
        hostiles(victim(Daemon::builder()), &VARIANTS, &json!({})).env("PLUGIND_TEST_SECRET", "s3cret").start().await;
    for (name, _) in VARIANTS {
        if !held(&d, name, keywords).await {
            continue;
        }
        let mut targets = vec![("plugind", d.pid())];
        if sibling {
            targets.push(("victim", pid_of(&d, "victim").await));
        }
        for (who, pid) in targets {
            refused(&attack(&d, name, method, params(pid)).await, &format!("{name}: {method} on {who} ({pid})"));
        }
    }
}

/// Reads plugind's `/proc/PID/environ` (its secrets).
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_read_plugind_environ() {
    against_processes("proc", false, &["/proc", "ptrace", "environ"], |pid| json!({"pid": pid, "what": "environ"}))
        .await;
}

/// Reads plugind's `/proc/PID/maps`.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_read_plugind_maps() {
    against_processes("proc", false, &["/proc", "ptrace", "environ"], |pid| json!({"pid": pid, "what": "maps"})).await;
}

/// Opens and reads plugind's `/proc/PID/mem`.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_read_plugind_mem() {
    against_processes("proc", false, &["/proc", "ptrace", "environ"], |pid| json!({"pid": pid, "what": "mem"})).await;
}

/// Lists plugind's `/proc/PID/fd`.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_list_plugind_fds() {
    against_processes("proc", false, &["/proc", "ptrace", "environ"], |pid| json!({"pid": pid, "what": "fd"})).await;
}

/// `kill(plugind, 0)`: probing is signalling (a real signal would end the test's daemon).
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_signal_plugind() {
    against_processes("signal", false, &["signal"], |pid| json!({"pid": pid, "sig": 0})).await;
}

/// `kill(sibling, SIGTERM)`: the victim must keep running, with the same pid.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_signal_another_plugin() {
    let d = hostiles(victim(Daemon::builder()), &VARIANTS, &json!({})).start().await;
    let pid = pid_of(&d, "victim").await;
    for (name, _) in VARIANTS {
        if held(&d, name, &["signal"]).await {
            let r = attack(&d, name, "signal", json!({"pid": pid, "sig": libc::SIGTERM})).await;
            refused(&r, &format!("{name}: SIGTERM to victim"));
        }
    }
    let s = d.status("victim").await;
    assert!(s["pid"] == pid && s["restarts"] == 0, "the victim was killed: {s}");
}

/// What needs only the same uid, no ptrace access: resource limits (`RLIMIT_NOFILE` 8 would
/// stop plugind accepting control connections, `RLIMIT_CPU` 1 s would have the kernel kill it),
/// scheduling class, CPU affinity, nice value and I/O priority, of plugind and of another plugin;
/// and the nice value of every process of the uid or of a process group. Afterwards plugind's
/// and the victim's limits and scheduling are as they were, and plugind still answers. What a
/// plugin may do to itself still works.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_change_limits_or_scheduling_of_plugind_or_another_plugin() {
    let d = hostiles(victim(Daemon::builder()), &VARIANTS, &json!({})).start().await;
    let victim_pid = pid_of(&d, "victim").await;
    let snapshot = |pid: u32| {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After the command name: state … nice (field 19) … policy (field 41).
        let fields: Vec<String> = stat.rsplit_once(')').unwrap().1.split_whitespace().map(str::to_owned).collect();
        let affinity = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list"))
            .unwrap()
            .to_owned();
        (limits, fields[16].clone(), fields[38].clone(), affinity)
    };
    let before = [snapshot(d.pid()), snapshot(victim_pid)];
    for (name, _) in VARIANTS {
        if !held(&d, name, &["limits-and-scheduling"]).await {
            continue;
        }
        for (who, pid) in [("plugind", d.pid()), ("victim", victim_pid)] {
            for method in ["prlimit", "prlimit_cpu", "sched_idle", "renice", "renice_group", "affinity", "ioprio"] {
                refused(&attack(&d, name, method, json!({"pid": pid})).await, &format!("{name}: {method} on {who}"));
            }
        }
        refused(&attack(&d, name, "renice_user", json!({})).await, &format!("{name}: setpriority(PRIO_USER)"));
        if name == "hostile-all" {
            // From a grandchild in a session of its own (the filter is inherited through fork).
            for (who, pid) in [("plugind", d.pid()), ("victim", victim_pid)] {
                let r = attack(&d, name, "grandchild", json!({"attack": "prlimit", "params": {"pid": pid}})).await;
                assert!(r["grandchild"].is_object(), "{name}: the grandchild did not run: {r}");
                refused(&r, &format!("{name}: prlimit on {who} from a grandchild"));
            }
        }
        let own = attack(&d, name, "own_limits", json!({})).await;
        assert_eq!(own["ok"], true, "{name}: a plugin could not change its own limits: {own}");
    }
    assert_eq!([snapshot(d.pid()), snapshot(victim_pid)], before, "plugind's or the victim's limits changed");
    d.wait_state("victim", "running").await;
}

/// `PTRACE_SEIZE` of plugind and of another plugin.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_ptrace_plugind_or_another_plugin() {
    against_processes("ptrace", true, &["ptrace"], |pid| json!({"pid": pid})).await;
}

/// `process_vm_readv` of plugind's and another plugin's memory.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_process_vm_readv_plugind_or_another_plugin() {
    against_processes("vm_read", true, &["ptrace"], |pid| json!({"pid": pid})).await;
}

/// `pidfd_open` + `pidfd_getfd`: taking plugind's fds (its listening sockets among them).
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_take_fds_with_pidfd_getfd() {
    against_processes("getfd", true, &["ptrace", "getfd"], |pid| json!({"pid": pid})).await;
}

// ---- plugind's state and other plugins' data (docs/security.md: hidden, with or without `filesystem`) ----

/// Reads every path from every variant.
async fn unreadable(d: &Daemon, paths: &[PathBuf]) {
    for (name, _) in VARIANTS {
        if !held(d, name, &["state", "hidden", "hide"]).await {
            continue;
        }
        for path in paths {
            refused(&attack(d, name, "read", json!({"path": path})).await, &format!("{name} read {}", path.display()));
        }
    }
}

/// Reads the kv database (every plugin's values) and lists plugind's state dir.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_read_the_kv_database_or_the_state_dir() {
    let d = hostiles(victim(Daemon::builder()), &VARIANTS, &json!({})).start().await;
    let r = attack(&d, "victim", "kv", json!({"key": "secret", "value": "victim's secret"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let state = d.dir.path().join("state");
    unreadable(&d, &[state.join("kv.sqlite"), state.clone()]).await;
}

/// Reads files the victim keeps in its data dir and TMPDIR, and lists both.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_read_another_plugins_data_dir_or_tmpdir() {
    let d = hostiles(victim(Daemon::builder()), &VARIANTS, &json!({})).start().await;
    let mut paths = vec![];
    for file in victim_files(&d, "secret.txt").await {
        paths.extend([file.parent().unwrap().to_path_buf(), file]);
    }
    unreadable(&d, &paths).await;
}

/// Reads another plugin's directory (its code and manifest).
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_read_another_plugins_directory() {
    let d = hostiles(victim(Daemon::builder()), &VARIANTS, &json!({})).start().await;
    let dir = d.plugins.join("victim");
    unreadable(&d, &[dir.join("plugin.json"), dir.join("main.py"), dir]).await;
}

/// Reads plugind's config file and its `--listen` token file.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_read_plugind_config_or_token_file() {
    let b = Daemon::builder();
    std::fs::write(b.path().join("plugind.toml"), "# the operator's config: secrets live here\n").unwrap();
    std::fs::write(b.path().join("token"), "secret-token\n").unwrap();
    let b = b.arg("--config").arg("plugind.toml").arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg("token");
    let d = hostiles(b, &VARIANTS, &json!({})).start().await;
    unreadable(&d, &[d.dir.path().join("plugind.toml"), d.dir.path().join("token")]).await;
    // They share their directory with the plugins and the state: covered one by one, which a
    // rename over them undoes; plugind says so.
    let log = d.log();
    assert!(log.contains("hidden from plugins as a single file, not with its directory"), "{log}");
    assert!(log.contains("keep plugind's config and token files in a directory of their own"), "{log}");
}

/// The operator edits the config with `sed -i` and rotates the token with `mv token.new token`
/// while plugins run: both replace the file by a rename, which drops a mount on the file in
/// every namespace, and any plugin then read the new config and token (audit 21). In a
/// directory of their own, the directory is hidden whole, and a rename inside it changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn plugind_config_and_token_replaced_by_rename_stay_hidden() {
    let b = Daemon::builder();
    let etc = b.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("plugind.toml"), "# the operator's config: secrets live here\n").unwrap();
    std::fs::write(etc.join("token"), "secret-token\n").unwrap();
    let b = b
        .arg("--config")
        .arg("etc/plugind.toml")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--token-file")
        .arg("etc/token");
    let d = hostiles(b, &VARIANTS, &json!({})).start().await;
    assert!(!d.log().contains("hidden from plugins as a single file"), "{}", d.log());
    for (name, text) in [("plugind.toml", "# edited: api_key = \"sk-new\"\n"), ("token", "new-token\n")] {
        std::fs::write(etc.join(format!("{name}.new")), text).unwrap();
        std::fs::rename(etc.join(format!("{name}.new")), etc.join(name)).unwrap();
    }
    std::fs::write(etc.join("plugind.toml~"), "# an editor's backup\n").unwrap();
    unreadable(&d, &[etc.join("plugind.toml"), etc.join("token"), etc.join("plugind.toml~"), etc.clone()]).await;
}

/// The config and token as Kubernetes mounts a ConfigMap or Secret: `cm/token -> ..data/token`,
/// `..data -> ..2026_01`, updated by a new timestamped directory and a rename of a new `..data`
/// link over the old. Only the links' target directory was covered, so after the update every
/// running plugin read the new config and token, and plugind said nothing (audit 21, second
/// round). The directory the names are reached from is covered too.
#[tokio::test(flavor = "multi_thread")]
async fn plugind_config_and_token_behind_kubernetes_style_links_stay_hidden() {
    use std::os::unix::fs::symlink;
    let b = Daemon::builder();
    let cm = b.path().join("cm");
    std::fs::create_dir_all(cm.join("..2026_01")).unwrap();
    std::fs::write(cm.join("..2026_01/plugind.toml"), "# the operator's config: secrets live here\n").unwrap();
    std::fs::write(cm.join("..2026_01/token"), "secret-token\n").unwrap();
    symlink("..2026_01", cm.join("..data")).unwrap();
    for name in ["plugind.toml", "token"] {
        symlink(format!("..data/{name}"), cm.join(name)).unwrap();
    }
    let b =
        b.arg("--config").arg("cm/plugind.toml").arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg("cm/token");
    let d = hostiles(b, &VARIANTS, &json!({})).start().await;
    assert!(!d.log().contains("hidden from plugins as a single file"), "{}", d.log());
    // The kubelet's update.
    std::fs::create_dir(cm.join("..2026_02")).unwrap();
    std::fs::write(cm.join("..2026_02/plugind.toml"), "# edited: api_key = \"sk-new\"\n").unwrap();
    std::fs::write(cm.join("..2026_02/token"), "new-token\n").unwrap();
    symlink("..2026_02", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    std::fs::remove_dir_all(cm.join("..2026_01")).unwrap();
    unreadable(&d, &[cm.join("plugind.toml"), cm.join("token"), cm.join("..2026_02/token"), cm.clone()]).await;
}

/// Reaches plugind's state and another plugin's directory through `/proc/PID/cwd` and
/// `/proc/PID/root`, magic links that bypass whatever hides their paths from the plugin.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_reach_hidden_files_through_proc_magic_links() {
    let d = hostiles(victim(Daemon::builder()), &VARIANTS, &json!({})).start().await;
    attack(&d, "victim", "kv", json!({"key": "secret", "value": "victim's secret"})).await;
    let (plugind, victim) = (d.pid(), pid_of(&d, "victim").await);
    let kv = std::fs::canonicalize(d.dir.path().join("state/kv.sqlite")).unwrap();
    unreadable(
        &d,
        &[
            PathBuf::from(format!("/proc/{plugind}/cwd/state/kv.sqlite")),
            PathBuf::from(format!("/proc/{plugind}/root{}", kv.display())),
            PathBuf::from(format!("/proc/{victim}/cwd/main.py")),
            PathBuf::from(format!("/proc/{victim}/cwd")),
        ],
    )
    .await;
}

// ---- changing files (docs/security.md: without `filesystem` nothing outside TMPDIR and data dir) ----

/// Write, create, mkdir, remove and rename outside the plugin's own dirs, without `filesystem`.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_without_filesystem_changes_no_file_outside_its_dirs() {
    let d = hostiles(victim(Daemon::builder()), &NO_FS, &json!({})).start().await;
    let outside = d.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let file = outside.join("file.txt");
    std::fs::write(&file, "original\n").unwrap();
    let victim_dir = d.plugins.join("victim");
    for (name, _) in NO_FS {
        if !held(&d, name, &["write", "filesystem"]).await {
            continue;
        }
        for (method, p) in [
            ("write", json!({"path": file})),
            ("create", json!({"path": outside.join("new.txt")})),
            ("create", json!({"path": victim_dir.join("evil.py")})),
            ("mkdir", json!({"path": outside.join("newdir")})),
            ("rename", json!({"src": file, "dst": outside.join("moved.txt")})),
            ("remove", json!({"path": file})),
            ("remove", json!({"path": victim_dir.join("main.py")})),
        ] {
            refused(&attack(&d, name, method, p.clone()).await, &format!("{name} {method} {p}"));
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "original\n");
}

/// chmod (setuid), chown, utime, setxattr, inode flags (chattr) and io_uring (whose operations
/// pass the syscall filters) outside the plugin's own dirs without
/// `filesystem`, another plugin's `main` among the targets: its mode stays, and plugind does
/// not hot-reload it (checked after a sentinel plugin's reload, which the same watcher sees).
#[tokio::test(flavor = "multi_thread")]
async fn plugin_without_filesystem_changes_no_metadata_outside_its_dirs() {
    let b = hostiles(victim(Daemon::builder()), &NO_FS, &json!({})).plugin_as("perl-echo", "sentinel").watch();
    let d = b.start().await;
    let victim_pid = pid_of(&d, "victim").await;
    let file = d.dir.path().join("outside.txt");
    std::fs::write(&file, "original\n").unwrap();
    let main = d.plugins.join("victim/main.py");
    let modes = [&file, &main].map(|p| std::fs::metadata(p).unwrap().permissions().mode());
    for (name, _) in NO_FS {
        if !held(&d, name, &["metadata", "chmod", "filesystem"]).await {
            continue;
        }
        for target in [&main, &file] {
            for method in ["chmod", "chown", "utime", "setxattr", "chattr"] {
                let r = attack(&d, name, method, json!({"path": target, "mode": 0o4777})).await;
                refused(&r, &format!("{name} {method} {}", target.display()));
            }
        }
        // io_uring's operations (IORING_OP_SETXATTR…) run past the metadata rule: no ring at all,
        // `networking` or not.
        let r = attack(&d, name, "io_uring", json!({})).await;
        refused(&r, &format!("{name} io_uring"));
    }
    assert_eq!([&file, &main].map(|p| std::fs::metadata(p).unwrap().permissions().mode()), modes);
    // The watcher handles changes in batches, in order: once it has acted on a later change
    // (the sentinel's), it has acted on the attacks' too.
    let sentinel = pid_of(&d, "sentinel").await;
    let pl = d.plugins.join("sentinel/main.pl");
    std::fs::write(&pl, std::fs::read_to_string(&pl).unwrap() + "\n# touched\n").unwrap();
    wait_for("the sentinel's reload", async || {
        let s = d.status("sentinel").await;
        (s["state"] == "running" && s["pid"].is_number() && s["pid"] != sentinel).then_some(())
    })
    .await;
    let reload_logged =
        |p: &str| d.log().lines().any(|l| l.contains("hot reload") && l.ends_with(&format!("plugin={p}")));
    assert!(reload_logged("sentinel"), "plugind logged the sentinel's reload");
    assert!(!reload_logged("victim"), "the victim was hot-reloaded");
    let s = d.status("victim").await;
    assert_eq!(s["pid"], victim_pid, "the victim was restarted: {s}");
}

/// With `filesystem`, writes into plugind's state dir, config, token and other plugins'
/// directories (and their data dirs and TMPDIR) still fail.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_with_filesystem_cannot_write_plugind_state_or_other_plugins() {
    let b = Daemon::builder();
    std::fs::write(b.path().join("plugind.toml"), "# config\n").unwrap();
    std::fs::write(b.path().join("token"), "secret-token\n").unwrap();
    let b = b.arg("--config").arg("plugind.toml").arg("--listen").arg("127.0.0.1:0").arg("--token-file").arg("token");
    let d = hostiles(victim(b), &WITH_FS, &json!({})).start().await;
    attack(&d, "victim", "kv", json!({"key": "k", "value": "v"})).await;
    let dirs = victim_files(&d, "marker").await.into_iter().map(|f| f.parent().unwrap().to_path_buf());
    let [data, tmp]: [PathBuf; 2] = dirs.collect::<Vec<_>>().try_into().unwrap();
    let state = d.dir.path().join("state");
    let victim_dir = d.plugins.join("victim");
    for (name, _) in WITH_FS {
        if !held(&d, name, &["state", "write", "filesystem"]).await {
            continue;
        }
        for (method, p) in [
            ("write", json!({"path": state.join("kv.sqlite")})),
            ("create", json!({"path": state.join("evil")})),
            ("write", json!({"path": d.dir.path().join("plugind.toml")})),
            ("write", json!({"path": d.dir.path().join("token")})),
            ("write", json!({"path": victim_dir.join("main.py")})),
            ("create", json!({"path": victim_dir.join("evil.py")})),
            ("chmod", json!({"path": victim_dir.join("main.py"), "mode": 0o4777})),
            ("create", json!({"path": data.join("evil")})),
            ("create", json!({"path": tmp.join("evil")})),
            // Moving the directory above the state dir, plugins and socket aside, to put its own
            // in their place: the operator's next `pluginctl` and plugind's next rescan used them
            // (audit 16). Moving the state dir or the plugins dir themselves, likewise.
            ("rename", json!({"src": d.dir.path(), "dst": d.dir.path().with_extension("moved")})),
            ("rename", json!({"src": state, "dst": state.with_extension("moved")})),
            ("rename", json!({"src": d.plugins, "dst": d.plugins.with_extension("moved")})),
        ] {
            refused(&attack(&d, name, method, p.clone()).await, &format!("{name} {method} {p}"));
        }
    }
}

// ---- inherited fds, abstract sockets ----

/// plugind starts with a file open on fd 7 (no close-on-exec), as a careless parent leaves
/// it; the plugin scans fds 3..1024 at start-up and writes to whatever it finds.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_inherits_no_fd_but_stdio() {
    let d = hostiles(Daemon::builder().inherit_fd(7, "leaked.txt"), &VARIANTS, &json!({})).start().await;
    for (name, _) in VARIANTS {
        if !held(&d, name, &["inherit", "descriptor"]).await {
            continue;
        }
        refused(&attack(&d, name, "fd_scan", json!({})).await, &format!("{name}: fds open at start"));
        refused(&attack(&d, name, "fd_write", json!({})).await, &format!("{name}: writes to inherited fds"));
    }
    let leaked = std::fs::read_to_string(d.dir.path().join("leaked.txt")).unwrap();
    assert!(!leaked.contains("hostile"), "a plugin wrote through the leaked fd: {leaked:?}");
}

/// Connects to an abstract unix socket the test listens on (outside the plugin's sandbox).
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_connect_to_an_abstract_socket_outside_its_sandbox() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("plugind-containment-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    let d = hostiles(Daemon::builder(), &VARIANTS, &json!({})).start().await;
    for (name_, _) in VARIANTS {
        if held(&d, name_, &["abstract"]).await {
            refused(&attack(&d, name_, "abstract", json!({"name": name})).await, &format!("{name_} abstract connect"));
        }
    }
}

// ---- outliving plugind (docs/security.md: leftovers are killed before the next plugind starts) ----

/// A plugin clears its parent-death signal, ignores SIGTERM and keeps living after its stdin
/// closes; plugind is SIGKILLed. It must be dead at the latest once the next plugind on the
/// same state dir is up.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_that_clears_its_parent_death_signal_does_not_outlive_plugind() {
    let mut d = hostiles(Daemon::builder(), &[VARIANTS[0], VARIANTS[2]], &json!({})).start().await;
    let mut guards = vec![];
    for name in ["hostile", "hostile-all"] {
        let r = attack(&d, name, "survive", json!({})).await;
        let pid = r["detail"]["pid"].as_u64().unwrap() as u32;
        guards.push(KillOnDrop(pid));
    }
    d.kill_and_restart().await;
    if !held(&d, "hostile", &["outlive", "leftover"]).await {
        return;
    }
    for g in &guards {
        wait_for(&format!("the old plugin {} to be gone", g.0), async || (!alive(g.0)).then_some(())).await;
    }
}

/// Has `hostile-all` start a setsid'd grandchild that ignores SIGTERM and closed its stdio; its
/// pid, and a guard that kills it when the test ends.
async fn lingering_grandchild(d: &Daemon) -> (u32, KillOnDrop) {
    let r = attack(d, "hostile-all", "grandchild", json!({"attack": "env", "linger": true})).await;
    let pid = r["grandchild"]["pid"].as_u64().unwrap() as u32;
    let guard = KillOnDrop(pid);
    assert!(alive(pid), "{r}");
    (pid, guard)
}

/// A `process` plugin's setsid'd grandchild that ignores SIGTERM and closed its stdio; plugind
/// is SIGKILLed. The grandchild must be dead at the latest once the next plugind is up.
#[tokio::test(flavor = "multi_thread")]
async fn setsid_grandchild_does_not_outlive_plugind() {
    let mut d = hostile(Daemon::builder(), "hostile-all", VARIANTS[2].1, json!({})).start().await;
    let (pid, _guard) = lingering_grandchild(&d).await;
    d.kill_and_restart().await;
    if held(&d, "hostile-all", &["outlive", "leftover"]).await {
        wait_for(&format!("the grandchild {pid} to be gone"), async || (!alive(pid)).then_some(())).await;
    }
}

/// The same grandchild, of a plugin that ignores SIGTERM, and plugind told twice to stop (the
/// second SIGTERM exits at once): the plugin's own process died with plugind, but the
/// grandchild lived on, reparented to init, until a next plugind on the state dir (audit 18).
/// plugind now kills its instance cgroups before it exits.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_leaves_no_grandchild_behind() {
    let mut d = hostile(Daemon::builder(), "hostile-all", VARIANTS[2].1, json!({})).start().await;
    attack(&d, "hostile-all", "survive", json!({})).await;
    let (pid, _guard) = lingering_grandchild(&d).await;
    if !held(&d, "hostile-all", &["outlive", "leftover"]).await {
        return;
    }
    d.signal(libc::SIGTERM);
    wait_for("the graceful stop to begin", async || d.log().contains("graceful stop").then_some(())).await;
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    wait_for(&format!("the grandchild {pid} to be gone"), async || (!alive(pid)).then_some(())).await;
}

/// The same grandchild, and plugind SIGKILLed (as by the OOM killer), then started again from
/// another cgroup, as from another login session: it swept only below its own cgroup, so the
/// grandchild lived on in the dead run's instance cgroup. The state dir now names the trees a
/// run used, and the next run sweeps them too.
#[tokio::test(flavor = "multi_thread")]
async fn a_grandchild_does_not_outlive_plugind_started_again_from_another_cgroup() {
    let (Some(first), Some(second)) = (TestCgroups::new("first"), TestCgroups::new("second")) else {
        missing_mechanism("cannot create cgroups for plugind here (not root, or no writable cgroup tree)");
        return;
    };
    let mut b = hostile(Daemon::builder(), "hostile-all", VARIANTS[2].1, json!({}));
    b = b.in_cgroups(first.dirs.clone());
    let mut d = b.start().await;
    let (pid, _guard) = lingering_grandchild(&d).await;
    if !held(&d, "hostile-all", &["outlive", "leftover"]).await {
        return;
    }
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(theirs.contains(&format!("it-{}-first/plugind.", std::process::id())), "{theirs}");
    d.cgroups = second.dirs.clone();
    d.kill_and_restart().await;
    wait_for(&format!("the grandchild {pid} to be gone"), async || (!alive(pid)).then_some(())).await;
}

// ---- what a plugin declares or sends (docs/security.md: plugind's memory stays bounded) ----

/// `instances: 2000000000` (and 65) in a manifest: a load error naming the field; plugind and
/// the other plugins carry on.
#[tokio::test(flavor = "multi_thread")]
async fn huge_instances_is_a_load_error() {
    // Under an address-space cap: a plugind that tries to allocate for every instance dies
    // at once instead of taking the host's memory.
    let b = victim(Daemon::builder().address_space_mb(8192))
        .plugin_as("hostile", "greedy")
        .plugin_as("hostile", "greedy65");
    let b = b.manifest("greedy", |m| m["instances"] = json!(2_000_000_000u64));
    let d = b.manifest("greedy65", |m| m["instances"] = json!(65)).start().await;
    for name in ["greedy", "greedy65"] {
        let s = d.status(name).await;
        assert_eq!(s["state"], "invalid", "{s}");
        assert!(s["last_error"].as_str().unwrap_or("").contains("/instances"), "{s}");
    }
    assert_eq!(d.status("victim").await["state"], "running");
}

/// The same manifest appearing on a rescan (`plugins.reload`).
#[tokio::test(flavor = "multi_thread")]
async fn huge_instances_on_a_rescan_is_a_load_error() {
    let d = victim(Daemon::builder().address_space_mb(8192)).start().await;
    let dir = d.plugins.join("greedy");
    hostile_dir(&dir, json!({"name": "greedy", "instances": 2_000_000_000u64}));
    let r = d.call("plugins.reload", json!({})).await;
    assert!(r.as_ref().is_ok_and(|r| r["errors"].to_string().contains("/instances")), "{r:?}");
    assert_eq!(d.status("greedy").await["state"], "invalid");
    assert_eq!(d.status("victim").await["state"], "running");
}

/// 60 `log` notifications of 4 MiB each: plugind's RSS grows by less than 100 MB, and a kept
/// message is cut to 64 KiB.
#[tokio::test(flavor = "multi_thread")]
async fn log_flood_does_not_grow_plugind_memory() {
    let b = hostile(Daemon::builder(), "hostile", &[], json!({}));
    let d = b.manifest("hostile", |m| m["timeout_ms"] = json!(60_000)).start().await;
    let before = rss_kb(d.pid());
    attack(&d, "hostile", "log_flood", json!({"count": 60, "mb": 4})).await;
    attack(&d, "hostile", "env", json!({})).await;
    let after = rss_kb(d.pid());
    assert!(after < before + 100 * 1024, "plugind grew from {before} KiB to {after} KiB");
    let r = d.call("logs.tail", json!({"plugin": "hostile", "lines": 3})).await.unwrap();
    let longest = r["lines"].as_array().unwrap().iter().filter_map(|l| l["message"].as_str()).map(str::len).max();
    assert!(longest.is_some_and(|n| n <= 65 * 1024), "a log message of {longest:?} bytes was kept");
}

// ---- what a plugin's requests may make plugind hold (docs/security.md) ----

/// The hostile plugin's `request_flood` once it is over: `{sent, blocked, answers, messages}`.
/// (The call waits behind the flood in the single-threaded plugin.)
async fn flood_outcome(d: &Daemon, plugin: &str) -> Value {
    let out = attack(d, plugin, "flood_outcome", json!({})).await;
    let answered: u64 = out["answers"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(answered, out["sent"].as_u64().unwrap(), "every request it sent is answered once: {out}");
    out
}

/// A plugin with no permission that writes requests as fast as it can and never reads the
/// answers: plugind stops reading it once 1024 of them wait for it to read, so the flood's
/// writes block, plugind's memory stays put (it grew by 230 MB a second), other plugins are
/// served, and once the plugin reads, every request it sent is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_floods_requests_and_reads_nothing_is_not_read_from() {
    let b = hostile(Daemon::builder(), "hostile", &[], json!({}));
    let d = victim(b.manifest("hostile", |m| m["timeout_ms"] = json!(60_000))).start().await;
    let pid = pid_of(&d, "hostile").await;
    let before = rss_kb(d.pid());
    let (line, peak) = peak_rss_during(d.pid(), async {
        let flood = json!({"method": "registry.listServices", "mb": 512});
        attack(&d, "hostile", "request_flood", flood).await;
        log_line(&d, "hostile", "hostile-flood").await
    })
    .await;
    assert!(line.contains("blocked=True"), "plugind read the whole flood: {line}");
    assert!(peak < before + 100 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    assert_eq!(attack(&d, "victim", "anything", json!({})).await["plugin"], "victim", "others are served");
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let out = flood_outcome(&d, "hostile").await;
    let answers = out["answers"].as_object().unwrap();
    assert!(answers.keys().all(|k| k == "result" || k == "-32006"), "{out}");
}

/// A plugin's instances share its request budget: eight instances each flooding requests with
/// 28 KB answers (`registry.listServices` of its 256 long method names) and reading none hold
/// 64 MiB of them at most, all together. Each had a budget of its own: a plugin with no
/// permission took plugind past 1 GB with 16 instances, and got it OOM-killed with 40 (audit 17).
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_instances_share_its_request_budget() {
    let names: Vec<String> = (0..256).map(|i| format!("m{i:03}{}", "x".repeat(106))).collect();
    let config = json!({
        "services": [{"name": "flooder", "version": "1.0.0", "methods": names}],
        // Blocked for 10 s: plugind stopped reading it (a busy plugind reads slowly, not never).
        "flood_after_register": {"method": "registry.listServices", "mb": 512, "patience_s": 10},
    });
    let b = hostile(Daemon::builder(), "flooder", &[], config).manifest("flooder", |m| {
        m["instances"] = json!(8);
        m["timeout_ms"] = json!(60_000);
    });
    let d = victim(b).start().await;
    let before = rss_kb(d.pid());
    let (_, peak) = peak_rss_during(d.pid(), async {
        // Each instance says so once its writes have blocked.
        wait_for_at_most(std::time::Duration::from_secs(120), "every instance's flood to block", async || {
            let r = d.call("logs.tail", json!({"plugin": "flooder", "lines": 1000})).await.ok()?;
            let blocked = r["lines"]
                .as_array()?
                .iter()
                .filter(|l| {
                    l["message"].as_str().is_some_and(|m| m.starts_with("hostile-flood") && m.contains("blocked=True"))
                })
                .count();
            (blocked == 8).then_some(())
        })
        .await;
    })
    .await;
    eprintln!("plugind: {before} KiB, at most {peak} KiB during the flood");
    assert!(peak < before + 200 * 1024, "plugind grew from {before} KiB to {peak} KiB for one plugin's requests");
    assert_eq!(attack(&d, "victim", "anything", json!({})).await["plugin"], "victim", "others are served");
}

/// A plugin that sends `service.call`s with 1 MiB params to a provider that reads nothing: at
/// most 64 MiB of them are held for it (300 MiB were), the rest are refused `-32006` at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_calls_to_a_provider_that_reads_nothing_hold_at_most_64_mib() {
    // The deadline is longer than the flood takes to send on a loaded machine: calls that time
    // out free their share, and with 5 s a slow flood was mostly admitted (251 of 301, in CI).
    let b = hostile(Daemon::builder(), "sink", &[], json!({"deaf": true}))
        .manifest("sink", |m| m["timeout_ms"] = json!(30_000));
    let d = hostile(b, "hostile", &[], json!({}))
        .manifest("hostile", |m| {
            m["dependencies"] = json!({"optional": ["sink"]});
            m["timeout_ms"] = json!(60_000);
        })
        .start()
        .await;
    let before = rss_kb(d.pid());
    let blob = "x".repeat(1 << 20);
    let (out, peak) = peak_rss_during(d.pid(), async {
        let call = json!({"service": "sink", "method": "anything", "params": {"blob": blob}});
        attack(
            &d,
            "hostile",
            "request_flood",
            json!({"method": "service.call", "params": call, "count": 300, "mb": 400, "read": true}),
        )
        .await;
        flood_outcome(&d, "hostile").await
    })
    .await;
    assert!(peak < before + 160 * 1024, "plugind grew from {before} KiB to {peak} KiB: {out}");
    assert!(out["answers"]["-32006"].as_u64().unwrap_or(0) >= 100, "{out}");
    assert!(out["messages"]["-32006"].as_str().unwrap().contains("64 MiB"), "{out}");
    assert!(out["answers"]["-32001"].as_u64().unwrap_or(0) >= 1, "the calls admitted reach their deadline: {out}");
}

/// A plugin that sends many `service.call`s whose params take long to check against their
/// schema (4000 items against an `enum` of 2000 numbers: each check runs off the event loop)
/// waits behind its own checks, one at a time, not in front of everyone else's. With one queue
/// for all, a host's heavy call queued behind the whole flood (audit 18's next step: the flood's
/// 16 checks ran first).
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_flood_of_heavy_checks_waits_behind_itself_not_others() {
    let members: Vec<Value> = (0..2000).map(|i| json!(i as f64 + 0.5)).collect();
    let b = Daemon::builder().plugin_as("perl-echo", "heavy").manifest("heavy", move |m| {
        m["methods"] = json!({"echo": {"params": {"type": "array", "items": {"enum": members}}}});
        m["timeout_ms"] = json!(120_000);
    });
    let d = hostile(b, "hog", &[], json!({}))
        .manifest("hog", |m| {
            m["dependencies"] = json!({"optional": ["heavy"]});
            m["timeout_ms"] = json!(120_000);
        })
        .start()
        .await;
    let flood = 16;
    let call = json!({"service": "heavy", "method": "echo", "params": vec![1999.5; 4000], "timeout_ms": 120_000});
    attack(&d, "hog", "request_flood", json!({"method": "service.call", "params": call, "count": flood, "read": true}))
        .await;
    log_line(&d, "hog", "hostile-flood").await;
    wait_for("the flood's first call to be answered", async || (answered_by(&d, "heavy").await >= 1).then_some(()))
        .await;
    // Fails at its last item: refused the moment its check ends, never reaching the plugin.
    let mut items = vec![json!(1999.5); 4000];
    items.push(json!(0));
    let r = d.execute("heavy", "echo", json!(items)).await;
    let answered = answered_by(&d, "heavy").await;
    eprintln!("the host's check ended when {answered} of the plugin's {} calls were answered", flood + 1);
    assert_eq!(code(&r), -32602, "{r:?}");
    assert!(answered < 8, "the host's check waited until {answered} of the plugin's {} calls were answered", flood + 1);
    let out = flood_outcome(&d, "hog").await;
    assert_eq!(out["answers"]["result"], flood + 1, "every call of the flood went through: {out}");
}

/// A hook plugin that answers a 16 MB array of zeros, before four shadow hooks: plugind parsed
/// each answer into a tree (550 MB for this one) and copied the tree for every shadow step, so
/// one `hooks.run` with six shadows took it past 2 GB, to the OOM killer (audit 18). The payload
/// now passes as text, shared by the shadow steps.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_hook_payload_is_neither_parsed_into_a_tree_nor_copied_per_shadow() {
    let zeros = 8_000_000;
    let hooked = |m: &mut Value, priority: i64, mode: &str| {
        m["hooks"] = json!({"onRequest": {"priority": priority, "timeout_ms": 60_000, "mode": mode}});
        m["timeout_ms"] = json!(60_000);
    };
    let mut b = hostile(Daemon::builder(), "hk", &[], json!({"hook_zeros": zeros}))
        .manifest("hk", move |m| hooked(m, -100, "enforce"));
    for s in ["s1", "s2", "s3", "s4"] {
        b = hostile(b, s, &[], json!({})).manifest(s, move |m| hooked(m, -50, "shadow"));
    }
    let d = b.start().await;
    let before = rss_kb(d.pid());
    let (r, peak) = peak_rss_during(d.pid(), async {
        d.call("hooks.run", json!({"hook": "onRequest", "payload": {"user": "x"}})).await
    })
    .await;
    let r = r.unwrap();
    assert_eq!(r["payload"].as_array().map(Vec::len), Some(zeros), "the payload hk answered");
    let outcomes: Vec<(&str, &str)> = r["receipt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["plugin"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes[0], ("hk", "modified"), "{outcomes:?}");
    assert_eq!(outcomes.len(), 5, "{outcomes:?}");
    assert!(peak < before + 400 * 1024, "plugind grew from {before} KiB to {peak} KiB for one hooks.run");
}

/// A plugin that asks for 1 MiB answers and does not read them: at most 64 MiB of them wait
/// for it (200 MiB did); an answer past that is dropped, and the call answered `-32006`.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_does_not_read_its_answers_is_held_at_most_64_mib_of_them() {
    let b = victim(Daemon::builder()).manifest("victim", |m| m["timeout_ms"] = json!(60_000));
    let d = hostile(b, "hostile", &[], json!({}))
        .manifest("hostile", |m| {
            m["dependencies"] = json!({"optional": ["victim"]});
            m["timeout_ms"] = json!(60_000);
        })
        .start()
        .await;
    let pid = pid_of(&d, "hostile").await;
    let before = rss_kb(d.pid());
    let (_, peak) = peak_rss_during(d.pid(), async {
        let call = json!({"service": "victim", "method": "blob", "params": {"mb": 1}});
        attack(&d, "hostile", "request_flood", json!({"method": "service.call", "params": call, "count": 200})).await;
        // Every answer made, none read.
        wait_for_at_most(std::time::Duration::from_secs(120), "the victim to answer 200 calls", async || {
            (answered_by(&d, "victim").await >= 200).then_some(())
        })
        .await;
    })
    .await;
    assert!(peak < before + 160 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let out = flood_outcome(&d, "hostile").await;
    assert_eq!(out["sent"], 200, "{out}");
    let (results, dropped) =
        (out["answers"]["result"].as_u64().unwrap_or(0), out["answers"]["-32006"].as_u64().unwrap_or(0));
    assert!(results >= 50 && dropped >= 100, "{out}");
    assert!(out["messages"]["-32006"].as_str().unwrap().contains("dropped"), "{out}");
}

/// Whether a `/proc/sysvipc/*` table lists `key` (its first column, in decimal).
fn ipc_has_key(table: &str, key: i64) -> bool {
    std::fs::read_to_string(format!("/proc/sysvipc/{table}"))
        .unwrap()
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().next() == Some(&key.to_string()))
}

/// A plugin directory installed as a symlink (`plugins/victim -> elsewhere/victim`, a layout
/// plugind supports): covering the plugin root hid only the link, so a plugin with no
/// permission read the victim's manifest secrets at the link's target, and one with
/// `filesystem` could rewrite its code (audit 19). The targets are covered too; the victim
/// itself still runs from there.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_dir_installed_as_a_symlink_is_hidden_at_its_target_too() {
    let b = hostile(Daemon::builder(), "victim", &[], json!({"secret": "sk-victim-elsewhere"}));
    let b = hostiles(b, &[("hostile", &[]), ("hostile-fs", &["filesystem"])], &json!({}));
    let (link, real) = (b.path().join("plugins/victim"), b.path().join("elsewhere/victim"));
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::rename(&link, &real).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let d = b.start().await;
    if !held(&d, "hostile", &["private-state"]).await {
        return;
    }
    let manifest = real.join("plugin.json").to_string_lossy().into_owned();
    let code = real.join("main.py").to_string_lossy().into_owned();
    for plugin in ["hostile", "hostile-fs"] {
        let r = attack(&d, plugin, "read", json!({"path": manifest})).await;
        refused(&r, &format!("{plugin} reading the symlinked plugin's manifest at its target"));
    }
    let r = attack(&d, "hostile-fs", "open_write", json!({"path": code})).await;
    refused(&r, "hostile-fs opening the symlinked plugin's code for writing");
    assert_eq!(attack(&d, "victim", "anything", json!({})).await["plugin"], "victim", "the victim runs");
    let r = attack(&d, "victim", "read", json!({"path": manifest})).await;
    assert_eq!(r["ok"], true, "the victim reads its own files at their real path: {r}");
}

/// A local user who binds plugind's socket path first (root's default is `/tmp/plugind-0.sock`)
/// received root's `pluginctl call`s, params and all (audit 19); or who made the socket's
/// directory, then swapped a running plugind's socket for theirs (second round). `pluginctl` and the Python and
/// Node host libraries refuse a socket served (or, for Node, bound) by a uid that is neither
/// theirs nor root's, before they send anything.
#[test]
fn clients_refuse_a_socket_another_user_serves() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        missing_mechanism("serving a socket as another user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("squat.sock");
    const SQUATTER: &str = r#"import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777); s.listen(16)
while True:
    c, _ = s.accept()
    data = c.recv(65536)
    if data:
        print("GOT", data, flush=True)
    c.close()
"#;
    let mut squatter = std::process::Command::new("setpriv")
        // The system's Python: a version manager's shim under root's home is not for nobody.
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" })
        .args(["-c", SQUATTER])
        .arg(&sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(squatter.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline, "the squatter never bound its socket");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = std::process::Command::new(pluginctl())
        .arg("--socket")
        .arg(&sock)
        .args(["call", "victim", "secret", r#"{"api_key":"sk-live-123"}"#])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("uid 65534"), "pluginctl: {out:?}");
    let py = format!(
        "import asyncio, sys; sys.path.insert(0, {sdk:?}); import plugind_host\n\
         async def main():\n    try:\n        await plugind_host.connect(socket={sock:?})\n    except Exception as e:\n        print(e)\n\
         asyncio.run(main())",
        sdk = repo().join("sdk/python").to_string_lossy(),
        sock = sock.to_string_lossy(),
    );
    let out = std::process::Command::new("python3").args(["-c", &py]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("uid 65534"), "Python host: {out:?}");
    let js = format!(
        "import {{ connect }} from {lib:?}; try {{ await connect({{ socket: {sock:?} }}); }} catch (e) {{ console.log(e.message); }} process.exit(0);",
        lib = repo().join("sdk/node/plugind-host.mjs").to_string_lossy(),
        sock = sock.to_string_lossy(),
    );
    let out = std::process::Command::new("node").args(["--input-type=module", "-e", &js]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("uid 65534"), "Node host: {out:?}");
    squatter.kill().unwrap();
    squatter.wait().unwrap();
    let got = std::io::read_to_string(squatter.stdout.take().unwrap()).unwrap();
    assert!(!got.contains("GOT"), "THE ATTACK SUCCEEDED: the squatter read {got}");

    // plugind does not bind its socket in a directory another user made beforehand: they could
    // rename the socket aside and put theirs in its place (audit 19, second round).
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    let empty = dir.path().join("plugins");
    std::fs::create_dir(&empty).unwrap();
    // (Under `timeout`: a plugind that bound there would serve on.)
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(env!("CARGO_BIN_EXE_plugind"))
        .arg("--plugins")
        .arg(&empty)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(theirs.join("plugind.sock"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("belongs to uid 65534"), "{out:?}");
}

/// The host's block devices, by path (`/dev/vda`, `/dev/loop0`…).
fn host_block_devices() -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let mut found: Vec<String> = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
        .map(|e| e.path().to_string_lossy().into_owned())
        .collect();
    found.sort();
    found
}

/// A root plugin with no permission found the disk under plugind's state dir in its
/// `/proc/self/mountinfo`, opened the block device and read plugind's token, other plugins' kv
/// values and their manifests' secrets off it, past every cover (audit 19). A plugin's `/dev`
/// is its own: the usual character devices and nothing else (no disk by any path), a `/dev/shm`
/// that is not shared with the host or other plugins, and `/dev/null` still writable.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_dev_holds_no_disk_and_its_shm_is_its_own() {
    let d = hostiles(
        Daemon::builder(),
        &[("hostile", &[]), ("hostile-fs", &["filesystem"]), ("other-fs", &["filesystem"])],
        &json!({}),
    )
    .start()
    .await;
    if !held(&d, "hostile", &["private-state"]).await {
        return;
    }
    let listed = attack(&d, "hostile", "listdir", json!({"path": "/dev"})).await;
    let usual =
        ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"];
    let extra: Vec<&Value> =
        listed["detail"].as_array().unwrap().iter().filter(|e| !usual.contains(&e.as_str().unwrap())).collect();
    assert!(extra.is_empty(), "THE ATTACK SUCCEEDED: the plugin's /dev lists {extra:?}: {listed}");
    let disks = host_block_devices();
    if disks.is_empty() {
        missing_mechanism("this host's /dev has no block device to try");
    }
    for disk in &disks {
        for plugin in ["hostile", "hostile-fs"] {
            let r = attack(&d, plugin, "peek", json!({"path": disk})).await;
            refused(&r, &format!("{plugin} reading {disk}"));
            assert_eq!(r["errno"], libc::ENOENT, "{disk} is not there at all: {r}");
        }
    }
    let r = attack(&d, "hostile", "open_write", json!({"path": "/dev/null"})).await;
    assert_eq!(r["ok"], true, "/dev/null is writable: {r}");
    let r = attack(&d, "hostile", "peek", json!({"path": "/dev/urandom"})).await;
    assert_eq!(r["detail"], "4096 bytes", "/dev/urandom reads: {r}");
    // /dev/shm: a file one plugin makes there is its own.
    let name = format!("/dev/shm/plugind-it-{}", std::process::id());
    let r = attack(&d, "hostile-fs", "create", json!({"path": name})).await;
    assert_eq!(r["ok"], true, "a filesystem plugin writes its /dev/shm: {r}");
    assert!(!Path::new(&name).exists(), "THE ATTACK SUCCEEDED: the plugin's {name} is in the host's /dev/shm");
    let r = attack(&d, "other-fs", "peek", json!({"path": name})).await;
    refused(&r, "another plugin reading the file in /dev/shm");
}

/// SysV IPC: a plugin with no permission made a 300 MB shared memory segment, detached it and
/// exited. In the host's IPC namespace the segment outlived the instance, its restarts (outside
/// `memory_mb` once its cgroup was gone) and plugind, and any process of the uid could attach it
/// by key; message queues likewise. Each instance now has an IPC namespace of its own: its
/// segment and queue work for it, are not in the host's tables, and are gone with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_sysv_ipc_is_its_own_and_dies_with_it() {
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    if !held(&d, "hostile", &["private-ipc"]).await {
        return;
    }
    let key = 0x5eed_0000 + i64::from(std::process::id() & 0xffff);
    let r = attack(&d, "hostile", "sysv_ipc", json!({"key": key, "create": true, "mb": 8})).await;
    assert_eq!(r["ok"], true, "its own IPC works: {r}");
    for table in ["shm", "msg"] {
        assert!(
            !ipc_has_key(table, key),
            "THE ATTACK SUCCEEDED: the plugin's {table} key {key} is in the host's IPC namespace"
        );
    }
    d.call("plugins.restart", json!({"name": "hostile", "hard": true})).await.unwrap();
    let r = attack(&d, "hostile", "sysv_ipc", json!({"key": key})).await;
    assert_eq!(
        (&r["shm"], &r["msg"]),
        (&json!("No such file or directory"), &json!("No such file or directory")),
        "gone with its instance: {r}"
    );
}

/// The kernel keyrings are the uid's: a plugin read a secret plugind's user kept in its user
/// keyring and planted a key there for other plugins. seccomp refuses `add_key`, `keyctl` and
/// `request_key`.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_cannot_use_the_kernel_keyrings() {
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    if !held(&d, "hostile", &["no-keyrings"]).await {
        return;
    }
    let r = attack(&d, "hostile", "keyring", json!({})).await;
    refused(&r, "the user keyring");
    assert_eq!(
        (&r["add_key"], &r["keyctl"]),
        (&json!("Operation not permitted"), &json!("Operation not permitted")),
        "{r}"
    );
    // Nor does it see the uid's keys listed in /proc/keys (audit 15: ids and descriptions).
    let desc = std::ffi::CString::new(format!("plugind-test-{}", std::process::id())).unwrap();
    const USER_KEYRING: libc::c_long = -4;
    // SAFETY: add_key(2) with NUL-terminated strings and a 1-byte payload that outlive the call.
    let id = unsafe {
        libc::syscall(libc::SYS_add_key, c"user".as_ptr(), desc.as_ptr(), b"x".as_ptr(), 1usize, USER_KEYRING)
    };
    if id < 0 {
        missing_mechanism("this host has no kernel keys for the test to add one");
        return;
    }
    let listed = std::fs::read_to_string("/proc/keys").unwrap_or_default().contains(desc.to_str().unwrap());
    let r = attack(&d, "hostile", "read", json!({"path": "/proc/keys"})).await;
    // SAFETY: keyctl(KEYCTL_UNLINK, id, keyring).
    unsafe { libc::syscall(libc::SYS_keyctl, 9 as libc::c_long, id, USER_KEYRING) };
    assert!(listed, "the host lists the test's key");
    assert!(r["detail"] == "0 bytes" || r["ok"] == false, "THE ATTACK SUCCEEDED: the plugin reads /proc/keys: {r}");
}

/// seccomp's rules match x86-64 syscall numbers after an architecture check that x32 calls pass
/// (they share `AUDIT_ARCH_X86_64`): on a kernel with the x32 ABI on, `socket`, `keyctl`… with
/// bit 30 set passed every denial (audit 21). Every x32 call is refused with `EPERM` (on a kernel
/// without x32 the kernel itself would answer `ENOSYS`, so `EPERM` shows the filter did it).
#[tokio::test(flavor = "multi_thread")]
async fn x32_syscalls_pass_no_denial() {
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipped: x32 syscalls exist on x86-64 only");
        return;
    }
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    if !held(&d, "hostile", &["no-keyrings"]).await {
        return;
    }
    let r = attack(&d, "hostile", "x32", json!({})).await;
    refused(&r, "x32 syscalls");
    for call in ["getpid", "socket", "keyctl"] {
        assert_eq!(r[call], "Operation not permitted", "{call}: {r}");
    }
}

/// 32 instances, each registering 256 methods described in 60 KB each (within the per-method
/// cap): plugind kept a catalog per instance and grew to 558 MB; with 64 instances the OOM
/// killer picked plugind (audit 16). A catalog holds at most 1 MiB of JSON, and instances that
/// register alike share one. (16 instances here: 280 MB before.)
#[tokio::test(flavor = "multi_thread")]
async fn many_instances_registering_large_catalogs_do_not_grow_plugind() {
    let gen = json!({"methods_gen": {"count": 256, "desc_kb": 60}});
    // What plugind holds, not what its allocator keeps for reuse of the 16 answers it parsed
    // (freed pages go back at once): with them, 95 to 125 MB from run to run.
    let d = hostile(Daemon::builder(), "catalogs", &[], gen)
        .manifest("catalogs", |m| m["instances"] = json!(16))
        .env("MIMALLOC_PURGE_DELAY", "0")
        .start()
        .await;
    let s = d.wait_state("catalogs", "running").await;
    assert_eq!(s["instances"], 16, "{s}");
    let rss = rss_kb(d.pid());
    eprintln!("plugind: {rss} KiB");
    assert!(rss < 64 * 1024, "plugind holds {rss} KiB with 16 instances' catalogs");
    let methods = d.call("plugins.get", json!({"name": "catalogs"})).await.unwrap()["methods"].clone();
    let n = methods.as_object().map_or(0, |m| m.len());
    assert!(n > 0 && n < 256, "the catalog was cut to 1 MiB: {n} methods");
    let said = log_line(&d, "catalogs", "a catalog holds at most").await;
    assert!(said.contains("1048576 bytes"), "{said}");
    // plugind's own score is untouched, its plugins' raised: the OOM killer takes a plugin first.
    let score = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim().to_owned();
    assert_eq!(score(pid_of(&d, "catalogs").await), "500");
    assert_eq!(score(d.pid()), score(std::process::id()), "plugind's own is as it was given");
    // Raised by a root plugind, the score is also the floor: the plugin cannot lower it again.
    if nix::unistd::geteuid().is_root() {
        refused(&attack(&d, "catalogs", "oom_adj", json!({"value": 0})).await, "lower its oom_score_adj");
    }
}

/// A sparse `plugin.json` of 3 GB (4 KB on disk): plugind read it whole, grew to the OOM killer
/// and never listened (audit 16). A manifest over 1 MiB is a load error naming the file; the
/// other plugins run.
#[tokio::test(flavor = "multi_thread")]
async fn a_huge_sparse_manifest_is_a_load_error() {
    let b = victim(Daemon::builder().address_space_mb(8192));
    let dir = b.path().join("plugins/sparse");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join("plugin.json")).unwrap().set_len(3 << 30).unwrap();
    let d = b.start().await;
    assert_eq!(d.status("victim").await["state"], "running");
    let s = d.status("sparse").await;
    assert_eq!(s["state"], "invalid", "{s}");
    assert!(s["last_error"].as_str().unwrap().contains("at most 1 MiB"), "{s}");
}

/// A FIFO as a plugin's `main`, shipped with it (`cp -r` and `tar` keep one) or put in place of
/// its main while it runs: plugind opened it to read its first line and waited for a writer on
/// the thread that loads manifests, frozen (SIGTERM included), and again at every start (audit
/// 20). Such a main is not a program: the plugin fails to start saying so, and nothing else
/// waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_as_main_freezes_nothing() {
    let b = victim(Daemon::builder().watch()).plugin("py-probe");
    for (name, main) in [("fifo", "main"), ("fifopy", "main.py")] {
        let dir = b.path().join("plugins").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plugin.json"), json!({"name": name, "version": "1.0.0", "main": main}).to_string())
            .unwrap();
        nix::unistd::mkfifo(&dir.join(main), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    }
    // A FIFO as the manifest itself: a plugin directory whose manifest cannot be read, said so,
    // not a directory silently ignored.
    let dir = b.path().join("plugins/fifojson");
    std::fs::create_dir_all(&dir).unwrap();
    nix::unistd::mkfifo(&dir.join("plugin.json"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let d = tokio::time::timeout(std::time::Duration::from_secs(60), b.start()).await.expect("plugind starts");
    let s = d.status("fifojson").await;
    assert_eq!(s["state"], "invalid", "{s}");
    assert!(
        s["last_error"].as_str().unwrap().contains("fifojson/plugin.json: cannot read: it is not a regular file"),
        "{s}"
    );
    for name in ["fifo", "fifopy"] {
        let s = wait_for(&format!("{name} to fail"), async || {
            let s = d.status(name).await;
            (s["state"] == "failed").then_some(s)
        })
        .await;
        assert!(s["last_error"].as_str().unwrap().contains("not a regular file"), "{s}");
    }
    assert_eq!(d.execute("py-probe", "echo", json!(1)).await.unwrap(), json!(1));
    // At run time: a FIFO renamed over a running plugin's main (as its own `filesystem`
    // process could), seen by the watcher.
    let main = d.plugins.join("py-probe/main.py");
    let fifo = d.plugins.join("py-probe/fifo.tmp");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    std::fs::rename(&fifo, &main).unwrap();
    wait_for("the reload of py-probe to fail", async || {
        let e = d.status("py-probe").await["last_error"].as_str()?.to_owned();
        e.contains("not a regular file").then_some(())
    })
    .await;
    assert_eq!(d.execute("py-probe", "echo", json!(2)).await.unwrap(), json!(2), "the old instance serves on");
    assert_eq!(d.status("victim").await["state"], "running");
}

/// A plugin directory holding a symlink to a large tree (`lib -> /usr`: 15,000 watches), or into
/// its TMPDIR where a plugin makes directories at will (one watch in plugind each): plugind's
/// watcher followed it (audit 16). Symlinks inside a plugin's directory are not followed.
#[tokio::test(flavor = "multi_thread")]
async fn the_watcher_does_not_follow_symlinks_in_a_plugins_directory() {
    let b = victim(Daemon::builder().watch());
    let tree = b.path().join("tree");
    for i in 0..300 {
        std::fs::create_dir_all(tree.join(format!("d{i}/e"))).unwrap();
    }
    // Shipped with the plugin: there when plugind starts watching.
    std::os::unix::fs::symlink(&tree, b.path().join("plugins/victim/lib")).unwrap();
    let d = b.start().await;
    let watches = || -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("inotify")))
            .map(|e| {
                let info =
                    std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", d.pid(), e.file_name().to_string_lossy()));
                info.unwrap_or_default().lines().filter(|l| l.starts_with("inotify wd:")).count()
            })
            .sum()
    };
    let n = watches();
    assert!(n > 0, "no inotify watch found in plugind");
    assert!(
        n < 100,
        "THE ATTACK SUCCEEDED: plugind holds {n} inotify watches (the tree behind the symlink has 600 dirs)"
    );
}

/// `clone(CLONE_PARENT)` makes the new process a child of plugind, which does not know it: a
/// zombie never reaped, 3,000 of them in 2 s from a plugin with `process`, still there after
/// its stop, on the way to the host's pid limit (audit 16). seccomp refuses `CLONE_PARENT` to
/// every plugin (and `clone3`, whose flags it cannot see, falls back to `clone`).
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_cannot_make_children_of_plugind() {
    let d = hostile(Daemon::builder(), "hostile-all", VARIANTS[2].1, json!({})).start().await;
    if !held(&d, "hostile-all", &["outlive"]).await {
        return;
    }
    assert_eq!(attack(&d, "hostile-all", "spawn", json!({})).await["ok"], true, "it may start processes");
    for _ in 0..20 {
        let r = attack(&d, "hostile-all", "clone_parent", json!({})).await;
        refused(&r, "clone(CLONE_PARENT)");
    }
    let zombies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(") ").map_or("", |(_, rest)| rest).split(' ').collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&d.pid().to_string().as_str())
        })
        .collect();
    assert!(zombies.is_empty(), "THE ATTACK SUCCEEDED: plugind has zombie children: {zombies:?}");
}

/// A `storage` plugin that sends `kv.list` after `kv.list` (2 MB of keys each) without reading
/// the answers: each ran at once on a blocking thread of its own (up to 512), and plugind grew by
/// gigabytes, to the OOM killer, while another plugin's `kv.get` queued behind them all for tens
/// of seconds. A plugin's kv operations now run one at a time: plugind's memory stays within the
/// plugin's 64 MiB of unread answers and a few lists, and the other plugin's kv call is answered
/// in the time of one list, not of the flood.
#[tokio::test(flavor = "multi_thread")]
async fn a_kv_list_flood_holds_one_list_at_a_time_and_others_keep_their_store() {
    let b = victim(hostile(Daemon::builder(), "hoarder", &["storage"], json!({})));
    let d = b.manifest("hoarder", |m| m["timeout_ms"] = json!(60_000)).start().await;
    let pid = pid_of(&d, "hoarder").await;
    let mut db = rusqlite::Connection::open(d.dir.path().join("state/kv.sqlite")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let tx = db.transaction().unwrap();
    for i in 0..2_000 {
        tx.execute("INSERT INTO kv (plugin, key, value) VALUES ('hoarder', ?1, '1')", [format!("{i:01000}")]).unwrap();
    }
    tx.execute("INSERT INTO kv (plugin, key, value) VALUES ('victim', 'mine', '7')", []).unwrap();
    tx.commit().unwrap();
    drop(db);
    let before = rss_kb(d.pid());
    let (took, peak) = peak_rss_during(d.pid(), async {
        attack(&d, "hoarder", "request_flood", json!({"method": "kv.list", "count": 200})).await;
        log_line(&d, "hoarder", "hostile-flood").await;
        // A read (a write's time is the disk's).
        let t = std::time::Instant::now();
        let r = attack(&d, "victim", "kv_get", json!({"key": "mine"})).await;
        assert_eq!(r["value"], 7, "{r}");
        t.elapsed()
    })
    .await;
    assert!(took < std::time::Duration::from_secs(3), "the victim's kv.get took {took:?}");
    assert!(peak < before + 160 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let out = flood_outcome(&d, "hoarder").await;
    assert_eq!(out["sent"], 200, "{out}");
    assert!(out["answers"].as_object().unwrap().keys().all(|k| k == "result" || k == "-32006"), "{out}");
}

/// A `storage` plugin that stores a 14 MB array of zeros and reads it in a loop: each `kv.get`
/// parsed the text into a tree (about 36 times its size: 500 MB) while holding the database,
/// so another plugin's `kv.get` waited 1.5 s and plugind grew by hundreds of MB (audit 15).
/// Values are kept and answered as their text now, checked outside the database.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_kv_value_read_in_a_loop_costs_neither_memory_nor_others_time() {
    let b = victim(hostile(Daemon::builder(), "hoarder", &["storage"], json!({})));
    let d = b.manifest("hoarder", |m| m["timeout_ms"] = json!(60_000)).start().await;
    let pid = pid_of(&d, "hoarder").await;
    let db = rusqlite::Connection::open(d.dir.path().join("state/kv.sqlite")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let zeros = format!("[{}0]", "0,".repeat(7_000_000));
    db.execute("INSERT INTO kv (plugin, key, value) VALUES ('hoarder', 'big', ?1)", [&zeros]).unwrap();
    db.execute("INSERT INTO kv (plugin, key, value) VALUES ('victim', 'mine', '7')", []).unwrap();
    drop(db);
    let before = rss_kb(d.pid());
    let (took, peak) = peak_rss_during(d.pid(), async {
        attack(&d, "hoarder", "request_flood", json!({"method": "kv.get", "params": {"key": "big"}, "count": 12}))
            .await;
        log_line(&d, "hoarder", "hostile-flood").await;
        let mut worst = std::time::Duration::ZERO;
        for _ in 0..10 {
            let t = std::time::Instant::now();
            let r = attack(&d, "victim", "kv_get", json!({"key": "mine"})).await;
            assert_eq!(r["value"], 7, "{r}");
            worst = worst.max(t.elapsed());
        }
        worst
    })
    .await;
    assert!(took < std::time::Duration::from_millis(500), "the victim's kv.get took up to {took:?}");
    assert!(peak < before + 200 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let out = flood_outcome(&d, "hoarder").await;
    assert!(out["answers"].as_object().unwrap().keys().all(|k| k == "result" || k == "-32006"), "{out}");
}

/// A `storage` plugin cannot fill plugind's kv database: it keeps at most 10,000 keys (its
/// `kv.list` fits in one answer) and 64 MiB of keys and values; past either a new write is
/// refused `-32006`, and one that replaces a value in place is still taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_storage_plugin_is_held_to_its_kv_quota() {
    let b = hostile(Daemon::builder(), "hoarder", &["storage"], json!({}));
    let d = hostile(b, "hoarder2", &["storage"], json!({})).start().await;
    // 10,000 keys, written straight into the database (through plugind, each write is a
    // sync to disk), before the plugin's first write, when plugind counts what it holds.
    let mut db = rusqlite::Connection::open(d.dir.path().join("state/kv.sqlite")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let tx = db.transaction().unwrap();
    for i in 0..10_000 {
        tx.execute("INSERT INTO kv (plugin, key, value) VALUES ('hoarder', ?1, '1')", [format!("k{i}")]).unwrap();
    }
    tx.commit().unwrap();
    let r = attack(&d, "hoarder", "kv", json!({"key": "one-more", "value": 1})).await;
    refused(&r, "an 10,001st key");
    let e = &r["detail"]["set"]["error"];
    assert_eq!(e["code"], -32006, "{r}");
    assert!(e["message"].as_str().unwrap().contains("keeps 10000 keys"), "{r}");
    let r = attack(&d, "hoarder", "kv", json!({"key": "k7", "value": 2})).await;
    assert_eq!(r["ok"], true, "a key it has is still written: {r}");
    // 64 MiB: four values of 15 MiB fit, a fifth does not.
    let big = "x".repeat(15 << 20);
    for i in 0..4 {
        let r = attack(&d, "hoarder2", "kv", json!({"key": format!("big{i}"), "value": big})).await;
        assert_eq!(r["ok"], true, "value {i}: {}", r["detail"]["set"]);
    }
    let r = attack(&d, "hoarder2", "kv", json!({"key": "big4", "value": big})).await;
    refused(&r, "a fifth value of 15 MiB");
    assert!(r["detail"]["set"]["error"]["message"].as_str().unwrap().contains("67108864 bytes"), "{r}");
}

/// A plugin writing garbage lines on stdout at full speed (`yes x`, no handshake): plugind's
/// warnings about them are rate-limited like the plugin's own lines, so plugind neither writes
/// hundreds of MB a second of log (800 MB in 12 s) nor stalls other plugins doing it.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_writing_garbage_at_full_speed_does_not_flood_pluginds_log() {
    let yes = json!({"name": "yes", "version": "1.0.0", "main": "plugin.json", "command": ["yes", "x"],
        "startup_timeout_ms": 60_000});
    let d =
        Daemon::builder().plugin("perl-echo").plugin_files("yes", &[("plugin.json", &yes.to_string())]).spawn().await;
    d.wait_state("perl-echo", "running").await;
    // Past the burst, the drops are counted once a second.
    log_line(&d, "yes", "warnings about its stdout dropped").await;
    for _ in 0..20 {
        let t = std::time::Instant::now();
        assert_eq!(d.execute("perl-echo", "echo", json!(1)).await.unwrap(), json!(1));
        assert!(t.elapsed() < std::time::Duration::from_millis(500), "a call took {:?}", t.elapsed());
    }
    let skipped = d.log().matches("non-JSON line on stdout skipped").count();
    assert!(skipped < 5_000, "plugind logged {skipped} warnings about the flood");
}

/// CPU time a process has used (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<u64> =
        stat.rsplit(')').next().unwrap().split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let ticks = fields[11] + fields[12];
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    std::time::Duration::from_millis(ticks * 1000 / per_sec)
}

/// Bytes a process has written so far (`wchar` of `/proc/PID/io`).
fn written(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).unwrap().trim().parse().unwrap()
}

/// A plugin flooding stdout at full speed with what plugind reads and throws away made plugind
/// spend its CPU reading and parsing it: about a whole core for garbage (`yes`) or for `log`
/// notifications (of which the log keeps 200 a second), about a third of one for an endless
/// line (dropped past the 16 MiB limit). Past a rate of such chatter (10 000 lines or 16 MiB a
/// second per plugin) its stdout is left unread for a while, so its writes wait in its pipe:
/// over two seconds it writes no more than the rate lets through (with its burst, a 64 KiB
/// pipe and half as much again for slack), plugind's CPU stays under 15 % of a core, and other
/// plugins are served meanwhile. Without the rate, the endless line alone was 500 MB in two
/// seconds, and `yes` 10 MB.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_flooding_stdout_with_chatter_is_held_to_a_rate() {
    let lines = |len: usize| (3 * 20_000 + 20_000) * (len as u64 + 1) + (64 << 10);
    let unique = tempfile::tempdir().unwrap();
    let unique = unique.path().file_name().unwrap().to_string_lossy().into_owned();
    for name in ["garbage", "logs", "endless", "mcp-answers", "stderr", "no-method"] {
        let marker = format!("chatter-{unique}-{name}");
        let log = json!({"jsonrpc": "2.0", "method": "log", "params": {"level": "info", "message": marker}});
        let log = log.to_string();
        let (command, flooding, most) = match name {
            "garbage" => (json!(["yes", marker]), "non-JSON line on stdout skipped", lines(marker.len())),
            "logs" => (json!(["yes", log]), marker.as_str(), lines(log.len())),
            // Its log keeps 200 lines a second; reading them all cost 80 % of a core.
            // (Its stdout kept open on fd 3: a plugin that closes stdout is killed.)
            "stderr" => {
                (json!(["sh", "-c", "exec 3>&1; exec yes \"$0\" >&2", marker]), marker.as_str(), lines(marker.len()))
            }
            "endless" => {
                (json!(["perl", "-e", "$s = 'x' x 65536; print $s while 1", marker]), "over the frame limit", 80 << 20)
            }
            // Requests for a method plugind does not have, their answers read (a loop of them
            // kept 60 % of a core busy).
            "no-method" => {
                let request = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{marker}"}}"#);
                let flood = "$| = 1; $r = \"$ARGV[0]\\n\" x 1000; while (1) { print $r; sysread(STDIN, $b, 1 << 20) }";
                (json!(["perl", "-e", flood, request]), "no-method", lines(request.len()))
            }
            // An MCP server answering calls never made: its adapter drops them.
            _ => {
                let answer = format!(r#"{{"jsonrpc":"2.0","id":999999,"result":"{marker}"}}"#);
                (json!(["yes", answer]), "never sent", lines(answer.len()))
            }
        };
        let mut m = json!({"name": name, "version": "1.0.0", "main": "plugin.json", "command": command,
            "startup_timeout_ms": 60_000});
        if name == "mcp-answers" {
            m["protocol"] = json!("mcp");
        }
        let d =
            Daemon::builder().plugin("perl-echo").plugin_files(name, &[("plugin.json", &m.to_string())]).spawn().await;
        d.wait_state("perl-echo", "running").await;
        log_line(&d, name, flooding).await;
        let [pid] = procs_with(&marker)[..] else { panic!("one process of {name}'s") };
        // Two seconds of the flood (the window is the measure).
        let (cpu, wrote, t) = (cpu_time(d.pid()), written(pid), std::time::Instant::now());
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let wrote = written(pid) - wrote;
        let spent = cpu_time(d.pid()) - cpu;
        let share = spent.as_secs_f64() / t.elapsed().as_secs_f64();
        assert!(wrote <= most, "{name} wrote {wrote} bytes in {:?} (at most {most} expected)", t.elapsed());
        assert!(
            share < 0.15,
            "{name}: plugind spent {spent:?} of CPU in {:?} ({:.0} % of a core)",
            t.elapsed(),
            share * 100.0
        );
        let said = log_line(&d, name, "left unread").await;
        assert!(said.contains("10000 lines/s") && said.contains("16 MiB/s"), "{said}");
        assert_eq!(d.status(name).await["state"], "starting", "{name} is still there, trying to start");
        for i in 0..20 {
            assert_eq!(d.execute("perl-echo", "echo", json!(i)).await.unwrap(), json!(i));
        }
    }
}

/// Notifications whose params carry a 14 MiB array of zeros (`$/progress`, `log` fields,
/// `metrics.emit`): each was parsed into a tree about 36 times its size, and plugind grew by
/// 500–650 MB and stayed there (audit 15). A notification over 1 MiB is reported and ignored
/// unparsed.
#[tokio::test(flavor = "multi_thread")]
async fn huge_notifications_are_not_parsed() {
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    let before = rss_kb(d.pid());
    let (_, peak) = peak_rss_during(d.pid(), async {
        for method in ["$/progress", "log", "metrics.emit"] {
            attack(&d, "hostile", "zeros_flood", json!({"method": method, "count": 3, "mb": 14})).await;
        }
        // Answered after the notifications, read in order.
        attack(&d, "hostile", "env", json!({})).await;
    })
    .await;
    assert!(peak < before + 100 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    let said = log_line(&d, "hostile", "`$/progress` notification of").await;
    assert!(said.contains("ignored: over 1024 KiB"), "{said}");
}

/// A plugin with no permission leaves 40,000 nested directories in its `TMPDIR` and is
/// stopped: removing them recursed once per level on plugind's async worker, overflowed its
/// stack and killed plugind with every plugin (19,000 levels did, audit 16), and the dir, reused
/// by the next instance of that name, did it again after every restart. Removal now walks the
/// tree without recursion, off the async workers, after the dir is renamed aside.
#[tokio::test(flavor = "multi_thread")]
async fn a_deep_tree_left_in_tmpdir_does_not_crash_plugind() {
    let d = victim(hostile(Daemon::builder(), "digger", &[], json!({}))).start().await;
    // What the plugin can do (its TMPDIR is its own to fill), made here: under Landlock each
    // mkdir checks the whole path, and 40,000 levels take the plugin minutes.
    let tmp = d.dir.path().join("state/tmp");
    // Dropped before `d`: should the test fail with the tree still there, the temp dir's own
    // removal would recurse once per level and overflow this thread's stack, hiding the failure.
    let _tree = RemoveDiggersTree(tmp.clone());
    let own =
        std::fs::read_dir(&tmp).unwrap().flatten().find(|e| e.file_name().to_string_lossy().starts_with("digger-"));
    let mut dir = std::fs::File::open(own.expect("the digger's TMPDIR").path()).unwrap();
    for _ in 0..40_000 {
        use std::os::fd::{AsRawFd, FromRawFd};
        assert_eq!(unsafe { libc::mkdirat(dir.as_raw_fd(), c"d".as_ptr(), 0o700) }, 0);
        let fd = unsafe { libc::openat(dir.as_raw_fd(), c"d".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0);
        dir = unsafe { std::fs::File::from_raw_fd(fd) };
    }
    drop(dir);
    let s = d.call("plugins.stop", json!({"name": "digger"})).await.unwrap();
    assert_eq!(s["state"], "stopped", "{s}");
    assert_eq!(attack(&d, "victim", "who", json!({})).await["plugin"], "victim", "plugind and the others run on");
    // Removing 40,000 levels is disk work: seconds here, more on a loaded machine.
    wait_for_at_most(std::time::Duration::from_secs(120), "the digger's temp dir to be removed", async || {
        let left: Vec<String> = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("digger") || n.starts_with(".discarded"))
            .collect();
        left.is_empty().then_some(())
    })
    .await;
    let s = d.call("plugins.start", json!({"name": "digger"})).await.unwrap();
    assert_eq!(s["state"], "running", "{s}");
}

/// Removes what is left of the digger's temp dir, without recursion (see its test).
struct RemoveDiggersTree(PathBuf);

impl Drop for RemoveDiggersTree {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("digger") || name.starts_with(".discarded") {
                let _ = plugind::tmpdirs::remove_tree(&e.path());
            }
        }
    }
}

/// A method schema that is small to send but exponential to check (41 `$defs`, each `anyOf`
/// naming the next twice: 2^40 subschemas for one value) is refused, from `register` (the
/// method is dropped with a warning, the plugin runs) and from the manifest (a load error naming
/// its pointer). Checking calls against it used to wedge plugind for good, SIGTERM included.
#[tokio::test(flavor = "multi_thread")]
async fn a_schema_exponential_to_check_is_refused() {
    let mut defs = serde_json::Map::new();
    for i in 0..40 {
        let next = json!({"$ref": format!("#/$defs/a{}", i + 1)});
        defs.insert(format!("a{i}"), json!({"anyOf": [next.clone(), next]}));
    }
    defs.insert("a40".into(), json!({"type": "string"}));
    let boom = json!({"boom": {"params": {"$defs": defs, "$ref": "#/$defs/a0"}}});
    let b = hostile(Daemon::builder(), "hostile", &[], json!({"methods": boom}));
    let d = hostile(b, "declared", &[], json!({})).manifest("declared", |m| m["methods"] = boom.clone()).spawn().await;
    d.wait_state("hostile", "running").await;
    let warned = log_line(&d, "hostile", "method \"boom\" rejected").await;
    assert!(warned.contains("more than 100000 subschemas"), "{warned}");
    // Not in the catalog: the call reaches the plugin unchecked, at once.
    let r = attack(&d, "hostile", "boom", json!(1)).await;
    assert_eq!(r["method"], "boom", "{r}");
    let s = d.wait_state("declared", "invalid").await;
    let why = s["last_error"].as_str().unwrap();
    assert!(why.contains("/methods/boom/params") && why.contains("more than 100000 subschemas"), "{why}");
    assert_eq!(d.call("plugins.list", json!({})).await.unwrap().as_array().unwrap().len(), 2, "plugind answers");
}

/// A schema within the bound (three nested `anyOf`s, 45 wide: 91,000 subschemas at a place),
/// and params that fail it at each of many places: the validator's report holds every branch's
/// errors, about 40 MB per failing item, and 100 items took plugind past 2 GB to the OOM killer
/// (audit 16; any caller can send them). A report that large is not made: the call is answered
/// `-32602` saying the params do not match, and plugind stays small.
#[tokio::test(flavor = "multi_thread")]
async fn params_failing_a_wide_union_schema_do_not_grow_plugind() {
    let union = |of: Value| json!({"anyOf": vec![of; 45]});
    let schema = json!({
        "$defs": {"z": union(json!({"type": "string"})), "y": union(json!({"$ref": "#/$defs/z"})),
                  "x": union(json!({"$ref": "#/$defs/y"}))},
        "type": "array", "items": {"$ref": "#/$defs/x"}
    });
    let d = victim(Daemon::builder())
        .manifest("victim", |m| m["methods"] = json!({"heavy": {"params": schema}}))
        .start()
        .await;
    let before = rss_kb(d.pid());
    let (r, peak) = peak_rss_during(d.pid(), d.execute("victim", "heavy", json!(vec![1; 100]))).await;
    assert_eq!(code(&r), -32602, "{r:?}");
    assert!(format!("{r:?}").contains("do not match its schema"), "{r:?}");
    assert!(peak < before + 100 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    // Params that match pass on.
    assert_eq!(d.execute("victim", "heavy", json!(["a", "b"])).await.unwrap()["method"], "heavy");
}

/// A plugin's default tasks limit on this host (4096, or 15 % of `pid_max` when less); None,
/// after saying `skipped`, where no pids cgroup holds it.
fn default_tasks_here() -> Option<u64> {
    let v2_pids = ["/sys/fs/cgroup/cgroup.controllers", "/sys/fs/cgroup/unified/cgroup.controllers"]
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|c| c.split_whitespace().any(|w| w == "pids")));
    if !(v2_pids || Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists()) {
        missing_mechanism("no pids cgroup controller here");
        return None;
    }
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().parse().unwrap();
    Some((pid_max * 15 / 100).clamp(64, 4096))
}

/// A plugin with no permission and no `processes` limit started 9,000 threads, 27 % of the host's
/// pids (audit 16). Without `processes`, an instance's pids cgroup holds 4096 tasks (or 15 % of
/// the kernel's pid space, when less), threads included.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_without_a_processes_limit_is_held_to_a_default() {
    let d = hostile(Daemon::builder(), "spawner", &[], json!({})).start().await;
    let Some(default) = default_tasks_here() else { return };
    let r = attack(&d, "spawner", "threads", json!({"count": 200})).await;
    assert_eq!(r["ok"], true, "a few hundred threads are fine: {r}");
    let r = attack(&d, "spawner", "threads", json!({"count": default + 1000})).await;
    refused(&r, "threads past the default tasks limit");
    assert!(r["started"].as_u64().unwrap() < default, "{r}");
}

/// The default is the plugin's, split among its instances: per instance, two instances held
/// 8,190 tasks and eight would have taken every pid on the host (audit 19). An instance of a
/// plugin of two gets half.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_instances_share_its_default_tasks_limit() {
    let d = hostile(Daemon::builder(), "spawner", &[], json!({}))
        .manifest("spawner", |m| m["instances"] = json!(2))
        .start()
        .await;
    let Some(default) = default_tasks_here() else { return };
    let share = default / 2;
    let r = attack(&d, "spawner", "threads", json!({"count": share + 300})).await;
    refused(&r, "threads past the instance's share of the plugin's default");
    assert!(r["started"].as_u64().unwrap() < share, "{r}");
}

/// Requests whose ids are 8 MiB strings: each id was kept, copied and echoed in the answer, about
/// four times the line against the 64 MiB request budget (one plugin held plugind at 280 MB,
/// four at 978 MB: audit 16). An id over 1 KiB is refused: `-32600` under a null id.
#[tokio::test(flavor = "multi_thread")]
async fn requests_with_huge_ids_are_refused_without_copies() {
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    let before = rss_kb(d.pid());
    let (r, peak) = peak_rss_during(d.pid(), attack(&d, "hostile", "long_id", json!({"kb": 8192, "count": 20}))).await;
    refused(&r, "answered under its 8 MiB id");
    assert_eq!(r["count"], 20, "{r}");
    assert_eq!(r["answers"][0]["error"]["code"], -32600, "{r}");
    assert!(r["answers"][0]["error"]["message"].as_str().unwrap().contains("at most 1024"), "{r}");
    assert!(peak < before + 100 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    // A request with an ordinary id is answered as before.
    let r = attack(&d, "hostile", "long_id", json!({"kb": 0, "count": 1})).await;
    assert!(r["answers"][0]["error"].is_null(), "{r}");
}

/// A `log` message with a newline and terminal escapes: it printed a forged line of plugind's own
/// (`… [plugind] error: crashed`) in plugind's log and in `pluginctl logs`, and sent the escapes
/// to the reader's terminal (audit 16). Printed as text, a plugin's control characters are
/// escaped; `--json` keeps the message as it was.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_log_cannot_forge_lines_or_drive_the_terminal() {
    let d = hostile(Daemon::builder(), "forger", &[], json!({})).start().await;
    let message = "fine\n2026-12-07T00:00:00Z victim [plugind] error: crashed\u{1b}]0;pwned\u{7}\u{1b}[2J";
    attack(&d, "forger", "notify", json!({"method": "log", "params": {"level": "error", "message": message}})).await;
    log_line(&d, "forger", "pwned").await;
    let out = d.ctl(&["logs", "forger"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "THE ATTACK SUCCEEDED: escapes reach the terminal: {text:?}"
    );
    assert!(
        !text.lines().any(|l| l.contains("victim [plugind]") && !l.contains("forger")),
        "THE ATTACK SUCCEEDED: {text}"
    );
    assert!(text.contains("fine\\n2026-12-07T00:00:00Z victim [plugind] error: crashed\\e]0;pwned"), "{text}");
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-07T00:00:00Z victim")),
        "THE ATTACK SUCCEEDED in plugind's log"
    );
    assert!(!log.contains('\u{1b}'), "escapes in plugind's log");
    let json = d.ctl(&["--json", "logs", "forger"]);
    assert!(String::from_utf8_lossy(&json.stdout).contains("\\u001b]0;pwned"), "--json keeps the message");
}

/// `$/progress` with params of the wrong shape is reported (in the plugin's log, and to it with
/// `onError`) like bad `log` params, not dropped in silence.
#[tokio::test(flavor = "multi_thread")]
async fn bad_progress_params_are_reported() {
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    for params in [json!({"id": "nope"}), json!({"id": 1, "message": 5}), json!([1, 2])] {
        attack(&d, "hostile", "notify", json!({"method": "$/progress", "params": params})).await;
    }
    let line = log_line(&d, "hostile", "bad `$/progress` params").await;
    assert!(line.contains("expected {id"), "{line}");
}

/// 5000 distinct `metrics.emit` series: at most 1000 kept, each labelled `plugin`.
#[tokio::test(flavor = "multi_thread")]
async fn metric_series_are_capped_per_plugin_and_labelled() {
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    attack(&d, "hostile", "metrics_flood", json!({"count": 5000, "prefix": "hostile_flood"})).await;
    attack(&d, "hostile", "env", json!({})).await;
    let text = d.call("metrics.get", json!({})).await.unwrap()["text"].as_str().unwrap().to_owned();
    let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && l.contains("hostile_flood_")).collect();
    assert!(!series.is_empty(), "no series kept at all");
    assert!(series.len() <= 1000, "{} series kept", series.len());
    assert!(
        series.iter().all(|l| l.contains("plugin=\"hostile\"")),
        "{:?}",
        series.iter().find(|l| !l.contains("plugin="))
    );
}

// ---- the registry (docs/protocol.md) ----

/// A plugin registers `victim@99.0.0` (another plugin's name) and a service its manifest does
/// not provide: both refused and shown in `refused_services`; calls meant for the victim, from
/// hosts and plugins, still reach the victim.
#[tokio::test(flavor = "multi_thread")]
async fn register_of_a_service_not_provided_is_refused() {
    let services =
        json!({"services": [{"name": "victim", "version": "99.0.0"}, {"name": "notmine", "version": "1.0.0"}]});
    let b = hostile(victim(Daemon::builder()), "hostile", &[], services);
    let b = hostile(b, "caller", &[], json!({}))
        .manifest("caller", |m| m["dependencies"] = json!({"required": ["victim"]}));
    let d = b.start().await;
    let r = d.call("services.call", json!({"service": "victim", "method": "who", "params": {}})).await.unwrap();
    assert_eq!(r["plugin"], "victim", "a host's call was hijacked: {r}");
    let r = attack(&d, "caller", "call", json!({"service": "victim", "method": "who"})).await;
    assert_eq!(r["reached"], "victim", "a plugin's call was hijacked: {r}");
    let refused_services = d.status("hostile").await["refused_services"].to_string();
    for name in ["victim", "notmine"] {
        assert!(refused_services.contains(name), "{name} not in refused_services: {refused_services}");
    }
    let list = d.call("services.list", json!({})).await.unwrap().to_string();
    assert!(!list.contains("notmine"), "{list}");
}

/// A plugin whose manifest `provides` another plugin's name at a higher version (and registers
/// it): checked against its own manifest only, that passed, and every call for `victim` at `^1`
/// went to the thief. A plugin's name is its service alone: the thief's entry is not routed
/// (and its log says so), calls from hosts and plugins reach the victim, `services.list` shows
/// only the victim's, and the thief's own service still works.
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_cannot_provide_another_plugins_name() {
    let services = json!({"services": [{"name": "victim", "version": "1.9.0"}]});
    let b = hostile(victim(Daemon::builder()), "thief", &[], services)
        .manifest("thief", |m| m["provides"] = json!([{"name": "victim", "version": "1.9.0"}]));
    let b = hostile(b, "caller", &[], json!({}))
        .manifest("caller", |m| m["dependencies"] = json!({"required": ["victim@^1.0.0"]}));
    let d = b.start().await;
    for version in [None, Some("^1.0.0")] {
        let mut p = json!({"service": "victim", "method": "who", "params": {}});
        if let Some(v) = version {
            p["version"] = json!(v);
        }
        let r = d.call("services.call", p).await.unwrap();
        assert_eq!(r["plugin"], "victim", "THE ATTACK SUCCEEDED: a host's call was hijacked: {r}");
    }
    let r = attack(&d, "caller", "call", json!({"service": "victim", "method": "who"})).await;
    assert_eq!(r["reached"], "victim", "THE ATTACK SUCCEEDED: a plugin's call was hijacked: {r}");
    let list = d.call("services.list", json!({})).await.unwrap();
    let victims: Vec<&Value> = list.as_array().unwrap().iter().filter(|s| s["name"] == "victim").collect();
    assert_eq!(victims.len(), 1, "{list}");
    assert_eq!(victims[0]["plugin"], "victim", "{list}");
    let said = log_line(&d, "thief", "not routed to this plugin").await;
    assert!(said.contains("\"victim\""), "{said}");
    let r = d.call("services.call", json!({"service": "thief", "method": "who", "params": {}})).await.unwrap();
    assert_eq!(r["plugin"], "thief", "{r}");
    // Its status does not list `victim` as a service of its own, but as refused, with why.
    let s = d.status("thief").await;
    assert!(s["services"].as_array().unwrap().iter().all(|x| x["name"] != "victim"), "{s}");
    let refused = s["refused_services"].as_array().unwrap();
    assert!(
        refused.iter().any(|x| x["name"] == "victim" && x["reason"].as_str().unwrap().contains("named after plugin")),
        "{s}"
    );
    // Nor are the victim's dependents told the thief's `victim` came or went: the thief restarts
    // (down, up), then the victim does, and the caller hears of the victim's alone.
    for name in ["thief", "victim"] {
        let r = d.call("plugins.restart", json!({"name": name, "hard": true})).await.unwrap();
        assert_eq!(r["state"], "running", "{r}");
    }
    let changes = wait_for("the caller hears the victim came back", async || {
        let c = attack(&d, "caller", "changes", json!({})).await;
        c.as_array().unwrap().iter().any(|x| x["plugin"] == "victim" && x["event"] == "up").then_some(c)
    })
    .await;
    assert!(
        changes.as_array().unwrap().iter().all(|x| x["plugin"] != "thief"),
        "THE ATTACK SUCCEEDED: the caller was told of the thief's `victim`: {changes}"
    );
}

/// plugind's own errors to a plugin's requests name the plugin in `data.plugin`, as every error
/// involving one does: a `service.call` outside the running versions and a `kv` key that is no
/// key had no `data.plugin` (audit 16).
#[tokio::test(flavor = "multi_thread")]
async fn errors_answered_to_a_plugins_requests_name_it() {
    let b = hostile(victim(Daemon::builder()), "caller", &["storage"], json!({}))
        .manifest("caller", |m| m["dependencies"] = json!({"required": ["victim@^1.0.0"]}));
    let d = b.start().await;
    let r = attack(&d, "caller", "call", json!({"service": "victim", "version": ">=2", "method": "who"})).await;
    assert_eq!(r["detail"]["error"]["code"], -32004, "{r}");
    assert_eq!(r["detail"]["error"]["data"]["plugin"], "caller", "{r}");
    assert!(r["detail"]["error"]["data"]["running"].is_array(), "{r}");
    let r = attack(&d, "caller", "kv_get", json!({"key": ""})).await;
    assert_eq!(r["detail"]["error"]["code"], -32602, "{r}");
    assert_eq!(r["detail"]["error"]["data"]["plugin"], "caller", "{r}");
}

/// A directory added while plugind is down, claiming a plugin's name and sorting first: at the
/// next start it took the name (plugind had no memory of who held it), with the plugin's calls
/// and its kv data (audit 14). The state dir now records who held each name: the holder keeps it
/// across the restart, the newcomer is invalid ("already used by"), and the data stays the
/// holder's. (Added while plugind runs, the newcomer was refused already.)
#[tokio::test(flavor = "multi_thread")]
async fn a_directory_added_while_plugind_is_down_does_not_take_a_name() {
    let mut d = victim(Daemon::builder()).start().await;
    let r = attack(&d, "victim", "kv", json!({"key": "secret", "value": "the victim's"})).await;
    assert_eq!(r["ok"], true, "{r}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    // The impostor: the same code, named like the victim, in a directory that sorts first.
    let impostor = d.plugins.join("0-impostor");
    hostile_dir(&impostor, json!({"name": "victim", "version": "6.6.6", "permissions": ["storage"]}));
    d.restart_stopped().await;
    let s = d.status("victim").await;
    assert_ne!(s["version"], "6.6.6", "THE ATTACK SUCCEEDED: the impostor took the name: {s}");
    assert_eq!(s["state"], "running", "{s}");
    let r = attack(&d, "victim", "kv_get", json!({"key": "secret"})).await;
    assert_eq!(r["value"], "the victim's", "{r}");
    let invalid = format!("victim@{}", impostor.display());
    let s = d.status(&invalid).await;
    assert_eq!(s["state"], "invalid", "{s}");
    assert!(s["last_error"].as_str().unwrap().contains("already used by"), "{s}");
}

/// A plugin's directory redeployed while plugind watches (moved away, then back): in between, a
/// plugin providing a service named like it took the name for good, and so did a duplicate
/// directory waiting `invalid`, with the plugin's kv data; the returning plugin was the invalid
/// one (audit 16). A plugin name now waits for its directory while it is gone, as a plugin name
/// and as a service; only the operator's reload gives it up.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_waits_for_its_directory_while_it_is_redeployed() {
    let services = json!({"services": [{"name": "victim", "version": "1.9.0"}]});
    let b = hostile(victim(Daemon::builder().watch()), "evil", &[], services)
        .manifest("evil", |m| m["provides"] = json!([{"name": "victim", "version": "1.9.0"}]));
    let d = b.start().await;
    let r = attack(&d, "victim", "kv", json!({"key": "secret", "value": "the victim's"})).await;
    assert_eq!(r["ok"], true, "{r}");
    let dup = d.plugins.join("zzz");
    hostile_dir(&dup, json!({"name": "victim", "permissions": ["storage"]}));
    let dup_name = format!("victim@{}", dup.display());
    d.wait_state(&dup_name, "invalid").await;
    // The directory goes…
    let away = d.dir.path().join("victim-away");
    std::fs::rename(d.plugins.join("victim"), &away).unwrap();
    let s = wait_for("the duplicate to be told the name waits", async || {
        let s = d.call("plugins.get", json!({"name": &dup_name})).await.ok()?;
        s["last_error"].as_str()?.contains("which is gone").then_some(s)
    })
    .await;
    assert_eq!(s["state"], "invalid", "THE ATTACK SUCCEEDED: the duplicate took the name: {s}");
    let r = d.call("services.call", json!({"service": "victim", "method": "who", "params": {}})).await;
    assert_eq!(code(&r), -32004, "THE ATTACK SUCCEEDED: a call for victim went to {r:?}");
    let s = d.status("evil").await;
    assert!(s["refused_services"].to_string().contains("\"victim\""), "{s}");
    // …and comes back: the name, its calls and its data are its own again.
    std::fs::rename(&away, d.plugins.join("victim")).unwrap();
    d.wait_state("victim", "running").await;
    assert_eq!(attack(&d, "victim", "kv_get", json!({"key": "secret"})).await["value"], "the victim's");
    let r = d.call("services.call", json!({"service": "victim", "method": "who", "params": {}})).await.unwrap();
    assert_eq!(r["plugin"], "victim", "{r}");
    assert_eq!(d.status(&dup_name).await["state"], "invalid");
    // Gone for good: the operator's reload gives the name up, to the one directory claiming it.
    std::fs::rename(d.plugins.join("victim"), &away).unwrap();
    wait_for("the duplicate to be told the name waits", async || {
        let s = d.call("plugins.get", json!({"name": &dup_name})).await.ok()?;
        s["last_error"].as_str()?.contains("which is gone").then_some(())
    })
    .await;
    assert_eq!(d.ctl(&["reload"]).status.code(), Some(0));
    let s = d.wait_state("victim", "running").await;
    assert_eq!(s["dir"], dup.display().to_string(), "{s}");
}

/// The other way round from a manifest providing a plugin's name: a plugin added with the name
/// of a service another plugin provides (`llm`) took every call for that service, since a
/// plugin's own name is its service (audit 15). Plugin names and services share one namespace:
/// the newcomer is invalid, while plugind runs and after a restart, and the service stays its
/// provider's.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_named_after_a_provided_service_does_not_take_it() {
    let services = json!({"services": [{"name": "llm", "version": "2.1.0"}]});
    let mut d = hostile(Daemon::builder(), "prov", &[], services)
        .manifest("prov", |m| m["provides"] = json!([{"name": "llm", "version": "2.1.0"}]))
        .start()
        .await;
    let who = async |d: &Daemon| {
        d.call("services.call", json!({"service": "llm", "method": "who", "params": {}})).await.unwrap()
    };
    assert_eq!(who(&d).await["plugin"], "prov");
    let newcomer = d.plugins.join("llm");
    hostile_dir(&newcomer, json!({"name": "llm", "version": "2.9.0"}));
    for round in ["added while plugind runs", "after a restart"] {
        if round == "after a restart" {
            d.restart().await;
        } else {
            // Exit 1: the newcomer could not be loaded.
            assert_eq!(d.ctl(&["reload"]).status.code(), Some(1));
        }
        let invalid = format!("llm@{}", newcomer.display());
        let s = d.status(&invalid).await;
        assert_eq!(s["state"], "invalid", "{round}: THE ATTACK SUCCEEDED? {s}");
        assert!(s["last_error"].as_str().unwrap().contains("a service of the plugin in"), "{round}: {s}");
        assert_eq!(who(&d).await["plugin"], "prov", "{round}: THE ATTACK SUCCEEDED: the service was taken");
    }
}

/// A plugin's directory renamed while plugind is down, beside a directory that claimed the
/// same name and waited `invalid`: the holder recorded by path was gone, so the waiting one took
/// the name, its calls and its kv data (audit 15). With the holder gone and two claimants,
/// neither gets the name; the operator removes one.
#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_holder_does_not_hand_its_name_to_a_waiting_claimant() {
    let mut d = victim(Daemon::builder()).start().await;
    let impostor = d.plugins.join("evil");
    hostile_dir(&impostor, json!({"name": "victim", "permissions": ["storage"]}));
    // Exit 1: the impostor could not be loaded.
    assert_eq!(d.ctl(&["reload"]).status.code(), Some(1));
    assert_eq!(d.status(&format!("victim@{}", impostor.display())).await["state"], "invalid");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    let moved = d.plugins.join("zz-victim");
    std::fs::rename(d.plugins.join("victim"), &moved).unwrap();
    d.restart_stopped().await;
    for dir in [&impostor, &moved] {
        let s = d.status(&format!("victim@{}", dir.display())).await;
        assert_eq!(s["state"], "invalid", "{s}");
        assert!(s["last_error"].as_str().unwrap().contains("2 directories claim"), "{s}");
    }
    let list = d.call("plugins.list", json!({})).await.unwrap();
    assert!(!list.as_array().unwrap().iter().any(|p| p["name"] == "victim"), "THE ATTACK SUCCEEDED: {list}");
}

/// The counterpart: a plugin's directory moved while plugind is down, with no other claimant
/// (an operator reorganising): at the next start it keeps its name and its data, without a
/// `pluginctl reload` (a start gives up the names of gone directories, as a reload does).
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_moved_while_plugind_is_down_keeps_its_name() {
    let mut d = victim(Daemon::builder()).start().await;
    let r = attack(&d, "victim", "kv", json!({"key": "secret", "value": "the victim's"})).await;
    assert_eq!(r["ok"], true, "{r}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    let moved = d.plugins.join("victim-v2");
    std::fs::rename(d.plugins.join("victim"), &moved).unwrap();
    d.restart_stopped().await;
    let s = d.wait_state("victim", "running").await;
    assert_eq!(s["dir"], moved.display().to_string(), "{s}");
    assert_eq!(attack(&d, "victim", "kv_get", json!({"key": "secret"})).await["value"], "the victim's");
}

/// A caller that declared `svc@^1` asks for `svc` `^2` (or any version): the 2.0.0 provider is
/// never reached, since a call's version only narrows the declared range.
#[tokio::test(flavor = "multi_thread")]
async fn callers_version_only_narrows_its_declared_range() {
    let mut b = Daemon::builder();
    for (name, v) in [("old", "1.0.0"), ("new", "2.0.0")] {
        let svc = json!([{"name": "svc", "version": v}]);
        b = hostile(b, name, &[], json!({"services": svc.clone()})).manifest(name, move |m| m["provides"] = svc);
    }
    let b = hostile(b, "caller", &[], json!({}));
    let d = b.manifest("caller", |m| m["dependencies"] = json!({"required": ["svc@^1"]})).start().await;
    let r = attack(&d, "caller", "call", json!({"service": "svc", "version": "*", "method": "who"})).await;
    assert_eq!(r["reached"], "old", "{r}");
    let r = attack(&d, "caller", "call", json!({"service": "svc", "version": "^2", "method": "who"})).await;
    assert_ne!(r["reached"], "new", "the call left the declared range: {r}");
    assert_eq!(r["detail"]["error"]["code"], -32004, "{r}");
}

/// A plugin's `service.call` with a lone `\r` between the JSON tokens of its params (valid
/// JSON) reaches the provider without it. The provider reads with universal newlines (as
/// Python's `open()` and Node's `readline` do): had plugind passed the `\r` on, its line would
/// have ended there, broken, and the provider (whose reader takes a broken line as fatal) would
/// have died.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_cannot_break_another_plugins_input_line() {
    let b = hostile(victim(Daemon::builder()), "caller", &[], json!({}))
        .manifest("caller", |m| m["dependencies"] = json!({"required": ["victim"]}));
    let d = b.start().await;
    let r = attack(&d, "caller", "call_raw", json!({"service": "victim"})).await;
    assert_eq!(r["reached"], "victim", "the provider did not answer: {r}");
    assert_eq!(d.status("victim").await["state"], "running");
}

// ---- `last_exit.limit` and state file modes (docs/security.md) ----

/// A plugin prints `MemoryError` (and other allocation failures) on stderr and exits 1: no
/// limit fired, so `last_exit.limit` stays unset.
#[tokio::test(flavor = "multi_thread")]
async fn stderr_text_does_not_set_last_exit_limit() {
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    let pid = pid_of(&d, "hostile").await;
    let r = d.execute("hostile", "spoof_oom", json!({})).await;
    assert_eq!(code(&r), -32003, "{r:?}");
    let s = wait_for("the restart", async || {
        let s = d.status("hostile").await;
        (s["state"] == "running" && s["pid"] != pid && s["last_exit"]["code"] == 1).then_some(s)
    })
    .await;
    assert!(s["last_exit"]["limit"].is_null(), "a limit was taken from stderr text: {}", s["last_exit"]);
}

/// Sends itself SIGXCPU, the CPU limit's signal, with no `cpu_seconds` limit and with one it has
/// not spent: neither exit is reported as the CPU limit.
#[tokio::test(flavor = "multi_thread")]
async fn self_sent_sigxcpu_does_not_set_last_exit_limit() {
    let b = hostile(Daemon::builder(), "hostile", &[], json!({}));
    let b = hostile(b, "hostile-limited", &[], json!({})).manifest("hostile-limited", |m| {
        m["limits"] = json!({"cpu_seconds": 30});
    });
    let d = b.start().await;
    for name in ["hostile", "hostile-limited"] {
        let pid = pid_of(&d, name).await;
        let r = d.execute(name, "spoof_xcpu", json!({})).await;
        assert_eq!(code(&r), -32003, "{name}: {r:?}");
        let s = wait_for("the restart", async || {
            let s = d.status(name).await;
            (s["state"] == "running" && s["pid"] != pid && !s["last_exit"].is_null()).then_some(s)
        })
        .await;
        assert_eq!(s["last_exit"]["signal"], "SIGXCPU", "{name}: {}", s["last_exit"]);
        assert!(
            s["last_exit"]["limit"].is_null(),
            "{name}: a self-sent SIGXCPU was taken for the limit: {}",
            s["last_exit"]
        );
    }
}

/// Rewrites its own manifest, to grant itself permissions at the next hot reload: with
/// `filesystem` too, its `plugin.json` is read-only to it (and a new file can still be written
/// in its directory, as its user may).
#[tokio::test(flavor = "multi_thread")]
async fn plugin_cannot_rewrite_its_own_manifest() {
    let d = hostiles(Daemon::builder(), &VARIANTS, &json!({})).start().await;
    for (name, perms) in VARIANTS {
        if !held(&d, name, &["state", "write"]).await {
            continue;
        }
        let manifest = d.plugins.join(name).join("plugin.json");
        let before = std::fs::read(&manifest).unwrap();
        refused(&attack(&d, name, "write", json!({"path": manifest})).await, &format!("{name} rewrites its manifest"));
        let r = attack(&d, name, "read", json!({"path": manifest})).await;
        assert_eq!(r["ok"], true, "{name} still reads its own manifest: {r}");
        if perms.contains(&"filesystem") {
            let other = d.plugins.join(name).join("notes.txt");
            let r = attack(&d, name, "write", json!({"path": other})).await;
            assert_eq!(r["ok"], true, "{name}: with filesystem, a file of its own dir is writable: {r}");
        }
        assert_eq!(std::fs::read(&manifest).unwrap(), before, "{name}'s manifest is unchanged on the host");
    }
}

/// A `plugin.json` that is a symbolic link (into the plugin's own directory, or to a file
/// elsewhere), or a writable file with another hard link, is a load error naming it: the mount
/// namespace makes the manifest read-only at its path only, and a plugin with `filesystem`
/// renamed the link's target directory aside, wrote a manifest granting itself `networking` and
/// `process`, and got them at its next hot reload (audit 17).
#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_reached_through_a_link_is_refused() {
    let b = hostile(Daemon::builder(), "inner", &["filesystem"], json!({}))
        .plugin_as("hostile", "outer")
        .plugin_as("hostile", "linked");
    let plugins = b.path().join("plugins");
    // inner: plugin.json -> conf/m.json, inside its own directory.
    let inner = plugins.join("inner");
    std::fs::create_dir(inner.join("conf")).unwrap();
    std::fs::rename(inner.join("plugin.json"), inner.join("conf/m.json")).unwrap();
    std::os::unix::fs::symlink("conf/m.json", inner.join("plugin.json")).unwrap();
    // outer: plugin.json -> a file outside.
    let outside = b.path().join("elsewhere.json");
    std::fs::rename(plugins.join("outer/plugin.json"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, plugins.join("outer/plugin.json")).unwrap();
    // linked: plugin.json is also another name of a writable file outside.
    let other_name = b.path().join("other-name.json");
    std::fs::hard_link(plugins.join("linked/plugin.json"), &other_name).unwrap();
    let d = b.spawn().await;
    for (name, why) in
        [("inner", "symbolic link (to conf/m.json)"), ("outer", "symbolic link"), ("linked", "2 hard links")]
    {
        let s = d.wait_state(name, "invalid").await;
        let e = s["last_error"].as_str().unwrap();
        assert!(e.contains(&format!("{name}/plugin.json")) && e.contains(why), "{name}: {s}");
    }
    // Made read-only, the hard-linked one loads: no name of it can be written.
    let manifest = d.plugins.join("linked/plugin.json");
    std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o444)).unwrap();
    d.call("plugins.reload", json!({})).await.unwrap();
    d.wait_state("linked", "running").await;
    let out = d.ctl(&["check", d.plugins.join("inner").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("symbolic link"), "{out:?}");
}

/// With `filesystem` (and root), what would undo the sandbox or reach the host's kernel settings:
/// moving itself out of its cgroup (plugind recognises plugin processes by it) and writing a
/// sysctl or another setting under `/proc`. `/sys/fs/cgroup` is covered, and `/sys` and (as
/// root, all of) `/proc` are read-only in a plugin's namespace.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_with_filesystem_cannot_leave_its_cgroup_or_write_sysctls() {
    let d = hostiles(Daemon::builder(), &WITH_FS, &json!({})).start().await;
    let mut targets: Vec<PathBuf> = vec!["/proc/sys/kernel/domainname".into(), "/proc/sys/vm/drop_caches".into()];
    // Kernel settings in /sys (audit 16: KSM, transparent huge pages, a disk's read-ahead).
    let read_ahead =
        std::fs::read_dir("/sys/block").into_iter().flatten().flatten().map(|e| e.path().join("queue/read_ahead_kb"));
    for knob in ["/sys/kernel/mm/ksm/run".into(), "/sys/kernel/mm/transparent_hugepage/enabled".into()]
        .into_iter()
        .chain(read_ahead)
    {
        let knob: PathBuf = knob;
        if knob.exists() {
            targets.push(knob);
        }
    }
    // As root, the rest of /proc too (audit 20): interrupt affinity (every device's interrupts
    // onto one CPU), the SysRq trigger (any key from uid 0 without a capability, reboot
    // included) where the kernel has one, and its own OOM score (lowered below the 500 plugind
    // set where plugind lacks CAP_SYS_RESOURCE).
    if nix::unistd::geteuid().is_root() {
        for knob in ["/proc/irq/default_smp_affinity", "/proc/sysrq-trigger", "/proc/self/oom_score_adj"] {
            if Path::new(knob).exists() {
                targets.push(knob.into());
            }
        }
    }
    for tree in ["", "unified", "memory", "pids"] {
        let procs = Path::new("/sys/fs/cgroup").join(tree).join("cgroup.procs");
        if procs.exists() {
            targets.push(procs);
        }
    }
    for (name, _) in WITH_FS {
        if !held(&d, name, &["state", "write", "filesystem"]).await {
            continue;
        }
        for path in &targets {
            let r = attack(&d, name, "open_write", json!({ "path": path })).await;
            refused(&r, &format!("{name} opens {} for writing", path.display()));
        }
    }
}

/// A second plugind on a state dir in use exits 1 at once, naming the holder, and touches
/// nothing: the first one's plugins keep their pids, its socket keeps answering.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_plugind_on_the_same_state_dir_exits_and_kills_nothing() {
    let d = victim(Daemon::builder()).start().await;
    let before = pid_of(&d, "victim").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_plugind"))
        .current_dir(d.dir.path())
        .args(["--plugins", "plugins", "--state-dir", "state", "--no-watch", "--socket", "other.sock"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("in use") && stderr.contains(&d.pid().to_string()), "names the holder: {stderr}");
    assert!(!d.dir.path().join("other.sock").exists(), "it bound nothing");
    assert_eq!(pid_of(&d, "victim").await, before, "the first plugind's plugin is untouched");
    assert!(alive(before));
}

/// The state dir is 0700, the kv database 0600, and a data dir not readable by others.
#[tokio::test(flavor = "multi_thread")]
async fn state_files_are_private() {
    let d = victim(Daemon::builder()).start().await;
    attack(&d, "victim", "kv", json!({"key": "k", "value": "v"})).await;
    let data = victim_files(&d, "marker").await[0].parent().unwrap().to_path_buf();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let state = d.dir.path().join("state");
    assert!(mode(&state) == 0o700, "state dir {:o}", mode(&state));
    let kv = state.join("kv.sqlite");
    assert!(mode(&kv) == 0o600, "kv database {:o}", mode(&kv));
    assert_eq!(mode(&data) & 0o007, 0, "data dir {}: {:o}", data.display(), mode(&data));
}

// ---- positive controls: what a permission grants still works ----

/// `networking`: a TCP connection to a listener of the test.
#[tokio::test(flavor = "multi_thread")]
async fn networking_plugin_still_connects_over_tcp() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let d = hostile(Daemon::builder(), "net", &["networking"], json!({})).start().await;
    let r = attack(&d, "net", "tcp", json!({"port": port})).await;
    assert_eq!(r["ok"], true, "{r}");
}

/// `filesystem`: writes a file in the test's temp dir; every plugin writes its TMPDIR.
#[tokio::test(flavor = "multi_thread")]
async fn filesystem_plugin_still_writes_where_its_user_may() {
    let d =
        hostile(hostile(Daemon::builder(), "fs", &["filesystem"], json!({})), "plain", &[], json!({})).start().await;
    let out = d.dir.path().join("written-by-plugin.txt");
    let r = attack(&d, "fs", "create", json!({"path": out})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hostile\n");
    for p in ["fs", "plain"] {
        let tmp = PathBuf::from(env_of(&d, p).await["TMPDIR"].as_str().unwrap());
        let r = attack(&d, p, "create", json!({"path": tmp.join("scratch.txt")})).await;
        assert_eq!(r["ok"], true, "{p} TMPDIR: {r}");
    }
}

/// `storage`: kv and the data dir.
#[tokio::test(flavor = "multi_thread")]
async fn storage_plugin_still_uses_kv_and_its_data_dir() {
    let d = hostile(Daemon::builder(), "store", &["storage"], json!({})).start().await;
    let r = attack(&d, "store", "kv", json!({"key": "k", "value": {"n": 1}})).await;
    assert_eq!(r["ok"], true, "{r}");
    let data = PathBuf::from(env_of(&d, "store").await["PLUGIND_DATA_DIR"].as_str().unwrap());
    let r = attack(&d, "store", "create", json!({"path": data.join("kept.txt")})).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = attack(&d, "store", "read", json!({"path": data.join("kept.txt")})).await;
    assert_eq!(r["ok"], true, "{r}");
}

/// `process`: runs `/bin/true`.
#[tokio::test(flavor = "multi_thread")]
async fn process_plugin_still_runs_a_program() {
    let d = hostile(Daemon::builder(), "proc", &["process"], json!({})).start().await;
    let r = attack(&d, "proc", "spawn", json!({})).await;
    assert_eq!(r["ok"], true, "{r}");
}

/// Every plugin still reads what the host's file permissions allow: `/etc`, libraries, its
/// own directory.
#[tokio::test(flavor = "multi_thread")]
async fn plugin_still_reads_system_files_and_its_own_dir() {
    let d = hostile(Daemon::builder(), "hostile", &[], json!({})).start().await;
    for path in ["/etc/passwd", "/usr/lib", "main.py", "plugin.json"] {
        let r = attack(&d, "hostile", "read", json!({"path": path})).await;
        assert_eq!(r["ok"], true, "{path}: {r}");
    }
}

const NODE_PLUGIN: &str = r#"const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const m = JSON.parse(line);
  if (m.id === undefined || !m.method) return;
  const fixed = { init: { protocol_version: 1 }, register: { services: [] }, teardown: null, ping: {} };
  const result = m.method in fixed ? fixed[m.method] : { lang: 'node', version: process.version };
  process.stdout.write(JSON.stringify({ jsonrpc: '2.0', id: m.id, result }) + '\n');
});
"#;

pub(crate) const JAVA_PLUGIN: &str = r#"import java.io.*;
import java.util.regex.*;

public class Main {
    public static void main(String[] args) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, "UTF-8"));
        Pattern idP = Pattern.compile("\"id\"\\s*:\\s*(\"[^\"]*\"|-?\\d+)");
        Pattern methodP = Pattern.compile("\"method\"\\s*:\\s*\"([^\"]*)\"");
        String line;
        while ((line = in.readLine()) != null) {
            Matcher id = idP.matcher(line), method = methodP.matcher(line);
            if (!id.find() || !method.find()) continue;
            String result = switch (method.group(1)) {
                case "init" -> "{\"protocol_version\":1}";
                case "register" -> "{\"services\":[]}";
                case "teardown" -> "null";
                case "ping" -> "{}";
                default -> "{\"lang\":\"java\",\"version\":\"" + System.getProperty("java.version") + "\"}";
            };
            System.out.println("{\"jsonrpc\":\"2.0\",\"id\":" + id.group(1) + ",\"result\":" + result + "}");
            System.out.flush();
        }
    }
}
"#;

/// Python, Node, Perl and Java (`java Main.java`) plugins start and answer under the default
/// sandbox (no permission).
#[tokio::test(flavor = "multi_thread")]
async fn python_node_perl_and_java_plugins_run_in_the_default_sandbox() {
    let node = json!({"name": "node-plain", "version": "1.0.0", "main": "main.cjs"}).to_string();
    let mut b = hostile(Daemon::builder(), "python-plain", &[], json!({}))
        .plugin("perl-echo")
        .plugin_files("node-plain", &[("plugin.json", &node), ("main.cjs", NODE_PLUGIN)]);
    let java = which("java");
    if java {
        let m =
            json!({"name": "java-plain", "version": "1.0.0", "main": "Main.java", "command": ["java", "Main.java"]});
        b = b.plugin_files("java-plain", &[("plugin.json", &m.to_string()), ("Main.java", JAVA_PLUGIN)]);
    } else {
        eprintln!("skipped: java not installed");
    }
    let d = b.start().await;
    assert_eq!(attack(&d, "python-plain", "env", json!({})).await["PLUGIND_PLUGIN"], "python-plain");
    assert_eq!(attack(&d, "perl-echo", "echo", json!({"n": 1})).await, json!({"n": 1}));
    assert_eq!(attack(&d, "node-plain", "hello", json!({})).await["lang"], "node");
    if java {
        let s = d.status("java-plain").await;
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(attack(&d, "java-plain", "hello", json!({})).await["lang"], "java");
    }
}

/// Whether a program is on PATH.
pub(crate) fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The SDK examples (Python, Node and Rust SDKs, and the SDK-less Python one) start and answer
/// under the default sandbox.
#[tokio::test(flavor = "multi_thread")]
async fn sdk_examples_run_in_the_default_sandbox() {
    let examples = ["echo-python", "echo-node", "echo-rust", "plain-python"];
    let d = examples.iter().fold(Daemon::builder(), |b, e| b.example(e)).start().await;
    for e in examples {
        let s = d.status(e).await;
        assert_eq!(s["state"], "running", "{s}");
        assert_eq!(attack(&d, e, "echo", json!({"from": e})).await, json!({"from": e}), "{e}");
    }
}

/// The end of a plain-Python plugin (after `import json, sys`) that answers every request with
/// `{}` (`teardown` with `null`).
const ANSWERS_EVERYTHING: &str = r#"for line in sys.stdin:
    m = json.loads(line)
    if "id" in m and "method" in m:
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": None if m["method"] == "teardown" else {}}), flush=True)
"#;

/// `pluginctl check`'s diagnostic mode: a plugin whose launcher forks (a `$(...)` in a shell
/// script) dies under the sandbox without `process`; `check --diagnose` fails it and names what
/// the sandbox denied, found by starting it again with one part of the sandbox left out at a
/// time. Without `--diagnose` it only says how to ask for that: a stranger's plugin that broke
/// on purpose was run with parts of its sandbox off, and wrote outside its dirs, reached the
/// network and stopped a running plugind (audit 19).
#[test]
fn check_explains_what_the_sandbox_denied() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("forky");
    std::fs::create_dir_all(&plugin).unwrap();
    std::fs::write(
        plugin.join("plugin.json"),
        json!({"name": "forky", "version": "1.0.0", "main": "main.sh"}).to_string(),
    )
    .unwrap();
    // dash forks for a command substitution; `set -e` ends the script when that fails.
    std::fs::write(plugin.join("main.sh"), "set -e\nversion=$(echo 1)\nexec python3 ./main.py\n").unwrap();
    std::fs::write(plugin.join("main.py"), format!("import json, sys\n{ANSWERS_EVERYTHING}")).unwrap();
    // Not by default: those runs leave parts of the sandbox off (audit 19). The report says how.
    let out = std::process::Command::new(pluginctl()).arg("check").arg(&plugin).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("sandbox: it starts once"), "diagnosed without --diagnose:\n{text}");
    assert!(text.contains("run check again with --diagnose"), "{text}");
    let out = std::process::Command::new(pluginctl()).arg("check").arg(&plugin).arg("--diagnose").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let process = "permission process: denied, enforced";
    if !text.contains(process) {
        missing_mechanism(&format!("`process` is not enforced on this host:\n{text}"));
        return;
    }
    let verdict =
        text.lines().find(|l| l.contains("sandbox: it starts once the sandbox allows it")).unwrap_or_default();
    assert!(verdict.contains("starts processes") && verdict.contains("`process`"), "names the denial:\n{text}");
    assert_eq!(text.matches("sandbox: it starts once").count(), 1, "only that part explains it:\n{text}");
}

/// `pluginctl check` runs a stranger's plugin too: it hid nothing of the plugind running on the
/// same host, and the plugin under check read its state dir (its kv database; audit 19). It now
/// hides what every running plugind hides: here the plugin fails its start if it can list the
/// running daemon's state dir, so `check` passes only if it could not.
#[tokio::test(flavor = "multi_thread")]
async fn check_hides_what_a_running_plugind_keeps_private() {
    let d = victim(Daemon::builder()).start().await;
    attack(&d, "victim", "kv", json!({"key": "k", "value": "secret"})).await;
    let state = d.dir.path().join("state");
    assert!(std::fs::read_dir(&state).unwrap().count() > 0, "the running plugind's state dir has files");
    let dir = tempfile::tempdir().unwrap();
    // And one started as the systemd unit starts it: its state dir from `STATE_DIRECTORY`, not a
    // flag (second round: resolved with check's own environment, it was not hidden).
    let unit_state = dir.path().join("unit-state");
    let empty = dir.path().join("no-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let mut unit = std::process::Command::new(env!("CARGO_BIN_EXE_plugind"))
        .arg("--plugins")
        .arg(&empty)
        .arg("--socket")
        .arg(dir.path().join("unit.sock"))
        .env("STATE_DIRECTORY", &unit_state)
        .current_dir(&empty)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(unit.id());
    wait_for("the unit's plugind to make its state dir", async || {
        std::fs::read_dir(&unit_state).ok().is_some_and(|mut d| d.next().is_some()).then_some(())
    })
    .await;
    for target in [&state, &unit_state] {
        peek_under_check(dir.path(), target);
    }
    unit.kill().unwrap();
    unit.wait().unwrap();
}

/// `pluginctl check` of a plugin that fails its start if it can list `target`.
fn peek_under_check(dir: &Path, target: &Path) {
    let plugin = dir.join("peeker");
    std::fs::create_dir_all(&plugin).unwrap();
    let manifest = json!({"name": "peeker", "version": "1.0.0", "main": "main.py", "env": {"TARGET": target}});
    std::fs::write(plugin.join("plugin.json"), manifest.to_string()).unwrap();
    let peek = r#"import json, os, sys
try:
    seen = os.listdir(os.environ["TARGET"])
except OSError:
    seen = []
if seen:
    print("LEAKED", seen, file=sys.stderr, flush=True)
    sys.exit(3)
"#;
    std::fs::write(plugin.join("main.py"), format!("{peek}{ANSWERS_EVERYTHING}")).unwrap();
    let out = std::process::Command::new(pluginctl()).arg("check").arg(&plugin).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("private-state holds") {
        missing_mechanism(&format!("no mount namespace here:\n{text}"));
        return;
    }
    assert!(
        !text.contains("LEAKED"),
        "THE ATTACK SUCCEEDED: the plugin under check listed the running plugind's state dir:\n{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
}

/// A plugin of 16 instances each starting a 12 MiB stdout line it never ends: one instance at a
/// time reads a line past 1 MiB, so plugind holds one such line and a megabyte or two of each
/// other (16 whole lines, 192 MiB, were held), and the other instances' writes stall.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_instances_read_one_long_line_at_a_time() {
    // Writes without blocking, to say whether plugind stopped reading ("stalled": its stdout
    // stayed full for a second) or read it all ("written").
    const MAIN: &str = r#"import json, os, select, sys, time
for line in sys.stdin:
    m = json.loads(line)
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": {}}) + "\n")
    sys.stdout.flush()
    if m["method"] == "register":
        break
os.set_blocking(1, False)
rest, stalled = memoryview(b"x" * (12 << 20)), False
while rest:
    try:
        rest = rest[os.write(1, rest):]
    except BlockingIOError:
        if not select.select([], [1], [], 1.0)[1] and not stalled:
            stalled = True
            print("stalled", os.getpid(), file=sys.stderr, flush=True)
print("written", os.getpid(), file=sys.stderr, flush=True)
time.sleep(3600)
"#;
    let manifest = json!({"name": "partial", "version": "1.0.0", "main": "main.py", "instances": 16});
    let b = Daemon::builder().plugin_files("partial", &[("plugin.json", &manifest.to_string()), ("main.py", MAIN)]);
    // What plugind holds, not what its allocator keeps for reuse: freed pages go back at once.
    let d = b.env("MIMALLOC_PURGE_DELAY", "0").spawn().await;
    let before = rss_kb(d.pid());
    d.wait_state("partial", "running").await;
    let said = async |what: &str| -> Option<std::collections::BTreeSet<String>> {
        let r = d.call("logs.tail", json!({"plugin": "partial", "lines": 1000})).await.ok()?;
        let lines = r["lines"].as_array()?.iter().filter_map(|l| l["message"].as_str()?.strip_prefix(what));
        Some(lines.map(str::to_owned).collect())
    };
    let (written, stalled) = wait_for("every instance to write its line or stall", async || {
        let (written, stalled) = (said("written ").await?, said("stalled ").await?);
        (written.union(&stalled).count() == 16).then_some((written, stalled))
    })
    .await;
    let held = rss_kb(d.pid());
    assert_eq!((written.len(), stalled.len()), (1, 15), "written by {written:?}, stalled {stalled:?}");
    assert!(held < before + 80 * 1024, "plugind grew from {before} KiB to {held} KiB");
}

/// Instances of one plugin answering lines of several megabytes at once take turns reading
/// them, and every answer arrives whole: none is lost or cut, and nothing waits forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_instances_answering_long_lines_at_once_lose_none() {
    let d = Daemon::builder()
        .plugin_as("py-long-lines", "big")
        .manifest("big", |m| m["instances"] = json!(8))
        .start()
        .await;
    let calls = (0..16).map(|i| {
        let n = (3 << 20) + i * 65_537;
        let d = &d;
        async move { (n, d.execute("big", "big", json!({"n": n})).await) }
    });
    for (n, r) in futures::future::join_all(calls).await {
        let r = r.unwrap_or_else(|e| panic!("answer of {n} bytes: {e:?}"));
        assert_eq!(r["s"].as_str().map(str::len), Some(n));
    }
}

/// A long line trickled a byte every 0.2 s after its first 2 MiB made "progress", so it kept the
/// plugin's turn, and its siblings' 3 MB answers ran out of time behind it (audit 14). Less than
/// 64 KiB in a second while another instance waits counts as a stall: the line is dropped, its
/// call fails at once, and the siblings are answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_line_trickled_does_not_hold_up_its_siblings() {
    let d = Daemon::builder()
        .plugin_as("py-long-lines", "sib")
        .manifest("sib", |m| m["timeout_ms"] = json!(8000))
        .start()
        .await;
    let trickle = d.execute("sib", "trickle", json!({}));
    let rest = async {
        log_line(&d, "sib", "trickling").await;
        let t = std::time::Instant::now();
        let calls = (0..3).map(|i| d.execute("sib", "big", json!({"n": (3 << 20) + i})));
        (futures::future::join_all(calls).await, t.elapsed())
    };
    let (trickled, (answers, took)) = tokio::join!(trickle, rest);
    for (i, r) in answers.into_iter().enumerate() {
        let r = r.unwrap_or_else(|e| panic!("a sibling's long answer: {e:?}"));
        assert_eq!(r["s"].as_str().map(str::len), Some((3 << 20) + i));
    }
    assert!(took < std::time::Duration::from_secs(6), "the siblings' answers took {took:?}");
    assert_eq!(code(&trickled), -32603, "{trickled:?}");
    assert!(format!("{trickled:?}").contains("less than 64 KiB more"), "{trickled:?}");
}

/// A long answer that stops coming mid-way while it holds the plugin's turn at long lines, with
/// another instance waiting for the turn, is dropped after a second: its call fails with
/// `-32603` at once, and its siblings' long answers arrive (they waited, unread, for the turn;
/// before, all of them timed out and were killed for missing pings). The same with the stalled
/// instance retiring after a graceful restart: the new instances' long answers arrive.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_line_stalled_mid_way_does_not_hold_up_its_siblings() {
    let d = Daemon::builder()
        .plugin_as("py-long-lines", "sib")
        .manifest("sib", |m| m["timeout_ms"] = json!(8000))
        .start()
        .await;
    for round in ["running", "retiring after a restart"] {
        if round != "running" {
            // A new generation: the instance that stalled in the first round sleeps on.
            d.call("plugins.restart", json!({"name": "sib"})).await.unwrap();
        }
        let stall = d.execute("sib", "stall", json!({}));
        let rest = async {
            let stalled = wait_for("an instance to stall mid-line", async || {
                let r = d.call("logs.tail", json!({"plugin": "sib", "lines": 1000})).await.ok()?;
                let n = r["lines"]
                    .as_array()?
                    .iter()
                    .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("stalling")))
                    .count();
                (n >= if round == "running" { 1 } else { 2 }).then_some(())
            });
            stalled.await;
            if round != "running" {
                let r = d.call("plugins.restart", json!({"name": "sib"})).await.unwrap();
                assert_eq!(r["state"], "running", "{r}");
            }
            let t = std::time::Instant::now();
            let calls = (0..3).map(|i| d.execute("sib", "big", json!({"n": (3 << 20) + i})));
            let answers = futures::future::join_all(calls).await;
            (answers, t.elapsed())
        };
        let (stalled, (answers, took)) = tokio::join!(stall, rest);
        for (i, r) in answers.into_iter().enumerate() {
            let r = r.unwrap_or_else(|e| panic!("{round}: a sibling's long answer: {e:?}"));
            assert_eq!(r["s"].as_str().map(str::len), Some((3 << 20) + i), "{round}");
        }
        assert!(took < std::time::Duration::from_secs(6), "{round}: the siblings' answers took {took:?}");
        if round == "running" {
            // Ended at once when dropped, not at its deadline.
            assert_eq!(code(&stalled), -32603, "{round}: {stalled:?}");
            assert!(format!("{stalled:?}").contains("stalled mid-way"), "{stalled:?}");
            let s = d.status("sib").await;
            assert_eq!(s["restarts"], 0, "no instance was killed: {s}");
        }
    }
}

/// A line that goes on past the frame limit ends its call at once (it used to end at the
/// line's end, or the deadline), and lets the plugin's turn at long lines go as soon as it is
/// found too long: a sibling's long answer arrives meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_line_ends_its_call_and_lets_the_turn_go_when_it_passes_the_limit() {
    let d = Daemon::builder()
        .plugin_as("py-long-lines", "endless")
        .manifest("endless", |m| {
            m["instances"] = json!(2);
            m["timeout_ms"] = json!(25000);
        })
        .start()
        .await;
    let t = std::time::Instant::now();
    let endless = async {
        let r = d.execute("endless", "endless", json!({})).await;
        (r, t.elapsed())
    };
    let sibling = async {
        // Once the endless line has the turn: the sibling's answer waits for it.
        wait_for("the endless line to pass 1 MiB", async || {
            let r = d.call("logs.tail", json!({"plugin": "endless", "lines": 100})).await.ok()?;
            r["lines"].as_array()?.iter().any(|l| l["message"] == "past 1 MiB").then_some(())
        })
        .await;
        let r = d.execute("endless", "big", json!({"n": 3 << 20})).await;
        (r, t.elapsed())
    };
    let ((r, ended), (sib, answered)) = tokio::join!(endless, sibling);
    assert_eq!(code(&r), -32603, "{r:?}");
    assert!(format!("{r:?}").contains("over the frame limit"), "{r:?}");
    assert!(ended < std::time::Duration::from_secs(15), "ended after {ended:?}: at the line's end or the deadline");
    assert_eq!(sib.unwrap()["s"].as_str().map(str::len), Some(3 << 20));
    assert!(answered < std::time::Duration::from_secs(15), "the sibling waited {answered:?} for the endless line");
}

/// Health pings an instance misses while it waits for its plugin's turn at long lines are not
/// counted against it (its answers wait, unread, behind its own long line): four instances each
/// writing a 2 MiB answer over 2.5 s take their turns one after the other, the last waits about
/// 7 s, through several ping timeouts, and none is killed.
#[tokio::test(flavor = "multi_thread")]
async fn pings_missed_while_waiting_for_the_turn_are_not_counted() {
    let d = Daemon::builder()
        .plugin_as("py-long-lines", "slow")
        .manifest("slow", |m| {
            m["timeout_ms"] = json!(1500);
            m["max_timeout_ms"] = json!(60000);
        })
        .arg("--ping-interval-ms")
        .arg("100")
        .start()
        .await;
    let call = json!({"plugin": "slow", "method": "slow", "params": {"n": 2 << 20, "secs": 2.5}, "timeout_ms": 40000});
    let answers = futures::future::join_all((0..4).map(|_| d.call("execute", call.clone()))).await;
    for r in answers {
        let r = r.unwrap_or_else(|e| panic!("a slow long answer: {e:?}"));
        assert_eq!(r["s"].as_str().map(str::len), Some(2 << 20));
    }
    let s = d.status("slow").await;
    assert_eq!(s["restarts"], 0, "an instance was killed: {s}");
    let r = d.call("logs.tail", json!({"plugin": "slow", "lines": 1000})).await.unwrap();
    let waited = r["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["message"].as_str().is_some_and(|m| m.contains("while waiting for the plugin's turn")));
    assert!(waited, "no ping was missed while waiting: the test did not wait long enough: {r}");
}
