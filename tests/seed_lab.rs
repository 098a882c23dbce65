//! The seed's LVS-NAT lab end to end with nfvs as the director (issue 2): real kernel, network
//! namespaces, nginx real servers. Needs root; run through scripts/test.sh.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn nft_tables(lab: &Lab) -> String {
    lab.exec_ok(Role::Director, &["nft", "list", "tables"])
}

/// Issue 2, test 1: 20 sequential requests alternate exactly .131, .130, ... (IPVS list order:
/// the server added last is tried first).
#[test]
fn twenty_curls_alternate_starting_with_131() {
    require_root();
    let lab = Lab::up();
    let d = lab.nfvs().start().unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(rs_of(&lab.client_curl_vip().unwrap()));
    }
    let want: Vec<String> = (0..20).map(|i| if i % 2 == 0 { RS2 } else { RS1 }.to_string()).collect();
    assert_eq!(got, want);
    // One decision line per connection, naming client, VIP, scheduler and server.
    let lines = d.log_lines("conn client=192.168.199.1:");
    assert_eq!(lines.len(), 20, "log:\n{}", d.log());
    assert!(lines[0].contains("vip=192.168.199.200:80 sched=wrr rs=192.168.226.131:80"), "{}", lines[0]);
    assert!(lines[1].contains("rs=192.168.226.130:80"), "{}", lines[1]);
}

/// Issue 2, test 2a: a download running when the daemon is SIGKILLed completes intact: its
/// conntrack entry lives in the kernel (design.md fact 7).
#[test]
fn download_survives_sigkill() {
    require_root();
    let lab = Lab::up();
    let mut d = lab.nfvs().start().unwrap();
    let out = tmp_dir().join(format!("{}-kill.bin", lab.prefix()));
    let mut curl = lab.start_download(&out, "4M");
    wait_download_started(&out);
    d.signal(libc::SIGKILL).unwrap();
    d.wait().unwrap();
    let status = curl.wait().unwrap();
    assert!(status.success(), "curl failed: {status}");
    assert_eq!(sha256_file(&out), lab.big_bin_sha256());
    let _ = std::fs::remove_file(&out);
    // New connections still work after a restart on top of the crashed run's table.
    let _d2 = lab.nfvs().start().unwrap();
    rs_of(&lab.client_curl_vip().unwrap());
}

/// Issue 2, test 2b: a download running across a SIGTERM stop completes intact; the daemon
/// stops taking new connections at once, lets the running flows finish, then removes its
/// table, restores the sysctls and exits 0.
#[test]
fn download_survives_sigterm_stop() {
    require_root();
    let lab = Lab::up();
    let mut d = lab.nfvs().start().unwrap();
    let out = tmp_dir().join(format!("{}-term.bin", lab.prefix()));
    let mut curl = lab.start_download(&out, "4M");
    wait_download_started(&out);
    d.signal(libc::SIGTERM).unwrap();
    let status = curl.wait().unwrap();
    assert!(status.success(), "curl failed: {status}\nnfvs log:\n{}", d.log());
    assert_eq!(sha256_file(&out), lab.big_bin_sha256());
    let _ = std::fs::remove_file(&out);
    let exit = d.wait_timeout(Duration::from_secs(20)).unwrap().expect("nfvs did not exit after SIGTERM");
    assert!(exit.success(), "{exit}\n{}", d.log());
    assert!(!nft_tables(&lab).contains("nfvs"));
    assert_eq!(lab.sysctl(Role::Director, "net.ipv4.ip_forward"), "0");
}

/// Connects from a fixed local port, sends an HTTP/1.0 request (the server closes first, so the
/// client holds no TIME_WAIT: design.md fact 6), reads to EOF and returns the body.
fn get_from_port(local_port: u16) -> std::io::Result<String> {
    // SAFETY: plain socket calls on a descriptor this function owns; on success it is handed to
    // TcpStream, which closes it.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    let to_sa = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let local = to_sa(SocketAddrV4::new(CLIENT_IP, local_port));
    let remote = to_sa(SocketAddrV4::new(VIP, 80));
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one as *const _ as *const libc::c_void, 4);
        if libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // After the previous connection, the client's socket waits in LAST_ACK for the
        // server's final ACK and holds the 4-tuple meanwhile: connect() answers EADDRNOTAVAIL
        // until it arrives (microseconds, more on a loaded machine). That is the client's own
        // state, not the balancer's, so wait for it (bounded).
        let mut tries = 0;
        while libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) != 0 {
            let e = std::io::Error::last_os_error();
            tries += 1;
            if e.raw_os_error() != Some(libc::EADDRNOTAVAIL) || tries > 200 {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    Ok(resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

/// Issue 2, test 3: 200 connections in a row from one client source port all succeed and keep
/// alternating, although the previous entry of the same tuple is in TIME_WAIT each time.
#[test]
fn source_port_reuse_200() {
    require_root();
    let lab = Lab::up();
    let d = lab.nfvs().start().unwrap();
    let got: Vec<Result<String, String>> = lab.in_ns(Role::Client, || {
        (0..200).map(|_| get_from_port(40000).map(|b| rs_of(&b)).map_err(|e| e.to_string())).collect()
    });
    for (i, r) in got.iter().enumerate() {
        let want = if i % 2 == 0 { RS2 } else { RS1 }.to_string();
        assert_eq!(r.as_ref(), Ok(&want), "connection {i}; nfvs log:\n{}", d.log());
    }
}

/// A SYN whose create fails is not answered with a RST: each SYN's create and verdict go out
/// together, so a SYN whose tuple is held by an entry nfvs did not know (here one made by
/// `conntrack -I`, in TIME_WAIT) is accepted, replaced by the kernel with an entry without
/// DNAT, and dropped by the nat_pre guard; the client's retransmission a second later is
/// balanced. The failure is logged and the connection counted once.
#[test]
fn a_failed_create_is_dropped_by_the_guard_and_the_retry_is_balanced() {
    require_root();
    let lab = Lab::up();
    let d = lab.nfvs().start().unwrap();
    lab.exec_ok(
        Role::Director,
        &[
            "conntrack", "-I", "-p", "tcp", "-s", "192.168.199.1", "-d", "192.168.199.200", "--sport", "40100",
            "--dport", "80", "--state", "TIME_WAIT", "-t", "120",
        ],
    );
    let started = std::time::Instant::now();
    let body = lab.in_ns(Role::Client, || get_from_port(40100)).expect("the retried connection");
    rs_of(&body);
    assert!(started.elapsed() >= Duration::from_millis(800), "no retry was needed: {:?}", started.elapsed());
    assert!(
        wait_until(Duration::from_secs(3), || d.log().contains("conntrack already held an entry nfvs did not know")),
        "{}",
        d.log()
    );
    let nat_pre = lab.exec_ok(Role::Director, &["nft", "list", "chain", "ip", "nfvs", "nat_pre"]);
    assert!(nat_pre.contains("counter packets 1 bytes 60 drop"), "{nat_pre}");
    // Two decisions were logged (the failed one and the retry), one connection is counted.
    let decisions = d.log_lines("conn client=192.168.199.1:40100 ");
    assert_eq!(decisions.iter().filter(|l| l.contains(" sched=wrr rs=")).count(), 2, "{}", d.log());
    let listing = lab.command(Role::Director, nfvs_bin()).args(["adm", "-L", "-n"]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    let total: u32 = text
        .lines()
        .filter(|l| l.trim_start().starts_with("->") && !l.contains("RemoteAddress"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(f.get(4)?.parse::<u32>().ok()? + f.get(5)?.parse::<u32>().ok()?)
        })
        .sum();
    assert_eq!(total, 1, "{text}");
    // And counted once in the statistics: IPVS counts a connection once it exists.
    let stats = lab.command(Role::Director, nfvs_bin()).args(["adm", "-L", "-n", "--stats"]).stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&stats.stdout);
    let conns = |prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.trim_start().starts_with(prefix) && !l.contains("RemoteAddress"))
            .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!((conns("TCP"), conns("->")), (1, 1), "{text}");
}

/// A finished entry nfvs did not make, already there when it starts (here `conntrack -I` in
/// TIME_WAIT, as the `--overload fallback` rule leaves them while no daemon runs): a client
/// reusing its tuple is balanced at once (the entry is deleted first, as for a finished
/// connection of nfvs's own), without the failed create and the second's wait for a retry.
#[test]
fn a_foreign_finished_entry_found_at_start_is_replaced_at_once() {
    require_root();
    let lab = Lab::up();
    lab.exec_ok(
        Role::Director,
        &[
            "conntrack", "-I", "-p", "tcp", "-s", "192.168.199.1", "-d", "192.168.199.200", "--sport", "40100",
            "--dport", "80", "--state", "TIME_WAIT", "-t", "120",
        ],
    );
    let d = lab.nfvs().start().unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || d.log().contains("found 1 finished connection(s) to our services")),
        "{}",
        d.log()
    );
    let started = std::time::Instant::now();
    let body = lab.in_ns(Role::Client, || get_from_port(40100)).expect("the connection");
    rs_of(&body);
    assert!(started.elapsed() < Duration::from_millis(800), "waited for a retry: {:?}\n{}", started.elapsed(), d.log());
    assert!(!d.log().contains("conntrack already held"), "{}", d.log());
    let nat_pre = lab.exec_ok(Role::Director, &["nft", "list", "chain", "ip", "nfvs", "nat_pre"]);
    assert!(!nat_pre.contains("counter packets 1 bytes 60 drop"), "{nat_pre}");
}

/// Issue 2, test 4: nfvs touches nothing but its own table, and its sysctls are restored, also
/// after a SIGKILL, a restart and a clean stop.
#[test]
fn foreign_rules_untouched_and_sysctls_restored() {
    require_root();
    let lab = Lab::up();
    // Someone else's firewall: an nft table and an iptables-nft nat rule.
    let dir = Role::Director;
    lab.exec_ok(dir, &["nft", "add", "table", "inet", "filter"]);
    lab.exec_ok(dir, &["nft", "add", "chain", "inet", "filter", "input", "{ type filter hook input priority 0; policy accept; }"]);
    lab.exec_ok(dir, &["nft", "add", "rule", "inet", "filter", "input", "tcp", "dport", "22", "counter", "accept"]);
    lab.exec_ok(dir, &["iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE"]);
    lab.exec_ok(dir, &["sysctl", "-w", "net.ipv4.conf.all.send_redirects=1", "net.ipv4.conf.ens33.send_redirects=1"]);
    let before = lab.exec_ok(dir, &["nft", "list", "ruleset"]);
    let sysctls = ["net.ipv4.ip_forward", "net.ipv4.conf.all.send_redirects", "net.ipv4.conf.default.send_redirects", "net.ipv4.conf.ens33.send_redirects", "net.ipv4.conf.ens37.send_redirects"];
    let sys_before: Vec<String> = sysctls.iter().map(|k| lab.sysctl(dir, k)).collect();

    let mut d = lab.nfvs().start().unwrap();
    assert_eq!(lab.sysctl(dir, "net.ipv4.ip_forward"), "1");
    assert_eq!(lab.sysctl(dir, "net.ipv4.conf.ens33.send_redirects"), "0");
    rs_of(&lab.client_curl_vip().unwrap());
    // Crash, restart, clean stop.
    d.signal(libc::SIGKILL).unwrap();
    d.wait().unwrap();
    let mut d = lab.nfvs().start().unwrap();
    rs_of(&lab.client_curl_vip().unwrap());
    d.signal(libc::SIGTERM).unwrap();
    let exit = d.wait_timeout(Duration::from_secs(20)).unwrap().expect("nfvs did not stop");
    assert!(exit.success(), "{exit}");

    assert_eq!(lab.exec_ok(dir, &["nft", "list", "ruleset"]), before);
    let sys_after: Vec<String> = sysctls.iter().map(|k| lab.sysctl(dir, k)).collect();
    assert_eq!(sys_after, sys_before);
}

/// Runs `nfvs run` on a rules file in the director; returns (success, stderr).
fn run_with_rules(lab: &Lab, name: &str, text: &str) -> (bool, String) {
    let path = tmp_dir().join(format!("{}-{name}.rules", lab.prefix()));
    std::fs::write(&path, text).unwrap();
    let out = lab
        .command(Role::Director, nfvs_bin())
        .args(["run", "--rules"])
        .arg(&path)
        .args(["--masquerade", RS_NET])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Issue 2, test 5: bad rules files are refused with an error naming the line, and nothing is
/// left behind.
#[test]
fn bad_rules_files_name_the_line_and_install_nothing() {
    require_root();
    let lab = Lab::up();
    let svc = "-A -t 192.168.199.200:80 -s wrr\n";
    let cases = [
        ("unknown-option", format!("{svc}-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1 --bogus\n"), ":2: --bogus: unknown option"),
        ("bad-address", format!("{svc}-a -t 192.168.199.200:80 -r 192.168.226.300:80 -m\n"), ":2: illegal real server address"),
        ("rs-before-service", format!("-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m\n{svc}"), ":1: Service not defined"),
        ("duplicate-service", format!("{svc}-A -t 192.168.199.200:80 -s rr\n"), ":2: Service already exists"),
    ];
    for (name, text, want) in cases {
        let (ok, stderr) = run_with_rules(&lab, name, &text);
        assert!(!ok, "{name}: nfvs accepted the file");
        assert!(stderr.contains(want), "{name}: stderr {stderr:?} lacks {want:?}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: one error line expected: {stderr:?}");
        assert!(!nft_tables(&lab).contains("nfvs"), "{name}: table left behind");
        assert_eq!(lab.sysctl(Role::Director, "net.ipv4.ip_forward"), "0", "{name}: sysctl changed");
    }
}

/// Without root, one line says which privilege is missing.
#[test]
fn not_root_says_what_is_missing() {
    require_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(nfvs_bin())
        .args(["run", "--rules"])
        .arg(lab_rules())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("root") && err.contains("CAP_NET_ADMIN"), "{err}");
}


/// Issue 5 (overload flag) and design.md fact 7: with `--overload fallback`, new connections
/// are balanced by the kernel rule while no daemon runs (here: after SIGKILL); with the
/// default `drop` they are not taken at all.
#[test]
fn overload_fallback_balances_while_no_daemon_runs() {
    require_root();
    let lab = Lab::up();
    let mut d = lab.nfvs().args(["--overload", "fallback"]).start().unwrap();
    // nat_pre sends the service to a chain of its own (issue 11 #7), which balances.
    let listed = lab.exec_ok(Role::Director, &["nft", "list", "chain", "ip", "nfvs", "nat_pre"]);
    assert!(listed.contains("ip daddr . tcp dport vmap @fallback"), "{listed}");
    let listed = lab.exec_ok(Role::Director, &["nft", "list", "chain", "ip", "nfvs", "fallback-192.168.199.200-80"]);
    assert!(listed.contains("numgen inc mod 2 < 1 counter"), "{listed}");
    d.signal(libc::SIGKILL).unwrap();
    d.wait().unwrap();
    let got: Vec<String> = (0..10).map(|_| rs_of(&lab.client_curl_vip().unwrap())).collect();
    // The kernel rule's own round robin: the list order's first server every other time.
    let want: Vec<String> = (0..10).map(|i| if i % 2 == 0 { RS2 } else { RS1 }.to_string()).collect();
    assert_eq!(got, want);

    // The default: a SYN nobody takes is dropped (the client would retry).
    let lab2 = Lab::up();
    let mut d2 = lab2.nfvs().start().unwrap();
    d2.signal(libc::SIGKILL).unwrap();
    d2.wait().unwrap();
    let out = lab2
        .command(Role::Client, "curl")
        .args(["-sS", "--connect-timeout", "2", &format!("http://{VIP}/")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(28), "curl should time out: {}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 5, under overload: SYNs beyond what the queue holds are dropped by the kernel,
/// counted and logged; an established flow is unaffected; the daemon recovers by itself (the
/// dropped SYNs' retransmissions are balanced). The daemon is stopped (SIGSTOP) while a burst
/// of connections arrives at a queue that holds 4.
#[test]
fn overload_drops_are_counted_and_the_daemon_recovers() {
    require_root();
    let lab = Lab::up();
    let mut d = lab.nfvs().args(["--queue-maxlen", "4"]).start().unwrap();
    let out = tmp_dir().join(format!("{}-overload.bin", lab.prefix()));
    let mut curl = lab.start_download(&out, "4M");
    wait_download_started(&out);
    d.signal(libc::SIGSTOP).unwrap();
    let vip = std::net::SocketAddr::from((VIP, 80));
    let connects = lab.in_ns(Role::Client, || {
        // Threads inherit the namespace of the thread that creates them.
        (0..12)
            .map(|_| std::thread::spawn(move || TcpStream::connect_timeout(&vip, Duration::from_secs(10)).map(drop)))
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_millis(500));
    d.signal(libc::SIGCONT).unwrap();
    for (i, c) in connects.into_iter().enumerate() {
        let r = c.join().unwrap();
        assert!(r.is_ok(), "connection {i} of the burst: {r:?}\nnfvs log:\n{}", d.log());
    }
    let status = curl.wait().unwrap();
    assert!(status.success(), "curl failed: {status}");
    assert_eq!(sha256_file(&out), lab.big_bin_sha256());
    let _ = std::fs::remove_file(&out);
    // The kernel counted the drops (queue_dropped, column 6), and the daemon's next tick says so.
    let q = lab.exec_ok(Role::Director, &["cat", "/proc/net/netfilter/nfnetlink_queue"]);
    let dropped: u64 = q.split_whitespace().nth(5).and_then(|w| w.parse().ok()).unwrap_or(0);
    assert!(dropped >= 8, "{q}");
    assert!(
        wait_until(Duration::from_secs(5), || d.log().contains("overload: the kernel dropped")),
        "no overload warning:\n{}",
        d.log()
    );
    rs_of(&lab.client_curl_vip().unwrap());
}

/// `--queues 2`: SYNs are spread over two queues and workers (CPU fanout) that share one
/// scheduler, so sequential connections still alternate exactly; both queues are bound.
#[test]
fn two_queues_share_one_scheduler() {
    require_root();
    let lab = Lab::up();
    let _d = lab.nfvs().args(["--queues", "2"]).start().unwrap();
    let listed = lab.exec_ok(Role::Director, &["nft", "list", "chain", "ip", "nfvs", "divert"]);
    assert!(listed.contains("queue num 0-1 fanout"), "{listed}");
    let bound = lab.exec_ok(Role::Director, &["cat", "/proc/net/netfilter/nfnetlink_queue"]);
    let queues: Vec<&str> = bound.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(queues, ["0", "1"], "{bound}");
    let got: Vec<String> = (0..10).map(|_| rs_of(&lab.client_curl_vip().unwrap())).collect();
    let want: Vec<String> = (0..10).map(|i| if i % 2 == 0 { RS2 } else { RS1 }.to_string()).collect();
    assert_eq!(got, want);
}

/// `--queues 2 --pin-workers`: each worker thread is pinned to the CPUs whose SYNs the fanout
/// sends its queue (CPU c -> queue c mod 2), and balancing is unchanged.
#[test]
fn pinned_workers_run_on_their_queues_cpus() {
    require_root();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let lab = Lab::up();
    let d = lab.nfvs().args(["--queues", "2", "--pin-workers"]).start().unwrap();
    let got: Vec<String> = (0..6).map(|_| rs_of(&lab.client_curl_vip().unwrap())).collect();
    let want: Vec<String> = (0..6).map(|i| if i % 2 == 0 { RS2 } else { RS1 }.to_string()).collect();
    assert_eq!(got, want);
    // Threads and their allowed CPUs, from /proc: the main thread works queue 0, "queue-1"
    // queue 1; the others (events, ticker, control, signals) stay unpinned.
    let mut pinned = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).unwrap_or("").trim().to_string();
        pinned.insert(field("Name:"), field("Cpus_allowed_list:"));
    }
    let all = if cpus == 1 { "0".to_string() } else { format!("0-{}", cpus - 1) };
    let of_queue = |q: usize| (0..cpus).filter(|c| c % 2 == q).map(|c| c.to_string()).collect::<Vec<_>>();
    // A list like "0,2" (nproc 4) or "0" (nproc 2); compare as sets of numbers.
    let parse = |l: &str| -> Vec<String> {
        l.split(',')
            .flat_map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()).map(|c| c.to_string()).collect(),
                None => vec![r.to_string()],
            })
            .collect()
    };
    if cpus >= 2 {
        assert_eq!(parse(&pinned["nfvs"]), of_queue(0), "{pinned:?}");
        assert_eq!(parse(&pinned["queue-1"]), of_queue(1), "{pinned:?}");
        assert_eq!(pinned["ticker"], all, "{pinned:?}");
        assert!(d.log().contains("queue worker 1 of 2 pinned to CPU"), "{}", d.log());
    } else {
        assert!(d.log().contains("no CPU of this process feeds queue worker 1 of 2"), "{}", d.log());
    }
}

/// `--queues auto --pin-workers`: one queue per online CPU, each worker pinned to its CPU
/// alone (on one CPU: a single queue, no fanout); all queues bound, balancing unchanged.
#[test]
fn queues_auto_gives_one_pinned_queue_per_cpu() {
    require_root();
    // SAFETY: sysconf takes no pointers.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.clamp(1, 64) as usize;
    let lab = Lab::up();
    let d = lab.nfvs().args(["--queues", "auto", "--pin-workers"]).start().unwrap();
    let listed = lab.exec_ok(Role::Director, &["nft", "list", "chain", "ip", "nfvs", "divert"]);
    if cpus == 1 {
        assert!(listed.contains("queue num 0") && !listed.contains("fanout"), "{listed}");
    } else {
        assert!(listed.contains(&format!("queue num 0-{} fanout", cpus - 1)), "{listed}");
    }
    let bound = lab.exec_ok(Role::Director, &["cat", "/proc/net/netfilter/nfnetlink_queue"]);
    let queues: Vec<String> = bound.lines().filter_map(|l| l.split_whitespace().next()).map(String::from).collect();
    assert_eq!(queues, (0..cpus).map(|q| q.to_string()).collect::<Vec<_>>(), "{bound}");
    for q in 0..cpus {
        let line = format!("queue worker {q} of {cpus} pinned to CPU {q}\n");
        assert!(cpus == 1 || d.log().contains(&line), "{line:?} in {}", d.log());
    }
    let got: Vec<String> = (0..6).map(|_| rs_of(&lab.client_curl_vip().unwrap())).collect();
    let want: Vec<String> = (0..6).map(|i| if i % 2 == 0 { RS2 } else { RS1 }.to_string()).collect();
    assert_eq!(got, want);
}

/// A retransmitted SYN of a connection nfvs already balanced is not scheduled again (IPVS
/// finds its connection entry): the real server drops the first SYNs, the client retransmits,
/// the connection completes on the server first chosen, and the rotation goes on from there.
/// Three servers, so that any number of extra scheduler steps (one per retransmission, 1 or
/// 2 here) would show in the next choice.
#[test]
fn retransmitted_syn_is_not_scheduled_again() {
    require_root();
    let lab = Lab::up_with(LabConfig { rs3: true });
    let rules = tmp_dir().join(format!("{}-retrans.rules", lab.prefix()));
    let svc = format!("{VIP}:80");
    std::fs::write(
        &rules,
        format!("-A -t {svc} -s rr\n-a -t {svc} -r {RS1}:80 -m\n-a -t {svc} -r {RS2}:80 -m\n-a -t {svc} -r {RS3}:80 -m\n"),
    )
    .unwrap();
    let d = lab.nfvs_with_rules(&rules).start().unwrap();
    // List order .132, .131, .130: .132 is the first choice, and drops SYNs for now.
    let rs3 = Role::Rs3;
    lab.exec_ok(rs3, &["nft", "add", "table", "ip", "t"]);
    lab.exec_ok(rs3, &["nft", "add", "chain", "ip", "t", "in", "{ type filter hook input priority 0; }"]);
    lab.exec_ok(rs3, &["nft", "add", "rule", "ip", "t", "in", "tcp", "dport", "80", "tcp", "flags", "syn", "drop"]);
    let curl = lab
        .command(Role::Client, "curl")
        .args(["-sS", "--connect-timeout", "15", &format!("http://{VIP}/")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The client retransmits 1 s after the first SYN, then 2 s later: let one retransmission
    // through the director, then let SYNs reach the server.
    std::thread::sleep(Duration::from_millis(2000));
    lab.exec_ok(rs3, &["nft", "delete", "table", "ip", "t"]);
    let out = curl.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&rules);
    assert_eq!(rs_of(&String::from_utf8_lossy(&out.stdout)), RS3.to_string());
    assert_eq!(d.log_lines("conn client=").len(), 1, "one decision for all the SYNs:\n{}", d.log());
    // The rotation continues right after .132.
    assert_eq!(rs_of(&lab.client_curl_vip().unwrap()), RS2.to_string(), "{}", d.log());
}
