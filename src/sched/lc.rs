//! lc: least connection (`net/netfilter/ipvs/ip_vs_lc.c`, lvs-semantics.md §2.3).
//!
//! The destination with the smallest overhead (`256 * active + inactive`, or the 2026
//! `257 * active + inactive`, see [`Overhead`]) among those with weight != 0 and no OVERLOAD;
//! weight magnitude is ignored; ties go to the earliest in list order. The kernel compares the
//! overheads as `unsigned int`.

use super::index::{checked, ByOverhead, Tournament};
use super::*;

#[derive(Debug)]
pub struct LeastConnection {
    overhead: Overhead,
    /// With [`SchedOptions::incremental`].
    index: Option<Tournament<ByOverhead>>,
}

impl LeastConnection {
    pub fn new(opts: &SchedOptions) -> Self {
        LeastConnection {
            overhead: opts.overhead,
            index: opts.incremental.then(|| Tournament::new(ByOverhead(opts.overhead))),
        }
    }
}

/// `ip_vs_lc_schedule`'s loop.
fn scan(dests: &[Dest], overhead: Overhead) -> Option<usize> {
    let mut least: Option<(usize, u32)> = None;
    for (i, d) in dests.iter().enumerate() {
        if !usable(d) {
            continue;
        }
        let doh = overhead.int(d) as u32;
        if least.is_none_or(|(_, loh)| doh < loh) {
            least = Some((i, doh));
        }
    }
    least.map(|(i, _)| i)
}

impl Scheduler for LeastConnection {
    fn name(&self) -> &'static str {
        "lc"
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
            Some(t) => checked(t.best(dests), || scan(dests, self.overhead)),
            None => scan(dests, self.overhead),
        }
    }
}
