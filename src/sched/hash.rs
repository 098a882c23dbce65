//! The two hash functions the IPVS hashing schedulers use (lvs-semantics.md Appendix A).
//!
//! - [`hash_32`]: `include/linux/hash.h`, the generic multiplicative hash (x86 and arm64 use
//!   it; m68k has its own). sh and dh index their 256-bucket tables with it, lblc/lblcr their
//!   1024-bucket caches.
//! - [`hsiphash_u32`]: `lib/siphash.c` `hsiphash()` on a 4-byte input as built on 64-bit
//!   kernels, where "HalfSipHash" is really SipHash-1-3 with a 128-bit key (32-bit kernels use
//!   real HalfSipHash-1-3 and give different numbers). mh hashes with it.

/// `GOLDEN_RATIO_32` from include/linux/hash.h.
const GOLDEN_RATIO_32: u32 = 0x61C8_8647;

/// `hash_32(val, bits)`: the top `bits` bits of `val * GOLDEN_RATIO_32 mod 2^32`.
/// `bits` must be in 1..=32 (callers use the constants 8 and 10).
#[inline]
pub fn hash_32(val: u32, bits: u32) -> u32 {
    debug_assert!((1..=32).contains(&bits));
    val.wrapping_mul(GOLDEN_RATIO_32) >> (32 - bits)
}

/// A 128-bit SipHash key as the kernel's `hsiphash_key_t` holds it on 64-bit: `key[0]`,
/// `key[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipKey(pub u64, pub u64);

const C0: u64 = 0x736f_6d65_7073_6575;
const C1: u64 = 0x646f_7261_6e64_6f6d;
const C2: u64 = 0x6c79_6765_6e65_7261;
const C3: u64 = 0x7465_6462_7974_6573;

/// `SIPHASH_PERMUTATION` (include/linux/siphash.h).
#[inline(always)]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// `hsiphash(&v, sizeof(u32), key)` on a 64-bit little-endian kernel: the 4 bytes of `v` in
/// memory are `v.to_le_bytes()`, so the final block is `(4 << 56) | v`. One compression round,
/// three finalisation rounds, result truncated to 32 bits.
#[inline]
pub fn hsiphash_u32(v: u32, key: SipKey) -> u32 {
    let mut s = [C0 ^ key.0, C1 ^ key.1, C2 ^ key.0, C3 ^ key.1];
    let b = (4u64 << 56) | u64::from(v);
    s[3] ^= b;
    sipround(&mut s);
    s[0] ^= b;
    s[2] ^= 0xff;
    sipround(&mut s);
    sipround(&mut s);
    sipround(&mut s);
    (s[0] ^ s[1] ^ s[2] ^ s[3]) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<Ipv4Addr>().unwrap())
    }

    /// lvs-semantics.md Appendix A.1, every row.
    #[test]
    fn hash_32_appendix_a1() {
        let rows: &[(u32, Option<u32>, u32)] = &[
            (ip("203.0.113.1"), Some(0x320DDD47), 50),
            (ip("203.0.113.2"), Some(0x93D6638E), 147),
            (ip("203.0.113.3"), Some(0xF59EE9D5), 245),
            (ip("203.0.113.4"), Some(0x5767701C), 87),
            (ip("203.0.113.5"), Some(0xB92FF663), 185),
            (ip("203.0.113.6"), Some(0x1AF87CAA), 26),
            (ip("203.0.113.1").wrapping_add(40000), Some(0xD602B307), 214),
            (ip("203.0.113.1").wrapping_add(40001), Some(0x37CB394E), 55),
            (ip("203.0.113.1").wrapping_add(40005), Some(0xBEED526A), 190),
            (ip("203.0.113.1").wrapping_add(40010), Some(0xA7D7F1CD), 167),
            (ip("198.51.100.1"), None, 96),
            (ip("198.51.100.2"), None, 194),
            (ip("198.51.100.3"), None, 35),
            (ip("198.51.100.4"), None, 133),
            (ip("192.168.199.1"), Some(0xA0C1B747), 160),
            (ip("192.168.199.200"), None, 163),
        ];
        assert_eq!(ip("203.0.113.1"), 0xCB007101);
        assert_eq!(ip("203.0.113.1") + 40000, 0xCB010D41);
        for &(x, product, h) in rows {
            if let Some(p) = product {
                assert_eq!(x.wrapping_mul(GOLDEN_RATIO_32), p, "{x:#x}");
            }
            assert_eq!(hash_32(x, 8), h, "{x:#x}");
        }
    }

    /// The kernel's own self-test vector (lib/siphash_kunit.c, hsiphash of 4 bytes 00 01 02 03
    /// on 64-bit), as quoted in Appendix A.2.
    #[test]
    fn hsiphash_kernel_vector() {
        let key = SipKey(0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908);
        assert_eq!(hsiphash_u32(0x0302_0100, key), 0x88d3_8328);
    }

    /// MH-1's intermediate numbers (lvs-semantics.md §2.13): the permutation hashes of the two
    /// seed-lab servers (port 80 + address) and of client 203.0.113.1.
    #[test]
    fn hsiphash_mh1_numbers() {
        let k1 = SipKey(2_654_435_761, 2_654_435_761);
        let k2 = SipKey(2_654_446_892, 2_654_446_892);
        let rs131 = ip("192.168.226.131") + 80;
        let rs130 = ip("192.168.226.130") + 80;
        assert_eq!(hsiphash_u32(rs131, k1), 3_927_595_360);
        assert_eq!(hsiphash_u32(rs131, k2), 1_333_326_210);
        assert_eq!(hsiphash_u32(rs130, k1), 2_501_262_337);
        assert_eq!(hsiphash_u32(rs130, k2), 2_205_427_550);
        assert_eq!(hsiphash_u32(ip("203.0.113.1"), k1), 3_083_970_587);
    }
}
