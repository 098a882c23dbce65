//! What nfvs reports, as typed values: the per-connection decision (the mission's log line)
//! and the other things an operator must hear about. [`Event::emit`] renders each as the text
//! line nfvs has always logged, byte for byte (scripts and tests parse them); other renderings
//! (JSON, metrics) are added here, in one place.

use std::fmt;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};

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
    /// A new connection refused: no real server can take it.
    Refused { client: SocketAddr, vip: SocketAddrV4, sched: &'static str },
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
            Event::Conn { .. } | Event::Edit { .. } => log::Level::Info,
            Event::Retransmit { .. } | Event::RetransmitUntracked { .. } => log::Level::Debug,
            _ => log::Level::Warn,
        }
    }

    /// Logs it (as text, at its level).
    pub fn emit(&self) {
        log::log!(self.level(), "{self}");
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
        assert_eq!(r.level(), log::Level::Warn);
        let e = Event::Edit { source: EditSource::Reload, what: "deleted real server 192.168.226.132:80 of -t 192.168.199.200:80" };
        assert_eq!(e.to_string(), "SIGHUP: deleted real server 192.168.226.132:80 of -t 192.168.199.200:80");
    }
}
