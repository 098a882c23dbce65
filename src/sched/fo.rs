//! fo: weighted failover (`ip_vs_fo.c`, lvs-semantics.md §2.7).
//!
//! The highest weight among entries without OVERLOAD; strictly greater wins, so ties go to the
//! earliest in list order and weight 0 never wins. Connection counts are ignored.

use super::index::{checked, ByWeight, Tournament};
use super::*;

#[derive(Debug)]
pub struct WeightedFailover {
    /// With [`SchedOptions::incremental`] (only OVERLOAD changes matter to fo).
    index: Option<Tournament<ByWeight>>,
}

impl WeightedFailover {
    pub fn new(opts: &SchedOptions) -> Self {
        WeightedFailover { index: opts.incremental.then(|| Tournament::new(ByWeight)) }
    }
}

/// `ip_vs_fo_schedule`'s loop.
fn scan(dests: &[Dest]) -> Option<usize> {
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

impl Scheduler for WeightedFailover {
    fn name(&self) -> &'static str {
        "fo"
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
            Some(t) => checked(t.best(dests), || scan(dests)),
            None => scan(dests),
        }
    }
}
