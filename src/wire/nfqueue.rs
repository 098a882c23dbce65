//! nfnetlink_queue messages (include/uapi/linux/netfilter/nfnetlink_queue.h, read and written
//! by net/netfilter/nfnetlink_queue.c): the queued packets nfvs receives, the verdicts and
//! configuration it sends, and the error answers among them. The socket is
//! [`crate::kernel::nfqueue::Queue`], which says why it carries ctnetlink requests too.
//!
//! As in ctnetlink, netlink headers are host order and attribute values big-endian; the
//! queue number travels in the nfgenmsg `res_id`.

use super::netlink::{
    self, be_u32, finish, nlmsgerr, put_attr, Attrs, Message, Messages, NFGENMSG_LEN, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_REQUEST,
};

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
/// [`super::ctnetlink::append_create`] and [`super::ctnetlink::append_delete`]) and verdicts,
/// in the order they must run.
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

/// One `NFQNL_MSG_CONFIG` setting of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// `NFQA_CFG_CMD`, `struct nfqnl_msg_config_cmd { u8 command = BIND; u8 _pad; __be16 pf }`
    /// with pf 0, which BIND does not read (`nfqnl_recv_config`): bind this socket to the queue.
    Bind,
    /// `NFQA_CFG_PARAMS`, `struct nfqnl_msg_config_params { __be32 copy_range; u8 copy_mode }`
    /// (packed, 5 bytes): copy the first `range` bytes of each packet (NFQNL_COPY_PACKET).
    CopyPacket { range: u32 },
    /// `NFQA_CFG_QUEUE_MAXLEN`, `__be32`: packets the kernel holds before it drops (or, fail
    /// open, accepts) new ones.
    MaxLen(u32),
    /// `NFQA_CFG_FLAGS` and `NFQA_CFG_MASK`, `__be32` each: set or clear
    /// NFQA_CFG_F_FAIL_OPEN, leaving the other flags alone.
    FailOpen(bool),
}

/// Appends `NFQNL_MSG_CONFIG` for queue `queue` with `NLM_F_ACK` (setting a queue up waits
/// for each answer).
pub fn append_config(buf: &mut Vec<u8>, seq: u32, queue: u16, cfg: Config) {
    let at = begin(buf, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue);
    match cfg {
        Config::Bind => put_attr(buf, NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]),
        Config::CopyPacket { range } => {
            let mut params = [0u8; 5];
            params[..4].copy_from_slice(&range.to_be_bytes());
            params[4] = NFQNL_COPY_PACKET;
            put_attr(buf, NFQA_CFG_PARAMS, &params);
        }
        Config::MaxLen(n) => put_attr(buf, NFQA_CFG_QUEUE_MAXLEN, &n.to_be_bytes()),
        Config::FailOpen(on) => {
            let flags = if on { NFQA_CFG_F_FAIL_OPEN } else { 0 };
            put_attr(buf, NFQA_CFG_FLAGS, &flags.to_be_bytes());
            put_attr(buf, NFQA_CFG_MASK, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes());
        }
    }
    finish(buf, at);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{Protocol, Tuple};
    use crate::wire::testing::{mutated, nfq as cap, strace_buffers};


    /// The raw strace hex dump the annotated arrays were transcribed from.
    const STRACE_QUEUE: &str = include_str!("../../tests/fixtures/nfq/queue.strace");

    #[test]
    fn annotated_captures_are_the_strace_bytes() {
        let bufs = strace_buffers(STRACE_QUEUE);
        assert_eq!(bufs.len(), 10, "4 requests and 4 acks, the packet, the verdict");
        assert_eq!(bufs[0], cap::CONFIG_BIND);
        assert_eq!(bufs[1], cap::CONFIG_BIND_ACK);
        assert_eq!(bufs[2], cap::CONFIG_COPY_128);
        assert_eq!(bufs[4], cap::CONFIG_MAXLEN_4096);
        assert_eq!(bufs[6], cap::CONFIG_FAIL_OPEN_OFF);
        assert_eq!(bufs[8], cap::PACKET_SYN);
        assert_eq!(bufs[9], cap::VERDICT_ACCEPT_1);
    }

    /// What `kernel::nfqueue::Queue::open` sends for `QueueConfig::default()` on queue 0 is
    /// what the kernel acknowledged, byte for byte.
    #[cfg(target_endian = "little")]
    #[test]
    fn config_is_byte_for_byte_what_the_kernel_acknowledged() {
        let wanted: [(u32, Config, &[u8]); 4] = [
            (1, Config::Bind, &cap::CONFIG_BIND),
            (2, Config::CopyPacket { range: 128 }, &cap::CONFIG_COPY_128),
            (3, Config::MaxLen(4096), &cap::CONFIG_MAXLEN_4096),
            (4, Config::FailOpen(false), &cap::CONFIG_FAIL_OPEN_OFF),
        ];
        for (seq, cfg, want) in wanted {
            let mut buf = Vec::new();
            append_config(&mut buf, seq, 0, cfg);
            assert_eq!(buf, want, "{cfg:?}");
        }
        // Fail-open on sets the flag the mask names.
        let mut on = Vec::new();
        append_config(&mut on, 4, 0, Config::FailOpen(true));
        let mut want = cap::CONFIG_FAIL_OPEN_OFF;
        want[27] = 1; // NFQA_CFG_FLAGS = NFQA_CFG_F_FAIL_OPEN
        assert_eq!(on, want);
        // Each request was acknowledged: error 0 for its sequence number.
        let bufs = strace_buffers(STRACE_QUEUE);
        for (ack, seq) in [(1, 1), (3, 2), (5, 3), (7, 4)] {
            let mut got = Vec::new();
            parse_datagram(&bufs[ack], |m| got.push(format!("{m:?}")));
            assert_eq!(got, [format!("Error {{ seq: {seq}, errno: 0 }}")]);
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn verdict_is_byte_for_byte_the_one_the_kernel_took() {
        let mut out = Outbox::default();
        out.verdict(0, 1, Verdict::Accept);
        assert_eq!(out.buf, cap::VERDICT_ACCEPT_1);
    }

    #[test]
    fn parses_the_captured_syn() {
        let mut got = Vec::new();
        parse_datagram(&cap::PACKET_SYN, |m| match m {
            Msg::Packet { id, payload } => got.push((id, payload.to_vec())),
            other => panic!("{other:?}"),
        });
        assert_eq!(got.len(), 1);
        let (id, payload) = &got[0];
        assert_eq!(*id, 1);
        assert_eq!(payload[..], cap::PACKET_SYN[60..], "NFQA_PAYLOAD, the whole 60-byte SYN");
        let flow = crate::packet::parse(payload).expect("a TCP/IPv4 packet");
        let client = Tuple {
            src: [192, 168, 199, 1].into(),
            dst: [192, 168, 199, 200].into(),
            sport: 40000,
            dport: 80,
            proto: Protocol::Tcp,
        };
        assert_eq!(flow, client);
    }

    fn captured_messages() -> Vec<Vec<u8>> {
        strace_buffers(STRACE_QUEUE)
    }

    proptest! {
        #[test]
        fn mutated_real_messages_never_panic(
            which in 0usize..10,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let msgs = captured_messages();
            let msg = mutated(&msgs[which % msgs.len()], &edits);
            parse_datagram(&msg, |_| {});
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            parse_datagram(&bytes, |_| {});
        }
    }

    #[test]
    fn every_truncation_of_real_messages_is_handled() {
        for msg in captured_messages() {
            for n in 0..=msg.len() {
                let mut seen = 0;
                parse_datagram(&msg[..n], |_| seen += 1);
                assert!(n == 0 || seen == 1, "one message (or its remains) per cut");
            }
        }
    }

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
