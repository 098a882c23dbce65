//! Issue 11 #5 in the daemon: says when the director's forward path drops the connections
//! nfvs balances ([`crate::kernel::forward`]), at start-up, on SIGHUP and at run time, once
//! per condition, and when it clears. Never with the engine's lock held: the checks run
//! `nft` and `iptables-save`.

use std::sync::Mutex;

use log::{info, warn};

use super::Shared;
use crate::kernel::forward::{self, stuck, Flows};
use crate::model::CtEntry;
use crate::service::Table;

/// The lines of the last static check that found a drop (to say when they clear).
static LAST: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The addresses of a table's flows.
fn flows(table: &Table) -> Flows {
    let mut f = Flows::default();
    for s in table.services() {
        f.vips.push(std::net::IpAddr::V4(*s.key().vip().ip()));
        f.rips.extend(s.dests.iter().map(|d| std::net::IpAddr::V4(d.addr)));
    }
    f.vips.sort();
    f.vips.dedup();
    f.rips.sort();
    f.rips.dedup();
    f
}

/// The start-up check (before the threads start: no lock to mind).
pub(super) fn check_at_start(table: &Table) {
    check("start-up check", &flows(table));
}

/// The check after a SIGHUP reload: the table's addresses are copied under the lock, the rule
/// sets read after it is released.
pub(super) fn check_on_reload(sh: &Shared) {
    let f = flows(&sh.lock().table);
    check("SIGHUP check", &f);
}

fn check(when: &str, f: &Flows) {
    if f.rips.is_empty() {
        return;
    }
    let found = forward::check(f);
    for u in &found.unread {
        info!("forward path ({when}): cannot read a rule set: {u}");
    }
    let lines: Vec<String> = found.blockers.iter().map(|b| forward::blocker_line(when, b)).collect();
    for l in &lines {
        warn!("{l}");
    }
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if lines.is_empty() && !last.is_empty() {
        warn!("forward path ({when}): no rule set drops the connections nfvs balances any more");
    }
    *last = lines;
}

/// The ticker's run-time watch over its periodic dump of nfvs's entries.
pub(super) struct Watch(stuck::Watch);

impl Watch {
    pub(super) fn new(mark: u32) -> Watch {
        Watch(stuck::Watch::new(mark))
    }

    /// One sample; at an onset, the static check names the chain if it can.
    pub(super) fn observe(&mut self, entries: &[CtEntry]) {
        match self.0.observe(entries) {
            Some(stuck::Change::Onset { stuck, servers }) => {
                let f = Flows {
                    vips: entries.iter().map(|e| e.orig.dst).collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
                    rips: servers.iter().map(|s| s.ip()).collect(),
                };
                let found = forward::check(&f);
                let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
                let advice = match found.blockers.as_slice() {
                    [] => forward::GENERIC_FIX.to_owned(),
                    bs => bs
                        .iter()
                        .map(|b| format!("{} drops them; {}", forward::chain_name(b), forward::advice(b)))
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                warn!(
                    "forward path (run time): {stuck} new connection(s) nfvs balanced (to {}) got no answer to their SYN in 2 s \
                     or more, and no new connection was answered: the director's forward path drops them, or those \
                     real servers are down; {advice}",
                    servers.join(", ")
                );
            }
            Some(stuck::Change::Recovered { answered }) => {
                warn!("forward path (run time): connections nfvs balances are answered again ({answered} new since the last sample)");
            }
            None => {}
        }
    }
}
