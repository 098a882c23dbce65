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

use super::index::{checked, HalfLoaded, Tournament};
use super::locality::Table;
use super::wlc::ByLoad;
use super::*;
use crate::service::DestId;

#[derive(Debug)]
pub struct Lblc {
    table: Table<DestId>,
    view: ListView,
}

/// What lblc and lblcr know of the destination list besides their caches: where each
/// destination stands (by id), and with [`SchedOptions::incremental`] the wlc order and the
/// count of servers with fewer than half their weight active. Both keep it up to date the same
/// way, through `on_change` and `on_counts`.
#[derive(Debug)]
pub(crate) struct ListView {
    pub(crate) overhead: Overhead,
    positions: DestIndex,
    /// With [`SchedOptions::incremental`].
    load: Option<LoadIndex>,
}

/// The wlc order and the "a server has fewer than half its weight active" count.
#[derive(Debug)]
struct LoadIndex {
    least: Tournament<ByLoad>,
    half: HalfLoaded,
}

impl ListView {
    pub(crate) fn new(opts: &SchedOptions) -> Self {
        ListView {
            overhead: opts.overhead,
            positions: DestIndex::default(),
            load: opts.incremental.then(|| LoadIndex {
                least: Tournament::new(ByLoad(opts.overhead)),
                half: HalfLoaded::default(),
            }),
        }
    }

    /// [`Scheduler::on_change`] of lblc and lblcr. The kernel has no such hooks for them (only
    /// init/done); the indexes are ours.
    pub(crate) fn on_change(&mut self, dests: &[Dest]) {
        self.positions.rebuild(dests);
        if let Some(l) = &mut self.load {
            l.least.rebuild(dests);
            l.half.rebuild(dests);
        }
    }

    /// [`Scheduler::on_counts`] of lblc and lblcr.
    pub(crate) fn on_counts(&mut self, dests: &[Dest], i: usize) {
        if let Some(l) = &mut self.load {
            l.least.update(dests, i);
            l.half.update(dests, i);
        }
    }

    /// The index of `id` in `dests`, or `None` if it is no longer in the service.
    pub(crate) fn find(&self, dests: &[Dest], id: DestId) -> Option<usize> {
        self.positions.find(dests, id)
    }

    /// The wlc choice, from the index if there is one.
    pub(crate) fn least(&mut self, dests: &[Dest]) -> Option<usize> {
        match &mut self.load {
            Some(l) => checked(l.least.best(dests), || wlc::least(dests, self.overhead)),
            None => wlc::least(dests, self.overhead),
        }
    }

    /// [`overloaded`] for `dests[i]`, from the index if there is one.
    pub(crate) fn is_overloaded(&mut self, dests: &[Dest], i: usize) -> bool {
        let d = &dests[i];
        match &mut self.load {
            Some(l) => {
                let fast = u64::from(d.active) > u64::from(d.weight) && l.half.any(dests);
                debug_assert_eq!(fast, overloaded(d, dests), "lblc index out of date: on_counts missed?");
                fast
            }
            None => overloaded(d, dests),
        }
    }
}

impl Lblc {
    pub fn new(opts: &SchedOptions) -> Self {
        Lblc { table: Table::new(opts.lblc_expiration), view: ListView::new(opts) }
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
        self.view.on_change(dests);
    }

    fn on_counts(&mut self, dests: &[Dest], index: usize) {
        self.view.on_counts(dests, index);
    }

    fn schedule(&mut self, dests: &[Dest], req: &Request) -> Option<usize> {
        self.table.run_timer(req.now);
        if let Some(en) = self.table.get_mut(req.daddr) {
            en.lastuse = req.now;
            if let Some(i) = self.view.find(dests, en.value) {
                if dests[i].weight > 0 && !self.view.is_overloaded(dests, i) {
                    return Some(i);
                }
            }
        }
        let i = self.view.least(dests)?;
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
        self.table.restore(req.daddr, req.now, |id| *id = d.id, || d.id);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// A request for the VIP at `now` seconds (lblc's and lblcr's tests).
    pub(crate) fn req(now: u64) -> Request {
        Request {
            caddr: Ipv4Addr::new(10, 0, 0, 1),
            cport: 1234,
            daddr: Ipv4Addr::new(192, 168, 199, 200),
            dport: 80,
            now: Duration::from_secs(now),
        }
    }

    #[test]
    fn restore_points_the_cache_at_the_restored_server() {
        let dests: Vec<Dest> =
            (0..3).map(|i| Dest::new(DestId(i), Ipv4Addr::from(0x0a00_0001 + i as u32), 80, 1)).collect();
        for incremental in [false, true] {
            let mut s = Lblc::new(&SchedOptions { incremental, ..SchedOptions::default() });
            s.on_change(&dests, Change::Init);
            s.restore(&dests, &req(5), 2);
            assert_eq!(s.cached(req(0).daddr), Some(DestId(2)));
            s.restore(&dests, &req(6), 1);
            assert_eq!((s.cached(req(0).daddr), s.cache_len()), (Some(DestId(1)), 1));
            // A cache hit on an idle server: the restored one is scheduled.
            assert_eq!(s.schedule(&dests, &req(7)), Some(1));
        }
    }
}
