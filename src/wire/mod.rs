//! The byte layer: the formats nfvs reads from and writes to the kernel, as pure functions
//! over byte slices, checked once at the boundary and panic-free whatever the bytes (the
//! smoltcp `wire` habit). Nothing here opens a socket or makes a system call; the sockets
//! are in [`crate::kernel`].
//!
//! - [`netlink`]: netlink and nfnetlink framing, once for every subsystem: the message
//!   splitter, the attribute iterator, the `nlmsgerr` reader, the message builders.
//! - [`ctnetlink`]: conntrack requests, entries, events and answers.
//! - [`nfqueue`]: queued packets, verdicts, queue configuration.
//! - [`icmp`]: the ICMP port unreachable that refuses a connection no server can take.

pub mod ctnetlink;
pub mod icmp;
pub mod netlink;
pub mod nfqueue;

/// What the wire tests share.
#[cfg(test)]
pub(crate) mod testing {
    /// The annotated NFQUEUE captures, shared by the nfqueue and icmp tests (see the file's
    /// header for how they were made).
    pub mod nfq {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nfq/captures.rs"));
    }

    /// Every buffer `strace -e write=.. -e read=..` dumped, in order. A dump line is
    /// ` | OFFSET  16 hex bytes in two groups of 8  ASCII |`; offset 00000 starts a buffer.
    pub fn strace_buffers(text: &str) -> Vec<Vec<u8>> {
        let mut bufs: Vec<Vec<u8>> = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(" | ") else { continue };
            if rest.starts_with("00000 ") {
                bufs.push(Vec::new());
            }
            // The hex column is 49 characters wide, padded on the last line of a buffer.
            let hex = rest.get(7..56).expect("strace hex dump line");
            let cur = bufs.last_mut().expect("dump starts at offset 00000");
            cur.extend(hex.split_whitespace().map(|b| u8::from_str_radix(b, 16).expect("hex byte")));
        }
        bufs
    }

    /// A copy of `msg` (not empty) with each edit `(at, byte)` written at `at % msg.len()`:
    /// for the tests that real messages, damaged anywhere, never make a parser panic.
    pub fn mutated(msg: &[u8], edits: &[(usize, u8)]) -> Vec<u8> {
        let mut msg = msg.to_vec();
        let len = msg.len();
        for &(at, byte) in edits {
            msg[at % len] = byte;
        }
        msg
    }
}
