//! Running the echo-rust plugin without plugind: spawn it on pipes and do the `init`/`register`
//! handshake plugind does (used by the relay and by the start-up floor).

use anyhow::{bail, Context as _};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// An echo-rust process on pipes.
pub struct Echo {
    /// The process.
    pub child: Proc,
    /// Its stdin (plugind → plugin).
    pub stdin: File,
    /// Its stdout (plugin → plugind).
    pub stdout: BufReader<File>,
}

/// The process, however it was started.
pub enum Proc {
    /// Plainly, by [`Echo::spawn`].
    Plain(Child),
    /// By plugind's own spawn code, under its sandbox ([`Echo::sandboxed`]).
    Sandboxed(plugind::plugin::spawn::Spawned),
}

impl Echo {
    /// Spawns `program` with an environment like plugind's (cleared down to a few variables).
    pub fn spawn(program: &Path, args: &[&str], name: &str) -> anyhow::Result<Echo> {
        let keep = ["PATH", "HOME", "LANG"].into_iter().filter_map(|k| std::env::var(k).ok().map(|v| (k, v)));
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .envs(keep)
            .env("PLUGIND_PLUGIN", name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        let stdin = File::from(std::os::fd::OwnedFd::from(child.stdin.take().context("stdin")?));
        let stdout = File::from(std::os::fd::OwnedFd::from(child.stdout.take().context("stdout")?));
        Ok(Echo { child: Proc::Plain(child), stdin, stdout: BufReader::new(stdout) })
    }

    /// A process plugind's spawn code started ([`plugind::plugin::spawn::spawn`]), its pipes made
    /// blocking.
    pub fn sandboxed(mut spawned: plugind::plugin::spawn::Spawned) -> anyhow::Result<Echo> {
        let stdin = File::from(spawned.child.stdin.take().context("stdin")?.into_owned_fd()?);
        let stdout = File::from(spawned.child.stdout.take().context("stdout")?.into_owned_fd()?);
        Ok(Echo { child: Proc::Sandboxed(spawned), stdin, stdout: BufReader::new(stdout) })
    }

    /// Sends `init` (without waiting).
    pub fn send_init(&mut self, name: &str) -> anyhow::Result<()> {
        let params = serde_json::json!({
            "protocol_version": 1, "name": name, "version": "1.0.0", "config": {}, "data_dir": null,
            "supervisor": { "name": "plugind-bench", "version": env!("CARGO_PKG_VERSION") },
        });
        writeln!(self.stdin, r#"{{"jsonrpc":"2.0","id":1,"method":"init","params":{params}}}"#)?;
        Ok(self.stdin.flush()?)
    }

    /// Sends `register` (without waiting).
    pub fn send_register(&mut self) -> anyhow::Result<()> {
        self.stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"register\",\"params\":{}}\n")?;
        Ok(self.stdin.flush()?)
    }

    /// Waits for the next line, which must be a result.
    pub fn expect_result(&mut self, what: &str) -> anyhow::Result<()> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("echo-rust exited during {what}");
        }
        if !line.contains(r#""result""#) {
            bail!("{what} failed: {}", line.trim_end());
        }
        Ok(())
    }

    /// `init` then `register`, each awaited.
    pub fn handshake(&mut self) -> anyhow::Result<()> {
        self.send_init("echo")?;
        self.expect_result("init")?;
        self.send_register()?;
        self.expect_result("register")
    }

    /// Closes stdin (the plugin's cue to exit) and waits for it.
    pub fn finish(self) -> anyhow::Result<()> {
        let Echo { child, stdin, mut stdout } = self;
        drop(stdin);
        // EOF when it exits (or closes its stdout).
        std::io::copy(&mut stdout, &mut std::io::sink())?;
        child.wait()
    }
}

impl Proc {
    /// Waits for the exit.
    pub fn wait(self) -> anyhow::Result<()> {
        match self {
            Proc::Plain(mut child) => drop(child.wait()?),
            // tokio's `wait` needs a runtime driving its signal handler; `try_wait` is a plain
            // `waitpid`. Its stdout is closed by then, so the exit is near. The cgroup goes with
            // `spawned`, after the exit.
            Proc::Sandboxed(mut spawned) => {
                while spawned.child.try_wait()?.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        Ok(())
    }
}
