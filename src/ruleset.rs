//! Our nftables table as plain data, and its text form.
//!
//! nfvs owns exactly one table, `ip nfvs` ([`TABLE`]); it never creates, changes or deletes
//! anything else (design.md, "Interfaces users see"). A [`Ruleset`] says what that table must
//! hold; [`crate::kernel::nftables::apply`] installs it in one atomic batch, and
//! [`Ruleset::render`] prints it as `nft` text for `nfvs rules`, for admins who manage their
//! rules themselves (`rules/nfvs.nft`), and for tests that compare it with the kernel's listing.
//!
//! The table matches services through a set, so its rules are the same whatever the number of
//! services, a packet pays one hash look-up instead of one rule per service, and adding or
//! removing a service is one set element ([`crate::kernel::nftables::update`]):
//!
//! - set `services` (`ipv4_addr . inet_service`): VIP . port of every TCP service.
//! - `divert` (filter, prerouting, priority raw = -300): sends the SYN of every new connection
//!   to a virtual service to NFQUEUE (`tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport
//!   @services`; the flags test comes first, so a data packet costs no look-up). Raw priority
//!   runs before conntrack (-200), so the daemon sees the SYN before the kernel attaches its
//!   own conntrack entry; otherwise the daemon's entry and the kernel's would clash at
//!   confirmation (design.md, "Why raw priority").
//! - `events` (filter, prerouting, priority mangle = -150), on entries carrying nfvs's ct mark:
//!   packets without SYN, FIN or RST leave the chain at its first rule (a running flow's data
//!   pays one flags test); the connection's SYN sets the entry's conntrack event mask to
//!   `destroy`; its first FIN or RST sets conntrack label 127 and the mask `destroy,protoinfo`,
//!   so that state change is reported; a later FIN or RST (label set) puts the mask back to
//!   `destroy` (`ct event set`, net/netfilter/nft_ct.c NFT_CT_EVENTMASK; the mask in force
//!   when a packet leaves decides what is sent). The daemon counts a connection active from
//!   its creation until it leaves the pre-established and established states, which only a
//!   FIN or RST does, and forgets it at DESTROY: the kernel builds three events per connection
//!   (the first FIN's, the ACK's after it, DESTROY) instead of seven or more, the largest
//!   per-connection cost left after the queue itself. Entries made before the table existed
//!   (a restart) have no room for a label: they report every state after their first FIN.
//! - `nat_pre` (nat, prerouting, priority dstnat = -100): one `ct state new counter` rule.
//!   NAT hooks register only while a nat base chain exists, and conntrack does not even run in
//!   a fresh namespace until some rule references it (design.md fact 2); this chain does both.
//!   Connections nfvs balanced never reach it (their NAT is set up when the daemon creates the
//!   conntrack entry), so its counter counts new connections nfvs did *not* balance. With
//!   `--overload fallback`, `ip daddr . tcp dport vmap @fallback` follows: map `fallback` sends
//!   each service's SYNs to its own regular chain `fallback-VIP-PORT` holding the kernel's
//!   balancing rules for it ([`FallbackRule`]). Last, a guard drops a SYN for one of the
//!   `services` that got here: the daemon sends each SYN's verdict in the same `sendmsg` as its
//!   conntrack create, without waiting for the answer (src/kernel/nfqueue.rs), so a SYN whose
//!   create failed (e.g. EEXIST for a reused port of a connection nfvs did not track) arrives
//!   here with an entry of the kernel's own, without DNAT. Dropped, the client retries it a
//!   second later, when the daemon balances it; let through, the director itself would answer
//!   it with a RST.
//! - `nat_post` (nat, postrouting, priority srcnat = 100): `ip saddr CIDR masquerade` for each
//!   `--masquerade` network: the seed's `iptables -t nat -A POSTROUTING -s CIDR -j MASQUERADE`,
//!   with the same meaning (no output interface).

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::model::Protocol;
use crate::service::Table;

/// The name of our table (family `ip`). Users see and may script against it: keep it stable.
pub const TABLE: &str = "nfvs";

/// The chains of [`TABLE`], in the order they are created and listed.
pub const CHAIN_DIVERT: &str = "divert";
pub const CHAIN_EVENTS: &str = "events";
pub const CHAIN_NAT_PRE: &str = "nat_pre";
pub const CHAIN_NAT_POST: &str = "nat_post";

/// The set of TCP services (VIP . port) the divert and guard rules look up.
pub const SET_SERVICES: &str = "services";
/// The verdict map from a service to its `--overload fallback` chain ([`FallbackRule::chain`]).
pub const MAP_FALLBACK: &str = "fallback";

/// Why a piece of a [`Ruleset`] is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesetError {
    #[error(
        "invalid network {text:?}: expected an IPv4 address with an optional prefix length, \
         such as 192.168.226.0/24"
    )]
    CidrSyntax { text: String },
    #[error("invalid network {text:?}: the prefix length must be a number from 0 to 32")]
    CidrPrefix { text: String },
    #[error("invalid network {text:?}: host bits are set; did you mean {network}?")]
    CidrHostBits { text: String, network: Cidr },
    #[error(
        "UDP services are not supported yet ({vip}:{port}): the divert rule can only \
         recognise a TCP connection's first packet (its SYN)"
    )]
    UdpDivert { vip: Ipv4Addr, port: u16 },
    #[error("service {vip}:{port}: port 0 (all ports) is not supported")]
    PortZero { vip: Ipv4Addr, port: u16 },
    #[error("queue total must be at least 1 (got 0)")]
    QueueTotalZero,
    #[error("queues {num}..{num}+{total} go beyond queue 65535")]
    QueueRange { num: u16, total: u16 },
}

/// An IPv4 network: an address whose host bits are clear, and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// A network from its address and prefix length; host bits must be clear.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, RulesetError> {
        let text = format!("{addr}/{prefix}");
        if prefix > 32 {
            return Err(RulesetError::CidrPrefix { text });
        }
        let cidr = Cidr { addr, prefix };
        let network = Ipv4Addr::from(u32::from(addr) & u32::from(cidr.mask()));
        if network != addr {
            return Err(RulesetError::CidrHostBits { text, network: Cidr { addr: network, prefix } });
        }
        Ok(cidr)
    }

    /// The netmask, e.g. 255.255.255.0 for a /24.
    pub fn mask(&self) -> Ipv4Addr {
        // checked_shl: a /0 shifts by 32, which `<<` does not allow.
        let bits = u32::MAX.checked_shl(32 - u32::from(self.prefix.min(32))).unwrap_or(0);
        Ipv4Addr::from(bits)
    }

    /// Whether `ip` lies in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.mask()) == u32::from(self.addr)
    }
}

impl FromStr for Cidr {
    type Err = RulesetError;

    /// `192.168.226.0/24`, or a bare address meaning a /32.
    fn from_str(text: &str) -> Result<Cidr, RulesetError> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| RulesetError::CidrSyntax { text: text.to_string() })?;
        let prefix = match prefix {
            None => 32,
            // u8::from_str accepts a leading '+'; a prefix is plain digits.
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| RulesetError::CidrPrefix { text: text.to_string() })?
            }
            Some(_) => return Err(RulesetError::CidrPrefix { text: text.to_string() }),
        };
        Cidr::new(addr, prefix).map_err(|e| match e {
            RulesetError::CidrPrefix { .. } => RulesetError::CidrPrefix { text: text.to_string() },
            RulesetError::CidrHostBits { network, .. } => {
                RulesetError::CidrHostBits { text: text.to_string(), network }
            }
            other => other,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which NFQUEUE queue(s) the divert rule sends SYNs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueSpec {
    /// The first queue number.
    pub num: u16,
    /// How many queues, `num..num + total`; 1 for a single queue.
    pub total: u16,
    /// Accept the packet (unbalanced) when no program is bound to the queue, instead of
    /// dropping it (design.md fact 7).
    pub bypass: bool,
    /// With `total > 1`, pick the queue by CPU instead of by hashing the addresses
    /// (design.md fact 8).
    pub fanout: bool,
}

impl QueueSpec {
    /// One queue, no flags: `queue num N`.
    pub fn single(num: u16) -> QueueSpec {
        QueueSpec { num, total: 1, bypass: false, fanout: false }
    }

    /// A checked queue range.
    pub fn new(num: u16, total: u16, bypass: bool, fanout: bool) -> Result<QueueSpec, RulesetError> {
        let q = QueueSpec { num, total, bypass, fanout };
        q.validate()?;
        Ok(q)
    }

    /// The kernel refuses `queues_total == 0` and ranges past queue 65535
    /// (net/netfilter/xt_NFQUEUE.c `nfqueue_tg_check`, nft_queue.c `nft_queue_init`).
    pub fn validate(&self) -> Result<(), RulesetError> {
        if self.total == 0 {
            return Err(RulesetError::QueueTotalZero);
        }
        if u32::from(self.num) + u32::from(self.total) - 1 > u32::from(u16::MAX) {
            return Err(RulesetError::QueueRange { num: self.num, total: self.total });
        }
        Ok(())
    }

    /// The last queue number of the range (saturating, for unvalidated specs).
    pub fn last(&self) -> u16 {
        self.num.saturating_add(self.total.saturating_sub(1))
    }
}

/// One virtual service whose new connections are sent to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Divert {
    pub proto: Protocol,
    pub vip: Ipv4Addr,
    pub port: u16,
}

impl Divert {
    /// A checked divert. Only TCP is supported: the divert chain runs at raw priority, before
    /// conntrack, so it cannot ask whether a packet starts a new flow (`ct state` is not set
    /// yet). For TCP the SYN flags say so; UDP has no such mark, and queueing every UDP packet
    /// of a service would send whole flows through the daemon. Moving the rule after conntrack
    /// is no way out either: the kernel's own entry would then clash with the daemon's.
    pub fn new(proto: Protocol, vip: Ipv4Addr, port: u16) -> Result<Divert, RulesetError> {
        let d = Divert { proto, vip, port };
        d.validate()?;
        Ok(d)
    }

    pub fn validate(&self) -> Result<(), RulesetError> {
        if self.proto == Protocol::Udp {
            return Err(RulesetError::UdpDivert { vip: self.vip, port: self.port });
        }
        if self.port == 0 {
            return Err(RulesetError::PortZero { vip: self.vip, port: self.port });
        }
        Ok(())
    }
}

/// The kernel's own balancing for one service, used for SYNs that do not reach the daemon
/// (design.md fact 7): the queue is full (fail-open) or no daemon is bound (bypass). It lives in
/// the nat prerouting chain, which connections the daemon created never traverse (their NAT is
/// already set up), so it never touches them.
///
/// Weighted round robin in plain rules, one per server with weight > 0, each with its own
/// `numgen inc` counter: server i takes `w_i` of every `R_i` connections that reach its rule,
/// where `R_i` is the weight of server i and all after it. Server 0 thus gets w_0/W of all,
/// server 1 w_1/(W - w_0) of the rest = w_1/W, and so on; the last rule takes what is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRule {
    pub vip: Ipv4Addr,
    pub port: u16,
    /// (address, port, weight) in the service's list order; weight-0 servers are left out.
    pub servers: Vec<(Ipv4Addr, u16, u32)>,
}

/// One rule of a [`FallbackRule`]: `numgen inc mod modulus < below` (none for the last) and
/// the server to DNAT to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FallbackStep {
    pub numgen: Option<(u32, u32)>,
    pub to: (Ipv4Addr, u16),
}

impl FallbackRule {
    /// The name of the regular chain holding this service's rules, `fallback-VIP-PORT`: one
    /// chain per service, so that changing a service's servers replaces its chain's rules and
    /// nothing else, and a SYN meets only its own service's rules.
    pub fn chain(&self) -> String {
        format!("fallback-{}-{}", self.vip, self.port)
    }

    pub fn steps(&self) -> Vec<FallbackStep> {
        let servers: Vec<_> = self.servers.iter().filter(|s| s.2 > 0).collect();
        let mut remaining: u32 = servers.iter().map(|s| s.2).sum();
        let mut out = Vec::new();
        for (i, (addr, port, w)) in servers.iter().enumerate() {
            let last = i + 1 == servers.len();
            out.push(FallbackStep { numgen: (!last).then_some((remaining, *w)), to: (*addr, *port) });
            remaining -= w;
        }
        out
    }
}

/// Everything our table holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub queue: QueueSpec,
    pub diverts: Vec<Divert>,
    /// Kernel-only balancing for SYNs the daemon does not see (empty: they are dropped).
    pub fallback: Vec<FallbackRule>,
    pub masquerade: Vec<Cidr>,
    /// The ct mark of nfvs's entries, for the `events` chain; `None`: no such chain.
    pub events_mark: Option<u32>,
}

impl Ruleset {
    /// Check every part; [`crate::kernel::nftables::apply`] refuses a ruleset that fails this.
    pub fn validate(&self) -> Result<(), RulesetError> {
        self.queue.validate()?;
        self.diverts.iter().try_for_each(Divert::validate)?;
        // Cidr's fields are public: re-check what FromStr/new would have refused.
        for c in &self.masquerade {
            Cidr::new(c.addr, c.prefix)?;
        }
        Ok(())
    }

    /// The whole table as `nft` prints it: byte for byte what `nft --stateless list table ip
    /// nfvs` (nftables 1.0.6) prints once [`apply`](crate::kernel::nftables::apply) has
    /// installed it on a kernel that uses the xt-compat NFQUEUE target. Differences elsewhere:
    ///
    /// - `nft list` without `--stateless` adds `packets N bytes M` after each `counter`.
    /// - With the native `queue` expression, nft 1.0.6 lists `queue num 0` as `queue to 0`
    ///   and `queue num 0-3 bypass,fanout` as `queue flags bypass,fanout to 0-3` (nftables
    ///   src/statement.c `queue_stmt_print`; this kernel cannot show it). nft 1.0.6 parses
    ///   the form used here as well (checked: only the kernel refuses it here, with ENOENT).
    /// - On a kernel without the native expression (design.md fact 3) `nft -f` cannot load
    ///   any `queue` statement, this text included; `rules/nfvs.iptables` is the loadable form.
    /// - nft lists chains in the order they were made: after
    ///   [`update`](crate::kernel::nftables::update)s, the `fallback-*` chains of services
    ///   added later come after the others. Set elements are listed sorted, as here
    ///   ([`listing_order`]).
    ///
    /// A UDP divert (which [`Ruleset::validate`] refuses) is rendered as the rule it would
    /// need (`ip daddr VIP udp dport PORT`, after the rule for the set, which holds only TCP
    /// services), so the text never hides an entry.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_nft(&mut out);
        out
    }

    /// The TCP services, once each, in the order nft lists the elements of set `services`
    /// (see [`listing_order`]).
    pub fn tcp_services(&self) -> Vec<(Ipv4Addr, u16)> {
        let mut v: Vec<(Ipv4Addr, u16)> =
            self.diverts.iter().filter(|d| d.proto == Protocol::Tcp).map(|d| (d.vip, d.port)).collect();
        v.sort_by_key(|&(vip, port)| listing_order(vip, port));
        v.dedup();
        v
    }

    /// The fallback rules that have a chain (at least one server of weight > 0), once per
    /// service (the first wins), in the ruleset's order: the order their chains are created in.
    pub fn fallback_chains(&self) -> Vec<&FallbackRule> {
        let mut seen = std::collections::HashSet::new();
        self.fallback.iter().filter(|f| !f.steps().is_empty() && seen.insert((f.vip, f.port))).collect()
    }

    fn write_nft(&self, out: &mut String) -> fmt::Result {
        let queue = render_queue(&self.queue);
        let fallback = self.fallback_chains();
        // nft separates sets and chains by an empty line.
        let mut blocks: Vec<String> = Vec::new();

        let mut b = format!("\tset {SET_SERVICES} {{\n\t\ttype ipv4_addr . inet_service\n");
        write_elements(&mut b, self.tcp_services().iter().map(|(vip, port)| format!("{vip} . {port}")))?;
        blocks.push(b + "\t}\n");

        if !fallback.is_empty() {
            let mut b = format!("\tmap {MAP_FALLBACK} {{\n\t\ttype ipv4_addr . inet_service : verdict\n");
            let mut sorted = fallback.clone();
            sorted.sort_by_key(|f| listing_order(f.vip, f.port));
            write_elements(&mut b, sorted.iter().map(|f| format!("{} . {} : jump {}", f.vip, f.port, f.chain())))?;
            blocks.push(b + "\t}\n");
        }

        let mut b = format!("\tchain {CHAIN_DIVERT} {{\n\t\ttype filter hook prerouting priority raw; policy accept;\n");
        writeln!(b, "\t\t{SYN_TO_SERVICE} counter {queue}")?;
        for d in self.diverts.iter().filter(|d| d.proto != Protocol::Tcp) {
            writeln!(b, "\t\tip daddr {} {} counter {queue}", d.vip, divert_match(d))?;
        }
        blocks.push(b + "\t}\n");

        if let Some(mark) = self.events_mark {
            let mut b = format!("\tchain {CHAIN_EVENTS} {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n");
            writeln!(b, "\t\ttcp flags ! fin,syn,rst accept")?;
            writeln!(b, "\t\ttcp flags syn / fin,syn,rst,ack ct mark {mark:#010x} ct event set destroy")?;
            writeln!(b, "\t\tct label 127 ct mark {mark:#010x} ct event set destroy accept")?;
            writeln!(b, "\t\ttcp flags fin,rst ct mark {mark:#010x} ct label set 127 ct event set destroy,protoinfo")?;
            blocks.push(b + "\t}\n");
        }

        let mut b = format!("\tchain {CHAIN_NAT_PRE} {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n");
        writeln!(b, "\t\tct state new counter")?;
        if !fallback.is_empty() {
            writeln!(b, "\t\tip daddr . tcp dport vmap @{MAP_FALLBACK}")?;
        }
        writeln!(b, "\t\t{SYN_TO_SERVICE} counter drop")?;
        for d in self.diverts.iter().filter(|d| d.proto != Protocol::Tcp) {
            writeln!(b, "\t\tip daddr {} {} counter drop", d.vip, divert_match(d))?;
        }
        blocks.push(b + "\t}\n");

        let mut b = format!("\tchain {CHAIN_NAT_POST} {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
        for c in &self.masquerade {
            // nft prints a /32 as the bare address.
            if c.prefix == 32 {
                writeln!(b, "\t\tip saddr {} masquerade", c.addr)?;
            } else {
                writeln!(b, "\t\tip saddr {c} masquerade")?;
            }
        }
        blocks.push(b + "\t}\n");

        for f in &fallback {
            let mut b = format!("\tchain {} {{\n", f.chain());
            for step in f.steps() {
                let ng = match step.numgen {
                    Some((m, below)) => format!("numgen inc mod {m} < {below} "),
                    None => String::new(),
                };
                writeln!(b, "\t\tmeta l4proto tcp {ng}counter dnat to {}:{}", step.to.0, step.to.1)?;
            }
            blocks.push(b + "\t}\n");
        }

        writeln!(out, "table ip {TABLE} {{")?;
        out.push_str(&blocks.join("\n"));
        writeln!(out, "}}")
    }
}

/// The match of the divert rule and of the guard: a TCP connection's first packet to one of
/// the services.
const SYN_TO_SERVICE: &str = "tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services";

/// `elements = { A,\n\t\t\t     B }`: how nft 1.0.6 lists the elements of a named set whose
/// type is a concatenation, one a line (nftables src/expression.c, `calculate_delim`); nothing
/// for an empty set.
fn write_elements(out: &mut String, elements: impl Iterator<Item = String>) -> fmt::Result {
    let mut first = true;
    for e in elements {
        out.push_str(if first { "\t\telements = { " } else { ",\n\t\t\t     " });
        out.push_str(&e);
        first = false;
    }
    if !first {
        out.push_str(" }\n");
    }
    Ok(())
}

/// The order in which nft 1.0.6 lists the elements of a set keyed `ipv4_addr . inet_service`:
/// it sorts them by their key read as one little-endian number (the 8 key bytes: address,
/// port in network order, two bytes of padding), so the port's low byte counts most, then its
/// high byte, then the address's last byte, and so on (seen with `nft list`; the kernel itself
/// dumps them in hash order).
pub fn listing_order(vip: Ipv4Addr, port: u16) -> [u8; 6] {
    let [a0, a1, a2, a3] = vip.octets();
    let [p_hi, p_lo] = port.to_be_bytes();
    [p_lo, p_hi, a3, a2, a1, a0]
}

/// What a divert (and its guard) matches after `ip daddr VIP`.
fn divert_match(d: &Divert) -> String {
    match d.proto {
        // nft lists `tcp flags & (fin|syn|rst|ack) == syn` this way.
        Protocol::Tcp => format!("tcp dport {} tcp flags syn / fin,syn,rst,ack", d.port),
        Protocol::Udp => format!("udp dport {}", d.port),
    }
}

/// `queue num N`, `queue num N-M`, then the flags the way nft (via libxtables' NFQUEUE
/// translation, and the pre-1.0 native syntax) writes them: ` bypass`, ` fanout`,
/// ` bypass,fanout`.
fn render_queue(q: &QueueSpec) -> String {
    let mut s = format!("queue num {}", q.num);
    if q.total > 1 {
        let _ = write!(s, "-{}", q.last());
    }
    match (q.bypass, q.fanout) {
        (true, true) => s.push_str(" bypass,fanout"),
        (true, false) => s.push_str(" bypass"),
        (false, true) => s.push_str(" fanout"),
        (false, false) => {}
    }
    s
}

/// The conntrack mark nfvs puts on the entries it creates ("nfvs" in ASCII), so it can find
/// them in dumps and events. Changeable with `--ct-mark` where it clashes with a firewall's
/// own use of ct marks.
pub const DEFAULT_CT_MARK: u32 = 0x6e66_7673;

/// What happens to new connections the daemon cannot take: SYNs beyond what the queue holds,
/// and all SYNs while no daemon is bound to the queue (crashed, or restarting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overload {
    /// The kernel drops them; clients retry (after ~1 s, then 3 s, ...). Every balanced
    /// connection is the daemon's decision.
    #[default]
    Drop,
    /// They go on to a static kernel rule that balances them by weight (design.md fact 7):
    /// nothing is refused, but these connections bypass the scheduler and its counters. The
    /// queue gets fail-open and bypass.
    Fallback,
}

/// The wanted ruleset for a table of services.
pub fn for_table(
    table: &Table,
    masquerade: &[Cidr],
    queue: u16,
    queues: u16,
    overload: Overload,
    ct_mark: u32,
) -> Ruleset {
    let diverts = table
        .services()
        .iter()
        .map(|s| {
            let k = s.key();
            Divert { proto: k.proto, vip: k.addr, port: k.port }
        })
        .collect();
    let fallback = match overload {
        Overload::Drop => Vec::new(),
        Overload::Fallback => table
            .services()
            .iter()
            .filter(|s| s.key().proto == Protocol::Tcp)
            .map(|s| FallbackRule {
                vip: s.key().addr,
                port: s.key().port,
                servers: s.dests.iter().map(|d| (d.addr, d.port, d.weight)).collect(),
            })
            .filter(|f| !f.steps().is_empty())
            .collect(),
    };
    let queue = QueueSpec { num: queue, total: queues, bypass: overload == Overload::Fallback, fanout: queues > 1 };
    Ruleset { queue, diverts, masquerade: masquerade.to_vec(), fallback, events_mark: Some(ct_mark) }
}


#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    /// The seed lab: VIP 192.168.199.200:80, real servers in 192.168.226.0/24.
    fn lab() -> Ruleset {
        Ruleset {
            queue: QueueSpec::single(0),
            diverts: vec![Divert::new(Protocol::Tcp, Ipv4Addr::new(192, 168, 199, 200), 80).unwrap()],
            masquerade: vec![cidr("192.168.226.0/24")],
            fallback: vec![],
            events_mark: Some(0x6e66_7673),
        }
    }

    #[test]
    fn cidr_parses_network_and_bare_address() {
        assert_eq!(cidr("192.168.226.0/24"), Cidr { addr: Ipv4Addr::new(192, 168, 226, 0), prefix: 24 });
        assert_eq!(cidr("10.1.2.3"), Cidr { addr: Ipv4Addr::new(10, 1, 2, 3), prefix: 32 });
        assert_eq!(cidr("0.0.0.0/0"), Cidr { addr: Ipv4Addr::UNSPECIFIED, prefix: 0 });
        assert_eq!(cidr("10.16.0.0/12").to_string(), "10.16.0.0/12");
    }

    #[test]
    fn cidr_mask() {
        assert_eq!(cidr("192.168.226.0/24").mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(cidr("10.16.0.0/12").mask(), Ipv4Addr::new(255, 240, 0, 0));
        assert_eq!(cidr("0.0.0.0/0").mask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(cidr("10.1.2.3/32").mask(), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn cidr_contains() {
        let net = cidr("192.168.226.0/24");
        assert!(net.contains(Ipv4Addr::new(192, 168, 226, 131)));
        assert!(!net.contains(Ipv4Addr::new(192, 168, 227, 1)));
        assert!(cidr("0.0.0.0/0").contains(Ipv4Addr::new(8, 8, 8, 8)));
    }

    #[test]
    fn cidr_host_bits_suggest_the_network() {
        let err = "192.168.226.1/24".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err,
            RulesetError::CidrHostBits { text: "192.168.226.1/24".into(), network: cidr("192.168.226.0/24") }
        );
        assert_eq!(
            err.to_string(),
            "invalid network \"192.168.226.1/24\": host bits are set; did you mean 192.168.226.0/24?"
        );
    }

    #[test]
    fn cidr_errors_name_the_text_and_what_is_expected() {
        for bad in ["", "192.168.226", "192.168.226.0/", "example.com/24", "1.2.3.4/24/1", "::1/128"] {
            let msg = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("expected") || msg.contains("prefix length"), "{msg}");
        }
        for bad in ["10.0.0.0/33", "10.0.0.0/+8", "10.0.0.0/x", "10.0.0.0/999"] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert_eq!(err, RulesetError::CidrPrefix { text: bad.into() });
            assert!(err.to_string().contains("from 0 to 32"));
        }
    }

    #[test]
    fn udp_and_port_zero_diverts_are_refused() {
        let vip = Ipv4Addr::new(192, 168, 199, 200);
        let err = Divert::new(Protocol::Udp, vip, 53).unwrap_err();
        assert!(err.to_string().starts_with("UDP services are not supported yet"), "{err}");
        assert!(Divert::new(Protocol::Tcp, vip, 0).is_err());
        let mut rs = lab();
        rs.diverts.push(Divert { proto: Protocol::Udp, vip, port: 53 });
        assert_eq!(rs.validate(), Err(RulesetError::UdpDivert { vip, port: 53 }));
    }

    #[test]
    fn queue_ranges_are_checked() {
        assert!(QueueSpec::new(0, 0, false, false).is_err());
        assert!(QueueSpec::new(65535, 1, false, false).is_ok());
        assert_eq!(
            QueueSpec::new(65535, 2, false, false),
            Err(RulesetError::QueueRange { num: 65535, total: 2 })
        );
        assert_eq!(QueueSpec::new(2, 4, true, true).unwrap().last(), 5);
    }

    #[test]
    fn public_fields_are_revalidated() {
        let mut rs = lab();
        rs.masquerade.push(Cidr { addr: Ipv4Addr::new(10, 0, 0, 1), prefix: 8 });
        assert!(matches!(rs.validate(), Err(RulesetError::CidrHostBits { .. })));
        let mut rs = lab();
        rs.queue.total = 0;
        assert_eq!(rs.validate(), Err(RulesetError::QueueTotalZero));
        assert_eq!(lab().validate(), Ok(()));
    }

    #[test]
    fn fallback_steps_are_weighted_round_robin() {
        let a = |n| Ipv4Addr::new(10, 0, 0, n);
        let f = FallbackRule { vip: a(100), port: 80, servers: vec![(a(1), 80, 3), (a(2), 80, 0), (a(3), 81, 1), (a(4), 80, 2)] };
        let steps = f.steps();
        // W = 6: server 1 takes 3 of 6; server 3 takes 1 of the remaining 3; server 4 the rest.
        assert_eq!(steps.iter().map(|s| s.numgen).collect::<Vec<_>>(), [Some((6, 3)), Some((3, 1)), None]);
        assert_eq!(steps.iter().map(|s| s.to).collect::<Vec<_>>(), [(a(1), 80), (a(3), 81), (a(4), 80)]);
        // Simulate the per-rule counters over two cycles: exactly 3:1:2 each cycle.
        let mut counters = vec![0u32; steps.len()];
        let mut got = vec![0; steps.len()];
        for _ in 0..12 {
            for (i, s) in steps.iter().enumerate() {
                let hit = match s.numgen {
                    Some((m, below)) => {
                        let n = counters[i] % m;
                        counters[i] += 1;
                        n < below
                    }
                    None => true,
                };
                if hit {
                    got[i] += 1;
                    break;
                }
            }
        }
        assert_eq!(got, [6, 2, 4]);
        assert!(FallbackRule { vip: a(1), port: 1, servers: vec![(a(2), 80, 0)] }.steps().is_empty());
    }

    /// Golden text: the seed lab's table. `tests/nftables_kernel.rs` checks that the kernel
    /// lists exactly this (`nft --stateless list table ip nfvs`) after `apply`.
    #[test]
    fn render_lab() {
        let expected = "\
table ip nfvs {
\tset services {
\t\ttype ipv4_addr . inet_service
\t\telements = { 192.168.199.200 . 80 }
\t}

\tchain divert {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\ttcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter queue num 0
\t}

\tchain events {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\ttcp flags ! fin,syn,rst accept
\t\ttcp flags syn / fin,syn,rst,ack ct mark 0x6e667673 ct event set destroy
\t\tct label 127 ct mark 0x6e667673 ct event set destroy accept
\t\ttcp flags fin,rst ct mark 0x6e667673 ct label set 127 ct event set destroy,protoinfo
\t}

\tchain nat_pre {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tct state new counter
\t\ttcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter drop
\t}

\tchain nat_post {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 192.168.226.0/24 masquerade
\t}
}
";
        assert_eq!(lab().render(), expected);
    }

    #[test]
    fn render_queue_forms() {
        let q = |num, total, bypass, fanout| render_queue(&QueueSpec { num, total, bypass, fanout });
        assert_eq!(q(0, 1, false, false), "queue num 0");
        assert_eq!(q(3, 1, true, false), "queue num 3 bypass");
        assert_eq!(q(0, 2, false, false), "queue num 0-1");
        assert_eq!(q(0, 2, false, true), "queue num 0-1 fanout");
        assert_eq!(q(2, 4, true, true), "queue num 2-5 bypass,fanout");
    }

    #[test]
    fn render_empty_and_several() {
        let rs = Ruleset {
            queue: QueueSpec { num: 4, total: 2, bypass: true, fanout: true },
            diverts: vec![
                Divert::new(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 1), 443).unwrap(),
                Divert::new(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 2), 8080).unwrap(),
                Divert::new(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 1), 80).unwrap(),
                Divert::new(Protocol::Tcp, Ipv4Addr::new(10, 0, 0, 1), 443).unwrap(),
            ],
            masquerade: vec![cidr("10.1.2.3"), cidr("0.0.0.0/0")],
            fallback: vec![],
            events_mark: None,
        };
        let text = rs.render();
        // nft's order (ports' low byte first: 80 = 0x0050, 8080 = 0x1f90, 443 = 0x01bb), each
        // element once.
        assert!(text.contains(
            "\t\telements = { 10.0.0.1 . 80,\n\t\t\t     10.0.0.2 . 8080,\n\t\t\t     10.0.0.1 . 443 }\n"
        ), "{text}");
        assert!(text.contains(
            "\t\ttcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter queue num 4-5 bypass,fanout\n\t}\n"
        ), "{text}");
        assert!(text.contains("\t\tip saddr 10.1.2.3 masquerade\n\t\tip saddr 0.0.0.0/0 masquerade\n"));

        let empty =
            Ruleset { queue: QueueSpec::single(0), diverts: vec![], masquerade: vec![], fallback: vec![], events_mark: None };
        let text = empty.render();
        assert!(text.starts_with("table ip nfvs {\n\tset services {\n\t\ttype ipv4_addr . inet_service\n\t}\n\n"), "{text}");
        assert!(text.contains(
            "\tchain divert {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\ttcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter queue num 0\n\t}\n"
        ), "{text}");
    }

    /// `--overload fallback`: the map, the vmap rule before the guard, a chain per service
    /// after the base chains.
    #[test]
    fn render_fallback() {
        let a = |n| Ipv4Addr::new(192, 168, 226, n);
        let vip = Ipv4Addr::new(192, 168, 199, 200);
        let mut rs = lab();
        rs.diverts.push(Divert::new(Protocol::Tcp, vip, 443).unwrap());
        rs.fallback = vec![
            FallbackRule { vip, port: 80, servers: vec![(a(131), 80, 1), (a(130), 80, 2)] },
            FallbackRule { vip, port: 443, servers: vec![(a(131), 443, 1)] },
            FallbackRule { vip, port: 444, servers: vec![(a(131), 443, 0)] },
        ];
        let text = rs.render();
        assert!(text.contains(
            "\n\tmap fallback {\n\t\ttype ipv4_addr . inet_service : verdict\n\
             \t\telements = { 192.168.199.200 . 80 : jump fallback-192.168.199.200-80,\n\
             \t\t\t     192.168.199.200 . 443 : jump fallback-192.168.199.200-443 }\n\t}\n\n\tchain divert {\n"
        ), "{text}");
        assert!(text.contains(
            "\t\tct state new counter\n\t\tip daddr . tcp dport vmap @fallback\n\t\ttcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter drop\n"
        ), "{text}");
        assert!(text.ends_with(
            "\t\tip saddr 192.168.226.0/24 masquerade\n\t}\n\n\
             \tchain fallback-192.168.199.200-80 {\n\
             \t\tmeta l4proto tcp numgen inc mod 3 < 1 counter dnat to 192.168.226.131:80\n\
             \t\tmeta l4proto tcp counter dnat to 192.168.226.130:80\n\t}\n\n\
             \tchain fallback-192.168.199.200-443 {\n\
             \t\tmeta l4proto tcp counter dnat to 192.168.226.131:443\n\t}\n}\n"
        ), "{text}");
        assert!(!text.contains("444"), "{text}");
    }

    /// nft 1.0.6 lists the elements of an `ipv4_addr . inet_service` set by their key read as
    /// a little-endian number; `nft list` of the set this test builds (added in another order):
    /// ```text
    /// elements = { 192.168.0.1 . 1, 9.9.9.9 . 9, 10.0.0.1 . 22, 1.2.3.4 . 22, 10.0.0.1 . 80,
    ///              192.168.199.200 . 80, 10.0.0.1 . 8080, 10.0.0.1 . 443 }
    /// ```
    #[test]
    fn elements_in_nft_listing_order() {
        let mut v: Vec<(Ipv4Addr, u16)> = [
            ([10, 0, 0, 1], 443),
            ([10, 0, 0, 1], 80),
            ([1, 2, 3, 4], 22),
            ([10, 0, 0, 1], 8080),
            ([192, 168, 0, 1], 1),
            ([10, 0, 0, 1], 22),
            ([9, 9, 9, 9], 9),
            ([192, 168, 199, 200], 80),
        ]
        .iter()
        .map(|&(a, p)| (Ipv4Addr::from(a), p))
        .collect();
        v.sort_by_key(|&(a, p)| listing_order(a, p));
        let text: Vec<String> = v.iter().map(|(a, p)| format!("{a} . {p}")).collect();
        assert_eq!(
            text.join(", "),
            "192.168.0.1 . 1, 9.9.9.9 . 9, 10.0.0.1 . 22, 1.2.3.4 . 22, 10.0.0.1 . 80, 192.168.199.200 . 80, \
             10.0.0.1 . 8080, 10.0.0.1 . 443"
        );
    }

    /// `rules/nfvs.nft` is the lab's table for admins; keep it in step with `render`.
    #[test]
    fn rules_file_holds_the_rendered_lab_table() {
        let file = include_str!("../rules/nfvs.nft");
        assert!(file.contains(&lab().render()), "rules/nfvs.nft differs from Ruleset::render()");
    }
}
