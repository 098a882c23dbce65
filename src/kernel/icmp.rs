//! ICMP refusals of connections no real server can take (to be replaced by the wire module's
//! builder).

/// IPVS answers a connection it cannot schedule with ICMP port unreachable from the VIP
/// (`ip_vs_leave`/`ip_vs_in`: `icmp_send(skb, ICMP_DEST_UNREACH, ICMP_PORT_UNREACH, 0)`), so the
/// client's connect() fails at once with ECONNREFUSED instead of retrying its SYN until it
/// times out (lvs-semantics.md §1.3). The SYN never reached conntrack (it is dropped in raw
/// PREROUTING), so nfvs sends the error itself, from a raw socket.
pub struct Refuser {
    fd: std::os::fd::OwnedFd,
}

impl Refuser {
    /// `IPPROTO_RAW` implies IP_HDRINCL: we write the IP header; the kernel fills in its
    /// checksum and, when zero, its id (raw(7)).
    pub fn open() -> std::io::Result<Refuser> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) with constant arguments; the descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Refuser { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) } })
    }

    /// Sends ICMP port unreachable for the queued IPv4 packet `orig` (already parsed, so its
    /// header is sound) from its destination to its source, quoting its IP header and first
    /// 8 bytes of payload (RFC 792), which carry the ports and sequence number the client's
    /// TCP checks (`tcp_v4_err`).
    pub fn refuse(&self, orig: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let bad = || std::io::Error::from(std::io::ErrorKind::InvalidData);
        let ihl = usize::from(orig.first().ok_or_else(bad)? & 0x0f) * 4;
        if ihl < 20 || orig.len() < ihl {
            return Err(bad());
        }
        let quote = &orig[..orig.len().min(ihl + 8)];
        let total = 20 + 8 + quote.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[1] = 0xc0; // IPTOS_PREC_INTERNETCONTROL, as icmp_send
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64; // TTL
        p[9] = libc::IPPROTO_ICMP as u8;
        p[12..16].copy_from_slice(&orig[16..20]); // from the VIP the client asked for
        p[16..20].copy_from_slice(&orig[12..16]); // to the client
        p[20] = 3; // ICMP_DEST_UNREACH
        p[21] = 3; // ICMP_PORT_UNREACH
        p[28..].copy_from_slice(quote);
        let sum = internet_checksum(&p[20..]);
        p[22..24].copy_from_slice(&sum.to_be_bytes());
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([orig[12], orig[13], orig[14], orig[15]]) },
            sin_zero: [0; 8],
        };
        // SAFETY: `p` and `to` are valid for the lengths given during the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The Internet checksum (RFC 1071) of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

