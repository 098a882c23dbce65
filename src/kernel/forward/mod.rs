//! Whether the director's forward path lets the connections nfvs balances through (issue 11
//! #5). nfvs changes no rule it did not create, so all it can do is find a drop and say which
//! rule to add.
//!
//! Two kinds of evidence:
//! - [`check`], static: reads every base chain at the forward hook (native nft tables in the
//!   `ip` and `inet` families, iptables-nft's and iptables-legacy's FORWARD) and reports the
//!   ones that certainly drop one packet of an nfvs flow ([`rules`]). Run at start-up, on
//!   SIGHUP, and when the run-time evidence appears, never per packet.
//! - [`stuck::Watch`], run time: from the ticker's periodic dump of nfvs's entries, new
//!   connections left unanswered over two samples in a row while none was answered.
//!
//! How each rule set is read, and why:
//! - nft: `nft list tables`, then `nft list table FAMILY NAME` for each, skipping nfvs's own
//!   table (10,000 services must not cost a listing of their rules). nft prints a warning on
//!   stderr for the tables iptables-nft manages; those are read with `iptables-nft-save`
//!   instead, because nft prints some xt matches only partly (a `-m comment` disappears; an
//!   unknown match prints as `xt match "..."`).
//! - iptables-legacy: its tables live in ip_tables.ko, outside nf_tables; the kernel lists
//!   the ones that exist in this namespace in `/proc/net/ip_tables_names` (absent when the
//!   module is not loaded). Only when `filter` is listed is `iptables-legacy-save -t filter`
//!   run: reading the tables directly (getsockopt IPT_SO_GET_ENTRIES) would mean decoding
//!   every match's private struct layout, which iptables-save already does, and calling
//!   iptables-legacy-save unconditionally would make the kernel load ip_tables and create
//!   the legacy tables in a namespace that had none.
//!
//! Limits (the README's "Living with firewalld, ufw and docker rule sets"): addresses, ports,
//! marks, sets, limits are not evaluated (a rule using them makes the verdict unknown, and
//! unknown is not reported); interfaces are the ones of the VIPs' addresses and of the main
//! routing table's route to each real server (policy routing is not followed); IPv4 only.

pub mod rules;
pub mod stuck;

use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

pub use rules::{Blocker, Source};

/// The addresses of nfvs's flows: the VIPs and the real servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flows {
    pub vips: Vec<IpAddr>,
    pub rips: Vec<IpAddr>,
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Check {
    /// Chains that certainly drop nfvs's flows.
    pub blockers: Vec<Blocker>,
    /// Rule sets that could not be read (a tool missing or failing), said once per check.
    pub unread: Vec<String>,
}

/// Reads the forward-hook rule sets of the caller's network namespace and returns the chains
/// that drop `flows`. Runs `nft`, `iptables-nft-save` and `iptables-legacy-save`: call it
/// without holding the engine's lock.
pub fn check(flows: &Flows) -> Check {
    let packets = rules::Packet::flow(&vip_interfaces(&flows.vips), &route_interfaces(&flows.rips));
    let mut out = Check::default();
    for table in read_tables(&mut out.unread) {
        out.blockers.extend(rules::blockers(&table, &packets));
    }
    out
}

/// Every table to judge: native nft tables, iptables-nft's, iptables-legacy's filter.
fn read_tables(unread: &mut Vec<String>) -> Vec<rules::Table> {
    let mut tables = Vec::new();
    match run("nft", &["list", "tables"]) {
        Ok((list, _)) => {
            for line in list.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                let [_, family, name] = w[..] else { continue };
                if !matches!(family, "ip" | "inet") || (family == "ip" && name == crate::ruleset::TABLE) {
                    continue;
                }
                match run("nft", &["list", "table", family, name]) {
                    Ok((text, warn)) => tables.extend(nft_table(family, name, &text, &warn, unread)),
                    Err(e) => unread.push(e),
                }
            }
        }
        // No nft binary: no native table can be read (nfvs's own table is installed without
        // it, through libnftnl).
        Err(e) => unread.push(e),
    }
    let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default();
    if legacy.lines().any(|l| l.trim() == "filter") {
        match run("iptables-legacy-save", &["-t", "filter"]) {
            Ok((text, _)) => tables.extend(rules::parse_iptables_save(&text, Source::IptablesLegacy)),
            Err(e) => unread.push(e),
        }
    }
    tables
}

/// One nft table, as `nft list table` printed it (`stderr`: its warnings).
fn nft_table(family: &str, name: &str, text: &str, stderr: &str, unread: &mut Vec<String>) -> Vec<rules::Table> {
    let mut parsed = rules::parse_nft(text);
    // "# Warning: table ip filter is managed by iptables-nft, do not touch!" (nft >= 1.0.6).
    if !stderr.contains("managed by iptables-nft") {
        return parsed;
    }
    if family == "ip" {
        match run("iptables-nft-save", &["-t", name]) {
            Ok((save, _)) => return rules::parse_iptables_save(&save, Source::IptablesNft),
            Err(e) => unread.push(e),
        }
    }
    // Without iptables-nft-save: nft's own reading, named as iptables-nft's.
    for t in &mut parsed {
        t.source = Source::IptablesNft;
    }
    parsed
}

/// Runs a program, returning stdout and stderr, or one line saying why it could not.
fn run(program: &str, args: &[&str]) -> Result<(String, String), String> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program).args(args).env("LC_ALL", "C").output().map_err(|e| format!("`{cmd}`: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("`{cmd}` failed ({}): {}", out.status, stderr.trim()));
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), stderr))
}

/// The interfaces that hold one of `addrs` (getifaddrs(3)).
fn vip_interfaces(addrs: &[IpAddr]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that we walk read-only and free once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null; its family says which sockaddr it is.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let addr = IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
        if addrs.contains(&addr) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// The interfaces the main routing table sends each of `addrs` out of (/proc/net/route).
fn route_interfaces(addrs: &[IpAddr]) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for a in addrs {
        let IpAddr::V4(v4) = a else { continue };
        if let Some(name) = route_iface(&table, *v4) {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The interface of the longest-prefix route to `addr` in `/proc/net/route`'s text (lowest
/// metric among equals). Its addresses and masks are the network-order values printed as host
/// integers (net/ipv4/fib_trie.c, fib_route_seq_show: `%08X`).
pub fn route_iface(table: &str, addr: Ipv4Addr) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    // `%08X` of a __be32 read as a host u32: from_be gives the address's value.
    let host_order = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::from_be);
    let want = u32::from(addr);
    let mut best: Option<(u32, u32, String)> = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Some(dst), Some(mask)) = (host_order(f[1]), host_order(f[7])) else { continue };
        let flags = u32::from_str_radix(f[3], 16).unwrap_or(0);
        let metric: u32 = f[6].parse().unwrap_or(u32::MAX);
        if flags & RTF_UP == 0 || want & mask != dst & mask {
            continue;
        }
        let better = match &best {
            None => true,
            Some((m, met, _)) => mask.count_ones() > m.count_ones() || (mask == *m && metric < *met),
        };
        if better {
            best = Some((mask, metric, f[0].to_owned()));
        }
    }
    best.map(|(_, _, name)| name)
}

/// The rule that lets nfvs's flows through `b`, in its rule set's own language, and what to
/// know about where it goes: `(hint, command)`. The command is a rule to add, except for
/// firewalld's strict mode, where it is firewalld's reload after a configuration change.
pub fn fix(b: &Blocker) -> (String, String) {
    let has = |name: &str| b.chain_names.iter().any(|c| c == name);
    let bin = match b.source {
        Source::IptablesLegacy => "iptables-legacy",
        Source::IptablesNft => "iptables-nft",
        Source::Nft => "nft",
    };
    let dnat = "-m conntrack --ctstate DNAT -j ACCEPT";
    match b.source {
        Source::IptablesLegacy | Source::IptablesNft if has("DOCKER-USER") => (
            "docker's chain for your own rules is DOCKER-USER (docker puts its FORWARD rules back when it restarts); ".into(),
            format!("{bin} -I DOCKER-USER {dnat}"),
        ),
        Source::IptablesLegacy | Source::IptablesNft if has("ufw-before-forward") => (
            format!(
                "ufw's routed policy drops them: to keep the rule, put `-A ufw-before-forward {dnat}` in \
                 /etc/ufw/before.rules (before its COMMIT) and run `ufw reload`; for now, "
            ),
            format!("{bin} -I ufw-before-forward {dnat}"),
        ),
        Source::IptablesLegacy | Source::IptablesNft if has("FORWARD_direct") => (
            "firewalld (iptables backend, before 0.7) rejects them; to keep the rule add --permanent; ".into(),
            format!("firewall-cmd --direct --add-rule ipv4 filter FORWARD 0 {dnat}"),
        ),
        Source::IptablesLegacy | Source::IptablesNft => (String::new(), format!("{bin} -I {} {dnat}", b.chain)),
        Source::Nft if b.family == "inet" && b.table == "firewalld" => (
            "firewalld's StrictForwardPorts=yes rejects DNATed connections it did not make, and a rule in another \
             table cannot undo a reject: set StrictForwardPorts=no in /etc/firewalld/firewalld.conf; "
                .into(),
            "firewall-cmd --reload".into(),
        ),
        Source::Nft => (String::new(), format!("nft insert rule {} {} {} ct status dnat accept", b.family, b.table, b.chain)),
    }
}

/// Where `b` is, as its own tools name it: `iptables-legacy's filter table, chain FORWARD`,
/// `nft table inet filter, chain forward`.
pub fn chain_name(b: &Blocker) -> String {
    match b.source {
        Source::Nft => format!("nft table {} {}, chain {}", b.family, b.table, b.chain),
        _ => format!("{}'s {} table, chain {}", b.source, b.table, b.chain),
    }
}

/// "add: COMMAND", or "run: firewall-cmd --reload" where the fix is no rule.
pub fn advice(b: &Blocker) -> String {
    let (hint, cmd) = fix(b);
    let verb = if cmd.starts_with("firewall-cmd --reload") { "run" } else { "add" };
    format!("{hint}{verb}: {cmd}")
}

/// The one warning line for a blocker found by the check named `when` (`start-up check`,
/// `SIGHUP check`).
pub fn blocker_line(when: &str, b: &Blocker) -> String {
    let policy = match (b.policy_drop, b.source) {
        (false, _) => "",
        (true, Source::Nft) => " (policy drop)",
        (true, _) => " (policy DROP)",
    };
    format!(
        "forward path ({when}): {}{policy}, drops the connections nfvs balances {}: clients time out while nfvs logs and \
         counts them; {}",
        chain_name(b),
        b.drops,
        advice(b)
    )
}

/// The run-time line's advice when no chain is known to drop: the rule in each form.
pub const GENERIC_FIX: &str = "if a firewall drops them, accept DNATed connections before its drop: \
    iptables -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT (iptables-legacy or iptables-nft; under docker: -I DOCKER-USER), \
    nft insert rule <family> <table> <chain> ct status dnat accept (a native forward chain with policy drop), \
    ufw: -A ufw-before-forward -m conntrack --ctstate DNAT -j ACCEPT in /etc/ufw/before.rules, \
    firewalld 2.3+: StrictForwardPorts=no";

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/net/route of the seed lab's director (captured with `ip netns exec <dir> cat
    /// /proc/net/route`): ens33 holds 192.168.226.0/24, ens37 192.168.199.0/24, and a
    /// default route via 192.168.199.1 is added here to check the longest prefix wins.
    const ROUTES: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
        ens37\t00000000\t01C7A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
        ens33\t00E2A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
        ens37\t00C7A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    #[test]
    fn routes_pick_the_longest_prefix() {
        assert_eq!(route_iface(ROUTES, Ipv4Addr::new(192, 168, 226, 130)).as_deref(), Some("ens33"));
        assert_eq!(route_iface(ROUTES, Ipv4Addr::new(192, 168, 199, 7)).as_deref(), Some("ens37"));
        assert_eq!(route_iface(ROUTES, Ipv4Addr::new(10, 1, 2, 3)).as_deref(), Some("ens37"));
        assert_eq!(route_iface("Iface\tDestination\n", Ipv4Addr::new(10, 1, 2, 3)), None);
    }

    fn blocker(source: Source, family: &str, table: &str, chain: &str, chains: &[&str]) -> Blocker {
        Blocker {
            source,
            family: family.into(),
            table: table.into(),
            chain: chain.into(),
            policy_drop: true,
            drops: "at their first packet (NEW, DNATed)",
            chain_names: chains.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn each_rule_set_gets_the_rule_in_its_own_form() {
        let cmd = |b: Blocker| fix(&b).1;
        assert_eq!(
            cmd(blocker(Source::IptablesLegacy, "ip", "filter", "FORWARD", &["FORWARD"])),
            "iptables-legacy -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT"
        );
        assert_eq!(
            cmd(blocker(Source::IptablesNft, "ip", "filter", "FORWARD", &["FORWARD", "DOCKER-USER"])),
            "iptables-nft -I DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT"
        );
        assert_eq!(
            cmd(blocker(Source::IptablesNft, "ip", "filter", "FORWARD", &["FORWARD", "ufw-before-forward"])),
            "iptables-nft -I ufw-before-forward -m conntrack --ctstate DNAT -j ACCEPT"
        );
        assert_eq!(cmd(blocker(Source::Nft, "inet", "filter", "forward", &["forward"])), "nft insert rule inet filter forward ct status dnat accept");
        let line = blocker_line("start-up check", &blocker(Source::IptablesLegacy, "ip", "filter", "FORWARD", &["FORWARD"]));
        assert_eq!(
            line,
            "forward path (start-up check): iptables-legacy's filter table, chain FORWARD (policy DROP), drops the connections \
             nfvs balances at their first packet (NEW, DNATed): clients time out while nfvs logs and counts them; add: \
             iptables-legacy -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT"
        );
    }
}
