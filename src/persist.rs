//! Persistence templates (`-p timeout`, `-M netmask`; lvs-semantics.md §6): pure data and
//! logic, time passed in.
//!
//! IPVS remembers, per service and client network, the destination chosen for the first
//! connection in a "template" (`ip_vs_sched_persist` in `ip_vs_core.c`). A new connection
//! whose template is valid goes to the template's destination with **no scheduler call** (so
//! rr/wrr do not advance, and OVERLOAD is not checked); otherwise the scheduler picks and a new
//! template is created.
//!
//! - Key ([`TemplateKey::new`]): protocol, client address AND netmask, VIP, and the service
//!   port, except 0 for port 21 (FTP control and data share a template) and for port-zero
//!   services.
//! - Valid: its destination is still in the service and, only with the
//!   `expire_quiescent_template` sysctl, has weight > 0 (`ip_vs_check_template`). An invalid
//!   template is unhashed, so it is never found again, but it lives on (and stays counted in
//!   its destination's PersistConn) until its timer removes it.
//! - Lifetime: every connection that creates or uses a template restarts its timer with the
//!   template's timeout (initially the persistence timeout). When the timer fires while
//!   connections are still attached, it is re-armed for 60 s and the template's timeout is
//!   lowered to 60 s for good (`ip_vs_conn_expire`, "expire_later"); it goes at the first
//!   firing with nothing attached. Packets of existing connections never refresh it.
//!
//! Timers are evaluated lazily and exactly: each template catches up with the firings due up to
//! `now` before it is used or released, and [`Persistence::expire`] sweeps all of them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::service::{Dest, DestId, ServiceKey};
use crate::model::Protocol;

/// The FTP control port: a persistent service on it uses vport 0 in its templates.
const FTP_PORT: u16 = 21;
/// The kernel's re-arm period for a template that still controls connections (`60*HZ`).
const DELAYED_EXPIRY: Duration = Duration::from_secs(60);
/// ipvsadm's timeout when `-p` is given without a value (ipvsadm 1.31; its man page says 300).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(360);

/// What a template is looked up by (`ip_vs_conn_fill_param_persist`): the client port is
/// always 0 and so left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TemplateKey {
    pub proto: Protocol,
    /// Client address AND the service's netmask.
    pub client: Ipv4Addr,
    pub vaddr: Ipv4Addr,
    pub vport: u16,
}

impl TemplateKey {
    /// The key of a new connection from `caddr` to `daddr:dport` of service `svc`, whose
    /// persistence netmask is `netmask`.
    pub fn new(svc: &ServiceKey, netmask: Ipv4Addr, caddr: Ipv4Addr, daddr: Ipv4Addr, dport: u16) -> Self {
        // Non-FTP template <proto, caddr, 0, vaddr, vport>; FTP and port-zero services
        // <proto, caddr, 0, vaddr, 0>.
        let vport = if dport == svc.port && svc.port != FTP_PORT { dport } else { 0 };
        TemplateKey { proto: svc.proto, client: caddr & netmask, vaddr: daddr, vport }
    }
}

/// Identifies one template for its whole life (also after it was invalidated); connections
/// remember the template that controls them by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TemplateId(pub u64);

/// One template (`struct ip_vs_conn` with IP_VS_CONN_F_TEMPLATE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: TemplateId,
    pub key: TemplateKey,
    pub dest: DestId,
    /// What each use re-arms the timer with: the persistence timeout, 60 s after a delayed
    /// expiry.
    pub timeout: Duration,
    /// When the timer fires next.
    pub expires: Duration,
    /// Connections attached to it (`n_control`).
    pub controlled: u32,
}

impl Template {
    /// Catches up with the timer firings due at or before `now`. Returns false if the template
    /// expired (nothing attached at a firing).
    fn run_timer(&mut self, now: Duration) -> bool {
        if self.expires > now {
            return true;
        }
        if self.controlled == 0 {
            return false;
        }
        // Each firing with connections attached re-arms 60 s later and lowers the timeout;
        // nothing changes the attachment in between, so jump to the first firing after now.
        let late = now - self.expires;
        let periods = late.as_nanos() / DELAYED_EXPIRY.as_nanos() + 1;
        let step = u32::try_from(periods).unwrap_or(u32::MAX);
        self.expires = self.expires.saturating_add(DELAYED_EXPIRY.saturating_mul(step));
        self.timeout = DELAYED_EXPIRY;
        true
    }

    /// A connection attaches to the template: `ip_vs_control_add` + `ip_vs_conn_put`, which
    /// restarts the timer with the template's timeout.
    fn attach(&mut self, now: Duration) {
        self.controlled = self.controlled.saturating_add(1);
        self.expires = now.saturating_add(self.timeout);
    }
}

/// The outcome of [`Persistence::schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The chosen destination, an index into the list passed in.
    pub index: usize,
    /// The template the new connection is attached to.
    pub template: TemplateId,
    /// True if the template was created for this connection (its destination's PersistConn
    /// goes up by one), false on a template hit.
    pub created: bool,
}

/// The templates of one service.
#[derive(Debug, Default)]
pub struct Persistence {
    /// Every template, findable or invalidated.
    all: HashMap<TemplateId, Template>,
    /// The findable ones (the kernel's connection hash) by key.
    live: HashMap<TemplateKey, TemplateId>,
    next_id: u64,
    /// The `expire_quiescent_template` sysctl (default 0).
    pub expire_quiescent: bool,
}

impl Persistence {
    pub fn new(expire_quiescent: bool) -> Self {
        Persistence { expire_quiescent, ..Persistence::default() }
    }

    /// Removes template `id` if its timer ran out by `now`; returns whether it is still there.
    fn catch_up(&mut self, id: TemplateId, now: Duration) -> bool {
        let Some(t) = self.all.get_mut(&id) else { return false };
        if t.run_timer(now) {
            return true;
        }
        let key = t.key;
        self.all.remove(&id);
        if self.live.get(&key) == Some(&id) {
            self.live.remove(&key);
        }
        false
    }

    /// Looks up the template for `key`. On a valid one, attaches the new connection to it
    /// (restarting its timer) and returns it with its destination's index in `dests`. An
    /// invalid one is unhashed (kept only until its timer removes it) and `None` is returned,
    /// as for no template: the caller schedules and calls [`Persistence::insert`].
    pub fn lookup(&mut self, key: &TemplateKey, dests: &[Dest], now: Duration) -> Option<(usize, TemplateId)> {
        let id = *self.live.get(key)?;
        if !self.catch_up(id, now) {
            return None;
        }
        let t = self.all.get_mut(&id)?;
        let valid = dests
            .iter()
            .position(|d| d.id == t.dest)
            .filter(|&i| !(self.expire_quiescent && dests[i].weight == 0));
        match valid {
            Some(i) => {
                t.attach(now);
                Some((i, id))
            }
            None => {
                // ip_vs_check_template: unhash; "don't restart its timer".
                self.live.remove(key);
                None
            }
        }
    }

    /// Creates the template for a connection just scheduled to `dest` (after a lookup miss),
    /// with the persistence `timeout`, and attaches the connection to it.
    pub fn insert(&mut self, key: TemplateKey, dest: DestId, timeout: Duration, now: Duration) -> TemplateId {
        let id = TemplateId(self.next_id);
        self.next_id += 1;
        let mut t = Template { id, key, dest, timeout, expires: now, controlled: 0 };
        t.attach(now);
        self.all.insert(id, t);
        // A findable template for the key can only exist if the caller skipped the lookup (the
        // kernel would have used it); the new one takes its place, the old one runs out.
        self.live.insert(key, id);
        id
    }

    /// The whole persistent scheduling step: a valid template's destination with no scheduler
    /// call, or `schedule()`'s choice with a new template. `None` when the scheduler finds
    /// nothing (no template is created).
    pub fn schedule(
        &mut self,
        key: TemplateKey,
        timeout: Duration,
        dests: &[Dest],
        now: Duration,
        schedule: impl FnOnce() -> Option<usize>,
    ) -> Option<Pick> {
        if let Some((index, template)) = self.lookup(&key, dests, now) {
            return Some(Pick { index, template, created: false });
        }
        let index = schedule()?;
        let dest = dests.get(index)?.id;
        let template = self.insert(key, dest, timeout, now);
        Some(Pick { index, template, created: true })
    }

    /// A connection an earlier run of the daemon attached to the template for `key` on `dest`
    /// (found in the conntrack dump on start). The old template's timer died with the old
    /// process: the connection attaches to the findable template for `key` if it names the same
    /// destination, else to a new one, and the timer restarts from `now` with `timeout`, as if
    /// the connection had just been scheduled. Returns the template and whether it is new
    /// (its destination's PersistConn goes up by one).
    pub fn restore(&mut self, key: TemplateKey, dest: DestId, timeout: Duration, now: Duration) -> (TemplateId, bool) {
        if let Some(&id) = self.live.get(&key) {
            if self.catch_up(id, now) {
                if let Some(t) = self.all.get_mut(&id).filter(|t| t.dest == dest) {
                    t.attach(now);
                    return (id, false);
                }
            }
        }
        (self.insert(key, dest, timeout, now), true)
    }

    /// A connection attached to template `id` went away (`ip_vs_control_del`). The template's
    /// timer is not touched.
    pub fn release(&mut self, id: TemplateId, now: Duration) {
        // Firings due before the release saw the connection still attached.
        if self.catch_up(id, now) {
            if let Some(t) = self.all.get_mut(&id) {
                t.controlled = t.controlled.saturating_sub(1);
            }
        }
    }

    /// Removes every template whose timer fired with no connection attached, up to `now`, and
    /// returns them in creation order (their destinations' PersistConn goes down by one each).
    pub fn expire(&mut self, now: Duration) -> Vec<Template> {
        let mut gone = Vec::new();
        self.all.retain(|_, t| {
            let keep = t.run_timer(now);
            if !keep {
                gone.push(t.clone());
            }
            keep
        });
        for t in &gone {
            if self.live.get(&t.key) == Some(&t.id) {
                self.live.remove(&t.key);
            }
        }
        gone.sort_by_key(|t| t.id);
        gone
    }

    /// The findable template for `key`, if any (timers not run).
    pub fn get(&self, key: &TemplateKey) -> Option<&Template> {
        self.all.get(self.live.get(key)?)
    }

    /// All templates, findable and invalidated (`ipvsadm -Lnc` lists both), in creation order.
    pub fn templates(&self) -> Vec<&Template> {
        let mut all: Vec<&Template> = self.all.values().collect();
        all.sort_by_key(|t| t.id);
        all
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn svc(port: u16) -> ServiceKey {
        ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::new(192, 168, 199, 200), port }
    }

    fn key(port: u16, mask: &str, client: &str) -> TemplateKey {
        let s = svc(port);
        TemplateKey::new(&s, mask.parse().unwrap(), client.parse().unwrap(), s.addr, port)
    }

    fn dests() -> Vec<Dest> {
        vec![
            Dest::new(DestId(1), Ipv4Addr::new(192, 168, 226, 131), 80, 1),
            Dest::new(DestId(0), Ipv4Addr::new(192, 168, 226, 130), 80, 1),
        ]
    }

    #[test]
    fn key_masks_client_and_zeroes_ftp_and_port_zero() {
        let k = key(80, "255.255.255.0", "10.0.0.99");
        assert_eq!(k.client, Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(k.vport, 80);
        assert_eq!(key(21, "255.255.255.255", "10.0.0.1").vport, 0);
        let zero = svc(0);
        let k = TemplateKey::new(&zero, Ipv4Addr::BROADCAST, Ipv4Addr::new(10, 0, 0, 1), zero.addr, 443);
        assert_eq!(k.vport, 0);
        assert_eq!(k.client, Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn timer_restarts_on_use_and_drops_to_60s_when_delayed() {
        let ds = dests();
        let mut p = Persistence::new(false);
        let k = key(80, "255.255.255.255", "10.0.0.1");
        let a = p.schedule(k, secs(300), &ds, secs(0), || Some(0)).unwrap();
        assert!(a.created);
        // Used again at 100 s: timer restarted to 400 s.
        let b = p.schedule(k, secs(300), &ds, secs(100), || panic!("no scheduler call")).unwrap();
        assert_eq!((b.index, b.template, b.created), (0, a.template, false));
        assert_eq!(p.get(&k).unwrap().expires, secs(400));
        // Both connections still attached at 400 s: re-armed for 460 s, timeout 60 s.
        assert!(p.expire(secs(400)).is_empty());
        let t = p.get(&k).unwrap();
        assert_eq!((t.expires, t.timeout), (secs(460), secs(60)));
        // A new connection now only extends it by 60 s.
        p.schedule(k, secs(300), &ds, secs(450), || None).unwrap();
        assert_eq!(p.get(&k).unwrap().expires, secs(510));
        // All three connections end; the next firing removes the template.
        for _ in 0..3 {
            p.release(a.template, secs(500));
        }
        assert!(p.expire(secs(509)).is_empty());
        let gone = p.expire(secs(510));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].dest, DestId(1));
        assert!(p.is_empty());
    }

    #[test]
    fn release_after_a_missed_firing_keeps_the_delayed_expiry() {
        let ds = dests();
        let mut p = Persistence::new(false);
        let k = key(80, "255.255.255.255", "10.0.0.1");
        let a = p.schedule(k, secs(300), &ds, secs(0), || Some(1)).unwrap();
        // The connection ends at 330 s: the firing at 300 s saw it attached (re-armed to 360 s).
        p.release(a.template, secs(330));
        assert!(p.expire(secs(359)).is_empty());
        assert_eq!(p.expire(secs(360)).len(), 1);
    }

    #[test]
    fn deleted_destination_invalidates_and_template_lingers() {
        let mut ds = dests();
        let mut p = Persistence::new(false);
        let k = key(80, "255.255.255.255", "10.0.0.1");
        let a = p.schedule(k, secs(300), &ds, secs(0), || Some(0)).unwrap();
        ds.remove(0);
        let b = p.schedule(k, secs(300), &ds, secs(10), || Some(0)).unwrap();
        assert!(b.created);
        assert_ne!(a.template, b.template);
        assert_eq!(p.len(), 2, "the invalidated template lives on");
        p.release(a.template, secs(20));
        let gone = p.expire(secs(300));
        assert_eq!(gone.iter().map(|t| t.id).collect::<Vec<_>>(), vec![a.template]);
    }

    #[test]
    fn quiesced_destination_valid_unless_sysctl() {
        let mut ds = dests();
        ds[0].weight = 0;
        for (sysctl, hit) in [(false, true), (true, false)] {
            let mut p = Persistence::new(sysctl);
            let k = key(80, "255.255.255.255", "10.0.0.1");
            p.insert(k, ds[0].id, secs(300), secs(0));
            assert_eq!(p.lookup(&k, &ds, secs(1)).is_some(), hit);
        }
    }

    #[test]
    fn overloaded_destination_still_valid() {
        let mut ds = dests();
        ds[0].overloaded = true;
        let mut p = Persistence::new(false);
        let k = key(80, "255.255.255.255", "10.0.0.1");
        p.insert(k, ds[0].id, secs(300), secs(0));
        assert_eq!(p.lookup(&k, &ds, secs(1)).map(|(i, _)| i), Some(0));
    }

    #[test]
    fn no_template_when_scheduler_finds_nothing() {
        let ds = dests();
        let mut p = Persistence::new(false);
        let k = key(80, "255.255.255.255", "10.0.0.1");
        assert_eq!(p.schedule(k, secs(300), &ds, secs(0), || None), None);
        assert!(p.is_empty());
    }
}
