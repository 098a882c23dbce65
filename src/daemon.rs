//! The one place that wires the pure core (config, services, schedulers, accounting, listings)
//! to the kernel edges (NFQUEUE, ctnetlink, nftables, sysctls).
//!
//! Start-up order matters (design.md): everything that can be checked without side effects is
//! checked first (rules file, privileges); the queue is bound and configured before the divert
//! rule exists (fact 9); sysctls are recorded before they are changed; the table goes in last,
//! in one atomic batch. Whatever fails half-way is undone before the error is returned.
//!
//! Threads, all sharing one [`State`] behind a mutex:
//! - the packet loop (the caller's thread; `queue-N` threads for more queues): per batch of
//!   queued SYNs, one read, one scheduling decision each, one send of their conntrack creates
//!   and verdicts;
//! - `ct-events`: conntrack UPDATE/DESTROY events of our entries -> connection counters;
//! - `ticker`: every 2 s, samples traffic counters (rates) and expires persistence templates;
//! - `control`: the `nfvs adm` / `ipvsadm` socket;
//! - `signals`: SIGTERM/SIGINT (graceful stop) and SIGHUP (reload the rules file).

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use log::{debug, info, warn};

use crate::accounting::Conns;
use crate::adm::command::{self, Command, ListWhat};
use crate::adm::control::{self, Reply, Request};
use crate::adm::etc_services::PortNames;
use crate::adm::listing::{self, ConnRow};
use crate::adm::{args, rules, usage};
use crate::kernel::conntrack::{Conntrack, CtError, CtEventKind, CtEvents, TcpState};
use crate::kernel::conntrack::{append_create, append_delete};
use crate::kernel::nfqueue::{parse_datagram, Msg, Outbox, Queue, QueueConfig, Verdict, BATCH};
use crate::kernel::nftables::{self, QueueImpl};
use crate::kernel::sysctl::{Setting, Sysctl};
use crate::nat::{CtMapping, Tuple};
use crate::packet;
use crate::ruleset::{Cidr, Divert, FallbackRule, QueueSpec, Ruleset};
use crate::sched::Request as SchedRequest;
use crate::service::{DestId, Protocol, ServiceKey, Table};
use crate::stats::{Counters, StatsTable, ESTIMATOR_INTERVAL};

/// The conntrack mark nfvs puts on the entries it creates ("nfvs" in ASCII), so it can find
/// them in dumps and events. Changeable with `--ct-mark` where it clashes with a firewall's
/// own use of ct marks.
pub const DEFAULT_CT_MARK: u32 = 0x6e66_7673;

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
    /// Director-wide scheduler settings (overhead formula, seed, incremental mode).
    pub sched: crate::sched::SchedOptions,
}

/// What happens to new connections the daemon cannot take: SYNs beyond what the queue holds,
/// and all SYNs while no daemon is bound to the queue (crashed, or restarting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overload {
    /// The kernel drops them; clients retry (after ~1 s, then 3 s, ...). Every balanced
    /// connection is the daemon's decision.
    #[default]
    Drop,
    /// They go on to a static kernel rule that balances them by weight (design.md fact 7):
    /// nothing is refused, but these connections bypass the scheduler and its counters. The
    /// queue gets fail-open and bypass.
    Fallback,
}

/// The wanted ruleset for a table of services.
pub fn ruleset_for(
    table: &Table,
    masquerade: &[Cidr],
    queue: u16,
    queues: u16,
    overload: Overload,
    ct_mark: u32,
) -> Ruleset {
    let diverts = table
        .services()
        .iter()
        .map(|s| {
            let k = s.key();
            Divert { proto: k.proto, vip: k.addr, port: k.port }
        })
        .collect();
    let fallback = match overload {
        Overload::Drop => Vec::new(),
        Overload::Fallback => table
            .services()
            .iter()
            .filter(|s| s.key().proto == Protocol::Tcp)
            .map(|s| FallbackRule {
                vip: s.key().addr,
                port: s.key().port,
                servers: s.dests.iter().map(|d| (d.addr, d.port, d.weight)).collect(),
            })
            .filter(|f| !f.steps().is_empty())
            .collect(),
    };
    let queue = QueueSpec { num: queue, total: queues, bypass: overload == Overload::Fallback, fanout: queues > 1 };
    Ruleset { queue, diverts, masquerade: masquerade.to_vec(), fallback, events_mark: Some(ct_mark) }
}

/// Counters of what the packet loop did.
#[derive(Debug, Default)]
pub struct LoopStats {
    pub scheduled: AtomicU64,
    pub retransmits: AtomicU64,
    pub reused_ports: AtomicU64,
    /// Reused ports whose old entry nfvs knew finished (the short path).
    pub reused_known: AtomicU64,
    pub no_dest: AtomicU64,
    pub not_ours: AtomicU64,
    pub malformed: AtomicU64,
    /// Conntrack creates the kernel refused (their SYNs went on to the nat_pre guard).
    pub ct_errors: AtomicU64,
    /// Reads from the queue sockets (one recvmmsg each, with one or more messages).
    pub batches: AtomicU64,
    /// SYNs the kernel dropped because the queue was full (from /proc).
    pub queue_dropped: AtomicU64,
}

/// Everything the threads share.
pub struct State {
    pub table: Table,
    pub conns: Conns,
    pub stats: StatsTable,
    /// The ruleset installed now.
    installed: Ruleset,
    /// Finished conntrack entries for our services that nfvs did not make, found at start-up
    /// (the `--overload fallback` rule's while no daemon ran, another balancer's, another
    /// `--ct-mark`'s): a SYN reusing one of their tuples deletes the entry first, as for a
    /// finished connection of nfvs's own, instead of failing its create and waiting for the
    /// client's retry. Forgotten once they have all expired ([`ForeignFinished::until`]).
    foreign: ForeignFinished,
}

#[derive(Default)]
struct ForeignFinished {
    tuples: HashSet<Tuple>,
    /// Daemon time by which every one of them has expired.
    until: Duration,
}

impl ForeignFinished {
    /// Reads the TCP entries to each virtual address (one dump per address, filtered by the
    /// kernel; each walks the whole conntrack table once) and keeps those to one of
    /// `services`; `now` is the daemon's clock.
    fn find(ct: &mut Conntrack, services: &[ServiceKey], mark: u32, now: Duration) -> Result<ForeignFinished, CtError> {
        let tcp: HashSet<(Ipv4Addr, u16)> =
            services.iter().filter(|k| k.proto == Protocol::Tcp).map(|k| (k.addr, k.port)).collect();
        let vips: HashSet<Ipv4Addr> = tcp.iter().map(|&(a, _)| a).collect();
        let mut f = ForeignFinished::default();
        let mut longest = 0;
        for vip in vips {
            for e in ct.dump_to(libc::IPPROTO_TCP as u8, vip, None)? {
                let ours = tcp.contains(&(e.orig.dst, e.orig.dport));
                if ours && e.mark != mark && !e.is_live_balanced(mark) && f.tuples.insert(e.orig) {
                    longest = longest.max(e.timeout.unwrap_or(0));
                }
            }
        }
        f.until = now + Duration::from_secs(u64::from(longest) + 1);
        Ok(f)
    }

    /// Whether `orig` is one of them (once: the caller deletes it).
    fn take(&mut self, orig: &Tuple) -> bool {
        !self.tuples.is_empty() && self.tuples.remove(orig)
    }

    /// Forgets them all once they have expired.
    fn expire(&mut self, now: Duration) {
        if !self.tuples.is_empty() && now >= self.until {
            self.tuples = HashSet::new();
        }
    }
}

struct Shared {
    state: Mutex<State>,
    opts: RunOptions,
    cleanup: Mutex<Cleanup>,
    qimpl: QueueImpl,
    start: Instant,
    loop_stats: LoopStats,
    /// Answers SYNs that no server can take; `None` if the raw socket could not be opened.
    refuser: Option<Refuser>,
}

/// IPVS answers a connection it cannot schedule with ICMP port unreachable from the VIP
/// (`ip_vs_leave`/`ip_vs_in`: `icmp_send(skb, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0)`), so the
/// client's connect() fails at once with ECONNREFUSED instead of retrying its SYN until it
/// times out (lvs-semantics.md §1.3). The SYN never reached conntrack (it is dropped in raw
/// PREROUTING), so nfvs sends the error itself, from a raw socket.
struct Refuser {
    fd: std::os::fd::OwnedFd,
}

impl Refuser {
    /// `IPPROTO_RAW` implies IP_HDRINCL: we write the IP header; the kernel fills in its
    /// checksum and, when zero, its id (raw(7)).
    fn open() -> std::io::Result<Refuser> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments; the descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Refuser { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) } })
    }

    /// Sends ICMP port unreachable for the queued IPv4 packet `orig` (already parsed, so its
    /// header is sound) from its destination to its source, quoting its IP header and first
    /// 8 bytes of payload (RFC 792), which carry the ports and sequence number the client's
    /// TCP checks (`tcp_v4_err`).
    fn refuse(&self, orig: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let bad = || std::io::Error::from(std::io::ErrorKind::InvalidData);
        let ihl = usize::from(orig.first().ok_or_else(bad)? & 0x0f) * 4;
        if ihl < 20 || orig.len() < ihl {
            return Err(bad());
        }
        let quote = &orig[..orig.len().min(ihl + 8)];
        let total = 20 + 8 + quote.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[1] = 0xc0; // IPTOS_PREC_INTERNETCONTROL, as icmp_send
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64; // TTL
        p[9] = libc::IPPROTO_ICMP as u8;
        p[12..16].copy_from_slice(&orig[16..20]); // from the VIP the client asked for
        p[16..20].copy_from_slice(&orig[12..16]); // to the client
        p[20] = 3; // ICMP_DEST_UNREACH
        p[21] = 3; // ICMP_PORT_UNREACH
        p[28..].copy_from_slice(quote);
        let sum = internet_checksum(&p[20..]);
        p[22..24].copy_from_slice(&sum.to_be_bytes());
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([orig[12], orig[13], orig[14], orig[15]]) },
            sin_zero: [0; 8],
        };
        // SAFETY: `p` and `to` are valid for the lengths given during the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The ruleset for the current table.
    fn ruleset(&self, table: &Table) -> Ruleset {
        let o = &self.opts;
        ruleset_for(table, &o.masquerade, o.queue, o.queues, o.overload, o.ct_mark)
    }

    /// Re-installs the table when what it should hold changed (services; with the fallback,
    /// servers and weights too): one atomic batch, in which the nat chains are replaced in the
    /// same transaction, so NAT stays registered for running flows.
    fn sync_rules(&self, st: &mut State) -> anyhow::Result<()> {
        let want = self.ruleset(&st.table);
        if want == st.installed {
            return Ok(());
        }
        nftables::apply(&want, self.qimpl)?;
        st.installed = want;
        Ok(())
    }
}

/// Undoes what start-up did, in reverse order; used on every exit path.
struct Cleanup {
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
pub fn block_signals() -> libc::sigset_t {
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

/// The sysctls nfvs sets: the seed's director settings, plus conntrack accounting (packet and
/// byte counters for `--stats`).
fn wanted_sysctls(s: &Sysctl, expire_nodest: bool) -> anyhow::Result<Vec<Setting>> {
    let mut w = s.director_settings()?;
    w.push(Setting::new("net/netfilter/nf_conntrack_acct", "1"));
    if expire_nodest {
        // An expired flow must stay dead. With loose pick-up (the default) the real server's
        // next segment re-creates an entry mid-stream and MASQUERADE maps it back to VIP:port,
        // so the flow carries on. Without it that segment is INVALID and not NATed; the
        // client's next one reaches the director's own stack, which answers RST, as after
        // IPVS's expire_nodest_conn (nf_conntrack_proto_tcp.c, tcp_new(): !tn->tcp_loose).
        w.push(Setting::new("net/netfilter/nf_conntrack_tcp_loose", "0"));
    }
    Ok(w)
}

/// Runs the director until SIGINT/SIGTERM. Returns only on a start-up or fatal error (after
/// undoing what it had done); a signal ends the process with exit status 0 after clean-up.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let table = match &opts.rules {
        Some(p) => rules::load_rules_with(p, opts.sched)?,
        None => Table::with_defaults(opts.sched),
    };
    let ruleset = ruleset_for(&table, &opts.masquerade, opts.queue, opts.queues, opts.overload, opts.ct_mark);
    ruleset.validate()?;
    check_root()?;

    let sigset = block_signals();
    let cleanup = Mutex::new(Cleanup { sysctl: None, table_installed: false, control: None });
    let result = start(opts, table, &ruleset, cleanup, sigset);
    // Only reached on error: a signal exits from the signal thread.
    if let Err((e, cleanup)) = result {
        cleanup.lock().unwrap_or_else(|e| e.into_inner()).run();
        return Err(e);
    }
    Ok(())
}


fn start(
    opts: RunOptions,
    table: Table,
    ruleset: &Ruleset,
    cleanup: Mutex<Cleanup>,
    sigset: libc::sigset_t,
) -> Result<(), (anyhow::Error, Mutex<Cleanup>)> {
    macro_rules! tryc {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err((anyhow::Error::from(e), cleanup)),
            }
        };
    }
    let qcfg = |num| QueueConfig {
        num,
        fail_open: opts.overload == Overload::Fallback,
        max_len: opts.queue_maxlen,
        // About 1 KiB of receive buffer per waiting SYN (skb truesize), at least 1 MiB.
        rcvbuf: (opts.queue_maxlen as usize).saturating_mul(1024).max(1 << 20),
        ..QueueConfig::default()
    };
    if opts.pin_workers && opts.queues == 1 {
        warn!("--pin-workers has no effect with one queue: pin with --queues set to the number of CPUs");
    }
    let mut ct = tryc!(Conntrack::open().context("open ctnetlink socket"));
    let queue = tryc!(Queue::open(&qcfg(opts.queue)));
    // Workers for the other queues. Netlink sockets stay in the thread that made them; each
    // worker binds its queue (before the divert rule exists: fact 9), says so, then waits for
    // the shared state.
    let mut workers = Vec::new();
    for i in 1..opts.queues {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<()>>(1);
        let (go_tx, go_rx) = std::sync::mpsc::sync_channel::<Arc<Shared>>(1);
        let cfg = qcfg(opts.queue + i);
        let (pin, total) = (opts.pin_workers, opts.queues);
        spawn(&format!("queue-{}", cfg.num), move || {
            if pin {
                pin_to_queue_cpus(i, total);
            }
            let opened = Conntrack::open()
                .context("open ctnetlink socket")
                .and_then(|ct| Ok((ct, Queue::open(&cfg)?)));
            let (ct, q) = match opened {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => return drop(ready_tx.send(Err(e))),
            };
            if let Ok(sh) = go_rx.recv() {
                worker(&sh, q, ct);
            }
        });
        tryc!(ready_rx.recv().unwrap_or_else(|_| Err(anyhow::anyhow!("queue worker died"))));
        workers.push(go_tx);
    }
    let server = tryc!(control::Server::bind(&opts.control)
        .with_context(|| format!("control socket {}", opts.control.display())));
    cleanup.lock().unwrap().control = Some(opts.control.clone());

    let sysctl = Sysctl::system(&opts.state_dir);
    let wanted = tryc!(wanted_sysctls(&sysctl, opts.expire_nodest));
    // Record the sysctl guard before applying, so a half-applied set is still restored.
    cleanup.lock().unwrap().sysctl = Some(sysctl.clone());
    tryc!(sysctl.apply(&wanted));

    // Subscribe before the dump, so nothing that happens in between is missed. The netlink
    // socket cannot move between threads, so the event thread makes it and says when it has.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), CtError>>(1);
    let (shared_tx, shared_rx) = std::sync::mpsc::sync_channel::<Arc<Shared>>(1);
    spawn("ct-events", move || {
        // No NEW group: nfvs knows its connections when it creates them, and every listener
        // costs the kernel work on the per-SYN path (the NEW event is built in the creating
        // thread); UPDATE events carry the entry id as well.
        let events = match CtEvents::subscribe(&[CtEventKind::Update, CtEventKind::Destroy]) {
            Ok(ev) => {
                let _ = ready_tx.send(Ok(()));
                ev
            }
            Err(e) => return drop(ready_tx.send(Err(e))),
        };
        if let Ok(sh) = shared_rx.recv() {
            event_loop(&sh, events);
        }
    });
    tryc!(ready_rx.recv().unwrap_or(Err(CtError::EventsLost)).context("subscribe to conntrack events"));
    let qimpl = tryc!(nftables::detect_queue_impl());
    cleanup.lock().unwrap().table_installed = true;
    tryc!(nftables::apply(ruleset, qimpl));

    let mut state =
        State { table, conns: Conns::new(), stats: StatsTable::new(), installed: ruleset.clone(), foreign: ForeignFinished::default() };
    // Connections balanced by an earlier run (a restart): count them as if we never stopped.
    let existing = tryc!(ct.dump(opts.ct_mark, u32::MAX));
    // The daemon's clock starts at zero just below.
    for e in &existing {
        state.conns.seen(&mut state.table, e, Duration::ZERO);
    }
    if !state.conns.is_empty() {
        info!("found {} connection(s) balanced by an earlier run; counting them", state.conns.len());
    }
    for s in state.table.services() {
        let dests: Vec<String> = s.dests.iter().map(|d| format!("{}:{} w{}", d.addr, d.port, d.weight)).collect();
        info!("service {} sched={} servers=[{}]", s.key().vip(), s.scheduler_name(), dests.join(", "));
    }

    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        opts,
        cleanup,
        qimpl,
        start: Instant::now(),
        loop_stats: LoopStats::default(),
        refuser: Refuser::open().map_err(|e| warn!("cannot open a raw socket for ICMP refusals: {e}")).ok(),
    });
    // Before any worker runs: a SYN for such a tuple may be waiting in the queue already.
    find_foreign_finished(&shared, &mut ct);
    spawn("signals", {
        let sh = shared.clone();
        move || signal_loop(&sh, sigset)
    });
    let _ = shared_tx.send(shared.clone());
    for w in workers {
        let _ = w.send(shared.clone());
    }
    spawn("ticker", {
        let sh = shared.clone();
        move || ticker_loop(&sh)
    });
    spawn("control", {
        let sh = shared.clone();
        move || server.serve(|req| handle_adm(&sh, req))
    });
    info!(
        "nfvs: ready (queue {}{} via {qimpl}, table ip {}, masquerade [{}], control {})",
        queue.num(),
        if shared.opts.queues > 1 { format!("-{}", queue.num() + shared.opts.queues - 1) } else { String::new() },
        crate::ruleset::TABLE,
        shared.opts.masquerade.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "),
        shared.opts.control.display()
    );

    // Pinned last: the threads spawned above inherit the affinity of the one spawning them.
    if shared.opts.pin_workers {
        pin_to_queue_cpus(0, shared.opts.queues);
    }
    worker(&shared, queue, ct);
    Ok(())
}

/// Runs one queue's packet loop; a fatal error stops the whole daemon, cleaned up.
fn worker(sh: &Shared, queue: Queue, ct: Conntrack) {
    let num = queue.num();
    if let Err(e) = Worker::new(queue, ct).run(sh) {
        let mut c = sh.cleanup.lock().unwrap_or_else(|e| e.into_inner());
        c.run();
        drop(c);
        eprintln!("nfvs: error: queue {num}: {e:#}");
        std::process::exit(1);
    }
}

/// Pins the calling thread to the CPUs whose SYNs go to queue `i` of `total`: with the fanout
/// flag the divert rule picks queue `first + cpu % total` (net/netfilter/xt_NFQUEUE.c
/// `nfqueue_tg_v3`, nft_queue.c), cpu being the one the packet is processed on.
pub fn pin_to_queue_cpus(i: u16, total: u16) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain data; the libc calls get its size and a pointer to it, and
    // CPU_ISSET/CPU_SET index within CPU_SETSIZE.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            warn!("--pin-workers: sched_getaffinity: {}", std::io::Error::last_os_error());
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let mut cpus = Vec::new();
        for c in 0..libc::CPU_SETSIZE as usize {
            if libc::CPU_ISSET(c, &allowed) && c % usize::from(total) == usize::from(i) {
                libc::CPU_SET(c, &mut set);
                cpus.push(c.to_string());
            }
        }
        if cpus.is_empty() {
            warn!("--pin-workers: no CPU of this process feeds queue worker {i} of {total}; not pinned");
            return;
        }
        if libc::sched_setaffinity(0, size, &set) != 0 {
            warn!("--pin-workers: sched_setaffinity: {}", std::io::Error::last_os_error());
            return;
        }
        info!("queue worker {i} of {total} pinned to CPU {}", cpus.join(","));
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().name(name.into()).spawn(f).unwrap_or_else(|e| panic!("spawn thread {name}: {e}"));
}

/// A ctnetlink request sent on a queue socket, remembered until its answer could arrive. The
/// kernel answers only failures (the requests carry no `NLM_F_ACK`), so success is silence.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Create { orig: Tuple, svc: ServiceKey, dest: DestId, rip: SocketAddrV4 },
    Delete { orig: Tuple },
}

/// Requests remembered, by sequence number modulo this. A failure is answered while the
/// `sendmsg` that carried the request runs, so it is read with the next batch, at most
/// [`BATCH`] x 2 requests later: far fewer than this.
const SENT_RING: usize = 4096;

/// Verdicts are sent with sequence number 0; ctnetlink requests never are.
const VERDICT_SEQ: u32 = 0;

/// A decision, logged once the batch's messages are sent and the state lock is released.
struct Decision {
    client: SocketAddrV4,
    svc: ServiceKey,
    sched: &'static str,
    rip: SocketAddrV4,
    persistent: bool,
}

/// A request or verdict the kernel refused, reported after the lock is released.
struct Failure {
    errno: i32,
    /// `None`: a verdict.
    sent: Option<Sent>,
}

/// One queue's worker: its queue socket (which also carries its ctnetlink requests, see
/// [`crate::kernel::nfqueue`]) and what a batch needs, allocated once.
struct Worker {
    queue: Queue,
    b: BatchScratch,
}

struct BatchScratch {
    qnum: u16,
    /// A request/answer ctnetlink socket, for the rare look-ups: a SYN for a tuple nfvs
    /// believes live, and after a create failed.
    ct: Conntrack,
    out: Outbox,
    seq: u32,
    sent: Box<[(u32, Option<Sent>)]>,
    log_decisions: bool,
    decisions: Vec<Decision>,
    failures: Vec<Failure>,
}

impl BatchScratch {
    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn remember(&mut self, seq: u32, what: Sent) {
        self.sent[seq as usize % SENT_RING] = (seq, Some(what));
    }

    fn take(&mut self, seq: u32) -> Option<Sent> {
        let slot = &mut self.sent[seq as usize % SENT_RING];
        if slot.0 == seq {
            slot.1.take()
        } else {
            None
        }
    }
}

impl Worker {
    fn new(queue: Queue, ct: Conntrack) -> Worker {
        let b = BatchScratch {
            qnum: queue.num(),
            ct,
            out: Outbox::with_capacity(BATCH * 512),
            seq: 0,
            sent: vec![(0, None); SENT_RING].into_boxed_slice(),
            log_decisions: false,
            decisions: Vec::with_capacity(BATCH),
            failures: Vec::new(),
        };
        Worker { queue, b }
    }

    /// Per batch: read every waiting packet and failure answer (one `recvmmsg`); under one
    /// lock of the shared state, apply the failures and decide every packet, appending its
    /// ctnetlink requests and then its verdict; send them all (one `sendmsg`); log. Then read
    /// again without waiting before going to sleep: the failures of what was just sent are
    /// queued by now (the kernel answers while it runs the sendmsg), and a failed create must
    /// give its count back at once, not when the next SYN happens to come.
    fn run(&mut self, sh: &Shared) -> anyhow::Result<()> {
        let mut nonblocking = false;
        loop {
            let n = self.queue.recv(nonblocking).map_err(crate::kernel::nfqueue::QueueError::Recv)?;
            nonblocking = n > 0;
            if n == 0 {
                continue;
            }
            sh.loop_stats.batches.fetch_add(1, Ordering::Relaxed);
            self.b.log_decisions = log::log_enabled!(log::Level::Info);
            {
                let mut guard = sh.lock();
                let now = sh.now();
                for data in self.queue.datagrams() {
                    parse_datagram(data, |m| handle(sh, &mut guard, &mut self.b, m, now));
                }
            }
            self.queue.flush(&mut self.b.out)?;
            self.report(sh);
        }
    }

    fn report(&mut self, sh: &Shared) {
        for d in self.b.decisions.drain(..) {
            let how = if d.persistent { " (persistent)" } else { "" };
            info!("conn client={} vip={} sched={} rs={}{how}", d.client, d.svc.vip(), d.sched, d.rip);
        }
        for f in std::mem::take(&mut self.b.failures) {
            let err = std::io::Error::from_raw_os_error(f.errno);
            match f.sent {
                None => warn!("NFQUEUE {}: the kernel refused a verdict: {err}", self.b.qnum),
                Some(Sent::Delete { orig }) => {
                    warn!("conn client={}:{}: deleting its finished conntrack entry failed: {err}", orig.src, orig.sport)
                }
                Some(Sent::Create { orig, svc, rip, .. }) => self.report_create_failure(sh, &orig, &svc, rip, f.errno),
            }
        }
    }

    /// The SYN whose entry could not be created was accepted all the same (its verdict went
    /// out in the same `sendmsg`): the kernel's own rules took it. Say what became of it.
    fn report_create_failure(&mut self, sh: &Shared, orig: &Tuple, svc: &ServiceKey, rip: SocketAddrV4, errno: i32) {
        let client = SocketAddrV4::new(orig.src, orig.sport);
        let vip = svc.vip();
        let fate = match sh.opts.overload {
            Overload::Drop => "the SYN was dropped by our nat_pre guard rule; the client will retry it",
            Overload::Fallback => "the SYN went to the kernel fallback rule",
        };
        if errno != libc::EEXIST {
            let err = std::io::Error::from_raw_os_error(errno);
            warn!("conn client={client} vip={vip} rs={rip}: creating the conntrack entry failed: {err}; {fate}");
            return;
        }
        // An entry nfvs did not know about had the tuple. A live balanced one (ours from a
        // retransmitted SYN on another path, or the fallback rule's) took the SYN to its
        // server; a finished one (a reused source port) was replaced by the kernel with an
        // entry without DNAT, which the guard rule dropped.
        match self.b.ct.get(orig) {
            Ok(Some(e)) if e.is_live_balanced(sh.opts.ct_mark) => {
                sh.loop_stats.retransmits.fetch_add(1, Ordering::Relaxed);
                debug!("conn client={client} vip={vip}: retransmitted SYN of a balanced connection nfvs did not track");
            }
            _ => warn!(
                "conn client={client} vip={vip} rs={rip}: conntrack already held an entry nfvs did not know for \
                 this tuple (a reused source port of an untracked connection); {fate}"
            ),
        }
    }
}

/// One message from the queue socket, under the state lock.
fn handle(sh: &Shared, st: &mut State, b: &mut BatchScratch, m: Msg<'_>, now: Duration) {
    let ls = &sh.loop_stats;
    match m {
        Msg::Packet { id, payload } => {
            let v = decide(sh, st, b, payload, now);
            b.out.verdict(b.qnum, id, v);
        }
        Msg::Error { seq, errno } if seq == VERDICT_SEQ => b.failures.push(Failure { errno, sent: None }),
        Msg::Error { seq, errno } => match b.take(seq) {
            Some(sent @ Sent::Create { orig, svc, dest, .. }) => {
                // Give the counts back: this connection is not balanced by nfvs. (The
                // scheduler has moved on, as IPVS's has when ip_vs_conn_new fails.)
                st.conns.cancel(&mut st.table, &orig, dest, now);
                st.stats.uncount_conn(&svc, dest);
                ls.ct_errors.fetch_add(1, Ordering::Relaxed);
                b.failures.push(Failure { errno, sent: Some(sent) });
            }
            // Expired between the event that said it finished and our delete: fine.
            Some(Sent::Delete { .. }) if errno == libc::ENOENT => {}
            Some(sent @ Sent::Delete { .. }) => b.failures.push(Failure { errno, sent: Some(sent) }),
            None => debug!("NFQUEUE {}: error {errno} for request {seq}, no longer remembered", b.qnum),
        },
        Msg::Unexpected { ty } => debug!("NFQUEUE {}: ignoring a message of type {ty:#x}", b.qnum),
    }
}

/// One new-connection decision: schedule, queue the DNAT entry's creation, count it.
fn decide(sh: &Shared, st: &mut State, b: &mut BatchScratch, payload: &[u8], now: Duration) -> Verdict {
    let ls = &sh.loop_stats;
    let flow = match packet::parse(payload) {
        Ok(f) => f,
        Err(e) => {
            ls.malformed.fetch_add(1, Ordering::Relaxed);
            debug!("accepting unparsed packet unmodified: {e}");
            return Verdict::Accept;
        }
    };
    let proto = if flow.proto == 6 { Protocol::Tcp } else { Protocol::Udp };
    let key = ServiceKey { proto, addr: flow.dst, port: flow.dport };
    // A SYN for a connection nfvs balanced and still sees live is a retransmission (the first
    // SYN or its SYN-ACK was lost): IPVS finds its connection entry and does not schedule
    // again, so neither do we; the kernel's entry takes it to the same server.
    let orig = Tuple::from(&flow);
    // Whether an earlier connection with this tuple has finished: its entry must be deleted
    // first (a reused source port, design.md fact 6).
    let mut finished = st.conns.finished(&orig) || st.foreign.take(&orig);
    if st.conns.live(&orig) {
        // Events lag the kernel by up to a batch: a client that closes and reconnects from
        // the same port at once looks live here. Ask conntrack (one round trip, only for
        // tuples nfvs believes live: retransmissions and such quick reuse).
        match b.ct.get(&orig) {
            Ok(Some(e)) if e.is_live_balanced(sh.opts.ct_mark) => {
                ls.retransmits.fetch_add(1, Ordering::Relaxed);
                debug!("conn client={}:{} vip={}: retransmitted SYN", flow.src, flow.sport, key.vip());
                return Verdict::Accept;
            }
            Ok(Some(_)) => finished = true,
            Ok(None) => {}
            Err(e) => debug!("conn client={}:{}: looking up its earlier entry: {e}", flow.src, flow.sport),
        }
    }
    let Some(svc) = st.table.service_mut(&key) else {
        // The divert rule only matches our services, but a table edit may race a queued SYN.
        ls.not_ours.fetch_add(1, Ordering::Relaxed);
        return Verdict::Accept;
    };
    let client = SocketAddrV4::new(flow.src, flow.sport);
    let req = SchedRequest { caddr: flow.src, cport: flow.sport, daddr: flow.dst, dport: flow.dport, now };
    let sched = svc.scheduler_name();
    let Some(pick) = svc.schedule(&req) else {
        ls.no_dest.fetch_add(1, Ordering::Relaxed);
        warn!("conn client={client} vip={} sched={sched} rs=none: no eligible real server, refused", key.vip());
        if let Some(r) = &sh.refuser {
            if let Err(e) = r.refuse(payload) {
                debug!("ICMP port unreachable to {client}: {e}");
            }
        }
        return Verdict::Drop;
    };
    let dest = &svc.dests[pick.index];
    let (rip, dest_id) = (dest.rip(), dest.id);
    let mapping = CtMapping::dnat(&flow, rip, sh.opts.ct_mark);
    // A reused source port whose old entry we know is finished (design.md fact 6): delete
    // it first, in the same sendmsg. An old entry we do not know of makes the create fail
    // with EEXIST, answered later (Worker::report_create_failure).
    if finished {
        let seq = b.next_seq();
        append_delete(&mut b.out.buf, seq, 0, &orig);
        b.remember(seq, Sent::Delete { orig });
        ls.reused_ports.fetch_add(1, Ordering::Relaxed);
        ls.reused_known.fetch_add(1, Ordering::Relaxed);
    }
    let seq = b.next_seq();
    append_create(&mut b.out.buf, seq, 0, &mapping);
    b.remember(seq, Sent::Create { orig, svc: key, dest: dest_id, rip });
    st.conns.scheduled(&mut st.table, orig, key, dest_id, pick.template);
    st.stats.record(&key, Some(dest_id), &Counters { conns: 1, ..Counters::default() });
    ls.scheduled.fetch_add(1, Ordering::Relaxed);
    if b.log_decisions {
        b.decisions.push(Decision { client, svc: key, sched, rip, persistent: pick.persistent_hit });
    }
    Verdict::Accept
}

// ---------------------------------------------------------------------------------------
// conntrack events, ticker

/// How long the event thread lets events gather after the first one wakes it. Under load this
/// turns one wakeup (and one lock of the shared state) per event — a connection makes five or
/// more — into one per millisecond, which measured +20% new connections/s on the 2-core lab;
/// counts then follow state changes (FIN, DESTROY) up to this much later. New connections are
/// counted at once by the packet thread, as IPVS counts them.
const EVENT_BATCH: Duration = Duration::from_millis(1);
/// Events applied per lock of the shared state at most, so a flood cannot keep the packet
/// threads from it for long.
const EVENT_APPLY_CHUNK: usize = 1024;

/// Reads events 64 at a time (`recvmmsg`) and drains the socket completely each wakeup: a
/// reader that leaves events queued lets the buffer overflow under load, and every overflow
/// costs a full recount from a dump.
fn event_loop(sh: &Shared, mut events: CtEvents) {
    let mark = sh.opts.ct_mark;
    let mut buf = Vec::new();
    loop {
        let mut lost = match events.recv_many(&mut buf, false) {
            Ok(_) => false,
            Err(CtError::EventsLost) => true,
            Err(e) => {
                warn!("conntrack events: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if !lost {
            std::thread::sleep(EVENT_BATCH);
            loop {
                match events.recv_many(&mut buf, true) {
                    Ok(0) => break,
                    Ok(_) if buf.len() >= EVENT_APPLY_CHUNK => apply_events(sh, mark, &mut buf),
                    Ok(_) => {}
                    Err(CtError::EventsLost) => {
                        lost = true;
                        break;
                    }
                    Err(e) => {
                        debug!("conntrack events: {e}");
                        break;
                    }
                }
            }
        }
        apply_events(sh, mark, &mut buf);
        if lost {
            warn!("conntrack events were lost (socket buffer full); recounting connections from a dump");
            // The kernel stops delivering until the socket is read empty (af_netlink
            // congestion); drain it, then rebuild from a dump.
            while matches!(events.recv_many(&mut buf, true), Ok(n) if n > 0) {
                buf.clear();
            }
            buf.clear();
            resync(sh);
        }
    }
}

fn apply_events(sh: &Shared, mark: u32, buf: &mut Vec<crate::kernel::conntrack::CtEvent>) {
    if buf.is_empty() {
        return;
    }
    let mut st = sh.lock();
    let st = &mut *st;
    let now = sh.now();
    for ev in buf.drain(..) {
        if ev.entry.mark != mark {
            continue;
        }
        match ev.kind {
            CtEventKind::New | CtEventKind::Update => st.conns.seen(&mut st.table, &ev.entry, now),
            CtEventKind::Destroy => {
                if let Some(d) = st.conns.destroyed(&mut st.table, &ev.entry, now) {
                    st.stats.record(&d.svc, Some(d.dest), &d.counters);
                }
            }
        }
    }
}

fn resync(sh: &Shared) {
    match Conntrack::open().and_then(|mut c| c.dump(sh.opts.ct_mark, u32::MAX)) {
        Ok(entries) => {
            let mut st = sh.lock();
            let st = &mut *st;
            let now = sh.now();
            st.conns.rebuild(&mut st.table, &entries, now);
        }
        Err(e) => warn!("cannot dump conntrack to recount connections: {e}"),
    }
}

/// Looks for finished entries of our services nfvs did not make (see [`ForeignFinished`]), once,
/// at start-up (one walk of the conntrack table per virtual address, as the start-up dump of
/// nfvs's own entries takes one).
fn find_foreign_finished(sh: &Shared, ct: &mut Conntrack) {
    let services: Vec<ServiceKey> = sh.lock().table.services().iter().map(|s| s.key()).collect();
    let now = sh.now();
    match ForeignFinished::find(ct, &services, sh.opts.ct_mark, now) {
        Ok(f) if f.tuples.is_empty() => {}
        Ok(f) => {
            info!(
                "found {} finished connection(s) to our services that nfvs did not balance (a fallback rule's or \
                 another balancer's); a client reusing one of their source ports within {}s gets its old entry \
                 deleted first",
                f.tuples.len(),
                f.until.saturating_sub(now).as_secs()
            );
            sh.lock().foreign = f;
        }
        Err(e) => warn!(
            "cannot look for finished connections nfvs did not balance: {e}; a client reusing one of their \
             source ports waits for its SYN retry"
        ),
    }
}

/// Every 2 s: account live traffic (so rates move while connections run) and run the
/// estimators; every tick also expires persistence templates and, once expired, the
/// foreign finished entries found at start-up.
fn ticker_loop(sh: &Shared) {
    let mut ct = match Conntrack::open() {
        Ok(c) => c,
        Err(e) => return warn!("statistics disabled: {e}"),
    };
    let mut dropped = queue_drops(sh);
    loop {
        std::thread::sleep(ESTIMATOR_INTERVAL);
        let now_dropped = queue_drops(sh);
        if now_dropped > dropped {
            warn!(
                "overload: the kernel dropped {} SYN(s) in the last {}s because the queue was full \
                 (clients retry after ~1s; --overload fallback has the kernel balance them instead; \
                 --queues spreads the load over more workers)",
                now_dropped - dropped,
                ESTIMATOR_INTERVAL.as_secs()
            );
        }
        dropped = now_dropped;
        sh.loop_stats.queue_dropped.store(dropped, Ordering::Relaxed);
        let full = sh.lock().conns.len() <= FULL_SAMPLE_MAX;
        sample_traffic(sh, &mut ct, full);
        let mut st = sh.lock();
        st.stats.tick();
        let now = sh.now();
        st.table.expire_templates(now);
        st.foreign.expire(now);
    }
}

/// Packets the kernel dropped because our queues were full or our socket could not take
/// them: columns 6 and 7 (queue_dropped, queue_user_dropped) of
/// /proc/net/netfilter/nfnetlink_queue (nfnetlink_queue.c, seq_show), for our queue numbers.
fn queue_drops(sh: &Shared) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue") else { return 0 };
    let ours = sh.opts.queue..sh.opts.queue.saturating_add(sh.opts.queues);
    text.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            let num = u16::try_from(*f.first()?).ok()?;
            ours.contains(&num).then(|| f.get(5).copied().unwrap_or(0) + f.get(6).copied().unwrap_or(0))
        })
        .sum()
}

/// At most this many running connections are sampled per tick (one GET each).
const SAMPLE_LIMIT: usize = 4096;
/// Above this many tracked connections the periodic sample reads only active ones.
const FULL_SAMPLE_MAX: usize = 65_536;

/// Accounts the traffic connections carried since the last sample. A full sample reads every
/// entry of ours with one dump: exact, as IPVS's counters are, also for short connections that
/// opened and closed between two ticks. Its cost grows with the TIME_WAIT backlog, so above
/// [`FULL_SAMPLE_MAX`] tracked connections the periodic sample reads only the active ones (one
/// GET each, at most [`SAMPLE_LIMIT`]); closed connections are then accounted when their
/// DESTROY event comes (up to 2 minutes later), and rates lag for short connections. Listings
/// always sample in full.
fn sample_traffic(sh: &Shared, ct: &mut Conntrack, full: bool) {
    let entries = if full {
        match ct.dump(sh.opts.ct_mark, u32::MAX) {
            Ok(e) => e,
            Err(e) => return debug!("traffic sample: {e}"),
        }
    } else {
        let tuples = sh.lock().conns.active_tuples(SAMPLE_LIMIT);
        let mut entries = Vec::with_capacity(tuples.len());
        for t in &tuples {
            match ct.get(t) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => {}
                Err(e) => return debug!("traffic sample: {e}"),
            }
        }
        entries
    };
    let mut st = sh.lock();
    for d in st.conns.sample(&entries) {
        st.stats.record(&d.svc, Some(d.dest), &d.counters);
    }
}

// ---------------------------------------------------------------------------------------
// signals: stop and reload

fn signal_loop(sh: &Shared, set: libc::sigset_t) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid, initialised signal set; `sig` is a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGHUP {
            match reload(sh) {
                Ok(n) => info!("SIGHUP: reloaded the rules file ({n} change(s))"),
                Err(e) => warn!("SIGHUP: reload refused, table unchanged: {e:#}"),
            }
            continue;
        }
        let ls = &sh.loop_stats;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        info!(
            "signal {sig}: stopping; this run scheduled {} connection(s) ({} on a reused source port, {} known finished) \
             in {} queue read(s), saw {} retransmitted SYN(s), refused {} (no eligible server), {} conntrack create(s) \
             failed (their SYNs went to the guard rule); the kernel dropped {} SYN(s) on a full queue; {} packet(s) were \
             not new IPv4 TCP",
            n(&ls.scheduled),
            n(&ls.reused_ports),
            n(&ls.reused_known),
            n(&ls.batches),
            n(&ls.retransmits),
            n(&ls.no_dest),
            n(&ls.ct_errors),
            n(&ls.queue_dropped),
            n(&ls.malformed)
        );
        stop(sh, &set);
    }
}

/// Re-reads the rules file and applies only the difference: untouched services keep their
/// scheduler state and counters; running connections are never cut.
fn reload(sh: &Shared) -> anyhow::Result<usize> {
    let Some(path) = &sh.opts.rules else { bail!("nfvs was started without --rules: nothing to reload") };
    // The new file is checked whole before anything changes; the edits derived from it are
    // then valid for the live table (same parser, same checks).
    let new = rules::load_rules_with(path, sh.opts.sched)?;
    let mut st = sh.lock();
    let cmds = rules::diff(&st.table, &new);
    for c in &cmds {
        apply_edit(sh, &mut st, c).map_err(|e| anyhow::anyhow!("{}", command::edit_message(c, &e)))?;
    }
    sh.sync_rules(&mut st)?;
    Ok(cmds.len())
}

/// Stops taking new connections, waits (bounded) for the flows nfvs balanced to finish, then
/// removes the table and restores the sysctls. Restoring ip_forward=0 or removing the last
/// nat chain cuts running flows, so both wait for the drain. A second signal during the wait
/// stops at once.
fn stop(sh: &Shared, set: &libc::sigset_t) -> ! {
    let installed = sh.cleanup.lock().unwrap_or_else(|e| e.into_inner()).table_installed;
    if installed && !sh.opts.drain_timeout.is_zero() {
        let draining = Ruleset { diverts: Vec::new(), fallback: Vec::new(), ..sh.ruleset(&Table::new()) };
        match nftables::apply(&draining, sh.qimpl) {
            Ok(()) => drain(sh, set),
            Err(e) => warn!("could not remove the divert rules before draining: {e}"),
        }
    }
    sh.cleanup.lock().unwrap_or_else(|e| e.into_inner()).run();
    info!("stopped");
    std::process::exit(0);
}

fn drain(sh: &Shared, set: &libc::sigset_t) {
    let deadline = Instant::now() + sh.opts.drain_timeout;
    let mut ct = match Conntrack::open() {
        Ok(c) => c,
        Err(e) => return warn!("cannot watch running connections ({e}); stopping now"),
    };
    let mut announced = false;
    loop {
        let live = match ct.dump(sh.opts.ct_mark, u32::MAX) {
            Ok(entries) => entries
                .iter()
                .filter(|e| e.tcp_state.is_some_and(|s| !matches!(s, TcpState::TimeWait | TcpState::Close)))
                .count(),
            Err(e) => return warn!("cannot list running connections ({e}); stopping now"),
        };
        if live == 0 {
            return;
        }
        if !announced {
            info!(
                "draining: no new connections; waiting up to {}s for {live} running connection(s) to finish \
                 (signal again to stop now)",
                sh.opts.drain_timeout.as_secs()
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

// ---------------------------------------------------------------------------------------
// nfvs adm / ipvsadm

/// Applies one table edit to the live state, with what goes with it: statistics of deleted
/// services and servers, and their connections (drained, or deleted with --expire-nodest).
fn apply_edit(sh: &Shared, st: &mut State, cmd: &Command) -> Result<(), crate::service::EditError> {
    let removed: Vec<(ServiceKey, crate::service::DestId)> = match cmd {
        Command::DelService(k) => st.table.services().iter().filter(|s| s.key() == *k).flat_map(|s| s.dests.iter().map(move |d| (*k, d.id))).collect(),
        Command::Clear => st.table.services().iter().flat_map(|s| s.dests.iter().map(move |d| (s.key(), d.id))).collect(),
        Command::DelDest(k, a, p) => st
            .table
            .services()
            .iter()
            .filter(|s| s.key() == *k)
            .filter_map(|s| s.dest_index(*a, *p).map(|i| (*k, s.dests[i].id)))
            .collect(),
        _ => Vec::new(),
    };
    rules::apply(&mut st.table, cmd)?;
    for (k, id) in removed {
        if sh.opts.expire_nodest {
            expire_dest_conns(st, id);
        }
        st.conns.forget_dest(id);
        st.stats.remove_dest(&k, id);
    }
    match cmd {
        Command::DelService(k) => st.stats.remove_service(k),
        Command::Clear => st.stats = StatsTable::new(),
        _ => {}
    }
    Ok(())
}

fn expire_dest_conns(st: &State, id: crate::service::DestId) {
    let tuples = st.conns.of_dest(id);
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

/// ipvsadm's exit status for kernel-side errors.
const KERNEL_ERR: i32 = 255;

fn handle_adm(sh: &Shared, req: Request) -> Reply {
    let cmd = match args::parse_args(&req.args).and_then(|r| r.validate()) {
        Ok(c) => c,
        Err(e) => return usage_reply(&e),
    };
    run_adm(sh, &cmd, &req.stdin)
}

fn run_adm(sh: &Shared, cmd: &Command, stdin: &str) -> Reply {
    let names = PortNames::system();
    match cmd {
        Command::Help => Reply::ok(usage::usage("ipvsadm")),
        Command::Version => Reply::ok(usage::version()),
        Command::List(what, fmt) => {
            if matches!(what, ListWhat::All | ListWhat::Service(_)) && (fmt.stats || fmt.rate) {
                // Fresh traffic numbers for this listing.
                if let Ok(mut ct) = Conntrack::open() {
                    sample_traffic(sh, &mut ct, true);
                }
            }
            let st = sh.lock();
            match what {
                ListWhat::All => Reply::ok(listing::list(&st.table, None, fmt, &st.stats, &names).unwrap_or_default()),
                ListWhat::Service(k) => match listing::list(&st.table, Some(k), fmt, &st.stats, &names) {
                    Ok(s) => Reply::ok(s),
                    Err(e) => Reply::err(1, e.to_string()),
                },
                ListWhat::Connections => {
                    drop(st);
                    list_connections(sh, fmt, &names)
                }
                ListWhat::Timeouts => Reply::ok(timeouts()),
                // No sync daemon: ipvsadm prints nothing when none runs.
                ListWhat::Daemon => Reply::ok(""),
            }
        }
        Command::Save { numeric } => Reply::ok(listing::save(&sh.lock().table, *numeric, &names)),
        Command::Zero(k) => {
            let mut st = sh.lock();
            if let Some(k) = k {
                if st.table.find(k).is_none() {
                    return Reply::err(KERNEL_ERR, "No such service");
                }
            }
            st.stats.zero(k.as_ref());
            Reply::ok("")
        }
        Command::Restore => {
            // As ipvsadm -R: line by line, stopping at the first failure with the lines before
            // it applied. The edits share one lock and one table install at the end.
            let mut st = sh.lock();
            let mut reply = Reply::ok("");
            for line in stdin.lines().filter(|l| !l.trim().is_empty()) {
                let edit = match args::parse_line(line) {
                    Ok(c) if c.is_edit() => c,
                    Ok(_) => {
                        reply = Reply::err(2, format!("{line}: -R takes table edits only (-A -E -D -C -a -e -d)"));
                        break;
                    }
                    Err(e) => {
                        reply = usage_reply(&e);
                        break;
                    }
                };
                if let Err(r) = edit_table(sh, &mut st, &edit) {
                    reply = r;
                    break;
                }
            }
            if let Err(e) = sh.sync_rules(&mut st) {
                return Reply::err(KERNEL_ERR, format!("table updated but the nft rules were not: {e:#}"));
            }
            reply
        }
        Command::SetTimeouts { .. } => Reply::err(
            KERNEL_ERR,
            "--set is not supported by nfvs: connection timeouts are conntrack's \
             (sysctl net.netfilter.nf_conntrack_tcp_timeout_established, ..._fin_wait, nf_conntrack_udp_timeout_stream)",
        ),
        Command::StartDaemon | Command::StopDaemon => {
            Reply::err(KERNEL_ERR, "the connection sync daemon is not supported by nfvs")
        }
        edit => {
            let mut st = sh.lock();
            if let Err(r) = edit_table(sh, &mut st, edit) {
                return r;
            }
            if let Err(e) = sh.sync_rules(&mut st) {
                return Reply::err(KERNEL_ERR, format!("table updated but the nft rules were not: {e:#}"));
            }
            Reply::ok("")
        }
    }
}

/// One table edit from `nfvs adm`, logged; ipvsadm's message and status when refused. The
/// caller installs the rules afterwards ([`Shared::sync_rules`]).
fn edit_table(sh: &Shared, st: &mut State, edit: &Command) -> Result<(), Reply> {
    if let Err(e) = apply_edit(sh, st, edit) {
        let mut msg = command::edit_message(edit, &e);
        if let Some(h) = command::edit_hint(&e) {
            msg.push_str(&format!("\n  nfvs: {h}"));
        }
        return Err(Reply::err(KERNEL_ERR, msg));
    }
    info!("adm: {}", describe(edit));
    Ok(())
}

/// A usage error as ipvsadm prints it, with nfvs's hint on a line of its own.
fn usage_reply(e: &command::UsageError) -> Reply {
    let mut msg = e.message.clone();
    if let Some(h) = &e.hint {
        msg.push_str(&format!("\n  nfvs: {h}"));
    }
    Reply::err(e.exit_code, msg)
}

fn describe(cmd: &Command) -> String {
    match cmd {
        Command::AddService(s) => format!("added service {} sched={}", s.key, s.sched_name),
        Command::EditService(s) => format!("edited service {} sched={}", s.key, s.sched_name),
        Command::DelService(k) => format!("deleted service {k}"),
        Command::Clear => "cleared all services".into(),
        Command::AddDest(k, d) => format!("added real server {}:{} weight {} to {k}", d.addr, d.port, d.weight),
        Command::EditDest(k, d) => format!("edited real server {}:{} weight {} of {k}", d.addr, d.port, d.weight),
        Command::DelDest(k, a, p) => format!("deleted real server {a}:{p} of {k}"),
        other => format!("{other:?}"),
    }
}

fn timeouts() -> String {
    let read = |k: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/netfilter/{k}")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    };
    listing::timeouts(
        read("nf_conntrack_tcp_timeout_established"),
        read("nf_conntrack_tcp_timeout_fin_wait"),
        read("nf_conntrack_udp_timeout_stream"),
    )
}

fn list_connections(sh: &Shared, fmt: &command::ListFormat, names: &PortNames) -> Reply {
    let entries = match Conntrack::open().and_then(|mut c| c.dump(sh.opts.ct_mark, u32::MAX)) {
        Ok(e) => e,
        Err(e) => return Reply::err(KERNEL_ERR, format!("cannot read conntrack: {e}")),
    };
    let mut rows: Vec<ConnRow> = entries
        .iter()
        .map(|e| ConnRow {
            proto: if e.orig.proto == 6 { Protocol::Tcp } else { Protocol::Udp },
            expire_secs: e.timeout.unwrap_or(0),
            state: match e.tcp_state {
                Some(s) => tcp_state_name(s).to_string(),
                None => "UDP".to_string(),
            },
            client: SocketAddrV4::new(e.orig.src, e.orig.sport),
            vip: SocketAddrV4::new(e.orig.dst, e.orig.dport),
            rs: SocketAddrV4::new(e.reply.src, e.reply.sport),
        })
        .collect();
    // Persistence templates are rows too, as in IPVS; their timers first catch up with now, as
    // the ticker's sweep would have them.
    let mut st = sh.lock();
    let now = sh.now();
    st.table.expire_templates(now);
    rows.extend(listing::template_rows(&st.table, now));
    drop(st);
    Reply::ok(listing::connections(&rows, fmt, names))
}

/// IPVS's state names for conntrack's TCP states (NONE before the SYN has passed is shown as
/// SYN_RECV, the state IPVS is in at that point).
fn tcp_state_name(s: TcpState) -> &'static str {
    match s {
        TcpState::None | TcpState::SynRecv => "SYN_RECV",
        TcpState::SynSent | TcpState::SynSent2 => "SYN_SENT",
        TcpState::Established => "ESTABLISHED",
        TcpState::FinWait => "FIN_WAIT",
        TcpState::CloseWait => "CLOSE_WAIT",
        TcpState::LastAck => "LAST_ACK",
        TcpState::TimeWait => "TIME_WAIT",
        TcpState::Close => "CLOSE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(sport: u16) -> Tuple {
        Tuple { src: Ipv4Addr::new(10, 0, 0, 1), dst: Ipv4Addr::new(10, 0, 0, 9), sport, dport: 80, proto: 6 }
    }

    #[test]
    fn foreign_finished_tuples_are_taken_once_and_forgotten_when_expired() {
        let mut f = ForeignFinished { tuples: [tuple(1), tuple(2)].into(), until: Duration::from_secs(121) };
        assert!(f.take(&tuple(1)));
        assert!(!f.take(&tuple(1)), "a second SYN for it is nfvs's own business");
        assert!(!f.take(&tuple(3)));
        f.expire(Duration::from_secs(120));
        assert!(f.take(&tuple(2)) && f.tuples.is_empty());
        f.tuples.insert(tuple(4));
        f.expire(Duration::from_secs(121));
        assert!(!f.take(&tuple(4)), "expired: forgotten");
    }
}
