//! ctnetlink over `mnl`: the conntrack operations nfvs needs, on messages built and read by
//! [`crate::wire::ctnetlink`].
//!
//! On the per-SYN path the daemon appends [`append_create`] (the entry that DNATs a new
//! connection to the chosen real server, design.md facts 1 and 5), after an [`append_delete`]
//! of a reused source port's finished entry (fact 6), to the batch its queue socket sends with
//! the verdicts (src/kernel/nfqueue.rs). [`Conntrack`] makes the same requests one at a time
//! and waits for the answer: [`Conntrack::get`] tells a retransmitted SYN from a quick reuse,
//! [`Conntrack::dump`] lists our own entries (by mark) to rebuild per-server counters after a
//! restart and to sample traffic, and [`CtEvents`] follows their state changes (fact 11).

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::unix::io::{AsRawFd, RawFd};

use super::socket::{self, recv_mnl, setsockopt_int, RecvBuf};
use crate::model::{CtEntry, CtEvent, CtEventKind, CtMapping, Protocol, Tuple};
use crate::wire::ctnetlink::{
    build_create, build_delete, build_dump, build_dump_to, build_get, handle_datagram, parse_entry, parse_events,
    Answer, ParseError,
};
/// The per-SYN builders, where the daemon has always found them (their home is
/// [`crate::wire::ctnetlink`]).

/// Receive buffer size. The kernel sizes each dump skb to the reader's largest recv buffer so
/// far, capped at 32 KiB (net/netlink/af_netlink.c, `max_recvmsg_len`), which is also libmnl's
/// `MNL_SOCKET_DUMP_SIZE`: every datagram fits, and a dump takes few recv calls.
const RX_BUF_BYTES: usize = 32 * 1024;

/// Default receive buffer for the event socket. Each event costs about 1 KiB of buffer
/// (skb overhead included); this absorbs a burst of ~10k events while the daemon is busy.
/// Memory is only charged while events wait, so a generous cap costs nothing when idle.
pub const DEFAULT_EVENT_RCVBUF: usize = 16 << 20;

// ---------------------------------------------------------------------------------------------
// Public data.
// ---------------------------------------------------------------------------------------------

/// The ctnetlink operation that failed, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Get,
    Delete,
    Dump,
    Events,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Create => "create (IPCTNL_MSG_CT_NEW)",
            Op::Get => "get (IPCTNL_MSG_CT_GET)",
            Op::Delete => "delete (IPCTNL_MSG_CT_DELETE)",
            Op::Dump => "dump (IPCTNL_MSG_CT_GET, NLM_F_DUMP)",
            Op::Events => "event subscription",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("opening a NETLINK_NETFILTER socket")]
    Open(#[source] io::Error),
    #[error("configuring the ctnetlink socket: {what}")]
    Configure {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sending the ctnetlink {op} request")]
    Send {
        op: Op,
        #[source]
        source: io::Error,
    },
    #[error("receiving the ctnetlink {op} answer")]
    Recv {
        op: Op,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused ctnetlink {op}")]
    Kernel {
        op: Op,
        #[source]
        source: io::Error,
    },
    /// `create` with `NLM_F_EXCL` found an entry with the same tuple (EEXIST): design.md fact 6.
    #[error("a conntrack entry with this tuple already exists")]
    Exists,
    /// The event socket's receive buffer overflowed (ENOBUFS): some events are lost, and
    /// counters kept from events must be rebuilt (e.g. from a dump). Until the queued events
    /// are all read, the kernel keeps dropping new ones (see [`CtEvents::recv`]).
    #[error("conntrack events were lost: the event socket's receive buffer overflowed (ENOBUFS)")]
    EventsLost,
    /// What the kernel sent is not an answer nfvs can read (a malformed message, or an entry
    /// nfvs cannot have made).
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl CtEventKind {
    /// The nfnetlink multicast group that carries this kind (`enum nfnetlink_groups`).
    fn group(self) -> u32 {
        (match self {
            CtEventKind::New => libc::NFNLGRP_CONNTRACK_NEW,
            CtEventKind::Update => libc::NFNLGRP_CONNTRACK_UPDATE,
            CtEventKind::Destroy => libc::NFNLGRP_CONNTRACK_DESTROY,
        }) as u32
    }
}

// ---------------------------------------------------------------------------------------------
// Sockets.
// ---------------------------------------------------------------------------------------------

fn send_all(sock: &mnl::Socket, msg: &[u8], op: Op) -> Result<(), CtError> {
    socket::send_all(sock.as_raw_fd(), msg).map_err(|source| CtError::Send { op, source })
}

/// One NETLINK_NETFILTER socket for ctnetlink requests, with buffers reused across calls:
/// after the first call, `create`, `get` and `delete` allocate nothing, and each is one send
/// and one recv.
pub struct Conntrack {
    sock: mnl::Socket,
    seq: u32,
    tx: Vec<u8>,
    rx: RecvBuf,
}

impl Conntrack {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Conntrack, CtError> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter).map_err(CtError::Open)?;
        Ok(Conntrack { sock, seq: 0, tx: Vec::with_capacity(256), rx: RecvBuf::new(RX_BUF_BYTES) })
    }

    /// Creates the DNAT entry for a new connection (see [`build_create`]).
    ///
    /// An entry with the same original tuple answers [`CtError::Exists`]; so does one whose
    /// tuples clash with our reply tuple after NAT (`nf_conntrack_hash_check_insert` checks
    /// both directions), in which case [`Conntrack::get`] of our original tuple finds nothing.
    pub fn create(&mut self, m: &CtMapping) -> Result<(), CtError> {
        let seq = self.next_seq();
        build_create(&mut self.tx, seq, m);
        match self.transact(Op::Create, seq, false, &mut |_| Ok(()))? {
            Answer::Done => Ok(()),
            Answer::Errno(libc::EEXIST) => Err(CtError::Exists),
            Answer::Errno(e) => Err(kernel_error(Op::Create, e)),
        }
    }

    /// Looks an entry up by its original tuple; `Ok(None)` if there is none (ENOENT).
    pub fn get(&mut self, orig: &Tuple) -> Result<Option<CtEntry>, CtError> {
        let seq = self.next_seq();
        build_get(&mut self.tx, seq, orig);
        let mut found: Option<Result<CtEntry, ParseError>> = None;
        let answer = self.transact(Op::Get, seq, true, &mut |msg| {
            found = Some(parse_entry(msg));
            Ok(())
        })?;
        match answer {
            Answer::Done => match found {
                Some(entry) => Ok(Some(entry?)),
                None => Err(ParseError::Malformed("GET answered without an entry").into()),
            },
            Answer::Errno(libc::ENOENT) => Ok(None),
            Answer::Errno(e) => Err(kernel_error(Op::Get, e)),
        }
    }

    /// Deletes an entry by its original tuple; `Ok(false)` if there was none (ENOENT).
    pub fn delete(&mut self, orig: &Tuple) -> Result<bool, CtError> {
        let seq = self.next_seq();
        build_delete(&mut self.tx, seq, orig);
        match self.transact(Op::Delete, seq, false, &mut |_| Ok(()))? {
            Answer::Done => Ok(true),
            Answer::Errno(libc::ENOENT) => Ok(false),
            Answer::Errno(e) => Err(kernel_error(Op::Delete, e)),
        }
    }

    /// All IPv4 entries with `entry.mark & mask == mark & mask`, filtered by the kernel
    /// (see [`build_dump`]). Entries that fail to parse make the whole dump fail.
    pub fn dump(&mut self, mark: u32, mask: u32) -> Result<Vec<CtEntry>, CtError> {
        let seq = self.next_seq();
        build_dump(&mut self.tx, seq, mark, mask);
        self.dump_sent(seq)
    }

    /// Every entry whose original direction goes to `dst` (and `dport`, if given) over
    /// `proto` (filtered by the kernel: [`build_dump_to`]).
    pub fn dump_to(&mut self, proto: Protocol, dst: IpAddr, dport: Option<u16>) -> Result<Vec<CtEntry>, CtError> {
        let seq = self.next_seq();
        build_dump_to(&mut self.tx, seq, proto, dst, dport);
        self.dump_sent(seq)
    }

    /// Sends the dump request in `self.tx` and collects its entries.
    fn dump_sent(&mut self, seq: u32) -> Result<Vec<CtEntry>, CtError> {
        let mut entries = Vec::new();
        let answer = self.transact(Op::Dump, seq, false, &mut |msg| match parse_entry(msg) {
            Ok(e) => {
                entries.push(e);
                Ok(())
            }
            // The request asks for one family; anything else is not ours to count.
            Err(ParseError::NotOurs(_)) => Ok(()),
            Err(e) => Err(e),
        })?;
        match answer {
            Answer::Done => Ok(entries),
            Answer::Errno(e) => Err(kernel_error(Op::Dump, e)),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `self.tx` and receives until the answer to `seq` is complete.
    fn transact(
        &mut self,
        op: Op,
        seq: u32,
        single: bool,
        on_entry: &mut dyn FnMut(&[u8]) -> Result<(), ParseError>,
    ) -> Result<Answer, CtError> {
        send_all(&self.sock, &self.tx, op)?;
        loop {
            let n = recv_mnl(&self.sock, &mut self.rx)
                .map_err(|source| CtError::Recv { op, source })?;
            let datagram = self.rx.bytes().get(..n).unwrap_or(&[]);
            if let Some(answer) = handle_datagram(datagram, seq, single, on_entry)? {
                return Ok(answer);
            }
        }
    }
}

fn kernel_error(op: Op, errno: i32) -> CtError {
    CtError::Kernel { op, source: io::Error::from_raw_os_error(errno) }
}

/// A NETLINK_NETFILTER socket subscribed to conntrack event groups (design.md fact 11). The
/// socket is blocking; poll [`CtEvents::as_raw_fd`] (or call [`CtEvents::set_nonblocking`])
/// to use it from an event loop.
pub struct CtEvents {
    sock: mnl::Socket,
    rx: RecvBuf,
    batch: super::mmsg::RecvBatch,
}

/// Events read per [`CtEvents::recv_many`] call at most, and the room for one: an event is a
/// few hundred bytes (tuples, status, timeout, protoinfo, mark, id; counters on DESTROY).
const EVENT_BATCH: usize = 64;
const EVENT_SLOT: usize = 2048;

impl CtEvents {
    /// Subscribes to the given kinds with a [`DEFAULT_EVENT_RCVBUF`] receive buffer.
    pub fn subscribe(kinds: &[CtEventKind]) -> Result<CtEvents, CtError> {
        CtEvents::subscribe_with_rcvbuf(kinds, DEFAULT_EVENT_RCVBUF)
    }

    /// Subscribes with a receive buffer of `rcvbuf` bytes: `SO_RCVBUFFORCE` (CAP_NET_ADMIN,
    /// which the daemon has) so `net.core.rmem_max` does not cap it, else `SO_RCVBUF`.
    pub fn subscribe_with_rcvbuf(
        kinds: &[CtEventKind],
        rcvbuf: usize,
    ) -> Result<CtEvents, CtError> {
        let sock = mnl::Socket::open(mnl::Bus::Netfilter).map_err(CtError::Open)?;
        let fd = sock.as_raw_fd();
        let size = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size)
                .map_err(|source| CtError::Configure { what: "SO_RCVBUF", source })?;
        }
        // bind(2)'s nl_groups is a bit mask in which bit (g - 1) stands for group g
        // (netlink_bind); the conntrack groups are 1..=3.
        let groups = kinds.iter().fold(0u32, |mask, k| mask | 1 << (k.group() - 1));
        sock.bind(groups, mnl::mnl_sys::MNL_SOCKET_AUTOPID).map_err(|source| {
            CtError::Configure { what: "binding to the conntrack event groups", source }
        })?;
        Ok(CtEvents { sock, rx: RecvBuf::new(RX_BUF_BYTES), batch: super::mmsg::RecvBatch::new(EVENT_BATCH, EVENT_SLOT) })
    }

    /// Waits for the next datagram (unless non-blocking) and appends its IPv4 events to `out`.
    /// Events of other families are skipped.
    ///
    /// [`CtError::EventsLost`] means the kernel dropped events because the buffer was full.
    /// The socket stays usable, but after an overrun the kernel drops every new event until
    /// the queue has been read empty (`NETLINK_S_CONGESTED`, cleared in `netlink_rcv_wake`,
    /// net/netlink/af_netlink.c): keep reading, then resynchronise with a dump.
    pub fn recv(&mut self, out: &mut Vec<CtEvent>) -> Result<(), CtError> {
        let n = match recv_mnl(&self.sock, &mut self.rx) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Err(CtError::EventsLost),
            Err(source) => return Err(CtError::Recv { op: Op::Events, source }),
        };
        Ok(parse_events(self.rx.bytes().get(..n).unwrap_or(&[]), out)?)
    }

    /// [`CtEvents::recv`] for every datagram already waiting, up to 64, in one `recvmmsg`:
    /// waits for the first unless `nonblocking`. Returns how many datagrams were read (0: none
    /// waiting). Errors as for [`CtEvents::recv`]; events read before a malformed one are kept.
    pub fn recv_many(&mut self, out: &mut Vec<CtEvent>, nonblocking: bool) -> Result<usize, CtError> {
        let n = match self.batch.recv(self.sock.as_raw_fd(), nonblocking) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Err(CtError::EventsLost),
            Err(source) => return Err(CtError::Recv { op: Op::Events, source }),
        };
        for data in self.batch.datagrams() {
            parse_events(data, out)?;
        }
        Ok(n)
    }

    /// Switches the socket between blocking and non-blocking (recv then fails with
    /// `Recv { source.kind() == WouldBlock }` when nothing is queued).
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), CtError> {
        let fd = self.sock.as_raw_fd();
        let configure = |source| CtError::Configure { what: "O_NONBLOCK", source };
        // SAFETY: fcntl on a descriptor we own, with integer arguments only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(configure(io::Error::last_os_error()));
        }
        let flags = if nonblocking { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(configure(io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// The socket to poll for events.
impl AsRawFd for CtEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
