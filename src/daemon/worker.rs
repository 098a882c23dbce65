//! One queue's packet loop: reads the queued SYNs, asks the engine, carries out its decisions.
//!
//! Per batch: one `recvmmsg` takes every waiting SYN and every failure answer; under one lock
//! of the engine the failures are applied and every SYN decided, its ctnetlink requests and
//! then its verdict appended to the outbox; with the lock released, one `sendmsg` sends them
//! (the kernel runs them in order: kernel/mod.rs fact 12), refusals are answered, and the
//! decisions logged. A SYN the engine cannot decide without conntrack's word (its tuple looks
//! live: a retransmission or a quick reuse) is looked up after the lock is released and
//! decided under a second lock, so no netlink round trip ever runs under the lock.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use log::debug;

use super::{LoopStats, Shared};
use crate::engine::{Answers, Balanced, Decision, Engine, Lookup, LookupResult, NoLookup};
use crate::events::{Event, Repeat};
use crate::kernel::os;
use crate::kernel::conntrack::Conntrack;
use crate::kernel::nfqueue::{Queue, QueueError, BATCH};
use crate::wire::ctnetlink::{append_create, append_delete};
use crate::wire::nfqueue::{parse_datagram, Msg, Outbox, Verdict};
use crate::model::Tuple;
use crate::packet;
use crate::ruleset::Overload;

/// Runs one queue's packet loop; a fatal error stops the whole daemon, cleaned up.
pub(super) fn run(sh: &Shared, queue: Queue, ct: Conntrack) {
    let num = queue.num();
    if let Err(e) = Worker::new(queue, ct).run(sh) {
        sh.fail(format_args!("queue {num}: {e:#}"));
    }
}

/// A ctnetlink request sent on a queue socket, remembered until its answer could arrive. The
/// kernel answers only failures (the requests carry no `NLM_F_ACK`), so success is silence.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Create(Balanced),
    Delete { orig: Tuple },
}

/// Requests remembered, by sequence number modulo this. A failure is answered while the
/// `sendmsg` that carried the request runs, so it is read with the next batch, at most
/// [`BATCH`] x 2 requests later: far fewer than this.
const SENT_RING: usize = 4096;

/// Verdicts are sent with sequence number 0; ctnetlink requests never are.
const VERDICT_SEQ: u32 = 0;

/// A connection refused for want of a server, reported after the lock is released.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    client: SocketAddr,
    vip: SocketAddrV4,
    sched: &'static str,
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
    b: Batch,
}

/// What one batch collects, allocated once.
struct Batch {
    qnum: u16,
    /// A request/answer ctnetlink socket, for the rare look-ups: a SYN for a tuple nfvs
    /// believes live, and after a create failed.
    ct: Conntrack,
    out: Outbox,
    seq: u32,
    sent: Box<[(u32, Option<Sent>)]>,
    log_decisions: bool,
    /// Decisions to log once the lock is released.
    decided: Vec<Balanced>,
    failures: Vec<Failure>,
    /// SYNs to answer with ICMP port unreachable (queue id), and their decision lines.
    refuse: Vec<(u32, Refusal)>,
    /// Queue ids (and tuples) of SYNs the engine deferred for a conntrack look-up.
    deferred: Vec<(u32, Tuple)>,
}

impl Batch {
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

    /// One message from the queue socket, under the lock.
    fn handle(&mut self, sh: &Shared, engine: &mut Engine, m: Msg<'_>, now: Duration, lookup: &mut dyn Lookup) {
        match m {
            Msg::Packet { id, payload } => {
                let flow = match packet::parse(payload) {
                    Ok(f) => f,
                    Err(e) => {
                        LoopStats::bump(&sh.loop_stats.malformed);
                        debug!("accepting unparsed packet unmodified: {e}");
                        return self.out.verdict(self.qnum, id, Verdict::Accept);
                    }
                };
                let d = engine.decide(flow, now, lookup);
                self.carry_out(sh, id, d);
            }
            Msg::Error { seq, errno } if seq == VERDICT_SEQ => self.failures.push(Failure { errno, sent: None }),
            Msg::Error { seq, errno } => match self.take(seq) {
                Some(Sent::Create(b)) => {
                    engine.create_failed(&b, now);
                    LoopStats::bump(&sh.loop_stats.ct_errors);
                    self.failures.push(Failure { errno, sent: Some(Sent::Create(b)) });
                }
                // Expired between the event that said it finished and our delete: fine.
                Some(Sent::Delete { .. }) if errno == libc::ENOENT => {}
                Some(sent @ Sent::Delete { .. }) => self.failures.push(Failure { errno, sent: Some(sent) }),
                None => debug!("NFQUEUE {}: error {errno} for request {seq}, no longer remembered", self.qnum),
            },
            Msg::Unexpected { ty } => debug!("NFQUEUE {}: ignoring a message of type {ty:#x}", self.qnum),
        }
    }

    /// Appends a decision's requests and verdict to the outbox (a deferred one: nothing yet).
    fn carry_out(&mut self, sh: &Shared, id: u32, d: Decision) {
        let ls = &sh.loop_stats;
        let verdict = match d {
            Decision::Lookup(t) => {
                LoopStats::bump(&ls.lookups);
                return self.deferred.push((id, t));
            }
            Decision::NotOurs => {
                LoopStats::bump(&ls.not_ours);
                Verdict::Accept
            }
            Decision::Martian { client, vip } => {
                LoopStats::bump(&ls.martians);
                if let SocketAddr::V4(vip) = vip {
                    Event::Martian { client, vip }.emit();
                }
                Verdict::Drop
            }
            Decision::Retransmit { client, vip } => {
                LoopStats::bump(&ls.retransmits);
                Event::Retransmit { client, vip }.emit();
                Verdict::Accept
            }
            Decision::Refuse { client, vip, sched } => {
                LoopStats::bump(&ls.no_dest);
                self.refuse.push((id, Refusal { client, vip, sched }));
                Verdict::Drop
            }
            Decision::Balance(b) => {
                // A reused source port whose old entry we know is finished (design.md fact
                // 6): delete it first, in the same sendmsg. An old entry we do not know of
                // makes the create fail with EEXIST, answered later (report_create_failure).
                if b.delete_first {
                    let seq = self.next_seq();
                    append_delete(&mut self.out.buf, seq, 0, &b.mapping.orig);
                    self.remember(seq, Sent::Delete { orig: b.mapping.orig });
                    LoopStats::bump(&ls.reused_ports);
                }
                let seq = self.next_seq();
                append_create(&mut self.out.buf, seq, 0, &b.mapping);
                self.remember(seq, Sent::Create(b));
                LoopStats::bump(&ls.scheduled);
                if self.log_decisions {
                    self.decided.push(b);
                }
                Verdict::Accept
            }
        };
        self.out.verdict(self.qnum, id, verdict);
    }
}

impl Worker {
    fn new(queue: Queue, ct: Conntrack) -> Worker {
        let b = Batch {
            qnum: queue.num(),
            ct,
            out: Outbox::with_capacity(BATCH * 512),
            seq: 0,
            sent: vec![(0, None); SENT_RING].into_boxed_slice(),
            log_decisions: false,
            decided: Vec::with_capacity(BATCH),
            failures: Vec::new(),
            refuse: Vec::new(),
            deferred: Vec::new(),
        };
        Worker { queue, b }
    }

    /// The batch loop. After a batch it reads again without waiting before going to sleep:
    /// the failures of what was just sent are queued by now (the kernel answers while it runs
    /// the sendmsg), and a failed create must give its count back at once, not when the next
    /// SYN happens to come.
    fn run(&mut self, sh: &Shared) -> Result<(), QueueError> {
        let mut nonblocking = false;
        loop {
            let n = self.queue.recv(nonblocking).map_err(QueueError::Recv)?;
            nonblocking = n > 0;
            if n == 0 {
                continue;
            }
            LoopStats::bump(&sh.loop_stats.batches);
            self.b.log_decisions = log::log_enabled!(log::Level::Info);
            self.decide_batch(sh);
            self.queue.flush(&mut self.b.out)?;
            if !self.b.deferred.is_empty() {
                self.decide_deferred(sh)?;
            }
            self.refuse_and_report(sh);
        }
    }

    /// Decides the batch under one lock; a SYN that needs a look-up is deferred.
    fn decide_batch(&mut self, sh: &Shared) {
        let mut engine = sh.lock();
        let now = sh.now();
        let b = &mut self.b;
        for data in self.queue.datagrams() {
            parse_datagram(data, |m| b.handle(sh, &mut engine, m, now, &mut NoLookup));
        }
    }

    /// The SYNs whose tuples looked live: ask conntrack (lock released), then decide them
    /// with the answers under a second lock and send.
    fn decide_deferred(&mut self, sh: &Shared) -> Result<(), QueueError> {
        let deferred = std::mem::take(&mut self.b.deferred);
        let answers: Vec<(Tuple, LookupResult)> =
            deferred.iter().map(|(_, t)| (*t, self.b.ct.get(t).map_err(|e| e.to_string()))).collect();
        // Only these packets, and no failure answer twice: those were handled in the first pass.
        let ids: Vec<u32> = deferred.iter().map(|(id, _)| *id).collect();
        {
            let mut engine = sh.lock();
            let now = sh.now();
            let b = &mut self.b;
            let mut lookup = Answers(&answers);
            for data in self.queue.datagrams() {
                parse_datagram(data, |m| {
                    if let Msg::Packet { id, .. } = m {
                        if ids.contains(&id) {
                            b.handle(sh, &mut engine, m, now, &mut lookup);
                        }
                    }
                });
            }
        }
        // A tuple the engine still cannot decide (its state changed in between, very rare):
        // accept the SYN; if an entry holds the tuple, the guard drops it and the client retries.
        for (id, _) in std::mem::take(&mut self.b.deferred) {
            self.b.out.verdict(self.b.qnum, id, Verdict::Accept);
        }
        self.queue.flush(&mut self.b.out)
    }

    /// With the lock released: ICMP refusals, then the log lines of the batch.
    fn refuse_and_report(&mut self, sh: &Shared) {
        if !self.b.refuse.is_empty() {
            let mut refuse = std::mem::take(&mut self.b.refuse);
            for data in self.queue.datagrams() {
                parse_datagram(data, |m| {
                    if let (Msg::Packet { id, payload }, Some(r)) = (m, &sh.refuser) {
                        if refuse.iter().any(|(i, _)| *i == id) {
                            if let Err(e) = r.refuse(payload) {
                                debug!("ICMP port unreachable for queued packet {id}: {e}");
                            }
                        }
                    }
                });
            }
            for (_, Refusal { client, vip, sched }) in refuse.drain(..) {
                Event::Refused { client, vip, sched }.emit();
                Event::NoEligible { vip, sched }.emit();
            }
            self.b.refuse = refuse;
        }
        for d in self.b.decided.drain(..) {
            Event::Conn { client: d.client(), vip: d.svc.vip(), sched: d.sched, rs: d.rip(), persistent: d.persistent }.emit();
        }
        for f in std::mem::take(&mut self.b.failures) {
            let err = std::io::Error::from_raw_os_error(f.errno);
            match f.sent {
                None => Event::VerdictFailed { queue: self.b.qnum, err }.emit(),
                Some(Sent::Delete { orig }) => Event::DeleteFailed { client: orig.client(), err }.emit(),
                Some(Sent::Create(b)) => self.report_create_failure(sh, &b, f.errno),
            }
        }
    }

    /// The SYN whose entry could not be created was accepted all the same (its verdict went
    /// out in the same `sendmsg`): the kernel's own rules took it. Say what became of it.
    fn report_create_failure(&mut self, sh: &Shared, b: &Balanced, errno: i32) {
        let (client, vip, rs) = (b.client(), b.svc.vip(), b.rip());
        let fate = match sh.opts.overload {
            Overload::Drop => "the SYN was dropped by our nat_pre guard rule; the client will retry it",
            Overload::Fallback => "the SYN went to the kernel fallback rule",
        };
        if errno == libc::ENOMEM {
            // ctnetlink's create fails so when the table is at nf_conntrack_max
            // (nf_conntrack_alloc): say so, with the numbers, once per interval.
            if let Some(held) = Repeat::TableFull.admit() {
                let (count, max) = (os::netfilter_sysctl("nf_conntrack_count"), os::netfilter_sysctl("nf_conntrack_max"));
                Event::TableFull { client, vip, count, max }.emit_admitted(held);
            }
            return;
        }
        if errno != libc::EEXIST {
            let err = std::io::Error::from_raw_os_error(errno);
            return Event::CreateFailed { client, vip, rs, err, fate }.emit();
        }
        // An entry nfvs did not know about had the tuple. A live balanced one (ours from a
        // retransmitted SYN on another path, or the fallback rule's) took the SYN to its
        // server; a finished one (a reused source port) was replaced by the kernel with an
        // entry without DNAT, which the guard rule dropped.
        match self.b.ct.get(&b.mapping.orig) {
            Ok(Some(e)) if e.is_live_balanced(sh.opts.ct_mark) => {
                LoopStats::bump(&sh.loop_stats.retransmits);
                Event::RetransmitUntracked { client, vip }.emit();
            }
            _ => Event::CreateClashed { client, vip, rs, fate }.emit(),
        }
    }
}
