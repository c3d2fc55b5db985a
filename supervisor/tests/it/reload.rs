//! Hot reload: a changed plugin is swapped for a new instance with no failed call; a broken
//! update leaves the old one serving; `plugins.reload` adds and removes plugin directories.

use crate::support::*;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A plain-Python plugin whose answers carry the code generation `gen`.
fn source(gen: u32) -> String {
    format!(
        r#"import json, sys, threading
GEN = {gen}
def answer(m):
    p = m.get("params") or {{}}
    r = {{"init": {{}}, "register": {{"services": []}}, "ping": {{}}, "teardown": None}}.get(m["method"], "x")
    if m["method"] == "execute":
        r = {{"gen": GEN, "echo": p.get("params")}}
    sys.stdout.write(json.dumps({{"jsonrpc": "2.0", "id": m["id"], "result": r}}) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    if "id" in m and "method" in m:
        answer(m)
"#
    )
}

fn manifest(version: &str) -> String {
    format!(r#"{{"name": "hot", "version": "{version}", "main": "main.py"}}"#)
}

/// `b` watching, with plugin `hot` at version 1.0.0, generation 1.
fn with_hot(b: DaemonBuilder) -> DaemonBuilder {
    b.watch().plugin_files("hot", &[("plugin.json", &manifest("1.0.0")), ("main.py", &source(1))])
}

/// Until plugin `name` answers from code generation `gen`.
async fn at_generation(d: &Daemon, name: &str, gen: u32) {
    wait_for(&format!("{name} at generation {gen}"), async || {
        (d.execute(name, "e", json!(0)).await.ok()?["gen"] == gen).then_some(())
    })
    .await;
}

/// Atomic replace, as editors and deploy tools do it.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn six_changes_under_load_fail_no_call() {
    let d = Arc::new(
        Daemon::builder()
            .watch()
            .plugin_files("hot", &[("plugin.json", &manifest("1.0.0")), ("main.py", &source(0))])
            .start()
            .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (d, stop, ok, failed) = (d.clone(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let client = d.client().await;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = client.call("execute", &json!({"plugin": "hot", "method": "e", "params": [c, n]})).await;
                    match r {
                        Ok(v) if v["echo"] == json!([c, n]) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("client {c} call {n} failed: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    let dir = d.plugins.join("hot");
    let serving = async |check: &dyn Fn(&Value, &Value) -> bool| {
        let started = Instant::now();
        loop {
            let r = d.execute("hot", "e", json!(null)).await.unwrap();
            let s = d.status("hot").await;
            if check(&r, &s) {
                return started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_secs(5), "change not serving: {r} {}", s["last_error"]);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    for change in 1..=6u32 {
        let took = if change % 2 == 1 {
            // Code: alternately in place and by atomic rename.
            if change % 4 == 1 {
                std::fs::write(dir.join("main.py"), source(change)).unwrap();
            } else {
                write_atomic(&dir.join("main.py"), &source(change));
            }
            serving(&|r, _| r["gen"] == change).await
        } else {
            let v = format!("1.0.{change}");
            write_atomic(&dir.join("plugin.json"), &manifest(&v));
            serving(&|_, s| s["version"] == v.as_str()).await
        };
        assert!(took < Duration::from_secs(2), "change {change} took {took:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "calls failed during reloads");
    assert!(ok.load(Ordering::Relaxed) > 100, "clients kept calling: {}", ok.load(Ordering::Relaxed));
    let s = d.status("hot").await;
    assert_eq!(s["restarts"], 0);
    assert_eq!(
        s["history"].as_array().unwrap().iter().filter(|h| h["event"] == "reload").count(),
        6,
        "{}",
        s["history"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_update_keeps_the_old_version_serving_until_fixed() {
    let d = with_hot(Daemon::builder()).start().await;
    let dir = d.plugins.join("hot");
    std::fs::write(dir.join("main.py"), "this is not python(\n").unwrap();
    let s = wait_for("the failed reload", async || {
        let s = d.status("hot").await;
        s["last_error"].as_str().is_some_and(|e| e.contains("reload failed")).then_some(s)
    })
    .await;
    assert_eq!(s["state"], "running");
    assert!(s["stderr_tail"].as_array().unwrap().iter().any(|l| l.as_str().unwrap().contains("SyntaxError")), "{s}");
    assert_eq!(d.execute("hot", "e", json!(1)).await.unwrap()["gen"], 1, "the old instance still answers");

    // A broken manifest is reported with file and field, and changes nothing.
    std::fs::write(dir.join("plugin.json"), r#"{"name": "hot", "version": "nope", "main": "main.py"}"#).unwrap();
    wait_for("the manifest error", async || {
        let e = d.status("hot").await["last_error"].as_str()?.to_owned();
        (e.contains("plugin.json") && e.contains("/version")).then_some(())
    })
    .await;
    assert_eq!(d.execute("hot", "e", json!(2)).await.unwrap()["gen"], 1);

    // The fix is picked up.
    std::fs::write(dir.join("plugin.json"), manifest("1.1.0")).unwrap();
    std::fs::write(dir.join("main.py"), source(2)).unwrap();
    wait_for("the fixed version", async || (d.execute("hot", "e", json!(3)).await.ok()?["gen"] == 2).then_some(()))
        .await;
    let s = d.wait_state("hot", "running").await;
    assert_eq!(s["version"], "1.1.0");
    assert_eq!(s["last_error"], json!(null));
}

/// A rescan whose changed plugin's new version fails to start (the old one serving on) did not
/// take effect for it: `pluginctl reload` names it under `errors` and exits 1 (audit 20: it read
/// `changed`, exit 0, and only `status` told).
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_whose_new_version_fails_to_start_says_so() {
    let d = Daemon::builder()
        .plugin_files("hot", &[("plugin.json", &manifest("1.0.0")), ("main.py", &source(1))])
        .start()
        .await;
    d.wait_state("hot", "running").await;
    let dir = d.plugins.join("hot");
    std::fs::write(dir.join("broken.py"), "import sys\nsys.exit(3)\n").unwrap();
    std::fs::write(dir.join("plugin.json"), r#"{"name": "hot", "version": "1.1.0", "main": "broken.py"}"#).unwrap();
    let out = d.ctl(&["reload"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let errors: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("errors:")).collect();
    assert!(errors.len() == 1 && errors[0].contains("hot: "), "{text}");
    assert_eq!(d.execute("hot", "e", json!(1)).await.unwrap()["gen"], 1, "the old version serves on");
    // A plugin the rescan added that ends `failed` did not take either (third round).
    let ff = d.plugins.join("ff");
    std::fs::create_dir(&ff).unwrap();
    std::fs::write(ff.join("main.py"), "import sys\nsys.exit(3)\n").unwrap();
    let m = json!({"name": "ff", "version": "1.0.0", "main": "main.py", "restart": {"max_restarts": 0}});
    std::fs::write(ff.join("plugin.json"), m.to_string()).unwrap();
    let out = d.ctl(&["reload"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text.contains("added:") && text.contains("ff: failed: "), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pluginctl_reload_adds_and_removes_directories() {
    let d = Daemon::builder().plugin("perl-echo").plugin("py-probe").start().await;
    copy_dir(&fixture("perl-echo"), &d.plugins.join("newcomer"));
    let m = d.plugins.join("newcomer/plugin.json");
    let text = std::fs::read_to_string(&m).unwrap().replace("\"perl-echo\"", "\"newcomer\"");
    std::fs::write(&m, text).unwrap();
    std::fs::remove_dir_all(d.plugins.join("py-probe")).unwrap();
    let out = d.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(0));
    // Rows are `key: value` with the values aligned: compare with the spaces squeezed.
    let text = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(text.contains("added: newcomer") && text.contains("removed: py-probe"), "{text}");
    assert_eq!(d.execute("newcomer", "echo", json!(7)).await.unwrap(), json!(7));
    assert_eq!(code(&d.execute("py-probe", "echo", json!(1)).await), -32004);
    let r = d.call("plugins.reload", json!({})).await.unwrap();
    assert_eq!(r, json!({"added": [], "removed": [], "changed": [], "errors": []}));
    // Errors, each naming its file and field, one per line.
    for bad in ["bad1", "bad2"] {
        std::fs::create_dir(d.plugins.join(bad)).unwrap();
        std::fs::write(d.plugins.join(bad).join("plugin.json"), format!(r#"{{"name": "{bad}"}}"#)).unwrap();
    }
    let out = d.ctl(&["reload"]);
    // A script can tell: exit 1, saying so.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be loaded"), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("errors:")).collect();
    assert_eq!(errors.len(), 2, "{text}");
    assert!(
        errors[0].contains("bad1/plugin.json: /version") && errors[1].contains("bad2/plugin.json: /version"),
        "{text}"
    );
}

/// A copy of a running plugin's directory (a backup, a second checkout), named to sort before
/// it, does not take the name over: the plugin keeps serving from its own directory, and the
/// copy is the invalid one (the copy used to win by sorting first, and the running plugin was
/// stopped).
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_of_a_running_plugin_does_not_take_its_name() {
    let d = with_hot(Daemon::builder()).start().await;
    at_generation(&d, "hot", 1).await;
    let pid = d.status("hot").await["pid"].clone();
    let copy = d.plugins.join("a-copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::write(copy.join("main.py"), source(2)).unwrap();
    std::fs::write(copy.join("plugin.json"), manifest("1.0.0")).unwrap();
    let invalid = format!("hot@{}", copy.display());
    let r = wait_for("the copy to be seen", async || {
        let list = d.call("plugins.list", json!({})).await.ok()?;
        list.as_array()?.iter().find(|p| p["name"] == invalid).cloned()
    })
    .await;
    assert_eq!(r["state"], "invalid", "{r}");
    let s = d.status(&invalid).await;
    assert!(s["last_error"].as_str().unwrap().contains("already used by"), "{s}");
    let s = d.status("hot").await;
    assert_eq!((&s["state"], &s["pid"]), (&json!("running"), &pid), "the plugin was not touched: {s}");
    assert_eq!(d.execute("hot", "e", json!(0)).await.unwrap()["gen"], 1, "it serves from its own directory");
    // Across a full rescan too (exit 1: the copy could not be loaded).
    assert_eq!(d.ctl(&["reload"]).status.code(), Some(1));
    assert_eq!(d.execute("hot", "e", json!(0)).await.unwrap()["gen"], 1);
    assert_eq!(d.status("hot").await["pid"], pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rescans() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    copy_dir(&fixture("py-probe"), &d.plugins.join("py-probe"));
    d.signal(libc::SIGHUP);
    d.wait_state("py-probe", "running").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuilt_binary_and_a_symlink_flip_are_picked_up() {
    // A directory that is a symlink to a release dir: deploys flip the link.
    let d = Daemon::builder().watch().start().await;
    let releases = d.dir.path().join("releases");
    for (v, gen) in [("v1", 1), ("v2", 2)] {
        let dir = releases.join(v);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plugin.json"), manifest(&format!("1.0.{gen}"))).unwrap();
        std::fs::write(dir.join("main.py"), source(gen)).unwrap();
    }
    std::os::unix::fs::symlink(releases.join("v1"), d.plugins.join("hot")).unwrap();
    d.call("plugins.reload", json!({})).await.unwrap();
    d.wait_state("hot", "running").await;
    assert_eq!(d.execute("hot", "e", json!(0)).await.unwrap()["gen"], 1);
    // Flip atomically (new link, rename over the old one).
    let tmp = d.plugins.join(".hot.new");
    std::os::unix::fs::symlink(releases.join("v2"), &tmp).unwrap();
    std::fs::rename(&tmp, d.plugins.join("hot")).unwrap();
    wait_for("the flipped release", async || (d.execute("hot", "e", json!(1)).await.ok()?["gen"] == 2).then_some(()))
        .await;

    // A "binary" replaced the way cargo does it: remove, then create a new file (new inode).
    let main = releases.join("v2/main.py");
    std::fs::remove_file(&main).unwrap();
    std::fs::write(&main, source(3)).unwrap();
    wait_for("the rebuilt entry point", async || {
        (d.execute("hot", "e", json!(2)).await.ok()?["gen"] == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_name_is_a_removal_plus_an_addition() {
    let d = with_hot(Daemon::builder()).start().await;
    let m = d.plugins.join("hot/plugin.json");
    std::fs::write(&m, manifest("1.0.0").replace("\"hot\"", "\"renamed\"")).unwrap();
    d.wait_state("renamed", "running").await;
    wait_for("the old name to go", async || {
        let r = d.call("plugins.get", json!({"name": "hot"})).await;
        matches!(r, Err(plugind_client::ClientError::Rpc(ref e)) if e.code == -32004).then_some(())
    })
    .await;
    assert_eq!(d.execute("renamed", "e", json!(1)).await.unwrap()["gen"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_nobody_watches_do_not_hold_up_a_reload() {
    // Another plugin's directory gets a write every 10 ms (a log, a database), without pause,
    // for the whole test: edits of `hot` must still be picked up.
    let d = with_hot(Daemon::builder()).plugin_files("busy", &[("notes.txt", "")]).start().await;
    d.wait_state("hot", "running").await;
    let stop = Arc::new(AtomicBool::new(false));
    let noise = {
        let (stop, path) = (stop.clone(), d.plugins.join("busy/notes.txt"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                std::fs::write(&path, format!("line {n}\n")).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    for gen in [2, 3] {
        write_atomic(&d.plugins.join("hot/main.py"), &source(gen));
        wait_for(&format!("generation {gen} answering"), async || {
            let r = d.execute("hot", "e", json!(0)).await.ok()?;
            (r["gen"] == gen).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    noise.join().unwrap();
}

/// A plugin created in place in a watched dir (`mkdir`, its main file, then `plugin.json`) is
/// started once: the rescan that one file brings about loads it, and the other files of the same
/// creation, settling a moment later, do not reload it. (They did, often: a second instance at
/// once, SIGKILLs while the first was still starting.) A later edit still reloads it.
#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_created_in_place_is_started_once() {
    let d = Daemon::builder()
        .watch()
        .plugin_files(
            "marker",
            &[("plugin.json", &manifest("1.0.0").replace("\"hot\"", "\"marker\"")), ("main.py", &source(1))],
        )
        .start()
        .await;
    let names = ["add1", "add2"];
    for name in names {
        let dir = d.plugins.join(name);
        std::fs::create_dir(&dir).unwrap();
        // `plugin.json` is written but still open (its change not finished) when the main file's
        // change settles and brings about the rescan that starts the plugin; then it is closed.
        use std::io::Write;
        let mut open = std::fs::File::create(dir.join("plugin.json")).unwrap();
        open.write_all(manifest("1.0.0").replace("\"hot\"", &format!("\"{name}\"")).as_bytes()).unwrap();
        std::fs::write(dir.join("main.py"), source(1)).unwrap();
        d.wait_state(name, "running").await;
        drop(open);
    }
    // A change the watcher handles after every event of those creations: once it is served, any
    // reload they caused has been decided (and logged).
    write_atomic(&d.plugins.join("marker/main.py"), &source(2));
    wait_for("the marker's reload", async || {
        (d.execute("marker", "e", json!(0)).await.ok()?["gen"] == 2).then_some(())
    })
    .await;
    let log = d.log();
    for name in names {
        assert!(!log.contains(&format!("files changed: hot reload plugin={name}")), "{name} was reloaded:\n{log}");
        let s = d.status(name).await;
        assert!(!s["history"].to_string().contains("reload"), "{name}: {s}");
    }
    assert!(log.contains("files changed: hot reload plugin=marker"), "{log}");
    // A real edit of a plugin created in place still reloads it.
    write_atomic(&d.plugins.join("add1/main.py"), &source(3));
    wait_for("add1's edit", async || (d.execute("add1", "e", json!(0)).await.ok()?["gen"] == 3).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_in_the_same_batch_as_a_new_plugin_dir_is_not_lost() {
    let d = with_hot(Daemon::builder()).start().await;
    for gen in 2..5 {
        // A new plugin dir (a rescan) and an edit of `hot`, settling together.
        let name = format!("new{gen}");
        let dir = d.plugins.join(&name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("main.py"), source(0)).unwrap();
        std::fs::write(dir.join("plugin.json"), manifest("1.0.0").replace("\"hot\"", &format!("\"{name}\""))).unwrap();
        write_atomic(&d.plugins.join("hot/main.py"), &source(gen));
        d.wait_state(&name, "running").await;
        at_generation(&d, "hot", gen).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_crash_looping_plugin_added_while_running_leaves_rescans_working() {
    let d = Daemon::builder().watch().plugin("perl-echo").start().await;
    // Added while plugind runs: a rescan starts it, and it never settles (it exits at once,
    // and its policy allows a thousand restarts).
    let dir = d.plugins.join("looper");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("main.py"), "import sys\nsys.exit(1)\n").unwrap();
    let looper = r#"{"name": "looper", "version": "1.0.0", "main": "main.py", "restart": {"max_restarts": 1000}}"#;
    std::fs::write(dir.join("plugin.json"), looper).unwrap();
    wait_for("looper to crash twice", async || {
        let s = d.call("plugins.get", json!({ "name": "looper" })).await.ok()?;
        (s["restarts"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&fixture("perl-echo"), &d.plugins.join("later"));
    let m = d.plugins.join("later/plugin.json");
    std::fs::write(&m, std::fs::read_to_string(&m).unwrap().replace("\"perl-echo\"", "\"later\"")).unwrap();
    // The rescans are not held up by the plugin that never settled.
    let r = tokio::time::timeout(TIMEOUT, d.call("plugins.reload", json!({}))).await.expect("plugins.reload answers");
    r.unwrap();
    d.wait_state("later", "running").await;
    let list = d.call("plugins.list", json!({})).await.unwrap();
    assert!(!list.to_string().contains("\"looper\""), "the removed plugin is gone: {list}");
}

/// A `--plugins` dir missing at start does not turn hot reload off for the others, and is
/// picked up when it appears; a plugin dir root deleted and made again (a deploy) is watched
/// again, edits included.
#[tokio::test(flavor = "multi_thread")]
async fn missing_and_remade_plugin_roots_are_watched() {
    let d = with_hot(Daemon::builder().arg("--plugins").arg("more")).start().await;
    write_atomic(&d.plugins.join("hot/main.py"), &source(2));
    at_generation(&d, "hot", 2).await;
    // The missing root appears, with a plugin in it.
    let more = d.dir.path().join("more");
    let staging = d.dir.path().join("staging");
    std::fs::create_dir_all(staging.join("extra")).unwrap();
    std::fs::write(staging.join("extra/main.py"), source(7)).unwrap();
    std::fs::write(staging.join("extra/plugin.json"), manifest("1.0.0").replace("\"hot\"", "\"extra\"")).unwrap();
    std::fs::rename(&staging, &more).unwrap();
    at_generation(&d, "extra", 7).await;
    // The first root is deleted and made again.
    std::fs::remove_dir_all(&d.plugins).unwrap();
    wait_for("hot to be removed", async || {
        let list = d.call("plugins.list", json!({})).await.ok()?;
        (!list.as_array()?.iter().any(|p| p["name"] == "hot")).then_some(())
    })
    .await;
    std::fs::create_dir_all(staging.join("hot")).unwrap();
    std::fs::write(staging.join("hot/main.py"), source(3)).unwrap();
    std::fs::write(staging.join("hot/plugin.json"), manifest("1.0.0")).unwrap();
    std::fs::rename(&staging, &d.plugins).unwrap();
    at_generation(&d, "hot", 3).await;
    write_atomic(&d.plugins.join("hot/main.py"), &source(4));
    at_generation(&d, "hot", 4).await;
}

/// Deploys that rename directories: `mv src src.old; mv src.new src` under a plugin whose main is
/// `src/main.py`, and a directory of modules moved into a `watch`ed `lib/`. Each is one event
/// for a directory, which no file glob matched: neither reloaded (audit 19).
#[tokio::test(flavor = "multi_thread")]
async fn directories_renamed_into_place_reload_the_plugin() {
    let manifest = r#"{"name": "hot", "version": "1.0.0", "main": "src/main.py", "watch": ["plugin.json", "src/main.py", "lib/**/*.py"]}"#;
    let b = Daemon::builder().watch().plugin_files("hot", &[("plugin.json", manifest)]);
    let dir = b.path().join("plugins/hot");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(dir.join("src/main.py"), source(1)).unwrap();
    let d = b.start().await;
    at_generation(&d, "hot", 1).await;
    std::fs::create_dir_all(dir.join("src.new")).unwrap();
    std::fs::write(dir.join("src.new/main.py"), source(2)).unwrap();
    std::fs::rename(dir.join("src"), dir.join("src.old")).unwrap();
    std::fs::rename(dir.join("src.new"), dir.join("src")).unwrap();
    at_generation(&d, "hot", 2).await;
    // A package built aside and moved into lib/ (the main itself is unchanged: a new gen only
    // if the move reloaded it, which the new main below shows).
    let staging = d.dir.path().join("pkg");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("mod.py"), "X = 1\n").unwrap();
    // The running main is gen 2; gen 3 is on disk only once the move below reloads it.
    let src = dir.join("src/main.py");
    let text = source(3);
    let inode_keeping_write = |path: &Path, text: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    // Unwatched meanwhile: written through a path the globs do not name (a hard link).
    let link = dir.join("main.hardlink");
    std::fs::hard_link(&src, &link).unwrap();
    inode_keeping_write(&link, &text);
    std::fs::rename(&staging, dir.join("lib/pkg")).unwrap();
    at_generation(&d, "hot", 3).await;
}
