//! ovf: weighted overflow (`ip_vs_ovf.c`, lvs-semantics.md §2.8).
//!
//! The highest weight among entries with weight > 0, no OVERLOAD and `active <= weight`; ties go
//! to the earliest in list order. Note `<=`: a server takes `weight + 1` active connections
//! before it overflows to the next. Inactive connections do not count.

use super::index::{checked, ByWeightNotOverflowing, Tournament};
use super::*;

#[derive(Debug)]
pub struct WeightedOverflow {
    /// With [`SchedOptions::incremental`].
    index: Option<Tournament<ByWeightNotOverflowing>>,
}

impl WeightedOverflow {
    pub fn new(opts: &SchedOptions) -> Self {
        WeightedOverflow { index: opts.incremental.then(|| Tournament::new(ByWeightNotOverflowing)) }
    }
}

/// `ip_vs_ovf_schedule`'s loop.
fn scan(dests: &[Dest]) -> Option<usize> {
    let mut best: Option<(usize, u32)> = None;
    for (i, d) in dests.iter().enumerate() {
        if !usable(d) || d.active > d.weight {
            continue;
        }
        if best.is_none_or(|(_, hw)| d.weight > hw) {
            best = Some((i, d.weight));
        }
    }
    best.map(|(i, _)| i)
}

impl Scheduler for WeightedOverflow {
    fn name(&self) -> &'static str {
        "ovf"
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
