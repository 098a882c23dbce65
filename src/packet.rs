//! Queued packet bytes -> the flow key of a new connection. Lengths are checked once here, at
//! the boundary; whatever the bytes, parsing returns an error and never panics.


use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_packet::ipv4::Ipv4Packet;
use pnet_packet::tcp::{TcpFlags, TcpPacket};
use pnet_packet::udp::UdpPacket;
use pnet_packet::Packet;

use crate::model::{Protocol, Tuple};


/// Why a queued packet is not a new IPv4 TCP/UDP connection we can balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not IPv4")]
    NotIpv4,
    #[error("truncated IPv4 header")]
    TruncatedIp,
    #[error("IPv4 fragment")]
    Fragment,
    #[error("not TCP or UDP (protocol {0})")]
    Protocol(u8),
    #[error("truncated transport header")]
    TruncatedTransport,
    #[error("TCP segment is not a plain SYN")]
    NotSyn,
}

/// Parses an IPv4 packet as NFQUEUE hands it over (starting at the IP header).
/// The flow key of the connection it opens: the [`Tuple`] of its original direction.
pub fn parse(bytes: &[u8]) -> Result<Tuple, ParseError> {
    if bytes.is_empty() || bytes[0] >> 4 != 4 {
        return Err(ParseError::NotIpv4);
    }
    let ip = Ipv4Packet::new(bytes).ok_or(ParseError::TruncatedIp)?;
    let ihl = usize::from(ip.get_header_length()) * 4;
    let total = usize::from(ip.get_total_length());
    if ihl < 20 || bytes.len() < ihl || total < ihl {
        return Err(ParseError::TruncatedIp);
    }
    // More-fragments flag or a non-zero offset: only the first fragment has ports, and
    // conntrack reassembles before it sees them anyway.
    if ip.get_fragment_offset() != 0 || ip.get_flags() & 0b001 != 0 {
        return Err(ParseError::Fragment);
    }
    // The transport header is whatever follows the IP header within both the buffer and the
    // IP total length (a copy range may cut the buffer shorter than the packet).
    let end = total.min(bytes.len());
    let l4 = &bytes[ihl..end];
    let (src, dst) = (ip.get_source().into(), ip.get_destination().into());
    let proto = ip.get_next_level_protocol();
    if proto == IpNextHeaderProtocols::Tcp {
        let tcp = TcpPacket::new(l4).ok_or(ParseError::TruncatedTransport)?;
        if usize::from(tcp.get_data_offset()) * 4 < TcpPacket::minimum_packet_size() {
            return Err(ParseError::TruncatedTransport);
        }
        let flags = tcp.get_flags();
        if flags & (TcpFlags::SYN | TcpFlags::ACK | TcpFlags::RST | TcpFlags::FIN) != TcpFlags::SYN {
            return Err(ParseError::NotSyn);
        }
        Ok(Tuple { src, dst, sport: tcp.get_source(), dport: tcp.get_destination(), proto: Protocol::Tcp })
    } else if proto == IpNextHeaderProtocols::Udp {
        let udp = UdpPacket::new(l4).ok_or(ParseError::TruncatedTransport)?;
        let _ = udp.payload();
        Ok(Tuple { src, dst, sport: udp.get_source(), dport: udp.get_destination(), proto: Protocol::Udp })
    } else {
        Err(ParseError::Protocol(proto.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN from 192.168.199.1:40000 to 192.168.199.200:80, as `curl` sends it (options cut).
    fn syn() -> Vec<u8> {
        let mut p = vec![
            0x45, 0x00, 0x00, 0x28, // v4, ihl 5, tos, total length 40
            0x12, 0x34, 0x40, 0x00, // id, DF
            0x40, 0x06, 0x00, 0x00, // ttl 64, tcp, checksum (unchecked here)
            192, 168, 199, 1, // src
            192, 168, 199, 200, // dst
            0x9c, 0x40, 0x00, 0x50, // sport 40000, dport 80
            0, 0, 0, 1, // seq
            0, 0, 0, 0, // ack
            0x50, 0x02, 0xff, 0xff, // data offset 5, SYN, window
            0, 0, 0, 0, // checksum, urgent
        ];
        p.truncate(40);
        p
    }

    #[test]
    fn parses_syn() {
        let k = parse(&syn()).unwrap();
        assert_eq!(k.src, std::net::Ipv4Addr::new(192, 168, 199, 1));
        assert_eq!(k.dst, std::net::Ipv4Addr::new(192, 168, 199, 200));
        assert_eq!((k.sport, k.dport, k.proto), (40000, 80, Protocol::Tcp));
    }

    #[test]
    fn rejects_syn_ack_and_rst() {
        let mut p = syn();
        p[33] = 0x12;
        assert_eq!(parse(&p), Err(ParseError::NotSyn));
        p[33] = 0x06;
        assert_eq!(parse(&p), Err(ParseError::NotSyn));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let p = syn();
        for n in 0..p.len() {
            assert!(parse(&p[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn malformed_headers() {
        let mut p = syn();
        p[0] = 0x65;
        assert_eq!(parse(&p), Err(ParseError::NotIpv4));
        let mut p = syn();
        p[0] = 0x44; // ihl 4 < 5
        assert_eq!(parse(&p), Err(ParseError::TruncatedIp));
        let mut p = syn();
        p[0] = 0x4f; // ihl 15 = 60 bytes > 40
        assert_eq!(parse(&p), Err(ParseError::TruncatedIp));
        let mut p = syn();
        p[3] = 30; // total length cuts the TCP header
        assert_eq!(parse(&p), Err(ParseError::TruncatedTransport));
        let mut p = syn();
        p[9] = 1; // ICMP
        assert_eq!(parse(&p), Err(ParseError::Protocol(1)));
        let mut p = syn();
        p[6] = 0x20; // more fragments
        assert_eq!(parse(&p), Err(ParseError::Fragment));
        let mut p = syn();
        p[32] = 0x20; // data offset 2
        assert_eq!(parse(&p), Err(ParseError::TruncatedTransport));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_on_v4_prefix(mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 1..80)) {
            bytes[0] = 0x40 | (bytes[0] & 0x0f);
            let _ = parse(&bytes);
        }
    }
}
