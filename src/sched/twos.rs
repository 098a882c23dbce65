//! twos: power of two choices (`ip_vs_twos.c`, kernel 6.5+, lvs-semantics.md §2.14).
//!
//! `T` = sum of the weights of the servers with weight > 0 and no OVERLOAD (none if there is
//! none). Two numbers r1, r2 are drawn uniformly from [0, T] (`get_random_u32_below(T + 1)`).
//! Walking the eligible servers and subtracting each weight from both, the first server at
//! which r1 drops to <= 0 is choice 1, likewise r2 for choice 2. Choice 2 wins if
//! `weight2 * overhead1 > weight1 * overhead2`, else choice 1.
//!
//! Randomness comes from a [`Draw`] source: [`SplitMix64`] seeded from
//! [`SchedOptions::seed`] by default; tests inject exact draws with
//! [`TwoChoices::with_draws`]. The kernel's draws come from its CRNG, so only the distribution
//! (not the sequence) can match a real kernel.

use super::index::WeightSums;
use super::*;

/// A source of uniform draws: `below(n)` returns a number in `[0, n)`, `n >= 1`.
pub trait Draw: Send + fmt::Debug {
    fn below(&mut self, n: u32) -> u32;
}

/// SplitMix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number generators", 2014;
/// constants from Vigna's reference `splitmix64.c`): a 64-bit counter stepped by the golden
/// gamma and passed through a mixing function. Small, fast, every seed is fine; not
/// cryptographic, which a load balancer's server choice does not need.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
}

impl Draw for SplitMix64 {
    /// The kernel's `__get_random_u32_below` (Lemire's multiply-shift with rejection of the
    /// biased low products), on this generator's 32-bit outputs: exactly uniform.
    fn below(&mut self, ceil: u32) -> u32 {
        let ceil = ceil.max(1);
        let mut mult = u64::from(ceil) * u64::from(self.next_u32());
        if (mult as u32) < ceil {
            let bound = ceil.wrapping_neg() % ceil;
            while (mult as u32) < bound {
                mult = u64::from(ceil) * u64::from(self.next_u32());
            }
        }
        (mult >> 32) as u32
    }
}

/// Draws from a closure (tests: a fixed sequence). Results are clamped into range.
pub struct FnDraw<F>(pub F);

impl<F> fmt::Debug for FnDraw<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnDraw")
    }
}

impl<F: FnMut(u32) -> u32 + Send> Draw for FnDraw<F> {
    fn below(&mut self, n: u32) -> u32 {
        (self.0)(n).min(n.saturating_sub(1))
    }
}

#[derive(Debug)]
pub struct TwoChoices {
    overhead: Overhead,
    draw: Box<dyn Draw>,
    /// With [`SchedOptions::incremental`]: prefix sums of the eligible weights.
    sums: Option<WeightSums>,
}

impl TwoChoices {
    /// Seeded from `opts.seed`.
    pub fn new(opts: &SchedOptions) -> Self {
        Self::with_source(opts, Box::new(SplitMix64::new(opts.seed)))
    }

    /// With the draws made by `draw(n)`, which must return a number in `[0, n)` (larger ones
    /// are clamped to `n - 1`). It is called twice per pick: r1 then r2.
    pub fn with_draws(opts: &SchedOptions, draw: impl FnMut(u32) -> u32 + Send + 'static) -> Self {
        Self::with_source(opts, Box::new(FnDraw(draw)))
    }

    /// With any [`Draw`] source.
    pub fn with_source(opts: &SchedOptions, draw: Box<dyn Draw>) -> Self {
        TwoChoices { overhead: opts.overhead, draw, sums: opts.incremental.then(WeightSums::default) }
    }
}

/// The sum of the eligible weights (`total_weight` before its + 1).
fn total_weight(dests: &[Dest]) -> i64 {
    dests.iter().filter(|d| usable(d)).map(|d| i64::from(d.weight)).sum()
}

/// The kernel's second loop: walking the eligible servers, subtracting each weight from both
/// draws; the first server at which a draw drops to <= 0 is its choice.
fn walk(dests: &[Dest], mut r1: i64, mut r2: i64) -> (Option<usize>, Option<usize>) {
    let mut c1: Option<usize> = None;
    let mut c2: Option<usize> = None;
    for (i, d) in dests.iter().enumerate() {
        if !usable(d) {
            continue;
        }
        r1 -= i64::from(d.weight);
        r2 -= i64::from(d.weight);
        if r1 <= 0 && c1.is_none() {
            c1 = Some(i);
        }
        if r2 <= 0 && c2.is_none() {
            c2 = Some(i);
        }
        if c1.is_some() && c2.is_some() {
            break;
        }
    }
    (c1, c2)
}

impl Scheduler for TwoChoices {
    fn name(&self) -> &'static str {
        "twos"
    }

    fn on_change(&mut self, dests: &[Dest], _change: Change) {
        if let Some(ws) = &mut self.sums {
            ws.rebuild(dests);
        }
    }

    fn on_counts(&mut self, dests: &[Dest], index: usize) {
        if let Some(ws) = &mut self.sums {
            ws.update(dests, index);
        }
    }

    fn schedule(&mut self, dests: &[Dest], _req: &Request) -> Option<usize> {
        let total = match &mut self.sums {
            Some(ws) => {
                let t = ws.total(dests);
                debug_assert_eq!(t, total_weight(dests), "twos index out of date: on_counts missed?");
                t
            }
            None => total_weight(dests),
        };
        if total == 0 {
            return None;
        }
        // `total_weight` is an int; the draw bound cannot exceed u32 for fewer than 2^32 / 65535
        // servers of ipvsadm's maximum weight 65535, and saturates beyond.
        let bound = u32::try_from(total + 1).unwrap_or(u32::MAX);
        let r1 = i64::from(self.draw.below(bound));
        let r2 = i64::from(self.draw.below(bound));
        let (c1, c2) = match &self.sums {
            // A draw of 0 ends the walk at the first eligible server, as a draw of 1 does.
            Some(ws) => {
                let fast = (ws.find(r1.max(1)), ws.find(r2.max(1)));
                debug_assert_eq!(fast, walk(dests, r1, r2), "twos index out of date: on_counts missed?");
                fast
            }
            None => walk(dests, r1, r2),
        };
        // r1, r2 <= total, so both walks end on an eligible server.
        let (c1, c2) = (c1?, c2?);
        // `(weight2 * overhead1) > (weight1 * overhead2)` is evaluated in C `int`: it wraps for
        // large products (e.g. weight 1000 with 10000 active connections). Copied.
        let (d1, d2) = (&dests[c1], &dests[c2]);
        let lhs = (d2.weight as i32).wrapping_mul(self.overhead.int(d1));
        let rhs = (d1.weight as i32).wrapping_mul(self.overhead.int(d2));
        Some(if lhs > rhs { c2 } else { c1 })
    }
}
