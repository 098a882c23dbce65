//! The destination-address cache shared by lblc and lblcr (`struct ip_vs_lblc_table` /
//! `ip_vs_lblcr_table`, lvs-semantics.md §2.9-2.10): 1024 buckets chosen by
//! `hash_32(daddr, 10)`, a `lastuse` time per entry, and the 60-second garbage-collection timer
//! (`ip_vs_lblc_check_expire` / `ip_vs_lblcr_check_expire`, identical logic).
//!
//! The kernel's timer runs from `init_service`; ours has no clock of its own, so it is anchored
//! at the first `now` the scheduler sees and run, tick by tick, before each lookup for every
//! 60 s boundary that has passed. Only the phase of the timer relative to the service's
//! creation differs from the kernel (nobody can observe it: the default expiry is 24 h checked
//! every 30 minutes).

use std::net::Ipv4Addr;
use std::time::Duration;

use super::hash::hash_32;

/// `IP_VS_LBLC_TAB_BITS` (CONFIG_IP_VS_LBLC_TAB_BITS default 10).
const TAB_BITS: u32 = 10;
const TAB_SIZE: usize = 1 << TAB_BITS;
/// `tbl->max_size = IP_VS_LBLC_TAB_SIZE * 16`.
pub(crate) const MAX_SIZE: usize = TAB_SIZE * 16;
/// `CHECK_EXPIRE_INTERVAL`: the GC timer period.
const CHECK_EXPIRE_INTERVAL: Duration = Duration::from_secs(60);
/// `ENTRY_TIMEOUT`: idle time after which an entry may go when the table is over `MAX_SIZE`.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(6 * 60);
/// `COUNT_FOR_FULL_EXPIRATION`: a full expiry check every 30 quiet timer runs.
const COUNT_FOR_FULL_EXPIRATION: u32 = 30;

#[derive(Debug, Clone)]
pub(crate) struct Entry<V> {
    pub addr: Ipv4Addr,
    pub lastuse: Duration,
    pub value: V,
}

#[derive(Debug)]
pub(crate) struct Table<V> {
    /// Bucket order inside a bucket does not matter to any outcome: lookups match one address,
    /// and the GC removes every expired entry of a bucket before it checks its goal.
    buckets: Vec<Vec<Entry<V>>>,
    entries: usize,
    /// `rover`: where the next partial GC continues.
    rover: usize,
    /// `counter`: quiet timer runs since the last full check (starts at 1).
    counter: u32,
    /// When the timer fires next; `None` until the first lookup anchors it.
    next_check: Option<Duration>,
    /// `sysctl_lblc_expiration` / `sysctl_lblcr_expiration`.
    expiration: Duration,
}

fn bucket_of(addr: Ipv4Addr) -> usize {
    hash_32(u32::from(addr), TAB_BITS) as usize
}

impl<V> Table<V> {
    pub(crate) fn new(expiration: Duration) -> Self {
        Table {
            buckets: (0..TAB_SIZE).map(|_| Vec::new()).collect(),
            entries: 0,
            rover: 0,
            counter: 1,
            next_check: None,
            expiration,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    pub(crate) fn get(&self, addr: Ipv4Addr) -> Option<&Entry<V>> {
        self.buckets[bucket_of(addr)].iter().find(|e| e.addr == addr)
    }

    pub(crate) fn get_mut(&mut self, addr: Ipv4Addr) -> Option<&mut Entry<V>> {
        self.buckets[bucket_of(addr)].iter_mut().find(|e| e.addr == addr)
    }

    pub(crate) fn remove(&mut self, addr: Ipv4Addr) -> Option<Entry<V>> {
        let b = &mut self.buckets[bucket_of(addr)];
        let i = b.iter().position(|e| e.addr == addr)?;
        self.entries -= 1;
        Some(b.swap_remove(i))
    }

    /// Adds an entry for an address that has none, unless the table already holds
    /// `MAX_SIZE * 3 / 2` entries (the 2026 kernels' cap; the scheduled server is then used
    /// without being cached). Returns whether it was added.
    pub(crate) fn insert(&mut self, addr: Ipv4Addr, now: Duration, value: V) -> bool {
        if self.entries >= MAX_SIZE * 3 / 2 {
            return false;
        }
        self.buckets[bucket_of(addr)].push(Entry { addr, lastuse: now, value });
        self.entries += 1;
        true
    }

    /// Records a connection that already exists ([`super::Scheduler::restore`], after the
    /// daemon restarted): runs the timer up to `now`, then applies `update` to `addr`'s entry
    /// and moves its last use up to `now` (never back), or adds an entry made by `new`.
    pub(crate) fn restore(
        &mut self,
        addr: Ipv4Addr,
        now: Duration,
        update: impl FnOnce(&mut V),
        new: impl FnOnce() -> V,
    ) {
        self.run_timer(now);
        match self.get_mut(addr) {
            Some(en) => {
                update(&mut en.value);
                en.lastuse = en.lastuse.max(now);
            }
            None => {
                self.insert(addr, now, new());
            }
        }
    }

    /// Runs every timer tick due at or before `now`.
    pub(crate) fn run_timer(&mut self, now: Duration) {
        let mut next = *self
            .next_check
            .get_or_insert(now.saturating_add(CHECK_EXPIRE_INTERVAL));
        // `next == Duration::MAX` only with a clock at the end of time: the timer stops there
        // instead of looping.
        while next <= now && next != Duration::MAX {
            if self.entries > MAX_SIZE {
                self.check_expire(next);
                next = next.saturating_add(CHECK_EXPIRE_INTERVAL);
                continue;
            }
            // At or under MAX_SIZE, and with no lookups in between, a tick only counts or runs a
            // full check, and entries only go away; of several full checks in a row only the
            // last one matters (lastuse cannot change in between). Jump to it.
            let period = CHECK_EXPIRE_INTERVAL.as_secs();
            let full = u64::from(COUNT_FOR_FULL_EXPIRATION);
            let ticks = (now - next).as_secs() / period + 1;
            let until_full = (full - u64::from(self.counter) % full) % full;
            let at = |k: u64| next.saturating_add(Duration::from_secs(k.saturating_mul(period)));
            if until_full < ticks {
                let last_full = until_full + (ticks - 1 - until_full) / full * full;
                self.full_check(at(last_full));
                // Fewer than 30 increments follow the last full check.
                self.counter = 1 + (ticks - 1 - last_full) as u32;
            } else {
                // until_full < 30, so ticks < 30 here.
                self.counter += ticks as u32;
            }
            next = at(ticks);
        }
        self.next_check = Some(next);
    }

    /// One run of `ip_vs_lblc_check_expire` at time `now`.
    fn check_expire(&mut self, now: Duration) {
        if self.counter.is_multiple_of(COUNT_FOR_FULL_EXPIRATION) {
            self.full_check(now);
            self.counter = 1;
            return;
        }
        if self.entries <= MAX_SIZE {
            self.counter += 1;
            return;
        }
        let goal = ((self.entries - MAX_SIZE) * 4 / 3).min(MAX_SIZE / 2);
        let mut removed = 0;
        let mut j = self.rover;
        for _ in 0..TAB_SIZE {
            j = (j + 1) % TAB_SIZE;
            let b = &mut self.buckets[j];
            let before = b.len();
            b.retain(|e| now < e.lastuse.saturating_add(ENTRY_TIMEOUT));
            removed += before - b.len();
            self.entries -= before - b.len();
            if removed >= goal {
                break;
            }
        }
        self.rover = j;
    }

    /// `ip_vs_lblc_full_check`: drops every entry idle for at least the expiration. It walks
    /// all buckets from `rover + 1` round to `rover`, so the rover does not move.
    fn full_check(&mut self, now: Duration) {
        let exp = self.expiration;
        for b in &mut self.buckets {
            let before = b.len();
            b.retain(|e| now < e.lastuse.saturating_add(exp));
            self.entries -= before - b.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn addr(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 + i)
    }

    #[test]
    fn full_check_every_thirty_minutes_drops_idle_entries() {
        let mut t: Table<()> = Table::new(secs(3600));
        t.run_timer(secs(0)); // anchors the timer: ticks at 60, 120, ...
        assert!(t.insert(addr(1), secs(0), ()));
        assert!(t.insert(addr(2), secs(1000), ()));
        // Ticks 1..29 (60 s .. 1740 s) only count; tick 30 at 1800 s is a full check, but
        // neither entry is an hour old then.
        t.run_timer(secs(1800));
        assert_eq!(t.len(), 2);
        // The next full check is at 3600 s: entry 1 (lastuse 0) has been idle exactly an hour.
        t.run_timer(secs(3599));
        assert_eq!(t.len(), 2);
        t.run_timer(secs(3600));
        assert_eq!(t.len(), 1);
        assert!(t.get_mut(addr(2)).is_some());
        // Jumping far ahead runs the last full check in one go.
        t.run_timer(secs(100 * 3600));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn tick_by_tick_and_skip_ahead_agree() {
        let mut a: Table<()> = Table::new(secs(600));
        let mut b: Table<()> = Table::new(secs(600));
        for t in [&mut a, &mut b] {
            t.run_timer(secs(7));
            for i in 0..50 {
                t.insert(addr(i), secs(7 + u64::from(i) * 97), ());
            }
        }
        for s in (7..20_000).step_by(13) {
            a.run_timer(secs(s));
            assert!(a.len() <= 50);
        }
        b.run_timer(secs(19_995));
        assert_eq!(a.len(), b.len());
        assert_eq!(a.counter, b.counter);
        assert_eq!(a.next_check, b.next_check);
    }

    #[test]
    fn over_max_size_partial_gc_removes_old_entries_first_run() {
        let mut t: Table<()> = Table::new(secs(86400));
        t.run_timer(secs(0));
        for i in 0..(MAX_SIZE as u32 + 3000) {
            assert!(t.insert(addr(i), secs(0), ()));
        }
        // Nothing is 6 minutes old at the first ticks.
        t.run_timer(secs(300));
        assert_eq!(t.len(), MAX_SIZE + 3000);
        // At 360 s every entry is 6 minutes idle: one run removes at least the goal (4000).
        t.run_timer(secs(360));
        assert!(t.len() <= MAX_SIZE + 3000 - 4000, "{}", t.len());
        assert!(t.len() > MAX_SIZE / 2);
    }

    #[test]
    fn restore_updates_or_adds_and_last_use_never_goes_back() {
        let mut t: Table<u32> = Table::new(secs(86400));
        t.restore(addr(1), secs(50), |v| *v += 1, || 7);
        let e = t.get(addr(1)).expect("added");
        assert_eq!((e.value, e.lastuse), (7, secs(50)));
        t.restore(addr(1), secs(20), |v| *v += 1, || 0);
        let e = t.get(addr(1)).expect("kept");
        assert_eq!((e.value, e.lastuse), (8, secs(50)));
        t.restore(addr(1), secs(90), |v| *v += 1, || 0);
        let e = t.get(addr(1)).expect("kept");
        assert_eq!((e.value, e.lastuse), (9, secs(90)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn insert_is_capped() {
        let mut t: Table<()> = Table::new(secs(86400));
        for i in 0..(MAX_SIZE * 3 / 2) as u32 {
            assert!(t.insert(addr(i), secs(0), ()));
        }
        assert!(!t.insert(addr(999_999), secs(0), ()));
        assert!(t.remove(addr(0)).is_some());
        assert!(t.insert(addr(999_999), secs(0), ()));
    }
}
