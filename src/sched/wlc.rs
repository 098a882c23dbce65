//! wlc: weighted least connection, ipvsadm's default (`ip_vs_wlc.c`, lvs-semantics.md §2.4).
//!
//! Minimises `overhead / weight` by 64-bit cross-multiplication. The first candidate is the
//! first entry with weight > 0 and no OVERLOAD; later entries are only skipped for OVERLOAD,
//! but a weight-0 entry can never win (its side of the comparison is multiplied by 0). Ties
//! go to the earliest in list order, so an all-idle pool always answers the first entry.

use super::index::{checked, ByLoad, Tournament};
use super::*;

#[derive(Debug)]
pub struct WeightedLeastConnection {
    overhead: Overhead,
    /// With [`SchedOptions::incremental`].
    index: Option<Tournament<ByLoad>>,
}

impl WeightedLeastConnection {
    pub fn new(opts: &SchedOptions) -> Self {
        WeightedLeastConnection {
            overhead: opts.overhead,
            index: opts.incremental.then(|| Tournament::new(ByLoad(opts.overhead))),
        }
    }
}

/// The wlc choice over `dests`; lblc and lblcr schedule with the same loop
/// (`__ip_vs_lblc_schedule`, `__ip_vs_lblcr_schedule`).
pub(crate) fn least(dests: &[Dest], overhead: Overhead) -> Option<usize> {
    least_by(dests, |d| overhead.int(d))
}

/// The wlc loop with the overhead function as a parameter (sed passes `active + 1`).
#[inline]
pub(crate) fn least_by(dests: &[Dest], oh: impl Fn(&Dest) -> i32) -> Option<usize> {
    let first = dests.iter().position(usable)?;
    let (mut li, mut loh, mut lw) = (first, oh(&dests[first]), dests[first].weight);
    for (i, d) in dests.iter().enumerate().skip(first + 1) {
        if d.overloaded {
            continue;
        }
        let doh = oh(d);
        if ratio_gt(loh, lw, doh, d.weight) {
            (li, loh, lw) = (i, doh, d.weight);
        }
    }
    Some(li)
}

impl Scheduler for WeightedLeastConnection {
    fn name(&self) -> &'static str {
        "wlc"
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
            Some(t) => checked(t.best(dests), || least(dests, self.overhead)),
            None => least(dests, self.overhead),
        }
    }
}
