//! The one runner every fuzz target goes through, and the byte mutations they share.
//!
//! A target is a strategy (how its inputs are made) and a check (what must hold for each:
//! above all, no panic). [`fuzz`] runs it for a budget of cases or of time, both from the
//! environment, so the same targets serve the bounded run of every `cargo test` and the long
//! run of `scripts/fuzz.sh`:
//! - `NFVS_FUZZ_SECONDS=S`: run each target for about S seconds, in rounds of
//!   [`ROUND`] cases (the long run);
//! - `NFVS_FUZZ_CASES=N`: N cases per target;
//! - neither: the target's own default, sized so the whole suite takes well under a minute in
//!   a debug build on two cores (the CI run);
//! - `NFVS_FUZZ_SEED=U64`: the first round's seed (each later round adds one), to replay a run.
//!
//! Each target prints `fuzz TARGET: N cases in T s, 0 panics (seed S)`; a panic fails the test
//! with proptest's minimal input and the seed that found it.
//!
//! This file is also included by the crate's own fuzz tests of private parsers
//! (a `fuzz` module inside the crate), so the two share one runner.

#![allow(dead_code)] // each includer uses its own part

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestError, TestRunner};

/// Cases per round of a time-bounded run: the clock is read between rounds.
pub const ROUND: u32 = 2_000;

/// How long or how much to fuzz.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Cases(u32),
    Time(Duration),
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

fn budget(default_cases: u32) -> Budget {
    if let Some(s) = env_u64("NFVS_FUZZ_SECONDS") {
        Budget::Time(Duration::from_secs(s))
    } else if let Some(n) = env_u64("NFVS_FUZZ_CASES") {
        Budget::Cases(u32::try_from(n).unwrap_or(u32::MAX))
    } else {
        Budget::Cases(default_cases)
    }
}

/// Runs `check` on inputs drawn from `strategy` for the budget (module doc); panics, with the
/// minimal input proptest shrinks it to, if a check panics.
pub fn fuzz<S>(target: &str, default_cases: u32, strategy: S, check: impl Fn(S::Value))
where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let budget = budget(default_cases);
    let seed = env_u64("NFVS_FUZZ_SEED").unwrap_or_else(|| RandomState::new().hash_one(target));
    let start = Instant::now();
    let mut cases: u64 = 0;
    for round in 0u64.. {
        let n = match budget {
            Budget::Cases(n) => n,
            Budget::Time(_) => ROUND,
        };
        let config = Config {
            cases: n,
            failure_persistence: None,
            rng_seed: RngSeed::Fixed(seed.wrapping_add(round)),
            ..Config::default()
        };
        let result = TestRunner::new(config).run(&strategy, |input| {
            check(input);
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, input)) => panic!(
                "fuzz {target}: {why}\nminimal input: {input:?}\n(seed {seed}, round {round}: \
                 NFVS_FUZZ_SEED={} NFVS_FUZZ_CASES={n} replays it)",
                seed.wrapping_add(round)
            ),
            Err(e) => panic!("fuzz {target}: {e}"),
        }
        cases += u64::from(n);
        match budget {
            Budget::Time(t) if start.elapsed() < t => continue,
            _ => break,
        }
    }
    println!("fuzz {target}: {cases} cases in {:.1} s, 0 panics (seed {seed})", start.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Bytes: pure random, and real messages damaged so the parser gets past its first checks.
// ---------------------------------------------------------------------------------------------

/// Values that sit on the edges of length checks: netlink headers are 16 bytes, nfgenmsg 4,
/// attribute headers 4, IPv4 headers 20 to 60, TCP headers 20; and the sign and width edges.
#[rustfmt::skip]
const EDGES: &[u32] = &[
    0, 1, 2, 3, 4, 5, 7, 8, 12, 15, 16, 17, 19, 20, 21, 24, 36, 40, 59, 60, 61, 0x7f, 0x80, 0xff, 0x100,
    0x7fff, 0x8000, 0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff,
];

/// One damage done to a message. Positions are [`Index`]es, taken modulo the current length.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Overwrite one byte.
    Set(Index, u8),
    /// Flip one bit.
    Flip(Index, u8),
    /// Write a 16- or 32-bit edge value, host or network order, at a 4-byte boundary or not:
    /// netlink lengths and types, attribute lengths, IP lengths.
    Word { at: Index, value: u32, wide: bool, big_endian: bool, aligned: bool },
    /// Cut the message there.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to this many bytes.
    Remove(Index, u8),
    /// Copy a piece of a seed (another message's attributes) in.
    Splice { at: Index, seed: Index, from: Index, len: u8 },
    /// Repeat a piece in place (an attribute given twice).
    Repeat(Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    let edge = prop_oneof![3 => proptest::sample::select(EDGES), 1 => any::<u32>()];
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
        4 => (any::<Index>(), edge, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(at, value, wide, big_endian, aligned)| Edit::Word { at, value, wide, big_endian, aligned }),
        1 => any::<Index>().prop_map(Edit::Truncate),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| Edit::Insert(i, b)),
        1 => (any::<Index>(), 1u8..32).prop_map(|(i, n)| Edit::Remove(i, n)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1u8..64)
            .prop_map(|(at, seed, from, len)| Edit::Splice { at, seed, from, len }),
        1 => (any::<Index>(), 1u8..32).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

/// `msg` with `edits` done in order; `seeds` are what [`Edit::Splice`] copies from.
pub fn apply_edits(mut msg: Vec<u8>, edits: &[Edit], seeds: &[Vec<u8>]) -> Vec<u8> {
    // A position in (or, for insertions, at the end of) the message as it is now.
    let pos = |i: &Index, len: usize| i.index(len + 1);
    for e in edits {
        let len = msg.len();
        match e {
            Edit::Set(i, b) if len > 0 => msg[i.index(len)] = *b,
            Edit::Flip(i, bit) if len > 0 => msg[i.index(len)] ^= 1 << bit,
            Edit::Word { at, value, wide, big_endian, aligned } => {
                let mut at = pos(at, len);
                if *aligned {
                    at &= !3;
                }
                let bytes = match (wide, big_endian) {
                    (true, true) => value.to_be_bytes().to_vec(),
                    (true, false) => value.to_ne_bytes().to_vec(),
                    (false, true) => (*value as u16).to_be_bytes().to_vec(),
                    (false, false) => (*value as u16).to_ne_bytes().to_vec(),
                };
                for (k, b) in bytes.into_iter().enumerate() {
                    match msg.get_mut(at + k) {
                        Some(slot) => *slot = b,
                        None => msg.push(b),
                    }
                }
            }
            Edit::Truncate(i) => msg.truncate(pos(i, len)),
            Edit::Insert(i, bytes) => {
                let at = pos(i, len);
                msg.splice(at..at, bytes.iter().copied());
            }
            Edit::Remove(i, n) if len > 0 => {
                let at = i.index(len);
                msg.drain(at..(at + usize::from(*n)).min(len));
            }
            Edit::Splice { at, seed, from, len: n } if !seeds.is_empty() => {
                let src = &seeds[seed.index(seeds.len())];
                if !src.is_empty() {
                    let from = from.index(src.len());
                    let piece = &src[from..(from + usize::from(*n)).min(src.len())];
                    let at = pos(at, len);
                    msg.splice(at..at, piece.iter().copied());
                }
            }
            Edit::Repeat(i, n) if len > 0 => {
                let at = i.index(len);
                let piece = msg[at..(at + usize::from(*n)).min(len)].to_vec();
                msg.splice(at..at, piece);
            }
            _ => {}
        }
    }
    msg
}

/// Up to eight changes, most often none or one: an input with one thing wrong gets furthest
/// into a parser.
pub fn few<S: Strategy>(change: impl Fn() -> S) -> impl Strategy<Value = Vec<S::Value>> {
    prop_oneof![2 => proptest::collection::vec(change(), 0..=1), 1 => proptest::collection::vec(change(), 2..=8)]
}

/// Real messages damaged: one to three seeds back to back (a datagram of several messages,
/// each padded to 4 bytes as netlink pads them), then a [`few`] [`Edit`]s.
pub fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "no seeds to mutate");
    let one = proptest::collection::vec(any::<Index>(), 1..=1);
    let picks = prop_oneof![3 => one, 1 => proptest::collection::vec(any::<Index>(), 2..=3)];
    (picks, few(edit)).prop_map(move |(picks, edits)| {
        let mut msg = Vec::new();
        for p in &picks {
            msg.extend_from_slice(&seeds[p.index(seeds.len())]);
            msg.resize(msg.len().next_multiple_of(4), 0);
        }
        apply_edits(msg, &edits, &seeds)
    })
}

/// Any bytes, up to `max` of them.
pub fn random_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

/// Mostly damaged seeds, some pure random bytes: what a byte-parser target is fed.
pub fn bytes_from(seeds: Vec<Vec<u8>>, max_random: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![3 => mutated(seeds), 1 => random_bytes(max_random)]
}
