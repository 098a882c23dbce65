//! ipvsadm's command language: one parser for the rules file (`ipvsadm -S -n` form) and for
//! `nfvs adm` / the `ipvsadm` symlink.
//!
//! Two stages, no side effects (ripgrep's lowargs/hiargs): [`parse_args`] turns words into
//! [`RawArgs`] exactly as ipvsadm 1.31's popt table does (clustered short options, `--long=v`,
//! the optional value of `-p`, "multiple options" and the command/option legality table), then
//! [`RawArgs::validate`] builds a typed [`Command`]. Messages and exit codes are ipvsadm's
//! (lvs-semantics.md §8.4); where nfvs refuses something ipvsadm accepts (direct routing,
//! tunnelling, IPv6, fwmark services) the message says so and what to use instead.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::sched::{SchedFlags, SchedOptions};
use crate::service::{DestSpec, EditError, Protocol, ServiceKey, ServiceSpec, Table};

/// ipvsadm's default scheduler.
pub const DEFAULT_SCHED: &str = "wlc";
/// ipvsadm's default persistence timeout (`-p` without a value), seconds.
pub const DEFAULT_PERSISTENT: u32 = 360;
/// ipvsadm's MAX_TIMEOUT: 31 days.
pub const MAX_TIMEOUT: u32 = 86400 * 31;

/// The commands, named as ipvsadm's `cmdnames[]` names them in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Add,
    Edit,
    Del,
    Flush,
    List,
    AddDest,
    DelDest,
    EditDest,
    Timeout,
    StartDaemon,
    StopDaemon,
    Restore,
    Save,
    Zero,
}

impl Cmd {
    fn name(self) -> &'static str {
        match self {
            Cmd::Add => "add-service",
            Cmd::Edit => "edit-service",
            Cmd::Del => "delete-service",
            Cmd::Flush => "flush",
            Cmd::List => "list",
            Cmd::AddDest => "add-server",
            Cmd::DelDest => "delete-server",
            Cmd::EditDest => "edit-server",
            Cmd::Timeout => "set",
            Cmd::StartDaemon => "start-daemon",
            Cmd::StopDaemon => "stop-daemon",
            Cmd::Restore => "restore",
            Cmd::Save => "save",
            Cmd::Zero => "zero",
        }
    }

    /// ipvsadm's `commands_v_options` row: '+' compulsory, 'x' illegal, '1' exclusive,
    /// ' ' optional; columns in [`Opt`] order.
    fn legality(self) -> &'static [u8; Opt::COUNT] {
        //                 -n -c svc -s -p -M -r fwd -w -x -y -mc tot dmn -st -rt thr -pc srt sid -ex ops -b
        match self {
            Cmd::Add | Cmd::Edit => b"xx+   xxxxxxxxxxxxxxx   ",
            Cmd::Del => b"xx+xxxxxxxxxxxxxxxxxxxxx",
            Cmd::Flush | Cmd::Timeout | Cmd::Restore => b"xxxxxxxxxxxxxxxxxxxxxxxx",
            Cmd::List => b" 11xxxxxxxxx11       xxx",
            Cmd::AddDest | Cmd::EditDest => b"xx+xxx+    xxxxxxxxxxxxx",
            Cmd::DelDest => b"xx+xxx+xxxxxxxxxxxxxxxxx",
            Cmd::StartDaemon => b"xxxxxxxxxxx xxxxxxx xxxx",
            Cmd::StopDaemon => b"xxxxxxxxxxxxxxxxxxx xxxx",
            Cmd::Save => b" xxxxxxxxxxxxxxxxxxxxxxx",
            Cmd::Zero => b"xx xxxxxxxxxxxxxxxxxxxxx",
        }
    }
}

/// The options, in the order of ipvsadm's `optnames[]` (plus `sched-flags`, ipvsadm 1.27+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Opt {
    Numeric,
    Connection,
    Service,
    Scheduler,
    Persistent,
    Netmask,
    Server,
    Forward,
    Weight,
    UThreshold,
    LThreshold,
    Mcast,
    Timeout,
    Daemon,
    Stats,
    Rate,
    Thresholds,
    PersistentConn,
    NoSort,
    SyncId,
    Exact,
    Ops,
    SchedFlags,
    /// Not an ipvsadm option column; keeps the table 24 wide for `--sort` (no-op).
    _Reserved,
}

impl Opt {
    const COUNT: usize = 24;
    const ALL: [Opt; 23] = [
        Opt::Numeric,
        Opt::Connection,
        Opt::Service,
        Opt::Scheduler,
        Opt::Persistent,
        Opt::Netmask,
        Opt::Server,
        Opt::Forward,
        Opt::Weight,
        Opt::UThreshold,
        Opt::LThreshold,
        Opt::Mcast,
        Opt::Timeout,
        Opt::Daemon,
        Opt::Stats,
        Opt::Rate,
        Opt::Thresholds,
        Opt::PersistentConn,
        Opt::NoSort,
        Opt::SyncId,
        Opt::Exact,
        Opt::Ops,
        Opt::SchedFlags,
    ];
    fn name(self) -> &'static str {
        match self {
            Opt::Numeric => "numeric",
            Opt::Connection => "connection",
            Opt::Service => "service-address",
            Opt::Scheduler => "scheduler",
            Opt::Persistent => "persistent",
            Opt::Netmask => "netmask",
            Opt::Server => "real-server",
            Opt::Forward => "forwarding-method",
            Opt::Weight => "weight",
            Opt::UThreshold => "u-threshold",
            Opt::LThreshold => "l-threshold",
            Opt::Mcast => "mcast-interface",
            Opt::Timeout => "timeout",
            Opt::Daemon => "daemon",
            Opt::Stats => "stats",
            Opt::Rate => "rate",
            Opt::Thresholds => "thresholds",
            Opt::PersistentConn => "persistent-conn",
            Opt::NoSort => "nosort",
            Opt::SyncId => "syncid",
            Opt::Exact => "exact",
            Opt::Ops => "ops",
            Opt::SchedFlags => "sched-flags",
            Opt::_Reserved => "",
        }
    }
    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

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
    fn new(message: impl Into<String>) -> UsageError {
        UsageError { message: message.into(), exit_code: 2, hint: None }
    }
    fn unparseable(message: impl Into<String>) -> UsageError {
        UsageError { message: message.into(), exit_code: 255, hint: None }
    }
    fn hint(mut self, hint: impl Into<String>) -> UsageError {
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

/// Words parsed, values not yet checked against each other.
#[derive(Debug, Clone, Default)]
pub struct RawArgs {
    cmd: Option<Cmd>,
    help: bool,
    version: bool,
    options: u32,
    service: Option<(Protocol, String)>,
    fwmark: Option<String>,
    scheduler: Option<String>,
    /// `Some(None)`: `-p` without a value.
    persistent: Option<Option<String>>,
    netmask: Option<String>,
    server: Option<String>,
    fwd: Option<Fwd>,
    weight: Option<String>,
    u_threshold: Option<String>,
    l_threshold: Option<String>,
    sched_flags: Option<String>,
    format: ListFormat,
    extra: Vec<String>,
}

struct OptDef {
    short: Option<char>,
    long: &'static str,
    arg: Arg,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arg {
    None,
    Required,
    Optional,
}

const OPTS: &[OptDef] = &[
    OptDef { short: Some('A'), long: "add-service", arg: Arg::None },
    OptDef { short: Some('E'), long: "edit-service", arg: Arg::None },
    OptDef { short: Some('D'), long: "delete-service", arg: Arg::None },
    OptDef { short: Some('C'), long: "clear", arg: Arg::None },
    OptDef { short: Some('L'), long: "list", arg: Arg::None },
    OptDef { short: Some('l'), long: "list", arg: Arg::None },
    OptDef { short: Some('Z'), long: "zero", arg: Arg::None },
    OptDef { short: Some('a'), long: "add-server", arg: Arg::None },
    OptDef { short: Some('e'), long: "edit-server", arg: Arg::None },
    OptDef { short: Some('d'), long: "delete-server", arg: Arg::None },
    OptDef { short: None, long: "set", arg: Arg::None },
    OptDef { short: Some('h'), long: "help", arg: Arg::None },
    OptDef { short: Some('v'), long: "version", arg: Arg::None },
    OptDef { short: Some('R'), long: "restore", arg: Arg::None },
    OptDef { short: Some('S'), long: "save", arg: Arg::None },
    OptDef { short: None, long: "start-daemon", arg: Arg::Required },
    OptDef { short: None, long: "stop-daemon", arg: Arg::Required },
    OptDef { short: Some('t'), long: "tcp-service", arg: Arg::Required },
    OptDef { short: Some('u'), long: "udp-service", arg: Arg::Required },
    OptDef { short: None, long: "sctp-service", arg: Arg::Required },
    OptDef { short: Some('f'), long: "fwmark-service", arg: Arg::Required },
    OptDef { short: Some('s'), long: "scheduler", arg: Arg::Required },
    OptDef { short: Some('p'), long: "persistent", arg: Arg::Optional },
    OptDef { short: Some('M'), long: "netmask", arg: Arg::Required },
    OptDef { short: Some('r'), long: "real-server", arg: Arg::Required },
    OptDef { short: Some('m'), long: "masquerading", arg: Arg::None },
    OptDef { short: Some('i'), long: "ipip", arg: Arg::None },
    OptDef { short: Some('g'), long: "gatewaying", arg: Arg::None },
    OptDef { short: Some('w'), long: "weight", arg: Arg::Required },
    OptDef { short: Some('x'), long: "u-threshold", arg: Arg::Required },
    OptDef { short: Some('y'), long: "l-threshold", arg: Arg::Required },
    OptDef { short: Some('b'), long: "sched-flags", arg: Arg::Required },
    OptDef { short: Some('n'), long: "numeric", arg: Arg::None },
    OptDef { short: Some('c'), long: "connection", arg: Arg::None },
    OptDef { short: None, long: "mcast-interface", arg: Arg::Required },
    OptDef { short: None, long: "syncid", arg: Arg::Required },
    OptDef { short: None, long: "timeout", arg: Arg::None },
    OptDef { short: None, long: "daemon", arg: Arg::None },
    OptDef { short: None, long: "stats", arg: Arg::None },
    OptDef { short: None, long: "rate", arg: Arg::None },
    OptDef { short: None, long: "thresholds", arg: Arg::None },
    OptDef { short: None, long: "persistent-conn", arg: Arg::None },
    OptDef { short: None, long: "nosort", arg: Arg::None },
    OptDef { short: None, long: "sort", arg: Arg::None },
    OptDef { short: Some('X'), long: "exact", arg: Arg::None },
    OptDef { short: Some('6'), long: "ipv6", arg: Arg::None },
    OptDef { short: Some('o'), long: "ops", arg: Arg::None },
];

fn try_help() -> UsageError {
    UsageError::unparseable("Try `ipvsadm -h' or 'ipvsadm --help' for more information.")
}

/// Stage one: words -> [`RawArgs`]. `args` excludes the program name. Words equal to
/// `ipvsadm` are skipped, as ipvsadm's restore does, so saved lines may start with it.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<RawArgs, UsageError> {
    let words: Vec<&str> = args.iter().map(|s| s.as_ref()).filter(|w| *w != "ipvsadm").collect();
    let mut raw = RawArgs::default();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        i += 1;
        if let Some(long) = w.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let def = OPTS.iter().find(|d| d.long == name).ok_or_else(|| {
                UsageError::unparseable(format!("{w}: unknown option"))
                    .hint("see `nfvs adm --help` for the options nfvs understands")
            })?;
            let value = take_value(def, inline, &words, &mut i, w)?;
            raw.apply(def, value, w)?;
        } else if w.len() > 1 && w.starts_with('-') {
            let chars: Vec<char> = w[1..].chars().collect();
            let mut k = 0;
            while k < chars.len() {
                let c = chars[k];
                k += 1;
                let def = OPTS.iter().find(|d| d.short == Some(c)).ok_or_else(|| {
                    UsageError::unparseable(format!("-{c}: unknown option"))
                        .hint("see `nfvs adm --help` for the options nfvs understands")
                })?;
                // popt: an option with a value takes the rest of the cluster, else the next word.
                let inline = if def.arg != Arg::None && k < chars.len() {
                    let rest: String = chars[k..].iter().collect();
                    k = chars.len();
                    Some(rest)
                } else {
                    None
                };
                let value = take_value(def, inline, &words, &mut i, w)?;
                raw.apply(def, value, w)?;
            }
        } else {
            raw.extra.push(w.to_string());
        }
    }
    Ok(raw)
}

fn take_value(
    def: &OptDef,
    inline: Option<String>,
    words: &[&str],
    i: &mut usize,
    word: &str,
) -> Result<Option<String>, UsageError> {
    match def.arg {
        Arg::None => {
            if inline.is_some() {
                return Err(UsageError::unparseable(format!("{word}: option does not take an argument")));
            }
            Ok(None)
        }
        Arg::Required => {
            if inline.is_some() {
                return Ok(inline);
            }
            match words.get(*i) {
                Some(v) => {
                    *i += 1;
                    Ok(Some(v.to_string()))
                }
                None => Err(UsageError::unparseable(format!("{word}: missing argument"))),
            }
        }
        // popt's POPT_ARGFLAG_OPTIONAL: the next word is the value unless it starts with '-'.
        Arg::Optional => {
            if inline.is_some() {
                return Ok(inline);
            }
            match words.get(*i) {
                Some(v) if !v.starts_with('-') => {
                    *i += 1;
                    Ok(Some(v.to_string()))
                }
                _ => Ok(None),
            }
        }
    }
}

impl RawArgs {
    fn set_command(&mut self, cmd: Cmd) -> Result<(), UsageError> {
        if self.cmd.is_some() {
            return Err(UsageError::new("multiple commands specified"));
        }
        self.cmd = Some(cmd);
        Ok(())
    }

    fn set_option(&mut self, opt: Opt) -> Result<(), UsageError> {
        if self.options & opt.bit() != 0 {
            return Err(UsageError::new(format!("multiple '{}' options specified", opt.name())));
        }
        self.options |= opt.bit();
        Ok(())
    }

    fn apply(&mut self, def: &OptDef, value: Option<String>, word: &str) -> Result<(), UsageError> {
        let v = value.clone().unwrap_or_default();
        match def.long {
            "add-service" => self.set_command(Cmd::Add)?,
            "edit-service" => self.set_command(Cmd::Edit)?,
            "delete-service" => self.set_command(Cmd::Del)?,
            "clear" => self.set_command(Cmd::Flush)?,
            "list" => self.set_command(Cmd::List)?,
            "zero" => self.set_command(Cmd::Zero)?,
            "add-server" => self.set_command(Cmd::AddDest)?,
            "edit-server" => self.set_command(Cmd::EditDest)?,
            "delete-server" => self.set_command(Cmd::DelDest)?,
            "set" => self.set_command(Cmd::Timeout)?,
            "restore" => self.set_command(Cmd::Restore)?,
            "save" => self.set_command(Cmd::Save)?,
            "start-daemon" => self.set_command(Cmd::StartDaemon)?,
            "stop-daemon" => self.set_command(Cmd::StopDaemon)?,
            "help" => self.help = true,
            "version" => self.version = true,
            "tcp-service" | "udp-service" => {
                self.set_option(Opt::Service)?;
                let p = if def.long == "tcp-service" { Protocol::Tcp } else { Protocol::Udp };
                self.service = Some((p, v));
            }
            "sctp-service" => {
                return Err(UsageError::new("SCTP services are not supported by nfvs")
                    .hint("nfvs balances TCP services (-t)"))
            }
            "fwmark-service" => {
                self.set_option(Opt::Service)?;
                self.fwmark = Some(v);
            }
            "scheduler" => {
                self.set_option(Opt::Scheduler)?;
                self.scheduler = Some(v);
            }
            "persistent" => {
                self.set_option(Opt::Persistent)?;
                self.persistent = Some(value);
            }
            "netmask" => {
                self.set_option(Opt::Netmask)?;
                self.netmask = Some(v);
            }
            "real-server" => {
                self.set_option(Opt::Server)?;
                self.server = Some(v);
            }
            "masquerading" | "ipip" | "gatewaying" => {
                self.set_option(Opt::Forward)?;
                self.fwd = Some(match def.long {
                    "masquerading" => Fwd::Masq,
                    "ipip" => Fwd::Tunnel,
                    _ => Fwd::Route,
                });
            }
            "weight" => {
                self.set_option(Opt::Weight)?;
                self.weight = Some(v);
            }
            "u-threshold" => {
                self.set_option(Opt::UThreshold)?;
                self.u_threshold = Some(v);
            }
            "l-threshold" => {
                self.set_option(Opt::LThreshold)?;
                self.l_threshold = Some(v);
            }
            "sched-flags" => {
                self.set_option(Opt::SchedFlags)?;
                self.sched_flags = Some(v);
            }
            "numeric" => {
                self.set_option(Opt::Numeric)?;
                self.format.numeric = true;
            }
            "connection" => self.set_option(Opt::Connection)?,
            "mcast-interface" => self.set_option(Opt::Mcast)?,
            "syncid" => self.set_option(Opt::SyncId)?,
            "timeout" => self.set_option(Opt::Timeout)?,
            "daemon" => self.set_option(Opt::Daemon)?,
            "stats" => {
                self.set_option(Opt::Stats)?;
                self.format.stats = true;
            }
            "rate" => {
                self.set_option(Opt::Rate)?;
                self.format.rate = true;
            }
            "thresholds" => {
                self.set_option(Opt::Thresholds)?;
                self.format.thresholds = true;
            }
            "persistent-conn" => {
                self.set_option(Opt::PersistentConn)?;
                self.format.persistent_conn = true;
            }
            "nosort" => {
                self.set_option(Opt::NoSort)?;
                self.format.nosort = true;
            }
            "sort" => {}
            "exact" => {
                self.set_option(Opt::Exact)?;
                self.format.exact = true;
            }
            "ipv6" => {
                return Err(UsageError::new("IPv6 services are not supported by nfvs")
                    .hint(format!("'{word}': nfvs balances IPv4 TCP services")))
            }
            "ops" => self.set_option(Opt::Ops)?,
            other => unreachable!("option table and apply() disagree on --{other}"),
        }
        Ok(())
    }

    /// Stage two: check the combination and the values, build the [`Command`].
    pub fn validate(&self) -> Result<Command, UsageError> {
        if self.help {
            return Ok(Command::Help);
        }
        if self.version {
            return Ok(Command::Version);
        }
        let Some(cmd) = self.cmd else {
            if self.options == 0 && self.extra.is_empty() {
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
            return Err(UsageError::new(format!("unexpected argument {x}")));
        }
        if self.fwmark.is_some() {
            return Err(UsageError::new("fwmark services are not supported by nfvs")
                .hint("give the service as -t VIP:PORT"));
        }
        if self.options & Opt::Ops.bit() != 0 {
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
            Cmd::List => {
                let o = self.options;
                // ipvsadm 1.31: -c/--timeout/--daemon exclude the counter views, and
                // --timeout/--daemon also exclude --persistent-conn (-c allows it).
                let views = Opt::Stats.bit() | Opt::Rate.bit() | Opt::Thresholds.bit();
                let other = Opt::Connection.bit() | Opt::Timeout.bit() | Opt::Daemon.bit();
                let no_pc = Opt::Timeout.bit() | Opt::Daemon.bit();
                if (o & other != 0 && o & views != 0) || (o & no_pc != 0 && o & Opt::PersistentConn.bit() != 0) {
                    return Err(UsageError::new("options conflicts in the list command"));
                }
                let what = if o & Opt::Connection.bit() != 0 {
                    ListWhat::Connections
                } else if let Some(k) = key {
                    ListWhat::Service(k)
                } else if o & Opt::Timeout.bit() != 0 {
                    ListWhat::Timeouts
                } else if o & Opt::Daemon.bit() != 0 {
                    ListWhat::Daemon
                } else {
                    ListWhat::All
                };
                Command::List(what, self.format)
            }
            Cmd::Save => Command::Save { numeric: self.format.numeric },
            Cmd::Restore => Command::Restore,
            Cmd::Zero => Command::Zero(key),
            Cmd::StartDaemon => Command::StartDaemon,
            Cmd::StopDaemon => Command::StopDaemon,
            Cmd::Timeout => unreachable!("handled above"),
        })
    }

    fn check_legality(&self, cmd: Cmd) -> Result<(), UsageError> {
        let row = cmd.legality();
        let mut exclusive: Option<Opt> = None;
        for opt in Opt::ALL {
            let set = self.options & opt.bit() != 0;
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
        let sched_name = self.scheduler.clone().unwrap_or_else(|| DEFAULT_SCHED.to_string());
        let persistent = match &self.persistent {
            None => None,
            Some(None) => Some(DEFAULT_PERSISTENT),
            Some(Some(v)) => Some(parse_timeout(v, 1)?),
        };
        if key.port == 0 && persistent.is_none() {
            return Err(UsageError::new("Zero port specified for non-persistent service"));
        }
        let netmask = match &self.netmask {
            None => Ipv4Addr::BROADCAST,
            Some(m) => parse_netmask(m)?,
        };
        let flags = match &self.sched_flags {
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
        let text = self.server.as_deref().expect("legality: real-server required");
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
        let weight = match &self.weight {
            None => 1,
            Some(w) => number(w, 0, 65535).ok_or_else(|| UsageError::new("illegal weight specified"))?,
        };
        let u_threshold = match &self.u_threshold {
            None => 0,
            Some(x) => number(x, 0, i32::MAX as u32).ok_or_else(|| UsageError::new("illegal u_threshold specified"))?,
        };
        let l_threshold = match &self.l_threshold {
            None => 0,
            Some(y) => number(y, 0, i32::MAX as u32).ok_or_else(|| UsageError::new("illegal l_threshold specified"))?,
        };
        Ok(DestSpec { addr, port, weight, u_threshold, l_threshold })
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
    number(s, min, MAX_TIMEOUT).ok_or_else(|| UsageError::new(format!("invalid timeout value `{s}' specified")))
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
            _ => return Err(UsageError::new(format!("invalid scheduler flag `{word}'"))
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
            None => service_port(p, proto)?,
        }),
    };
    Some((addr, port))
}

fn parse_service(proto: Protocol, text: &str) -> Result<ServiceKey, UsageError> {
    let (addr, port) = parse_host_port(text, proto).ok_or_else(|| {
        UsageError::new("illegal virtual server address[:port] specified")
            .hint(format!("'{text}': nfvs takes a numeric IPv4 address and port, e.g. 192.168.199.200:80"))
    })?;
    if proto == Protocol::Udp {
        return Err(UsageError::new("UDP services are not supported by nfvs yet")
            .hint("nfvs balances TCP services (-t)"));
    }
    Ok(ServiceKey { proto, addr, port: port.unwrap_or(0) })
}

/// Looks a port name up in /etc/services, as ipvsadm's getservbyname does.
fn service_port(name: &str, proto: Protocol) -> Option<u16> {
    let want = match proto {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    let text = std::fs::read_to_string("/etc/services").ok()?;
    text.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut words = line.split_whitespace();
        let svc = words.next()?;
        let (port, p) = words.next()?.split_once('/')?;
        let aliases: Vec<&str> = words.collect();
        ((svc == name || aliases.contains(&name)) && p == want).then(|| port.parse().ok()).flatten()
    })
}

/// Splits one line into words: whitespace separated, with `"..."`/`'...'` quoting.
fn split_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// Parses one ipvsadm command line (words split as a shell would for simple lines).
pub fn parse_line(line: &str) -> Result<Command, UsageError> {
    parse_args(&split_words(line))?.validate()
}

/// Why a rules file was refused: where, and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read rules file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line { path: String, line: usize, message: String },
    #[error("{path}: no virtual service defined (add a line such as `-A -t 192.168.199.200:80 -s wrr`)")]
    Empty { path: String },
}

/// Applies an editing command to a table. Listing and other non-editing commands are not
/// allowed here (the caller handles them).
pub fn apply(table: &mut Table, cmd: &Command) -> Result<(), EditError> {
    match cmd {
        Command::AddService(s) => table.add_service(s.clone()),
        Command::EditService(s) => table.edit_service(s.clone()),
        Command::DelService(k) => table.del_service(k).map(|_| ()),
        Command::Clear => {
            table.clear();
            Ok(())
        }
        Command::AddDest(k, d) => table.add_dest(k, *d).map(|_| ()),
        Command::EditDest(k, d) => table.edit_dest(k, *d),
        Command::DelDest(k, a, p) => table.del_dest(k, *a, *p).map(|_| ()),
        _ => Ok(()),
    }
}

/// Reads a rules file: one ipvsadm command per line in `ipvsadm -S -n` form (a leading
/// `ipvsadm` word is allowed; blank lines and `#` comments are skipped). Only table edits
/// (-A -E -D -C -a -e -d) are allowed. The file is applied to an empty table in order; the
/// first bad line stops everything with an error naming the file, line and what is wrong.
pub fn load_rules(path: &Path) -> Result<Table, ConfigError> {
    load_rules_with(path, SchedOptions::default())
}

/// [`load_rules`] with director-wide scheduler settings (see [`Table::with_defaults`]).
pub fn load_rules_with(path: &Path, defaults: SchedOptions) -> Result<Table, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
    parse_rules_with(&text, &p, defaults)
}

/// [`load_rules`] on text already read; `path` only names the source in errors.
pub fn parse_rules(text: &str, path: &str) -> Result<Table, ConfigError> {
    parse_rules_with(text, path, SchedOptions::default())
}

/// [`parse_rules`] with director-wide scheduler settings.
pub fn parse_rules_with(text: &str, path: &str, defaults: SchedOptions) -> Result<Table, ConfigError> {
    let mut table = Table::with_defaults(defaults);
    for (n, line) in text.lines().enumerate() {
        let err = |message: String| ConfigError::Line { path: path.to_string(), line: n + 1, message };
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let cmd = parse_line(trimmed).map_err(|e| err(e.to_string()))?;
        if !cmd.is_edit() {
            return Err(err(format!("'{trimmed}' does not edit the table; a rules file holds only -A -E -D -C -a -e -d lines")));
        }
        apply(&mut table, &cmd).map_err(|e| {
            let mut m = edit_message(&cmd, &e);
            if let Some(h) = edit_hint(&e) {
                m.push_str(&format!(" ({h})"));
            } else if e == EditError::NoService {
                m.push_str(" (a real server's service must be added with -A on an earlier line)");
            }
            err(m)
        })?;
    }
    if table.services().is_empty() {
        return Err(ConfigError::Empty { path: path.to_string() });
    }
    Ok(table)
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
        _ => None,
    }
}

/// The table edits that turn `old` into `new` (for SIGHUP reload): only what differs, so
/// untouched services keep their scheduler state and counters. Deletions come first; new real
/// servers are added oldest first, which reproduces `new`'s list order.
pub fn diff(old: &Table, new: &Table) -> Vec<Command> {
    let mut out = Vec::new();
    for s in old.services() {
        if new.find(&s.key()).is_none() {
            out.push(Command::DelService(s.key()));
        }
    }
    for n in new.services() {
        let key = n.key();
        let adds = |from: &[crate::service::Dest], out: &mut Vec<Command>| {
            for d in from.iter().rev() {
                out.push(Command::AddDest(key, dest_spec_of(d)));
            }
        };
        match old.services().iter().find(|o| o.key() == key) {
            None => {
                out.push(Command::AddService(n.spec.clone()));
                adds(&n.dests, &mut out);
            }
            Some(o) => {
                if o.spec != n.spec {
                    out.push(Command::EditService(n.spec.clone()));
                }
                for d in &o.dests {
                    if n.dest_index(d.addr, d.port).is_none() {
                        out.push(Command::DelDest(key, d.addr, d.port));
                    }
                }
                let fresh: Vec<crate::service::Dest> =
                    n.dests.iter().filter(|d| o.dest_index(d.addr, d.port).is_none()).cloned().collect();
                adds(&fresh, &mut out);
                for d in &n.dests {
                    if let Some(i) = o.dest_index(d.addr, d.port) {
                        if dest_spec_of(&o.dests[i]) != dest_spec_of(d) {
                            out.push(Command::EditDest(key, dest_spec_of(d)));
                        }
                    }
                }
            }
        }
    }
    out
}

fn dest_spec_of(d: &crate::service::Dest) -> DestSpec {
    DestSpec { addr: d.addr, port: d.port, weight: d.weight, u_threshold: d.u_threshold, l_threshold: d.l_threshold }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = "-A -t 192.168.199.200:80 -s wrr\n\
        -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\n\
        -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1\n";

    fn err_of(text: &str) -> String {
        parse_rules(text, "t.rules").unwrap_err().to_string()
    }

    #[test]
    fn seed_lab_rules() {
        let t = parse_rules(LAB, "lab.rules").unwrap();
        let s = &t.services()[0];
        assert_eq!(s.key().vip().to_string(), "192.168.199.200:80");
        assert_eq!(s.scheduler_name(), "wrr");
        // IPVS list order: newest first.
        let order: Vec<String> = s.dests.iter().map(|d| d.rip().to_string()).collect();
        assert_eq!(order, ["192.168.226.131:80", "192.168.226.130:80"]);
    }

    #[test]
    fn ipvsadm_prefix_comments_and_long_options() {
        let text = "# saved\nipvsadm -A -t 10.0.0.1:80 --scheduler rr\n\n\
            ipvsadm --add-server --tcp-service=10.0.0.1:80 --real-server 10.0.1.1 --masquerading --weight 3\n";
        let t = parse_rules(text, "x").unwrap();
        let d = &t.services()[0].dests[0];
        assert_eq!((d.port, d.weight), (80, 3), "port defaults to the service's");
    }

    #[test]
    fn bad_files_name_the_line() {
        assert_eq!(
            err_of("-A -t 192.168.199.200:80 -s wrr --frobnicate\n"),
            "t.rules:1: --frobnicate: unknown option (see `nfvs adm --help` for the options nfvs understands)"
        );
        assert!(err_of("-A -t 192.168.199.200:80 -s wrr\n-a -t 192.168.199.200:80 -r 192.168.226.300:80 -m\n")
            .starts_with("t.rules:2: illegal real server address[:port] specified"));
        assert!(err_of("-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m\n").starts_with("t.rules:1: Service not defined"));
        assert_eq!(
            err_of("-A -t 192.168.199.200:80 -s wrr\n\n-A -t 192.168.199.200:80 -s rr\n"),
            "t.rules:3: Service already exists"
        );
        assert!(err_of("-A -t 1.2.3.4:80 -s nosuch\n").starts_with("t.rules:1: Scheduler or persistence engine not found"));
        assert!(err_of("-A -t 1.2.3.4:80 -s rr\n-a -t 1.2.3.4:80 -r 5.6.7.8 -g\n").contains("direct routing (-g) is not supported"));
        assert!(err_of("-A -t 1.2.3.4:80 -s rr\n-a -t 1.2.3.4:80 -r 5.6.7.8\n").contains("add -m"));
        assert!(err_of("-A -t 1.2.3.4:80 -s rr\n-a -t 1.2.3.4:80 -r 5.6.7.8 -m -w 70000\n").contains("illegal weight specified"));
        assert!(err_of("-L -n\n").contains("does not edit the table"));
        assert!(err_of("# nothing\n").contains("no virtual service defined"));
    }

    #[test]
    fn ipvsadm_option_rules() {
        let e = |s: &str| parse_line(s).unwrap_err();
        assert_eq!(e("-A -t 1.2.3.4:80 -s rr -s wrr").message, "multiple 'scheduler' options specified");
        assert_eq!(e("-A -t 1.2.3.4:80 -w 2").message, "Illegal 'weight' option with the 'add-service' command");
        assert_eq!(e("-a -t 1.2.3.4:80 -m").message, "You need to supply the 'real-server' option for the 'add-server' command");
        assert_eq!(e("-A -L").message, "multiple commands specified");
        assert_eq!(e("-A -t 1.2.3.4 -s rr").message, "Zero port specified for non-persistent service");
        assert_eq!(e("-A -t 1.2.3.4:80 -p 0").message, "invalid timeout value `0' specified");
        assert_eq!(e("-L -c -t 1.2.3.4:80").message, "The option 'service-address' conflicts with the 'connection' option in the 'list' command");
        assert_eq!(e("-Q").exit_code, 255);
        assert_eq!(e("-A -t 1.2.3.4:80 extra").message, "unexpected argument extra");
        assert_eq!(e("-L -c --stats").message, "options conflicts in the list command");
        assert_eq!(e("-L --timeout --persistent-conn").message, "options conflicts in the list command");
        assert!(parse_line("-L -c --persistent-conn").is_ok());
    }

    #[test]
    fn ipvsadm_traps() {
        // -E without -s switches to wlc; -p without a value is 360 s; -p takes the next word
        // only when it does not start with '-'.
        match parse_line("-E -t 1.2.3.4:80 -p").unwrap() {
            Command::EditService(s) => {
                assert_eq!(s.sched_name, "wlc");
                assert_eq!(s.persistent, Some(360));
            }
            c => panic!("{c:?}"),
        }
        match parse_line("-A -t 1.2.3.4:80 -p 60 -M 24 -s sh -b sh-fallback,sh-port").unwrap() {
            Command::AddService(s) => {
                assert_eq!(s.persistent, Some(60));
                assert_eq!(s.netmask, Ipv4Addr::new(255, 255, 255, 0));
                assert!(s.sched_opts.flags.flag1 && s.sched_opts.flags.flag2);
            }
            c => panic!("{c:?}"),
        }
        // clustered short options, value in the same cluster
        assert_eq!(parse_line("-Ln").unwrap(), Command::List(ListWhat::All, ListFormat { numeric: true, ..Default::default() }));
        assert_eq!(parse_line("-Sn").unwrap(), Command::Save { numeric: true });
        match parse_line("-e -t 1.2.3.4:80 -r 5.6.7.8:8080 -w0").unwrap() {
            Command::EditDest(_, d) => assert_eq!((d.port, d.weight), (8080, 0)),
            c => panic!("{c:?}"),
        }
        assert_eq!(parse_line("").unwrap(), Command::List(ListWhat::All, ListFormat::default()));
        assert!(parse_line("-A -t 1.2.3.4:80 -s rr -b sh-port").is_err(), "sh-port needs -s sh");
    }

    #[test]
    fn reload_diff_applies_only_changes() {
        let old = parse_rules(LAB, "old").unwrap();
        let new_text = "-A -t 192.168.199.200:80 -s wrr\n\
            -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 3\n\
            -a -t 192.168.199.200:80 -r 192.168.226.132:80 -m -w 1\n\
            -A -t 192.168.199.200:443 -s rr\n\
            -a -t 192.168.199.200:443 -r 192.168.226.130:443 -m\n";
        let new = parse_rules(new_text, "new").unwrap();
        let cmds = diff(&old, &new);
        let lines: Vec<String> = cmds.iter().map(|c| format!("{c:?}")).collect();
        assert_eq!(cmds.len(), 5, "{lines:#?}");
        assert!(matches!(cmds[0], Command::DelDest(_, a, 80) if a == Ipv4Addr::new(192, 168, 226, 130)));
        assert!(matches!(cmds[1], Command::AddDest(_, d) if d.addr == Ipv4Addr::new(192, 168, 226, 132)));
        assert!(matches!(cmds[2], Command::EditDest(_, d) if d.weight == 3));
        assert!(matches!(cmds[3], Command::AddService(ref s) if s.key.port == 443));
        // Applying the diff to the old table gives the new one, list order included.
        let mut t = parse_rules(LAB, "old").unwrap();
        for c in &cmds {
            apply(&mut t, c).unwrap();
        }
        assert!(diff(&t, &new).is_empty());
        let order = |t: &Table| -> Vec<String> {
            t.services().iter().flat_map(|s| s.dests.iter().map(|d| format!("{} {}", d.rip(), d.weight))).collect()
        };
        assert_eq!(order(&t), order(&new));
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn director_wide_scheduler_settings_reach_every_service() {
        let defaults = SchedOptions { overhead: crate::sched::Overhead::Total, seed: 7, ..SchedOptions::default() };
        let t = parse_rules_with("-A -t 1.2.3.4:80 -s sh -b sh-port\n", "x", defaults).unwrap();
        let o = t.services()[0].spec.sched_opts;
        assert_eq!((o.overhead, o.seed), (crate::sched::Overhead::Total, 7));
        assert!(o.flags.flag2, "the service's own -b flags are kept");
    }

    #[test]
    fn port_names_from_etc_services() {
        if std::path::Path::new("/etc/services").exists() {
            match parse_line("-A -t 1.2.3.4:http -s rr").unwrap() {
                Command::AddService(s) => assert_eq!(s.key.port, 80),
                c => panic!("{c:?}"),
            }
        }
    }
}
