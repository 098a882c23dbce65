//! The director at run time: the threads that carry the [`Engine`]'s decisions out on the
//! kernel edges (NFQUEUE, ctnetlink, nftables, sysctls).
//!
//! Threads, all sharing one [`Shared`]:
//! - the packet loop ([`worker`]; the caller's thread, and `queue-N` threads for more
//!   queues): per batch of queued SYNs, one read, one decision each, one send of their
//!   conntrack requests and verdicts;
//! - `ct-events` ([`ct_events`]): conntrack UPDATE/DESTROY events of our entries -> counts;
//! - `ticker` ([`ticker`]): every 2 s, traffic samples, rate estimators, template expiry,
//!   queue-drop reports;
//! - `control` ([`control`]): the `nfvs adm` / `ipvsadm` socket;
//! - `signals` ([`signals`]): SIGTERM/SIGINT (graceful stop) and SIGHUP (reload).
//!
//! The rule every thread keeps: no kernel I/O while holding the engine's lock. A thread takes
//! what it needs, lets go, talks to the kernel, and comes back with the answer; the packet
//! workers, which take the lock once per batch, never wait behind a netlink round trip.
//! Installing the nftables table is serialised by a lock of its own ([`Shared::install`]).

mod control;
mod ct_events;
mod forward;
mod signals;
mod start;
mod ticker;
mod watch;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{info, warn};

use crate::engine::{EditEffects, Engine};
use crate::kernel::conntrack::Conntrack;
use crate::kernel::icmp::Refuser;
use crate::kernel::nftables::{self, QueueImpl};
use crate::kernel::sysctl::{Setting, Sysctl};
use crate::ruleset::{self, Cidr, Overload, Ruleset};
use crate::service::Table;

pub use start::run;

/// Everything `nfvs run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The rules file; without one the daemon starts with an empty table and waits for
    /// `nfvs adm` / `ipvsadm` commands.
    pub rules: Option<PathBuf>,
    pub masquerade: Vec<Cidr>,
    /// The first queue number, and how many queues (one worker each) from it.
    pub queue: u16,
    pub queues: u16,
    pub state_dir: PathBuf,
    pub control: PathBuf,
    pub ct_mark: u32,
    /// What happens to SYNs the daemon cannot take (queue full, or no daemon).
    pub overload: Overload,
    /// How long a SIGTERM/SIGINT stop waits for running connections before it cuts them.
    pub drain_timeout: Duration,
    /// Deleting a real server deletes its connections at once (IPVS's expire_nodest_conn)
    /// instead of letting them finish.
    pub expire_nodest: bool,
    /// Pin each queue's worker to the CPUs the queue fanout feeds it from.
    pub pin_workers: bool,
    /// SYNs a queue holds before the kernel drops (or, fallback, accepts) more.
    pub queue_maxlen: u32,
    /// Seconds a TCP entry may stay half-open (SYN_SENT, SYN_RECV); 0: conntrack's own.
    pub half_open_timeout: u32,
    /// Director-wide scheduler settings (overhead formula, seed, incremental mode).
    pub sched: crate::sched::SchedOptions,
}

/// Counters of what the packet loops did, reported at stop.
#[derive(Debug, Default)]
pub struct LoopStats {
    pub scheduled: AtomicU64,
    pub retransmits: AtomicU64,
    /// SYNs whose tuple looked live, decided after a conntrack look-up (outside the lock).
    pub lookups: AtomicU64,
    /// Reused source ports whose finished old entry was deleted first.
    pub reused_ports: AtomicU64,
    pub no_dest: AtomicU64,
    /// SYNs to no service of the table (a table edit raced them).
    pub not_ours: AtomicU64,
    pub malformed: AtomicU64,
    /// SYNs from martian sources (loopback, 0.0.0.0/8, broadcast, multicast, the VIP), dropped.
    pub martians: AtomicU64,
    /// Conntrack creates the kernel refused (their SYNs went on to the nat_pre guard).
    pub ct_errors: AtomicU64,
    /// Reads from the queue sockets (one recvmmsg each, with one or more messages).
    pub batches: AtomicU64,
    /// SYNs the kernel dropped because the queue was full (from /proc).
    pub queue_dropped: AtomicU64,
}

impl LoopStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The stop line's summary of the run.
    fn summary(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "this run scheduled {} connection(s) ({} on a reused source port whose finished entry was deleted first) \
             in {} queue read(s) ({} after a conntrack look-up), saw {} retransmitted SYN(s), refused {} (no eligible server), {} conntrack create(s) \
             failed (their SYNs went to the guard rule); the kernel dropped {} SYN(s) on a full queue; {} packet(s) were \
             not new TCP or UDP, {} were to no service (a table edit raced them), {} came from martian sources \
             (dropped)",
            n(&self.scheduled),
            n(&self.reused_ports),
            n(&self.batches),
            n(&self.lookups),
            n(&self.retransmits),
            n(&self.no_dest),
            n(&self.ct_errors),
            n(&self.queue_dropped),
            n(&self.malformed),
            n(&self.not_ours),
            n(&self.martians)
        )
    }
}

/// What the threads share.
pub(crate) struct Shared {
    engine: Mutex<Engine>,
    /// The ruleset installed now. Held while a new one is computed and installed (never
    /// while waiting for `engine`'s lock the other way round: take `install`, then `engine`).
    install: Mutex<Ruleset>,
    opts: RunOptions,
    /// What to undo on stop (also run by a worker's fatal error).
    cleanup: Mutex<Cleanup>,
    qimpl: QueueImpl,
    start: Instant,
    loop_stats: LoopStats,
    /// Answers SYNs that no server can take; `None` if the raw socket could not be opened.
    refuser: Option<Refuser>,
    /// The sysctls nfvs set and their values, kept so by [`watch`].
    sysctls: Option<(Sysctl, Vec<Setting>)>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon's clock: time since start-up.
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The ruleset for a table of services.
    fn ruleset(&self, table: &Table) -> Ruleset {
        let o = &self.opts;
        ruleset::for_table(table, &o.masquerade, o.queue, o.queues, o.overload, o.ct_mark)
    }

    /// Applies table edits under the engine's lock, then, with the lock released, carries out
    /// their effects: deletes the connections `--expire-nodest` cuts and installs the table
    /// if what it should hold changed (one atomic batch with just the services that changed,
    /// or, when more changed, the whole table, in which the nat chains are replaced in the
    /// same transaction, so NAT stays registered for running flows: `nftables::update`).
    /// `edit` returns what the caller wants to report, besides the effects.
    fn edit<T>(&self, edit: impl FnOnce(&mut Engine) -> (T, EditEffects)) -> (T, anyhow::Result<()>) {
        let mut installed = self.install.lock().unwrap_or_else(|e| e.into_inner());
        let (out, fx, want) = {
            let mut engine = self.lock();
            let (out, fx) = edit(&mut engine);
            let want = self.ruleset(&engine.table);
            (out, fx, want)
        };
        expire_conns(&fx.expire);
        if want == *installed {
            return (out, Ok(()));
        }
        let res = nftables::update(&installed, &want, self.qimpl).map_err(anyhow::Error::from);
        if res.is_ok() {
            *installed = want;
        }
        (out, res)
    }

    /// Runs the clean-up and exits: a fatal error of a thread that cannot go on.
    fn fail(&self, msg: std::fmt::Arguments<'_>) -> ! {
        // As a stop: nothing installs again once the clean-up has begun (daemon/watch.rs).
        let _installing = self.install.lock().unwrap_or_else(|e| e.into_inner());
        self.cleanup.lock().unwrap_or_else(|e| e.into_inner()).run();
        crate::logging::flush();
        eprintln!("nfvs: error: {msg}");
        std::process::exit(1);
    }
}

/// Deletes the conntrack entries of connections cut by `--expire-nodest`.
fn expire_conns(tuples: &[crate::model::Tuple]) {
    if tuples.is_empty() {
        return;
    }
    match Conntrack::open() {
        Ok(mut ct) => {
            let n = tuples.iter().filter(|t| ct.delete(t).unwrap_or(false)).count();
            info!("expire-nodest: deleted {n} connection(s) of a removed real server");
        }
        Err(e) => warn!("expire-nodest: {e}"),
    }
}

/// What start-up did that stop must undo, in reverse order. Dropping it undoes it, so every
/// early return of start-up cleans up; once running, stop (or a fatal error) runs it and
/// exits.
#[derive(Default)]
pub(crate) struct Cleanup {
    sysctl: Option<Sysctl>,
    table_installed: bool,
    control: Option<PathBuf>,
}

impl Cleanup {
    fn run(&mut self) {
        if let Some(p) = self.control.take() {
            let _ = std::fs::remove_file(p);
        }
        if self.table_installed {
            match nftables::remove() {
                Ok(_) => info!("removed table ip {}", crate::ruleset::TABLE),
                Err(e) => warn!("{e}"),
            }
            self.table_installed = false;
        }
        if let Some(s) = self.sysctl.take() {
            match s.restore() {
                Ok(()) => info!("restored sysctls"),
                Err(e) => warn!("{e}"),
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.run();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().name(name.into()).spawn(f).unwrap_or_else(|e| panic!("spawn thread {name}: {e}"));
}
