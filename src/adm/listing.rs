//! What `ipvsadm` prints, byte for byte: `-L`/`-l` in all its variants, `-S`, `-L -c`,
//! and `--timeout` (lvs-semantics.md §9-10); `-h` and `-v` are in [`super::usage`].
//!
//! Pure functions from the service table (plus counters, connection rows, port names) to
//! strings. The printf formats are ipvsadm 1.31's (`ipvsadm.c`: `print_title`,
//! `print_service_entry`, `print_largenum`, `print_conn`, `list_timeout`) and so are the
//! trailing spaces they leave; sorting is libipvs's (`ipvs_cmp_services`, `ipvs_cmp_dests`)
//! run through glibc's `qsort`, quirks included (see [`sort_services`]).
//!
//! Names: without `-n`, ipvsadm reverse-resolves addresses (`gethostbyaddr`) and names ports
//! (`getservbyport`). nfvs does no DNS, so addresses always print numerically (what ipvsadm
//! prints too for an address without a PTR record); ports are named from `/etc/services`
//! through [`PortNames`].

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::command::ListFormat;
use super::etc_services::PortNames;
use crate::sched::SchedFlags;
use crate::service::{Dest, ServiceKey, ServiceSpec, Table};
use crate::model::Protocol;
use crate::stats::{Counters, Rates, StatsSource};

/// The IPVS version the listing header names (`IP_VS_VERSION_CODE` 0x010201 in
/// include/uapi/linux/ip_vs.h, unchanged since 2.6).
pub const IPVS_VERSION: &str = "1.2.1";

/// The `size=` of the listing header: the kernel's connection hash table size
/// (`ip_vs_conn_tab_size`, 2^12 unless the module parameter `conn_tab_bits` changes it).
/// nfvs has no such table (conntrack holds the connections), so it prints the default.
pub const CONN_TAB_SIZE: u32 = 4096;

/// Why a listing could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// `-L -t VIP:PORT` for a service that does not exist (ipvsadm: ESRCH, exit status 1).
    #[error("No such service")]
    NoSuchService,
}

/// ipvsadm's `addrport_to_anyname`: `addr:port`, the port named unless `numeric`.
fn addrport(addr: Ipv4Addr, port: u16, proto: Protocol, numeric: bool, names: &PortNames) -> String {
    match names.name(proto, port) {
        Some(name) if !numeric => format!("{addr}:{name}"),
        _ => format!("{addr}:{port}"),
    }
}

/// ipvsadm cuts names at a fixed length in listings (`svc_name[33] = '\0'`,
/// `dname[28] = '\0'`); only names made long by port names can reach it.
fn truncated(mut s: String, len: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(len) {
        s.truncate(i);
    }
    s
}

/// `print_largenum`: a counter in a 9-wide column. Without `--exact`, numbers from 10^8 up
/// are divided and suffixed K (< 10^9), M (< 10^11), G (< 10^14) or T. With `--exact` the
/// column widens to fit (`%*llu` of width max(9, digits + 1)), keeping one leading space.
pub fn largenum(n: u64, exact: bool) -> String {
    if exact {
        return format!(" {n:>8}");
    }
    match n {
        0..=99_999_999 => format!("{n:>9}"),
        100_000_000..=999_999_999 => format!("{:>8}K", n / 1_000),
        1_000_000_000..=99_999_999_999 => format!("{:>8}M", n / 1_000_000),
        100_000_000_000..=99_999_999_999_999 => format!("{:>8}G", n / 1_000_000_000),
        _ => format!("{:>8}T", n / 1_000_000_000_000),
    }
}

/// `print_sched_flags`: the names of the set scheduler flags, comma separated. sh and mh
/// have their own names for flag-1 and flag-2 and none for flag-3 (which then prints as
/// nothing, as in ipvsadm: ` ()` in `-L`, `-b ` in `-S`).
pub fn sched_flag_names(sched: &str, flags: &SchedFlags) -> String {
    let names: [(bool, &str); 3] = match sched {
        "sh" => [(flags.flag1, "sh-fallback"), (flags.flag2, "sh-port"), (false, "")],
        "mh" => [(flags.flag1, "mh-fallback"), (flags.flag2, "mh-port"), (false, "")],
        _ => [(flags.flag1, "flag-1"), (flags.flag2, "flag-2"), (flags.flag3, "flag-3")],
    };
    names.iter().filter(|(set, _)| *set).map(|(_, n)| *n).collect::<Vec<_>>().join(",")
}

fn any_flag(f: &SchedFlags) -> bool {
    f.flag1 || f.flag2 || f.flag3
}

// ---------------------------------------------------------------------------------------
// Sorting

/// libipvs compares addresses as `ntohl(a) - ntohl(b)` stored in an `int`: the unsigned
/// difference read as signed. Addresses 2^31 or more apart therefore compare the wrong way
/// round (10.0.0.1 sorts after 192.168.1.1), and the order is not transitive.
fn addr_cmp(a: Ipv4Addr, b: Ipv4Addr) -> i32 {
    u32::from(a).wrapping_sub(u32::from(b)) as i32
}

/// `ipvs_cmp_services`: fwmark (always 0 here), address family (always IPv4), protocol
/// number, address, port.
fn cmp_services(a: &ServiceKey, b: &ServiceKey) -> i32 {
    let r = i32::from(a.proto.number()) - i32::from(b.proto.number());
    if r != 0 {
        return r;
    }
    let r = addr_cmp(a.addr, b.addr);
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// `ipvs_cmp_dests`: address, then port.
fn cmp_dests(a: &Dest, b: &Dest) -> i32 {
    let r = addr_cmp(a.addr, b.addr);
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// glibc's `qsort`, which is a top-down merge sort (`msort_with_tmp` in stdlib/msort.c:
/// split at n/2, sort both halves, merge taking the left element while `cmp <= 0`). With
/// libipvs's non-transitive comparator the result depends on this exact algorithm, so it is
/// reproduced rather than left to `slice::sort_by` (which may even panic on an inconsistent
/// order). Sorts `idx`, a permutation of indices into the caller's items.
fn glibc_msort(idx: &mut [usize], cmp: &dyn Fn(usize, usize) -> i32) {
    let n = idx.len();
    if n <= 1 {
        return;
    }
    let (left, right) = idx.split_at_mut(n / 2);
    glibc_msort(left, cmp);
    glibc_msort(right, cmp);
    let mut merged = Vec::with_capacity(n);
    let (mut i, mut j) = (0, 0);
    while i < left.len() && j < right.len() {
        if cmp(left[i], right[j]) <= 0 {
            merged.push(left[i]);
            i += 1;
        } else {
            merged.push(right[j]);
            j += 1;
        }
    }
    merged.extend_from_slice(&left[i..]);
    merged.extend_from_slice(&right[j..]);
    idx.copy_from_slice(&merged);
}

/// The order `ipvsadm -L` lists services in, given them in kernel order. nfvs's kernel order
/// is creation order; the kernel's own is its service hash table's, which mixes in a
/// per-boot pointer, so inputs whose order matters (only non-transitive triples) cannot be
/// compared with a real director anyway.
pub fn sort_services(keys: &[ServiceKey]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..keys.len()).collect();
    glibc_msort(&mut idx, &|a, b| cmp_services(&keys[a], &keys[b]));
    idx
}

/// The order `ipvsadm -L` lists a service's real servers in, given in IPVS list order.
pub fn sort_dests(dests: &[Dest]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..dests.len()).collect();
    glibc_msort(&mut idx, &|a, b| cmp_dests(&dests[a], &dests[b]));
    idx
}

// ---------------------------------------------------------------------------------------
// -L

/// Which of ipvsadm's listing views a format selects. When several options are given the
/// first of stats, rate, thresholds, persistent-conn wins, as in `print_title` and
/// `print_service_entry`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Default,
    Stats,
    Rate,
    Thresholds,
    PersistentConn,
}

fn view(fmt: &ListFormat) -> View {
    if fmt.stats {
        View::Stats
    } else if fmt.rate {
        View::Rate
    } else if fmt.thresholds {
        View::Thresholds
    } else if fmt.persistent_conn {
        View::PersistentConn
    } else {
        View::Default
    }
}

/// `print_title`.
fn title(v: View) -> String {
    const PROT: &str = "Prot LocalAddress:Port";
    const REMOTE: &str = "  -> RemoteAddress:Port";
    match v {
        View::Stats => format!(
            "{PROT:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n{REMOTE}\n",
            "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"
        ),
        View::Rate => format!(
            "{PROT:<33} {:>8} {:>8} {:>8} {:>8} {:>8}\n{REMOTE}\n",
            "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"
        ),
        View::Thresholds => format!(
            "{PROT:<33} {:<10} {:<10} {:<10} {:<10}\n{REMOTE}\n",
            "Uthreshold", "Lthreshold", "ActiveConn", "InActConn"
        ),
        View::PersistentConn => format!(
            "{PROT:<33} {:<9} {:<11} {:<10} {:<10}\n{REMOTE}\n",
            "Weight", "PersistConn", "ActiveConn", "InActConn"
        ),
        View::Default => format!(
            "{PROT} Scheduler Flags\n{REMOTE}           Forward Weight ActiveConn InActConn\n"
        ),
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn push_counters(out: &mut String, c: &Counters, exact: bool) {
    for n in [c.conns, c.inpkts, c.outpkts, c.inbytes, c.outbytes] {
        out.push_str(&largenum(n, exact));
    }
}

fn push_rates(out: &mut String, r: &Rates, exact: bool) {
    for n in [r.cps, r.inpps, r.outpps, r.inbps, r.outbps] {
        out.push_str(&largenum(n, exact));
    }
}

/// `print_service_entry` for one service and its real servers, listing mode.
fn list_entry(
    out: &mut String,
    spec: &ServiceSpec,
    dests: &[Dest],
    fmt: &ListFormat,
    stats: &dyn StatsSource,
    names: &PortNames,
) {
    let key = &spec.key;
    let v = view(fmt);
    let vname = addrport(key.addr, key.port, key.proto, fmt.numeric, names);
    let svc_name = truncated(format!("{:<4} {vname}", proto_name(key.proto)), 33);
    match v {
        View::Stats => {
            let _ = write!(out, "{svc_name:<33}");
            push_counters(out, &stats.service(key).0, fmt.exact);
        }
        View::Rate => {
            let _ = write!(out, "{svc_name:<33}");
            push_rates(out, &stats.service(key).1, fmt.exact);
        }
        View::Default | View::Thresholds | View::PersistentConn => {
            let _ = write!(out, "{svc_name} {}", spec.sched_name);
            let flags = &spec.sched_opts.flags;
            if any_flag(flags) {
                let _ = write!(out, " ({})", sched_flag_names(&spec.sched_name, flags));
            }
            if let Some(timeout) = spec.persistent {
                let _ = write!(out, " persistent {timeout}");
                if spec.netmask != Ipv4Addr::BROADCAST {
                    let _ = write!(out, " mask {}", spec.netmask);
                }
            }
        }
    }
    out.push('\n');

    let order: Vec<usize> = if fmt.nosort { (0..dests.len()).collect() } else { sort_dests(dests) };
    for d in order.into_iter().map(|i| &dests[i]) {
        let dname = truncated(addrport(d.addr, d.port, key.proto, fmt.numeric, names), 28);
        match v {
            View::Stats => {
                let _ = write!(out, "  -> {dname:<28}");
                push_counters(out, &stats.dest(key, d.id).0, fmt.exact);
            }
            View::Rate => {
                let r = stats.dest(key, d.id).1;
                let _ = write!(out, "  -> {dname:<28} {:>8} {:>8} {:>8}", r.cps, r.inpps, r.outpps);
                out.push_str(&largenum(r.inbps, fmt.exact));
                out.push_str(&largenum(r.outbps, fmt.exact));
            }
            View::Thresholds => {
                let _ = write!(
                    out,
                    "  -> {dname:<28} {:<10} {:<10} {:<10} {:<10}",
                    d.u_threshold, d.l_threshold, d.active, d.inactive
                );
            }
            View::PersistentConn => {
                let _ = write!(out, "  -> {dname:<28} {:<9} {:<11} {:<10} {:<10}", d.weight, d.persist, d.active, d.inactive);
            }
            // nfvs forwards by NAT only, so the method is always Masq.
            View::Default => {
                let _ = write!(out, "  -> {dname:<28} {:<7} {:<6} {:<10} {:<10}", "Masq", d.weight, d.active, d.inactive);
            }
        }
        out.push('\n');
    }
}

/// `ipvsadm -L [options]` (all services, after the version line) or `ipvsadm -L -t
/// VIP:PORT [options]` (one service, no version line). `fmt` selects `-n`, `--stats`,
/// `--rate`, `--thresholds`, `--persistent-conn`, `--exact` and `--nosort`; counters and
/// rates come from `stats`, port names (without `-n`) from `names`.
pub fn list(
    table: &Table,
    service: Option<&ServiceKey>,
    fmt: &ListFormat,
    stats: &dyn StatsSource,
    names: &PortNames,
) -> Result<String, ListError> {
    let mut out = String::new();
    let services = table.services();
    match service {
        Some(key) => {
            let svc = services.iter().find(|s| s.spec.key == *key).ok_or(ListError::NoSuchService)?;
            out.push_str(&title(view(fmt)));
            list_entry(&mut out, &svc.spec, &svc.dests, fmt, stats, names);
        }
        None => {
            let _ = writeln!(out, "IP Virtual Server version {IPVS_VERSION} (size={CONN_TAB_SIZE})");
            out.push_str(&title(view(fmt)));
            let keys: Vec<ServiceKey> = services.iter().map(|s| s.spec.key).collect();
            let order: Vec<usize> = if fmt.nosort { (0..keys.len()).collect() } else { sort_services(&keys) };
            for s in order.into_iter().map(|i| &services[i]) {
                list_entry(&mut out, &s.spec, &s.dests, fmt, stats, names);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// -S

/// One service in `-S` form (`print_service_entry` with FMT_RULE): the `-A` line, then one
/// `-a` line per real server, sorted. Thresholds are never printed (ipvsadm loses them too),
/// `-M` only with `-p` and only when not /32, `-b` whenever a scheduler flag is set.
fn save_entry(out: &mut String, spec: &ServiceSpec, dests: &[Dest], numeric: bool, names: &PortNames) {
    let key = &spec.key;
    let svc_name = format!("{} {}", key.proto.flag(), addrport(key.addr, key.port, key.proto, numeric, names));
    let _ = write!(out, "-A {svc_name} -s {}", spec.sched_name);
    if let Some(timeout) = spec.persistent {
        let _ = write!(out, " -p {timeout}");
        if spec.netmask != Ipv4Addr::BROADCAST {
            let _ = write!(out, " -M {}", spec.netmask);
        }
    }
    let flags = &spec.sched_opts.flags;
    if any_flag(flags) {
        let _ = write!(out, " -b {}", sched_flag_names(&spec.sched_name, flags));
    }
    out.push('\n');
    for d in sort_dests(dests).into_iter().map(|i| &dests[i]) {
        let dname = addrport(d.addr, d.port, key.proto, numeric, names);
        let _ = writeln!(out, "-a {svc_name} -r {dname} -m -w {}", d.weight);
    }
}

/// `ipvsadm -S [-n]`: the table as commands that rebuild it, services and servers sorted as
/// `-L` sorts them. No header.
pub fn save(table: &Table, numeric: bool, names: &PortNames) -> String {
    let services = table.services();
    let keys: Vec<ServiceKey> = services.iter().map(|s| s.spec.key).collect();
    let mut out = String::new();
    for s in sort_services(&keys).into_iter().map(|i| &services[i]) {
        save_entry(&mut out, &s.spec, &s.dests, numeric, names);
    }
    out
}

// ---------------------------------------------------------------------------------------
// -L -c

/// One row of `ipvsadm -L -c`: a connection, as the daemon reads it from conntrack, or a
/// persistence template ([`template_rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnRow {
    pub proto: Protocol,
    /// Seconds until the entry expires (conntrack's CTA_TIMEOUT is already "remaining").
    pub expire_secs: u32,
    /// IPVS's state name (`ESTABLISHED`, `SYN_RECV`, `TIME_WAIT`, ..., `UDP` for UDP, `NONE`
    /// for a template).
    pub state: String,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub rs: SocketAddrV4,
}

/// `ipvsadm -L -c [-n] [--persistent-conn]` (`list_conn`/`print_conn`). Rows are printed in
/// the order given (ipvsadm prints /proc/net/ip_vs_conn in hash order, unsorted). With
/// `--persistent-conn` the header gains `pe name` and `pe_data` columns; rows only carry them
/// for connections with a persistence engine, which nfvs never has.
pub fn connections(rows: &[ConnRow], fmt: &ListFormat, names: &PortNames) -> String {
    let mut out = String::from("IPVS connection entries\n");
    if fmt.persistent_conn {
        let _ = writeln!(
            out,
            "pro expire {:<11} {:<18} {:<18} {:<18} {:<16} pe_data",
            "state", "source", "virtual", "destination", "pe name"
        );
    } else {
        let _ = writeln!(out, "pro expire {:<11} {:<18} {:<18} destination", "state", "source", "virtual");
    }
    for r in rows {
        let name = |a: &SocketAddrV4| addrport(*a.ip(), a.port(), r.proto, fmt.numeric, names);
        let expire = format!("{:02}:{:02}", r.expire_secs / 60, r.expire_secs % 60);
        let _ = writeln!(
            out,
            "{:<3} {:<6} {:<11} {:<18} {:<18} {}",
            proto_name(r.proto),
            expire,
            r.state,
            name(&r.client),
            name(&r.vip),
            name(&r.rs)
        );
    }
    out
}

/// The state name IPVS gives a persistence template (`ip_vs_state_name` in ip_vs_proto.c, a
/// template's state being IP_VS_CTPL_S_NONE; lvs-semantics.md §6). Kernels as recent as 6.12
/// turn it to `ASSURED` once a connection it controls reaches ESTABLISHED
/// (`ip_vs_control_assure_ct`, include/net/ip_vs.h); nfvs's templates do not record that.
pub const TEMPLATE_STATE: &str = "NONE";

/// The ports `ip_vs_check_template` gives a template it invalidates (dport and vport 0xffff,
/// cport 0) when it unhashes it and hashes it again, so it stays listed until its timer ends.
const INVALIDATED_PORT: u16 = 0xffff;

/// The persistence templates of every persistent service as `-L -c` rows, as
/// /proc/net/ip_vs_conn shows them (`ip_vs_conn_seq_show` in ip_vs_conn.c; templates are
/// made in `ip_vs_sched_persist`, ip_vs_core.c): source = the client address AND the
/// service's netmask, port 0; virtual = the VIP and the template's vport (the service port, or
/// 0 for port-zero and FTP services); destination = the chosen server and its port (0 where the
/// vport is 0); expire = the seconds left on the template's timer at `now` (truncated, as the
/// kernel's jiffies-to-seconds is). Services in table order, templates in creation order.
///
/// The caller runs the templates' timers up to `now` first ([`Table::expire_templates`]), as
/// the kernel's timers would have. A template whose real server has been deleted is left out:
/// nfvs's templates keep only the server's identity, not its address, which IPVS still prints.
pub fn template_rows(table: &Table, now: Duration) -> Vec<ConnRow> {
    let mut rows = Vec::new();
    for svc in table.services() {
        for t in svc.persist.templates() {
            let Some(dest) = svc.dests.iter().find(|d| d.id == t.dest) else { continue };
            let findable = svc.persist.get(&t.key).is_some_and(|live| live.id == t.id);
            let (vport, dport) = match (findable, t.key.vport) {
                (false, _) => (INVALIDATED_PORT, INVALIDATED_PORT),
                (true, 0) => (0, 0),
                (true, vport) => (vport, dest.port),
            };
            rows.push(ConnRow {
                proto: t.key.proto,
                expire_secs: u32::try_from(t.expires.saturating_sub(now).as_secs()).unwrap_or(u32::MAX),
                state: TEMPLATE_STATE.to_string(),
                client: SocketAddrV4::new(t.key.client, 0),
                vip: SocketAddrV4::new(t.key.vaddr, vport),
                rs: SocketAddrV4::new(dest.addr, dport),
            });
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------
// --timeout

/// `ipvsadm -L --timeout`.
pub fn timeouts(tcp: u32, tcpfin: u32, udp: u32) -> String {
    format!("Timeout (tcp tcpfin udp): {tcp} {tcpfin} {udp}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::SchedOptions;
    use crate::service::DestId;
    use crate::stats::NoStats;

    fn key(addr: [u8; 4], port: u16) -> ServiceKey {
        ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::from(addr), port }
    }

    fn spec(sched: &str, flags: SchedFlags, persistent: Option<u32>, netmask: Ipv4Addr) -> ServiceSpec {
        ServiceSpec {
            key: key([192, 168, 199, 200], 80),
            sched_name: sched.to_string(),
            sched_opts: SchedOptions { flags, ..SchedOptions::default() },
            persistent,
            netmask,
        }
    }

    fn line_of(spec: &ServiceSpec) -> String {
        let mut out = String::new();
        list_entry(&mut out, spec, &[], &ListFormat { numeric: true, ..Default::default() }, &NoStats, &PortNames::none());
        out
    }

    fn save_of(spec: &ServiceSpec) -> String {
        let mut out = String::new();
        save_entry(&mut out, spec, &[], true, &PortNames::none());
        out
    }

    // sh and mh are built by other modules; their flag names are checked here on a bare
    // ServiceSpec, which needs no scheduler instance.
    #[test]
    fn sh_and_mh_flag_names() {
        let both = SchedFlags { flag1: true, flag2: true, flag3: false };
        let s = spec("sh", both, None, Ipv4Addr::BROADCAST);
        assert_eq!(line_of(&s), "TCP  192.168.199.200:80 sh (sh-fallback,sh-port)\n");
        assert_eq!(save_of(&s), "-A -t 192.168.199.200:80 -s sh -b sh-fallback,sh-port\n");
        let s = spec("mh", SchedFlags { flag2: true, ..Default::default() }, Some(60), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(line_of(&s), "TCP  192.168.199.200:80 mh (mh-port) persistent 60 mask 255.255.0.0\n");
        assert_eq!(save_of(&s), "-A -t 192.168.199.200:80 -s mh -p 60 -M 255.255.0.0 -b mh-port\n");
    }

    /// sh has no name for flag-3: ipvsadm prints the empty list it builds.
    #[test]
    fn sh_flag3_prints_empty() {
        let s = spec("sh", SchedFlags { flag3: true, ..Default::default() }, None, Ipv4Addr::BROADCAST);
        assert_eq!(line_of(&s), "TCP  192.168.199.200:80 sh ()\n");
        assert_eq!(save_of(&s), "-A -t 192.168.199.200:80 -s sh -b \n");
    }

    #[test]
    fn mask_only_with_persistence() {
        // A netmask without -p (possible through -E) prints nowhere, as in ipvsadm.
        let s = spec("rr", SchedFlags::default(), None, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(line_of(&s), "TCP  192.168.199.200:80 rr\n");
        assert_eq!(save_of(&s), "-A -t 192.168.199.200:80 -s rr\n");
    }

    #[test]
    fn long_names_are_cut() {
        let names = PortNames::parse("averyveryverylongservicename 8080/tcp\n");
        let s = ServiceSpec { key: key([192, 168, 199, 200], 8080), ..spec("rr", SchedFlags::default(), None, Ipv4Addr::BROADCAST) };
        let dests = [Dest::new(DestId(0), Ipv4Addr::new(192, 168, 226, 130), 8080, 1)];
        let mut out = String::new();
        list_entry(&mut out, &s, &dests, &ListFormat::default(), &NoStats, &names);
        // Both names keep 12 characters of the port name: "TCP  192.168.199.200:" is 21 of
        // the service's 33, "192.168.226.130:" 16 of the server's 28.
        assert_eq!(
            out,
            "TCP  192.168.199.200:averyveryver rr\n  -> 192.168.226.130:averyveryver Masq    1      0          0         \n"
        );
        // -S never cuts.
        let mut out = String::new();
        save_entry(&mut out, &s, &dests, false, &names);
        assert!(out.contains("-r 192.168.226.130:averyveryverylongservicename -m"));
    }

    #[test]
    fn msort_is_glibc_merge_order() {
        // Non-transitive triple: a < b, b < c, c < a under the signed-difference compare.
        let a = Ipv4Addr::from(0x0000_0001);
        let b = Ipv4Addr::from(0x6000_0000);
        let c = Ipv4Addr::from(0xC000_0000);
        assert!(addr_cmp(a, b) < 0 && addr_cmp(b, c) < 0 && addr_cmp(c, a) < 0);
        let k = |x| ServiceKey { proto: Protocol::Tcp, addr: x, port: 80 };
        // [a, b, c]: split [a] | [b, c]; right stays [b, c]; merge a vs b -> a, then b, c.
        assert_eq!(sort_services(&[k(a), k(b), k(c)]), [0, 1, 2]);
        // [c, a, b]: right [a, b]; merge c vs a: c - a < 0 -> c first; then a, b.
        assert_eq!(sort_services(&[k(c), k(a), k(b)]), [0, 1, 2]);
        // [b, c, a]: right [c, a] sorts to [c, a] (c < a); merge b vs c -> b; then c, a.
        assert_eq!(sort_services(&[k(b), k(c), k(a)]), [0, 1, 2]);
        // [a, c, b]: right [c, b] -> [b, c] (b < c); merge a vs b -> a, then b, c.
        assert_eq!(sort_services(&[k(a), k(c), k(b)]), [0, 2, 1]);
    }
}
