//! What nfvs reports, as typed values: the per-connection decision (the mission's log line)
//! and the other things an operator must hear about. [`Event::emit`] renders each as the text
//! line nfvs has always logged, byte for byte (scripts and tests parse them); other renderings
//! (JSON, metrics) are added here, in one place.
//!
//! Warnings that traffic can repeat once per packet (a flood, a full conntrack table) are
//! throttled: at most one line per kind every [`REPEAT_INTERVAL`], with the count of the ones
//! held back since, and [`flush_repeats`] (the ticker) reports those held back when no
//! further one comes (issue 11 #3). The per-connection decision lines are never held back.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// At most one line per kind of repeated warning this often.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Kinds of warning that can come once per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    NoEligible,
    CreateFailed,
    TableFull,
    Clash,
    DeleteFailed,
    VerdictFailed,
    Martian,
}

impl Repeat {
    const ALL: [Repeat; 7] = [
        Repeat::NoEligible,
        Repeat::CreateFailed,
        Repeat::TableFull,
        Repeat::Clash,
        Repeat::DeleteFailed,
        Repeat::VerdictFailed,
        Repeat::Martian,
    ];

    fn what(self) -> &'static str {
        match self {
            Repeat::NoEligible => "connection(s) refused for want of an eligible real server",
            Repeat::CreateFailed => "conntrack create(s) failed",
            Repeat::TableFull => "conntrack create(s) failed on a full conntrack table",
            Repeat::Clash => "SYN(s) found an entry nfvs did not know",
            Repeat::DeleteFailed => "delete(s) of finished entries failed",
            Repeat::VerdictFailed => "verdict(s) refused by the kernel",
            Repeat::Martian => "SYN(s) from martian sources dropped",
        }
    }

    fn slot(self) -> &'static Throttle {
        static SLOTS: [Throttle; 7] = [const { Throttle::new() }; 7];
        &SLOTS[self as usize]
    }

    /// Whether a line of this kind may go out now; if so, how many were held back since the
    /// last one.
    pub fn admit(self) -> Option<u64> {
        self.slot().admit(clock_ms(), REPEAT_INTERVAL.as_millis() as u64)
    }
}

/// Milliseconds since the first use (a process-wide clock for the throttles).
fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One kind's state: when its last line went out (+1, 0 = never) and how many were held back.
struct Throttle {
    last: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    const fn new() -> Throttle {
        Throttle { last: AtomicU64::new(0), held: AtomicU64::new(0) }
    }

    fn admit(&self, now: u64, interval: u64) -> Option<u64> {
        let taken = self.take_turn(now, interval);
        if taken.is_none() {
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// If the interval has passed since the last line, this is the next one: the count held
    /// back since.
    fn take_turn(&self, now: u64, interval: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now + 1 >= last + interval;
        let won = due && self.last.compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed).is_ok();
        won.then(|| self.held.swap(0, Ordering::Relaxed))
    }

    /// The count held back, if there is one and its interval has passed since the last line
    /// (which then counts as now).
    fn take_due(&self, now: u64, interval: u64) -> Option<u64> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.take_turn(now, interval).filter(|&n| n > 0)
    }
}

/// Reports the repeated warnings held back and not followed by a line of their own since:
/// those whose interval has passed, or all of them (`now`: at stop).
pub fn flush_repeats(now: bool) {
    let interval = if now { 0 } else { REPEAT_INTERVAL.as_millis() as u64 };
    for k in Repeat::ALL {
        if let Some(n) = k.slot().take_due(clock_ms(), interval) {
            log::warn!("{n} more {} in the last {}s", k.what(), REPEAT_INTERVAL.as_secs());
        }
    }
}

/// Who changed the service table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditSource {
    /// `nfvs adm` / `ipvsadm` over the control socket.
    Adm,
    /// SIGHUP: the rules file re-read.
    Reload,
}

/// One reported happening.
#[derive(Debug)]
pub enum Event<'a> {
    /// A new connection scheduled to a real server.
    Conn { client: SocketAddr, vip: SocketAddrV4, sched: &'static str, rs: SocketAddr, persistent: bool },
    /// A new connection refused: no real server can take it (the decision line).
    Refused { client: SocketAddr, vip: SocketAddrV4, sched: &'static str },
    /// The warning that goes with refusals (throttled).
    NoEligible { vip: SocketAddrV4, sched: &'static str },
    /// A SYN from a source no client has, dropped.
    Martian { client: SocketAddr, vip: SocketAddrV4 },
    /// A create failed because the conntrack table is full.
    TableFull { client: SocketAddr, vip: SocketAddrV4, count: u32, max: u32 },
    /// A retransmitted SYN of a connection nfvs balanced: not scheduled again.
    Retransmit { client: SocketAddr, vip: SocketAddrV4 },
    /// The same, found only after the create failed (an entry nfvs had not tracked).
    RetransmitUntracked { client: SocketAddr, vip: SocketAddrV4 },
    /// Creating a connection's conntrack entry failed; `fate` says what became of its SYN.
    CreateFailed { client: SocketAddr, vip: SocketAddrV4, rs: SocketAddr, err: io::Error, fate: &'static str },
    /// The create failed because an entry nfvs did not know held the tuple.
    CreateClashed { client: SocketAddr, vip: SocketAddrV4, rs: SocketAddr, fate: &'static str },
    /// Deleting a reused port's finished entry failed.
    DeleteFailed { client: SocketAddr, err: io::Error },
    /// The kernel refused a verdict.
    VerdictFailed { queue: u16, err: io::Error },
    /// The kernel dropped SYNs on a full queue.
    Overload { dropped: u64, secs: u64 },
    /// A table edit applied, and what it did.
    Edit { source: EditSource, what: &'a str },
}

impl Event<'_> {
    pub fn level(&self) -> log::Level {
        match self {
            Event::Conn { .. } | Event::Refused { .. } | Event::Edit { .. } => log::Level::Info,
            Event::Retransmit { .. } | Event::RetransmitUntracked { .. } => log::Level::Debug,
            _ => log::Level::Warn,
        }
    }

    /// The kind of repeated warning it is, if it is one.
    pub fn repeat(&self) -> Option<Repeat> {
        Some(match self {
            Event::NoEligible { .. } => Repeat::NoEligible,
            Event::Martian { .. } => Repeat::Martian,
            Event::TableFull { .. } => Repeat::TableFull,
            Event::CreateFailed { .. } => Repeat::CreateFailed,
            Event::CreateClashed { .. } => Repeat::Clash,
            Event::DeleteFailed { .. } => Repeat::DeleteFailed,
            Event::VerdictFailed { .. } => Repeat::VerdictFailed,
            _ => return None,
        })
    }

    /// Logs it (as text, at its level); a repeated warning only if its kind is due (see the
    /// module doc), then with the count held back since its last line.
    pub fn emit(&self) {
        match self.repeat() {
            None => log::log!(self.level(), "{self}"),
            Some(k) => {
                if let Some(held) = k.admit() {
                    self.emit_admitted(held);
                }
            }
        }
    }

    /// Logs a repeated warning already admitted ([`Repeat::admit`]), for callers that must
    /// do work to build it (read /proc) only when it goes out.
    pub fn emit_admitted(&self, held: u64) {
        match held {
            0 => log::log!(self.level(), "{self}"),
            n => log::log!(self.level(), "{self} [{n} more like it in the last {}s]", REPEAT_INTERVAL.as_secs()),
        }
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Conn { client, vip, sched, rs, persistent } => {
                let how = if *persistent { " (persistent)" } else { "" };
                write!(f, "conn client={client} vip={vip} sched={sched} rs={rs}{how}")
            }
            Event::Refused { client, vip, sched } => {
                write!(f, "conn client={client} vip={vip} sched={sched} rs=none: no eligible real server, refused")
            }
            Event::NoEligible { vip, sched } => write!(
                f,
                "service {vip} sched={sched}: no eligible real server (none, all of weight 0, or all over their \
                 thresholds): new connections are refused with ICMP port unreachable"
            ),
            Event::Martian { client, vip } => write!(
                f,
                "dropped a SYN to {vip} from {client}: a source no client can have (loopback, 0.0.0.0/8, \
                 broadcast, multicast or the VIP itself; spoofed)"
            ),
            Event::TableFull { client, vip, count, max } => write!(
                f,
                "conn client={client} vip={vip}: the conntrack table is full ({count} of {max} entries): new \
                 connections fail until entries expire; raise net.netfilter.nf_conntrack_max (and \
                 /sys/module/nf_conntrack/parameters/hashsize, about max/4) or shorten the timeouts \
                 (net.netfilter.nf_conntrack_tcp_timeout_syn_sent, ..._time_wait)"
            ),
            Event::Retransmit { client, vip } => write!(f, "conn client={client} vip={vip}: retransmitted SYN"),
            Event::RetransmitUntracked { client, vip } => {
                write!(f, "conn client={client} vip={vip}: retransmitted SYN of a balanced connection nfvs did not track")
            }
            Event::CreateFailed { client, vip, rs, err, fate } => {
                write!(f, "conn client={client} vip={vip} rs={rs}: creating the conntrack entry failed: {err}; {fate}")
            }
            Event::CreateClashed { client, vip, rs, fate } => write!(
                f,
                "conn client={client} vip={vip} rs={rs}: conntrack already held an entry nfvs did not know for \
                 this tuple (a reused source port of an untracked connection); {fate}"
            ),
            Event::DeleteFailed { client, err } => {
                write!(f, "conn client={client}: deleting its finished conntrack entry failed: {err}")
            }
            Event::VerdictFailed { queue, err } => write!(f, "NFQUEUE {queue}: the kernel refused a verdict: {err}"),
            Event::Overload { dropped, secs } => write!(
                f,
                "overload: the kernel dropped {dropped} SYN(s) in the last {secs}s because the queue was full \
                 (clients retry after ~1s; --overload fallback has the kernel balance them instead; \
                 --queues spreads the load over more workers)"
            ),
            Event::Edit { source: EditSource::Adm, what } => write!(f, "adm: {what}"),
            Event::Edit { source: EditSource::Reload, what } => write!(f, "SIGHUP: {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of one kind: the first line goes out, the rest of the interval is counted and
    /// reported with the next line or by the flush; another kind is not affected.
    #[test]
    fn repeated_warnings_go_out_once_per_interval_with_a_count() {
        let t = Throttle::new();
        assert_eq!(t.admit(0, 2000), Some(0), "the first one goes out");
        for ms in 1..1000 {
            assert_eq!(t.admit(ms, 2000), None);
        }
        assert_eq!(t.take_due(1500, 2000), None, "not due yet");
        assert_eq!(t.admit(2000, 2000), Some(999), "the next due line carries the count");
        assert_eq!(t.admit(2001, 2000), None);
        assert_eq!(t.take_due(4001, 2000), Some(1), "the flush reports what was held back");
        assert_eq!(t.take_due(9000, 2000), None, "nothing held back: nothing to say");
        assert_eq!(t.admit(9001, 2000), Some(0));
    }

    /// The decision line is the mission's interface: scripts/demo.sh, the lab tests and users'
    /// log parsers read it. Its text must not move.
    #[test]
    fn decision_lines_render_as_they_always_have() {
        let client: SocketAddr = "192.168.199.1:40312".parse().unwrap();
        let vip: SocketAddrV4 = "192.168.199.200:80".parse().unwrap();
        let rs: SocketAddr = "192.168.226.131:80".parse().unwrap();
        let conn = Event::Conn { client, vip, sched: "wrr", rs, persistent: false };
        assert_eq!(conn.to_string(), "conn client=192.168.199.1:40312 vip=192.168.199.200:80 sched=wrr rs=192.168.226.131:80");
        assert_eq!(conn.level(), log::Level::Info);
        let p = Event::Conn { client, vip, sched: "rr", rs, persistent: true };
        assert!(p.to_string().ends_with("rs=192.168.226.131:80 (persistent)"));
        let r = Event::Refused { client, vip, sched: "wlc" };
        assert_eq!(
            r.to_string(),
            "conn client=192.168.199.1:40312 vip=192.168.199.200:80 sched=wlc rs=none: no eligible real server, refused"
        );
        assert_eq!(r.level(), log::Level::Info, "a decision line, never held back");
        assert_eq!(r.repeat(), None);
        let e = Event::Edit { source: EditSource::Reload, what: "deleted real server 192.168.226.132:80 of -t 192.168.199.200:80" };
        assert_eq!(e.to_string(), "SIGHUP: deleted real server 192.168.226.132:80 of -t 192.168.199.200:80");
    }
}
