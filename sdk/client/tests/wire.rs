//! What the library puts on the wire, against a scripted plugind on a socket in a temp dir:
//! `$/cancel` when a call's future is dropped, `$/progress` routed to its call, provided services
//! served and registered again after a reconnect, plugind's `$/cancel` dropping a handler.

#![allow(clippy::unwrap_used)]

use plugind_client::{CallOptions, Caller, Client, Handlers};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixListener;

/// The scripted side of one connection.
struct Plugind {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Plugind {
    async fn accept(listener: &UnixListener) -> Plugind {
        let (s, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
        let (read, write) = s.into_split();
        Plugind { lines: BufReader::new(read).lines(), write }
    }

    async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line()).await.unwrap().unwrap();
        serde_json::from_str(&line.expect("the client keeps the connection open")).unwrap()
    }

    async fn send(&mut self, v: Value) {
        self.write.write_all(format!("{v}\n").as_bytes()).await.unwrap();
    }
}

fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plugind.sock");
    let l = UnixListener::bind(&path).unwrap();
    (dir, path, l)
}

#[tokio::test]
async fn dropping_a_call_sends_cancel_with_its_id() {
    let (_dir, path, l) = listener();
    let client = Client::connect(&path).await.unwrap();
    let mut p = Plugind::accept(&l).await;
    let call = client.execute("slow", "work", json!({}), CallOptions::new().timeout_ms(9000));
    let (gave_up, req) = tokio::join!(tokio::time::timeout(Duration::from_millis(200), call), p.recv());
    assert!(gave_up.is_err());
    assert_eq!(req["method"], "execute");
    assert_eq!(req["params"], json!({"plugin": "slow", "method": "work", "params": {}, "timeout_ms": 9000}));
    assert_eq!(p.recv().await, json!({"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": req["id"]}}));
    // plugind's late -32800 answer is ignored; the next call works.
    p.send(json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32800, "message": "request cancelled"}})).await;
    let no_params = json!({});
    let (r, req) = tokio::join!(client.call("plugins.list", &no_params), async {
        let req = p.recv().await;
        p.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": []})).await;
        req
    });
    assert_eq!((r.unwrap(), req["method"].clone()), (json!([]), json!("plugins.list")));
}

#[tokio::test]
async fn progress_reaches_the_callback_of_its_call() {
    let (_dir, path, l) = listener();
    let client = Client::connect(&path).await.unwrap();
    let mut p = Plugind::accept(&l).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let opts = CallOptions::new().on_progress(move |pr| sink.lock().unwrap().push(pr));
    let (r, ()) = tokio::join!(client.execute("p", "m", json!(null), opts), async {
        let req = p.recv().await;
        let id = req["id"].clone();
        p.send(json!({"jsonrpc": "2.0", "method": "$/progress", "params": {"id": 999, "message": "not ours"}})).await;
        p.send(json!({"jsonrpc": "2.0", "method": "$/progress", "params": {"id": id, "message": "half", "progress": 1, "total": 2}}))
            .await;
        p.send(json!({"jsonrpc": "2.0", "id": id, "result": "done"})).await;
    });
    assert_eq!(r.unwrap(), json!("done"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].message.as_deref(), seen[0].progress, seen[0].total), (Some("half"), Some(1.0), Some(2.0)));
}

#[tokio::test]
async fn a_provided_service_is_served_and_registered_again_after_a_reconnect() {
    let (_dir, path, l) = listener();
    let client = Client::builder().socket(&path).connect().await.unwrap();
    let mut p = Plugind::accept(&l).await;
    let callers = Arc::new(Mutex::new(Vec::new()));
    let seen = callers.clone();
    let ui = Handlers::new().on("registerTheme", move |params: Value, caller: Caller| {
        seen.lock().unwrap().push(caller);
        async move { Ok(json!({ "registered": params["name"] })) }
    });
    let (r, ()) = tokio::join!(client.provide("ui", "1.0.0", ui), async {
        let req = p.recv().await;
        assert_eq!(req["method"], "services.register");
        assert_eq!(req["params"], json!({"name": "ui", "version": "1.0.0", "methods": ["registerTheme"]}));
        p.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": null})).await;
    });
    r.unwrap();
    p.send(json!({"jsonrpc": "2.0", "id": 7, "method": "execute",
        "params": {"method": "registerTheme", "params": {"name": "midnight"}, "service": "ui", "caller": "theme"}}))
        .await;
    assert_eq!(p.recv().await, json!({"jsonrpc": "2.0", "id": 7, "result": {"registered": "midnight"}}));
    p.send(json!({"jsonrpc": "2.0", "id": 8, "method": "execute", "params": {"method": "nope", "service": "ui"}}))
        .await;
    assert_eq!(p.recv().await["error"]["code"], -32601);
    assert_eq!(callers.lock().unwrap().clone(), [Caller { plugin: Some("theme".into()), service: Some("ui".into()) }]);

    // plugind goes away and comes back: the library registers `ui` again by itself.
    drop(p);
    let mut p = Plugind::accept(&l).await;
    let req = p.recv().await;
    assert_eq!(req["method"], "services.register");
    assert_eq!(req["params"]["name"], "ui");
}

#[tokio::test]
async fn plugind_cancel_drops_the_handler() {
    let (_dir, path, l) = listener();
    let client = Client::connect(&path).await.unwrap();
    let mut p = Plugind::accept(&l).await;
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let slow = Handlers::new().on("wait", move |_: Value, _: Caller| {
        let guard = dropped_tx.lock().unwrap().take();
        async move {
            let _guard = guard; // dropped (closing the channel) when the future is
            std::future::pending::<()>().await;
            Ok(Value::Null)
        }
    });
    let (r, ()) = tokio::join!(client.provide("svc", "1.0.0", slow), async {
        let req = p.recv().await;
        p.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": null})).await;
    });
    r.unwrap();
    p.send(json!({"jsonrpc": "2.0", "id": 3, "method": "execute", "params": {"method": "wait", "service": "svc"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.send(json!({"jsonrpc": "2.0", "method": "$/cancel", "params": {"id": 3}})).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), dropped).await.expect("the handler is dropped");
    assert!(closed.is_err(), "the handler's future was dropped, not completed");
}

/// An answer longer than the client takes (64 MiB) ends the one call waiting, saying so, and
/// the connection serves on: it is not a lost connection.
#[tokio::test]
async fn an_answer_over_the_line_limit_ends_its_call_and_the_connection_serves_on() {
    let (_dir, path, l) = listener();
    let client = Client::connect(&path).await.unwrap();
    let mut p = Plugind::accept(&l).await;
    let no_params = json!({});
    let (r, ()) = tokio::join!(client.call("metrics.get", &no_params), async {
        let req = p.recv().await;
        let huge = format!("{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":\"{}\"}}\n", req["id"], "m".repeat(65 << 20));
        p.write.write_all(huge.as_bytes()).await.unwrap();
    });
    let e = r.unwrap_err();
    assert!(e.to_string().contains("plugind's answer was over 64 MiB"), "{e}");
    let (r, ()) = tokio::join!(client.call("plugins.list", &no_params), async {
        let req = p.recv().await;
        p.send(json!({"jsonrpc": "2.0", "id": req["id"], "result": []})).await;
    });
    assert_eq!(r.unwrap(), json!([]));
}
