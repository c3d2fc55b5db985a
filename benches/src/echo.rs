//! Running the echo-rust plugin without plugind: spawn it on pipes and do the `init`/`register`
//! handshake plugind does (used by the relay and by the start-up floor).

use anyhow::{bail, Context as _};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// An echo-rust process on pipes.
pub struct Echo {
    /// The process.
    pub child: Child,
    /// Its stdin (plugind → plugin).
    pub stdin: ChildStdin,
    /// Its stdout (plugin → plugind).
    pub stdout: BufReader<ChildStdout>,
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
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Echo { child, stdin, stdout })
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
        let Echo { mut child, stdin, stdout } = self;
        drop(stdin);
        drop(stdout);
        child.wait()?;
        Ok(())
    }
}
