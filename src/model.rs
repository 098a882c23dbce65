//! The types every layer shares: a flow's key, the protocol, and the conntrack entry as the
//! pure core sees it. Plain data, no I/O; the wire code (src/wire/ctnetlink.rs) turns them
//! into bytes and back, the engine and the accounting decide on them.
//!
//! Address-family ready: a [`Tuple`] holds [`IpAddr`]s, and the ctnetlink code picks the
//! family from them. The service layer (service.rs, sched/) is still IPv4 only; IPv6 services
//! land there (docs/architecture.md).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Transport protocol of a flow or a virtual service. Only the protocols nfvs balances exist
/// here: anything else is refused where it enters ([`Protocol::from_number`]), never mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The protocol with this IP protocol number, if nfvs balances it.
    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// ipvsadm's option letter for the protocol (`-t`, `-u`).
    pub fn flag(self) -> &'static str {
        match self {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// One direction of a flow: the key of a new connection as its first packet carries it, and a
/// conntrack tuple (`CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY`). Both addresses are of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: Protocol,
}

impl Tuple {
    /// The same flow seen from the other side.
    pub fn inverse(&self) -> Tuple {
        Tuple { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, proto: self.proto }
    }

    pub fn client(&self) -> SocketAddr {
        SocketAddr::new(self.src, self.sport)
    }

    pub fn server(&self) -> SocketAddr {
        SocketAddr::new(self.dst, self.dport)
    }
}

/// The conntrack entry for one balanced connection: create it with `IPCTNL_MSG_CT_NEW`,
/// `NLM_F_CREATE | NLM_F_EXCL` (design.md fact 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtMapping {
    /// client -> VIP, as the SYN carries it.
    pub orig: Tuple,
    /// The plain inverse of `orig` (VIP -> client). Design.md fact 1: the kernel rewrites it to
    /// come from the real server when it applies `nat_dst`; sending the already-NATed reply
    /// tuple makes the kernel see no change and no DNAT happens.
    pub reply: Tuple,
    /// Where the connection goes (CTA_NAT_DST: address and port), of `orig`'s family.
    pub nat_dst: SocketAddr,
    /// CTA_MARK: how nfvs recognises its own entries in dumps and events.
    pub mark: u32,
    /// CTA_TIMEOUT in seconds (the kernel's TCP tracker resets it on the next packet).
    pub timeout: u32,
}

/// Timeout given to a freshly created entry; the TCP tracker replaces it with the SYN_SENT
/// timeout as soon as the accepted SYN passes conntrack.
pub const CREATE_TIMEOUT_SECS: u32 = 120;

impl CtMapping {
    pub fn dnat(orig: Tuple, to: SocketAddr, mark: u32) -> CtMapping {
        CtMapping { orig, reply: orig.inverse(), nat_dst: to, mark, timeout: CREATE_TIMEOUT_SECS }
    }
}

/// `ct->status` bits (`enum ip_conntrack_status`, include/uapi/linux/netfilter/nf_conntrack_common.h)
/// that callers look at in [`CtEntry::status`].
pub mod status {
    /// The entry has seen traffic in the reply direction.
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// The entry will not be early-dropped (TCP: fully established).
    pub const ASSURED: u32 = 1 << 2;
    /// The entry is in the main table.
    pub const CONFIRMED: u32 = 1 << 3;
    /// The connection is destination-NATed (its reply tuple's source was rewritten).
    pub const DST_NAT: u32 = 1 << 5;
    /// Destination NAT has been set up for the entry.
    pub const DST_NAT_DONE: u32 = 1 << 8;
    /// The entry is being destroyed (set in DESTROY events).
    pub const DYING: u32 = 1 << 9;
}


/// TCP tracker state, `enum tcp_conntrack` (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    CloseWait = 5,
    LastAck = 6,
    TimeWait = 7,
    Close = 8,
    /// `TCP_CONNTRACK_SYN_SENT2` (the old LISTEN slot): simultaneous open.
    SynSent2 = 9,
}

impl TcpState {
    pub fn from_raw(v: u8) -> Option<TcpState> {
        Some(match v {
            0 => TcpState::None,
            1 => TcpState::SynSent,
            2 => TcpState::SynRecv,
            3 => TcpState::Established,
            4 => TcpState::FinWait,
            5 => TcpState::CloseWait,
            6 => TcpState::LastAck,
            7 => TcpState::TimeWait,
            8 => TcpState::Close,
            9 => TcpState::SynSent2,
            _ => return None,
        })
    }

    /// Whether an entry found on EEXIST belongs to a live connection whose SYN was merely
    /// retransmitted (keep it) rather than to a finished one whose source port the client now
    /// reuses (delete it and schedule afresh): design.md fact 6, "a state up to ESTABLISHED".
    /// `None` is an entry we created whose SYN has not passed conntrack yet (a retransmission
    /// racing on another queue, fact 8); `SynSent2` is a simultaneous open, also pre-ESTABLISHED.
    pub fn is_alive_for_reuse(self) -> bool {
        match self {
            TcpState::None
            | TcpState::SynSent
            | TcpState::SynRecv
            | TcpState::Established
            | TcpState::SynSent2 => true,
            TcpState::FinWait
            | TcpState::CloseWait
            | TcpState::LastAck
            | TcpState::TimeWait
            | TcpState::Close => false,
        }
    }
}

/// One direction's accounting (`CTA_COUNTERS_ORIG` / `CTA_COUNTERS_REPLY`); the kernel only
/// reports them when `net.netfilter.nf_conntrack_acct` was on when the entry was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// A conntrack entry as the kernel reports it (GET answer, dump element or event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntry {
    pub orig: Tuple,
    /// After DNAT the reply comes from the real server: `reply.src` is its address (fact 1).
    pub reply: Tuple,
    /// `CTA_MARK`; 0 when absent (events leave out a zero mark).
    pub mark: u32,
    /// `CTA_STATUS` bits (see [`status`]); 0 when absent.
    pub status: u32,
    pub tcp_state: Option<TcpState>,
    pub id: Option<u32>,
    /// Seconds left before the entry expires.
    pub timeout: Option<u32>,
    pub counters_orig: Option<CtCounters>,
    pub counters_reply: Option<CtCounters>,
}

impl CtEntry {
    /// A balanced connection a new SYN for its tuple belongs to (a retransmission, design.md
    /// fact 6): DNATed — by nfvs (`mark`) or by the `--overload fallback` rule — and in a state
    /// up to ESTABLISHED. Anything else with the tuple is finished, or would take the SYN to
    /// the director itself, and must make way for a new entry.
    pub fn is_live_balanced(&self, mark: u32) -> bool {
        (self.mark == mark || self.status & status::DST_NAT != 0) && self.tcp_state.is_none_or(TcpState::is_alive_for_reuse)
    }
}


#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtEventKind {
    New,
    Update,
    Destroy,
}


#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEvent {
    pub kind: CtEventKind,
    pub entry: CtEntry,
}


/// A map keyed by flow that keeps IPv4 keys small: the connection map holds every tracked
/// connection, TIME_WAIT ones included, and its entry size is most of the daemon's memory
/// (accounting.rs `entries_stay_small`). A [`Tuple`] with two `IpAddr`s takes 40 bytes; an
/// IPv4 key is packed into 14 here, IPv6 keys live in a map of their own.
#[derive(Debug, Clone)]
pub struct FlowMap<V> {
    v4: HashMap<Key4, V>,
    v6: HashMap<Tuple, V>,
}

/// An IPv4 [`Tuple`], packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key4 {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    proto: Protocol,
}

impl Key4 {
    fn of(t: &Tuple) -> Option<Key4> {
        match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                Some(Key4 { src: s.octets(), dst: d.octets(), sport: t.sport, dport: t.dport, proto: t.proto })
            }
            _ => None,
        }
    }

    fn tuple(&self) -> Tuple {
        Tuple { src: self.src.into(), dst: self.dst.into(), sport: self.sport, dport: self.dport, proto: self.proto }
    }
}

impl<V> Default for FlowMap<V> {
    fn default() -> Self {
        FlowMap { v4: HashMap::new(), v6: HashMap::new() }
    }
}

impl<V> FlowMap<V> {
    /// Bytes one IPv4 entry takes in the table (key and value, without hashbrown's control byte).
    pub const V4_ENTRY_SIZE: usize = std::mem::size_of::<(Key4, V)>();

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn get(&self, t: &Tuple) -> Option<&V> {
        match Key4::of(t) {
            Some(k) => self.v4.get(&k),
            None => self.v6.get(t),
        }
    }

    pub fn get_mut(&mut self, t: &Tuple) -> Option<&mut V> {
        match Key4::of(t) {
            Some(k) => self.v4.get_mut(&k),
            None => self.v6.get_mut(t),
        }
    }

    pub fn insert(&mut self, t: Tuple, v: V) -> Option<V> {
        match Key4::of(&t) {
            Some(k) => self.v4.insert(k, v),
            None => self.v6.insert(t, v),
        }
    }

    pub fn remove(&mut self, t: &Tuple) -> Option<V> {
        match Key4::of(t) {
            Some(k) => self.v4.remove(&k),
            None => self.v6.remove(t),
        }
    }

    /// Gives memory back after a burst (a SYN flood's connections, expired): when at most a
    /// quarter of the table is used, it shrinks to twice what it holds. Whether it did.
    pub fn shrink_if_sparse(&mut self) -> bool {
        let mut shrunk = false;
        if self.v4.capacity() > 1024 && self.v4.len() * 4 < self.v4.capacity() {
            self.v4.shrink_to(self.v4.len() * 2);
            shrunk = true;
        }
        if self.v6.capacity() > 1024 && self.v6.len() * 4 < self.v6.capacity() {
            self.v6.shrink_to(self.v6.len() * 2);
            shrunk = true;
        }
        shrunk
    }

    pub fn retain(&mut self, mut f: impl FnMut(&V) -> bool) {
        self.v4.retain(|_, v| f(v));
        self.v6.retain(|_, v| f(v));
    }

    /// Every entry, IPv4 ones first.
    pub fn iter(&self) -> impl Iterator<Item = (Tuple, &V)> {
        self.v4.iter().map(|(k, v)| (k.tuple(), v)).chain(self.v6.iter().map(|(t, v)| (*t, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.v4.values().chain(self.v6.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn reply_is_plain_inverse_not_nated() {
        let orig = Tuple {
            src: Ipv4Addr::new(192, 168, 199, 1).into(),
            dst: Ipv4Addr::new(192, 168, 199, 200).into(),
            sport: 40000,
            dport: 80,
            proto: Protocol::Tcp,
        };
        let m = CtMapping::dnat(orig, SocketAddr::new(Ipv4Addr::new(192, 168, 226, 131).into(), 8080), 7);
        assert_eq!(m.reply.src, IpAddr::from(Ipv4Addr::new(192, 168, 199, 200)));
        assert_eq!(m.reply.sport, 80);
        assert_eq!(m.reply.dst, IpAddr::from(Ipv4Addr::new(192, 168, 199, 1)));
        assert_eq!(m.reply.dport, 40000);
        assert_eq!(m.nat_dst.port(), 8080);
    }

    #[test]
    fn flow_map_keeps_both_families_apart_and_whole() {
        let v4 = Tuple { src: [10, 0, 0, 1].into(), dst: [10, 0, 0, 2].into(), sport: 1, dport: 80, proto: Protocol::Tcp };
        let v6 = Tuple {
            src: "fd00::1".parse::<IpAddr>().unwrap(),
            dst: "fd00::2".parse::<IpAddr>().unwrap(),
            ..v4
        };
        let mut m = FlowMap::default();
        assert_eq!(m.insert(v4, 'a'), None);
        assert_eq!(m.insert(v6, 'b'), None);
        assert_eq!(m.insert(Tuple { proto: Protocol::Udp, ..v4 }, 'c'), None);
        assert_eq!((m.len(), m.get(&v4), m.get(&v6)), (3, Some(&'a'), Some(&'b')));
        let mut keys: Vec<Tuple> = m.iter().map(|(t, _)| t).collect();
        keys.sort_by_key(|t| (t.src, t.proto));
        assert_eq!(keys, [v4, Tuple { proto: Protocol::Udp, ..v4 }, v6]);
        m.retain(|v| *v != 'a');
        assert_eq!((m.remove(&v6), m.get(&v4), m.len()), (Some('b'), None, 1));
        assert!(std::mem::size_of::<Key4>() <= 14);
    }

    #[test]
    fn only_balanced_protocols_have_a_protocol() {
        assert_eq!(Protocol::from_number(6), Some(Protocol::Tcp));
        assert_eq!(Protocol::from_number(17), Some(Protocol::Udp));
        for n in [0u8, 1, 58, 132, 255] {
            assert_eq!(Protocol::from_number(n), None, "protocol {n} must not become TCP or UDP");
        }
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(Protocol::from_number(p.number()), Some(p));
        }
    }
}
