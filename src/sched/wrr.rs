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

    /// Jumps over whole passes that cannot find anything, exactly as running them would. Called
    /// before a pass from the head, after one that found nothing.
    ///
    /// A pass from the head with no `stop` set and `cw` above every non-OVERLOAD weight finds
    /// nothing; if `cw - di` is still above both that weight and `di`, the pass only lowers `cw`
    /// by `di` (no wrap to `mw`, `last_pass` stays false, `stop` stays unset). The kernel runs
    /// those passes one by one, which with a large top weight on an OVERLOAD server (say 65535
    /// next to weight-1 servers) costs tens of thousands of list walks per pick.
    fn skip_empty_passes(&mut self, dests: &[Dest], top: &mut Option<i64>, last_pass: &mut bool) {
        let m = *top.get_or_insert_with(|| {
            dests.iter().filter(|d| !d.overloaded).map(|d| i64::from(d.weight)).max().unwrap_or(0)
        });
        let floor = m.max(self.di);
        if self.cw - self.di > floor {
            let k = (self.cw - floor - 1) / self.di;
            self.cw -= k * self.di;
            *last_pass = false;
        }
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
        // Largest weight of a non-OVERLOAD entry, computed after the first fruitless pass over
        // the whole list (so that productive passes never pay for it).
        let mut top: Option<i64> = None;
        let mut fruitless = false;
        loop {
            if fruitless && stop.is_none() {
                self.skip_empty_passes(dests, &mut top, &mut last_pass);
            }
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
            fruitless = pos.is_none();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::twos::SplitMix64;
    use crate::service::DestId;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// `ip_vs_wrr_schedule` without the pass skipping, as the reference.
    fn reference(w: &mut WeightedRoundRobin, dests: &[Dest]) -> Option<usize> {
        let n = dests.len();
        let last = w.cl.filter(|&i| i < n);
        if w.mw == 0 {
            w.cl = last;
            return None;
        }
        let (mut pos, mut stop, mut last_pass, mut restarted) = (last, None, false, false);
        loop {
            for (i, d) in dests.iter().enumerate().skip(pos.map_or(0, |p| p + 1)) {
                if !d.overloaded && i64::from(d.weight) >= w.cw {
                    w.cl = Some(i);
                    return Some(i);
                }
                if stop == Some(i) {
                    w.cl = Some(i);
                    return None;
                }
            }
            pos = None;
            w.cw -= w.di;
            if w.cw <= 0 {
                w.cw = w.mw;
                if last_pass || last.is_none() {
                    w.cl = None;
                    return None;
                }
                restarted = true;
            }
            last_pass = w.cw <= w.di;
            if last_pass && restarted && last.is_some() {
                stop = last;
            }
        }
    }

    fn req() -> Request {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        Request { caddr: a, cport: 1, daddr: a, dport: 80, now: Duration::ZERO }
    }

    #[test]
    fn skipping_matches_the_pass_by_pass_loop() {
        let mut rng = SplitMix64::new(1);
        for case in 0..3000 {
            let n = 1 + (rng.next_u64() % 6) as usize;
            let scale = [1u64, 2, 3, 100, 65535][(rng.next_u64() % 5) as usize];
            let mut dests: Vec<Dest> = (0..n)
                .map(|i| {
                    let w = (rng.next_u64() % 4 * scale).min(65535) as u32;
                    let mut d = Dest::new(DestId(i as u64), Ipv4Addr::from(i as u32), 80, w);
                    d.overloaded = rng.next_u64().is_multiple_of(3);
                    d
                })
                .collect();
            let mut fast = WeightedRoundRobin::new(&SchedOptions::default());
            let mut slow = WeightedRoundRobin::new(&SchedOptions::default());
            let init = if case % 2 == 0 { Change::Init } else { Change::Added(0) };
            fast.on_change(&dests, init);
            slow.on_change(&dests, init);
            for step in 0..40 {
                if rng.next_u64().is_multiple_of(5) {
                    let i = (rng.next_u64() % n as u64) as usize;
                    dests[i].overloaded = !dests[i].overloaded;
                }
                let a = fast.schedule(&dests, &req());
                let b = reference(&mut slow, &dests);
                assert_eq!(a, b, "case {case} step {step}: {dests:?}");
                assert_eq!((fast.cl, fast.state()), (slow.cl, slow.state()), "case {case} step {step}");
            }
        }
    }

    #[test]
    fn huge_overloaded_weight_does_not_cost_a_pass_per_level() {
        // B (weight 65535) overloaded: every pick would otherwise walk ~65535 empty passes.
        let mut dests = vec![
            Dest::new(DestId(1), Ipv4Addr::new(10, 0, 0, 2), 80, 65535),
            Dest::new(DestId(0), Ipv4Addr::new(10, 0, 0, 1), 80, 1),
        ];
        dests[0].overloaded = true;
        let mut w = WeightedRoundRobin::new(&SchedOptions::default());
        w.on_change(&dests, Change::Init);
        let start = std::time::Instant::now();
        for _ in 0..10_000 {
            assert_eq!(w.schedule(&dests, &req()), Some(1));
        }
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    }
}
