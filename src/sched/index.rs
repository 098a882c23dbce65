//! Incremental indexes over the destination list, for [`SchedOptions::incremental`] mode.
//!
//! The kernel's lc/wlc/sed/nq/fo/ovf/twos/lblc/lblcr scan the whole list on every pick, which
//! is what nfvs does by default too (about 1-2 ns per server). With `incremental` set, the
//! caller promises to report every counter or OVERLOAD change through
//! [`Scheduler::on_counts`], and those schedulers answer from an index instead:
//!
//! - [`Tournament`]: a segment tree whose every node holds the best of its range under the
//!   scheduler's order, ties to the earlier index. Because each of these schedulers' scans keeps
//!   the first strictly better candidate, its answer is the minimum of a total preorder with
//!   ties to the earliest, which is exactly what the tree's root holds (the combine step is
//!   associative). O(1) per pick, O(log n) per reported change, O(n) per list change.
//! - [`WeightSums`]: a Fenwick tree over the eligible weights, for twos' weighted draws.
//! - [`HalfLoaded`]: the count of servers with `2 * active < weight`, the second half of lblc's
//!   and lblcr's `is_overloaded()`.
//!
//! In debug builds every indexed answer is checked against the scan, so a caller that forgets
//! to report a change fails its tests instead of scheduling on stale counts.

use super::*;

/// What a [`Tournament`] ranks: a key per destination (`None`: not eligible) and the order.
pub(crate) trait Policy {
    type Key: Copy + PartialEq + fmt::Debug;
    fn key(&self, d: &Dest) -> Option<Self::Key>;
    /// True if `new` strictly beats `old` (the scan would replace `old` by `new`).
    fn beats(&self, new: &Self::Key, old: &Self::Key) -> bool;
}

#[derive(Debug)]
pub(crate) struct Tournament<P: Policy> {
    policy: P,
    /// Number of destinations indexed.
    n: usize,
    /// Leaves start here (a power of two >= n).
    size: usize,
    /// `nodes[1]` is the root; `(index, key)` of the best destination in the node's range.
    nodes: Vec<Option<(u32, P::Key)>>,
}

impl<P: Policy> Tournament<P> {
    pub(crate) fn new(policy: P) -> Self {
        Tournament { policy, n: 0, size: 0, nodes: Vec::new() }
    }

    #[inline]
    fn combine(&self, a: Option<(u32, P::Key)>, b: Option<(u32, P::Key)>) -> Option<(u32, P::Key)> {
        match (a, b) {
            (Some(x), Some(y)) => {
                if self.policy.beats(&y.1, &x.1) {
                    b
                } else {
                    a
                }
            }
            (None, _) => b,
            (_, None) => a,
        }
    }

    pub(crate) fn rebuild(&mut self, dests: &[Dest]) {
        self.n = dests.len();
        self.size = self.n.next_power_of_two().max(1);
        self.nodes.clear();
        self.nodes.resize(2 * self.size, None);
        for (i, d) in dests.iter().enumerate() {
            self.nodes[self.size + i] = self.policy.key(d).map(|k| (i as u32, k));
        }
        for v in (1..self.size).rev() {
            self.nodes[v] = self.combine(self.nodes[2 * v], self.nodes[2 * v + 1]);
        }
    }

    pub(crate) fn update(&mut self, dests: &[Dest], i: usize) {
        if dests.len() != self.n {
            self.rebuild(dests);
            return;
        }
        let Some(d) = dests.get(i) else { return };
        let mut v = self.size + i;
        let leaf = self.policy.key(d).map(|k| (i as u32, k));
        if self.nodes[v] == leaf {
            return;
        }
        self.nodes[v] = leaf;
        while v > 1 {
            v /= 2;
            let node = self.combine(self.nodes[2 * v], self.nodes[2 * v + 1]);
            if self.nodes[v] == node {
                // Nothing above can change either.
                break;
            }
            self.nodes[v] = node;
        }
    }

    /// The best destination, as an index into `dests`.
    pub(crate) fn best(&mut self, dests: &[Dest]) -> Option<usize> {
        if dests.len() != self.n {
            // The list changed without on_change: start over rather than answer from it.
            self.rebuild(dests);
        }
        self.nodes.get(1).copied().flatten().map(|(i, _)| i as usize)
    }
}

/// A Fenwick tree of the weights of the eligible destinations (weight > 0, no OVERLOAD).
#[derive(Debug, Default)]
pub(crate) struct WeightSums {
    /// Current contribution of each destination.
    w: Vec<i64>,
    /// 1-based Fenwick array.
    tree: Vec<i64>,
    total: i64,
}

fn contribution(d: &Dest) -> i64 {
    if usable(d) {
        i64::from(d.weight)
    } else {
        0
    }
}

impl WeightSums {
    pub(crate) fn rebuild(&mut self, dests: &[Dest]) {
        let n = dests.len();
        self.w = dests.iter().map(contribution).collect();
        self.tree = vec![0; n + 1];
        for i in 1..=n {
            self.tree[i] += self.w[i - 1];
            let j = i + (i & i.wrapping_neg());
            if j <= n {
                self.tree[j] += self.tree[i];
            }
        }
        self.total = self.w.iter().sum();
    }

    pub(crate) fn update(&mut self, dests: &[Dest], i: usize) {
        if dests.len() != self.w.len() {
            self.rebuild(dests);
            return;
        }
        let Some(d) = dests.get(i) else { return };
        let new = contribution(d);
        let delta = new - self.w[i];
        if delta == 0 {
            return;
        }
        self.w[i] = new;
        self.total += delta;
        let mut k = i + 1;
        while k < self.tree.len() {
            self.tree[k] += delta;
            k += k & k.wrapping_neg();
        }
    }

    pub(crate) fn total(&mut self, dests: &[Dest]) -> i64 {
        if dests.len() != self.w.len() {
            self.rebuild(dests);
        }
        self.total
    }

    /// The first index whose prefix sum (inclusive) reaches `r`, for `1 <= r <= total`: where
    /// twos' walk (subtracting eligible weights from r) first drops to <= 0.
    pub(crate) fn find(&self, r: i64) -> Option<usize> {
        let n = self.w.len();
        if r < 1 || r > self.total || n == 0 {
            return None;
        }
        let mut pos = 0usize;
        let mut rem = r;
        let mut step = n.next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= n && self.tree[next] < rem {
                pos = next;
                rem -= self.tree[next];
            }
            step /= 2;
        }
        (pos < n).then_some(pos)
    }
}

/// How many destinations have `2 * active < weight` (lblc's "a less loaded server exists").
#[derive(Debug, Default)]
pub(crate) struct HalfLoaded {
    flags: Vec<bool>,
    count: usize,
}

fn half_loaded(d: &Dest) -> bool {
    u64::from(d.active) * 2 < u64::from(d.weight)
}

impl HalfLoaded {
    pub(crate) fn rebuild(&mut self, dests: &[Dest]) {
        self.flags = dests.iter().map(half_loaded).collect();
        self.count = self.flags.iter().filter(|&&f| f).count();
    }

    pub(crate) fn update(&mut self, dests: &[Dest], i: usize) {
        if dests.len() != self.flags.len() {
            self.rebuild(dests);
            return;
        }
        let Some(d) = dests.get(i) else { return };
        let new = half_loaded(d);
        if new != self.flags[i] {
            self.flags[i] = new;
            if new {
                self.count += 1;
            } else {
                self.count -= 1;
            }
        }
    }

    pub(crate) fn any(&mut self, dests: &[Dest]) -> bool {
        if dests.len() != self.flags.len() {
            self.rebuild(dests);
        }
        self.count > 0
    }
}

/// An indexed answer, checked against the scan in debug builds.
#[inline]
pub(crate) fn checked(fast: Option<usize>, scan: impl FnOnce() -> Option<usize>) -> Option<usize> {
    debug_assert_eq!(
        fast,
        scan(),
        "incremental scheduler index out of date: was on_counts called after every counter change?"
    );
    fast
}

// ------------------------------------------------------------------------------------------
// The orders of the scanning schedulers.

/// lc: smallest overhead (as `unsigned int`) among weight != 0 and no OVERLOAD.
#[derive(Debug)]
pub(crate) struct ByOverhead(pub Overhead);

impl Policy for ByOverhead {
    type Key = u32;
    fn key(&self, d: &Dest) -> Option<u32> {
        usable(d).then(|| self.0.int(d) as u32)
    }
    fn beats(&self, new: &u32, old: &u32) -> bool {
        new < old
    }
}

/// wlc (and lblc/lblcr's fallback): smallest overhead / weight among weight > 0, no OVERLOAD.
/// (The scan also compares later weight-0 entries, which can only win with a negative,
/// i.e. wrapped, overhead: more than 2^23 active connections. The index leaves them out.)
#[derive(Debug)]
pub(crate) struct ByLoad(pub Overhead);

impl Policy for ByLoad {
    type Key = (i32, u32);
    fn key(&self, d: &Dest) -> Option<(i32, u32)> {
        usable(d).then(|| (self.0.int(d), d.weight))
    }
    fn beats(&self, new: &(i32, u32), old: &(i32, u32)) -> bool {
        ratio_gt(old.0, old.1, new.0, new.1)
    }
}

/// sed: smallest (active + 1) / weight.
#[derive(Debug)]
pub(crate) struct ByExpectedDelay;

impl Policy for ByExpectedDelay {
    type Key = (i32, u32);
    fn key(&self, d: &Dest) -> Option<(i32, u32)> {
        usable(d).then(|| (sed::expected_delay(d), d.weight))
    }
    fn beats(&self, new: &(i32, u32), old: &(i32, u32)) -> bool {
        ratio_gt(old.0, old.1, new.0, new.1)
    }
}

/// nq: the first idle server, else smallest (active + 1) / weight.
#[derive(Debug)]
pub(crate) struct NeverQueueOrder;

impl Policy for NeverQueueOrder {
    /// (idle, active + 1, weight)
    type Key = (bool, i32, u32);
    fn key(&self, d: &Dest) -> Option<(bool, i32, u32)> {
        usable(d).then(|| (d.active == 0, sed::expected_delay(d), d.weight))
    }
    fn beats(&self, new: &(bool, i32, u32), old: &(bool, i32, u32)) -> bool {
        !old.0 && (new.0 || ratio_gt(old.1, old.2, new.1, new.2))
    }
}

/// fo: highest weight among no OVERLOAD (weight 0 never wins).
#[derive(Debug)]
pub(crate) struct ByWeight;

impl Policy for ByWeight {
    type Key = u32;
    fn key(&self, d: &Dest) -> Option<u32> {
        usable(d).then_some(d.weight)
    }
    fn beats(&self, new: &u32, old: &u32) -> bool {
        new > old
    }
}

/// ovf: highest weight among weight > 0, no OVERLOAD and active <= weight.
#[derive(Debug)]
pub(crate) struct ByWeightNotOverflowing;

impl Policy for ByWeightNotOverflowing {
    type Key = u32;
    fn key(&self, d: &Dest) -> Option<u32> {
        (usable(d) && d.active <= d.weight).then_some(d.weight)
    }
    fn beats(&self, new: &u32, old: &u32) -> bool {
        new > old
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::DestId;
    use std::net::Ipv4Addr;

    fn list(ws: &[u32]) -> Vec<Dest> {
        ws.iter()
            .enumerate()
            .map(|(i, &w)| Dest::new(DestId(i as u64), Ipv4Addr::from(i as u32), 80, w))
            .collect()
    }

    #[test]
    fn weight_sums_find_matches_the_walk() {
        let mut ds = list(&[3, 0, 2, 5, 1]);
        ds[4].overloaded = true;
        let mut ws = WeightSums::default();
        ws.rebuild(&ds);
        assert_eq!(ws.total(&ds), 10);
        let found: Vec<Option<usize>> = (0..=11).map(|r| ws.find(r)).collect();
        let walk = |r: i64| {
            let mut r = r.max(1);
            ds.iter().position(|d| {
                if !usable(d) {
                    return false;
                }
                r -= i64::from(d.weight);
                r <= 0
            })
        };
        for r in 1..=10 {
            assert_eq!(found[r as usize], walk(r), "r = {r}");
        }
        assert_eq!(found[0], None);
        assert_eq!(found[11], None);
        ds[3].weight = 0;
        ws.update(&ds, 3);
        assert_eq!(ws.total(&ds), 5);
        assert_eq!(ws.find(5), Some(2));
    }

    #[test]
    fn tournament_ties_go_to_the_earliest() {
        let ds = list(&[2, 4, 4, 1]);
        let mut t = Tournament::new(ByWeight);
        t.rebuild(&ds);
        assert_eq!(t.best(&ds), Some(1));
        let mut ds = ds;
        ds[1].overloaded = true;
        t.update(&ds, 1);
        assert_eq!(t.best(&ds), Some(2));
    }
}
