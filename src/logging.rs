//! Logging that never stalls the packet path.
//!
//! env_logger filters and formats each record in the thread that logs it, as before; the
//! formatted line then goes to a bounded queue instead of stderr, and a `log-writer` thread
//! writes it out. If whatever reads nfvs's stderr (a terminal, journald, a pipe to a slow
//! disk) falls behind by more than [`QUEUE_LINES`] lines, further lines are dropped, counted,
//! and the writer says how many were lost as soon as it catches up: a packet worker never
//! waits for the log (issue 11 #3). Memory stays bounded whatever the traffic.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Lines the queue holds (a line is ~100-200 bytes: a few MB at most).
pub const QUEUE_LINES: usize = 16_384;

/// What goes to the writer thread.
enum Msg {
    /// A formatted line, and how many were lost just before it.
    Line(u64, Vec<u8>),
    /// Say when everything before this is written.
    Flush(SyncSender<()>),
}

/// The queue's sending end, for [`flush`].
static QUEUE: OnceLock<Mutex<SyncSender<Msg>>> = OnceLock::new();

/// Waits (at most about two seconds) until every line logged so far is written: call it
/// before the process exits, or the last lines could be lost with the writer thread.
pub fn flush() {
    let Some(tx) = QUEUE.get() else { return };
    let tx = tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (done_tx, done_rx) = sync_channel(1);
    let mut msg = Msg::Flush(done_tx);
    for _ in 0..200 {
        match tx.try_send(msg) {
            Ok(()) => {
                let _ = done_rx.recv_timeout(Duration::from_secs(2));
                return;
            }
            Err(TrySendError::Full(m)) => msg = m,
            Err(TrySendError::Disconnected(_)) => return,
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts logging to stderr through the writer thread, with `RUST_LOG` (default `default`).
pub fn init(default: &str) {
    let lost = Arc::new(AtomicU64::new(0));
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let style = if std::io::stderr().is_terminal() { env_logger::WriteStyle::Always } else { env_logger::WriteStyle::Never };
    let _ = QUEUE.set(Mutex::new(tx.clone()));
    let pipe = Pipe { tx, lost: lost.clone() };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .write_style(style)
        .target(env_logger::Target::Pipe(Box::new(pipe)))
        .init();
    let spawned = std::thread::Builder::new().name("log-writer".into()).spawn(move || {
        // Started before the daemon blocks the signals it waits for (kernel::os::block_signals):
        // a thread that does not block them would take SIGTERM or SIGHUP with the default
        // action and end the process.
        // SAFETY: a locally owned, filled sigset_t; pthread_sigmask changes this thread only.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        }
        write_out(rx, &lost, std::io::stderr())
    });
    if let Err(e) = spawned {
        eprintln!("nfvs: cannot start the log writer thread: {e}");
    }
}

/// The sending end env_logger writes each formatted record to (one `write_all` per record).
struct Pipe {
    tx: SyncSender<Msg>,
    /// Lines lost since the last one queued.
    lost: Arc<AtomicU64>,
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let before = self.lost.swap(0, Ordering::Relaxed);
        match self.tx.try_send(Msg::Line(before, buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.lost.fetch_add(before + 1, Ordering::Relaxed);
            }
            // The writer is gone (it only ends with the process): nothing to do.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: lines out in order, a note where lines were lost; a loss with no line
/// after it (the burst ended) is reported within a second.
fn write_out(rx: Receiver<Msg>, lost: &AtomicU64, mut out: impl Write) {
    let note = |out: &mut dyn Write, n: u64| {
        if n > 0 {
            let _ = writeln!(
                out,
                "nfvs: {n} log line(s) lost: the log was written more slowly than nfvs produced it \
                 (RUST_LOG=warn drops the per-connection lines)"
            );
        }
    };
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(Msg::Line(before, line)) => {
                note(&mut out, before);
                let _ = out.write_all(&line);
            }
            Ok(Msg::Flush(done)) => {
                note(&mut out, lost.swap(0, Ordering::Relaxed));
                let _ = out.flush();
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => note(&mut out, lost.swap(0, Ordering::Relaxed)),
            Err(RecvTimeoutError::Disconnected) => return note(&mut out, lost.swap(0, Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that cannot keep up loses lines instead of blocking the logging thread, and
    /// says how many.
    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let lost = Arc::new(AtomicU64::new(0));
        let (tx, rx) = sync_channel(2);
        let mut pipe = Pipe { tx, lost: lost.clone() };
        for i in 0..5 {
            // Never blocks: the writer is not even running yet.
            pipe.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert_eq!(lost.load(Ordering::Relaxed), 3);
        // The writer catches up (here: takes one line), then more lines come.
        let first = rx.recv().unwrap();
        assert!(matches!(first, Msg::Line(0, ref l) if l == b"line 0\n"));
        pipe.write_all(b"line 5\n").unwrap();
        pipe.write_all(b"line 6\n").unwrap();
        assert_eq!(lost.load(Ordering::Relaxed), 1);
        drop(pipe);
        let mut out = Vec::new();
        write_out(rx, &lost, &mut out);
        let lost_note = |n| {
            format!(
                "nfvs: {n} log line(s) lost: the log was written more slowly than nfvs produced it \
                 (RUST_LOG=warn drops the per-connection lines)\n"
            )
        };
        let want = format!("line 1\n{}line 5\n{}", lost_note(3), lost_note(1));
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
