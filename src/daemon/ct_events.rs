//! The `ct-events` thread: conntrack UPDATE/DESTROY events of nfvs's entries -> the engine's
//! connection counts.

use std::time::Duration;

use log::{debug, warn};

use super::Shared;
use crate::kernel::conntrack::{Conntrack, CtError, CtEvents};
use crate::model::CtEvent;

/// How long the event thread lets events gather after the first one wakes it. Under load this
/// turns one wakeup (and one lock of the shared state) per event — a connection makes five or
/// more — into one per millisecond, which measured +20% new connections/s on the 2-core lab;
/// counts then follow state changes (FIN, DESTROY) up to this much later. New connections are
/// counted at once by the packet thread, as IPVS counts them.
const EVENT_BATCH: Duration = Duration::from_millis(1);
/// Events applied per lock of the shared state at most, so a flood cannot keep the packet
/// threads from it for long.
const EVENT_APPLY_CHUNK: usize = 1024;

/// Reads events 64 at a time (`recvmmsg`) and drains the socket completely each wakeup: a
/// reader that leaves events queued lets the buffer overflow under load, and every overflow
/// costs a full recount from a dump.
pub(super) fn run(sh: &Shared, mut events: CtEvents) {
    let mut buf = Vec::new();
    loop {
        let mut lost = match events.recv_many(&mut buf, false) {
            Ok(_) => false,
            Err(CtError::EventsLost) => true,
            Err(e) => {
                warn!("conntrack events: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if !lost {
            std::thread::sleep(EVENT_BATCH);
            loop {
                match events.recv_many(&mut buf, true) {
                    Ok(0) => break,
                    Ok(_) if buf.len() >= EVENT_APPLY_CHUNK => apply(sh, &mut buf),
                    Ok(_) => {}
                    Err(CtError::EventsLost) => {
                        lost = true;
                        break;
                    }
                    Err(e) => {
                        debug!("conntrack events: {e}");
                        break;
                    }
                }
            }
        }
        apply(sh, &mut buf);
        if lost {
            warn!("conntrack events were lost (socket buffer full); recounting connections from a dump");
            // The kernel stops delivering until the socket is read empty (af_netlink
            // congestion); drain it, then rebuild from a dump.
            while matches!(events.recv_many(&mut buf, true), Ok(n) if n > 0) {
                buf.clear();
            }
            buf.clear();
            resync(sh);
        }
    }
}

fn apply(sh: &Shared, buf: &mut Vec<CtEvent>) {
    if buf.is_empty() {
        return;
    }
    let mut engine = sh.lock();
    let now = sh.now();
    engine.apply_events(buf.drain(..), now);
}

/// Recounts every connection from a dump (made before the lock is taken).
fn resync(sh: &Shared) {
    match Conntrack::open().and_then(|mut c| c.dump(sh.opts.ct_mark, u32::MAX)) {
        Ok(entries) => {
            let mut engine = sh.lock();
            let now = sh.now();
            engine.count_existing(&entries, now, true);
        }
        Err(e) => warn!("cannot dump conntrack to recount connections: {e}"),
    }
}
