//! Issue 11: what a careless admin, a hostile network and a strict firewall do to nfvs, each
//! defect's test on the seed lab (root, network namespaces).

mod common;

use std::time::Duration;

use common::*;

/// Issue 11 #1: a second daemon with its own queue, control socket and state directory used to
/// start next to the first, replace its table, and on its stop delete the table and set
/// ip_forward back to 0, silently disabling the first. One director per network namespace,
/// whatever the flags: the second one is refused, naming the first one's pid, and changes
/// nothing.
#[test]
fn a_second_daemon_in_the_namespace_is_refused_whatever_its_flags() {
    require_root();
    let lab = Lab::up();
    let first = lab.nfvs().start().unwrap();
    let table = lab.exec_ok(Role::Director, &["nft", "list", "table", "ip", "nfvs"]);
    let dir = lab.runtime_dir();
    let second = lab
        .nfvs()
        .args(["--queue", "5", "--control"])
        .arg(dir.join("second.sock").to_string_lossy())
        .arg("--state-dir")
        .arg(dir.join("second-state").to_string_lossy())
        .timeout(Duration::from_secs(10))
        .start();
    let err = format!("{:#}", second.err().expect("the second daemon must not start"));
    assert!(err.contains("another nfvs daemon") && err.contains(&format!("pid {}", first.pid())), "{err}");
    assert!(err.contains("exit status: 1"), "{err}");
    // The first one still owns everything and balances.
    assert_eq!(lab.exec_ok(Role::Director, &["nft", "list", "table", "ip", "nfvs"]), table);
    assert_eq!(lab.sysctl(Role::Director, "net.ipv4.ip_forward"), "1");
    let a = lab.client_curl_vip().unwrap();
    let b = lab.client_curl_vip().unwrap();
    assert_ne!(a, b, "both real servers still answer through the first daemon");
    assert!(!first.log().contains("WARN"), "{}", first.log());
}
