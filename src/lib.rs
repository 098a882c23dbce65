//! nfvs: LVS NAT mode in userspace.
//!
//! An nftables rule in our own table (`ip nfvs`) sends the SYN of every new connection to a
//! virtual service to NFQUEUE; the daemon picks a real server with the service's IPVS scheduler,
//! creates the conntrack entry with DNAT to that server through ctnetlink, and accepts the
//! packet. Every later packet of the flow is handled by the kernel.
//!
//! Pure logic (config, services, schedulers, packet parsing, the wanted ruleset) lives in the
//! top-level modules; everything that talks to the kernel is under [`kernel`], and [`daemon`]
//! is the one place that wires the two together.

pub mod accounting;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod kernel;
pub mod listing;
pub mod model;
pub mod packet;
pub mod persist;
pub mod ruleset;
pub mod sched;
pub mod service;
pub mod stats;
pub mod wire;
