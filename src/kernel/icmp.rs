//! The raw socket that refuses a connection no real server can take, with the ICMP port
//! unreachable [`crate::wire::icmp::PortUnreachable`] builds, as IPVS does (lvs-semantics.md
//! §1.3). The SYN never reached conntrack (it is dropped in raw PREROUTING), so the kernel sends
//! no error of its own: nfvs sends it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::wire::icmp::PortUnreachable;

/// An `IPPROTO_RAW` socket for ICMP refusals.
pub struct Refuser {
    fd: OwnedFd,
}

impl Refuser {
    /// `IPPROTO_RAW` implies IP_HDRINCL: we write the IP header; the kernel fills in its
    /// checksum and, when zero, its id (raw(7)). Needs CAP_NET_RAW.
    pub fn open() -> io::Result<Refuser> {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Refuser { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Sends ICMP port unreachable for the queued IPv4 packet `orig` (already parsed, so its
    /// header is sound) from its destination to its source, quoting its IP header and first
    /// 8 bytes of payload (RFC 792), which carry the ports and sequence number the client's
    /// TCP checks (`tcp_v4_err`). A packet that does not hold its IP header is
    /// `ErrorKind::InvalidData`.
    pub fn refuse(&self, orig: &[u8]) -> io::Result<()> {
        let msg = PortUnreachable::new(orig).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(msg.dst().octets()) },
            sin_zero: [0; 8],
        };
        let p = msg.bytes();
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
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
