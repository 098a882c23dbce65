//! Golden output of every ipvsadm listing format (lvs-semantics.md §9-10).
//!
//! Tables are built from rules text through `rules::parse_rules` and listings are asked for
//! with ipvsadm's own words (`-L -n --stats`, `-S -n`, ...) parsed by `args::parse_line`, so
//! each test reads like an ipvsadm session. Expected texts are written one line per literal so
//! the trailing spaces ipvsadm's `%-Ns` formats leave are visible.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use nfvs::adm::args::parse_line;
use nfvs::adm::command::{Command, ListFormat, ListWhat};
use nfvs::adm::etc_services::PortNames;
use nfvs::adm::listing::{self, ConnRow, ListError};
use nfvs::adm::rules::parse_rules;
use nfvs::adm::usage;
use nfvs::sched::Request;
use nfvs::service::{DestId, ServiceKey, Table};
use nfvs::model::Protocol;
use nfvs::stats::{Counters, NoStats, Rates, StatsSource};

/// The seed lab's director configuration (lvs-semantics.md §10).
const LAB: &str = "\
-A -t 192.168.199.200:80 -s wrr
-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1
-a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1
";

fn table(rules: &str) -> Table {
    parse_rules(rules, "test.rules").expect("rules parse")
}

/// Counters and rates by service key and by real-server address, as a daemon might keep them.
#[derive(Default)]
struct Fixed {
    services: HashMap<ServiceKey, (Counters, Rates)>,
    dests: HashMap<(ServiceKey, DestId), (Counters, Rates)>,
}

impl StatsSource for Fixed {
    fn service(&self, key: &ServiceKey) -> (Counters, Rates) {
        self.services.get(key).copied().unwrap_or_default()
    }
    fn dest(&self, key: &ServiceKey, dest: DestId) -> (Counters, Rates) {
        self.dests.get(&(*key, dest)).copied().unwrap_or_default()
    }
}

fn lab_key() -> ServiceKey {
    ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::new(192, 168, 199, 200), port: 80 }
}

fn dest_id(t: &Table, key: &ServiceKey, rs: [u8; 4]) -> DestId {
    let svc = &t.services()[t.find(key).expect("service")];
    svc.dests[svc.dest_index(Ipv4Addr::from(rs), 80).expect("dest")].id
}

fn counters(c: [u64; 5]) -> Counters {
    Counters { conns: c[0], inpkts: c[1], outpkts: c[2], inbytes: c[3], outbytes: c[4] }
}

fn rates(r: [u64; 5]) -> Rates {
    Rates { cps: r[0], inpps: r[1], outpps: r[2], inbps: r[3], outbps: r[4] }
}

/// Runs one ipvsadm listing command line against a table, the way `nfvs adm` will.
fn ipvsadm_with(t: &Table, line: &str, stats: &dyn StatsSource, names: &PortNames, conns: &[ConnRow]) -> String {
    match parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}")) {
        Command::List(ListWhat::All, fmt) => listing::list(t, None, &fmt, stats, names).expect("list"),
        Command::List(ListWhat::Service(k), fmt) => listing::list(t, Some(&k), &fmt, stats, names).expect("list"),
        Command::List(ListWhat::Connections, fmt) => listing::connections(conns, &fmt, names),
        Command::List(ListWhat::Timeouts, _) => listing::timeouts(900, 120, 300),
        Command::Save { numeric } => listing::save(t, numeric, names),
        c => panic!("not a listing: {c:?}"),
    }
}

fn ipvsadm(t: &Table, line: &str) -> String {
    ipvsadm_with(t, line, &NoStats, &PortNames::none(), &[])
}

// ---------------------------------------------------------------------------------------
// §10: the seed lab, verbatim

#[test]
fn seed_lab_list_numeric() {
    let expected = concat!(
        "IP Virtual Server version 1.2.1 (size=4096)\n",
        "Prot LocalAddress:Port Scheduler Flags\n",
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
        "TCP  192.168.199.200:80 wrr\n",
        "  -> 192.168.226.130:80           Masq    1      0          0         \n",
        "  -> 192.168.226.131:80           Masq    1      0          0         \n",
    );
    assert_eq!(ipvsadm(&table(LAB), "-L -n"), expected);
    // Clustered and long spellings are the same command.
    assert_eq!(ipvsadm(&table(LAB), "-Ln"), expected);
    assert_eq!(ipvsadm(&table(LAB), "--list --numeric"), expected);
}

#[test]
fn seed_lab_after_four_closed_connections() {
    let mut t = table(LAB);
    for d in &mut t.services_mut()[0].dests {
        d.inactive = 2;
    }
    let out = ipvsadm(&t, "-L -n");
    let servers: Vec<&str> = out.lines().skip(4).collect();
    assert_eq!(
        servers,
        [
            "  -> 192.168.226.130:80           Masq    1      0          2         ",
            "  -> 192.168.226.131:80           Masq    1      0          2         ",
        ]
    );
}

#[test]
fn seed_lab_save_numeric() {
    // Exactly the three lines the director script gave, though the kernel list order is
    // .131, .130: -S sorts.
    assert_eq!(
        ipvsadm(&table(LAB), "-S -n"),
        concat!(
            "-A -t 192.168.199.200:80 -s wrr\n",
            "-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\n",
            "-a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1\n",
        )
    );
}

#[test]
fn seed_lab_stats() {
    let t = table(LAB);
    let k = lab_key();
    let mut s = Fixed::default();
    s.services.insert(k, (counters([4, 24, 20, 1600, 3360]), Rates::default()));
    for rs in [[192, 168, 226, 130], [192, 168, 226, 131]] {
        s.dests.insert((k, dest_id(&t, &k, rs)), (counters([2, 12, 10, 800, 1680]), Rates::default()));
    }
    assert_eq!(
        ipvsadm_with(&t, "-L -n --stats", &s, &PortNames::none(), &[]),
        concat!(
            "IP Virtual Server version 1.2.1 (size=4096)\n",
            "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n",
            "  -> RemoteAddress:Port\n",
            "TCP  192.168.199.200:80                  4       24       20     1600     3360\n",
            "  -> 192.168.226.130:80                  2       12       10      800     1680\n",
            "  -> 192.168.226.131:80                  2       12       10      800     1680\n",
        )
    );
}

#[test]
fn seed_lab_rate_idle() {
    assert_eq!(
        ipvsadm(&table(LAB), "-L -n --rate"),
        concat!(
            "IP Virtual Server version 1.2.1 (size=4096)\n",
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n",
            "  -> RemoteAddress:Port\n",
            "TCP  192.168.199.200:80                  0        0        0        0        0\n",
            "  -> 192.168.226.130:80                  0        0        0        0        0\n",
            "  -> 192.168.226.131:80                  0        0        0        0        0\n",
        )
    );
}

fn lab_conns() -> Vec<ConnRow> {
    let a = |s: &str| s.parse::<SocketAddrV4>().expect("addr");
    vec![
        ConnRow {
            proto: Protocol::Tcp,
            expire_secs: 118,
            state: "TIME_WAIT".into(),
            client: a("192.168.199.1:52001"),
            vip: a("192.168.199.200:80"),
            rs: a("192.168.226.131:80"),
        },
        ConnRow {
            proto: Protocol::Tcp,
            expire_secs: 899,
            state: "ESTABLISHED".into(),
            client: a("192.168.199.1:52002"),
            vip: a("192.168.199.200:80"),
            rs: a("192.168.226.130:80"),
        },
    ]
}

#[test]
fn seed_lab_connections() {
    let out = ipvsadm_with(&table(LAB), "-L -n -c", &NoStats, &PortNames::none(), &lab_conns());
    assert_eq!(
        out,
        concat!(
            "IPVS connection entries\n",
            "pro expire state       source             virtual            destination\n",
            "TCP 01:58  TIME_WAIT   192.168.199.1:52001 192.168.199.200:80 192.168.226.131:80\n",
            "TCP 14:59  ESTABLISHED 192.168.199.1:52002 192.168.199.200:80 192.168.226.130:80\n",
        )
    );
}

/// Issue 10: persistence templates are `-L -c` rows, as IPVS lists them (ip_vs_conn.c,
/// `ip_vs_conn_seq_show`; made by `ip_vs_sched_persist`, ip_vs_core.c): state `NONE`, source
/// port 0 and the client address masked, the template's vport (0 for port-zero and FTP
/// services, whose destination port is then 0 too), the seconds left on its timer.
#[test]
fn connections_with_persistence_templates() {
    let mut t = table(
        "-A -t 192.168.199.200:80 -s rr -p 300\n\
         -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m\n\
         -a -t 192.168.199.200:80 -r 192.168.226.131:8080 -m\n\
         -A -t 192.168.199.200:0 -s rr -p 60 -M 255.255.255.0\n\
         -a -t 192.168.199.200:0 -r 192.168.226.130 -m\n\
         -A -t 192.168.199.200:21 -s rr -p 120\n\
         -a -t 192.168.199.200:21 -r 192.168.226.131:21 -m\n",
    );
    let vip = Ipv4Addr::new(192, 168, 199, 200);
    let connect = |t: &mut Table, svc: usize, client: [u8; 4], dport: u16, at: u64| {
        let req = Request { caddr: client.into(), cport: 40000, daddr: vip, dport, now: Duration::from_secs(at) };
        let s = &mut t.services_mut()[svc];
        let pick = s.schedule(&req).expect("a server");
        s.dests[pick.index].rip().to_string()
    };
    // rr over [.131:8080, .130:80] (newest first); .1 comes back at 1020 (a template hit,
    // restarting its 300 s); a port-zero client on :443 (mask /24); an FTP client.
    assert_eq!(connect(&mut t, 0, [192, 168, 199, 1], 80, 1000), "192.168.226.131:8080");
    assert_eq!(connect(&mut t, 0, [192, 168, 199, 2], 80, 1010), "192.168.226.130:80");
    assert_eq!(connect(&mut t, 0, [192, 168, 199, 1], 80, 1020), "192.168.226.131:8080");
    assert_eq!(connect(&mut t, 1, [10, 1, 2, 3], 443, 1030), "192.168.226.130:0");
    assert_eq!(connect(&mut t, 2, [192, 168, 199, 1], 21, 1040), "192.168.226.131:21");
    let mut rows = lab_conns();
    rows.extend(listing::template_rows(&t, Duration::from_secs(1075)));
    assert_eq!(
        ipvsadm_with(&t, "-L -n -c", &NoStats, &PortNames::none(), &rows),
        concat!(
            "IPVS connection entries\n",
            "pro expire state       source             virtual            destination\n",
            "TCP 01:58  TIME_WAIT   192.168.199.1:52001 192.168.199.200:80 192.168.226.131:80\n",
            "TCP 14:59  ESTABLISHED 192.168.199.1:52002 192.168.199.200:80 192.168.226.130:80\n",
            "TCP 04:05  NONE        192.168.199.1:0    192.168.199.200:80 192.168.226.131:8080\n",
            "TCP 03:55  NONE        192.168.199.2:0    192.168.199.200:80 192.168.226.130:80\n",
            "TCP 00:15  NONE        10.1.2.0:0         192.168.199.200:0  192.168.226.130:0\n",
            "TCP 01:25  NONE        192.168.199.1:0    192.168.199.200:0  192.168.226.131:0\n",
        )
    );

    // With expire_quiescent_template, .1's template to the quiesced .131 is invalidated at its
    // next connection (`ip_vs_check_template`): rehashed with ports 0xffff, its timer left
    // running, and listed until it ends; the new template goes to .130.
    t.services_mut()[0].persist.expire_quiescent = true;
    let edit = parse_line("-e -t 192.168.199.200:80 -r 192.168.226.131:8080 -m -w 0").unwrap();
    nfvs::adm::rules::apply(&mut t, &edit).unwrap();
    assert_eq!(connect(&mut t, 0, [192, 168, 199, 1], 80, 1080), "192.168.226.130:80");
    let rows: Vec<String> = listing::template_rows(&t, Duration::from_secs(1085))
        .iter()
        .take(3)
        .map(|r| format!("{} {} {} {} {}", r.expire_secs, r.state, r.client, r.vip, r.rs))
        .collect();
    assert_eq!(
        rows,
        [
            "235 NONE 192.168.199.1:0 192.168.199.200:65535 192.168.226.131:65535",
            "225 NONE 192.168.199.2:0 192.168.199.200:80 192.168.226.130:80",
            "295 NONE 192.168.199.1:0 192.168.199.200:80 192.168.226.130:80",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// §9: the other views

#[test]
fn connections_named_ports_long_expiry_and_pe_header() {
    let mut rows = lab_conns();
    rows[1].expire_secs = 3600 * 2 + 5; // minutes go past 59: 120:05
    let names = PortNames::parse("http 80/tcp www\n");
    // Without -n the ports are named (addresses stay numeric: nfvs does no DNS).
    assert_eq!(
        listing::connections(&rows, &Default::default(), &names),
        concat!(
            "IPVS connection entries\n",
            "pro expire state       source             virtual            destination\n",
            "TCP 01:58  TIME_WAIT   192.168.199.1:52001 192.168.199.200:http 192.168.226.131:http\n",
            "TCP 120:05 ESTABLISHED 192.168.199.1:52002 192.168.199.200:http 192.168.226.130:http\n",
        )
    );
    // --persistent-conn adds two header columns; rows without a persistence engine keep the
    // short form.
    let fmt = ListFormat { numeric: true, persistent_conn: true, ..Default::default() };
    let out = listing::connections(&rows[..1], &fmt, &names);
    assert_eq!(
        out,
        concat!(
            "IPVS connection entries\n",
            "pro expire state       source             virtual            destination        pe name          pe_data\n",
            "TCP 01:58  TIME_WAIT   192.168.199.1:52001 192.168.199.200:80 192.168.226.131:80\n",
        )
    );
    // An empty table still prints both header lines.
    assert_eq!(listing::connections(&[], &Default::default(), &names).lines().count(), 2);
}

#[test]
fn thresholds_view() {
    let t = table(
        "-A -t 192.168.199.200:80 -s wrr\n\
         -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 3 -x 100 -y 20\n\
         -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1\n",
    );
    let mut t = t;
    t.services_mut()[0].dests[1].active = 7; // .130 (list order: .131, .130)
    t.services_mut()[0].dests[1].inactive = 12;
    assert_eq!(
        ipvsadm(&t, "-L -n --thresholds"),
        concat!(
            "IP Virtual Server version 1.2.1 (size=4096)\n",
            "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn \n",
            "  -> RemoteAddress:Port\n",
            "TCP  192.168.199.200:80 wrr\n",
            "  -> 192.168.226.130:80           100        20         7          12        \n",
            "  -> 192.168.226.131:80           0          0          0          0         \n",
        )
    );
}

#[test]
fn persistent_conn_view() {
    let mut t = table(
        "-A -t 192.168.199.200:80 -s rr -p 300\n\
         -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 2\n\
         -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1\n",
    );
    {
        let d = &mut t.services_mut()[0].dests[0]; // .131
        d.persist = 3;
        d.active = 1;
        d.inactive = 4;
    }
    assert_eq!(
        ipvsadm(&t, "-L -n --persistent-conn"),
        concat!(
            "IP Virtual Server version 1.2.1 (size=4096)\n",
            "Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn \n",
            "  -> RemoteAddress:Port\n",
            "TCP  192.168.199.200:80 rr persistent 300\n",
            "  -> 192.168.226.130:80           2         0           0          0         \n",
            "  -> 192.168.226.131:80           1         3           1          4         \n",
        )
    );
}

/// The first of --stats, --rate, --thresholds, --persistent-conn wins, as in ipvsadm's
/// print_title/print_service_entry if-chains.
#[test]
fn view_precedence() {
    let t = table(LAB);
    assert_eq!(ipvsadm(&t, "-L -n --rate --stats"), ipvsadm(&t, "-L -n --stats"));
    assert_eq!(ipvsadm(&t, "-L -n --thresholds --rate"), ipvsadm(&t, "-L -n --rate"));
    assert_eq!(ipvsadm(&t, "-L -n --persistent-conn --thresholds"), ipvsadm(&t, "-L -n --thresholds"));
    // --exact changes nothing outside --stats/--rate.
    assert_eq!(ipvsadm(&t, "-L -n --exact"), ipvsadm(&t, "-L -n"));
}

#[test]
fn one_service_has_no_version_line() {
    let t = table(LAB);
    assert_eq!(
        ipvsadm(&t, "-L -n -t 192.168.199.200:80"),
        concat!(
            "Prot LocalAddress:Port Scheduler Flags\n",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
            "TCP  192.168.199.200:80 wrr\n",
            "  -> 192.168.226.130:80           Masq    1      0          0         \n",
            "  -> 192.168.226.131:80           Masq    1      0          0         \n",
        )
    );
    let other = ServiceKey { port: 81, ..lab_key() };
    let err = listing::list(&t, Some(&other), &Default::default(), &NoStats, &PortNames::none()).unwrap_err();
    assert_eq!(err, ListError::NoSuchService);
    assert_eq!(err.to_string(), "No such service");
}

// ---------------------------------------------------------------------------------------
// Abbreviation of large numbers (print_largenum)

/// One service whose five counters are `c`, listed with `--stats` (and `--exact` if asked).
fn stats_line(c: [u64; 5], exact: bool) -> String {
    let t = table("-A -t 10.0.0.1:80 -s rr\n");
    let k = ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::new(10, 0, 0, 1), port: 80 };
    let mut s = Fixed::default();
    s.services.insert(k, (counters(c), rates(c)));
    let line = if exact { "-L -n --stats --exact" } else { "-L -n --stats" };
    ipvsadm_with(&t, line, &s, &PortNames::none(), &[]).lines().nth(3).expect("service line").to_string()
}

#[test]
fn abbreviation_boundaries() {
    const SVC: &str = "TCP  10.0.0.1:80                  ";
    // Below 10^8 exact; 10^8 switches to K (n/1000), 10^9 to M, 10^11 to G, 10^14 to T.
    assert_eq!(
        stats_line([99_999_999, 100_000_000, 999_999_999, 1_000_000_000, 99_999_999_999], false),
        format!("{SVC}99999999  100000K  999999K    1000M   99999M")
    );
    assert_eq!(
        stats_line([100_000_000_000, 99_999_999_999_999, 100_000_000_000_000, u64::MAX, 0], false),
        // An 8-digit T value fills its column: ipvsadm prints it glued to the previous one.
        format!("{SVC}    100G   99999G     100T18446744T        0")
    );
    // --exact: full numbers; the column widens to digits + 1, keeping one space between.
    assert_eq!(
        stats_line([99_999_999, 100_000_000, 999_999_999, 1_000_000_000, 99_999_999_999], true),
        format!("{SVC}99999999 100000000 999999999 1000000000 99999999999")
    );
    assert_eq!(
        stats_line([100_000_000_000, 99_999_999_999_999, 100_000_000_000_000, u64::MAX, 0], true),
        format!("{SVC}100000000000 99999999999999 100000000000000 18446744073709551615        0")
    );
}

#[test]
fn rate_server_line_abbreviates_only_bytes() {
    let t = table("-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m\n");
    let k = ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::new(10, 0, 0, 1), port: 80 };
    let big = [123_456_789_012, 200_000_000, 5, 300_000_000, 7];
    let mut s = Fixed::default();
    s.services.insert(k, (Counters::default(), rates(big)));
    s.dests.insert((k, dest_id(&t, &k, [10, 0, 1, 1])), (Counters::default(), rates(big)));
    let out = ipvsadm_with(&t, "-L -n --rate", &s, &PortNames::none(), &[]);
    let lines: Vec<&str> = out.lines().skip(3).collect();
    assert_eq!(
        lines,
        [
            // service: all five abbreviated
            "TCP  10.0.0.1:80                      123G  200000K        5  300000K        7",
            // server: CPS, InPPS, OutPPS as plain %8llu (they widen), then bytes abbreviated
            "  -> 10.0.1.1:80                  123456789012 200000000        5  300000K        7",
        ]
    );
}

// ---------------------------------------------------------------------------------------
// Sorting

#[test]
fn sorting_signed_compare_quirk() {
    // 10.0.0.1 - 192.168.1.1 = 0x0A000001 - 0xC0A80101 wraps to 0x4957FF00, positive as an
    // int: ipvsadm lists 10.0.0.1 *after* 192.168.1.1. Ports compare plainly.
    let rules = "\
-A -t 10.0.0.1:80 -s rr
-A -t 192.168.1.1:443 -s rr
-A -t 192.168.1.1:80 -s rr
-a -t 10.0.0.1:80 -r 10.0.1.2:80 -m
-a -t 10.0.0.1:80 -r 192.168.2.1:8080 -m
-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m
-a -t 10.0.0.1:80 -r 192.168.2.1:80 -m
";
    let t = table(rules);
    assert_eq!(
        ipvsadm(&t, "-S -n"),
        concat!(
            "-A -t 192.168.1.1:80 -s rr\n",
            "-A -t 192.168.1.1:443 -s rr\n",
            "-A -t 10.0.0.1:80 -s rr\n",
            "-a -t 10.0.0.1:80 -r 192.168.2.1:80 -m -w 1\n",
            "-a -t 10.0.0.1:80 -r 192.168.2.1:8080 -m -w 1\n",
            "-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m -w 1\n",
            "-a -t 10.0.0.1:80 -r 10.0.1.2:80 -m -w 1\n",
        )
    );
    // --nosort: services in creation order, servers in IPVS list order (newest first).
    assert_eq!(
        ipvsadm(&t, "-L -n --nosort"),
        concat!(
            "IP Virtual Server version 1.2.1 (size=4096)\n",
            "Prot LocalAddress:Port Scheduler Flags\n",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
            "TCP  10.0.0.1:80 rr\n",
            "  -> 192.168.2.1:80               Masq    1      0          0         \n",
            "  -> 10.0.1.1:80                  Masq    1      0          0         \n",
            "  -> 192.168.2.1:8080             Masq    1      0          0         \n",
            "  -> 10.0.1.2:80                  Masq    1      0          0         \n",
            "TCP  192.168.1.1:443 rr\n",
            "TCP  192.168.1.1:80 rr\n",
        )
    );
    // Addresses less than 2^31 apart sort normally.
    let t = table("-A -t 10.0.0.2:80 -s rr\n-A -t 10.0.0.10:80 -s rr\n-A -t 9.255.255.255:80 -s rr\n");
    let services: Vec<String> = ipvsadm(&t, "-L -n").lines().skip(3).map(str::to_string).collect();
    assert_eq!(services, ["TCP  9.255.255.255:80 rr", "TCP  10.0.0.2:80 rr", "TCP  10.0.0.10:80 rr"]);
}

// ---------------------------------------------------------------------------------------
// Service flags, persistence, mask

#[test]
fn service_suffixes() {
    let t = table(
        "-A -t 10.0.0.1:80 -s rr -b flag-1,flag-3\n\
         -A -t 10.0.0.2:80 -s wrr -p\n\
         -A -t 10.0.0.3:80 -s rr -p 60 -M 255.255.255.0 -b flag-2\n\
         -A -t 10.0.0.4:0 -s wrr -p 120 -M 16\n\
         -A -t 10.0.0.5:80 -s rr -p 30 -M 255.255.255.255\n",
    );
    let list: Vec<String> = ipvsadm(&t, "-L -n").lines().skip(3).map(str::to_string).collect();
    assert_eq!(
        list,
        [
            "TCP  10.0.0.1:80 rr (flag-1,flag-3)",
            "TCP  10.0.0.2:80 wrr persistent 360",
            "TCP  10.0.0.3:80 rr (flag-2) persistent 60 mask 255.255.255.0",
            "TCP  10.0.0.4:0 wrr persistent 120 mask 255.255.0.0",
            "TCP  10.0.0.5:80 rr persistent 30",
        ]
    );
    assert_eq!(
        ipvsadm(&t, "-S -n"),
        concat!(
            "-A -t 10.0.0.1:80 -s rr -b flag-1,flag-3\n",
            "-A -t 10.0.0.2:80 -s wrr -p 360\n",
            "-A -t 10.0.0.3:80 -s rr -p 60 -M 255.255.255.0 -b flag-2\n",
            "-A -t 10.0.0.4:0 -s wrr -p 120 -M 255.255.0.0\n",
            "-A -t 10.0.0.5:80 -s rr -p 30\n",
        )
    );
    // The same suffixes on the --thresholds and --persistent-conn service lines; none on
    // --stats/--rate, which print only the padded name.
    let thr = ipvsadm(&t, "-L -n --thresholds");
    assert!(thr.contains("\nTCP  10.0.0.3:80 rr (flag-2) persistent 60 mask 255.255.255.0\n"));
    let st = ipvsadm(&t, "-L -n --stats");
    assert!(st.contains("\nTCP  10.0.0.3:80                         0        0        0        0        0\n"));
}

#[test]
fn save_drops_thresholds_and_roundtrips() {
    let rules = "\
-A -t 192.168.199.200:80 -s wrr -p 600
-a -t 192.168.199.200:80 -r 192.168.226.130:8080 -m -w 5 -x 50 -y 10
-a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 0
";
    let saved = ipvsadm(&table(rules), "-S -n");
    assert_eq!(
        saved,
        concat!(
            "-A -t 192.168.199.200:80 -s wrr -p 600\n",
            "-a -t 192.168.199.200:80 -r 192.168.226.130:8080 -m -w 5\n",
            "-a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 0\n",
        )
    );
    // What -S prints, -R (the rules loader) reads back to the same listing, minus thresholds.
    assert_eq!(ipvsadm(&table(&saved), "-S -n"), saved);
}

// ---------------------------------------------------------------------------------------
// Names without -n

#[test]
fn port_names_without_numeric() {
    let names = PortNames::parse("http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP\nhttp-alt 8080/tcp webcache\n");
    let t = table(LAB);
    assert_eq!(
        ipvsadm_with(&t, "-L", &NoStats, &names, &[]),
        concat!(
            "IP Virtual Server version 1.2.1 (size=4096)\n",
            "Prot LocalAddress:Port Scheduler Flags\n",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
            "TCP  192.168.199.200:http wrr\n",
            "  -> 192.168.226.130:http         Masq    1      0          0         \n",
            "  -> 192.168.226.131:http         Masq    1      0          0         \n",
        )
    );
    // §9.7's example: -S without -n names the port.
    assert_eq!(
        ipvsadm_with(&t, "-S", &NoStats, &names, &[]).lines().next(),
        Some("-A -t 192.168.199.200:http -s wrr")
    );
    // A port with no name stays numeric.
    let t = table("-A -t 10.0.0.1:81 -s rr\n");
    assert!(ipvsadm_with(&t, "-L", &NoStats, &names, &[]).contains("\nTCP  10.0.0.1:81 rr\n"));
}

#[test]
fn system_port_names_when_present() {
    // The system file gives 80/tcp its IANA name where it exists (Debian: "http").
    let names = PortNames::system();
    if let Some(n) = names.name(Protocol::Tcp, 80) {
        let t = table(LAB);
        assert!(ipvsadm_with(&t, "-L", &NoStats, &names, &[]).contains(&format!("TCP  192.168.199.200:{n} wrr")));
    } else {
        // No /etc/services: everything numeric, which -L then equals -L -n.
        let t = table(LAB);
        assert_eq!(ipvsadm_with(&t, "-L", &NoStats, &names, &[]), ipvsadm(&t, "-L -n"));
    }
}

// ---------------------------------------------------------------------------------------
// --timeout, -h, -v, empty table

#[test]
fn timeout_line() {
    assert_eq!(ipvsadm(&table(LAB), "-L --timeout"), "Timeout (tcp tcpfin udp): 900 120 300\n");
    assert_eq!(listing::timeouts(7200, 60, 30), "Timeout (tcp tcpfin udp): 7200 60 30\n");
}

#[test]
fn empty_table_lists_headers_only() {
    let t = Table::new();
    assert_eq!(
        listing::list(&t, None, &Default::default(), &NoStats, &PortNames::none()).unwrap(),
        concat!(
            "IP Virtual Server version 1.2.1 (size=4096)\n",
            "Prot LocalAddress:Port Scheduler Flags\n",
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
        )
    );
    assert_eq!(listing::save(&t, true, &PortNames::none()), "");
}

#[test]
fn usage_keeps_ipvsadm_layout_and_marks_refusals() {
    let u = usage::usage("ipvsadm");
    assert!(u.starts_with(&usage::version()));
    assert!(u.contains("\nUsage:\n  ipvsadm -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]\n"));
    assert!(u.contains("\n  ipvsadm -h\n\nCommands:\nEither long or short options are allowed.\n"));
    // Every option ipvsadm 1.31 documents is still there, in its order.
    let options = [
        "--add-service", "--edit-service", "--delete-service", "--clear", "--restore", "--save",
        "--add-server", "--edit-server", "--delete-server", "--list", "--zero", "--set tcp tcpfin udp",
        "--start-daemon", "--stop-daemon", "--help", "--tcp-service|-t", "--udp-service|-u",
        "--sctp-service", "--fwmark-service|-f", "--ipv6", "--scheduler", "--pe", "--persistent",
        "--netmask", "--real-server", "--gatewaying", "--ipip", "--masquerading", "--tun-type",
        "--tun-port", "--tun-nocsum", "--tun-csum", "--tun-remcsum", "--weight", "--u-threshold",
        "--l-threshold", "--connection", "--timeout", "--daemon", "--stats", "--rate", "--exact",
        "--thresholds", "--persistent-conn", "--tun-info", "--nosort", "--sort", "--ops", "--numeric",
        "--sched-flags", "--syncid", "--sync-maxlen", "--mcast-interface", "--mcast-group",
        "--mcast-port", "--mcast-ttl",
    ];
    let mut at = 0;
    for o in options {
        let found = u[at..].find(&format!("  {o} ")).unwrap_or_else(|| panic!("{o} missing or out of order"));
        at += found + 1;
    }
    // What nfvs refuses is marked, not removed.
    let not = "(not supported by nfvs)";
    for o in ["--gatewaying   -g", "--ipip         -i", "--udp-service|-u", "--fwmark-service|-f", "--start-daemon", "--ops", "--tun-info"] {
        let line = u.lines().find(|l| l.trim_start().starts_with(o)).unwrap_or_else(|| panic!("{o}"));
        assert!(line.ends_with(not), "{line}");
    }
    assert!(u.contains(&format!("Daemon Options: {not}\n")));
    for o in ["--tcp-service|-t", "--masquerading", "--weight", "--stats", "--persistent   -p"] {
        let line = u.lines().find(|l| l.trim_start().starts_with(o)).unwrap_or_else(|| panic!("{o}"));
        assert!(!line.contains(not), "{line}");
    }
    // The scheduler list is what nfvs implements; the default is ipvsadm's.
    let scheds = nfvs::sched::NAMES.join("|");
    assert!(u.contains(&format!("one of {scheds},\n                                      the default scheduler is wlc.\n")));
    assert!(usage::usage("nfvs adm").contains("\n  nfvs adm -S [-n]\n"));
}

#[test]
fn version_line() {
    let v = usage::version();
    assert!(v.starts_with(&format!("nfvs v{} (ipvsadm v1.31 2019/12/24", env!("CARGO_PKG_VERSION"))), "{v}");
    assert!(v.ends_with(")\n") && v.lines().count() == 1);
}
