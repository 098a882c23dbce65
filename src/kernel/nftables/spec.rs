//! Our table as data: the sets, chains and rules [`super::apply`] installs for a [`Ruleset`],
//! each expression a plain value ([`Expr`]) in the byte layout nft 1.0.6 emits for the same
//! rule (`nft --debug=netlink`), the comparison with what the kernel reports back, and the
//! difference between two tables that [`super::update`] sends. Pure: no libnftnl call, no
//! socket (those are in the sibling files).

use std::ffi::CStr;
use std::net::Ipv4Addr;

use nftnl::Hook;
use nftnl_sys::libc;

use super::QueueImpl;
use crate::model::Protocol;
use crate::ruleset::{self, listing_order, Cidr, FallbackRule, QueueSpec, Ruleset};

pub(super) const TABLE: &CStr = c"nfvs";
const DIVERT: &str = ruleset::CHAIN_DIVERT;
const EVENTS: &str = ruleset::CHAIN_EVENTS;
const NAT_PRE: &str = ruleset::CHAIN_NAT_PRE;
const NAT_POST: &str = ruleset::CHAIN_NAT_POST;
const SERVICES: &str = ruleset::SET_SERVICES;
const FALLBACK: &str = ruleset::MAP_FALLBACK;

/// Hook priorities, include/uapi/linux/netfilter_ipv4.h (`NF_IP_PRI_RAW`, `_NAT_DST`,
/// `_NAT_SRC`); nft names them raw, dstnat and srcnat.
const PRIO_RAW: i32 = -300;
const PRIO_MANGLE: i32 = -150;
const PRIO_DSTNAT: i32 = -100;
const PRIO_SRCNAT: i32 = 100;

// include/uapi/linux/netfilter/nf_tables.h
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CMP_LT: u32 = 2;
/// The second 32-bit register: `ip daddr . tcp dport` puts the address in reg 1 (= NFT_REG32_00)
/// and the port right after it, in NFT_REG32_01, as nft does; the look-up reads both.
const NFT_REG32_01: u32 = libc::NFT_REG32_01 as u32;
/// enum nft_ng_types.
pub(super) const NFT_NG_INCREMENTAL: u32 = 0;
/// NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED (include/uapi/linux/netfilter/nf_nat.h).
const NAT_FLAGS_ADDR_AND_PORT: u32 = 0x1 | 0x2;
const NFT_QUEUE_FLAG_BYPASS: u16 = 0x01;
const NFT_QUEUE_FLAG_CPU_FANOUT: u16 = 0x02;

// TCP flag bits (RFC 9293 §3.1), the byte at transport offset 13.
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// `ct state new`: the bit `NF_CT_STATE_BIT(IP_CT_NEW)`, a host-order u32
/// (include/uapi/linux/netfilter/nf_conntrack_common.h).
const CT_STATE_NEW: u32 = 1 << 3;

/// xt_NFQUEUE revision 3 (include/uapi/linux/netfilter/xt_NFQUEUE.h): `{u16 queuenum;
/// u16 queues_total; u16 flags}` in host order, padded by XT_ALIGN to 8 bytes as iptables-nft
/// sends it. Its flags have the same values as the native ones (NFQ_FLAG_BYPASS,
/// NFQ_FLAG_CPU_FANOUT).
const NFQUEUE_REV: u32 = 3;
const NFQUEUE_INFO_LEN: usize = 8;

/// One nftables expression as data. Registers are `reg 1`, as nft uses them here, except
/// where a field says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expr {
    /// `payload load LEN b @ BASE header + OFFSET => reg DREG`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `lookup reg 1 set SET [dreg DREG]`: whether the key in the registers from reg 1 on is an
    /// element of the named set (net/netfilter/nft_lookup.c); with `dreg` (a map) the element's
    /// data goes there: reg 0, the verdict, for a verdict map.
    Lookup {
        set: String,
        dreg: Option<u32>,
    },
    /// `meta load KEY => reg 1`.
    Meta {
        key: u32,
    },
    /// `ct load KEY => reg 1`.
    Ct {
        key: u32,
    },
    /// `reg 1 = (reg 1 & MASK) ^ XOR`.
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `cmp OP reg 1 DATA`, DATA as the bytes sit in the register.
    Cmp {
        op: u32,
        data: Vec<u8>,
    },
    Counter,
    /// The native queue expression (net/netfilter/nft_queue.c).
    Queue {
        num: u16,
        total: u16,
        flags: u16,
    },
    /// An xt target through nft_compat (net/netfilter/nft_compat.c).
    Target {
        name: String,
        rev: u32,
        info: Vec<u8>,
    },
    Masq,
    /// `numgen inc mod MODULUS => reg 1` (net/netfilter/nft_numgen.c).
    Numgen {
        modulus: u32,
    },
    /// `immediate reg DREG DATA`.
    Immediate {
        dreg: u32,
        data: Vec<u8>,
    },
    /// `ct set KEY with reg 1`.
    CtSet {
        key: u32,
    },
    /// `immediate reg 0 CODE`: a verdict (NF_DROP = 0, ...).
    Verdict {
        code: u32,
    },
    /// `nat dnat ip addr_min reg 1 proto_min reg 2`; `flags` as the kernel reports them
    /// (NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED, set from the registers given:
    /// nft_nat.c `nft_nat_init`).
    DnatTo {
        flags: u32,
    },
}

impl Expr {
    pub(super) fn name(&self) -> &'static CStr {
        match self {
            Expr::Payload { .. } => c"payload",
            Expr::Lookup { .. } => c"lookup",
            Expr::Meta { .. } => c"meta",
            Expr::Ct { .. } | Expr::CtSet { .. } => c"ct",
            Expr::Bitwise { .. } => c"bitwise",
            Expr::Cmp { .. } => c"cmp",
            Expr::Counter => c"counter",
            Expr::Queue { .. } => c"queue",
            Expr::Target { .. } => c"target",
            Expr::Masq => c"masq",
            Expr::Numgen { .. } => c"numgen",
            Expr::Immediate { .. } | Expr::Verdict { .. } => c"immediate",
            Expr::DnatTo { .. } => c"nat",
        }
    }

    fn network(offset: u32, len: u32) -> Expr {
        Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len, dreg: libc::NFT_REG_1 as u32 }
    }

    fn transport(offset: u32, len: u32) -> Expr {
        Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset, len, dreg: libc::NFT_REG_1 as u32 }
    }

    fn eq(data: &[u8]) -> Expr {
        Expr::Cmp { op: NFT_CMP_EQ, data: data.to_vec() }
    }

    fn and(mask: &[u8]) -> Expr {
        Expr::Bitwise { mask: mask.to_vec(), xor: vec![0; mask.len()] }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChainKind {
    Filter,
    Nat,
}

impl ChainKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        }
    }
}

/// Where a base chain hooks in; its policy is always accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Base {
    pub(super) kind: ChainKind,
    pub(super) hook: Hook,
    pub(super) priority: i32,
}

/// One chain of our table: a base chain, or a regular chain (`base: None`) that only a jump
/// reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChainSpec {
    pub(super) name: String,
    pub(super) base: Option<Base>,
    pub(super) rules: Vec<Vec<Expr>>,
}

/// The key type of our sets, `ipv4_addr . inet_service`, as nft encodes a concatenation
/// (nftables src/datatype.c `concat_type_alloc`: each part's type id shifted in by
/// CONCAT_TYPE_BITS = 6; TYPE_IPADDR = 7, TYPE_INET_SERVICE = 13). Only nft's listing uses it;
/// the kernel stores it as given.
pub(super) const KEY_TYPE: u32 = (7 << 6) | 13;
/// Key length: the address, then the port in network order padded to a 32-bit register
/// (nft_payload_eval zeroes the rest of a register it loads less than 4 bytes into).
pub(super) const KEY_LEN: u32 = 8;

/// A set element's key for a service: `VIP . PORT`.
pub(super) fn service_key(vip: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut k = vip.octets().to_vec();
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// Elements in nft's listing order (see [`ruleset::listing_order`]: the key read as a
/// little-endian number), which is the order [`table_spec`] keeps them in, so the elements
/// read back are compared with them by sorting, not by hashing ten thousand keys.
fn element_order(a: &Element, b: &Element) -> std::cmp::Ordering {
    a.key.iter().rev().cmp(b.key.iter().rev()).then_with(|| a.verdict.cmp(&b.verdict))
}

fn sorted(mut v: Vec<Element>) -> Vec<Element> {
    v.sort_by(element_order);
    v.dedup();
    v
}

/// The items of `old` that `new` lacks, and those of `new` that `old` lacks, of two lists
/// sorted by `key` without duplicates: one pass over both, no hashing.
fn merge_diff<'a, T, K: Ord>(old: &'a [T], new: &'a [T], key: impl Fn(&T) -> K) -> (Vec<&'a T>, Vec<&'a T>) {
    use std::cmp::Ordering;
    let (mut del, mut add) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let ord = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => key(a).cmp(&key(b)),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                del.push(&old[i]);
                i += 1;
            }
            Ordering::Greater => {
                add.push(&new[j]);
                j += 1;
            }
            Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    (del, add)
}

/// An element's place in [`element_order`], to merge lists of them.
fn element_key(e: &Element) -> (Vec<u8>, Option<Jump>) {
    (e.key.iter().rev().copied().collect(), e.verdict.clone())
}

/// A verdict-map element's data: `jump CHAIN` (code NFT_JUMP and the chain's name).
pub(super) type Jump = (u32, Option<String>);

fn jump(chain: String) -> Jump {
    (libc::NFT_JUMP as u32, Some(chain))
}

/// One element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Element {
    pub(super) key: Vec<u8>,
    /// A verdict map's data; `None` in a set.
    pub(super) verdict: Option<Jump>,
}

/// A named set of our table keyed `ipv4_addr . inet_service`, or a verdict map (`map`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SetSpec {
    pub(super) name: &'static str,
    pub(super) map: bool,
    pub(super) elements: Vec<Element>,
}

impl SetSpec {
    /// NFTA_SET_FLAGS: NFT_SET_MAP for a map; a set has none (not constant, so elements come
    /// and go; no intervals, so the kernel picks its resizable hash, nft_set_hash.c `rhash`).
    pub(super) fn flags(&self) -> u32 {
        if self.map {
            libc::NFT_SET_MAP as u32
        } else {
            0
        }
    }

    /// NFTA_SET_DATA_TYPE: NFT_DATA_VERDICT for a verdict map.
    pub(super) fn data_type(&self) -> Option<u32> {
        self.map.then_some(libc::NFT_DATA_VERDICT)
    }
}

/// Everything our table holds: its sets (created first: rules refer to them) and its chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TableSpec {
    pub(super) sets: Vec<SetSpec>,
    pub(super) chains: Vec<ChainSpec>,
}

/// What [`super::apply`] installs for `rs`; see [`crate::ruleset`] for why each part.
pub(super) fn table_spec(rs: &Ruleset, q: QueueImpl) -> TableSpec {
    let fallback = rs.fallback_chains();
    let mut t = frame(rs, q, !fallback.is_empty());
    // In order already, once each.
    t.sets[0].elements = rs.tcp_services().into_iter().map(|(vip, port)| service_element(vip, port)).collect();
    if let Some(map) = t.sets.get_mut(1) {
        map.elements = sorted(fallback.iter().map(|f| fallback_element(f)).collect());
    }
    t.chains.extend(fallback.iter().map(|f| fallback_chain(f)));
    t
}

/// What does not depend on which services there are: the sets' declarations (without
/// elements) and the base chains, for `rs` with (`fallback`) or without a fallback map.
fn frame(rs: &Ruleset, q: QueueImpl, fallback: bool) -> TableSpec {
    let mut sets = vec![SetSpec { name: SERVICES, map: false, elements: Vec::new() }];
    if fallback {
        sets.push(SetSpec { name: FALLBACK, map: true, elements: Vec::new() });
    }
    let base = |kind, hook, priority| Some(Base { kind, hook, priority });
    let mut chains = vec![ChainSpec {
        name: DIVERT.into(),
        base: base(ChainKind::Filter, Hook::PreRouting, PRIO_RAW),
        rules: vec![divert_rule(&rs.queue, q)],
    }];
    if let Some(mark) = rs.events_mark {
        chains.push(ChainSpec {
            name: EVENTS.into(),
            base: base(ChainKind::Filter, Hook::PreRouting, PRIO_MANGLE),
            rules: event_mask_rules(mark),
        });
    }
    let mut nat_pre = vec![ct_new_rule()];
    if fallback {
        nat_pre.push(fallback_vmap_rule());
    }
    nat_pre.push(guard_rule());
    chains.push(ChainSpec { name: NAT_PRE.into(), base: base(ChainKind::Nat, Hook::PreRouting, PRIO_DSTNAT), rules: nat_pre });
    chains.push(ChainSpec {
        name: NAT_POST.into(),
        base: base(ChainKind::Nat, Hook::PostRouting, PRIO_SRCNAT),
        rules: rs.masquerade.iter().map(masquerade_rule).collect(),
    });
    TableSpec { sets, chains }
}

fn service_element(vip: Ipv4Addr, port: u16) -> Element {
    Element { key: service_key(vip, port), verdict: None }
}

fn fallback_element(f: &FallbackRule) -> Element {
    Element { key: service_key(f.vip, f.port), verdict: Some(jump(f.chain())) }
}

fn fallback_chain(f: &FallbackRule) -> ChainSpec {
    ChainSpec { name: f.chain(), base: None, rules: fallback_rules(f) }
}

/// The `events` chain (see [`crate::ruleset`]), as nft 1.0.6 emits
/// ```text
/// tcp flags ! fin,syn,rst accept
///   [ meta load l4proto => reg 1 ]  [ cmp eq reg 1 0x00000006 ]
///   [ payload load 1b @ transport header + 13 => reg 1 ]
///   [ bitwise reg 1 = ( reg 1 & 0x00000007 ) ^ 0x00000000 ]  [ cmp eq reg 1 0x00000000 ]
///   [ immediate reg 0 accept ]
/// tcp flags syn / fin,syn,rst,ack ct mark M ct event set destroy
///   [ meta load l4proto ... ]  [ payload ... & 0x00000017 ]  [ cmp eq reg 1 0x00000002 ]
///   [ ct load mark => reg 1 ]  [ cmp eq reg 1 0x6e667673 ]
///   [ immediate reg 1 0x00000004 ]  [ ct set event with reg 1 ]
/// ct label 127 ct mark M ct event set destroy accept
///   [ ct load label => reg 1 ]
///   [ bitwise reg 1 = ( reg 1 & 0x00000000 0x00000000 0x00000000 0x80000000 ) ^ 0 0 0 0 ]
///   [ cmp neq reg 1 0x00000000 0x00000000 0x00000000 0x00000000 ]
///   [ ct load mark => reg 1 ]  [ cmp eq reg 1 0x6e667673 ]
///   [ immediate reg 1 0x00000004 ]  [ ct set event with reg 1 ]  [ immediate reg 0 accept ]
/// tcp flags fin,rst ct mark M ct label set 127 ct event set destroy,protoinfo
///   [ meta load l4proto ... ]  [ payload ... & 0x00000005 ]  [ cmp neq reg 1 0x00000000 ]
///   [ ct load mark => reg 1 ]  [ cmp eq reg 1 0x6e667673 ]
///   [ immediate reg 1 0x00000000 0x00000000 0x00000000 0x80000000 ]  [ ct set label with reg 1 ]
///   [ immediate reg 1 0x00000024 ]  [ ct set event with reg 1 ]
/// ```
/// The first rule sends every packet without SYN, FIN or RST on at once, so a running flow's
/// data costs one flags test here; only its handful of SYN/FIN/RST packets see the rest.
fn event_mask_rules(mark: u32) -> Vec<Vec<Expr>> {
    // enum ip_conntrack_events (uapi nf_conntrack_common.h): IPCT_DESTROY = 2,
    // IPCT_PROTOINFO = 5.
    const DESTROY: u32 = 1 << 2;
    const PROTOINFO: u32 = 1 << 5;
    let tcp_flags = |flags_mask: u8, op: u32, value: u8| {
        vec![
            Expr::Meta { key: NFT_META_L4PROTO },
            Expr::eq(&[Protocol::Tcp.number()]),
            Expr::transport(13, 1),
            Expr::and(&[flags_mask]),
            Expr::Cmp { op, data: vec![value] },
        ]
    };
    let ours = || vec![Expr::Ct { key: libc::NFT_CT_MARK as u32 }, Expr::eq(&mark.to_ne_bytes())];
    let set_events = |events: u32| {
        vec![
            Expr::Immediate { dreg: libc::NFT_REG_1 as u32, data: events.to_ne_bytes().to_vec() },
            Expr::CtSet { key: libc::NFT_CT_EVENTMASK as u32 },
        ]
    };
    let accept = || Expr::Verdict { code: libc::NF_ACCEPT as u32 };
    let label = FIN_SEEN_LABEL_BYTES.to_vec();
    let data = [tcp_flags(TCP_FIN | TCP_SYN | TCP_RST, NFT_CMP_EQ, 0), vec![accept()]].concat();
    let syn = [tcp_flags(TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK, NFT_CMP_EQ, TCP_SYN), ours(), set_events(DESTROY)].concat();
    let after_fin = [
        vec![
            Expr::Ct { key: libc::NFT_CT_LABELS as u32 },
            Expr::and(&label),
            Expr::Cmp { op: NFT_CMP_NEQ, data: vec![0; 16] },
        ],
        ours(),
        set_events(DESTROY),
        vec![accept()],
    ]
    .concat();
    let first_fin = [
        tcp_flags(TCP_FIN | TCP_RST, NFT_CMP_NEQ, 0),
        ours(),
        vec![
            Expr::Immediate { dreg: libc::NFT_REG_1 as u32, data: label },
            Expr::CtSet { key: libc::NFT_CT_LABELS as u32 },
        ],
        set_events(DESTROY | PROTOINFO),
    ]
    .concat();
    vec![data, syn, after_fin, first_fin]
}

/// Conntrack label 127 (`ct label 127`), which the `events` chain sets on nfvs's entries at
/// their first FIN or RST: bit n of the 128-bit label is bit n % 8 of byte n / 8.
const FIN_SEEN_LABEL_BYTES: [u8; 16] = {
    let mut b = [0u8; 16];
    b[15] = 0x80;
    b
};

/// `tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter queue ...`, in the
/// order nft 1.0.6 emits it (captured with `nft --debug=netlink add rule ...`).
fn divert_rule(queue: &QueueSpec, q: QueueImpl) -> Vec<Expr> {
    let mut r = syn_to_service();
    r.push(Expr::Counter);
    r.push(queue_expr(queue, q));
    r
}

/// `tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services`: the flags first, so a
/// packet that is no connection's first (every data packet) costs no look-up. Only TCP
/// services are in the set (Ruleset::validate refuses others); the SYN match is what limits
/// the rule to new connections.
fn syn_to_service() -> Vec<Expr> {
    let mut r = vec![
        Expr::Meta { key: NFT_META_L4PROTO },
        Expr::eq(&[Protocol::Tcp.number()]),
        Expr::transport(13, 1),
        Expr::and(&[TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK]),
        Expr::eq(&[TCP_SYN]),
    ];
    r.extend(daddr_dport());
    r.push(Expr::Lookup { set: SERVICES.into(), dreg: None });
    r
}

/// `ip daddr . tcp dport` into reg 1 and the 32-bit register after it (the set's key).
fn daddr_dport() -> [Expr; 2] {
    [
        Expr::network(16, 4),
        Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 2, len: 2, dreg: NFT_REG32_01 },
    ]
}

/// `tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter drop` in `nat_pre`
/// (see [`crate::ruleset`]): a SYN that reaches it got no entry from the daemon.
fn guard_rule() -> Vec<Expr> {
    let mut r = syn_to_service();
    r.push(Expr::Counter);
    r.push(Expr::Verdict { code: libc::NF_DROP as u32 });
    r
}

/// `ip daddr . tcp dport vmap @fallback` in `nat_pre`, as nft 1.0.6 emits it:
/// ```text
/// [ meta load l4proto => reg 1 ]  [ cmp eq reg 1 0x00000006 ]
/// [ payload load 4b @ network header + 16 => reg 1 ]
/// [ payload load 2b @ transport header + 2 => reg 9 ]
/// [ lookup reg 1 set fallback dreg 0 0x0 ]
/// ```
fn fallback_vmap_rule() -> Vec<Expr> {
    let mut r = vec![Expr::Meta { key: NFT_META_L4PROTO }, Expr::eq(&[Protocol::Tcp.number()])];
    r.extend(daddr_dport());
    r.push(Expr::Lookup { set: FALLBACK.into(), dreg: Some(libc::NFT_REG_VERDICT as u32) });
    r
}

pub(super) fn queue_expr(queue: &QueueSpec, q: QueueImpl) -> Expr {
    let mut flags = 0;
    if queue.bypass {
        flags |= NFT_QUEUE_FLAG_BYPASS;
    }
    if queue.fanout {
        flags |= NFT_QUEUE_FLAG_CPU_FANOUT;
    }
    match q {
        QueueImpl::Native => Expr::Queue { num: queue.num, total: queue.total, flags },
        QueueImpl::Compat => {
            let mut info = Vec::with_capacity(NFQUEUE_INFO_LEN);
            info.extend_from_slice(&queue.num.to_ne_bytes());
            info.extend_from_slice(&queue.total.to_ne_bytes());
            info.extend_from_slice(&flags.to_ne_bytes());
            info.resize(NFQUEUE_INFO_LEN, 0);
            Expr::Target { name: "NFQUEUE".into(), rev: NFQUEUE_REV, info }
        }
    }
}

/// The kernel-only balancing of one service (see [`crate::ruleset::FallbackRule`]), the rules
/// of its chain: `meta l4proto tcp [numgen inc mod M < W] counter dnat to RIP:RPORT` per server.
/// The map sends only the service's packets here; `meta l4proto tcp` is for nft, which refuses
/// a port in `dnat to` without a transport protocol match in the rule.
fn fallback_rules(f: &FallbackRule) -> Vec<Vec<Expr>> {
    f.steps()
        .into_iter()
        .map(|step| {
            let mut r = vec![Expr::Meta { key: NFT_META_L4PROTO }, Expr::eq(&[Protocol::Tcp.number()])];
            if let Some((modulus, below)) = step.numgen {
                // numgen writes a host-order u32, compared as such.
                r.push(Expr::Numgen { modulus });
                r.push(Expr::Cmp { op: NFT_CMP_LT, data: below.to_ne_bytes().to_vec() });
            }
            r.push(Expr::Counter);
            r.push(Expr::Immediate { dreg: libc::NFT_REG_1 as u32, data: step.to.0.octets().to_vec() });
            r.push(Expr::Immediate { dreg: libc::NFT_REG_2 as u32, data: step.to.1.to_be_bytes().to_vec() });
            r.push(Expr::DnatTo { flags: NAT_FLAGS_ADDR_AND_PORT });
            r
        })
        .collect()
}

/// `ct state new counter`: references conntrack so it runs in the namespace (design.md
/// fact 2).
fn ct_new_rule() -> Vec<Expr> {
    vec![
        Expr::Ct { key: NFT_CT_STATE },
        Expr::and(&CT_STATE_NEW.to_ne_bytes()),
        Expr::Cmp { op: NFT_CMP_NEQ, data: vec![0; 4] },
        Expr::Counter,
    ]
}

/// `ip saddr CIDR masquerade`, matched the way nft does: a /32 compares 4 bytes, a prefix on a
/// byte boundary compares only its bytes, any other prefix masks first.
fn masquerade_rule(c: &Cidr) -> Vec<Expr> {
    let octets = c.addr.octets();
    let mut rule = match c.prefix {
        32 => vec![Expr::network(12, 4), Expr::eq(&octets)],
        p @ (8 | 16 | 24) => {
            let n = usize::from(p / 8);
            vec![Expr::network(12, u32::from(p / 8)), Expr::eq(&octets[..n])]
        }
        _ => vec![Expr::network(12, 4), Expr::and(&c.mask().octets()), Expr::eq(&octets)],
    };
    rule.push(Expr::Masq);
    rule
}

/// An expression read back: `Err(name)` for a kind nfvs never creates.
pub(super) type SeenExpr = Result<Expr, String>;

/// A chain of our table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SeenChain {
    pub(super) name: String,
    pub(super) kind: Option<String>,
    pub(super) hook: Option<u32>,
    pub(super) priority: Option<i32>,
    pub(super) policy: Option<u32>,
    /// Each rule's expressions.
    pub(super) rules: Vec<Vec<SeenExpr>>,
}

/// A set of our table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SeenSet {
    pub(super) name: String,
    pub(super) flags: u32,
    pub(super) key_type: u32,
    pub(super) key_len: u32,
    pub(super) data_type: Option<u32>,
    pub(super) elements: Vec<Element>,
}

/// Our table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct SeenTable {
    pub(super) sets: Vec<SeenSet>,
    pub(super) chains: Vec<SeenChain>,
}

/// Compare the table we installed with the one read back; the error says where they part.
pub(super) fn compare(spec: &TableSpec, seen: &SeenTable) -> Result<(), String> {
    compare_chains(&spec.chains, &seen.chains)?;
    compare_sets(&spec.sets, &seen.sets)
}

/// Base chains in the order they were created, then regular chains by name: the order of
/// regular chains follows the edits that made them, and means nothing.
fn chain_order<T>(chains: &[T], name: impl Fn(&T) -> &str, is_base: impl Fn(&T) -> bool) -> Vec<&T> {
    let mut regular: Vec<&T> = chains.iter().filter(|c| !is_base(c)).collect();
    regular.sort_by(|a, b| name(a).cmp(name(b)));
    chains.iter().filter(|c| is_base(c)).chain(regular).collect()
}

fn compare_chains(spec: &[ChainSpec], seen: &[SeenChain]) -> Result<(), String> {
    let spec = chain_order(spec, |c| &c.name, |c| c.base.is_some());
    let seen = chain_order(seen, |c| &c.name, |c| c.hook.is_some());
    let want: Vec<&str> = spec.iter().map(|c| c.name.as_str()).collect();
    let got: Vec<&str> = seen.iter().map(|c| c.name.as_str()).collect();
    if want != got {
        return Err(format!("chains are [{}], expected [{}]", shortened(&got), shortened(&want)));
    }
    for (s, k) in spec.iter().zip(seen) {
        let want_base = match s.base {
            Some(b) => (Some(b.kind.as_str().to_string()), Some(b.hook as u32), Some(b.priority), Some(libc::NF_ACCEPT as u32)),
            None => (None, None, None, None),
        };
        let got_base = (k.kind.clone(), k.hook, k.priority, k.policy);
        if want_base != got_base {
            return Err(format!(
                "chain {}: (type, hook, priority, policy) is {got_base:?}, expected {want_base:?}",
                k.name
            ));
        }
        compare_rules(s, &k.rules)?;
    }
    Ok(())
}

/// Compare the rules of chain `spec` with the ones read back.
pub(super) fn compare_rules(spec: &ChainSpec, seen: &[Vec<SeenExpr>]) -> Result<(), String> {
    if spec.rules.len() != seen.len() {
        return Err(format!("chain {} has {} rules, expected {}", spec.name, seen.len(), spec.rules.len()));
    }
    for (i, (want, got)) in spec.rules.iter().zip(seen).enumerate() {
        let want: Vec<SeenExpr> = want.iter().cloned().map(Ok).collect();
        if &want != got {
            return Err(format!("chain {} rule {}: {got:?}, expected {want:?}", spec.name, i + 1));
        }
    }
    Ok(())
}

/// Compare our sets, their declarations and their elements (in any order), with the ones read
/// back.
pub(super) fn compare_sets(spec: &[SetSpec], seen: &[SeenSet]) -> Result<(), String> {
    let mut want: Vec<&str> = spec.iter().map(|s| s.name).collect();
    let mut got: Vec<&str> = seen.iter().map(|s| s.name.as_str()).collect();
    want.sort_unstable();
    got.sort_unstable();
    if want != got {
        return Err(format!("sets are [{}], expected [{}]", got.join(", "), want.join(", ")));
    }
    for s in spec {
        let Some(k) = seen.iter().find(|k| k.name == s.name) else { continue };
        let want_decl = (s.flags(), KEY_TYPE, KEY_LEN, s.data_type());
        let got_decl = (k.flags, k.key_type, k.key_len, k.data_type);
        if want_decl != got_decl {
            return Err(format!(
                "set {}: (flags, key type, key length, data type) is {got_decl:?}, expected {want_decl:?}",
                s.name
            ));
        }
        // The kernel dumps them in hash order.
        let mut got: Vec<&Element> = k.elements.iter().collect();
        got.sort_by(|a, b| element_order(a, b));
        if !s.elements.iter().eq(got.iter().copied()) {
            let mut unique = got.clone();
            unique.dedup();
            let unique: Vec<Element> = unique.into_iter().cloned().collect();
            let (extra, missing) = merge_diff(&unique, &s.elements, element_key);
            let missing: Vec<String> = missing.into_iter().map(show).collect();
            let mut extra: Vec<String> = extra.into_iter().map(show).collect();
            if extra.is_empty() && unique.len() < got.len() {
                extra.push("duplicates".into());
            }
            return Err(format!(
                "set {} holds {} elements, expected {}: missing [{}], unexpected [{}]",
                s.name,
                k.elements.len(),
                s.elements.len(),
                shortened(&missing),
                shortened(&extra)
            ));
        }
    }
    Ok(())
}

/// The first few of a long list, and how many more.
fn shortened<T: AsRef<str>>(v: &[T]) -> String {
    const SHOWN: usize = 8;
    let head: Vec<&str> = v.iter().take(SHOWN).map(AsRef::as_ref).collect();
    match v.len().checked_sub(SHOWN) {
        Some(more) if more > 0 => format!("{}, and {more} more", head.join(", ")),
        _ => head.join(", "),
    }
}

/// An element as nft writes it: `192.168.199.200 . 80 : jump CHAIN`.
pub(super) fn show(e: &Element) -> String {
    let key = match e.key[..] {
        [a, b, c, d, p0, p1, 0, 0] => format!("{} . {}", Ipv4Addr::new(a, b, c, d), u16::from_be_bytes([p0, p1])),
        _ => format!("{:02x?}", e.key),
    };
    match &e.verdict {
        None => key,
        Some((code, Some(chain))) if *code == libc::NFT_JUMP as u32 => format!("{key} : jump {chain}"),
        Some((code, chain)) => format!("{key} : verdict {} {}", *code as i32, chain.as_deref().unwrap_or("")),
    }
}

/// What [`super::update`] sends to turn the table of ruleset `old` into that of `new` when
/// they differ only in their services: set elements and fallback chains. Anything else (a base
/// chain's rules, the queue, the fallback map coming or going) makes [`diff`] answer `None`:
/// then the whole table is replaced.
#[derive(Debug, Default)]
pub(super) struct Diff {
    /// Per set of the new table, in order: its name, the elements to delete, those to add.
    pub(super) sets: Vec<(&'static str, Vec<Element>, Vec<Element>)>,
    /// Regular chains to create, with their rules.
    pub(super) add_chains: Vec<ChainSpec>,
    /// Regular chains whose rules change: flushed, then given the new ones.
    pub(super) replace_chains: Vec<ChainSpec>,
    /// Regular chains to delete (after the map elements that jump to them).
    pub(super) del_chains: Vec<String>,
}

impl Diff {
    pub(super) fn is_empty(&self) -> bool {
        self.sets.iter().all(|(_, del, add)| del.is_empty() && add.is_empty())
            && self.add_chains.is_empty()
            && self.replace_chains.is_empty()
            && self.del_chains.is_empty()
    }

    /// How many set elements it deletes and adds.
    pub(super) fn elements(&self) -> usize {
        self.sets.iter().map(|(_, del, add)| del.len() + add.len()).sum()
    }
}

/// The difference between the tables of `old` and `new`, computed from the rulesets: one pass
/// over their services, building expressions only for the services that changed, so that an
/// edit of one service among ten thousand costs little more than with one.
pub(super) fn diff(old: &Ruleset, new: &Ruleset, q: QueueImpl) -> Option<Diff> {
    let (old_fb, new_fb) = (old.fallback_chains(), new.fallback_chains());
    if frame(old, q, !old_fb.is_empty()) != frame(new, q, !new_fb.is_empty()) {
        return None;
    }
    let mut d = Diff::default();
    let (old_s, new_s) = (old.tcp_services(), new.tcp_services());
    let (del, add) = merge_diff(&old_s, &new_s, |&(vip, port)| listing_order(vip, port));
    d.sets.push((
        SERVICES,
        del.into_iter().map(|&(vip, port)| service_element(vip, port)).collect(),
        add.into_iter().map(|&(vip, port)| service_element(vip, port)).collect(),
    ));
    if new_fb.is_empty() {
        return Some(d);
    }
    let by_service = |v: &[&'_ FallbackRule]| -> std::collections::HashMap<(Ipv4Addr, u16), usize> {
        v.iter().enumerate().map(|(i, f)| ((f.vip, f.port), i)).collect()
    };
    let (old_i, new_i) = (by_service(&old_fb), by_service(&new_fb));
    let (mut del, mut add) = (Vec::new(), Vec::new());
    for f in &new_fb {
        match old_i.get(&(f.vip, f.port)).map(|&i| old_fb[i]) {
            None => {
                add.push(fallback_element(f));
                d.add_chains.push(fallback_chain(f));
            }
            Some(o) if o.servers != f.servers && o.steps() != f.steps() => d.replace_chains.push(fallback_chain(f)),
            Some(_) => {}
        }
    }
    for o in old_fb.iter().filter(|o| !new_i.contains_key(&(o.vip, o.port))) {
        del.push(fallback_element(o));
        d.del_chains.push(o.chain());
    }
    d.sets.push((FALLBACK, del, add));
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{Cidr, Divert};

    fn tcp(vip: [u8; 4], port: u16) -> Divert {
        Divert::new(Protocol::Tcp, Ipv4Addr::from(vip), port).unwrap()
    }

    fn lab(queue: QueueSpec) -> Ruleset {
        Ruleset {
            events_mark: None,
            queue,
            diverts: vec![tcp([192, 168, 199, 200], 80)],
            masquerade: vec!["192.168.226.0/24".parse().unwrap()],
            fallback: vec![],
        }
    }

    fn chain<'a>(spec: &'a TableSpec, name: &str) -> &'a ChainSpec {
        spec.chains.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no chain {name}"))
    }

    fn base(spec: &TableSpec, name: &str) -> (ChainKind, Hook, i32) {
        let b = chain(spec, name).base.expect("a base chain");
        (b.kind, b.hook, b.priority)
    }

    #[test]
    fn names_match_the_ruleset_module() {
        assert_eq!(TABLE.to_str().unwrap(), ruleset::TABLE);
        let spec = table_spec(&Ruleset { events_mark: Some(1), ..lab(QueueSpec::single(0)) }, QueueImpl::Native);
        let names: Vec<&str> = spec.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["divert", "events", "nat_pre", "nat_post"]);
        assert_eq!(spec.sets.iter().map(|s| s.name).collect::<Vec<_>>(), ["services"]);
    }

    /// The divert rule, expression by expression, against what nft 1.0.6 emits for
    /// `tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter` and
    /// iptables-nft 1.8.9 for `-j NFQUEUE --queue-num 0`, as `nft --debug=netlink add rule`
    /// shows them (registers print as little-endian words on this x86-64 host):
    ///
    /// ```text
    /// [ meta load l4proto => reg 1 ]
    /// [ cmp eq reg 1 0x00000006 ]
    /// [ payload load 1b @ transport header + 13 => reg 1 ]
    /// [ bitwise reg 1 = ( reg 1 & 0x00000017 ) ^ 0x00000000 ]
    /// [ cmp eq reg 1 0x00000002 ]
    /// [ payload load 4b @ network header + 16 => reg 1 ]
    /// [ payload load 2b @ transport header + 2 => reg 9 ]
    /// [ lookup reg 1 set services ]
    /// [ counter pkts 0 bytes 0 ]
    /// [ target name NFQUEUE rev 3 ]
    /// ```
    /// and `nft --debug=netlink add element ip t services { 192.168.199.200 . 80 }`:
    /// `element c8c7a8c0 00005000  : 0 [end]` (the address, the port, two bytes of padding).
    #[test]
    fn divert_rule_matches_nft() {
        let spec = table_spec(&lab(QueueSpec::single(0)), QueueImpl::Compat);
        assert_eq!(spec.chains[0].name, "divert");
        assert_eq!(base(&spec, "divert"), (ChainKind::Filter, Hook::PreRouting, -300));
        let expected = vec![
            Expr::Meta { key: 16 },
            Expr::Cmp { op: 0, data: vec![6] },
            Expr::Payload { base: 2, offset: 13, len: 1, dreg: 1 },
            Expr::Bitwise { mask: vec![0x17], xor: vec![0] },
            Expr::Cmp { op: 0, data: vec![0x02] },
            Expr::Payload { base: 1, offset: 16, len: 4, dreg: 1 },
            Expr::Payload { base: 2, offset: 2, len: 2, dreg: 9 },
            Expr::Lookup { set: "services".into(), dreg: None },
            Expr::Counter,
            Expr::Target { name: "NFQUEUE".into(), rev: 3, info: vec![0, 0, 1, 0, 0, 0, 0, 0] },
        ];
        assert_eq!(spec.chains[0].rules, vec![expected]);
        assert_eq!(
            spec.sets,
            vec![SetSpec {
                name: "services",
                map: false,
                elements: vec![Element { key: vec![0xc0, 0xa8, 0xc7, 0xc8, 0x00, 0x50, 0, 0], verdict: None }],
            }]
        );
    }

    /// Whatever the number of services, the same rules: only the set grows.
    #[test]
    fn rules_do_not_grow_with_services() {
        let mut many = lab(QueueSpec::single(0));
        many.diverts = (1..=1000).map(|p| tcp([10, 0, 0, 1], p)).collect();
        let (one, many) = (table_spec(&lab(QueueSpec::single(0)), QueueImpl::Native), table_spec(&many, QueueImpl::Native));
        assert_eq!(one.chains, many.chains);
        assert_eq!(many.sets[0].elements.len(), 1000);
    }

    /// xt_NFQ_info_v3 in host order (x86-64: little endian) plus two bytes of padding.
    #[test]
    fn queue_forms() {
        let q = QueueSpec { num: 0x0102, total: 4, bypass: true, fanout: true };
        assert_eq!(queue_expr(&q, QueueImpl::Native), Expr::Queue { num: 0x0102, total: 4, flags: 3 });
        let Expr::Target { name, rev, info } = queue_expr(&q, QueueImpl::Compat) else {
            panic!("not a target")
        };
        assert_eq!((name.as_str(), rev), ("NFQUEUE", 3));
        let mut want = Vec::new();
        want.extend_from_slice(&0x0102u16.to_ne_bytes());
        want.extend_from_slice(&4u16.to_ne_bytes());
        want.extend_from_slice(&3u16.to_ne_bytes());
        want.extend_from_slice(&[0, 0]);
        assert_eq!(info, want);
        let q = QueueSpec { num: 7, total: 1, bypass: true, fanout: false };
        assert_eq!(queue_expr(&q, QueueImpl::Native), Expr::Queue { num: 7, total: 1, flags: 1 });
    }

    /// nft 1.0.6 for `ct state new counter`:
    /// ```text
    /// [ ct load state => reg 1 ]
    /// [ bitwise reg 1 = ( reg 1 & 0x00000008 ) ^ 0x00000000 ]
    /// [ cmp neq reg 1 0x00000000 ]
    /// [ counter pkts 0 bytes 0 ]
    /// ```
    #[test]
    fn nat_pre_references_conntrack() {
        let spec = table_spec(&lab(QueueSpec::single(0)), QueueImpl::Native);
        assert_eq!(base(&spec, "nat_pre"), (ChainKind::Nat, Hook::PreRouting, -100));
        let nat_pre = chain(&spec, "nat_pre");
        assert_eq!(
            nat_pre.rules[0],
            vec![
                Expr::Ct { key: 0 },
                Expr::Bitwise { mask: 8u32.to_ne_bytes().to_vec(), xor: vec![0; 4] },
                Expr::Cmp { op: 1, data: vec![0; 4] },
                Expr::Counter,
            ]
        );
        // Then the guard: the divert's match, `counter`, `[ immediate reg 0 drop ]`.
        assert_eq!(nat_pre.rules.len(), 2);
        let guard = &nat_pre.rules[1];
        assert_eq!(guard[..guard.len() - 2], spec.chains[0].rules[0][..guard.len() - 2]);
        assert_eq!(guard[guard.len() - 2..], [Expr::Counter, Expr::Verdict { code: 0 }]);
    }

    /// `--overload fallback`: map `fallback`, the vmap rule before the guard, and a regular
    /// chain per service, as nft 1.0.6 emits
    /// ```text
    /// ip daddr . tcp dport vmap @fallback
    ///   [ meta load l4proto => reg 1 ]  [ cmp eq reg 1 0x00000006 ]
    ///   [ payload load 4b @ network header + 16 => reg 1 ]
    ///   [ payload load 2b @ transport header + 2 => reg 9 ]
    ///   [ lookup reg 1 set fallback dreg 0 ]
    /// add element ip t fallback { 192.168.199.200 . 80 : jump c }
    ///   element c8c7a8c0 00005000  : jump -> c 0 [end]
    /// ```
    #[test]
    fn fallback_is_a_map_to_a_chain_per_service() {
        let a = |n| Ipv4Addr::new(192, 168, 226, n);
        let mut rs = lab(QueueSpec::single(0));
        rs.fallback = vec![
            FallbackRule { vip: Ipv4Addr::new(192, 168, 199, 200), port: 80, servers: vec![(a(131), 80, 1), (a(130), 80, 2)] },
            // No server with a weight: no chain, no element.
            FallbackRule { vip: Ipv4Addr::new(192, 168, 199, 200), port: 81, servers: vec![(a(131), 80, 0)] },
        ];
        let spec = table_spec(&rs, QueueImpl::Native);
        let key = vec![0xc0, 0xa8, 0xc7, 0xc8, 0x00, 0x50, 0, 0];
        assert_eq!(spec.sets[1].name, "fallback");
        assert!(spec.sets[1].map);
        assert_eq!(
            spec.sets[1].elements,
            vec![Element { key, verdict: Some((libc::NFT_JUMP as u32, Some("fallback-192.168.199.200-80".into()))) }]
        );
        let nat_pre = chain(&spec, "nat_pre");
        assert_eq!(
            nat_pre.rules[1],
            vec![
                Expr::Meta { key: 16 },
                Expr::Cmp { op: 0, data: vec![6] },
                Expr::Payload { base: 1, offset: 16, len: 4, dreg: 1 },
                Expr::Payload { base: 2, offset: 2, len: 2, dreg: 9 },
                Expr::Lookup { set: "fallback".into(), dreg: Some(0) },
            ]
        );
        assert_eq!(nat_pre.rules.len(), 3, "ct state new, the map, the guard");
        let fb = chain(&spec, "fallback-192.168.199.200-80");
        assert_eq!(fb.base, None);
        assert_eq!(spec.chains.last().unwrap().name, "fallback-192.168.199.200-80");
        // `meta l4proto tcp numgen inc mod 3 < 1 counter dnat to 192.168.226.131:80`, then the
        // last server without numgen.
        assert_eq!(fb.rules.len(), 2);
        assert_eq!(fb.rules[0][..4], [Expr::Meta { key: 16 }, Expr::Cmp { op: 0, data: vec![6] }, Expr::Numgen { modulus: 3 }, Expr::Cmp { op: 2, data: 1u32.to_ne_bytes().to_vec() }]);
        assert_eq!(fb.rules[1][2], Expr::Counter);
    }

    /// nft 1.0.6 for `ip saddr X masquerade`, X = 192.168.226.0/24, 10.16.0.0/12, 10.1.2.3,
    /// 0.0.0.0/0:
    /// ```text
    /// [ payload load 3b @ network header + 12 => reg 1 ]  [ cmp eq reg 1 0x00e2a8c0 ]
    /// [ payload load 4b @ network header + 12 => reg 1 ]
    ///   [ bitwise reg 1 = ( reg 1 & 0x0000f0ff ) ^ 0x00000000 ]  [ cmp eq reg 1 0x0000100a ]
    /// [ payload load 4b @ network header + 12 => reg 1 ]  [ cmp eq reg 1 0x0302010a ]
    /// [ payload load 4b @ network header + 12 => reg 1 ]
    ///   [ bitwise reg 1 = ( reg 1 & 0x00000000 ) ^ 0x00000000 ]  [ cmp eq reg 1 0x00000000 ]
    /// ```
    /// each followed by `[ masq ]`.
    #[test]
    fn masquerade_matches_nft() {
        let c = |s: &str| masquerade_rule(&s.parse::<Cidr>().unwrap());
        assert_eq!(c("192.168.226.0/24"), vec![Expr::network(12, 3), Expr::eq(&[192, 168, 226]), Expr::Masq]);
        assert_eq!(
            c("10.16.0.0/12"),
            vec![Expr::network(12, 4), Expr::and(&[255, 240, 0, 0]), Expr::eq(&[10, 16, 0, 0]), Expr::Masq]
        );
        assert_eq!(c("10.1.2.3"), vec![Expr::network(12, 4), Expr::eq(&[10, 1, 2, 3]), Expr::Masq]);
        assert_eq!(
            c("0.0.0.0/0"),
            vec![Expr::network(12, 4), Expr::and(&[0; 4]), Expr::eq(&[0; 4]), Expr::Masq]
        );
        let spec = table_spec(&lab(QueueSpec::single(0)), QueueImpl::Native);
        assert_eq!(base(&spec, "nat_post"), (ChainKind::Nat, Hook::PostRouting, 100));
    }

    /// What the kernel would report for `spec`, exactly.
    fn seen_of(spec: &TableSpec) -> SeenTable {
        SeenTable {
            sets: spec
                .sets
                .iter()
                .map(|s| SeenSet {
                    name: s.name.into(),
                    flags: s.flags(),
                    key_type: KEY_TYPE,
                    key_len: KEY_LEN,
                    data_type: s.data_type(),
                    // The kernel dumps elements in hash order.
                    elements: s.elements.iter().rev().cloned().collect(),
                })
                .collect(),
            chains: spec
                .chains
                .iter()
                .map(|c| SeenChain {
                    name: c.name.clone(),
                    kind: c.base.map(|b| b.kind.as_str().into()),
                    hook: c.base.map(|b| b.hook as u32),
                    priority: c.base.map(|b| b.priority),
                    policy: c.base.map(|_| libc::NF_ACCEPT as u32),
                    rules: c.rules.iter().map(|r| r.iter().cloned().map(Ok).collect()).collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn compare_reports_the_first_difference() {
        let mut rs = lab(QueueSpec::single(0));
        rs.diverts.push(tcp([10, 0, 0, 1], 443));
        let spec = table_spec(&rs, QueueImpl::Compat);
        let mut seen = seen_of(&spec);
        assert_eq!(compare(&spec, &seen), Ok(()));
        seen.chains[0].rules[0][6] = Ok(Expr::network(16, 4));
        assert!(compare(&spec, &seen).unwrap_err().starts_with("chain divert rule 1:"));
        seen.chains[2].priority = Some(0);
        seen.chains.swap(1, 2);
        assert!(compare(&spec, &seen).unwrap_err().starts_with("chains are [divert, nat_post, nat_pre]"));

        let mut seen = seen_of(&spec);
        seen.sets[0].elements[0].key[5] = 81;
        assert_eq!(
            compare(&spec, &seen).unwrap_err(),
            "set services holds 2 elements, expected 2: missing [10.0.0.1 . 443], unexpected [10.0.0.1 . 337]"
        );
        let mut seen = seen_of(&spec);
        let first = seen.sets[0].elements[0].clone();
        seen.sets[0].elements.push(first);
        assert!(compare(&spec, &seen).unwrap_err().starts_with("set services holds 3 elements, expected 2"));
        seen.sets[0].key_len = 4;
        assert!(compare(&spec, &seen).unwrap_err().starts_with("set services: (flags, key type, key length, data type)"));
        seen.sets.clear();
        assert_eq!(compare(&spec, &seen).unwrap_err(), "sets are [], expected [services]");
    }

    /// Regular chains are compared by name, in any order: edits create them in their own order.
    #[test]
    fn regular_chains_in_any_order() {
        let a = Ipv4Addr::new(192, 168, 226, 130);
        let mut rs = lab(QueueSpec::single(0));
        rs.fallback = (80..83).map(|port| FallbackRule { vip: a, port, servers: vec![(a, 80, 1)] }).collect();
        let spec = table_spec(&rs, QueueImpl::Native);
        let mut seen = seen_of(&spec);
        let n = seen.chains.len();
        seen.chains.swap(n - 1, n - 3);
        assert_eq!(compare(&spec, &seen), Ok(()));
        seen.chains.pop();
        assert!(compare(&spec, &seen).unwrap_err().starts_with("chains are [divert, nat_pre, nat_post, fallback-"));
    }

    fn with_services(ports: std::ops::Range<u16>, fallback: bool) -> Ruleset {
        let vip = Ipv4Addr::new(10, 0, 0, 1);
        let rs1 = Ipv4Addr::new(192, 168, 226, 130);
        let mut rs = lab(QueueSpec::single(0));
        rs.diverts = ports.clone().map(|p| tcp(vip.octets(), p)).collect();
        if fallback {
            rs.fallback = ports.map(|port| FallbackRule { vip, port, servers: vec![(rs1, 80, 1)] }).collect();
        }
        rs
    }

    #[test]
    fn diff_of_a_service_is_its_elements_and_its_chain() {
        let q = QueueImpl::Native;
        let (old, new) = (with_services(1..100, false), with_services(2..101, false));
        let d = diff(&old, &new, q).expect("only elements differ");
        assert_eq!(d.sets.len(), 1);
        let (name, del, add) = &d.sets[0];
        assert_eq!((*name, del.len(), add.len()), ("services", 1, 1));
        assert_eq!(show(&del[0]), "10.0.0.1 . 1");
        assert_eq!(show(&add[0]), "10.0.0.1 . 100");
        assert!(d.add_chains.is_empty() && d.replace_chains.is_empty() && d.del_chains.is_empty());
        assert!(diff(&new, &new, q).unwrap().is_empty());

        let (old, new) = (with_services(1..4, true), with_services(2..5, true));
        let d = diff(&old, &new, q).expect("only elements and regular chains differ");
        let counts: Vec<_> = d.sets.iter().map(|(n, del, add)| (*n, del.len(), add.len())).collect();
        assert_eq!(counts, [("services", 1, 1), ("fallback", 1, 1)]);
        assert_eq!(d.sets[1].2[0], table_spec(&new, q).sets[1].elements[2], "the jump to the new chain");
        assert_eq!(d.add_chains, [chain(&table_spec(&new, q), "fallback-10.0.0.1-4").clone()]);
        assert_eq!(d.del_chains, ["fallback-10.0.0.1-1"]);
        assert!(d.replace_chains.is_empty());
        assert_eq!(d.elements(), 4);
        // A second server: that service's chain alone, with its new rules.
        let mut two = new.clone();
        two.fallback[0].servers.push((Ipv4Addr::new(192, 168, 226, 131), 80, 1));
        let d = diff(&new, &two, q).unwrap();
        assert_eq!(d.replace_chains, [chain(&table_spec(&two, q), "fallback-10.0.0.1-2").clone()]);
        assert_eq!(d.elements(), 0);
        // A server of weight 0 added, or the one server's weight changed: the same rules,
        // nothing to do.
        let mut idle = two.clone();
        idle.fallback[0].servers.push((Ipv4Addr::new(192, 168, 226, 132), 80, 0));
        assert!(diff(&two, &idle, q).unwrap().is_empty());
        let mut heavier = new.clone();
        heavier.fallback[0].servers[0].2 = 2;
        assert!(diff(&new, &heavier, q).unwrap().is_empty());
    }

    #[test]
    fn diff_of_anything_else_is_a_replace() {
        let q = QueueImpl::Native;
        let rs = with_services(1..3, false);
        let mut other = rs.clone();
        other.queue.num = 1;
        assert!(diff(&rs, &other, q).is_none(), "the queue");
        let mut other = rs.clone();
        other.masquerade.clear();
        assert!(diff(&rs, &other, q).is_none(), "masquerade");
        // The fallback map appears: a set is declared.
        assert!(diff(&rs, &with_services(1..3, true), q).is_none(), "fallback");
        assert!(diff(&with_services(1..3, true), &rs, q).is_none(), "no fallback");
    }
}
