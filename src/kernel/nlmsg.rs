//! Netlink message building shared by the nfnetlink subsystems nfvs speaks (ctnetlink,
//! nfnetlink_queue): `struct nlmsghdr` + `struct nfgenmsg` + attributes
//! (include/uapi/linux/netlink.h, netfilter/nfnetlink.h). Headers and attribute headers are in
//! host byte order; the nfgenmsg `res_id` is big-endian. Builders append to a buffer, so
//! several messages can go out in one `sendmsg`.

use std::io;
use std::os::fd::RawFd;

pub const NLMSG_HDRLEN: usize = 16;
pub const NFGENMSG_LEN: usize = 4;
pub const NLA_HDRLEN: usize = 4;
pub const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
pub const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
pub const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
pub const NLA_F_NESTED: u16 = libc::NLA_F_NESTED as u16;
pub const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;

/// Starts a message of type `subsys << 8 | op` at the end of `buf`; returns where it starts,
/// for [`finish`]. Every builder ends on a 4-byte boundary (NLMSG_ALIGN).
pub fn begin(buf: &mut Vec<u8>, subsys: u16, op: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
    buf.extend_from_slice(&((subsys << 8) | op).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0 = to the kernel
    // struct nfgenmsg { family, version, res_id }
    buf.extend_from_slice(&[family, libc::NFNETLINK_V0 as u8]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    at
}

/// Sets the length of the message started at `at` (requests are a few hundred bytes).
pub fn finish(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

/// One attribute, padded to 4 bytes with zeros (payloads here are a few bytes).
pub fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = (NLA_HDRLEN + payload.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(align4(buf.len()), 0);
}

/// Opens a nested attribute; close it with [`nest_end`].
pub fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes()); // nla_len, set by nest_end()
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

pub fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
