//! Micro-benchmark of the schedulers: ns per pick for every scheduler with 2, 100 and 1000 real
//! servers, printed as a table (used by scripts/bench.sh).
//!
//! Run: `cargo run --release --example sched_bench [-- <min_ms_per_cell>]`
//!
//! Workload per cell: weights 1..=8, connection counts spread over 0..64 active and 0..256
//! inactive, no OVERLOAD, an ordinary VIP service (daddr is always the VIP, so lblc/lblcr/dh
//! answer from their cache or table), one client address per pick (sh/mh hash it). After every
//! pick the chosen server gets +1 active and one connection of another server (walking the
//! list) ends, so the counts stay in a steady state; that bookkeeping is inside the timed loop
//! and costs a few ns. Each cell runs for at least the given time (default 200 ms).
//!
//! Three tables: the default scanning mode; `SchedOptions::incremental`, where the two counter
//! changes per pick are reported with `on_counts` (their O(log n) index updates are timed too);
//! and incremental mode with the counters left alone, which times the pick by itself.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use nfvs::sched::{self, Request, SchedOptions};
use nfvs::service::{Dest, DestId};

const SIZES: [usize; 3] = [2, 100, 1000];

fn dests(n: usize) -> Vec<Dest> {
    (0..n)
        .map(|i| {
            let mut d = Dest::new(DestId(i as u64), Ipv4Addr::from(0x0a00_0001 + i as u32), 80, 1 + (i as u32 * 7) % 8);
            d.active = (i as u32 * 37) % 64;
            d.inactive = (i as u32 * 101) % 256;
            d
        })
        .collect()
}

/// Mean ns per pick for scheduler `name` over `n` servers.
fn bench(name: &str, n: usize, incremental: bool, count: bool, min_time: Duration) -> f64 {
    let mut list = dests(n);
    let opts = SchedOptions { seed: 42, incremental, ..SchedOptions::default() };
    let mut s = sched::new(name, &opts, &list).expect("known scheduler");
    let mut req = Request {
        caddr: Ipv4Addr::new(203, 0, 113, 1),
        cport: 40000,
        daddr: Ipv4Addr::new(192, 168, 199, 200),
        dport: 80,
        now: Duration::ZERO,
    };
    let mut picks = 0u64;
    let mut ender = 0usize;
    let mut one = |s: &mut Box<dyn sched::Scheduler>, list: &mut Vec<Dest>, req: &mut Request, k: u64| {
        req.caddr = Ipv4Addr::from(0xcb00_7100u32.wrapping_add((k as u32).wrapping_mul(2_654_435_761)));
        req.cport = 1024 + (k % 60000) as u16;
        req.now = Duration::from_millis(k / 16);
        let chosen = black_box(s.schedule(black_box(list), black_box(req)));
        if !count {
            return;
        }
        if let Some(i) = chosen {
            list[i].active += 1;
            s.on_counts(list, i);
        }
        ender = (ender + 1) % list.len();
        let d = &mut list[ender];
        if d.active > 0 {
            d.active -= 1;
            s.on_counts(list, ender);
        }
    };
    // Warm up, then time batches until min_time has passed.
    for k in 0..1000 {
        one(&mut s, &mut list, &mut req, k);
    }
    let batch = (2_000_000 / n as u64).clamp(1000, 200_000);
    let start = Instant::now();
    while start.elapsed() < min_time {
        for _ in 0..batch {
            one(&mut s, &mut list, &mut req, 1000 + picks);
            picks += 1;
        }
    }
    start.elapsed().as_nanos() as f64 / picks as f64
}

fn main() {
    let min_ms: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let min_time = Duration::from_millis(min_ms);
    let modes = [
        (false, true, "scanning (default), +1/-1 active per pick"),
        (true, true, "incremental, +1/-1 active per pick reported with on_counts"),
        (true, false, "incremental, counters unchanged (the pick alone)"),
    ];
    for (incremental, count, title) in modes {
        println!("ns per pick, {title}; mean over at least {min_ms} ms per cell");
        print!("{:<8}", "sched");
        for n in SIZES {
            print!("{:>12}", format!("{n} RS"));
        }
        println!();
        for name in sched::NAMES {
            print!("{name:<8}");
            for n in SIZES {
                print!("{:>12.1}", bench(name, n, incremental, count, min_time));
            }
            println!();
        }
        println!();
    }
}
