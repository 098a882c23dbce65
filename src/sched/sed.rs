//! sed: shortest expected delay (`ip_vs_sed.c`, lvs-semantics.md §2.5).
//!
//! The wlc loop with overhead `active + 1`: inactive connections are ignored completely. Ties go
//! to the earliest in list order.

use super::index::{Indexed, Policy, ScanRule};
use super::*;

pub type ShortestExpectedDelay = Indexed<ByExpectedDelay>;

/// sed's order: smallest (active + 1) / weight among weight > 0 and no OVERLOAD.
#[derive(Debug, Clone, Copy)]
pub struct ByExpectedDelay;

impl Policy for ByExpectedDelay {
    type Key = (i32, u32);
    fn key(&self, d: &Dest) -> Option<(i32, u32)> {
        usable(d).then(|| (expected_delay(d), d.weight))
    }
    fn beats(&self, new: &(i32, u32), old: &(i32, u32)) -> bool {
        ratio_gt(old.0, old.1, new.0, new.1)
    }
}

impl ScanRule for ByExpectedDelay {
    const NAME: &'static str = "sed";

    fn new(_opts: &SchedOptions) -> Self {
        ByExpectedDelay
    }

    /// `ip_vs_sed_schedule`'s loop: wlc's with another overhead.
    fn scan(&self, dests: &[Dest]) -> Option<usize> {
        wlc::least_by(dests, expected_delay)
    }
}

/// `ip_vs_sed_dest_overhead` (and nq's identical one): `activeconns + 1` as a C `int`.
#[inline]
pub(crate) fn expected_delay(d: &Dest) -> i32 {
    (d.active as i32).wrapping_add(1)
}
