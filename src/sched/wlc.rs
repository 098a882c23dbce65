//! wlc: weighted least connection, ipvsadm's default (`ip_vs_wlc.c`, lvs-semantics.md §2.4).
//!
//! Minimises `overhead / weight` by 64-bit cross-multiplication. The first candidate is the
//! first entry with weight > 0 and no OVERLOAD; later entries are only skipped for OVERLOAD,
//! but a weight-0 entry can never win (its side of the comparison is multiplied by 0). Ties
//! go to the earliest in list order, so an all-idle pool always answers the first entry.

use super::index::{Indexed, Policy, ScanRule};
use super::*;

pub type WeightedLeastConnection = Indexed<ByLoad>;

/// wlc's order (and lblc/lblcr's fallback): smallest overhead / weight among weight > 0, no
/// OVERLOAD. (The scan also compares later weight-0 entries, which can only win with a
/// negative, i.e. wrapped, overhead: more than 2^23 active connections. The index leaves them
/// out.)
#[derive(Debug, Clone, Copy)]
pub struct ByLoad(pub(crate) Overhead);

impl Policy for ByLoad {
    type Key = (i32, u32);
    fn key(&self, d: &Dest) -> Option<(i32, u32)> {
        usable(d).then(|| (self.0.int(d), d.weight))
    }
    fn beats(&self, new: &(i32, u32), old: &(i32, u32)) -> bool {
        ratio_gt(old.0, old.1, new.0, new.1)
    }
}

impl ScanRule for ByLoad {
    const NAME: &'static str = "wlc";

    fn new(opts: &SchedOptions) -> Self {
        ByLoad(opts.overhead)
    }

    fn scan(&self, dests: &[Dest]) -> Option<usize> {
        least(dests, self.0)
    }
}

/// The wlc choice over `dests` (`ip_vs_wlc_schedule`'s loop); lblc and lblcr schedule with the
/// same loop (`__ip_vs_lblc_schedule`, `__ip_vs_lblcr_schedule`).
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
