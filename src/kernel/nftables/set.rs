//! Our named sets as libnftnl messages: a set's declaration (NEWSET) and batches of its
//! elements (NEWSETELEM, DELSETELEM), and the same objects parsed from the kernel's dumps.
//!
//! The nftnl crate's own `Set` takes one key type of its own and cannot carry a
//! concatenation or a verdict map's data, so these build the messages with nftnl-sys, as nft
//! 1.0.6 does (`nft --debug=mnl add set ...`, `add element ...`).

use std::ffi::{c_void, CString};
use std::ptr::NonNull;

use nftnl::{MsgType, NlMsg};
use nftnl_sys::{self as sys, libc};

use super::readback::owned_str;
use super::spec::{Element, SeenSet, SetSpec, KEY_LEN, KEY_TYPE, TABLE};

/// Elements per NEWSETELEM/DELSETELEM message. The elements travel in one attribute nest,
/// whose length is 16 bits, so a message holds less than 64 KiB of them (libnftnl's
/// `nftnl_attr_nest_overflow`). A map element with its jump costs under 80 bytes here (key
/// 20, verdict code 8, chain name up to 36, nests): 512 of them stay under 40 KiB.
pub(super) const ELEMENTS_PER_MESSAGE: usize = 512;

/// A libnftnl set object, freed on drop.
pub(super) struct OwnedSet(NonNull<sys::nftnl_set>);

impl OwnedSet {
    /// A set of our table (family ip) named `name`, with nothing else set.
    pub(super) fn named(name: &str) -> OwnedSet {
        // SAFETY: plain allocation; NULL only when out of memory.
        let set = OwnedSet(NonNull::new(unsafe { sys::nftnl_set_alloc() }).unwrap_or_else(|| std::process::abort()));
        // Set names are ours ("services", "fallback"): no NUL inside.
        let name = CString::new(name).unwrap_or_default();
        // SAFETY: setters on a live set; libnftnl copies the strings.
        unsafe {
            sys::nftnl_set_set_str(set.ptr(), sys::NFTNL_SET_TABLE as u16, TABLE.as_ptr());
            sys::nftnl_set_set_str(set.ptr(), sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(set.ptr(), sys::NFTNL_SET_FAMILY as u16, libc::NFPROTO_IPV4 as u32);
        }
        set
    }

    /// Set `name` of our table holding `elements`.
    pub(super) fn with_elements<'a>(name: &str, elements: impl IntoIterator<Item = &'a Element>) -> OwnedSet {
        let mut set = OwnedSet::named(name);
        for e in elements {
            set.push(e);
        }
        set
    }

    /// An empty set object, to parse a message into.
    pub(super) fn empty() -> OwnedSet {
        // SAFETY: plain allocation; NULL only when out of memory.
        OwnedSet(NonNull::new(unsafe { sys::nftnl_set_alloc() }).unwrap_or_else(|| std::process::abort()))
    }

    pub(super) fn ptr(&self) -> *mut sys::nftnl_set {
        self.0.as_ptr()
    }

    /// Adds `e` to the object's element list (for an element message).
    fn push(&mut self, e: &Element) {
        // SAFETY: a fresh element, handed to the set, which owns and frees it; the setters
        // copy the key and the chain name.
        unsafe {
            let elem = sys::nftnl_set_elem_alloc();
            if elem.is_null() {
                std::process::abort();
            }
            let len = u32::try_from(e.key.len()).unwrap_or(u32::MAX);
            sys::nftnl_set_elem_set(elem, sys::NFTNL_SET_ELEM_KEY as u16, e.key.as_ptr().cast::<c_void>(), len);
            if let Some((code, chain)) = &e.verdict {
                sys::nftnl_set_elem_set_u32(elem, sys::NFTNL_SET_ELEM_VERDICT as u16, *code);
                if let Some(chain) = chain {
                    let chain = CString::new(chain.as_str()).unwrap_or_default();
                    sys::nftnl_set_elem_set_str(elem, sys::NFTNL_SET_ELEM_CHAIN as u16, chain.as_ptr());
                }
            }
            sys::nftnl_set_elem_add(self.ptr(), elem);
        }
    }

    /// The elements the object holds (parsed from element messages).
    pub(super) fn elements(&self) -> Vec<Element> {
        let mut out = Vec::new();
        // SAFETY: an iterator over a live set's element list, destroyed before return; every
        // value is copied out of the element it belongs to.
        unsafe {
            let iter = sys::nftnl_set_elems_iter_create(self.ptr());
            if iter.is_null() {
                std::process::abort();
            }
            let mut e = sys::nftnl_set_elems_iter_next(iter);
            while !e.is_null() {
                let mut len = 0u32;
                let key = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len).cast::<u8>();
                let key = if key.is_null() { Vec::new() } else { std::slice::from_raw_parts(key, len as usize).to_vec() };
                let verdict = sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_VERDICT as u16).then(|| {
                    let code = sys::nftnl_set_elem_get_u32(e, sys::NFTNL_SET_ELEM_VERDICT as u16);
                    let chain = if sys::nftnl_set_elem_is_set(e, sys::NFTNL_SET_ELEM_CHAIN as u16) {
                        owned_str(sys::nftnl_set_elem_get_str(e, sys::NFTNL_SET_ELEM_CHAIN as u16))
                    } else {
                        None
                    };
                    (code, chain)
                });
                out.push(Element { key, verdict });
                e = sys::nftnl_set_elems_iter_next(iter);
            }
            sys::nftnl_set_elems_iter_destroy(iter);
        }
        out
    }

    /// The declaration read back, without elements.
    pub(super) fn seen(&self) -> SeenSet {
        let p = self.ptr();
        // SAFETY: getters on a live set; the name is copied out.
        unsafe {
            let u32_of = |a: u32| sys::nftnl_set_get_u32(p, a as u16);
            SeenSet {
                name: owned_str(sys::nftnl_set_get_str(p, sys::NFTNL_SET_NAME as u16)).unwrap_or_default(),
                flags: u32_of(sys::NFTNL_SET_FLAGS),
                key_type: u32_of(sys::NFTNL_SET_KEY_TYPE),
                key_len: u32_of(sys::NFTNL_SET_KEY_LEN),
                data_type: sys::nftnl_set_is_set(p, sys::NFTNL_SET_DATA_TYPE as u16)
                    .then(|| u32_of(sys::NFTNL_SET_DATA_TYPE)),
                elements: Vec::new(),
            }
        }
    }

    /// The table and family the object belongs to (after parsing a message).
    pub(super) fn is_ours(&self) -> bool {
        // SAFETY: getters on a live set; the string is copied out.
        unsafe {
            owned_str(sys::nftnl_set_get_str(self.ptr(), sys::NFTNL_SET_TABLE as u16)).as_deref() == TABLE.to_str().ok()
                && sys::nftnl_set_get_u32(self.ptr(), sys::NFTNL_SET_FAMILY as u16) == libc::NFPROTO_IPV4 as u32
        }
    }
}

impl Drop for OwnedSet {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_set_alloc, freed once (with its elements).
        unsafe { sys::nftnl_set_free(self.ptr()) }
    }
}

/// NEWSET of a set's declaration: `type ipv4_addr . inet_service` (`: verdict` for a map).
pub(super) struct SetDecl(OwnedSet);

impl SetDecl {
    /// `id` (NFTA_SET_ID) names the set within its batch; it must differ between the sets of
    /// one batch.
    pub(super) fn new(spec: &SetSpec, id: u32) -> SetDecl {
        let set = OwnedSet::named(spec.name);
        let p = set.ptr();
        // SAFETY: setters on a live set.
        unsafe {
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, spec.flags());
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_TYPE as u16, KEY_TYPE);
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_KEY_LEN as u16, KEY_LEN);
            if let Some(t) = spec.data_type() {
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_TYPE as u16, t);
                // Ignored for verdicts (nf_tables_newset); nft sends 0.
                sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DATA_LEN as u16, 0);
            }
            sys::nftnl_set_set_u32(p, sys::NFTNL_SET_ID as u16, id);
        }
        SetDecl(set)
    }
}

// SAFETY: a set declaration is a few small attributes, far below nft_nlmsg_maxsize.
unsafe impl NlMsg for SetDecl {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let ty = match msg_type {
            MsgType::Add => libc::NFT_MSG_NEWSET,
            MsgType::Del => libc::NFT_MSG_DELSET,
        };
        let flags = match msg_type {
            MsgType::Add => libc::NLM_F_CREATE | libc::NLM_F_ACK,
            MsgType::Del => libc::NLM_F_ACK,
        };
        // SAFETY: the caller gives a buffer of nft_nlmsg_maxsize bytes (NlMsg's contract).
        unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(buf.cast(), ty as u16, libc::NFPROTO_IPV4 as u16, flags as u16, seq);
            sys::nftnl_set_nlmsg_build_payload(nlh, self.0.ptr());
        }
    }
}

/// One NEWSETELEM or DELSETELEM message with up to [`ELEMENTS_PER_MESSAGE`] elements of a set.
pub(super) struct SetElems(OwnedSet);

impl SetElems {
    /// The messages that carry `elements` of set `name`, in order.
    pub(super) fn messages(name: &str, elements: &[Element]) -> Vec<SetElems> {
        elements.chunks(ELEMENTS_PER_MESSAGE).map(|chunk| SetElems(OwnedSet::with_elements(name, chunk))).collect()
    }
}

// SAFETY: at most ELEMENTS_PER_MESSAGE elements, under 40 KiB (see there), below
// nft_nlmsg_maxsize.
unsafe impl NlMsg for SetElems {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        // EXCL: adding an element that is there already is an error (EEXIST), as deleting one
        // that is not (ENOENT): either means the table is not what nfvs installed.
        let (ty, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK),
            MsgType::Del => (libc::NFT_MSG_DELSETELEM, libc::NLM_F_ACK),
        };
        // SAFETY: the caller gives a buffer of nft_nlmsg_maxsize bytes (NlMsg's contract).
        unsafe {
            let nlh = sys::nftnl_nlmsg_build_hdr(buf.cast(), ty as u16, libc::NFPROTO_IPV4 as u16, flags as u16, seq);
            sys::nftnl_set_elems_nlmsg_build_payload(nlh, self.0.ptr());
        }
    }
}
