//! fo: weighted failover (`ip_vs_fo.c`, lvs-semantics.md §2.7).
//!
//! The highest weight among entries without OVERLOAD; strictly greater wins, so ties go to the
//! earliest in list order and weight 0 never wins. Connection counts are ignored (in
//! incremental mode only OVERLOAD changes matter to fo).

use super::index::{Indexed, Policy, ScanRule};
use super::*;

pub type WeightedFailover = Indexed<ByWeight>;

/// fo's order: highest weight among no OVERLOAD (weight 0 never wins).
#[derive(Debug, Clone, Copy)]
pub struct ByWeight;

impl Policy for ByWeight {
    type Key = u32;
    fn key(&self, d: &Dest) -> Option<u32> {
        usable(d).then_some(d.weight)
    }
    fn beats(&self, new: &u32, old: &u32) -> bool {
        new > old
    }
}

impl ScanRule for ByWeight {
    const NAME: &'static str = "fo";

    fn new(_opts: &SchedOptions) -> Self {
        ByWeight
    }

    /// `ip_vs_fo_schedule`'s loop.
    fn scan(&self, dests: &[Dest]) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut hw = 0u32;
        for (i, d) in dests.iter().enumerate() {
            if !d.overloaded && d.weight > hw {
                best = Some(i);
                hw = d.weight;
            }
        }
        best
    }
}
