//! The `ticker` thread: every [`ESTIMATOR_INTERVAL`], traffic samples and rate estimators,
//! persistence-template expiry, and the report of SYNs the kernel dropped on a full queue.

use std::sync::atomic::Ordering;

use log::{debug, warn};

use super::Shared;
use crate::events::Event;
use crate::kernel::conntrack::Conntrack;
use crate::kernel::os;
use crate::model::CtEntry;
use crate::stats::ESTIMATOR_INTERVAL;

/// At most this many running connections are sampled per tick (one GET each).
const SAMPLE_LIMIT: usize = 4096;
/// Above this many tracked connections the periodic sample reads only active ones.
const FULL_SAMPLE_MAX: usize = 65_536;

pub(super) fn run(sh: &Shared) {
    let mut ct = match Conntrack::open() {
        Ok(c) => c,
        Err(e) => return warn!("statistics disabled: {e}"),
    };
    let queues = || sh.opts.queue..sh.opts.queue.saturating_add(sh.opts.queues);
    let mut dropped = os::queue_drops(queues());
    let mut forward = super::forward::Watch::new(sh.opts.ct_mark);
    loop {
        std::thread::sleep(ESTIMATOR_INTERVAL);
        let now_dropped = os::queue_drops(queues());
        if now_dropped > dropped {
            Event::Overload { dropped: now_dropped - dropped, secs: ESTIMATOR_INTERVAL.as_secs() }.emit();
        }
        dropped = now_dropped;
        sh.loop_stats.queue_dropped.store(dropped, Ordering::Relaxed);
        let full = sh.lock().conns.len() <= FULL_SAMPLE_MAX;
        forward.observe(&sample_traffic(sh, &mut ct, full));
        let now = sh.now();
        if sh.lock().tick(now) {
            os::give_back_memory();
        }
        super::watch::check(sh);
        crate::events::flush_repeats(false);
    }
}

/// Accounts the traffic connections carried since the last sample. A full sample reads every
/// entry of ours with one dump: exact, as IPVS's counters are, also for short connections that
/// opened and closed between two ticks. Its cost grows with the TIME_WAIT backlog, so above
/// [`FULL_SAMPLE_MAX`] tracked connections the periodic sample reads only the active ones (one
/// GET each, at most [`SAMPLE_LIMIT`]); closed connections are then accounted when their
/// DESTROY event comes (up to 2 minutes later), and rates lag for short connections. Listings
/// always sample in full. The kernel is asked with the lock released. Returns the entries
/// read, for the forward path's watch (issue 11 #5), which needs no dump of its own.
pub(super) fn sample_traffic(sh: &Shared, ct: &mut Conntrack, full: bool) -> Vec<CtEntry> {
    let dumped = sh.now();
    let entries = if full {
        match ct.dump(sh.opts.ct_mark, u32::MAX) {
            Ok(e) => e,
            Err(e) => {
                debug!("traffic sample: {e}");
                return Vec::new();
            }
        }
    } else {
        let tuples = sh.lock().conns.active_tuples(SAMPLE_LIMIT);
        let mut entries = Vec::with_capacity(tuples.len());
        for t in &tuples {
            match ct.get(t) {
                Ok(Some(e)) => entries.push(e),
                Ok(None) => {}
                Err(e) => {
                    debug!("traffic sample: {e}");
                    return Vec::new();
                }
            }
        }
        entries
    };
    sh.lock().sample(&entries, dumped);
    entries
}
