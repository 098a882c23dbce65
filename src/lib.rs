//! nfvs: LVS NAT mode in userspace.
//!
//! An nftables rule in our own table (`ip nfvs`) sends the SYN of every new connection to a
//! virtual service to NFQUEUE; the daemon picks a real server with the service's IPVS scheduler,
//! creates the conntrack entry with DNAT to that server through ctnetlink, and accepts the
//! packet. Every later packet of the flow is handled by the kernel.
//!
//! Layers (docs/architecture.md): [`model`] holds the types every layer shares; the pure core
//! (services, schedulers, persistence, accounting, statistics, the ruleset as data, listings
//! and ipvsadm's language) decides without I/O, and [`engine`] is its one entry point for the
//! daemon: a new connection, an event, an edit or a tick in, the effects to carry out back.
//! Everything that talks to the kernel is under [`kernel`]; [`daemon`]'s threads carry the
//! engine's effects out there, never holding the engine's lock while they do.

pub mod accounting;
pub mod adm;
pub mod cli;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod kernel;
pub mod logging;
pub mod model;
pub mod packet;
pub mod persist;
pub mod ruleset;
pub mod sched;
pub mod service;
pub mod stats;
pub mod wire;
