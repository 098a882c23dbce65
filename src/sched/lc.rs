//! lc: least connection (`net/netfilter/ipvs/ip_vs_lc.c`, lvs-semantics.md §2.3).
//!
//! The destination with the smallest overhead (`256 * active + inactive`, or the 2026
//! `257 * active + inactive`, see [`Overhead`]) among those with weight != 0 and no OVERLOAD;
//! weight magnitude is ignored; ties go to the earliest in list order. The kernel compares the
//! overheads as `unsigned int`.

use super::index::{Indexed, Policy, ScanRule};
use super::*;

pub type LeastConnection = Indexed<ByOverhead>;

/// lc's order: smallest overhead (as `unsigned int`) among weight != 0 and no OVERLOAD.
#[derive(Debug, Clone, Copy)]
pub struct ByOverhead(pub(crate) Overhead);

impl Policy for ByOverhead {
    type Key = u32;
    fn key(&self, d: &Dest) -> Option<u32> {
        usable(d).then(|| self.0.int(d) as u32)
    }
    fn beats(&self, new: &u32, old: &u32) -> bool {
        new < old
    }
}

impl ScanRule for ByOverhead {
    const NAME: &'static str = "lc";

    fn new(opts: &SchedOptions) -> Self {
        ByOverhead(opts.overhead)
    }

    /// `ip_vs_lc_schedule`'s loop.
    fn scan(&self, dests: &[Dest]) -> Option<usize> {
        let mut least: Option<(usize, u32)> = None;
        for (i, d) in dests.iter().enumerate() {
            if !usable(d) {
                continue;
            }
            let doh = self.0.int(d) as u32;
            if least.is_none_or(|(_, loh)| doh < loh) {
                least = Some((i, doh));
            }
        }
        least.map(|(i, _)| i)
    }
}
