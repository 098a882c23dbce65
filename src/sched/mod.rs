//! Schedulers: one file per IPVS scheduler behind the [`Scheduler`] trait, and [`new`], the
//! one place that maps an ipvsadm scheduler name to an implementation.
//!
//! The behaviour of every scheduler is specified in `shared/docs/lvs-semantics.md` (restated
//! from the kernel's `net/netfilter/ipvs/ip_vs_*.c`). Schedulers are pure: they see the
//! service's destination list (in IPVS list order: newest first), the request, and the time
//! passed in; randomness comes from a seeded generator owned by the scheduler.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::service::Dest;

/// What a scheduler knows about the connection being scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Client (source) address and port.
    pub caddr: Ipv4Addr,
    pub cport: u16,
    /// Destination the client asked for (the VIP, or any address for fwmark services).
    pub daddr: Ipv4Addr,
    pub dport: u16,
    /// Monotonic time since an arbitrary fixed origin (the daemon's start). Passed in so tests
    /// control the clock; only lblc/lblcr look at it.
    pub now: Duration,
}

/// A change of the destination list, reported after it happened (`dests` passed with it is the
/// new list). These are IPVS's `init_service`/`add_dest`/`upd_dest`/`del_dest` hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The scheduler was just attached to a service that already holds `dests` (creation with
    /// an empty list, or `-E -s` switching the scheduler of a populated service).
    Init,
    /// A destination was inserted at this index (always 0: IPVS links new ones at the head).
    Added(usize),
    /// The destination at this index was edited (weight, thresholds, ...).
    Edited(usize),
    /// The destination that stood at `index` before the change was removed.
    Removed { index: usize, id: crate::service::DestId },
}

/// The connection "overhead" formula used by lc/wlc/lblc/lblcr/twos (lvs-semantics.md §0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overhead {
    /// `256 * active + inactive` (every kernel from 2.6.39 to the 2026 stable updates).
    #[default]
    Classic,
    /// `256 * active + (active + inactive)` (2026 stable updates).
    Total,
}

impl Overhead {
    pub fn of(self, d: &Dest) -> u64 {
        let a = u64::from(d.active);
        let i = u64::from(d.inactive);
        match self {
            Overhead::Classic => (a << 8) + i,
            Overhead::Total => (a << 8) + a + i,
        }
    }
}

/// Scheduler flags (`-b`): `sh-fallback`/`mh-fallback` = flag-1, `sh-port`/`mh-port` = flag-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedFlags {
    pub flag1: bool,
    pub flag2: bool,
    pub flag3: bool,
}

/// Everything a scheduler is built from besides the destination list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedOptions {
    pub flags: SchedFlags,
    pub overhead: Overhead,
    /// Seed for schedulers that draw random numbers (twos). Fixed in tests.
    pub seed: u64,
}

/// One IPVS scheduler instance, owned by one service.
pub trait Scheduler: Send + fmt::Debug {
    /// The ipvsadm name (`rr`, `wrr`, ...).
    fn name(&self) -> &'static str;

    /// Told after every change of the destination list (see [`Change`]).
    fn on_change(&mut self, dests: &[Dest], change: Change);

    /// Picks a destination for a new connection: an index into `dests`, or `None` when no
    /// destination is eligible (IPVS then answers ICMP unreachable).
    fn schedule(&mut self, dests: &[Dest], req: &Request) -> Option<usize>;
}

/// The ipvsadm names of all schedulers nfvs implements.
pub const NAMES: &[&str] = &["rr", "wrr"];

/// An ipvsadm scheduler name nfvs does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler '{0}' (known: rr, wrr)")]
pub struct UnknownScheduler(pub String);

/// Builds the scheduler named `name` for a service whose current list is `dests`.
pub fn new(
    name: &str,
    opts: &SchedOptions,
    dests: &[Dest],
) -> Result<Box<dyn Scheduler>, UnknownScheduler> {
    let mut s: Box<dyn Scheduler> = match name {
        "rr" => Box::new(rr::RoundRobin::new(opts)),
        "wrr" => Box::new(wrr::WeightedRoundRobin::new(opts)),
        _ => return Err(UnknownScheduler(name.to_string())),
    };
    s.on_change(dests, Change::Init);
    Ok(s)
}

pub mod rr;
pub mod wrr;

/// A destination that may take new connections: weight > 0 and not overloaded.
pub(crate) fn usable(d: &Dest) -> bool {
    !d.overloaded && d.weight > 0
}

/// Greatest common divisor (the kernel's `gcd()` from lib/math/gcd.c, on non-negative values).
pub(crate) fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a, b);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
