//! The plugins' log rings on disk (`STATE_DIR/logs/`): `pluginctl logs` shows what a plugin did
//! before plugind restarted, not only since.
//!
//! Each plugin has `NAME.jsonl`, its latest lines (one JSON [`LogLine`] each, as `logs.tail`
//! answers them), and `NAME.jsonl.1`, the lines before those. Once `NAME.jsonl` holds a ring's
//! worth (`log_lines` lines, or [`FILE_BYTES`]), it becomes `NAME.jsonl.1` (replacing the older
//! one) and a new one starts: a plugin's files hold one to two rings' worth, whatever it logs.
//! When plugind starts, each plugin's ring is filled from them ([`LogFiles::load`]).
//!
//! Lines are written off the async workers: [`LogFiles::append`] puts them in a bounded queue,
//! and one thread appends them, a batch at a time (a line that finds the queue full is dropped and
//! counted). [`LogFiles::flush`] waits for what is queued, at a graceful stop; a plugind that is
//! killed loses at most what was still queued. Only plugins with a valid name have files (an
//! `invalid` entry named `NAME@DIR` keeps its lines in memory only), so a name is a file name.

use plugind_protocol::control::LogLine;
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Most bytes one file holds before the next starts: a plugin's lines take at most twice this
/// on disk (a plugin decides how long its lines are; the rate limits decide how many).
pub const FILE_BYTES: u64 = 1024 * 1024;

/// Lines queued for the writer at most (about 1 s of every plugin logging at its rate limit).
const QUEUE: usize = 8192;

/// What the writer thread is given.
enum Job {
    Line {
        plugin: String,
        text: Vec<u8>,
    },
    /// Answered once everything queued before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The plugins' log files: see the module doc.
pub struct LogFiles {
    dir: PathBuf,
    queue: SyncSender<Job>,
    /// Lines dropped because the queue was full, reported by the next flush.
    dropped: AtomicU64,
}

impl LogFiles {
    /// Opens `dir` (made 0700 if missing) and starts the writer; a file rotates after `lines`
    /// lines.
    pub fn open(dir: &Path, lines: usize) -> std::io::Result<LogFiles> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        let writer = Writer { dir: dir.to_path_buf(), max_lines: lines.max(1) as u64, files: HashMap::new() };
        std::thread::Builder::new().name("plugind-logs".into()).spawn(move || writer.run(jobs))?;
        Ok(LogFiles { dir: dir.to_path_buf(), queue, dropped: AtomicU64::new(0) })
    }

    /// Queues `line` of `plugin` for its file; never waits.
    pub fn append(&self, plugin: &str, line: &LogLine) {
        let Ok(mut text) = serde_json::to_vec(line) else { return };
        text.push(b'\n');
        match self.queue.try_send(Job::Line { plugin: plugin.to_owned(), text }) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The lines `plugin`'s files hold, oldest first (what is not a log line is skipped).
    pub fn load(&self, plugin: &str) -> Vec<LogLine> {
        let mut lines = Vec::new();
        for file in [older(&self.dir, plugin), latest(&self.dir, plugin)] {
            let Ok(text) = read_tail(&file, 2 * FILE_BYTES) else { continue };
            lines.extend(text.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice::<LogLine>(l).ok()).map(
                |mut l| {
                    l.plugin = plugin.to_owned();
                    l
                },
            ));
        }
        lines
    }

    /// Waits (at most `within`) until every line queued so far is written. Blocks: call it from
    /// a blocking thread.
    pub fn flush(&self, within: Duration) {
        let (done, written) = std::sync::mpsc::channel();
        if self.queue.send(Job::Flush(done)).is_ok() {
            let _ = written.recv_timeout(within);
        }
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, dir = %self.dir.display(), "log lines not written to the log files: too many at once");
        }
    }
}

fn latest(dir: &Path, plugin: &str) -> PathBuf {
    dir.join(format!("{plugin}.jsonl"))
}

/// `NAME.jsonl.1`: no plugin's latest file has this name (they all end in `.jsonl`), where
/// `NAME.1.jsonl` was also the latest of a plugin named `NAME.1`, which then wrote lines into
/// NAME's ring and rotated its history away (audit 17).
fn older(dir: &Path, plugin: &str) -> PathBuf {
    dir.join(format!("{plugin}.jsonl.1"))
}

/// The last `max` bytes of `path`, from the first line that begins in them.
fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut text = Vec::new();
    if len > max {
        file.seek(std::io::SeekFrom::Start(len - max))?;
        file.take(max).read_to_end(&mut text)?;
        let start = text.iter().position(|b| *b == b'\n').map_or(text.len(), |i| i + 1);
        text.drain(..start);
    } else {
        file.read_to_end(&mut text)?;
    }
    Ok(text)
}

/// What is in a plugin's latest file.
#[derive(Default)]
struct Filled {
    lines: u64,
    bytes: u64,
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    max_lines: u64,
    /// Per plugin written to in this run: what its latest file holds (counted once, then kept).
    files: HashMap<String, Filled>,
}

impl Writer {
    fn run(mut self, jobs: Receiver<Job>) {
        let mut batch: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        let mut flushes = Vec::new();
        while let Ok(job) = jobs.recv() {
            // Everything queued meanwhile goes in the same batch: one open and write per plugin.
            let mut next = Some(job);
            while let Some(job) = next.take().or_else(|| jobs.try_recv().ok()) {
                match job {
                    Job::Line { plugin, text } => batch.entry(plugin).or_default().push(text),
                    Job::Flush(done) => flushes.push(done),
                }
                if batch.values().map(Vec::len).sum::<usize>() >= QUEUE {
                    break;
                }
            }
            for (plugin, lines) in batch.drain() {
                if let Err(e) = self.write(&plugin, &lines) {
                    tracing::debug!(plugin, "cannot write the plugin's log file: {e}");
                }
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }

    /// Appends `lines` to `plugin`'s latest file, starting a new one whenever it is full.
    fn write(&mut self, plugin: &str, lines: &[Vec<u8>]) -> std::io::Result<()> {
        let path = latest(&self.dir, plugin);
        let filled = match self.files.get_mut(plugin) {
            Some(f) => f,
            None => {
                let text = std::fs::read(&path).unwrap_or_default();
                let counted =
                    Filled { lines: text.iter().filter(|b| **b == b'\n').count() as u64, bytes: text.len() as u64 };
                self.files.entry(plugin.to_owned()).or_insert(counted)
            }
        };
        let mut out = Vec::new();
        for line in lines {
            let len = line.len() as u64;
            if filled.lines > 0 && (filled.lines >= self.max_lines || filled.bytes + len > FILE_BYTES) {
                append(&path, &out)?;
                out.clear();
                std::fs::rename(&path, older(&self.dir, plugin))?;
                *filled = Filled::default();
            }
            out.extend_from_slice(line);
            filled.lines += 1;
            filled.bytes += len;
        }
        append(&path, &out)
    }
}

fn append(path: &Path, text: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if text.is_empty() {
        return Ok(());
    }
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?.write_all(text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line(n: usize) -> LogLine {
        LogLine {
            ts: "2026-12-07T00:00:00Z".into(),
            plugin: "p".into(),
            stream: "stderr".into(),
            level: "info".into(),
            message: format!("line {n}"),
            fields: None,
            trace_id: None,
        }
    }

    #[test]
    fn a_plugins_files_keep_one_to_two_rings_and_load_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        // Lines `written` by a writer of its own (a plugind run), then what the files hold.
        let run = |written: std::ops::Range<usize>| -> Vec<String> {
            let files = LogFiles::open(dir.path(), 10).unwrap();
            for n in written {
                files.append("p", &line(n));
            }
            files.flush(Duration::from_secs(10));
            files.load("p").into_iter().map(|l| l.message).collect()
        };
        let lines = |r: std::ops::Range<usize>| r.map(|n| format!("line {n}")).collect::<Vec<_>>();
        // 25 lines in files of 10: the latest holds 5, the older one the 10 before them.
        assert_eq!(run(0..25), lines(10..25));
        // A new writer (plugind restarted) goes on counting from what the file holds.
        assert_eq!(run(25..31), lines(20..31));
    }

    /// Plugins named `p` and `p.1` (both valid names) keep their lines apart, rotated or not.
    #[test]
    fn a_plugin_named_like_anothers_older_file_stays_apart() {
        let dir = tempfile::tempdir().unwrap();
        let files = LogFiles::open(dir.path(), 10).unwrap();
        for n in 0..15 {
            files.append("p", &line(n));
            files.append("p.1", &line(100 + n));
        }
        files.flush(Duration::from_secs(10));
        let of = |plugin| -> Vec<String> { files.load(plugin).into_iter().map(|l| l.message).collect() };
        assert_eq!(of("p"), (0..15).map(|n| format!("line {n}")).collect::<Vec<_>>());
        assert_eq!(of("p.1"), (100..115).map(|n| format!("line {n}")).collect::<Vec<_>>());
    }

    #[test]
    fn what_is_not_a_log_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.jsonl"), "garbage\n{\"ts\":1}\n").unwrap();
        let files = LogFiles::open(dir.path(), 10).unwrap();
        files.append("p", &line(1));
        files.flush(Duration::from_secs(10));
        let loaded: Vec<String> = files.load("p").into_iter().map(|l| l.message).collect();
        assert_eq!(loaded, ["line 1"]);
    }
}
