//! The run-time evidence that the forward path drops nfvs's connections: entries of ours that
//! never see a reply (pure: the ticker's dump in, an onset or a recovery out).
//!
//! A static reading of the rule sets ([`super::rules`]) can be wrong, and a firewall can
//! change after start-up (docker starting sets FORWARD's policy to DROP). What cannot be wrong
//! is conntrack: when the forward path drops the SYN, the entry nfvs created stays in
//! SYN_SENT without IPS_SEEN_REPLY, and no new connection of ours is answered at all.
//!
//! Age comes from the samples themselves: the client's retransmitted SYNs neither count in
//! the entry's counters nor refresh its timeout (seen on Linux 6.18: `conntrack -L -o
//! extended` shows `packets=1` and a falling timeout while nfvs accepts a retransmission a
//! second), so an entry is *stuck* when two samples in a row (the ticker's, 2 s apart) find it
//! unanswered: its SYN is at least 2 s old, past the client's first retransmission (an
//! initial RTO of 1 s, RFC 6298). Each sample (the ticker's dump of nfvs's entries, no second
//! dump) counts:
//! - *newly stuck*: entries in NONE/SYN_SENT without SEEN_REPLY that the previous sample had
//!   unanswered too, counted once each;
//! - *newly answered*: entries with SEEN_REPLY that the previous sample did not have
//!   answered.
//!
//! Onset: at least [`ONSET_STUCK`] newly stuck and none newly answered. Recovery: some newly
//! answered and none newly stuck. Each is reported once. A dead real server among live ones
//! does not trigger it while the live ones answer (their new connections are newly answered),
//! but a dead server with no other traffic looks the same as a drop: the line says so.
//!
//! Memory: the previous sample's unanswered tuples (at most [`STUCK_MAX`]) and a 64-bit hash
//! per answered entry of the previous sample (the sample is at most the ticker's
//! FULL_SAMPLE_MAX entries, 65,536: about 1 MB at worst).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use crate::model::{status, CtEntry, Protocol, TcpState, Tuple};

/// Newly stuck connections in one sample, with none answered, that make an onset.
pub const ONSET_STUCK: usize = 2;
/// Unanswered tuples remembered between samples (a spoofed SYN flood against a blocked path
/// must not grow the daemon).
pub const STUCK_MAX: usize = 4096;

/// A change the sample shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `stuck` new connections to `servers` (at most a few named) got no answer.
    Onset { stuck: usize, servers: Vec<SocketAddr> },
    /// `answered` new connections were answered again.
    Recovered { answered: usize },
}

#[derive(Debug, Default)]
pub struct Watch {
    mark: u32,
    /// The previous sample's unanswered tuples, and whether each was counted stuck already.
    prev_unanswered: HashMap<Tuple, bool>,
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
        let mut unanswered = HashMap::new();
        let mut answered = HashSet::with_capacity(self.prev_answered.len());
        let (mut stuck, mut newly_answered) = (0usize, 0usize);
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
            if !matches!(e.tcp_state, Some(TcpState::None | TcpState::SynSent)) || unanswered.len() >= STUCK_MAX {
                continue;
            }
            let counted = match self.prev_unanswered.get(&e.orig) {
                None => false,
                Some(true) => true,
                Some(false) => {
                    stuck += 1;
                    if servers.len() < SERVERS_NAMED {
                        servers.insert(SocketAddr::new(e.reply.src, e.reply.sport));
                    }
                    true
                }
            };
            unanswered.insert(e.orig, counted);
        }
        self.prev_unanswered = unanswered;
        self.prev_answered = answered;
        if !self.blocked && stuck >= ONSET_STUCK && newly_answered == 0 {
            self.blocked = true;
            return Some(Change::Onset { stuck, servers: servers.into_iter().collect() });
        }
        if self.blocked && newly_answered > 0 && stuck == 0 {
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
    fn entry(port: u16, rs: u8, state: TcpState, seen_reply: bool) -> CtEntry {
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
            counters_orig: Some(CtCounters { packets: 1, bytes: 60 }),
            counters_reply: None,
        }
    }

    fn answered(port: u16) -> CtEntry {
        entry(port, 130, TcpState::TimeWait, true)
    }

    fn syn_sent(port: u16, rs: u8) -> CtEntry {
        entry(port, rs, TcpState::SynSent, false)
    }

    #[test]
    fn syns_unanswered_in_two_samples_without_any_answer_are_an_onset_once_and_a_new_answer_ends_it() {
        let mut w = Watch::new(MARK);
        // Old answered connections, and two SYNs seen once: nothing yet.
        assert_eq!(w.observe(&[answered(1), syn_sent(2, 130), syn_sent(3, 131)]), None);
        // Still unanswered 2 s later, nothing new answered.
        let stuck = [answered(1), syn_sent(2, 130), syn_sent(3, 131)];
        assert_eq!(w.observe(&stuck), Some(Change::Onset { stuck: 2, servers: vec![SocketAddr::new(ip(130), 80), SocketAddr::new(ip(131), 80)] }));
        assert!(w.blocked());
        // The same entries later, and more stuck ones: said once.
        assert_eq!(w.observe(&[answered(1), syn_sent(2, 130), syn_sent(3, 131), syn_sent(4, 130)]), None);
        assert_eq!(w.observe(&[answered(1), syn_sent(2, 130), syn_sent(3, 131), syn_sent(4, 130)]), None);
        // A new connection is answered and nothing new is stuck: recovered, once.
        let fixed = [answered(1), syn_sent(2, 130), syn_sent(3, 131), syn_sent(4, 130), answered(5)];
        assert_eq!(w.observe(&fixed), Some(Change::Recovered { answered: 1 }));
        assert_eq!(w.observe(&fixed), None);
    }

    #[test]
    fn a_dead_server_among_live_ones_is_no_onset_while_the_live_ones_answer() {
        let mut w = Watch::new(MARK);
        w.observe(&[answered(1), syn_sent(2, 130), syn_sent(3, 130)]);
        assert_eq!(w.observe(&[answered(1), syn_sent(2, 130), syn_sent(3, 130), answered(5)]), None);
    }

    #[test]
    fn other_marks_and_answered_half_open_entries_do_not_count() {
        let mut w = Watch::new(MARK);
        let mut foreign = syn_sent(2, 130);
        foreign.mark = 0;
        let syn_recv = entry(3, 130, TcpState::SynRecv, true);
        let mut foreign2 = syn_sent(4, 131);
        foreign2.mark = 0;
        assert_eq!(w.observe(&[foreign, foreign2, syn_recv]), None);
        assert_eq!(w.observe(&[foreign, foreign2, syn_recv]), None);
    }

    #[test]
    fn memory_is_bounded_in_a_flood() {
        let mut w = Watch::new(MARK);
        let flood: Vec<CtEntry> = (0..10_000u16).map(|p| syn_sent(p, 130)).collect();
        assert_eq!(w.observe(&flood), None);
        assert!(matches!(w.observe(&flood), Some(Change::Onset { stuck: STUCK_MAX, .. })));
        assert_eq!(w.prev_unanswered.len(), STUCK_MAX);
    }
}
