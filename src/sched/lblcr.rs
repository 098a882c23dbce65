//! lblcr: locality-based least connection with replication (`ip_vs_lblcr.c`,
//! lvs-semantics.md §2.10).
//!
//! Keyed on the destination address like lblc, but each cache entry holds a *set* of servers
//! (newest member first) and the time the set was last modified. On a hit the weighted-least
//! member of the set is used unless it is overloaded (lblc's test); then the wlc choice over
//! all servers is used and added to the set. A set with more than one member that has not
//! changed for `lblcr_expiration` (default 24 h) loses its weighted-most-loaded member.
//!
//! Members that were deleted from the service stay in their sets, as in the kernel (which
//! holds a reference): they are never chosen, but they still count for the set size and can be
//! the member dropped as "most loaded". The kernel reads the deleted destination's live weight
//! and counters there; we only have them while the destination is in the list, so a member
//! keeps the weight and counts it had when this scheduler last saw it. Entry expiry is as for
//! lblc (`locality.rs`).

use std::net::Ipv4Addr;
use std::time::Duration;

use super::lblc::ListView;
use super::locality::Table;
use super::*;
use crate::service::DestId;

/// A set member with the last weight and overhead seen for it.
#[derive(Debug, Clone, Copy)]
struct Member {
    id: DestId,
    weight: u32,
    overhead: i32,
    overload_flag: bool,
    /// Index in the list passed to the current `schedule` call; `None`: deleted (the kernel's
    /// "not IP_VS_DEST_CF_AVAILABLE").
    pos: Option<usize>,
}

/// `struct ip_vs_dest_set`.
#[derive(Debug, Clone)]
struct DestSet {
    /// Newest first (`list_add_rcu` at the head).
    members: Vec<Member>,
    lastmod: Duration,
}

#[derive(Debug)]
pub struct Lblcr {
    expiration: Duration,
    table: Table<DestSet>,
    view: ListView,
}

impl Lblcr {
    pub fn new(opts: &SchedOptions) -> Self {
        Lblcr {
            expiration: opts.lblcr_expiration,
            table: Table::new(opts.lblcr_expiration),
            view: ListView::new(opts),
        }
    }

    /// The server set cached for `daddr`, newest first (for tests and diagnostics).
    pub fn cached(&self, daddr: Ipv4Addr) -> Option<Vec<DestId>> {
        self.table.get(daddr).map(|e| e.value.members.iter().map(|m| m.id).collect())
    }

    /// How many addresses are cached.
    pub fn cache_len(&self) -> usize {
        self.table.len()
    }
}

impl DestSet {
    fn new(d: &Dest, overhead: Overhead, now: Duration) -> Self {
        let mut s = DestSet { members: Vec::with_capacity(2), lastmod: now };
        s.insert(d, overhead, now);
        s
    }

    /// `ip_vs_dest_set_insert(set, dest, true)`: at the head unless already a member.
    fn insert(&mut self, d: &Dest, overhead: Overhead, now: Duration) {
        if self.members.iter().any(|m| m.id == d.id) {
            return;
        }
        self.members.insert(
            0,
            Member {
                id: d.id,
                weight: d.weight,
                overhead: overhead.int(d),
                overload_flag: d.overloaded,
                pos: None,
            },
        );
        self.lastmod = now;
    }

    /// Refreshes the members' weights, counters and list positions from the list.
    fn refresh(&mut self, dests: &[Dest], view: &ListView) {
        for m in &mut self.members {
            m.pos = view.find(dests, m.id);
            if let Some(i) = m.pos {
                let d = &dests[i];
                m.weight = d.weight;
                m.overhead = view.overhead.int(d);
                m.overload_flag = d.overloaded;
            }
        }
    }

    /// `ip_vs_dest_set_min`: the first member without OVERLOAD, with weight > 0 and still in the
    /// service; then any later member without OVERLOAD, still in the service, with a strictly
    /// smaller overhead/weight. Returns its index in the list.
    fn min(&self) -> Option<usize> {
        let ms = &self.members;
        let first = ms.iter().position(|m| !m.overload_flag && m.weight > 0 && m.pos.is_some())?;
        let mut least = first;
        for k in first + 1..ms.len() {
            let (d, l) = (&ms[k], &ms[least]);
            if d.overload_flag {
                continue;
            }
            if ratio_gt(l.overhead, l.weight, d.overhead, d.weight) && d.pos.is_some() {
                least = k;
            }
        }
        ms[least].pos
    }

    /// `ip_vs_dest_set_max`: the first member with weight > 0 (deleted or OVERLOAD ones too),
    /// then any later member with weight > 0 and a strictly larger overhead/weight.
    fn max(&self) -> Option<usize> {
        let ms = &self.members;
        let first = ms.iter().position(|m| m.weight > 0)?;
        let mut most = first;
        for k in first + 1..ms.len() {
            let (d, m) = (&ms[k], &ms[most]);
            if ratio_gt(d.overhead, d.weight, m.overhead, m.weight) && d.weight > 0 {
                most = k;
            }
        }
        Some(most)
    }
}

impl Scheduler for Lblcr {
    fn name(&self) -> &'static str {
        "lblcr"
    }

    fn on_change(&mut self, dests: &[Dest], _change: Change) {
        self.view.on_change(dests);
    }

    fn on_counts(&mut self, dests: &[Dest], index: usize) {
        self.view.on_counts(dests, index);
    }

    fn schedule(&mut self, dests: &[Dest], req: &Request) -> Option<usize> {
        let now = req.now;
        self.table.run_timer(now);
        let overhead = self.view.overhead;
        let Some(en) = self.table.get_mut(req.daddr) else {
            let i = self.view.least(dests)?;
            // ip_vs_lblcr_new; if the table is full the server is used without caching.
            self.table.insert(req.daddr, now, DestSet::new(&dests[i], overhead, now));
            return Some(i);
        };
        en.lastuse = now;
        let set = &mut en.value;
        set.refresh(dests, &self.view);
        let chosen = set.min();

        // More than one member and unchanged for longer than the expiration: drop the most
        // loaded one (this may be `chosen`, which is still used for this connection).
        if set.members.len() > 1 && now > set.lastmod.saturating_add(self.expiration) {
            if let Some(k) = set.max() {
                set.members.remove(k);
                set.lastmod = now;
            }
        }

        if let Some(i) = chosen {
            if !self.view.is_overloaded(dests, i) {
                return Some(i);
            }
        }
        let i = self.view.least(dests)?;
        set.insert(&dests[i], overhead, now);
        Some(i)
    }

    fn restore(&mut self, dests: &[Dest], req: &Request, chosen: usize) {
        let Some(d) = dests.get(chosen) else { return };
        let (overhead, now) = (self.view.overhead, req.now);
        self.table.restore(
            req.daddr,
            now,
            |set| set.insert(d, overhead, now),
            || DestSet::new(d, overhead, now),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::lblc::tests::req;
    use super::*;
    use std::net::Ipv4Addr;

    /// Schedules and counts the connection active; returns the chosen id.
    fn pick(s: &mut Lblcr, dests: &mut [Dest], now: u64) -> u64 {
        let i = s.schedule(dests, &req(now)).expect("a server");
        dests[i].active += 1;
        dests[i].id.0
    }

    fn list(n: u64) -> Vec<Dest> {
        (0..n).map(|i| Dest::new(DestId(i), Ipv4Addr::from(0x0a00_0001 + i as u32), 80, 1)).collect()
    }

    #[test]
    fn lblcr_1_set_grows_newest_first() {
        let mut dests = list(3); // A = 0, B = 1, C = 2
        let mut s = Lblcr::new(&SchedOptions::default());
        s.on_change(&dests, Change::Init);
        let got: Vec<u64> = (0..7).map(|_| pick(&mut s, &mut dests, 0)).collect();
        assert_eq!(got, [0, 0, 1, 1, 2, 2, 2]);
        assert_eq!(s.cached(req(0).daddr), Some(vec![DestId(2), DestId(1), DestId(0)]));
    }

    #[test]
    fn lblcr_2_set_shrinks_to_b() {
        let mut dests = list(2);
        let opts = SchedOptions { lblcr_expiration: Duration::from_secs(60), ..SchedOptions::default() };
        let mut s = Lblcr::new(&opts);
        s.on_change(&dests, Change::Init);
        let mut got: Vec<u64> = (0..3).map(|_| pick(&mut s, &mut dests, 0)).collect();
        assert_eq!(s.cached(req(0).daddr), Some(vec![DestId(1), DestId(0)]));
        got.extend((0..2).map(|_| pick(&mut s, &mut dests, 100)));
        assert_eq!(got, [0, 0, 1, 1, 1]);
        assert_eq!(s.cached(req(0).daddr), Some(vec![DestId(1)]));
    }

    #[test]
    fn deleted_member_stays_and_can_be_dropped_as_most_loaded() {
        let mut dests = list(2);
        let opts = SchedOptions { lblcr_expiration: Duration::from_secs(60), ..SchedOptions::default() };
        let mut s = Lblcr::new(&opts);
        s.on_change(&dests, Change::Init);
        // A, A, B: set {B, A} with A at 2 active.
        for _ in 0..3 {
            pick(&mut s, &mut dests, 0);
        }
        let a = dests.remove(0);
        s.on_change(&dests, Change::Removed { index: 0, id: a.id });
        // A is never chosen now, but still a member; at t=100 it is the most loaded (its last
        // seen 2 active against B's 1) and is dropped.
        assert_eq!(pick(&mut s, &mut dests, 10), 1);
        assert_eq!(s.cached(req(0).daddr), Some(vec![DestId(1), DestId(0)]));
        dests[0].active = 1; // B's second connection ended
        assert_eq!(pick(&mut s, &mut dests, 100), 1);
        assert_eq!(s.cached(req(0).daddr), Some(vec![DestId(1)]));
    }

    #[test]
    fn restore_rebuilds_the_set() {
        let dests = list(3);
        let mut s = Lblcr::new(&SchedOptions::default());
        s.on_change(&dests, Change::Init);
        s.restore(&dests, &req(5), 2);
        s.restore(&dests, &req(5), 0);
        s.restore(&dests, &req(5), 2);
        assert_eq!(s.cached(req(0).daddr), Some(vec![DestId(0), DestId(2)]));
    }
}
