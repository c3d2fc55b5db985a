//! `--relay SOCKET PROGRAM [ARGS…]`: the ideal relay, floor (iii). It spawns PROGRAM (the echo-rust plugin
//! plugind also runs), does the `init`/`register` handshake, then accepts one Unix-socket client and
//! copies bytes both ways: client → plugin stdin, plugin stdout → client. Lines pass unchanged (no
//! parse, no id rewriting), one thread per direction, blocking I/O: the least any supervisor can do.

use crate::echo::Echo;
use serde_json::value::RawValue;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Runs the relay until the client disconnects and the plugin exits.
pub fn run(socket: &Path, program: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut plugin = Echo::spawn(program, args, "echo")?;
    plugin.handshake()?;
    grow_pipes(&plugin);
    let listener = UnixListener::bind(socket)?;
    println!("ready");
    io::stdout().flush()?;
    let (client, _) = listener.accept()?;
    let from_client = client.try_clone()?;
    let Echo { child, stdin, stdout } = plugin;
    let up = std::thread::spawn(move || pump(from_client, stdin)); // EOF closes the plugin's stdin
    let down = pump(stdout, client);
    up.join().map_err(|_| anyhow::anyhow!("relay thread panicked"))??;
    down?;
    child.wait()?;
    Ok(())
}

/// `--relay-async SOCKET PROGRAM [ARGS…]`: the relay of [`run`] on an event loop, a diagnostic
/// floor. The same copying, but both directions are tasks of one tokio runtime built as
/// plugind's is (its default worker count), on non-blocking descriptors: each read waits in
/// `epoll_wait` first, where the blocking relay's threads wait in the `read` itself. The
/// difference between the two is what serving many plugins from a few threads costs any
/// supervisor; the difference between this and plugind is plugind's own work.
pub fn run_async(socket: &Path, program: &Path, args: &[&str]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut plugin = Echo::spawn(program, args, "echo")?;
    plugin.handshake()?;
    grow_pipes(&plugin);
    let listener = UnixListener::bind(socket)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plugind::config::default_worker_threads())
        .enable_all()
        .build()?;
    println!("ready");
    io::stdout().flush()?;
    let (client, _) = listener.accept()?;
    client.set_nonblocking(true)?;
    let Echo { child, stdin, stdout } = plugin;
    anyhow::ensure!(stdout.buffer().is_empty(), "the plugin wrote more than the handshake's answers");
    async fn pump(
        mut from: impl tokio::io::AsyncRead + Unpin,
        mut to: impl tokio::io::AsyncWrite + Unpin,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; plugind::transport::pipe::LARGE_PIPE];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            to.write_all(&buf[..n]).await?;
        }
    }
    rt.block_on(async move {
        let client = tokio::net::UnixStream::from_std(client)?;
        let (from_client, to_client) = client.into_split();
        let to_plugin = tokio::net::unix::pipe::Sender::from_file(stdin)?;
        let from_plugin = tokio::net::unix::pipe::Receiver::from_file(stdout.into_inner())?;
        // Both on the runtime's workers, as plugind's tasks are (not on this thread). EOF from
        // the client drops the plugin's stdin, which ends the plugin and so the other task.
        let up = tokio::spawn(pump(from_client, to_plugin));
        let down = tokio::spawn(pump(from_plugin, to_client));
        up.await.map_err(io::Error::other)??;
        down.await.map_err(io::Error::other)??;
        io::Result::Ok(())
    })?;
    child.wait()?;
    Ok(())
}

/// The plugin's pipes as large as plugind makes them for large lines
/// (`plugind::transport::pipe::grow`): a relay with 64 KiB pipes passes a 1 MiB line in sixteen
/// parts, a context switch each, and would be no ideal floor for the large lines.
fn grow_pipes(plugin: &Echo) {
    for pipe in [plugin.stdin.as_fd(), plugin.stdout.get_ref().as_fd()] {
        if let Err(e) = plugind::transport::pipe::grow(pipe) {
            eprintln!("relay: cannot grow the plugin's pipe: {e}");
        }
    }
}

fn pump(mut from: impl Read, mut to: impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; plugind::transport::pipe::LARGE_PIPE];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

/// `--service-relay SOCKET PROGRAM`: the ideal router, floor of (c). It spawns PROGRAM twice, as
/// `caller` and as `echo`, takes both through the handshake, and accepts one client. Client lines
/// go to caller; caller's lines go to the client, except its `service.call` requests, which are
/// rewritten into `execute {method, params}` with the same id and sent to echo; echo's answers
/// go back to caller unchanged (the id is caller's own). It parses only the lines it must route
/// by content and holds no table: the least any router between plugins can do.
pub fn run_service(socket: &Path, program: &Path) -> anyhow::Result<()> {
    let mut caller = Echo::spawn(program, &[], "caller")?;
    caller.handshake()?;
    let mut echo = Echo::spawn(program, &[], "echo")?;
    echo.handshake()?;
    let listener = UnixListener::bind(socket)?;
    println!("ready");
    io::stdout().flush()?;
    let (client, _) = listener.accept()?;
    let Echo { child: caller_child, stdin: caller_in, stdout: caller_out } = caller;
    let Echo { child: echo_child, stdin: mut echo_in, stdout: echo_out } = echo;
    // Two sources write to caller's stdin: whole lines, under a lock.
    let caller_in = std::sync::Arc::new(std::sync::Mutex::new(Some(caller_in)));
    let from_client = BufReader::new(client.try_clone()?);
    let to_caller = caller_in.clone();
    let up = std::thread::spawn(move || {
        let r = lines_to(from_client, &to_caller);
        to_caller.lock().map_err(|_| io::Error::other("poisoned"))?.take(); // EOF: close caller's stdin
        r
    });
    let to_caller = caller_in.clone();
    let answers = std::thread::spawn(move || lines_to(echo_out, &to_caller));
    let mut client = io::BufWriter::new(client);
    for line in caller_out.split(b'\n') {
        let mut line = line?;
        line.push(b'\n');
        if is_service_call(&line) {
            echo_in.write_all(&to_execute(&line)?)?;
        } else {
            client.write_all(&line)?;
            client.flush()?;
        }
    }
    drop(echo_in); // echo exits, which ends `answers`
    up.join().map_err(|_| anyhow::anyhow!("relay thread panicked"))??;
    answers.join().map_err(|_| anyhow::anyhow!("relay thread panicked"))??;
    caller_child.wait()?;
    echo_child.wait()?;
    Ok(())
}

/// Copies whole lines from `from` to the shared writer.
fn lines_to(from: impl BufRead, to: &std::sync::Mutex<Option<impl Write>>) -> io::Result<()> {
    for line in from.split(b'\n') {
        let mut line = line?;
        line.push(b'\n');
        match to.lock().map_err(|_| io::Error::other("poisoned"))?.as_mut() {
            Some(w) => w.write_all(&line)?,
            None => return Ok(()),
        }
    }
    Ok(())
}

fn is_service_call(line: &[u8]) -> bool {
    const NEEDLE: &[u8] = br#""method":"service.call""#;
    line.windows(NEEDLE.len()).any(|w| w == NEEDLE)
}

/// `{"id":I,"method":"service.call","params":{"service":…,"method":M,"params":P}}` →
/// `{"jsonrpc":"2.0","id":I,"method":"execute","params":{"method":M,"params":P}}`.
fn to_execute(line: &[u8]) -> anyhow::Result<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
        #[serde(borrow)]
        params: Inner<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Inner<'a> {
        method: &'a str,
        #[serde(borrow)]
        params: &'a RawValue,
    }
    let c: Call = serde_json::from_slice(line)?;
    let (id, method, params) = (c.id.get(), c.params.method, c.params.params.get());
    Ok(format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"execute\",\"params\":{{\"method\":\"{method}\",\"params\":{params}}}}}\n"
    )
    .into_bytes())
}
