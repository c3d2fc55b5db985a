//! Issue 16: the lifecycle at the seams between commands, reloads, crashes and plugind's own
//! surroundings, with real processes. Each test orders events by observing them (a process
//! appears, a state is reached, a file gate opens), never by sleeping.

use crate::support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain-Python plugin steered by its environment:
/// - `GATE`: `init` waits until this file exists;
/// - `FAIL_IF`: `init` answers an error while this file exists;
/// - `INIT_DELAY_S`: `init` takes this long;
/// - `TEARDOWN_GATE`: `teardown` waits until this file exists (and SIGTERM is ignored), then
///   says `teardown done` on stderr.
///
/// `execute` method `env` reports its TMPDIR and data dir; anything else answers its pid. Its
/// first argument is a marker that [`procs_with`] finds.
pub const GATED: &str = r#"import json, os, signal, sys, time
def wait_for(path):
    while path and not os.path.exists(path):
        time.sleep(0.01)
def send(m):
    sys.stdout.write(json.dumps(m) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    meth, r = m["method"], {}
    if meth == "init":
        sys.stderr.write("init waiting %d\n" % os.getpid())
        sys.stderr.flush()
        wait_for(os.environ.get("GATE", ""))
        fail = os.environ.get("FAIL_IF", "")
        if fail and os.path.exists(fail):
            send({"jsonrpc": "2.0", "id": m["id"], "error": {"code": -32000, "message": "init refused"}})
            continue
        time.sleep(float(os.environ.get("INIT_DELAY_S", "0")))
    elif meth == "register":
        r = {"services": []}
    elif meth == "teardown":
        if os.environ.get("TEARDOWN_GATE"):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            wait_for(os.environ["TEARDOWN_GATE"])
            sys.stderr.write("teardown done\n")
            sys.stderr.flush()
        r = None
    elif meth == "execute":
        if m["params"]["method"] == "env":
            t, dd = os.environ.get("TMPDIR", ""), os.environ.get("PLUGIND_DATA_DIR", "")
            try:
                with open(os.path.join(t, "probe"), "w") as f:
                    f.write("x")
                wrote = True
            except Exception as e:
                wrote = str(e)
            r = {"tmpdir": t, "tmpdir_exists": os.path.isdir(t), "data_dir": dd,
                 "data_dir_exists": os.path.isdir(dd), "tmp_write": wrote}
        else:
            r = {"pid": os.getpid()}
    send({"jsonrpc": "2.0", "id": m["id"], "result": r})
"#;

/// The manifest of a [`GATED`] plugin `name` with marker `tag`, plus `extra` fields.
pub fn gated_manifest(name: &str, tag: &str, extra: Value) -> String {
    let mut m = json!({ "name": name, "version": "1.0.0", "main": "main.py", "args": [tag] });
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    m.to_string()
}

/// A marker unique to this daemon and plugin.
fn tag(d: &Daemon, name: &str) -> String {
    format!("{}/{name}-marker", d.dir.path().display())
}

fn rewrite(d: &Daemon, name: &str, extra: Value) {
    let text = gated_manifest(name, &tag(d, name), extra);
    let path = d.plugins.join(name).join("plugin.json");
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A builder with one [`GATED`] plugin; its marker is `tag(&daemon, name)` once built.
fn with_gated(name: &str, extra: Value) -> DaemonBuilder {
    let b = Daemon::builder();
    let marker = format!("{}/{name}-marker", b.path().display());
    b.plugin_files(name, &[("plugin.json", &gated_manifest(name, &marker, extra)), ("main.py", GATED)])
}

/// A builder with one [`GATED`] plugin `name` whose `teardown` waits until the file `go` exists
/// (SIGTERM ignored): its marker and that file.
fn with_teardown_gate(name: &str) -> (DaemonBuilder, String, std::path::PathBuf) {
    let b = Daemon::builder();
    let marker = format!("{}/{name}-marker", b.path().display());
    let go = b.path().join("go");
    let extra = json!({ "env": { "TEARDOWN_GATE": go.to_string_lossy() } });
    let b = b.plugin_files(name, &[("plugin.json", &gated_manifest(name, &marker, extra)), ("main.py", GATED)]);
    (b, marker, go)
}

async fn wait_procs(d: &Daemon, name: &str, what: &str, f: impl Fn(&[u32]) -> bool) -> Vec<u32> {
    let marker = tag(d, name);
    wait_for(what, async || {
        let p = procs_with(&marker);
        f(&p).then_some(p)
    })
    .await
}

fn gate(d: &Daemon, file: &str) -> String {
    d.dir.path().join(file).to_string_lossy().into_owned()
}

/// `plugins.reload` in the background (it answers once the plugins settle).
fn reload_in_background(d: &Daemon) -> tokio::task::JoinHandle<Value> {
    let socket = d.socket.clone();
    tokio::spawn(async move {
        let c = plugind_client::Client::connect(&socket).await.unwrap();
        c.call("plugins.reload", &json!({})).await.unwrap()
    })
}

async fn stopped_and_unroutable(d: &Daemon, name: &str) {
    let s = d.status(name).await;
    assert_eq!(s["state"], "stopped", "{s}");
    assert_eq!(s["pid"], Value::Null, "{s}");
    assert!(procs_with(&tag(d, name)).is_empty(), "a stopped plugin has no process");
    let r = d.execute(name, "pid", json!({})).await;
    assert_eq!(code(&r), -32002, "no route to a stopped plugin: {r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_during_a_hot_reload_stops_everything_and_start_works_after() {
    let d = with_gated("g", json!({})).start().await;
    let old = d.status("g").await["pid"].as_u64().unwrap() as u32;
    // The new version waits in `init` until the gate opens: the reload is under way.
    rewrite(&d, "g", json!({ "version": "2.0.0", "env": { "GATE": gate(&d, "gate") } }));
    let reload = reload_in_background(&d);
    wait_procs(&d, "g", "the new instance beside the old one", |p| p.len() == 2 && p.contains(&old)).await;
    let s = d.call("plugins.stop", json!({ "name": "g" })).await.unwrap();
    assert_eq!(s["state"], "stopped", "{s}");
    stopped_and_unroutable(&d, "g").await;
    let r = tokio::time::timeout(TIMEOUT, reload).await.expect("the reload is answered").unwrap();
    assert_eq!(r["changed"], json!(["g"]), "{r}");
    // Later: the new version (gate open) starts.
    std::fs::write(gate(&d, "gate"), "").unwrap();
    let s = d.call("plugins.start", json!({ "name": "g" })).await.unwrap();
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["version"], "2.0.0", "{s}");
    assert_eq!(procs_with(&tag(&d, "g")).len(), 1);
    d.execute("g", "pid", json!({})).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_during_a_stop_leaves_it_stopped() {
    // The running version's teardown waits (SIGTERM ignored), so the stop takes a while.
    let d = with_gated("g", json!({})).start().await;
    rewrite(&d, "g", json!({ "version": "2.0.0", "env": { "TEARDOWN_GATE": gate(&d, "never") } }));
    d.call("plugins.reload", json!({})).await.unwrap();
    let s = d.status("g").await;
    assert_eq!((s["state"].as_str(), s["version"].as_str()), (Some("running"), Some("2.0.0")), "{s}");
    let socket = d.socket.clone();
    let stop = tokio::spawn(async move {
        let c = plugind_client::Client::connect(&socket).await.unwrap();
        c.call("plugins.stop", &json!({ "name": "g" })).await.unwrap()
    });
    d.wait_state("g", "stopping").await;
    rewrite(&d, "g", json!({ "version": "3.0.0" }));
    let r = d.call("plugins.reload", json!({})).await.unwrap();
    assert_eq!(r["changed"], json!(["g"]), "{r}");
    let s = tokio::time::timeout(TIMEOUT, stop).await.expect("the stop is answered").unwrap();
    assert_eq!(s["state"], "stopped", "{s}");
    stopped_and_unroutable(&d, "g").await;
    let s = d.call("plugins.start", json!({ "name": "g" })).await.unwrap();
    assert_eq!((s["state"].as_str(), s["version"].as_str()), (Some("running"), Some("3.0.0")), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_of_a_starting_plugin_to_fewer_instances_leaves_no_extra_process() {
    let b = with_gated("g", json!({}));
    let d0 = b.path().to_path_buf();
    let g = d0.join("gate").to_string_lossy().into_owned();
    let d = b.manifest("g", |m| {
        m["instances"] = json!(3);
        m["env"] = json!({ "GATE": g });
    });
    let d = d.spawn().await;
    let first = wait_procs(&d, "g", "three starting instances", |p| p.len() == 3).await;
    assert_eq!(d.status("g").await["state"], "starting");
    rewrite(&d, "g", json!({ "instances": 1, "env": { "GATE": gate(&d, "gate") } }));
    let reload = reload_in_background(&d);
    let now = wait_procs(&d, "g", "one new instance only", |p| p.len() == 1 && !first.contains(&p[0])).await;
    std::fs::write(gate(&d, "gate"), "").unwrap();
    let s = d.wait_state("g", "running").await;
    assert_eq!(s["instances"], 1, "{s}");
    assert_eq!(s["pid"].as_u64(), Some(u64::from(now[0])), "{s}");
    tokio::time::timeout(TIMEOUT, reload).await.expect("the reload is answered").unwrap();
    assert_eq!(procs_with(&tag(&d, "g")), now, "no extra process");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stderr_changes_nothing() {
    let mut d = with_gated("g", json!({})).stderr_closed().start().await;
    let socket = d.socket.clone();
    // Crash it: the restart after backoff logs plenty.
    let pid = d.status("g").await["pid"].as_u64().unwrap() as u32;
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    wait_for("the restarted instance", async || {
        let s = d.status("g").await;
        (s["state"] == "running" && s["pid"].as_u64() != Some(u64::from(pid))).then_some(())
    })
    .await;
    for args in [&["restart", "g"][..], &["restart", "--hard", "g"], &["stop", "g"], &["start", "g"]] {
        let out = d.ctl(args);
        assert!(out.status.success(), "pluginctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(d.status("g").await["state"], "running");
    d.signal(libc::SIGINT);
    assert_eq!(d.wait_exit().await, Some(0), "no panic (101) on a closed stderr");
    assert!(!socket.exists(), "the socket file is removed");
    assert!(procs_with(&tag(&d, "g")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relative_state_dir_gives_plugins_dirs_that_exist() {
    let d = with_gated("g", json!({ "permissions": ["storage"] })).relative_state_dir().start().await;
    let r = d.execute("g", "env", json!({})).await.unwrap();
    for dir in ["tmpdir", "data_dir"] {
        let p = r[dir].as_str().unwrap();
        assert!(Path::new(p).is_absolute(), "{dir} is absolute: {r}");
        assert_eq!(r[format!("{dir}_exists")], true, "{dir} exists from the plugin's cwd: {r}");
    }
    assert_eq!(r["tmp_write"], true, "{r}");
    assert!(d.dir.path().join("state").is_dir());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_closed_connection_is_answered_then_closed() {
    let d = Daemon::builder().start().await;
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let requests = [
        json!({ "jsonrpc": "2.0", "id": 1, "method": "services.register", "params": { "name": "ui", "version": "1.0.0" } }),
        // Routed to this very connection, which can no longer answer once it has half-closed.
        json!({ "jsonrpc": "2.0", "id": 2, "method": "services.call",
                "params": { "service": "ui", "method": "m", "params": {}, "timeout_ms": 15000 } }),
        json!({ "jsonrpc": "2.0", "id": 3, "method": "supervisor.status", "params": {} }),
    ];
    let mut text = String::new();
    for r in &requests {
        text.push_str(&r.to_string());
        text.push('\n');
    }
    let started = Instant::now();
    s.write_all(text.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(TIMEOUT, s.read_to_string(&mut out)).await.expect("plugind closes the connection").unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "the call to its own service failed at once");
    let answers: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_id = |id: u64| answers.iter().find(|a| a["id"] == id && a.get("method").is_none()).cloned();
    assert_eq!(by_id(1).expect("register answered")["result"], Value::Null, "{out}");
    assert_eq!(by_id(2).expect("call answered")["error"]["code"], -32002, "{out}");
    assert!(by_id(3).expect("status answered")["result"]["pid"].is_u64(), "{out}");
    // What it registered is gone.
    let list = d.call("services.list", json!({})).await.unwrap();
    assert!(!list.to_string().contains("\"ui\""), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_under_load_fails_no_call_and_hard_restart_stops_first() {
    let d = Arc::new(Daemon::builder().plugin("perl-echo").start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (d, stop, ok, failed) = (d.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let c = d.client().await;
                while !stop.load(Ordering::Relaxed) {
                    let p = json!({ "plugin": "perl-echo", "method": "echo", "params": 1 });
                    match c.call("execute", &p).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("failed call: {e:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    wait_for("calls flowing", async || (ok.load(Ordering::Relaxed) > 20).then_some(())).await;
    let mut pids = vec![d.status("perl-echo").await["pid"].as_u64().unwrap()];
    for _ in 0..3 {
        let dd = d.clone();
        let out = tokio::task::spawn_blocking(move || dd.ctl(&["restart", "perl-echo"])).await.unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "perl-echo: running");
        let before = ok.load(Ordering::Relaxed);
        wait_for("calls after the restart", async || (ok.load(Ordering::Relaxed) > before + 10).then_some(())).await;
        pids.push(d.status("perl-echo").await["pid"].as_u64().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no call fails during a graceful restart");
    pids.dedup();
    assert_eq!(pids.len(), 4, "each restart made a new instance: {pids:?}");
    let history = d.status("perl-echo").await["history"].clone();
    let said = |e: &Value| {
        e["event"] == "reload"
            && e["detail"].as_str().is_some_and(|t| t.starts_with("restarted gracefully: now serving version"))
    };
    assert_eq!(
        history.as_array().unwrap().iter().filter(|e| said(e)).count(),
        3,
        "the history tells a restart from a reload: {history}"
    );
    let out = d.ctl(&["restart", "--hard", "perl-echo"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = d.status("perl-echo").await;
    assert_eq!(s["state"], "running");
    assert!(!alive(*pids.last().unwrap() as u32), "hard: the old process is gone when it answers");
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_whose_new_instance_fails_keeps_the_old_one_and_exits_1() {
    let b = with_gated("g", json!({}));
    let refuse = b.path().join("refuse").to_string_lossy().into_owned();
    let d = b.manifest("g", |m| m["env"] = json!({ "FAIL_IF": refuse.clone() })).start().await;
    let pid = d.status("g").await["pid"].as_u64().unwrap();
    std::fs::write(&refuse, "").unwrap();
    let out = d.ctl(&["restart", "g"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("init refused"), "the error names why: {err}");
    assert!(err.contains("pluginctl: restart of g failed"), "one name, said by name: {err}");
    let s = d.status("g").await;
    assert_eq!((s["state"].as_str(), s["pid"].as_u64()), (Some("running"), Some(pid)), "the old one serves: {s}");
    assert!(s["last_error"].as_str().unwrap().contains("init refused"), "{s}");
    assert_eq!(d.execute("g", "pid", json!({})).await.unwrap()["pid"].as_u64(), Some(pid));
    wait_procs(&d, "g", "only the old instance", |p| p == [pid as u32]).await;
    // --json: the error object on stdout.
    let out = d.ctl(&["--json", "restart", "g"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["code"], -32603, "{v}");
    assert_eq!(v["error"]["data"]["state"], "running", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_and_restart_exit_1_when_the_plugin_ends_failed_blocked_or_invalid() {
    let b = with_gated("g", json!({ "restart": { "max_restarts": 0 } }));
    let refuse = b.path().join("refuse");
    std::fs::write(&refuse, "").unwrap();
    let r = refuse.to_string_lossy().into_owned();
    let d = b
        .manifest("g", |m| m["env"] = json!({ "FAIL_IF": r }))
        .plugin_as("perl-echo", "needy")
        .manifest("needy", |m| m["dependencies"] = json!({ "required": ["absent@^1"] }))
        .plugin_files("broken", &[("plugin.json", r#"{"name": "broken"}"#)])
        .start()
        .await;
    assert_eq!(d.status("g").await["state"], "failed");
    for (args, state) in [
        (&["start", "g"][..], "failed"),
        (&["restart", "g"], "failed"),
        (&["restart", "--hard", "g"], "failed"),
        (&["start", "needy"], "blocked"),
        (&["start", "broken"], "invalid"),
    ] {
        let out = d.ctl(args);
        assert_eq!(out.status.code(), Some(1), "pluginctl {args:?}: {out:?}");
        assert_eq!(d.status(args[args.len() - 1]).await["state"], state);
    }
    std::fs::remove_file(&refuse).unwrap();
    let out = d.ctl(&["start", "g"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "g: running");
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_timeout_is_separate_from_the_call_deadline() {
    // 1.5 s to answer `init`, with a 1 s call deadline: starts, under the default 30 s budget.
    let b = with_gated("slow", json!({ "timeout_ms": 1000, "env": { "INIT_DELAY_S": "1.5" } }));
    let marker = format!("{}/late-marker", b.path().display());
    let late = gated_manifest(
        "late",
        &marker,
        json!({ "startup_timeout_ms": 300, "restart": { "max_restarts": 0 }, "env": { "INIT_DELAY_S": "1.5" } }),
    );
    let d = b.plugin_files("late", &[("plugin.json", &late), ("main.py", GATED)]).start().await;
    let s = d.status("slow").await;
    assert_eq!(s["state"], "running", "{s}");
    d.execute("slow", "pid", json!({})).await.unwrap();
    let s = d.status("late").await;
    assert_eq!(s["state"], "failed", "{s}");
    let e = s["last_error"].as_str().unwrap();
    assert!(e.contains("startup_timeout_ms (300 ms) expired before init was answered"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stderr_still_exits_0_on_sigterm() {
    let mut d = with_gated("g", json!({})).stderr_closed().start().await;
    let socket = d.socket.clone();
    let out = d.ctl(&["restart", "g"]);
    assert!(out.status.success(), "{out:?}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit().await, Some(0));
    assert!(!socket.exists(), "the socket file is removed");
    assert!(procs_with(&tag(&d, "g")).is_empty());
}

/// A plugins dir named through a symlink (`/etc/plugind/plugins -> /opt/…`) or with a `..` in it
/// starts its plugins: the sandbox binds plugin directories by their real path. (Each plugin
/// failed to start with "No such file or directory" inside its mount namespace.)
#[tokio::test(flavor = "multi_thread")]
async fn plugins_dirs_through_a_symlink_or_a_dotdot_start_their_plugins() {
    let b = Daemon::builder();
    let root = b.root().to_owned();
    copy_dir(&fixture("py-probe"), &root.join("real/py-probe"));
    copy_dir(&fixture("perl-echo"), &root.join("elsewhere/perl-echo"));
    std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let d = b.arg("--plugins").arg("link").arg("--plugins").arg("sub/../elsewhere").start().await;
    for (plugin, method) in [("py-probe", "echo"), ("perl-echo", "echo")] {
        let s = d.wait_state(plugin, "running").await;
        let r = d.execute(plugin, method, json!({"x": 1})).await;
        assert!(r.is_ok(), "{plugin}: {r:?}; status {s}");
    }
}

/// A plain-Python plugin whose `execute` never answers by itself: it reports the call on
/// stderr (`working ID`) and keeps reading, reporting each `$/cancel` (`cancel ID`) and
/// `teardown` (`teardown`), which it answers at once before it exits 0.
const STOPPABLE: &str = r#"import json, sys
def send(m):
    sys.stdout.write(json.dumps(m) + "\n")
    sys.stdout.flush()
def say(s):
    sys.stderr.write(s + "\n")
    sys.stderr.flush()
for line in sys.stdin:
    m = json.loads(line)
    meth = m.get("method")
    if meth == "$/cancel":
        say("cancel %s" % m["params"]["id"])
    elif meth == "execute":
        say("working %s" % m["id"])
    elif meth == "teardown":
        say("teardown")
        send({"jsonrpc": "2.0", "id": m["id"], "result": None})
        sys.exit(0)
    elif "id" in m:
        send({"jsonrpc": "2.0", "id": m["id"], "result": {"services": []} if meth == "register" else {}})
"#;

#[tokio::test(flavor = "multi_thread")]
async fn stop_cancels_the_calls_in_flight_before_teardown_and_says_stopping() {
    let manifest = r#"{"name": "slowpoke", "version": "1.0.0", "main": "main.py", "timeout_ms": 30000}"#;
    let d = Arc::new(
        Daemon::builder().plugin_files("slowpoke", &[("plugin.json", manifest), ("main.py", STOPPABLE)]).start().await,
    );
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { d.execute("slowpoke", "work", json!({})).await })
        })
        .collect();
    let lines = |s: &Value| -> Vec<String> {
        s["stderr_tail"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_owned)).collect()
    };
    wait_for("both calls to reach the plugin", async || {
        (lines(&d.status("slowpoke").await).iter().filter(|l| l.starts_with("working ")).count() == 2).then_some(())
    })
    .await;
    let out = d.ctl(&["stop", "slowpoke"]);
    assert!(out.status.success(), "{out:?}");
    for c in calls {
        let r = c.await.unwrap();
        assert_eq!(code(&r), -32002, "a stopped plugin's call says so, not that it crashed: {r:?}");
        assert_eq!(data(&r)["state"], "stopping", "{r:?}");
        assert_eq!(data(&r)["plugin"], "slowpoke", "{r:?}");
    }
    let s = d.status("slowpoke").await;
    assert_eq!(s["state"], "stopped", "{s}");
    let seen = lines(&s);
    let working: Vec<&str> = seen.iter().filter_map(|l| l.strip_prefix("working ")).collect();
    let cancelled: Vec<&str> = seen.iter().filter_map(|l| l.strip_prefix("cancel ")).collect();
    let (mut w, mut c) = (working, cancelled);
    w.sort_unstable();
    c.sort_unstable();
    assert_eq!(w, c, "every call in flight got $/cancel: {seen:?}");
    let teardown = seen.iter().position(|l| l == "teardown").expect("teardown was sent");
    assert!(
        seen.iter().rposition(|l| l.starts_with("cancel ")).unwrap() < teardown,
        "$/cancel came before teardown: {seen:?}"
    );
    // It answered teardown and exited by itself: no SIGTERM was needed.
    assert_eq!(s["last_exit"]["code"], 0, "{s}");
    assert_eq!(s["last_exit"]["signal"], Value::Null, "{s}");
    // Calls after the stop are refused as before.
    assert_eq!(code(&d.execute("slowpoke", "work", json!({})).await), -32002);
}

/// A plain-Python plugin whose `execute` reports itself on stderr (`working ID`) and answers
/// once the file `release` exists in its directory.
const HELD: &str = r#"import json, os, sys, time
def send(m):
    sys.stdout.write(json.dumps(m) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    meth = m.get("method")
    if meth == "execute":
        sys.stderr.write("working %s\n" % m["id"])
        sys.stderr.flush()
        while not os.path.exists("release"):
            time.sleep(0.01)
        send({"jsonrpc": "2.0", "id": m["id"], "result": {"done": True}})
    elif "id" in m and meth:
        send({"jsonrpc": "2.0", "id": m["id"], "result": None if meth == "teardown" else {}})
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_second_graceful_restart_lets_the_first_ones_old_instance_finish_its_call() {
    let manifest = r#"{"name": "held", "version": "1.0.0", "main": "main.py", "timeout_ms": 30000}"#;
    let d =
        Arc::new(Daemon::builder().plugin_files("held", &[("plugin.json", manifest), ("main.py", HELD)]).start().await);
    let first = d.status("held").await["pid"].as_u64().unwrap();
    let call = {
        let d = d.clone();
        tokio::spawn(async move { d.execute("held", "wait", json!({})).await })
    };
    wait_stderr(&d, "held", "working ").await;
    for _ in 0..2 {
        let out = d.ctl(&["restart", "held"]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(alive(first as u32), "the first instance still drains its call");
    std::fs::write(d.plugins.join("held").join("release"), "").unwrap();
    assert_eq!(call.await.unwrap().unwrap(), json!({"done": true}), "no call fails because of a restart");
    wait_for("the first instance to go", async || (!alive(first as u32)).then_some(())).await;
    let s = d.status("held").await;
    assert_eq!((s["state"].as_str(), s["calls"]["failed"].as_u64()), (Some("running"), Some(0)), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_commands_each_answer_the_state_they_settled_in() {
    let d = Arc::new(Daemon::builder().plugin("perl-echo").start().await);
    let command = |method: &'static str| {
        let d = d.clone();
        tokio::spawn(async move { d.call(method, json!({ "name": "perl-echo" })).await.unwrap() })
    };
    for round in 0..30 {
        let answers = [command("plugins.stop"), command("plugins.stop"), command("plugins.start")];
        for (i, a) in answers.into_iter().enumerate() {
            let s = a.await.unwrap();
            let want = if i < 2 { "stopped" } else { "running" };
            // A later command may already have moved the plugin on; the answer still tells the
            // state this one settled in, whole: a stopped plugin has no pid, a running one has.
            match s["state"].as_str() {
                Some("stopped") => assert!(s["pid"].is_null(), "round {round}: {s}"),
                Some("running") => assert!(s["pid"].is_u64(), "round {round}: {s}"),
                other => {
                    panic!("round {round}: command {i} (wanting {want}) answered the unsettled state {other:?}: {s}")
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_closed_connection_keeps_its_streams_until_it_hangs_up() {
    use tokio::io::AsyncBufReadExt;
    let d = Daemon::builder().plugin("perl-echo").start().await;
    for (method, params) in [
        ("events.subscribe", json!({})),
        ("plugins.trace", json!({ "name": "perl-echo" })),
        ("logs.tail", json!({ "plugin": "perl-echo", "follow": true, "lines": 0 })),
    ] {
        let s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let (read, mut write) = s.into_split();
        let request = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        write.write_all(format!("{request}\n").as_bytes()).await.unwrap();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let answer: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(answer["id"], 1, "{method}: {answer}");
        write.shutdown().await.unwrap(); // half-close, as `echo … | socat - UNIX-CONNECT:…` does
                                         // Something to stream: a hard restart makes events, wire messages and log lines.
        assert!(d.ctl(&["restart", "--hard", "perl-echo"]).status.success());
        let next = tokio::time::timeout(TIMEOUT, lines.next_line()).await.expect("a notification comes").unwrap();
        let note: Value =
            serde_json::from_str(&next.unwrap_or_else(|| panic!("{method}: closed at the half-close"))).unwrap();
        assert!(note["method"].is_string() && note.get("id").is_none(), "{method}: {note}");
        // The client hangs up entirely: its stream ends (plugind carries on).
        drop(lines);
        drop(write);
    }
    assert_eq!(d.status("perl-echo").await["state"], "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_stuck_in_init_shows_its_process() {
    let b = with_gated("slowstart", json!({}));
    let open = b.path().join("open");
    let gate_path = open.to_string_lossy().into_owned();
    let d = b.manifest("slowstart", |m| m["env"] = json!({ "GATE": gate_path })).spawn().await;
    let pids = wait_procs(&d, "slowstart", "the instance waiting in init", |p| p.len() == 1).await;
    let s = wait_for("its status to show it", async || {
        let s = d.call("plugins.get", json!({ "name": "slowstart" })).await.ok()?;
        (s["state"] == "starting" && s["pid"].is_u64()).then_some(s)
    })
    .await;
    assert_eq!((s["pid"].as_u64(), s["instances"].as_u64()), (Some(u64::from(pids[0])), Some(1)), "{s}");
    std::fs::write(&open, "").unwrap();
    d.wait_state("slowstart", "running").await;
}

/// Audit 18: a `start` that came while a rescan was stopping a plugin it removes (its manifest
/// now names another plugin, or its directory went away) was queued behind the stop, ran the
/// plugin again, and the rescan then dropped it from the table: a process nobody listed,
/// stopped or could reach, restarted when it crashed. Now the removed plugin leaves the table
/// before its stop, and a command that reaches it meanwhile answers as for an unknown plugin.
#[tokio::test(flavor = "multi_thread")]
async fn a_start_racing_with_a_removal_does_not_run_the_plugin_on_out_of_sight() {
    let (b, marker, go) = with_teardown_gate("x");
    let d = b.start().await;
    wait_procs(&d, "x", "x's process", |p| p.len() == 1).await;
    // The same directory now holds plugin y: x is removed (its teardown waits at the gate).
    let path = d.plugins.join("x").join("plugin.json");
    std::fs::write(path.with_extension("tmp~"), gated_manifest("y", &marker, json!({}))).unwrap();
    std::fs::rename(path.with_extension("tmp~"), &path).unwrap();
    let reload = reload_in_background(&d);
    wait_for("x to be stopping or gone", async || match d.call("plugins.get", json!({"name": "x"})).await {
        Ok(s) => (s["state"] == "stopping").then_some(()),
        Err(_) => Some(()),
    })
    .await;
    // A start of x while its removal waits: sent, and a request after it answered, before the
    // teardown may end.
    let c = plugind_client::Client::connect(&d.socket).await.unwrap();
    let (x, nothing) = (json!({"name": "x"}), json!({}));
    let start = c.call("plugins.start", &x);
    tokio::pin!(start);
    let mut early = None;
    tokio::select! {
        biased;
        r = &mut start => early = Some(r),
        _ = c.call("plugins.list", &nothing) => {}
    }
    std::fs::write(&go, "").unwrap();
    let r = match early {
        Some(r) => r,
        None => start.await,
    };
    assert_eq!(code(&r), -32004, "a removed plugin is not started again: {r:?}");
    let reloaded = reload.await.unwrap();
    assert_eq!(reloaded["changed"], json!(["y"]), "{reloaded}");
    wait_for("y to run", async || (d.status("y").await["state"] == "running").then_some(())).await;
    // One process carries the marker: y's. x's ended and none was started again.
    let y = d.status("y").await["pid"].as_u64().unwrap() as u32;
    wait_procs(&d, "x", "only y's process", |p| p == [y]).await;
    let r = d.call("plugins.get", json!({"name": "x"})).await;
    assert_eq!(code(&r), -32004, "{r:?}");
}

/// A SIGTERM while a rescan stops a plugin it removes (its directory moved away) lets that
/// plugin's `teardown` end: plugind's stop waits for the rescan, and only then stops the
/// others and exits (audit 18's fix, tested on its own here: the removed plugin has left the
/// table, so the stop's waves alone would not wait for it).
#[tokio::test(flavor = "multi_thread")]
async fn a_sigterm_during_a_removal_lets_the_removed_plugins_teardown_end() {
    let (b, marker, go) = with_teardown_gate("x");
    let other = format!("{}/other-marker", b.path().display());
    let mut d = b
        .plugin_files("other", &[("plugin.json", &gated_manifest("other", &other, json!({}))), ("main.py", GATED)])
        .start()
        .await;
    wait_procs(&d, "x", "x's process", |p| p.len() == 1).await;
    std::fs::rename(d.plugins.join("x"), d.dir.path().join("x-away")).unwrap();
    let reload = reload_in_background(&d);
    wait_for("x to leave the table", async || {
        let r = d.call("plugins.get", json!({"name": "x"})).await;
        (r.is_err() && code(&r) == -32004).then_some(())
    })
    .await;
    d.signal(libc::SIGTERM);
    // Answered by plugind, so it has not exited.
    wait_for("plugind to be stopping (and still there)", async || {
        let r = d.call("plugins.start", json!({"name": "other"})).await;
        (r.is_err() && code(&r) == -32002).then_some(())
    })
    .await;
    // The stop waits for the rescan, which waits for x's teardown: nothing else has stopped.
    assert_eq!(procs_with(&marker).len(), 1, "x's process is still in its teardown");
    assert_eq!(d.status("other").await["state"], "running", "the stop waits for the rescan's removal");
    std::fs::write(&go, "").unwrap();
    assert_eq!(d.wait_exit().await, Some(0));
    let log = std::fs::read_to_string(d.dir.path().join("state/logs/x.jsonl")).unwrap_or_default();
    assert!(log.contains("teardown done"), "x's teardown ended: {log}");
    assert!(procs_with(&marker).is_empty() && procs_with(&other).is_empty(), "nothing outlives plugind");
    let reloaded = reload.await.unwrap();
    assert_eq!(reloaded["removed"], json!(["x"]), "{reloaded}");
}

/// A plugin whose directory went away while plugind was not watching: `restart` says the
/// directory is gone, not that its interpreter cannot start (`cannot start "python3"`, before).
#[tokio::test(flavor = "multi_thread")]
async fn restarting_a_plugin_whose_directory_is_gone_says_so() {
    let d = with_gated("g", json!({})).start().await;
    let away = d.dir.path().join("g-away");
    std::fs::rename(d.plugins.join("g"), &away).unwrap();
    let r = d.call("plugins.restart", json!({"name": "g"})).await;
    let s = d.status("g").await;
    let said = format!("{r:?} {}", s["last_error"]);
    assert!(said.contains("is gone") && said.contains("plugins/g"), "{said}");
    assert!(!said.contains("python3"), "{said}");
}

/// Audit 18: a `stop` answered `running` when a `start` came while it was under way (the start
/// began as the last instance went; the stop's answer waited for the next settled state). The
/// contract: a stop racing with a start answers `stopped`, whatever the start does next.
#[tokio::test(flavor = "multi_thread")]
async fn a_stop_answers_stopped_when_a_start_follows_it() {
    let (b, _marker, go) = with_teardown_gate("s");
    let d = b.start().await;
    let stopper = plugind_client::Client::connect(&d.socket).await.unwrap();
    let starter = plugind_client::Client::connect(&d.socket).await.unwrap();
    let (s, nothing) = (json!({"name": "s"}), json!({}));
    let stop = stopper.call("plugins.stop", &s);
    tokio::pin!(stop);
    tokio::select! {
        biased;
        r = &mut stop => panic!("the stop ended before its teardown could: {r:?}"),
        () = wait_for("s to be stopping", async || (d.status("s").await["state"] == "stopping").then_some(())) => {}
    }
    let start = starter.call("plugins.start", &s);
    tokio::pin!(start);
    tokio::select! {
        biased;
        r = &mut start => panic!("the start ended before the stop: {r:?}"),
        _ = starter.call("plugins.list", &nothing) => {}
    }
    std::fs::write(&go, "").unwrap();
    let (stopped, started) = tokio::join!(stop, start);
    let (stopped, started) = (stopped.unwrap(), started.unwrap());
    assert_eq!((&stopped["state"], &stopped["pid"]), (&json!("stopped"), &Value::Null), "{stopped}");
    assert_eq!(started["state"], "running", "{started}");
}

/// Audit 18: while plugind stopped (SIGTERM), `plugins.start`, `restart` and `reload` started
/// plugins again after their wave had stopped: they were `running` when plugind said it had
/// stopped, and never got `teardown`. Now nothing starts a plugin once the stop has begun.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_starts_a_plugin_once_plugind_is_stopping() {
    let b = Daemon::builder();
    let go = b.path().join("go");
    let (slow, quick) = (format!("{}/slow-marker", b.path().display()), format!("{}/quick-marker", b.path().display()));
    let gated = json!({ "env": { "TEARDOWN_GATE": go.to_string_lossy() } });
    let mut d = b
        .plugin_files("slow", &[("plugin.json", &gated_manifest("slow", &slow, gated)), ("main.py", GATED)])
        .plugin_files("quick", &[("plugin.json", &gated_manifest("quick", &quick, json!({}))), ("main.py", GATED)])
        .start()
        .await;
    d.signal(libc::SIGTERM);
    // `slow` waits at its teardown gate; `quick` has stopped.
    wait_for("quick to stop while slow waits", async || {
        let quick = d.call("plugins.get", json!({"name": "quick"})).await.ok()?;
        (quick["state"] == "stopped" && procs_with(&slow).len() == 1).then_some(())
    })
    .await;
    for (method, params) in [
        ("plugins.start", json!({"name": "quick"})),
        ("plugins.restart", json!({"name": "quick", "hard": true})),
        ("plugins.restart", json!({"name": "quick"})),
    ] {
        let r = d.call(method, params.clone()).await;
        assert_eq!(code(&r), -32002, "{method} {params}: {r:?}");
        assert_eq!(data(&r)["state"], "stopping", "{r:?}");
    }
    // A new plugin dir and a rescan: not added, nothing started.
    let extra = d.plugins.join("late");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("plugin.json"), gated_manifest("late", &quick, json!({}))).unwrap();
    std::fs::write(extra.join("main.py"), GATED).unwrap();
    let r = d.call("plugins.reload", json!({})).await.unwrap();
    assert_eq!(r["added"], json!([]), "{r}");
    assert!(r["errors"].to_string().contains("plugind is stopping"), "{r}");
    assert!(procs_with(&quick).is_empty(), "nothing of quick (or late) runs again");
    std::fs::write(&go, "").unwrap();
    assert_eq!(d.wait_exit().await, Some(0));
    assert!(procs_with(&quick).is_empty() && procs_with(&slow).is_empty(), "nothing outlives plugind");
}
