//! Issue 3's schedulers against the real kernel: the seed's LVS-NAT lab in network namespaces
//! (client, director running nfvs, nginx real servers), with the decisions read from the
//! daemon's log (`conn client=IP:PORT vip=VIP:PORT sched=NAME rs=RIP:RPORT`) and the connection
//! counts from `nfvs adm -L -n`. Every expected sequence is derived by hand from
//! `shared/docs/lvs-semantics.md`; the derivation is in the comment next to it.
//!
//! Needs root; run through scripts/test.sh, or `cargo test --test sched_lab --
//! --test-threads=2` as root.

mod common;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use common::*;
use nfvs::sched::hash::hash_32;

/// The second client address some tests add next to [`CLIENT_IP`].
const CLIENT2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 199, 2);

/// How long the daemon may take to log a decision or to count a state change reported by a
/// conntrack event: generous for a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Rules files and the daemon

/// A rules file under the target's tmp dir, removed on drop.
struct RulesFile(PathBuf);

impl RulesFile {
    fn new(lab: &Lab, name: &str, text: &str) -> RulesFile {
        let path = tmp_dir().join(format!("{}-{name}.rules", lab.prefix()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        RulesFile(path)
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The lab's virtual service with options `opts` (`-s wlc`, `-s rr -p 60`, ...) and real
/// servers `(address, weight)` added in the order given, so the IPVS list order is the reverse
/// (lvs-semantics.md §1.2).
fn service(opts: &str, servers: &[(Ipv4Addr, u32)]) -> String {
    let mut text = format!("-A -t {VIP}:80 {opts}\n");
    for (rs, w) in servers {
        text.push_str(&format!("-a -t {VIP}:80 -r {rs}:80 -m -w {w}\n"));
    }
    text
}

/// `nfvs run --rules FILE --masquerade 192.168.226.0/24` in the director.
fn start_nfvs(lab: &Lab, rules: &RulesFile) -> Daemon {
    lab.nfvs_with_rules(&rules.0)
        .start()
        .unwrap_or_else(|e| panic!("nfvs did not start: {e:#}"))
}

/// SIGKILL (a crash: no clean-up, table and conntrack entries stay) and reap.
fn crash(d: &mut Daemon) {
    d.signal(libc::SIGKILL).unwrap();
    d.wait().unwrap();
}

/// `nfvs adm ARGS` in the director; panics unless it succeeds; returns its stdout.
fn adm(lab: &Lab, args: &[&str]) -> String {
    let out = lab.command(Role::Director, nfvs_bin()).arg("adm").args(args).stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "nfvs adm {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------
// The decision log

/// The (last) decision logged for a connection from `client`, waiting for it to appear.
fn decision_of(d: &Daemon, client: SocketAddrV4) -> Decision {
    let mut found = None;
    wait_until(SETTLE, || {
        found = decisions(d).into_iter().rev().find(|x| x.client == client);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no decision logged for {client}; the log:\n{}", d.log()))
}

// ---------------------------------------------------------------------------------------
// Client connections

/// A short HTTP request to the VIP from the client (from `src` if given), closed at once.
/// Returns the client's address and port (from curl's `%{local_ip}:%{local_port}`) and the
/// real server that answered (from nginx's `hello, i am from <ip>`).
fn get(lab: &Lab, src: Option<Ipv4Addr>) -> (SocketAddrV4, Ipv4Addr) {
    let mut cmd = lab.command(Role::Client, "curl");
    cmd.args(["-sS", "--connect-timeout", "3", "--max-time", "10", "-w", "%{local_ip}:%{local_port}"]);
    if let Some(src) = src {
        cmd.args(["--interface", &src.to_string()]);
    }
    let out = cmd.arg(format!("http://{VIP}/")).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl failed ({}): {}{text}", out.status, String::from_utf8_lossy(&out.stderr));
    let mut lines = text.lines();
    let rs = lines
        .next()
        .and_then(|l| l.trim().strip_prefix("hello, i am from "))
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {text:?}"));
    let local = lines.next().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("no local address in {text:?}"));
    (local, rs)
}

/// A [`get`] whose decision log line must agree with the answering server; returns that server.
fn get_checked(lab: &Lab, d: &Daemon, src: Option<Ipv4Addr>) -> Ipv4Addr {
    let (local, rs) = get(lab, src);
    let dec = decision_of(d, local);
    assert_eq!(dec.rs, Some(rs), "the log says {dec:?} but {rs} answered");
    rs
}

/// A TCP connection to the VIP from the client, held open without a request (nginx waits
/// `client_header_timeout`, 60 s, before it gives up on it), and the server it went to.
struct Held {
    stream: TcpStream,
    rs: Ipv4Addr,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}->{}", self.stream.local_addr().ok(), self.rs)
    }
}

/// Opens one held connection (the handshake is complete when it returns) and reads from the
/// decision log where it went.
fn hold(lab: &Lab, d: &Daemon) -> Held {
    let vip = SocketAddr::from((VIP, 80));
    let stream = lab
        .in_ns(Role::Client, || TcpStream::connect_timeout(&vip, Duration::from_secs(3)))
        .unwrap_or_else(|e| panic!("connect {vip} from the client: {e}; nfvs log:\n{}", d.log()));
    let local = match stream.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        other => panic!("IPv4 expected, got {other}"),
    };
    let rs = decision_of(d, local).rs.unwrap_or_else(|| panic!("{local} was not scheduled"));
    Held { stream, rs }
}

/// Closes a held connection (the client sends FIN; nginx, with no request pending, closes
/// too, and the director's entry moves on to TIME_WAIT: inactive, lvs-semantics.md §3.3).
fn close(h: Held) {
    drop(h.stream);
}


// ---------------------------------------------------------------------------------------
// `nfvs adm -L -n`

/// One real server line of `-L -n`: weight, ActiveConn, InActConn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    weight: u32,
    active: u32,
    inactive: u32,
}

/// The real servers of the listing (all services; the lab has one), by address.
fn parse_listing(text: &str) -> BTreeMap<Ipv4Addr, Row> {
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim_start().strip_prefix("-> ") else { continue };
        let w: Vec<&str> = rest.split_whitespace().collect();
        // `-> RemoteAddress:Port Forward Weight ActiveConn InActConn`; the title line has
        // `RemoteAddress:Port` there and is skipped by the parse.
        let (Some(addr), Some(n)) = (w.first().and_then(|a| SocketAddrV4::from_str(a).ok()), w.get(2..5)) else {
            continue;
        };
        let num = |s: &str| s.parse::<u32>().unwrap_or_else(|_| panic!("bad number {s:?} in {line:?}"));
        rows.insert(*addr.ip(), Row { weight: num(n[0]), active: num(n[1]), inactive: num(n[2]) });
    }
    rows
}

fn listing(lab: &Lab) -> BTreeMap<Ipv4Addr, Row> {
    parse_listing(&adm(lab, &["-L", "-n"]))
}

/// `(address, active, inactive)` of every server, in address order.
fn counts(lab: &Lab) -> Vec<(Ipv4Addr, u32, u32)> {
    listing(lab).into_iter().map(|(a, r)| (a, r.active, r.inactive)).collect()
}

/// Waits until `-L -n` shows exactly `want` (address order); panics with the last listing.
fn wait_counts(lab: &Lab, d: &Daemon, want: &[(Ipv4Addr, u32, u32)]) {
    let mut last = Vec::new();
    if !wait_until(SETTLE, || {
        last = counts(lab);
        last == want
    }) {
        panic!(
            "ActiveConn/InActConn: want {want:?}, got {last:?}\n{}\nconntrack:\n{}\nnfvs log:\n{}",
            adm(lab, &["-L", "-n"]),
            String::from_utf8_lossy(&lab.exec(Role::Director, &["conntrack", "-L"]).stdout),
            d.log()
        );
    }
}

/// wlc's choice (lvs-semantics.md §2.4) over `list`, in IPVS list order, of `(address,
/// weight, active, inactive)`, with the classic overhead 256*active + inactive.
fn wlc_choice(list: &[(Ipv4Addr, u32, u32, u32)]) -> Option<Ipv4Addr> {
    let oh = |a: u32, i: u32| 256 * i64::from(a) + i64::from(i);
    let mut least = *list.iter().find(|d| d.1 > 0)?;
    for &d in list {
        if oh(least.2, least.3) * i64::from(d.1) > oh(d.2, d.3) * i64::from(least.1) {
            least = d;
        }
    }
    Some(least.0)
}

/// The list (IPVS order: reverse of `added`) with the counts `-L -n` shows now.
fn list_with_counts(lab: &Lab, added: &[Ipv4Addr]) -> Vec<(Ipv4Addr, u32, u32, u32)> {
    let rows = listing(lab);
    added
        .iter()
        .rev()
        .map(|a| {
            let r = rows.get(a).unwrap_or_else(|| panic!("{a} not listed: {rows:?}"));
            (*a, r.weight, r.active, r.inactive)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The tests

/// wrr 3:1 over 40 connections: exactly 30 and 10, in the exact IPVS sequence.
///
/// Rules: `-a .130 -w 3`, then `-a .131 -w 1`, so the list is [.131 (1), .130 (3)]
/// (lvs-semantics.md §1.2). wrr state after the adds (§2.2): the first add gives di=3, mw=1,
/// cw=1; the second di=1, mw=3, cw stays 1. So the first round is at cw=1 (each server once,
/// list order): .131, .130. Then the cycle cw=3: .130; cw=2: .130; cw=1: .131, .130; repeat:
///
/// ```text
///  conn   1    2  |  3    4    5    6  |  7 ..10 | ... | 35 ..38 | 39   40
///  cw     1    1  |  3    2    1    1  |         |     |         |  3    2
///  rs   .131 .130 |.130 .130 .131 .130 | (same)  |     | (same)  |.130 .130
/// ```
/// 2 + 9 cycles of 4 + 2: .130 gets 1 + 27 + 2 = 30, .131 gets 1 + 9 = 10.
#[test]
fn wrr_3_to_1_over_40_connections() {
    require_root();
    let lab = Lab::up();
    let rules = RulesFile::new(&lab, "wrr31", &service("-s wrr", &[(RS1, 3), (RS2, 1)]));
    let d = start_nfvs(&lab, &rules);

    let got: Vec<Ipv4Addr> = (0..40).map(|_| get_checked(&lab, &d, None)).collect();

    let cycle = [RS1, RS1, RS2, RS1];
    let want: Vec<Ipv4Addr> = [RS2, RS1].into_iter().chain(cycle.iter().copied().cycle().take(38)).collect();
    assert_eq!(got.iter().filter(|&&r| r == RS1).count(), 30, "{got:?}");
    assert_eq!(got.iter().filter(|&&r| r == RS2).count(), 10, "{got:?}");
    assert_eq!(got, want);
    assert!(decisions(&d).iter().all(|x| x.sched == "wrr"));
    // All 40 are closed: each lingers inactive (TIME_WAIT, 120 s) on its server.
    wait_counts(&lab, &d, &[(RS1, 0, 30), (RS2, 0, 10)]);
}

/// wlc with held-open connections: the daemon counts them active, and each new connection
/// goes to the least loaded server (overhead 256*active + inactive, weights 1, ties to the
/// first in list order; lvs-semantics.md §2.4).
///
/// Rules add .130, .131, .132, so the list is [.132, .131, .130].
/// - 5 held: .132 (all idle, first), .131 (the first of the idle ones), .130, then all at 256:
///   .132, .131. Counts: .130 (1,0), .131 (2,0), .132 (2,0).
/// - 10 short requests: .130 every time (256 + k < 512 for k closed ones). .130 (1,10).
/// - the two held on .132 close: .132 (0,2), overhead 2, the least: 3 requests go to .132.
/// - 2 more held: .132 (overhead 5 < 266), then .132 again (261 < 266); a third: .130
///   (266 < 512, 517).
#[test]
fn wlc_sends_new_connections_to_the_least_loaded() {
    require_root();
    let lab = Lab::up_with(LabConfig { rs3: true });
    let added = [RS1, RS2, RS3];
    let rules = RulesFile::new(&lab, "wlc", &service("-s wlc", &[(RS1, 1), (RS2, 1), (RS3, 1)]));
    let d = start_nfvs(&lab, &rules);

    // Each decision must be wlc's choice over the counts `-L -n` showed just before it.
    let check_oracle = |rs: Ipv4Addr, before: &[(Ipv4Addr, u32, u32, u32)]| {
        assert_eq!(Some(rs), wlc_choice(before), "wlc over {before:?} (list order)");
    };

    let mut held = Vec::new();
    for _ in 0..5 {
        let before = list_with_counts(&lab, &added);
        let h = hold(&lab, &d);
        check_oracle(h.rs, &before);
        held.push(h);
    }
    assert_eq!(held.iter().map(|h| h.rs).collect::<Vec<_>>(), [RS3, RS2, RS1, RS3, RS2]);
    wait_counts(&lab, &d, &[(RS1, 1, 0), (RS2, 2, 0), (RS3, 2, 0)]);

    for i in 0..10 {
        let before = list_with_counts(&lab, &added);
        let rs = get_checked(&lab, &d, None);
        check_oracle(rs, &before);
        assert_eq!(rs, RS1, "request {i}");
        // Wait for the close to be counted, so the next choice sees it.
        wait_counts(&lab, &d, &[(RS1, 1, i + 1), (RS2, 2, 0), (RS3, 2, 0)]);
    }

    let (on_rs3, rest): (Vec<Held>, Vec<Held>) = held.into_iter().partition(|h| h.rs == RS3);
    on_rs3.into_iter().for_each(close);
    let mut held = rest;
    wait_counts(&lab, &d, &[(RS1, 1, 10), (RS2, 2, 0), (RS3, 0, 2)]);
    for i in 0..3 {
        let before = list_with_counts(&lab, &added);
        let rs = get_checked(&lab, &d, None);
        check_oracle(rs, &before);
        assert_eq!(rs, RS3, "request {i} after the .132 connections closed");
        wait_counts(&lab, &d, &[(RS1, 1, 10), (RS2, 2, 0), (RS3, 0, 3 + i)]);
    }

    let mut got = Vec::new();
    for _ in 0..3 {
        let before = list_with_counts(&lab, &added);
        let h = hold(&lab, &d);
        check_oracle(h.rs, &before);
        got.push(h.rs);
        held.push(h);
    }
    assert_eq!(got, [RS3, RS3, RS1]);
    wait_counts(&lab, &d, &[(RS1, 2, 10), (RS2, 2, 0), (RS3, 2, 5)]);
    drop(held);
}

/// sh keeps each of two client addresses on one server, the one the kernel's hash picks.
///
/// Rules add .130, .131, .132 (weights 1): the list is [.132, .131, .130] and the 256 buckets
/// are filled cyclically, so bucket b belongs to list[b mod 3] (§2.12). Key: the client
/// address (no sh-port). 192.168.199.1 hashes to 160 (Appendix A.1) -> list[1] = .131;
/// 192.168.199.2 hashes to 2 -> list[2] = .130.
#[test]
fn sh_keeps_each_client_address_on_one_server() {
    require_root();
    let lab = Lab::up_with(LabConfig { rs3: true });
    lab.exec_ok(Role::Client, &["ip", "addr", "add", &format!("{CLIENT2_IP}/24"), "dev", "eth0"]);
    let rules = RulesFile::new(&lab, "sh", &service("-s sh", &[(RS1, 1), (RS2, 1), (RS3, 1)]));
    let d = start_nfvs(&lab, &rules);

    let list = [RS3, RS2, RS1];
    let bucket = |a: Ipv4Addr| hash_32(u32::from(a), 8);
    assert_eq!(bucket(CLIENT_IP), 160, "Appendix A.1");
    let want = |a: Ipv4Addr| list[bucket(a) as usize % list.len()];
    assert_eq!((want(CLIENT_IP), want(CLIENT2_IP)), (RS2, RS1));

    let mut got: BTreeMap<Ipv4Addr, Vec<Ipv4Addr>> = BTreeMap::new();
    for _ in 0..10 {
        for src in [CLIENT_IP, CLIENT2_IP] {
            let (local, rs) = get(&lab, Some(src));
            assert_eq!(*local.ip(), src, "curl --interface {src} used {local}");
            assert_eq!(decision_of(&d, local).rs, Some(rs));
            got.entry(src).or_default().push(rs);
        }
    }
    assert_eq!(got[&CLIENT_IP], vec![RS2; 10], "192.168.199.1");
    assert_eq!(got[&CLIENT2_IP], vec![RS1; 10], "192.168.199.2");
    assert!(decisions(&d).iter().all(|x| x.sched == "sh"));
}

/// A server edited to weight 0 gets no new connections, while a download already running on
/// it completes intact (lvs-semantics.md §4).
#[test]
fn weight_0_quiesces_while_a_running_download_completes() {
    require_root();
    let lab = Lab::up();
    let d = lab.nfvs().start().unwrap();
    let out = tmp_dir().join(format!("{}-quiesce.bin", lab.prefix()));
    let mut curl = lab.start_download(&out, "4M");
    // The seed's wrr list is [.131, .130]: the download goes to .131 (§2.2 WRR-1).
    assert!(wait_until(SETTLE, || !decisions(&d).is_empty()), "no decision logged:\n{}", d.log());
    let busy = decisions(&d)[0].rs.expect("the download was not scheduled");
    assert_eq!(busy, RS2);
    let other = RS1;
    assert!(
        wait_until(SETTLE, || std::fs::metadata(&out).map(|m| m.len() > 1_000_000).unwrap_or(false)),
        "download did not start"
    );

    adm(&lab, &["-e", "-t", &format!("{VIP}:80"), "-r", &format!("{busy}:80"), "-m", "-w", "0"]);
    let rows = listing(&lab);
    assert_eq!(rows[&busy], Row { weight: 0, active: 1, inactive: 0 }, "the download is still active on {busy}");

    let got: Vec<Ipv4Addr> = (0..10).map(|_| get_checked(&lab, &d, None)).collect();
    assert_eq!(got, vec![other; 10]);
    let status = curl.wait().unwrap();
    assert!(status.success(), "the download failed: {status}\nnfvs log:\n{}", d.log());
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
    assert_eq!(sha256_file(&out), lab.big_bin_sha256());
    let _ = std::fs::remove_file(&out);
    // The servers agree: one request from the client (the download) on the quiesced one, ten
    // on the other. (lab.sh's readiness probe from the director is in the logs too.)
    let requests = |r: Role| {
        let log = std::fs::read_to_string(lab.access_log(r)).unwrap_or_default();
        log.lines().filter(|l| l.split_whitespace().next() == Some(&*CLIENT_IP.to_string())).count()
    };
    assert_eq!((requests(Role::Rs2), requests(Role::Rs1)), (1, 10));
    wait_counts(&lab, &d, &[(RS1, 0, 10), (RS2, 0, 1)]);
}

/// Counts survive a daemon crash: the restarted daemon rebuilds ActiveConn/InActConn from a
/// conntrack dump, follows the old connections' later events, and schedules with those counts
/// as if it had never stopped (issue 3, "connection accounting").
///
/// wlc over [.131, .130] (rules add .130 then .131), weights 1:
/// - 3 held: .131 (idle, first), .130, .131. Then 4 short requests: .130 each time
///   (256 + k < 512). Counts: .130 (1,4), .131 (2,0).
/// - SIGKILL, restart: the same counts. The next request goes to .130 (260 < 512); a daemon
///   that had forgotten the counts would send it to .131 (all idle: first in list).
/// - a held connection from before the crash closes: .131 (1,1).
#[test]
fn counts_survive_a_daemon_restart() {
    require_root();
    let lab = Lab::up();
    let rules = RulesFile::new(&lab, "restart", &service("-s wlc", &[(RS1, 1), (RS2, 1)]));
    let mut d = start_nfvs(&lab, &rules);

    let mut held: Vec<Held> = (0..3).map(|_| hold(&lab, &d)).collect();
    assert_eq!(held.iter().map(|h| h.rs).collect::<Vec<_>>(), [RS2, RS1, RS2]);
    for i in 0..4 {
        assert_eq!(get_checked(&lab, &d, None), RS1, "request {i}");
        wait_counts(&lab, &d, &[(RS1, 1, i + 1), (RS2, 2, 0)]);
    }
    let before = counts(&lab);
    assert_eq!(before, [(RS1, 1, 4), (RS2, 2, 0)]);

    crash(&mut d);
    let d = start_nfvs(&lab, &rules);
    assert_eq!(counts(&lab), before, "counts after the restart; nfvs log:\n{}", d.log());
    assert!(d.log().contains("balanced by an earlier run"), "{}", d.log());

    assert_eq!(get_checked(&lab, &d, None), RS1, "wlc after the restart must see the old counts");
    wait_counts(&lab, &d, &[(RS1, 1, 5), (RS2, 2, 0)]);

    // The old connections' events still count: one held on .131 closes.
    let i = held.iter().position(|h| h.rs == RS2).unwrap();
    close(held.remove(i));
    wait_counts(&lab, &d, &[(RS1, 1, 5), (RS2, 1, 1)]);
    drop(held);
}

/// Persistence (`-p 60`, lvs-semantics.md §6, example P-1): all connections of one client go
/// to the server its template names, with no scheduler call; a second client address gets a
/// template of its own, and rr advances only on template creation.
///
/// rr over [.131, .130]: client .1 creates a template -> .131; its 9 more connections are
/// template hits -> .131. Client .2 creates the second template -> .130 (rr moved once); its
/// 9 more -> .130.
#[test]
fn persistence_keeps_a_client_on_one_server() {
    require_root();
    let lab = Lab::up();
    lab.exec_ok(Role::Client, &["ip", "addr", "add", &format!("{CLIENT2_IP}/24"), "dev", "eth0"]);
    let rules = RulesFile::new(&lab, "persist", &service("-s rr -p 60", &[(RS1, 1), (RS2, 1)]));
    let d = start_nfvs(&lab, &rules);

    for (src, want) in [(CLIENT_IP, RS2), (CLIENT2_IP, RS1)] {
        for i in 0..10 {
            let (local, rs) = get(&lab, Some(src));
            let dec = decision_of(&d, local);
            assert_eq!((dec.rs, rs), (Some(want), want), "client {src}, connection {i}");
            assert_eq!(dec.persistent, i > 0, "client {src}, connection {i}: template hit? {dec:?}");
        }
    }
    assert!(decisions(&d).iter().all(|x| x.sched == "rr"));
    // One template per client address, each on its own server. `--persistent-conn` rows are
    // `-> RemoteAddress:Port Weight PersistConn ActiveConn InActConn` (no Forward column).
    let pc = adm(&lab, &["-L", "-n", "--persistent-conn"]);
    let persist: Vec<(String, String)> = pc
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("-> "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            SocketAddrV4::from_str(w[0]).ok().map(|_| (w[0].to_owned(), w.get(2).copied().unwrap_or("").to_owned()))
        })
        .collect();
    assert_eq!(
        persist,
        [(format!("{RS1}:80"), "1".to_owned()), (format!("{RS2}:80"), "1".to_owned())],
        "PersistConn:\n{pc}"
    );
}

/// Persistence templates survive a daemon crash (issue 3: "On start, rebuild the counts (and
/// lblc/lblcr tables, persistence templates) from a conntrack dump, so a restarted daemon
/// schedules as if it had never stopped").
///
/// As above, client .1 -> .131 and client .2 -> .130, with templates of 60 s. After the crash
/// (a few seconds later, the templates still valid), client .2's next connection must go to
/// .130 by its template. A daemon with no templates would run rr from the start: .131.
#[test]
fn persistence_templates_survive_a_daemon_restart() {
    require_root();
    let lab = Lab::up();
    lab.exec_ok(Role::Client, &["ip", "addr", "add", &format!("{CLIENT2_IP}/24"), "dev", "eth0"]);
    let rules = RulesFile::new(&lab, "persist-restart", &service("-s rr -p 60", &[(RS1, 1), (RS2, 1)]));
    let mut d = start_nfvs(&lab, &rules);
    assert_eq!(get_checked(&lab, &d, Some(CLIENT_IP)), RS2);
    assert_eq!(get_checked(&lab, &d, Some(CLIENT2_IP)), RS1);

    crash(&mut d);
    let d = start_nfvs(&lab, &rules);
    let (local, rs) = get(&lab, Some(CLIENT2_IP));
    let dec = decision_of(&d, local);
    assert_eq!(dec.rs, Some(rs));
    assert_eq!(rs, RS1, "client {CLIENT2_IP} left its persistent server after the restart: {dec:?}");
    assert!(dec.persistent, "a template hit expected: {dec:?}");
    assert_eq!(get_checked(&lab, &d, Some(CLIENT_IP)), RS2, "client {CLIENT_IP} after the restart");
}

/// lblc's destination cache survives a daemon crash (issue 3, as above).
///
/// lblc over [.131 (w2), .130 (w2)] (rules add .130 then .131), all connections to the VIP
/// (lvs-semantics.md §2.9, LBLC-1): the first goes to .131 (wlc, all idle, first in list) and
/// the cache maps the VIP to .131; the second is a cache hit (.131 has 1 active, not more than
/// its weight 2). Held open: .131 (2,0). After the crash the third connection is again a hit
/// (.131 has 2 active, not > 2): .131. A daemon with an empty cache takes wlc's choice
/// instead: .130 (0 < 512/2).
#[test]
fn lblc_cache_survives_a_daemon_restart() {
    require_root();
    let lab = Lab::up();
    let rules = RulesFile::new(&lab, "lblc-restart", &service("-s lblc", &[(RS1, 2), (RS2, 2)]));
    let mut d = start_nfvs(&lab, &rules);
    let mut held: Vec<Held> = (0..2).map(|_| hold(&lab, &d)).collect();
    assert_eq!(held.iter().map(|h| h.rs).collect::<Vec<_>>(), [RS2, RS2]);

    crash(&mut d);
    let d = start_nfvs(&lab, &rules);
    wait_counts(&lab, &d, &[(RS1, 0, 0), (RS2, 2, 0)]);
    let h = hold(&lab, &d);
    assert_eq!(h.rs, RS2, "lblc forgot that the VIP is cached on {RS2}; nfvs log:\n{}", d.log());
    held.push(h);
    drop(held);
}

/// An upper threshold (`-x`) counts inactive (TIME_WAIT) connections too, so a server that
/// reached it stays out of rotation while its closed connections linger; the flag is rebuilt
/// after a crash; and it clears when the connections go away (lvs-semantics.md §5).
///
/// rr over [.131 (-x 2), .130] (rules add .130 then .131):
/// - 8 short requests: .131 (total 1), .130, .131 (total 2 >= 2: OVERLOAD), .130, then .130
///   only (rr skips .131).
/// - crash and restart: .131's two TIME_WAIT entries are counted again and set the flag: the
///   next two requests go to .130. (Without the flag, rr starting over would pick .131.)
/// - the two .131 entries are deleted (`conntrack -D`): DESTROY events, total 0, and with
///   `-y 0` the flag clears when 4*total < 3*u. rr resumes after .130 with .131.
#[test]
fn threshold_counts_time_wait_and_survives_a_restart() {
    require_root();
    let lab = Lab::up();
    let text = format!(
        "-A -t {VIP}:80 -s rr\n-a -t {VIP}:80 -r {RS1}:80 -m -w 1\n-a -t {VIP}:80 -r {RS2}:80 -m -w 1 -x 2\n"
    );
    let rules = RulesFile::new(&lab, "threshold", &text);
    let mut d = start_nfvs(&lab, &rules);

    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(get_checked(&lab, &d, None));
        // Each choice must see the previous connection's count.
        assert!(wait_until(SETTLE, || counts(&lab).iter().all(|c| c.1 == 0)), "connections did not close");
    }
    assert_eq!(got, [RS2, RS1, RS2, RS1, RS1, RS1, RS1, RS1]);
    wait_counts(&lab, &d, &[(RS1, 0, 6), (RS2, 0, 2)]);

    crash(&mut d);
    let d = start_nfvs(&lab, &rules);
    wait_counts(&lab, &d, &[(RS1, 0, 6), (RS2, 0, 2)]);
    let got: Vec<Ipv4Addr> = (0..2).map(|_| get_checked(&lab, &d, None)).collect();
    assert_eq!(got, [RS1, RS1], "{RS2} is at its threshold (2 TIME_WAIT connections)");

    lab.exec_ok(Role::Director, &["conntrack", "-D", "--reply-src", &RS2.to_string()]);
    wait_counts(&lab, &d, &[(RS1, 0, 8), (RS2, 0, 0)]);
    let got: Vec<Ipv4Addr> = (0..2).map(|_| get_checked(&lab, &d, None)).collect();
    assert_eq!(got, [RS2, RS1], "the threshold cleared");
}

/// No eligible server: IPVS refuses the client at once with ICMP port unreachable
/// (lvs-semantics.md §1.3 "Returns none", §11 item 11), so `connect()` fails with
/// ECONNREFUSED instead of waiting for SYN retransmissions to time out.
///
/// sh without its fallback flag over [.131, .130] (rules add .130 then .131): even buckets
/// .131, odd .130 (§2.12); 192.168.199.1 hashes to 160 -> .131. With .131 at weight 0 the
/// client has no server (sh keeps the quiesced server's buckets and does not move clients).
#[test]
fn no_eligible_server_is_refused_with_icmp_port_unreachable() {
    require_root();
    let lab = Lab::up();
    let rules = RulesFile::new(&lab, "sh-w0", &service("-s sh", &[(RS1, 1), (RS2, 1)]));
    let d = start_nfvs(&lab, &rules);
    assert_eq!(hash_32(u32::from(CLIENT_IP), 8), 160);
    assert_eq!(get_checked(&lab, &d, None), RS2);

    adm(&lab, &["-e", "-t", &format!("{VIP}:80"), "-r", &format!("{RS2}:80"), "-m", "-w", "0"]);
    let started = std::time::Instant::now();
    let out = lab
        .command(Role::Client, "curl")
        .args(["-sS", "--connect-timeout", "5", "--max-time", "10"])
        .arg(format!("http://{VIP}/"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(!out.status.success(), "the client reached a server: {}", String::from_utf8_lossy(&out.stdout));
    let last = decisions(&d).pop().expect("no decision logged");
    assert_eq!(last.rs, None, "{last:?}");
    // curl exit 7 is "Failed to connect" (here: refused by the ICMP error); 28 is a timeout
    // (the SYN was dropped silently).
    assert_eq!(
        out.status.code(),
        Some(7),
        "IPVS answers ICMP port unreachable at once; curl: {} after {took:?}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(took < Duration::from_secs(2), "refused only after {took:?}");
}

/// sh with `-b sh-fallback` moves a client whose bucket is unusable: it probes buckets
/// (2h + j) mod 256, j = 0, 1, ... (the kernel adds the hash twice; lvs-semantics.md §2.12).
///
/// sh over [.131, .130]: 192.168.199.1 hashes to 160 -> .131. With .131 at weight 0: bucket
/// 64 (.131, unusable), then 65 -> .130. Switching the flag with `-E` builds a fresh sh table.
#[test]
fn sh_fallback_moves_a_client_off_a_quiesced_server() {
    require_root();
    let lab = Lab::up();
    let rules = RulesFile::new(&lab, "sh-fallback", &service("-s sh", &[(RS1, 1), (RS2, 1)]));
    let d = start_nfvs(&lab, &rules);
    assert_eq!(get_checked(&lab, &d, None), RS2);
    adm(&lab, &["-e", "-t", &format!("{VIP}:80"), "-r", &format!("{RS2}:80"), "-m", "-w", "0"]);
    adm(&lab, &["-E", "-t", &format!("{VIP}:80"), "-s", "sh", "-b", "sh-fallback"]);
    let got: Vec<Ipv4Addr> = (0..3).map(|_| get_checked(&lab, &d, None)).collect();
    assert_eq!(got, [RS1; 3]);
    // Back to weight 1: the client's own bucket is usable again.
    adm(&lab, &["-e", "-t", &format!("{VIP}:80"), "-r", &format!("{RS2}:80"), "-m", "-w", "1"]);
    assert_eq!(get_checked(&lab, &d, None), RS2);
}

/// The `events` chain sets our entries' conntrack event mask so the kernel reports only what
/// can change a count: nothing from the handshake (the connection is active from its creation
/// to its first FIN or RST), the first FIN's event and the next, nothing more until DESTROY.
/// Counts still follow: held connections are active, closed ones inactive.
#[test]
fn only_fin_and_later_events_are_sent_and_counts_follow() {
    require_root();
    let lab = Lab::up();
    let rules = RulesFile::new(&lab, "events", &service("-s wlc", &[(RS1, 1), (RS2, 1)]));
    let d = start_nfvs(&lab, &rules);
    // An event listener of our own sees what the kernel sends for our entries (the event mask
    // is per entry, not per listener).
    let mut listener = lab
        .command(Role::Director, "conntrack")
        .args(["-E", "-p", "tcp", "--mark", "0x6e667673"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<Held> = (0..2).map(|_| hold(&lab, &d)).collect();
    wait_counts(&lab, &d, &[(RS1, 1, 0), (RS2, 1, 0)]);
    for _ in 0..4 {
        get_checked(&lab, &d, None);
    }
    // Four finished requests (TIME_WAIT: inactive), two held handshakes (active).
    wait_counts(&lab, &d, &[(RS1, 1, 2), (RS2, 1, 2)]);
    for h in held {
        close(h);
    }
    wait_counts(&lab, &d, &[(RS1, 0, 3), (RS2, 0, 3)]);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the listener we started.
    unsafe { libc::kill(listener.id() as i32, libc::SIGTERM) };
    let mut text = String::new();
    listener.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let _ = listener.wait();
    let updates: Vec<&str> = text.lines().filter(|l| l.contains("[UPDATE]")).collect();
    for state in ["SYN_SENT", "SYN_RECV", "ESTABLISHED"] {
        let early: Vec<&&str> = updates.iter().filter(|l| l.contains(&format!(" {state} "))).collect();
        assert!(early.is_empty(), "handshake events were sent: {early:#?}\nall events:\n{text}");
    }
    // At most two per connection: its first FIN's and the ACK's after it (the next FIN finds
    // ct label 127 and silences the rest until DESTROY, which comes after TIME_WAIT's 120 s).
    assert!((6..=12).contains(&updates.len()), "{} UPDATE events for 6 connections:\n{text}", updates.len());
}
