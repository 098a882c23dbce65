//! lblc: locality-based least connection (`ip_vs_lblc.c`, lvs-semantics.md §2.9).
//!
//! Keyed on the packet's *destination* address: a cache maps each daddr to the server it was
//! last scheduled to. A cache hit is used if that server is still in the service, has a
//! positive weight and is not "overloaded" in lblc's own sense (`overloaded()`; the threshold
//! OVERLOAD flag is *not* checked on a hit). Otherwise the wlc choice over all servers is made and
//! cached. For an ordinary VIP service every connection has the same daddr, so lblc sticks to
//! one server until it is overloaded, then moves.
//!
//! Cache entries expire per `locality.rs` (`lblc_expiration`, default 24 h).
//!
//! Difference from the kernel: a cache entry names a destination by [`DestId`]. The kernel
//! keeps a reference to the destination object, and a destination deleted and re-added before
//! its object is freed (IPVS's "trash") is the same object again, so its old entries become
//! valid again; `service::Table` gives a re-added destination a new id, so here they do not.

use std::net::Ipv4Addr;

use super::index::{checked, ByLoad, HalfLoaded, Tournament};
use super::locality::Table;
use super::*;
use crate::service::DestId;

#[derive(Debug)]
pub struct Lblc {
    overhead: Overhead,
    table: Table<DestId>,
    index: DestIndex,
    /// With [`SchedOptions::incremental`].
    load: Option<LoadIndex>,
}

/// The wlc order and the "a server has fewer than half its weight active" count, kept up to
/// date through `on_counts` (lblc and lblcr in incremental mode).
#[derive(Debug)]
pub(crate) struct LoadIndex {
    least: Tournament<ByLoad>,
    half: HalfLoaded,
}

impl LoadIndex {
    pub(crate) fn new(overhead: Overhead) -> Self {
        LoadIndex { least: Tournament::new(ByLoad(overhead)), half: HalfLoaded::default() }
    }

    pub(crate) fn rebuild(&mut self, dests: &[Dest]) {
        self.least.rebuild(dests);
        self.half.rebuild(dests);
    }

    pub(crate) fn update(&mut self, dests: &[Dest], i: usize) {
        self.least.update(dests, i);
        self.half.update(dests, i);
    }
}

/// The wlc choice, from the index if there is one.
pub(crate) fn least(load: &mut Option<LoadIndex>, dests: &[Dest], overhead: Overhead) -> Option<usize> {
    match load {
        Some(l) => checked(l.least.best(dests), || wlc::least(dests, overhead)),
        None => wlc::least(dests, overhead),
    }
}

/// [`overloaded`] for `dests[i]`, from the index if there is one.
pub(crate) fn is_overloaded(load: &mut Option<LoadIndex>, dests: &[Dest], i: usize) -> bool {
    let d = &dests[i];
    match load {
        Some(l) => {
            let fast = u64::from(d.active) > u64::from(d.weight) && l.half.any(dests);
            debug_assert_eq!(fast, overloaded(d, dests), "lblc index out of date: on_counts missed?");
            fast
        }
        None => overloaded(d, dests),
    }
}

impl Lblc {
    pub fn new(opts: &SchedOptions) -> Self {
        Lblc {
            overhead: opts.overhead,
            table: Table::new(opts.lblc_expiration),
            index: DestIndex::default(),
            load: opts.incremental.then(|| LoadIndex::new(opts.overhead)),
        }
    }

    /// The server cached for `daddr`, if any (for tests and diagnostics).
    pub fn cached(&self, daddr: Ipv4Addr) -> Option<DestId> {
        self.table.get(daddr).map(|e| e.value)
    }

    /// How many addresses are cached.
    pub fn cache_len(&self) -> usize {
        self.table.len()
    }
}

/// lblc's and lblcr's `is_overloaded()`: `d` has more active connections than its weight AND
/// some server of the service (any, including `d` and weight-0 ones) has fewer than half its
/// weight active. Raw counts; the OVERLOAD flag plays no part.
pub(crate) fn overloaded(d: &Dest, dests: &[Dest]) -> bool {
    u64::from(d.active) > u64::from(d.weight)
        && dests.iter().any(|x| u64::from(x.active) * 2 < u64::from(x.weight))
}

impl Scheduler for Lblc {
    fn name(&self) -> &'static str {
        "lblc"
    }

    fn on_change(&mut self, dests: &[Dest], _change: Change) {
        // No hooks in the kernel (only init/done); the indexes are ours.
        self.index.rebuild(dests);
        if let Some(l) = &mut self.load {
            l.rebuild(dests);
        }
    }

    fn on_counts(&mut self, dests: &[Dest], index: usize) {
        if let Some(l) = &mut self.load {
            l.update(dests, index);
        }
    }

    fn schedule(&mut self, dests: &[Dest], req: &Request) -> Option<usize> {
        self.table.run_timer(req.now);
        if let Some(en) = self.table.get_mut(req.daddr) {
            en.lastuse = req.now;
            if let Some(i) = self.index.find(dests, en.value) {
                if dests[i].weight > 0 && !is_overloaded(&mut self.load, dests, i) {
                    return Some(i);
                }
            }
        }
        let i = least(&mut self.load, dests, self.overhead)?;
        // ip_vs_lblc_new: an entry already naming this server is kept as it is (its lastuse was
        // just refreshed); one naming another server is replaced by a new entry.
        let id = dests[i].id;
        match self.table.get_mut(req.daddr) {
            Some(en) if en.value == id => {}
            Some(_) => {
                self.table.remove(req.daddr);
                self.table.insert(req.daddr, req.now, id);
            }
            None => {
                self.table.insert(req.daddr, req.now, id);
            }
        }
        Some(i)
    }

    fn restore(&mut self, dests: &[Dest], req: &Request, chosen: usize) {
        let Some(d) = dests.get(chosen) else { return };
        self.table.run_timer(req.now);
        match self.table.get_mut(req.daddr) {
            Some(en) => {
                en.value = d.id;
                en.lastuse = en.lastuse.max(req.now);
            }
            None => {
                self.table.insert(req.daddr, req.now, d.id);
            }
        }
    }
}
