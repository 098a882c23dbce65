//! Installs, checks and removes our table (`ip nfvs`) through nf_tables netlink.
//!
//! [`apply`] turns a [`Ruleset`] into one atomic nftnl batch — add table, delete table, add
//! table with its chains and rules — so a table left from a crash is replaced and nothing else
//! is touched. It checks the acknowledgement of every message by sequence number, then reads
//! the table back and compares it, expression by expression, with what it sent.
//! [`detect_queue_impl`] finds out whether this kernel has the native `queue` expression or
//! only the xt `NFQUEUE` target (design.md fact 3), and [`remove`] deletes the table.
//!
//! Every expression is described as plain data (`Expr`) first. The same type is built into
//! libnftnl objects for the batch and parsed back from the kernel's dump, so "what we sent"
//! and "what the kernel holds" are compared as values. The byte layouts follow what nft 1.0.6
//! itself emits for the same rules (`nft --debug=netlink`), so `nft list` prints our table in
//! its usual form (see [`Ruleset::render`]). Design.md fact 10 explains the byte orders: packet
//! fields are compared as the bytes they are on the wire, kernel values (ct state) in host
//! order.
//!
//! All functions act on the network namespace of the calling thread.

use std::ffi::{c_void, CStr, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use nftnl::expr::Expression;
use nftnl::{Batch, Chain, ChainType, FinalizedBatch, Hook, MsgType, Policy, ProtoFamily, Rule, Table};
use nftnl_sys::{self as sys, libc};

use super::socket::{self, recv_mnl, setsockopt, setsockopt_int, RecvBuf};
use crate::ruleset::{Cidr, Divert, QueueSpec, Ruleset, RulesetError};
use crate::service::Protocol;
use crate::wire::netlink::{self, nlmsgerr, Message, Messages, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP_INTR};

/// How the divert rule hands packets to NFQUEUE on this kernel (design.md fact 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueImpl {
    /// The nftables `queue` expression (CONFIG_NFT_QUEUE, net/netfilter/nft_queue.c).
    Native,
    /// The xt `NFQUEUE` target, revision 3, through nft_compat — what iptables-nft emits.
    Compat,
}

impl fmt::Display for QueueImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueImpl::Native => "native nftables queue expression",
            QueueImpl::Compat => "xt NFQUEUE target (nft_compat)",
        })
    }
}

/// The operation that failed; each error names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Install,
    ReadBack,
    Probe,
    Delete,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Install => "install table ip nfvs",
            Op::ReadBack => "read back table ip nfvs",
            Op::Probe => "probe queue support",
            Op::Delete => "delete table ip nfvs",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The kernel answered EPERM and this thread lacks CAP_NET_ADMIN
    /// (net/netfilter/nfnetlink.c `nfnetlink_rcv`).
    #[error("{op}: permission denied: CAP_NET_ADMIN is missing (run nfvs as root)")]
    PermissionDenied { op: Op },
    #[error("{op}: the ruleset is invalid")]
    Invalid {
        op: Op,
        #[source]
        source: RulesetError,
    },
    #[error("{op}: netlink socket")]
    Socket {
        op: Op,
        #[source]
        source: io::Error,
    },
    /// A message of the batch failed; the kernel then rolls the whole batch back.
    #[error("{op}: the kernel refused {what} (nothing was changed)")]
    Rejected {
        op: Op,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: no acknowledgement for {what}")]
    MissingAck { op: Op, what: String },
    #[error("{op}: malformed netlink reply: {detail}")]
    Protocol { op: Op, detail: String },
    /// The table read back is not what was installed.
    #[error("{op}: the table differs from what was installed: {detail}")]
    Mismatch { op: Op, detail: String },
    #[error(
        "{op}: this kernel has neither the nftables `queue` expression ({native}) nor the xt \
         NFQUEUE target through nft_compat ({compat})"
    )]
    QueueUnsupported { op: Op, native: io::Error, compat: io::Error },
}

impl NftError {
    /// The errno the kernel answered, if this error is a refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Rejected { source, .. } => source.raw_os_error(),
            NftError::PermissionDenied { .. } => Some(libc::EPERM),
            _ => None,
        }
    }
}

/// Install `rs` as table `ip nfvs`, replacing any table of that name in one atomic batch, and
/// check that the kernel holds exactly what was sent.
///
/// The queue must already be bound (design.md fact 9). If the read-back differs, the installed
/// table is left in place for inspection and an error is returned; call [`remove`] to undo.
pub fn apply(rs: &Ruleset, q: QueueImpl) -> Result<(), NftError> {
    rs.validate().map_err(|source| NftError::Invalid { op: Op::Install, source })?;
    let spec = table_spec(rs, q);
    let table = Table::new(TABLE, ProtoFamily::Ipv4);
    let mut b = LabelledBatch::new();
    // Adding an existing table without NLM_F_EXCL is a no-op, so the delete that follows
    // always finds one: together they replace a table left from a crash, and only ours
    // (net/netfilter/nf_tables_api.c `nf_tables_newtable`).
    b.add(&table, MsgType::Add, "add table ip nfvs");
    b.add(&table, MsgType::Del, "delete table ip nfvs");
    b.add(&table, MsgType::Add, "add table ip nfvs");
    for c in &spec {
        let mut chain = Chain::new(c.name, &table);
        chain.set_type(c.kind.into());
        chain.set_hook(c.hook, c.priority);
        chain.set_policy(Policy::Accept);
        let cname = c.name.to_string_lossy();
        b.add(&chain, MsgType::Add, format!("add chain {cname}"));
        for (i, exprs) in c.rules.iter().enumerate() {
            let mut rule = Rule::new(&chain);
            for e in exprs {
                rule.add_expr(e);
            }
            b.add(&rule, MsgType::Add, format!("rule {} of chain {cname}", i + 1));
        }
    }
    b.send(Op::Install)?;
    log::debug!("installed table ip nfvs ({} chains); reading it back", spec.len());
    check_installed(&spec)
}

/// Check that table `ip nfvs` holds exactly what [`apply`] installs for `rs` and `q`: the same
/// chains in the same order, and the same rules expression by expression (counter values
/// aside). `NftError::Mismatch` says where they differ.
pub fn verify(rs: &Ruleset, q: QueueImpl) -> Result<(), NftError> {
    rs.validate().map_err(|source| NftError::Invalid { op: Op::ReadBack, source })?;
    check_installed(&table_spec(rs, q))
}

fn check_installed(spec: &[ChainSpec]) -> Result<(), NftError> {
    let seen = read_table()?;
    compare(spec, &seen).map_err(|detail| NftError::Mismatch { op: Op::ReadBack, detail })
}

/// Delete table `ip nfvs`. `Ok(false)` if there was none.
pub fn remove() -> Result<bool, NftError> {
    let table = Table::new(TABLE, ProtoFamily::Ipv4);
    let mut b = LabelledBatch::new();
    b.add(&table, MsgType::Del, "delete table ip nfvs");
    match b.send(Op::Delete) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Find out how this kernel can queue packets: try the native `queue` expression, then the
/// xt `NFQUEUE` target, each in a batch that adds a throwaway table, a regular chain and one
/// rule, then deletes the table again. A batch is atomic, so a probe leaves nothing behind
/// whether it succeeds or fails.
pub fn detect_queue_impl() -> Result<QueueImpl, NftError> {
    let q = QueueSpec::single(0);
    let native = match probe(&queue_expr(&q, QueueImpl::Native)) {
        Ok(()) => return Ok(QueueImpl::Native),
        Err(e) => missing_feature(e)?,
    };
    log::debug!("no native nftables queue expression ({native}); trying the xt NFQUEUE target");
    match probe(&queue_expr(&q, QueueImpl::Compat)) {
        Ok(()) => Ok(QueueImpl::Compat),
        Err(e) => Err(NftError::QueueUnsupported { op: Op::Probe, native, compat: missing_feature(e)? }),
    }
}

/// ENOENT (no such expression type or xt target) and EOPNOTSUPP mean "not available"; any
/// other failure is a real error.
fn missing_feature(e: NftError) -> Result<io::Error, NftError> {
    match e {
        NftError::Rejected { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) =>
        {
            Ok(source)
        }
        other => Err(other),
    }
}

fn probe(expr: &Expr) -> Result<(), NftError> {
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let name = format!("nfvs_probe_{}_{}", std::process::id(), PROBES.fetch_add(1, Ordering::Relaxed));
    let name = CString::new(name).map_err(|e| NftError::Protocol { op: Op::Probe, detail: e.to_string() })?;
    let table = Table::new(&name, ProtoFamily::Ipv4);
    // A regular chain: expression types are looked up when the rule is added, and no hook
    // gets registered.
    let chain = Chain::new(c"probe", &table);
    let mut rule = Rule::new(&chain);
    rule.add_expr(expr);
    let mut b = LabelledBatch::new();
    b.add(&table, MsgType::Add, "add probe table");
    b.add(&chain, MsgType::Add, "add probe chain");
    b.add(&rule, MsgType::Add, format!("probe rule ({})", expr.name().to_string_lossy()));
    b.add(&table, MsgType::Del, "delete probe table");
    b.send(Op::Probe)
}

// ---------------------------------------------------------------------------------------------
// The table as data.

const TABLE: &CStr = c"nfvs";
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
const NFT_NG_INCREMENTAL: u32 = 0;
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
enum Expr {
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
    fn name(&self) -> &'static CStr {
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
enum ChainKind {
    Filter,
    Nat,
}

impl ChainKind {
    fn as_str(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        }
    }
}

impl From<ChainKind> for ChainType {
    fn from(k: ChainKind) -> ChainType {
        match k {
            ChainKind::Filter => ChainType::Filter,
            ChainKind::Nat => ChainType::Nat,
        }
    }
}

/// One base chain of our table, policy accept.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainSpec {
    name: &'static CStr,
    kind: ChainKind,
    hook: Hook,
    priority: i32,
    rules: Vec<Vec<Expr>>,
}

/// The chains and rules [`apply`] installs for `rs`; see [`crate::ruleset`] for why each one.
fn table_spec(rs: &Ruleset, q: QueueImpl) -> Vec<ChainSpec> {
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

fn queue_expr(queue: &QueueSpec, q: QueueImpl) -> Expr {
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

// ---------------------------------------------------------------------------------------------
// Building libnftnl expressions.

/// `nftnl_expr_alloc` fails only when out of memory (our names are all known to libnftnl);
/// abort then, as the nftnl crate itself does.
fn alloc_expr(name: &CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: `name` is a valid NUL-terminated string.
    match NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) }) {
        Some(e) => e,
        None => std::process::abort(),
    }
}

/// Set a byte-string attribute; libnftnl copies it (cmp data, bitwise mask/xor).
///
/// # Safety
/// `e` must be a live expression of a type that copies `attr`.
unsafe fn set_bytes(e: *mut sys::nftnl_expr, attr: u32, data: &[u8]) {
    // Lengths here are at most 16 bytes.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    unsafe { sys::nftnl_expr_set(e, attr as u16, data.as_ptr().cast::<c_void>(), len) };
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(self.name());
        let e = expr.as_ptr();
        let reg1 = libc::NFT_REG_1 as u32;
        // SAFETY: `e` is a live expression of the type named by `self.name()`, and every
        // attribute set below belongs to that type.
        unsafe {
            match self {
                Expr::Payload { base, offset, len } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, *base);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, *offset);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, *len);
                }
                Expr::Meta { key } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_KEY as u16, *key);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_DREG as u16, reg1);
                }
                Expr::Ct { key } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_KEY as u16, *key);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_DREG as u16, reg1);
                }
                Expr::CtSet { key } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_KEY as u16, *key);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_SREG as u16, reg1);
                }
                Expr::Bitwise { mask, xor } => {
                    let len = u32::try_from(mask.len()).unwrap_or(u32::MAX);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_SREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_DREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_LEN as u16, len);
                    set_bytes(e, sys::NFTNL_EXPR_BITWISE_MASK, mask);
                    set_bytes(e, sys::NFTNL_EXPR_BITWISE_XOR, xor);
                }
                Expr::Cmp { op, data } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CMP_SREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CMP_OP as u16, *op);
                    set_bytes(e, sys::NFTNL_EXPR_CMP_DATA, data);
                }
                Expr::Counter | Expr::Masq => {}
                Expr::Numgen { modulus } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_DREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_MODULUS as u16, *modulus);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_TYPE as u16, NFT_NG_INCREMENTAL);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_OFFSET as u16, 0);
                }
                Expr::Immediate { dreg, data } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_DREG as u16, *dreg);
                    set_bytes(e, sys::NFTNL_EXPR_IMM_DATA, data);
                }
                Expr::Verdict { code } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_DREG as u16, libc::NFT_REG_VERDICT as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_VERDICT as u16, *code);
                }
                Expr::DnatTo { flags } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_TYPE as u16, libc::NFT_NAT_DNAT as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_FAMILY as u16, libc::NFPROTO_IPV4 as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_REG_ADDR_MIN as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_REG_PROTO_MIN as u16, libc::NFT_REG_2 as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_FLAGS as u16, *flags);
                }
                Expr::Queue { num, total, flags } => {
                    sys::nftnl_expr_set_u16(e, sys::NFTNL_EXPR_QUEUE_NUM as u16, *num);
                    sys::nftnl_expr_set_u16(e, sys::NFTNL_EXPR_QUEUE_TOTAL as u16, *total);
                    sys::nftnl_expr_set_u16(e, sys::NFTNL_EXPR_QUEUE_FLAGS as u16, *flags);
                }
                Expr::Target { name, rev, info } => {
                    // Names are at most XT_EXTENSION_MAXNAMELEN; libnftnl truncates longer
                    // ones. Ours is the constant "NFQUEUE".
                    let cname = CString::new(name.as_str()).unwrap_or_default();
                    sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_TG_NAME as u16, cname.as_ptr());
                    // u32: libnftnl before 1.2.5 reads the revision as a u32 whatever length
                    // is passed (src/expr/target.c), and the kernel attribute is a u32.
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_TG_REV as u16, *rev);
                    // libnftnl keeps this pointer and frees it with the expression
                    // (src/expr/target.c `nftnl_expr_target_set`/`_free`): give it a malloc'd
                    // copy.
                    let buf = libc::malloc(info.len().max(1)).cast::<u8>();
                    if buf.is_null() {
                        std::process::abort();
                    }
                    std::ptr::copy_nonoverlapping(info.as_ptr(), buf, info.len());
                    let len = u32::try_from(info.len()).unwrap_or(u32::MAX);
                    sys::nftnl_expr_set(e, sys::NFTNL_EXPR_TG_INFO as u16, buf.cast::<c_void>(), len);
                }
            }
        }
        expr
    }
}

// ---------------------------------------------------------------------------------------------
// Batches and acknowledgements.

/// An nftnl batch plus a description of each message, to name the one the kernel refuses.
struct LabelledBatch {
    batch: Batch,
    labels: Vec<String>,
}

impl LabelledBatch {
    fn new() -> LabelledBatch {
        LabelledBatch { batch: Batch::new(), labels: Vec::new() }
    }

    fn add<T: nftnl::NlMsg>(&mut self, msg: &T, t: MsgType, label: impl Into<String>) {
        self.batch.add(msg, t);
        self.labels.push(label.into());
    }

    /// Send the batch in one `sendmsg` and check every acknowledgement.
    fn send(self, op: Op) -> Result<(), NftError> {
        let LabelledBatch { batch, labels } = self;
        let batch = batch.finalize();
        let seqs = batch.sequence_numbers();
        // nftnl asks for acks of the batch begin/end messages too on kernels that send them
        // (>= 6.10); then the range holds two more sequence numbers than we added messages.
        let framed = seqs.len() == labels.len() + 2;
        let mut names: Vec<String> = Vec::with_capacity(labels.len() + 2);
        if framed {
            names.push("batch begin".into());
            names.extend(labels);
            names.push("batch end".into());
        } else {
            names.extend(labels);
        }
        let sock = NlSocket::open(op)?;
        sock.send_batch(op, &batch)?;
        let acks = sock.drain_acks(op)?;
        check_acks(op, seqs.start, &names, framed, &acks)
    }
}

/// Match acknowledgements `(seq, errno)` to the messages sent with sequence numbers
/// `first..first + names.len()`; `framed` if the first and last of them are the batch begin
/// and end messages.
///
/// The kernel acks every message it processed, failures included, and acks the batch end only
/// if the batch was committed (net/netfilter/nfnetlink.c `nfnetlink_rcv_batch`). A refusal of
/// the batch as a whole (EPERM, a failed commit) is an error ack for the batch begin message,
/// or for sequence number 0 on kernels that do not ack batch messages.
fn check_acks(
    op: Op,
    first: u32,
    names: &[String],
    framed: bool,
    acks: &[(u32, i32)],
) -> Result<(), NftError> {
    let index = |seq: u32| seq.checked_sub(first).map(|i| i as usize).filter(|&i| i < names.len());
    let mut acked = vec![false; names.len()];
    // The first refused message in batch order: later failures are often consequences.
    let mut refused: Option<(usize, i32)> = None;
    let mut batch_error: Option<i32> = None;
    for &(seq, errno) in acks {
        match index(seq) {
            Some(i) if errno == 0 => acked[i] = true,
            // An error for the begin message is about the whole batch.
            Some(0) if framed => batch_error = Some(errno),
            Some(i) => {
                acked[i] = true;
                if refused.is_none_or(|(j, _)| i < j) {
                    refused = Some((i, errno));
                }
            }
            None if errno != 0 => batch_error = Some(errno),
            None => log::debug!("{op}: ignoring ack for unknown sequence number {seq}"),
        }
    }
    if let Some((i, errno)) = refused {
        return Err(kernel_error(op, names[i].clone(), errno));
    }
    if let Some(errno) = batch_error {
        return Err(kernel_error(op, "the batch".into(), errno));
    }
    match acked.iter().position(|a| !a) {
        Some(i) => Err(NftError::MissingAck { op, what: names[i].clone() }),
        None => Ok(()),
    }
}

fn kernel_error(op: Op, what: String, errno: i32) -> NftError {
    if errno == libc::EPERM && cap_net_admin() != Some(true) {
        return NftError::PermissionDenied { op };
    }
    NftError::Rejected { op, what, source: io::Error::from_raw_os_error(errno) }
}

/// Whether this thread holds CAP_NET_ADMIN (bit 12 of CapEff in /proc/thread-self/status,
/// proc(5)); `None` if that cannot be read. EPERM has other causes too, e.g. a table owned by
/// another process (NFT_TABLE_F_OWNER), so only blame the capability when it is missing.
fn cap_net_admin() -> Option<bool> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN) != 0)
}

/// A receive buffer large enough for any netlink message (nftnl's `nft_nlmsg_maxsize`).
fn recv_buf() -> RecvBuf {
    RecvBuf::new(nftnl::nft_nlmsg_maxsize() as usize)
}

/// One nfnetlink socket, opened in the calling thread's network namespace.
struct NlSocket {
    sock: mnl::Socket,
}

impl NlSocket {
    fn open(op: Op) -> Result<NlSocket, NftError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(|source| NftError::Socket { op, source })?;
        Ok(NlSocket { sock })
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Send every page of the batch in ONE sendmsg: the kernel handles a batch only within a
    /// single skb (nfnetlink_rcv_batch), and nftnl splits large batches into pages.
    fn send_batch(&self, op: Op, batch: &FinalizedBatch) -> Result<(), NftError> {
        let mut iov: Vec<libc::iovec> = batch
            .iter()
            .map(|page| libc::iovec { iov_base: page.as_ptr() as *mut c_void, iov_len: page.len() })
            .collect();
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        // Netlink refuses a message larger than the send buffer (EMSGSIZE), and acks that do
        // not fit the receive buffer are lost (ENOBUFS); grow both, as nft does. *FORCE needs
        // CAP_NET_ADMIN, which the batch needs anyway; without it the defaults remain and the
        // kernel's answer says why.
        // The kernel's usual default for both (net.core.wmem_default, rmem_default).
        const DEFAULT_BUF: usize = 212_992;
        // Messages are at least 64 bytes; an ack costs well under 2 KiB of receive buffer.
        let n_msgs = total / 64 + 16;
        for (opt, size) in [(libc::SO_SNDBUFFORCE, total + 65536), (libc::SO_RCVBUFFORCE, n_msgs * 2048)] {
            if size > DEFAULT_BUF {
                let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
                if let Err(e) = setsockopt_int(self.fd(), libc::SOL_SOCKET, opt, v) {
                    log::debug!("{op}: cannot grow socket buffer to {size}: {e}");
                }
            }
        }
        // SAFETY: all-zero is a valid sockaddr_nl (pid 0 = the kernel) and msghdr.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast::<c_void>();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        loop {
            // SAFETY: `msg` points to `addr` and to iovecs over the batch's pages, all alive.
            let n = unsafe { libc::sendmsg(self.fd(), &msg, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NftError::Socket { op, source: e });
            }
            if n as usize != total {
                return Err(NftError::Protocol { op, detail: format!("sent {n} of {total} bytes") });
            }
            return Ok(());
        }
    }

    /// Read every acknowledgement the kernel queued for us, as `(seq, errno)`.
    ///
    /// nfnetlink processes a batch inside our `sendmsg` and queues all its acks before that
    /// call returns (netlink_unicast_kernel calls `nfnetlink_rcv` synchronously, module
    /// autoloading included), so a non-blocking read finds them all. Blocking instead would
    /// wait forever for the batch-end ack of a refused batch, which is never sent.
    fn drain_acks(&self, op: Op) -> Result<Vec<(u32, i32)>, NftError> {
        let mut buf = recv_buf();
        let mut acks = Vec::new();
        loop {
            let bytes = buf.bytes_mut();
            // SAFETY: `bytes` is a writable buffer of the length given.
            let n = unsafe {
                libc::recv(self.fd(), bytes.as_mut_ptr().cast::<c_void>(), bytes.len(), libc::MSG_DONTWAIT)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(acks),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        return Err(NftError::Protocol {
                            op,
                            detail: "acknowledgements were lost (receive buffer full)".into(),
                        })
                    }
                    _ => return Err(NftError::Socket { op, source: e }),
                }
            }
            acks.extend(parse_acks(&bytes[..n as usize]).map_err(|m| NftError::Protocol { op, detail: m.to_string() })?);
        }
    }

    /// Send one dump request and hand every reply message to `each` until NLMSG_DONE.
    /// Returns `Ok(false)` if the kernel flagged the dump as interrupted (NLM_F_DUMP_INTR:
    /// the ruleset changed meanwhile), so the caller can retry.
    fn dump(
        &self,
        op: Op,
        request: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), NftError>,
    ) -> Result<bool, NftError> {
        // A dump is answered as we read (netlink_recvmsg runs the dump callback), so these
        // reads block; the timeout guards against a kernel that never sends NLMSG_DONE.
        let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
        if let Err(e) = setsockopt(self.fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv) {
            log::debug!("{op}: cannot set a receive timeout: {e}");
        }
        socket::send_all(self.fd(), request).map_err(|source| NftError::Socket { op, source })?;
        let mut buf = recv_buf();
        let mut intact = true;
        let malformed = |m: netlink::Malformed| NftError::Protocol { op, detail: m.to_string() };
        loop {
            let n = match recv_mnl(&self.sock, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NftError::MissingAck { op, what: "the end of the dump".into() })
                }
                Err(source) => return Err(NftError::Socket { op, source }),
            };
            for msg in Messages::new(buf.bytes().get(..n).unwrap_or(&[])) {
                let msg = msg.map_err(malformed)?;
                if msg.flags & NLM_F_DUMP_INTR != 0 {
                    intact = false;
                }
                match msg.ty {
                    NLMSG_DONE => return Ok(intact),
                    NLMSG_ERROR => match nlmsgerr(&msg).map_err(malformed)? {
                        0 => {}
                        errno => return Err(kernel_error(op, "the dump request".into(), errno)),
                    },
                    _ => each(msg.raw)?,
                }
            }
        }
    }
}

/// The acknowledgements in one datagram, as `(seq, errno)` with errno 0 for an ack; messages
/// of other types are skipped.
fn parse_acks(datagram: &[u8]) -> Result<Vec<(u32, i32)>, netlink::Malformed> {
    let mut acks = Vec::new();
    for m in Messages::new(datagram) {
        let m: Message<'_> = m?;
        if m.ty == NLMSG_ERROR {
            acks.push((m.seq, nlmsgerr(&m)?));
        }
    }
    Ok(acks)
}

// ---------------------------------------------------------------------------------------------
// Reading the table back.

/// An expression read back: `Err(name)` for a kind nfvs never creates.
type SeenExpr = Result<Expr, String>;

/// A chain of our table as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenChain {
    name: String,
    kind: Option<String>,
    hook: Option<u32>,
    priority: Option<i32>,
    policy: Option<u32>,
    /// Each rule's expressions.
    rules: Vec<Vec<SeenExpr>>,
}

/// Owned libnftnl objects, freed on drop.
struct OwnedChain(NonNull<sys::nftnl_chain>);
struct OwnedRule(NonNull<sys::nftnl_rule>);

impl OwnedChain {
    fn new() -> OwnedChain {
        // SAFETY: plain allocation; NULL only when out of memory.
        OwnedChain(NonNull::new(unsafe { sys::nftnl_chain_alloc() }).unwrap_or_else(|| std::process::abort()))
    }
}

impl OwnedRule {
    fn new() -> OwnedRule {
        // SAFETY: plain allocation; NULL only when out of memory.
        OwnedRule(NonNull::new(unsafe { sys::nftnl_rule_alloc() }).unwrap_or_else(|| std::process::abort()))
    }
}

impl Drop for OwnedChain {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_chain_alloc, freed once.
        unsafe { sys::nftnl_chain_free(self.0.as_ptr()) }
    }
}

impl Drop for OwnedRule {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_rule_alloc, freed once.
        unsafe { sys::nftnl_rule_free(self.0.as_ptr()) }
    }
}

/// Copy a C string owned by a libnftnl object; `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string alive for this call.
unsafe fn owned_str(p: *const libc::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// Build a dump request (`NLM_F_DUMP`, family ip) in an aligned buffer; `payload` may add
/// attributes through libnftnl.
fn dump_request(msg_type: i32, seq: u32, payload: impl FnOnce(*mut libc::nlmsghdr)) -> Vec<u8> {
    let mut buf = RecvBuf::new(4096);
    let bytes = buf.bytes_mut();
    // SAFETY: the buffer (4 KiB, 8-byte aligned) holds a header plus a table name attribute.
    let nlh = unsafe {
        sys::nftnl_nlmsg_build_hdr(
            bytes.as_mut_ptr().cast::<libc::c_char>(),
            msg_type as u16,
            libc::NFPROTO_IPV4 as u16,
            libc::NLM_F_DUMP as u16,
            seq,
        )
    };
    payload(nlh);
    // SAFETY: nftnl_nlmsg_build_hdr returned a header inside `buf`.
    let len = unsafe { (*nlh).nlmsg_len } as usize;
    bytes[..len.min(bytes.len())].to_vec()
}

/// Dump our table's chains and rules. Retries a few times if the ruleset changes mid-dump.
fn read_table() -> Result<Vec<SeenChain>, NftError> {
    let op = Op::ReadBack;
    for _ in 0..3 {
        let sock = NlSocket::open(op)?;
        let mut chains: Vec<SeenChain> = Vec::new();

        let req = dump_request(libc::NFT_MSG_GETCHAIN, 1, |_| {});
        let chains_intact = sock.dump(op, &req, |msg| {
            if let Some(c) = parse_chain(op, msg)? {
                chains.push(c);
            }
            Ok(())
        })?;

        // The rule dump can be limited to one table (nf_tables_dump_rules_start).
        let req = dump_request(libc::NFT_MSG_GETRULE, 2, |nlh| {
            let rule = OwnedRule::new();
            // SAFETY: `rule` is live; `nlh` points into the request buffer, which has room.
            unsafe {
                sys::nftnl_rule_set_str(rule.0.as_ptr(), sys::NFTNL_RULE_TABLE as u16, TABLE.as_ptr());
                sys::nftnl_rule_nlmsg_build_payload(nlh, rule.0.as_ptr());
            }
        });
        let mut stray: Option<String> = None;
        let rules_intact = sock.dump(op, &req, |msg| {
            if let Some((chain, exprs)) = parse_rule(op, msg)? {
                match chains.iter_mut().find(|c| c.name == chain) {
                    Some(c) => c.rules.push(exprs),
                    None => stray = Some(chain),
                }
            }
            Ok(())
        })?;
        if chains_intact && rules_intact {
            if let Some(chain) = stray {
                // A chain created between the two dumps: report, the comparison would too.
                return Err(NftError::Mismatch { op, detail: format!("rule in unexpected chain {chain}") });
            }
            return Ok(chains);
        }
        log::debug!("{op}: ruleset changed during the dump; reading again");
    }
    Err(NftError::Protocol { op, detail: "the ruleset kept changing during the dump".into() })
}

/// A NEWCHAIN message of our table, or `None` for another table's chain.
fn parse_chain(op: Op, msg: &[u8]) -> Result<Option<SeenChain>, NftError> {
    let chain = OwnedChain::new();
    let c = chain.0.as_ptr();
    // SAFETY: `msg` is one complete netlink message inside a buffer aligned for nlmsghdr
    // (RecvBuf, and messages are 4-byte aligned within it); `c` is live.
    let parsed = unsafe { sys::nftnl_chain_nlmsg_parse(msg.as_ptr().cast::<libc::nlmsghdr>(), c) };
    if parsed < 0 {
        return Err(NftError::Protocol { op, detail: "unparsable chain message".into() });
    }
    // SAFETY: getters on a live chain; strings are copied before `chain` is dropped.
    unsafe {
        let attr = |a: sys::nftnl_chain_attr| sys::nftnl_chain_is_set(c, a as u16);
        let table = owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TABLE as u16));
        let family = sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_FAMILY as u16);
        if table.as_deref() != TABLE.to_str().ok() || family != libc::NFPROTO_IPV4 as u32 {
            return Ok(None);
        }
        Ok(Some(SeenChain {
            name: owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_NAME as u16)).unwrap_or_default(),
            kind: attr(sys::NFTNL_CHAIN_TYPE)
                .then(|| owned_str(sys::nftnl_chain_get_str(c, sys::NFTNL_CHAIN_TYPE as u16)))
                .flatten(),
            hook: attr(sys::NFTNL_CHAIN_HOOKNUM)
                .then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16)),
            priority: attr(sys::NFTNL_CHAIN_PRIO)
                .then(|| sys::nftnl_chain_get_s32(c, sys::NFTNL_CHAIN_PRIO as u16)),
            policy: attr(sys::NFTNL_CHAIN_POLICY)
                .then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_POLICY as u16)),
            rules: Vec::new(),
        }))
    }
}

/// A NEWRULE message of our table as `(chain, expressions)`, or `None` for another table's.
fn parse_rule(op: Op, msg: &[u8]) -> Result<Option<(String, Vec<SeenExpr>)>, NftError> {
    let rule = OwnedRule::new();
    let r = rule.0.as_ptr();
    // SAFETY: as in parse_chain.
    let parsed = unsafe { sys::nftnl_rule_nlmsg_parse(msg.as_ptr().cast::<libc::nlmsghdr>(), r) };
    if parsed < 0 {
        return Err(NftError::Protocol { op, detail: "unparsable rule message".into() });
    }
    // SAFETY: getters and an expression iterator on a live rule; everything is copied out
    // before `rule` is dropped, and the iterator is destroyed first.
    unsafe {
        let table = owned_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_TABLE as u16));
        let family = sys::nftnl_rule_get_u32(r, sys::NFTNL_RULE_FAMILY as u16);
        if table.as_deref() != TABLE.to_str().ok() || family != libc::NFPROTO_IPV4 as u32 {
            return Ok(None);
        }
        let chain = owned_str(sys::nftnl_rule_get_str(r, sys::NFTNL_RULE_CHAIN as u16)).unwrap_or_default();
        let iter = sys::nftnl_expr_iter_create(r);
        if iter.is_null() {
            std::process::abort();
        }
        let mut exprs = Vec::new();
        loop {
            let e = sys::nftnl_expr_iter_next(iter);
            if e.is_null() {
                break;
            }
            exprs.push(read_expr(e));
        }
        sys::nftnl_expr_iter_destroy(iter);
        Ok(Some((chain, exprs)))
    }
}

/// The [`Expr`] a parsed libnftnl expression holds; `Err(name)` for other kinds.
///
/// # Safety
/// `e` is a live expression.
unsafe fn read_expr(e: *mut sys::nftnl_expr) -> SeenExpr {
    unsafe {
        let u32_of = |a: u32| sys::nftnl_expr_get_u32(e, a as u16);
        let u16_of = |a: u32| sys::nftnl_expr_get_u16(e, a as u16);
        let bytes_of = |a: u32| -> Vec<u8> {
            let mut len = 0u32;
            let p = sys::nftnl_expr_get(e, a as u16, &mut len).cast::<u8>();
            if p.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p, len as usize).to_vec()
            }
        };
        let name = owned_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16)).unwrap_or_default();
        Ok(match name.as_str() {
            "payload" => Expr::Payload {
                base: u32_of(sys::NFTNL_EXPR_PAYLOAD_BASE),
                offset: u32_of(sys::NFTNL_EXPR_PAYLOAD_OFFSET),
                len: u32_of(sys::NFTNL_EXPR_PAYLOAD_LEN),
            },
            "meta" => Expr::Meta { key: u32_of(sys::NFTNL_EXPR_META_KEY) },
            "ct" if sys::nftnl_expr_is_set(e, sys::NFTNL_EXPR_CT_SREG as u16) => {
                Expr::CtSet { key: u32_of(sys::NFTNL_EXPR_CT_KEY) }
            }
            "ct" => Expr::Ct { key: u32_of(sys::NFTNL_EXPR_CT_KEY) },
            "bitwise" => Expr::Bitwise {
                mask: bytes_of(sys::NFTNL_EXPR_BITWISE_MASK),
                xor: bytes_of(sys::NFTNL_EXPR_BITWISE_XOR),
            },
            "cmp" => {
                Expr::Cmp { op: u32_of(sys::NFTNL_EXPR_CMP_OP), data: bytes_of(sys::NFTNL_EXPR_CMP_DATA) }
            }
            "counter" => Expr::Counter,
            "queue" => Expr::Queue {
                num: u16_of(sys::NFTNL_EXPR_QUEUE_NUM),
                total: u16_of(sys::NFTNL_EXPR_QUEUE_TOTAL),
                flags: u16_of(sys::NFTNL_EXPR_QUEUE_FLAGS),
            },
            "target" => Expr::Target {
                name: owned_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_TG_NAME as u16))
                    .unwrap_or_default(),
                rev: u32_of(sys::NFTNL_EXPR_TG_REV),
                info: bytes_of(sys::NFTNL_EXPR_TG_INFO),
            },
            "masq" => Expr::Masq,
            "numgen" if u32_of(sys::NFTNL_EXPR_NG_TYPE) == NFT_NG_INCREMENTAL && u32_of(sys::NFTNL_EXPR_NG_OFFSET) == 0 => {
                Expr::Numgen { modulus: u32_of(sys::NFTNL_EXPR_NG_MODULUS) }
            }
            "immediate" if u32_of(sys::NFTNL_EXPR_IMM_DREG) == libc::NFT_REG_VERDICT as u32 => {
                Expr::Verdict { code: u32_of(sys::NFTNL_EXPR_IMM_VERDICT) }
            }
            "immediate" => {
                Expr::Immediate { dreg: u32_of(sys::NFTNL_EXPR_IMM_DREG), data: bytes_of(sys::NFTNL_EXPR_IMM_DATA) }
            }
            "nat" if u32_of(sys::NFTNL_EXPR_NAT_TYPE) == libc::NFT_NAT_DNAT as u32 => {
                Expr::DnatTo { flags: u32_of(sys::NFTNL_EXPR_NAT_FLAGS) }
            }
            _ => return Err(name),
        })
    }
}

/// Compare the chains we installed with the ones read back; the error says where they part.
fn compare(spec: &[ChainSpec], seen: &[SeenChain]) -> Result<(), String> {
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

    fn acks_ok(names: &[String], first: u32) -> Vec<(u32, i32)> {
        (0..names.len() as u32).map(|i| (first + i, 0)).collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_message_must_be_acked() {
        let n = names(&["batch begin", "add table ip nfvs", "rule 1 of chain divert", "batch end"]);
        assert!(check_acks(Op::Install, 5, &n, true, &acks_ok(&n, 5)).is_ok());
        let mut acks = acks_ok(&n, 5);
        acks.remove(3);
        let err = check_acks(Op::Install, 5, &n, true, &acks).unwrap_err();
        assert!(matches!(err, NftError::MissingAck { ref what, .. } if what == "batch end"), "{err}");
    }

    /// A refused rule: the kernel acks the rest but not the batch end, and we name the rule.
    #[test]
    fn refusal_names_the_message() {
        let n = names(&["batch begin", "add table ip nfvs", "rule 1 of chain divert", "batch end"]);
        let acks = vec![(1, 0), (2, 0), (3, libc::ENOENT)];
        let err = check_acks(Op::Install, 1, &n, true, &acks).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOENT));
        assert_eq!(
            err.to_string(),
            "install table ip nfvs: the kernel refused rule 1 of chain divert (nothing was changed)"
        );
    }

    /// Without CAP_NET_ADMIN the batch begin message is refused with EPERM. This test runs
    /// as root (CAP_NET_ADMIN held), so EPERM stays a plain refusal naming the batch.
    #[test]
    fn batch_level_errors() {
        let n = names(&["batch begin", "delete table ip nfvs", "batch end"]);
        let err = check_acks(Op::Delete, 1, &n, true, &[(1, libc::EBUSY)]).unwrap_err();
        assert!(matches!(err, NftError::Rejected { ref what, .. } if what == "the batch"), "{err}");
        let n = names(&["delete table ip nfvs"]);
        let err = check_acks(Op::Delete, 7, &n, false, &[(0, libc::EBUSY)]).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EBUSY));
    }

    /// NLMSG_ERROR messages as the kernel sends them: header, then error and the request's
    /// header.
    fn error_msgs(acks: &[(u32, i32)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for &(seq, err) in acks {
            buf.extend_from_slice(&36u32.to_ne_bytes()); // nlmsg_len
            buf.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes()); // nlmsg_type
            buf.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
            buf.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq: the request's
            buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
            buf.extend_from_slice(&err.to_ne_bytes()); // error: negative errno, 0 = ack
            buf.extend_from_slice(&[0; 16]); // the request's header
        }
        buf
    }

    #[test]
    fn split_and_parse_acks() {
        // The second one refuses seq 9 with -ENOENT.
        let buf = error_msgs(&[(8, 0), (9, -libc::ENOENT)]);
        assert_eq!(parse_acks(&buf), Ok(vec![(8, 0), (9, libc::ENOENT)]));
        // Truncated and lying lengths are errors, never panics.
        assert!(parse_acks(&buf[..10]).is_err());
        let mut bad = buf.clone();
        bad[..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(parse_acks(&bad).is_err());
        assert!(parse_acks(&buf[..18]).is_err());
        // A message cut after its header, before the error code.
        let mut cut = buf[..18].to_vec();
        cut[..4].copy_from_slice(&18u32.to_ne_bytes());
        assert!(parse_acks(&cut).is_err());
    }

    /// The case conntrack's test of the same name was written for (`-error` overflows).
    #[test]
    fn nlmsgerr_with_i32_min_is_an_errno_not_a_panic() {
        assert_eq!(parse_acks(&error_msgs(&[(7, i32::MIN)])), Ok(vec![(7, i32::MAX)]));
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
