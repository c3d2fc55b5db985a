//! What a plugin can make plugind hold is bounded: `instances`, `log` messages and fields,
//! the log rate, `$/progress` messages, metric series and kinds. Each over-cap is one warning.

use crate::support::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `plugin`'s lines in `logs.tail`.
async fn log_lines(d: &Daemon, plugin: &str) -> Vec<Value> {
    let r = d.call("logs.tail", json!({"plugin": plugin, "lines": 5000})).await.unwrap();
    r["lines"].as_array().unwrap().clone()
}

/// plugind's warnings in `plugin`'s log that contain `text`.
async fn warnings(d: &Daemon, plugin: &str, text: &str) -> usize {
    let lines = log_lines(d, plugin).await;
    lines.iter().filter(|l| l["stream"] == "plugind" && l["message"].as_str().unwrap().contains(text)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_instances_over_64_are_a_load_error_also_on_a_rescan() {
    let d = Daemon::builder()
        .plugin_as("perl-echo", "many")
        .manifest("many", |m| m["instances"] = json!(2_000_000_000u64))
        .plugin("perl-echo")
        .start()
        .await;
    let s = d.status("many").await;
    assert_eq!(s["state"], "invalid", "{s}");
    let e = s["last_error"].as_str().unwrap();
    assert!(e.contains("many/plugin.json") && e.contains("/instances") && e.contains("1 to 64"), "{e}");
    assert_eq!(code(&d.call("plugins.start", json!({"name": "many"})).await), -32007);

    // A running plugin's manifest turns greedy and plugind rescans: plugind lives on.
    let path = d.plugins.join("perl-echo/plugin.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["instances"] = json!(2_000_000_000u64);
    std::fs::write(&path, m.to_string()).unwrap();
    let r = d.call("plugins.reload", json!({})).await.unwrap();
    assert!(r["errors"].to_string().contains("/instances"), "{r}");
    assert_eq!(d.call("supervisor.status", json!({})).await.unwrap()["pid"], d.pid());
    let s = d.status("perl-echo").await;
    assert!(s["instances"].as_u64().unwrap() <= 1, "{s}");
    // 64 is allowed.
    m["instances"] = json!(64);
    std::fs::write(&path, m.to_string()).unwrap();
    d.call("plugins.reload", json!({})).await.unwrap();
    assert_ne!(d.status("perl-echo").await["state"], "invalid");
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_huge_log_notifications_keep_plugind_small_and_are_truncated() {
    let d = Daemon::builder().plugin_as("py-greedy", "loud").start().await;
    let before = rss_kb(d.pid());
    // 60 notifications of 4 MiB: 240 MiB through plugind's stdout reader.
    let r = d.execute("loud", "log", json!({"n": 60, "bytes": 4 << 20})).await.unwrap();
    assert_eq!(r["sent"], 60);
    let after = rss_kb(d.pid());
    assert!(after < before + 64 * 1024, "plugind grew from {before} KiB to {after} KiB");
    let lines = log_lines(&d, "loud").await;
    let kept: Vec<&Value> = lines.iter().filter(|l| l["stream"] == "log").collect();
    assert!(!kept.is_empty(), "{lines:?}");
    for l in &kept {
        let m = l["message"].as_str().unwrap();
        assert!(m.len() <= 64 * 1024 && m.ends_with(&format!("[truncated: {} bytes in all]", 4 << 20)), "{}", m.len());
    }
    assert_eq!(warnings(&d, "loud", "was cut to 65536 bytes").await, 1, "one warning for 60 cuts");
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_log_fields_are_kept_up_to_their_cap() {
    let d = Daemon::builder().plugin_as("py-greedy", "tidy").start().await;
    let fields = json!({"user": "ana", "attempt": 3, "tags": ["a", "b"]});
    d.execute("tidy", "log", json!({"n": 1, "bytes": 5, "fields": fields})).await.unwrap();
    let big = json!({"blob": "z".repeat(20_000)});
    d.execute("tidy", "log", json!({"n": 2, "bytes": 6, "fields": big})).await.unwrap();
    let lines = log_lines(&d, "tidy").await;
    let logged: Vec<&Value> = lines.iter().filter(|l| l["stream"] == "log").collect();
    assert_eq!(logged.len(), 3, "{lines:?}");
    assert_eq!((&logged[0]["message"], &logged[0]["fields"]), (&json!("xxxxx"), &fields));
    assert!(logged[1].get("fields").is_none() && logged[1]["message"] == "xxxxxx", "{:?}", logged[1]);
    assert_eq!(warnings(&d, "tidy", "`log` fields over 16384 bytes").await, 1);
    // plugind's own log line carries them as one field.
    let daemon_log = d.log();
    assert!(daemon_log.lines().any(|l| l.contains(r#"stream="log""#) && l.contains(r#""attempt":3"#)), "{daemon_log}");
    // pluginctl logs --json carries them too.
    let out = d.ctl(&["--json", "logs", "tidy"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"attempt\":3"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_log_notifications_are_rate_limited_like_stderr() {
    let d = Daemon::builder().plugin_as("py-greedy", "chatty").arg("--log-lines").arg("10000").start().await;
    d.execute("chatty", "log", json!({"n": 5000, "bytes": 10})).await.unwrap();
    let logged = log_lines(&d, "chatty").await.iter().filter(|l| l["stream"] == "log").count();
    // A burst of 1000 passes, then 200 a second: far fewer than 5000 in the time this takes.
    assert!((1000..4000).contains(&logged), "{logged} of 5000 kept");
    // The drops are reported once the rate allows a line again.
    d.execute("chatty", "log", json!({"n": 1, "bytes": 1})).await.unwrap();
    wait_for("the drop report", async || {
        (warnings(&d, "chatty", "`log` notifications dropped").await > 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_progress_messages_are_cut_with_one_warning() {
    let d = Daemon::builder().plugin_as("py-greedy", "busy").start().await;
    for _ in 0..3 {
        d.execute("busy", "progress", json!({"bytes": 100_000})).await.unwrap();
    }
    assert_eq!(warnings(&d, "busy", "`$/progress` message was cut to 1024 bytes").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_a_plugin_keeps_at_most_1000_metric_series() {
    let d = Daemon::builder().plugin_as("py-greedy", "counter").start().await;
    d.execute("counter", "emit", json!({"name": "greedy_series", "kind": "gauge", "n": 5000})).await.unwrap();
    let text = d.call("metrics.get", json!({})).await.unwrap()["text"].as_str().unwrap().to_owned();
    let series = text.lines().filter(|l| l.starts_with("greedy_series{")).count();
    assert_eq!(series, 1000, "{}", &text[..text.len().min(2000)]);
    assert!(text.lines().filter(|l| l.starts_with("greedy_series{")).all(|l| l.contains("plugin=\"counter\"")));
    assert_eq!(warnings(&d, "counter", "already has 1000 metric series").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_the_first_kind_of_a_metric_name_wins() {
    let d = Daemon::builder().plugin_as("py-greedy", "first").plugin_as("py-greedy", "second").start().await;
    d.execute("first", "emit", json!({"name": "shared_jobs", "kind": "counter", "n": 1, "value": 2})).await.unwrap();
    d.execute("second", "emit", json!({"name": "shared_jobs", "kind": "gauge", "n": 3, "value": 5})).await.unwrap();
    let text = d.call("metrics.get", json!({})).await.unwrap()["text"].as_str().unwrap().to_owned();
    assert!(text.contains("# TYPE shared_jobs counter"), "{text}");
    assert!(text.contains(r#"shared_jobs{i="0",plugin="first"} 2"#), "{text}");
    let theirs = text.lines().filter(|l| l.starts_with("shared_jobs") && l.contains(r#"plugin="second""#)).count();
    assert_eq!(theirs, 0, "{text}");
    assert_eq!(warnings(&d, "second", "first registered as a Counter").await, 1);
    assert_eq!(warnings(&d, "first", "metrics.emit").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_init_config_is_an_object_when_unset() {
    let d = Daemon::builder()
        .plugin_as("py-greedy", "bare")
        .plugin_as("py-greedy", "set")
        .manifest("set", |m| m["config"] = json!({"k": 1}))
        .start()
        .await;
    assert_eq!(d.execute("bare", "init_params", json!({})).await.unwrap()["config"], json!({}));
    assert_eq!(d.execute("set", "init_params", json!({})).await.unwrap()["config"], json!({"k": 1}));
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_register_lists_are_cut_with_one_warning() {
    // 100 services, each with 300 methods: 64 services are looked at, 256 methods each kept.
    let d = Daemon::builder()
        .plugin_as("py-greedy", "lister")
        .manifest("lister", |m| m["env"] = json!({"REGISTER_MANY": r#"{"n": 100, "methods": 300}"#}))
        .start()
        .await;
    let listed = d.call("services.list", json!({})).await.unwrap();
    let own = listed.as_array().unwrap().iter().find(|s| s["name"] == "lister").unwrap();
    assert_eq!(own["methods"].as_array().unwrap().len(), 256, "{own}");
    let s = d.status("lister").await;
    assert_eq!(s["refused_services"].as_array().unwrap().len(), 63, "undeclared ones among the first 64");
    assert_eq!(warnings(&d, "lister", "register: lists cut to 64 services").await, 1);
}

/// A client that sends requests and never reads its answers is not read from either once its
/// answers back up: its requests wait in its own socket, plugind's memory stays put (it used to
/// grow by gigabytes, a future and an answer per request), other clients are served, and once
/// it reads, every request it managed to send is answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_its_answers_is_not_read_from() {
    use std::io::{BufRead as _, Write as _};
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let before = rss_kb(d.pid());
    let socket = d.socket.clone();
    let (written, stream) = tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let request =
            br#"{"jsonrpc":"2.0","id":1,"method":"plugins.list"}"#.iter().chain(b"\n").copied().collect::<Vec<u8>>();
        let mut written = 0usize;
        // Up to 20 MB of requests, or until plugind stops taking them (the write times out).
        while written < 20 << 20 {
            match s.write(&request) {
                Ok(n) => written += n,
                Err(_) => break,
            }
        }
        (written, s)
    })
    .await
    .unwrap();
    let grown = rss_kb(d.pid()).saturating_sub(before);
    assert!(written < 20 << 20, "plugind kept reading a client that reads nothing ({written} bytes)");
    assert!(grown < 200 * 1024, "plugind grew by {grown} KiB for a client that reads nothing");
    assert_eq!(d.execute("perl-echo", "echo", json!(1)).await.unwrap(), json!(1), "others are served");
    // Once it reads, it gets an answer to every whole request it sent (and an error for the
    // part of one the write cut, if it cut one).
    let (requests, cut) = (written / 49, written % 49 != 0);
    let (answered, errors) = tokio::task::spawn_blocking(move || {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let (mut answered, mut errors) = (0, 0);
        for line in std::io::BufReader::new(&stream).lines() {
            if line.unwrap().contains("\"result\"") {
                answered += 1;
            } else {
                errors += 1;
            }
        }
        (answered, errors)
    })
    .await
    .unwrap();
    assert_eq!((answered, errors), (requests, usize::from(cut)));
}

/// A client's calls to a plugin that reads nothing hold at most 256 MiB of requests: past
/// that, a new request is answered `-32006` at once, and the client is still read (600 calls
/// of 1 MiB were all held until their deadlines).
#[tokio::test(flavor = "multi_thread")]
async fn a_clients_calls_to_a_plugin_that_reads_nothing_hold_at_most_256_mib() {
    use std::io::{BufRead as _, Write as _};
    let d = Daemon::builder()
        .plugin_as("hostile", "sink")
        .manifest("sink", |m| {
            m["config"] = json!({"deaf": true});
            m["timeout_ms"] = json!(60_000);
        })
        .start()
        .await;
    let before = rss_kb(d.pid());
    let socket = d.socket.clone();
    let (why, peak) = peak_rss_during(d.pid(), async {
        tokio::task::spawn_blocking(move || {
            let s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            let mut w = s.try_clone().unwrap();
            // Until the connection is shut down below.
            let writer = std::thread::spawn(move || {
                let blob = "x".repeat(1 << 20);
                for id in 0..600 {
                    let r = json!({"jsonrpc": "2.0", "id": id, "method": "execute", "params": {"plugin": "sink", "method": "m", "params": {"blob": blob}}});
                    if w.write_all(format!("{r}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
            // The first answers are refusals: every call admitted waits for the sink.
            let mut refusals = vec![];
            for line in std::io::BufReader::new(&s).lines().take(20) {
                let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
                assert_eq!(v["error"]["code"], -32006, "{v}");
                refusals.push(v["error"]["message"].as_str().unwrap().to_owned());
            }
            s.shutdown(std::net::Shutdown::Both).unwrap();
            writer.join().unwrap();
            refusals.swap_remove(0)
        })
        .await
        .unwrap()
    })
    .await;
    assert!(why.contains("256 MiB"), "{why}");
    assert!(peak < before + 450 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    // The sink is still there, and the calls held for it were let go with the connection.
    assert_eq!(d.status("sink").await["state"], "running");
}

/// A client that asks for 1 MiB answers and reads none: at most 256 MiB of them wait for it;
/// past that an answer is dropped and its request answered `-32006` (all 450 MiB waited).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_its_answers_is_held_at_most_256_mib_of_them() {
    use std::io::{BufRead as _, Write as _};
    const CALLS: usize = 450;
    let d = Daemon::builder()
        .plugin_as("hostile", "big")
        .manifest("big", |m| m["timeout_ms"] = json!(120_000))
        .start()
        .await;
    let before = rss_kb(d.pid());
    let socket = d.socket.clone();
    let ((stream, routed), peak) = peak_rss_during(d.pid(), async {
        let stream = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            for id in 0..CALLS {
                let r = json!({"jsonrpc": "2.0", "id": id, "method": "execute", "params": {"plugin": "big", "method": "blob", "params": {"mb": 1}}});
                s.write_all(format!("{r}\n").as_bytes()).unwrap();
            }
            s
        })
        .await
        .unwrap();
        // Every call routed to the plugin answered, none read, and nothing more to come: every
        // request read (nothing left in the socket: SIOCOUTQ), or plugind no longer reading
        // this client (its outbox full: the requests wait in the socket). Which of the two, and
        // how many requests are refused past the budget, depends on how fast plugind reads
        // them against how fast the plugin answers: on a busy machine, 96 of 450 waited.
        // 450 MB of answers through a debug build, beside the other tests: give it time.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let mut last = None;
        let routed = wait_for_at_most(Duration::from_secs(120), "big to answer every call it got", async || {
            let mut unread: libc::c_int = 0;
            // SAFETY: SIOCOUTQ (TIOCOUTQ) writes an int through the pointer given.
            unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unread) };
            let routed = d.status("big").await["calls"]["total"].as_u64()?;
            let settled = answered_by(&d, "big").await >= routed;
            let now = Some((routed, unread));
            let still = std::mem::replace(&mut last, now) == now;
            (settled && (unread == 0 || still)).then_some(routed)
        })
        .await;
        (stream, routed)
    })
    .await;
    assert!(peak < before + 380 * 1024, "plugind grew from {before} KiB to {peak} KiB");
    let (results, dropped, refused) = tokio::task::spawn_blocking(move || {
        let (mut results, mut dropped, mut refused) = (0, 0, 0);
        for line in std::io::BufReader::new(&stream).lines().take(CALLS) {
            let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
            if v["result"].is_string() {
                results += 1;
                continue;
            }
            assert_eq!(v["error"]["code"], -32006, "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            if message.contains("dropped") {
                dropped += 1;
            } else {
                assert!(message.contains("wait for some answers"), "{v}");
                refused += 1;
            }
        }
        (results, dropped, refused)
    })
    .await
    .unwrap();
    assert_eq!(results + dropped + refused, CALLS);
    // Of what was routed at once, what did not fit in 256 MiB was dropped or refused.
    let held = usize::try_from(routed).unwrap().min(CALLS);
    assert!(
        results >= 200 && dropped + refused + 260 >= held,
        "{results} answers, {dropped} dropped, {refused} refused of {held}"
    );
}

/// A client whose answers backed up is read again as soon as it has read them, even while a
/// long call of it is still in flight (plugind used to wait for some call of it to finish).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_is_read_again_once_it_has_read_its_answers() {
    use std::io::{BufRead as _, Write as _};
    // Call 1 runs past all the others whatever the load: its deadline is not the default 5 s.
    // The echoes go to the Rust example: Perl's JSON::PP takes ~0.4 s a 600 KiB line, so 20 of
    // them ran past the 5 s deadline on a busy machine.
    let d = Daemon::builder()
        .plugin_as("perl-echo", "slow")
        .manifest("slow", |m| m["timeout_ms"] = json!(60_000))
        .example("echo-rust")
        .start()
        .await;
    let socket = d.socket.clone();
    tokio::task::spawn_blocking(move || {
        let s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let mut w = s.try_clone().unwrap();
        let big = "x".repeat(600 * 1024);
        let writer = std::thread::spawn(move || {
            let line = |id: u32, plugin: &str, method: &str, params: serde_json::Value| {
                let r = json!({"jsonrpc": "2.0", "id": id, "method": "execute", "params": {"plugin": plugin, "method": method, "params": params}});
                format!("{r}\n")
            };
            w.write_all(line(1, "slow", "sleep", json!({"ms": 20000})).as_bytes()).unwrap();
            // 12 MB of answers: more than the socket and the queue hold, so plugind stops reading
            // this client several times over, with call 1 in flight each time.
            for id in 2..22 {
                w.write_all(line(id, "echo-rust", "echo", json!({"blob": big})).as_bytes()).unwrap();
            }
            w
        });
        // The answers back up: plugind's writer blocks on this socket, the rest queues.
        let readable = || {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes an int through the pointer given.
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&s), libc::FIONREAD, &mut n) };
            n
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while readable() < 150 * 1024 {
            assert!(Instant::now() < deadline, "no answers backed up");
            std::thread::yield_now();
        }
        // Each answer within 10 s: not at the end of call 1's 20 s.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
        for _ in 2..22 {
            let mut answer = String::new();
            reader.read_line(&mut answer).unwrap();
            assert!(answer.contains("\"result\""), "{}", &answer[..answer.len().min(200)]);
        }
        let mut w = writer.join().unwrap();
        // Read again at once, while call 1 sleeps on.
        let t = Instant::now();
        w.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"execute\",\"params\":{\"plugin\":\"echo-rust\",\"method\":\"echo\",\"params\":9}}\n").unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        assert!(answer.contains("\"id\":9") && answer.contains("\"result\":9"), "{answer}");
        assert!(t.elapsed() < Duration::from_secs(5), "answered after {:?}: not read until the long call ended", t.elapsed());
    })
    .await
    .unwrap();
}
