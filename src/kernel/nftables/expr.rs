//! [`Expr`] to libnftnl and back: the expression objects a batch carries, and the values a
//! dumped rule's expressions hold.

use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl::{ChainType, Rule};
use nftnl_sys::{self as sys, libc};

use super::readback::owned_str;
use super::spec::{ChainKind, Expr, SeenExpr, NFT_NG_INCREMENTAL};

impl From<ChainKind> for ChainType {
    fn from(k: ChainKind) -> ChainType {
        match k {
            ChainKind::Filter => ChainType::Filter,
            ChainKind::Nat => ChainType::Nat,
        }
    }
}

/// `nftnl_expr_alloc` fails only when out of memory (our names are all known to libnftnl);
/// abort then, as the nftnl crate itself does.
fn alloc_expr(name: &CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: `name` is a valid NUL-terminated string.
    match NonNull::new(unsafe { sys::nftnl_expr_alloc(name.as_ptr()) }) {
        Some(e) => e,
        None => std::process::abort(),
    }
}

/// Set a byte-string attribute; libnftnl copies it (cmp data, bitwise mask/xor).
///
/// # Safety
/// `e` must be a live expression of a type that copies `attr`.
unsafe fn set_bytes(e: *mut sys::nftnl_expr, attr: u32, data: &[u8]) {
    // Lengths here are at most 16 bytes.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    unsafe { sys::nftnl_expr_set(e, attr as u16, data.as_ptr().cast::<c_void>(), len) };
}

impl Expression for Expr {
    // Long (about 100 lines): one arm per expression kind, each setting that kind's libnftnl
    // attributes; split, the arms would only move into as many one-call functions.
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(self.name());
        let e = expr.as_ptr();
        let reg1 = libc::NFT_REG_1 as u32;
        // SAFETY: `e` is a live expression of the type named by `self.name()`, and every
        // attribute set below belongs to that type.
        unsafe {
            match self {
                Expr::Payload { base, offset, len, dreg } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_DREG as u16, *dreg);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_BASE as u16, *base);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_OFFSET as u16, *offset);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_PAYLOAD_LEN as u16, *len);
                }
                Expr::Lookup { set, dreg } => {
                    // Set names are ours ("services", "fallback"): no NUL inside.
                    let name = CString::new(set.as_str()).unwrap_or_default();
                    // libnftnl copies the string (src/expr/lookup.c `nftnl_expr_lookup_set`).
                    sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16, name.as_ptr());
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_SREG as u16, reg1);
                    if let Some(dreg) = dreg {
                        sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_LOOKUP_DREG as u16, *dreg);
                    }
                }
                Expr::Meta { key } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_KEY as u16, *key);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_META_DREG as u16, reg1);
                }
                Expr::Ct { key } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_KEY as u16, *key);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_DREG as u16, reg1);
                }
                Expr::CtSet { key } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_KEY as u16, *key);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CT_SREG as u16, reg1);
                }
                Expr::Bitwise { mask, xor } => {
                    let len = u32::try_from(mask.len()).unwrap_or(u32::MAX);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_SREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_DREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_BITWISE_LEN as u16, len);
                    set_bytes(e, sys::NFTNL_EXPR_BITWISE_MASK, mask);
                    set_bytes(e, sys::NFTNL_EXPR_BITWISE_XOR, xor);
                }
                Expr::Cmp { op, data } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CMP_SREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_CMP_OP as u16, *op);
                    set_bytes(e, sys::NFTNL_EXPR_CMP_DATA, data);
                }
                Expr::Counter | Expr::Masq => {}
                Expr::Numgen { modulus } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_DREG as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_MODULUS as u16, *modulus);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_TYPE as u16, NFT_NG_INCREMENTAL);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NG_OFFSET as u16, 0);
                }
                Expr::Immediate { dreg, data } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_DREG as u16, *dreg);
                    set_bytes(e, sys::NFTNL_EXPR_IMM_DATA, data);
                }
                Expr::Verdict { code } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_DREG as u16, libc::NFT_REG_VERDICT as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_IMM_VERDICT as u16, *code);
                }
                Expr::DnatTo { flags } => {
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_TYPE as u16, libc::NFT_NAT_DNAT as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_FAMILY as u16, libc::NFPROTO_IPV4 as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_REG_ADDR_MIN as u16, reg1);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_REG_PROTO_MIN as u16, libc::NFT_REG_2 as u32);
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_NAT_FLAGS as u16, *flags);
                }
                Expr::Queue { num, total, flags } => {
                    sys::nftnl_expr_set_u16(e, sys::NFTNL_EXPR_QUEUE_NUM as u16, *num);
                    sys::nftnl_expr_set_u16(e, sys::NFTNL_EXPR_QUEUE_TOTAL as u16, *total);
                    sys::nftnl_expr_set_u16(e, sys::NFTNL_EXPR_QUEUE_FLAGS as u16, *flags);
                }
                Expr::Target { name, rev, info } => {
                    // Names are at most XT_EXTENSION_MAXNAMELEN; libnftnl truncates longer
                    // ones. Ours is the constant "NFQUEUE".
                    let cname = CString::new(name.as_str()).unwrap_or_default();
                    sys::nftnl_expr_set_str(e, sys::NFTNL_EXPR_TG_NAME as u16, cname.as_ptr());
                    // u32: libnftnl before 1.2.5 reads the revision as a u32 whatever length
                    // is passed (src/expr/target.c), and the kernel attribute is a u32.
                    sys::nftnl_expr_set_u32(e, sys::NFTNL_EXPR_TG_REV as u16, *rev);
                    // libnftnl keeps this pointer and frees it with the expression
                    // (src/expr/target.c `nftnl_expr_target_set`/`_free`): give it a malloc'd
                    // copy.
                    let buf = libc::malloc(info.len().max(1)).cast::<u8>();
                    if buf.is_null() {
                        std::process::abort();
                    }
                    std::ptr::copy_nonoverlapping(info.as_ptr(), buf, info.len());
                    let len = u32::try_from(info.len()).unwrap_or(u32::MAX);
                    sys::nftnl_expr_set(e, sys::NFTNL_EXPR_TG_INFO as u16, buf.cast::<c_void>(), len);
                }
            }
        }
        expr
    }
}

/// The [`Expr`] a parsed libnftnl expression holds; `Err(name)` for other kinds.
///
/// # Safety
/// `e` is a live expression.
pub(super) unsafe fn read_expr(e: *mut sys::nftnl_expr) -> SeenExpr {
    unsafe {
        let u32_of = |a: u32| sys::nftnl_expr_get_u32(e, a as u16);
        let u16_of = |a: u32| sys::nftnl_expr_get_u16(e, a as u16);
        let bytes_of = |a: u32| -> Vec<u8> {
            let mut len = 0u32;
            let p = sys::nftnl_expr_get(e, a as u16, &mut len).cast::<u8>();
            if p.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p, len as usize).to_vec()
            }
        };
        let name = owned_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16)).unwrap_or_default();
        Ok(match name.as_str() {
            "payload" => Expr::Payload {
                base: u32_of(sys::NFTNL_EXPR_PAYLOAD_BASE),
                offset: u32_of(sys::NFTNL_EXPR_PAYLOAD_OFFSET),
                len: u32_of(sys::NFTNL_EXPR_PAYLOAD_LEN),
                dreg: u32_of(sys::NFTNL_EXPR_PAYLOAD_DREG),
            },
            // Only plain look-ups: an inverted one (NFT_LOOKUP_F_INV) is not ours.
            "lookup" if u32_of(sys::NFTNL_EXPR_LOOKUP_SREG) == libc::NFT_REG_1 as u32
                && u32_of(sys::NFTNL_EXPR_LOOKUP_FLAGS) == 0 =>
            {
                Expr::Lookup {
                    set: owned_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_LOOKUP_SET as u16)).unwrap_or_default(),
                    dreg: sys::nftnl_expr_is_set(e, sys::NFTNL_EXPR_LOOKUP_DREG as u16)
                        .then(|| u32_of(sys::NFTNL_EXPR_LOOKUP_DREG)),
                }
            }
            "meta" => Expr::Meta { key: u32_of(sys::NFTNL_EXPR_META_KEY) },
            "ct" if sys::nftnl_expr_is_set(e, sys::NFTNL_EXPR_CT_SREG as u16) => {
                Expr::CtSet { key: u32_of(sys::NFTNL_EXPR_CT_KEY) }
            }
            "ct" => Expr::Ct { key: u32_of(sys::NFTNL_EXPR_CT_KEY) },
            "bitwise" => Expr::Bitwise {
                mask: bytes_of(sys::NFTNL_EXPR_BITWISE_MASK),
                xor: bytes_of(sys::NFTNL_EXPR_BITWISE_XOR),
            },
            "cmp" => {
                Expr::Cmp { op: u32_of(sys::NFTNL_EXPR_CMP_OP), data: bytes_of(sys::NFTNL_EXPR_CMP_DATA) }
            }
            "counter" => Expr::Counter,
            "queue" => Expr::Queue {
                num: u16_of(sys::NFTNL_EXPR_QUEUE_NUM),
                total: u16_of(sys::NFTNL_EXPR_QUEUE_TOTAL),
                flags: u16_of(sys::NFTNL_EXPR_QUEUE_FLAGS),
            },
            "target" => Expr::Target {
                name: owned_str(sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_TG_NAME as u16))
                    .unwrap_or_default(),
                rev: u32_of(sys::NFTNL_EXPR_TG_REV),
                info: bytes_of(sys::NFTNL_EXPR_TG_INFO),
            },
            "masq" => Expr::Masq,
            "numgen" if u32_of(sys::NFTNL_EXPR_NG_TYPE) == NFT_NG_INCREMENTAL && u32_of(sys::NFTNL_EXPR_NG_OFFSET) == 0 => {
                Expr::Numgen { modulus: u32_of(sys::NFTNL_EXPR_NG_MODULUS) }
            }
            "immediate" if u32_of(sys::NFTNL_EXPR_IMM_DREG) == libc::NFT_REG_VERDICT as u32 => {
                Expr::Verdict { code: u32_of(sys::NFTNL_EXPR_IMM_VERDICT) }
            }
            "immediate" => {
                Expr::Immediate { dreg: u32_of(sys::NFTNL_EXPR_IMM_DREG), data: bytes_of(sys::NFTNL_EXPR_IMM_DATA) }
            }
            "nat" if u32_of(sys::NFTNL_EXPR_NAT_TYPE) == libc::NFT_NAT_DNAT as u32 => {
                Expr::DnatTo { flags: u32_of(sys::NFTNL_EXPR_NAT_FLAGS) }
            }
            _ => return Err(name),
        })
    }
}

