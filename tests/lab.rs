//! Tests of the seed lab (`scripts/lab.sh`) and of the test guards in `tests/common`, without
//! the nfvs daemon: the lab must be right before a balancer test on it can mean anything.
//! Needs root (network namespaces); `scripts/test.sh` runs it.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn greeting(ip: std::net::Ipv4Addr) -> String {
    format!("hello, i am from {ip}\n")
}

fn lab_sh(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/lab.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/lab.sh")
}

fn namespaces_of(prefix: &str) -> Vec<String> {
    let start = format!("{prefix}-");
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&start))
        .collect()
}

/// Running (a zombie counts as gone: its owner has just not reaped it yet).
fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name (proc(5)).
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn director_reaches_both_real_servers() {
    let lab = Lab::up();
    for role in lab.real_servers() {
        let ip = role.rs_ip().unwrap();
        let body = lab.curl(Role::Director, &format!("http://{ip}/")).unwrap();
        assert_eq!(body, greeting(ip), "from {role:?}");
    }
}

#[test]
fn real_servers_route_through_the_director() {
    // NAT mode works only if replies come back through the director (seed, "NAT mode" 3).
    let lab = Lab::up();
    for role in lab.real_servers() {
        let routes = lab.exec_ok(role, &["ip", "-4", "route", "show", "default"]);
        assert_eq!(
            routes.trim(),
            format!("default via {DIP} dev eth0"),
            "{role:?}"
        );
    }
}

#[test]
fn client_reaches_the_vip_and_only_the_vip() {
    let lab = Lab::up();
    let listener = lab
        .in_ns(Role::Director, || TcpListener::bind((VIP, 0)))
        .expect("bind on the VIP in the director");
    let addr = listener.local_addr().unwrap();
    let mut conn = lab
        .in_ns(Role::Client, || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        })
        .expect("client connects to the VIP");
    conn.write_all(b"ping").unwrap();
    let (mut served, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), CLIENT_IP);
    let mut buf = [0u8; 4];
    served.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    // The client has no route to the real servers' network: it sees only the VIP (no packet
    // leaves; the connect fails locally).
    let rs: SocketAddr = (RS1, 80).into();
    let err = lab
        .in_ns(Role::Client, || {
            TcpStream::connect_timeout(&rs, Duration::from_secs(3))
        })
        .expect_err("the client must not reach a real server directly");
    assert_eq!(err.kind(), ErrorKind::NetworkUnreachable, "{err}");
}

#[test]
fn director_sysctls_are_namespace_defaults() {
    // Setting them is nfvs's job (seed: ip_forward=1, send_redirects=0); the lab must not.
    let lab = Lab::up();
    assert_eq!(lab.sysctl(Role::Director, "net.ipv4.ip_forward"), "0");
    assert_eq!(
        lab.sysctl(Role::Director, "net.ipv4.conf.ens33.send_redirects"),
        "1"
    );
    let ruleset = lab.exec_ok(Role::Director, &["nft", "list", "ruleset"]);
    assert_eq!(ruleset.trim(), "", "the director starts with no rules");
}

#[test]
fn big_file_is_served_intact() {
    let lab = Lab::up();
    let sum = lab.big_bin_sha256();
    assert_eq!(sum.len(), 64);
    assert_eq!(sha256_file(&lab.big_bin()), sum);
    assert_eq!(fs::metadata(lab.big_bin()).unwrap().len(), 20 * 1024 * 1024);
    let out = tmp_dir().join(format!("{}-big.bin", lab.prefix()));
    let url = format!("http://{RS2}/big.bin");
    let status = lab
        .command(Role::Director, "curl")
        .args(["-sS", "--max-time", "30", "-o"])
        .arg(&out)
        .arg(&url)
        .status()
        .unwrap();
    assert!(status.success(), "curl {url}: {status}");
    let got = sha256_file(&out);
    let _ = fs::remove_file(&out);
    assert_eq!(got, sum);
}

/// The lab carries NAT mode end to end when the director balances: a static kernel DNAT
/// (nft `numgen`) stands in for nfvs here, set up by hand the way the seed's director script
/// sets up IPVS (ip_forward, MASQUERADE), all inside the lab's director namespace.
#[test]
fn lab_carries_nat_mode_through_the_director() {
    let lab = Lab::up();
    lab.exec_ok(Role::Director, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for cmd in [
        "add table ip labcheck",
        "add chain ip labcheck pre { type nat hook prerouting priority dstnat; }",
        "add chain ip labcheck post { type nat hook postrouting priority srcnat; }",
        "add rule ip labcheck pre ip daddr 192.168.199.200 tcp dport 80 \
         dnat to numgen inc mod 2 map { 0 : 192.168.226.130, 1 : 192.168.226.131 }",
        "add rule ip labcheck post ip saddr 192.168.226.0/24 masquerade",
    ] {
        lab.exec_ok(Role::Director, &["nft", cmd]);
    }
    let answers: Vec<String> = (0..4).map(|_| lab.client_curl_vip().unwrap()).collect();
    assert_eq!(
        answers,
        [greeting(RS1), greeting(RS2), greeting(RS1), greeting(RS2)]
    );
    // The real servers saw the client's own address: NAT mode rewrites only the destination.
    let log = fs::read_to_string(lab.access_log(Role::Rs1)).unwrap();
    assert!(
        log.lines().any(|l| l.starts_with(&format!("{CLIENT_IP} "))),
        "{log}"
    );
}

#[test]
fn third_real_server_on_request() {
    let lab = Lab::up_with(LabConfig { rs3: true });
    assert_eq!(lab.real_servers(), [Role::Rs1, Role::Rs2, Role::Rs3]);
    let body = lab.curl(Role::Director, &format!("http://{RS3}/")).unwrap();
    assert_eq!(body, greeting(RS3));
    let routes = lab.exec_ok(Role::Rs3, &["ip", "-4", "route", "show", "default"]);
    assert_eq!(routes.trim(), format!("default via {DIP} dev eth0"));
}

#[test]
fn drop_removes_namespaces_nginx_and_runtime_dir() {
    let lab = Lab::up();
    let prefix = lab.prefix().to_owned();
    let run = lab.runtime_dir();
    let mut pids: Vec<u32> = Vec::new();
    for role in lab.real_servers() {
        pids.push(lab.nginx_pid(role).expect("nginx pid file"));
        pids.extend(netns_pids(&lab.ns(role)).into_iter().map(|p| p as u32));
    }
    assert!(pids.len() >= 4, "masters and workers: {pids:?}");
    assert!(pids.iter().all(|&p| alive(p)));
    assert_eq!(namespaces_of(&prefix).len(), 5, "client, dir, sw, rs1, rs2");
    drop(lab);
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(!run.exists(), "{} left behind", run.display());
    let left: Vec<u32> = pids.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "nginx processes left: {left:?}");
}

#[test]
fn two_labs_at_once() {
    let a = Lab::up();
    let b = Lab::up();
    assert_ne!(a.prefix(), b.prefix());
    for lab in [&a, &b] {
        for role in lab.real_servers() {
            let ip = role.rs_ip().unwrap();
            assert_eq!(
                lab.curl(Role::Director, &format!("http://{ip}/")).unwrap(),
                greeting(ip)
            );
        }
    }
    assert_ne!(
        a.big_bin_sha256(),
        b.big_bin_sha256(),
        "each lab makes its own file"
    );
    let b_prefix = b.prefix().to_owned();
    drop(b);
    assert!(namespaces_of(&b_prefix).is_empty());
    // Removing one lab leaves the other working.
    assert_eq!(
        a.curl(Role::Director, &format!("http://{RS1}/")).unwrap(),
        greeting(RS1)
    );
}

#[test]
fn up_replaces_a_stale_lab_of_the_same_prefix() {
    let lab = Lab::up();
    let old = lab.nginx_pid(Role::Rs1).unwrap();
    let out = lab_sh(&["up", lab.prefix()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = lab.nginx_pid(Role::Rs1).unwrap();
    assert_ne!(old, new);
    assert!(!alive(old), "the stale lab's nginx is still running");
    assert_eq!(
        lab.curl(Role::Director, &format!("http://{RS1}/")).unwrap(),
        greeting(RS1)
    );
}

#[test]
fn lab_sh_rejects_bad_prefixes_and_down_is_idempotent() {
    require_root();
    for bad in ["a-b", "1abc", "a/b", "", "abcdefghijklmnop"] {
        let out = lab_sh(&["up", bad]);
        assert!(!out.status.success(), "prefix {bad:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bad prefix"), "{bad:?}: {stderr}");
    }
    assert!(namespaces_of("a").is_empty() && namespaces_of("1abc").is_empty());
    // Down of a lab that never existed, twice: nothing to do, no failure.
    let ghost = format!("t{}ghost", std::process::id());
    for _ in 0..2 {
        let out = lab_sh(&["down", &ghost]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn netns_guard_creates_and_removes_its_namespace() {
    let ns = NetNs::new();
    let name = ns.name().to_owned();
    assert!(netns_list().contains(&name));
    let lo = ns.exec_ok(&["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    // A process left running inside does not keep the namespace alive after drop.
    let mut child = ns.command("sleep").arg("30").spawn().unwrap();
    assert!(wait_until(Duration::from_secs(5), || pid_in_netns(
        child.id(),
        &name
    )));
    drop(ns);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!netns_list().contains(&name));
}

#[test]
fn daemon_guard_waits_for_the_ready_line_and_signals_the_process_itself() {
    let ns = NetNs::new();
    let mut d = ns
        .daemon("/bin/sh")
        .args([
            "-c",
            "echo starting; sleep 0.3; echo \"nfvs: ready\" >&2; exec sleep 30",
        ])
        .start()
        .unwrap();
    assert!(d.log().contains("starting"), "stdout captured: {}", d.log());
    assert_eq!(d.log_lines(NFVS_READY).len(), 1);
    // `ip netns exec` execs in place: the PID we hold is the program, in the namespace.
    assert!(pid_in_netns(d.pid(), ns.name()));
    let comm = fs::read_to_string(format!("/proc/{}/comm", d.pid())).unwrap();
    assert!(matches!(comm.trim(), "sh" | "sleep"), "{comm}");
    let status = d.stop(libc::SIGTERM, Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert!(
        d.signal(libc::SIGTERM).is_err(),
        "a reaped daemon must not be signalled"
    );
}

#[test]
fn daemon_guard_reports_early_exit_and_timeout_and_kills_on_drop() {
    let ns = NetNs::new();
    let err = ns
        .daemon("/bin/sh")
        .args(["-c", "echo 'bad rules file' >&2; exit 2"])
        .start()
        .err()
        .expect("an early exit is an error");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("exit status: 2") && msg.contains("bad rules file"),
        "{msg}"
    );

    let err = ns
        .daemon("/bin/sleep")
        .arg("30")
        .timeout(Duration::from_millis(500))
        .start()
        .err()
        .expect("no ready line is an error");
    assert!(format!("{err:#}").contains("not ready"), "{err:#}");
    assert!(
        netns_pids(ns.name()).is_empty(),
        "the timed-out process was not killed"
    );

    let d = ns
        .daemon("/bin/sleep")
        .arg("30")
        .ready(Ready::Spawned)
        .start()
        .unwrap();
    let pid = d.pid();
    drop(d);
    assert!(!alive(pid), "drop must kill and reap");
}

#[test]
fn daemon_guard_can_wait_for_a_table() {
    let ns = NetNs::new();
    let mut d = ns
        .daemon("/bin/sh")
        .args(["-c", "sleep 0.3; nft add table ip nfvs; exec sleep 30"])
        .ready(Ready::Table {
            family: "ip".into(),
            name: "nfvs".into(),
        })
        .start()
        .unwrap();
    d.wait_for_log("never printed", Duration::from_millis(100))
        .expect_err("wait_for_log must time out");
    d.kill();
    assert!(ns
        .exec(&["nft", "list", "table", "ip", "nfvs"])
        .status
        .success());
}

#[test]
fn lab_rules_are_the_seeds_three_ipvsadm_lines() {
    // shared/seed/README.md, the director script, in `ipvsadm -S -n` form.
    let rules = fs::read_to_string(lab_rules()).unwrap();
    assert_eq!(
        rules.lines().collect::<Vec<_>>(),
        [
            "-A -t 192.168.199.200:80 -s wrr",
            "-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1",
            "-a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1",
        ]
    );
}
