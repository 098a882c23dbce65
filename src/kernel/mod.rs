//! The only code that touches the kernel: NFQUEUE, ctnetlink, nftables and sysctls.
//! Each file owns one kernel interface and returns typed errors naming the failed operation.

pub mod conntrack;
pub mod mmsg;
pub mod nfqueue;
pub mod nftables;
pub mod nlmsg;
pub mod sysctl;
