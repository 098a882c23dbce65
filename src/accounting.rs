//! Active/inactive connection counts per real server, as IPVS keeps them, driven by what
//! conntrack reports about the entries nfvs created (lvs-semantics.md §3).
//!
//! IPVS counts a new TCP connection active as soon as it is scheduled (its SYN moves it to
//! SYN_RECV), moves it to inactive at the first FIN or RST, and forgets it when the entry
//! expires. Conntrack's states map onto that split (§3.3): SYN_SENT, SYN_SENT2, SYN_RECV and
//! ESTABLISHED are active; FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE and NONE are
//! inactive; DESTROY removes the connection.
//!
//! Pure logic: the daemon feeds it events (and a dump on start) and it edits the counters of
//! the [`Table`]'s destinations, keeping the threshold (OVERLOAD) flags up to date.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::kernel::conntrack::TcpState;
use crate::nat::Tuple;
use crate::service::{DestId, Protocol, ServiceKey, Table};

/// Whether a conntrack TCP state counts as an active IPVS connection.
pub fn is_active(state: Option<TcpState>) -> bool {
    matches!(state, Some(TcpState::SynSent | TcpState::SynSent2 | TcpState::SynRecv | TcpState::Established))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conn {
    svc: ServiceKey,
    dest: DestId,
    active: bool,
}

/// The connections nfvs balanced and still tracks, by original tuple.
#[derive(Debug, Default)]
pub struct Conns {
    map: HashMap<Tuple, Conn>,
}

impl Conns {
    pub fn new() -> Conns {
        Conns::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A connection nfvs just scheduled and created: active at once, as IPVS counts it.
    pub fn scheduled(&mut self, table: &mut Table, orig: Tuple, svc: ServiceKey, dest: DestId) {
        if let Some(old) = self.map.insert(orig, Conn { svc, dest, active: true }) {
            // The tuple was tracked (a reused port whose old entry we deleted): forget it.
            unbind(table, &old);
        }
        bind(table, &Conn { svc, dest, active: true });
    }

    /// A NEW or UPDATE event, or an entry found in a dump, for an entry carrying our mark.
    /// `orig` is the client's tuple (dst = VIP), `rs` the real server it was sent to (the reply
    /// tuple's source).
    pub fn seen(&mut self, table: &mut Table, orig: Tuple, rs: (Ipv4Addr, u16), state: Option<TcpState>) {
        let active = orig.proto == 6 && is_active(state);
        if let Some(c) = self.map.get_mut(&orig) {
            if c.active != active {
                let before = *c;
                c.active = active;
                let after = *c;
                move_state(table, &before, &after);
            }
            return;
        }
        // Unknown: created by an earlier run of the daemon (a dump on start) or its NEW event
        // came after our own bookkeeping was reset. Find its service and server.
        let proto = if orig.proto == 6 { Protocol::Tcp } else { Protocol::Udp };
        let svc = ServiceKey { proto, addr: orig.dst, port: orig.dport };
        let Some(s) = table.services().iter().find(|s| s.key() == svc) else { return };
        let Some(i) = s.dest_index(rs.0, rs.1) else { return };
        let c = Conn { svc, dest: s.dests[i].id, active };
        self.map.insert(orig, c);
        bind(table, &c);
    }

    /// A DESTROY event: the entry expired or was deleted.
    pub fn destroyed(&mut self, table: &mut Table, orig: &Tuple) {
        if let Some(c) = self.map.remove(orig) {
            unbind(table, &c);
        }
    }

    /// Connections of a real server (for `--expire-nodest` and draining).
    pub fn of_dest(&self, dest: DestId) -> Vec<Tuple> {
        self.map.iter().filter(|(_, c)| c.dest == dest).map(|(t, _)| *t).collect()
    }
}

fn dest_mut<'a>(table: &'a mut Table, c: &Conn) -> Option<&'a mut crate::service::Dest> {
    table.service_mut(&c.svc)?.dests.iter_mut().find(|d| d.id == c.dest)
}

fn bind(table: &mut Table, c: &Conn) {
    if let Some(d) = dest_mut(table, c) {
        if c.active {
            d.active += 1;
        } else {
            d.inactive += 1;
        }
        crate::sched::threshold::on_bind(d);
    }
}

fn unbind(table: &mut Table, c: &Conn) {
    if let Some(d) = dest_mut(table, c) {
        if c.active {
            d.active = d.active.saturating_sub(1);
        } else {
            d.inactive = d.inactive.saturating_sub(1);
        }
        crate::sched::threshold::on_unbind(d);
    }
}

/// Active <-> inactive: the total the thresholds look at does not change.
fn move_state(table: &mut Table, before: &Conn, _after: &Conn) {
    if let Some(d) = dest_mut(table, before) {
        if before.active {
            d.active = d.active.saturating_sub(1);
            d.inactive += 1;
        } else {
            d.inactive = d.inactive.saturating_sub(1);
            d.active += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_rules;

    const LAB: &str = "-A -t 192.168.199.200:80 -s wlc\n\
        -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\n\
        -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1\n";

    fn tuple(port: u16) -> Tuple {
        Tuple { src: Ipv4Addr::new(192, 168, 199, 1), dst: Ipv4Addr::new(192, 168, 199, 200), sport: port, dport: 80, proto: 6 }
    }

    fn counts(t: &Table) -> Vec<(u32, u32)> {
        t.services()[0].dests.iter().map(|d| (d.active, d.inactive)).collect()
    }

    #[test]
    fn lifecycle_follows_ipvs() {
        let mut t = parse_rules(LAB, "t").unwrap();
        let svc = t.services()[0].key();
        let d131 = t.services()[0].dests[0].id;
        let mut c = Conns::new();
        c.scheduled(&mut t, tuple(1000), svc, d131);
        assert_eq!(counts(&t), [(1, 0), (0, 0)]);
        // The NEW event of our own entry and the handshake change nothing.
        let rs = (Ipv4Addr::new(192, 168, 226, 131), 80);
        c.seen(&mut t, tuple(1000), rs, Some(TcpState::SynSent));
        c.seen(&mut t, tuple(1000), rs, Some(TcpState::Established));
        assert_eq!(counts(&t), [(1, 0), (0, 0)]);
        // First FIN: inactive; TIME_WAIT stays inactive; DESTROY forgets it.
        c.seen(&mut t, tuple(1000), rs, Some(TcpState::FinWait));
        c.seen(&mut t, tuple(1000), rs, Some(TcpState::TimeWait));
        assert_eq!(counts(&t), [(0, 1), (0, 0)]);
        c.destroyed(&mut t, &tuple(1000));
        assert_eq!(counts(&t), [(0, 0), (0, 0)]);
        assert!(c.is_empty());
    }

    #[test]
    fn dump_on_restart_rebuilds_counts() {
        let mut t = parse_rules(LAB, "t").unwrap();
        let mut c = Conns::new();
        c.seen(&mut t, tuple(1), (Ipv4Addr::new(192, 168, 226, 130), 80), Some(TcpState::Established));
        c.seen(&mut t, tuple(2), (Ipv4Addr::new(192, 168, 226, 130), 80), Some(TcpState::TimeWait));
        c.seen(&mut t, tuple(3), (Ipv4Addr::new(192, 168, 226, 131), 80), Some(TcpState::SynSent));
        // A server that is not (or no longer) in the table is ignored.
        c.seen(&mut t, tuple(4), (Ipv4Addr::new(192, 168, 226, 199), 80), Some(TcpState::Established));
        assert_eq!(counts(&t), [(1, 0), (1, 1)]);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn reused_port_replaces_the_old_connection() {
        let mut t = parse_rules(LAB, "t").unwrap();
        let svc = t.services()[0].key();
        let (a, b) = (t.services()[0].dests[0].id, t.services()[0].dests[1].id);
        let mut c = Conns::new();
        c.scheduled(&mut t, tuple(7), svc, a);
        c.seen(&mut t, tuple(7), (Ipv4Addr::new(192, 168, 226, 131), 80), Some(TcpState::TimeWait));
        c.scheduled(&mut t, tuple(7), svc, b);
        assert_eq!(counts(&t), [(0, 0), (1, 0)]);
    }
}
