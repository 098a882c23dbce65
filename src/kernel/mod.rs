//! The sockets and system calls: NFQUEUE, ctnetlink, nftables, the ICMP raw socket and
//! sysctls. Each file owns one kernel interface and returns typed errors naming the failed
//! operation; the bytes they send and receive are built and read by [`crate::wire`] (pure,
//! tested without a kernel), except nftables', which libnftnl lays out.
//!
//! - [`conntrack`]: ctnetlink requests one at a time ([`conntrack::Conntrack`]) and events
//!   ([`conntrack::CtEvents`]);
//! - [`nfqueue`]: the queue socket, which also carries the per-SYN ctnetlink requests;
//! - [`nftables`]: our table, installed in one batch and read back;
//! - [`forward`]: whether other programs' forward rules drop nfvs's flows (read, never changed);
//! - [`icmp`]: the raw socket that refuses a connection no server can take;
//! - [`sysctl`]: the settings nfvs changes and restores;
//! - [`os`]: signals, CPU pinning, the per-namespace director lock, privileges, /proc;
//! - [`socket`] and [`mmsg`]: what the netlink sockets share (the aligned receive buffer,
//!   socket options, `recvmmsg` batches).
//!
//! # Kernel facts learnt after design.md's eleven (each pinned by a test)
//!
//! 12. **Queue and ctnetlink share one socket, in order.** Both are subsystems of
//!     NETLINK_NETFILTER; `netlink_rcv_skb` runs the messages of one `sendmsg` one after
//!     another, so a create sent before a verdict exists when the verdict re-injects the SYN,
//!     and without `NLM_F_ACK` only failures are answered ([`nfqueue`]; every lab test).
//! 13. **Conntrack ids repeat across generations of one tuple**: `nf_ct_get_id` hashes the
//!     entry's address, and a new entry often reuses the memory of the one just freed. Tell
//!     generations apart by event order, never by id (accounting.rs,
//!     `late_events_of_older_generations_are_ignored_even_with_equal_ids`).
//! 14. **nft `ct event set` and `ct label set` act on entries ctnetlink created**, so the
//!     `events` chain can silence the events nfvs does not need. A label needs a label rule to
//!     exist before the entry is created (the labels extension is added at creation): entries
//!     from before a restart report every state after their first FIN (tests/sched_lab.rs,
//!     `only_fin_and_later_events_are_sent_and_counts_follow`).
//! 15. **iptables refuses DROP in the nat table**, so rules/nfvs.iptables puts the guard in
//!     mangle with `! --ctstate DNAT`; nft prints that xt match without its `!`
//!     (tests/nftables_kernel.rs, `iptables_form_loads`).
//! 16. **Dumps can be filtered by the original tuple** (`CTA_FILTER`, Linux 5.8+): the kernel
//!     still walks the whole table but sends only the matching entries, whatever their mark
//!     ([`crate::wire::ctnetlink::build_dump_to`]; tests/conntrack_kernel.rs,
//!     `dump_to_one_service_whatever_the_mark`).

pub mod conntrack;
pub mod forward;
pub mod icmp;
pub mod mmsg;
pub mod nfqueue;
pub mod nftables;
pub mod os;
pub mod socket;
pub mod sysctl;
