//! NFQUEUE on a NETLINK_NETFILTER socket of our own, shared with ctnetlink requests.
//!
//! Why not the `nfq` crate (design.md fact 9): it reads one packet per `recv`, sends one
//! verdict per `sendto`, and hides its socket. The per-SYN path here is instead
//!
//! 1. one `recvmmsg` for every packet (and error answer) that is waiting, up to [`BATCH`];
//! 2. one `sendmsg` carrying, for each packet, its ctnetlink requests (delete of a finished
//!    old entry, create of the DNAT entry) *followed by* its verdict.
//!
//! Both work because queue and ctnetlink are subsystems of the same netlink family:
//! `nfnetlink_rcv` hands a buffer that does not start with a batch header to
//! `netlink_rcv_skb`, which runs its messages one after another, each to its subsystem
//! (net/netfilter/nfnetlink.c). So the entry exists before the verdict reinjects the SYN, in
//! one system call, without waiting for an answer: the requests carry no `NLM_F_ACK`, and
//! the kernel answers only a failure (`netlink_rcv_skb` acks on error or on `NLM_F_ACK`).
//! A failure arrives on this socket, among the next packets, as an [`Msg::Error`] naming
//! the request's sequence number. The verdict must come from the socket bound to the queue
//! (`nfqnl_recv_verdict` checks the sender's port id), which is why the ctnetlink requests
//! share it.
//!
//! The messages (queued packets, verdicts, configuration) are built and read by
//! [`crate::wire::nfqueue`].
//!
//! Design.md fact 9 still holds in spirit: bind and configure the queue completely before the
//! divert rule exists.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::mmsg::RecvBatch;
use super::socket::{send_all, setsockopt_int};
use crate::wire::nfqueue::{append_config, Config};
/// The codec, where the daemon has always found it (its home is [`crate::wire::nfqueue`]).
use crate::wire::nfqueue::{parse_datagram, Msg, Outbox};

/// Packets (and error answers) read per `recvmmsg` at most.
pub const BATCH: usize = 64;
/// Bytes per receive slot: a queued packet is its headers (about 80 bytes of attributes) and
/// at most `copy_range` bytes of payload; an error answer is 36 bytes (`NETLINK_CAP_ACK`).
const SLOT: usize = 2048;

/// An NFQUEUE failure, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("open NFQUEUE netlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("bind NFQUEUE {queue}: {source} (is another program bound to queue {queue}? choose another with --queue)")]
    Bind { queue: u16, source: io::Error },
    #[error("configure NFQUEUE {queue} ({what}): {source}")]
    Configure { queue: u16, what: &'static str, source: io::Error },
    #[error("receive from NFQUEUE: {0}")]
    Recv(#[source] io::Error),
    #[error("send verdicts and conntrack requests to NFQUEUE {queue}: {source}")]
    Send { queue: u16, source: io::Error },
}

/// How a queue is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    pub num: u16,
    /// Bytes of each packet copied to us: enough for the IPv4 and TCP headers with options.
    pub copy_range: u16,
    /// Packets the kernel holds for us before it drops (or, fail-open, accepts) new ones.
    pub max_len: u32,
    /// NFQA_CFG_F_FAIL_OPEN: accept (unbalanced) instead of dropping when the queue is full.
    pub fail_open: bool,
    /// Receive buffer (SO_RCVBUFFORCE): room for a burst of `max_len` queued packets. When it
    /// is full the kernel drops packets it cannot deliver (counted in
    /// /proc/net/netfilter/nfnetlink_queue as "user dropped").
    pub rcvbuf: usize,
}

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        // A queued SYN takes about 1 KiB of receive buffer (skb truesize): 4096 of them 4 MiB.
        QueueConfig { num: 0, copy_range: 128, max_len: 4096, fail_open: false, rcvbuf: 4 << 20 }
    }
}

/// A bound, configured queue, and the socket its verdicts and ctnetlink requests go out on.
pub struct Queue {
    fd: OwnedFd,
    num: u16,
    rx: RecvBatch,
}

impl Queue {
    pub fn open(cfg: &QueueConfig) -> Result<Queue, QueueError> {
        let num = cfg.num;
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
        if raw < 0 {
            return Err(QueueError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut q = Queue {
            fd,
            num,
            rx: RecvBatch::new(BATCH, SLOT),
        };
        let conf = |what, r: io::Result<()>| r.map_err(|source| QueueError::Configure { queue: num, what, source });
        // SAFETY (both): a zeroed sockaddr_nl with nl_family set is a valid address (pid 0 =
        // let the kernel choose the port id).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let r = unsafe { libc::bind(raw, (&addr as *const libc::sockaddr_nl).cast(), std::mem::size_of_val(&addr) as u32) };
        if r < 0 {
            return Err(QueueError::Open(io::Error::last_os_error()));
        }
        // The kernel drops what it cannot deliver; we count that from /proc instead of
        // taking ENOBUFS on every read (as the nfq crate did).
        conf("NETLINK_NO_ENOBUFS", q.setsockopt(libc::SOL_NETLINK, libc::NETLINK_NO_ENOBUFS, 1))?;
        // Error answers without a copy of the failed request: 36 bytes each.
        conf("NETLINK_CAP_ACK", q.setsockopt(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1))?;
        let rcvbuf = i32::try_from(cfg.rcvbuf).unwrap_or(i32::MAX);
        if q.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf).is_err() {
            // Without CAP_NET_ADMIN only up to net.core.rmem_max; good enough to run.
            conf("SO_RCVBUF", q.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf))?;
        }

        q.configure(1, Config::Bind).map_err(|source| QueueError::Bind { queue: num, source })?;
        conf("copy range", q.configure(2, Config::CopyPacket { range: u32::from(cfg.copy_range) }))?;
        conf("max length", q.configure(3, Config::MaxLen(cfg.max_len)))?;
        conf("fail-open", q.configure(4, Config::FailOpen(cfg.fail_open)))?;
        Ok(q)
    }

    pub fn num(&self) -> u16 {
        self.num
    }

    fn setsockopt(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        setsockopt_int(self.fd.as_raw_fd(), level, name, value)
    }

    /// Sends one `NFQNL_MSG_CONFIG` for this queue and waits for its acknowledgement (no
    /// packets can arrive yet: the divert rule does not exist while the queue is being set up).
    fn configure(&mut self, seq: u32, cfg: Config) -> io::Result<()> {
        let mut msg = Vec::with_capacity(64);
        append_config(&mut msg, seq, self.num, cfg);
        self.send(&msg)?;
        loop {
            self.recv(false)?;
            let mut answer = None;
            for data in self.datagrams() {
                parse_datagram(data, |m| {
                    if let Msg::Error { seq: s, errno } = m {
                        if s == seq {
                            answer = Some(errno);
                        }
                    }
                });
            }
            match answer {
                Some(0) => return Ok(()),
                Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                None => continue,
            }
        }
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        send_all(self.fd.as_raw_fd(), buf)
    }

    /// Sends everything in `out` in one `sendmsg`, then clears it. The kernel runs the
    /// messages in order before this returns (each verdict reinjects its packet on the way).
    pub fn flush(&mut self, out: &mut Outbox) -> Result<(), QueueError> {
        if out.buf.is_empty() {
            return Ok(());
        }
        let r = self.send(&out.buf).map_err(|source| QueueError::Send { queue: self.num, source });
        out.buf.clear();
        r
    }

    /// Waits for at least one datagram (unless `nonblocking`), then takes every other one
    /// already waiting, up to [`BATCH`], in one `recvmmsg`. Read them with
    /// [`Queue::datagrams`]. Returns how many were read (0: none waiting, nonblocking).
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<usize> {
        self.rx.recv(self.fd.as_raw_fd(), nonblocking)
    }

    /// The datagrams the last [`Queue::recv`] read; split each with [`parse_datagram`].
    pub fn datagrams(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.rx.datagrams()
    }
}
