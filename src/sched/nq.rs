//! nq: never queue (`ip_vs_nq.c`, lvs-semantics.md §2.6).
//!
//! Among entries with weight != 0 and no OVERLOAD, the first with no active connection is
//! returned at once (weight and inactive connections do not matter); if none is idle, the one
//! with the smallest `(active + 1) / weight`, earliest on ties.

use super::index::{checked, NeverQueueOrder, Tournament};
use super::*;

#[derive(Debug)]
pub struct NeverQueue {
    /// With [`SchedOptions::incremental`].
    index: Option<Tournament<NeverQueueOrder>>,
}

impl NeverQueue {
    pub fn new(opts: &SchedOptions) -> Self {
        NeverQueue { index: opts.incremental.then(|| Tournament::new(NeverQueueOrder)) }
    }
}

/// `ip_vs_nq_schedule`'s loop.
fn scan(dests: &[Dest]) -> Option<usize> {
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

impl Scheduler for NeverQueue {
    fn name(&self) -> &'static str {
        "nq"
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
