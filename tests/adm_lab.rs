//! Issue 4 end to end: ipvsadm's language against a running `nfvs run` in the seed lab (real
//! kernel, network namespaces, nginx real servers). Every command goes through a symlink named
//! `ipvsadm` to the nfvs binary, first in PATH, as an admin installs it (README), so what is
//! tested is what the seed's own scripts will meet. Needs root; run through scripts/test.sh.
//!
//! Where a test checks which real server took a connection after a live edit, it reads the
//! daemon's log: the decision line (`conn client=... rs=...`) and the edit line (`adm: ...`)
//! are both written while the daemon holds its table lock, so their order in the log is the
//! order in which the table saw them.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use common::*;

/// The seed's virtual service.
const SVC: &str = "192.168.199.200:80";

/// The seed's director script, ipvsadm part (shared/seed/README.md), verbatim.
const SEED_SCRIPT: &str = "\
ipvsadm -C
ipvsadm -A -t 192.168.199.200:80 -s wrr
ipvsadm -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1
ipvsadm -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1
";

/// `ipvsadm -S -n` of the seed's table (lvs-semantics.md §10).
const SEED_SAVE: &str = "\
-A -t 192.168.199.200:80 -s wrr
-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1
-a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1
";

/// The three header lines of `ipvsadm -L -n` (lvs-semantics.md §9.2).
const LIST_HEADER: &str = "\
IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
";

/// The conntrack mark nfvs puts on its entries by default (`--ct-mark`, "nfvs" in ASCII).
const NFVS_CT_MARK: u32 = 0x6e66_7673;

/// A directory holding `ipvsadm -> <the nfvs binary>`, put first in PATH of every command run
/// through it. World-readable, so that an unprivileged user can run the symlink too (the
/// permission test must be refused by the daemon's socket, not by the file system).
struct Ipvsadm {
    dir: PathBuf,
    ns: String,
}

impl Ipvsadm {
    fn new(ns: &str) -> Ipvsadm {
        let dir = tmp_dir().join(format!("{ns}-bin"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        symlink(nfvs_bin(), dir.join("ipvsadm")).unwrap();
        Ipvsadm { dir, ns: ns.to_owned() }
    }

    /// PATH with the symlink's directory first.
    fn path_env(&self) -> String {
        format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap_or_default())
    }

    /// `PROGRAM ARGS` in the namespace, with our PATH (PROGRAM is looked up in it).
    fn command(&self, program: &str) -> Command {
        let mut c = netns_command(&self.ns, program);
        c.env("PATH", self.path_env()).stdin(Stdio::null());
        c
    }

    /// `ipvsadm ARGS`.
    fn run(&self, args: &[&str]) -> Output {
        self.command("ipvsadm").args(args).output().expect("run ipvsadm")
    }

    /// `ipvsadm ARGS` with `input` on its standard input.
    fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command("ipvsadm")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipvsadm");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `ipvsadm ARGS`, which must succeed with nothing on stderr; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "`ipvsadm {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn save(&self) -> String {
        self.ok(&["-S", "-n"])
    }
}

impl Drop for Ipvsadm {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `nfvs run --masquerade 192.168.226.0/24 EXTRA...` in the director, no rules file: it
/// starts with an empty table and waits for ipvsadm commands.
fn start_empty(lab: &Lab, extra: &[&str]) -> Daemon {
    lab.daemon(nfvs_bin()).args(["run", "--masquerade", RS_NET]).args(extra.iter().copied()).start().unwrap()
}

fn curl_rs(lab: &Lab) -> String {
    rs_of(&lab.client_curl_vip().unwrap())
}

fn conn_lines(d: &Daemon) -> Vec<String> {
    d.log_lines("conn client=")
}

/// nfvs's ESTABLISHED conntrack entries whose reply comes from `rs` (the running connections
/// it sent to `rs`).
fn nfvs_entries_of(lab: &Lab, rs: &str) -> Vec<String> {
    let mark = NFVS_CT_MARK.to_string();
    lab.exec_ok(
        Role::Director,
        &["conntrack", "-L", "-p", "tcp", "--state", "ESTABLISHED", "--mark", &mark, "--reply-src", rs],
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

fn nft_table(lab: &Lab) -> String {
    lab.exec_ok(Role::Director, &["nft", "list", "table", "ip", "nfvs"])
}

/// `-L -n` of one wrr service on the VIP with `servers` as (address, weight, active, inactive).
fn list_n(servers: &[(&str, u32, u32, u32)]) -> String {
    let mut s = format!("{LIST_HEADER}TCP  {SVC} wrr\n");
    for (ip, w, a, i) in servers {
        s.push_str(&format!("  -> {:<28} {:<7} {:<6} {:<10} {:<10}\n", format!("{ip}:80"), "Masq", w, a, i));
    }
    s
}

/// The numbers of a `--stats` line ("TCP  VIP:PORT  n n n n n" or "  -> RIP:PORT  n n n n n"),
/// by address.
fn stats_rows(listing: &str) -> BTreeMap<String, Vec<u64>> {
    listing
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() == 7 && (w[0] == "TCP" || w[0] == "->") {
                let nums = w[2..].iter().map(|n| n.parse().ok()).collect::<Option<Vec<u64>>>()?;
                Some((w[1].to_string(), nums))
            } else {
                None
            }
        })
        .collect()
}

/// Issue 4, test 1: the seed's director script, with ipvsadm as the symlink, configures a
/// running daemon; the alternation works; `-S -n` prints exactly the three lines; `-L -n`
/// and `--stats` show the counts IPVS would.
#[test]
fn seed_script_configures_a_running_daemon() {
    require_root();
    let lab = Lab::up();
    let d = start_empty(&lab, &[]);
    let adm = Ipvsadm::new(&lab.director());
    // Our symlink, not some ipvsadm installed on the host, answers.
    let which = adm.command("sh").args(["-c", "command -v ipvsadm"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&which.stdout).trim(), adm.dir.join("ipvsadm").to_string_lossy());
    assert_eq!(adm.save(), "", "a daemon started without --rules has no services");
    assert_eq!(adm.ok(&["-L", "-n"]), LIST_HEADER);

    let out = adm.command("bash").args(["-e", "-c", SEED_SCRIPT]).output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "the seed's script failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let got: Vec<String> = (0..10).map(|_| curl_rs(&lab)).collect();
    let want: Vec<String> = (0..10).map(|i| if i % 2 == 0 { RS2 } else { RS1 }.to_string()).collect();
    assert_eq!(got, want, "nfvs log:\n{}", d.log());
    assert_eq!(adm.save(), SEED_SAVE);

    // The ten connections have closed (the client closes first: TIME_WAIT), so each server
    // shows them inactive, as in lvs-semantics.md §10 after four connections. Conntrack's
    // events arrive asynchronously: wait for them.
    let want = list_n(&[("192.168.226.130", 1, 0, 5), ("192.168.226.131", 1, 0, 5)]);
    let mut got = String::new();
    let settled = wait_until(Duration::from_secs(5), || {
        got = adm.ok(&["-L", "-n"]);
        got == want
    });
    assert!(settled, "-L -n:\n{got}\nwanted:\n{want}");
    // Without -n the service port is named, as ipvsadm names it from /etc/services.
    let named = adm.ok(&["-L"]);
    assert!(named.contains(":http wrr\n") || named.contains(":80 wrr\n"), "{named}");

    let stats = adm.ok(&["-L", "-n", "--stats"]);
    let head: Vec<&str> = stats.lines().take(3).collect();
    assert_eq!(
        head,
        [
            "IP Virtual Server version 1.2.1 (size=4096)",
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes",
            "  -> RemoteAddress:Port",
        ]
    );
    let rows = stats_rows(&stats);
    assert_eq!(rows.len(), 3, "{stats}");
    let svc = &rows[SVC];
    let (a, b) = (&rows["192.168.226.130:80"], &rows["192.168.226.131:80"]);
    assert_eq!((svc[0], a[0], b[0]), (10, 5, 5), "Conns:\n{stats}");
    for (i, col) in ["InPkts", "OutPkts", "InBytes", "OutBytes"].iter().enumerate() {
        let i = i + 1;
        assert!(a[i] > 0 && b[i] > 0, "{col} of a server is 0:\n{stats}");
        assert_eq!(svc[i], a[i] + b[i], "{col}: the service is the sum of its servers:\n{stats}");
    }
    // A short HTTP exchange is at least SYN, request, ACK, FIN... each way: 4+ packets per
    // connection and direction, and the response (~200 bytes) is bigger than the request.
    assert!(a[1] >= 20 && a[2] >= 20, "{stats}");
}

/// One line of the client's curl loop: curl's exit status and what it printed.
#[derive(Debug)]
struct LoopResult {
    status: i32,
    text: String,
}

/// The client requests `/` every 50 ms until `stop` exists; one result per request.
fn start_curl_loop(lab: &Lab, stop: &Path) -> Child {
    let script = format!(
        "while [ ! -e '{}' ]; do out=$(curl -sS --connect-timeout 3 --max-time 10 http://{VIP}/ 2>&1); \
         echo \"$? $out\"; sleep 0.05; done",
        stop.display()
    );
    lab.command(Role::Client, "bash")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the curl loop")
}

fn finish_curl_loop(child: Child, stop: &Path) -> Vec<LoopResult> {
    fs::write(stop, "").unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = fs::remove_file(stop);
    BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .map(|l| {
            let (status, text) = l.split_once(' ').unwrap_or((&l, ""));
            LoopResult { status: status.parse().unwrap_or(-1), text: text.to_string() }
        })
        .collect()
}

/// What the daemon's log says happened, in order.
#[derive(Debug)]
enum Event {
    /// A new connection sent to this real server (address only).
    Conn(String),
    Other(String),
}

fn events(log: &str) -> Vec<Event> {
    log.lines()
        .map(|l| match parse_decision(l).and_then(|d| d.rs) {
            Some(rs) => Event::Conn(rs.to_string()),
            None => Event::Other(l.to_string()),
        })
        .collect()
}

fn position(ev: &[Event], text: &str) -> usize {
    ev.iter()
        .position(|e| matches!(e, Event::Other(l) if l.contains(text)))
        .unwrap_or_else(|| panic!("'{text}' is not in the nfvs log"))
}

/// The real servers of the connections in `ev`.
fn conns(ev: &[Event]) -> Vec<&str> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Conn(rs) => Some(rs.as_str()),
            Event::Other(_) => None,
        })
        .collect()
}

/// A run of wrr decisions follows the weights: only servers of the table, and each server's
/// share within its weight of the exact proportion (a window of a periodic wrr sequence
/// differs from the proportion by less than one partial cycle, lvs-semantics.md §4).
fn assert_follows_weights(phase: &str, got: &[&str], weights: &[(&str, u32)]) {
    let n = got.len();
    assert!(n >= 6, "{phase}: only {n} connections: the phase was too short to judge ({got:?})");
    let total: u32 = weights.iter().map(|(_, w)| w).sum();
    for rs in got {
        assert!(
            weights.iter().any(|(ip, _)| ip == rs),
            "{phase}: a connection went to {rs}, not in the table: {got:?}"
        );
    }
    for (ip, w) in weights {
        let count = got.iter().filter(|r| *r == ip).count() as f64;
        let ideal = n as f64 * f64::from(*w) / f64::from(total);
        assert!(
            (count - ideal).abs() <= f64::from(*w) + 0.5,
            "{phase}: {ip} (weight {w}) got {count} of {n} connections, expected about {ideal:.1}: {got:?}"
        );
    }
}

/// Issue 4, test 2 (edits during traffic): while a loop of curls and a long download run, add
/// a third real server, change a weight, delete the server the download is on, and reload a
/// rewritten rules file with SIGHUP (one more service, the deleted server back with weight 2).
/// No curl fails, the download completes intact (the deleted server drains), and each new
/// connection follows the table as it was when it arrived.
#[test]
fn edits_during_traffic() {
    require_root();
    let lab = Lab::up_with(LabConfig { rs3: true });
    let rules = tmp_dir().join(format!("{}-live.rules", lab.prefix()));
    fs::write(&rules, SEED_SAVE).unwrap();
    let mut d = lab.nfvs_with_rules(&rules).start().unwrap();
    let adm = Ipvsadm::new(&lab.director());
    let out = tmp_dir().join(format!("{}-live.bin", lab.prefix()));
    let stop = tmp_dir().join(format!("{}-live.stop", lab.prefix()));
    let _ = fs::remove_file(&stop);

    // The download is the first connection: wrr sends it to .131 (the server added last).
    let mut download = lab.start_download(&out, "2M");
    wait_download_started(&out);
    let curls = start_curl_loop(&lab, &stop);
    let phase = Duration::from_millis(1200);
    thread::sleep(phase);

    adm.ok(&["-a", "-t", SVC, "-r", "192.168.226.132:80", "-m", "-w", "1"]);
    thread::sleep(phase);
    // Without -m, as admins type it: ipvsadm would make the server direct-routed
    // (lvs-semantics.md §8.3); nfvs, NAT only, keeps it masqueraded (README).
    adm.ok(&["-e", "-t", SVC, "-r", "192.168.226.130:80", "-w", "3"]);
    thread::sleep(phase);
    assert!(download.try_wait().unwrap().is_none(), "the download ended before the delete: the test proves nothing");
    adm.ok(&["-d", "-t", SVC, "-r", "192.168.226.131:80"]);
    // A deleted server drains: its running download keeps its conntrack entry.
    assert_eq!(nfvs_entries_of(&lab, "192.168.226.131").len(), 1, "the download's entry is gone after -d");
    thread::sleep(phase);

    let reloaded = format!(
        "-A -t {SVC} -s wrr\n\
         -a -t {SVC} -r 192.168.226.130:80 -m -w 1\n\
         -a -t {SVC} -r 192.168.226.131:80 -m -w 2\n\
         -a -t {SVC} -r 192.168.226.132:80 -m -w 1\n\
         -A -t 192.168.199.200:8080 -s rr\n\
         -a -t 192.168.199.200:8080 -r 192.168.226.130:80 -m -w 1\n"
    );
    fs::write(&rules, &reloaded).unwrap();
    // Decisions logged before the signal was sent were made with the old table.
    let before_hup = conn_lines(&d).len();
    d.signal(libc::SIGHUP).unwrap();
    d.wait_for_log("SIGHUP: reloaded", Duration::from_secs(5)).unwrap();
    assert!(download.try_wait().unwrap().is_none(), "the download ended before the reload: the test proves less");
    thread::sleep(phase);
    // Rates while both run: ~14 connections/s and the download's ~2 MiB/s (the estimator
    // smooths over 2 s ticks, lvs-semantics.md §9.4, so well below the raw values).
    let rate = adm.ok(&["-L", "-n", "--rate"]);
    let results = finish_curl_loop(curls, &stop);
    let svc_rate = &stats_rows(&rate)[SVC];
    assert!(svc_rate[0] >= 1 && svc_rate[1] >= 10 && svc_rate[2] >= 10, "CPS, InPPS, OutPPS:\n{rate}");
    assert!(svc_rate[4] >= 200_000, "OutBPS:\n{rate}");

    // No request failed, and every answer came from a real server.
    assert!(results.len() >= 40, "only {} requests in ~6 s", results.len());
    let failed: Vec<&LoopResult> =
        results.iter().filter(|r| r.status != 0 || !r.text.starts_with("hello, i am from ")).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}\nnfvs log:\n{}",
        failed.len(),
        results.len(),
        d.log()
    );
    let status = download.wait().unwrap();
    assert!(status.success(), "the download failed ({status}); nfvs log:\n{}", d.log());
    assert_eq!(sha256_file(&out), lab.big_bin_sha256(), "the download is corrupt");
    let _ = fs::remove_file(&out);

    // The new table: exactly the file (sorted as ipvsadm sorts), and the new service works.
    assert_eq!(adm.save(), reloaded);
    let _ = fs::remove_file(&rules);
    assert_eq!(rs_of(&lab.client_curl(&format!("http://{VIP}:8080/")).unwrap()), RS1.to_string());

    // Every request was one decision (no SYN decided twice), plus the download's.
    let log = d.log();
    let ev = events(&log);
    let all = conns(&ev);
    assert_eq!(all.len(), results.len() + 2, "decisions vs requests (+ download, + the :8080 check):\n{log}");
    assert_eq!(all[0], "192.168.226.131", "the download's server");

    // Each phase follows the table of its time.
    let add = position(&ev, "adm: added real server 192.168.226.132:80");
    let edit = position(&ev, "adm: edited real server 192.168.226.130:80 weight 3");
    let del = position(&ev, "adm: deleted real server 192.168.226.131:80");
    let hup = position(&ev, "SIGHUP: reloaded");
    let initial = conns(&ev[..add]);
    assert!(initial.iter().all(|r| *r != "192.168.226.132"), "{initial:?}");
    assert_follows_weights(
        "after -a .132",
        &conns(&ev[add..edit]),
        &[("192.168.226.130", 1), ("192.168.226.131", 1), ("192.168.226.132", 1)],
    );
    assert_follows_weights(
        "after -e .130 -w 3",
        &conns(&ev[edit..del]),
        &[("192.168.226.130", 3), ("192.168.226.131", 1), ("192.168.226.132", 1)],
    );
    // From the delete up to the last decision logged before SIGHUP was sent.
    let n_before_del = conns(&ev[..del]).len();
    let after_del = &all[n_before_del..before_hup.max(n_before_del)];
    assert_follows_weights("after -d .131", after_del, &[("192.168.226.130", 3), ("192.168.226.132", 1)]);
    // The last decision is the :8080 check (rr, one server): leave it out of the wrr run.
    let after_hup = conns(&ev[hup..]);
    let after_hup = &after_hup[..after_hup.len().saturating_sub(1)];
    assert_follows_weights(
        "after SIGHUP reload",
        after_hup,
        &[("192.168.226.130", 1), ("192.168.226.131", 2), ("192.168.226.132", 1)],
    );
}

/// Issue 4, SIGHUP: a bad rules file changes nothing (live edits stay, the warning names the
/// line); a good one makes the table exactly the file's (live edits are undone).
#[test]
fn sighup_reload_is_all_or_nothing() {
    require_root();
    let lab = Lab::up();
    let rules = tmp_dir().join(format!("{}-hup.rules", lab.prefix()));
    fs::write(&rules, SEED_SAVE).unwrap();
    let mut d = lab.nfvs_with_rules(&rules).start().unwrap();
    let adm = Ipvsadm::new(&lab.director());
    adm.ok(&["-e", "-t", SVC, "-r", "192.168.226.130:80", "-m", "-w", "4"]);
    let live = adm.save();
    let table = nft_table(&lab);

    // A good first line, then a bad one: nothing of the file may be applied.
    fs::write(
        &rules,
        format!("-A -t 192.168.199.200:81 -s rr\n{SEED_SAVE}-a -t {SVC} -r 192.168.226.132:80 -m -w nine\n"),
    )
    .unwrap();
    d.signal(libc::SIGHUP).unwrap();
    d.wait_for_log("SIGHUP: reload refused", Duration::from_secs(5)).unwrap();
    let warning = d.log_lines("SIGHUP: reload refused").join("\n");
    assert!(warning.contains(":5:") && warning.contains("illegal weight specified"), "{warning}");
    assert_eq!(adm.save(), live);
    assert_eq!(nft_table(&lab), table);

    fs::write(&rules, SEED_SAVE).unwrap();
    d.signal(libc::SIGHUP).unwrap();
    d.wait_for_log("SIGHUP: reloaded", Duration::from_secs(5)).unwrap();
    assert_eq!(adm.save(), SEED_SAVE);
    // Issue 10: the log says which live edit the file undid, not only how many changes.
    let undone = d.log_lines("SIGHUP: edited real server").join("\n");
    assert!(undone.contains("SIGHUP: edited real server 192.168.226.130:80 weight 1 of -t 192.168.199.200:80"), "{undone}");
    let _ = fs::remove_file(&rules);
    assert_eq!(curl_rs(&lab), RS2.to_string());
}

/// Runs a refused command and checks ipvsadm's answer: exactly `message` as the first line of
/// stderr (nfvs may add advice on further lines), nothing on stdout, exit status `code`.
/// Returns what differs, if anything.
fn check_refused(adm: &Ipvsadm, args: &[&str], message: &str, code: i32) -> Option<String> {
    let out = adm.run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ok = out.status.code() == Some(code) && stderr.lines().next() == Some(message) && out.stdout.is_empty();
    (!ok).then(|| {
        format!(
            "`ipvsadm {}`: exit {:?}, stderr {stderr:?}, stdout {:?}; ipvsadm says {message:?}, exit {code}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Issue 4, test 3: bad commands give ipvsadm's messages and exit statuses
/// (lvs-semantics.md §8.4) and change nothing: neither the table nor the nft rules.
#[test]
fn bad_commands_give_ipvsadm_errors_and_change_nothing() {
    require_root();
    let lab = Lab::up();
    let _d = start_empty(&lab, &[]);
    let adm = Ipvsadm::new(&lab.director());
    adm.run_stdin(&["-R"], SEED_SAVE);
    assert_eq!(adm.save(), SEED_SAVE);
    let rules = nft_table(&lab);
    let rs = "192.168.226.130:80";
    let cases: &[(&[&str], &str, i32)] = &[
        // Kernel-side errors: one line, 255.
        (&["-a", "-t", "1.2.3.4:80", "-r", rs, "-m"], "Service not defined", 255),
        (&["-e", "-t", "1.2.3.4:80", "-r", rs, "-m", "-w", "2"], "Service not defined", 255),
        (&["-d", "-t", "1.2.3.4:80", "-r", rs], "Service not defined", 255),
        (&["-D", "-t", "1.2.3.4:80"], "No such service", 255),
        (&["-E", "-t", "1.2.3.4:80", "-s", "rr"], "No such service", 255),
        (&["-Z", "-t", "1.2.3.4:80"], "No such service", 255),
        (&["-a", "-t", SVC, "-r", rs, "-m", "-w", "5"], "Destination already exists", 255),
        (&["-e", "-t", SVC, "-r", "192.168.226.140:80", "-m"], "No such destination", 255),
        (&["-d", "-t", SVC, "-r", "192.168.226.140:80"], "No such destination", 255),
        (&["-A", "-t", SVC, "-s", "rr"], "Service already exists", 255),
        (&["-A", "-t", "192.168.199.200:81", "-s", "nosuch"], "Scheduler or persistence engine not found", 255),
        // -E to an unknown scheduler must keep the old one.
        (&["-E", "-t", SVC, "-s", "nosuch"], "Scheduler or persistence engine not found", 255),
        // Usage errors: 2.
        (&["-a", "-t", SVC, "-r", "192.168.226.300:80", "-m"], "illegal real server address[:port] specified", 2),
        (&["-A", "-t", "192.168.199.300:80", "-s", "rr"], "illegal virtual server address[:port] specified", 2),
        (&["-a", "-t", SVC, "-r", "192.168.226.132:80", "-m", "-w", "70000"], "illegal weight specified", 2),
        (&["-a", "-t", SVC, "-m"], "You need to supply the 'real-server' option for the 'add-server' command", 2),
        (&["-A", "-t", SVC, "-s", "rr", "-w", "1"], "Illegal 'weight' option with the 'add-service' command", 2),
    ];
    let mut wrong = Vec::new();
    for (args, message, code) in cases {
        wrong.extend(check_refused(&adm, args, message, *code));
        assert_eq!(adm.save(), SEED_SAVE, "`ipvsadm {}` changed the table", args.join(" "));
        assert_eq!(nft_table(&lab), rules, "`ipvsadm {}` changed the nft rules", args.join(" "));
    }
    // The service still balances as before.
    assert_eq!(curl_rs(&lab), RS2.to_string());
    assert_eq!(curl_rs(&lab), RS1.to_string());
    assert!(wrong.is_empty(), "answers that are not ipvsadm's:\n{}", wrong.join("\n"));
}

/// The control socket path nfvs uses by default in namespace `ns` (adm/control.rs:
/// `control-netns-<inode>.sock` under /run/nfvs).
fn default_socket(ns: &str) -> PathBuf {
    let ino = fs::metadata(format!("/run/netns/{ns}")).unwrap().ino();
    PathBuf::from(format!("/run/nfvs/control-netns-{ino}.sock"))
}

/// Issue 4, test 4: a client without permission on the socket is refused with ipvsadm's
/// EPERM message, for reading and for writing, and the table is unchanged. Also when the
/// socket file has been made world-writable by mistake: the daemon checks the peer's uid.
#[test]
fn client_without_permission_is_refused() {
    require_root();
    let lab = Lab::up();
    let _d = start_empty(&lab, &[]);
    let adm = Ipvsadm::new(&lab.director());
    adm.run_stdin(&["-R"], SEED_SAVE);
    let sock = default_socket(&lab.director());
    let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", sock.display());

    let as_nobody = |args: &[&str]| {
        adm.command("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ipvsadm"])
            .args(args)
            .output()
            .unwrap()
    };
    for (why, prepare) in [("mode 0600", 0o600), ("mode 0666 (the daemon's own uid check)", 0o666)] {
        fs::set_permissions(&sock, fs::Permissions::from_mode(prepare)).unwrap();
        for args in [&["-C"][..], &["-a", "-t", SVC, "-r", "192.168.226.132:80", "-m"], &["-L", "-n"], &["-S", "-n"]] {
            let out = as_nobody(args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(255), "{why}: `ipvsadm {}` as nobody: {stderr}", args.join(" "));
            assert!(stderr.contains("Permission denied"), "{why}: `ipvsadm {}`: {stderr:?}", args.join(" "));
            assert!(
                out.stdout.is_empty(),
                "{why}: `ipvsadm {}` printed {:?}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        assert_eq!(adm.save(), SEED_SAVE, "{why}");
    }
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Splits a `-L -c` row into (proto, expire, state, source, virtual, destination).
fn conn_row(line: &str) -> (String, String, String, String, String, String) {
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(w.len(), 6, "row {line:?}");
    (w[0].into(), w[1].into(), w[2].into(), w[3].into(), w[4].into(), w[5].into())
}

/// Issue 4, test 5a: `-R` from standard input (lines with and without a leading `ipvsadm`),
/// `-L -c` with live and closed connections, `-Z` for one service and for all (statistics
/// only: the connection counts stay).
#[test]
fn restore_connections_listing_and_zero() {
    require_root();
    let lab = Lab::up();
    let d = start_empty(&lab, &[]);
    let adm = Ipvsadm::new(&lab.director());
    let out = adm.run_stdin(&["-R"], SEED_SAVE);
    assert!(out.status.success(), "-R: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(adm.save(), SEED_SAVE);
    // Restore does not clear first; saved lines may start with the program name (§8.3).
    let more =
        "ipvsadm -A -t 192.168.199.200:81 -s rr\nipvsadm -a -t 192.168.199.200:81 -r 192.168.226.130:80 -m -w 2\n";
    let out = adm.run_stdin(&["-R"], more);
    assert!(out.status.success(), "-R: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(adm.save(), format!("{SEED_SAVE}{}", more.replace("ipvsadm ", "")));
    // Diverted: an element of set services (issue 11 #7).
    assert!(nft_table(&lab).contains("192.168.199.200 . 81"), "no divert for the restored service:\n{}", nft_table(&lab));

    // Four closed connections on :80, one on :81, then a download (on .131) that stays open.
    let got: Vec<String> = (0..4).map(|_| curl_rs(&lab)).collect();
    assert_eq!(got, [RS2, RS1, RS2, RS1].map(|a| a.to_string()));
    assert_eq!(rs_of(&lab.client_curl(&format!("http://{VIP}:81/")).unwrap()), RS1.to_string());
    let file = tmp_dir().join(format!("{}-c.bin", lab.prefix()));
    let mut download = lab.start_download(&file, "2M");
    wait_download_started(&file);

    let listing = adm.ok(&["-L", "-n", "-c"]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(
        lines[..2],
        ["IPVS connection entries", "pro expire state       source             virtual            destination"]
    );
    let rows: Vec<_> = lines[2..].iter().map(|l| conn_row(l)).collect();
    assert_eq!(rows.len(), 6, "{listing}");
    for (proto, expire, _, src, _, _) in &rows {
        assert_eq!(proto, "TCP", "{listing}");
        let (m, s) = expire.split_once(':').unwrap_or_else(|| panic!("expire {expire:?}"));
        assert!(
            m.len() >= 2 && s.len() == 2 && m.parse::<u32>().is_ok() && s.parse::<u32>().is_ok_and(|s| s < 60),
            "expire {expire:?}"
        );
        assert!(src.starts_with("192.168.199.1:"), "{listing}");
    }
    let established: Vec<_> = rows.iter().filter(|r| r.2 == "ESTABLISHED").collect();
    assert_eq!(established.len(), 1, "{listing}");
    assert_eq!((established[0].4.as_str(), established[0].5.as_str()), (SVC, "192.168.226.131:80"), "{listing}");
    let closed = rows.iter().filter(|r| r.2 == "TIME_WAIT").count();
    assert_eq!(closed, 5, "{listing}");
    assert_eq!(
        rows.iter().filter(|r| r.4 == "192.168.199.200:81" && r.5 == "192.168.226.130:80").count(),
        1,
        "{listing}"
    );

    // The download counts as active on .131, its two closed connections inactive (conntrack
    // events arrive asynchronously: wait for them).
    let want = format!("  -> {:<28} Masq    1      1          2         \n", "192.168.226.131:80");
    let mut svc80 = String::new();
    let settled = wait_until(Duration::from_secs(5), || {
        svc80 = adm.ok(&["-L", "-n", "-t", SVC]);
        svc80.contains(&want)
    });
    assert!(settled, "{svc80}");

    // -Z of one service zeroes only its statistics.
    let conns_of = |listing: &str, key: &str| stats_rows(listing).get(key).map(|r| r[0]);
    let stats = adm.ok(&["-L", "-n", "--stats"]);
    assert_eq!(conns_of(&stats, SVC), Some(5), "{stats}");
    assert_eq!(conns_of(&stats, "192.168.199.200:81"), Some(1), "{stats}");
    adm.ok(&["-Z", "-t", "192.168.199.200:81"]);
    let stats = adm.ok(&["-L", "-n", "--stats"]);
    assert_eq!(conns_of(&stats, SVC), Some(5), "{stats}");
    assert_eq!(stats_rows(&stats)["192.168.199.200:81"], [0, 0, 0, 0, 0], "{stats}");
    adm.ok(&["-Z"]);
    let stats = adm.ok(&["-L", "-n", "--stats"]);
    for (key, row) in stats_rows(&stats) {
        assert_eq!(row[0], 0, "{key}: Conns after -Z:\n{stats}");
    }
    // IPVS's zero clears statistics, not the connection table.
    let svc80 = adm.ok(&["-L", "-n", "-t", SVC]);
    assert!(svc80.contains(&want), "-Z changed the connection counts:\n{svc80}");

    let status = download.wait().unwrap();
    assert!(status.success(), "download: {status}\n{}", d.log());
    assert_eq!(sha256_file(&file), lab.big_bin_sha256());
    let _ = fs::remove_file(&file);
}

/// Issue 4, test 5b: by default a deleted real server drains: its running download completes
/// intact, while every new connection goes to the remaining server; the same when the whole
/// service is deleted.
#[test]
fn deleted_server_drains_by_default() {
    require_root();
    let lab = Lab::up();
    let d = lab.nfvs().start().unwrap();
    let adm = Ipvsadm::new(&lab.director());
    let file = tmp_dir().join(format!("{}-drain.bin", lab.prefix()));
    let mut download = lab.start_download(&file, "2M");
    wait_download_started(&file);
    assert_eq!(nfvs_entries_of(&lab, "192.168.226.131").len(), 1, "the download's entry (wrr's first pick)");
    adm.ok(&["-d", "-t", SVC, "-r", "192.168.226.131:80"]);
    assert_eq!(nfvs_entries_of(&lab, "192.168.226.131").len(), 1, "the entry must stay while draining");
    for _ in 0..4 {
        assert_eq!(curl_rs(&lab), RS1.to_string());
    }
    let want = list_n(&[("192.168.226.130", 1, 0, 4)]);
    let mut got = String::new();
    let settled = wait_until(Duration::from_secs(5), || {
        got = adm.ok(&["-L", "-n"]);
        got == want
    });
    assert!(settled, "-L -n:\n{got}\nwanted:\n{want}");
    assert!(download.try_wait().unwrap().is_none(), "the download ended too early for the test to mean anything");
    // Deleting the whole service removes its divert rule: new connections reach the
    // director itself (refused), the running download still completes.
    adm.ok(&["-D", "-t", SVC]);
    assert!(!nft_table(&lab).contains("dport 80"), "{}", nft_table(&lab));
    let refused = lab.client_curl_vip().expect_err("a deleted service must not answer");
    assert!(refused.to_string().contains("exit status: 7"), "{refused:#}");
    let status = download.wait().unwrap();
    assert!(status.success(), "the drained download failed ({status}); nfvs log:\n{}", d.log());
    assert_eq!(sha256_file(&file), lab.big_bin_sha256());
    let _ = fs::remove_file(&file);
    assert_eq!(adm.save(), "");
}

/// Issue 4, test 5c: with `--expire-nodest` deleting a real server deletes its conntrack
/// entries at once (IPVS's expire_nodest_conn), and the running download is cut: it must not
/// come back to life, whichever side of the flow sends the next segment.
///
/// The client is paused (SIGSTOP) across the delete, so its receive window is full and the
/// real server's zero-window probe is the first segment after the delete: the case where a
/// mid-stream segment could make conntrack pick the flow up again (nf_conntrack_tcp_loose)
/// and MASQUERADE give it back its VIP address, so the flow would carry on unbalanced.
#[test]
fn expire_nodest_cuts_the_deleted_servers_connections() {
    require_root();
    let lab = Lab::up();
    let loose = lab.sysctl(Role::Director, "net.netfilter.nf_conntrack_tcp_loose");
    let mut d = lab.nfvs().arg("--expire-nodest").start().unwrap();
    let adm = Ipvsadm::new(&lab.director());
    let file = tmp_dir().join(format!("{}-expire.bin", lab.prefix()));
    let mut download = lab.start_download(&file, "2M");
    wait_download_started(&file);
    assert_eq!(nfvs_entries_of(&lab, "192.168.226.131").len(), 1, "the download's entry");
    // `ip netns exec` execs curl: the child's PID is curl's.
    let pid = i32::try_from(download.id()).unwrap();
    // SAFETY: kill(2) on our own unreaped child; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    thread::sleep(Duration::from_millis(500));
    adm.ok(&["-d", "-t", SVC, "-r", "192.168.226.131:80"]);
    assert!(nfvs_entries_of(&lab, "192.168.226.131").is_empty(), "the entry is still there after -d:\n{}", d.log());
    assert!(d.log().contains("expire-nodest: deleted 1 connection(s)"), "{}", d.log());
    // Long enough for the real server's first zero-window probes (persist timer, >= 200 ms).
    thread::sleep(Duration::from_millis(1500));
    let table = lab.exec_ok(Role::Director, &["conntrack", "-L"]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let revived: Vec<&str> = table.lines().filter(|l| l.contains("192.168.226.131")).collect();

    // Without its entry the flow cannot continue: the client's next segment reaches the
    // director itself, which resets it.
    let mut status = None;
    let ended = wait_until(Duration::from_secs(10), || {
        status = download.try_wait().unwrap();
        status.is_some()
    });
    let size = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let _ = fs::remove_file(&file);
    assert!(
        revived.is_empty(),
        "the expired flow is tracked again, without nfvs's mark (picked up mid-stream and \
         masqueraded):\n{}",
        revived.join("\n")
    );
    assert!(ended, "the download still runs 10 s after its server was deleted with --expire-nodest");
    assert!(!status.unwrap().success(), "the download completed ({size} bytes) although its server was expired");
    assert!(size < 20 * 1024 * 1024, "{size} bytes arrived");
    // New connections go to the remaining server.
    assert_eq!(curl_rs(&lab), RS1.to_string());
    // Whatever nfvs changed in the namespace to keep expired flows dead, a clean stop undoes.
    let exit = d.stop(libc::SIGTERM, Duration::from_secs(20)).unwrap();
    assert!(exit.success(), "{exit}\n{}", d.log());
    assert_eq!(lab.sysctl(Role::Director, "net.netfilter.nf_conntrack_tcp_loose"), loose);
}

// ---------------------------------------------------------------------------------------
// Issue 10: what a new user meets

/// `PROGRAM ARGS` with standard input closed, outside any namespace: for what the client
/// answers itself (help, usage errors).
fn run_plain(program: &Path, args: &[&str]) -> Output {
    Command::new(program).args(args).stdin(Stdio::null()).output().unwrap()
}

/// `nfvs ARGS` in `ns`, standard input closed.
fn nfvs_in(ns: &NetNs, args: &[&str]) -> Output {
    ns.command(nfvs_bin()).args(args).stdin(Stdio::null()).output().unwrap()
}

/// Issue 10: `nfvs adm -h` and `nfvs adm --help` print ipvsadm's help, the option list the
/// `ipvsadm` symlink's `-h` prints (its usage lines name `nfvs adm`), not clap's help of the
/// subcommand; so the "unknown option" hint, which sends the user to `nfvs adm --help`, leads
/// to ipvsadm's options. `nfvs help adm` still describes the subcommand itself.
#[test]
fn adm_help_is_ipvsadms_help() {
    let dir = tmp_dir().join(format!("help-{}-bin", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let ipvsadm = dir.join("ipvsadm");
    symlink(nfvs_bin(), &ipvsadm).unwrap();
    let out = run_plain(&ipvsadm, &["-h"]);
    let _ = fs::remove_dir_all(&dir);
    assert!(out.status.success(), "ipvsadm -h: {}", String::from_utf8_lossy(&out.stderr));
    let symlink_help = String::from_utf8_lossy(&out.stdout).into_owned();
    for option in ["--tcp-service|-t", "--masquerading -m", "--persistent-conn", "--sched-flags  -b"] {
        assert!(symlink_help.contains(option), "{option} is not in ipvsadm -h:\n{symlink_help}");
    }
    let want = symlink_help.replace("\n  ipvsadm ", "\n  nfvs adm ");
    assert_ne!(want, symlink_help, "the usage lines name the program");
    for h in ["-h", "--help"] {
        let out = run_plain(&nfvs_bin(), &["adm", h]);
        assert!(out.status.success() && out.stderr.is_empty(), "nfvs adm {h}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "nfvs adm {h}");
    }
    let out = run_plain(&nfvs_bin(), &["adm", "--frobnicate"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr.contains("--frobnicate: unknown option") && stderr.contains("`nfvs adm --help`"), "{stderr}");
    let out = run_plain(&nfvs_bin(), &["help", "adm"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("--control <PATH>") && help.contains("`nfvs adm -h`"), "{help}");
}

/// Issue 10: `--control PATH` (and `--control=PATH`) is `nfvs adm`'s own option wherever it
/// comes among the ipvsadm arguments, also last, where scripts append it.
#[test]
fn adm_takes_control_anywhere() {
    require_root();
    let ns = NetNs::new();
    let sock = tmp_dir().join(format!("{}-control.sock", ns.name()));
    let sock_arg = sock.to_str().unwrap();
    let _d = ns.daemon(nfvs_bin()).args(["run", "--control", sock_arg]).start().unwrap();
    let adm = |args: &[&str]| {
        let out = nfvs_in(&ns, &[&["adm"], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success() && stderr.is_empty(), "nfvs adm {}: {stderr}", args.join(" "));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    adm(&["--control", sock_arg, "-A", "-t", "10.0.0.1:80", "-s", "rr"]);
    adm(&["-a", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80", "-m", "--control", sock_arg]);
    let control_eq = format!("--control={sock_arg}");
    let want = "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m -w 1\n";
    assert_eq!(adm(&["-S", &control_eq, "-n"]), want);
    assert_eq!(adm(&["-S", "-n", "--control", sock_arg]), want);
}

/// Issue 10: `-L -c` lists persistence templates as IPVS does: state NONE, the client with
/// port 0, the VIP and service port, the chosen server, the persistence timeout counting down.
#[test]
fn connection_listing_shows_persistence_templates() {
    require_root();
    let lab = Lab::up();
    let _d = start_empty(&lab, &[]);
    let adm = Ipvsadm::new(&lab.director());
    let persistent = SEED_SAVE.replace(" -s wrr\n", " -s rr -p 300\n");
    let out = adm.run_stdin(&["-R"], &persistent);
    assert!(out.status.success(), "-R: {}", String::from_utf8_lossy(&out.stderr));
    // Both connections go to .131: the second is a template hit.
    assert_eq!((curl_rs(&lab), curl_rs(&lab)), (RS2.to_string(), RS2.to_string()));
    let listing = adm.ok(&["-L", "-n", "-c"]);
    let rows: Vec<_> = listing.lines().skip(2).map(conn_row).collect();
    let templates: Vec<_> = rows.iter().filter(|r| r.2 == "NONE").collect();
    assert_eq!(templates.len(), 1, "{listing}");
    let (proto, expire, _, source, virt, dest) = templates[0];
    assert_eq!(
        (proto.as_str(), source.as_str(), virt.as_str(), dest.as_str()),
        ("TCP", "192.168.199.1:0", SVC, "192.168.226.131:80"),
        "{listing}"
    );
    assert!(["05:00", "04:59", "04:58", "04:57", "04:56", "04:55"].contains(&expire.as_str()), "{listing}");
    assert_eq!(rows.iter().filter(|r| r.2 == "TIME_WAIT").count(), 2, "{listing}");
}

/// Issue 10: a rules file that cannot be read, and a second daemon in a namespace that has
/// one, are reported in one line that says the OS's reason once.
#[test]
fn startup_errors_say_the_reason_once() {
    require_root();
    let stderr_of = |out: Output| {
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = "/nonexistent/nfvs-issue10.rules";
    let want = format!("nfvs: error: cannot read rules file {missing}: No such file or directory (os error 2)\n");
    for cmd in ["check", "run"] {
        assert_eq!(stderr_of(run_plain(&nfvs_bin(), &[cmd, "--rules", missing])), want, "nfvs {cmd}");
    }
    let latin1 = tmp_dir().join(format!("issue10-{}-latin1.rules", std::process::id()));
    fs::write(&latin1, b"-A -t 10.0.0.1:80 -s rr\n# caf\xe9\n").unwrap();
    let got = stderr_of(run_plain(&nfvs_bin(), &["check", "--rules", latin1.to_str().unwrap()]));
    let _ = fs::remove_file(&latin1);
    assert_eq!(got, format!("nfvs: error: {}:2: not UTF-8 text\n", latin1.display()));

    let ns = NetNs::new();
    let sock = tmp_dir().join(format!("{}-control.sock", ns.name()));
    let sock = sock.to_str().unwrap();
    let first = ns.daemon(nfvs_bin()).args(["run", "--control", sock]).start().unwrap();
    let second = |extra: &[&str]| stderr_of(nfvs_in(&ns, &[&["run", "--control", sock], extra].concat()));
    // On the first daemon's queue, or on another: one director per namespace (issue 11), said
    // once, before anything (a queue, the control socket) is touched.
    let want = format!(
        "nfvs: error: another nfvs daemon (pid {}) already runs in this network namespace: one director per \
         namespace (stop it first, or run this one in another namespace)\n",
        first.pid()
    );
    assert_eq!(second(&[]), want);
    assert_eq!(second(&["--queue", "7"]), want);
    // The first daemon still answers.
    let out = nfvs_in(&ns, &["adm", "--control", sock, "-S"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 10: addresses that cannot work. A real server IPVS refuses (not unicast) is refused
/// with ipvsadm's message for the kernel's EINVAL; what IPVS takes (a VIP of 0.0.0.0, a real
/// server on 127.0.0.0/8 or on the VIP) is taken with a warning saying why: by `nfvs check`
/// (FILE:LINE), in the daemon's log, and by `nfvs adm` once the daemon has taken it.
#[test]
fn addresses_that_cannot_work_are_refused_or_warned_about() {
    require_root();
    let prefix = tmp_dir().join(format!("issue10-{}", std::process::id()));
    let file = prefix.with_extension("rules");
    let text = "-A -t 0.0.0.0:80 -s rr\n-A -t 10.0.0.1:80 -s rr\n\
                -a -t 10.0.0.1:80 -r 127.0.0.1:80 -m\n-a -t 10.0.0.1:80 -r 10.0.0.1:8080 -m\n";
    fs::write(&file, text).unwrap();
    let path = file.to_str().unwrap();
    let out = run_plain(&nfvs_bin(), &["check", "--rules", path]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    for (line, want) in lines.iter().zip([
        format!("nfvs: warning: {path}:1: virtual service -t 0.0.0.0:80: 0.0.0.0 is no address a client connects to"),
        format!("nfvs: warning: {path}:3: real server 127.0.0.1:80 of -t 10.0.0.1:80 is a loopback address"),
        format!("nfvs: warning: {path}:4: real server 10.0.0.1:8080 of -t 10.0.0.1:80 is the virtual address itself"),
    ]) {
        assert!(line.starts_with(&want), "{line:?} does not start with {want:?}");
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);

    let bad = prefix.with_extension("bad.rules");
    fs::write(&bad, "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 0.0.0.0:80 -m\n").unwrap();
    let out = run_plain(&nfvs_bin(), &["check", "--rules", bad.to_str().unwrap()]);
    let _ = fs::remove_file(&bad);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "nfvs: error: {}:2: Invalid operation.  Possibly wrong module version, address not unicast, ... \
             (0.0.0.0: a real server needs a unicast address (IPVS refuses it too))\n",
            bad.display()
        )
    );

    let ns = NetNs::new();
    let sock = prefix.with_extension("sock");
    let sock = sock.to_str().unwrap();
    let d = ns.daemon(nfvs_bin()).args(["run", "--rules", path, "--control", sock]).start().unwrap();
    let _ = fs::remove_file(&file);
    assert!(d.log().contains(&format!("{path}:3: real server 127.0.0.1:80 of -t 10.0.0.1:80 is a loopback")), "{}", d.log());
    let adm = |args: &[&str]| nfvs_in(&ns, &[&["adm", "--control", sock], args].concat());
    let saved = String::from_utf8_lossy(&adm(&["-S", "-n"]).stdout).into_owned();
    let out = adm(&["-a", "-t", "10.0.0.1:80", "-r", "255.255.255.255:80", "-m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines[0], "Invalid operation.  Possibly wrong module version, address not unicast, ...");
    assert!(lines[1].starts_with("  nfvs: 255.255.255.255: a real server needs a unicast address"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&adm(&["-S", "-n"]).stdout), saved);
    let out = adm(&["-e", "-t", "10.0.0.1:80", "-r", "127.0.0.1:80", "-m", "-w", "2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert!(stderr.starts_with("nfvs: warning: real server 127.0.0.1:80 of -t 10.0.0.1:80 is a loopback") && stderr.lines().count() == 1, "{stderr}");
    let saved = String::from_utf8_lossy(&adm(&["-S", "-n"]).stdout).into_owned();
    assert!(saved.contains("-a -t 10.0.0.1:80 -r 127.0.0.1:80 -m -w 2\n"), "{saved}");
}
