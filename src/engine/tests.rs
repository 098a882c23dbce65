//! The engine driven by a fake kernel: no root, no sockets. [`FakeKernel`] plays conntrack: it
//! holds the entries the engine's decisions create, answers look-ups, and turns state changes
//! into the events the real kernel would send.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::*;
use crate::adm::args::parse_line;
use crate::adm::rules::parse_rules;
use crate::model::{status, CtEntry, CtEvent, CtEventKind, Protocol, TcpState};
use crate::stats::StatsSource;

const MARK: u32 = 0x6e66_7673;
const T0: Duration = Duration::ZERO;

/// Two servers; the seed's wrr (equal weights: strict alternation, .131 first, as IPVS's
/// list order is newest first).
const LAB: &str = "-A -t 192.168.199.200:80 -s wrr\n\
    -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\n\
    -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1\n";

/// conntrack, as far as the engine can see it.
#[derive(Default)]
struct FakeKernel {
    entries: HashMap<Tuple, CtEntry>,
    lookups: usize,
}

impl Lookup for FakeKernel {
    fn entry(&mut self, orig: &Tuple) -> Option<LookupResult> {
        self.lookups += 1;
        Some(Ok(self.entries.get(orig).copied()))
    }
}

impl FakeKernel {
    /// Carries a decision out: the delete, then the create (as one sendmsg does).
    fn carry_out(&mut self, d: &Decision) {
        if let Decision::Balance(b) = d {
            if b.delete_first {
                self.entries.remove(&b.mapping.orig);
            }
            let m = &b.mapping;
            let reply = Tuple { src: m.nat_dst.ip(), sport: m.nat_dst.port(), ..m.reply };
            let e = CtEntry {
                orig: m.orig,
                reply,
                mark: m.mark,
                status: status::DST_NAT,
                tcp_state: Some(TcpState::SynSent),
                id: None,
                timeout: Some(120),
                counters_orig: None,
                counters_reply: None,
            };
            self.entries.insert(m.orig, e);
        }
    }

    /// The entry moves to `state`; returns the event the kernel reports.
    fn set_state(&mut self, orig: &Tuple, state: TcpState) -> CtEvent {
        let e = self.entries.get_mut(orig).expect("entry");
        e.tcp_state = Some(state);
        CtEvent { kind: CtEventKind::Update, entry: *e }
    }
}

fn engine(rules: &str) -> Engine {
    Engine::new(parse_rules(rules, "test").unwrap(), MARK, false)
}

fn flow(sport: u16) -> Tuple {
    Tuple {
        src: Ipv4Addr::new(192, 168, 199, 1).into(),
        dst: Ipv4Addr::new(192, 168, 199, 200).into(),
        sport,
        dport: 80,
        proto: Protocol::Tcp,
    }
}

fn balanced(d: &Decision) -> &Balanced {
    match d {
        Decision::Balance(b) => b,
        other => panic!("expected a balanced connection, got {other:?}"),
    }
}

fn rs(d: &Decision) -> String {
    balanced(d).rip().to_string()
}

/// (active, inactive) per server, in list order (.131, .130).
fn counts(e: &Engine) -> Vec<(u32, u32)> {
    e.table.services()[0].dests.iter().map(|d| (d.active, d.inactive)).collect()
}

fn conns_stat(e: &Engine) -> u64 {
    e.stats.service(&e.table.services()[0].key()).0.conns
}

#[test]
fn new_connections_alternate_and_are_counted() {
    let (mut e, mut k) = (engine(LAB), FakeKernel::default());
    let mut seen = Vec::new();
    for port in 1000..1004 {
        let d = e.decide(flow(port), T0, &mut k);
        k.carry_out(&d);
        assert!(!balanced(&d).delete_first);
        seen.push(rs(&d));
    }
    assert_eq!(seen, ["192.168.226.131:80", "192.168.226.130:80", "192.168.226.131:80", "192.168.226.130:80"]);
    assert_eq!(counts(&e), [(2, 0), (2, 0)]);
    assert_eq!(conns_stat(&e), 4);
    assert_eq!(k.lookups, 0, "a tuple nfvs does not know is never looked up");
}

#[test]
fn retransmitted_syn_is_not_scheduled_again() {
    let (mut e, mut k) = (engine(LAB), FakeKernel::default());
    let first = e.decide(flow(1000), T0, &mut k);
    k.carry_out(&first);
    // The same SYN again (its SYN-ACK was lost): without conntrack's word, deferred...
    assert_eq!(e.decide(flow(1000), T0, &mut NoLookup), Decision::Lookup(flow(1000)));
    // ...with it, a retransmission: accepted, nothing scheduled or counted.
    let again = e.decide(flow(1000), T0, &mut k);
    assert!(matches!(again, Decision::Retransmit { .. }), "{again:?}");
    assert_eq!((counts(&e), conns_stat(&e)), (vec![(1, 0), (0, 0)], 1));
    // The scheduler did not move: the next connection goes to the other server.
    assert_eq!(rs(&e.decide(flow(1001), T0, &mut k)), "192.168.226.130:80");
}

#[test]
fn reused_port_of_a_finished_connection_deletes_its_entry_first() {
    let (mut e, mut k) = (engine(LAB), FakeKernel::default());
    let first = e.decide(flow(1000), T0, &mut k);
    k.carry_out(&first);
    // FIN seen: the connection is inactive, its entry in TIME_WAIT.
    let ev = k.set_state(&flow(1000), TcpState::TimeWait);
    e.apply_events([ev], T0);
    assert_eq!(counts(&e), [(0, 1), (0, 0)]);
    // The client reuses its port: nfvs knows the old one finished, no look-up needed.
    let d = e.decide(flow(1000), T0, &mut NoLookup);
    assert!(balanced(&d).delete_first);
    assert_eq!(rs(&d), "192.168.226.130:80");
    k.carry_out(&d);
    // The new connection is active; the old one's DESTROY must not end it.
    assert_eq!(counts(&e), [(0, 0), (1, 0)]);
    let destroy = CtEvent { kind: CtEventKind::Destroy, entry: CtEntry { tcp_state: Some(TcpState::TimeWait), ..first_entry(&first) } };
    e.apply_events([destroy], T0);
    assert_eq!(counts(&e), [(0, 0), (1, 0)]);
}

fn first_entry(d: &Decision) -> CtEntry {
    let mut k = FakeKernel::default();
    k.carry_out(d);
    k.entries[&balanced(d).mapping.orig]
}

#[test]
fn quick_reuse_before_its_fin_event_is_found_by_the_look_up() {
    let (mut e, mut k) = (engine(LAB), FakeKernel::default());
    let first = e.decide(flow(1000), T0, &mut k);
    k.carry_out(&first);
    // The kernel already has it in TIME_WAIT, but the FIN event has not been read.
    k.set_state(&flow(1000), TcpState::TimeWait);
    let d = e.decide(flow(1000), T0, &mut k);
    assert!(balanced(&d).delete_first, "the finished entry must make way");
    assert_eq!(k.lookups, 1);
}

#[test]
fn reused_port_of_an_entry_nfvs_did_not_make_is_deleted_once() {
    let mut e = engine(LAB);
    let theirs = CtEntry {
        orig: flow(2000),
        reply: flow(2000).inverse(),
        mark: 0,
        status: status::DST_NAT,
        tcp_state: Some(TcpState::TimeWait),
        id: Some(7),
        timeout: Some(60),
        counters_orig: None,
        counters_reply: None,
    };
    let services: Vec<_> = e.table.services().iter().map(|s| s.key()).collect();
    e.foreign = ForeignFinished::from_entries(&[theirs], &services, MARK, T0);
    assert_eq!(e.foreign.len(), 1);
    let d = e.decide(flow(2000), T0, &mut NoLookup);
    assert!(balanced(&d).delete_first);
    // Taken once: a later SYN of the tuple is about nfvs's own connection now (live, and the
    // kernel, asked, has no entry left of theirs).
    let later = e.decide(flow(2000), T0, &mut FakeKernel::default());
    assert!(!balanced(&later).delete_first);
    // A live one of another maker is not "finished"; expiry forgets the rest.
    let live = CtEntry { tcp_state: Some(TcpState::Established), orig: flow(2001), ..theirs };
    e.foreign = ForeignFinished::from_entries(&[live], &services, MARK, T0);
    assert!(e.foreign.is_empty());
}

#[test]
fn no_eligible_server_is_refused_and_not_counted() {
    let rules = "-A -t 192.168.199.200:80 -s wlc\n-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 0\n";
    let mut e = engine(rules);
    let d = e.decide(flow(1000), T0, &mut NoLookup);
    match d {
        Decision::Refuse { client, vip, sched } => {
            assert_eq!((client.to_string(), vip.to_string(), sched), ("192.168.199.1:1000".into(), "192.168.199.200:80".into(), "wlc"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(conns_stat(&e), 0);
    assert_eq!(e.table.services()[0].dests[0].active, 0);
}

#[test]
fn persistence_sends_a_client_back_to_its_server() {
    let rules = "-A -t 192.168.199.200:80 -s rr -p 300\n\
        -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\n\
        -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1\n";
    let (mut e, mut k) = (engine(rules), FakeKernel::default());
    let first = e.decide(flow(1000), T0, &mut k);
    assert!(!balanced(&first).persistent);
    let again = e.decide(flow(1001), Duration::from_secs(5), &mut k);
    assert!(balanced(&again).persistent, "a template hit");
    assert_eq!(rs(&again), rs(&first));
    // Another client is scheduled.
    let other = Tuple { src: IpAddr::from(Ipv4Addr::new(192, 168, 199, 2)), ..flow(1000) };
    let d = e.decide(other, Duration::from_secs(5), &mut k);
    assert!(!balanced(&d).persistent);
}

#[test]
fn a_failed_create_gives_its_count_back() {
    let (mut e, mut k) = (engine(LAB), FakeKernel::default());
    let d = e.decide(flow(1000), T0, &mut k);
    assert_eq!((counts(&e), conns_stat(&e)), (vec![(1, 0), (0, 0)], 1));
    e.create_failed(balanced(&d), T0);
    assert_eq!((counts(&e), conns_stat(&e)), (vec![(0, 0), (0, 0)], 0));
    // The tuple is not tracked any more: its retry is scheduled afresh (the scheduler has
    // moved on, as IPVS's has after a failed ip_vs_conn_new).
    let retry = e.decide(flow(1000), T0, &mut NoLookup);
    assert_eq!(rs(&retry), "192.168.226.130:80");
}

#[test]
fn an_edit_between_the_two_locks_of_a_batch_is_seen_by_the_deferred_syn() {
    let (mut e, mut k) = (engine(LAB), FakeKernel::default());
    let first = e.decide(flow(1000), T0, &mut k);
    k.carry_out(&first);
    k.set_state(&flow(1000), TcpState::TimeWait);
    // First lock: deferred for a look-up.
    assert_eq!(e.decide(flow(1000), T0, &mut NoLookup), Decision::Lookup(flow(1000)));
    // Meanwhile an admin deletes the service.
    e.apply_edit(&parse_line("-D -t 192.168.199.200:80").unwrap()).unwrap();
    // Second lock, with the answer: nothing to balance any more.
    let answers = [(flow(1000), Ok(k.entries.get(&flow(1000)).copied()))];
    assert_eq!(e.decide(flow(1000), T0, &mut Answers(&answers)), Decision::NotOurs);
    assert!(e.conns.is_empty(), "the deleted service's connections are forgotten");
}

#[test]
fn deleting_a_server_drains_or_expires_its_connections() {
    for expire_nodest in [false, true] {
        let mut e = Engine::new(parse_rules(LAB, "t").unwrap(), MARK, expire_nodest);
        let mut k = FakeKernel::default();
        let d = e.decide(flow(1000), T0, &mut k);
        assert_eq!(rs(&d), "192.168.226.131:80");
        let fx = e.apply_edit(&parse_line("-d -t 192.168.199.200:80 -r 192.168.226.131:80").unwrap()).unwrap();
        let want = if expire_nodest { vec![flow(1000)] } else { vec![] };
        assert_eq!(fx.expire, want, "expire_nodest={expire_nodest}");
        assert!(e.conns.is_empty());
    }
}

#[test]
fn flows_without_a_service_are_not_ours() {
    let mut e = engine(LAB);
    let other_port = Tuple { dport: 81, ..flow(1000) };
    assert_eq!(e.decide(other_port, T0, &mut NoLookup), Decision::NotOurs);
    let v6 = Tuple { src: "fd00::1".parse().unwrap(), dst: "fd00::200".parse().unwrap(), ..flow(1000) };
    assert_eq!(e.decide(v6, T0, &mut NoLookup), Decision::NotOurs, "no IPv6 services yet");
    let udp = Tuple { proto: Protocol::Udp, ..flow(1000) };
    assert_eq!(e.decide(udp, T0, &mut NoLookup), Decision::NotOurs);
    assert_eq!(conns_stat(&e), 0);
}

#[test]
fn events_of_other_marks_are_ignored_and_destroy_ends_the_connection() {
    let (mut e, mut k) = (engine(LAB), FakeKernel::default());
    let d = e.decide(flow(1000), T0, &mut k);
    k.carry_out(&d);
    let mut foreign = k.set_state(&flow(1000), TcpState::TimeWait);
    foreign.entry.mark = 1;
    e.apply_events([foreign], T0);
    assert_eq!(counts(&e), [(1, 0), (0, 0)], "not our mark: ignored");
    let fin = k.set_state(&flow(1000), TcpState::TimeWait);
    let destroy = CtEvent { kind: CtEventKind::Destroy, ..fin };
    e.apply_events([fin, destroy], T0);
    assert_eq!(counts(&e), [(0, 0), (0, 0)]);
    assert!(e.conns.is_empty());
}

/// Issue 11 #9: SYNs from sources no client has were scheduled, logged and counted for 120 s;
/// the kernel drops such martians in routing, before IPVS sees them.
#[test]
fn martian_sources_are_dropped_unscheduled() {
    let mut e = engine(LAB);
    for src in ["127.0.0.1", "127.9.9.9", "0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "192.168.199.200"] {
        let f = Tuple { src: src.parse().unwrap(), ..flow(1000) };
        assert!(matches!(e.decide(f, T0, &mut NoLookup), Decision::Martian { .. }), "{src}");
    }
    assert_eq!((conns_stat(&e), e.conns.len()), (0, 0));
    // A neighbour of each is a client like any other.
    let f = Tuple { src: "192.168.199.201".parse().unwrap(), ..flow(1000) };
    assert!(matches!(e.decide(f, T0, &mut NoLookup), Decision::Balance(_)));
}

/// Issue 11 #6: a service the table takes but nfvs's rules cannot install (port 0: all ports)
/// is refused whole; the table stays as it was, and later edits work.
#[test]
fn an_edit_the_rules_cannot_carry_is_refused_whole() {
    let mut e = engine(LAB);
    let err = e.apply_edit(&parse_line("-A -t 192.168.199.202:0 -s rr -p").unwrap()).unwrap_err();
    assert!(matches!(err, EditError::Unsupported(ref m) if m.contains("port 0")), "{err}");
    assert_eq!(e.table.services().len(), 1);
    e.apply_edit(&parse_line("-A -t 192.168.199.202:80 -s rr").unwrap()).unwrap();
    assert_eq!(e.table.services().len(), 2);
}

/// Issue 11 #9: over `nfvs adm` too, a lower threshold above the upper one is refused as the
/// kernel refuses it (ERANGE), and nothing changes.
#[test]
fn thresholds_out_of_range_are_refused() {
    let mut e = engine(LAB);
    let cmd = parse_line("-e -t 192.168.199.200:80 -r 192.168.226.130:80 -m -x 10 -y 20").unwrap();
    assert_eq!(e.apply_edit(&cmd), Err(EditError::ThresholdRange { lower: 20, upper: 10 }));
    assert!(e.table.services()[0].dests.iter().all(|d| d.u_threshold == 0 && d.l_threshold == 0));
}
