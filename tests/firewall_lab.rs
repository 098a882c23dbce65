//! Issue 11 #5: a strict forward policy in the director used to be a silent total outage
//! (every connection timed out while nfvs logged each decision and counted it active). For
//! each form of it, in the seed lab's director namespace (root, network namespaces):
//! - set before start-up: nfvs names the chain and the rule to add at start-up and on SIGHUP;
//!   the rule it names, added, makes the lab work, and the next SIGHUP says the drop is gone;
//! - set while nfvs runs: the clients' unanswered SYN retries make nfvs say it (with the same
//!   rule), and once the rule is added, that connections are answered again.
//!
//! docker's and firewalld's rule sets are reproduced by hand (neither program runs here);
//! ufw's was captured from the real ufw run confined in a namespace (tests/fixtures/forward/).

mod common;

use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;

/// A strict forward rule set: how to make it, how to remove it, what nfvs must suggest.
struct Form {
    setup: Vec<Vec<String>>,
    undo: Vec<Vec<String>>,
    /// The command nfvs's line must end with (after "add: " or "run: ").
    fix: &'static str,
    /// Commands that stand for the fix where it is not a rule (firewalld's reload); by
    /// default the suggested command itself is run.
    fix_by_hand: Option<Vec<Vec<String>>>,
}

fn cmds(lines: &[&str]) -> Vec<Vec<String>> {
    lines.iter().map(|l| l.split_whitespace().map(str::to_owned).collect()).collect()
}

fn fixture(name: &str) -> String {
    repo_root().join("tests/fixtures/forward").join(name).to_string_lossy().into_owned()
}

fn run_all(lab: &Lab, commands: &[Vec<String>]) {
    for c in commands {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        lab.exec_ok(Role::Director, &args);
    }
}

/// The last line of `d`'s log that contains `marker`.
fn line_with(d: &Daemon, marker: &str) -> String {
    d.wait_for_log(marker, Duration::from_secs(15)).unwrap();
    d.log_lines(marker).pop().unwrap()
}

/// The command a warning line suggests: everything after its last "add: " (or "run: ").
fn suggested(line: &str) -> Vec<String> {
    let at = line.rfind("add: ").or_else(|| line.rfind("run: ")).expect("no command in the line");
    let cmd = &line[at + 5..];
    cmd.split_whitespace().map(str::to_owned).collect()
}

/// Clients whose connections through the VIP time out: `n` curls at once, each giving up
/// after 5 s (its SYN is retried after 1 and 3 s).
fn failing_clients(lab: &Lab, n: usize) {
    let curls: Vec<Child> = (0..n)
        .map(|_| {
            lab.command(Role::Client, "curl")
                .args(["-sS", "--connect-timeout", "5", &format!("http://{VIP}/")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in curls {
        assert!(!c.wait().unwrap().success(), "a connection got through the strict forward policy");
    }
}

fn check_form(form: Form) {
    require_root();
    let lab = Lab::up();
    lab.exec_ok(Role::Director, &["ip", "link", "add", "docker0", "type", "bridge"]);
    let apply_fix = |lab: &Lab, line: &str| {
        let cmd = suggested(line);
        assert_eq!(cmd.join(" "), form.fix, "{line}");
        match &form.fix_by_hand {
            Some(by_hand) => run_all(lab, by_hand),
            None => run_all(lab, &[cmd]),
        }
    };

    // 1. Strict before start-up.
    run_all(&lab, &form.setup);
    let mut d = lab.nfvs().start().unwrap();
    let at_start = line_with(&d, "forward path (start-up check)");
    assert!(at_start.contains("WARN") && at_start.contains("drops the connections nfvs balances"), "{at_start}");
    assert!(lab.client_curl_vip().is_err(), "the strict policy lets connections through: {}", d.log());
    d.signal(libc::SIGHUP).unwrap();
    let on_hup = line_with(&d, "forward path (SIGHUP check)");
    assert_eq!(suggested(&on_hup), suggested(&at_start), "{on_hup}");
    apply_fix(&lab, &at_start);
    rs_of(&lab.client_curl_vip().unwrap_or_else(|e| panic!("{e}; after `{}`:\n{}", form.fix, d.log())));
    d.signal(libc::SIGHUP).unwrap();
    d.wait_for_log("(SIGHUP check): no rule set drops the connections nfvs balances any more", Duration::from_secs(15)).unwrap();
    d.stop(libc::SIGTERM, Duration::from_secs(40)).unwrap();

    // 2. Strict while nfvs runs: no warning at start-up; the stuck entries tell.
    run_all(&lab, &form.undo);
    let d = lab.nfvs().start().unwrap();
    assert!(!d.log().contains("forward path"), "{}", d.log());
    rs_of(&lab.client_curl_vip().unwrap());
    // A sample after this answered connection, so the next ones see nothing newly answered.
    std::thread::sleep(Duration::from_millis(2500));
    run_all(&lab, &form.setup);
    failing_clients(&lab, 3);
    let run_time = line_with(&d, "forward path (run time)");
    assert!(run_time.contains("got no answer to their SYN"), "{run_time}");
    apply_fix(&lab, &run_time);
    rs_of(&lab.client_curl_vip().unwrap());
    d.wait_for_log("forward path (run time): connections nfvs balances are answered again", Duration::from_secs(10)).unwrap();
    assert_eq!(d.log_lines("forward path (run time)").len(), 2, "{}", d.log());
}

/// `iptables-legacy -P FORWARD DROP` with the usual ESTABLISHED,RELATED accept, which lets
/// every packet but the first through.
#[test]
fn iptables_legacy_forward_drop() {
    check_form(Form {
        setup: cmds(&[
            "iptables-legacy -P FORWARD DROP",
            "iptables-legacy -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ]),
        undo: cmds(&["iptables-legacy -F FORWARD", "iptables-legacy -P FORWARD ACCEPT"]),
        fix: "iptables-legacy -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT",
        fix_by_hand: None,
    });
}

/// The same through iptables-nft (Debian's `iptables` since 11): nft tables, read back with
/// iptables-nft-save.
#[test]
fn iptables_nft_forward_drop() {
    check_form(Form {
        setup: cmds(&["iptables-nft -P FORWARD DROP", "iptables-nft -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]),
        undo: cmds(&["iptables-nft -F FORWARD", "iptables-nft -P FORWARD ACCEPT"]),
        fix: "iptables-nft -I FORWARD -m conntrack --ctstate DNAT -j ACCEPT",
        fix_by_hand: None,
    });
}

/// A native `table inet filter { chain forward { ... policy drop; } }`.
#[test]
fn native_nft_inet_forward_drop() {
    check_form(Form {
        setup: vec![vec!["nft".into(), "-f".into(), fixture("nft-inet-drop.nft")]],
        undo: cmds(&["nft delete table inet filter"]),
        fix: "nft insert rule inet filter forward ct status dnat accept",
        fix_by_hand: None,
    });
}

/// docker 28's filter rules (DOCKER-USER, DOCKER-FORWARD, ...) with FORWARD's policy DROP,
/// as docker sets it when it turned ip_forward on itself: the rule goes in DOCKER-USER.
#[test]
fn docker_forward_drop() {
    check_form(Form {
        setup: vec![vec!["iptables-nft-restore".into(), fixture("docker.iptables-save")]],
        undo: cmds(&["iptables-nft -F", "iptables-nft -X", "iptables-nft -P FORWARD ACCEPT"]),
        fix: "iptables-nft -I DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT",
        fix_by_hand: None,
    });
}

/// ufw enabled (its routed policy: deny), as the real ufw 0.36 generated it.
#[test]
fn ufw_forward_drop() {
    check_form(Form {
        setup: vec![vec!["iptables-nft-restore".into(), fixture("ufw.iptables-save")]],
        undo: cmds(&["iptables-nft -F", "iptables-nft -X", "iptables-nft -P FORWARD ACCEPT", "iptables-nft -P INPUT ACCEPT"]),
        fix: "iptables-nft -I ufw-before-forward -m conntrack --ctstate DNAT -j ACCEPT",
        fix_by_hand: None,
    });
}

/// firewalld 2.3+ with StrictForwardPorts=yes rejects DNATed connections it did not make; its
/// default (and every firewalld since 0.7/0.8) accepts them: no warning then. The fix is
/// firewalld's configuration, stood for by loading its non-strict table.
#[test]
fn firewalld_strict_forward_ports() {
    let strict = fixture("firewalld-strict.nft");
    let relaxed = fixture("firewalld-1.3.nft");
    check_form(Form {
        setup: vec![vec!["nft".into(), "-f".into(), strict]],
        undo: cmds(&["nft delete table inet firewalld"]),
        fix: "firewall-cmd --reload",
        fix_by_hand: Some(vec![
            vec!["nft".into(), "delete".into(), "table".into(), "inet".into(), "firewalld".into()],
            vec!["nft".into(), "-f".into(), relaxed],
        ]),
    });
}

/// firewalld's default rule set accepts DNATed connections (`ct status dnat accept`): nfvs
/// works under it and says nothing.
#[test]
fn firewalld_default_lets_nfvs_through_and_nfvs_says_nothing() {
    require_root();
    let lab = Lab::up();
    lab.exec_ok(Role::Director, &["nft", "-f", &fixture("firewalld-1.3.nft")]);
    let d = lab.nfvs().start().unwrap();
    rs_of(&lab.client_curl_vip().unwrap());
    std::thread::sleep(Duration::from_secs(3));
    assert!(!d.log().contains("forward path"), "{}", d.log());
}
