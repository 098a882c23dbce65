//! Sending an nftnl batch in one `sendmsg` and checking the acknowledgement of every message,
//! and the dumps the read-back makes, on one nfnetlink socket.

use std::cell::RefCell;
use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use nftnl::{Batch, FinalizedBatch, MsgType};
use nftnl_sys::libc;

use super::{NftError, Op};
use crate::kernel::socket::{self, recv_mnl, setsockopt, setsockopt_int, RecvBuf};
use crate::wire::netlink::{self, nlmsgerr, Message, Messages, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP_INTR};

/// An nftnl batch plus a description of each message, to name the one the kernel refuses.
pub(super) struct LabelledBatch {
    batch: Batch,
    labels: Vec<String>,
}

impl LabelledBatch {
    pub(super) fn new() -> LabelledBatch {
        LabelledBatch { batch: Batch::new(), labels: Vec::new() }
    }

    pub(super) fn add<T: nftnl::NlMsg>(&mut self, msg: &T, t: MsgType, label: impl Into<String>) {
        self.batch.add(msg, t);
        self.labels.push(label.into());
    }

    /// Send the batch in one `sendmsg` and check every acknowledgement.
    pub(super) fn send(self, op: Op) -> Result<(), NftError> {
        let LabelledBatch { batch, labels } = self;
        let batch = batch.finalize();
        let seqs = batch.sequence_numbers();
        // nftnl asks for acks of the batch begin/end messages too on kernels that send them
        // (>= 6.10); then the range holds two more sequence numbers than we added messages.
        let framed = seqs.len() == labels.len() + 2;
        let mut names: Vec<String> = Vec::with_capacity(labels.len() + 2);
        if framed {
            names.push("batch begin".into());
            names.extend(labels);
            names.push("batch end".into());
        } else {
            names.extend(labels);
        }
        NlSocket::with(op, |sock| {
            sock.send_batch(op, &batch)?;
            let acks = sock.drain_acks(op)?;
            check_acks(op, seqs.start, &names, framed, &acks)
        })
    }
}

/// Match acknowledgements `(seq, errno)` to the messages sent with sequence numbers
/// `first..first + names.len()`; `framed` if the first and last of them are the batch begin
/// and end messages.
///
/// The kernel acks every message it processed, failures included, and acks the batch end only
/// if the batch was committed (net/netfilter/nfnetlink.c `nfnetlink_rcv_batch`). A refusal of
/// the batch as a whole (EPERM, a failed commit) is an error ack for the batch begin message,
/// or for sequence number 0 on kernels that do not ack batch messages.
fn check_acks(
    op: Op,
    first: u32,
    names: &[String],
    framed: bool,
    acks: &[(u32, i32)],
) -> Result<(), NftError> {
    let index = |seq: u32| seq.checked_sub(first).map(|i| i as usize).filter(|&i| i < names.len());
    let mut acked = vec![false; names.len()];
    // The first refused message in batch order: later failures are often consequences.
    let mut refused: Option<(usize, i32)> = None;
    let mut batch_error: Option<i32> = None;
    for &(seq, errno) in acks {
        match index(seq) {
            Some(i) if errno == 0 => acked[i] = true,
            // An error for the begin message is about the whole batch.
            Some(0) if framed => batch_error = Some(errno),
            Some(i) => {
                acked[i] = true;
                if refused.is_none_or(|(j, _)| i < j) {
                    refused = Some((i, errno));
                }
            }
            None if errno != 0 => batch_error = Some(errno),
            None => log::debug!("{op}: ignoring ack for unknown sequence number {seq}"),
        }
    }
    if let Some((i, errno)) = refused {
        return Err(kernel_error(op, names[i].clone(), errno));
    }
    if let Some(errno) = batch_error {
        return Err(kernel_error(op, "the batch".into(), errno));
    }
    match acked.iter().position(|a| !a) {
        Some(i) => Err(NftError::MissingAck { op, what: names[i].clone() }),
        None => Ok(()),
    }
}

fn kernel_error(op: Op, what: String, errno: i32) -> NftError {
    if errno == libc::EPERM && cap_net_admin() != Some(true) {
        return NftError::PermissionDenied { op };
    }
    NftError::Rejected { op, what, source: io::Error::from_raw_os_error(errno) }
}

/// Whether this thread holds CAP_NET_ADMIN (bit 12 of CapEff in /proc/thread-self/status,
/// proc(5)); `None` if that cannot be read. EPERM has other causes too, e.g. a table owned by
/// another process (NFT_TABLE_F_OWNER), so only blame the capability when it is missing.
fn cap_net_admin() -> Option<bool> {
    const CAP_NET_ADMIN: u32 = 12;
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN) != 0)
}

/// A receive buffer large enough for any netlink message (nftnl's `nft_nlmsg_maxsize`).
fn recv_buf() -> RecvBuf {
    RecvBuf::new(nftnl::nft_nlmsg_maxsize() as usize)
}

/// One nfnetlink socket, opened in the calling thread's network namespace.
pub(super) struct NlSocket {
    sock: mnl::Socket,
    /// The network namespace it belongs to (device and inode of /proc/thread-self/ns/net).
    netns: Option<(u64, u64)>,
}

thread_local! {
    /// The thread's nfnetlink socket, kept open between calls. Closing one shortly after a
    /// transaction that deleted something waits until the kernel has freed what was deleted
    /// (`nft_rcv_nl_event` flushes nf_tables' destroy work, which waits for an RCU grace
    /// period): several milliseconds, tens of them on a busy machine, measured with
    /// `strace -T`. An edit that deletes a service would pay that every time.
    static SOCKET: RefCell<Option<NlSocket>> = const { RefCell::new(None) };
}

/// The calling thread's network namespace, to tell whether a kept socket belongs to it.
fn current_netns() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| (m.dev(), m.ino()))
}

impl NlSocket {
    fn open(op: Op) -> Result<NlSocket, NftError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(|source| NftError::Socket { op, source })?;
        Ok(NlSocket { sock, netns: current_netns() })
    }

    /// Runs `f` on the calling thread's socket, opened on first use and kept while its
    /// network namespace is the thread's. A socket `f` failed on is closed, so that no
    /// answer left unread on it can be taken for the next call's.
    pub(super) fn with<T>(op: Op, f: impl FnOnce(&NlSocket) -> Result<T, NftError>) -> Result<T, NftError> {
        let kept = SOCKET.with(|s| s.borrow_mut().take());
        let netns = current_netns();
        let sock = match kept {
            Some(sock) if netns.is_some() && sock.netns == netns => sock,
            _ => NlSocket::open(op)?,
        };
        let res = f(&sock);
        if res.is_ok() {
            SOCKET.with(|s| *s.borrow_mut() = Some(sock));
        }
        res
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Send every page of the batch in ONE sendmsg: the kernel handles a batch only within a
    /// single skb (nfnetlink_rcv_batch), and nftnl splits large batches into pages.
    fn send_batch(&self, op: Op, batch: &FinalizedBatch) -> Result<(), NftError> {
        let mut iov: Vec<libc::iovec> = batch
            .iter()
            .map(|page| libc::iovec { iov_base: page.as_ptr() as *mut c_void, iov_len: page.len() })
            .collect();
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        // Netlink refuses a message larger than the send buffer (EMSGSIZE), and acks that do
        // not fit the receive buffer are lost (ENOBUFS); grow both, as nft does. *FORCE needs
        // CAP_NET_ADMIN, which the batch needs anyway; without it the defaults remain and the
        // kernel's answer says why.
        // The kernel's usual default for both (net.core.wmem_default, rmem_default).
        const DEFAULT_BUF: usize = 212_992;
        // Messages are at least 64 bytes; an ack costs well under 2 KiB of receive buffer.
        let n_msgs = total / 64 + 16;
        for (opt, size) in [(libc::SO_SNDBUFFORCE, total + 65536), (libc::SO_RCVBUFFORCE, n_msgs * 2048)] {
            if size > DEFAULT_BUF {
                let v = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
                if let Err(e) = setsockopt_int(self.fd(), libc::SOL_SOCKET, opt, v) {
                    log::debug!("{op}: cannot grow socket buffer to {size}: {e}");
                }
            }
        }
        // SAFETY: all-zero is a valid sockaddr_nl (pid 0 = the kernel) and msghdr.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast::<c_void>();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len() as _;
        loop {
            // SAFETY: `msg` points to `addr` and to iovecs over the batch's pages, all alive.
            let n = unsafe { libc::sendmsg(self.fd(), &msg, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NftError::Socket { op, source: e });
            }
            if n as usize != total {
                return Err(NftError::Protocol { op, detail: format!("sent {n} of {total} bytes") });
            }
            return Ok(());
        }
    }

    /// Read every acknowledgement the kernel queued for us, as `(seq, errno)`.
    ///
    /// nfnetlink processes a batch inside our `sendmsg` and queues all its acks before that
    /// call returns (netlink_unicast_kernel calls `nfnetlink_rcv` synchronously, module
    /// autoloading included), so a non-blocking read finds them all. Blocking instead would
    /// wait forever for the batch-end ack of a refused batch, which is never sent.
    fn drain_acks(&self, op: Op) -> Result<Vec<(u32, i32)>, NftError> {
        let mut buf = recv_buf();
        let mut acks = Vec::new();
        loop {
            let bytes = buf.bytes_mut();
            // SAFETY: `bytes` is a writable buffer of the length given.
            let n = unsafe {
                libc::recv(self.fd(), bytes.as_mut_ptr().cast::<c_void>(), bytes.len(), libc::MSG_DONTWAIT)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(acks),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        return Err(NftError::Protocol {
                            op,
                            detail: "acknowledgements were lost (receive buffer full)".into(),
                        })
                    }
                    _ => return Err(NftError::Socket { op, source: e }),
                }
            }
            acks.extend(parse_acks(&bytes[..n as usize]).map_err(|m| NftError::Protocol { op, detail: m.to_string() })?);
        }
    }

    /// Send `requests`, `count` netlink requests that each ask for an acknowledgement
    /// (NLM_F_ACK), in one `send`; hand every answer other than an acknowledgement to `each`,
    /// and return the `(seq, errno)` of each acknowledgement (errno 0) or refusal, once every
    /// request has one. The kernel runs the requests one after another
    /// (`netlink_rcv_skb`); the caller keeps their answers within the receive buffer.
    pub(super) fn requests(
        &self,
        op: Op,
        requests: &[u8],
        count: usize,
        mut each: impl FnMut(&Message<'_>) -> Result<(), NftError>,
    ) -> Result<Vec<(u32, i32)>, NftError> {
        // The answers come during our send; the timeout guards against a request that is
        // never answered.
        let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
        if let Err(e) = setsockopt(self.fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv) {
            log::debug!("{op}: cannot set a receive timeout: {e}");
        }
        socket::send_all(self.fd(), requests).map_err(|source| NftError::Socket { op, source })?;
        let mut buf = recv_buf();
        let mut acks = Vec::with_capacity(count);
        let malformed = |m: netlink::Malformed| NftError::Protocol { op, detail: m.to_string() };
        while acks.len() < count {
            let n = match recv_mnl(&self.sock, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NftError::MissingAck { op, what: format!("{} of {count} requests", count - acks.len()) })
                }
                Err(source) => return Err(NftError::Socket { op, source }),
            };
            for msg in Messages::new(buf.bytes().get(..n).unwrap_or(&[])) {
                let msg = msg.map_err(malformed)?;
                match msg.ty {
                    NLMSG_ERROR => acks.push((msg.seq, nlmsgerr(&msg).map_err(malformed)?)),
                    _ => each(&msg)?,
                }
            }
        }
        Ok(acks)
    }

    /// Send one dump request and hand every reply message to `each` until NLMSG_DONE.
    /// Returns `Ok(false)` if the kernel flagged the dump as interrupted (NLM_F_DUMP_INTR:
    /// the ruleset changed meanwhile), so the caller can retry.
    pub(super) fn dump(
        &self,
        op: Op,
        request: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), NftError>,
    ) -> Result<bool, NftError> {
        // A dump is answered as we read (netlink_recvmsg runs the dump callback), so these
        // reads block; the timeout guards against a kernel that never sends NLMSG_DONE.
        let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
        if let Err(e) = setsockopt(self.fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv) {
            log::debug!("{op}: cannot set a receive timeout: {e}");
        }
        socket::send_all(self.fd(), request).map_err(|source| NftError::Socket { op, source })?;
        let mut buf = recv_buf();
        let mut intact = true;
        let malformed = |m: netlink::Malformed| NftError::Protocol { op, detail: m.to_string() };
        loop {
            let n = match recv_mnl(&self.sock, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NftError::MissingAck { op, what: "the end of the dump".into() })
                }
                Err(source) => return Err(NftError::Socket { op, source }),
            };
            for msg in Messages::new(buf.bytes().get(..n).unwrap_or(&[])) {
                let msg = msg.map_err(malformed)?;
                if msg.flags & NLM_F_DUMP_INTR != 0 {
                    intact = false;
                }
                match msg.ty {
                    NLMSG_DONE => return Ok(intact),
                    NLMSG_ERROR => match nlmsgerr(&msg).map_err(malformed)? {
                        0 => {}
                        errno => return Err(kernel_error(op, "the dump request".into(), errno)),
                    },
                    _ => each(msg.raw)?,
                }
            }
        }
    }
}

/// The acknowledgements in one datagram, as `(seq, errno)` with errno 0 for an ack; messages
/// of other types are skipped.
fn parse_acks(datagram: &[u8]) -> Result<Vec<(u32, i32)>, netlink::Malformed> {
    let mut acks = Vec::new();
    for m in Messages::new(datagram) {
        let m: Message<'_> = m?;
        if m.ty == NLMSG_ERROR {
            acks.push((m.seq, nlmsgerr(&m)?));
        }
    }
    Ok(acks)
}


#[cfg(test)]
mod tests {
    use super::*;

    fn acks_ok(names: &[String], first: u32) -> Vec<(u32, i32)> {
        (0..names.len() as u32).map(|i| (first + i, 0)).collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_message_must_be_acked() {
        let n = names(&["batch begin", "add table ip nfvs", "rule 1 of chain divert", "batch end"]);
        assert!(check_acks(Op::Install, 5, &n, true, &acks_ok(&n, 5)).is_ok());
        let mut acks = acks_ok(&n, 5);
        acks.remove(3);
        let err = check_acks(Op::Install, 5, &n, true, &acks).unwrap_err();
        assert!(matches!(err, NftError::MissingAck { ref what, .. } if what == "batch end"), "{err}");
    }

    /// A refused rule: the kernel acks the rest but not the batch end, and we name the rule.
    #[test]
    fn refusal_names_the_message() {
        let n = names(&["batch begin", "add table ip nfvs", "rule 1 of chain divert", "batch end"]);
        let acks = vec![(1, 0), (2, 0), (3, libc::ENOENT)];
        let err = check_acks(Op::Install, 1, &n, true, &acks).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOENT));
        assert_eq!(
            err.to_string(),
            "install table ip nfvs: the kernel refused rule 1 of chain divert (nothing was changed)"
        );
    }

    /// Without CAP_NET_ADMIN the batch begin message is refused with EPERM. This test runs
    /// as root (CAP_NET_ADMIN held), so EPERM stays a plain refusal naming the batch.
    #[test]
    fn batch_level_errors() {
        let n = names(&["batch begin", "delete table ip nfvs", "batch end"]);
        let err = check_acks(Op::Delete, 1, &n, true, &[(1, libc::EBUSY)]).unwrap_err();
        assert!(matches!(err, NftError::Rejected { ref what, .. } if what == "the batch"), "{err}");
        let n = names(&["delete table ip nfvs"]);
        let err = check_acks(Op::Delete, 7, &n, false, &[(0, libc::EBUSY)]).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EBUSY));
    }

    /// NLMSG_ERROR messages as the kernel sends them: header, then error and the request's
    /// header.
    fn error_msgs(acks: &[(u32, i32)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for &(seq, err) in acks {
            buf.extend_from_slice(&36u32.to_ne_bytes()); // nlmsg_len
            buf.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes()); // nlmsg_type
            buf.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
            buf.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq: the request's
            buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
            buf.extend_from_slice(&err.to_ne_bytes()); // error: negative errno, 0 = ack
            buf.extend_from_slice(&[0; 16]); // the request's header
        }
        buf
    }

    #[test]
    fn split_and_parse_acks() {
        // The second one refuses seq 9 with -ENOENT.
        let buf = error_msgs(&[(8, 0), (9, -libc::ENOENT)]);
        assert_eq!(parse_acks(&buf), Ok(vec![(8, 0), (9, libc::ENOENT)]));
        // Truncated and lying lengths are errors, never panics.
        assert!(parse_acks(&buf[..10]).is_err());
        let mut bad = buf.clone();
        bad[..4].copy_from_slice(&4000u32.to_ne_bytes());
        assert!(parse_acks(&bad).is_err());
        assert!(parse_acks(&buf[..18]).is_err());
        // A message cut after its header, before the error code.
        let mut cut = buf[..18].to_vec();
        cut[..4].copy_from_slice(&18u32.to_ne_bytes());
        assert!(parse_acks(&cut).is_err());
    }

    /// The case conntrack's test of the same name was written for (`-error` overflows).
    #[test]
    fn nlmsgerr_with_i32_min_is_an_errno_not_a_panic() {
        assert_eq!(parse_acks(&error_msgs(&[(7, i32::MIN)])), Ok(vec![(7, i32::MAX)]));
    }

}
