//! The Rust host library (`plugind-client`) against a real plugind: calls, deadlines, a service
//! the host provides to plugins, hooks, events, cancellation by dropping a call, progress, and
//! reconnection after plugind restarts. Each scenario runs twice: on the control socket, and on
//! plugind's `--listen` WebSocket with its bearer token (`Via`).

use crate::support::*;
use plugind_client::{CallOptions, Caller, Client, ClientError, Handlers, Progress, CONNECTION_LOST};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A plain-Python plugin that uses the host's `ui` service (optional dependency), sends
/// `$/progress` for its `progress` method, and marks payloads in the `onRequest` hook chain.
const UI_USER: &str = r#"import json, sys, threading, time
out = threading.Lock()
waiting = {}
ids = iter(range(1, 1 << 30))

def send(m):
    m["jsonrpc"] = "2.0"
    with out:
        sys.stdout.write(json.dumps(m) + "\n"); sys.stdout.flush()

def call(method, params):
    i = next(ids); ev = threading.Event(); waiting[i] = [ev, None]
    send({"id": i, "method": method, "params": params})
    ev.wait(); return waiting.pop(i)[1]

def handle(m):
    rid, p, method = m["id"], m.get("params") or {}, m["method"]
    if method == "execute" and p.get("method") == "use_ui":
        answer = call("service.call", {"service": "ui", "method": "registerTheme", "params": {"name": "midnight"}})
        answer["id"] = rid; send(answer); return
    if method == "execute" and p.get("method") == "progress":
        for k in (1, 2, 3):
            send({"method": "$/progress", "params": {"id": rid, "message": "step %d" % k, "progress": k, "total": 3}})
            time.sleep(0.05)
        send({"id": rid, "result": {"done": True}}); return
    if method == "hook":
        payload = p["payload"]; payload["seen_by"] = "ui-user"
        send({"id": rid, "result": {"payload": payload}}); return
    send({"id": rid, "result": None if method == "teardown" else {}})

for line in sys.stdin:
    m = json.loads(line)
    if "method" not in m:
        w = waiting.get(m.get("id"))
        if w:
            w[1] = {k: m[k] for k in ("result", "error") if k in m}; w[0].set()
    elif "id" in m:
        threading.Thread(target=handle, args=(m,), daemon=True).start()
"#;

/// How the host reaches plugind.
#[derive(Clone, Debug)]
enum Via {
    /// Its control socket.
    Socket,
    /// Its `--listen` address (`http://127.0.0.1:PORT`, the same port after a restart), with
    /// the token in `token`.
    Url(String),
}

const TOKEN: &str = "host-client-token";

/// Both tests of a scenario: on the socket (`$socket`) and on `--listen` (`$url`).
macro_rules! both_ways {
    ($scenario:ident, $socket:ident, $url:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $socket() {
            $scenario(false).await
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $url() {
            $scenario(true).await
        }
    };
}

/// plugind with `ui-user` and `py-probe`, listening on a loopback port when `listen`.
async fn daemon(listen: bool) -> (Daemon, Via) {
    let manifest = json!({"name": "ui-user", "version": "1.0.0", "main": "p.py",
        "dependencies": {"optional": ["ui@^1"]}, "hooks": {"onRequest": 10}});
    let b = Daemon::builder()
        .plugin("py-probe")
        .plugin_files("ui-user", &[("plugin.json", &manifest.to_string()), ("p.py", UI_USER)]);
    if !listen {
        return (b.start().await, Via::Socket);
    }
    std::fs::write(b.path().join("token"), format!("{TOKEN}\n")).unwrap();
    // A port of its own, fixed so that a restarted plugind listens on it again.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let d = b.arg("--listen").arg(&addr).arg("--token-file").arg("token").start().await;
    (d, Via::Url(format!("http://{addr}")))
}

/// A host on `d`, reconnecting.
async fn host(d: &Daemon, via: &Via) -> Client {
    let connect = match via {
        Via::Socket => Client::builder().socket(&d.socket),
        Via::Url(url) => Client::builder().url(url.clone()).token(TOKEN),
    };
    connect.connect().await.expect("the host connects")
}

/// `pluginctl ARGS` on `d` the way `via` says.
fn ctl(d: &Daemon, via: &Via, args: &[&str]) -> std::process::Output {
    match via {
        Via::Socket => d.ctl(args),
        Via::Url(url) => std::process::Command::new(pluginctl())
            .current_dir(d.dir.path())
            .args(["--url", url, "--token-file", "token"])
            .args(args)
            .output()
            .expect("pluginctl runs"),
    }
}

/// The `ui` service: answers `registerTheme` with `{ registered: NAME }` and records who called.
fn ui(callers: Arc<Mutex<Vec<Caller>>>) -> Handlers {
    Handlers::new().on("registerTheme", move |params: Value, caller: Caller| {
        callers.lock().unwrap().push(caller);
        async move { Ok(json!({ "registered": params["name"] })) }
    })
}

both_ways!(
    executes_and_gets_typed_errors,
    rust_host_executes_and_gets_typed_errors,
    rust_host_over_url_executes_and_gets_typed_errors
);

async fn executes_and_gets_typed_errors(listen: bool) {
    let (d, via) = daemon(listen).await;
    let h = host(&d, &via).await;
    let r = h.execute("py-probe", "echo", json!({"a": 1}), CallOptions::new()).await.unwrap();
    assert_eq!(r, json!({"a": 1}));
    // A plugin's own error passes through with its code.
    let e = h.execute("py-probe", "fail", json!({"code": 42, "message": "no"}), CallOptions::new()).await.unwrap_err();
    assert_eq!((e.code(), e.to_string().as_str()), (42, "no"));
    // The call's own deadline: -32001 with data.timeout_ms.
    let t = Instant::now();
    let e = h.execute("py-probe", "sleep", json!({"ms": 5000}), CallOptions::new().timeout_ms(200)).await.unwrap_err();
    assert_eq!(e.code(), -32001, "{e:?}");
    assert_eq!(e.data().unwrap()["timeout_ms"], 200);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Unknown plugins, and calls running concurrently on one connection.
    assert_eq!(h.execute("nope", "x", json!({}), CallOptions::new()).await.unwrap_err().code(), -32004);
    let (a, b) = tokio::join!(
        h.execute("py-probe", "sleep", json!({"ms": 300}), CallOptions::new()),
        h.execute("py-probe", "echo", json!({"b": 2}), CallOptions::new()),
    );
    assert_eq!((a.unwrap()["slept"].clone(), b.unwrap()), (json!(300), json!({"b": 2})));
}

both_ways!(
    provides_a_service_a_plugin_calls_and_sees_the_caller,
    rust_host_provides_a_service_a_plugin_calls_and_sees_the_caller,
    rust_host_over_url_provides_a_service_a_plugin_calls_and_sees_the_caller
);

async fn provides_a_service_a_plugin_calls_and_sees_the_caller(listen: bool) {
    let (d, via) = daemon(listen).await;
    let h = host(&d, &via).await;
    let callers = Arc::new(Mutex::new(Vec::new()));
    h.provide("ui", "1.0.0", ui(callers.clone())).await.unwrap();
    let r = h.execute("ui-user", "use_ui", json!({}), CallOptions::new()).await.unwrap();
    assert_eq!(r, json!({"registered": "midnight"}));
    let seen = callers.lock().unwrap().clone();
    assert_eq!(seen, [Caller { plugin: Some("ui-user".into()), service: Some("ui".into()) }]);
    // Hosts reach it through the registry too; an unknown method is -32601.
    let r = h.call_service("ui", "registerTheme", json!({"name": "day"}), CallOptions::new().version("^1")).await;
    assert_eq!(r.unwrap(), json!({"registered": "day"}));
    let e = h.call_service("ui", "nope", json!({}), CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code(), -32601, "{e:?}");
}

both_ways!(runs_hooks, rust_host_runs_hooks, rust_host_over_url_runs_hooks);

async fn runs_hooks(listen: bool) {
    let (d, via) = daemon(listen).await;
    let h = host(&d, &via).await;
    let r = h.run_hook("onRequest", json!({"q": 1}), CallOptions::new()).await.unwrap();
    assert_eq!(r["payload"], json!({"q": 1, "seen_by": "ui-user"}));
    assert_eq!(r["handled_by"], json!(["ui-user"]));
}

both_ways!(sees_events, rust_host_sees_events, rust_host_over_url_sees_events);

async fn sees_events(listen: bool) {
    let (d, via) = daemon(listen).await;
    let h = host(&d, &via).await;
    let mut events = h.events().await.unwrap();
    // A hard restart: stopped, then starting and running again (a graceful one stays running).
    h.call("plugins.restart", &json!({"name": "py-probe", "hard": true})).await.unwrap();
    let ev = tokio::time::timeout(TIMEOUT, async {
        loop {
            let ev = events.next().await.expect("events keep coming");
            if ev["plugin"] == "py-probe" && ev["state"] == "running" {
                return ev;
            }
        }
    })
    .await
    .expect("an event for the restart");
    assert_eq!(ev["kind"], "state", "{ev}");
}

both_ways!(
    dropping_a_call_cancels_it_in_the_plugin,
    rust_host_dropping_a_call_cancels_it_in_the_plugin,
    rust_host_over_url_dropping_a_call_cancels_it_in_the_plugin
);

async fn dropping_a_call_cancels_it_in_the_plugin(listen: bool) {
    // Needs plugind to take a host's `$/cancel` for its own request (answered -32800, the
    // plugin told with `$/cancel`).
    let (d, via) = daemon(listen).await;
    let h = host(&d, &via).await;
    let call = h.execute("py-probe", "sleep", json!({"ms": 15000}), CallOptions::new().timeout_ms(20000));
    let gave_up = tokio::time::timeout(Duration::from_millis(500), call).await;
    assert!(gave_up.is_err(), "the call was still in flight when dropped");
    let t = Instant::now();
    wait_for("the plugin to get $/cancel", async || {
        let tail = d.status("py-probe").await["stderr_tail"].clone();
        tail.as_array()?.iter().any(|l| l.as_str().is_some_and(|l| l.starts_with("cancelled"))).then_some(())
    })
    .await;
    assert!(t.elapsed() < Duration::from_secs(3), "cancelled {:?} after the drop", t.elapsed());
    // The connection goes on serving.
    assert_eq!(h.execute("py-probe", "echo", json!(1), CallOptions::new()).await.unwrap(), json!(1));
}

both_ways!(
    progress_reaches_the_callback,
    rust_host_progress_reaches_the_callback,
    rust_host_over_url_progress_reaches_the_callback
);

async fn progress_reaches_the_callback(listen: bool) {
    // Needs plugind to forward a plugin's `$/progress` to the host with the host's request id.
    let (d, via) = daemon(listen).await;
    let h = host(&d, &via).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let opts = CallOptions::new().on_progress(move |p: Progress| sink.lock().unwrap().push(p));
    let r = h.execute("ui-user", "progress", json!({}), opts).await.unwrap();
    assert_eq!(r, json!({"done": true}));
    let seen = seen.lock().unwrap().clone();
    let steps: Vec<_> = seen.iter().map(|p| (p.message.clone().unwrap_or_default(), p.progress, p.total)).collect();
    assert_eq!(
        steps,
        [
            ("step 1".into(), Some(1.0), Some(3.0)),
            ("step 2".into(), Some(2.0), Some(3.0)),
            ("step 3".into(), Some(3.0), Some(3.0))
        ]
    );
    // pluginctl, on the same library, prints them on stderr as they come.
    let out = ctl(&d, &via, &["call", "ui-user", "progress"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("progress: step 1 (1/3)\nprogress: step 2 (2/3)\nprogress: step 3 (3/3)"), "{err}");
}

both_ways!(
    calls_in_flight_at_a_break_fail_at_once,
    rust_host_calls_in_flight_at_a_break_fail_at_once,
    rust_host_over_url_calls_in_flight_at_a_break_fail_at_once
);

async fn calls_in_flight_at_a_break_fail_at_once(listen: bool) {
    let (d, via) = daemon(listen).await;
    let h = Arc::new(host(&d, &via).await);
    let h2 = h.clone();
    let call = tokio::spawn(async move {
        h2.execute("py-probe", "sleep", json!({"ms": 15000}), CallOptions::new().timeout_ms(20000)).await
    });
    wait_for("the call in flight", async || (d.status("py-probe").await["calls"]["total"] == 1).then_some(())).await;
    d.signal(libc::SIGKILL);
    let t = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), call).await.expect("the call ends").unwrap();
    assert!(matches!(r, Err(ClientError::ConnectionLost)), "{r:?}");
    assert_eq!(r.unwrap_err().code(), CONNECTION_LOST);
    assert!(t.elapsed() < Duration::from_secs(1), "failed {:?} after the break", t.elapsed());
    // While plugind is gone, calls fail at once with the same error.
    let t = Instant::now();
    let e = h.execute("py-probe", "echo", json!({}), CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code(), CONNECTION_LOST);
    assert!(t.elapsed() < Duration::from_millis(500));
}

both_ways!(
    reconnects_after_plugind_restarts_and_provides_again,
    rust_host_reconnects_after_plugind_restarts_and_provides_again,
    rust_host_over_url_reconnects_after_plugind_restarts_and_provides_again
);

async fn reconnects_after_plugind_restarts_and_provides_again(listen: bool) {
    let (mut d, via) = daemon(listen).await;
    let h = host(&d, &via).await;
    let callers = Arc::new(Mutex::new(Vec::new()));
    h.provide("ui", "1.0.0", ui(callers.clone())).await.unwrap();
    let mut events = h.events().await.unwrap();
    assert_eq!(h.execute("ui-user", "use_ui", json!({}), CallOptions::new()).await.unwrap()["registered"], "midnight");

    d.restart().await; // SIGTERM, exit 0, a new plugind on the same socket and state dir
    let t = Instant::now();
    // No action from the host: within 10 s a plugin reaches the host's service again.
    loop {
        match h.execute("ui-user", "use_ui", json!({}), CallOptions::new()).await {
            Ok(r) => {
                assert_eq!(r, json!({"registered": "midnight"}));
                break;
            }
            Err(e) => assert!(t.elapsed() < Duration::from_secs(10), "not back after 10 s: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(callers.lock().unwrap().len(), 2);
    // The event stream resumed on the new connection.
    // A hard restart: stopped, then starting and running again (a graceful one stays running).
    h.call("plugins.restart", &json!({"name": "py-probe", "hard": true})).await.unwrap();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(ev) = events.next().await {
            if ev["plugin"] == "py-probe" {
                return;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("an event after the reconnect");
}
