//! Several netlink datagrams per system call: `recvmmsg(2)` into fixed slots.
//!
//! The kernel sends each queued packet and each conntrack event as a datagram of its own, so a
//! plain `recv` costs one system call per packet or event; under load that is most of a
//! reader's time. [`RecvBatch::recv`] takes every datagram already waiting (up to the number
//! of slots) in one call.

use std::io;
use std::os::fd::RawFd;

/// Receive slots for `recvmmsg`, aligned for `struct nlmsghdr`.
pub struct RecvBatch {
    words: Box<[u32]>,
    slot: usize,
    lens: Vec<usize>,
    count: usize,
}

impl RecvBatch {
    /// `slots` datagrams of at most `slot` bytes (a multiple of 4) each. Size the slots for the
    /// largest datagram expected: one that does not fit is cut short (MSG_TRUNC), and its
    /// netlink header then claims more than the slot holds, so parsers drop it.
    pub fn new(slots: usize, slot: usize) -> RecvBatch {
        let slot = (slot + 3) & !3;
        RecvBatch { words: vec![0u32; slots * slot / 4].into_boxed_slice(), slot, lens: vec![0; slots], count: 0 }
    }

    /// Waits for at least one datagram (unless `nonblocking`), then takes every other one
    /// already waiting, up to the number of slots. Returns how many were read: 0 only when
    /// `nonblocking` and nothing was waiting. Retries on EINTR.
    pub fn recv(&mut self, fd: RawFd, nonblocking: bool) -> io::Result<usize> {
        let n_slots = self.lens.len();
        let base = self.words.as_mut_ptr().cast::<u8>();
        let mut iov: Vec<libc::iovec> = (0..n_slots)
            // SAFETY: slot i lies inside `words` (n_slots * slot bytes).
            .map(|i| libc::iovec { iov_base: unsafe { base.add(i * self.slot) }.cast(), iov_len: self.slot })
            .collect();
        // SAFETY: mmsghdr is plain data; zeroed = no name, no control data.
        let mut hdrs: Vec<libc::mmsghdr> = (0..n_slots).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (h, v) in hdrs.iter_mut().zip(iov.iter_mut()) {
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { libc::MSG_WAITFORONE };
        loop {
            // SAFETY: every header points at its own slot, alive for the call.
            let n = unsafe { libc::recvmmsg(fd, hdrs.as_mut_ptr(), n_slots as u32, flags, std::ptr::null_mut()) };
            if n >= 0 {
                let n = n as usize;
                for (i, h) in hdrs.iter().enumerate().take(n) {
                    self.lens[i] = (h.msg_len as usize).min(self.slot);
                }
                self.count = n;
                return Ok(n);
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
        let base = self.words.as_ptr().cast::<u8>();
        (0..self.count).map(move |i| {
            // SAFETY: slot i is inside `words`, and `lens[i] <= slot` bytes of it were written.
            unsafe { std::slice::from_raw_parts(base.add(i * self.slot), self.lens[i]) }
        })
    }
}
