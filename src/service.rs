//! Virtual services and their real servers (destinations), as IPVS models them: a service
//! holds its scheduler and an ordered destination list, newest first (lvs-semantics.md §1.2).
//!
//! This module is pure data and logic: it never touches the kernel. The daemon owns one
//! [`Table`] and asks it for decisions; connection counters are updated from outside.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use std::time::Duration;

use crate::model::Tuple;
use crate::model::Protocol;
use crate::persist::{Persistence, TemplateId, TemplateKey};
use crate::sched::{self, Change, Request, SchedOptions, Scheduler};

/// What identifies a virtual service: protocol, VIP and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub proto: Protocol,
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl ServiceKey {
    pub fn vip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, self.port)
    }

    /// The service a flow is addressed to (protocol, destination address and port). The one
    /// place where the family-neutral flow meets the IPv4-only service layer: an IPv6 flow
    /// has no service yet (docs/architecture.md, "IPv6").
    pub fn of_flow(t: &Tuple) -> Option<ServiceKey> {
        match t.dst {
            IpAddr::V4(addr) => Some(ServiceKey { proto: t.proto, addr, port: t.dport }),
            IpAddr::V6(_) => None,
        }
    }
}

impl Request {
    /// The scheduler's view of a flow to an IPv4 service (see [`ServiceKey::of_flow`]).
    pub fn of_flow(t: &Tuple, now: Duration) -> Option<Request> {
        match (t.src, t.dst) {
            (IpAddr::V4(caddr), IpAddr::V4(daddr)) => Some(Request { caddr, cport: t.sport, daddr, dport: t.dport, now }),
            _ => None,
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}", self.proto.flag(), self.addr, self.port)
    }
}

/// A stable identity for a destination, unique within a [`Table`] for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestId(pub u64);

/// A real server of a service, with the counters schedulers read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    pub id: DestId,
    pub addr: Ipv4Addr,
    pub port: u16,
    /// 0..=65535; 0 means quiesced: no new connections, existing ones continue.
    pub weight: u32,
    /// The most recent non-zero weight (used by mh only).
    pub last_weight: u32,
    /// Upper/lower connection thresholds (`-x`/`-y`); 0 = off.
    pub u_threshold: u32,
    pub l_threshold: u32,
    pub active: u32,
    pub inactive: u32,
    pub persist: u32,
    /// IPVS's IP_VS_DEST_F_OVERLOAD, driven by the thresholds.
    pub overloaded: bool,
}

impl Dest {
    pub fn new(id: DestId, addr: Ipv4Addr, port: u16, weight: u32) -> Dest {
        Dest {
            id,
            addr,
            port,
            weight,
            last_weight: weight,
            u_threshold: 0,
            l_threshold: 0,
            active: 0,
            inactive: 0,
            persist: 0,
            overloaded: false,
        }
    }

    pub fn rip(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.addr, self.port)
    }
}

/// Per-destination settings given by `-a`/`-e`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestSpec {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub u_threshold: u32,
    pub l_threshold: u32,
}

/// Per-service settings given by `-A`/`-E`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub key: ServiceKey,
    pub sched_name: String,
    pub sched_opts: SchedOptions,
    /// Persistence timeout in seconds (`-p`), if any.
    pub persistent: Option<u32>,
    /// Persistence netmask (`-M`).
    pub netmask: Ipv4Addr,
}

/// A virtual service: settings, scheduler, destinations in IPVS list order, and the
/// persistence templates of a persistent service.
#[derive(Debug)]
pub struct Service {
    pub spec: ServiceSpec,
    pub dests: Vec<Dest>,
    sched: Box<dyn Scheduler>,
    pub persist: Persistence,
}

/// A scheduling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index into the service's `dests`.
    pub index: usize,
    /// The persistence template the connection is attached to (persistent services).
    pub template: Option<TemplateId>,
    /// The destination came from an existing template, without asking the scheduler.
    pub persistent_hit: bool,
}

impl Service {
    pub fn key(&self) -> ServiceKey {
        self.spec.key
    }
    pub fn scheduler_name(&self) -> &'static str {
        self.sched.name()
    }
    pub fn dest_index(&self, addr: impl Into<IpAddr>, port: u16) -> Option<usize> {
        let addr = addr.into();
        self.dests.iter().position(|d| addr == d.addr && d.port == port)
    }
    /// Picks a destination for a new connection: from a valid persistence template (no
    /// scheduler call, lvs-semantics.md §6), else from the scheduler.
    pub fn schedule(&mut self, req: &Request) -> Option<Pick> {
        let Some(timeout) = self.spec.persistent else {
            let index = self.sched.schedule(&self.dests, req).filter(|&i| i < self.dests.len())?;
            return Some(Pick { index, template: None, persistent_hit: false });
        };
        let key = TemplateKey::new(&self.spec.key, self.spec.netmask, req.caddr, req.daddr, req.dport);
        let (sched, dests) = (&mut self.sched, &self.dests);
        let p = self.persist.schedule(key, Duration::from_secs(u64::from(timeout)), dests, req.now, || {
            sched.schedule(dests, req)
        })?;
        if p.created {
            self.dests[p.index].persist += 1;
        }
        Some(Pick { index: p.index, template: Some(p.template), persistent_hit: !p.created })
    }

    /// The counters or OVERLOAD flag of `dests[i]` changed (for incremental schedulers).
    pub fn counts_changed(&mut self, i: usize) {
        self.sched.on_counts(&self.dests, i);
    }

    /// Rebuilds what the scheduler and the persistence templates remember from a connection an
    /// earlier run scheduled to `dests[index]` for `req` (found in the conntrack dump on
    /// start): lblc/lblcr point their cache for `req.daddr` at it ([`Scheduler::restore`]); a
    /// persistent service re-creates the client's template and attaches the connection to it.
    /// Returns that template.
    pub fn restore(&mut self, req: &Request, index: usize) -> Option<TemplateId> {
        let dest = self.dests.get(index)?.id;
        self.sched.restore(&self.dests, req, index);
        let timeout = self.spec.persistent?;
        let key = TemplateKey::new(&self.spec.key, self.spec.netmask, req.caddr, req.daddr, req.dport);
        let (id, created) = self.persist.restore(key, dest, Duration::from_secs(u64::from(timeout)), req.now);
        if created {
            self.dests[index].persist += 1;
        }
        Some(id)
    }

    /// A connection attached to a template went away.
    pub fn release_template(&mut self, id: TemplateId, now: Duration) {
        self.persist.release(id, now);
    }

    /// Removes expired templates, updating the destinations' PersistConn.
    pub fn expire_templates(&mut self, now: Duration) {
        for t in self.persist.expire(now) {
            if let Some(d) = self.dests.iter_mut().find(|d| d.id == t.dest) {
                d.persist = d.persist.saturating_sub(1);
            }
        }
    }
}

/// Why a table edit was refused. The texts are ipvsadm's (lvs-semantics.md §8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("Service already exists")]
    ServiceExists,
    #[error("No such service")]
    NoService,
    #[error("Destination already exists")]
    DestExists,
    #[error("No such destination")]
    NoDest,
    #[error("Scheduler not found: {0}")]
    Scheduler(#[from] sched::UnknownScheduler),
    /// IPVS would take it; nfvs's rules cannot express it (e.g. port 0, all ports).
    #[error("{0}")]
    Unsupported(String),
    /// The lower threshold is above the upper one (`-y` > `-x`, a missing `-x` being 0): the
    /// kernel answers ERANGE (ip_vs_add_dest, ip_vs_edit_dest), for which libipvs has no
    /// message of its own, so ipvsadm prints strerror's.
    #[error("Numerical result out of range")]
    ThresholdRange { lower: u32, upper: u32 },
}

/// The kernel's check of a destination's thresholds (before it looks for the destination).
fn check_thresholds(spec: &DestSpec) -> Result<(), EditError> {
    if spec.l_threshold > spec.u_threshold {
        return Err(EditError::ThresholdRange { lower: spec.l_threshold, upper: spec.u_threshold });
    }
    Ok(())
}

/// All virtual services, in creation order, and the director-wide scheduler settings
/// (overhead formula, random seed, lblc/lblcr expiry, incremental mode) every service's
/// scheduler is built with; a service's own `-b` flags come from its spec.
#[derive(Debug, Default)]
pub struct Table {
    services: Vec<Service>,
    /// Where each service is in `services`: every SYN, every conntrack event and every edit
    /// finds its service by key, at the same cost with ten thousand services as with one
    /// (issue 11 #7; a walk of the list made the rules file's load quadratic).
    index: HashMap<ServiceKey, usize>,
    next_dest: u64,
    defaults: SchedOptions,
}

impl Table {
    pub fn new() -> Table {
        Table::default()
    }

    /// An empty table whose schedulers use `defaults` (except the per-service flags).
    pub fn with_defaults(defaults: SchedOptions) -> Table {
        Table { defaults, ..Table::default() }
    }

    pub fn defaults(&self) -> &SchedOptions {
        &self.defaults
    }

    fn merged(&self, mut spec: ServiceSpec) -> ServiceSpec {
        spec.sched_opts = SchedOptions { flags: spec.sched_opts.flags, ..self.defaults };
        spec
    }

    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The services, to change in place; a service's key must stay as it is (the index
    /// follows `add_service` and `del_service` only).
    pub fn services_mut(&mut self) -> &mut [Service] {
        &mut self.services
    }

    pub fn find(&self, key: &ServiceKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    pub fn service_mut(&mut self, key: &ServiceKey) -> Option<&mut Service> {
        let i = self.find(key)?;
        self.services.get_mut(i)
    }

    /// `-A`: a new, empty service.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<(), EditError> {
        let spec = self.merged(spec);
        if self.find(&spec.key).is_some() {
            return Err(EditError::ServiceExists);
        }
        let sched = sched::new(&spec.sched_name, &spec.sched_opts, &[])?;
        self.index.insert(spec.key, self.services.len());
        self.services.push(Service { spec, dests: Vec::new(), sched, persist: Persistence::new(false) });
        Ok(())
    }

    /// `-E`: new settings for an existing service. A new scheduler name (or new scheduler
    /// options) attaches a fresh scheduler to the populated list, as IPVS does.
    pub fn edit_service(&mut self, spec: ServiceSpec) -> Result<(), EditError> {
        let spec = self.merged(spec);
        let svc = self.service_mut(&spec.key).ok_or(EditError::NoService)?;
        if svc.spec.sched_name != spec.sched_name || svc.spec.sched_opts != spec.sched_opts {
            svc.sched = sched::new(&spec.sched_name, &spec.sched_opts, &svc.dests)?;
        }
        svc.spec = spec;
        Ok(())
    }

    /// `-D`.
    pub fn del_service(&mut self, key: &ServiceKey) -> Result<Service, EditError> {
        let i = self.find(key).ok_or(EditError::NoService)?;
        let svc = self.services.remove(i);
        self.index.remove(key);
        // The services after it moved up by one.
        for (j, s) in self.services.iter().enumerate().skip(i) {
            self.index.insert(s.spec.key, j);
        }
        Ok(svc)
    }

    /// Expires persistence templates of every service.
    pub fn expire_templates(&mut self, now: Duration) {
        for s in &mut self.services {
            s.expire_templates(now);
        }
    }

    /// `-C`.
    pub fn clear(&mut self) {
        self.services.clear();
        self.index.clear();
    }

    /// `-a`: the new destination goes to the head of the list.
    pub fn add_dest(&mut self, key: &ServiceKey, spec: DestSpec) -> Result<DestId, EditError> {
        let id = DestId(self.next_dest);
        let svc = self.service_mut(key).ok_or(EditError::NoService)?;
        check_thresholds(&spec)?;
        if svc.dest_index(spec.addr, spec.port).is_some() {
            return Err(EditError::DestExists);
        }
        let mut d = Dest::new(id, spec.addr, spec.port, spec.weight);
        d.u_threshold = spec.u_threshold;
        d.l_threshold = spec.l_threshold;
        svc.dests.insert(0, d);
        svc.sched.on_change(&svc.dests, Change::Added(0));
        self.next_dest += 1;
        Ok(id)
    }

    /// `-e`: new weight and thresholds for an existing destination.
    pub fn edit_dest(&mut self, key: &ServiceKey, spec: DestSpec) -> Result<(), EditError> {
        let svc = self.service_mut(key).ok_or(EditError::NoService)?;
        check_thresholds(&spec)?;
        let i = svc.dest_index(spec.addr, spec.port).ok_or(EditError::NoDest)?;
        let d = &mut svc.dests[i];
        d.weight = spec.weight;
        if spec.weight > 0 {
            d.last_weight = spec.weight;
        }
        sched::threshold::on_edit(d, spec.u_threshold, spec.l_threshold);
        svc.sched.on_change(&svc.dests, Change::Edited(i));
        Ok(())
    }

    /// `-d`.
    pub fn del_dest(&mut self, key: &ServiceKey, addr: Ipv4Addr, port: u16) -> Result<Dest, EditError> {
        let svc = self.service_mut(key).ok_or(EditError::NoService)?;
        let i = svc.dest_index(addr, port).ok_or(EditError::NoDest)?;
        let d = svc.dests.remove(i);
        svc.sched.on_change(&svc.dests, Change::Removed { index: i, id: d.id });
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(port: u16) -> ServiceSpec {
        ServiceSpec {
            key: ServiceKey { proto: Protocol::Tcp, addr: Ipv4Addr::new(10, 0, 0, 1), port },
            sched_name: "rr".into(),
            sched_opts: SchedOptions::default(),
            persistent: None,
            netmask: Ipv4Addr::BROADCAST,
        }
    }

    /// The key index follows additions, deletions (the services after a deleted one move up)
    /// and a clear; the list keeps its creation order.
    #[test]
    fn services_are_found_by_key_after_edits() {
        let mut t = Table::new();
        for port in 1..=5 {
            t.add_service(spec(port)).unwrap();
        }
        assert!(matches!(t.add_service(spec(3)), Err(EditError::ServiceExists)));
        t.del_service(&spec(2).key).unwrap();
        assert!(matches!(t.del_service(&spec(2).key), Err(EditError::NoService)));
        let ports: Vec<u16> = t.services().iter().map(|s| s.key().port).collect();
        assert_eq!(ports, [1, 3, 4, 5]);
        for (i, port) in ports.iter().enumerate() {
            assert_eq!(t.find(&spec(*port).key), Some(i));
            assert_eq!(t.service_mut(&spec(*port).key).map(|s| s.key().port), Some(*port));
        }
        assert_eq!(t.find(&spec(2).key), None);
        t.add_service(spec(2)).unwrap();
        assert_eq!(t.find(&spec(2).key), Some(4));
        t.clear();
        assert_eq!(t.find(&spec(1).key), None);
        t.add_service(spec(1)).unwrap();
        assert_eq!(t.find(&spec(1).key), Some(0));
    }
}
