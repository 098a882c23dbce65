//! The decision engine: what nfvs does with a new connection, a conntrack event, a table edit
//! or a clock tick, as pure functions of its state, the time passed in, and what the kernel
//! answered. It returns what to do (create this entry, delete that one, refuse, log this)
//! instead of doing it; the daemon's threads carry the effects out, outside the shared lock
//! (docs/architecture.md).
//!
//! One [`Engine`] holds everything the threads share: the service table with its schedulers,
//! the connection counts, the statistics, and the finished entries of other makers found at
//! start-up. Its unit tests (`tests.rs`) drive it with a fake kernel.

mod foreign;
#[cfg(test)]
mod tests;

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::accounting::Conns;
use crate::adm::command::Command;
use crate::adm::rules;
use crate::model::{CtEntry, CtEvent, CtEventKind, CtMapping, Tuple};
use crate::sched::Request;
use crate::service::{DestId, EditError, ServiceKey, Table};
use crate::stats::{Counters, StatsTable};

pub use foreign::ForeignFinished;

/// What the kernel said of a tuple's conntrack entry, when the engine had to ask
/// ([`Decision::Lookup`]).
pub type LookupResult = Result<Option<CtEntry>, String>;

/// The seam through which the engine learns whether a tuple's conntrack entry is live: only
/// for a SYN whose tuple nfvs believes live (a retransmission, or a reuse whose FIN event has
/// not been read yet). The daemon answers from GETs made outside the lock; tests answer from
/// a fake kernel.
pub trait Lookup {
    /// The entry of `orig`, if known; `None`: not known yet, the decision is deferred.
    fn entry(&mut self, orig: &Tuple) -> Option<LookupResult>;
}

/// Knows nothing: every SYN that needs a look-up is deferred.
pub struct NoLookup;

impl Lookup for NoLookup {
    fn entry(&mut self, _: &Tuple) -> Option<LookupResult> {
        None
    }
}

/// Answers looked up beforehand, by tuple.
pub struct Answers<'a>(pub &'a [(Tuple, LookupResult)]);

impl Lookup for Answers<'_> {
    fn entry(&mut self, orig: &Tuple) -> Option<LookupResult> {
        self.0.iter().find(|(t, _)| t == orig).map(|(_, r)| r.clone())
    }
}

/// What to do with one queued SYN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Accept it unmodified: it is not to a service nfvs balances (a table edit raced it, or
    /// a family the services do not have).
    NotOurs,
    /// A retransmitted SYN of a live balanced connection: accept it without scheduling again,
    /// as IPVS finds its connection entry; the kernel's entry takes it to the same server.
    Retransmit { client: SocketAddr, vip: SocketAddrV4 },
    /// The engine must know the tuple's conntrack entry first: look it up (outside the lock)
    /// and decide again with the answer.
    Lookup(Tuple),
    /// A source no real connection can have (loopback, unspecified, broadcast, multicast, or
    /// the VIP itself): drop it, silently. The kernel drops such martians in routing, before
    /// IPVS ever sees them; nfvs's divert rule runs before routing, so it must do the same.
    Martian { client: SocketAddr, vip: SocketAddr },
    /// No eligible real server: drop it and answer ICMP port unreachable, as IPVS does.
    Refuse { client: SocketAddr, vip: SocketAddrV4, sched: &'static str },
    /// Scheduled: delete the finished old entry first if `delete_first` (a reused source
    /// port, design.md fact 6), create `mapping`, accept.
    Balance(Balanced),
}

/// A scheduled connection: the conntrack entry to create and what to remember and log of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balanced {
    pub mapping: CtMapping,
    pub delete_first: bool,
    pub svc: ServiceKey,
    pub dest: DestId,
    pub sched: &'static str,
    pub persistent: bool,
}

impl Balanced {
    pub fn client(&self) -> SocketAddr {
        self.mapping.orig.client()
    }

    pub fn rip(&self) -> SocketAddr {
        self.mapping.nat_dst
    }
}

/// Whether a flow's source is one no real client has: the kernel's martian sources
/// (ip_route_input_slow: loopback, zeronet, limited broadcast, multicast; IPv6 likewise) and
/// the destination itself (a spoofed SYN from the VIP to the VIP).
fn is_martian(t: &Tuple) -> bool {
    let own = t.src == t.dst;
    own || match t.src {
        std::net::IpAddr::V4(a) => a.is_loopback() || a.octets()[0] == 0 || a.is_broadcast() || a.is_multicast(),
        std::net::IpAddr::V6(a) => a.is_loopback() || a.is_unspecified() || a.is_multicast(),
    }
}

/// What a table edit leaves for the caller to carry out once the lock is released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EditEffects {
    /// Connections of deleted real servers to delete at once (`--expire-nodest`).
    pub expire: Vec<Tuple>,
}

/// Everything the daemon's threads share, behind one lock.
pub struct Engine {
    pub table: Table,
    pub conns: Conns,
    pub stats: StatsTable,
    pub foreign: ForeignFinished,
    /// The conntrack mark of nfvs's entries.
    mark: u32,
    /// Deleting a real server deletes its connections (IPVS's expire_nodest_conn).
    expire_nodest: bool,
}

impl Engine {
    pub fn new(table: Table, mark: u32, expire_nodest: bool) -> Engine {
        Engine { table, conns: Conns::new(), stats: StatsTable::new(), foreign: ForeignFinished::default(), mark, expire_nodest }
    }

    pub fn mark(&self) -> u32 {
        self.mark
    }

    /// The decision for the SYN that opens `flow`, at daemon time `now`.
    pub fn decide(&mut self, flow: Tuple, now: Duration, lookup: &mut dyn Lookup) -> Decision {
        if is_martian(&flow) {
            return Decision::Martian { client: flow.client(), vip: flow.server() };
        }
        // Whether an earlier connection with this tuple has finished: its entry must be
        // deleted first (a reused source port, design.md fact 6).
        let mut finished = self.conns.finished(&flow);
        if self.conns.live(&flow) {
            // A SYN for a connection nfvs balanced and still sees live is a retransmission
            // (its first SYN or the SYN-ACK was lost)... or, since events lag the kernel by up
            // to a batch, a client that closed and reconnected from the same port at once.
            // Only conntrack can tell.
            match lookup.entry(&flow) {
                None => return Decision::Lookup(flow),
                Some(Ok(Some(e))) if e.is_live_balanced(self.mark) => {
                    let vip = ServiceKey::of_flow(&flow).map(|k| k.vip());
                    if let Some(vip) = vip {
                        return Decision::Retransmit { client: flow.client(), vip };
                    }
                }
                Some(Ok(Some(_))) => finished = true,
                Some(Ok(None)) => {}
                Some(Err(e)) => log::debug!("conn client={}: looking up its earlier entry: {e}", flow.client()),
            }
        }
        // Only now, once: a foreign finished entry is deleted by this SYN (taken from the set).
        let finished = finished || self.foreign.take(&flow);
        let (Some(key), Some(req)) = (ServiceKey::of_flow(&flow), Request::of_flow(&flow, now)) else {
            return Decision::NotOurs;
        };
        // The divert rule only matches our services, but a table edit may race a queued SYN.
        let Some(svc) = self.table.service_mut(&key) else { return Decision::NotOurs };
        let sched = svc.scheduler_name();
        let Some(pick) = svc.schedule(&req) else {
            return Decision::Refuse { client: flow.client(), vip: key.vip(), sched };
        };
        let dest = &svc.dests[pick.index];
        let (rip, dest_id) = (dest.rip(), dest.id);
        let mapping = CtMapping::dnat(flow, rip.into(), self.mark);
        self.conns.scheduled(&mut self.table, flow, key, dest_id, pick.template, now);
        self.stats.record(&key, Some(dest_id), &Counters { conns: 1, ..Counters::default() });
        Decision::Balance(Balanced {
            mapping,
            delete_first: finished,
            svc: key,
            dest: dest_id,
            sched,
            persistent: pick.persistent_hit,
        })
    }

    /// The kernel refused to create the entry of a connection [`Engine::decide`] balanced:
    /// give its counts back (the scheduler has moved on, as IPVS's has when ip_vs_conn_new
    /// fails).
    pub fn create_failed(&mut self, b: &Balanced, now: Duration) {
        self.conns.cancel(&mut self.table, &b.mapping.orig, b.dest, now);
        self.stats.uncount_conn(&b.svc, b.dest);
    }

    /// Conntrack events of the entries (those without nfvs's mark are skipped).
    pub fn apply_events(&mut self, events: impl IntoIterator<Item = CtEvent>, now: Duration) {
        for ev in events {
            if ev.entry.mark != self.mark {
                continue;
            }
            match ev.kind {
                CtEventKind::New | CtEventKind::Update => self.conns.seen(&mut self.table, &ev.entry, now),
                CtEventKind::Destroy => {
                    if let Some(d) = self.conns.destroyed(&mut self.table, &ev.entry, now) {
                        self.stats.record(&d.svc, Some(d.dest), &d.counters);
                    }
                }
            }
        }
    }

    /// Connections found in a dump of nfvs's entries: counted as if nfvs had never stopped
    /// (start-up), or recounted from scratch after events were lost (`rebuild`).
    pub fn count_existing(&mut self, entries: &[CtEntry], now: Duration, rebuild: bool) {
        if rebuild {
            self.conns.rebuild(&mut self.table, entries, now);
        } else {
            for e in entries {
                self.conns.seen(&mut self.table, e, now);
            }
        }
    }

    /// Traffic of live entries since the last sample, and the states they are in (which
    /// repair counts that lost events left wrong), from a dump started at daemon time `dumped`.
    pub fn sample(&mut self, entries: &[CtEntry], dumped: Duration) {
        for d in self.conns.sample(&mut self.table, entries, dumped) {
            self.stats.record(&d.svc, Some(d.dest), &d.counters);
        }
    }

    /// The clock's tick (every [`crate::stats::ESTIMATOR_INTERVAL`]): rate estimators, and
    /// expiry of persistence templates and of the foreign finished entries. Whether memory
    /// was given back (the connection map shrank after a burst).
    pub fn tick(&mut self, now: Duration) -> bool {
        self.stats.tick();
        self.table.expire_templates(now);
        self.foreign.expire(now);
        self.conns.shrink_if_sparse()
    }

    /// Applies one table edit with what goes with it: statistics of deleted services and
    /// servers are dropped, their connections forgotten (they drain), or returned for
    /// deletion with `--expire-nodest`.
    pub fn apply_edit(&mut self, cmd: &Command) -> Result<EditEffects, EditError> {
        // What the table could take but nfvs's rules could not install is refused before
        // anything changes (issue 11 #6: the service used to stay in the table, and every
        // later edit then failed to install).
        if let Command::AddService(s) = cmd {
            let k = s.key;
            crate::ruleset::Divert::new(k.proto, k.addr, k.port).map_err(|e| EditError::Unsupported(e.to_string()))?;
        }
        let removed = self.removed_by(cmd);
        rules::apply(&mut self.table, cmd)?;
        let mut fx = EditEffects::default();
        for (k, id) in removed {
            if self.expire_nodest {
                fx.expire.extend(self.conns.of_dest(id));
            }
            self.conns.forget_dest(id);
            self.stats.remove_dest(&k, id);
        }
        match cmd {
            Command::DelService(k) => self.stats.remove_service(k),
            Command::Clear => self.stats = StatsTable::new(),
            _ => {}
        }
        Ok(fx)
    }

    /// The real servers an edit deletes.
    fn removed_by(&self, cmd: &Command) -> Vec<(ServiceKey, DestId)> {
        let services = self.table.services().iter();
        match cmd {
            Command::DelService(k) => {
                services.filter(|s| s.key() == *k).flat_map(|s| s.dests.iter().map(move |d| (*k, d.id))).collect()
            }
            Command::Clear => services.flat_map(|s| s.dests.iter().map(move |d| (s.key(), d.id))).collect(),
            Command::DelDest(k, a, p) => services
                .filter(|s| s.key() == *k)
                .filter_map(|s| s.dest_index(*a, *p).map(|i| (*k, s.dests[i].id)))
                .collect(),
            _ => Vec::new(),
        }
    }
}
