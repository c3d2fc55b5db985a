//! `--relay SOCKET PROGRAM [ARGS…]`: the ideal relay, floor (iii). It spawns PROGRAM (the echo-rust plugin
//! plugind also runs), does the `init`/`register` handshake, then accepts one Unix-socket client and
//! copies bytes both ways: client → plugin stdin, plugin stdout → client. Lines pass unchanged (no
//! parse, no id rewriting), one thread per direction, blocking I/O: the least any supervisor can do.

use crate::echo::Echo;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Runs the relay until the client disconnects and the plugin exits.
pub fn run(socket: &Path, program: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut plugin = Echo::spawn(program, args, "echo")?;
    plugin.handshake()?;
    let listener = UnixListener::bind(socket)?;
    println!("ready");
    io::stdout().flush()?;
    let (client, _) = listener.accept()?;
    let from_client = client.try_clone()?;
    let Echo { mut child, stdin, stdout } = plugin;
    let up = std::thread::spawn(move || pump(from_client, stdin)); // EOF closes the plugin's stdin
    let down = pump(stdout, client);
    up.join().map_err(|_| anyhow::anyhow!("relay thread panicked"))??;
    down?;
    child.wait()?;
    Ok(())
}

fn pump(mut from: impl Read, mut to: impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}
