//! `pluginctl`: the CLI of plugind (`pluginctl --help`; the methods it calls are in docs/control-api.md).
//!
//! It talks to plugind only through the `plugind-client` library and does not link the daemon:
//! `new` copies the embedded templates (`scaffold`), and `check`, which needs the daemon's
//! sandbox and instance driver, runs `plugind check` (the `plugind` beside this executable, else
//! the one on `PATH`).
//!
//! Exit codes: 0 success, 1 the operation failed (message on stderr), 2 usage error,
//! 3 the daemon cannot be reached.

mod mcp;
mod scaffold;

use clap::{Parser, Subcommand};
use plugind_client::{Client, ClientError, Progress};
use plugind_protocol::control::{self as c, PluginStatus};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Control plugind.
#[derive(Parser, Debug)]
#[command(name = "pluginctl", version, about)]
struct Args {
    /// Control socket (default: $PLUGIND_SOCKET, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, /tmp).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Talk to plugind's --listen HTTP API instead of the socket (http://HOST:PORT).
    #[arg(long, global = true, value_name = "URL", conflicts_with = "socket")]
    url: Option<String>,
    /// File holding the bearer token for --url.
    #[arg(long, global = true, value_name = "FILE", requires = "url")]
    token_file: Option<PathBuf>,
    /// Print the raw JSON result.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Table of plugins: NAME VERSION STATE PID RESTARTS UPTIME SERVICES.
    List,
    /// Everything about one plugin.
    Status {
        /// Plugin name.
        name: String,
    },
    /// Start plugins and print their new state once settled; exits 1 if one ends failed,
    /// blocked or invalid.
    Start {
        /// Plugin names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop plugins and print their new state.
    Stop {
        /// Plugin names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Restart plugins and print their new state: new instances start beside the old ones, which
    /// retire once the new ones serve (no call fails); exits 1 if a new instance fails (the old
    /// ones keep serving) or the plugin ends failed, blocked or invalid.
    Restart {
        /// Stop, then start (calls fail in between).
        #[arg(long)]
        hard: bool,
        /// Plugin names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Rescan the plugin directories.
    Reload,
    /// Call a plugin's method and print the result as JSON.
    Call {
        /// Plugin name.
        plugin: String,
        /// Method.
        method: String,
        /// Params as JSON.
        params: Option<String>,
        /// Deadline in milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Call a service through the registry.
    Service {
        /// Service name (optionally name@range).
        service: String,
        /// Method.
        method: String,
        /// Params as JSON.
        params: Option<String>,
        /// Deadline in milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Table of services: NAME VERSION PLUGIN CAPABILITIES.
    Services {
        /// Only services with this capability.
        #[arg(long)]
        capability: Option<String>,
    },
    /// Scaffold a new plugin from the templates (needs no daemon).
    New {
        /// Plugin name.
        name: String,
        /// rust, python or node.
        #[arg(long, default_value = "python")]
        lang: String,
        /// Directory to create (default ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Validate a plugin and drive it through init, register, ping, teardown (needs no daemon).
    Check {
        /// The plugin directory.
        dir: PathBuf,
        /// Also call this execute method.
        #[arg(long)]
        execute: Option<String>,
        /// Params for --execute, as JSON.
        #[arg(long)]
        params: Option<String>,
    },
    /// Recent log lines (stderr, `log` notifications, plugind's events); -f follows.
    Logs {
        /// Only this plugin.
        name: Option<String>,
        /// How many lines.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Print a plugin's wire traffic live, both directions, one JSON line each.
    Trace {
        /// Plugin name.
        name: String,
    },
    /// Print lifecycle events live (state changes, restarts, reloads, limits).
    Events,
    /// Run a hook chain and print the final payload.
    Hook {
        /// Hook name, e.g. onRequest.
        hook: String,
        /// Initial payload as JSON.
        payload: Option<String>,
        /// Budget of the whole chain in milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Print plugind's metrics (Prometheus text).
    Metrics,
    /// Supervisor version, pid, uptime and counts.
    Info,
    /// Stop the daemon gracefully.
    Shutdown,
    /// Serve every running plugin's methods as MCP tools on stdio (for MCP clients; docs/mcp.md).
    Mcp,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
    /// The JSON-RPC error object plugind answered, if that is what failed: `--json` prints it.
    error: Option<Value>,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e {
            ClientError::Rpc(_) | ClientError::Unsupported { .. } => 1,
            ClientError::Unreachable { .. } | ClientError::ConnectionLost => 3,
        };
        let error = match &e {
            ClientError::Rpc(rpc) => serde_json::to_value(rpc).ok(),
            ClientError::ConnectionLost => {
                Some(json!({ "code": plugind_client::CONNECTION_LOST, "message": e.to_string() }))
            }
            _ => None,
        };
        Failure { code, message: e.to_string(), error }
    }
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into(), error: None }
    }
}

fn usage(message: String) -> Failure {
    Failure::new(2, message)
}

fn parse_json(what: &str, text: Option<&str>, default: Value) -> Result<Value, Failure> {
    match text {
        None => Ok(default),
        Some(t) => serde_json::from_str(t).map_err(|e| usage(format!("{what} is not valid JSON: {e}"))),
    }
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away (`| head`).
    // SAFETY: setting a signal disposition to its default before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("UNWRAP: a current-thread runtime builds");
    let json_out = args.json;
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // --json: a JSON-RPC error as the error object on stdout, for scripts; the message
            // still goes to stderr for people.
            if let (true, Some(error)) = (json_out, &f.error) {
                println!("{}", json!({ "error": error }));
            }
            if !f.message.is_empty() {
                eprintln!("pluginctl: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let socket = args.socket.clone().unwrap_or_else(plugind_client::default_socket);
    if let Cmd::New { name, lang, dir } = &args.command {
        return new_plugin(name, lang, dir.clone(), args.json);
    }
    if let Cmd::Check { dir, execute, params } = &args.command {
        return check_plugin(dir, execute.as_deref(), params.as_deref(), args.json);
    }
    if let Cmd::Mcp = &args.command {
        // Reconnecting: an MCP client keeps this server for its whole session.
        let connect = match &args.url {
            Some(url) => Client::builder().url(url.clone()),
            None => Client::builder().socket(socket),
        };
        let token = args.token_file.as_deref().map(plugind_client::read_token).transpose().map_err(usage)?;
        let connect = match token {
            Some(t) => connect.token(t),
            None => connect,
        };
        return mcp::run(connect.connect().await?).await.map_err(|e| Failure::new(1, e.to_string()));
    }
    // Validate arguments before connecting so usage errors win over an absent daemon.
    let request = match &args.command {
        Cmd::Call { plugin, method, params, timeout_ms } => {
            let mut p = json!({ "plugin": plugin, "method": method, "params": parse_json("PARAMS_JSON", params.as_deref(), json!({}))? });
            if let Some(t) = timeout_ms {
                p["timeout_ms"] = json!(t);
            }
            Some((c::EXECUTE, p))
        }
        Cmd::Service { service, method, params, timeout_ms } => {
            let (name, version) = match service.split_once('@') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (service.clone(), None),
            };
            let mut p = json!({ "service": name, "method": method, "params": parse_json("PARAMS_JSON", params.as_deref(), json!({}))? });
            if let Some(v) = version {
                p["version"] = json!(v);
            }
            if let Some(t) = timeout_ms {
                p["timeout_ms"] = json!(t);
            }
            Some((c::SERVICES_CALL, p))
        }
        Cmd::Hook { hook, payload, timeout_ms } => {
            let mut p = json!({ "hook": hook, "payload": parse_json("PAYLOAD_JSON", payload.as_deref(), json!({}))? });
            if let Some(t) = timeout_ms {
                p["timeout_ms"] = json!(t);
            }
            Some((c::HOOKS_RUN, p))
        }
        _ => None,
    };
    let client = match &args.url {
        Some(url) => {
            let token = args.token_file.as_deref().map(plugind_client::read_token).transpose().map_err(usage)?;
            Client::connect_url(url, token).await?
        }
        None => Client::connect(&socket).await?,
    };
    if let Some((method, params)) = request {
        let json_out = args.json;
        let result = client.call_with_progress(method, &params, move |p| print_progress(&p, json_out)).await?;
        // `hook` prints the final payload; --json prints the whole result (handled_by, stopped_by).
        let shown = if method == c::HOOKS_RUN && !args.json { &result["payload"] } else { &result };
        println!("{}", serde_json::to_string_pretty(shown).unwrap_or_default());
        return Ok(());
    }
    match args.command {
        Cmd::List => {
            let result = client.call(c::PLUGINS_LIST, &json!({})).await?;
            if args.json {
                return print_json(&result);
            }
            let list: Vec<PluginStatus> = serde_json::from_value(result).map_err(bad_answer)?;
            print_table(
                &["NAME", "VERSION", "STATE", "PID", "RESTARTS", "UPTIME", "SERVICES"],
                list.iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.version.clone(),
                            p.state.clone(),
                            p.pid.map_or("-".into(), |x| x.to_string()),
                            p.restarts.to_string(),
                            if p.uptime_ms > 0 { human_duration(p.uptime_ms) } else { "-".into() },
                            p.services
                                .iter()
                                .map(|s| format!("{}@{}", s.name, s.version))
                                .collect::<Vec<_>>()
                                .join(","),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Status { name } => {
            let result = client.call(c::PLUGINS_GET, &json!({ "name": name })).await?;
            if args.json {
                return print_json(&result);
            }
            let p: PluginStatus = serde_json::from_value(result).map_err(bad_answer)?;
            print_status(&p);
        }
        Cmd::Start { names } => act(&client, c::PLUGINS_START, names, json!({}), args.json).await?,
        Cmd::Stop { names } => act(&client, c::PLUGINS_STOP, names, json!({}), args.json).await?,
        Cmd::Restart { hard, names } => {
            act(&client, c::PLUGINS_RESTART, names, json!({ "hard": hard }), args.json).await?
        }
        Cmd::Reload => {
            let result = client.call(c::PLUGINS_RELOAD, &json!({})).await?;
            if args.json {
                return print_json(&result);
            }
            for key in ["added", "removed", "changed", "errors"] {
                let items = result[key].as_array().cloned().unwrap_or_default();
                let items: Vec<String> =
                    items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect();
                println!("{key}: {}", if items.is_empty() { "-".into() } else { items.join(", ") });
            }
        }
        Cmd::Services { capability } => {
            let params = capability.map_or(json!({}), |cap| json!({ "capability": cap }));
            let result = client.call(c::SERVICES_LIST, &params).await?;
            if args.json {
                return print_json(&result);
            }
            let rows = result
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let caps: Vec<String> = s["capabilities"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_owned))
                        .collect();
                    vec![
                        str_of(&s["name"]),
                        str_of(&s["version"]),
                        str_of(&s["plugin"]),
                        if caps.is_empty() { "-".into() } else { caps.join(",") },
                    ]
                })
                .collect();
            print_table(&["NAME", "VERSION", "PLUGIN", "CAPABILITIES"], rows);
        }
        Cmd::Logs { name, lines, follow } => {
            let mut params = json!({ "lines": lines, "follow": follow });
            if let Some(n) = &name {
                params["plugin"] = json!(n);
            }
            let result = client.call(c::LOGS_TAIL, &params).await?;
            for line in result["lines"].as_array().cloned().unwrap_or_default() {
                print_log_line(&line, args.json);
            }
            if follow {
                while let Some((method, line)) = client.notification().await {
                    if method == c::LOG_NOTIFICATION {
                        print_log_line(&line, args.json);
                    }
                }
            }
        }
        Cmd::Trace { name } => {
            client.call(c::PLUGINS_TRACE, &json!({ "name": name })).await?;
            while let Some((method, msg)) = client.notification().await {
                if method == c::TRACE_NOTIFICATION {
                    println!("{msg}");
                }
            }
        }
        Cmd::Events => {
            client.call(c::EVENTS_SUBSCRIBE, &json!({})).await?;
            while let Some((method, ev)) = client.notification().await {
                if method != c::EVENT_NOTIFICATION {
                    continue;
                }
                if args.json {
                    println!("{ev}");
                } else {
                    let state = ev["state"].as_str().map(|s| format!(" {s}")).unwrap_or_default();
                    println!(
                        "{} {} {}{} {}",
                        str_of(&ev["ts"]),
                        str_of(&ev["plugin"]),
                        str_of(&ev["kind"]),
                        state,
                        str_of(&ev["detail"])
                    );
                }
            }
        }
        Cmd::Metrics => {
            let result = client.call(c::METRICS_GET, &json!({})).await?;
            if args.json {
                return print_json(&result);
            }
            print!("{}", result["text"].as_str().unwrap_or_default());
        }
        Cmd::Info => {
            let result = client.call(c::SUPERVISOR_STATUS, &json!({})).await?;
            print_json(&result)?;
        }
        Cmd::Shutdown => {
            client.call(c::SUPERVISOR_SHUTDOWN, &json!({})).await?;
            if !args.json {
                println!("plugind is stopping");
            } else {
                println!("null");
            }
        }
        Cmd::Call { .. } | Cmd::Service { .. } | Cmd::Hook { .. } | Cmd::New { .. } | Cmd::Check { .. } | Cmd::Mcp => {
            unreachable!("handled above")
        }
    }
    Ok(())
}

/// `check` runs `plugind check` (the sandbox and the instance driver are the daemon's code),
/// which prints the findings and exits like `pluginctl check` always did: 0 passed, 1 failed,
/// 2 usage. `--json` is passed on; colour follows the shared terminal and `NO_COLOR`.
fn check_plugin(dir: &Path, execute: Option<&str>, params: Option<&str>, json_out: bool) -> Result<(), Failure> {
    let plugind = plugind_beside_us();
    let mut cmd = std::process::Command::new(&plugind);
    cmd.arg("check").arg(dir);
    if let Some(m) = execute {
        cmd.arg("--execute").arg(m);
    }
    if let Some(p) = params {
        cmd.arg("--params").arg(p);
    }
    if json_out {
        cmd.arg("--json");
    }
    let status = cmd.status().map_err(|e| {
        let why =
            format!("`check` runs {} (beside pluginctl, else on PATH), which failed to start: {e}", plugind.display());
        Failure::new(1, why)
    })?;
    match status.code() {
        Some(0) => Ok(()),
        // plugind said why on stderr already.
        Some(code) => Err(Failure::new(u8::try_from(code).unwrap_or(1), String::new())),
        None => Err(Failure::new(1, format!("plugind check ended by a signal ({status})"))),
    }
}

/// The `plugind` installed beside this executable, else the name alone (looked up on `PATH`).
fn plugind_beside_us() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("plugind")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("plugind"))
}

fn new_plugin(name: &str, lang: &str, dir: Option<PathBuf>, json_out: bool) -> Result<(), Failure> {
    use scaffold::{Lang, ScaffoldError};
    let lang: Lang = lang.parse().map_err(usage)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = scaffold::scaffold(name, lang, &dir).map_err(|e| match e {
        ScaffoldError::BadName(_) | ScaffoldError::RustDot(_) => usage(e.to_string()),
        other => Failure::new(1, other.to_string()),
    })?;
    if json_out {
        return print_json(&json!({ "dir": dir, "files": files }));
    }
    println!("created {} ({} files)", dir.display(), files.len());
    println!("next:\n{}", scaffold::next_steps(name, lang, &dir));
    Ok(())
}

/// Starts, stops or restarts each plugin (`extra` params besides the name). Exit code 1 when one
/// fails, or when a start or restart leaves a plugin `failed`, `blocked` or `invalid`.
async fn act(client: &Client, method: &str, names: Vec<String>, extra: Value, json_out: bool) -> Result<(), Failure> {
    let mut failure = None;
    let mut fail = |what: String| failure = Some(Failure::new(1, what));
    for name in names {
        let mut params = extra.clone();
        params["name"] = json!(name);
        match client.call(method, &params).await {
            Ok(result) => {
                let state = str_of(&result["state"]);
                if json_out {
                    print_json(&result)?;
                } else {
                    match result["last_error"].as_str() {
                        Some(e) if state != "running" && state != "stopped" => println!("{name}: {state} ({e})"),
                        _ => println!("{name}: {state}"),
                    }
                }
                if method != c::PLUGINS_STOP && matches!(state.as_str(), "failed" | "blocked" | "invalid") {
                    fail(format!("{name} is {state}"));
                }
            }
            Err(ClientError::Rpc(e)) => {
                if json_out {
                    print_json(&json!({ "error": { "code": e.code, "message": e.message, "data": e.data } }))?;
                }
                eprintln!("pluginctl: {name}: {}", e.message);
                fail(format!("{method} failed for some plugins"));
            }
            Err(e) => return Err(e.into()),
        }
    }
    failure.map_or(Ok(()), Err)
}

/// A `$/progress` for the call in flight, on stderr (stdout stays the result alone).
fn print_progress(p: &Progress, json_out: bool) {
    if json_out {
        eprintln!("{}", serde_json::to_string(p).unwrap_or_default());
        return;
    }
    let fraction = match (p.progress, p.total) {
        (Some(done), Some(total)) => format!(" ({done}/{total})"),
        (Some(done), None) => format!(" ({done})"),
        _ => String::new(),
    };
    eprintln!("progress: {}{fraction}", p.message.as_deref().unwrap_or("working"));
}

fn print_log_line(line: &Value, json_out: bool) {
    if json_out {
        println!("{line}");
    } else {
        let fields = line.get("fields").map_or(String::new(), |f| format!(" {f}"));
        println!(
            "{} {} [{}] {}: {}{fields}",
            str_of(&line["ts"]),
            str_of(&line["plugin"]),
            str_of(&line["stream"]),
            str_of(&line["level"]),
            str_of(&line["message"])
        );
    }
}

fn bad_answer(e: serde_json::Error) -> Failure {
    Failure::new(1, format!("unexpected answer from plugind: {e}"))
}

fn print_json(v: &Value) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    Ok(())
}

fn str_of(v: &Value) -> String {
    v.as_str().map_or_else(|| if v.is_null() { "-".into() } else { v.to_string() }, str::to_owned)
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == last { c.clone() } else { format!("{c:<w$}", w = widths[i]) })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(headers.iter().map(|h| (*h).to_owned()).collect()));
    for r in rows {
        println!("{}", line(r));
    }
}

fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn print_status(p: &PluginStatus) {
    println!("name:        {}", p.name);
    println!("version:     {}", p.version);
    println!("state:       {}", p.state);
    println!("dir:         {}", p.dir);
    println!("pid:         {}", p.pid.map_or("-".into(), |x| x.to_string()));
    println!("instances:   {}", p.instances);
    println!("restarts:    {}", p.restarts);
    println!("uptime:      {}", if p.uptime_ms > 0 { human_duration(p.uptime_ms) } else { "-".into() });
    println!("memory:      {}", p.memory_kb.map_or("-".into(), |k| format!("{k} KiB")));
    println!("calls:       {} total, {} failed, {} timed out", p.calls.total, p.calls.failed, p.calls.timed_out);
    println!(
        "services:    {}",
        p.services.iter().map(|s| format!("{}@{}", s.name, s.version)).collect::<Vec<_>>().join(", ")
    );
    if !p.refused_services.is_empty() {
        println!("refused services (registered, never routed):");
        for r in &p.refused_services {
            println!("  {}@{}: {}", r.name, r.version, r.reason);
        }
    }
    if !p.dependencies.is_empty() {
        println!("dependencies:");
        for d in &p.dependencies {
            println!(
                "  {}@{} ({}){}",
                d.name,
                d.range,
                if d.required { "required" } else { "optional" },
                if d.met { "" } else { " UNMET" }
            );
        }
    }
    if !p.permissions.is_empty() {
        println!("permissions:");
        for (name, s) in &p.permissions {
            let how = match (s.granted, s.enforced) {
                (true, _) => "granted".to_owned(),
                (false, true) => format!("denied, enforced by {}", s.mechanism),
                (false, false) => "denied, advisory only (not enforced on this host)".to_owned(),
            };
            println!("  {name:<11} {how}");
        }
    }
    if !p.sandbox.is_empty() {
        println!("sandbox:");
        for g in &p.sandbox {
            match &g.why {
                None => println!("  {:<30} holds: {}", g.guarantee, g.mechanism),
                Some(why) => println!("  {:<30} does NOT hold here: {why}", g.guarantee),
            }
        }
    }
    println!("last error:  {}", p.last_error.as_deref().unwrap_or("-"));
    if let Some(e) = &p.last_exit {
        let mut parts = Vec::new();
        if let Some(c) = e.code {
            parts.push(format!("code {c}"));
        }
        if let Some(s) = &e.signal {
            parts.push(format!("signal {s}"));
        }
        if let Some(l) = &e.limit {
            parts.push(format!("limit {l}"));
        }
        println!("last exit:   {} {}", parts.join(", "), e.ts.as_deref().unwrap_or(""));
    }
    if !p.stderr_tail.is_empty() {
        println!("stderr (last {} lines):", p.stderr_tail.len());
        for l in &p.stderr_tail {
            println!("  {l}");
        }
    }
    if !p.history.is_empty() {
        println!("history:");
        for h in p.history.iter().rev().take(10).collect::<Vec<_>>().into_iter().rev() {
            println!("  {}  {:<8} {}", h.ts, h.event, h.detail);
        }
    }
}
