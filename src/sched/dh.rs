//! dh: destination hashing (`ip_vs_dh.c`, lvs-semantics.md §2.11).
//!
//! 256 buckets, filled by cycling through the list in list order, one bucket per server
//! whatever its weight (bucket i gets server i mod n). Rebuilt on add and delete only: the
//! kernel registers no `upd_dest` hook, so an edit changes nothing in the table. The bucket is
//! `hash_32(daddr, 8)`; its server is returned if it has weight > 0 and no OVERLOAD, else none
//! (there is no fallback). For an ordinary VIP service every connection hashes the same VIP, so
//! all go to one server.

use super::hash::hash_32;
use super::*;
use crate::service::DestId;

/// `IP_VS_DH_TAB_BITS` (CONFIG_IP_VS_DH_TAB_BITS default 8).
const TAB_BITS: u32 = 8;
const TAB_SIZE: usize = 1 << TAB_BITS;

#[derive(Debug)]
pub struct DestinationHashing {
    /// The server of each bucket: its index at the last rebuild and its id (which guards the
    /// index against a list changed without notice). Empty when the list was.
    buckets: Vec<(usize, DestId)>,
}

impl DestinationHashing {
    pub fn new(_opts: &SchedOptions) -> Self {
        DestinationHashing { buckets: Vec::new() }
    }

    /// `ip_vs_dh_reassign`.
    fn reassign(&mut self, dests: &[Dest]) {
        self.buckets.clear();
        if !dests.is_empty() {
            self.buckets.extend((0..TAB_SIZE).map(|b| (b % dests.len(), dests[b % dests.len()].id)));
        }
    }
}

impl Scheduler for DestinationHashing {
    fn name(&self) -> &'static str {
        "dh"
    }

    fn on_change(&mut self, dests: &[Dest], change: Change) {
        match change {
            Change::Init | Change::Added(_) | Change::Removed { .. } => self.reassign(dests),
            Change::Edited(_) => {}
        }
    }

    fn schedule(&mut self, dests: &[Dest], req: &Request) -> Option<usize> {
        let &(i, id) = self.buckets.get(hash_32(u32::from(req.daddr), TAB_BITS) as usize)?;
        let i = locate(dests, Some(i), id)?;
        usable(&dests[i]).then_some(i)
    }
}
