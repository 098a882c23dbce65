//! ovf: weighted overflow (`ip_vs_ovf.c`, lvs-semantics.md §2.8).
//!
//! The highest weight among entries with weight > 0, no OVERLOAD and `active <= weight`; ties go
//! to the earliest in list order. Note `<=`: a server takes `weight + 1` active connections
//! before it overflows to the next. Inactive connections do not count.

use super::index::{Indexed, Policy, ScanRule};
use super::*;

pub type WeightedOverflow = Indexed<ByWeightNotOverflowing>;

/// ovf's order: highest weight among weight > 0, no OVERLOAD and active <= weight.
#[derive(Debug, Clone, Copy)]
pub struct ByWeightNotOverflowing;

impl Policy for ByWeightNotOverflowing {
    type Key = u32;
    fn key(&self, d: &Dest) -> Option<u32> {
        (usable(d) && d.active <= d.weight).then_some(d.weight)
    }
    fn beats(&self, new: &u32, old: &u32) -> bool {
        new > old
    }
}

impl ScanRule for ByWeightNotOverflowing {
    const NAME: &'static str = "ovf";

    fn new(_opts: &SchedOptions) -> Self {
        ByWeightNotOverflowing
    }

    /// `ip_vs_ovf_schedule`'s loop.
    fn scan(&self, dests: &[Dest]) -> Option<usize> {
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
}
