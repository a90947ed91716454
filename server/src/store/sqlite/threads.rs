//! SQLite's connections, each owned by one thread for its whole life and fed jobs by a channel.
//!
//! Why not a pool on tokio's blocking threads: every query then took two hops there (the pool
//! re-checks a connection with a query of its own before handing it out), and whichever pooled
//! connection ran the insert next found its page cache stale and dropped it. Here one writer
//! thread runs every write, in arrival order, and keeps its cache and prepared statements warm;
//! a few reader threads share one queue and cannot write (`query_only`), so a write sent to a
//! reader by mistake fails in the tests instead of racing the writer.

use std::panic::AssertUnwindSafe;

use anyhow::anyhow;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rusqlite::Connection;

use super::super::StoreError;

/// A call to run on a connection; it answers through the channel it captured.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Which connections a call may use.
#[derive(Clone, Copy)]
pub(super) enum Access {
    Write,
    Read,
}

/// The queues into the threads. Dropping it ends them once their queues drain.
pub(super) struct Threads {
    writer: Sender<Job>,
    readers: Sender<Job>,
    /// Never sent on: its drop is what stops the chores thread.
    _stop: Sender<()>,
}

/// Background work on a connection of its own, off the writer's path: `run` every `every`,
/// and when it returns true, `then_on_writer` on the writer's connection, between its writes.
pub(super) struct Chores {
    pub(super) conn: Connection,
    pub(super) every: Duration,
    pub(super) run: fn(&mut Connection) -> bool,
    pub(super) then_on_writer: fn(&mut Connection),
}

impl Threads {
    /// Starts one thread for the writer, one per reader connection and one for the chores.
    pub(super) fn start(
        writer: Connection,
        readers: Vec<Connection>,
        chores: Chores,
    ) -> std::io::Result<Self> {
        let (write_queue, write_jobs) = crossbeam_channel::unbounded();
        let (read_queue, read_jobs) = crossbeam_channel::unbounded();
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        spawn("sqlite-writer".into(), writer, write_jobs)?;
        for (index, reader) in readers.into_iter().enumerate() {
            spawn(format!("sqlite-reader-{index}"), reader, read_jobs.clone())?;
        }
        let Chores {
            mut conn,
            every,
            run,
            then_on_writer,
        } = chores;
        let writer = write_queue.clone();
        std::thread::Builder::new()
            .name("sqlite-chores".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    if run(&mut conn) {
                        let _ = writer.send(Box::new(then_on_writer));
                    }
                }
            })?;
        Ok(Self {
            writer: write_queue,
            readers: read_queue,
            _stop: stop,
        })
    }

    /// Runs `f` on a connection with `access` and waits (without blocking the runtime) for it.
    pub(super) async fn run<T, F>(&self, access: Access, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The caller may have given up (a request cancelled); nothing is lost then, the
            // call ran or rolled back either way.
            let _ = answer.send(f(conn));
        });
        let queue = match access {
            Access::Write => &self.writer,
            Access::Read => &self.readers,
        };
        queue
            .send(job)
            .map_err(|_| StoreError::Unavailable("the SQLite threads have stopped".into()))?;
        answered
            .await
            .map_err(|_| StoreError::Internal(anyhow!("a SQLite call panicked")))?
    }
}

fn spawn(name: String, mut conn: Connection, jobs: Receiver<Job>) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        for job in jobs {
            // A panicking call drops its answer (its caller gets an error) and rolls back its
            // transaction as it unwinds; the connection goes on serving the others.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn)));
        }
    })?;
    Ok(())
}
