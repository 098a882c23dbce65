//! The run-time evidence that the forward path drops nfvs's connections: entries of ours that
//! never see a reply (pure: the ticker's dump in, an onset or a recovery out).
//!
//! A static reading of the rule sets ([`super::rules`]) can be wrong, and a firewall can
//! change after start-up (docker starting sets FORWARD's policy to DROP). What cannot be wrong
//! is conntrack: when the forward path drops the SYN, the entry nfvs created stays in
//! SYN_SENT without IPS_SEEN_REPLY while the client retries (its original packet counter
//! grows: TCP retries after 1, 3, 7... s, RFC 6298 and tcp_syn_retries), and no new
//! connection of ours is answered at all.
//!
//! Each sample (the ticker's dump of nfvs's entries, every 2 s, no second dump) counts:
//! - *retrying*: entries in NONE/SYN_SENT without SEEN_REPLY whose SYN came at least twice
//!   (`counters_orig.packets >= 2`; nfvs turns `nf_conntrack_acct` on) and whose count grew
//!   since the previous sample (or that are new to it): a client that retried within the
//!   last interval and still has no answer;
//! - *newly answered*: entries with SEEN_REPLY that the previous sample did not have
//!   answered.
//!
//! Onset: at least [`ONSET_RETRYING`] retrying and none newly answered. Recovery: some newly
//! answered and none retrying. Each is reported once; a dead real server among live ones
//! does not trigger it while the live ones answer (their new connections are newly
//! answered), but a single dead server with no other traffic looks the same as a drop:
//! the line says so.
//!
//! Memory: the previous sample's stuck tuples (at most [`STUCK_MAX`]) and a 64-bit hash per
//! answered entry of the previous sample (the sample is at most the ticker's
//! FULL_SAMPLE_MAX entries, 65,536: about 1 MB at worst).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use crate::model::{status, CtEntry, Protocol, TcpState, Tuple};

/// Retrying connections in one sample, with none answered, that make an onset.
pub const ONSET_RETRYING: usize = 2;
/// Stuck tuples remembered between samples (a spoofed SYN flood against a blocked path must
/// not grow the daemon).
pub const STUCK_MAX: usize = 4096;

/// A change the sample shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `retrying` new connections to `servers` (at most a few named) got no answer.
    Onset { retrying: usize, servers: Vec<SocketAddr> },
    /// `answered` new connections were answered again.
    Recovered { answered: usize },
}

#[derive(Debug, Default)]
pub struct Watch {
    mark: u32,
    /// Stuck tuples of the previous sample and their SYN counts.
    prev_stuck: HashMap<Tuple, u64>,
    /// Hashes of the previous sample's answered tuples.
    prev_answered: HashSet<u64>,
    blocked: bool,
}

/// At most this many real servers are named in an onset.
const SERVERS_NAMED: usize = 4;

impl Watch {
    pub fn new(mark: u32) -> Watch {
        Watch { mark, ..Watch::default() }
    }

    /// Whether an onset has been reported and not yet its recovery.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// Takes one sample of nfvs's entries.
    pub fn observe(&mut self, entries: &[CtEntry]) -> Option<Change> {
        let mut stuck = HashMap::new();
        let mut answered = HashSet::with_capacity(self.prev_answered.len());
        let (mut retrying, mut newly_answered) = (0usize, 0usize);
        let mut servers = BTreeSet::new();
        for e in entries.iter().filter(|e| e.mark == self.mark && e.orig.proto == Protocol::Tcp) {
            if e.status & status::SEEN_REPLY != 0 {
                let h = hash(&e.orig);
                answered.insert(h);
                if !self.prev_answered.contains(&h) {
                    newly_answered += 1;
                }
                continue;
            }
            if !matches!(e.tcp_state, Some(TcpState::None | TcpState::SynSent)) {
                continue;
            }
            let before = self.prev_stuck.get(&e.orig).copied();
            // Without counters (acct off): seen stuck in two samples in a row counts once.
            let syns = match e.counters_orig {
                Some(c) => c.packets,
                None => before.map_or(1, |_| 2),
            };
            if syns < 2 {
                if stuck.len() < STUCK_MAX && e.counters_orig.is_none() {
                    stuck.insert(e.orig, syns);
                }
                continue;
            }
            if before != Some(syns) {
                retrying += 1;
                if servers.len() < SERVERS_NAMED {
                    servers.insert(SocketAddr::new(e.reply.src, e.reply.sport));
                }
            }
            if stuck.len() < STUCK_MAX {
                stuck.insert(e.orig, syns);
            }
        }
        self.prev_stuck = stuck;
        self.prev_answered = answered;
        if !self.blocked && retrying >= ONSET_RETRYING && newly_answered == 0 {
            self.blocked = true;
            return Some(Change::Onset { retrying, servers: servers.into_iter().collect() });
        }
        if self.blocked && newly_answered > 0 && retrying == 0 {
            self.blocked = false;
            return Some(Change::Recovered { answered: newly_answered });
        }
        None
    }
}

fn hash(t: &Tuple) -> u64 {
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CtCounters;
    use std::net::{IpAddr, Ipv4Addr};

    const MARK: u32 = 0x6e66;

    fn ip(d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 168, 226, d))
    }

    /// Client port `port` to the VIP, DNATed to real server `.rs`.
    fn entry(port: u16, rs: u8, state: TcpState, seen_reply: bool, syns: u64) -> CtEntry {
        let vip = IpAddr::V4(Ipv4Addr::new(192, 168, 199, 200));
        let client = IpAddr::V4(Ipv4Addr::new(192, 168, 199, 1));
        let orig = Tuple { src: client, dst: vip, sport: port, dport: 80, proto: Protocol::Tcp };
        let reply = Tuple { src: ip(rs), dst: client, sport: 80, dport: port, proto: Protocol::Tcp };
        CtEntry {
            orig,
            reply,
            mark: MARK,
            status: status::CONFIRMED | status::DST_NAT | if seen_reply { status::SEEN_REPLY } else { 0 },
            tcp_state: Some(state),
            id: None,
            timeout: Some(100),
            counters_orig: Some(CtCounters { packets: syns, bytes: 60 * syns }),
            counters_reply: None,
        }
    }

    fn answered(port: u16) -> CtEntry {
        entry(port, 130, TcpState::TimeWait, true, 6)
    }

    #[test]
    fn retried_syns_without_any_answer_are_an_onset_once_and_a_new_answer_ends_it() {
        let mut w = Watch::new(MARK);
        // Old answered connections, then a SYN that has not been retried yet: nothing.
        assert_eq!(w.observe(&[answered(1), entry(2, 130, TcpState::SynSent, false, 1)]), None);
        // Two clients retried, nothing new answered.
        let stuck = [answered(1), entry(2, 130, TcpState::SynSent, false, 2), entry(3, 131, TcpState::SynSent, false, 2)];
        assert_eq!(w.observe(&stuck), Some(Change::Onset { retrying: 2, servers: vec![SocketAddr::new(ip(130), 80), SocketAddr::new(ip(131), 80)] }));
        assert!(w.blocked());
        // More retries: said once.
        let more = [answered(1), entry(2, 130, TcpState::SynSent, false, 3), entry(3, 131, TcpState::SynSent, false, 3)];
        assert_eq!(w.observe(&more), None);
        // The clients gave up (counts stay), a new connection is answered: recovered.
        let fixed = [answered(1), entry(2, 130, TcpState::SynSent, false, 3), entry(3, 131, TcpState::SynSent, false, 3), answered(4)];
        assert_eq!(w.observe(&fixed), Some(Change::Recovered { answered: 1 }));
        assert_eq!(w.observe(&fixed), None);
    }

    #[test]
    fn a_dead_server_among_live_ones_is_no_onset_while_the_live_ones_answer() {
        let mut w = Watch::new(MARK);
        w.observe(&[answered(1)]);
        let mixed = [answered(1), entry(2, 130, TcpState::SynSent, false, 2), entry(3, 130, TcpState::SynSent, false, 2), answered(5)];
        assert_eq!(w.observe(&mixed), None);
    }

    #[test]
    fn other_marks_and_answered_half_open_entries_do_not_count() {
        let mut w = Watch::new(MARK);
        let mut foreign = entry(2, 130, TcpState::SynSent, false, 3);
        foreign.mark = 0;
        let syn_recv = entry(3, 130, TcpState::SynRecv, true, 2);
        assert_eq!(w.observe(&[foreign, entry(4, 131, TcpState::SynSent, false, 2)]), None);
        assert_eq!(w.observe(&[foreign, syn_recv]), None);
    }

    #[test]
    fn without_counters_two_samples_in_a_row_count() {
        let mut w = Watch::new(MARK);
        let mut a = entry(2, 130, TcpState::SynSent, false, 0);
        let mut b = entry(3, 131, TcpState::SynSent, false, 0);
        a.counters_orig = None;
        b.counters_orig = None;
        assert_eq!(w.observe(&[a, b]), None);
        assert!(matches!(w.observe(&[a, b]), Some(Change::Onset { retrying: 2, .. })));
        // Counted once: a third sample adds nothing, and with an answer it recovers.
        assert_eq!(w.observe(&[a, b, answered(9)]), Some(Change::Recovered { answered: 1 }));
    }

    #[test]
    fn memory_is_bounded_in_a_flood() {
        let mut w = Watch::new(MARK);
        let flood: Vec<CtEntry> = (0..10_000u16).map(|p| entry(p, 130, TcpState::SynSent, false, 2)).collect();
        assert!(matches!(w.observe(&flood), Some(Change::Onset { .. })));
        assert_eq!(w.prev_stuck.len(), STUCK_MAX);
    }
}
