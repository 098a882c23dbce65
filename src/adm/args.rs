//! Stage one of ipvsadm's command language: words -> [`RawArgs`], exactly as ipvsadm 1.31's
//! popt table parses them (clustered short options, `--long=v`, the optional value of `-p`,
//! "multiple options"). Stage two, [`RawArgs::validate`] in [`super::command`], checks the
//! command/option legality table and the values and builds a typed [`Command`].

use crate::model::Protocol;

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
    /// ' ' optional; columns in [`Opt`] order (ipvsadm's own, without the `--pe` and tunnel
    /// columns: nfvs refuses those options as it reads them).
    pub(super) fn legality(self) -> &'static [u8; Opt::COUNT] {
        //                 -n -c svc -s -p -M -r fwd -w -x -y -mc tot dmn -st -rt thr -pc srt sid -ex ops -b grp port ttl size
        match self {
            Cmd::Add | Cmd::Edit => b"xx+   xxxxxxxxxxxxxxx  xxxx",
            Cmd::Del => b"xx+xxxxxxxxxxxxxxxxxxxxxxxx",
            Cmd::Flush | Cmd::Timeout | Cmd::Restore => b"xxxxxxxxxxxxxxxxxxxxxxxxxxx",
            Cmd::List => b" 11xxxxxxxxx11       xxxxxx",
            Cmd::AddDest | Cmd::EditDest => b"xx+xxx+    xxxxxxxxxxxxxxxx",
            Cmd::DelDest => b"xx+xxx+xxxxxxxxxxxxxxxxxxxx",
            Cmd::StartDaemon => b"xxxxxxxxxxx xxxxxxx xxx    ",
            Cmd::StopDaemon => b"xxxxxxxxxxxxxxxxxxx xxxxxxx",
            Cmd::Save => b" xxxxxxxxxxxxxxxxxxxxxxxxxx",
            Cmd::Zero => b"xx xxxxxxxxxxxxxxxxxxxxxxxx",
        }
    }
}

/// The options, in the order of ipvsadm 1.31's `optnames[]` (without `pe` and the tunnel
/// options): the columns of [`Cmd::legality`].
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
    McastGroup,
    McastPort,
    McastTtl,
    SyncMaxlen,
}

impl Opt {
    pub(super) const COUNT: usize = Opt::ALL.len();
    pub(super) const ALL: [Opt; 27] = [
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
        Opt::McastGroup,
        Opt::McastPort,
        Opt::McastTtl,
        Opt::SyncMaxlen,
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
            Opt::McastGroup => "mcast-group",
            Opt::McastPort => "mcast-port",
            Opt::McastTtl => "mcast-ttl",
            Opt::SyncMaxlen => "sync-maxlen",
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
    /// The options given, one [`Opt::bit`] each.
    options: u32,
    /// The value each given option came with, by [`Opt`] (`None` for `-p` without one).
    values: [Option<String>; Opt::COUNT],
    pub(super) service: Option<(Protocol, String)>,
    pub(super) fwmark: Option<String>,
    pub(super) fwd: Option<Fwd>,
    pub(super) extra: Vec<String>,
}

/// One option as ipvsadm's popt `options_table` spells it, and what reading it does (the
/// `switch` on its tag in ipvsadm's `parse_options`): one table, so that an option cannot be
/// spelled without saying what it does.
struct OptDef {
    short: Option<char>,
    long: &'static str,
    arg: Arg,
    action: Action,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Arg {
    None,
    Required,
    /// popt's POPT_ARGFLAG_OPTIONAL (`-p`).
    Optional,
}

/// What reading an option does to [`RawArgs`].
#[derive(Clone, Copy)]
enum Action {
    /// A command: one per line.
    Command(Cmd),
    Help,
    Version,
    /// `-t`/`-u`: the service-address option, with its protocol.
    Service(Protocol),
    /// `-f`: the service-address option as an fwmark (refused in stage two, with advice).
    Fwmark,
    /// `-m`/`-i`/`-g`: the forwarding-method option.
    Forward(Fwd),
    /// An option of its own column; its value, if it takes one, is kept for stage two.
    Set(Opt),
    /// `--sort`: "does nothing, for backwards compatibility" (ipvsadm's help).
    Nothing,
    /// Refused as soon as it is read; the function gets the word as written.
    Refuse(fn(&str) -> UsageError),
}

/// Shorthand for the rows of [`OPTS`].
const fn opt(short: Option<char>, long: &'static str, arg: Arg, action: Action) -> OptDef {
    OptDef { short, long, arg, action }
}

use Action::{Command as C, Set};
use Arg::{None as No, Optional as Maybe, Required as Value};

/// ipvsadm 1.31's options, as its popt table has them.
const OPTS: &[OptDef] = &[
    opt(Some('A'), "add-service", No, C(Cmd::Add)),
    opt(Some('E'), "edit-service", No, C(Cmd::Edit)),
    opt(Some('D'), "delete-service", No, C(Cmd::Del)),
    opt(Some('C'), "clear", No, C(Cmd::Flush)),
    opt(Some('L'), "list", No, C(Cmd::List)),
    opt(Some('l'), "list", No, C(Cmd::List)),
    opt(Some('Z'), "zero", No, C(Cmd::Zero)),
    opt(Some('a'), "add-server", No, C(Cmd::AddDest)),
    opt(Some('e'), "edit-server", No, C(Cmd::EditDest)),
    opt(Some('d'), "delete-server", No, C(Cmd::DelDest)),
    opt(None, "set", No, C(Cmd::Timeout)),
    opt(Some('h'), "help", No, Action::Help),
    opt(Some('v'), "version", No, Action::Version),
    opt(Some('R'), "restore", No, C(Cmd::Restore)),
    opt(Some('S'), "save", No, C(Cmd::Save)),
    opt(None, "start-daemon", Value, C(Cmd::StartDaemon)),
    opt(None, "stop-daemon", Value, C(Cmd::StopDaemon)),
    opt(Some('t'), "tcp-service", Value, Action::Service(Protocol::Tcp)),
    opt(Some('u'), "udp-service", Value, Action::Service(Protocol::Udp)),
    opt(None, "sctp-service", Value, Action::Refuse(refuse_sctp)),
    opt(Some('f'), "fwmark-service", Value, Action::Fwmark),
    opt(Some('s'), "scheduler", Value, Set(Opt::Scheduler)),
    opt(Some('p'), "persistent", Maybe, Set(Opt::Persistent)),
    opt(Some('M'), "netmask", Value, Set(Opt::Netmask)),
    opt(Some('r'), "real-server", Value, Set(Opt::Server)),
    opt(Some('m'), "masquerading", No, Action::Forward(Fwd::Masq)),
    opt(Some('i'), "ipip", No, Action::Forward(Fwd::Tunnel)),
    opt(Some('g'), "gatewaying", No, Action::Forward(Fwd::Route)),
    opt(Some('w'), "weight", Value, Set(Opt::Weight)),
    opt(Some('x'), "u-threshold", Value, Set(Opt::UThreshold)),
    opt(Some('y'), "l-threshold", Value, Set(Opt::LThreshold)),
    opt(Some('b'), "sched-flags", Value, Set(Opt::SchedFlags)),
    opt(Some('n'), "numeric", No, Set(Opt::Numeric)),
    opt(Some('c'), "connection", No, Set(Opt::Connection)),
    opt(None, "mcast-interface", Value, Set(Opt::Mcast)),
    opt(None, "syncid", Value, Set(Opt::SyncId)),
    opt(None, "mcast-group", Value, Set(Opt::McastGroup)),
    opt(None, "mcast-port", Value, Set(Opt::McastPort)),
    opt(None, "mcast-ttl", Value, Set(Opt::McastTtl)),
    opt(None, "sync-maxlen", Value, Set(Opt::SyncMaxlen)),
    opt(None, "timeout", No, Set(Opt::Timeout)),
    opt(None, "daemon", No, Set(Opt::Daemon)),
    opt(None, "stats", No, Set(Opt::Stats)),
    opt(None, "rate", No, Set(Opt::Rate)),
    opt(None, "thresholds", No, Set(Opt::Thresholds)),
    opt(None, "persistent-conn", No, Set(Opt::PersistentConn)),
    opt(None, "nosort", No, Set(Opt::NoSort)),
    opt(None, "sort", No, Action::Nothing),
    opt(Some('X'), "exact", No, Set(Opt::Exact)),
    opt(Some('6'), "ipv6", No, Action::Refuse(refuse_ipv6)),
    opt(Some('o'), "ops", No, Set(Opt::Ops)),
    opt(None, "pe", Value, Action::Refuse(refuse_pe)),
    opt(None, "tun-info", No, Action::Refuse(refuse_tun_info)),
    opt(None, "tun-type", Value, Action::Refuse(refuse_tunnel)),
    opt(None, "tun-port", Value, Action::Refuse(refuse_tunnel)),
    opt(None, "tun-nocsum", No, Action::Refuse(refuse_tunnel)),
    opt(None, "tun-csum", No, Action::Refuse(refuse_tunnel)),
    opt(None, "tun-remcsum", No, Action::Refuse(refuse_tunnel)),
];

fn refuse_sctp(_word: &str) -> UsageError {
    UsageError::new("SCTP services are not supported by nfvs").hint("nfvs balances TCP services (-t)")
}

fn refuse_ipv6(word: &str) -> UsageError {
    UsageError::new("IPv6 services are not supported by nfvs").hint(format!("'{}': nfvs balances IPv4 TCP services", super::shorten(word)))
}

/// The option of `--name=value` as written.
fn option_of(word: &str) -> &str {
    word.split_once('=').map_or(word, |(o, _)| o)
}

fn refuse_pe(word: &str) -> UsageError {
    UsageError::new(format!("persistence engines ({}) are not supported by nfvs", super::shorten(option_of(word))))
        .hint("nfvs's persistence is by client address (-p, -M); IPVS's one engine, sip, is for UDP")
}

/// `--tun-*`: the options of `-i`, refused as `-i` is.
fn refuse_tunnel(word: &str) -> UsageError {
    UsageError::new(format!("tunnelling ({}) is not supported by nfvs", super::shorten(option_of(word))))
        .hint("nfvs does LVS NAT mode only: use -m")
}

fn refuse_tun_info(word: &str) -> UsageError {
    UsageError::new(format!("tunnel information ({}) is not supported by nfvs", super::shorten(word)))
        .hint("nfvs has no tunnels: every real server is NAT (Masq), as -L shows")
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
                UsageError::unparseable(format!("{}: unknown option", super::shorten(w)))
                    .hint("see `nfvs adm --help` for the options nfvs understands")
            })?;
            let value = take_value(def, inline, &words, &mut i, w)?;
            raw.apply(def.action, value, w)?;
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
                raw.apply(def.action, value, w)?;
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
                return Err(UsageError::unparseable(format!("{}: option does not take an argument", super::shorten(word))));
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
                None => Err(UsageError::unparseable(format!("{}: missing argument", super::shorten(word)))),
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
    /// Whether `opt` was given.
    pub(super) fn has(&self, opt: Opt) -> bool {
        self.options & opt.bit() != 0
    }

    /// The value `opt` was given with, if any.
    pub(super) fn value(&self, opt: Opt) -> Option<&str> {
        self.values[opt as usize].as_deref()
    }

    /// The options given, as [`Opt::bit`]s.
    pub(super) fn options(&self) -> u32 {
        self.options
    }

    /// The listing format the options select.
    pub(super) fn format(&self) -> ListFormat {
        ListFormat {
            numeric: self.has(Opt::Numeric),
            stats: self.has(Opt::Stats),
            rate: self.has(Opt::Rate),
            thresholds: self.has(Opt::Thresholds),
            persistent_conn: self.has(Opt::PersistentConn),
            nosort: self.has(Opt::NoSort),
            exact: self.has(Opt::Exact),
        }
    }

    fn set_command(&mut self, cmd: Cmd) -> Result<(), UsageError> {
        if self.cmd.is_some() {
            return Err(UsageError::new("multiple commands specified"));
        }
        self.cmd = Some(cmd);
        Ok(())
    }

    fn set_option(&mut self, opt: Opt) -> Result<(), UsageError> {
        if self.has(opt) {
            return Err(UsageError::new(format!("multiple '{}' options specified", opt.name())));
        }
        self.options |= opt.bit();
        Ok(())
    }

    /// Does what reading one option does; `word` is the option as written.
    fn apply(&mut self, action: Action, value: Option<String>, word: &str) -> Result<(), UsageError> {
        match action {
            Action::Command(cmd) => self.set_command(cmd)?,
            Action::Help => self.help = true,
            Action::Version => self.version = true,
            Action::Service(proto) => {
                self.set_option(Opt::Service)?;
                self.service = Some((proto, value.unwrap_or_default()));
            }
            Action::Fwmark => {
                self.set_option(Opt::Service)?;
                self.fwmark = Some(value.unwrap_or_default());
            }
            Action::Forward(fwd) => {
                self.set_option(Opt::Forward)?;
                self.fwd = Some(fwd);
            }
            Action::Set(opt) => {
                self.set_option(opt)?;
                self.values[opt as usize] = value;
            }
            Action::Nothing => {}
            Action::Refuse(refusal) => return Err(refusal(word)),
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
    use crate::adm::command::ListWhat;

    /// A name in the table twice would leave its second row dead (ipvsadm has `--list` twice,
    /// for `-L` and `-l`, both the same command).
    #[test]
    fn each_option_is_spelled_once() {
        for (i, d) in OPTS.iter().enumerate() {
            for e in &OPTS[i + 1..] {
                assert!(d.short.is_none() || d.short != e.short, "-{:?} twice", d.short);
                assert!(d.long != e.long || d.long == "list", "--{} twice", d.long);
            }
        }
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
    fn port_names_from_etc_services() {
        if std::path::Path::new("/etc/services").exists() {
            match parse_line("-A -t 1.2.3.4:http -s rr").unwrap() {
                Command::AddService(s) => assert_eq!(s.key.port, 80),
                c => panic!("{c:?}"),
            }
        }
    }

    /// Issue 10: what nfvs's own help marks "not supported by nfvs" is refused as such, like
    /// its siblings, and not as an unknown option; the words after it still parse as ipvsadm
    /// parses them (which of these options take a value is ipvsadm 1.31's popt table).
    #[test]
    fn unsupported_options_are_refused_as_such() {
        let refused = |line: &str, message: &str| {
            let e = parse_line(line).unwrap_err();
            assert_eq!((e.message.as_str(), e.exit_code), (message, 2), "{line}");
            assert!(e.hint.is_some(), "{line}: no advice");
        };
        let dest = "-a -t 1.2.3.4:80 -r 5.6.7.8:80";
        refused("-A -t 1.2.3.4:80 -s rr --pe sip", "persistence engines (--pe) are not supported by nfvs");
        refused("-A -t 1.2.3.4:80 --pe=sip -s rr", "persistence engines (--pe) are not supported by nfvs");
        for (opt, value) in
            [("--tun-type", " gue"), ("--tun-port", " 6080"), ("--tun-nocsum", ""), ("--tun-csum", ""), ("--tun-remcsum", "")]
        {
            let message = format!("tunnelling ({opt}) is not supported by nfvs");
            refused(&format!("{dest} -i {opt}{value}"), &message);
            refused(&format!("{dest} {opt}{value} -i"), &message);
            refused(&format!("{dest} -m {opt}{value} -w 2"), &message);
        }
        refused(&format!("{dest} -m --tun-port=6080"), "tunnelling (--tun-port) is not supported by nfvs");
        refused("-L -n --tun-info", "tunnel information (--tun-info) is not supported by nfvs");
        // The sync daemon's options parse as ipvsadm's (each takes a value) and belong to
        // --start-daemon, which the daemon refuses as it refuses --mcast-interface and --syncid.
        let start = "--start-daemon master --mcast-interface eth0 --syncid 3 --mcast-group 224.0.0.81 \
            --mcast-port 8848 --mcast-ttl 1 --sync-maxlen 1472";
        assert_eq!(parse_line(start), Ok(Command::StartDaemon));
        for opt in ["mcast-group", "mcast-port", "mcast-ttl", "sync-maxlen"] {
            let e = parse_line(&format!("-L --{opt} 1")).unwrap_err();
            let want = format!("Illegal '{opt}' option with the 'list' command");
            assert_eq!((e.message.as_str(), e.exit_code), (want.as_str(), 2));
            let e = parse_line(&format!("--start-daemon master --{opt} 1 --{opt} 2")).unwrap_err();
            assert_eq!(e.message, format!("multiple '{opt}' options specified"));
        }
    }
}
