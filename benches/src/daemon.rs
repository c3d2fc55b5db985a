//! A plugind under test: a temp dir of echo-rust plugin copies, the daemon process, its control
//! socket (through `plugind_client::Client`), and a clean shutdown.

use anyhow::{bail, Context as _};
use plugind_client::Client;
use serde_json::json;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Where the binaries under test are (`target/release` after `cargo build --release --workspace`).
#[derive(Clone, Debug)]
pub struct Bins {
    /// `plugind`.
    pub plugind: PathBuf,
    /// `pluginctl`.
    pub pluginctl: PathBuf,
    /// The echo-rust plugin binary.
    pub echo: PathBuf,
    /// This benchmark (for its `--child-*` and `--relay` modes).
    pub me: PathBuf,
}

impl Bins {
    /// The binaries in `dir`; fails with the build command when one is missing.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Bins> {
        let bins = Bins {
            plugind: dir.join("plugind"),
            pluginctl: dir.join("pluginctl"),
            echo: dir.join("echo-rust"),
            me: std::env::current_exe()?,
        };
        for b in [&bins.plugind, &bins.pluginctl, &bins.echo] {
            if !b.is_file() {
                bail!("{} not found: run `cargo build --release --workspace` first (or pass --bin-dir)", b.display());
            }
        }
        Ok(bins)
    }
}

/// One plugin of the test set: a copy of the echo-rust plugin dir under another name.
#[derive(Clone, Debug)]
pub struct PluginDef {
    /// Its name.
    pub name: String,
    /// `dependencies.required`.
    pub requires: Vec<String>,
    /// `hooks`: (hook, priority).
    pub hooks: Vec<(String, u32)>,
    /// The program; `None` is the echo-rust binary.
    pub main: Option<Main>,
}

/// A plugin program other than echo-rust: files copied into the plugin dir (a script and the SDK
/// it imports) or linked (a binary).
#[derive(Clone, Debug)]
pub struct Main {
    /// The manifest's `main`: the name of one of `files` in the plugin dir.
    pub main: String,
    /// (name in the plugin dir, source path).
    pub files: Vec<(String, PathBuf)>,
    /// Symlink the files instead of copying them (binaries).
    pub link: bool,
}

impl PluginDef {
    /// A plugin without dependencies or hooks.
    pub fn plain(name: impl Into<String>) -> Self {
        PluginDef { name: name.into(), requires: Vec::new(), hooks: Vec::new(), main: None }
    }
}

/// Writes `root/NAME/plugin.json` with `main: "echo-rust"`, a symlink to the built binary (the
/// example's own `main` is a launcher script that only works from the source tree).
/// `PLUGIND_BENCH_PERMISSIONS=networking,process,filesystem` grants those (no seccomp/Landlock in
/// the child: needed to run plugind under valgrind, which lacks the `seccomp` syscall).
pub fn write_plugins(root: &Path, defs: &[PluginDef], echo: &Path) -> anyhow::Result<()> {
    let granted = std::env::var("PLUGIND_BENCH_PERMISSIONS").unwrap_or_default();
    let permissions: Vec<&str> = granted.split(',').filter(|p| !p.is_empty()).collect();
    for d in defs {
        let dir = root.join(&d.name);
        std::fs::create_dir_all(&dir)?;
        let hooks: serde_json::Map<String, serde_json::Value> =
            d.hooks.iter().map(|(h, p)| (h.clone(), json!(p))).collect();
        let main = d.main.as_ref().map_or("echo-rust", |m| m.main.as_str());
        let manifest = json!({
            "name": d.name, "version": "1.0.0", "main": main,
            "dependencies": { "required": d.requires }, "permissions": permissions, "hooks": hooks,
        });
        std::fs::write(dir.join("plugin.json"), serde_json::to_vec_pretty(&manifest)?)?;
        match &d.main {
            None => std::os::unix::fs::symlink(echo, dir.join("echo-rust"))?,
            Some(m) => {
                for (name, src) in &m.files {
                    if m.link {
                        std::os::unix::fs::symlink(src, dir.join(name))?;
                    } else {
                        std::fs::copy(src, dir.join(name)).with_context(|| format!("copy {}", src.display()))?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// A running plugind with its own temp dir (plugins, state, socket, log).
pub struct Daemon {
    child: Child,
    dir: TempDir,
    /// Its control socket.
    pub socket: PathBuf,
    /// When the process was spawned.
    pub spawned: Instant,
}

impl Daemon {
    /// Writes the plugins, then starts plugind on them (not waiting for anything).
    pub fn start(bins: &Bins, defs: &[PluginDef]) -> anyhow::Result<Daemon> {
        Daemon::start_with_env(bins, defs, &[])
    }

    /// [`Daemon::start`] with extra environment variables for plugind.
    pub fn start_with_env(bins: &Bins, defs: &[PluginDef], env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
        Daemon::start_with(bins, defs, env, &[])
    }

    /// [`Daemon::start`] with extra environment variables and arguments for plugind.
    pub fn start_with(bins: &Bins, defs: &[PluginDef], env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Daemon> {
        let dir = tempfile::Builder::new().prefix("plugind-bench").tempdir()?;
        let plugins = dir.path().join("plugins");
        write_plugins(&plugins, defs, &bins.echo)?;
        let socket = dir.path().join("plugind.sock");
        let log = std::fs::File::create(dir.path().join("plugind.log"))?;
        let spawned = Instant::now();
        // PLUGIND_BENCH_WRAP="valgrind --tool=callgrind …" runs plugind under a profiler.
        let wrap = std::env::var("PLUGIND_BENCH_WRAP").unwrap_or_default();
        let mut argv: Vec<&OsStr> = wrap.split_whitespace().map(OsStr::new).collect();
        argv.push(bins.plugind.as_os_str());
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .arg("--plugins")
            .arg(&plugins)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bins.plugind.display()))?;
        Ok(Daemon { child, dir, socket, spawned })
    }

    /// Waits until `n` plugins are `running`; returns the time since spawn. Polls
    /// `supervisor.status` every 0.5 ms.
    pub async fn wait_running(&mut self, n: u64, timeout: Duration) -> anyhow::Result<Duration> {
        let give_up = self.spawned + timeout;
        let client = loop {
            match Client::connect(&self.socket).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > give_up => bail!("{e}{}", self.log_tail()),
                Err(_) => self.pause().await?,
            }
        };
        loop {
            let st = client.call("supervisor.status", &json!({})).await?;
            let count = |k: &str| st["plugins"][k].as_u64().unwrap_or(0);
            if count("running") >= n {
                return Ok(self.spawned.elapsed());
            }
            // `blocked` is final once every plugin has settled (one may read so at boot while
            // others still start).
            let settled = count("running") + count("failed") + count("blocked") == count("total");
            if count("failed") > 0 || (settled && count("blocked") > 0) || Instant::now() > give_up {
                bail!("{n} plugins not running: {st}{}", self.log_tail());
            }
            self.pause().await?;
        }
    }

    async fn pause(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("plugind exited ({status}){}", self.log_tail());
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
        Ok(())
    }

    /// Asks for `supervisor.shutdown` and waits for the exit (kills it after 10 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Ok(c) = Client::connect(&self.socket).await {
            let _ = c.call("supervisor.shutdown", &json!({})).await;
        }
        let give_up = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > give_up {
                self.child.kill()?;
                self.child.wait()?;
                bail!("plugind did not stop within 10 s{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// The plugin directory plugind scans.
    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// plugind's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// plugind's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plugind.log")).unwrap_or_default()
    }

    /// The last lines of plugind's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        format!("\nplugind log (last lines):\n  {tail}")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
