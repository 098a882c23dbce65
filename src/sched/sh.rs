//! sh: source hashing (`ip_vs_sh.c`, lvs-semantics.md §2.12).
//!
//! 256 buckets, rebuilt on add, edit and delete: walking the list cyclically, the current server
//! takes consecutive buckets until it has taken `weight` of them. The move-on test comes after
//! the bucket is assigned, so a weight-0 server still owns one bucket per cycle.
//!
//! Key: `hash_32(cport + caddr, 8)` in 32-bit arithmetic, the port only with `sh-port`
//! (scheduler flag 2). Without `sh-fallback` (flag 1) the bucket's server is returned if it has
//! weight > 0 and no OVERLOAD, else none: clients of a quiesced or overloaded server fail, they
//! are not moved. With `sh-fallback` an unusable server makes the search probe the buckets
//! `(2h + j) mod 256`, j = 0..255 (the kernel adds the hash twice; copied because it is
//! observable), taking the first usable one.

use super::hash::hash_32;
use super::*;
use crate::service::DestId;

/// `IP_VS_SH_TAB_BITS` (CONFIG_IP_VS_SH_TAB_BITS=8 in Debian's and the default config).
const TAB_BITS: u32 = 8;
const TAB_SIZE: usize = 1 << TAB_BITS;
const TAB_MASK: u32 = TAB_SIZE as u32 - 1;

#[derive(Debug)]
pub struct SourceHashing {
    fallback: bool,
    port: bool,
    /// Server index (and id, guarding it) of each bucket; empty when the list was.
    buckets: Vec<(usize, DestId)>,
}

impl SourceHashing {
    pub fn new(opts: &SchedOptions) -> Self {
        SourceHashing { fallback: opts.flags.flag1, port: opts.flags.flag2, buckets: Vec::new() }
    }

    /// `ip_vs_sh_reassign`.
    fn reassign(&mut self, dests: &[Dest]) {
        self.buckets.clear();
        if dests.is_empty() {
            return;
        }
        let (mut p, mut count) = (0usize, 0u32);
        for _ in 0..TAB_SIZE {
            let d = &dests[p];
            self.buckets.push((p, d.id));
            // `if (++d_count >= weight)`, weight an int: 0 moves on after one bucket.
            count += 1;
            if count >= d.weight {
                p = (p + 1) % dests.len();
                count = 0;
            }
        }
    }

    /// The server of bucket `b`, as an index into `dests`.
    fn bucket(&self, dests: &[Dest], b: u32) -> Option<usize> {
        let &(i, id) = self.buckets.get(b as usize)?;
        locate(dests, Some(i), id)
    }
}

impl Scheduler for SourceHashing {
    fn name(&self) -> &'static str {
        "sh"
    }

    fn on_change(&mut self, dests: &[Dest], _change: Change) {
        self.reassign(dests);
    }

    fn schedule(&mut self, dests: &[Dest], req: &Request) -> Option<usize> {
        let port = if self.port { u32::from(req.cport) } else { 0 };
        let ihash = hash_32(port.wrapping_add(u32::from(req.caddr)), TAB_BITS);
        let i = self.bucket(dests, ihash)?;
        if usable(&dests[i]) {
            return Some(i);
        }
        if !self.fallback {
            return None;
        }
        // ip_vs_sh_get_fallback: roffset = (offset + ihash) % 256, and the hash key adds
        // roffset to the hash again.
        for offset in 0..TAB_SIZE as u32 {
            let roffset = (offset + ihash) & TAB_MASK;
            let i = self.bucket(dests, (roffset + ihash) & TAB_MASK)?;
            if usable(&dests[i]) {
                return Some(i);
            }
        }
        None
    }
}
