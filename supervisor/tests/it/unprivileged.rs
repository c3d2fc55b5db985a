//! plugind run by an ordinary user: the sandbox then needs a user namespace for the mount
//! namespace, and must still hold (docs/security.md: "plugind may run as root or as an ordinary user").
//!
//! The test starts the real plugind as `nobody` (through `setpriv`), with a plain-Python plugin
//! that reports what it can see and do, and asserts each containment claim from inside.

use crate::support::{wait_for, TIMEOUT};
use plugind_client::Client;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

const NOBODY: u32 = 65534;

/// Answers `execute` `look` with what this process can see: its ids, capabilities, whether it
/// can read plugind's state dir and environ, signal plugind, and write outside its TMPDIR.
const LOOKER: &str = r#"import json, os, signal, sys
def attempt(f):
    try:
        f(); return "ok"
    except OSError as e:
        return e.strerror
def status():
    return dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m: continue
    r = None if m["method"] == "teardown" else {}
    if m["method"] == "execute":
        p = m["params"]["params"]
        st = status()
        r = {
            "uid": os.getuid(),
            "cap_eff": st["CapEff"].strip(),
            "state_dir": sorted(os.listdir(p["state"])) if os.path.isdir(p["state"]) else None,
            "environ": attempt(lambda: open("/proc/%d/environ" % p["plugind"], "rb").read()),
            "signal": attempt(lambda: os.kill(p["plugind"], 0)),
            "write_outside": attempt(lambda: open(p["outside"], "w").write("x")),
            "write_tmp": attempt(lambda: open(os.path.join(os.environ["TMPDIR"], "f"), "w").write("x")),
        }
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_plugind_confines_its_plugins_too() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the test needs root to start plugind as another user");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let plugin = root.join("plugins/looker");
    std::fs::create_dir_all(&plugin).unwrap();
    std::fs::write(
        plugin.join("plugin.json"),
        json!({"name": "looker", "version": "1.0.0", "main": "main.py"}).to_string(),
    )
    .unwrap();
    std::fs::write(plugin.join("main.py"), LOOKER).unwrap();
    // The checkout may sit where `nobody` cannot reach (below /root): run a copy from the temp dir.
    let binary = root.join("plugind");
    std::fs::copy(env!("CARGO_BIN_EXE_plugind"), &binary).unwrap();
    chown_tree(root, NOBODY);
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = root.join("plugind.sock");
    let log = std::fs::File::create(root.join("plugind.log")).unwrap();
    let mut child = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
        .arg(&binary)
        .arg("--plugins")
        .arg(root.join("plugins"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .args(["--no-watch", "--socket"])
        .arg(&socket)
        .current_dir(root)
        .env("HOME", root)
        .env("PLUGIND_LOG", "debug")
        .env("PLUGIND_TEST_SECRET", "hunter2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let plugind = child.id();
    let result = async {
        let status = wait_for("looker to run", async || {
            let c = Client::connect(&socket).await.ok()?;
            let s = c.call("plugins.get", &json!({"name": "looker"})).await.ok()?;
            (s["state"] == "running").then_some(s)
        })
        .await;
        let outside = root.join("outside.txt");
        let params = json!({"state": root.join("state"), "plugind": plugind, "outside": outside});
        let c = Client::connect(&socket).await.unwrap();
        let seen = c.call("execute", &json!({"plugin": "looker", "method": "look", "params": params})).await.unwrap();
        (status, seen, outside.exists())
    };
    let (status, seen, wrote_outside) = tokio::time::timeout(TIMEOUT, result).await.unwrap_or_else(|_| {
        panic!("timed out; plugind log:\n{}", std::fs::read_to_string(root.join("plugind.log")).unwrap_or_default())
    });
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(root.join("plugind.log")).unwrap_or_default();
    assert_eq!(seen["uid"], NOBODY, "the plugin keeps plugind's uid: {seen}\n{log}");
    assert_eq!(seen["cap_eff"], "0000000000000000", "no capability from the user namespace: {seen}");
    // The state dir is an empty read-only tmpfs but for the plugin's own TMPDIR.
    assert_eq!(seen["state_dir"], json!(["tmp"]), "{seen}");
    assert_ne!(seen["environ"], "ok", "plugind's environment is not readable: {seen}");
    assert_ne!(seen["signal"], "ok", "plugind cannot be signalled: {seen}");
    assert_ne!(seen["write_outside"], "ok", "{seen}");
    assert!(!wrote_outside);
    assert_eq!(seen["write_tmp"], "ok", "{seen}");
    // What holds is claimed; what needs a cgroup this user cannot create is not.
    let rows: Vec<&Value> = status["sandbox"].as_array().unwrap().iter().collect();
    let held = |g: &str| rows.iter().find(|r| r["guarantee"] == g).map(|r| r["held"] == true);
    assert_eq!(held("private-state"), Some(true), "{rows:?}");
    assert_eq!(held("signals-and-ptrace"), Some(true), "{rows:?}");
    let has_cgroup = log.contains("instance cgroup ");
    assert_eq!(held("outlive-plugind"), Some(has_cgroup), "claimed only with a cgroup per instance: {rows:?}");
}

fn chown_tree(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid);
        }
    }
}
