//! rr: round robin (`net/netfilter/ipvs/ip_vs_rr.c`, lvs-semantics.md §2.1).
//!
//! The kernel keeps one pointer into the destination list: the entry chosen last, or the list
//! head before anything was chosen. A pick scans circularly from the entry after it; the first
//! destination with weight > 0 and without OVERLOAD wins. From the head the scan covers the list
//! once; from an entry it wraps past the head and checks the cursor's own entry last, so a single
//! eligible server keeps being chosen. Weight magnitude is ignored.
//!
//! Hooks: `init_service` puts the cursor on the head; there is no `add_dest` hook (a new entry
//! is linked at the head, so it is reached after the scan wraps); `del_dest` of the entry under
//! the cursor moves the cursor to that entry's predecessor (or the head), so the rotation
//! continues with the entry that followed the deleted one.

use super::*;
use crate::service::DestId;

/// Where the cursor stands: `None` is the list head.
///
/// The index is kept in step with insertions and removals through [`Change`]; the id guards it
/// against a list that changed without notice (then the id is searched, and a vanished
/// destination puts the cursor back on the head).
#[derive(Debug, Default)]
pub struct RoundRobin {
    cursor: Option<(usize, DestId)>,
}

impl RoundRobin {
    pub fn new(_opts: &SchedOptions) -> Self {
        RoundRobin { cursor: None }
    }

    /// The cursor as an index into `dests`, or `None` for the head.
    fn cursor_index(&self, dests: &[Dest]) -> Option<usize> {
        let (i, id) = self.cursor?;
        locate(dests, Some(i), id)
    }
}

impl Scheduler for RoundRobin {
    fn name(&self) -> &'static str {
        "rr"
    }

    fn on_change(&mut self, dests: &[Dest], change: Change) {
        match change {
            // ip_vs_rr_init_svc: sched_data = &svc->destinations (the head).
            Change::Init => self.cursor = None,
            // No add_dest hook; only our index shifts.
            Change::Added(at) => {
                if let Some((i, _)) = &mut self.cursor {
                    if *i >= at {
                        *i += 1;
                    }
                }
            }
            Change::Edited(_) => {}
            // ip_vs_rr_del_dest: if the cursor is on the removed entry, `p->next->prev` is the
            // entry that preceded it (or the head).
            Change::Removed { index, id } => {
                if let Some((i, cid)) = self.cursor {
                    if cid == id {
                        self.cursor = index
                            .checked_sub(1)
                            .and_then(|p| dests.get(p).map(|d| (p, d.id)));
                    } else if i > index {
                        self.cursor = Some((i - 1, cid));
                    }
                }
            }
        }
    }

    fn schedule(&mut self, dests: &[Dest], _req: &Request) -> Option<usize> {
        let cur = self.cursor_index(dests);
        let start = cur.map_or(0, |c| c + 1);
        // After the cursor to the end, then (only if the cursor is on an entry) from the first
        // entry up to and including the cursor's own entry.
        let wrapped = cur.map_or(0..0, |c| 0..c + 1);
        let hit = (start..dests.len()).chain(wrapped).find(|&i| usable(&dests[i]))?;
        self.cursor = Some((hit, dests[hit].id));
        Some(hit)
    }
}
