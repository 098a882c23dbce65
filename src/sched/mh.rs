//! mh: Maglev hashing (`ip_vs_mh.c`, kernel 4.18+, lvs-semantics.md §2.13).
//!
//! A lookup table of M = 4093 slots (CONFIG_IP_VS_MH_TAB_INDEX = 12, Debian's and the default),
//! rebuilt on add, edit and delete. Every server has a permutation of the slots from two
//! SipHash values of `port + address` (`offset = H1 mod M`, `skip = H2 mod (M - 1) + 1`) and a
//! number of turns from its **last non-zero weight** (`last_weight`); rounds over the list let
//! each server claim `turns` free slots from its permutation until every slot is taken. Because
//! the table is built from `last_weight`, setting a weight to 0 does not move any slot: the
//! server just becomes unusable at lookup.
//!
//! Lookup: slot `H1(cport + caddr) mod M` (port only with `mh-port`, flag 2). Its server is
//! returned if it has weight > 0 and no OVERLOAD; otherwise none, or with `mh-fallback` (flag 1)
//! the slots `H1(((s + j) mod M) + port + caddr) mod M` for j = 0..M-1 are probed (the input is
//! re-hashed for each probe) and the first usable server wins.
//!
//! The hash is the 64-bit kernels' `hsiphash` ([`super::hash::hsiphash_u32`]); 32-bit kernels
//! use HalfSipHash and build different tables.

use super::hash::{hsiphash_u32, SipKey};
use super::*;
use crate::service::DestId;

/// `primes[IP_VS_MH_TAB_INDEX]` with CONFIG_IP_VS_MH_TAB_INDEX = 12 (index 12 - 8 = 4).
pub const TAB_SIZE: u32 = 4093;
/// `IP_VS_MH_TAB_BITS` = CONFIG_IP_VS_MH_TAB_INDEX / 2: weights / gcd are shifted down to at
/// most this many bits.
const TAB_BITS: u32 = 6;

/// `generate_hash_secret`: fixed keys, so every director computes the same table.
const KEY1: SipKey = SipKey(2_654_435_761, 2_654_435_761);
const KEY2: SipKey = SipKey(2_654_446_892, 2_654_446_892);

#[derive(Debug)]
pub struct MaglevHashing {
    fallback: bool,
    port: bool,
    /// Server index (and id, guarding it) of each slot; empty when no server has a positive
    /// last weight (`ip_vs_mh_reset`).
    lookup: Vec<(u32, DestId)>,
}

/// `ip_vs_mh_hashkey`: hsiphash of the 32-bit sum `offset + port + addr`.
#[inline]
fn hashkey(addr: u32, port: u16, key: SipKey, offset: u32) -> u32 {
    hsiphash_u32(offset.wrapping_add(u32::from(port)).wrapping_add(addr), key)
}

/// `struct ip_vs_mh_dest_setup`.
#[derive(Debug, Clone, Copy)]
struct Setup {
    skip: u32,
    perm: u32,
    turns: u32,
}

impl MaglevHashing {
    pub fn new(opts: &SchedOptions) -> Self {
        MaglevHashing { fallback: opts.flags.flag1, port: opts.flags.flag2, lookup: Vec::new() }
    }

    /// `ip_vs_mh_dest_changed` / `ip_vs_mh_init_svc`: gcd, shift, permutation, population.
    fn reassign(&mut self, dests: &[Dest]) {
        // ip_vs_mh_reassign refuses more servers than slots (-EINVAL) and keeps the old table.
        if dests.len() > TAB_SIZE as usize {
            return;
        }
        // ip_vs_mh_gcd_weight over last_weight > 0; 0 when there is none.
        let g = dests
            .iter()
            .map(|d| i64::from(d.last_weight as i32))
            .filter(|&w| w > 0)
            .fold(0, gcd);
        if g < 1 {
            self.lookup.clear();
            return;
        }
        // ip_vs_mh_shift_weight: fls(max_last_weight / gcd) - TAB_BITS, at least 0.
        let mw = dests.iter().map(|d| i64::from(d.last_weight as i32)).max().unwrap_or(0) / g;
        let fls = 64 - (mw as u64).leading_zeros();
        let rshift = fls.saturating_sub(TAB_BITS);

        // ip_vs_mh_permutate
        let mut setup: Vec<Setup> = dests
            .iter()
            .map(|d| {
                let v = u32::from(d.addr);
                let offset = hashkey(v, d.port, KEY1, 0) % TAB_SIZE;
                let skip = hashkey(v, d.port, KEY2, 0) % (TAB_SIZE - 1) + 1;
                let lw = i64::from(d.last_weight as i32);
                let t = (lw / g) >> rshift;
                let turns = if t != 0 { t } else { i64::from(lw != 0) };
                Setup { skip, perm: offset, turns: turns.clamp(0, i64::from(u32::MAX)) as u32 }
            })
            .collect();

        // ip_vs_mh_populate: rounds over the list; each server with turns > 0 claims `turns`
        // slots, each the next free one of its permutation. g >= 1 means some server has
        // turns >= 1, so every round claims at least one slot and the loop ends.
        let m = TAB_SIZE as usize;
        let mut taken = vec![false; m];
        let placeholder = dests[0].id;
        let mut lookup = vec![(0u32, placeholder); m];
        let mut n = 0usize;
        'rounds: while n < m {
            for (i, ds) in setup.iter_mut().enumerate() {
                for _ in 0..ds.turns {
                    let mut c = ds.perm as usize;
                    while taken[c] {
                        ds.perm += ds.skip;
                        if ds.perm >= TAB_SIZE {
                            ds.perm -= TAB_SIZE;
                        }
                        c = ds.perm as usize;
                    }
                    taken[c] = true;
                    lookup[c] = (i as u32, dests[i].id);
                    n += 1;
                    if n == m {
                        break 'rounds;
                    }
                }
            }
        }
        self.lookup = lookup;
    }

    /// The server of slot `s`, as an index into `dests`.
    fn slot(&self, dests: &[Dest], s: u32) -> Option<usize> {
        let &(i, id) = self.lookup.get(s as usize)?;
        locate(dests, Some(i as usize), id)
    }
}

impl Scheduler for MaglevHashing {
    fn name(&self) -> &'static str {
        "mh"
    }

    fn on_change(&mut self, dests: &[Dest], _change: Change) {
        self.reassign(dests);
    }

    fn schedule(&mut self, dests: &[Dest], req: &Request) -> Option<usize> {
        let port = if self.port { req.cport } else { 0 };
        let addr = u32::from(req.caddr);
        let ihash = hashkey(addr, port, KEY1, 0) % TAB_SIZE;
        let i = self.slot(dests, ihash)?;
        if usable(&dests[i]) {
            return Some(i);
        }
        if !self.fallback {
            return None;
        }
        for offset in 0..TAB_SIZE {
            let roffset = (offset + ihash) % TAB_SIZE;
            let i = self.slot(dests, hashkey(addr, port, KEY1, roffset) % TAB_SIZE)?;
            if usable(&dests[i]) {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    fn seed_lab() -> Vec<Dest> {
        vec![
            Dest::new(DestId(1), Ipv4Addr::new(192, 168, 226, 131), 80, 1),
            Dest::new(DestId(0), Ipv4Addr::new(192, 168, 226, 130), 80, 1),
        ]
    }

    /// MH-1 (lvs-semantics.md §2.13; see the caveat there): permutation parameters, slot
    /// ownership and the clients' slots.
    #[test]
    fn mh_1_numbers() {
        let v131 = ip("192.168.226.131");
        let v130 = ip("192.168.226.130");
        assert_eq!(hashkey(v131, 80, KEY1, 0) % TAB_SIZE, 1676);
        assert_eq!(hashkey(v131, 80, KEY2, 0) % (TAB_SIZE - 1) + 1, 1207);
        assert_eq!(hashkey(v130, 80, KEY1, 0) % TAB_SIZE, 1386);
        assert_eq!(hashkey(v130, 80, KEY2, 0) % (TAB_SIZE - 1) + 1, 3231);

        let dests = seed_lab();
        let mut mh = MaglevHashing::new(&SchedOptions::default());
        mh.on_change(&dests, Change::Init);
        let owned = |i: u32| mh.lookup.iter().filter(|(x, _)| *x == i).count();
        assert_eq!((owned(0), owned(1)), (2047, 2046));

        let slots: Vec<u32> =
            (1..=8).map(|h| hashkey(ip(&format!("203.0.113.{h}")), 0, KEY1, 0) % TAB_SIZE).collect();
        assert_eq!(slots, [1505, 1436, 907, 3568, 3219, 2905, 1705, 2723]);
        let c1 = ip("203.0.113.1");
        let ports: Vec<u32> = [40000, 40001, 40002].iter().map(|&p| hashkey(c1, p, KEY1, 0) % TAB_SIZE).collect();
        assert_eq!(ports, [1337, 3296, 2430]);
    }

    #[test]
    fn weight_zero_keeps_the_table_added_weight_zero_gets_no_slot() {
        let mut dests = seed_lab();
        let mut mh = MaglevHashing::new(&SchedOptions::default());
        mh.on_change(&dests, Change::Init);
        let before = mh.lookup.clone();
        dests[0].weight = 0; // -e -w 0: last_weight stays 1
        mh.on_change(&dests, Change::Edited(0));
        assert_eq!(mh.lookup, before);
        // A destination added with weight 0 has last_weight 0: no slots.
        dests.insert(0, Dest::new(DestId(2), Ipv4Addr::new(192, 168, 226, 132), 80, 0));
        mh.on_change(&dests, Change::Added(0));
        assert!(mh.lookup.iter().all(|&(_, id)| id != DestId(2)));
        assert_eq!(mh.lookup.len(), TAB_SIZE as usize);
    }

    #[test]
    fn weights_give_proportional_slots() {
        // Weights 3:1 -> turns 3 and 1 per round: about 3/4 and 1/4 of the 4093 slots.
        let mut dests = seed_lab();
        dests[0].weight = 3;
        dests[0].last_weight = 3;
        let mut mh = MaglevHashing::new(&SchedOptions::default());
        mh.on_change(&dests, Change::Init);
        let a = mh.lookup.iter().filter(|(x, _)| *x == 0).count();
        assert!((3068..=3071).contains(&a), "{a}");
    }

    #[test]
    fn no_positive_last_weight_empties_the_table() {
        let mut dests = seed_lab();
        for d in &mut dests {
            d.weight = 0;
            d.last_weight = 0;
        }
        let mut mh = MaglevHashing::new(&SchedOptions::default());
        mh.on_change(&dests, Change::Init);
        let req = Request {
            caddr: Ipv4Addr::new(1, 2, 3, 4),
            cport: 1,
            daddr: Ipv4Addr::new(5, 6, 7, 8),
            dport: 80,
            now: std::time::Duration::ZERO,
        };
        assert_eq!(mh.schedule(&dests, &req), None);
        assert!(mh.lookup.is_empty());
    }
}
