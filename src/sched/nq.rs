//! nq: never queue (`ip_vs_nq.c`, lvs-semantics.md §2.6).
//!
//! Among entries with weight != 0 and no OVERLOAD, the first with no active connection is
//! returned at once (weight and inactive connections do not matter); if none is idle, the one
//! with the smallest `(active + 1) / weight`, earliest on ties.

use super::index::{Indexed, Policy, ScanRule};
use super::*;

pub type NeverQueue = Indexed<NeverQueueOrder>;

/// nq's order: the first idle server, else smallest (active + 1) / weight.
#[derive(Debug, Clone, Copy)]
pub struct NeverQueueOrder;

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

impl ScanRule for NeverQueueOrder {
    const NAME: &'static str = "nq";

    fn new(_opts: &SchedOptions) -> Self {
        NeverQueueOrder
    }

    /// `ip_vs_nq_schedule`'s loop.
    fn scan(&self, dests: &[Dest]) -> Option<usize> {
        let mut least: Option<(usize, i32, u32)> = None;
        for (i, d) in dests.iter().enumerate() {
            if !usable(d) {
                continue;
            }
            if d.active == 0 {
                return Some(i);
            }
            let doh = sed::expected_delay(d);
            if least.is_none_or(|(_, loh, lw)| ratio_gt(loh, lw, doh, d.weight)) {
                least = Some((i, doh, d.weight));
            }
        }
        least.map(|(i, _, _)| i)
    }
}
