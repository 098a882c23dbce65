//! The one place that wires the pure core (config, services, schedulers, packet parsing) to
//! the kernel edges (NFQUEUE, ctnetlink, nftables, sysctls).
//!
//! Start-up order matters (design.md): everything that can be checked without side effects is
//! checked first (rules file, privileges); the queue is bound and configured before the divert
//! rule exists (fact 9); sysctls are recorded before they are changed; the table goes in last,
//! in one atomic batch. Whatever fails half-way is undone before the error is returned.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use log::{debug, info, warn};

use crate::config;
use crate::kernel::conntrack::{Conntrack, CtError, TcpState};
use crate::kernel::nfqueue::{Queue, QueueConfig, Verdict};
use crate::kernel::nftables;
use crate::kernel::sysctl::Sysctl;
use crate::nat::CtMapping;
use crate::packet::{self, FlowKey};
use crate::ruleset::{Cidr, Divert, QueueSpec, Ruleset};
use crate::sched::Request;
use crate::service::{Protocol, ServiceKey, Table};

/// The conntrack mark nfvs puts on the entries it creates ("nfvs" in ASCII), so it can find
/// them in dumps and events. Changeable with `--ct-mark` where it clashes with a firewall's
/// own use of ct marks.
pub const DEFAULT_CT_MARK: u32 = 0x6e66_7673;

/// Everything `nfvs run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub rules: PathBuf,
    pub masquerade: Vec<Cidr>,
    pub queue: u16,
    pub state_dir: PathBuf,
    pub ct_mark: u32,
    /// Accept SYNs unbalanced instead of dropping them when the queue is full.
    pub fail_open: bool,
    /// How long a SIGTERM/SIGINT stop waits for running connections before it cuts them.
    pub drain_timeout: Duration,
}

/// The wanted ruleset for a table of services.
pub fn ruleset_for(table: &Table, masquerade: &[Cidr], queue: u16) -> anyhow::Result<Ruleset> {
    let diverts = table
        .services()
        .iter()
        .map(|s| {
            let k = s.key();
            Divert { proto: k.proto, vip: k.addr, port: k.port }
        })
        .collect();
    Ok(Ruleset {
        queue: QueueSpec { num: queue, total: 1, bypass: false, fanout: false },
        diverts,
        masquerade: masquerade.to_vec(),
    })
}

/// Counters of what the packet loop did, for logs and `nfvs adm` later.
#[derive(Debug, Default)]
pub struct Stats {
    pub scheduled: AtomicU64,
    pub retransmits: AtomicU64,
    pub reused_ports: AtomicU64,
    pub no_dest: AtomicU64,
    pub not_ours: AtomicU64,
    pub malformed: AtomicU64,
    pub ct_errors: AtomicU64,
}

/// Undoes what start-up did, in reverse order; used on every exit path.
struct Cleanup {
    sysctl: Option<Sysctl>,
    table_installed: bool,
}

impl Cleanup {
    fn run(&mut self) {
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

fn check_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "nfvs run must be started as root: it needs CAP_NET_ADMIN to install its nftables table, \
             bind an NFQUEUE and create conntrack entries, and write access to /proc/sys/net"
        );
    }
    Ok(())
}

/// Blocks the signals the daemon handles in the calling thread and every thread it starts,
/// so that only the signal thread receives them (with sigwait).
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a locally owned sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // A shell starts background jobs with SIGINT ignored, and an ignored signal is
            // discarded instead of becoming pending: restore the default so sigwait sees it.
            libc::signal(s, libc::SIG_DFL);
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Runs the director until SIGINT/SIGTERM. Returns only on a start-up or fatal error (after
/// undoing what it had done); a signal ends the process with exit status 0 after clean-up.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let table = config::load_rules(&opts.rules)?;
    let ruleset = ruleset_for(&table, &opts.masquerade, opts.queue)?;
    check_root()?;

    let sigset = block_signals();
    let cleanup = Arc::new(Mutex::new(Cleanup { sysctl: None, table_installed: false }));
    let draining = Ruleset { diverts: Vec::new(), ..ruleset.clone() };
    spawn_signal_thread(
        sigset,
        Stopper { cleanup: cleanup.clone(), draining, mark: opts.ct_mark, drain_timeout: opts.drain_timeout },
    );

    let result = start_and_serve(&opts, table, &ruleset, &cleanup);
    // Only reached on error: a signal exits from the signal thread.
    cleanup.lock().unwrap_or_else(|e| e.into_inner()).run();
    result
}

/// What the signal thread needs to stop the daemon gracefully.
struct Stopper {
    cleanup: Arc<Mutex<Cleanup>>,
    /// The installed ruleset minus its divert rules: new connections stop being balanced while
    /// the NAT chains (which keep NAT active for running flows, design.md fact 2) stay.
    draining: Ruleset,
    mark: u32,
    drain_timeout: Duration,
}

impl Stopper {
    /// Stops taking new connections, waits (bounded) for the flows nfvs balanced to finish,
    /// then removes the table and restores the sysctls. Restoring ip_forward=0 or removing the
    /// last nat chain cuts running flows, so both wait for the drain. A second signal during
    /// the wait stops at once.
    fn stop(&self, set: &libc::sigset_t) {
        let installed = self.cleanup.lock().unwrap_or_else(|e| e.into_inner()).table_installed;
        if installed && !self.drain_timeout.is_zero() {
            match nftables::detect_queue_impl().and_then(|q| nftables::apply(&self.draining, q)) {
                Ok(()) => self.drain(set),
                Err(e) => warn!("could not remove the divert rules before draining: {e}"),
            }
        }
        self.cleanup.lock().unwrap_or_else(|e| e.into_inner()).run();
        info!("stopped");
        std::process::exit(0);
    }

    fn drain(&self, set: &libc::sigset_t) {
        let deadline = Instant::now() + self.drain_timeout;
        let mut ct = match Conntrack::open() {
            Ok(c) => c,
            Err(e) => return warn!("cannot watch running connections ({e}); stopping now"),
        };
        let mut announced = false;
        loop {
            let live = match ct.dump(self.mark, u32::MAX) {
                Ok(entries) => entries.iter().filter(|e| e.tcp_state.is_some_and(|s| !matches!(s, TcpState::TimeWait | TcpState::Close))).count(),
                Err(e) => return warn!("cannot list running connections ({e}); stopping now"),
            };
            if live == 0 {
                return;
            }
            if !announced {
                info!(
                    "draining: no new connections; waiting up to {}s for {live} running connection(s) to finish \
                     (signal again to stop now)",
                    self.drain_timeout.as_secs()
                );
                announced = true;
            }
            if Instant::now() >= deadline {
                return warn!("drain timeout: {live} connection(s) still running will be cut");
            }
            let ts = libc::timespec { tv_sec: 0, tv_nsec: 200_000_000 };
            // SAFETY: valid signal set and timeout; a null siginfo pointer is allowed.
            if unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) } > 0 {
                return info!("second signal: stopping now");
            }
        }
    }
}

fn spawn_signal_thread(set: libc::sigset_t, stopper: Stopper) {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised signal set; `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            match sig {
                libc::SIGHUP => info!("SIGHUP: reloading is not supported yet; ignored"),
                _ => {
                    info!("signal {sig}: stopping");
                    stopper.stop(&set);
                }
            }
        })
        .expect("spawn signal thread");
}

fn start_and_serve(
    opts: &RunOptions,
    mut table: Table,
    ruleset: &Ruleset,
    cleanup: &Arc<Mutex<Cleanup>>,
) -> anyhow::Result<()> {
    let mut ct = Conntrack::open().context("open ctnetlink socket")?;
    let mut queue = Queue::open(&QueueConfig { num: opts.queue, fail_open: opts.fail_open, ..QueueConfig::default() })?;

    let sysctl = Sysctl::system(&opts.state_dir);
    let wanted = sysctl.director_settings()?;
    // Record the sysctl guard before applying, so a half-applied set is still restored.
    cleanup.lock().unwrap().sysctl = Some(sysctl.clone());
    sysctl.apply(&wanted)?;

    let qimpl = nftables::detect_queue_impl()?;
    cleanup.lock().unwrap().table_installed = true;
    nftables::apply(ruleset, qimpl)?;
    for s in table.services() {
        let dests: Vec<String> = s.dests.iter().map(|d| format!("{}:{} w{}", d.addr, d.port, d.weight)).collect();
        info!("service {} sched={} servers=[{}]", s.key().vip(), s.scheduler_name(), dests.join(", "));
    }
    info!(
        "nfvs: ready (queue {} via {:?} queue expression, table ip {}, masquerade [{}])",
        queue.num(),
        qimpl,
        crate::ruleset::TABLE,
        opts.masquerade.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
    );

    let stats = Stats::default();
    let start = Instant::now();
    loop {
        let msg = match queue.recv() {
            Ok(m) => m,
            Err(e) => {
                if let crate::kernel::nfqueue::QueueError::Recv(io) = &e {
                    if io.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    // ENOBUFS: the kernel dropped messages for us; keep going.
                    if io.raw_os_error() == Some(libc::ENOBUFS) {
                        warn!("NFQUEUE: kernel reported lost packets (ENOBUFS)");
                        continue;
                    }
                }
                return Err(e.into());
            }
        };
        let verdict = match packet::parse(msg.get_payload()) {
            Ok(flow) => decide(&mut table, &mut ct, &flow, opts.ct_mark, start, &stats),
            Err(e) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                debug!("accepting unparsed packet unmodified: {e}");
                Verdict::Accept
            }
        };
        queue.verdict(msg, verdict)?;
    }
}

/// One new-connection decision: schedule, create the DNAT entry, log it.
fn decide(table: &mut Table, ct: &mut Conntrack, flow: &FlowKey, mark: u32, start: Instant, stats: &Stats) -> Verdict {
    let proto = if flow.proto == 6 { Protocol::Tcp } else { Protocol::Udp };
    let key = ServiceKey { proto, addr: flow.dst, port: flow.dport };
    let Some(svc) = table.service_mut(&key) else {
        // The divert rule only matches our services, but a table edit may race a queued SYN.
        stats.not_ours.fetch_add(1, Ordering::Relaxed);
        return Verdict::Accept;
    };
    let client = SocketAddrV4::new(flow.src, flow.sport);
    let req = Request { caddr: flow.src, cport: flow.sport, daddr: flow.dst, dport: flow.dport, now: start.elapsed() };
    let sched = svc.scheduler_name();
    let Some(dest) = svc.schedule(&req) else {
        stats.no_dest.fetch_add(1, Ordering::Relaxed);
        warn!("conn client={client} vip={} sched={sched} rs=none: no eligible real server, SYN dropped", key.vip());
        return Verdict::Drop;
    };
    let (rip, dest_id) = (dest.rip(), dest.id);
    let mapping = CtMapping::dnat(flow, rip, mark);
    match create_mapping(ct, &mapping, stats) {
        Ok(Created::New) => {
            if let Some(d) = svc.dests.iter_mut().find(|d| d.id == dest_id) {
                d.active += 1;
            }
            stats.scheduled.fetch_add(1, Ordering::Relaxed);
            info!("conn client={client} vip={} sched={sched} rs={rip}", key.vip());
            Verdict::Accept
        }
        Ok(Created::Retransmit) => {
            debug!("conn client={client} vip={}: retransmitted SYN of a tracked connection", key.vip());
            Verdict::Accept
        }
        Err(e) => {
            stats.ct_errors.fetch_add(1, Ordering::Relaxed);
            warn!("conn client={client} vip={} sched={sched} rs={rip}: {e}; SYN dropped (the client will retry)", key.vip());
            Verdict::Drop
        }
    }
}

enum Created {
    New,
    Retransmit,
}

/// Creates the entry, handling an existing one as design.md fact 6 says: a state up to
/// ESTABLISHED is a retransmitted SYN of a live flow (keep it); a later state (TIME_WAIT,
/// CLOSE, ...) is a reused source port: delete the old entry and create ours.
fn create_mapping(ct: &mut Conntrack, m: &CtMapping, stats: &Stats) -> Result<Created, CtError> {
    match ct.create(m) {
        Ok(()) => return Ok(Created::New),
        Err(CtError::Exists) => {}
        Err(e) => return Err(e),
    }
    if let Some(old) = ct.get(&m.orig)? {
        if old.tcp_state.is_none_or(|s| s.is_alive_for_reuse()) {
            stats.retransmits.fetch_add(1, Ordering::Relaxed);
            return Ok(Created::Retransmit);
        }
        ct.delete(&m.orig)?;
        stats.reused_ports.fetch_add(1, Ordering::Relaxed);
    }
    ct.create(m)?;
    Ok(Created::New)
}
