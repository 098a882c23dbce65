//! Stage one of ipvsadm's command language: words -> [`RawArgs`], exactly as ipvsadm 1.31's
//! popt table parses them (clustered short options, `--long=v`, the optional value of `-p`,
//! "multiple options"). Stage two, [`RawArgs::validate`] in [`super::command`], checks the
//! command/option legality table and the values and builds a typed [`Command`].

use crate::service::Protocol;

use super::command::{Command, Fwd, ListFormat, UsageError};

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
    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn legality(self) -> &'static [u8; Opt::COUNT] {
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
pub(super) enum Opt {
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
    pub(super) const COUNT: usize = 24;
    pub(super) const ALL: [Opt; 23] = [
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
    pub(super) fn name(self) -> &'static str {
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
    pub(super) fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

/// Words parsed, values not yet checked against each other.
#[derive(Debug, Clone, Default)]
pub struct RawArgs {
    pub(super) cmd: Option<Cmd>,
    pub(super) help: bool,
    pub(super) version: bool,
    pub(super) options: u32,
    pub(super) service: Option<(Protocol, String)>,
    pub(super) fwmark: Option<String>,
    pub(super) scheduler: Option<String>,
    /// `Some(None)`: `-p` without a value.
    pub(super) persistent: Option<Option<String>>,
    pub(super) netmask: Option<String>,
    pub(super) server: Option<String>,
    pub(super) fwd: Option<Fwd>,
    pub(super) weight: Option<String>,
    pub(super) u_threshold: Option<String>,
    pub(super) l_threshold: Option<String>,
    pub(super) sched_flags: Option<String>,
    pub(super) format: ListFormat,
    pub(super) extra: Vec<String>,
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::adm::command::{ListFormat, ListWhat};

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
    fn port_names_from_etc_services() {
        if std::path::Path::new("/etc/services").exists() {
            match parse_line("-A -t 1.2.3.4:http -s rr").unwrap() {
                Command::AddService(s) => assert_eq!(s.key.port, 80),
                c => panic!("{c:?}"),
            }
        }
    }
}
