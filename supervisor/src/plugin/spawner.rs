//! The threads that fork plugins.
//!
//! Plugins are not forked on a tokio worker, for two reasons:
//! - a spawn blocks for 2–20 ms (fork, the child's sandbox set-up, then the parent waits for the
//!   `exec`; moving the child into its cgroup waits for an RCU grace period), and with one or two
//!   workers every call in flight would wait that long whenever a plugin starts or reloads;
//! - the child's `PR_SET_PDEATHSIG` fires when the *thread* that forked it exits, not the process,
//!   so the forking threads must live as long as plugind. tokio's blocking pool retires idle
//!   threads after a few seconds, which would kill their children.
//!
//! So a few threads of our own, started on first use and kept until the [`Spawner`] is dropped
//! (with the daemon), take jobs from a queue. They enter the runtime, since a
//! `tokio::process::Child` registers its pipes with the runtime's reactor.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Forking threads: enough that the starts of many plugins overlap their waits for `exec`.
const THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// A queue of blocking jobs served by long-lived threads (see the module doc).
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the threads; they enter the current tokio runtime. Panics outside of one.
    pub fn start() -> std::io::Result<Spawner> {
        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..THREADS {
            let (rx, runtime) = (rx.clone(), runtime.clone());
            std::thread::Builder::new().name(format!("plugind-spawn-{i}")).spawn(move || {
                let _entered = runtime.enter();
                loop {
                    // The lock is held only while waiting for the next job, never while running it.
                    let job = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    match job {
                        // A panicking job loses its answer (the caller sees `None`), not the thread.
                        Ok(job) => drop(std::panic::catch_unwind(AssertUnwindSafe(job))),
                        Err(mpsc::RecvError) => break, // the spawner was dropped
                    }
                }
            })?;
        }
        Ok(Spawner { jobs: tx })
    }

    /// Runs `f` on a spawner thread and waits for its result; `None` if it panicked.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}
