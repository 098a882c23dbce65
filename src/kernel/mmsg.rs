//! Several netlink datagrams per system call: `recvmmsg(2)` into fixed slots.
//!
//! The kernel sends each queued packet and each conntrack event as a datagram of its own, so a
//! plain `recv` costs one system call per packet or event; under load that is most of a
//! reader's time. [`RecvBatch::recv`] takes every datagram already waiting (up to the number
//! of slots) in one call.

use std::io;
use std::os::fd::RawFd;

use super::socket::RecvBuf;

/// Receive slots for `recvmmsg` in one [`RecvBuf`] (aligned for `struct nlmsghdr`), with the
/// `iovec`s and `mmsghdr`s that point at them, built once: a read allocates nothing.
pub struct RecvBatch {
    buf: RecvBuf,
    slot: usize,
    /// One per slot, pointing into `buf` (a heap block that moving `self` does not move).
    _iov: Box<[libc::iovec]>,
    /// One per slot, pointing at its `iovec` (likewise fixed); no name, no control data. The
    /// kernel writes only `msg_len` and `msg_hdr.msg_flags` back.
    hdrs: Box<[libc::mmsghdr]>,
    count: usize,
}

impl RecvBatch {
    /// `slots` datagrams of at most `slot` bytes (rounded up to a multiple of 8, so every slot
    /// stays aligned) each. Size the slots for the largest datagram expected: one that does not
    /// fit is cut short (MSG_TRUNC), and its netlink header then claims more than the slot
    /// holds, so parsers drop it.
    pub fn new(slots: usize, slot: usize) -> RecvBatch {
        let slot = slot.next_multiple_of(8);
        let mut buf = RecvBuf::new(slots * slot);
        let base = buf.as_mut_ptr();
        let mut iov: Box<[libc::iovec]> = (0..slots)
            // SAFETY: slot i lies inside `buf` (slots * slot bytes).
            .map(|i| libc::iovec { iov_base: unsafe { base.add(i * slot) }.cast(), iov_len: slot })
            .collect();
        let hdrs: Box<[libc::mmsghdr]> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data; zeroed = no name, no control data.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        RecvBatch { buf, slot, _iov: iov, hdrs, count: 0 }
    }

    /// Waits for at least one datagram (unless `nonblocking`), then takes every other one
    /// already waiting, up to the number of slots. Returns how many were read: 0 only when
    /// `nonblocking` and nothing was waiting. Retries on EINTR.
    pub fn recv(&mut self, fd: RawFd, nonblocking: bool) -> io::Result<usize> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { libc::MSG_WAITFORONE };
        loop {
            // SAFETY: every header points at its own iovec and slot, alive as long as `self`.
            let n = unsafe {
                libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), self.hdrs.len() as u32, flags, std::ptr::null_mut())
            };
            if n >= 0 {
                self.count = n as usize;
                return Ok(self.count);
            }
            self.count = 0;
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if nonblocking => return Ok(0),
                _ => return Err(e),
            }
        }
    }

    /// The datagrams the last [`RecvBatch::recv`] read.
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let bytes = self.buf.bytes();
        (0..self.count).map(move |i| {
            let len = (self.hdrs[i].msg_len as usize).min(self.slot);
            bytes.get(i * self.slot..i * self.slot + len).unwrap_or(&[])
        })
    }
}
