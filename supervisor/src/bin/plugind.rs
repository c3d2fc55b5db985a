//! `plugind`: the daemon. See `docs/configuration.md` and `docs/systemd.md`.
//!
//! `plugind check DIR` is the one subcommand: it drives a plugin through its lifecycle without a
//! daemon, with the daemon's own sandbox and instance code. `pluginctl check` runs it, so that
//! `pluginctl` need not link this crate.

use clap::Parser;
use plugind::config::{Config, LogFormat, Settings};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// mimalloc instead of glibc malloc: allocation was a tenth of plugind's instructions per call,
/// most of it in `_int_malloc`/`_int_free` for blocks past glibc's per-thread cache
/// (docs/benchmarks.md, "Top costs").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Process-isolated plugin supervisor.
///
/// Settings come from the flags, else the config file (--config), else the defaults.
#[derive(Parser, Debug)]
#[command(name = "plugind", version, about, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// TOML config file: the flags' keys plus [plugins.NAME] tables (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of plugins (each subdirectory with a plugin.json); repeatable.
    #[arg(long = "plugins", value_name = "DIR")]
    plugins: Vec<PathBuf>,
    /// Control socket path (default: $PLUGIND_SOCKET, $RUNTIME_DIRECTORY, $XDG_RUNTIME_DIR, /tmp).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory (default: $STATE_DIRECTORY, else ./state).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Do not hot-restart plugins when their files change.
    #[arg(long)]
    no_watch: bool,
    /// Log format on stderr (default text).
    #[arg(long, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Also serve the control API over HTTP and WebSocket on ADDR (HOST:PORT); needs --token-file.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// File holding the bearer token that --listen requires.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Seconds a --listen connection may be silent before TCP keepalive probes its peer; one that answers none is dropped after as long again (default 30).
    #[arg(long, value_name = "S")]
    listen_keepalive_s: Option<u64>,
    /// Serve GET /metrics (Prometheus text) on ADDR (HOST:PORT).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Export a span per call, hop and hook step over OTLP/HTTP to URL (http://HOST:PORT; spans go to URL/v1/traces).
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Graceful stop budget in seconds: plugins still running then are killed (default 30).
    #[arg(long, value_name = "S")]
    stop_timeout_s: Option<u64>,
    /// Longest wait in seconds for plugins to settle before plugind is ready (READY=1), at start and on reload; they go on starting (default 60).
    #[arg(long, value_name = "S")]
    ready_timeout_s: Option<u64>,
    /// Log lines kept per plugin (default 1000).
    #[arg(long, value_name = "N")]
    log_lines: Option<usize>,
    /// Threads running plugind's tasks (default: half the CPUs, at least 1).
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    /// Health ping period in milliseconds (default 10000; at least 10).
    #[arg(long, value_name = "MS")]
    ping_interval_ms: Option<u64>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Validate a plugin and drive it through init, register, ping, teardown, without a daemon
    /// (what `pluginctl check` runs).
    Check {
        /// The plugin directory.
        dir: PathBuf,
        /// Also call this execute method.
        #[arg(long)]
        execute: Option<String>,
        /// Params for --execute, as JSON.
        #[arg(long)]
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
}

impl Args {
    /// The flags as a settings layer: only what was given.
    fn settings(&self) -> Settings {
        Settings {
            plugin_dirs: (!self.plugins.is_empty()).then(|| self.plugins.clone()),
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            watch: self.no_watch.then_some(false),
            log_format: self.log_format.as_deref().and_then(|f| f.parse::<LogFormat>().ok()),
            listen: self.listen.clone(),
            token_file: self.token_file.clone(),
            listen_keepalive_s: self.listen_keepalive_s,
            metrics: self.metrics.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            ping_interval_ms: self.ping_interval_ms,
            stop_timeout_s: self.stop_timeout_s,
            ready_timeout_s: self.ready_timeout_s,
            log_lines: self.log_lines,
            worker_threads: self.worker_threads,
            plugins: Default::default(),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Sub::Check { dir, execute, params, json, diagnose }) = args.command {
        return check(&dir, execute, params.as_deref(), json, diagnose);
    }
    // Settings first: a bad config file is reported before anything starts.
    let file = match &args.config {
        Some(path) => match Settings::load(path) {
            Ok(s) => Some((path.clone(), s)),
            Err(e) => return fail(&e),
        },
        None => None,
    };
    let cfg = match Config::resolve(args.settings(), file) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLUGIND_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        // Its own report of a failed write is an `eprintln!`, which panics on a closed stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Some(f) = &cfg.file {
        tracing::info!(file = %f.display(), "config file loaded");
    }
    let workers = cfg.worker_threads.unwrap_or_else(plugind::config::default_worker_threads);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say(format_args!("plugind: cannot start the runtime: {e}"));
            return std::process::ExitCode::FAILURE;
        }
    };
    // Signal handlers go in before anything is bound: a SIGTERM from now on is a graceful stop.
    let shutdown = {
        let _runtime = rt.enter();
        shutdown_signal()
    };
    match rt.block_on(plugind::run(cfg, shutdown)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once, as a command-line error: the log goes to the same stderr.
            say(format_args!("plugind: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// What `plugind check` hides from the plugin it runs: what a plugind started here with no
/// flags would hide, and what every plugind running on this host hides, found through `/proc`:
/// its command line resolved as it resolved it, from its working directory and with its
/// environment (`STATE_DIRECTORY`, `RUNTIME_DIRECTORY`… under systemd). Also the pids of those
/// whose `/proc` files this user cannot read (a plugind is not dumpable: only root can).
fn hidden_from_check() -> (plugind::sandbox::PrivatePaths, Vec<String>) {
    /// The variables plugind's defaults read.
    const DEFAULTS_FROM: [&str; 4] = ["STATE_DIRECTORY", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR", "PLUGIND_SOCKET"];
    let mut hidden = plugind::sandbox::PrivatePaths::default();
    let mut unseen = Vec::new();
    let mut add = |cfg: &Config| {
        hidden.state_dirs.push(cfg.state_dir.clone());
        hidden.plugin_roots.extend(cfg.plugin_dirs.iter().cloned());
        hidden.files.push(cfg.socket.clone());
        hidden.secrets.extend([cfg.token_file.as_ref(), cfg.file.as_ref()].into_iter().flatten().cloned());
    };
    if let Ok(cfg) = Config::resolve(Settings::default(), None) {
        add(&cfg);
    }
    let here = std::env::current_dir().ok();
    let ours: Vec<(&str, Option<std::ffi::OsString>)> =
        DEFAULTS_FROM.iter().map(|k| (*k, std::env::var_os(k))).collect();
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // `plugind`, and renamed copies (`plugind-1.2`); not `pluginctl`.
        let name =
            argv.first().and_then(|a| std::path::Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
        if !name.is_some_and(|n| n == "plugind" || n.starts_with("plugind-") || n.starts_with("plugind.")) {
            continue;
        }
        let Ok(args) = Args::try_parse_from(&argv) else { continue };
        if args.command.is_some() {
            continue;
        }
        // Its relative paths are relative to its working directory, its defaults its environment's.
        let environ = std::fs::read(format!("/proc/{pid}/environ"));
        let (Ok(environ), Ok(())) = (environ, std::env::set_current_dir(format!("/proc/{pid}/cwd"))) else {
            unseen.push(pid);
            continue;
        };
        for key in DEFAULTS_FROM {
            let prefix = format!("{key}=");
            let value = environ.split(|b| *b == 0).find_map(|v| v.strip_prefix(prefix.as_bytes()));
            match value {
                Some(v) => std::env::set_var(key, std::ffi::OsStr::from_bytes(v)),
                None => std::env::remove_var(key),
            }
        }
        let file =
            args.config.as_ref().and_then(|path| Some((std::path::absolute(path).ok()?, Settings::load(path).ok()?)));
        if let Ok(cfg) = Config::resolve(args.settings(), file) {
            add(&cfg);
        }
    }
    for (key, value) in ours {
        match value {
            Some(v) => std::env::set_var(key, v),
            None => std::env::remove_var(key),
        }
    }
    if let Some(dir) = here {
        let _ = std::env::set_current_dir(dir);
    }
    (hidden, unseen)
}

/// Reports a settings error (before logging is set up) and exits 1.
fn fail(e: &plugind::config::ConfigError) -> std::process::ExitCode {
    say(format_args!("plugind: {e}"));
    std::process::ExitCode::FAILURE
}

/// plugind's stderr, where losing a line is fine and failing is not: when the pipe has gone
/// (a `| tee` or log shipper that ended), log lines are dropped and plugind goes on serving.
/// (`eprintln!` and `std::io::stderr` as a tracing writer panic or complain instead.)
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// One line on stderr, if it is still there.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Completes on the first SIGTERM or SIGINT; a second one exits at once. The handlers are
/// installed when this is called (inside the runtime), not when the future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(term), Ok(int)) = handlers else {
            tracing::warn!("cannot handle SIGTERM/SIGINT");
            return std::future::pending().await;
        };
        wait_for_signals(term, int).await;
    }
}

async fn wait_for_signals(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: graceful stop (send it again to stop at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        // Its plugins die with it (parent-death signal); what they started in sessions of
        // their own is in their cgroups, which go too once empty (a moment at most), and so
        // does the socket (audit 21: both were left). Temp dirs are left to the next start's
        // sweep: removing a large tree is no "at once".
        let cgroups = &plugind::sandbox::init().cgroups;
        cgroups.kill_own_instances();
        plugind::control::socket::remove_bound();
        cgroups.remove_own_instances(std::time::Duration::from_millis(500)).await;
        std::process::exit(0);
    });
}

/// What plugind is called in what it prints: `pluginctl check` runs `plugind check` with
/// argv[0] `pluginctl`, so its user reads the name of the command they ran.
fn program_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| Some(std::path::Path::new(&a).file_name()?.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "plugind".to_owned())
}

/// `plugind check`: prints the findings (a table, or JSON with `--json`) and exits 0 when the
/// plugin passed, 1 when it has problems, 2 for bad `--params`.
fn check(
    dir: &std::path::Path,
    execute: Option<String>,
    params: Option<&str>,
    json_out: bool,
    diagnose: bool,
) -> std::process::ExitCode {
    use plugind::check::Level;
    use serde_json::{json, Value};
    let params: Value = match params.map(serde_json::from_str).transpose() {
        Ok(p) => p.unwrap_or_else(|| json!({})),
        Err(e) => {
            eprintln!("{}: --params is not valid JSON: {e}", program_name());
            return std::process::ExitCode::from(2);
        }
    };
    // `check` writes to a plugin's stdin: a plugin that dies meanwhile must give an EPIPE
    // to report, not a SIGPIPE that ends plugind before it says anything.
    // SAFETY: setting a signal disposition before any thread exists; no handler runs Rust code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // The plugin under check is a stranger's code too: it must not read what any plugind on this
    // host keeps private (audit 19: it read a running plugind's kv database). Before the runtime:
    // this borrows the environment of each plugind it looks at.
    let (hidden, unseen) = hidden_from_check();
    plugind::sandbox::protect(hidden);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugind: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut report = rt.block_on(plugind::check::check(dir, execute.map(|m| (m, params)), diagnose));
    for pid in unseen {
        report.findings.insert(
            0,
            (
                Level::Warn,
                format!(
                    "sandbox: plugind pid {pid} runs here, and this check cannot see its settings (its /proc files are \
                     not readable to this user): what it keeps private is not hidden from the plugin under check; \
                     run check as root, or as a user that cannot read that plugind's files"
                ),
            ),
        );
    }
    if json_out {
        let items: Vec<Value> = report
            .findings
            .iter()
            .map(|(l, t)| json!({ "level": format!("{l:?}").to_lowercase(), "message": t }))
            .collect();
        let out = json!({ "passed": report.passed(), "findings": items });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        // Colour on a terminal only: anstream strips the styles for a pipe, a file or `NO_COLOR`.
        use anstyle::AnsiColor;
        for (level, text) in &report.findings {
            let (tag, style) = match level {
                Level::Ok => ("ok  ", AnsiColor::Green.on_default()),
                Level::Warn => ("warn", AnsiColor::Yellow.on_default()),
                Level::Fail => ("FAIL", AnsiColor::Red.on_default().bold()),
            };
            // Findings quote the plugin (its stderr, errors, method names): printable line by
            // line on a terminal.
            let text: Vec<String> =
                text.split('\n').map(|l| plugind_protocol::text::printable(l).into_owned()).collect();
            anstream::println!("{style}{tag}{style:#} {}", text.join("\n"));
        }
    }
    if report.passed() {
        std::process::ExitCode::SUCCESS
    } else {
        eprintln!("{}: {} has problems (see FAIL above)", program_name(), dir.display());
        std::process::ExitCode::FAILURE
    }
}
