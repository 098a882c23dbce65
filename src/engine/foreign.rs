//! Finished conntrack entries of nfvs's services that nfvs did not make.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::model::{CtEntry, Protocol, Tuple};
use crate::service::ServiceKey;

/// Finished conntrack entries for our services that nfvs did not make, found at start-up (the
/// `--overload fallback` rule's while no daemon ran, another balancer's, another
/// `--ct-mark`'s): a SYN reusing one of their tuples deletes the entry first, as for a finished
/// connection of nfvs's own, instead of failing its create and waiting for the client's retry.
/// Forgotten once they have all expired ([`ForeignFinished::expire`]).
#[derive(Debug, Default)]
pub struct ForeignFinished {
    tuples: HashSet<Tuple>,
    /// Daemon time by which every one of them has expired.
    until: Duration,
}

impl ForeignFinished {
    /// Keeps, of conntrack's `entries` (all of them: one dump at start-up, whatever the
    /// number of services), the finished TCP ones to one of `services` that do not carry
    /// nfvs's `mark`; `now` is the daemon's clock.
    pub fn from_entries(entries: &[CtEntry], services: &[ServiceKey], mark: u32, now: Duration) -> ForeignFinished {
        let tcp: HashSet<(IpAddr, u16)> =
            services.iter().filter(|k| k.proto == Protocol::Tcp).map(|k| (k.addr.into(), k.port)).collect();
        let mut f = ForeignFinished::default();
        let mut longest = 0;
        for e in entries {
            let ours = e.orig.proto == Protocol::Tcp && tcp.contains(&(e.orig.dst, e.orig.dport));
            if ours && e.mark != mark && !e.is_live_balanced(mark) && f.tuples.insert(e.orig) {
                longest = longest.max(e.timeout.unwrap_or(0));
            }
        }
        f.until = now + Duration::from_secs(u64::from(longest) + 1);
        f
    }

    pub fn len(&self) -> usize {
        self.tuples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tuples.is_empty()
    }

    /// Daemon time by which all of them have expired.
    pub fn until(&self) -> Duration {
        self.until
    }

    /// Whether `orig` is one of them (once: the caller deletes it).
    pub fn take(&mut self, orig: &Tuple) -> bool {
        !self.tuples.is_empty() && self.tuples.remove(orig)
    }

    /// Forgets them all once they have expired.
    pub fn expire(&mut self, now: Duration) {
        if !self.tuples.is_empty() && now >= self.until {
            self.tuples = HashSet::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(sport: u16) -> Tuple {
        Tuple { src: [10, 0, 0, 1].into(), dst: [10, 0, 0, 9].into(), sport, dport: 80, proto: Protocol::Tcp }
    }

    #[test]
    fn foreign_finished_tuples_are_taken_once_and_forgotten_when_expired() {
        let mut f = ForeignFinished { tuples: [tuple(1), tuple(2)].into(), until: Duration::from_secs(121) };
        assert!(f.take(&tuple(1)));
        assert!(!f.take(&tuple(1)), "a second SYN for it is nfvs's own business");
        assert!(!f.take(&tuple(3)));
        f.expire(Duration::from_secs(120));
        assert!(f.take(&tuple(2)) && f.tuples.is_empty());
        f.tuples.insert(tuple(4));
        f.expire(Duration::from_secs(121));
        assert!(!f.take(&tuple(4)), "expired: forgotten");
    }
}
