//! The byte layer: the formats nfvs reads from and writes to the kernel, as pure functions
//! over byte slices, checked once at the boundary and panic-free whatever the bytes (the
//! smoltcp `wire` habit). Nothing here opens a socket or makes a system call; the sockets
//! are in [`crate::kernel`].
//!
//! - [`netlink`]: netlink and nfnetlink framing, once for every subsystem: the message
//!   splitter, the attribute iterator, the `nlmsgerr` reader, the message builders.
//! - [`ctnetlink`]: conntrack requests, entries, events and answers.
//! - [`nfqueue`]: queued packets, verdicts, queue configuration.

pub mod ctnetlink;
pub mod netlink;
pub mod nfqueue;

