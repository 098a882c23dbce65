//! ICMP "destination unreachable: port unreachable" (RFC 792) in answer to a queued IPv4 packet,
//! as IPVS sends it when no real server can take a new connection (`ip_vs_leave` /
//! `ip_vs_in`: `icmp_send(skb, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0)`): from the address the
//! client asked for, so its connect() fails at once with ECONNREFUSED (lvs-semantics.md §1.3).
//! The raw socket that sends it is [`crate::kernel::icmp::Refuser`].
//!
//! The message is built whole, IPv4 header included (the socket is `IPPROTO_RAW`, which implies
//! `IP_HDRINCL`: raw(7)), in a fixed buffer: building it allocates nothing.

use std::fmt;
use std::net::Ipv4Addr;

use pnet_packet::util::checksum;

/// An IPv4 header without options, as this message's own.
const IPV4_HDRLEN: usize = 20;
/// The ICMP header: type, code, checksum, 4 unused bytes.
const ICMP_HDRLEN: usize = 8;
/// How much of the original follows its IP header in the quote (RFC 792: "the internet header
/// plus the first 64 bits of the original datagram's data"): the TCP ports and sequence number
/// the client's `tcp_v4_err` checks.
const QUOTED_DATA: usize = 8;
/// The longest IPv4 header: IHL 15.
const MAX_IPV4_HDRLEN: usize = 60;

/// The largest message: a quote of a 60-byte IP header and 8 bytes after it.
pub const MAX_LEN: usize = IPV4_HDRLEN + ICMP_HDRLEN + MAX_IPV4_HDRLEN + QUOTED_DATA;

/// `IPTOS_PREC_INTERNETCONTROL`, the TOS `icmp_send` gives ICMP errors (net/ipv4/icmp.c).
const TOS_INTERNETCONTROL: u8 = 0xc0;
/// The TTL of the message (the kernel's default, net.ipv4.ip_default_ttl).
const TTL: u8 = 64;
const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

/// The packet to answer does not start with an IPv4 header that it holds whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unquotable;

impl fmt::Display for Unquotable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the packet does not hold the IPv4 header it announces")
    }
}

impl std::error::Error for Unquotable {}

/// An ICMP port unreachable message, IPv4 header included, ready for an `IPPROTO_RAW` socket.
#[derive(Clone)]
pub struct PortUnreachable {
    buf: [u8; MAX_LEN],
    len: usize,
}

impl PortUnreachable {
    /// The answer to `orig`, a packet as queued (from its IPv4 header on): from its destination
    /// to its source, quoting its IP header and the first 8 bytes after it (fewer if it has
    /// fewer). Its own IP header has identification 0 and checksum 0, which the kernel fills
    /// in on an `IP_HDRINCL` socket (raw(7)); the ICMP checksum (RFC 1071) is computed here.
    ///
    /// Only the IHL is checked: `orig` has passed the queued-packet parser
    /// (`crate::packet::parse`) before anything is refused.
    pub fn new(orig: &[u8]) -> Result<PortUnreachable, Unquotable> {
        let ihl = usize::from(orig.first().ok_or(Unquotable)? & 0x0f) * 4;
        if ihl < IPV4_HDRLEN || orig.len() < ihl {
            return Err(Unquotable);
        }
        let quote = &orig[..orig.len().min(ihl + QUOTED_DATA)];
        let len = IPV4_HDRLEN + ICMP_HDRLEN + quote.len();
        let mut buf = [0u8; MAX_LEN];
        let p = &mut buf[..len];
        p[0] = 0x45; // version 4, IHL 5
        p[1] = TOS_INTERNETCONTROL;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes()); // total length (at most 96)
        // 4..8: identification 0 (the kernel picks one), no flags, fragment offset 0
        p[8] = TTL;
        p[9] = IPPROTO_ICMP;
        // 10..12: header checksum 0 (the kernel computes it)
        p[12..16].copy_from_slice(&orig[16..20]); // from the address the client asked for
        p[16..20].copy_from_slice(&orig[12..16]); // to the client
        p[20] = ICMP_DEST_UNREACH;
        p[21] = ICMP_PORT_UNREACH;
        // 22..24: checksum, below; 24..28: unused, 0
        p[28..].copy_from_slice(quote);
        // Word 1 of the ICMP message is the checksum field itself (zero until now).
        let sum = checksum(&p[IPV4_HDRLEN..], 1);
        p[22..24].copy_from_slice(&sum.to_be_bytes());
        Ok(PortUnreachable { buf, len })
    }

    /// The whole message, IPv4 header first.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Where it goes: the original packet's source.
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.buf[16], self.buf[17], self.buf[18], self.buf[19])
    }
}

impl fmt::Debug for PortUnreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortUnreachable").field("bytes", &self.bytes()).finish()
    }
}

#[cfg(test)]
mod tests {
    use pnet_packet::icmp::{IcmpCode, IcmpPacket, IcmpTypes};
    use pnet_packet::ip::IpNextHeaderProtocols;
    use pnet_packet::ipv4::Ipv4Packet;
    use pnet_packet::Packet;
    use proptest::prelude::*;

    use super::*;

    use crate::wire::testing::nfq as cap;

    /// The queued SYN of tests/fixtures/nfq (its NFQA_PAYLOAD): 192.168.199.1:40000 ->
    /// 192.168.199.200:80, 60 bytes.
    fn captured_syn() -> &'static [u8] {
        &cap::PACKET_SYN[60..]
    }

    /// The answer to the captured SYN, field by field.
    #[rustfmt::skip]
    const REFUSAL: [u8; 56] = [
        // IPv4 header (RFC 791)
        0x45,                   // version 4, IHL 5
        0xc0,                   // TOS: IPTOS_PREC_INTERNETCONTROL, as icmp_send
        0x00, 0x38,             // total length 56 = 20 + 8 + 28
        0x00, 0x00,             // identification: 0, the kernel picks one
        0x00, 0x00,             // no flags, fragment offset 0
        0x40,                   // TTL 64
        0x01,                   // protocol ICMP
        0x00, 0x00,             // header checksum: 0, the kernel computes it
        0xc0, 0xa8, 0xc7, 0xc8, // source 192.168.199.200: the VIP the SYN was sent to
        0xc0, 0xa8, 0xc7, 0x01, // destination 192.168.199.1: the client
        // ICMP (RFC 792)
        0x03,                   // type 3, destination unreachable
        0x03,                   // code 3, port unreachable
        0xd2, 0x0c,             // checksum of the ICMP message (RFC 1071)
        0x00, 0x00, 0x00, 0x00, // unused
        //   the SYN's IPv4 header, as it came
        0x45, 0x00, 0x00, 0x3c, 0xb9, 0x9f, 0x40, 0x00, 0x40, 0x06, 0x71, 0x01,
        0xc0, 0xa8, 0xc7, 0x01, 0xc0, 0xa8, 0xc7, 0xc8,
        //   and its first 8 bytes of data
        0x9c, 0x40,             //   source port 40000
        0x00, 0x50,             //   destination port 80
        0x5e, 0xf0, 0x2f, 0x6f, //   sequence number: what tcp_v4_err matches the error with
    ];

    #[test]
    fn refusal_of_the_captured_syn_byte_for_byte() {
        let m = PortUnreachable::new(captured_syn()).unwrap();
        assert_eq!(m.bytes(), REFUSAL);
        assert_eq!(m.dst(), Ipv4Addr::new(192, 168, 199, 1));
        assert_eq!(REFUSAL[28..], captured_syn()[..28], "the quote is the SYN's first 28 bytes");
    }

    /// RFC 1071: the one's-complement sum of a message with its checksum in place is 0xffff.
    #[test]
    fn the_checksum_verifies() {
        let icmp = &REFUSAL[20..];
        let mut sum: u32 = icmp.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        let parsed = IcmpPacket::new(icmp).unwrap();
        assert_eq!(pnet_packet::icmp::checksum(&parsed), 0xd20c);
    }

    /// The other way: the expected bytes read by pnet's parsers say what the comments say.
    #[test]
    fn the_refusal_reads_back() {
        let ip = Ipv4Packet::new(&REFUSAL).unwrap();
        assert_eq!((ip.get_version(), ip.get_header_length()), (4, 5));
        assert_eq!((ip.get_dscp(), ip.get_ecn()), (0x30, 0), "TOS 0xc0");
        assert_eq!(usize::from(ip.get_total_length()), REFUSAL.len());
        assert_eq!((ip.get_identification(), ip.get_flags(), ip.get_fragment_offset()), (0, 0, 0));
        assert_eq!(ip.get_ttl(), 64);
        assert_eq!(ip.get_next_level_protocol(), IpNextHeaderProtocols::Icmp);
        assert_eq!(ip.get_source(), Ipv4Addr::new(192, 168, 199, 200));
        assert_eq!(ip.get_destination(), Ipv4Addr::new(192, 168, 199, 1));
        let icmp = IcmpPacket::new(ip.payload()).unwrap();
        assert_eq!(icmp.get_icmp_type(), IcmpTypes::DestinationUnreachable);
        assert_eq!(icmp.get_icmp_code(), IcmpCode(3), "port unreachable");
        let quoted = Ipv4Packet::new(&icmp.payload()[4..]).unwrap();
        assert_eq!(quoted.get_source(), Ipv4Addr::new(192, 168, 199, 1));
        assert_eq!(quoted.get_destination(), Ipv4Addr::new(192, 168, 199, 200));
        assert_eq!(quoted.payload()[..4], [0x9c, 0x40, 0x00, 0x50], "ports 40000 -> 80");
    }

    /// IP options are quoted with the header; a packet shorter than header + 8 is quoted
    /// whole.
    #[test]
    fn quotes_options_and_short_packets() {
        let mut with_options = captured_syn()[..20].to_vec();
        with_options[0] = 0x46; // IHL 6: 4 bytes of options
        with_options.extend_from_slice(&[1, 1, 1, 0]); // NOP, NOP, NOP, end of options
        with_options.extend_from_slice(&captured_syn()[20..]);
        let m = PortUnreachable::new(&with_options).unwrap();
        assert_eq!(m.bytes().len(), 20 + 8 + 24 + 8);
        assert_eq!(m.bytes()[28..], with_options[..32]);

        let m = PortUnreachable::new(&captured_syn()[..24]).unwrap();
        assert_eq!(m.bytes().len(), 20 + 8 + 24);
        assert_eq!(u16::from_be_bytes([m.bytes()[2], m.bytes()[3]]), 52);
        let icmp = IcmpPacket::new(&m.bytes()[20..]).unwrap();
        assert_eq!(icmp.get_checksum(), pnet_packet::icmp::checksum(&icmp));
    }

    #[test]
    fn refuses_what_does_not_hold_its_header() {
        assert_eq!(PortUnreachable::new(&[]).unwrap_err(), Unquotable);
        let mut ihl4 = captured_syn().to_vec();
        ihl4[0] = 0x44;
        assert_eq!(PortUnreachable::new(&ihl4).unwrap_err(), Unquotable);
        assert_eq!(PortUnreachable::new(&captured_syn()[..19]).unwrap_err(), Unquotable);
        let mut ihl15 = captured_syn().to_vec();
        ihl15[0] = 0x4f; // claims 60 bytes of header, has 60 bytes in all
        assert_eq!(PortUnreachable::new(&ihl15).unwrap().bytes().len(), 20 + 8 + 60);
        assert_eq!(PortUnreachable::new(&ihl15[..59]).unwrap_err(), Unquotable);
    }

    proptest! {
        /// Whatever the bytes: an error or a message whose lengths and checksum hold.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(m) = PortUnreachable::new(&bytes) {
                let b = m.bytes();
                prop_assert!(b.len() <= MAX_LEN);
                prop_assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), b.len());
                let icmp = IcmpPacket::new(&b[20..]).unwrap();
                prop_assert_eq!(icmp.get_checksum(), pnet_packet::icmp::checksum(&icmp));
            }
        }
    }
}
