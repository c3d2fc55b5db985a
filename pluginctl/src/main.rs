//! `pluginctl`: the CLI of plugind (`pluginctl --help`; docs/cli.md; the methods it calls are in
//! docs/control-api.md).
//!
//! It talks to plugind only through the `plugind-client` library and does not link the daemon:
//! `new` copies the embedded templates (`scaffold`), and `check`, which needs the daemon's
//! sandbox and instance driver, runs `plugind check` (the `plugind` beside this executable, else
//! the one on `PATH`). Tables and `key: value` blocks are printed by `output`, in colour on a
//! terminal only.
//!
//! Exit codes: 0 success, 1 the operation failed (message on stderr), 2 usage error,
//! 3 the daemon cannot be reached.

mod mcp;
mod methods;
mod output;
mod scaffold;

use clap::{Args as _, CommandFactory, FromArgMatches, Parser, Subcommand};
use output::{paint, state_style, Cell, BAD, GOOD, PLAIN, WARN};
use plugind_client::{Client, ClientError, Progress, RpcError};
use plugind_protocol::codes;
use plugind_protocol::control::{self as c, PluginStatus};
use plugind_protocol::text::printable;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Control plugind.
///
/// The connection options (--socket, --url, --token-file, --json) go before the command or after
/// it; `new` and `check` need no daemon and take only --json of them.
#[derive(Parser, Debug)]
#[command(name = "pluginctl", version, about)]
struct Args {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Cmd,
}

// How to reach plugind, and whether to print JSON. `pluginctl` takes these before the command,
// and every command that talks to plugind takes them after its name too (see `parse_args`).
// (A `///` comment here would become the `about` of every command that flattens it.)
#[derive(clap::Args, Debug, Default, Clone)]
#[command(next_help_heading = "Connection")]
struct Conn {
    /// Control socket (default: $PLUGIND_SOCKET, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, /tmp).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Talk to plugind's --listen API (a WebSocket) instead of the socket (http://HOST:PORT).
    #[arg(long, value_name = "URL", conflicts_with = "socket")]
    url: Option<String>,
    /// File holding the bearer token for --url.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the raw JSON result.
    #[arg(long)]
    json: bool,
}

impl Conn {
    /// These options given after the command, over those given before it.
    fn over(self, before: Conn) -> Conn {
        let (socket, url) = if self.socket.is_some() || self.url.is_some() {
            (self.socket, self.url)
        } else {
            (before.socket, before.url)
        };
        Conn { socket, url, token_file: self.token_file.or(before.token_file), json: self.json || before.json }
    }
}

/// The commands that need no daemon: they take none of [`Conn`]'s options but `--json`.
const DAEMONLESS: [&str; 2] = ["new", "check"];

/// Parses the command line: [`Conn`]'s options are added to every command that talks to plugind,
/// so that `pluginctl list --json` works as `pluginctl --json list` does, while the help of `new`
/// and `check` shows only their own options.
fn parse_args() -> Result<(Cmd, Conn), clap::Error> {
    let mut cmd = Args::command();
    let daemon_commands: Vec<String> =
        cmd.get_subcommands().map(|s| s.get_name().to_owned()).filter(|n| !DAEMONLESS.contains(&n.as_str())).collect();
    for name in &daemon_commands {
        cmd = cmd.mut_subcommand(name, Conn::augment_args);
    }
    let matches = cmd.try_get_matches()?;
    let args = Args::from_arg_matches(&matches)?;
    let after = match matches.subcommand() {
        Some((name, sub)) if daemon_commands.iter().any(|d| d == name) => Conn::from_arg_matches(sub)?,
        _ => Conn::default(),
    };
    Ok((args.command, after.over(args.conn)))
}

/// `--timeout-ms`: a whole number of milliseconds.
fn millis(s: &str) -> Result<u64, String> {
    s.trim().parse().map_err(|_| "expected a whole number of milliseconds, e.g. 5000".to_owned())
}

/// `-n`: a whole number of lines.
fn lines(s: &str) -> Result<usize, String> {
    s.trim().parse().map_err(|_| "expected a whole number of lines, e.g. 50".to_owned())
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
    /// A plugin's method catalog: METHOD TIMEOUT IDEMPOTENT PARAMS DESCRIPTION.
    Methods {
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
        #[arg(long, value_name = "MS", value_parser = millis)]
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
        #[arg(long, value_name = "MS", value_parser = millis)]
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
        /// Print the directory and the files written as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a plugin and drive it through init, register, ping, teardown (needs no daemon).
    Check {
        /// The plugin directory.
        dir: PathBuf,
        /// Also call this execute method.
        #[arg(long, value_name = "METHOD")]
        execute: Option<String>,
        /// Params for --execute, as JSON.
        #[arg(long, value_name = "JSON")]
        params: Option<String>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
        /// When the plugin breaks before it is ready, start it again with one part of its
        /// sandbox off at a time to find the part it trips over. Only for code you trust: those
        /// runs are not fully contained.
        #[arg(long)]
        diagnose: bool,
    },
    /// Recent log lines (stderr, `log` notifications, plugind's events); -f follows.
    Logs {
        /// Only this plugin.
        name: Option<String>,
        /// How many lines.
        #[arg(short = 'n', long = "lines", default_value_t = 100, value_parser = lines)]
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
        #[arg(long, value_name = "MS", value_parser = millis)]
        timeout_ms: Option<u64>,
    },
    /// Print plugind's metrics (Prometheus text).
    Metrics,
    /// plugind's version, pid, uptime and plugin counts.
    Info,
    /// Stop the daemon gracefully.
    Shutdown,
    /// Serve every running plugin's methods as MCP tools on stdio (for MCP clients; docs/mcp.md).
    Mcp,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    /// For people, on stderr: what went wrong and what to do (empty: already said).
    message: String,
    /// The JSON-RPC error object plugind answered, if that is what failed: `--json` prints it.
    error: Option<Value>,
}

/// A followed stream (`logs -f`, `trace`, `events`) ends only when plugind goes: exit 3, saying so.
fn stream_broken() -> Failure {
    Failure {
        code: 3,
        message: "the connection to plugind broke: did plugind stop? (`pluginctl info` checks)".into(),
        error: Some(json!({ "code": plugind_client::CONNECTION_LOST, "message": "connection to plugind lost" })),
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Rpc(rpc) => {
                Failure { code: 1, message: rpc_message(&rpc), error: serde_json::to_value(&rpc).ok() }
            }
            ClientError::Unreachable { path, source } => unreachable(&path, &source),
            ClientError::ConnectionLost => Failure {
                code: 3,
                message: "the connection to plugind broke before it answered: did plugind stop? \
                          (`pluginctl info` checks)"
                    .into(),
                error: Some(json!({ "code": plugind_client::CONNECTION_LOST, "message": e.to_string() })),
            },
        }
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

/// An OS error's text without the "(os error N)" tail people need not read.
fn os_text(e: &std::io::Error) -> String {
    without_errno(&e.to_string())
}

fn without_errno(text: &str) -> String {
    match text.find(" (os error ") {
        Some(i) => {
            let end = text[i..].find(')').map_or(text.len(), |j| i + j + 1);
            format!("{}{}", &text[..i], &text[end..])
        }
        None => text.to_owned(),
    }
}

/// Exit 3 (2 for a malformed `--url`): which socket or URL, why, and what to try.
fn unreachable(target: &Path, e: &std::io::Error) -> Failure {
    use std::io::ErrorKind;
    let target = target.display();
    if e.kind() == ErrorKind::InvalidInput {
        return usage(format!("--url {target}: {}", os_text(e)));
    }
    if target.to_string().starts_with("http://") || target.to_string().starts_with("ws://") {
        return Failure::new(
            3,
            format!(
                "cannot reach plugind at {target}: {}; is plugind running with --listen on that address?",
                os_text(e)
            ),
        );
    }
    use std::os::unix::fs::FileTypeExt;
    let not_a_socket = std::fs::metadata(target.to_string()).is_ok_and(|m| !m.file_type().is_socket());
    let why = match e.kind() {
        ErrorKind::NotFound => "there is no socket there".to_owned(),
        ErrorKind::ConnectionRefused if not_a_socket => "it is not a socket".to_owned(),
        ErrorKind::ConnectionRefused => "nothing listens on it (a socket left by a plugind that stopped?)".to_owned(),
        // The OS's EACCES; the client's own refusal of a server of another uid says more.
        ErrorKind::PermissionDenied if e.raw_os_error().is_some() => {
            "permission denied (plugind runs as another user?)".to_owned()
        }
        _ => os_text(e),
    };
    Failure::new(
        3,
        format!(
            "cannot reach plugind at {target}: {why}; is plugind running? \
             Start it (plugind --plugins DIR), or point at its socket with --socket PATH or $PLUGIND_SOCKET"
        ),
    )
}

/// plugind's (or the plugin's) error message, with what to do next where pluginctl knows it,
/// and the schema's complaints (`data.errors`) one per line.
fn rpc_message(e: &RpcError) -> String {
    let data = e.data.as_ref().unwrap_or(&Value::Null);
    let plugin = data["plugin"].as_str();
    let hint = match e.code {
        codes::SERVICE_NOT_FOUND if data.get("service").is_some() => {
            Some("`pluginctl services` lists the services provided".to_owned())
        }
        codes::SERVICE_NOT_FOUND if plugin.is_some() => Some("`pluginctl list` shows the plugins".to_owned()),
        // Only a plugin that is down for good needs starting: one stopping, starting or
        // restarting comes back (or not) by itself.
        codes::PLUGIN_UNAVAILABLE => plugin.map(|p| match data["state"].as_str() {
            Some("stopped" | "failed") => format!("`pluginctl status {p}` says why; `pluginctl start {p}` starts it"),
            _ => format!("`pluginctl status {p}` shows where it stands"),
        }),
        codes::INVALID_MANIFEST => plugin.map(|p| {
            format!("`pluginctl check` on its directory says what to fix; `pluginctl status {p}` shows the error")
        }),
        codes::DEADLINE_EXCEEDED => match data["limit"].as_str() {
            Some("max_timeout_ms") => Some("its manifest's max_timeout_ms caps every call; raise it there".to_owned()),
            Some("caller") => None,
            _ => Some("give it longer with --timeout-ms".to_owned()),
        },
        _ => None,
    };
    let mut text = e.message.clone();
    if let Some(h) = hint {
        text.push_str(&format!(" ({h})"));
    }
    for err in data["errors"].as_array().into_iter().flatten() {
        // The JSON pointer "" is the whole params ("/" would be the member named "").
        let path = err["path"].as_str().filter(|p| !p.is_empty()).unwrap_or("(the params)");
        text.push_str(&format!("\n  {path}: {}", str_of(&err["message"])));
    }
    text
}

/// `text` (the argument named `what`) checked as JSON and kept as it is, `{}` when absent; a usage
/// error in words otherwise. Not a [`Value`]: that stops at 128 levels of nesting, and valid JSON
/// nested deeper was refused as "unexpected '['" (audit 21); plugind takes it.
fn parse_json(what: &str, text: Option<&str>) -> Result<Box<RawValue>, Failure> {
    let text = text.unwrap_or("{}");
    let raw = serde_json::from_str::<Box<RawValue>>(text)
        .map_err(|e| usage(format!("{what} is not valid JSON: {}", json_problem(text, &e))))?;
    if !raw.get().contains(['\n', '\r']) {
        return Ok(raw);
    }
    // It goes on one line of the protocol: in valid JSON a line break is only ever whitespace
    // between tokens (a string cannot hold one unescaped).
    Ok(RawValue::from_string(raw.get().replace(['\n', '\r'], " ")).expect("UNWRAP: whitespace for whitespace"))
}

/// The object `fields` with `key` set to the raw JSON `value`, spliced in as it is (a [`Value`]
/// would decode it, refusing it past 128 levels).
fn with_raw(fields: Value, key: &str, value: &RawValue) -> Box<RawValue> {
    let mut text = fields.to_string();
    text.pop(); // the object's closing brace
    if text.len() > 1 {
        text.push(',');
    }
    text.push_str(&json!(key).to_string());
    text.push(':');
    text.push_str(value.get());
    text.push('}');
    RawValue::from_string(text).expect("UNWRAP: an object with one more member of valid JSON is valid JSON")
}

/// A result printed as JSON: pretty, or, nested past what a [`Value`] decodes (128 levels), as
/// plugind wrote it, on one line. `pick` chooses the member shown (`hook`'s `payload`).
fn print_result(result: &RawValue, pick: Option<&str>) {
    match serde_json::from_str::<Value>(result.get()) {
        Ok(v) => {
            let shown = pick.map_or(&v, |k| &v[k]);
            println!("{}", serde_json::to_string_pretty(shown).unwrap_or_default());
        }
        Err(_) => {
            let members = pick.and_then(|_| serde_json::from_str::<HashMap<String, Box<RawValue>>>(result.get()).ok());
            let shown = match (pick, &members) {
                (Some(k), Some(m)) => m.get(k).map_or("null", |v| v.get()),
                _ => result.get(),
            };
            println!("{shown}");
        }
    }
}

/// Why `text` is not JSON, for people: where, what was found there, and the usual cause.
fn json_problem(text: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    let quoting = "strings and object keys need double quotes, and the whole argument single quotes \
                   for the shell, e.g. '{\"name\": \"Ada\"}'";
    match e.classify() {
        Category::Eof if text.trim().is_empty() => "it is empty (give {} for no params)".to_owned(),
        Category::Eof => format!("it ends too early, at {at} (a missing }}, ] or \"?)"),
        Category::Syntax => {
            let found =
                text.lines().nth(e.line().saturating_sub(1)).and_then(|l| l.chars().nth(e.column().saturating_sub(1)));
            match found {
                Some(ch) if ch.is_alphabetic() || ch == '\'' => format!("unexpected {ch:?} at {at}: {quoting}"),
                Some(ch) => format!("unexpected {ch:?} at {at}"),
                None => format!("unexpected end of line at {at}"),
            }
        }
        Category::Data | Category::Io => format!("{e}"),
    }
}

/// The code of `--json`'s error object for a usage error (exit 2): JSON-RPC's "invalid params".
const USAGE_ERROR: i64 = -32602;

/// `--json`'s error object on stdout.
fn print_json_error(error: &Value) {
    println!("{}", json!({ "error": error }));
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away (`| head`).
    // SAFETY: setting a signal disposition to its default before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let (command, conn) = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if e.use_stderr() && std::env::args_os().any(|a| a == "--json") {
                // The parser's report up to its usage line, on one line, without "error: ".
                let text = e.render().to_string();
                let report: Vec<&str> = text
                    .lines()
                    .take_while(|l| !l.starts_with("Usage:"))
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                let message = report.join(" ").trim_start_matches("error: ").to_owned();
                print_json_error(&json!({ "code": USAGE_ERROR, "message": message }));
            }
            if !e.use_stderr() {
                let _ = e.print(); // --help, --version: on stdout
                return ExitCode::SUCCESS;
            }
            // Like every other error, one that starts with `pluginctl:` (the parser says "error:").
            let text = e.render().to_string();
            eprint!("pluginctl: {}", text.strip_prefix("error: ").unwrap_or(&text));
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("UNWRAP: a current-thread runtime builds");
    let json_out = conn.json;
    match rt.block_on(run(command, conn)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // --json: a JSON-RPC error as the error object on stdout, for scripts; the message
            // still goes to stderr for people. A usage error and an unreachable plugind get one
            // too, so that a script reading stdout always finds JSON when a command fails before
            // plugind answered.
            let error = f.error.clone().or_else(|| match f.code {
                2 => Some(json!({ "code": USAGE_ERROR, "message": f.message })),
                3 => Some(json!({ "code": plugind_client::CONNECTION_LOST, "message": f.message })),
                _ => None,
            });
            if let (true, Some(error)) = (json_out, &error) {
                print_json_error(error);
            }
            if !f.message.is_empty() {
                eprintln!("pluginctl: {}", output::plain_lines(&f.message));
            }
            ExitCode::from(f.code)
        }
    }
}

async fn run(command: Cmd, conn: Conn) -> Result<(), Failure> {
    let json_out = conn.json;
    if let Cmd::New { name, lang, dir, json } = &command {
        return new_plugin(name, lang, dir.clone(), *json || json_out);
    }
    if let Cmd::Check { dir, execute, params, json, diagnose } = &command {
        return check_plugin(dir, execute.as_deref(), params.as_deref(), *json || json_out, *diagnose);
    }
    if conn.url.as_deref().is_some_and(|u| u.starts_with("http://") || u.starts_with("ws://"))
        && conn.token_file.is_none()
    {
        // plugind's --listen refuses every request without its token: say so now, as a usage
        // error (a malformed URL is reported as such when connecting).
        return Err(usage(
            "--url needs --token-file FILE: plugind's --listen API answers only requests bearing its token".into(),
        ));
    }
    if let Cmd::Mcp = &command {
        // Reconnecting: an MCP client keeps this server for its whole session.
        let connect = match &conn.url {
            Some(url) => Client::builder().url(url.clone()),
            None => Client::builder().socket(conn.socket.clone().unwrap_or_else(plugind_client::default_socket)),
        };
        let token = conn.token_file.as_deref().map(plugind_client::read_token).transpose().map_err(usage)?;
        let connect = match token {
            Some(t) => connect.token(t),
            None => connect,
        };
        return mcp::run(connect.connect().await?).await.map_err(|e| Failure::new(1, e.to_string()));
    }
    // Validate arguments before connecting so usage errors win over an absent daemon.
    let request = match &command {
        Cmd::Call { plugin, method, params, timeout_ms } => {
            let params = parse_json("PARAMS", params.as_deref())?;
            let mut p = json!({ "plugin": plugin, "method": method });
            if let Some(t) = timeout_ms {
                p["timeout_ms"] = json!(t);
            }
            Some((c::EXECUTE, with_raw(p, "params", &params)))
        }
        Cmd::Service { service, method, params, timeout_ms } => {
            let (name, version) = match service.split_once('@') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (service.clone(), None),
            };
            let params = parse_json("PARAMS", params.as_deref())?;
            let mut p = json!({ "service": name, "method": method });
            if let Some(v) = version {
                p["version"] = json!(v);
            }
            if let Some(t) = timeout_ms {
                p["timeout_ms"] = json!(t);
            }
            Some((c::SERVICES_CALL, with_raw(p, "params", &params)))
        }
        Cmd::Hook { hook, payload, timeout_ms } => {
            let payload = parse_json("PAYLOAD", payload.as_deref())?;
            let mut p = json!({ "hook": hook });
            if let Some(t) = timeout_ms {
                p["timeout_ms"] = json!(t);
            }
            Some((c::HOOKS_RUN, with_raw(p, "payload", &payload)))
        }
        _ => None,
    };
    let (client, target) = match &conn.url {
        Some(url) => {
            let token = conn
                .token_file
                .as_deref()
                .map(plugind_client::read_token)
                .transpose()
                .map_err(|e| usage(format!("--token-file: {}", without_errno(&e))))?;
            (Client::connect_url(url, token).await?, url.clone())
        }
        None => {
            if conn.token_file.is_some() {
                return Err(usage("--token-file goes with --url (the socket needs no token)".into()));
            }
            let socket = conn.socket.clone().unwrap_or_else(plugind_client::default_socket);
            (Client::connect(&socket).await?, socket.display().to_string())
        }
    };
    if let Some((method, params)) = request {
        // Raw both ways: params and results nested at any depth pass through (audit 21).
        let result = client.call_raw(method, &params, move |p| print_progress(&p, json_out)).await?;
        // `hook` prints the final payload; --json prints the whole result (handled_by, stopped_by).
        print_result(&result, (method == c::HOOKS_RUN && !json_out).then_some("payload"));
        return Ok(());
    }
    match command {
        Cmd::List => {
            let result = client.call(c::PLUGINS_LIST, &json!({})).await?;
            if json_out {
                return print_json(&result);
            }
            let list: Vec<PluginStatus> = serde_json::from_value(result).map_err(bad_answer)?;
            output::table(
                &["NAME", "VERSION", "STATE", "PID", "RESTARTS", "UPTIME", "SERVICES"],
                list.iter()
                    .map(|p| {
                        vec![
                            p.name.clone().into(),
                            p.version.clone().into(),
                            Cell::styled(p.state.clone(), state_style(&p.state)),
                            p.pid.map_or("-".into(), |x| x.to_string()).into(),
                            p.restarts.to_string().into(),
                            if p.uptime_ms > 0 { human_duration(p.uptime_ms) } else { "-".into() }.into(),
                            p.services
                                .iter()
                                .map(|s| format!("{}@{}", s.name, s.version))
                                .collect::<Vec<_>>()
                                .join(",")
                                .into(),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Status { name } => {
            let result = client.call(c::PLUGINS_GET, &json!({ "name": name })).await?;
            if json_out {
                return print_json(&result);
            }
            let p: PluginStatus = serde_json::from_value(result).map_err(bad_answer)?;
            print_status(&p);
        }
        Cmd::Methods { name } => methods::run(&client, &name, json_out).await?,
        Cmd::Start { names } => act(&client, c::PLUGINS_START, names, json!({}), json_out).await?,
        Cmd::Stop { names } => act(&client, c::PLUGINS_STOP, names, json!({}), json_out).await?,
        Cmd::Restart { hard, names } => {
            act(&client, c::PLUGINS_RESTART, names, json!({ "hard": hard }), json_out).await?
        }
        Cmd::Reload => {
            let result = client.call(c::PLUGINS_RELOAD, &json!({})).await?;
            // The rescan happened, but a script must be able to tell that some plugin could not
            // be loaded: exit 1 then, as `start` does for a plugin left `invalid`.
            let errors = result["errors"].as_array().map_or(0, Vec::len);
            let failed = || {
                let what = if errors == 1 { "a plugin" } else { "some plugins" };
                Err(Failure::new(1, format!("reloaded, but {what} could not be loaded: see errors")))
            };
            if json_out {
                print_json(&result)?;
                return if errors > 0 { failed() } else { Ok(()) };
            }
            for key in ["added", "removed", "changed", "errors"] {
                let items = result[key].as_array().cloned().unwrap_or_default();
                let items: Vec<String> =
                    items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect();
                let style = if key == "errors" && !items.is_empty() { BAD } else { PLAIN };
                if key == "errors" && items.len() > 1 {
                    // Each naming its file and field: one per line, aligned under the first.
                    output::row(key, &items[0], style);
                    for e in &items[1..] {
                        output::row("", e, style);
                    }
                } else {
                    output::row(key, &if items.is_empty() { "-".into() } else { items.join(", ") }, style);
                }
            }
            if errors > 0 {
                return failed();
            }
        }
        Cmd::Services { capability } => {
            let params = capability.map_or(json!({}), |cap| json!({ "capability": cap }));
            let result = client.call(c::SERVICES_LIST, &params).await?;
            if json_out {
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
                        str_of(&s["name"]).into(),
                        str_of(&s["version"]).into(),
                        str_of(&s["plugin"]).into(),
                        if caps.is_empty() { "-".into() } else { caps.join(",") }.into(),
                    ]
                })
                .collect();
            output::table(&["NAME", "VERSION", "PLUGIN", "CAPABILITIES"], rows);
        }
        Cmd::Logs { name, lines, follow } => {
            let mut params = json!({ "lines": lines, "follow": follow });
            if let Some(n) = &name {
                params["plugin"] = json!(n);
            }
            let result = client.call(c::LOGS_TAIL, &params).await?;
            for line in result["lines"].as_array().cloned().unwrap_or_default() {
                print_log_line(&line, json_out);
            }
            if follow {
                while let Some((method, line)) = client.notification().await {
                    if method == c::LOG_NOTIFICATION {
                        print_log_line(&line, json_out);
                    }
                }
                return Err(stream_broken());
            }
        }
        Cmd::Trace { name } => {
            client.call(c::PLUGINS_TRACE, &json!({ "name": name })).await?;
            // A plugin that does not run has nothing to show yet: say so rather than wait mute.
            if let Ok(status) = client.call(c::PLUGINS_GET, &json!({ "name": name })).await {
                let state = str_of(&status["state"]);
                if state != "running" {
                    let why =
                        status["last_error"].as_str().map(|e| format!(": {}", output::plain(e))).unwrap_or_default();
                    eprintln!("pluginctl: {name} is {state}{why}; its messages show here once it runs");
                }
            }
            while let Some((method, msg)) = client.notification().await {
                if method == c::TRACE_NOTIFICATION {
                    println!("{msg}");
                }
            }
            return Err(stream_broken());
        }
        Cmd::Events => {
            client.call(c::EVENTS_SUBSCRIBE, &json!({})).await?;
            while let Some((method, ev)) = client.notification().await {
                if method != c::EVENT_NOTIFICATION {
                    continue;
                }
                if json_out {
                    println!("{ev}");
                } else {
                    let state =
                        ev["state"].as_str().map(|s| format!(" {}", paint(state_style(s), s))).unwrap_or_default();
                    anstream::println!(
                        "{} {} {}{} {}",
                        str_of(&ev["ts"]),
                        str_of(&ev["plugin"]),
                        str_of(&ev["kind"]),
                        state,
                        output::plain(&str_of(&ev["detail"]))
                    );
                }
            }
            return Err(stream_broken());
        }
        Cmd::Metrics => {
            let result = client.call(c::METRICS_GET, &json!({})).await?;
            if json_out {
                return print_json(&result);
            }
            // Label values are plugins' text (`metrics.emit`): printable on a terminal.
            print!("{}", output::plain_lines(result["text"].as_str().unwrap_or_default()));
        }
        Cmd::Info => {
            let result = client.call(c::SUPERVISOR_STATUS, &json!({})).await?;
            if json_out {
                return print_json(&result);
            }
            print_info(&result, &target);
        }
        Cmd::Shutdown => {
            client.call(c::SUPERVISOR_SHUTDOWN, &json!({})).await?;
            if !json_out {
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
fn check_plugin(
    dir: &Path,
    execute: Option<&str>,
    params: Option<&str>,
    json_out: bool,
    diagnose: bool,
) -> Result<(), Failure> {
    if !dir.is_dir() {
        let what = if dir.exists() { "is not a directory" } else { "does not exist" };
        return Err(usage(format!(
            "{} {what}: give the plugin's directory, the one holding plugin.json",
            dir.display()
        )));
    }
    if params.is_some() && execute.is_none() {
        return Err(usage("--params goes with --execute METHOD (the call it is for)".into()));
    }
    parse_json("--params", params)?;
    let plugind = plugind_beside_us();
    let mut cmd = std::process::Command::new(&plugind);
    // plugind names itself after argv[0] in what it prints: the user ran pluginctl.
    std::os::unix::process::CommandExt::arg0(&mut cmd, "pluginctl");
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
    if diagnose {
        cmd.arg("--diagnose");
    }
    let status = cmd.status().map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "none was found beside pluginctl or on PATH: install plugind next to pluginctl, or put it on PATH"
                .to_owned()
        } else {
            format!("{} failed to start: {}", plugind.display(), os_text(&e))
        };
        Failure::new(1, format!("`pluginctl check` runs `plugind check`, and {why}"))
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
    let lang: Lang = lang.parse().map_err(|e| usage(format!("--lang: {e}")))?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = scaffold::scaffold(name, lang, &dir).map_err(|e| match e {
        ScaffoldError::BadName(_) | ScaffoldError::RustDot(_) => usage(e.to_string()),
        other => Failure::new(1, other.to_string()),
    })?;
    if json_out {
        return print_json(&json!({ "dir": dir, "files": files }));
    }
    println!("created {} ({} files)", dir.display(), files.len());
    println!("{}", scaffold::next_steps(name, lang, &dir));
    Ok(())
}

/// Starts, stops or restarts each plugin (`extra` params besides the name). Exit code 1 when one
/// fails, or when a start or restart leaves a plugin `failed`, `blocked` or `invalid`.
///
/// With `--json`, one document: the answer for one name, an array of them (in order) for several.
async fn act(client: &Client, method: &str, names: Vec<String>, extra: Value, json_out: bool) -> Result<(), Failure> {
    let mut failure = None;
    let mut fail = |what: String| failure = Some(Failure::new(1, what));
    let several = names.len() > 1;
    let mut answers = Vec::new();
    for name in names {
        let mut params = extra.clone();
        params["name"] = json!(name);
        match client.call(method, &params).await {
            Ok(result) => {
                let state = str_of(&result["state"]);
                if json_out {
                    answers.push(result.clone());
                } else {
                    let shown = paint(state_style(&state), &state);
                    match result["last_error"].as_str() {
                        Some(e) if state != "running" && state != "stopped" => {
                            anstream::println!("{name}: {shown} ({})", printable(e))
                        }
                        _ => anstream::println!("{name}: {shown}"),
                    }
                }
                if method != c::PLUGINS_STOP && matches!(state.as_str(), "failed" | "blocked" | "invalid") {
                    fail(format!("{name} is {state} (`pluginctl status {name}` says why)"));
                }
            }
            Err(ClientError::Rpc(e)) => {
                if json_out {
                    answers.push(json!({ "error": { "code": e.code, "message": e.message, "data": e.data } }));
                }
                eprintln!("pluginctl: {name}: {}", output::plain(&rpc_message(&e)));
                let verb = method.trim_start_matches("plugins.");
                fail(if several {
                    format!("{verb} failed for some of the plugins named")
                } else {
                    format!("{verb} of {name} failed")
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    if json_out {
        match answers.pop() {
            // An error object on one line, as every other command prints one.
            Some(only) if !several && only.get("error").is_some() => println!("{only}"),
            Some(only) if !several => print_json(&only)?,
            Some(last) => {
                answers.push(last);
                print_json(&Value::Array(answers))?;
            }
            None => {}
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
    eprintln!("progress: {}{fraction}", output::plain(p.message.as_deref().unwrap_or("working")));
}

fn print_log_line(line: &Value, json_out: bool) {
    if json_out {
        println!("{line}");
    } else {
        // A plugin's text as text: its control characters escaped (no forged lines, nothing
        // for the terminal to act on).
        let fields = line.get("fields").map_or(String::new(), |f| format!(" {}", printable(&f.to_string())));
        println!(
            "{} {} [{}] {}: {}{fields}",
            str_of(&line["ts"]),
            str_of(&line["plugin"]),
            str_of(&line["stream"]),
            str_of(&line["level"]),
            printable(&str_of(&line["message"]))
        );
    }
}

fn bad_answer(e: serde_json::Error) -> Failure {
    Failure::new(
        1,
        format!(
            "plugind answered something this pluginctl does not understand ({e}): are they the same version? \
             (`pluginctl --version`, `pluginctl --json info`)"
        ),
    )
}

fn print_json(v: &Value) -> Result<(), Failure> {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    Ok(())
}

fn str_of(v: &Value) -> String {
    v.as_str().map_or_else(|| if v.is_null() { "-".into() } else { v.to_string() }, str::to_owned)
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

/// `pluginctl info`: `supervisor.status` as `key: value` rows, the plugin counts as a section;
/// fields this pluginctl does not know yet are shown as they come.
fn print_info(status: &Value, target: &str) {
    output::row("version", &str_of(&status["version"]), PLAIN);
    output::row("pid", &str_of(&status["pid"]), PLAIN);
    output::row("uptime", &status["uptime_ms"].as_u64().map_or("-".into(), human_duration), PLAIN);
    output::row("reached at", target, PLAIN);
    output::section("plugins");
    let counts = &status["plugins"];
    for (key, style) in [("total", PLAIN), ("running", GOOD), ("failed", BAD), ("blocked", BAD)] {
        let n = counts[key].as_u64().unwrap_or(0);
        output::item(&format!("{key:<8} {}", paint(if n > 0 { style } else { PLAIN }, &n.to_string())));
    }
    for (key, n) in counts.as_object().into_iter().flatten() {
        if !["total", "running", "failed", "blocked"].contains(&key.as_str()) {
            output::item(&format!("{key:<8} {}", str_of(n)));
        }
    }
    let known = ["version", "pid", "uptime_ms", "plugins"];
    for (key, value) in status.as_object().into_iter().flatten().filter(|(k, _)| !known.contains(&k.as_str())) {
        match value {
            Value::Object(fields) => {
                output::section(key);
                for (k, v) in fields {
                    output::item(&format!("{k}: {}", str_of(v)));
                }
            }
            Value::Array(items) => {
                output::row(key, &items.iter().map(str_of).collect::<Vec<_>>().join(", "), PLAIN);
            }
            other => output::row(key, &str_of(other), PLAIN),
        }
    }
}

fn print_status(p: &PluginStatus) {
    use output::{item, row, section};
    row("name", &p.name, PLAIN);
    row("version", &p.version, PLAIN);
    row("state", &p.state, state_style(&p.state));
    row("dir", &p.dir, PLAIN);
    row("pid", &p.pid.map_or("-".into(), |x| x.to_string()), PLAIN);
    row("instances", &p.instances.to_string(), PLAIN);
    row("restarts", &p.restarts.to_string(), PLAIN);
    row("uptime", &if p.uptime_ms > 0 { human_duration(p.uptime_ms) } else { "-".into() }, PLAIN);
    row("memory", &p.memory_kb.map_or("-".into(), |k| format!("{k} KiB")), PLAIN);
    row(
        "calls",
        &format!("{} total, {} failed, {} timed out", p.calls.total, p.calls.failed, p.calls.timed_out),
        PLAIN,
    );
    row(
        "services",
        &p.services.iter().map(|s| format!("{}@{}", s.name, s.version)).collect::<Vec<_>>().join(", "),
        PLAIN,
    );
    if !p.refused_services.is_empty() {
        section("refused services (registered, never routed)");
        for r in &p.refused_services {
            item(&paint(WARN, &output::plain(&format!("{}@{}: {}", r.name, r.version, r.reason))));
        }
    }
    if !p.dependencies.is_empty() {
        section("dependencies");
        for d in &p.dependencies {
            let kind = if d.required { "required" } else { "optional" };
            let (met, style) = if d.met { ("met", GOOD) } else { ("UNMET", BAD) };
            item(&format!("{}@{} ({kind}) {}", d.name, d.range, paint(style, met)));
        }
    }
    if !p.permissions.is_empty() {
        section("permissions");
        for (name, s) in &p.permissions {
            let (how, style) = match (s.granted, s.enforced) {
                (true, _) => ("granted".to_owned(), PLAIN),
                (false, true) => (format!("denied, enforced by {}", s.mechanism), GOOD),
                (false, false) => ("denied, advisory only (not enforced on this host)".to_owned(), WARN),
            };
            item(&format!("{name:<11} {}", paint(style, &how)));
        }
    }
    if !p.sandbox.is_empty() {
        section("sandbox");
        for g in &p.sandbox {
            match &g.why {
                None => item(&format!("{:<30} {}", g.guarantee, paint(GOOD, &format!("holds: {}", g.mechanism)))),
                Some(why) => {
                    item(&format!("{:<30} {}", g.guarantee, paint(BAD, &format!("does NOT hold here: {why}"))))
                }
            }
        }
    }
    match p.last_error.as_deref() {
        Some(e) => row("last error", &printable(e), BAD),
        None => row("last error", "-", PLAIN),
    }
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
        let clean = e.code == Some(0) && e.signal.is_none() && e.limit.is_none();
        let text = format!("{} {}", parts.join(", "), e.ts.as_deref().unwrap_or(""));
        row("last exit", text.trim_end(), if clean { PLAIN } else { BAD });
    }
    if !p.stderr_tail.is_empty() {
        section(&format!("stderr (last {} lines)", p.stderr_tail.len()));
        for l in &p.stderr_tail {
            item(&output::plain(l));
        }
    }
    if !p.history.is_empty() {
        section("history");
        for h in p.history.iter().rev().take(10).collect::<Vec<_>>().into_iter().rev() {
            item(&format!("{}  {:<8} {}", h.ts, h.event, output::plain(&h.detail)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> String {
        json_problem(text, &serde_json::from_str::<Value>(text).expect_err("not JSON"))
    }

    #[test]
    fn json_problems_are_said_in_words() {
        let p = problem("{name: \"Ada\"}");
        assert!(p.starts_with("unexpected 'n' at line 1 column 2: strings and object keys need double quotes"), "{p}");
        assert_eq!(problem("[1,"), "it ends too early, at line 1 column 3 (a missing }, ] or \"?)");
        assert_eq!(problem("{\"a\": }"), "unexpected '}' at line 1 column 7");
        assert_eq!(problem(""), "it is empty (give {} for no params)");
    }

    /// "start it" only for a plugin down for good: one stopping or restarting comes back by itself.
    #[test]
    fn an_unavailable_plugin_is_told_to_be_started_only_when_down_for_good() {
        let unavailable = |state: &str| {
            rpc_message(&RpcError::with_data(
                codes::PLUGIN_UNAVAILABLE,
                "plugin p is unavailable",
                json!({"plugin": "p", "state": state}),
            ))
        };
        for state in ["stopped", "failed"] {
            assert!(unavailable(state).contains("`pluginctl start p` starts it"), "{state}");
        }
        for state in ["stopping", "starting", "restarting", "blocked"] {
            let m = unavailable(state);
            assert!(!m.contains("pluginctl start") && m.contains("`pluginctl status p`"), "{state}: {m}");
        }
    }

    #[test]
    fn os_errors_lose_their_number() {
        assert_eq!(without_errno("No such file or directory (os error 2)"), "No such file or directory");
        assert_eq!(without_errno("cannot read x: Permission denied (os error 13)"), "cannot read x: Permission denied");
        assert_eq!(without_errno("plain"), "plain");
    }

    #[test]
    fn options_after_the_command_win() {
        let before = Conn { socket: Some("/a".into()), json: true, ..Conn::default() };
        let after = Conn { url: Some("http://h:1".into()), ..Conn::default() };
        let c = after.over(before);
        assert_eq!((c.socket, c.url.as_deref(), c.json), (None, Some("http://h:1"), true));
    }
}
