//! sed: shortest expected delay (`ip_vs_sed.c`, lvs-semantics.md §2.5).
//!
//! The wlc loop with overhead `active + 1`: inactive connections are ignored completely. Ties go
//! to the earliest in list order.

use super::index::{checked, ByExpectedDelay, Tournament};
use super::*;

#[derive(Debug)]
pub struct ShortestExpectedDelay {
    /// With [`SchedOptions::incremental`].
    index: Option<Tournament<ByExpectedDelay>>,
}

impl ShortestExpectedDelay {
    pub fn new(opts: &SchedOptions) -> Self {
        ShortestExpectedDelay { index: opts.incremental.then(|| Tournament::new(ByExpectedDelay)) }
    }
}

/// `ip_vs_sed_dest_overhead` (and nq's identical one): `activeconns + 1` as a C `int`.
#[inline]
pub(crate) fn expected_delay(d: &Dest) -> i32 {
    (d.active as i32).wrapping_add(1)
}

impl Scheduler for ShortestExpectedDelay {
    fn name(&self) -> &'static str {
        "sed"
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
            Some(t) => checked(t.best(dests), || wlc::least_by(dests, expected_delay)),
            None => wlc::least_by(dests, expected_delay),
        }
    }
}
