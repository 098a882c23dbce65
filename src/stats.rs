//! Traffic counters and IPVS's rate estimator, as pure data: what `ipvsadm -L --stats` and
//! `--rate` print (lvs-semantics.md §9.3-9.4).
//!
//! The daemon feeds [`Counters`] deltas (from conntrack accounting) into a [`StatsTable`] and
//! calls [`StatsTable::tick`] every [`ESTIMATOR_INTERVAL`]; the listing code reads it back
//! through [`StatsSource`], which another storage may implement instead.
//!
//! The model mirrors the kernel's `struct ip_vs_stats` (include/net/ip_vs.h): cumulative
//! counters that only grow (`kstats`), a zero point taken by `ipvsadm -Z` (`kstats0`; what is
//! shown is the difference), and an estimator that reads the cumulative counters every two
//! seconds (net/netfilter/ipvs/ip_vs_est.c).

use std::collections::HashMap;
use std::time::Duration;

use crate::service::{DestId, ServiceKey};

/// How often the owner must call [`RateEstimator::tick`]: IPVS estimates every 2 s
/// (ip_vs_est.c: "We measure rate during the last 8 seconds every 2 seconds").
pub const ESTIMATOR_INTERVAL: Duration = Duration::from_secs(2);

/// Traffic counters of a service or real server (IPVS's `struct ip_vs_kstats` counters).
///
/// `conns` counts connections scheduled (persistence templates excluded); packets and bytes
/// are per direction, "in" being client to server; bytes are IP packet lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
}

impl Counters {
    /// Adds `other` field by field. Wrapping, like the kernel's u64 counters: a counter that
    /// overflows must not take the daemon down.
    pub fn add(&mut self, other: &Counters) {
        self.conns = self.conns.wrapping_add(other.conns);
        self.inpkts = self.inpkts.wrapping_add(other.inpkts);
        self.outpkts = self.outpkts.wrapping_add(other.outpkts);
        self.inbytes = self.inbytes.wrapping_add(other.inbytes);
        self.outbytes = self.outbytes.wrapping_add(other.outbytes);
    }

    /// `self - other` field by field, wrapping as the kernel's `kstats - kstats0` does
    /// (ip_vs_ctl.c, ip_vs_copy_stats).
    pub fn sub(&self, other: &Counters) -> Counters {
        Counters {
            conns: self.conns.wrapping_sub(other.conns),
            inpkts: self.inpkts.wrapping_sub(other.inpkts),
            outpkts: self.outpkts.wrapping_sub(other.outpkts),
            inbytes: self.inbytes.wrapping_sub(other.inbytes),
            outbytes: self.outbytes.wrapping_sub(other.outbytes),
        }
    }
}

/// Estimated rates, per second, as `ipvsadm -L --rate` prints them: connections, packets and
/// bytes per second in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rates {
    pub cps: u64,
    pub inpps: u64,
    pub outpps: u64,
    pub inbps: u64,
    pub outbps: u64,
}

/// IPVS's rate estimator (ip_vs_est.c, `ip_vs_chain_estimation` and `ip_vs_read_estimator`).
///
/// Every 2 s the owner calls [`tick`](Self::tick) with the cumulative counters. For each
/// quantity the delta since the last tick is the sample; the average moves a quarter of the
/// way to it: `avg += (sample - avg) >> 2`, in signed 64-bit arithmetic (the shift rounds
/// toward minus infinity, so a falling average decays to exactly 0). The averages are fixed
/// point: conns and packets per second scaled by 2^10 (sample = delta << 9, that is the
/// delta over 2 s times 2^10), bytes per second scaled by 2^5 (sample = delta << 4).
/// [`rates`](Self::rates) reports them rounded: `(avg + 0x1FF) >> 10` and `(avg + 0xF) >> 5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateEstimator {
    last: Counters,
    cps: u64,
    inpps: u64,
    outpps: u64,
    inbps: u64,
    outbps: u64,
}

/// One estimator step for one quantity: `avg += ((s64)rate - (s64)avg) >> 2`.
fn ewma(avg: &mut u64, now: u64, last: u64, shift: u32) {
    let rate = now.wrapping_sub(last).wrapping_shl(shift);
    let step = (rate as i64).wrapping_sub(*avg as i64) >> 2;
    *avg = avg.wrapping_add(step as u64);
}

impl RateEstimator {
    /// A new estimator whose first sample will be measured from `start` (the counters at the
    /// moment the service or real server appeared, normally all zero). Rates start at 0.
    pub fn new(start: &Counters) -> RateEstimator {
        RateEstimator { last: *start, ..RateEstimator::default() }
    }

    /// One 2-second step, with the cumulative counters now.
    pub fn tick(&mut self, total: &Counters) {
        let last = self.last;
        // conns and packets: scaled by 2^10, divided by 2 seconds.
        ewma(&mut self.cps, total.conns, last.conns, 9);
        ewma(&mut self.inpps, total.inpkts, last.inpkts, 9);
        ewma(&mut self.outpps, total.outpkts, last.outpkts, 9);
        // bytes: scaled by 2^5, divided by 2 seconds.
        ewma(&mut self.inbps, total.inbytes, last.inbytes, 4);
        ewma(&mut self.outbps, total.outbytes, last.outbytes, 4);
        self.last = *total;
    }

    /// The rates as IPVS reports them (ip_vs_read_estimator).
    pub fn rates(&self) -> Rates {
        Rates {
            cps: self.cps.wrapping_add(0x1FF) >> 10,
            inpps: self.inpps.wrapping_add(0x1FF) >> 10,
            outpps: self.outpps.wrapping_add(0x1FF) >> 10,
            inbps: self.inbps.wrapping_add(0xF) >> 5,
            outbps: self.outbps.wrapping_add(0xF) >> 5,
        }
    }

    /// `ipvsadm -Z`: the rates drop to 0 and the next sample is measured from `total`
    /// (ip_vs_zero_estimator).
    pub fn reset(&mut self, total: &Counters) {
        *self = RateEstimator::new(total);
    }
}

/// Counters and estimator of one service or real server: the kernel's `struct ip_vs_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsEntry {
    /// Cumulative since creation; never reset (`kstats`).
    total: Counters,
    /// The value of `total` at the last `-Z` (`kstats0`).
    zero_point: Counters,
    est: RateEstimator,
}

impl StatsEntry {
    pub fn new() -> StatsEntry {
        StatsEntry::default()
    }
    /// Accounts new traffic.
    pub fn add(&mut self, delta: &Counters) {
        self.total.add(delta);
    }
    /// Takes back one connection counted since the last estimator step and the last `-Z`
    /// (a connection whose conntrack entry could not be created: IPVS counts a connection only
    /// once it exists, ip_vs_conn_stats). One counted before either stays counted: taking it
    /// back would show a negative rate or wrap the zeroed counter. Returns whether it did.
    pub fn uncount_conn(&mut self) -> bool {
        if self.total.conns > self.zero_point.conns.max(self.est.last.conns) {
            self.total.conns -= 1;
            true
        } else {
            false
        }
    }
    /// One estimator step; see [`RateEstimator::tick`].
    pub fn tick(&mut self) {
        self.est.tick(&self.total);
    }
    /// `-Z`: counters shown restart from 0, rates are zeroed (ip_vs_zero_stats).
    pub fn zero(&mut self) {
        self.zero_point = self.total;
        self.est.reset(&self.total);
    }
    /// The counters `--stats` shows: traffic since creation or the last `-Z`.
    pub fn counters(&self) -> Counters {
        self.total.sub(&self.zero_point)
    }
    pub fn rates(&self) -> Rates {
        self.est.rates()
    }
}

/// Where the listing code reads counters and rates from. A service or real server the source
/// knows nothing about reads as all zeros.
pub trait StatsSource {
    fn service(&self, key: &ServiceKey) -> (Counters, Rates);
    fn dest(&self, key: &ServiceKey, dest: DestId) -> (Counters, Rates);
}

/// A source with no traffic at all (every value 0): what a freshly started director shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStats;

impl StatsSource for NoStats {
    fn service(&self, _key: &ServiceKey) -> (Counters, Rates) {
        Default::default()
    }
    fn dest(&self, _key: &ServiceKey, _dest: DestId) -> (Counters, Rates) {
        Default::default()
    }
}

/// Per-service and per-real-server statistics, as IPVS keeps them: traffic through a real
/// server counts for it and for its service; the service keeps what its deleted servers
/// carried.
#[derive(Debug, Default)]
pub struct StatsTable {
    services: HashMap<ServiceKey, StatsEntry>,
    dests: HashMap<(ServiceKey, DestId), StatsEntry>,
}

impl StatsTable {
    pub fn new() -> StatsTable {
        StatsTable::default()
    }

    /// Accounts `delta` to the service and, if given, to one of its real servers.
    pub fn record(&mut self, key: &ServiceKey, dest: Option<DestId>, delta: &Counters) {
        self.services.entry(*key).or_default().add(delta);
        if let Some(id) = dest {
            self.dests.entry((*key, id)).or_default().add(delta);
        }
    }

    /// [`StatsEntry::uncount_conn`] for the service and one of its real servers.
    pub fn uncount_conn(&mut self, key: &ServiceKey, dest: DestId) {
        if let Some(e) = self.services.get_mut(key) {
            e.uncount_conn();
        }
        if let Some(e) = self.dests.get_mut(&(*key, dest)) {
            e.uncount_conn();
        }
    }

    /// One estimator step for every entry; call every [`ESTIMATOR_INTERVAL`].
    pub fn tick(&mut self) {
        self.services.values_mut().for_each(StatsEntry::tick);
        self.dests.values_mut().for_each(StatsEntry::tick);
    }

    /// `-Z [service]`: zeroes one service and its real servers, or everything.
    pub fn zero(&mut self, key: Option<&ServiceKey>) {
        for (k, e) in self.services.iter_mut() {
            if key.is_none_or(|want| want == k) {
                e.zero();
            }
        }
        for ((k, _), e) in self.dests.iter_mut() {
            if key.is_none_or(|want| want == k) {
                e.zero();
            }
        }
    }

    /// Forgets a deleted service and its real servers (a re-created one starts from 0).
    pub fn remove_service(&mut self, key: &ServiceKey) {
        self.services.remove(key);
        self.dests.retain(|(k, _), _| k != key);
    }

    /// Forgets a deleted real server; its traffic stays counted in the service.
    pub fn remove_dest(&mut self, key: &ServiceKey, dest: DestId) {
        self.dests.remove(&(*key, dest));
    }
}

impl StatsSource for StatsTable {
    fn service(&self, key: &ServiceKey) -> (Counters, Rates) {
        self.services.get(key).map(|e| (e.counters(), e.rates())).unwrap_or_default()
    }
    fn dest(&self, key: &ServiceKey, dest: DestId) -> (Counters, Rates) {
        self.dests.get(&(*key, dest)).map(|e| (e.counters(), e.rates())).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use std::net::Ipv4Addr;

    fn conns(n: u64) -> Counters {
        Counters { conns: n, ..Counters::default() }
    }

    #[test]
    fn uncount_takes_back_only_what_came_after_the_last_tick_and_zero() {
        let mut e = StatsEntry::new();
        e.add(&conns(3));
        assert!(e.uncount_conn());
        assert_eq!(e.counters().conns, 2);
        // Counted before the estimator's last step: stays (a negative step would show a
        // huge rate).
        e.tick();
        assert!(!e.uncount_conn());
        assert_eq!(e.counters().conns, 2);
        assert!(e.rates().cps < 1000, "{:?}", e.rates());
        // Counted before -Z: stays (the zeroed counter must not wrap below 0).
        e.add(&conns(1));
        e.zero();
        assert!(!e.uncount_conn());
        assert_eq!(e.counters().conns, 0);
        e.add(&conns(1));
        assert!(e.uncount_conn());
        assert_eq!(e.counters().conns, 0);
        e.tick();
        assert!(e.rates().cps < 1000, "{:?}", e.rates());
    }

    #[test]
    fn table_uncount_applies_to_service_and_server() {
        let key = ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::new(10, 0, 0, 1), port: 80 };
        let mut t = StatsTable::new();
        t.record(&key, Some(DestId(1)), &conns(2));
        t.uncount_conn(&key, DestId(1));
        assert_eq!(t.service(&key).0.conns, 1);
        assert_eq!(t.dest(&key, DestId(1)).0.conns, 1);
        // A server deleted in between: its service still gives the count back.
        t.remove_dest(&key, DestId(1));
        t.uncount_conn(&key, DestId(1));
        assert_eq!(t.service(&key).0.conns, 0);
        // An unknown service is left alone.
        let other = ServiceKey { port: 81, ..key };
        t.uncount_conn(&other, DestId(1));
        assert_eq!(t.service(&other).0.conns, 0);
    }

    /// A steady 50 connections per second (100 per 2-second tick). The fixed-point average
    /// (scaled by 2^10; the sample is 100 << 9 = 51200) climbs a quarter of the remaining way
    /// each tick; the reported value is (avg + 511) >> 10:
    ///
    /// | tick | avg (exact)                      | reported |
    /// |------|----------------------------------|----------|
    /// | 1    | 0 + 51200/4 = 12800              | 12 (12.5 rounds down: +0x1FF is just under a half) |
    /// | 2    | 12800 + 38400/4 = 22400          | 22 (21.875) |
    /// | 3    | 22400 + 28800/4 = 29600          | 29 (28.906) |
    /// | 4    | 29600 + 21600/4 = 35000          | 34 (34.180) |
    /// | 5    | 35000 + 16200/4 = 39050          | 38 (38.135) |
    #[test]
    fn estimator_rises_a_quarter_per_tick() {
        let mut e = RateEstimator::new(&Counters::default());
        let mut got = Vec::new();
        for t in 1..=5 {
            e.tick(&conns(100 * t));
            got.push(e.rates().cps);
        }
        assert_eq!(got, [12, 22, 29, 34, 38]);
        assert_eq!(e.cps, 39050);
        // Converges on the true rate: 50 cps.
        for t in 6..=60 {
            e.tick(&conns(100 * t));
        }
        assert_eq!(e.rates().cps, 50);
    }

    /// Bytes are scaled by 2^5: 3200 bytes in 2 s (1600 B/s) is a sample of 3200 << 4 =
    /// 51200; after one tick avg = 12800, reported (12800 + 15) >> 5 = 400.
    #[test]
    fn estimator_bytes_scale() {
        let mut e = RateEstimator::new(&Counters::default());
        e.tick(&Counters { inbytes: 3200, outbytes: 6400, inpkts: 20, outpkts: 10, conns: 2 });
        // conns 2 -> sample 1024, avg 256, (256+511)>>10 = 0; inpkts 20 -> avg 2560, 3071>>10 = 2;
        // outpkts 10 -> avg 1280 -> 1; outbytes 6400 -> 102400/4 = 25600, 25615>>5 = 800.
        assert_eq!(e.rates(), Rates { cps: 0, inpps: 2, outpps: 1, inbps: 400, outbps: 800 });
    }

    /// When traffic stops the average decays, and the arithmetic shift (rounding toward minus
    /// infinity) takes it to exactly 0: avg 3 -> 3 + (-3 >> 2 = -1) = 2 -> 1 -> 0.
    #[test]
    fn estimator_decays_to_zero() {
        let mut e = RateEstimator::new(&Counters::default());
        e.cps = 3;
        let idle = Counters::default();
        let mut seen = Vec::new();
        for _ in 0..4 {
            e.tick(&idle);
            seen.push(e.cps);
        }
        assert_eq!(seen, [2, 1, 0, 0]);
        // From a real rate: 51200 -> 38400 -> 28800 (each -1/4).
        let mut e = RateEstimator::new(&Counters::default());
        e.cps = 51200;
        e.tick(&idle);
        assert_eq!(e.cps, 38400);
        e.tick(&idle);
        assert_eq!(e.cps, 28800);
    }

    #[test]
    fn zeroing_restarts_counters_and_rates() {
        let key = ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::new(10, 0, 0, 1), port: 80 };
        let mut t = StatsTable::new();
        let d = DestId(7);
        let c = Counters { conns: 1, inpkts: 6, outpkts: 5, inbytes: 400, outbytes: 840 };
        t.record(&key, Some(d), &c);
        t.record(&key, None, &conns(1));
        t.tick();
        assert_eq!(t.service(&key).0.conns, 2);
        assert_eq!(t.dest(&key, d).0, c);
        // 400 B in 2 s: avg (400 << 4) / 4 = 1600, (1600 + 15) >> 5 = 50 B/s.
        assert_eq!(t.dest(&key, d).1.inbps, 50);
        // 1000 more connections arrive, then -Z before the estimator saw them.
        t.record(&key, Some(d), &conns(1000));
        t.zero(Some(&key));
        assert_eq!(t.service(&key), Default::default());
        assert_eq!(t.dest(&key, d), Default::default());
        // The next sample is measured from the zero point: 8 conns -> avg (8 << 9) / 4 = 1024,
        // (1024 + 511) >> 10 = 1 cps (the 1000 before -Z would have given about 125).
        t.record(&key, Some(d), &conns(8));
        t.tick();
        assert_eq!(t.dest(&key, d).0.conns, 8);
        assert_eq!(t.dest(&key, d).1.cps, 1);
    }

    #[test]
    fn deleted_dest_traffic_stays_in_service() {
        let key = ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::new(10, 0, 0, 1), port: 80 };
        let mut t = StatsTable::new();
        t.record(&key, Some(DestId(1)), &conns(3));
        t.remove_dest(&key, DestId(1));
        assert_eq!(t.dest(&key, DestId(1)).0.conns, 0);
        assert_eq!(t.service(&key).0.conns, 3);
        t.remove_service(&key);
        assert_eq!(t.service(&key).0.conns, 0);
    }

    #[test]
    fn counters_wrap_instead_of_panicking() {
        let mut c = Counters { conns: u64::MAX, ..Default::default() };
        c.add(&conns(2));
        assert_eq!(c.conns, 1);
        assert_eq!(conns(1).sub(&conns(2)).conns, u64::MAX);
    }
}
