//! Stage two of ipvsadm's command language: [`RawArgs::validate`] checks what stage one
//! ([`super::args`]) parsed, against ipvsadm's command/option legality table and each value's
//! range, and builds a typed [`Command`].
//!
//! Two stages, no side effects (ripgrep's lowargs/hiargs). Messages and exit codes are
//! ipvsadm's (lvs-semantics.md §8.4); where nfvs refuses something ipvsadm accepts (direct
//! routing, tunnelling, IPv6, fwmark services) the message says so and what to use instead.

use std::fmt;
use std::net::Ipv4Addr;

use crate::sched::{SchedFlags, SchedOptions};
use crate::service::{DestSpec, EditError, ServiceKey, ServiceSpec};
use crate::model::Protocol;

use super::addresses;
use super::args::{Cmd, Opt, RawArgs};
use super::etc_services::PortNames;

/// ipvsadm's default scheduler.
pub const DEFAULT_SCHED: &str = "wlc";
/// ipvsadm's default persistence timeout (`-p` without a value), seconds.
pub const DEFAULT_PERSISTENT: u32 = 360;
/// ipvsadm's MAX_TIMEOUT: 31 days.
pub const MAX_TIMEOUT: u32 = 86400 * 31;

/// A usage or validation error, with ipvsadm's exit status (2 for bad values and illegal
/// combinations, 255 for words that cannot be parsed at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    pub message: String,
    pub exit_code: i32,
    /// nfvs's own advice, printed after ipvsadm's message where nfvs can say more.
    pub hint: Option<String>,
}

impl UsageError {
    /// A bad value or combination: exit status 2.
    pub fn new(message: impl Into<String>) -> UsageError {
        UsageError { message: message.into(), exit_code: 2, hint: None }
    }
    /// Words that cannot be parsed at all: exit status 255.
    pub fn unparseable(message: impl Into<String>) -> UsageError {
        UsageError { message: message.into(), exit_code: 255, hint: None }
    }
    /// nfvs's advice, printed after ipvsadm's message.
    pub fn hint(mut self, hint: impl Into<String>) -> UsageError {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for UsageError {}

/// Forwarding method of a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    Masq,
    Route,
    Tunnel,
}

/// How a listing is formatted (`-L` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListFormat {
    pub numeric: bool,
    pub stats: bool,
    pub rate: bool,
    pub thresholds: bool,
    pub persistent_conn: bool,
    pub nosort: bool,
    pub exact: bool,
}

/// What to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListWhat {
    All,
    Service(ServiceKey),
    Connections,
    Timeouts,
    Daemon,
}

/// A validated ipvsadm command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    AddService(ServiceSpec),
    EditService(ServiceSpec),
    DelService(ServiceKey),
    Clear,
    AddDest(ServiceKey, DestSpec),
    EditDest(ServiceKey, DestSpec),
    DelDest(ServiceKey, Ipv4Addr, u16),
    List(ListWhat, ListFormat),
    Save { numeric: bool },
    Restore,
    Zero(Option<ServiceKey>),
    SetTimeouts { tcp: u32, tcpfin: u32, udp: u32 },
    StartDaemon,
    StopDaemon,
    Help,
    Version,
}

impl Command {
    /// Whether the command edits the table (-A -E -D -C -a -e -d).
    pub fn is_edit(&self) -> bool {
        matches!(
            self,
            Command::AddService(_)
                | Command::EditService(_)
                | Command::DelService(_)
                | Command::Clear
                | Command::AddDest(..)
                | Command::EditDest(..)
                | Command::DelDest(..)
        )
    }
}

fn try_help() -> UsageError {
    UsageError::unparseable("Try `ipvsadm -h' or 'ipvsadm --help' for more information.")
}

impl RawArgs {
    /// Stage two: check the combination and the values, build the [`Command`].
    pub fn validate(&self) -> Result<Command, UsageError> {
        if self.help {
            return Ok(Command::Help);
        }
        if self.version {
            return Ok(Command::Version);
        }
        let Some(cmd) = self.cmd else {
            if self.options() == 0 && self.extra.is_empty() {
                // No arguments at all = `-L` without `-n`.
                return Ok(Command::List(ListWhat::All, ListFormat::default()));
            }
            return Err(try_help());
        };
        self.check_legality(cmd)?;
        if cmd == Cmd::Timeout {
            if self.extra.len() != 3 {
                return Err(UsageError::new("--set option requires 3 timeout values"));
            }
            let t = |s: &String| parse_timeout(s, 0);
            return Ok(Command::SetTimeouts {
                tcp: t(&self.extra[0])?,
                tcpfin: t(&self.extra[1])?,
                udp: t(&self.extra[2])?,
            });
        }
        if let Some(x) = self.extra.first() {
            return Err(UsageError::new(format!("unexpected argument {}", super::shorten(x))));
        }
        if self.fwmark.is_some() {
            return Err(UsageError::new("fwmark services are not supported by nfvs")
                .hint("give the service as -t VIP:PORT"));
        }
        if self.has(Opt::Ops) {
            return Err(UsageError::new("One-Packet Scheduling is only for UDP virtual services"));
        }
        let key = match &self.service {
            Some((proto, text)) => Some(parse_service(*proto, text)?),
            None => None,
        };
        Ok(match cmd {
            Cmd::Add | Cmd::Edit => {
                let spec = self.service_spec(key.expect("legality: service required"))?;
                if cmd == Cmd::Add {
                    Command::AddService(spec)
                } else {
                    Command::EditService(spec)
                }
            }
            Cmd::Del => Command::DelService(key.expect("legality: service required")),
            Cmd::Flush => Command::Clear,
            Cmd::AddDest | Cmd::EditDest => {
                let key = key.expect("legality: service required");
                let spec = self.dest_spec(cmd, &key)?;
                if cmd == Cmd::AddDest {
                    Command::AddDest(key, spec)
                } else {
                    Command::EditDest(key, spec)
                }
            }
            Cmd::DelDest => {
                let key = key.expect("legality: service required");
                let (addr, port) = self.server_addr(&key)?;
                Command::DelDest(key, addr, port)
            }
            Cmd::List => self.list_command(key)?,
            Cmd::Save => Command::Save { numeric: self.has(Opt::Numeric) },
            Cmd::Restore => Command::Restore,
            Cmd::Zero => Command::Zero(key),
            Cmd::StartDaemon => Command::StartDaemon,
            Cmd::StopDaemon => Command::StopDaemon,
            Cmd::Timeout => unreachable!("handled above"),
        })
    }

    /// `-L` and its variants.
    fn list_command(&self, key: Option<ServiceKey>) -> Result<Command, UsageError> {
        let o = self.options();
        // ipvsadm 1.31: -c/--timeout/--daemon exclude the counter views, and
        // --timeout/--daemon also exclude --persistent-conn (-c allows it).
        let views = Opt::Stats.bit() | Opt::Rate.bit() | Opt::Thresholds.bit();
        let other = Opt::Connection.bit() | Opt::Timeout.bit() | Opt::Daemon.bit();
        let no_pc = Opt::Timeout.bit() | Opt::Daemon.bit();
        if (o & other != 0 && o & views != 0) || (o & no_pc != 0 && o & Opt::PersistentConn.bit() != 0) {
            return Err(UsageError::new("options conflicts in the list command"));
        }
        let what = if self.has(Opt::Connection) {
            ListWhat::Connections
        } else if let Some(k) = key {
            ListWhat::Service(k)
        } else if self.has(Opt::Timeout) {
            ListWhat::Timeouts
        } else if self.has(Opt::Daemon) {
            ListWhat::Daemon
        } else {
            ListWhat::All
        };
        Ok(Command::List(what, self.format()))
    }

    fn check_legality(&self, cmd: Cmd) -> Result<(), UsageError> {
        let row = cmd.legality();
        let mut exclusive: Option<Opt> = None;
        for opt in Opt::ALL {
            let set = self.has(opt);
            let rule = row[opt as usize];
            if !set {
                if rule == b'+' {
                    return Err(UsageError::new(format!(
                        "You need to supply the '{}' option for the '{}' command",
                        opt.name(),
                        cmd.name()
                    )));
                }
                continue;
            }
            if rule == b'x' {
                return Err(UsageError::new(format!(
                    "Illegal '{}' option with the '{}' command",
                    opt.name(),
                    cmd.name()
                )));
            }
            if rule == b'1' {
                if let Some(first) = exclusive {
                    return Err(UsageError::new(format!(
                        "The option '{}' conflicts with the '{}' option in the '{}' command",
                        opt.name(),
                        first.name(),
                        cmd.name()
                    )));
                }
                exclusive = Some(opt);
            }
        }
        Ok(())
    }

    fn service_spec(&self, key: ServiceKey) -> Result<ServiceSpec, UsageError> {
        let sched_name = self.value(Opt::Scheduler).unwrap_or(DEFAULT_SCHED).to_string();
        let persistent = match (self.has(Opt::Persistent), self.value(Opt::Persistent)) {
            (false, _) => None,
            (true, None) => Some(DEFAULT_PERSISTENT),
            (true, Some(v)) => Some(parse_timeout(v, 1)?),
        };
        if key.port == 0 && persistent.is_none() {
            return Err(UsageError::new("Zero port specified for non-persistent service"));
        }
        let netmask = match self.value(Opt::Netmask) {
            None => Ipv4Addr::BROADCAST,
            Some(m) => parse_netmask(m)?,
        };
        let flags = match self.value(Opt::SchedFlags) {
            None => SchedFlags::default(),
            Some(f) => parse_sched_flags(f, &sched_name)?,
        };
        Ok(ServiceSpec {
            key,
            sched_name,
            sched_opts: SchedOptions { flags, ..SchedOptions::default() },
            persistent,
            netmask,
        })
    }

    fn server_addr(&self, key: &ServiceKey) -> Result<(Ipv4Addr, u16), UsageError> {
        let text = self.value(Opt::Server).expect("legality: real-server required");
        let (addr, port) = parse_host_port(text, key.proto)
            .ok_or_else(|| UsageError::new("illegal real server address[:port] specified"))?;
        Ok((addr, port.unwrap_or(key.port)))
    }

    fn dest_spec(&self, cmd: Cmd, key: &ServiceKey) -> Result<DestSpec, UsageError> {
        let (addr, port) = self.server_addr(key)?;
        match self.fwd {
            Some(Fwd::Masq) => {}
            Some(Fwd::Route) => {
                return Err(UsageError::new("direct routing (-g) is not supported by nfvs")
                    .hint("nfvs does LVS NAT mode only: use -m"))
            }
            Some(Fwd::Tunnel) => {
                return Err(UsageError::new("tunnelling (-i) is not supported by nfvs")
                    .hint("nfvs does LVS NAT mode only: use -m"))
            }
            // ipvsadm's default method is direct routing. A new server without -m would be a
            // DR server, which nfvs cannot run: refuse it. `-e` without -m keeps NAT, the only
            // method nfvs has (documented in the README), so `-e ... -w 0` works as expected.
            None if cmd == Cmd::AddDest => {
                return Err(UsageError::new("no forwarding method given for the real server")
                    .hint("ipvsadm's default is direct routing, which nfvs does not do: add -m (NAT)"))
            }
            None => {}
        }
        let weight = match self.value(Opt::Weight) {
            None => 1,
            Some(w) => number(w, 0, 65535).ok_or_else(|| UsageError::new("illegal weight specified"))?,
        };
        let u_threshold = match self.value(Opt::UThreshold) {
            None => 0,
            Some(x) => number(x, 0, i32::MAX as u32).ok_or_else(|| UsageError::new("illegal u_threshold specified"))?,
        };
        let l_threshold = match self.value(Opt::LThreshold) {
            None => 0,
            Some(y) => number(y, 0, i32::MAX as u32).ok_or_else(|| UsageError::new("illegal l_threshold specified"))?,
        };
        let spec = DestSpec { addr, port, weight, u_threshold, l_threshold };
        if cmd == Cmd::AddDest {
            // The kernel's own check (ip_vs_new_dest), after everything ipvsadm checks itself.
            addresses::check_new_dest(&spec)?;
        }
        Ok(spec)
    }
}

/// ipvsadm's string_to_number: a whole decimal number within [min, max].
fn number(s: &str, min: u32, max: u32) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n >= u64::from(min) && *n <= u64::from(max)).map(|n| n as u32)
}

fn parse_timeout(s: &str, min: u32) -> Result<u32, UsageError> {
    number(s, min, MAX_TIMEOUT).ok_or_else(|| UsageError::new(format!("invalid timeout value `{}' specified", super::shorten(s))))
}

/// `-M`: a dotted mask or a prefix length.
fn parse_netmask(s: &str) -> Result<Ipv4Addr, UsageError> {
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(a);
    }
    match number(s, 0, 32) {
        Some(0) => Ok(Ipv4Addr::UNSPECIFIED),
        Some(n) => Ok(Ipv4Addr::from(u32::MAX << (32 - n))),
        None => Err(UsageError::new("illegal virtual server persistent mask specified")),
    }
}

fn parse_sched_flags(s: &str, sched: &str) -> Result<SchedFlags, UsageError> {
    let mut f = SchedFlags::default();
    for word in s.split(',') {
        match word {
            "flag-1" => f.flag1 = true,
            "flag-2" => f.flag2 = true,
            "flag-3" => f.flag3 = true,
            "sh-fallback" if sched == "sh" => f.flag1 = true,
            "sh-port" if sched == "sh" => f.flag2 = true,
            "mh-fallback" if sched == "mh" => f.flag1 = true,
            "mh-port" if sched == "mh" => f.flag2 = true,
            _ => return Err(UsageError::new(format!("invalid scheduler flag `{}'", super::shorten(word)))
                .hint("flags are flag-1, flag-2, flag-3, sh-fallback, sh-port (with -s sh), mh-fallback, mh-port (with -s mh)")),
        }
    }
    Ok(f)
}

/// `host[:port]`; IPv4 numeric only (nfvs does no DNS lookups). The port may be a number or
/// a service name from /etc/services.
fn parse_host_port(text: &str, proto: Protocol) -> Option<(Ipv4Addr, Option<u16>)> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (text, None),
    };
    let addr: Ipv4Addr = host.parse().ok()?;
    let port = match port {
        None => None,
        Some(p) => Some(match number(p, 0, 65535) {
            Some(n) => n as u16,
            None => PortNames::system().port(proto, p)?,
        }),
    };
    Some((addr, port))
}

fn parse_service(proto: Protocol, text: &str) -> Result<ServiceKey, UsageError> {
    let (addr, port) = parse_host_port(text, proto).ok_or_else(|| {
        UsageError::new("illegal virtual server address[:port] specified")
            .hint(format!("'{}': nfvs takes a numeric IPv4 address and port, e.g. 192.168.199.200:80", super::shorten(text)))
    })?;
    if proto == Protocol::Udp {
        return Err(UsageError::new("UDP services are not supported by nfvs yet")
            .hint("nfvs balances TCP services (-t)"));
    }
    Ok(ServiceKey { proto, addr, port: port.unwrap_or(0) })
}

/// ipvsadm's message for a refused table edit (lvs-semantics.md §8.4), exactly: scripts
/// match on it. [`edit_hint`] has nfvs's own detail.
pub fn edit_message(cmd: &Command, e: &EditError) -> String {
    let dest_cmd = matches!(cmd, Command::AddDest(..) | Command::EditDest(..) | Command::DelDest(..));
    match (e, dest_cmd) {
        (EditError::NoService, true) => "Service not defined".to_string(),
        (EditError::Scheduler(_), _) => "Scheduler or persistence engine not found".to_string(),
        (e, _) => e.to_string(),
    }
}

/// What nfvs can add to [`edit_message`]: the scheduler names it knows.
pub fn edit_hint(e: &EditError) -> Option<String> {
    match e {
        EditError::Scheduler(u) => Some(u.to_string()),
        EditError::ThresholdRange { lower, upper } => Some(format!(
            "the lower threshold (-y {lower}) is above the upper one (-x {upper}{}): give -x at least -y",
            if *upper == 0 { ", none given" } else { "" }
        )),
        _ => None,
    }
}

