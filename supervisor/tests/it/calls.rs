//! The call path: results, plugin errors, deadlines and `$/cancel`, overload, stray stdout.

use crate::support::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn echo_through_perl_and_python_plugins() {
    let d = Daemon::builder().plugin("perl-echo").plugin("py-probe").start().await;
    for p in ["perl-echo", "py-probe"] {
        let r = d.execute(p, "echo", json!({"x": [1, "two", null]})).await.unwrap();
        assert_eq!(r, json!({"x": [1, "two", null]}), "{p}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_error_reaches_the_caller_unchanged() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let r = d.execute("perl-echo", "fail", json!({"code": 4242, "message": "nope"})).await;
    assert_eq!(code(&r), 4242);
    let Err(plugind_client::ClientError::Rpc(e)) = r else { unreachable!() };
    assert_eq!(e.message, "nope");
}

#[tokio::test(flavor = "multi_thread")]
async fn deadline_answers_32001_at_once_and_plugin_gets_cancel() {
    let d = Daemon::builder().plugin("py-probe").start().await;
    let started = Instant::now();
    let r = d
        .call("execute", json!({"plugin": "py-probe", "method": "sleep", "params": {"ms": 5000}, "timeout_ms": 300}))
        .await;
    let took = started.elapsed();
    assert_eq!(code(&r), -32001);
    assert_eq!(data(&r)["timeout_ms"], 300);
    assert_eq!(data(&r)["plugin"], "py-probe");
    assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(1500), "{took:?}");
    // The plugin was told: it logs the cancelled id on stderr.
    wait_stderr(&d, "py-probe", "cancelled").await;
    // And it still serves.
    assert_eq!(d.execute("py-probe", "echo", json!(1)).await.unwrap(), json!(1));
    let s = d.status("py-probe").await;
    assert_eq!(s["calls"]["timed_out"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_timeout_is_the_default_deadline() {
    let d = Daemon::builder().plugin("py-probe").manifest("py-probe", |m| m["timeout_ms"] = json!(1000)).start().await;
    d.wait_state("py-probe", "running").await;
    let r = d.execute("py-probe", "sleep", json!({"ms": 4000})).await;
    assert_eq!(code(&r), -32001);
    assert_eq!(data(&r)["timeout_ms"], 1000);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_calls_in_flight_on_one_plugin() {
    let d = Daemon::builder().plugin("py-probe").start().await;
    let started = Instant::now();
    let calls = (0..20).map(|i| {
        let d = &d;
        async move { d.execute("py-probe", "sleep", json!({"ms": 300 + i})).await }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // Concurrent, not one after another (20 × 300 ms would be 6 s).
    assert!(started.elapsed() < Duration::from_millis(3000), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_beyond_max_inflight_and_queue_is_32006() {
    let d = Daemon::builder()
        .plugin("py-probe")
        .manifest("py-probe", |m| m["limits"] = json!({"max_inflight": 1, "max_queue": 1}))
        .start()
        .await;
    let slow = |ms| d.execute("py-probe", "sleep", json!({"ms": ms}));
    let (a, b, c) = tokio::join!(
        slow(800),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            slow(10).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            slow(10).await
        }
    );
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    assert_eq!(code(&c), -32006);
    assert_eq!(data(&c)["plugin"], "py-probe");
}

#[tokio::test(flavor = "multi_thread")]
async fn stray_stdout_is_skipped_and_calls_go_on() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    assert_eq!(d.execute("perl-echo", "garbage", json!({})).await.unwrap(), json!({"ok": true}));
    assert_eq!(d.execute("perl-echo", "echo", json!("after")).await.unwrap(), json!("after"));
    wait_for("the non-JSON warning", async || d.log().contains("non-JSON line on stdout skipped").then_some(())).await;
    assert!(d.log().contains("write logs to stderr"));
    assert_eq!(d.status("perl-echo").await["restarts"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_plugin_is_32004_and_stopped_plugin_is_32002_at_once() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    assert_eq!(code(&d.execute("nope", "echo", json!({})).await), -32004);
    d.call("plugins.stop", json!({"name": "perl-echo"})).await.unwrap();
    let started = Instant::now();
    let r = d.execute("perl-echo", "echo", json!({})).await;
    assert_eq!(code(&r), -32002);
    assert_eq!(data(&r)["state"], "stopped");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread")]
async fn plugin_environment_is_cleared() {
    let d = Daemon::builder()
        .plugin("py-probe")
        .manifest("py-probe", |m| m["env"] = json!({"GIVEN": "yes"}))
        .env("PLUGIND_TEST_SECRET_TOKEN", "hunter2")
        .env("NOTIFY_SOCKET", "/run/nothing")
        .start()
        .await;
    let get = async |name: &str| d.execute("py-probe", "env", json!({"name": name})).await.unwrap()["value"].clone();
    assert_eq!(get("PLUGIND_TEST_SECRET_TOKEN").await, json!(null));
    assert_eq!(get("NOTIFY_SOCKET").await, json!(null));
    assert_eq!(get("GIVEN").await, json!("yes"));
    assert_eq!(get("PLUGIND_PLUGIN").await, json!("py-probe"));
    let tmp = get("TMPDIR").await;
    assert!(tmp.as_str().unwrap().contains("py-probe"), "{tmp}");
}

/// Runs every call on a thread of its own, ignores `$/cancel`, and counts the `sleep` calls it
/// has at once; `hang` is never answered.
const STUBBORN: &str = r#"import json, sys, threading, time
lock, out = threading.Lock(), threading.Lock()
busy = most = 0
def send(m):
    with out:
        sys.stdout.write(json.dumps(m) + "\n")
        sys.stdout.flush()
def work(m):
    global busy, most
    method, args = m["params"]["method"], m["params"].get("params") or {}
    if method == "sleep":
        with lock:
            busy += 1
            most = max(most, busy)
        time.sleep(args["ms"] / 1000)
        with lock:
            busy -= 1
        send({"jsonrpc": "2.0", "id": m["id"], "result": "slept"})
    elif method == "most":
        send({"jsonrpc": "2.0", "id": m["id"], "result": most})
    elif method == "echo":
        send({"jsonrpc": "2.0", "id": m["id"], "result": args})
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    if m["method"] == "execute":
        threading.Thread(target=work, args=(m,), daemon=True).start()
    else:
        send({"jsonrpc": "2.0", "id": m["id"], "result": None if m["method"] == "teardown" else {}})
"#;

/// A call given up on keeps its `max_inflight` slot while the plugin may still be running it:
/// until its late answer, or for as long again as it was allowed (at least the plugin's own
/// `timeout_ms`). Queued calls whose deadlines
/// fall a few milliseconds apart used to be sent one by one as each one before them was given
/// up on, each with moments to live: a plugin that ignores `$/cancel` got 65 calls at once with
/// `max_inflight` 2 and crashed (audit 20). Here it never has more than its 2.
#[tokio::test(flavor = "multi_thread")]
async fn calls_given_up_on_keep_their_slots_until_answered() {
    let manifest = json!({"name": "stubborn", "version": "1.0.0", "main": "s.py",
        "limits": {"max_inflight": 2}, "timeout_ms": 300});
    let d = Daemon::builder()
        .plugin_files("stubborn", &[("plugin.json", &manifest.to_string()), ("s.py", STUBBORN)])
        .start()
        .await;
    // 30 sleeps of 500 ms, their deadlines `timeout_ms(i)` apart; each ends -32001, and then
    // the plugin tells how many it had at once.
    let most_at_once = async |timeout_ms: fn(u64) -> u64| {
        let calls = (0..30u64).map(|i| {
            let params =
                json!({"plugin": "stubborn", "method": "sleep", "params": {"ms": 500}, "timeout_ms": timeout_ms(i)});
            d.call("execute", params)
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(|r| code(r) == -32001), "{results:?}");
        d.call("execute", json!({"plugin": "stubborn", "method": "most", "timeout_ms": 5000})).await.unwrap()
    };
    assert_eq!(most_at_once(|i| 300 + 3 * i).await, json!(2), "more calls at once than its max_inflight");
    // A caller's tiny timeout does not shorten the keep: at least the plugin's own timeout_ms
    // (audit 20, second round: with `timeout_ms: 1` slots came free at once, 88 calls at once).
    assert_eq!(most_at_once(|i| 1 + 2 * i).await, json!(2), "tiny timeouts: more calls at once than max_inflight");
    // A call never answered (as the contract allows after `$/cancel`) frees its slot after the
    // plugin's grace to stop (here its timeout_ms, 300 ms, under the 1 s of CANCEL_GRACE), not
    // after the caller's own long timeout (audit 20, third round: a caller that went away with
    // a 600 s timeout took a slot for a minute).
    let hang = || d.call("execute", json!({"plugin": "stubborn", "method": "hang", "timeout_ms": 1500}));
    let (a, b) = tokio::join!(hang(), hang());
    assert!(code(&a) == -32001 && code(&b) == -32001, "{a:?} {b:?}");
    let r = d.call("execute", json!({"plugin": "stubborn", "method": "echo", "params": [1], "timeout_ms": 1000})).await;
    assert_eq!(r.unwrap(), json!([1]));
    assert_eq!(d.status("stubborn").await["state"], "running");
}
