//! A new connection plus the chosen real server, turned into the conntrack entry nfvs asks the
//! kernel to create: plain data, built and checked without touching the kernel.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::packet::FlowKey;

/// A conntrack tuple: addresses, ports and IP protocol number, in host types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    /// The same flow seen from the other side.
    pub fn inverse(&self) -> Tuple {
        Tuple { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, proto: self.proto }
    }
}

impl From<&FlowKey> for Tuple {
    fn from(f: &FlowKey) -> Tuple {
        Tuple { src: f.src, dst: f.dst, sport: f.sport, dport: f.dport, proto: f.proto }
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
    /// Where the connection goes (CTA_NAT_DST: address and port).
    pub nat_dst: SocketAddrV4,
    /// CTA_MARK: how nfvs recognises its own entries in dumps and events.
    pub mark: u32,
    /// CTA_TIMEOUT in seconds (the kernel's TCP tracker resets it on the next packet).
    pub timeout: u32,
}

/// Timeout given to a freshly created entry; the TCP tracker replaces it with the SYN_SENT
/// timeout as soon as the accepted SYN passes conntrack.
pub const CREATE_TIMEOUT_SECS: u32 = 120;

impl CtMapping {
    pub fn dnat(flow: &FlowKey, to: SocketAddrV4, mark: u32) -> CtMapping {
        let orig = Tuple::from(flow);
        CtMapping { orig, reply: orig.inverse(), nat_dst: to, mark, timeout: CREATE_TIMEOUT_SECS }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_is_plain_inverse_not_nated() {
        let flow = FlowKey {
            src: Ipv4Addr::new(192, 168, 199, 1),
            dst: Ipv4Addr::new(192, 168, 199, 200),
            sport: 40000,
            dport: 80,
            proto: 6,
        };
        let m = CtMapping::dnat(&flow, SocketAddrV4::new(Ipv4Addr::new(192, 168, 226, 131), 8080), 7);
        assert_eq!(m.reply.src, Ipv4Addr::new(192, 168, 199, 200));
        assert_eq!(m.reply.sport, 80);
        assert_eq!(m.reply.dst, Ipv4Addr::new(192, 168, 199, 1));
        assert_eq!(m.reply.dport, 40000);
        assert_eq!(m.nat_dst.port(), 8080);
    }
}
