//! The floor of nfvs's data path, for scripts/bench.sh (the `floor` contender): the cost of
//! one NFQUEUE round trip per SYN and nothing else.
//!
//! It installs the very table `nfvs run --overload fallback` installs (divert chain with the
//! queue rule, events chain, the weighted fallback `dnat` rules, masquerade) and answers every
//! queued SYN ACCEPT at once, with nfvs's own queue socket code (recvmmsg batches, one
//! sendmsg of verdicts per batch). No scheduler, no ctnetlink create, no events, no lock: the
//! kernel's fallback rules balance the connections. Whatever nfvs costs beyond this is its
//! own work; what this costs beyond the kernel-only rule set is the price of deciding in
//! userspace at all.
//!
//! With `--no-queue` it installs the same table without the divert rules and queues nothing:
//! the kernel's fallback rules take every SYN, so it measures what nfvs's rule set costs by
//! itself (the events chain's test on every packet, the table's chains).
//!
//! usage (in the director's namespace, as root; ip_forward is the caller's business):
//!   queue_floor [--no-queue | --queues N [--pin]] RULES MASQUERADE_CIDR
//! Runs until SIGTERM/SIGINT, then removes the table.

use std::path::Path;

use anyhow::{bail, Context};
use nfvs::kernel::os::{block_signals, pin_to_queue_cpus};
use nfvs::ruleset::{self, Overload};
use nfvs::kernel::nfqueue::{Queue, QueueConfig};
use nfvs::wire::nfqueue::{parse_datagram, Msg, Outbox, Verdict};
use nfvs::kernel::nftables;
use nfvs::sched::SchedOptions;

fn main() -> anyhow::Result<()> {
    // nfvs's pinning reports through `log`.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    const USAGE: &str = "usage: queue_floor [--no-queue | --queues N [--pin]] RULES MASQUERADE_CIDR";
    let (mut queues, mut pin, mut no_queue, mut pos) = (1u16, false, false, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-queue" => no_queue = true,
            "--pin" => pin = true,
            "--queues" => {
                let q = args.next().with_context(|| USAGE)?;
                queues = q.parse().with_context(|| format!("queue count {q:?}"))?;
            }
            _ => pos.push(a),
        }
    }
    if pos.len() != 2 || queues == 0 || (no_queue && (pin || queues != 1)) {
        bail!(USAGE);
    }
    let table = nfvs::adm::rules::load_rules_with(Path::new(&pos[0]), SchedOptions::default())?;
    let masq = [pos[1].parse().with_context(|| format!("masquerade network {:?}", pos[1]))?];
    let mut rs = ruleset::for_table(&table, &masq, 0, queues, Overload::Fallback, 0x6e66_7673);
    if no_queue {
        rs.diverts.clear();
    }
    rs.validate()?;

    // Signals go to sigwait below, not to whichever thread happens to run (nfvs's own mask).
    let signals = block_signals();
    // Queues first, then the rule that feeds them (design.md fact 9).
    // The queue's buffers hold raw pointers (not Send): each worker opens its own queue and
    // says when it is bound.
    let (tx, rx) = std::sync::mpsc::channel();
    let workers = if no_queue { 0 } else { queues };
    for i in 0..workers {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if pin {
                pin_to_queue_cpus(i, queues);
            }
            let mut q = match Queue::open(&QueueConfig { num: i, fail_open: true, ..QueueConfig::default() }) {
                Ok(q) => q,
                Err(e) => return drop(tx.send(Err(e))),
            };
            let _ = tx.send(Ok(()));
            if let Err(e) = answer(&mut q) {
                eprintln!("queue_floor: queue {i}: {e:#}");
                std::process::exit(1);
            }
        });
    }
    for _ in 0..workers {
        rx.recv()??;
    }
    nftables::apply(&rs, nftables::detect_queue_impl()?)?;
    let what = if no_queue { "no queue".to_string() } else { format!("{queues} queue(s){}", if pin { ", pinned" } else { "" }) };
    eprintln!("queue_floor: table ip nfvs installed, {what}");
    signals.wait();
    nftables::remove()?;
    Ok(())
}

/// Every queued packet: ACCEPT, a batch's verdicts in one sendmsg.
fn answer(q: &mut Queue) -> anyhow::Result<()> {
    let num = q.num();
    let mut out = Outbox::with_capacity(64 * 32);
    let mut nonblocking = false;
    loop {
        let n = q.recv(nonblocking)?;
        nonblocking = n > 0;
        for data in q.datagrams() {
            parse_datagram(data, |m| {
                if let Msg::Packet { id, .. } = m {
                    out.verdict(num, id, Verdict::Accept);
                }
            });
        }
        q.flush(&mut out)?;
    }
}
