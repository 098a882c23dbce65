//! Reading our table back: chain, rule, set and set-element dumps (limited to our table),
//! parsed by libnftnl into a [`SeenTable`]; and the parts [`super::update`] reads after an
//! incremental change (the sets, one chain's rules).

use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use nftnl_sys::{self as sys, libc};

use super::batch::NlSocket;
use super::expr::read_expr;
use super::set::OwnedSet;
use super::spec::{Element, SeenChain, SeenExpr, SeenSet, SeenTable, TABLE};
use super::{NftError, Op};
use crate::kernel::socket::RecvBuf;

/// What reading a chain or a rule back needs of libnftnl (the two have the same functions,
/// named after each).
trait Parsed {
    /// What an error calls it.
    const WHAT: &'static str;
    const TABLE_ATTR: u16;
    const FAMILY_ATTR: u16;
    // Each function below has the contract of the libnftnl function it calls.
    unsafe fn alloc() -> *mut Self;
    unsafe fn free(p: *mut Self);
    unsafe fn nlmsg_parse(nlh: *const libc::nlmsghdr, p: *mut Self) -> libc::c_int;
    unsafe fn get_str(p: *const Self, attr: u16) -> *const libc::c_char;
    unsafe fn get_u32(p: *const Self, attr: u16) -> u32;
}

macro_rules! parsed {
    ($ty:ident, $what:literal, $table:ident, $family:ident, $alloc:ident, $free:ident, $parse:ident, $get_str:ident, $get_u32:ident) => {
        impl Parsed for sys::$ty {
            const WHAT: &'static str = $what;
            const TABLE_ATTR: u16 = sys::$table as u16;
            const FAMILY_ATTR: u16 = sys::$family as u16;
            unsafe fn alloc() -> *mut Self {
                unsafe { sys::$alloc() }
            }
            unsafe fn free(p: *mut Self) {
                unsafe { sys::$free(p) }
            }
            unsafe fn nlmsg_parse(nlh: *const libc::nlmsghdr, p: *mut Self) -> libc::c_int {
                unsafe { sys::$parse(nlh, p) }
            }
            unsafe fn get_str(p: *const Self, attr: u16) -> *const libc::c_char {
                unsafe { sys::$get_str(p, attr) }
            }
            unsafe fn get_u32(p: *const Self, attr: u16) -> u32 {
                unsafe { sys::$get_u32(p, attr) }
            }
        }
    };
}

#[rustfmt::skip]
parsed!(nftnl_chain, "chain", NFTNL_CHAIN_TABLE, NFTNL_CHAIN_FAMILY, nftnl_chain_alloc, nftnl_chain_free,
    nftnl_chain_nlmsg_parse, nftnl_chain_get_str, nftnl_chain_get_u32);
#[rustfmt::skip]
parsed!(nftnl_rule, "rule", NFTNL_RULE_TABLE, NFTNL_RULE_FAMILY, nftnl_rule_alloc, nftnl_rule_free,
    nftnl_rule_nlmsg_parse, nftnl_rule_get_str, nftnl_rule_get_u32);

/// A libnftnl chain or rule, freed on drop.
struct Owned<T: Parsed>(NonNull<T>);

impl<T: Parsed> Owned<T> {
    fn new() -> Owned<T> {
        // SAFETY: plain allocation; NULL only when out of memory.
        Owned(NonNull::new(unsafe { T::alloc() }).unwrap_or_else(|| std::process::abort()))
    }

    fn ptr(&self) -> *mut T {
        self.0.as_ptr()
    }

    /// `msg` (one NEWCHAIN or NEWRULE message) parsed, or `None` when it belongs to another
    /// table than ours.
    fn parse_ours(op: Op, msg: &[u8]) -> Result<Option<Owned<T>>, NftError> {
        let obj = Owned::<T>::new();
        // SAFETY: `msg` is one complete netlink message inside a buffer aligned for nlmsghdr
        // (RecvBuf, and messages are 4-byte aligned within it); the object is live.
        if unsafe { T::nlmsg_parse(msg.as_ptr().cast::<libc::nlmsghdr>(), obj.ptr()) } < 0 {
            return Err(NftError::Protocol { op, detail: format!("unparsable {} message", T::WHAT) });
        }
        // SAFETY: a getter on a live object.
        let family = unsafe { T::get_u32(obj.ptr(), T::FAMILY_ATTR) };
        let ours = obj.str(T::TABLE_ATTR).as_deref() == TABLE.to_str().ok() && family == libc::NFPROTO_IPV4 as u32;
        Ok(ours.then_some(obj))
    }

    /// A string attribute, copied out.
    fn str(&self, attr: u16) -> Option<String> {
        // SAFETY: a getter on a live object; the string is copied before `self` can go.
        unsafe { owned_str(T::get_str(self.ptr(), attr)) }
    }
}

impl<T: Parsed> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by `T::alloc`, freed once.
        unsafe { T::free(self.ptr()) }
    }
}

/// Copy a C string owned by a libnftnl object; `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string alive for this call.
pub(super) unsafe fn owned_str(p: *const libc::c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

/// Build a dump request (`NLM_F_DUMP`, family ip) in an aligned buffer; `payload` may add
/// attributes through libnftnl.
fn dump_request(msg_type: i32, seq: u32, payload: impl FnOnce(*mut libc::nlmsghdr)) -> Vec<u8> {
    request(msg_type, libc::NLM_F_DUMP, seq, payload)
}

/// Build a request (family ip, `flags` besides NLM_F_REQUEST) in an aligned buffer;
/// `payload` may add attributes through libnftnl.
fn request(msg_type: i32, flags: libc::c_int, seq: u32, payload: impl FnOnce(*mut libc::nlmsghdr)) -> Vec<u8> {
    let mut buf = RecvBuf::new(4096);
    let bytes = buf.bytes_mut();
    // SAFETY: the buffer (4 KiB, 8-byte aligned) holds a header plus a table name attribute.
    let nlh = unsafe {
        sys::nftnl_nlmsg_build_hdr(
            bytes.as_mut_ptr().cast::<libc::c_char>(),
            msg_type as u16,
            libc::NFPROTO_IPV4 as u16,
            flags as u16,
            seq,
        )
    };
    payload(nlh);
    // SAFETY: nftnl_nlmsg_build_hdr returned a header inside `buf`.
    let len = unsafe { (*nlh).nlmsg_len } as usize;
    bytes[..len.min(bytes.len())].to_vec()
}

/// How often a dump is repeated when the ruleset changes while it runs (NLM_F_DUMP_INTR).
const DUMP_TRIES: usize = 3;

/// Runs `read` (a series of dumps) until none of its dumps was interrupted, a few times at
/// most; `read` answers `(value, intact)`.
fn retried<T>(op: Op, mut read: impl FnMut(&NlSocket) -> Result<(T, bool), NftError>) -> Result<T, NftError> {
    for _ in 0..DUMP_TRIES {
        let (value, intact) = NlSocket::with(op, &mut read)?;
        if intact {
            return Ok(value);
        }
        log::debug!("{op}: ruleset changed during the dump; reading again");
    }
    Err(NftError::Protocol { op, detail: "the ruleset kept changing during the dump".into() })
}

/// Dump our table: its chains with their rules, its sets with their elements.
pub(super) fn read_table() -> Result<SeenTable, NftError> {
    let op = Op::ReadBack;
    retried(op, |sock| {
        let mut chains: Vec<SeenChain> = Vec::new();
        let req = dump_request(libc::NFT_MSG_GETCHAIN, 1, |_| {});
        let chains_intact = sock.dump(op, &req, |msg| {
            if let Some(c) = parse_chain(op, msg)? {
                chains.push(c);
            }
            Ok(())
        })?;
        let mut stray: Option<String> = None;
        // With --overload fallback there is a chain per service: find them by name.
        let index: std::collections::HashMap<String, usize> =
            chains.iter().enumerate().map(|(i, c)| (c.name.clone(), i)).collect();
        let rules_intact = dump_rules(sock, op, None, |chain, exprs| match index.get(&chain) {
            Some(&i) => chains[i].rules.push(exprs),
            None => stray = Some(chain),
        })?;
        let (sets, sets_intact) = dump_sets(sock, op)?;
        if let Some(chain) = stray.filter(|_| chains_intact && rules_intact) {
            // A chain created between the two dumps: report, the comparison would too.
            return Err(NftError::Mismatch { op, detail: format!("rule in unexpected chain {chain}") });
        }
        Ok((SeenTable { sets, chains }, chains_intact && rules_intact && sets_intact))
    })
}

/// Dump our table's sets with their elements.
pub(super) fn read_sets() -> Result<Vec<SeenSet>, NftError> {
    retried(Op::ReadBack, |sock| dump_sets(sock, Op::ReadBack))
}

/// Dump the rules of one chain of our table.
pub(super) fn read_rules_of(chain: &str) -> Result<Vec<Vec<SeenExpr>>, NftError> {
    let op = Op::ReadBack;
    retried(op, |sock| {
        let mut rules = Vec::new();
        let intact = dump_rules(sock, op, Some(chain), |c, exprs| {
            if c == chain {
                rules.push(exprs)
            }
        })?;
        Ok((rules, intact))
    })
}

/// Look up `elements` of set `set` one by one (a GETSETELEM request each, sent together):
/// for each, the element the kernel holds with that key, or `None` if it holds none.
pub(super) fn read_elements(set: &str, elements: &[&Element]) -> Result<Vec<Option<Element>>, NftError> {
    let op = Op::ReadBack;
    let mut requests = Vec::new();
    for (seq, e) in (1..).zip(elements) {
        let key = Element { key: e.key.clone(), verdict: None };
        requests.extend(request(libc::NFT_MSG_GETSETELEM, libc::NLM_F_ACK, seq, |nlh| {
            let one = OwnedSet::with_elements(set, [&key]);
            // SAFETY: `nlh` points into the request buffer, which has room for one element.
            unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, one.ptr()) };
        }));
    }
    let mut found: Vec<Option<Element>> = vec![None; elements.len()];
    let slot = |seq: u32| usize::try_from(seq).ok().and_then(|s| s.checked_sub(1)).filter(|&i| i < elements.len());
    let acks = NlSocket::with(op, |sock| sock.requests(op, &requests, elements.len(), |msg| {
        let parsed = OwnedSet::empty();
        // SAFETY: `msg.raw` is one complete, aligned netlink message (see Owned::parse_ours).
        if unsafe { sys::nftnl_set_elems_nlmsg_parse(msg.raw.as_ptr().cast::<libc::nlmsghdr>(), parsed.ptr()) } < 0 {
            return Err(NftError::Protocol { op, detail: "unparsable set element message".into() });
        }
        if let (Some(i), [e]) = (slot(msg.seq), &parsed.elements()[..]) {
            found[i] = Some(e.clone());
        }
        Ok(())
    }))?;
    for (seq, errno) in acks {
        match errno {
            0 => {}
            libc::ENOENT => {
                if let Some(i) = slot(seq) {
                    found[i] = None;
                }
            }
            errno => {
                return Err(NftError::Rejected {
                    op,
                    what: format!("a look-up in set {set}"),
                    source: std::io::Error::from_raw_os_error(errno),
                })
            }
        }
    }
    Ok(found)
}

/// Dump the rules of our table (of one chain of it, if given) and hand each to `each` with
/// its chain's name. Returns whether the dump was intact.
fn dump_rules(
    sock: &NlSocket,
    op: Op,
    chain: Option<&str>,
    mut each: impl FnMut(String, Vec<SeenExpr>),
) -> Result<bool, NftError> {
    let chain = chain.map(|c| CString::new(c).unwrap_or_default());
    // The rule dump can be limited to one table and one chain (nf_tables_dump_rules_start).
    let req = dump_request(libc::NFT_MSG_GETRULE, 2, |nlh| {
        let rule = Owned::<sys::nftnl_rule>::new();
        // SAFETY: `rule` is live; `nlh` points into the request buffer, which has room; the
        // strings are copied.
        unsafe {
            sys::nftnl_rule_set_str(rule.ptr(), sys::NFTNL_RULE_TABLE as u16, TABLE.as_ptr());
            if let Some(c) = &chain {
                sys::nftnl_rule_set_str(rule.ptr(), sys::NFTNL_RULE_CHAIN as u16, c.as_ptr());
            }
            sys::nftnl_rule_nlmsg_build_payload(nlh, rule.ptr());
        }
    });
    sock.dump(op, &req, |msg| {
        if let Some((chain, exprs)) = parse_rule(op, msg)? {
            each(chain, exprs);
        }
        Ok(())
    })
}

/// Dump our table's sets, then each one's elements. Returns them and whether every dump was
/// intact.
fn dump_sets(sock: &NlSocket, op: Op) -> Result<(Vec<SeenSet>, bool), NftError> {
    let mut sets: Vec<SeenSet> = Vec::new();
    // The set dump is limited to the table named in the request (nf_tables_getset).
    let req = dump_request(libc::NFT_MSG_GETSET, 3, |nlh| {
        let set = OwnedSet::empty();
        // SAFETY: as in dump_rules.
        unsafe {
            sys::nftnl_set_set_str(set.ptr(), sys::NFTNL_SET_TABLE as u16, TABLE.as_ptr());
            sys::nftnl_set_nlmsg_build_payload(nlh, set.ptr());
        }
    });
    let dumped = sock.dump(op, &req, |msg| {
        let set = OwnedSet::empty();
        // SAFETY: `msg` is one complete, aligned netlink message (see Owned::parse_ours).
        if unsafe { sys::nftnl_set_nlmsg_parse(msg.as_ptr().cast::<libc::nlmsghdr>(), set.ptr()) } < 0 {
            return Err(NftError::Protocol { op, detail: "unparsable set message".into() });
        }
        if set.is_ours() {
            sets.push(set.seen());
        }
        Ok(())
    });
    let mut intact = match dumped {
        // No table (the chain and rule dumps, which are not limited to one table, find
        // nothing then): no sets.
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok((Vec::new(), true)),
        other => other?,
    };
    for s in &mut sets {
        // The element dump names its table and set (nf_tables_getsetelem).
        let req = dump_request(libc::NFT_MSG_GETSETELEM, 4, |nlh| {
            let set = OwnedSet::named(&s.name);
            // SAFETY: as in dump_rules; a set without elements puts only its table and name.
            unsafe { sys::nftnl_set_elems_nlmsg_build_payload(nlh, set.ptr()) };
        });
        let mut elements = Vec::new();
        let dumped = sock.dump(op, &req, |msg| {
            let set = OwnedSet::empty();
            // SAFETY: as above.
            if unsafe { sys::nftnl_set_elems_nlmsg_parse(msg.as_ptr().cast::<libc::nlmsghdr>(), set.ptr()) } < 0 {
                return Err(NftError::Protocol { op, detail: "unparsable set element message".into() });
            }
            elements.extend(set.elements());
            Ok(())
        });
        intact &= match dumped {
            // The set went between the two dumps: read again.
            Err(e) if e.errno() == Some(libc::ENOENT) => false,
            other => other?,
        };
        s.elements = elements;
    }
    Ok((sets, intact))
}

/// A NEWCHAIN message of our table, or `None` for another table's chain.
fn parse_chain(op: Op, msg: &[u8]) -> Result<Option<SeenChain>, NftError> {
    let Some(chain) = Owned::<sys::nftnl_chain>::parse_ours(op, msg)? else { return Ok(None) };
    let c = chain.ptr();
    // SAFETY: getters on a live chain.
    unsafe {
        let set = |a: sys::nftnl_chain_attr| sys::nftnl_chain_is_set(c, a as u16);
        Ok(Some(SeenChain {
            name: chain.str(sys::NFTNL_CHAIN_NAME as u16).unwrap_or_default(),
            kind: set(sys::NFTNL_CHAIN_TYPE).then(|| chain.str(sys::NFTNL_CHAIN_TYPE as u16)).flatten(),
            hook: set(sys::NFTNL_CHAIN_HOOKNUM).then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16)),
            priority: set(sys::NFTNL_CHAIN_PRIO).then(|| sys::nftnl_chain_get_s32(c, sys::NFTNL_CHAIN_PRIO as u16)),
            policy: set(sys::NFTNL_CHAIN_POLICY).then(|| sys::nftnl_chain_get_u32(c, sys::NFTNL_CHAIN_POLICY as u16)),
            rules: Vec::new(),
        }))
    }
}

/// A NEWRULE message of our table as `(chain, expressions)`, or `None` for another table's.
fn parse_rule(op: Op, msg: &[u8]) -> Result<Option<(String, Vec<SeenExpr>)>, NftError> {
    let Some(rule) = Owned::<sys::nftnl_rule>::parse_ours(op, msg)? else { return Ok(None) };
    let chain = rule.str(sys::NFTNL_RULE_CHAIN as u16).unwrap_or_default();
    // SAFETY: an expression iterator on a live rule; every expression is copied out before
    // the iterator is destroyed, and that before `rule` is dropped.
    unsafe {
        let iter = sys::nftnl_expr_iter_create(rule.ptr());
        if iter.is_null() {
            std::process::abort();
        }
        let mut exprs = Vec::new();
        loop {
            let e = sys::nftnl_expr_iter_next(iter);
            if e.is_null() {
                break;
            }
            exprs.push(read_expr(e));
        }
        sys::nftnl_expr_iter_destroy(iter);
        Ok(Some((chain, exprs)))
    }
}
