//! Start-up: everything in the order design.md asks for, undone by [`Cleanup`] if any step
//! fails.
//!
//! Everything that can be checked without side effects is checked first (rules file,
//! privileges); the queues are bound and configured before the divert rule exists (fact 9);
//! sysctls are recorded before they are changed; the table goes in last, in one atomic batch.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use log::{info, warn};

use super::{control, ct_events, signals, spawn, ticker, worker, Cleanup, LoopStats, RunOptions, Shared};
use crate::adm::rules;
use crate::engine::{Engine, ForeignFinished};
use crate::kernel::conntrack::{Conntrack, CtError, CtEvents};
use crate::kernel::icmp::Refuser;
use crate::kernel::nfqueue::{Queue, QueueConfig};
use crate::kernel::nftables;
use crate::kernel::os;
use crate::kernel::sysctl::{Setting, Sysctl};
use crate::model::{CtEntry, CtEventKind};
use crate::ruleset::{self, Overload};
use crate::service::Table;

/// Runs the director until SIGINT/SIGTERM. Returns only on a start-up error (after undoing
/// what it had done); a signal ends the process with exit status 0 after clean-up.
// About 85 lines: start-up is one ordered sequence (design.md: checks, queues, sysctls,
// table, counts, threads), read best in one place; each step is a call.
pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let table = match &opts.rules {
        Some(p) => rules::load_rules_with(p, opts.sched)?,
        None => Table::with_defaults(opts.sched),
    };
    let ruleset = ruleset::for_table(&table, &opts.masquerade, opts.queue, opts.queues, opts.overload, opts.ct_mark);
    ruleset.validate()?;
    if !os::is_root() {
        bail!(
            "nfvs run must be started as root: it needs CAP_NET_ADMIN to install its nftables table, \
             bind an NFQUEUE and create conntrack entries, and write access to /proc/sys/net"
        );
    }
    // Before anything that a second daemon could take from the first (a queue, the table,
    // the sysctls): held until the process ends.
    let _director = os::lock_director()?;
    let signals = os::block_signals();
    if opts.pin_workers && opts.queues == 1 {
        warn!("--pin-workers has no effect with one queue: pin with --queues set to the number of CPUs");
    }
    let mut cleanup = Cleanup::default();
    let mut ct = Conntrack::open().context("open ctnetlink socket")?;
    let queue = Queue::open(&queue_config(&opts, opts.queue))?;
    // Workers for the other queues. Netlink sockets stay in the thread that made them; each
    // worker binds its queue (before the divert rule exists: fact 9), says so, then waits for
    // the shared state.
    let workers = (1..opts.queues).map(|i| start_worker(&opts, i)).collect::<anyhow::Result<Vec<_>>>()?;
    let server = control::Server::bind(&opts.control).with_context(|| format!("control socket {}", opts.control.display()))?;
    cleanup.control = Some(opts.control.clone());

    let sysctl = Sysctl::system(&opts.state_dir);
    let wanted = wanted_sysctls(&sysctl, &opts)?;
    // Record the sysctl guard before applying, so a half-applied set is still restored.
    cleanup.sysctl = Some(sysctl.clone());
    sysctl.apply(&wanted)?;

    // Subscribe before the dump, so nothing that happens in between is missed.
    let events = start_events()?;
    let qimpl = nftables::detect_queue_impl()?;
    cleanup.table_installed = true;
    nftables::apply(&ruleset, qimpl)?;

    let start = Instant::now();
    let mut engine = Engine::new(table, opts.ct_mark, opts.expire_nodest);
    // One walk of the conntrack table, whatever the number of services: every IPv4 entry
    // (mask 0 matches any mark), split here.
    let (ours, others): (Vec<CtEntry>, Vec<CtEntry>) =
        ct.dump(0, 0)?.into_iter().partition(|e| e.mark == opts.ct_mark);
    // Connections balanced by an earlier run (a restart): count them as if nfvs had never
    // stopped. The daemon's clock starts at zero here.
    engine.count_existing(&ours, Duration::ZERO, false);
    log_table(&engine);
    super::forward::check_at_start(&engine.table);
    // Before any worker runs: a SYN for such a tuple may be waiting in the queue already.
    engine.foreign = find_foreign_finished(&others, &engine, start.elapsed());

    let shared = Arc::new(Shared {
        engine: Mutex::new(engine),
        install: Mutex::new(ruleset),
        opts,
        cleanup: Mutex::new(std::mem::take(&mut cleanup)),
        qimpl,
        start,
        loop_stats: LoopStats::default(),
        refuser: Refuser::open().map_err(|e| warn!("cannot open a raw socket for ICMP refusals: {e}")).ok(),
        sysctls: Some((sysctl, wanted)),
    });
    let sh = shared.clone();
    spawn("signals", move || signals::run(&sh, signals));
    let _ = events.send(shared.clone());
    for w in workers {
        let _ = w.send(shared.clone());
    }
    let sh = shared.clone();
    spawn("ticker", move || ticker::run(&sh));
    let sh = shared.clone();
    spawn("control", move || server.serve(move |req| control::handle(&sh, req)));
    announce_ready(&shared, queue.num());
    // Pinned last: the threads spawned above inherit the affinity of the one spawning them.
    if shared.opts.pin_workers {
        os::pin_to_queue_cpus(0, shared.opts.queues);
    }
    worker::run(&shared, queue, ct);
    Ok(())
}

/// What the daemon starts with: the connections of an earlier run, the services.
fn log_table(engine: &Engine) {
    if !engine.conns.is_empty() {
        info!("found {} connection(s) balanced by an earlier run; counting them", engine.conns.len());
    }
    for s in engine.table.services() {
        let dests: Vec<String> = s.dests.iter().map(|d| format!("{}:{} w{}", d.addr, d.port, d.weight)).collect();
        info!("service {} sched={} servers=[{}]", s.key().vip(), s.scheduler_name(), dests.join(", "));
    }
}

fn queue_config(opts: &RunOptions, num: u16) -> QueueConfig {
    QueueConfig {
        num,
        fail_open: opts.overload == Overload::Fallback,
        max_len: opts.queue_maxlen,
        // About 1 KiB of receive buffer per waiting SYN (skb truesize), at least 1 MiB.
        rcvbuf: (opts.queue_maxlen as usize).saturating_mul(1024).max(1 << 20),
        ..QueueConfig::default()
    }
}

/// Starts the worker of queue `opts.queue + i`: it binds its queue, says so, then waits for
/// the shared state on the returned channel.
fn start_worker(opts: &RunOptions, i: u16) -> anyhow::Result<SyncSender<Arc<Shared>>> {
    let (ready_tx, ready_rx) = sync_channel::<anyhow::Result<()>>(1);
    let (go_tx, go_rx) = sync_channel::<Arc<Shared>>(1);
    let cfg = queue_config(opts, opts.queue + i);
    let (pin, total) = (opts.pin_workers, opts.queues);
    spawn(&format!("queue-{}", cfg.num), move || {
        if pin {
            os::pin_to_queue_cpus(i, total);
        }
        let opened = Conntrack::open().context("open ctnetlink socket").and_then(|ct| Ok((ct, Queue::open(&cfg)?)));
        let (ct, q) = match opened {
            Ok(v) => {
                let _ = ready_tx.send(Ok(()));
                v
            }
            Err(e) => return drop(ready_tx.send(Err(e))),
        };
        if let Ok(sh) = go_rx.recv() {
            worker::run(&sh, q, ct);
        }
    });
    ready_rx.recv().unwrap_or_else(|_| Err(anyhow::anyhow!("queue worker died")))?;
    Ok(go_tx)
}

/// Starts the event thread. Its netlink socket cannot move between threads, so the thread
/// subscribes and says when it has; it then waits for the shared state.
fn start_events() -> anyhow::Result<SyncSender<Arc<Shared>>> {
    let (ready_tx, ready_rx) = sync_channel::<Result<(), CtError>>(1);
    let (shared_tx, shared_rx): (_, Receiver<Arc<Shared>>) = sync_channel(1);
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
            ct_events::run(&sh, events);
        }
    });
    ready_rx.recv().unwrap_or(Err(CtError::EventsLost)).context("subscribe to conntrack events")?;
    Ok(shared_tx)
}

/// The sysctls nfvs sets: the seed's director settings, plus conntrack accounting (packet and
/// byte counters for `--stats`).
fn wanted_sysctls(s: &Sysctl, opts: &RunOptions) -> anyhow::Result<Vec<Setting>> {
    let mut w = s.director_settings()?;
    w.push(Setting::new("net/netfilter/nf_conntrack_acct", "1"));
    if opts.half_open_timeout > 0 {
        // Issue 11 #4: a spoofed SYN flood's entries (SYN_SENT: their SYNs die in routing;
        // SYN_RECV: the real server answered a source that will never ACK) held the table for
        // two minutes. IPVS keeps its own, shorter, half-open timers; nfvs's entries are
        // conntrack's, whose timers for these states are per namespace.
        let t = opts.half_open_timeout.to_string();
        w.push(Setting::new("net/netfilter/nf_conntrack_tcp_timeout_syn_sent", t.clone()));
        w.push(Setting::new("net/netfilter/nf_conntrack_tcp_timeout_syn_recv", t));
    }
    if opts.expire_nodest {
        // An expired flow must stay dead. With loose pick-up (the default) the real server's
        // next segment re-creates an entry mid-stream and MASQUERADE maps it back to VIP:port,
        // so the flow carries on. Without it that segment is INVALID and not NATed; the
        // client's next one reaches the director's own stack, which answers RST, as after
        // IPVS's expire_nodest_conn (nf_conntrack_proto_tcp.c, tcp_new(): !tn->tcp_loose).
        w.push(Setting::new("net/netfilter/nf_conntrack_tcp_loose", "0"));
    }
    Ok(w)
}

/// The finished entries of our services nfvs did not make (see [`ForeignFinished`]), among
/// the entries without nfvs's mark found at start-up.
fn find_foreign_finished(entries: &[CtEntry], engine: &Engine, now: Duration) -> ForeignFinished {
    let services: Vec<_> = engine.table.services().iter().map(|s| s.key()).collect();
    let f = ForeignFinished::from_entries(entries, &services, engine.mark(), now);
    if !f.is_empty() {
        info!(
            "found {} finished connection(s) to our services that nfvs did not balance (a fallback rule's or \
             another balancer's); a client reusing one of their source ports within {}s gets its old entry \
             deleted first",
            f.len(),
            f.until().saturating_sub(now).as_secs()
        );
    }
    f
}

fn announce_ready(sh: &Shared, first: u16) {
    let o = &sh.opts;
    info!(
        "nfvs: ready (queue {first}{} via {}, table ip {}, masquerade [{}], control {})",
        if o.queues > 1 { format!("-{}", first + o.queues - 1) } else { String::new() },
        sh.qimpl,
        crate::ruleset::TABLE,
        o.masquerade.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", "),
        o.control.display()
    );
}
