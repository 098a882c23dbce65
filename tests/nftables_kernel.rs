//! Real-kernel tests of `nfvs::kernel::nftables`: installing, reading back and removing table
//! `ip nfvs`, the queue probe, and a SYN travelling through the divert rule into NFQUEUE.
//!
//! They need root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces). Every test works
//! in network namespaces of its own, made and removed by [`NetNs`]; the host's firewall is
//! never touched. Kernel calls run on a thread that has entered the namespace, so the netlink
//! sockets they open belong to it; commands run through `ip netns exec`.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nfvs::kernel::nftables::{self, NftError, QueueImpl};
use nfvs::ruleset::{Cidr, Divert, FallbackRule, QueueSpec, Ruleset};
use nfvs::model::Protocol;

/// A network namespace that exists for the life of the value.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new(tag: &str) -> NetNs {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let name = format!("nfvs-nft-{}-{n}-{tag}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip netns add {name} failed (these tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = NetNs { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Move the calling thread into this namespace. Only network namespaces are per-thread
    /// this way (setns(2)); call it first thing on a thread of its own.
    fn enter(&self) {
        let f = File::open(format!("/run/netns/{}", self.name)).expect("open netns file");
        // SAFETY: a valid namespace fd; affects only the calling thread.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {}: {}", self.name, io::Error::last_os_error());
    }

    /// Run `f` on a thread inside the namespace, passing panics on.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        thread::scope(|s| {
            let h = s.spawn(|| {
                self.enter();
                f()
            });
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
    }

    /// Run a command that must succeed; its stdout.
    fn ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nft -f -` with `script` on stdin; must succeed.
    fn nft_script(&self, script: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run nft");
        child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("wait nft");
        assert!(out.status.success(), "nft -f failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn ruleset(&self) -> String {
        self.ok(&["nft", "list", "ruleset"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Never panic here: this runs while a failed test unwinds too.
        match Command::new("ip").args(["netns", "del", &self.name]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("ip netns del {}: {}", self.name, String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("ip netns del {}: {e}", self.name),
        }
    }
}

fn tcp(vip: [u8; 4], port: u16) -> Divert {
    Divert::new(Protocol::Tcp, Ipv4Addr::from(vip), port).expect("valid divert")
}

fn cidr(s: &str) -> Cidr {
    s.parse().expect("valid cidr")
}

/// The seed lab's table.
fn lab() -> Ruleset {
    Ruleset {
        queue: QueueSpec::single(0),
        diverts: vec![tcp([192, 168, 199, 200], 80)],
        masquerade: vec![cidr("192.168.226.0/24")],
        fallback: vec![],
        events_mark: Some(0x6e66_7673),
    }
}

/// Everything that prints differently: several services, a queue range with both flags,
/// a prefix on a byte boundary, one that is not, a host and the whole address space.
fn busy() -> Ruleset {
    Ruleset {
        queue: QueueSpec::new(2, 4, true, true).expect("valid queue"),
        diverts: vec![tcp([10, 0, 0, 1], 443), tcp([10, 0, 0, 2], 8080), tcp([10, 0, 0, 1], 80)],
        masquerade: vec![cidr("192.168.226.0/24"), cidr("10.16.0.0/12"), cidr("10.1.2.3"), cidr("0.0.0.0/0")],
        fallback: vec![],
        events_mark: None,
    }
}

/// What `nft --stateless list table ip nfvs` prints for `rs`: `render()` as is with the
/// compat target; with the native expression nft 1.0.6 writes the queue statement as
/// `queue [flags F] to N[-M]` (documented on `Ruleset::render`).
fn expected_listing(rs: &Ruleset, q: QueueImpl) -> String {
    let text = rs.render();
    if q == QueueImpl::Compat {
        return text;
    }
    let range = if rs.queue.total > 1 {
        format!("{}-{}", rs.queue.num, rs.queue.last())
    } else {
        rs.queue.num.to_string()
    };
    let flags = match (rs.queue.bypass, rs.queue.fanout) {
        (true, true) => " bypass,fanout",
        (true, false) => " bypass",
        (false, true) => " fanout",
        (false, false) => "",
    };
    let native_flags = if flags.is_empty() { String::new() } else { format!(" flags{flags}") };
    text.replace(&format!("queue num {range}{flags}"), &format!("queue{native_flags} to {range}"))
}

#[test]
fn apply_installs_what_render_prints() {
    let ns = NetNs::new("render");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    for rs in [lab(), busy()] {
        ns.run(|| nftables::apply(&rs, q)).expect("apply");
        let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
        assert_eq!(listed, expected_listing(&rs, q), "kernel listing differs from render()");
    }
    // Without --stateless nft adds counter values; nothing has matched yet.
    let listed = ns.ok(&["nft", "list", "table", "ip", "nfvs"]);
    assert!(
        listed.contains("tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter packets 0 bytes 0 queue"),
        "{listed}"
    );
    assert!(listed.contains("ct state new counter packets 0 bytes 0\n"), "{listed}");
}

/// The lab table as the report shows it, from the kernel.
#[test]
fn lab_table_listing() {
    let ns = NetNs::new("lab");
    ns.run(|| {
        let q = nftables::detect_queue_impl()?;
        nftables::apply(&lab(), q)
    })
    .expect("apply");
    let listed = ns.ok(&["nft", "list", "table", "ip", "nfvs"]);
    eprintln!("nft list table ip nfvs:\n{listed}");
    assert!(listed.contains("elements = { 192.168.199.200 . 80 }"), "{listed}");
    assert!(listed.contains("tcp flags syn / fin,syn,rst,ack ip daddr . tcp dport @services counter packets 0 bytes 0 queue num 0"), "{listed}");
    assert!(listed.contains("ip saddr 192.168.226.0/24 masquerade"));
}

#[test]
fn detect_agrees_with_nft_and_leaves_nothing() {
    let ns = NetNs::new("detect");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    assert_eq!(ns.ruleset(), "", "the probe left something behind");
    ns.ok(&["nft", "add", "table", "ip", "probe"]);
    ns.ok(&["nft", "add", "chain", "ip", "probe", "c"]);
    let native_works =
        ns.exec(&["nft", "add", "rule", "ip", "probe", "c", "queue", "num", "0"]).status.success();
    assert_eq!(q == QueueImpl::Native, native_works, "detect_queue_impl() said {q:?}");
}

#[test]
fn replace_and_remove_leave_foreign_rules_alone() {
    let ns = NetNs::new("foreign");
    ns.nft_script(
        "table ip filter {\n\
         \tchain input { type filter hook input priority 0; policy accept; ip saddr 10.9.9.9 counter drop; }\n\
         }\n",
    );
    ns.ok(&["iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-s", "10.8.0.0/16", "-j", "MASQUERADE"]);
    let before = ns.ruleset();
    assert!(before.contains("table ip filter") && before.contains("table ip nat"), "{before}");

    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    // A table left from a crash, with a chain nfvs never makes: apply replaces all of it.
    ns.nft_script(
        "table ip nfvs {\n\tchain stray { type filter hook input priority 0; ip saddr 10.0.0.9 drop; }\n}\n",
    );
    ns.run(|| nftables::apply(&lab(), q)).expect("apply over a leftover table");
    let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
    assert_eq!(listed, expected_listing(&lab(), q));
    ns.run(|| nftables::apply(&busy(), q)).expect("apply again (replace)");
    let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
    assert_eq!(listed, expected_listing(&busy(), q));

    assert!(ns.run(nftables::remove).expect("remove"), "remove() found no table");
    assert_eq!(ns.ruleset(), before, "foreign rules changed");
    assert!(!ns.run(nftables::remove).expect("second remove"));
}

/// The kernel-only fallback balancing (design.md fact 7) installs, reads back and lists as
/// rendered: weighted numgen steps, the last server without one, weight 0 left out.
#[test]
fn fallback_rules_install_and_list_as_rendered() {
    let ns = NetNs::new("fb");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    let mut rs = lab();
    rs.fallback = vec![FallbackRule {
        vip: [192, 168, 199, 200].into(),
        port: 80,
        servers: vec![([192, 168, 226, 131].into(), 80, 1), ([192, 168, 226, 130].into(), 80, 2), ([192, 168, 226, 132].into(), 8080, 0)],
    }];
    ns.run(|| nftables::apply(&rs, q)).expect("apply with fallback");
    let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
    assert_eq!(listed, expected_listing(&rs, q));
    // A map from the service to a chain of its own, holding its rules.
    assert!(listed.contains("elements = { 192.168.199.200 . 80 : jump fallback-192.168.199.200-80 }"), "{listed}");
    assert!(listed.contains("\t\tip daddr . tcp dport vmap @fallback\n"), "{listed}");
    assert!(
        listed.contains(
            "\tchain fallback-192.168.199.200-80 {\n\
             \t\tmeta l4proto tcp numgen inc mod 3 < 1 counter dnat to 192.168.226.131:80\n\
             \t\tmeta l4proto tcp counter dnat to 192.168.226.130:80\n\t}\n"
        ),
        "{listed}"
    );
    assert!(!listed.contains("192.168.226.132"), "{listed}");
    assert!(ns.run(nftables::remove).expect("remove"));
}

/// Ten thousand services: one set element each, the same rules as for one. Their elements
/// take more than one nftnl page (128 KiB), and the batch must still go out as one
/// transaction, with all its acks back; install and read-back take well under a second
/// (bounded loosely here for a loaded CI machine; scripts/bench.sh ONLY=services measures).
#[test]
fn many_services_in_one_batch() {
    let ns = NetNs::new("many");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    let rs = Ruleset { diverts: many_diverts(10_000), ..lab() };
    let took = ns.run(|| {
        let t = Instant::now();
        nftables::apply(&rs, q).expect("apply 10,000 services");
        t.elapsed()
    });
    assert!(took < Duration::from_secs(5), "apply and read-back of 10,000 services took {took:?}");
    let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
    assert_eq!(listed, expected_listing(&rs, q));
    assert_eq!(listed.matches("10.100.").count(), 10_000);
    eprintln!("apply and read-back of 10,000 services: {took:?}");
    let divert = ns.ok(&["nft", "--stateless", "list", "chain", "ip", "nfvs", "divert"]);
    assert_eq!(divert.lines().filter(|l| l.contains("queue")).count(), 1, "{divert}");
    assert!(ns.run(nftables::remove).expect("remove"));
}

/// `n` TCP services: ports 1 to 100 on addresses from 10.100.0.0 up.
fn many_diverts(n: u32) -> Vec<Divert> {
    (0..n).map(|i| tcp((0x0a64_0000 + i / 100).to_be_bytes(), (i % 100 + 1) as u16)).collect()
}

/// The handle of table ip nfvs (`nft -a list`): every table made gets a new one (a full
/// replace), an incremental update keeps it.
fn table_handle(ns: &NetNs) -> String {
    let listed = ns.ok(&["nft", "-a", "list", "table", "ip", "nfvs"]);
    let first = listed.lines().next().unwrap_or_default();
    first.rsplit_once("# handle ").unwrap_or_else(|| panic!("no handle in {first:?}")).1.trim().to_string()
}

/// Issue 11 #7: adding and removing services changes set elements only, in one small batch,
/// whatever the number of services: the table stays (with its rules' counters), and the kernel
/// lists what `render()` prints for the new ruleset.
#[test]
fn update_changes_only_the_services() {
    let ns = NetNs::new("upd");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    let old = Ruleset { diverts: many_diverts(10_000), ..busy() };
    ns.run(|| nftables::apply(&old, q)).expect("apply");
    let handle = table_handle(&ns);
    let mut new = old.clone();
    new.diverts.remove(5_000);
    new.diverts.push(tcp([10, 200, 0, 1], 443));
    let took = ns.run(|| {
        let t = Instant::now();
        nftables::update(&old, &new, q).expect("update");
        t.elapsed()
    });
    eprintln!("update of 10,000 services (one added, one removed): {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
    assert_eq!(listed, expected_listing(&new, q));
    assert!(listed.contains("10.200.0.1 . 443") && !listed.contains("10.100.0.50 . 1,"), "the changed services");
    assert_eq!(table_handle(&ns), handle, "the same table");
    ns.run(|| nftables::verify(&new, q)).expect("verify");
    // Many changes (a reload): read back whole sets rather than element by element.
    let mut reloaded = new.clone();
    reloaded.diverts.drain(..500);
    reloaded.diverts.extend((1..=500).map(|p| tcp([10, 201, 0, 1], p)));
    ns.run(|| nftables::update(&new, &reloaded, q)).expect("update 1,000 services");
    assert_eq!(ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]), expected_listing(&reloaded, q));
    assert_eq!(table_handle(&ns), handle, "the same table");
    let new = reloaded;
    // Nothing to do: nothing sent.
    ns.run(|| nftables::update(&new, &new, q)).expect("no change");
    // Anything but the services (here the queue) replaces the table.
    let mut requeued = new.clone();
    requeued.queue.num = 3;
    ns.run(|| nftables::update(&new, &requeued, q)).expect("update the queue");
    assert_eq!(ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]), expected_listing(&requeued, q));
    assert_ne!(table_handle(&ns), handle, "a new table");
}

/// With `--overload fallback` a service's kernel balancing is a chain of its own: a new
/// service adds one, a changed weight replaces that chain's rules, a deleted service deletes
/// its element and its chain, in one batch each.
#[test]
fn update_changes_fallback_chains() {
    let ns = NetNs::new("updfb");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    let rs = |n: u8| -> Ipv4Addr { Ipv4Addr::new(192, 168, 226, n) };
    let fb = |port: u16, servers: Vec<(Ipv4Addr, u16, u32)>| FallbackRule { vip: [192, 168, 199, 200].into(), port, servers };
    let mut one = lab();
    one.fallback = vec![fb(80, vec![(rs(130), 80, 1), (rs(131), 80, 1)])];
    ns.run(|| nftables::apply(&one, q)).expect("apply");
    let handle = table_handle(&ns);

    let mut two = one.clone();
    two.diverts.push(tcp([192, 168, 199, 200], 443));
    two.fallback.push(fb(443, vec![(rs(131), 443, 1)]));
    two.fallback[0].servers[1].2 = 3;
    ns.run(|| nftables::update(&one, &two, q)).expect("add a service, change a weight");
    let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
    assert_eq!(listed, expected_listing(&two, q));
    assert!(listed.contains("meta l4proto tcp numgen inc mod 4 < 1 counter dnat to 192.168.226.130:80"), "{listed}");
    assert!(listed.contains("\tchain fallback-192.168.199.200-443 {"), "{listed}");

    let mut last = two.clone();
    last.diverts.remove(0);
    last.fallback.remove(0);
    ns.run(|| nftables::update(&two, &last, q)).expect("delete a service");
    let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
    assert_eq!(listed, expected_listing(&last, q));
    assert!(!listed.contains("fallback-192.168.199.200-80"), "{listed}");
    assert_eq!(table_handle(&ns), handle, "the same table");
    ns.run(|| nftables::verify(&last, q)).expect("verify");
}

/// When the table is not what nfvs installed where an update changes it (an element added or
/// deleted by hand, the table deleted), the change is made whole: `update` replaces the
/// table, and it holds what it should. (An update checks what it changed; a difference
/// elsewhere is for `verify`.)
#[test]
fn update_repairs_a_table_changed_behind_its_back() {
    let ns = NetNs::new("updrep");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    let old = busy();
    ns.run(|| nftables::apply(&old, q)).expect("apply");
    let mut new = old.clone();
    new.diverts.push(tcp([10, 0, 0, 3], 22));
    // The element the update would add is there already: its add is refused (EEXIST).
    ns.ok(&["nft", "add", "element", "ip", "nfvs", "services", "{ 10.0.0.3 . 22 }"]);
    ns.run(|| nftables::update(&old, &new, q)).expect("update over an extra element");
    assert_eq!(ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]), expected_listing(&new, q));
    // The element the update would delete is gone already: its delete is refused (ENOENT).
    ns.ok(&["nft", "delete", "element", "ip", "nfvs", "services", "{ 10.0.0.3 . 22 }"]);
    ns.run(|| nftables::update(&new, &old, q)).expect("update over a missing element");
    assert_eq!(ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]), expected_listing(&old, q));
    ns.ok(&["nft", "delete", "table", "ip", "nfvs"]);
    ns.run(|| nftables::update(&old, &new, q)).expect("update without a table");
    assert_eq!(ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]), expected_listing(&new, q));
}

/// The read-back compares real kernel state: a different ruleset, an extra rule, a missing
/// table are all caught.
#[test]
fn verify_catches_differences() {
    let ns = NetNs::new("verify");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    let missing = ns.run(|| nftables::verify(&lab(), q)).unwrap_err();
    assert!(matches!(missing, NftError::Mismatch { .. }), "{missing}");
    assert!(missing.to_string().contains("chains are [], expected [divert, events, nat_pre, nat_post]"), "{missing}");

    ns.run(|| nftables::apply(&lab(), q)).expect("apply");
    ns.run(|| nftables::verify(&lab(), q)).expect("verify what was applied");

    let mut other_port = lab();
    other_port.diverts[0].port = 81;
    let err = ns.run(|| nftables::verify(&other_port, q)).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "set services holds 1 elements, expected 1: missing [192.168.199.200 . 81], unexpected [192.168.199.200 . 80]"
        ),
        "{err}"
    );
    let mut other_queue = lab();
    other_queue.queue.num = 1;
    assert!(ns.run(|| nftables::verify(&other_queue, q)).is_err());

    ns.ok(&["nft", "add", "rule", "ip", "nfvs", "nat_post", "ip", "saddr", "10.0.0.0/8", "masquerade"]);
    let err = ns.run(|| nftables::verify(&lab(), q)).unwrap_err();
    assert!(err.to_string().contains("chain nat_post has 2 rules, expected 1"), "{err}");
}

#[test]
fn remove_when_absent() {
    let ns = NetNs::new("absent");
    assert!(!ns.run(nftables::remove).expect("remove"));
    assert_eq!(ns.ruleset(), "");
}

#[test]
fn invalid_ruleset_installs_nothing() {
    let ns = NetNs::new("invalid");
    let mut rs = lab();
    rs.diverts.push(Divert { proto: Protocol::Udp, vip: Ipv4Addr::new(10, 0, 0, 1), port: 53 });
    let err = ns.run(|| nftables::apply(&rs, QueueImpl::Compat)).unwrap_err();
    assert!(matches!(err, NftError::Invalid { .. }), "{err}");
    assert_eq!(ns.ruleset(), "");
}

/// capset(2) structures, version 3 (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drop CAP_NET_ADMIN from the calling thread's effective set (capabilities are per thread).
fn drop_cap_net_admin() {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs, as version 3 requires.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr as *mut CapHeader, data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", io::Error::last_os_error());
}

#[test]
fn missing_cap_net_admin_is_named() {
    let ns = NetNs::new("noadmin");
    let (apply, remove, probe) = ns.run(|| {
        drop_cap_net_admin();
        (nftables::apply(&lab(), QueueImpl::Compat), nftables::remove(), nftables::detect_queue_impl())
    });
    for err in [apply.unwrap_err(), remove.unwrap_err(), probe.unwrap_err()] {
        assert!(matches!(err, NftError::PermissionDenied { .. }), "{err:?}");
        assert!(err.to_string().contains("CAP_NET_ADMIN is missing (run nfvs as root)"), "{err}");
    }
    assert_eq!(
        nftables::NftError::PermissionDenied { op: nftables::Op::Install }.to_string(),
        "install table ip nfvs: permission denied: CAP_NET_ADMIN is missing (run nfvs as root)"
    );
    assert_eq!(ns.ruleset(), "");
}

/// `rules/nfvs.iptables` loads with iptables-nft and shows the same rules.
#[test]
fn iptables_form_loads() {
    let ns = NetNs::new("ipt");
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/nfvs.iptables");
    ns.ok(&["iptables-nft-restore", "--noflush", file]);
    let listed = ns.ok(&["nft", "--stateless", "list", "ruleset"]);
    assert!(
        listed.contains(
            "ip daddr 192.168.199.200 tcp dport 80 tcp flags syn / fin,syn,rst,ack counter queue num 0"
        ) || listed.contains(
            "ip daddr 192.168.199.200 tcp flags syn / fin,syn,rst,ack tcp dport 80 counter queue num 0"
        ),
        "{listed}"
    );
    assert!(listed.contains("ct state new counter"), "{listed}");
    // The guard (nft prints the xt conntrack match without its `!`; iptables shows it whole).
    let mangle = ns.ok(&["iptables-nft", "-t", "mangle", "-S", "PREROUTING"]);
    assert!(mangle.contains("--tcp-flags FIN,SYN,RST,ACK SYN -m conntrack ! --ctstate DNAT -j DROP"), "{mangle}");
    assert!(listed.contains("ip saddr 192.168.226.0/24 counter masquerade"), "{listed}");
}

/// `rules/nfvs.nft` loads where the native queue expression exists and gives the table
/// `render()` describes; elsewhere nft refuses only the queue statement, atomically.
#[test]
fn nft_form_loads_where_the_kernel_can() {
    let ns = NetNs::new("nftf");
    let q = ns.run(nftables::detect_queue_impl).expect("probe");
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/rules/nfvs.nft");
    let out = ns.exec(&["nft", "-f", file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match q {
        QueueImpl::Native => {
            assert!(out.status.success(), "{stderr}");
            let listed = ns.ok(&["nft", "--stateless", "list", "table", "ip", "nfvs"]);
            assert_eq!(listed, expected_listing(&lab(), q));
        }
        QueueImpl::Compat => {
            assert!(!out.status.success());
            assert!(
                stderr.contains("No such file or directory") && stderr.contains("queue num 0"),
                "{stderr}"
            );
            assert!(!stderr.contains("syntax error"), "{stderr}");
            assert_eq!(ns.ruleset(), "", "a refused nft -f left something behind");
        }
    }
}

// --- A SYN through the divert rule -------------------------------------------------------

const QUEUE: u16 = 5;
const PORT: u16 = 8080;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// What the test saw of one queued packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queued {
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
}

fn parse_queued(p: &[u8]) -> Option<Queued> {
    let ihl = usize::from(p.first()? & 0x0f) * 4;
    if *p.get(9)? != 6 {
        return None;
    }
    let dst = Ipv4Addr::new(*p.get(16)?, *p.get(17)?, *p.get(18)?, *p.get(19)?);
    let t = p.get(ihl..ihl + 14)?;
    Some(Queued {
        dst,
        sport: u16::from_be_bytes([t[0], t[1]]),
        dport: u16::from_be_bytes([t[2], t[3]]),
        flags: t[13],
    })
}

/// A bare 20-byte TCP header from CLIENT:sport to VIP:dport with `flags`, checksummed over
/// the IPv4 pseudo-header (RFC 9293 §3.1).
fn tcp_header(sport: u16, dport: u16, flags: u8) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1000u32.to_be_bytes()); // seq
    h[8..12].copy_from_slice(&2000u32.to_be_bytes()); // ack
    h[12] = 5 << 4; // data offset: 5 words
    h[13] = flags;
    h[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&CLIENT.octets());
    pseudo.extend_from_slice(&VIP.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&h);
    let mut sum: u32 = pseudo.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    h
}

/// Send a hand-made TCP segment through a raw socket; the kernel adds the IPv4 header.
fn send_raw_tcp(sport: u16, dport: u16, flags: u8) {
    // SAFETY: plain socket calls with valid arguments; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP);
        assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
        let seg = tcp_header(sport, dport, flags);
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes(VIP.octets());
        let n = libc::sendto(
            fd,
            seg.as_ptr().cast(),
            seg.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, seg.len() as isize, "sendto: {err}");
    }
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

#[test]
fn only_syns_to_vip_port_are_queued() {
    let dir = NetNs::new("dir");
    let cli = NetNs::new("cli");
    cli.ok(&["ip", "link", "add", "vc", "type", "veth", "peer", "name", "vd", "netns", &dir.name]);
    cli.ok(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "vc"]);
    cli.ok(&["ip", "link", "set", "vc", "up"]);
    dir.ok(&["ip", "addr", "add", &format!("{VIP}/24"), "dev", "vd"]);
    dir.ok(&["ip", "link", "set", "vd", "up"]);

    let rs = Ruleset {
        queue: QueueSpec::single(QUEUE),
        diverts: vec![tcp(VIP.octets(), PORT)],
        masquerade: vec![],
        fallback: vec![],
        events_mark: None,
    };
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let done = AtomicBool::new(false);

    let queued = thread::scope(|s| {
        let director = s.spawn(|| {
            dir.enter();
            // Bind and configure the queue before the divert rule exists (design.md fact 9).
            let mut queue = nfq::Queue::open().expect("open queue");
            queue.bind(QUEUE).expect("bind queue");
            queue.set_copy_range(QUEUE, 128).expect("copy range");
            queue.set_nonblocking(true);
            let q = nftables::detect_queue_impl().expect("probe");
            nftables::apply(&rs, q).expect("apply");
            ready_tx.send(()).expect("signal");
            let mut seen = Vec::new();
            let mut last = Instant::now();
            loop {
                match queue.recv() {
                    Ok(mut msg) => {
                        seen.push(parse_queued(msg.get_payload()));
                        msg.set_verdict(nfq::Verdict::Accept);
                        queue.verdict(msg).expect("verdict");
                        last = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if done.load(Ordering::SeqCst) && last.elapsed() > Duration::from_millis(300) {
                            break;
                        }
                        if last.elapsed() > Duration::from_secs(20) {
                            panic!("client never finished");
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("queue recv: {e}"),
                }
            }
            seen
        });
        let (cli, done) = (&cli, &done);
        let client = s.spawn(move || {
            cli.enter();
            ready_rx.recv().expect("director ready");
            let connect = |port, secs| {
                let to = SocketAddr::V4(SocketAddrV4::new(VIP, port));
                TcpStream::connect_timeout(&to, Duration::from_secs_f64(secs)).map(drop)
            };
            // Queued and accepted with no conntrack entry made for it: the nat_pre guard drops
            // it (the client would retry it after 1 s; the timeout ends the attempt first).
            let e = connect(PORT, 0.5).expect_err("the guard drops it");
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
            // Another port: never queued, refused straight away.
            let e = connect(PORT + 1, 3.0).expect_err("nothing listens on the VIP");
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
            // Not a first packet: never queued.
            send_raw_tcp(40001, PORT, ACK);
            send_raw_tcp(40002, PORT, SYN | ACK);
            send_raw_tcp(40003, PORT, SYN | RST);
            send_raw_tcp(40004, PORT, SYN | FIN);
            // An ECN-setup SYN is a first packet: the mask ignores ECE/CWR.
            send_raw_tcp(40005, PORT, SYN | ECE | CWR);
            done.store(true, Ordering::SeqCst);
        });
        client.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        director.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    });

    let queued: Vec<Queued> = queued.into_iter().map(|p| p.expect("a queued TCP/IPv4 packet")).collect();
    assert_eq!(queued.len(), 2, "{queued:?}");
    assert_eq!((queued[0].dst, queued[0].dport, queued[0].flags & (FIN | SYN | RST | ACK)), (VIP, PORT, SYN));
    assert_eq!(queued[1], Queued { dst: VIP, sport: 40005, dport: PORT, flags: SYN | ECE | CWR });
    // The divert counter saw exactly these two.
    let listed = dir.ok(&["nft", "list", "chain", "ip", "nfvs", "divert"]);
    assert!(listed.contains("counter packets 2 "), "{listed}");
    // The guard dropped the two SYNs accepted without an entry of ours: connect()'s (60 bytes
    // with its options) and the raw ECN-setup one (40).
    let listed = dir.ok(&["nft", "list", "chain", "ip", "nfvs", "nat_pre"]);
    assert!(listed.contains("counter packets 2 bytes 100 drop"), "{listed}");
}
