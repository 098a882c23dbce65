//! The `control` thread's requests: `nfvs adm` / `ipvsadm` commands against the running
//! engine, answered as ipvsadm answers.

use std::net::SocketAddr;

use super::{ticker, Shared};
use crate::adm::command::{self, Command, ListFormat, ListWhat, UsageError};
use crate::adm::etc_services::PortNames;
use crate::adm::listing::{self, ConnRow};
use crate::adm::{args, rules, usage};
use crate::engine::EditEffects;
use crate::events::{EditSource, Event};
use crate::kernel::conntrack::Conntrack;
use crate::kernel::os;
use crate::model::TcpState;

pub(super) use crate::adm::control::Server;
use crate::adm::control::{Reply, Request};

/// ipvsadm's exit status for kernel-side errors.
const KERNEL_ERR: i32 = 255;

pub(super) fn handle(sh: &Shared, req: Request) -> Reply {
    let cmd = match args::parse_args(&req.args).and_then(|r| r.validate()) {
        Ok(c) => c,
        Err(e) => return usage_reply(&e),
    };
    match &cmd {
        Command::Help => Reply::ok(usage::usage("ipvsadm")),
        Command::Version => Reply::ok(usage::version()),
        Command::List(what, fmt) => list(sh, what, fmt),
        Command::Save { numeric } => Reply::ok(listing::save(&sh.lock().table, *numeric, &PortNames::system())),
        Command::Zero(k) => {
            let mut engine = sh.lock();
            if k.as_ref().is_some_and(|k| engine.table.find(k).is_none()) {
                return Reply::err(KERNEL_ERR, "No such service");
            }
            engine.stats.zero(k.as_ref());
            Reply::ok("")
        }
        Command::Restore => restore(sh, &req.stdin),
        Command::SetTimeouts { .. } => Reply::err(
            KERNEL_ERR,
            "--set is not supported by nfvs: connection timeouts are conntrack's \
             (sysctl net.netfilter.nf_conntrack_tcp_timeout_established, ..._fin_wait, nf_conntrack_udp_timeout_stream)",
        ),
        Command::StartDaemon | Command::StopDaemon => {
            Reply::err(KERNEL_ERR, "the connection sync daemon is not supported by nfvs")
        }
        edit => edits(sh, std::slice::from_ref(edit)),
    }
}

fn list(sh: &Shared, what: &ListWhat, fmt: &ListFormat) -> Reply {
    let names = PortNames::system();
    if matches!(what, ListWhat::All | ListWhat::Service(_)) && (fmt.stats || fmt.rate) {
        // Fresh traffic numbers for this listing.
        if let Ok(mut ct) = Conntrack::open() {
            ticker::sample_traffic(sh, &mut ct, true);
        }
    }
    match what {
        ListWhat::All => {
            let engine = sh.lock();
            Reply::ok(listing::list(&engine.table, None, fmt, &engine.stats, &names).unwrap_or_default())
        }
        ListWhat::Service(k) => {
            let engine = sh.lock();
            match listing::list(&engine.table, Some(k), fmt, &engine.stats, &names) {
                Ok(s) => Reply::ok(s),
                Err(e) => Reply::err(1, e.to_string()),
            }
        }
        ListWhat::Connections => list_connections(sh, fmt, &names),
        ListWhat::Timeouts => Reply::ok(listing::timeouts(
            os::netfilter_sysctl("nf_conntrack_tcp_timeout_established"),
            os::netfilter_sysctl("nf_conntrack_tcp_timeout_fin_wait"),
            os::netfilter_sysctl("nf_conntrack_udp_timeout_stream"),
        )),
        // No sync daemon: ipvsadm prints nothing when none runs.
        ListWhat::Daemon => Reply::ok(""),
    }
}

/// `-R`, as ipvsadm does it: line by line, stopping at the first failure with the lines before
/// it applied. The edits share one lock and one table install at the end.
fn restore(sh: &Shared, stdin: &str) -> Reply {
    let mut cmds = Vec::new();
    // As in a rules file: a byte order mark and `#` comments are not part of the lines.
    let stdin = stdin.strip_prefix('\u{feff}').unwrap_or(stdin);
    for line in stdin.lines().map(rules::strip_comment).filter(|l| !l.trim().is_empty()) {
        match args::parse_line(line) {
            Ok(c) if c.is_edit() => cmds.push(c),
            Ok(_) => {
                let r = Reply::err(2, format!("{}: -R takes table edits only (-A -E -D -C -a -e -d)", crate::adm::shorten(line)));
                return edits_then(sh, &cmds, r);
            }
            Err(e) => return edits_then(sh, &cmds, usage_reply(&e)),
        }
    }
    edits(sh, &cmds)
}

/// Applies `cmds` (up to the first that fails), then `after` unless one failed.
fn edits_then(sh: &Shared, cmds: &[Command], after: Reply) -> Reply {
    let r = edits(sh, cmds);
    if r.code != 0 {
        r
    } else {
        after
    }
}

/// Table edits from `nfvs adm`, each logged; ipvsadm's message and status for the first one
/// refused (the ones before it stay applied, as with ipvsadm).
fn edits(sh: &Shared, cmds: &[Command]) -> Reply {
    let ((applied, reply), installed) = sh.edit(|engine| {
        let mut fx = EditEffects::default();
        for (n, c) in cmds.iter().enumerate() {
            match engine.apply_edit(c) {
                Ok(f) => fx.expire.extend(f.expire),
                Err(e) => {
                    let mut msg = command::edit_message(c, &e);
                    if let Some(h) = command::edit_hint(&e) {
                        msg.push_str(&format!("\n  nfvs: {h}"));
                    }
                    return ((&cmds[..n], Reply::err(KERNEL_ERR, msg)), fx);
                }
            }
        }
        ((cmds, Reply::ok("")), fx)
    });
    for c in applied {
        Event::Edit { source: EditSource::Adm, what: &describe(c) }.emit();
    }
    match installed {
        Err(e) => Reply::err(KERNEL_ERR, format!("table updated but the nft rules were not: {e:#}")),
        Ok(()) => reply,
    }
}

/// A usage error as ipvsadm prints it, with nfvs's hint on a line of its own.
fn usage_reply(e: &UsageError) -> Reply {
    let mut msg = e.message.clone();
    if let Some(h) = &e.hint {
        msg.push_str(&format!("\n  nfvs: {h}"));
    }
    Reply::err(e.exit_code, msg)
}

/// What a table edit did, for the log.
pub(super) fn describe(cmd: &Command) -> String {
    match cmd {
        Command::AddService(s) => format!("added service {} sched={}", s.key, s.sched_name),
        Command::EditService(s) => format!("edited service {} sched={}", s.key, s.sched_name),
        Command::DelService(k) => format!("deleted service {k}"),
        Command::Clear => "cleared all services".into(),
        Command::AddDest(k, d) => format!("added real server {}:{} weight {} to {k}", d.addr, d.port, d.weight),
        Command::EditDest(k, d) => format!("edited real server {}:{} weight {} of {k}", d.addr, d.port, d.weight),
        Command::DelDest(k, a, p) => format!("deleted real server {a}:{p} of {k}"),
        other => format!("{other:?}"),
    }
}

fn list_connections(sh: &Shared, fmt: &ListFormat, names: &PortNames) -> Reply {
    let entries = match Conntrack::open().and_then(|mut c| c.dump(sh.opts.ct_mark, u32::MAX)) {
        Ok(e) => e,
        Err(e) => return Reply::err(KERNEL_ERR, format!("cannot read conntrack: {e}")),
    };
    let v4 = |a: SocketAddr| match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    };
    let mut rows: Vec<ConnRow> = entries
        .iter()
        .filter_map(|e| {
            Some(ConnRow {
                proto: e.orig.proto,
                expire_secs: e.timeout.unwrap_or(0),
                state: match e.tcp_state {
                    Some(s) => tcp_state_name(s).to_string(),
                    None => "UDP".to_string(),
                },
                client: v4(e.orig.client())?,
                vip: v4(e.orig.server())?,
                rs: v4(e.reply.client())?,
            })
        })
        .collect();
    // Persistence templates are rows too, as in IPVS; their timers first catch up with now, as
    // the ticker's sweep would have them.
    {
        let mut engine = sh.lock();
        let now = sh.now();
        engine.table.expire_templates(now);
        rows.extend(listing::template_rows(&engine.table, now));
    }
    Reply::ok(listing::connections(&rows, fmt, names))
}

/// IPVS's state names for conntrack's TCP states (NONE before the SYN has passed is shown as
/// SYN_RECV, the state IPVS is in at that point).
fn tcp_state_name(s: TcpState) -> &'static str {
    match s {
        TcpState::None | TcpState::SynRecv => "SYN_RECV",
        TcpState::SynSent | TcpState::SynSent2 => "SYN_SENT",
        TcpState::Established => "ESTABLISHED",
        TcpState::FinWait => "FIN_WAIT",
        TcpState::CloseWait => "CLOSE_WAIT",
        TcpState::LastAck => "LAST_ACK",
        TcpState::TimeWait => "TIME_WAIT",
        TcpState::Close => "CLOSE",
    }
}
