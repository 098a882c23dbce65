//! ctnetlink messages (include/uapi/linux/netfilter/nfnetlink_conntrack.h, read and written
//! by net/netfilter/nf_conntrack_netlink.c): the requests nfvs sends and the entries, events
//! and answers it receives. The sockets that carry them are in [`crate::kernel::conntrack`]
//! (requests one at a time, events) and [`crate::kernel::nfqueue`] (the per-SYN batch).
//!
//! No crate builds `IPCTNL_MSG_CT_NEW` with `CTA_NAT_DST`, so the messages are written here:
//! `nlmsghdr` + `struct nfgenmsg` + attributes ([`super::netlink`]). Header and attribute
//! headers are in host byte order; every ctnetlink value (addresses, ports, u32s, u64
//! counters) is big-endian.
//!
//! The builders ([`build_create`], [`append_create`], [`build_get`], [`build_delete`],
//! [`append_delete`], [`build_dump`], [`build_dump_to`]) and parsers ([`parse_entry`],
//! [`parse_event`], [`parse_events`], [`handle_datagram`]) are pure and tested against bytes
//! captured from conntrack-tools (`tests/fixtures/ct/`). The parsers check every length once
//! and never panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::netlink::{
    self, be_u16, be_u32, errno_of, finish, first_message, nest_end, nest_start, nlmsgerr, put_attr, Attrs, Malformed,
    Message, Messages, NFGENMSG_LEN, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_EXCL, NLM_F_MULTI, NLM_F_REQUEST,
};
use crate::model::{CtCounters, CtEntry, CtEvent, CtEventKind, CtMapping, Protocol, TcpState, Tuple};

// ---------------------------------------------------------------------------------------------
// Wire constants. Netlink/nfnetlink ones come from libc; the ctnetlink enums are not in libc and
// are copied from include/uapi/linux/netfilter/nfnetlink_conntrack.h.
// ---------------------------------------------------------------------------------------------


const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
/// nfnetlink.h: a message type is `subsystem << 8 | operation`.
const NFNL_SUBSYS_CTNETLINK: u16 = libc::NFNL_SUBSYS_CTNETLINK as u16;

// enum cntl_msg_types
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_MARK: u16 = 8;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_ID: u16 = 12;
const CTA_NAT_DST: u16 = 13;
const CTA_MARK_MASK: u16 = 21;
const CTA_FILTER: u16 = 25;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// CTA_FILTER_F_* (net/netfilter/nf_internals.h): which fields of the filter tuple must match.
const CTA_FILTER_F_CTA_IP_DST: u32 = 1 << 1;
const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;
const CTA_FILTER_F_CTA_PROTO_DST_PORT: u32 = 1 << 5;

// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// enum ctattr_protoinfo / ctattr_protoinfo_tcp
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
// enum ctattr_counters
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_COUNTERS32_PACKETS: u16 = 3;
const CTA_COUNTERS32_BYTES: u16 = 4;
// enum ctattr_nat / ctattr_protonat
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_PROTO: u16 = 3;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;

/// Why bytes received are not a conntrack entry nfvs can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed ctnetlink message: {0}")]
    Malformed(&'static str),
    /// A valid entry nfvs cannot have made: another address family than IPv4 and IPv6, or
    /// another protocol than TCP and UDP (model::Protocol). Skipped in dumps and events.
    #[error("conntrack entry nfvs does not balance ({0})")]
    NotOurs(&'static str),
}

impl From<Malformed> for ParseError {
    fn from(m: Malformed) -> ParseError {
        ParseError::Malformed(m.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Message builders (pure). Each clears `buf` and leaves one complete message in it; a reused
// buffer keeps its capacity, so after the first call nothing is allocated.
// ---------------------------------------------------------------------------------------------

/// `IPCTNL_MSG_CT_NEW` with `NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE`:
/// `CTA_TUPLE_ORIG`, `CTA_TUPLE_REPLY` (the plain inverse, fact 1), `CTA_TIMEOUT`, `CTA_MARK`,
/// `CTA_NAT_DST { CTA_NAT_V4_MINIP, CTA_NAT_PROTO { PORT_MIN, PORT_MAX } }`.
///
/// Attribute order and content are exactly what `conntrack -I` sends (the fixture test compares
/// byte for byte), minus the `CTA_PROTOINFO` that conntrack-tools insists on for TCP: without it
/// the kernel starts the entry at state NONE and the accepted SYN moves it to SYN_SENT.
/// No `CTA_STATUS` (fact 5). PORT_MAX equals PORT_MIN, as the kernel would assume without it
/// (`nf_nat_l4proto_nlattr_to_range`); no `CTA_NAT_V4_MAXIP` (the kernel uses MINIP).
pub fn build_create(buf: &mut Vec<u8>, seq: u32, m: &CtMapping) {
    buf.clear();
    append_create(buf, seq, NLM_F_ACK, m);
}

/// [`build_create`] appended to `buf` (which may already hold other messages: several
/// netlink messages in one `sendmsg` are processed in order by `netlink_rcv_skb`), with
/// `extra` flags (`NLM_F_ACK`, or 0: then only a failure is answered).
pub fn append_create(buf: &mut Vec<u8>, seq: u32, extra: u16, m: &CtMapping) {
    let at = begin(buf, IPCTNL_MSG_CT_NEW, NLM_F_REQUEST | extra | NLM_F_EXCL | NLM_F_CREATE, seq, family(&m.orig));
    put_tuple(buf, CTA_TUPLE_ORIG, &m.orig);
    put_tuple(buf, CTA_TUPLE_REPLY, &m.reply);
    put_attr(buf, CTA_TIMEOUT, &m.timeout.to_be_bytes());
    put_attr(buf, CTA_MARK, &m.mark.to_be_bytes());
    let nat = nest_start(buf, CTA_NAT_DST);
    match m.nat_dst.ip() {
        IpAddr::V4(a) => put_attr(buf, CTA_NAT_V4_MINIP, &a.octets()),
        IpAddr::V6(a) => put_attr(buf, CTA_NAT_V6_MINIP, &a.octets()),
    }
    let proto = nest_start(buf, CTA_NAT_PROTO);
    put_attr(buf, CTA_PROTONAT_PORT_MIN, &m.nat_dst.port().to_be_bytes());
    put_attr(buf, CTA_PROTONAT_PORT_MAX, &m.nat_dst.port().to_be_bytes());
    nest_end(buf, proto);
    nest_end(buf, nat);
    finish(buf, at);
}

/// `IPCTNL_MSG_CT_GET` of one entry by original tuple, `NLM_F_REQUEST` only.
///
/// `conntrack -G` also sets `NLM_F_ACK` (and never reads the ack, which stays queued in its
/// socket); without it the kernel answers with exactly one message, the entry or an error, so
/// one recv completes the call (`netlink_rcv_skb` acks only on error or `NLM_F_ACK`).
pub fn build_get(buf: &mut Vec<u8>, seq: u32, orig: &Tuple) {
    buf.clear();
    let at = begin(buf, IPCTNL_MSG_CT_GET, NLM_F_REQUEST, seq, family(orig));
    put_tuple(buf, CTA_TUPLE_ORIG, orig);
    finish(buf, at);
}

/// `IPCTNL_MSG_CT_DELETE` of one entry by original tuple, `NLM_F_REQUEST | NLM_F_ACK`.
///
/// The tuple is what makes this a single delete: the same message without a tuple is a
/// flush of the whole table (`ctnetlink_del_conntrack`), so this is the only builder for it.
pub fn build_delete(buf: &mut Vec<u8>, seq: u32, orig: &Tuple) {
    buf.clear();
    append_delete(buf, seq, NLM_F_ACK, orig);
}

/// [`build_delete`] appended to `buf`, with `extra` flags (see [`append_create`]).
pub fn append_delete(buf: &mut Vec<u8>, seq: u32, extra: u16, orig: &Tuple) {
    let at = begin(buf, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | extra, seq, family(orig));
    put_tuple(buf, CTA_TUPLE_ORIG, orig);
    finish(buf, at);
}

/// `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`, family `AF_INET`, `CTA_MARK` + `CTA_MARK_MASK`: the
/// kernel returns the IPv4 entries with `ct.mark & mask == mark & mask`
/// (`ctnetlink_filter_match`). The kernel compares against the value as sent, so it is masked
/// here: bits of `mark` outside `mask` would otherwise make the dump match nothing.
pub fn build_dump(buf: &mut Vec<u8>, seq: u32, mark: u32, mask: u32) {
    buf.clear();
    let at = begin(buf, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, AF_INET);
    put_attr(buf, CTA_MARK, &(mark & mask).to_be_bytes());
    put_attr(buf, CTA_MARK_MASK, &mask.to_be_bytes());
    finish(buf, at);
}

/// A dump of the entries (of `dst`'s family) whose original direction goes to `dst` (and
/// `dport`, if given) over `proto`, whatever their mark: `CTA_TUPLE_ORIG` with only those
/// fields, and `CTA_FILTER` saying they are the ones to match (ctnetlink_alloc_filter, Linux
/// 5.8+), so the kernel sends only them. It still walks the whole table to find them.
pub fn build_dump_to(buf: &mut Vec<u8>, seq: u32, proto: Protocol, dst: IpAddr, dport: Option<u16>) {
    buf.clear();
    let at = begin(buf, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family_of(dst));
    let tuple = nest_start(buf, CTA_TUPLE_ORIG);
    let ip = nest_start(buf, CTA_TUPLE_IP);
    put_addr(buf, CTA_IP_V4_DST, CTA_IP_V6_DST, dst);
    nest_end(buf, ip);
    let p = nest_start(buf, CTA_TUPLE_PROTO);
    put_attr(buf, CTA_PROTO_NUM, &[proto.number()]);
    let mut flags = CTA_FILTER_F_CTA_IP_DST | CTA_FILTER_F_CTA_PROTO_NUM;
    if let Some(port) = dport {
        put_attr(buf, CTA_PROTO_DST_PORT, &port.to_be_bytes());
        flags |= CTA_FILTER_F_CTA_PROTO_DST_PORT;
    }
    nest_end(buf, p);
    nest_end(buf, tuple);
    let filter = nest_start(buf, CTA_FILTER);
    put_attr(buf, CTA_FILTER_ORIG_FLAGS, &flags.to_ne_bytes());
    nest_end(buf, filter);
    finish(buf, at);
}

/// Starts a ctnetlink message of address family `family` (res_id is unused by ctnetlink).
fn begin(buf: &mut Vec<u8>, op: u16, flags: u16, seq: u32, family: u8) -> usize {
    netlink::begin(buf, NFNL_SUBSYS_CTNETLINK, op, flags, seq, family, 0)
}

/// The nfgenmsg family of a tuple: its addresses' (both are of one family, model::Tuple).
fn family(t: &Tuple) -> u8 {
    family_of(t.src)
}

fn family_of(a: IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

/// An address attribute: the IPv4 or the IPv6 type of the pair, by the address's family.
fn put_addr(buf: &mut Vec<u8>, v4: u16, v6: u16, a: IpAddr) {
    match a {
        IpAddr::V4(a) => put_attr(buf, v4, &a.octets()),
        IpAddr::V6(a) => put_attr(buf, v6, &a.octets()),
    }
}

/// `CTA_TUPLE_* { CTA_TUPLE_IP { V4_SRC, V4_DST } (or V6_*), CTA_TUPLE_PROTO { NUM, SRC_PORT,
/// DST_PORT } }` for a TCP/UDP tuple (nfvs balances nothing else: model::Protocol).
fn put_tuple(buf: &mut Vec<u8>, ty: u16, t: &Tuple) {
    let tuple = nest_start(buf, ty);
    let ip = nest_start(buf, CTA_TUPLE_IP);
    put_addr(buf, CTA_IP_V4_SRC, CTA_IP_V6_SRC, t.src);
    put_addr(buf, CTA_IP_V4_DST, CTA_IP_V6_DST, t.dst);
    nest_end(buf, ip);
    let proto = nest_start(buf, CTA_TUPLE_PROTO);
    put_attr(buf, CTA_PROTO_NUM, &[t.proto.number()]);
    put_attr(buf, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
    put_attr(buf, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    nest_end(buf, proto);
    nest_end(buf, tuple);
}


// ---------------------------------------------------------------------------------------------
// Parsing (pure, panic-free): every read goes through `get`, every length is checked once.
// ---------------------------------------------------------------------------------------------

fn u16_attr(p: &[u8]) -> Result<u16, ParseError> {
    be_u16(p).ok_or(ParseError::Malformed("short u16 attribute"))
}

fn u32_attr(p: &[u8]) -> Result<u32, ParseError> {
    be_u32(p).ok_or(ParseError::Malformed("short u32 attribute"))
}

/// A counter: u64 (`CTA_COUNTERS_*`), or u32 for the old `CTA_COUNTERS32_*`.
fn be_counter(p: &[u8]) -> Result<u64, ParseError> {
    match p.get(..8) {
        Some(b) => Ok(u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        None => u32_attr(p).map(u64::from),
    }
}

fn ipv4(p: &[u8]) -> Result<IpAddr, ParseError> {
    u32_attr(p).map(|a| Ipv4Addr::from(a).into())
}

fn ipv6(p: &[u8]) -> Result<IpAddr, ParseError> {
    let b: [u8; 16] = p.get(..16).and_then(|b| b.try_into().ok()).ok_or(ParseError::Malformed("short IPv6 address"))?;
    Ok(Ipv6Addr::from(b).into())
}

/// Parses one conntrack entry message: a GET answer, a dump element or an event, as received
/// (netlink header included; only the first message in `msg` is read). Attributes nfvs does
/// not use are skipped. Entries nfvs cannot have made answer [`ParseError::NotOurs`].
pub fn parse_entry(msg: &[u8]) -> Result<CtEntry, ParseError> {
    entry_from_msg(&first_message(msg)?)
}

/// Parses one conntrack event message (as [`parse_entry`], plus its kind).
pub fn parse_event(msg: &[u8]) -> Result<CtEvent, ParseError> {
    event_from_msg(&first_message(msg)?)
}

fn event_from_msg(m: &Message<'_>) -> Result<CtEvent, ParseError> {
    // ctnetlink_conntrack_event: DESTROY is IPCTNL_MSG_CT_DELETE; NEW is IPCTNL_MSG_CT_NEW with
    // NLM_F_CREATE|NLM_F_EXCL; any other change is IPCTNL_MSG_CT_NEW without them.
    let kind = match ct_msg_op(m.ty) {
        Some(IPCTNL_MSG_CT_DELETE) => CtEventKind::Destroy,
        Some(IPCTNL_MSG_CT_NEW) if m.flags & NLM_F_CREATE != 0 => CtEventKind::New,
        Some(IPCTNL_MSG_CT_NEW) => CtEventKind::Update,
        _ => return Err(ParseError::Malformed("not a conntrack entry message")),
    };
    Ok(CtEvent { kind, entry: entry_from_msg(m)? })
}

/// The ctnetlink operation of a message type, if it belongs to NFNL_SUBSYS_CTNETLINK.
fn ct_msg_op(ty: u16) -> Option<u16> {
    (ty >> 8 == NFNL_SUBSYS_CTNETLINK).then_some(ty & 0xff)
}

fn entry_from_msg(m: &Message<'_>) -> Result<CtEntry, ParseError> {
    // Entries come as IPCTNL_MSG_CT_NEW (GET answers, dumps, NEW/UPDATE events: see
    // ctnetlink_fill_info) or IPCTNL_MSG_CT_DELETE (DESTROY events).
    if !matches!(ct_msg_op(m.ty), Some(IPCTNL_MSG_CT_NEW | IPCTNL_MSG_CT_DELETE)) {
        return Err(ParseError::Malformed("not a conntrack entry message"));
    }
    let nfgen = m.payload.get(..NFGENMSG_LEN).ok_or(ParseError::Malformed("truncated nfgenmsg"))?;
    if nfgen[0] != AF_INET && nfgen[0] != AF_INET6 {
        return Err(ParseError::NotOurs("not IPv4 or IPv6"));
    }
    let e = parse_entry_attrs(m.payload.get(NFGENMSG_LEN..).unwrap_or(&[]))?;
    if e.orig.src.is_ipv4() != (nfgen[0] == AF_INET) || e.reply.src.is_ipv4() != (nfgen[0] == AF_INET) {
        return Err(ParseError::Malformed("tuple addresses of another family than the message's"));
    }
    Ok(e)
}

fn parse_entry_attrs(attrs: &[u8]) -> Result<CtEntry, ParseError> {
    let (mut orig, mut reply) = (None, None);
    let (mut mark, mut status) = (0, 0);
    let (mut tcp_state, mut id, mut timeout) = (None, None, None);
    let (mut counters_orig, mut counters_reply) = (None, None);
    for attr in Attrs::new(attrs) {
        let (ty, p) = attr?;
        match ty {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(p)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(p)?),
            CTA_STATUS => status = u32_attr(p)?,
            CTA_PROTOINFO => tcp_state = parse_protoinfo(p)?,
            CTA_TIMEOUT => timeout = Some(u32_attr(p)?),
            CTA_MARK => mark = u32_attr(p)?,
            CTA_ID => id = Some(u32_attr(p)?),
            CTA_COUNTERS_ORIG => counters_orig = Some(parse_counters(p)?),
            CTA_COUNTERS_REPLY => counters_reply = Some(parse_counters(p)?),
            _ => {} // CTA_USE, CTA_SYNPROXY, CTA_ZONE, ...: not needed, skipped
        }
    }
    Ok(CtEntry {
        orig: orig.ok_or(ParseError::Malformed("entry without CTA_TUPLE_ORIG"))?,
        reply: reply.ok_or(ParseError::Malformed("entry without CTA_TUPLE_REPLY"))?,
        mark,
        status,
        tcp_state,
        id,
        timeout,
        counters_orig,
        counters_reply,
    })
}

fn parse_tuple(p: &[u8]) -> Result<Tuple, ParseError> {
    let (mut src, mut dst, mut proto) = (None, None, None);
    let (mut sport, mut dport) = (0, 0); // absent for ICMP and other port-less protocols
    for attr in Attrs::new(p) {
        match attr? {
            (CTA_TUPLE_IP, ip) => {
                for a in Attrs::new(ip) {
                    match a? {
                        (CTA_IP_V4_SRC, v) => src = Some(ipv4(v)?),
                        (CTA_IP_V4_DST, v) => dst = Some(ipv4(v)?),
                        (CTA_IP_V6_SRC, v) => src = Some(ipv6(v)?),
                        (CTA_IP_V6_DST, v) => dst = Some(ipv6(v)?),
                        _ => {}
                    }
                }
            }
            (CTA_TUPLE_PROTO, l4) => {
                for a in Attrs::new(l4) {
                    match a? {
                        (CTA_PROTO_NUM, v) => {
                            proto =
                                Some(*v.first().ok_or(ParseError::Malformed("empty CTA_PROTO_NUM"))?)
                        }
                        (CTA_PROTO_SRC_PORT, v) => sport = u16_attr(v)?,
                        (CTA_PROTO_DST_PORT, v) => dport = u16_attr(v)?,
                        _ => {}
                    }
                }
            }
            _ => {} // CTA_TUPLE_ZONE
        }
    }
    match (src, dst, proto) {
        (Some(src), Some(dst), Some(proto)) if src.is_ipv4() == dst.is_ipv4() => {
            let proto = Protocol::from_number(proto).ok_or(ParseError::NotOurs("not TCP or UDP"))?;
            Ok(Tuple { src, dst, sport, dport, proto })
        }
        (Some(_), Some(_), Some(_)) => Err(ParseError::Malformed("tuple with addresses of two families")),
        (None, _, _) | (_, None, _) => Err(ParseError::Malformed("tuple without addresses")),
        _ => Err(ParseError::Malformed("tuple without CTA_PROTO_NUM")),
    }
}

/// `CTA_PROTOINFO { CTA_PROTOINFO_TCP { CTA_PROTOINFO_TCP_STATE u8, ... } }`; other protocols'
/// info (DCCP, SCTP) is skipped.
fn parse_protoinfo(p: &[u8]) -> Result<Option<TcpState>, ParseError> {
    let mut state = None;
    for attr in Attrs::new(p) {
        if let (CTA_PROTOINFO_TCP, tcp) = attr? {
            for a in Attrs::new(tcp) {
                if let (CTA_PROTOINFO_TCP_STATE, v) = a? {
                    let raw = *v.first().ok_or(ParseError::Malformed("empty TCP state"))?;
                    state = TcpState::from_raw(raw);
                }
            }
        }
    }
    Ok(state)
}

fn parse_counters(p: &[u8]) -> Result<CtCounters, ParseError> {
    let mut c = CtCounters::default();
    for attr in Attrs::new(p) {
        match attr? {
            (CTA_COUNTERS_PACKETS | CTA_COUNTERS32_PACKETS, v) => c.packets = be_counter(v)?,
            (CTA_COUNTERS_BYTES | CTA_COUNTERS32_BYTES, v) => c.bytes = be_counter(v)?,
            _ => {} // CTA_COUNTERS_PAD
        }
    }
    Ok(c)
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// ACK (NLMSG_ERROR with 0), NLMSG_DONE, or the single answer to a GET.
    Done,
    /// NLMSG_ERROR (or NLMSG_DONE) carrying this errno.
    Errno(i32),
}

/// Feeds the messages of one received datagram that answer request `seq` to `on_entry` and
/// says whether the answer is complete. Messages with another sequence number (left over from
/// an earlier request that ended in an error) are skipped. `single` marks a GET: its answer is
/// one entry message (flagged NLM_F_MULTI all the same, by ctnetlink_fill_info) and no ack.
pub fn handle_datagram(
    buf: &[u8],
    seq: u32,
    single: bool,
    on_entry: &mut dyn FnMut(&[u8]) -> Result<(), ParseError>,
) -> Result<Option<Answer>, ParseError> {
    for m in Messages::new(buf) {
        let m = m?;
        if m.seq != seq {
            continue;
        }
        match m.ty {
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let errno = nlmsgerr(&m)?;
                return Ok(Some(if errno == 0 { Answer::Done } else { Answer::Errno(errno) }));
            }
            NLMSG_DONE => {
                // A dump ends with NLMSG_DONE carrying an int: 0, or the error that cut it short.
                let err = netlink::ne_u32(m.payload, 0).map_or(0, |e| e as i32);
                return Ok(Some(if err < 0 { Answer::Errno(errno_of(err)) } else { Answer::Done }));
            }
            NLMSG_OVERRUN => return Err(ParseError::Malformed("NLMSG_OVERRUN")),
            _ => {
                on_entry(m.raw)?;
                if single {
                    return Ok(Some(Answer::Done));
                }
                if m.flags & NLM_F_MULTI == 0 {
                    // Not part of a dump and not an ack: nothing more will come for it.
                    return Ok(Some(Answer::Done));
                }
            }
        }
    }
    Ok(None)
}

/// Appends the conntrack events in one datagram (as an event socket receives it) to `out`;
/// entries nfvs cannot have made (another family or protocol) are skipped. Events before a
/// malformed message are kept.
pub fn parse_events(data: &[u8], out: &mut Vec<CtEvent>) -> Result<(), ParseError> {
    for m in Messages::new(data) {
        let m = m?;
        if ct_msg_op(m.ty).is_none() {
            continue; // NLMSG_NOOP and the like
        }
        match event_from_msg(&m) {
            Ok(ev) => out.push(ev),
            Err(ParseError::NotOurs(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::wire::netlink::{align4, ne_u32, NLA_F_NESTED, NLA_TYPE_MASK, NLMSG_HDRLEN};

    use proptest::prelude::*;

    use super::*;
    use crate::model::status;
    use crate::wire::testing::{mutated, strace_buffers};

    /// Annotated captures from conntrack-tools (see the file's header for how they were made).
    mod cap {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ct/captures.rs"));
    }

    /// The raw strace hex dumps the annotated arrays were transcribed from.
    const STRACE_CREATE_UDP: &str = include_str!("../../tests/fixtures/ct/create_udp.strace");
    const STRACE_CREATE_TCP: &str = include_str!("../../tests/fixtures/ct/create_tcp.strace");
    const STRACE_GET_TCP: &str = include_str!("../../tests/fixtures/ct/get_tcp.strace");
    const STRACE_GET_UDP: &str = include_str!("../../tests/fixtures/ct/get_udp.strace");
    const STRACE_DUMP_MARK: &str = include_str!("../../tests/fixtures/ct/dump_mark.strace");
    const STRACE_DELETE_TCP: &str = include_str!("../../tests/fixtures/ct/delete_tcp.strace");
    const STRACE_EVENTS_TCP: &str = include_str!("../../tests/fixtures/ct/events_tcp.strace");

    /// The sequence number of every captured request (conntrack-tools uses time()).
    const CAPTURED_SEQ: u32 = 0x6b06_572b;

    fn tuple(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: Protocol) -> Tuple {
        Tuple { src: src.into(), dst: dst.into(), sport, dport, proto }
    }

    /// The captured flow: 192.168.199.1:40000 -> 192.168.199.200:80, DNAT to
    /// 192.168.226.131:80, mark 7, timeout 120.
    fn captured_mapping(proto: Protocol) -> CtMapping {
        let orig = tuple([192, 168, 199, 1], 40000, [192, 168, 199, 200], 80, proto);
        CtMapping {
            orig,
            reply: orig.inverse(),
            nat_dst: SocketAddr::new(Ipv4Addr::new(192, 168, 226, 131).into(), 80),
            mark: 7,
            timeout: 120,
        }
    }

    /// The top-level attributes after nlmsghdr + nfgenmsg: (type with flags, whole attribute).
    fn top_attrs(msg: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = &msg[NLMSG_HDRLEN + NFGENMSG_LEN..];
        while !rest.is_empty() {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let ty = u16::from_ne_bytes([rest[2], rest[3]]);
            out.push((ty, rest[..len].to_vec()));
            rest = &rest[align4(len).min(rest.len())..];
        }
        out
    }

    #[test]
    fn annotated_captures_are_the_strace_bytes() {
        let create_udp = strace_buffers(STRACE_CREATE_UDP);
        assert_eq!(create_udp[0], cap::CREATE_UDP);
        assert_eq!(create_udp[1], cap::CREATE_ACK);
        assert_eq!(strace_buffers(STRACE_CREATE_TCP)[0], cap::CREATE_TCP);
        assert_eq!(strace_buffers(STRACE_GET_TCP)[1], cap::GET_TCP_REPLY);
        assert_eq!(strace_buffers(STRACE_GET_UDP)[1], cap::GET_UDP_REPLY);
        assert_eq!(strace_buffers(STRACE_DUMP_MARK)[0], cap::DUMP_MARK);
        let events = strace_buffers(STRACE_EVENTS_TCP);
        assert_eq!(events[1], cap::EVENT_NEW);
        assert_eq!(events[4], cap::EVENT_DESTROY);
    }

    // ---- builders against conntrack-tools ----

    #[cfg(target_endian = "little")]
    #[test]
    fn create_udp_is_byte_for_byte_conntrack_insert() {
        let mut buf = Vec::new();
        build_create(&mut buf, CAPTURED_SEQ, &captured_mapping(Protocol::Udp));
        let mut expected = cap::CREATE_UDP.to_vec();
        // The one byte that differs is padding the tool leaves uninitialised; nfvs zeroes it.
        assert_eq!(expected[cap::REPLY_PAD_OFFSET], 0x10);
        expected[cap::REPLY_PAD_OFFSET] = 0;
        assert_eq!(buf, expected);
    }

    /// conntrack-tools requires `--state` for a TCP insert and then adds CTA_PROTOINFO, which
    /// nfvs does not send (the kernel starts the entry at NONE; the SYN we accept moves it on).
    /// Without that attribute (and with the message length adjusted) the rest is identical.
    #[cfg(target_endian = "little")]
    #[test]
    fn create_tcp_is_conntrack_insert_without_protoinfo() {
        let mut buf = Vec::new();
        build_create(&mut buf, CAPTURED_SEQ, &captured_mapping(Protocol::Tcp));

        let mut expected = cap::CREATE_TCP.to_vec();
        let protoinfo: Vec<u8> = expected.drain(cap::PROTOINFO_RANGE).collect();
        assert_eq!(u16::from_ne_bytes([protoinfo[2], protoinfo[3]]), CTA_PROTOINFO | NLA_F_NESTED);
        let len = expected.len() as u32;
        expected[..4].copy_from_slice(&len.to_ne_bytes());
        expected[cap::REPLY_PAD_OFFSET] = 0;
        assert_eq!(buf, expected);

        // The same, attribute by attribute, so a failure names the attribute.
        let ours: Vec<u16> = top_attrs(&buf).iter().map(|a| a.0 & NLA_TYPE_MASK).collect();
        assert_eq!(ours, [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_TIMEOUT, CTA_MARK, CTA_NAT_DST]);
        assert!(!ours.contains(&CTA_STATUS), "design.md fact 5: no CTA_STATUS");
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn dump_is_byte_for_byte_conntrack_list_with_mark() {
        let mut buf = Vec::new();
        build_dump(&mut buf, CAPTURED_SEQ, 7, 0xff);
        assert_eq!(buf, cap::DUMP_MARK);
        // Bits of the mark outside the mask are dropped (the kernel would match nothing).
        build_dump(&mut buf, CAPTURED_SEQ, 0x1207, 0xff);
        assert_eq!(buf, cap::DUMP_MARK);
    }

    /// `conntrack -G` sends NLM_F_REQUEST|NLM_F_ACK and, besides the tuple, a CTA_PROTOINFO
    /// with TCP flags that ctnetlink_get_conntrack never reads (it looks at CTA_ZONE and the
    /// tuples only). Ours: REQUEST only (one answer, no ack) and the original tuple.
    #[cfg(target_endian = "little")]
    #[test]
    fn get_carries_the_same_tuple_as_conntrack_get() {
        let tool = &strace_buffers(STRACE_GET_TCP)[0];
        let mut buf = Vec::new();
        build_get(&mut buf, CAPTURED_SEQ, &captured_mapping(Protocol::Tcp).orig);

        let type_of = |m: &[u8]| u16::from_ne_bytes([m[4], m[5]]);
        let flags_of = |m: &[u8]| u16::from_ne_bytes([m[6], m[7]]);
        assert_eq!(type_of(&buf), type_of(tool));
        assert_eq!(flags_of(tool), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(flags_of(&buf), NLM_F_REQUEST);
        assert_eq!(buf[8..20], tool[8..20], "seq, pid, nfgenmsg");
        let (ours, theirs) = (top_attrs(&buf), top_attrs(tool));
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0], theirs[0], "CTA_TUPLE_ORIG");
        assert_eq!(theirs[1].0, CTA_PROTOINFO | NLA_F_NESTED);
    }

    /// `conntrack -D` dumps the table and then deletes each match by sending the whole entry
    /// (tuples, status, timeout, mark, protoinfo, synproxy) on a second socket.
    /// ctnetlink_del_conntrack reads only CTA_ZONE, CTA_TUPLE_ORIG and CTA_ID; ours sends the tuple.
    #[cfg(target_endian = "little")]
    #[test]
    fn delete_carries_the_same_header_and_tuple_as_conntrack_delete() {
        let bufs = strace_buffers(STRACE_DELETE_TCP);
        let tool = bufs.iter().find(|b| b.len() > 5 && b[4..6] == [0x02, 0x01]).expect("delete");
        let mut buf = Vec::new();
        build_delete(&mut buf, CAPTURED_SEQ, &captured_mapping(Protocol::Tcp).orig);
        assert_eq!(buf[4..20], tool[4..20], "type, flags (REQUEST|ACK), seq, pid, nfgenmsg");
        let (ours, theirs) = (top_attrs(&buf), top_attrs(tool));
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0], theirs[0], "CTA_TUPLE_ORIG");
    }

    #[test]
    fn builders_reuse_the_buffer() {
        let mut buf = Vec::with_capacity(256);
        let ptr = buf.as_ptr();
        for i in 0..100u16 {
            let mut m = captured_mapping(Protocol::Tcp);
            m.orig.sport = i;
            build_create(&mut buf, u32::from(i), &m);
            build_get(&mut buf, 1, &m.orig);
            build_delete(&mut buf, 1, &m.orig);
            build_dump(&mut buf, 1, 7, !0);
        }
        assert_eq!(buf.as_ptr(), ptr, "no reallocation");
    }

    // ---- parsing captured answers ----

    #[test]
    fn parses_conntrack_get_answer_tcp() {
        let e = parse_entry(&cap::GET_TCP_REPLY).unwrap();
        assert_eq!(e.orig, tuple([192, 168, 199, 1], 40000, [192, 168, 199, 200], 80, Protocol::Tcp));
        // After DNAT the reply comes from the real server (design.md fact 1).
        assert_eq!(e.reply, tuple([192, 168, 226, 131], 80, [192, 168, 199, 1], 40000, Protocol::Tcp));
        assert_eq!(e.mark, 7);
        assert_eq!(e.status, 0x1a8);
        assert_eq!(e.status & status::DST_NAT, status::DST_NAT);
        assert_eq!(e.status & status::CONFIRMED, status::CONFIRMED);
        assert_eq!(e.tcp_state, Some(TcpState::SynSent));
        assert_eq!(e.id, Some(0xe692_3f9e));
        assert_eq!(e.timeout, Some(119));
        assert_eq!(e.counters_orig, Some(CtCounters { packets: 0, bytes: 0 }));
        assert_eq!(e.counters_reply, Some(CtCounters { packets: 0, bytes: 0 }));
    }

    #[test]
    fn parses_conntrack_get_answer_udp_with_counters() {
        let e = parse_entry(&cap::GET_UDP_REPLY).unwrap();
        assert_eq!(e.orig, tuple([192, 168, 199, 1], 40000, [192, 168, 199, 200], 80, Protocol::Udp));
        assert_eq!(e.reply, tuple([192, 168, 226, 131], 80, [192, 168, 199, 1], 40000, Protocol::Udp));
        assert_eq!(e.mark, 7);
        assert_eq!(e.tcp_state, None);
        assert_eq!(e.id, Some(0x954f_6da3));
        assert_eq!(e.timeout, Some(29));
        assert_eq!(e.counters_orig, Some(CtCounters { packets: 2, bytes: 72 }));
        assert_eq!(e.counters_reply, Some(CtCounters { packets: 0, bytes: 0 }));
    }

    #[test]
    fn get_answer_completes_on_the_single_entry() {
        let mut seen = 0;
        let answer = handle_datagram(&cap::GET_TCP_REPLY, CAPTURED_SEQ, true, &mut |m| {
            assert_eq!(parse_entry(m).unwrap().mark, 7);
            seen += 1;
            Ok(())
        });
        assert_eq!(answer.unwrap(), Some(Answer::Done));
        assert_eq!(seen, 1);
        // Another request's answer is not ours.
        let answer = handle_datagram(&cap::GET_TCP_REPLY, CAPTURED_SEQ + 1, true, &mut |_| {
            panic!("stale message delivered")
        });
        assert_eq!(answer.unwrap(), None);
    }

    #[test]
    fn dump_answer_is_entries_then_done() {
        // `conntrack -L -f ipv4 -m 7/0xff`: one datagram with the two mark-7 entries (the TCP
        // and the UDP one; the mark-9 entry was filtered out by the kernel), then NLMSG_DONE.
        let bufs = strace_buffers(STRACE_DUMP_MARK);
        assert_eq!(bufs.len(), 3);
        let mut entries = Vec::new();
        let answer = handle_datagram(&bufs[1], CAPTURED_SEQ, false, &mut |m| {
            entries.push(parse_entry(m)?);
            Ok(())
        });
        assert_eq!(answer.unwrap(), None, "no NLMSG_DONE yet");
        let answer = handle_datagram(&bufs[2], CAPTURED_SEQ, false, &mut |_| panic!("no entry"));
        assert_eq!(answer.unwrap(), Some(Answer::Done));
        let protos: Vec<Protocol> = entries.iter().map(|e| e.orig.proto).collect();
        assert_eq!(protos, [Protocol::Tcp, Protocol::Udp]);
        assert!(entries.iter().all(|e| e.mark == 7));
    }

    #[test]
    fn ack_and_errors() {
        let answer =
            handle_datagram(&cap::CREATE_ACK, CAPTURED_SEQ, false, &mut |_| panic!("no entry"));
        assert_eq!(answer.unwrap(), Some(Answer::Done));
        // The same message carrying -EEXIST (what a second create answers).
        let mut eexist = cap::CREATE_ACK;
        eexist[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        let answer = handle_datagram(&eexist, CAPTURED_SEQ, false, &mut |_| panic!("no entry"));
        assert_eq!(answer.unwrap(), Some(Answer::Errno(libc::EEXIST)));
    }

    #[test]
    fn parses_events() {
        let new = parse_event(&cap::EVENT_NEW).unwrap();
        assert_eq!(new.kind, CtEventKind::New);
        assert_eq!(new.entry.orig, tuple([192, 168, 199, 1], 40000, [192, 168, 199, 200], 80, Protocol::Tcp));
        assert_eq!(new.entry.reply.src, Ipv4Addr::new(192, 168, 226, 131));
        assert_eq!(new.entry.mark, 7);
        assert_eq!(new.entry.tcp_state, Some(TcpState::SynSent));
        assert_eq!(new.entry.id, Some(0xe692_3f9e));
        assert_eq!(new.entry.timeout, Some(120));
        assert_eq!(new.entry.counters_orig, None);

        let destroy = parse_event(&cap::EVENT_DESTROY).unwrap();
        assert_eq!(destroy.kind, CtEventKind::Destroy);
        assert_eq!(destroy.entry.orig, new.entry.orig);
        assert_eq!(destroy.entry.id, new.entry.id);
        assert_eq!(destroy.entry.mark, 8);
        assert_eq!(destroy.entry.status & status::DYING, status::DYING);
        assert_eq!(destroy.entry.tcp_state, Some(TcpState::SynSent));
        assert_eq!(destroy.entry.counters_orig, Some(CtCounters::default()));

        // All five captured events: UDP NEW, TCP NEW (ours), TCP NEW (mark 9), UPDATE, DESTROY.
        let kinds: Vec<(CtEventKind, u32)> = strace_buffers(STRACE_EVENTS_TCP)
            .iter()
            .map(|b| parse_event(b).map(|e| (e.kind, e.entry.mark)).unwrap())
            .collect();
        use CtEventKind::*;
        assert_eq!(kinds, [(New, 7), (New, 7), (New, 9), (Update, 8), (Destroy, 8)]);
    }

    #[test]
    fn rejects_other_families_and_messages() {
        let mut v6 = cap::GET_TCP_REPLY;
        v6[16] = libc::AF_INET6 as u8;
        assert!(matches!(parse_entry(&v6), Err(ParseError::Malformed(_))), "AF_INET6 with IPv4 addresses");
        let mut other = cap::GET_TCP_REPLY;
        other[16] = libc::AF_BRIDGE as u8;
        assert!(matches!(parse_entry(&other), Err(ParseError::NotOurs(_))));
        assert!(matches!(parse_entry(&cap::CREATE_ACK), Err(ParseError::Malformed(_))));
        assert!(matches!(parse_entry(&[]), Err(ParseError::Malformed(_))));
        // An entry without its reply tuple.
        let mut no_reply = cap::GET_TCP_REPLY;
        no_reply[0x48 + 2] = 0x7f; // CTA_TUPLE_REPLY -> unknown type 0x7f
        assert!(matches!(parse_entry(&no_reply), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn tcp_states() {
        use TcpState::*;
        let all = [
            None,
            SynSent,
            SynRecv,
            Established,
            FinWait,
            CloseWait,
            LastAck,
            TimeWait,
            Close,
            SynSent2,
        ];
        for (raw, state) in all.iter().enumerate() {
            assert_eq!(TcpState::from_raw(raw as u8), Some(*state));
            assert_eq!(*state as u8, raw as u8);
        }
        assert_eq!(TcpState::from_raw(10), Option::None);
        let alive: Vec<TcpState> = all.into_iter().filter(|s| s.is_alive_for_reuse()).collect();
        assert_eq!(alive, [None, SynSent, SynRecv, Established, SynSent2]);
    }

    #[test]
    fn live_balanced_means_dnated_and_not_finished() {
        let t = Tuple { src: [10, 0, 0, 1].into(), dst: [10, 0, 0, 2].into(), sport: 1, dport: 80, proto: Protocol::Tcp };
        let e = |mark, status, tcp_state| CtEntry {
            orig: t,
            reply: t,
            mark,
            status,
            tcp_state,
            id: None,
            timeout: None,
            counters_orig: None,
            counters_reply: None,
        };
        const M: u32 = 0x6e66_7673;
        assert!(e(M, 0, Some(TcpState::Established)).is_live_balanced(M));
        assert!(e(M, 0, None).is_live_balanced(M), "a SYN in flight");
        assert!(e(0, status::DST_NAT, Some(TcpState::SynSent)).is_live_balanced(M), "the fallback rule's");
        assert!(!e(M, 0, Some(TcpState::TimeWait)).is_live_balanced(M), "finished");
        assert!(!e(0, 0, Some(TcpState::Established)).is_live_balanced(M), "not balanced: to the director");
    }

    // ---- never panic ----

    fn captured_messages() -> Vec<Vec<u8>> {
        let mut all = vec![
            cap::GET_TCP_REPLY.to_vec(),
            cap::GET_UDP_REPLY.to_vec(),
            cap::EVENT_NEW.to_vec(),
            cap::EVENT_DESTROY.to_vec(),
            cap::CREATE_ACK.to_vec(),
        ];
        all.extend(strace_buffers(STRACE_DUMP_MARK));
        all
    }

    fn exercise(bytes: &[u8]) {
        let _ = parse_entry(bytes);
        let _ = parse_event(bytes);
        for single in [false, true] {
            let _ = handle_datagram(bytes, CAPTURED_SEQ, single, &mut |m| parse_entry(m).map(drop));
        }
    }

    /// Found by `mutated_real_messages_never_panic`: an NLMSG_ERROR whose error field is
    /// i32::MIN made `-err` overflow (a panic in debug builds).
    #[test]
    fn nlmsgerr_with_i32_min_is_an_errno_not_a_panic() {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes()); // nlmsg_len: header + error + request header
        msg.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&CAPTURED_SEQ.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // portid
        msg.extend_from_slice(&i32::MIN.to_ne_bytes()); // error
        msg.extend_from_slice(&[0u8; 16]); // the request's header
        let r = handle_datagram(&msg, CAPTURED_SEQ, true, &mut |_| Ok(()));
        assert!(matches!(r, Ok(Some(Answer::Errno(e))) if e == i32::MAX), "{r:?}");
    }

    #[test]
    fn every_truncation_of_real_messages_is_handled() {
        for msg in captured_messages() {
            for n in 0..=msg.len() {
                exercise(&msg[..n]);
                // A cut inside the first message (whose header still claims its full length)
                // must be an error, never a partial entry.
                let first_len = ne_u32(&msg, 0).map_or(0, |l| l as usize);
                if n < first_len {
                    assert!(parse_entry(&msg[..n]).is_err());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            exercise(&bytes);
        }

        #[test]
        fn mutated_real_messages_never_panic(
            which in 0usize..7,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let msgs = captured_messages();
            let msg = mutated(&msgs[which % msgs.len()], &edits);
            exercise(&msg);
        }

        /// Whatever the mapping, what we build parses back to the same tuples and mark.
        #[test]
        fn create_round_trips_through_the_parser(
            src in any::<u32>(), dst in any::<u32>(), sport in any::<u16>(), dport in any::<u16>(),
            tcp in any::<bool>(), mark in any::<u32>(), rip in any::<u32>(), rport in any::<u16>(),
        ) {
            let orig = Tuple {
                src: Ipv4Addr::from(src).into(), dst: Ipv4Addr::from(dst).into(), sport, dport,
                proto: if tcp { Protocol::Tcp } else { Protocol::Udp },
            };
            let m = CtMapping {
                orig, reply: orig.inverse(),
                nat_dst: SocketAddr::new(Ipv4Addr::from(rip).into(), rport), mark, timeout: 120,
            };
            let mut buf = Vec::new();
            build_create(&mut buf, 1, &m);
            let e = parse_entry(&buf).unwrap();
            prop_assert_eq!(e.orig, m.orig);
            prop_assert_eq!(e.reply, m.reply);
            prop_assert_eq!(e.mark, mark);
            prop_assert_eq!(e.timeout, Some(120));
        }
    }
}
