//! Issue 11 #7: nfvs with ten thousand services, in the seed lab. Start-up, listing, balancing
//! and edits must not grow with the number of services: the bounds here are loose (a loaded
//! 2-core CI machine), `scripts/bench.sh` with ONLY=services measures the real numbers.
//!
//! Needs root: it builds the lab's network namespaces (tests/common, `Lab`).

mod common;

use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Services in the rules file: 9,999 on addresses nobody uses, then the lab's VIP:80 last.
const SERVICES: u32 = 10_000;

/// The address of the i-th extra service: 10.100.0.1 and up.
fn extra_vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i)
}

/// `SERVICES` services in `ipvsadm -S -n` form, wrr over the lab's two real servers, the lab's
/// own service last (where a list walked in order meets it after all the others).
fn many_rules() -> String {
    let mut s = String::new();
    let mut service = |vip: String| {
        let _ = write!(s, "-A -t {vip} -s wrr\n-a -t {vip} -r {RS1}:80 -m -w 1\n-a -t {vip} -r {RS2}:80 -m -w 1\n");
    };
    for i in 1..SERVICES {
        service(format!("{}:80", extra_vip(i)));
    }
    service(format!("{VIP}:80"));
    s
}

/// `nfvs adm ARGS` in the director's namespace (its default control socket); stdout, and how
/// long the command took.
fn adm(lab: &Lab, args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let out = lab.command(Role::Director, nfvs_bin()).arg("adm").args(args).stdin(Stdio::null()).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "nfvs adm {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), took)
}

/// The elements of set `services` the kernel holds.
fn set_elements(lab: &Lab) -> Vec<String> {
    let listed = lab.exec_ok(Role::Director, &["nft", "list", "set", "ip", "nfvs", "services"]);
    listed
        .lines()
        .map(|l| l.trim().trim_start_matches("elements = {").trim_end_matches(['}', ',']).trim())
        .filter(|l| l.contains(" . ") && !l.starts_with("type "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn ten_thousand_services_start_list_balance_and_edit() {
    require_root();
    let lab = Lab::up();
    let rules = tmp_dir().join(format!("{}-10k.rules", lab.prefix()));
    fs::write(&rules, many_rules()).unwrap();

    let started = Instant::now();
    let d = lab.nfvs_with_rules(&rules).timeout(Duration::from_secs(60)).start().unwrap();
    let ready = started.elapsed();
    eprintln!("ready with {SERVICES} services after {ready:?}");
    assert!(ready < Duration::from_secs(10), "ready after {ready:?}");

    // Listed: every service (in IPVS's order, not the file's).
    let (listing, _) = adm(&lab, &["-L", "-n"]);
    let services: Vec<&str> = listing.lines().filter(|l| l.starts_with("TCP  ")).collect();
    assert_eq!(services.len(), SERVICES as usize);
    assert!(services.iter().any(|l| l.starts_with(&format!("TCP  {VIP}:80 wrr"))));
    // In the kernel: one element each, and one divert rule for all.
    let elements = set_elements(&lab);
    assert_eq!(elements.len(), SERVICES as usize);
    assert!(elements.contains(&format!("{VIP} . 80")));
    let divert = lab.exec_ok(Role::Director, &["nft", "list", "chain", "ip", "nfvs", "divert"]);
    assert_eq!(divert.matches(" queue ").count(), 1, "{divert}");

    // Diverted and balanced: the lab's service, as with one service.
    let got: Vec<String> = (0..4).map(|_| rs_of(&lab.client_curl_vip().unwrap())).collect();
    assert_eq!(got, [RS2, RS1, RS2, RS1].map(|a| a.to_string()), "{}", d.log());

    // Edits: one more service (with a server: it balances), then gone again.
    let (_, add) = adm(&lab, &["-A", "-t", &format!("{VIP}:81"), "-s", "rr"]);
    adm(&lab, &["-a", "-t", &format!("{VIP}:81"), "-r", &format!("{RS1}:80"), "-m", "-w", "1"]);
    assert!(set_elements(&lab).contains(&format!("{VIP} . 81")));
    assert_eq!(rs_of(&lab.client_curl(&format!("http://{VIP}:81/")).unwrap()), RS1.to_string());
    let (_, del) = adm(&lab, &["-D", "-t", &format!("{VIP}:81")]);
    let elements = set_elements(&lab);
    assert_eq!(elements.len(), SERVICES as usize);
    assert!(!elements.contains(&format!("{VIP} . 81")));
    let (_, del_extra) = adm(&lab, &["-D", "-t", &format!("{}:80", extra_vip(1))]);
    assert_eq!(set_elements(&lab).len(), SERVICES as usize - 1);
    eprintln!("adm -A {add:?}, -D {del:?}, -D of the first service {del_extra:?}");
    for took in [add, del, del_extra] {
        assert!(took < Duration::from_secs(1), "an edit took {took:?}");
    }
    assert!(!d.log().contains("replacing the whole table"), "{}", d.log());
    let (listing, _) = adm(&lab, &["-L", "-n"]);
    assert_eq!(listing.lines().filter(|l| l.starts_with("TCP  ")).count(), SERVICES as usize - 1);
}
