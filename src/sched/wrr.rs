//! wrr: weighted round robin (`net/netfilter/ipvs/ip_vs_wrr.c`, lvs-semantics.md §2.2).
//!
//! State (`struct ip_vs_wrr_mark`): `cl`, the entry chosen last (or the list head); `cw`, the
//! current weight floor; `mw`, the top of the cycle; `di`, the step (gcd of the positive
//! weights). A pick walks the list from the entry after `cl`; the first non-OVERLOAD entry with
//! `weight >= cw` wins. At the end of the list `cw` drops by `di`, wrapping to `mw` below 1, so a
//! cycle makes passes at `cw = mw, mw - di, ..., <= di` and a server of weight `w` is picked
//! `w / di` times per cycle, heaviest first.
//!
//! `init_service` sets `cw = mw`; every add, edit and delete (`ip_vs_wrr_dest_changed`) puts
//! `cl` back on the head and adjusts `cw` (see [`WeightedRoundRobin::on_change`]). That is why a
//! service built by `-A` then `-a` starts with a `cw = 1` round (WRR-2) while `-E -s wrr` on a
//! populated service starts at the top weight (WRR-4).

use super::*;

#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    /// Index of the entry chosen last; `None` is the list head. Every list change resets it to
    /// the head (the kernel does the same), so it never has to follow index shifts.
    cl: Option<usize>,
    /// Current weight. `int` in the kernel; i64 here so that the arithmetic below cannot wrap.
    cw: i64,
    /// Maximum weight minus (di - 1); 0 when every weight is 0.
    mw: i64,
    /// gcd of the positive weights, 1 if there are none.
    di: i64,
}

/// `ip_vs_wrr_gcd_weight`: gcd of the weights > 0, or 1 if there is none.
fn gcd_weight(dests: &[Dest]) -> i64 {
    let g = dests.iter().map(|d| i64::from(d.weight)).filter(|&w| w > 0).fold(0, gcd);
    if g > 0 {
        g
    } else {
        1
    }
}

/// `ip_vs_wrr_max_weight`: the largest weight (0 for an empty list).
fn max_weight(dests: &[Dest]) -> i64 {
    dests.iter().map(|d| i64::from(d.weight)).max().unwrap_or(0)
}

impl WeightedRoundRobin {
    pub fn new(_opts: &SchedOptions) -> Self {
        WeightedRoundRobin { cl: None, cw: 0, mw: 0, di: 1 }
    }

    /// The state as `(cw, mw, di)`, for tests and diagnostics.
    pub fn state(&self) -> (i64, i64, i64) {
        (self.cw, self.mw, self.di)
    }
}

impl Scheduler for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "wrr"
    }

    fn on_change(&mut self, dests: &[Dest], change: Change) {
        self.cl = None;
        self.di = gcd_weight(dests);
        self.mw = max_weight(dests) - (self.di - 1);
        match change {
            // ip_vs_wrr_init_svc
            Change::Init => self.cw = self.mw,
            // ip_vs_wrr_dest_changed (the add_dest, upd_dest and del_dest hook)
            Change::Added(_) | Change::Edited(_) | Change::Removed { .. } => {
                if self.cw > self.mw || self.cw == 0 {
                    self.cw = self.mw;
                } else if self.di > 1 {
                    self.cw = (self.cw / self.di) * self.di + 1;
                }
            }
        }
    }

    /// `ip_vs_wrr_schedule`, step for step. `stop` is never the head, so `None` means NULL.
    fn schedule(&mut self, dests: &[Dest], _req: &Request) -> Option<usize> {
        let n = dests.len();
        // A cursor past the end can only come from a list changed without on_change.
        let last = self.cl.filter(|&i| i < n);
        if self.mw == 0 {
            self.cl = last;
            return None;
        }
        let mut pos = last;
        let mut stop: Option<usize> = None;
        let mut last_pass = false;
        let mut restarted = false;
        loop {
            let from = pos.map_or(0, |p| p + 1);
            for (i, d) in dests.iter().enumerate().skip(from) {
                if !d.overloaded && i64::from(d.weight) >= self.cw {
                    self.cl = Some(i);
                    return Some(i);
                }
                if stop == Some(i) {
                    // "all destinations are overloaded"
                    self.cl = Some(i);
                    return None;
                }
            }
            pos = None;
            self.cw -= self.di;
            if self.cw <= 0 {
                self.cw = self.mw;
                // Stop if the last pass (cw <= di) already covered every entry: either this
                // search started from the head, or it has been through a lowest-level pass.
                if last_pass || last.is_none() {
                    self.cl = None;
                    return None;
                }
                restarted = true;
            }
            last_pass = self.cw <= self.di;
            if last_pass && restarted && last.is_some() {
                // The first lowest-level pass only saw the entries after `last`; scan up to it.
                stop = last;
            }
        }
    }
}
