//! Our table as data: the chains and rules [`super::apply`] installs for a [`Ruleset`], each
//! expression a plain value ([`Expr`]) in the byte layout nft 1.0.6 emits for the same rule
//! (`nft --debug=netlink`), and the comparison with what the kernel reports back. Pure: no
//! libnftnl call, no socket (those are in the sibling files).

use std::ffi::CStr;

use nftnl::Hook;
use nftnl_sys::libc;

use super::QueueImpl;
use crate::ruleset::{Cidr, Divert, QueueSpec, Ruleset};
use crate::model::Protocol;

pub(super) const TABLE: &CStr = c"nfvs";
const DIVERT: &CStr = c"divert";
const EVENTS: &CStr = c"events";
const NAT_PRE: &CStr = c"nat_pre";
const NAT_POST: &CStr = c"nat_post";

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

/// One nftables expression as data. Registers are always `reg 1`, as nft uses them here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expr {
    /// `payload load LEN b @ BASE header + OFFSET => reg 1`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
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
        Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len }
    }

    fn transport(offset: u32, len: u32) -> Expr {
        Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset, len }
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

/// One base chain of our table, policy accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChainSpec {
    pub(super) name: &'static CStr,
    pub(super) kind: ChainKind,
    pub(super) hook: Hook,
    pub(super) priority: i32,
    pub(super) rules: Vec<Vec<Expr>>,
}

/// The chains and rules [`super::apply`] installs for `rs`; see [`crate::ruleset`] for why each one.
pub(super) fn table_spec(rs: &Ruleset, q: QueueImpl) -> Vec<ChainSpec> {
    let mut chains = vec![ChainSpec {
        name: DIVERT,
        kind: ChainKind::Filter,
        hook: Hook::PreRouting,
        priority: PRIO_RAW,
        rules: rs.diverts.iter().map(|d| divert_rule(d, &rs.queue, q)).collect(),
    }];
    if let Some(mark) = rs.events_mark {
        chains.push(ChainSpec {
            name: EVENTS,
            kind: ChainKind::Filter,
            hook: Hook::PreRouting,
            priority: PRIO_MANGLE,
            rules: event_mask_rules(mark),
        });
    }
    chains.extend([
        ChainSpec {
            name: NAT_PRE,
            kind: ChainKind::Nat,
            hook: Hook::PreRouting,
            priority: PRIO_DSTNAT,
            rules: std::iter::once(ct_new_rule())
                .chain(rs.fallback.iter().flat_map(fallback_rules))
                .chain(rs.diverts.iter().map(guard_rule))
                .collect(),
        },
        ChainSpec {
            name: NAT_POST,
            kind: ChainKind::Nat,
            hook: Hook::PostRouting,
            priority: PRIO_SRCNAT,
            rules: rs.masquerade.iter().map(masquerade_rule).collect(),
        },
    ]);
    chains
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

/// `ip daddr VIP tcp dport PORT tcp flags syn / fin,syn,rst,ack counter queue ...`, in the
/// order nft 1.0.6 emits it (captured with `nft --debug=netlink add rule ...`).
fn divert_rule(d: &Divert, queue: &QueueSpec, q: QueueImpl) -> Vec<Expr> {
    let mut r = divert_rule_match(d);
    r.push(Expr::Counter);
    r.push(queue_expr(queue, q));
    r
}

/// `ip daddr VIP tcp dport PORT tcp flags syn / fin,syn,rst,ack`.
fn divert_rule_match(d: &Divert) -> Vec<Expr> {
    // Only TCP reaches here (Ruleset::validate); the SYN match below is what limits the rule
    // to new connections.
    debug_assert_eq!(d.proto, Protocol::Tcp);
    vec![
        Expr::network(16, 4),
        Expr::eq(&d.vip.octets()),
        Expr::Meta { key: NFT_META_L4PROTO },
        Expr::eq(&[d.proto.number()]),
        Expr::transport(2, 2),
        Expr::eq(&d.port.to_be_bytes()),
        Expr::transport(13, 1),
        Expr::and(&[TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK]),
        Expr::eq(&[TCP_SYN]),
    ]
}

/// `ip daddr VIP tcp dport PORT tcp flags syn / fin,syn,rst,ack counter drop` in `nat_pre`
/// (see [`crate::ruleset`]): a SYN that reaches it got no entry from the daemon.
fn guard_rule(d: &Divert) -> Vec<Expr> {
    let mut r = divert_rule_match(d);
    r.push(Expr::Counter);
    r.push(Expr::Verdict { code: libc::NF_DROP as u32 });
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

/// The kernel-only balancing of one service (see [`crate::ruleset::FallbackRule`]):
/// `ip daddr VIP tcp dport PORT [numgen inc mod M < W] counter dnat to RIP:RPORT` per server.
fn fallback_rules(f: &crate::ruleset::FallbackRule) -> Vec<Vec<Expr>> {
    f.steps()
        .into_iter()
        .map(|step| {
            let mut r = vec![
                Expr::network(16, 4),
                Expr::eq(&f.vip.octets()),
                Expr::Meta { key: NFT_META_L4PROTO },
                Expr::eq(&[Protocol::Tcp.number()]),
                Expr::transport(2, 2),
                Expr::eq(&f.port.to_be_bytes()),
            ];
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

/// Compare the chains we installed with the ones read back; the error says where they part.
pub(super) fn compare(spec: &[ChainSpec], seen: &[SeenChain]) -> Result<(), String> {
    let names = |v: Vec<String>| v.join(", ");
    let want: Vec<String> = spec.iter().map(|c| c.name.to_string_lossy().into_owned()).collect();
    let got: Vec<String> = seen.iter().map(|c| c.name.clone()).collect();
    if want != got {
        return Err(format!("chains are [{}], expected [{}]", names(got), names(want)));
    }
    for (s, k) in spec.iter().zip(seen) {
        let want_base = (
            Some(s.kind.as_str().to_string()),
            Some(s.hook as u32),
            Some(s.priority),
            Some(libc::NF_ACCEPT as u32),
        );
        let got_base = (k.kind.clone(), k.hook, k.priority, k.policy);
        if want_base != got_base {
            return Err(format!(
                "chain {}: (type, hook, priority, policy) is {got_base:?}, expected {want_base:?}",
                k.name
            ));
        }
        if s.rules.len() != k.rules.len() {
            return Err(format!("chain {} has {} rules, expected {}", k.name, k.rules.len(), s.rules.len()));
        }
        for (i, (want, got)) in s.rules.iter().zip(&k.rules).enumerate() {
            let want: Vec<SeenExpr> = want.iter().cloned().map(Ok).collect();
            if &want != got {
                return Err(format!("chain {} rule {}: {got:?}, expected {want:?}", k.name, i + 1));
            }
        }
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::{self, Cidr};
    use std::net::Ipv4Addr;

    fn lab(queue: QueueSpec) -> Ruleset {
        Ruleset {
            events_mark: None,
            queue,
            diverts: vec![Divert::new(Protocol::Tcp, Ipv4Addr::new(192, 168, 199, 200), 80).unwrap()],
            masquerade: vec!["192.168.226.0/24".parse().unwrap()],
            fallback: vec![],
        }
    }

    #[test]
    fn names_match_the_ruleset_module() {
        assert_eq!(TABLE.to_str().unwrap(), ruleset::TABLE);
        assert_eq!(DIVERT.to_str().unwrap(), ruleset::CHAIN_DIVERT);
        assert_eq!(NAT_PRE.to_str().unwrap(), ruleset::CHAIN_NAT_PRE);
        assert_eq!(NAT_POST.to_str().unwrap(), ruleset::CHAIN_NAT_POST);
    }

    /// The divert rule, expression by expression, against what nft 1.0.6 emits for
    /// `ip daddr 192.168.199.200 tcp dport 80 tcp flags syn / fin,syn,rst,ack counter` and
    /// iptables-nft 1.8.9 for `-j NFQUEUE --queue-num 0`, as `nft --debug=netlink list table`
    /// shows them (registers print as little-endian words on this x86-64 host):
    ///
    /// ```text
    /// [ payload load 4b @ network header + 16 => reg 1 ]
    /// [ cmp eq reg 1 0xc8c7a8c0 ]
    /// [ meta load l4proto => reg 1 ]
    /// [ cmp eq reg 1 0x00000006 ]
    /// [ payload load 2b @ transport header + 2 => reg 1 ]
    /// [ cmp eq reg 1 0x00005000 ]
    /// [ payload load 1b @ transport header + 13 => reg 1 ]
    /// [ bitwise reg 1 = ( reg 1 & 0x00000017 ) ^ 0x00000000 ]
    /// [ cmp eq reg 1 0x00000002 ]
    /// [ counter pkts 0 bytes 0 ]
    /// [ target name NFQUEUE rev 3 ]
    /// ```
    #[test]
    fn divert_rule_matches_nft() {
        let spec = table_spec(&lab(QueueSpec::single(0)), QueueImpl::Compat);
        assert_eq!(spec[0].name, DIVERT);
        assert_eq!(
            (spec[0].kind, spec[0].hook, spec[0].priority),
            (ChainKind::Filter, Hook::PreRouting, -300)
        );
        let rule = &spec[0].rules[0];
        let expected = vec![
            Expr::Payload { base: 1, offset: 16, len: 4 },
            Expr::Cmp { op: 0, data: vec![0xc0, 0xa8, 0xc7, 0xc8] },
            Expr::Meta { key: 16 },
            Expr::Cmp { op: 0, data: vec![6] },
            Expr::Payload { base: 2, offset: 2, len: 2 },
            Expr::Cmp { op: 0, data: vec![0x00, 0x50] },
            Expr::Payload { base: 2, offset: 13, len: 1 },
            Expr::Bitwise { mask: vec![0x17], xor: vec![0] },
            Expr::Cmp { op: 0, data: vec![0x02] },
            Expr::Counter,
            Expr::Target { name: "NFQUEUE".into(), rev: 3, info: vec![0, 0, 1, 0, 0, 0, 0, 0] },
        ];
        assert_eq!(rule, &expected);
        assert_eq!(&expected[1], &Expr::eq(&Ipv4Addr::new(192, 168, 199, 200).octets()));
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
        assert_eq!((spec[1].kind, spec[1].hook, spec[1].priority), (ChainKind::Nat, Hook::PreRouting, -100));
        assert_eq!(
            spec[1].rules[0],
            vec![
                Expr::Ct { key: 0 },
                Expr::Bitwise { mask: 8u32.to_ne_bytes().to_vec(), xor: vec![0; 4] },
                Expr::Cmp { op: 1, data: vec![0; 4] },
                Expr::Counter,
            ]
        );
        // Then the guard: the divert's match, `counter`, `[ immediate reg 0 drop ]`.
        assert_eq!(spec[1].rules.len(), 2);
        let guard = &spec[1].rules[1];
        assert_eq!(guard[..guard.len() - 2], spec[0].rules[0][..guard.len() - 2]);
        assert_eq!(guard[guard.len() - 2..], [Expr::Counter, Expr::Verdict { code: 0 }]);
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
        assert_eq!((spec[2].kind, spec[2].hook, spec[2].priority), (ChainKind::Nat, Hook::PostRouting, 100));
    }

    #[test]
    fn compare_reports_the_first_difference() {
        let spec = table_spec(&lab(QueueSpec::single(0)), QueueImpl::Compat);
        let mut seen: Vec<SeenChain> = spec
            .iter()
            .map(|c| SeenChain {
                name: c.name.to_string_lossy().into_owned(),
                kind: Some(c.kind.as_str().into()),
                hook: Some(c.hook as u32),
                priority: Some(c.priority),
                policy: Some(libc::NF_ACCEPT as u32),
                rules: c.rules.iter().map(|r| r.iter().cloned().map(Ok).collect()).collect(),
            })
            .collect();
        assert_eq!(compare(&spec, &seen), Ok(()));
        seen[0].rules[0][5] = Ok(Expr::eq(&[0, 81]));
        assert!(compare(&spec, &seen).unwrap_err().starts_with("chain divert rule 1:"));
        seen[2].priority = Some(0);
        seen.swap(1, 2);
        assert!(compare(&spec, &seen).unwrap_err().starts_with("chains are [divert, nat_post, nat_pre]"));
    }
}
