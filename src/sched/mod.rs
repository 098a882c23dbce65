//! Schedulers: one file per IPVS scheduler behind the [`Scheduler`] trait, and [`new`], the
//! one place that maps an ipvsadm scheduler name to an implementation.
//!
//! The behaviour of every scheduler is specified in `shared/docs/lvs-semantics.md` (restated
//! from the kernel's `net/netfilter/ipvs/ip_vs_*.c`). Schedulers are pure: they see the
//! service's destination list (in IPVS list order: newest first), the request, and the time
//! passed in; randomness comes from a seeded generator owned by the scheduler.
//!
//! Also here: [`threshold`] (the `-x`/`-y` OVERLOAD logic the connection accounting calls on
//! every bind and unbind) and [`hash`] (`hash_32` and the 64-bit `hsiphash`). Persistence
//! templates are in [`crate::persist`].
//!
//! By default the schedulers that compare connection counts scan the list on every pick, as the
//! kernel does. With [`SchedOptions::incremental`] the caller reports counter changes through
//! [`Scheduler::on_counts`] and they answer from an index instead (`index.rs`): O(1) per pick
//! and O(log n) per change, for pools of hundreds of servers.

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
    /// The overhead as an exact number.
    pub fn of(self, d: &Dest) -> u64 {
        let a = u64::from(d.active);
        let i = u64::from(d.inactive);
        match self {
            Overhead::Classic => (a << 8) + i,
            Overhead::Total => (a << 8) + a + i,
        }
    }

    /// The overhead as `ip_vs_dest_conn_overhead()` returns it: a C `int`, so it wraps (mod
    /// 2^32, the kernel builds with -fno-strict-overflow) once `active` passes 2^23. Only
    /// absurd counts are affected; it is copied so that comparisons match the kernel's.
    #[inline]
    pub fn int(self, d: &Dest) -> i32 {
        self.of(d) as u32 as i32
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
///
/// Build it with `..SchedOptions::default()` so that fields added later keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedOptions {
    pub flags: SchedFlags,
    pub overhead: Overhead,
    /// Seed for schedulers that draw random numbers (twos). Fixed in tests.
    pub seed: u64,
    /// The `lblc_expiration` sysctl: how long an lblc cache entry may stay unused before the
    /// half-hourly full check drops it. Default 24 h (ip_vs_lblc.c DEFAULT_EXPIRATION).
    pub lblc_expiration: Duration,
    /// The `lblcr_expiration` sysctl: idle expiry of lblcr entries, and how long an lblcr
    /// server set must go unmodified before its most loaded member is dropped. Default 24 h.
    pub lblcr_expiration: Duration,
    /// The caller reports every change of a destination's counters or OVERLOAD flag through
    /// [`Scheduler::on_counts`], so lc, wlc, sed, nq, fo, ovf, twos, lblc and lblcr may answer
    /// from an index updated in O(log n) instead of scanning the list on every pick (see
    /// `sched/index.rs`). Off by default: scanning is always exact, whoever changes counters.
    pub incremental: bool,
}

/// Default of the `lblc_expiration` / `lblcr_expiration` sysctls (24 h).
pub const DEFAULT_LOCALITY_EXPIRATION: Duration = Duration::from_secs(24 * 60 * 60);

impl Default for SchedOptions {
    fn default() -> Self {
        SchedOptions {
            flags: SchedFlags::default(),
            overhead: Overhead::default(),
            seed: 0,
            lblc_expiration: DEFAULT_LOCALITY_EXPIRATION,
            lblcr_expiration: DEFAULT_LOCALITY_EXPIRATION,
            incremental: false,
        }
    }
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

    /// Told after the connection counters (`active`, `inactive`) or the OVERLOAD flag of
    /// `dests[index]` changed: a connection was bound, changed TCP state or went away, a
    /// threshold was crossed. Required for every such change when
    /// [`SchedOptions::incremental`] is set; ignored otherwise.
    fn on_counts(&mut self, _dests: &[Dest], _index: usize) {}

    /// Rebuilds state from a connection that already exists, e.g. one found in the conntrack
    /// dump when the daemon restarts: `dests[chosen]` was scheduled for `req` earlier. Only
    /// lblc and lblcr keep per-connection state (their destination-address cache, which this
    /// points at `chosen` with last use `req.now`); the others ignore it.
    fn restore(&mut self, _dests: &[Dest], _req: &Request, _chosen: usize) {}
}

/// The ipvsadm names of all schedulers nfvs implements, in the order of lvs-semantics.md §2.
pub const NAMES: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "sed", "nq", "fo", "ovf", "lblc", "lblcr", "dh", "sh", "mh", "twos",
];

/// An ipvsadm scheduler name nfvs does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown scheduler '{0}' (known: rr, wrr, lc, wlc, sed, nq, fo, ovf, lblc, lblcr, dh, sh, mh, twos)"
)]
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
        "lc" => Box::new(lc::LeastConnection::new(opts)),
        "wlc" => Box::new(wlc::WeightedLeastConnection::new(opts)),
        "sed" => Box::new(sed::ShortestExpectedDelay::new(opts)),
        "nq" => Box::new(nq::NeverQueue::new(opts)),
        "fo" => Box::new(fo::WeightedFailover::new(opts)),
        "ovf" => Box::new(ovf::WeightedOverflow::new(opts)),
        "lblc" => Box::new(lblc::Lblc::new(opts)),
        "lblcr" => Box::new(lblcr::Lblcr::new(opts)),
        "dh" => Box::new(dh::DestinationHashing::new(opts)),
        "sh" => Box::new(sh::SourceHashing::new(opts)),
        "mh" => Box::new(mh::MaglevHashing::new(opts)),
        "twos" => Box::new(twos::TwoChoices::new(opts)),
        _ => return Err(UnknownScheduler(name.to_string())),
    };
    s.on_change(dests, Change::Init);
    Ok(s)
}

/// The common eligibility test of rr, wrr, lc, wlc, ...: weight > 0 and no OVERLOAD flag
/// (lvs-semantics.md §1.3).
#[inline]
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

/// Where each destination stands in the list, by id: lets the schedulers that remember
/// destinations across calls (lblc, lblcr) find them again in O(1). Rebuilt on every
/// [`Change`]; a lookup is checked against the list it is used on, and falls back to a scan if
/// the list changed without notice.
#[derive(Debug, Default)]
pub(crate) struct DestIndex(std::collections::HashMap<crate::service::DestId, usize>);

impl DestIndex {
    pub(crate) fn rebuild(&mut self, dests: &[Dest]) {
        self.0.clear();
        self.0.extend(dests.iter().enumerate().map(|(i, d)| (d.id, i)));
    }

    /// The index of `id` in `dests`, or `None` if it is no longer in the service.
    pub(crate) fn find(&self, dests: &[Dest], id: crate::service::DestId) -> Option<usize> {
        locate(dests, self.0.get(&id).copied(), id)
    }
}

/// Where destination `id` stands in `dests` now: at `hint` (the index remembered with it) when
/// the list did not shift, else wherever it moved; `None` once it left the service.
pub(crate) fn locate(dests: &[Dest], hint: Option<usize>, id: crate::service::DestId) -> Option<usize> {
    match hint {
        Some(i) if dests.get(i).is_some_and(|d| d.id == id) => Some(i),
        _ => dests.iter().position(|d| d.id == id),
    }
}

/// `oh_a / w_a > oh_b / w_b` as wlc, sed, nq, lblc and lblcr evaluate it:
/// `(__s64)loh * weight(d) > (__s64)doh * weight(least)`, with the overheads as the kernel's
/// `int` (see [`Overhead::int`]) and the weights as `int` (the kernel refuses weights above
/// `INT_MAX`). The products cannot overflow 64 bits.
#[inline]
pub(crate) fn ratio_gt(oh_a: i32, w_a: u32, oh_b: i32, w_b: u32) -> bool {
    i64::from(oh_a) * i64::from(w_b as i32) > i64::from(oh_b) * i64::from(w_a as i32)
}

pub mod dh;
pub mod fo;
pub mod hash;
mod index;
pub mod lblc;
pub mod lblcr;
pub mod lc;
mod locality;
pub mod mh;
pub mod nq;
pub mod ovf;
pub mod rr;
pub mod sed;
pub mod sh;
pub mod threshold;
pub mod twos;
pub mod wlc;
pub mod wrr;


