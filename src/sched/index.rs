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
//!
//! lc, wlc, sed, nq, fo and ovf are each just a [`ScanRule`] (the kernel's loop and the same
//! order as a [`Policy`], in the scheduler's own file) run by the generic [`Indexed`] scheduler.

use super::*;

/// What a [`Tournament`] ranks: a key per destination (`None`: not eligible) and the order.
pub trait Policy {
    type Key: Copy + PartialEq + fmt::Debug + Send;
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
// The scanning schedulers, as one generic scheduler.

/// The rule of a scheduler that picks the best destination of the list under a fixed order
/// (lc, wlc, sed, nq, fo, ovf): the kernel's loop, and the same order as a [`Policy`] for the
/// [`Tournament`] that answers in incremental mode. Each scheduler's file implements it.
pub trait ScanRule: Policy + Clone + Send + fmt::Debug {
    /// The ipvsadm name.
    const NAME: &'static str;
    /// The rule for a service built with `opts` (lc and wlc take the overhead formula).
    fn new(opts: &SchedOptions) -> Self;
    /// The kernel's `ip_vs_*_schedule` loop over `dests`.
    fn scan(&self, dests: &[Dest]) -> Option<usize>;
}

/// A scheduler that is nothing but a [`ScanRule`]: it scans the list on every pick, or with
/// [`SchedOptions::incremental`] answers from a [`Tournament`] kept up to date by
/// [`Scheduler::on_counts`]. None of these keeps state between picks (the kernel's have no
/// `init_service`/`add_dest` hooks), so a list change only rebuilds the index.
#[derive(Debug)]
pub struct Indexed<R: ScanRule> {
    rule: R,
    index: Option<Tournament<R>>,
}

impl<R: ScanRule> Indexed<R> {
    pub fn new(opts: &SchedOptions) -> Self {
        let rule = R::new(opts);
        Indexed { index: opts.incremental.then(|| Tournament::new(rule.clone())), rule }
    }
}

impl<R: ScanRule> Scheduler for Indexed<R> {
    fn name(&self) -> &'static str {
        R::NAME
    }

    fn on_change(&mut self, dests: &[Dest], _change: Change) {
        if let Some(t) = &mut self.index {
            t.rebuild(dests);
        }
    }

    fn on_counts(&mut self, dests: &[Dest], index: usize) {
        if let Some(t) = &mut self.index {
            t.update(dests, index);
        }
    }

    fn schedule(&mut self, dests: &[Dest], _req: &Request) -> Option<usize> {
        match &mut self.index {
            Some(t) => checked(t.best(dests), || self.rule.scan(dests)),
            None => self.rule.scan(dests),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::fo::ByWeight;
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
