//! Kernel bytes: queued packets, the NFQUEUE and ctnetlink codecs, netlink framing, and the
//! ICMP refusal built from a queued packet. Seeds are the captures of `tests/fixtures/` (real
//! kernel messages) and messages from nfvs's own builders (IPv6, dumps, errors the captures do
//! not have); the harness damages them, splices them together and adds random bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nfvs::model::{CtMapping, Protocol, Tuple};
use nfvs::packet;
use nfvs::wire::ctnetlink::{self, build_create, build_delete, build_dump, build_dump_to, build_get};
use nfvs::wire::icmp::{PortUnreachable, MAX_LEN};
use nfvs::wire::netlink::{
    self, be_u16, be_u32, first_message, ne_u32, nlmsgerr, Attrs, Messages, NFGENMSG_LEN, NLMSG_DONE, NLMSG_ERROR,
    NLMSG_HDRLEN, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_MULTI,
};
use nfvs::wire::nfqueue::{self, Msg};

use crate::harness::{bytes_from, fuzz};

/// The annotated captures (their headers say how they were made).
#[allow(dead_code)]
mod cap {
    pub mod ct {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ct/captures.rs"));
    }
    pub mod nfq {
        include!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/nfq/captures.rs"));
    }
}

/// Where the queued SYN starts in `PACKET_SYN`: after the netlink, nfgenmsg and attribute
/// headers before NFQA_PAYLOAD's value.
const SYN_AT: usize = 60;

// ---------------------------------------------------------------------------------------------
// Seeds.
// ---------------------------------------------------------------------------------------------

/// A UDP datagram 192.168.199.1:40000 -> 192.168.199.200:53, 4 bytes of data.
#[rustfmt::skip]
const UDP: [u8; 32] = [
    0x45, 0x00, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0x40, 0x11, 0x00, 0x00, // v4, 32 bytes, UDP
    192, 168, 199, 1, 192, 168, 199, 200,
    0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, // ports 40000 -> 53, length 12
    1, 2, 3, 4,
];

/// Packets as the queue hands them over: the captured SYN, the same with 4 bytes of IP
/// options, its 20-byte-TCP-header form, and a UDP datagram.
fn packet_seeds() -> Vec<Vec<u8>> {
    let syn = &cap::nfq::PACKET_SYN[SYN_AT..];
    let mut with_options = syn[..20].to_vec();
    with_options[0] = 0x46;
    with_options[3] += 4;
    with_options.extend_from_slice(&[1, 1, 1, 0]); // NOP, NOP, NOP, end of options
    with_options.extend_from_slice(&syn[20..]);
    let mut plain = syn[..40].to_vec();
    plain[3] = 40;
    plain[32] = 0x50; // data offset 5
    vec![syn.to_vec(), with_options, plain, UDP.to_vec()]
}

/// An NFQNL_MSG_PACKET message for `payload` (NFQA_PACKET_HDR id 7, then NFQA_PAYLOAD), built
/// with the netlink writer as the kernel lays it out.
fn queued(payload: &[u8]) -> Vec<u8> {
    const NFNL_SUBSYS_QUEUE: u16 = 3;
    let mut b = Vec::new();
    let at = netlink::begin(&mut b, NFNL_SUBSYS_QUEUE, 0, 0, 0, libc::AF_INET as u8, 0);
    netlink::put_attr(&mut b, 1, &[0, 0, 0, 7, 0x08, 0x00, 0]); // NFQA_PACKET_HDR
    netlink::put_attr(&mut b, 10, payload); // NFQA_PAYLOAD
    netlink::finish(&mut b, at);
    b
}

/// Everything read from a queue socket: the captured messages (packet, config acks, and the
/// requests, which a parser must survive too) and a queued packet of each seed.
fn nfq_seeds() -> Vec<Vec<u8>> {
    use cap::nfq::*;
    let mut seeds: Vec<Vec<u8>> = vec![
        PACKET_SYN.to_vec(),
        CONFIG_BIND_ACK.to_vec(),
        CONFIG_BIND.to_vec(),
        CONFIG_COPY_128.to_vec(),
        CONFIG_MAXLEN_4096.to_vec(),
        CONFIG_FAIL_OPEN_OFF.to_vec(),
        VERDICT_ACCEPT_1.to_vec(),
    ];
    seeds.extend(packet_seeds().iter().map(|p| queued(p)));
    seeds
}

/// A bare netlink message of type `ty` with a 4-byte payload (NLMSG_DONE's error, an
/// NLMSG_ERROR's code without the echoed header, ...).
fn control_msg(ty: u16, flags: u16, seq: u32, value: i32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&20u32.to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    m.extend_from_slice(&value.to_ne_bytes());
    m
}

/// Everything read from a conntrack socket: the captured answers and events, the requests
/// (which parse as entries), what nfvs's builders write for IPv4 and IPv6 flows, and the
/// control messages that end or break a dump.
fn ct_seeds() -> Vec<Vec<u8>> {
    use cap::ct::*;
    let seq = u32::from_ne_bytes(CREATE_ACK[8..12].try_into().unwrap());
    let mut seeds: Vec<Vec<u8>> = vec![
        GET_TCP_REPLY.to_vec(),
        GET_UDP_REPLY.to_vec(),
        EVENT_NEW.to_vec(),
        EVENT_DESTROY.to_vec(),
        CREATE_ACK.to_vec(),
        CREATE_TCP.to_vec(),
        CREATE_UDP.to_vec(),
        DUMP_MARK.to_vec(),
        control_msg(NLMSG_DONE, NLM_F_MULTI, seq, 0),
        control_msg(NLMSG_DONE, NLM_F_MULTI, seq, -libc::EINTR),
        control_msg(NLMSG_ERROR, 0, seq, -libc::ENOENT),
        control_msg(NLMSG_NOOP, 0, seq, 0),
        control_msg(NLMSG_OVERRUN, 0, seq, 0),
    ];
    let v4 = (IpAddr::from(Ipv4Addr::new(192, 168, 199, 1)), IpAddr::from(Ipv4Addr::new(192, 168, 199, 200)));
    let v6 = (
        IpAddr::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        IpAddr::from(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xc8)),
    );
    for ((src, dst), proto) in [(v4, Protocol::Tcp), (v4, Protocol::Udp), (v6, Protocol::Tcp), (v6, Protocol::Udp)] {
        let orig = Tuple { src, dst, sport: 40000, dport: 80, proto };
        let nat_dst = SocketAddr::new(dst, 8080);
        let m = CtMapping { orig, reply: orig.inverse(), nat_dst, mark: 7, timeout: 120 };
        let mut b = Vec::new();
        build_create(&mut b, seq, &m);
        seeds.push(b.clone());
        build_get(&mut b, seq, &orig);
        seeds.push(b.clone());
        build_delete(&mut b, seq, &orig);
        seeds.push(b.clone());
        build_dump_to(&mut b, seq, proto, dst, Some(80));
        seeds.push(b.clone());
    }
    let mut b = Vec::new();
    build_dump(&mut b, seq, 7, 0xff);
    seeds.push(b);
    seeds
}

// ---------------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------------

/// The refusal of `orig`, if it can be built, says what it must: from the address the packet
/// went to, back to its source, quoting the packet's start, lengths and checksum right.
fn check_refusal(orig: &[u8]) -> bool {
    let Ok(m) = PortUnreachable::new(orig) else { return false };
    let b = m.bytes();
    assert!(b.len() <= MAX_LEN && b.len() >= 28);
    assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), b.len(), "total length");
    assert_eq!(b[12..16], orig[16..20], "from the address the packet was sent to");
    assert_eq!(b[16..20], orig[12..16], "to its source");
    assert_eq!(m.dst().octets(), b[16..20]);
    assert_eq!(b[28..], orig[..b.len() - 28], "the quote is the packet's start");
    // RFC 1071: the ICMP message, checksum included, sums to 0xffff.
    let mut sum: u32 = b[20..].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "ICMP checksum");
    true
}

/// A queued packet as the worker handles it: its flow key, and the refusal if no server can
/// take it, which must then be possible (`PortUnreachable::new` relies on the parser's checks).
fn check_packet(bytes: &[u8]) {
    let flow = packet::parse(bytes);
    let refusable = check_refusal(bytes);
    if let Ok(t) = flow {
        assert!(refusable, "parsed as {t:?} but cannot be refused");
        assert!(t.src.is_ipv4() && t.dst.is_ipv4());
    }
}

/// Every message and attribute (three levels deep) of a datagram, and every error code.
fn walk_netlink(bytes: &[u8]) {
    fn walk_attrs(attrs: &[u8], depth: u32) {
        for a in Attrs::new(attrs) {
            let Ok((_, value)) = a else { break };
            let _ = (be_u16(value), be_u32(value));
            if depth > 0 {
                walk_attrs(value, depth - 1);
            }
        }
    }
    let mut total = 0;
    for m in Messages::new(bytes) {
        let Ok(m) = m else { break };
        assert!(m.raw.len() >= NLMSG_HDRLEN && m.payload.len() == m.raw.len() - NLMSG_HDRLEN);
        total += m.raw.len();
        assert!(total <= bytes.len(), "messages beyond the datagram");
        let _ = nlmsgerr(&m);
        walk_attrs(m.payload, 0);
        walk_attrs(m.payload.get(NFGENMSG_LEN..).unwrap_or(&[]), 3);
    }
    let _ = first_message(bytes);
}

/// A conntrack datagram through every reader: an entry, an event, a datagram of events, and
/// the answer to a request (a GET's and a dump's) with its entries parsed as the socket does.
fn check_conntrack(bytes: &[u8]) {
    let _ = ctnetlink::parse_entry(bytes);
    let _ = ctnetlink::parse_event(bytes);
    let mut events = Vec::new();
    let _ = ctnetlink::parse_events(bytes, &mut events);
    for e in &events {
        assert_eq!(e.entry.orig.src.is_ipv4(), e.entry.reply.src.is_ipv4(), "{e:?}");
    }
    // The request's sequence number: the first message's, so the answer paths are taken.
    let seq = ne_u32(bytes, 8).unwrap_or(0);
    for single in [false, true] {
        let mut entries = 0;
        let _ = ctnetlink::handle_datagram(bytes, seq, single, &mut |m| {
            entries += 1;
            ctnetlink::parse_entry(m).map(drop)
        });
        assert!(!single || entries <= 1, "a GET's answer is one entry");
    }
}

/// A queue datagram as the worker reads it: each message, and each packet's bytes.
fn check_queue(bytes: &[u8]) {
    nfqueue::parse_datagram(bytes, |m| {
        if let Msg::Packet { payload, .. } = m {
            check_packet(payload);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Targets.
// ---------------------------------------------------------------------------------------------

#[test]
fn packet_parse() {
    fuzz("packet::parse", 12_000, bytes_from(packet_seeds(), 80), |b| check_packet(&b));
}

#[test]
fn icmp_port_unreachable() {
    fuzz("wire::icmp", 12_000, bytes_from(packet_seeds(), 100), |b| {
        check_refusal(&b);
    });
}

#[test]
fn nfqueue_datagram() {
    fuzz("wire::nfqueue::parse_datagram", 12_000, bytes_from(nfq_seeds(), 300), |b| check_queue(&b));
}

#[test]
fn netlink_framing() {
    let mut seeds = ct_seeds();
    seeds.extend(nfq_seeds());
    fuzz("wire::netlink", 12_000, bytes_from(seeds, 300), |b| walk_netlink(&b));
}

#[test]
fn ctnetlink_entries_events_answers() {
    fuzz("wire::ctnetlink", 12_000, bytes_from(ct_seeds(), 600), |b| check_conntrack(&b));
}
