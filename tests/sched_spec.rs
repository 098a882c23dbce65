//! Every worked example of `shared/docs/lvs-semantics.md` as an exact-sequence test, all run
//! through one harness ([`Lab`]), plus property tests of the schedulers' promises.
//!
//! Conventions of the spec (§1.5) that the harness applies:
//! - servers are named; unless a test says otherwise they are added to a fresh, empty service in
//!   reverse of the given order, so the IPVS list order (newest first) is the order given;
//! - a newly scheduled connection counts +1 active at once (TCP SYN -> SYN_RECV, active on 4.8+),
//!   and the threshold logic runs on that bind;
//! - weights default to 1, thresholds to 0, no persistence.
//!
//! The list is edited exactly as `service::Table` does: insert at index 0 then
//! `Change::Added(0)`, edit in place then `Change::Edited(i)`, remove then
//! `Change::Removed { index, id }`.

use std::net::Ipv4Addr;
use std::time::Duration;

use nfvs::persist::{Persistence, TemplateKey};
use nfvs::sched::{self, threshold, Change, Overhead, Request, SchedFlags, SchedOptions, Scheduler};
use nfvs::service::{Dest, DestId, ServiceKey};
use nfvs::model::Protocol;

const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 199, 200);

/// One real server of an example.
#[derive(Debug, Clone)]
struct Srv {
    name: &'static str,
    addr: Ipv4Addr,
    port: u16,
    weight: u32,
    active: u32,
    inactive: u32,
    overloaded: bool,
    u: u32,
    l: u32,
}

/// A server with weight `weight`, idle. Its address is derived from its name (A -> 10.9.0.65)
/// unless [`Srv::at`] sets one.
fn srv(name: &'static str, weight: u32) -> Srv {
    let tag = name.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    Srv {
        name,
        addr: Ipv4Addr::new(10, 9, 0, tag),
        port: 80,
        weight,
        active: 0,
        inactive: 0,
        overloaded: false,
        u: 0,
        l: 0,
    }
}

impl Srv {
    fn counts(mut self, active: u32, inactive: u32) -> Srv {
        self.active = active;
        self.inactive = inactive;
        self
    }
    fn overloaded(mut self) -> Srv {
        self.overloaded = true;
        self
    }
    fn thresholds(mut self, u: u32, l: u32) -> Srv {
        self.u = u;
        self.l = l;
        self
    }
    fn at(mut self, addr: &str) -> Srv {
        self.addr = addr.parse().expect("test address");
        self
    }
}

fn opts() -> SchedOptions {
    SchedOptions::default()
}

fn flags(flag1: bool, flag2: bool) -> SchedOptions {
    SchedOptions { flags: SchedFlags { flag1, flag2, flag3: false }, ..SchedOptions::default() }
}

/// One service: its destination list in IPVS order, its scheduler, a clock and the request
/// template used by [`Lab::pick`].
struct Lab {
    sched: Box<dyn Scheduler>,
    /// The same scheduler in the other `incremental` mode, fed the same events (with
    /// `on_counts` after every counter change): every pick asserts both agree, so every example
    /// also checks the indexed implementations against the scans.
    shadow: Option<Box<dyn Scheduler>>,
    dests: Vec<Dest>,
    names: Vec<(DestId, &'static str)>,
    next_id: u64,
    req: Request,
    /// `-p timeout -M netmask` when set.
    persistence: Option<(Persistence, Duration, Ipv4Addr)>,
}

impl Lab {
    /// `-A -s <name>` on an empty service, then `-a` of `servers` in reverse order, so that the
    /// list order is the order of `servers`.
    fn new(name: &str, opts: SchedOptions, servers: &[Srv]) -> Lab {
        let sched = sched::new(name, &opts, &[]).expect("known scheduler");
        let other = SchedOptions { incremental: !opts.incremental, ..opts };
        let shadow = sched::new(name, &other, &[]).expect("known scheduler");
        Lab::build(sched, Some(shadow), servers)
    }

    /// As [`Lab::new`] with a scheduler built by the test (e.g. twos with fixed draws); it is
    /// told `Change::Init` on the empty list first.
    fn with(sched: Box<dyn Scheduler>, servers: &[Srv]) -> Lab {
        Lab::build(sched, None, servers)
    }

    fn build(mut sched: Box<dyn Scheduler>, mut shadow: Option<Box<dyn Scheduler>>, servers: &[Srv]) -> Lab {
        sched.on_change(&[], Change::Init);
        if let Some(s) = &mut shadow {
            s.on_change(&[], Change::Init);
        }
        let mut lab = Lab {
            sched,
            shadow,
            dests: Vec::new(),
            names: Vec::new(),
            next_id: 0,
            req: Request {
                caddr: Ipv4Addr::new(10, 0, 0, 1),
                cport: 40000,
                daddr: VIP,
                dport: 80,
                now: Duration::ZERO,
            },
            persistence: None,
        };
        for s in servers.iter().rev() {
            lab.add(s.clone());
        }
        lab
    }

    /// A service whose list (in the order given) was built under another scheduler, then
    /// switched with `-E -s <name>`: the scheduler sees the populated list at init.
    fn switched(name: &str, opts: SchedOptions, servers: &[Srv]) -> Lab {
        let mut lab = Lab::new("rr", SchedOptions::default(), servers);
        lab.sched = sched::new(name, &opts, &lab.dests).expect("known scheduler");
        let other = SchedOptions { incremental: !opts.incremental, ..opts };
        lab.shadow = Some(sched::new(name, &other, &lab.dests).expect("known scheduler"));
        lab
    }

    /// Tells both schedulers about a list change.
    fn changed(&mut self, change: Change) {
        self.sched.on_change(&self.dests, change);
        if let Some(s) = &mut self.shadow {
            s.on_change(&self.dests, change);
        }
    }

    /// Tells both schedulers that the counters of `dests[i]` changed.
    fn counted(&mut self, i: usize) {
        self.sched.on_counts(&self.dests, i);
        if let Some(s) = &mut self.shadow {
            s.on_counts(&self.dests, i);
        }
    }

    fn make_dest(&mut self, s: &Srv) -> Dest {
        let id = DestId(self.next_id);
        self.next_id += 1;
        self.names.push((id, s.name));
        let mut d = Dest::new(id, s.addr, s.port, s.weight);
        d.active = s.active;
        d.inactive = s.inactive;
        d.overloaded = s.overloaded;
        d.u_threshold = s.u;
        d.l_threshold = s.l;
        d
    }

    /// `-a`: the new destination is linked at the head.
    fn add(&mut self, s: Srv) {
        let d = self.make_dest(&s);
        self.dests.insert(0, d);
        self.changed(Change::Added(0));
    }

    /// The list index of the server called `name` (a re-added server is a new destination
    /// with the same name; the one in the list is meant).
    fn index(&self, name: &str) -> usize {
        (0..self.dests.len()).find(|&i| self.name_of(i) == name).expect("server in the list")
    }

    fn dest(&self, name: &str) -> &Dest {
        &self.dests[self.index(name)]
    }

    /// `-e`: weight (keeping `last_weight` as `Table::edit_dest` does) and/or thresholds.
    fn edit_weight(&mut self, name: &str, weight: u32) {
        let i = self.index(name);
        let d = &mut self.dests[i];
        d.weight = weight;
        if weight > 0 {
            d.last_weight = weight;
        }
        self.changed(Change::Edited(i));
    }

    /// `-d`.
    fn del(&mut self, name: &str) {
        let i = self.index(name);
        let d = self.dests.remove(i);
        self.changed(Change::Removed { index: i, id: d.id });
    }

    /// A counter or flag change that is not an ipvsadm edit (connections coming and going).
    fn set(&mut self, name: &str, f: impl FnOnce(&mut Dest)) {
        let i = self.index(name);
        f(&mut self.dests[i]);
        self.counted(i);
    }

    /// One active connection of `name` ends (expires): unbind, thresholds re-evaluated.
    fn end(&mut self, name: &str) {
        let i = self.index(name);
        let d = &mut self.dests[i];
        d.active -= 1;
        threshold::on_unbind(d);
        self.counted(i);
    }

    fn clock(&mut self, secs: u64) {
        self.req.now = Duration::from_secs(secs);
    }

    fn name_of(&self, i: usize) -> &'static str {
        let id = self.dests[i].id;
        self.names.iter().find(|(d, _)| *d == id).expect("named").1
    }

    /// Makes the service persistent (`-p secs -M mask`), with the
    /// `expire_quiescent_template` sysctl as given.
    fn persistent(mut self, secs: u64, mask: &str, expire_quiescent: bool) -> Lab {
        let mask = mask.parse().expect("netmask");
        self.persistence = Some((Persistence::new(expire_quiescent), Duration::from_secs(secs), mask));
        self
    }

    /// Schedules one connection for `req`; the chosen server gets +1 active (and the bind
    /// threshold check). `-` when nothing is eligible. With persistence, a template hit is
    /// written with a `*` suffix (e.g. `.131*`), a new template without.
    fn pick_req(&mut self, req: Request) -> String {
        let (sched, shadow, dests) = (&mut self.sched, &mut self.shadow, &self.dests);
        let mut schedule = || {
            let got = sched.schedule(dests, &req);
            if let Some(s) = shadow {
                assert_eq!(s.schedule(dests, &req), got, "{}: incremental and scanning disagree", sched.name());
            }
            got
        };
        let chosen = match &mut self.persistence {
            None => schedule().map(|i| (i, "")),
            Some((p, timeout, mask)) => {
                let svc = ServiceKey { proto: Protocol::Tcp, addr: VIP, port: 80 };
                let key = TemplateKey::new(&svc, *mask, req.caddr, req.daddr, req.dport);
                p.schedule(key, *timeout, dests, req.now, schedule)
                    .map(|pick| (pick.index, if pick.created { "" } else { "*" }))
            }
        };
        match chosen {
            Some((i, mark)) => {
                assert!(i < self.dests.len(), "index {i} out of range");
                let d = &mut self.dests[i];
                d.active += 1;
                threshold::on_bind(d);
                self.counted(i);
                format!("{}{mark}", self.name_of(i))
            }
            None => "-".to_string(),
        }
    }

    fn pick(&mut self) -> String {
        self.pick_req(self.req)
    }

    /// `n` picks with the current request, space separated.
    fn picks(&mut self, n: usize) -> String {
        (0..n).map(|_| self.pick()).collect::<Vec<_>>().join(" ")
    }

    /// One pick per destination address (lblc/lblcr/dh key on it).
    fn picks_daddr(&mut self, daddrs: &[&str]) -> String {
        daddrs
            .iter()
            .map(|a| {
                let req = Request { daddr: a.parse().expect("address"), ..self.req };
                self.pick_req(req)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// One pick per client address (and source port).
    fn picks_client(&mut self, clients: &[(&str, u16)]) -> String {
        clients
            .iter()
            .map(|(a, p)| {
                let req = Request { caddr: a.parse().expect("address"), cport: *p, ..self.req };
                self.pick_req(req)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

// ------------------------------------------------------------------------------------------
// §2.1 rr

#[test]
fn rr_1_seed_lab() {
    // -a .130 then -a .131: list .131, .130.
    let mut lab = Lab::new("rr", opts(), &[srv(".131", 1), srv(".130", 1)]);
    assert_eq!(lab.picks(4), ".131 .130 .131 .130");
}

#[test]
fn rr_2_weight_zero_skipped() {
    let mut lab = Lab::new("rr", opts(), &[srv("A", 1), srv("B", 0), srv("C", 1)]);
    assert_eq!(lab.picks(6), "A C A C A C");
}

#[test]
fn rr_3_cursor_across_add_and_delete() {
    let mut lab = Lab::new("rr", opts(), &[srv("B", 1), srv("A", 1)]);
    assert_eq!(lab.pick(), "B");
    lab.add(srv("C", 1)); // list C, B, A; cursor still on B
    assert_eq!(lab.picks(3), "A C B");
    lab.del("B"); // cursor moves to C, the entry before B
    assert_eq!(lab.picks(2), "A C");
}

#[test]
fn rr_single_eligible_server_keeps_being_chosen() {
    // ip_vs_rr.c: the scan wraps and checks the cursor's own entry last.
    let mut lab = Lab::new("rr", opts(), &[srv("A", 0), srv("B", 1), srv("C", 0)]);
    assert_eq!(lab.picks(3), "B B B");
    lab.set("B", |d| d.overloaded = true);
    assert_eq!(lab.picks(2), "- -");
    lab.set("B", |d| d.overloaded = false);
    assert_eq!(lab.pick(), "B");
}

#[test]
fn rr_delete_at_head_and_after_cursor() {
    let mut lab = Lab::new("rr", opts(), &[srv("A", 1), srv("B", 1), srv("C", 1)]);
    assert_eq!(lab.picks(2), "A B");
    lab.del("C"); // after the cursor: no effect on the rotation
    assert_eq!(lab.pick(), "A");
    lab.del("A"); // the cursor's entry is the head's first: cursor back on the head
    assert_eq!(lab.picks(2), "B B");
    lab.del("B");
    assert_eq!(lab.pick(), "-");
}

// ------------------------------------------------------------------------------------------
// §2.2 wrr

#[test]
fn wrr_1_seed_lab() {
    let mut lab = Lab::new("wrr", opts(), &[srv(".131", 1), srv(".130", 1)]);
    assert_eq!(lab.picks(6), ".131 .130 .131 .130 .131 .130");
}

#[test]
fn wrr_2_weights_3_2_1() {
    let mut lab = Lab::new("wrr", opts(), &[srv("A", 3), srv("B", 2), srv("C", 1)]);
    assert_eq!(wrr_state(&lab), (1, 3, 1));
    assert_eq!(lab.picks(15), "A B C A A B A B C A A B A B C");
}

#[test]
fn wrr_3_gcd_above_one() {
    let mut lab = Lab::new("wrr", opts(), &[srv("A", 4), srv("B", 2)]);
    assert_eq!(wrr_state(&lab), (1, 3, 2));
    assert_eq!(lab.picks(11), "A B A A B A A B A A B");
}

#[test]
fn wrr_4_switched_on_populated_service() {
    let mut lab = Lab::switched("wrr", opts(), &[srv("A", 4), srv("B", 3), srv("C", 2)]);
    assert_eq!(lab.picks(12), "A A B A B C A B C A A B");
}

#[test]
fn wrr_recompute_on_edit_resets_to_head() {
    // After two picks at cw = 3 (A, then cw 2: A), an edit of thresholds only puts cl back on
    // the head and keeps cw (di = 1): the next pick is A again at cw = 2.
    let mut lab = Lab::switched("wrr", opts(), &[srv("A", 3), srv("B", 2), srv("C", 1)]);
    assert_eq!(lab.picks(3), "A A B");
    let i = lab.index("C");
    lab.changed(Change::Edited(i));
    assert_eq!(lab.picks(4), "A B A B");
}

#[test]
fn wrr_recompute_with_gcd_rounds_cw() {
    // list A(4), B(2) switched: cw = mw = 3. Picks: A (cw 3), A (cw 1), B.
    let mut lab = Lab::switched("wrr", opts(), &[srv("A", 4), srv("B", 2)]);
    assert_eq!(lab.picks(3), "A A B");
    // add C(6): di = 2, mw = 5, cw = 1 -> (1 / 2) * 2 + 1 = 1.
    lab.add(srv("C", 6));
    assert_eq!(lab.picks(7), "C A B C C A C");
}

#[test]
fn wrr_all_overloaded_or_quiesced() {
    let mut lab = Lab::new("wrr", opts(), &[srv("A", 2), srv("B", 1)]);
    assert_eq!(lab.pick(), "A");
    lab.set("A", |d| d.overloaded = true);
    lab.set("B", |d| d.overloaded = true);
    assert_eq!(lab.picks(2), "- -");
    lab.set("B", |d| d.overloaded = false);
    assert_eq!(lab.picks(3), "B B B");
    lab.edit_weight("A", 0);
    lab.edit_weight("B", 0);
    assert_eq!(lab.pick(), "-");
    let mut empty = Lab::new("wrr", opts(), &[]);
    assert_eq!(empty.pick(), "-");
}

/// wrr's (cw, mw, di) after the adds that built `lab` (which must have been built by
/// [`Lab::new`] only): the boxed scheduler cannot be downcast, so the same adds are replayed on
/// a concrete `WeightedRoundRobin`.
fn wrr_state(lab: &Lab) -> (i64, i64, i64) {
    let mut w = nfvs::sched::wrr::WeightedRoundRobin::new(&opts());
    w.on_change(&[], Change::Init);
    let mut list: Vec<Dest> = Vec::new();
    for d in lab.dests.iter().rev() {
        list.insert(0, d.clone());
        w.on_change(&list, Change::Added(0));
    }
    w.state()
}

// ------------------------------------------------------------------------------------------
// §2.3 lc

#[test]
fn lc_1() {
    let servers = [srv("A", 1).counts(2, 0), srv("B", 1).counts(1, 5), srv("C", 1).counts(1, 3)];
    let mut lab = Lab::new("lc", opts(), &servers);
    assert_eq!(lab.picks(5), "C B A C B");
}

#[test]
fn lc_2_weight_zero_skipped_weight_ignored() {
    let servers = [
        srv("A", 0),
        srv("B", 1).counts(1, 10),
        srv("C", 5).counts(1, 10),
        srv("D", 1).counts(1, 12),
    ];
    let mut lab = Lab::new("lc", opts(), &servers);
    assert_eq!(lab.picks(4), "B C D B");
}

/// LC-3 is version-dependent: the classic overhead ties (A first), the 2026 "total" one
/// does not.
#[test]
fn lc_3_both_overhead_formulas() {
    let servers = [srv("A", 1).counts(1, 0), srv("B", 1).counts(0, 256)];
    let classic = SchedOptions { overhead: Overhead::Classic, ..opts() };
    let total = SchedOptions { overhead: Overhead::Total, ..opts() };
    assert_eq!(Lab::new("lc", classic, &servers).pick(), "A");
    assert_eq!(Lab::new("lc", total, &servers).pick(), "B");
}

#[test]
fn lc_examples_agree_under_total_overhead() {
    // §0: every lc/wlc/lblc/lblcr example except LC-3 gives the same answer with either formula.
    let total = SchedOptions { overhead: Overhead::Total, ..opts() };
    let servers = [srv("A", 1).counts(2, 0), srv("B", 1).counts(1, 5), srv("C", 1).counts(1, 3)];
    assert_eq!(Lab::new("lc", total, &servers).picks(5), "C B A C B");
    let servers = [srv("A", 2).counts(3, 40), srv("B", 3).counts(4, 10), srv("C", 1).counts(1, 100)];
    assert_eq!(Lab::new("wlc", total, &servers).picks(6), "B C A B B A");
    assert_eq!(Lab::new("lblc", total, &[srv("A", 2), srv("B", 2)]).picks(8), "A A A B B B B B");
    let servers = [srv("A", 1), srv("B", 1), srv("C", 1)];
    assert_eq!(Lab::new("lblcr", total, &servers).picks(7), "A A B B C C C");
}

// ------------------------------------------------------------------------------------------
// §2.4 wlc

#[test]
fn wlc_1_idle_pool() {
    let mut lab = Lab::new("wlc", opts(), &[srv("A", 1), srv("B", 2), srv("C", 3)]);
    assert_eq!(lab.picks(6), "A B C C B C");
}

#[test]
fn wlc_2() {
    let servers = [srv("A", 2).counts(3, 40), srv("B", 3).counts(4, 10), srv("C", 1).counts(1, 100)];
    let mut lab = Lab::new("wlc", opts(), &servers);
    assert_eq!(lab.picks(6), "B C A B B A");
    let actives: Vec<u32> = ["A", "B", "C"].iter().map(|n| lab.dest(n).active).collect();
    assert_eq!(actives, [5, 7, 2]);
}

#[test]
fn wlc_weight_zero_after_first_candidate_never_wins() {
    let mut lab = Lab::new("wlc", opts(), &[srv("A", 1).counts(5, 0), srv("B", 0)]);
    assert_eq!(lab.picks(2), "A A");
}

// ------------------------------------------------------------------------------------------
// §2.5 sed

#[test]
fn sed_1_and_wlc_contrast() {
    let servers = [srv("A", 1), srv("B", 3)];
    assert_eq!(Lab::new("sed", opts(), &servers).picks(6), "B B A B B B");
    assert_eq!(Lab::new("wlc", opts(), &servers).picks(6), "A B B B A B");
}

#[test]
fn sed_2_filters() {
    let servers = [
        srv("A", 2).counts(1, 0).overloaded(),
        srv("B", 0),
        srv("C", 1),
        srv("D", 3).counts(2, 0),
    ];
    let mut lab = Lab::new("sed", opts(), &servers);
    assert_eq!(lab.picks(5), "C D D D C");
}

// ------------------------------------------------------------------------------------------
// §2.6 nq

#[test]
fn nq_1() {
    let servers = [srv("A", 1).counts(2, 0), srv("B", 3).counts(4, 0), srv("C", 1).counts(0, 9)];
    let mut lab = Lab::new("nq", opts(), &servers);
    assert_eq!(lab.picks(5), "C B B C B");
}

#[test]
fn nq_2_idle_weight_zero_still_skipped() {
    let servers = [srv("A", 0), srv("B", 1).counts(1, 0), srv("C", 2).counts(3, 0)];
    let mut lab = Lab::new("nq", opts(), &servers);
    assert_eq!(lab.picks(4), "B C C B");
}

// ------------------------------------------------------------------------------------------
// §2.7 fo, §2.8 ovf

#[test]
fn fo_1() {
    let mut lab = Lab::new("fo", opts(), &[srv("A", 3), srv("B", 5), srv("C", 5)]);
    assert_eq!(lab.picks(3), "B B B");
    lab.edit_weight("B", 0);
    assert_eq!(lab.picks(2), "C C");
}

#[test]
fn ovf_1() {
    let mut lab = Lab::new("ovf", opts(), &[srv("A", 2), srv("B", 3), srv("C", 1)]);
    assert_eq!(lab.picks(8), "B B B B A A A C");
}

#[test]
fn ovf_2_everyone_over_weight() {
    let mut lab = Lab::new("ovf", opts(), &[srv("A", 1), srv("B", 1)]);
    assert_eq!(lab.picks(5), "A A B B -");
}

// ------------------------------------------------------------------------------------------
// §2.9 lblc, §2.10 lblcr

#[test]
fn lblc_1_plain_vip() {
    let mut lab = Lab::new("lblc", opts(), &[srv("A", 2), srv("B", 2)]);
    assert_eq!(lab.picks(8), "A A A B B B B B");
}

#[test]
fn lblc_2_fwmark_cache_cluster() {
    let mut lab = Lab::new("lblc", opts(), &[srv("A", 1), srv("B", 1), srv("C", 1)]);
    let daddrs = ["10.1.0.1", "10.1.0.2", "10.1.0.1", "10.1.0.3", "10.1.0.2", "10.1.0.1"];
    assert_eq!(lab.picks_daddr(&daddrs), "A B A C B A");
}

#[test]
fn lblc_cache_hit_ignores_overload_flag() {
    // §1.3: on a hit only weight, presence and lblc's own overload test count.
    let mut lab = Lab::new("lblc", opts(), &[srv("A", 5), srv("B", 5)]);
    assert_eq!(lab.pick(), "A");
    lab.set("A", |d| d.overloaded = true);
    assert_eq!(lab.pick(), "A");
    lab.edit_weight("A", 0); // unusable on a hit: wlc, which also skips the OVERLOAD flag
    assert_eq!(lab.pick(), "B");
}

#[test]
fn lblc_entry_expires_after_lblc_expiration() {
    // lblc_expiration 10 minutes. The GC timer is anchored at the first pick (t = 0) and runs
    // every 60 s; its 30th run (t = 1800 s) is the first full check, which drops entries idle
    // for 600 s or more. A cache hit answers A (5 active, not over its weight 10); wlc would
    // answer the idle B.
    let o = SchedOptions { lblc_expiration: Duration::from_secs(600), ..opts() };
    for (t, expected) in [(1799, "A"), (1800, "B")] {
        let mut lab = Lab::new("lblc", o, &[srv("A", 10), srv("B", 10)]);
        assert_eq!(lab.pick(), "A");
        lab.set("A", |d| d.active = 5);
        lab.clock(t);
        assert_eq!(lab.pick(), expected, "t = {t}");
    }
}

#[test]
fn lblc_deleted_destination_is_a_miss() {
    let mut lab = Lab::new("lblc", opts(), &[srv("A", 10), srv("B", 10)]);
    assert_eq!(lab.pick(), "A");
    lab.set("B", |d| d.active = 3);
    lab.del("A");
    lab.add(srv("A", 10)); // re-added: a new destination for service::Table
    lab.set("A", |d| d.active = 5);
    assert_eq!(lab.pick(), "B", "the entry named the old A: wlc");
    lab.set("A", |d| d.active = 0);
    assert_eq!(lab.pick(), "B", "now cached");
}

#[test]
fn lblcr_1() {
    let mut lab = Lab::new("lblcr", opts(), &[srv("A", 1), srv("B", 1), srv("C", 1)]);
    assert_eq!(lab.picks(7), "A A B B C C C");
}

#[test]
fn lblcr_2_set_shrinks_after_expiration() {
    let o = SchedOptions { lblcr_expiration: Duration::from_secs(60), ..opts() };
    let mut lab = Lab::new("lblcr", o, &[srv("A", 1), srv("B", 1)]);
    assert_eq!(lab.picks(3), "A A B");
    lab.clock(100);
    assert_eq!(lab.picks(2), "B B");
    // The set is now {B}: even with A idle and B at its weight, B is answered (a set still
    // holding A would answer A, its least loaded member).
    lab.set("A", |d| d.active = 0);
    lab.set("B", |d| d.active = 1);
    assert_eq!(lab.pick(), "B");
}

// ------------------------------------------------------------------------------------------
// §2.11 dh, §2.12 sh

const DH_DADDRS: [&str; 4] = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"];

#[test]
fn dh_seed_lab_vip_goes_to_one_server() {
    let mut lab = Lab::new("dh", opts(), &[srv(".131", 1), srv(".130", 1)]);
    assert_eq!(lab.picks(3), ".130 .130 .130");
}

#[test]
fn dh_1() {
    let mut lab = Lab::new("dh", opts(), &[srv("A", 1), srv("B", 7), srv("C", 3)]);
    assert_eq!(lab.picks_daddr(&DH_DADDRS), "A C C B");
}

#[test]
fn dh_2_edit_does_not_rebuild_delete_does() {
    let mut lab = Lab::new("dh", opts(), &[srv("A", 1), srv("B", 1), srv("C", 1)]);
    lab.edit_weight("B", 0);
    assert_eq!(lab.picks_daddr(&DH_DADDRS), "A C C -");
    lab.del("B");
    assert_eq!(lab.picks_daddr(&DH_DADDRS), "A A C C");
}

const SH_CLIENTS: [(&str, u16); 6] = [
    ("203.0.113.1", 1000),
    ("203.0.113.2", 1000),
    ("203.0.113.3", 1000),
    ("203.0.113.4", 1000),
    ("203.0.113.5", 1000),
    ("203.0.113.6", 1000),
];

#[test]
fn sh_1() {
    let mut lab = Lab::new("sh", opts(), &[srv("A", 1), srv("B", 1)]);
    assert_eq!(lab.picks_client(&SH_CLIENTS), "A B B B B A");
}

#[test]
fn sh_2_weighted_fill() {
    let mut lab = Lab::new("sh", opts(), &[srv("A", 2), srv("B", 1), srv("C", 1)]);
    assert_eq!(lab.picks_client(&SH_CLIENTS), "B C A C A B");
}

#[test]
fn sh_3_port_flag() {
    let mut lab = Lab::new("sh", flags(false, true), &[srv("A", 1), srv("B", 1)]);
    let c = "203.0.113.1";
    assert_eq!(lab.picks_client(&[(c, 40000), (c, 40001), (c, 40005), (c, 40010)]), "A B A B");
    // Without sh-port the port is ignored.
    let mut lab = Lab::new("sh", opts(), &[srv("A", 1), srv("B", 1)]);
    assert_eq!(lab.picks_client(&[(c, 40000), (c, 40001), (c, 40005), (c, 40010)]), "A A A A");
}

#[test]
fn sh_weight_zero_keeps_buckets_fallback_probes_from_2h() {
    // list A w2, B w1, C w0: A A B C A A B C ... (C keeps one bucket per cycle of 4).
    let servers = [srv("A", 2), srv("B", 1), srv("C", 0)];
    // 203.0.113.2 -> bucket 147 (147 mod 4 = 3 -> C, weight 0): none without the flag.
    let c2 = [("203.0.113.2", 1)];
    assert_eq!(Lab::new("sh", opts(), &servers).picks_client(&c2), "-");
    // With sh-fallback the probe starts at bucket 2 * 147 mod 256 = 38 (38 mod 4 = 2 -> B),
    // not at 148 (-> A).
    assert_eq!(Lab::new("sh", flags(true, false), &servers).picks_client(&c2), "B");
    // Overloaded B too: 38 B, 39 C, 40 A.
    let mut lab = Lab::new("sh", flags(true, false), &servers);
    lab.set("B", |d| d.overloaded = true);
    assert_eq!(lab.picks_client(&c2), "A");
}

// ------------------------------------------------------------------------------------------
// §2.13 mh
//
// CAVEAT (lvs-semantics.md §2.13): MH-1 was computed by a reimplementation whose SipHash was
// checked against the kernel's self-test vector, but its table population and lookups have not
// been compared with a live kernel. These tests pin our implementation to the spec's numbers;
// confirm on a real kernel before treating a failure here as a kernel mismatch.

const MH_CLIENTS: [(&str, u16); 8] = [
    ("203.0.113.1", 1000),
    ("203.0.113.2", 1000),
    ("203.0.113.3", 1000),
    ("203.0.113.4", 1000),
    ("203.0.113.5", 1000),
    ("203.0.113.6", 1000),
    ("203.0.113.7", 1000),
    ("203.0.113.8", 1000),
];

fn mh_seed_lab(o: SchedOptions) -> Lab {
    let servers = [srv(".131", 1).at("192.168.226.131"), srv(".130", 1).at("192.168.226.130")];
    Lab::new("mh", o, &servers)
}

#[test]
fn mh_1_seed_lab() {
    let mut lab = mh_seed_lab(opts());
    assert_eq!(lab.picks_client(&MH_CLIENTS), ".130 .131 .131 .131 .130 .131 .131 .131");
}

#[test]
fn mh_1_quiesced_server_keeps_slots() {
    let mut lab = mh_seed_lab(opts());
    lab.edit_weight(".131", 0);
    assert_eq!(lab.picks_client(&MH_CLIENTS), ".130 - - - .130 - - -");
    let mut lab = mh_seed_lab(flags(true, false));
    lab.edit_weight(".131", 0);
    assert_eq!(lab.picks_client(&MH_CLIENTS), ".130 .130 .130 .130 .130 .130 .130 .130");
}

#[test]
fn mh_1_port_flag() {
    let mut lab = mh_seed_lab(flags(false, true));
    let c = "203.0.113.1";
    assert_eq!(lab.picks_client(&[(c, 40000), (c, 40001), (c, 40002)]), ".131 .131 .130");
}

// ------------------------------------------------------------------------------------------
// §2.14 twos

/// A twos scheduler whose draws are `draws`, in order (r1, r2, r1, r2, ...), each checked
/// against the expected bound T + 1.
fn twos_with(draws: &[u32], bound: u32) -> Box<dyn Scheduler> {
    let mut seq = std::collections::VecDeque::from(draws.to_vec());
    Box::new(sched::twos::TwoChoices::with_draws(&opts(), move |n| {
        assert_eq!(n, bound, "draw bound is total weight + 1");
        seq.pop_front().expect("enough draws")
    }))
}

#[test]
fn twos_1() {
    let servers = [srv("A", 1).counts(1, 0), srv("B", 2), srv("C", 1).counts(0, 5)];
    let mut lab = Lab::with(twos_with(&[0, 3], 5), &servers);
    assert_eq!(lab.pick(), "B");
}

#[test]
fn twos_2() {
    let servers = [srv("A", 1), srv("B", 1).counts(3, 0)];
    assert_eq!(Lab::with(twos_with(&[2, 1], 3), &servers).pick(), "A");
    assert_eq!(Lab::with(twos_with(&[0, 2], 3), &servers).pick(), "A");
}

#[test]
fn twos_skips_quiesced_and_overloaded_in_total() {
    // T counts only B (w 2): draws from [0, 2]; every draw lands on B.
    let servers = [srv("A", 4).overloaded(), srv("B", 2), srv("C", 0)];
    let mut lab = Lab::with(twos_with(&[0, 2, 1, 1], 3), &servers);
    assert_eq!(lab.picks(2), "B B");
}

// ------------------------------------------------------------------------------------------
// §6 persistence (seed lab list .131, .130; `*` marks a template hit)

fn p_clients(lab: &mut Lab, clients: &[&str]) -> String {
    let c: Vec<(&str, u16)> = clients.iter().map(|c| (*c, 50000)).collect();
    lab.picks_client(&c)
}

#[test]
fn p_1_rr_templates_do_not_advance() {
    let mut lab = Lab::new("rr", opts(), &[srv(".131", 1), srv(".130", 1)]).persistent(300, "255.255.255.255", false);
    let clients = ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.3", "10.0.0.2", "10.0.0.4"];
    assert_eq!(p_clients(&mut lab, &clients), ".131 .130 .131* .131 .130* .130");
}

#[test]
fn p_2_netmask() {
    let mut lab = Lab::new("rr", opts(), &[srv(".131", 1), srv(".130", 1)]).persistent(300, "255.255.255.0", false);
    let clients = ["10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.0.99", "10.0.2.1"];
    assert_eq!(p_clients(&mut lab, &clients), ".131 .131* .130 .131* .131");
}

#[test]
fn p_3_quiesced_template_still_valid() {
    for (sysctl, expected) in [(false, ".131* .130 .130*"), (true, ".130 .130 .130*")] {
        let mut lab = Lab::new("wrr", opts(), &[srv(".131", 1), srv(".130", 1)]).persistent(300, "255.255.255.255", sysctl);
        assert_eq!(p_clients(&mut lab, &["10.0.0.1", "10.0.0.2"]), ".131 .130");
        lab.edit_weight(".131", 0);
        assert_eq!(p_clients(&mut lab, &["10.0.0.1", "10.0.0.3", "10.0.0.2"]), expected, "expire_quiescent_template={sysctl}");
    }
}

#[test]
fn persistence_template_hit_ignores_overload() {
    let mut lab = Lab::new("rr", opts(), &[srv(".131", 1), srv(".130", 1)]).persistent(300, "255.255.255.255", false);
    assert_eq!(p_clients(&mut lab, &["10.0.0.1"]), ".131");
    lab.set(".131", |d| d.overloaded = true);
    assert_eq!(p_clients(&mut lab, &["10.0.0.1", "10.0.0.2"]), ".131* .130");
}

// ------------------------------------------------------------------------------------------
// §5 thresholds

#[test]
fn th_1_thresholds_with_rr() {
    let mut lab = Lab::new("rr", opts(), &[srv("A", 1).thresholds(3, 1), srv("B", 1)]);
    assert_eq!(lab.picks(7), "A B A B A B B");
    assert!(lab.dest("A").overloaded);
    lab.end("A"); // total 2, not < 1
    assert_eq!(lab.picks(2), "B B");
    lab.end("A");
    lab.end("A"); // total 0 < 1: cleared
    assert_eq!(lab.picks(3), "A B A");
}

#[test]
fn th_1_with_lower_threshold_zero() {
    let mut lab = Lab::new("rr", opts(), &[srv("A", 1).thresholds(3, 0), srv("B", 1)]);
    assert_eq!(lab.picks(7), "A B A B A B B");
    lab.end("A"); // 4 * 2 < 9: cleared
    assert_eq!(lab.picks(2), "A B");
    assert!(lab.dest("A").overloaded, "A reached 3 again");
}

// ------------------------------------------------------------------------------------------
// Properties

mod props {
    use super::*;
    use proptest::prelude::*;

    /// One step of a random history of a service.
    #[derive(Debug, Clone)]
    enum Op {
        Add { weight: u32, active: u32, inactive: u32, overloaded: bool },
        Del(usize),
        Edit(usize, u32),
        Counts(usize, u32, u32),
        Overload(usize, bool),
        Pick { caddr: u32, cport: u16, daddr: u32, secs: u64 },
    }

    fn weight() -> impl Strategy<Value = u32> {
        prop_oneof![3 => 0u32..5, 1 => 0u32..=65535]
    }

    /// Mostly small counts, so that ties (where tie-breaks show) are common.
    fn count(max: u32) -> impl Strategy<Value = u32> {
        prop_oneof![3 => 0u32..4, 1 => 0u32..max]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (weight(), count(2000), count(2000), proptest::bool::weighted(0.2)).prop_map(
                |(weight, active, inactive, overloaded)| Op::Add { weight, active, inactive, overloaded }
            ),
            1 => any::<usize>().prop_map(Op::Del),
            1 => (any::<usize>(), weight()).prop_map(|(i, w)| Op::Edit(i, w)),
            1 => (any::<usize>(), count(100_000), count(100_000)).prop_map(|(i, a, n)| Op::Counts(i, a, n)),
            1 => (any::<usize>(), any::<bool>()).prop_map(|(i, o)| Op::Overload(i, o)),
            6 => (any::<u32>(), any::<u16>(), 0u32..8, 0u64..400_000).prop_map(
                |(caddr, cport, daddr, secs)| Op::Pick { caddr, cport, daddr, secs }
            ),
        ]
    }

    /// Runs `ops` on a fresh service with scheduler `name`, checking every pick: the index is in
    /// range, the server has weight > 0, and (except lblc's cache hits, lvs-semantics.md §1.3)
    /// it is not OVERLOAD. The same history runs on the scheduler in the other `incremental`
    /// mode (told of every counter change through on_counts); both must answer the same.
    fn run(name: &str, opts: SchedOptions, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut s = sched::new(name, &opts, &[]).expect("known");
        let other = SchedOptions { incremental: !opts.incremental, ..opts };
        let mut twin = sched::new(name, &other, &[]).expect("known");
        let mut dests: Vec<Dest> = Vec::new();
        let mut next = 0u64;
        let mut clock = 0u64;
        let changed = |s: &mut Box<dyn Scheduler>, t: &mut Box<dyn Scheduler>, d: &[Dest], c: Change| {
            s.on_change(d, c);
            t.on_change(d, c);
        };
        let counted = |s: &mut Box<dyn Scheduler>, t: &mut Box<dyn Scheduler>, d: &[Dest], i: usize| {
            s.on_counts(d, i);
            t.on_counts(d, i);
        };
        for op in ops {
            match *op {
                Op::Add { weight, active, inactive, overloaded } => {
                    let mut d = Dest::new(DestId(next), Ipv4Addr::from(0x0a00_0000 + next as u32), 80, weight);
                    next += 1;
                    d.active = active;
                    d.inactive = inactive;
                    d.overloaded = overloaded;
                    dests.insert(0, d);
                    changed(&mut s, &mut twin, &dests, Change::Added(0));
                }
                Op::Del(i) if !dests.is_empty() => {
                    let i = i % dests.len();
                    let d = dests.remove(i);
                    changed(&mut s, &mut twin, &dests, Change::Removed { index: i, id: d.id });
                }
                Op::Edit(i, w) if !dests.is_empty() => {
                    let i = i % dests.len();
                    dests[i].weight = w;
                    if w > 0 {
                        dests[i].last_weight = w;
                    }
                    changed(&mut s, &mut twin, &dests, Change::Edited(i));
                }
                Op::Counts(i, a, n) if !dests.is_empty() => {
                    let i = i % dests.len();
                    dests[i].active = a;
                    dests[i].inactive = n;
                    counted(&mut s, &mut twin, &dests, i);
                }
                Op::Overload(i, o) if !dests.is_empty() => {
                    let i = i % dests.len();
                    dests[i].overloaded = o;
                    counted(&mut s, &mut twin, &dests, i);
                }
                Op::Pick { caddr, cport, daddr, secs } => {
                    clock += secs;
                    let req = Request {
                        caddr: Ipv4Addr::from(caddr),
                        cport,
                        daddr: Ipv4Addr::from(0xc633_6400 + daddr),
                        dport: 80,
                        now: Duration::from_secs(clock),
                    };
                    let got = s.schedule(&dests, &req);
                    prop_assert_eq!(twin.schedule(&dests, &req), got, "{}: scan and index disagree", name);
                    if let Some(i) = got {
                        prop_assert!(i < dests.len(), "{name}: index {i} of {}", dests.len());
                        let d = &dests[i];
                        prop_assert!(d.weight > 0, "{name} picked a weight-0 server: {d:?}");
                        if name != "lblc" {
                            prop_assert!(!d.overloaded, "{name} picked an OVERLOAD server: {d:?}");
                        }
                        dests[i].active = dests[i].active.saturating_add(1);
                        counted(&mut s, &mut twin, &dests, i);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn no_scheduler_picks_quiesced_or_overloaded(ops in proptest::collection::vec(op(), 0..80),
                                                     f1: bool, f2: bool) {
            for name in sched::NAMES {
                for overhead in [Overhead::Classic, Overhead::Total] {
                    let o = SchedOptions { overhead, seed: 7, ..flags(f1, f2) };
                    run(name, o, &ops)?;
                }
            }
        }

        /// wrr: from `-E -s wrr` (cw = mw) one cycle of sum(w / gcd) picks gives every server
        /// exactly w / gcd picks; built by adds, the same holds after the first cw = 1 round.
        #[test]
        fn wrr_cycle_gives_weight_over_gcd(ws in proptest::collection::vec(0u32..12, 1..8), scale in 1u32..4) {
            let ws: Vec<u32> = ws.iter().map(|w| w * scale).collect();
            let g = ws.iter().fold(0u32, |a, &b| gcd(a, b));
            prop_assume!(g > 0);
            let names = ["A", "B", "C", "D", "E", "F", "G", "H"];
            let servers: Vec<Srv> = ws.iter().zip(names).map(|(&w, n)| srv(n, w)).collect();
            let cycle: usize = ws.iter().map(|w| (w / g) as usize).sum();
            let first_round = ws.iter().filter(|&&w| w > 0).count();

            let mut switched = Lab::switched("wrr", opts(), &servers);
            let mut built = Lab::new("wrr", opts(), &servers);
            let _ = built.picks(first_round);
            for lab in [&mut switched, &mut built] {
                for _ in 0..2 {
                    let picks = lab.picks(cycle);
                    for (w, n) in ws.iter().zip(names) {
                        let got = picks.split(' ').filter(|p| *p == n).count();
                        prop_assert_eq!(got, (w / g) as usize, "server {} weight {} in {}", n, w, picks);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// sh and mh map a client (address, and port with the port flag) to one server: asking
        /// again, after other clients and with changed connection counts, gives the same answer.
        /// dh does the same for destination addresses.
        #[test]
        fn hashing_schedulers_are_sticky(
            servers in proptest::collection::vec((0u32..6, proptest::bool::weighted(0.15)), 1..24),
            clients in proptest::collection::vec((any::<u32>(), any::<u16>()), 1..40),
            f1: bool, f2: bool,
        ) {
            for name in ["sh", "mh", "dh"] {
                let mut s = sched::new(name, &flags(f1, f2), &[]).expect("known");
                let mut dests: Vec<Dest> = Vec::new();
                for (k, &(w, o)) in servers.iter().enumerate() {
                    let mut d = Dest::new(DestId(k as u64), Ipv4Addr::from(0x0a01_0000 + k as u32), 80, w);
                    d.overloaded = o;
                    dests.insert(0, d);
                    s.on_change(&dests, Change::Added(0));
                }
                let req = |&(a, p): &(u32, u16)| Request {
                    caddr: Ipv4Addr::from(a),
                    cport: p,
                    daddr: Ipv4Addr::from(a.rotate_left(7)),
                    dport: 80,
                    now: Duration::ZERO,
                };
                let first: Vec<Option<usize>> = clients.iter().map(|c| s.schedule(&dests, &req(c))).collect();
                for (k, d) in dests.iter_mut().enumerate() {
                    d.active = (k as u32 * 7919) % 500;
                    d.inactive = (k as u32 * 104_729) % 900;
                }
                for (c, f) in clients.iter().zip(&first).rev() {
                    let again = s.schedule(&dests, &req(c));
                    prop_assert_eq!(again, *f, "{} client {:?}", name, c);
                }
            }
        }
    }

    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
}

// ------------------------------------------------------------------------------------------
// Factory

#[test]
fn factory_builds_every_name_and_rejects_others() {
    assert_eq!(sched::NAMES.len(), 14);
    for name in sched::NAMES {
        let s = sched::new(name, &opts(), &[]).expect("known scheduler");
        assert_eq!(s.name(), *name);
    }
    let err = sched::new("wrrr", &opts(), &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("unknown scheduler 'wrrr'"), "{msg}");
    for name in sched::NAMES {
        assert!(msg.contains(&format!(" {name},")) || msg.contains(&format!(" {name})")), "{msg} lacks {name}");
    }
}
