//! Fuzzing every parser of outside input (issue 11, "Also"): queued packets, ctnetlink answers
//! and events, netlink framing, the ICMP refusal, rules files, ipvsadm arguments, control
//! requests and replies, nfvs's own command line. The rule it checks is style.md habit 7, "a
//! parser never panics, whatever the bytes", plus what each parser promises beyond that (a
//! packet the parser takes can be refused, a decoded request encodes back to its bytes, a
//! saved table reads back).
//!
//! Property tests over generated inputs (proptest: the stable toolchain has no libFuzzer),
//! made to reach past the first length check: real messages and lines, damaged, spliced and
//! extended, as well as pure random ones. `cargo test` runs a bounded number of cases per
//! target; `NFVS_FUZZ_SECONDS` runs them for a time each instead ([`harness`] says how).
//! Parsers private to the crate would be fuzzed by its own tests with this runner; the one
//! that was (the nftables read-back) is to be rewritten for the table's set of services.
//!
//! A panic found is fixed where it is, with a regression test of the exact input beside the
//! parser's other tests.

mod adm;
mod cli;
mod harness;
mod wire;
