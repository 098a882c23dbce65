//! What the netlink sockets (ctnetlink, NFQUEUE, nf_tables) share: memory to receive into,
//! aligned as `struct nlmsghdr` needs, and the few socket calls they all make.

use std::io;
use std::os::fd::RawFd;

/// A receive buffer aligned for `struct nlmsghdr` (which `mnl::Socket::recv_raw` asserts, and
/// libnftnl's parsers assume); 8-byte aligned, so any netlink structure may be read in place.
/// Allocated once: receiving into it allocates nothing.
pub struct RecvBuf {
    words: Box<[u64]>,
}

impl RecvBuf {
    /// At least `bytes` bytes (rounded up to a multiple of 8), zeroed.
    pub fn new(bytes: usize) -> RecvBuf {
        RecvBuf { words: vec![0u64; bytes.div_ceil(8)].into_boxed_slice() }
    }

    pub fn len(&self) -> usize {
        self.words.len() * 8
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: u8 has alignment 1 and every bit pattern is valid; the slice covers exactly
        // the words' memory and lives no longer than the borrow of `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len()) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: as in `bytes`; the mutable borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }

    /// The start of the memory, for `iovec`s that the kernel writes through (recvmmsg). The
    /// memory is a heap block: moving the `RecvBuf` does not move it.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast::<u8>()
    }
}

/// `setsockopt(2)` with a value of type `T` (a `c_int`, a `timeval`, ...).
pub fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of its size for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `setsockopt(2)` with an `int` value.
pub fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    setsockopt(fd, level, name, &value)
}

/// Sends `buf` to the kernel (an unconnected netlink socket sends to port 0) in one
/// `send(2)`, retrying when a signal interrupts it. A short send is an error: netlink sends a
/// datagram whole or not at all.
pub fn send_all(fd: RawFd, buf: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: `buf` is valid for reads of its length during the call.
        let r = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), 0) };
        if r >= 0 {
            return if r as usize == buf.len() {
                Ok(())
            } else {
                Err(io::Error::new(io::ErrorKind::WriteZero, "short netlink send"))
            };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `mnl::Socket::recv_raw` into `rx`, retrying when a signal interrupts it. A datagram larger
/// than `rx` is an error (ENOSPC, libmnl's `mnl_socket_recvfrom`), never a silent cut.
pub fn recv_mnl(sock: &mnl::Socket, rx: &mut RecvBuf) -> io::Result<usize> {
    loop {
        match sock.recv_raw(rx.bytes_mut()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recv_buf_is_aligned_for_nlmsghdr_and_sized_up() {
        let mut b = RecvBuf::new(13);
        assert_eq!(b.len(), 16);
        assert_eq!(b.bytes().as_ptr() as usize % std::mem::align_of::<libc::nlmsghdr>(), 0);
        assert_eq!(b.bytes().as_ptr() as usize % 8, 0);
        b.bytes_mut()[15] = 1;
        assert_eq!(b.bytes()[15], 1);
        assert_eq!(b.as_mut_ptr().cast_const(), b.bytes().as_ptr());
    }
}
