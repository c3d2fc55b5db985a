//! pluginctl: output and exit codes (0 ok, 1 failed, 2 usage, 3 unreachable).

use crate::support::*;
use std::path::Path;
use std::process::Command;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_status_call_and_exit_codes() {
    let d = Daemon::builder().plugin("perl-echo").plugin("py-probe").start().await;
    let out = d.ctl(&["list"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("NAME") && header.contains("VERSION  STATE") && header.ends_with("SERVICES"), "{text}");
    let row = lines.find(|l| l.starts_with("perl-echo")).unwrap();
    assert!(row.contains("running"), "{row}");
    // Columns line up.
    assert_eq!(header.find("STATE"), row.find("running"), "{text}");

    let out = d.ctl(&["status", "py-probe"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("state:       running"), "{}", stdout(&out));

    let out = d.ctl(&["call", "perl-echo", "echo", r#"{"k": "v"}"#]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!({"k": "v"}));

    // 1: the operation failed, message on stderr.
    let out = d.ctl(&["call", "perl-echo", "fail", r#"{"code": 5, "message": "bad thing"}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad thing"));
    let out = d.ctl(&["status", "ghost"]);
    assert_eq!(out.status.code(), Some(1));

    // 2: usage.
    assert_eq!(d.ctl(&["call", "perl-echo", "echo", "{not json"]).status.code(), Some(2));
    assert_eq!(d.ctl(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(d.ctl(&["start"]).status.code(), Some(2));

    // --json prints the raw result.
    let out = d.ctl(&["--json", "status", "perl-echo"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "perl-echo");

    // stop / start / restart print the new state.
    assert_eq!(stdout(&d.ctl(&["stop", "perl-echo", "py-probe"])), "perl-echo: stopped\npy-probe: stopped\n");
    assert_eq!(stdout(&d.ctl(&["start", "perl-echo"])), "perl-echo: running\n");
    assert_eq!(stdout(&d.ctl(&["restart", "perl-echo"])), "perl-echo: running\n");
}

/// JSON nested past serde_json's 128 levels passes through pluginctl both ways (audit 21: a
/// result 128 deep was "connection to plugind lost", exit 3; params 200 deep "not valid JSON",
/// exit 2), and the client's typed `call` says why it cannot decode such a result.
#[tokio::test(flavor = "multi_thread")]
async fn json_nested_past_128_levels_passes_through_pluginctl() {
    let d = Daemon::builder().plugin("py-host-peer").start().await;
    let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let out = d.ctl(&["--json", "call", "py-host-peer", "nested", r#"{"depth": 128}"#]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out).trim(), nested(128));
    let out = d.ctl(&["call", "py-host-peer", "nested", r#"{"depth": 2000}"#]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out).trim(), nested(2000));

    let params = format!(r#"{{"a": {}}}"#, nested(200));
    let out = d.ctl(&["call", "py-host-peer", "echo", &params]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out).replace(' ', "").trim(), params.replace(' ', ""));
    let out = d.ctl(&["hook", "onRequest", &params]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let payload = format!(r#"{{"a":{},"seen":["py-host-peer"]}}"#, nested(200));
    assert_eq!(stdout(&out).replace(' ', "").trim(), payload);
    // Params on several lines still go as one line of the protocol.
    let out = d.ctl(&["call", "py-host-peer", "echo", "{\n  \"k\": [1,\r\n 2]\n}"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap(), serde_json::json!({"k": [1, 2]}));

    // A `Value` stops at 128 levels: an answer error saying so, not a lost connection.
    let r = d.execute("py-host-peer", "nested", serde_json::json!({"depth": 200})).await;
    assert_eq!(code(&r), -32603, "{r:?}");
    assert!(format!("{:?}", r).contains("nested deeper than a Value decodes"), "{r:?}");
}

#[test]
fn unreachable_daemon_is_exit_3() {
    let out = Command::new(pluginctl()).args(["--socket", "/nonexistent/plugind.sock", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach plugind"));
}

/// `--json` prints a failed call's JSON-RPC error object on stdout (code, message, data kept), and
/// `service` and `hook` take `--timeout-ms` like `call`.
#[tokio::test(flavor = "multi_thread")]
async fn json_errors_keep_code_and_data_and_every_call_takes_a_timeout() {
    let d = Daemon::builder().plugin("perl-echo").start().await;
    let out = d.ctl(&["--json", "call", "ghost", "echo"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["error"]["code"], -32004, "{v}");
    assert_eq!(v["error"]["data"]["plugin"], "ghost", "{v}");
    // Several names: one document, an array of the answers in order (errors included).
    let out = d.ctl(&["--json", "stop", "perl-echo", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (&v[0]["state"], &v[1]["error"]["code"]),
        (&serde_json::json!("stopped"), &serde_json::json!(-32004)),
        "{v}"
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&d.ctl(&["--json", "start", "perl-echo"])).trim()).unwrap();
    assert_eq!(v["state"], "running", "one name, one object: {v}");

    let out = d.ctl(&["--json", "service", "perl-echo", "sleep", r#"{"ms": 3000}"#, "--timeout-ms", "200"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["error"]["code"], -32001, "{v}");
    assert_eq!(v["error"]["data"]["timeout_ms"], 200, "{v}");

    // A chain budget: the payload so far (no closed plugin), exit 0.
    let out = d.ctl(&["hook", "onRequest", r#"{"n": 1}"#, "--timeout-ms", "500"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(serde_json::from_str::<serde_json::Value>(stdout(&out).trim()).unwrap(), serde_json::json!({"n": 1}));
}

/// With `--json`, a command that fails before plugind answers prints an error object on stdout
/// too (a script reading stdout finds JSON whatever went wrong): a usage error (exit 2, code
/// -32602), from the argument parser or from pluginctl's own checks, and an unreachable plugind
/// (exit 3, code -32011). The message still goes to stderr.
#[test]
fn json_usage_and_unreachable_errors_are_json_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let sock = sock.to_str().unwrap();
    for (args, exit, code, says) in [
        (&["--json", "--socket", sock, "list"][..], 3, -32011, "cannot reach plugind"),
        (&["list", "--socket", sock, "--json"], 3, -32011, "cannot reach plugind"),
        (&["--json", "bogus"], 2, -32602, "unrecognized subcommand 'bogus'"),
        (&["--json", "--socket", sock, "call"], 2, -32602, "<PLUGIN> <METHOD>"),
        (&["--json", "--socket", sock, "call", "p", "m", "{bad"], 2, -32602, "PARAMS is not valid JSON"),
    ] {
        let out = Command::new(pluginctl()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(exit), "{args:?}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {:?}", stdout(&out)));
        assert_eq!(v["error"]["code"], code, "{args:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{args:?}: {v}");
        assert!(stderr(&out).contains(says), "{args:?}: the message goes to stderr too");
    }
}

// ---- colour, error messages, info, per-command options, scaffolded next steps (issue 19) ----

/// Runs `cmd` with its stdout on a pseudo-terminal (stdin empty, stderr discarded), as a user's
/// shell would; returns the exit code and what it wrote to the terminal.
fn on_a_terminal(cmd: &mut Command) -> (Option<i32>, String) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain libc calls on a fd this function owns; ptsname_r writes into `name`.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = std::fs::File::from(OwnedFd::from_raw_fd(m));
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap().to_owned();
        let slave = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        (master, slave)
    };
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(slave)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pluginctl runs");
    // The Command keeps its copy of the terminal's fd: replace it so only the child holds one,
    // and reading ends (EIO) when the child and its own children are done.
    cmd.stdout(std::process::Stdio::null());
    let mut master = master;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading the terminal: {e}"),
        }
    }
    (child.wait().unwrap().code(), String::from_utf8_lossy(&out).into_owned())
}

/// pluginctl with `args`, in an environment that takes colour (a terminal type, no colour
/// overrides) unless the test adds `NO_COLOR`.
fn colourable(args: &[&str]) -> Command {
    let mut cmd = Command::new(pluginctl());
    cmd.args(args)
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE");
    cmd
}

const ESC: &str = "\u{1b}[";

/// Tables, `status`, `info` and `check` are coloured on a terminal, and carry no escape at all
/// with `NO_COLOR` on the same terminal or when stdout is a pipe.
#[tokio::test(flavor = "multi_thread")]
async fn colour_on_a_terminal_only() {
    let d = Daemon::builder()
        .plugin("perl-echo")
        .plugin_files("broken", &[("plugin.json", r#"{"name": "broken", "version": "one", "main": "m.py"}"#)])
        .start()
        .await;
    let socket = d.socket.to_str().unwrap();
    let green_running = format!("{ESC}32mrunning{ESC}0m");
    let red_invalid = format!("{ESC}31minvalid{ESC}0m");

    let (code, list) = on_a_terminal(&mut colourable(&["--socket", socket, "list"]));
    assert_eq!(code, Some(0), "{list}");
    assert!(list.contains(&green_running) && list.contains(&red_invalid), "{list:?}");
    assert!(list.starts_with(&format!("{ESC}1mNAME{ESC}0m")), "bold header: {list:?}");
    // The escapes take no width: the STATE column still lines up with its header.
    let plain = |s: &str| s.replace(&green_running, "running").replace(&red_invalid, "invalid");
    let lines: Vec<String> =
        list.lines().map(|l| plain(l).replace(&format!("{ESC}1m"), "").replace(&format!("{ESC}0m"), "")).collect();
    let row = lines.iter().find(|l| l.starts_with("perl-echo")).unwrap();
    assert_eq!(lines[0].find("STATE"), row.find("running"), "{lines:?}");

    let (_, status) = on_a_terminal(&mut colourable(&["--socket", socket, "status", "perl-echo"]));
    assert!(status.contains(&format!("state:       {green_running}")), "{status:?}");
    assert!(status.contains(&format!("{ESC}32mholds: ")), "held sandbox rows are green: {status:?}");
    let (_, status) = on_a_terminal(&mut colourable(&["--socket", socket, "status", "broken"]));
    assert!(status.contains(&format!("state:       {red_invalid}")), "{status:?}");
    let (_, info) = on_a_terminal(&mut colourable(&["--socket", socket, "info"]));
    assert!(info.contains(&format!("running  {ESC}32m1{ESC}0m")), "{info:?}");
    let fixture_dir = fixture("perl-echo");
    let check = ["check", fixture_dir.to_str().unwrap()];
    let (code, report) = on_a_terminal(&mut colourable(&check));
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains(&format!("{ESC}32mok  {ESC}0m manifest: perl-echo")), "{report:?}");

    // NO_COLOR (any non-empty value) on the same terminal: the same text, no escape.
    for args in [vec!["--socket", socket, "list"], vec!["--socket", socket, "status", "perl-echo"], check.to_vec()] {
        let (code, text) = on_a_terminal(colourable(&args).env("NO_COLOR", "1"));
        assert_eq!(code, Some(0), "{args:?}: {text}");
        assert!(text.contains("running") || text.contains("ok   manifest: perl-echo"), "{args:?}: {text:?}");
        assert!(!text.contains('\u{1b}'), "{args:?}: {text:?}");
    }
    // A pipe: no escape either.
    for args in [vec!["--socket", socket, "list"], vec!["--socket", socket, "info"], check.to_vec()] {
        let out = colourable(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.contains(&0x1b), "{args:?}: {}", stdout(&out));
    }
}

/// A plugin's text reaches the operator's terminal as text: a method description carrying a
/// window-title escape, a screen clear and a carriage return is printed with them escaped,
/// where they were acted on (audit 18).
#[tokio::test(flavor = "multi_thread")]
async fn a_plugins_text_cannot_drive_the_terminal() {
    let forged = "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[31mFAKE\rvictim  1.0.0  running";
    let d = Daemon::builder()
        .plugin_as("hostile", "esc")
        .manifest("esc", move |m| m["config"] = serde_json::json!({"methods": {"evil": {"description": forged}}}))
        .start()
        .await;
    let socket = d.socket.to_str().unwrap();
    // The terminal turns each line break into \r\n; no other \r, and no escape at all.
    let inert =
        |text: &str| !text.replace("\r\n", "\n").contains('\r') && !text.contains('\u{1b}') && !text.contains('\u{7}');
    let (code, text) = on_a_terminal(colourable(&["--socket", socket, "methods", "esc"]).env("NO_COLOR", "1"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("\\e]0;PWNED\\u{7}\\e[2J"), "{text:?}");
    assert!(inert(&text), "{text:?}");
    // A metric label (`metrics.emit`, no permission needed) in `pluginctl metrics`.
    let emit = serde_json::json!({"method": "metrics.emit", "params":
        {"name": "esc_seen", "value": 1, "kind": "gauge", "labels": {"who": forged}}});
    d.execute("esc", "notify", emit).await.unwrap();
    let (code, text) = on_a_terminal(colourable(&["--socket", socket, "metrics"]).env("NO_COLOR", "1"));
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("esc_seen") && text.contains("\\e]0;PWNED"), "{text:?}");
    assert!(inert(&text), "{text:?}");
    // The stderr of a plugin that fails `check`.
    let dir = d.dir.path().join("loud");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("plugin.json"), r#"{"name": "loud", "version": "1.0.0", "main": "main.sh"}"#).unwrap();
    std::fs::write(
        dir.join("main.sh"),
        "#!/bin/sh\nprintf 'boom\\033]0;PWNED\\007\\033[2J\\rFORGED ok all passed\\n' >&2\nexit 1\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(dir.join("main.sh")).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(dir.join("main.sh"), perms).unwrap();
    let (code, text) = on_a_terminal(colourable(&["check", dir.to_str().unwrap()]).env("NO_COLOR", "1"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("boom\\e]0;PWNED"), "{text:?}");
    assert!(inert(&text), "{text:?}");
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Messages name the argument or the socket that was wrong and say what to do, in words rather
/// than the parser's.
#[tokio::test(flavor = "multi_thread")]
async fn errors_name_what_was_wrong_and_what_to_do() {
    let d = Daemon::builder().plugin("perl-echo").start().await;

    let out = d.ctl(&["call", "perl-echo", "echo", "{name: 1}"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("PARAMS is not valid JSON: unexpected 'n' at line 1 column 2") && e.contains("double quotes"),
        "{e}"
    );
    assert!(!e.contains("key must be a string"), "{e}");
    let out = d.ctl(&["hook", "onRequest", "[1,"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("PAYLOAD is not valid JSON: it ends too early, at line 1 column 3"),
        "{}",
        stderr(&out)
    );
    let out = d.ctl(&["call", "perl-echo", "echo", "{}", "--timeout-ms", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("'soon' for '--timeout-ms <MS>': expected a whole number of milliseconds"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("invalid digit"), "{}", stderr(&out));
    // The parser's errors start with `pluginctl:` like every other.
    assert!(stderr(&out).starts_with("pluginctl: invalid value 'soon'"), "{}", stderr(&out));

    // Unknown plugin: plugind's words, and where to look.
    for args in [&["call", "ghost", "echo"][..], &["status", "ghost"]] {
        let out = d.ctl(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = stderr(&out);
        assert!(e.contains(r#"no plugin named "ghost""#) && e.contains("`pluginctl list` shows the plugins"), "{e}");
    }
    // A deadline: how to give more time.
    let out = d.ctl(&["call", "perl-echo", "sleep", r#"{"ms": 1000}"#, "--timeout-ms", "100"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("give it longer with --timeout-ms"), "{}", stderr(&out));
    // A stopped plugin: how to find out why and start it.
    assert_eq!(d.ctl(&["stop", "perl-echo"]).status.code(), Some(0));
    let out = d.ctl(&["call", "perl-echo", "echo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`pluginctl start perl-echo` starts it"), "{}", stderr(&out));
    // A socket file nobody listens on (plugind gone without cleaning up).
    let stale = d.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = Command::new(pluginctl()).arg("--socket").arg(&stale).arg("list").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let e = stderr(&out);
    assert!(e.contains(&format!("cannot reach plugind at {}: nothing listens on it", stale.display())), "{e}");
    assert!(e.contains("is plugind running?"), "{e}");
}

/// The mistakes that need no daemon: no socket, a file that is no plugin directory, options that
/// go with others.
#[test]
fn usage_errors_without_a_daemon_say_what_to_do() {
    let out = Command::new(pluginctl()).args(["--socket", "/nonexistent/plugind.sock", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let e = stderr(&out);
    assert!(e.contains("cannot reach plugind at /nonexistent/plugind.sock: there is no socket there"), "{e}");
    assert!(e.contains("is plugind running?") && e.contains("--socket PATH"), "{e}");
    assert!(!e.contains("os error"), "{e}");

    let out = Command::new(pluginctl()).args(["check", "/nonexistent/plugin"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/nonexistent/plugin does not exist: give the plugin's directory"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(pluginctl()).args(["check", "/etc/hostname"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/etc/hostname is not a directory: give the plugin's directory"), "{}", stderr(&out));
    // A regular file given as the socket is not taken for a stale socket.
    let out = Command::new(pluginctl()).args(["--socket", "/etc/hostname", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("cannot reach plugind at /etc/hostname: it is not a socket"), "{}", stderr(&out));
    let dir = fixture("perl-echo");
    let out = Command::new(pluginctl())
        .arg("check")
        .arg(&dir)
        .args(["--execute", "echo", "--params", "{oops"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--params is not valid JSON: unexpected 'o' at line 1 column 2"), "{}", stderr(&out));
    let out = Command::new(pluginctl()).args(["list", "--token-file", "/etc/hostname"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--token-file goes with --url"), "{}", stderr(&out));
    let out = Command::new(pluginctl()).args(["--url", "http://127.0.0.1:1", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--url needs --token-file FILE"), "{}", stderr(&out));
    let out = Command::new(pluginctl()).args(["--url", "localhost:8080", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--url localhost:8080: only http://HOST:PORT URLs are supported"),
        "{}",
        stderr(&out)
    );
    let work = tempfile::tempdir().unwrap();
    let out =
        Command::new(pluginctl()).args(["new", "x", "--lang", "cobol"]).current_dir(work.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--lang: unknown language \"cobol\": expected rust, python or node"),
        "{}",
        stderr(&out)
    );
}

/// `info` prints `key: value` rows and a plugins section like `status` does; `--json` keeps the
/// raw object.
#[tokio::test(flavor = "multi_thread")]
async fn info_prints_rows_and_json_on_request() {
    let d = Daemon::builder().plugin("perl-echo").plugin("py-probe").start().await;
    let out = d.ctl(&["info"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_err(), "not JSON: {text}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(text.starts_with(&format!("version:     {version}\npid:         {}\nuptime:      ", d.pid())), "{text}");
    assert!(text.contains(&format!("reached at:  {}\n", d.socket.display())), "{text}");
    assert!(text.contains("plugins:\n  total    2\n  running  2\n  failed   0\n  blocked  0\n"), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&d.ctl(&["--json", "info"]).stdout).unwrap();
    assert_eq!((v["pid"].as_u64(), v["plugins"]["running"].as_u64()), (Some(u64::from(d.pid())), Some(2)));
}

/// `new` and `check` list only their own options; the commands that talk to plugind take the
/// connection options before or after their name.
#[tokio::test(flavor = "multi_thread")]
async fn new_and_check_show_only_their_own_options() {
    let help = |args: &[&str]| {
        let out = Command::new(pluginctl()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        stdout(&out)
    };
    for (cmd, own) in [("new", &["--lang", "--dir", "--json"][..]), ("check", &["--execute", "--params", "--json"])] {
        let text = help(&[cmd, "--help"]);
        for o in own {
            assert!(text.contains(o), "{cmd} --help lacks {o}: {text}");
        }
        for other in ["--socket", "--url", "--token-file", "--timeout-ms"] {
            assert!(!text.contains(other), "{cmd} --help shows {other}: {text}");
        }
        // And they refuse them rather than ignore them.
        let out = Command::new(pluginctl()).args([cmd, "x", "--socket", "/s"]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd} --socket");
    }
    let text = help(&["list", "--help"]);
    assert!(text.contains("--socket <PATH>") && text.contains("--json"), "{text}");
    // Their own --json, after their name as before it.
    let work = tempfile::tempdir().unwrap();
    for (n, args) in [["new", "a", "--json"], ["--json", "new", "b"]].iter().enumerate() {
        let out = Command::new(pluginctl()).args(args).current_dir(work.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["dir"], ["a", "b"][n], "{v}");
    }
    let out = Command::new(pluginctl()).arg("check").arg(fixture("perl-echo")).arg("--json").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], true, "{v}");

    let d = Daemon::builder().plugin("perl-echo").start().await;
    let sock = d.socket.to_str().unwrap();
    for args in [
        &["--socket", sock, "--json", "list"][..],
        &["list", "--socket", sock, "--json"],
        &["--json", "list", "--socket", sock],
    ] {
        let out = Command::new(pluginctl()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["name"], "perl-echo", "{args:?}");
    }
}

/// Kills the plugind a test started like a user would, whatever happens.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `pluginctl new NAME --lang LANG --dir plugins/NAME`, then every step it printed, as printed,
/// in one shell session from the same directory: `cd` moves it, `plugind` runs in the background
/// (its own terminal) until the plugin runs, and the last step's answer is the greeting.
/// `prepare` may set things up in the new plugin before the steps (a shared build cache).
async fn printed_next_steps_work(lang: &str, prepare: impl FnOnce(&Path)) {
    let work = tempfile::tempdir().unwrap();
    let name = format!("steps-{lang}");
    let socket = work.path().join("plugind.sock");
    let bin_dir = pluginctl().parent().unwrap().to_path_buf();
    let cargo_dir = Path::new(env!("CARGO")).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        [bin_dir, cargo_dir].into_iter().chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let shell = |line: &str, cwd: &Path| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", line])
            .current_dir(cwd)
            .env("PATH", &path)
            .env("PLUGIND_SOCKET", &socket)
            .env("CARGO_NET_OFFLINE", "true")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .env_remove("STATE_DIRECTORY");
        cmd
    };
    let out = shell(&format!("pluginctl new {name} --lang {lang} --dir plugins/{name}"), work.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed = stdout(&out);
    prepare(&work.path().join("plugins").join(&name));
    let steps: Vec<&str> = printed.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    assert_eq!(steps.len(), 5, "{printed}");
    let mut cwd = work.path().to_path_buf();
    let mut daemon = None;
    let mut last = String::new();
    for step in &steps {
        for part in step.split(" && ") {
            if let Some(dir) = part.strip_prefix("cd ") {
                cwd = cwd.join(dir);
                assert!(cwd.is_dir(), "{step}: {printed}");
            } else if part.starts_with("plugind ") {
                let log = std::fs::File::create(work.path().join("plugind.log")).unwrap();
                let child = shell(&format!("exec {part}"), work.path()).stderr(log).spawn().unwrap();
                daemon = Some(Background(child));
                wait_for(&format!("plugind to run {name}"), async || {
                    let c = plugind_client::Client::connect(&socket).await.ok()?;
                    let s = c.call("plugins.get", &serde_json::json!({ "name": name })).await.ok()?;
                    (s["state"] == "running").then_some(())
                })
                .await;
            } else {
                let out = shell(part, &cwd).output().unwrap();
                let log = std::fs::read_to_string(work.path().join("plugind.log")).unwrap_or_default();
                assert_eq!(out.status.code(), Some(0), "{part}:\n{}{}\n{log}", stdout(&out), stderr(&out));
                last = stdout(&out);
            }
        }
    }
    assert!(daemon.is_some(), "no plugind step: {printed}");
    let answer: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(answer, serde_json::json!({ "greeting": "Hello, Ada!" }));
}

#[tokio::test(flavor = "multi_thread")]
async fn python_plugin_next_steps_work_as_printed() {
    printed_next_steps_work("python", |_| {}).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_plugin_next_steps_work_as_printed() {
    printed_next_steps_work("node", |_| {}).await;
}

/// The Rust plugin builds from its own `vendor/` copy of the SDK, in a temp dir far from this
/// checkout. Its `target/` is a link to one build cache kept under this workspace's target dir, so
/// that crates.io dependencies are compiled once across runs.
#[tokio::test(flavor = "multi_thread")]
async fn rust_plugin_next_steps_work_as_printed() {
    printed_next_steps_work("rust", |dir| {
        let cache = Path::new(env!("CARGO_BIN_EXE_plugind")).parent().unwrap().parent().unwrap().join("template-steps");
        std::fs::create_dir_all(&cache).unwrap();
        std::os::unix::fs::symlink(&cache, dir.join("target")).unwrap();
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(!cargo.contains(repo().to_str().unwrap()), "{cargo}");
    })
    .await;
}

/// Spec audit 16: `--json start` of an unknown plugin printed its error object over several
/// lines (every other command prints one line), and `methods` of an invalid plugin said it
/// declares no methods, exit 0, as if its catalog were known and empty.
#[tokio::test(flavor = "multi_thread")]
async fn json_errors_are_one_line_and_an_invalid_plugins_methods_are_unknown() {
    let d = Daemon::builder()
        .plugin("perl-echo")
        .plugin_files("broken", &[("plugin.json", r#"{"name": "broken", "version": "1"}"#)])
        .start()
        .await;
    let out = d.ctl(&["--json", "start", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"]["code"], -32004, "{text}");
    let out = d.ctl(&["methods", "broken"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("broken is invalid"), "{}", stderr(&out));
}
