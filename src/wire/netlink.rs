//! Netlink framing (include/uapi/linux/netlink.h) and the nfnetlink header
//! (include/uapi/linux/netfilter/nfnetlink.h), once for every subsystem nfvs speaks: ctnetlink
//! ([`super::ctnetlink`]), nfnetlink_queue ([`super::nfqueue`]) and nf_tables
//! (`kernel::nftables`).
//!
//! Reading: [`Messages`] splits a datagram into its messages, [`Attrs`] walks a stream of
//! attributes (a nested one's payload is walked with another [`Attrs`]), [`nlmsgerr`] reads the
//! kernel's error or acknowledgement. Each checks every length once against the bytes it has;
//! nothing here panics, whatever the bytes (the tests of each user feed it truncated, mutated
//! and random messages).
//!
//! Writing: [`begin`] a message, [`put_attr`] / [`nest_start`] ... [`nest_end`], then
//! [`finish`]. Builders append to a `Vec`, so several messages can go out in one `sendmsg`, and
//! a reused `Vec` keeps its capacity: after the first message nothing is allocated.
//!
//! Byte order: netlink and attribute headers are in host order; the nfgenmsg `res_id` and the
//! values of the netfilter subsystems' attributes are big-endian.

use std::fmt;

/// `NLMSG_HDRLEN`: `struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }`.
pub const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg { u8 family; u8 version; __be16 res_id; }`.
pub const NFGENMSG_LEN: usize = 4;
/// `NLA_HDRLEN`: `struct nlattr { u16 len; u16 type; }`.
pub const NLA_HDRLEN: usize = 4;

pub const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
pub const NLM_F_MULTI: u16 = libc::NLM_F_MULTI as u16;
pub const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
pub const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
pub const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;
pub const NLM_F_EXCL: u16 = libc::NLM_F_EXCL as u16;
pub const NLM_F_CREATE: u16 = libc::NLM_F_CREATE as u16;

pub const NLMSG_NOOP: u16 = libc::NLMSG_NOOP as u16;
pub const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
pub const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
pub const NLMSG_OVERRUN: u16 = libc::NLMSG_OVERRUN as u16;

pub const NLA_F_NESTED: u16 = libc::NLA_F_NESTED as u16;
/// The type bits of `nla_type`, without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
pub const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;

/// `NLMSG_ALIGN` / `NLA_ALIGN`: messages and attributes start on 4-byte boundaries.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Bytes that do not hold the netlink message or attribute they claim to; says what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

// ---------------------------------------------------------------------------------------------
// Reading.
// ---------------------------------------------------------------------------------------------

/// A host-order u16 at `at`, if the bytes are there.
pub fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

/// A host-order u32 at `at`, if the bytes are there.
pub fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// The big-endian u16 that starts an attribute payload.
pub fn be_u16(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(..2)?.try_into().ok()?))
}

/// The big-endian u32 that starts an attribute payload.
pub fn be_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

/// One netlink message: the header fields nfvs reads, and its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The whole message, header included (`nlmsg_len` bytes).
    pub raw: &'a [u8],
    /// What follows the 16-byte header.
    pub payload: &'a [u8],
}

/// The netlink messages in one datagram (`NLMSG_OK` / `NLMSG_NEXT`, without alignment needs).
/// A message whose length is below the header's or beyond the datagram is an error, and ends
/// the iteration: nothing after it can be found.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    pub fn new(datagram: &'a [u8]) -> Self {
        Messages { rest: datagram }
    }

    /// What is left to split: the next message and those after it.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let len = match ne_u32(rest, 0) {
            Some(len) => len as usize,
            None => return Some(Err(Malformed("truncated netlink header"))),
        };
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Some(Err(Malformed("netlink message length out of bounds")));
        }
        let (raw, tail) = rest.split_at(len);
        // The next message starts at NLMSG_ALIGN(len); the last one may omit its padding.
        self.rest = tail.get(align4(len) - len..).unwrap_or(&[]);
        Some(Ok(Message {
            ty: ne_u16(raw, 4).unwrap_or(0),
            flags: ne_u16(raw, 6).unwrap_or(0),
            seq: ne_u32(raw, 8).unwrap_or(0),
            raw,
            payload: raw.get(NLMSG_HDRLEN..).unwrap_or(&[]),
        }))
    }
}

/// The first message in `buf` (a GET answer, a dump element or an event, as received).
pub fn first_message(buf: &[u8]) -> Result<Message<'_>, Malformed> {
    Messages::new(buf).next().unwrap_or(Err(Malformed("empty buffer")))
}

/// The attributes in a stream of `struct nlattr` (`nla_for_each_attr`): (type without the
/// NLA_F_NESTED / NLA_F_NET_BYTEORDER flags, payload without padding). A nested attribute's
/// payload is itself such a stream: walk it with another `Attrs`. An attribute that does not
/// fit is an error and ends the iteration.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(attrs: &'a [u8]) -> Self {
        Attrs { rest: attrs }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        let (len, ty) = match (ne_u16(rest, 0), ne_u16(rest, 2)) {
            (Some(len), Some(ty)) => (usize::from(len), ty & NLA_TYPE_MASK),
            _ => return Some(Err(Malformed("truncated attribute header"))),
        };
        if len < NLA_HDRLEN || len > rest.len() {
            return Some(Err(Malformed("attribute length out of bounds")));
        }
        let (attr, tail) = rest.split_at(len);
        self.rest = tail.get(align4(len) - len..).unwrap_or(&[]);
        Some(Ok((ty, attr.get(NLA_HDRLEN..).unwrap_or(&[]))))
    }
}

/// The positive errno for a kernel error code (a negative errno; 0 stays 0). `i32::MIN` has no
/// positive counterpart and becomes `i32::MAX`: plain `-code` would overflow, a panic in a
/// debug build, on a message that says so.
pub const fn errno_of(code: i32) -> i32 {
    match code.checked_neg() {
        Some(errno) => errno,
        None => i32::MAX,
    }
}

/// What an `NLMSG_ERROR` message says, as a positive errno: 0 is an acknowledgement.
///
/// `struct nlmsgerr { int error; struct nlmsghdr msg; ... }` follows the header; `error` is a
/// negative errno or 0, and the message's own `nlmsg_seq` is the request's (`netlink_ack`,
/// net/netlink/af_netlink.c). Under `NETLINK_CAP_ACK` the request is not copied back, so only
/// the `int` is required here.
pub fn nlmsgerr(m: &Message<'_>) -> Result<i32, Malformed> {
    if m.ty != NLMSG_ERROR {
        return Err(Malformed("not an NLMSG_ERROR message"));
    }
    let code = ne_u32(m.payload, 0).ok_or(Malformed("truncated nlmsgerr"))? as i32;
    Ok(errno_of(code))
}

// ---------------------------------------------------------------------------------------------
// Writing.
// ---------------------------------------------------------------------------------------------

/// Starts an nfnetlink message of type `subsys << 8 | op` at the end of `buf`:
/// `nlmsghdr` (length left 0 for [`finish`], pid 0 = to the kernel) + `nfgenmsg { family,
/// NFNETLINK_V0, res_id }`. Returns where it starts, for [`finish`]. Every builder ends on a
/// 4-byte boundary (NLMSG_ALIGN).
pub fn begin(buf: &mut Vec<u8>, subsys: u16, op: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish()
    buf.extend_from_slice(&((subsys << 8) | op).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0 = to the kernel
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

/// Opens a nested attribute (type `ty | NLA_F_NESTED`); close it with [`nest_end`].
pub fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes()); // nla_len, set by nest_end()
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

/// Sets the length of the nested attribute opened at `at`.
pub fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An NLMSG_ERROR message as the kernel sends it under NETLINK_CAP_ACK: header, then
    /// `struct nlmsgerr` (the error, then the request's header).
    fn error_msg(seq: u32, error: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes()); // nlmsg_len: header + error + request header
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes()); // nlmsg_type
        m.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
        m.extend_from_slice(&seq.to_ne_bytes()); // nlmsg_seq: the request's
        m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: from the kernel
        m.extend_from_slice(&error.to_ne_bytes()); // error: negative errno, 0 = ack
        m.extend_from_slice(&[0u8; 16]); // the request's header
        m
    }

    #[test]
    fn builds_nested_messages_and_reads_them_back() {
        let mut buf = Vec::new();
        let at = begin(&mut buf, 1, 0, NLM_F_REQUEST | NLM_F_ACK, 9, libc::AF_INET as u8, 0x0102);
        let nest = nest_start(&mut buf, 1);
        put_attr(&mut buf, 2, &[0xaa]);
        nest_end(&mut buf, nest);
        put_attr(&mut buf, 3, &7u32.to_be_bytes());
        finish(&mut buf, at);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &40u32.to_ne_bytes()[..],          // nlmsg_len = 16 + 4 + 12 + 8
            &0x0100u16.to_ne_bytes(),          // nlmsg_type = 1 << 8 | 0
            &0x0005u16.to_ne_bytes(),          // nlmsg_flags = REQUEST | ACK
            &9u32.to_ne_bytes(),               // nlmsg_seq
            &0u32.to_ne_bytes(),               // nlmsg_pid: to the kernel
            &[2, 0, 0x01, 0x02],               // nfgenmsg: AF_INET, NFNETLINK_V0, res_id (BE)
            &12u16.to_ne_bytes(),              // nla_len of the nest: 4 + 8
            &0x8001u16.to_ne_bytes(),          // nla_type = 1 | NLA_F_NESTED
            &5u16.to_ne_bytes(),               //   nla_len = 4 + 1
            &2u16.to_ne_bytes(),               //   nla_type = 2
            &[0xaa, 0, 0, 0],                  //   payload + 3 bytes of zero padding
            &8u16.to_ne_bytes(),               // nla_len
            &3u16.to_ne_bytes(),               // nla_type = 3
            &[0, 0, 0, 7],                     // big-endian 7
        ]
        .concat();
        assert_eq!(buf, want);

        let m = first_message(&buf).unwrap();
        assert_eq!((m.ty, m.flags, m.seq, m.raw.len()), (0x0100, NLM_F_REQUEST | NLM_F_ACK, 9, 40));
        let attrs: Vec<_> = Attrs::new(&m.payload[NFGENMSG_LEN..]).map(Result::unwrap).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].0, 1, "NLA_F_NESTED is masked off");
        let inner: Vec<_> = Attrs::new(attrs[0].1).map(Result::unwrap).collect();
        assert_eq!(inner, [(2, &[0xaa][..])], "payload without its padding");
        assert_eq!(be_u32(attrs[1].1), Some(7));
    }

    #[test]
    fn splits_messages_with_and_without_the_last_padding() {
        let mut buf = error_msg(8, 0);
        buf.extend_from_slice(&error_msg(9, -libc::ENOENT));
        let got: Vec<(u32, i32)> =
            Messages::new(&buf).map(|m| m.unwrap()).map(|m| (m.seq, nlmsgerr(&m).unwrap())).collect();
        assert_eq!(got, [(8, 0), (9, libc::ENOENT)]);

        // A 17-byte message: the next one starts after 3 bytes of padding, which the last
        // message of a datagram may leave out.
        let mut odd = error_msg(1, 0);
        odd[..4].copy_from_slice(&17u32.to_ne_bytes());
        odd.truncate(17);
        assert_eq!(Messages::new(&odd).count(), 1);
        odd.extend_from_slice(&[0; 3]);
        odd.extend_from_slice(&error_msg(2, 0));
        let seqs: Vec<u32> = Messages::new(&odd).map(|m| m.unwrap().seq).collect();
        assert_eq!(seqs, [1, 2]);
    }

    #[test]
    fn lengths_that_do_not_fit_are_errors_and_end_the_split() {
        let buf = error_msg(8, 0);
        assert_eq!(Messages::new(&buf[..3]).collect::<Vec<_>>(), [Err(Malformed("truncated netlink header"))]);
        let mut lying = buf.clone();
        lying[..4].copy_from_slice(&4000u32.to_ne_bytes());
        lying.extend_from_slice(&error_msg(9, 0));
        assert_eq!(Messages::new(&lying).collect::<Vec<_>>(), [Err(Malformed("netlink message length out of bounds"))]);
        lying[..4].copy_from_slice(&15u32.to_ne_bytes()); // shorter than a header
        assert_eq!(Messages::new(&lying).count(), 1);
        assert!(first_message(&[]).is_err());

        let attrs = [8, 0, 1, 0, 0, 0]; // claims 8 bytes, has 6
        assert_eq!(Attrs::new(&attrs).collect::<Vec<_>>(), [Err(Malformed("attribute length out of bounds"))]);
        assert_eq!(Attrs::new(&attrs[..3]).collect::<Vec<_>>(), [Err(Malformed("truncated attribute header"))]);
        assert!(Attrs::new(&[3, 0, 1, 0]).next().unwrap().is_err(), "shorter than its header");
    }

    #[test]
    fn nlmsgerr_reads_acks_and_errors() {
        let ack = error_msg(8, 0);
        assert_eq!(nlmsgerr(&first_message(&ack).unwrap()), Ok(0));
        let eexist = error_msg(8, -libc::EEXIST);
        assert_eq!(nlmsgerr(&first_message(&eexist).unwrap()), Ok(libc::EEXIST));
        // Only the int is needed (the request's header may be capped away), but that is.
        let mut short = error_msg(8, -1);
        short[..4].copy_from_slice(&19u32.to_ne_bytes());
        assert_eq!(nlmsgerr(&first_message(&short[..19]).unwrap()), Err(Malformed("truncated nlmsgerr")));
        let mut done = error_msg(8, 0);
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(nlmsgerr(&first_message(&done).unwrap()).is_err(), "not an NLMSG_ERROR");
    }

    /// The case conntrack's `mutated_real_messages_never_panic` found: `-error` of i32::MIN
    /// overflows. Every user of [`nlmsgerr`] has a test of its own for it too.
    #[test]
    fn nlmsgerr_with_i32_min_is_an_errno_not_a_panic() {
        let msg = error_msg(8, i32::MIN);
        assert_eq!(nlmsgerr(&first_message(&msg).unwrap()), Ok(i32::MAX));
        assert_eq!(errno_of(i32::MIN), i32::MAX);
        assert_eq!(errno_of(-libc::ENOENT), libc::ENOENT);
        assert_eq!(errno_of(0), 0);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for m in Messages::new(&bytes).flatten() {
                let _ = nlmsgerr(&m);
                for (_, p) in Attrs::new(m.payload).flatten() {
                    Attrs::new(p).for_each(drop);
                }
            }
            Attrs::new(&bytes).for_each(drop);
        }
    }
}
