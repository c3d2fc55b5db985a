//! `plugind`: the daemon. See SPEC §7 and `docs/`.

use clap::Parser;
use plugind::config::{self, Config};
use std::path::PathBuf;
use std::time::Duration;

/// Process-isolated plugin supervisor.
#[derive(Parser, Debug)]
#[command(name = "plugind", version, about)]
struct Args {
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
    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Health ping period in milliseconds (default 10000).
    #[arg(long, value_name = "MS", default_value_t = 10_000, hide = true)]
    ping_interval_ms: u64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PLUGIND_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let mut cfg = Config::new(
        args.plugins,
        args.socket.unwrap_or_else(config::default_socket),
        args.state_dir.unwrap_or_else(config::default_state_dir),
    );
    cfg.watch = !args.no_watch;
    cfg.ping_interval = Duration::from_millis(args.ping_interval_ms.max(10));
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugind: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(plugind::run(cfg, shutdown_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("plugind: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
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
        std::process::exit(0);
    });
}
