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
//! Messages are laid out in include/uapi/linux/netfilter/nfnetlink_queue.h and read by
//! net/netfilter/nfnetlink_queue.c; as in ctnetlink, netlink headers are host order and
//! attribute values big-endian.
//!
//! Design.md fact 9 still holds in spirit: bind and configure the queue completely before the
//! divert rule exists.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::mmsg::RecvBatch;
use super::socket::{send_all, setsockopt_int};
use crate::wire::netlink::{
    self, be_u32, finish, nlmsgerr, put_attr, Attrs, Message, Messages, NFGENMSG_LEN, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_REQUEST,
};

/// Packets (and error answers) read per `recvmmsg` at most.
pub const BATCH: usize = 64;
/// Bytes per receive slot: a queued packet is its headers (about 80 bytes of attributes) and
/// at most `copy_range` bytes of payload; an error answer is 36 bytes (`NETLINK_CAP_ACK`).
const SLOT: usize = 2048;


/// nfnetlink.h: `NFNL_SUBSYS_QUEUE`; a message type is `subsystem << 8 | operation`.
const NFNL_SUBSYS_QUEUE: u16 = 3;
// enum nfqnl_msg_types
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
// enum nfqnl_attr_type
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_PAYLOAD: u16 = 10;
// enum nfqnl_attr_config
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;

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

/// What to do with a queued packet (include/uapi/linux/netfilter.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Accept,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Drop => libc::NF_DROP as u32,
            Verdict::Accept => libc::NF_ACCEPT as u32,
        }
    }
}

/// One message read from the queue socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// A queued packet: its id (for the verdict) and its first `copy_range` bytes.
    Packet { id: u32, payload: &'a [u8] },
    /// A request of ours failed: its sequence number and the (positive) errno.
    Error { seq: u32, errno: i32 },
    /// A packet message without an id, or something else we did not ask for.
    Unexpected { ty: u16 },
}

/// Messages for the kernel, gathered for one `sendmsg`: ctnetlink requests (appended with
/// `conntrack::append_*`) and verdicts, in the order they must run.
#[derive(Debug, Default)]
pub struct Outbox {
    pub buf: Vec<u8>,
}

impl Outbox {
    pub fn with_capacity(n: usize) -> Outbox {
        Outbox { buf: Vec::with_capacity(n) }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// `NFQNL_MSG_VERDICT` for packet `id` of queue `queue`: no `NLM_F_ACK`, so only a failure
    /// is answered.
    pub fn verdict(&mut self, queue: u16, id: u32, v: Verdict) {
        let at = begin(&mut self.buf, NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue);
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&v.code().to_be_bytes());
        hdr[4..].copy_from_slice(&id.to_be_bytes());
        put_attr(&mut self.buf, NFQA_VERDICT_HDR, &hdr);
        finish(&mut self.buf, at);
    }
}

/// `nlmsghdr` + `nfgenmsg { AF_UNSPEC, NFNETLINK_V0, res_id = htons(queue) }`.
fn begin(buf: &mut Vec<u8>, op: u16, flags: u16, seq: u32, queue: u16) -> usize {
    netlink::begin(buf, NFNL_SUBSYS_QUEUE, op, flags, seq, libc::AF_UNSPEC as u8, queue)
}

/// Splits one datagram into its netlink messages and reads each (pure; never panics). A
/// message that does not fit the datagram ends it, reported as [`Msg::Unexpected`] with the
/// type its header claims (0 when not even that is there).
pub fn parse_datagram(data: &[u8], mut f: impl FnMut(Msg<'_>)) {
    let mut msgs = Messages::new(data);
    loop {
        let rest = msgs.rest();
        match msgs.next() {
            None => return,
            Some(Ok(m)) => f(parse_msg(&m)),
            Some(Err(_)) => f(Msg::Unexpected { ty: netlink::ne_u16(rest, 4).unwrap_or(0) }),
        }
    }
}

fn parse_msg<'a>(m: &Message<'a>) -> Msg<'a> {
    if m.ty == NLMSG_ERROR {
        // The header's seq is the request's (netlink_ack).
        return match nlmsgerr(m) {
            Ok(errno) => Msg::Error { seq: m.seq, errno },
            Err(_) => Msg::Unexpected { ty: m.ty },
        };
    }
    if m.ty != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
        return Msg::Unexpected { ty: m.ty };
    }
    let (mut id, mut payload) = (None, None);
    // An attribute that does not fit ends the walk; what came before it still counts.
    for (ty, value) in Attrs::new(m.payload.get(NFGENMSG_LEN..).unwrap_or(&[])).map_while(Result::ok) {
        match ty {
            // struct nfqnl_msg_packet_hdr { __be32 packet_id; __be16 hw_protocol; __u8 hook; }
            NFQA_PACKET_HDR => id = be_u32(value),
            NFQA_PAYLOAD => payload = Some(value),
            _ => {}
        }
    }
    match (id, payload) {
        // A packet without payload still needs its verdict, or the kernel holds it forever.
        (Some(id), payload) => Msg::Packet { id, payload: payload.unwrap_or(&[]) },
        (None, _) => Msg::Unexpected { ty: m.ty },
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

        // struct nfqnl_msg_config_cmd { __u8 command; __u8 _pad; __be16 pf; }
        q.configure(1, &[(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0])])
            .map_err(|source| QueueError::Bind { queue: num, source })?;
        // struct nfqnl_msg_config_params { __be32 copy_range; __u8 copy_mode; } (packed)
        let mut params = [0u8; 5];
        params[..4].copy_from_slice(&u32::from(cfg.copy_range).to_be_bytes());
        params[4] = NFQNL_COPY_PACKET;
        conf("copy range", q.configure(2, &[(NFQA_CFG_PARAMS, &params)]))?;
        conf("max length", q.configure(3, &[(NFQA_CFG_QUEUE_MAXLEN, &cfg.max_len.to_be_bytes())]))?;
        let flags = if cfg.fail_open { NFQA_CFG_F_FAIL_OPEN } else { 0 };
        let (flags, mask) = (flags.to_be_bytes(), NFQA_CFG_F_FAIL_OPEN.to_be_bytes());
        conf("fail-open", q.configure(4, &[(NFQA_CFG_FLAGS, &flags), (NFQA_CFG_MASK, &mask)]))?;
        Ok(q)
    }

    pub fn num(&self) -> u16 {
        self.num
    }

    fn setsockopt(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        setsockopt_int(self.fd.as_raw_fd(), level, name, value)
    }

    /// Sends one `NFQNL_MSG_CONFIG` for this queue with `attrs` and waits for its
    /// acknowledgement (no packets can arrive yet: the divert rule does not exist while the
    /// queue is being set up).
    fn configure(&mut self, seq: u32, attrs: &[(u16, &[u8])]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(64);
        let at = begin(&mut msg, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, self.num);
        for (ty, payload) in attrs {
            put_attr(&mut msg, *ty, payload);
        }
        finish(&mut msg, at);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_message_layout() {
        let mut out = Outbox::default();
        out.verdict(7, 0x01020304, Verdict::Accept);
        let b = &out.buf;
        assert_eq!(b.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), (3 << 8) | 1);
        assert_eq!(u16::from_ne_bytes(b[6..8].try_into().unwrap()), NLM_F_REQUEST);
        assert_eq!(&b[16..20], &[0, 0, 0, 7]);
        assert_eq!(u16::from_ne_bytes(b[20..22].try_into().unwrap()), 12);
        assert_eq!(u16::from_ne_bytes(b[22..24].try_into().unwrap()), NFQA_VERDICT_HDR);
        assert_eq!(&b[24..32], &[0, 0, 0, 1, 1, 2, 3, 4]);
        // Appending keeps earlier messages intact.
        out.verdict(7, 9, Verdict::Drop);
        assert_eq!(out.buf.len(), 64);
        assert_eq!(&out.buf[56..64], &[0, 0, 0, 0, 0, 0, 0, 9]);
    }

    fn packet_msg(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let at = begin(&mut b, NFQNL_MSG_PACKET, 0, 0, 0);
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[8, 0, 0]);
        put_attr(&mut b, NFQA_PACKET_HDR, &hdr);
        put_attr(&mut b, 5, &[0, 0, 0, 3]); // NFQA_IFINDEX_INDEV, ignored
        put_attr(&mut b, NFQA_PAYLOAD, payload);
        finish(&mut b, at);
        b
    }

    #[test]
    fn parses_packets_and_errors() {
        let mut d = packet_msg(42, &[0x45, 0, 0, 40, 1]);
        // An error answer: nlmsghdr(type ERROR, seq 77) + nlmsgerr { -17, nlmsghdr }.
        let mut e = Vec::new();
        e.extend_from_slice(&36u32.to_ne_bytes());
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        e.extend_from_slice(&0u16.to_ne_bytes());
        e.extend_from_slice(&77u32.to_ne_bytes());
        e.extend_from_slice(&0u32.to_ne_bytes());
        e.extend_from_slice(&(-17i32).to_ne_bytes());
        e.extend_from_slice(&[0; 16]);
        d.extend_from_slice(&e);
        let mut got = Vec::new();
        parse_datagram(&d, |m| {
            got.push(match m {
                Msg::Packet { id, payload } => format!("p{id}:{payload:?}"),
                Msg::Error { seq, errno } => format!("e{seq}:{errno}"),
                Msg::Unexpected { ty } => format!("u{ty}"),
            })
        });
        assert_eq!(got, ["p42:[69, 0, 0, 40, 1]", "e77:17"]);
    }

    #[test]
    fn never_panics_on_garbage() {
        let d = packet_msg(1, &[1, 2, 3]);
        for cut in 0..d.len() {
            parse_datagram(&d[..cut], |_| {});
        }
        let mut bad = d.clone();
        bad[20..22].copy_from_slice(&200u16.to_ne_bytes()); // attribute longer than the message
        let mut n = 0;
        parse_datagram(&bad, |m| {
            assert!(matches!(m, Msg::Unexpected { .. }));
            n += 1;
        });
        assert_eq!(n, 1);
    }

    fn error_msg(seq: u32, error: i32) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&36u32.to_ne_bytes()); // nlmsg_len: header + nlmsgerr
        e.extend_from_slice(&NLMSG_ERROR.to_ne_bytes()); // nlmsg_type
        e.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
        e.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq: the failed request's
        e.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        e.extend_from_slice(&error.to_ne_bytes()); // error: negative errno
        e.extend_from_slice(&[0; 16]); // the request's header (NETLINK_CAP_ACK: no payload)
        e
    }

    /// The case conntrack's test of the same name was written for: this parser's plain
    /// `-error` overflowed on it (a panic in a debug build) until it used `wire::netlink`.
    #[test]
    fn nlmsgerr_with_i32_min_is_an_errno_not_a_panic() {
        let mut got = Vec::new();
        parse_datagram(&error_msg(5, i32::MIN), |m| got.push(format!("{m:?}")));
        assert_eq!(got, [format!("Error {{ seq: 5, errno: {} }}", i32::MAX)]);
    }

    /// An error answer cut before its error code is not an acknowledgement (it read as errno
    /// 0, an ack, before).
    #[test]
    fn a_cut_error_answer_is_not_an_ack() {
        let mut e = error_msg(5, -libc::EPERM);
        e.truncate(18);
        e[..4].copy_from_slice(&18u32.to_ne_bytes());
        let mut got = Vec::new();
        parse_datagram(&e, |m| got.push(format!("{m:?}")));
        assert_eq!(got, ["Unexpected { ty: 2 }"]);
    }

    /// A packet the kernel sent without payload (copy range 0) still gets its verdict.
    #[test]
    fn a_packet_without_payload_is_still_a_packet() {
        let mut b = Vec::new();
        let at = begin(&mut b, NFQNL_MSG_PACKET, 0, 0, 0);
        put_attr(&mut b, NFQA_PACKET_HDR, &[0, 0, 0, 9, 8, 0, 0]);
        finish(&mut b, at);
        let mut got = Vec::new();
        parse_datagram(&b, |m| got.push(format!("{m:?}")));
        assert_eq!(got, ["Packet { id: 9, payload: [] }"]);
    }
}
