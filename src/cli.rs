//! The command line: `nfvs run`, `nfvs rules`, `nfvs check`, `nfvs adm`; and the one line an
//! error is printed as.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::adm::command::UsageError;
use crate::ruleset::Cidr;

#[derive(Debug, Parser)]
#[command(
    name = "nfvs",
    version,
    about = "LVS NAT mode in userspace: NFQUEUE + conntrack DNAT, with IPVS's schedulers",
    long_about = "nfvs balances TCP connections to virtual services (VIP:port) over real servers, \
as LVS NAT mode does, without the IPVS kernel module. An nftables rule in nfvs's own table \
(`ip nfvs`) sends each new connection's SYN to NFQUEUE; nfvs picks a real server with the \
service's scheduler, creates a conntrack entry with DNAT to it, and lets the kernel handle the \
rest of the flow. Services are written as ipvsadm commands, in the form `ipvsadm -S -n` prints.",
    after_help = "Example (the seed lab):\n  \
nfvs run --rules rules/lab.rules --masquerade 192.168.226.0/24\n\n\
rules/lab.rules:\n  \
-A -t 192.168.199.200:80 -s wrr\n  \
-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\n  \
-a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct TableArgs {
    /// ipvsadm commands, one per line, as `ipvsadm -S -n` prints them (`-A -t VIP:PORT -s
    /// SCHED`, `-a -t VIP:PORT -r RIP:PORT -m -w W`); `#` starts a comment.
    #[arg(long, value_name = "FILE")]
    pub rules: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, clap::Args)]
pub struct NetArgs {
    /// Add a MASQUERADE rule for traffic from this source network (the real servers' subnet,
    /// as the seed's `iptables -t nat -A POSTROUTING -s CIDR -j MASQUERADE`). Repeatable.
    #[arg(long, value_name = "CIDR")]
    pub masquerade: Vec<Cidr>,
    /// NFQUEUE number the divert rule sends SYNs to.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub queue: u16,
    /// Spread SYNs over this many queues (N, N+1, ...) by CPU (the queue's fanout flag), with
    /// one worker thread per queue: 1 to 64, or `auto` for one per online CPU (at most 64),
    /// which is what `--pin-workers` wants.
    #[arg(long, value_name = "COUNT|auto", default_value = "1", value_parser = parse_queues)]
    pub queues: u16,
    /// What happens to new connections the daemon cannot take (SYNs beyond what its queue
    /// holds, and every SYN while no daemon runs): `drop` — the kernel drops them and
    /// clients retry after about a second, so every connection is a scheduler decision;
    /// `fallback` — a static kernel rule in table ip nfvs balances them by weight (no
    /// scheduler, no counters), so nothing is refused even while nfvs restarts.
    #[arg(long, value_enum, default_value_t = OverloadArg::Drop)]
    pub overload: OverloadArg,
    /// Conntrack mark put on the entries nfvs creates (to find them in dumps and events, and
    /// in the `events` chain's rules). Change it where a firewall uses ct marks itself.
    #[arg(long, value_name = "MARK", default_value = "0x6e667673", value_parser = parse_u32)]
    pub ct_mark: u32,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the director in the foreground until SIGINT/SIGTERM.
    ///
    /// Installs table `ip nfvs` (replacing one left by a crash; nothing else is touched), sets
    /// ip_forward=1 and send_redirects=0 (restored on exit, even after a crash and restart),
    /// and logs one line per new-connection decision. RUST_LOG=debug shows more.
    Run {
        /// ipvsadm commands, one per line, as `ipvsadm -S -n` prints them; re-read on SIGHUP
        /// (only the differences are applied). Without it nfvs starts with no services and
        /// waits for `nfvs adm` / `ipvsadm` commands.
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        #[command(flatten)]
        net: NetArgs,
        /// The control socket `nfvs adm` and `ipvsadm` talk to [default:
        /// /run/nfvs/control-netns-<inode of this network namespace>.sock].
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Deleting a real server deletes its connections at once, like IPVS's
        /// expire_nodest_conn; by default they finish undisturbed (the server drains).
        #[arg(long)]
        expire_nodest: bool,
        /// Where the sysctl values nfvs replaced are kept until its clean stop.
        #[arg(long, value_name = "DIR", default_value = crate::kernel::sysctl::STATE_DIR)]
        state_dir: PathBuf,
        /// On SIGTERM/SIGINT, stop balancing new connections at once but wait up to this many
        /// seconds for running ones to finish before removing the table and restoring the
        /// sysctls (which cuts whatever still runs). 0 stops at once. A second signal stops at
        /// once too.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        drain_timeout: u64,
        /// Connection "overhead" used by lc, wlc, lblc, lblcr and twos: `classic` is
        /// 256*active+inactive (every kernel up to the 2026 stable updates), `total` is
        /// 256*active+(active+inactive) (2026 stable kernels).
        #[arg(long, value_enum, default_value_t = OverheadArg::Classic)]
        overhead: OverheadArg,
        /// Seed of the random draws of the twos scheduler (fixed for reproducible tests).
        #[arg(long, value_name = "N", default_value_t = 0)]
        sched_seed: u64,
        /// Let lc, wlc, sed, nq, fo, ovf, twos, lblc and lblcr answer from an index updated on
        /// every counter change instead of scanning all real servers per connection: same
        /// decisions, O(1) per pick; worth it from a few hundred real servers per service.
        #[arg(long)]
        sched_index: bool,
        /// Pin each queue's worker thread to the CPUs whose SYNs the queue fanout sends it
        /// (CPU c feeds queue c mod COUNT), so a SYN is handled on the CPU it arrived on: no
        /// cross-CPU wakeup per connection. Use with `--queues auto` (a queue per CPU).
        #[arg(long)]
        pin_workers: bool,
        /// SYNs each queue holds while its worker is busy; beyond that the kernel drops them
        /// (counted and logged; clients retry after about a second), or with `--overload
        /// fallback` hands them to the kernel rule. Each waiting SYN takes about 1 KiB of the
        /// queue socket's receive buffer, which is sized to match.
        #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
        queue_maxlen: u32,
        /// How long a connection may stay half-open (its SYN sent, the handshake not done)
        /// before conntrack forgets it: sets net.netfilter.nf_conntrack_tcp_timeout_syn_sent
        /// and _syn_recv in the namespace (120 and 60 by default; restored on stop). A real
        /// handshake takes milliseconds, and a client's retransmitted SYN renews the entry;
        /// a spoofed SYN flood's entries are gone this long after it ends instead of filling
        /// the table for minutes. 0 leaves both sysctls alone.
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        half_open_timeout: u32,
    },
    /// Print the nftables table `run` would install, as `nft -f` text.
    Rules {
        #[command(flatten)]
        table: TableArgs,
    },
    /// Check a rules file and print the services it defines; changes nothing.
    Check {
        /// The rules file to check.
        #[arg(long, value_name = "FILE")]
        rules: PathBuf,
    },
    /// Talk to the running daemon in ipvsadm's language: `nfvs adm -L -n`, `nfvs adm -a -t
    /// VIP:80 -r RIP:80 -m -w 2`, `nfvs adm -S -n`, `nfvs adm -R < saved`.
    ///
    /// Output and exit status are ipvsadm's. A symlink named `ipvsadm` to the nfvs binary
    /// behaves as `nfvs adm`, so existing scripts run unchanged. `nfvs adm -h` lists every
    /// command and option.
    // `-h`/`--help` are ipvsadm's words here (its help), not clap's: `nfvs help adm` prints this.
    #[command(disable_help_flag = true)]
    Adm {
        /// The daemon's control socket [default: the one of this network namespace]; may
        /// also come after the ipvsadm arguments.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// ipvsadm arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "IPVSADM ARGS")]
        args: Vec<String>,
    },
}

/// `--overload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OverloadArg {
    Drop,
    Fallback,
}

impl From<OverloadArg> for crate::ruleset::Overload {
    fn from(o: OverloadArg) -> Self {
        match o {
            OverloadArg::Drop => crate::ruleset::Overload::Drop,
            OverloadArg::Fallback => crate::ruleset::Overload::Fallback,
        }
    }
}

/// `--overhead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OverheadArg {
    Classic,
    Total,
}

impl From<OverheadArg> for crate::sched::Overhead {
    fn from(o: OverheadArg) -> Self {
        match o {
            OverheadArg::Classic => crate::sched::Overhead::Classic,
            OverheadArg::Total => crate::sched::Overhead::Total,
        }
    }
}

/// Most queues `--queues` takes (and `auto` gives).
const MAX_QUEUES: u16 = 64;

fn parse_queues(s: &str) -> Result<u16, String> {
    if s == "auto" {
        return Ok(online_cpus().clamp(1, usize::from(MAX_QUEUES)) as u16);
    }
    match s.parse::<u16>() {
        Ok(n) if (1..=MAX_QUEUES).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a queue count: give 1 to {MAX_QUEUES}, or `auto` for one per online CPU")),
    }
}

/// CPUs online: with the queue's fanout flag, a SYN processed on CPU c goes to queue
/// c mod COUNT, so one queue per online CPU gives every CPU its own.
fn online_cpus() -> usize {
    // SAFETY: sysconf takes no pointers.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("'{s}' is not a 32-bit number (decimal or 0x-hex)"))
}

/// `nfvs adm`'s own option among the ipvsadm words: `--control PATH` or `--control=PATH` may
/// come anywhere, but clap only finds it before the first ipvsadm word (the rest is
/// `trailing_var_arg`). Returns the socket path, from clap (`control`) or from `args`, and the
/// ipvsadm words without it; the errors are worded as ipvsadm words its own.
pub fn adm_control(control: Option<PathBuf>, args: Vec<String>) -> Result<(Option<PathBuf>, Vec<String>), UsageError> {
    let mut found = control;
    let mut rest = Vec::with_capacity(args.len());
    let mut words = args.into_iter();
    while let Some(w) = words.next() {
        let path = if w == "--control" {
            words.next().ok_or_else(|| UsageError::unparseable("--control: missing argument"))?
        } else if let Some(p) = w.strip_prefix("--control=") {
            p.to_string()
        } else {
            rest.push(w);
            continue;
        };
        if found.replace(PathBuf::from(path)).is_some() {
            return Err(UsageError::new("multiple 'control' options specified"));
        }
    }
    Ok((found, rest))
}

/// The one line `nfvs` prints for an error: it and its causes joined with ": ", as `{:#}`
/// joins them, except that a cause whose text the line already holds is not repeated. Errors
/// that write their source into their own message and also return it as `source()` would
/// otherwise show it twice ("bind NFQUEUE 0: Operation not permitted (os error 1) (...):
/// Operation not permitted (os error 1)").
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_takes_a_count_or_auto() {
        assert_eq!(parse_queues("1"), Ok(1));
        assert_eq!(parse_queues("64"), Ok(64));
        let auto = parse_queues("auto").unwrap();
        assert!((1..=MAX_QUEUES).contains(&auto), "{auto}");
        assert_eq!(usize::from(auto), online_cpus().min(64));
        for bad in ["0", "65", "-1", "two", "", "AUTO"] {
            let e = parse_queues(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")) && e.contains("auto"), "{e}");
        }
    }

    #[test]
    fn queues_auto_through_the_command_line() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["nfvs", "rules", "--rules", "x.rules", "--queues", "auto"]).unwrap();
        let Command::Rules { table } = cli.command else { panic!("not rules") };
        assert_eq!(usize::from(table.net.queues), online_cpus().min(64));
        let e = Cli::try_parse_from(["nfvs", "rules", "--rules", "x.rules", "--queues", "0"]).unwrap_err();
        assert!(e.to_string().contains("give 1 to 64, or `auto`"), "{e}");
    }

    /// `nfvs adm -h` is ipvsadm's `-h` (the README promises ipvsadm's option list), not clap's
    /// help of `nfvs adm` itself; `nfvs help adm` still describes the subcommand.
    #[test]
    fn adm_leaves_help_to_ipvsadm() {
        use clap::{CommandFactory, Parser};
        for h in ["-h", "--help"] {
            let cli = Cli::try_parse_from(["nfvs", "adm", h]).unwrap_or_else(|e| panic!("nfvs adm {h}: {e}"));
            let Command::Adm { args, .. } = cli.command else { panic!("not adm") };
            assert_eq!(args, [h]);
        }
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("adm").unwrap().render_long_help().to_string();
        assert!(help.contains("--control <PATH>") && help.contains("`nfvs adm -h`"), "{help}");
        let top = Cli::command().render_long_help().to_string();
        assert!(top.contains("adm") && top.contains("ipvsadm's language"), "{top}");
    }

    /// `--control` may come anywhere among `nfvs adm`'s words, as `--control PATH` or
    /// `--control=PATH`; clap sees it only before the first ipvsadm word.
    #[test]
    fn adm_control_anywhere() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let split = |clap: Option<&str>, w: &[&str]| adm_control(clap.map(PathBuf::from), words(w));
        let want = |p: &str, w: &[&str]| Ok((Some(PathBuf::from(p)), words(w)));
        assert_eq!(split(None, &["-L", "-n", "--control", "/s"]), want("/s", &["-L", "-n"]));
        assert_eq!(split(None, &["-L", "--control=/s", "-n"]), want("/s", &["-L", "-n"]));
        assert_eq!(split(Some("/s"), &["-S", "-n"]), want("/s", &["-S", "-n"]));
        assert_eq!(split(None, &["-S"]), Ok((None, words(&["-S"]))));
        let e = split(None, &["-L", "--control"]).unwrap_err();
        assert_eq!((e.message.as_str(), e.exit_code), ("--control: missing argument", 255));
        let e = split(Some("/a"), &["-L", "--control", "/b"]).unwrap_err();
        assert_eq!((e.message.as_str(), e.exit_code), ("multiple 'control' options specified", 2));
        // Through clap, before and after the ipvsadm words.
        use clap::Parser;
        for argv in [["nfvs", "adm", "--control", "/s", "-L", "-n"], ["nfvs", "adm", "-L", "-n", "--control", "/s"]] {
            let Command::Adm { control, args } = Cli::try_parse_from(argv).unwrap().command else { panic!("not adm") };
            assert_eq!(adm_control(control, args), want("/s", &["-L", "-n"]), "{argv:?}");
        }
    }

    /// Issue 10: an OS error is printed once, also where an error type writes its source into
    /// its own message and returns it as its source too (the second daemon in a namespace
    /// fails to bind the queue the first holds).
    #[test]
    fn error_line_says_each_cause_once() {
        use crate::kernel::nfqueue::QueueError;
        let bind = QueueError::Bind { queue: 0, source: std::io::Error::from_raw_os_error(libc::EPERM) };
        let e = anyhow::Error::from(bind).context("starting");
        assert_eq!(
            error_line(&e),
            "starting: bind NFQUEUE 0: Operation not permitted (os error 1) \
             (is another program bound to queue 0? choose another with --queue)"
        );
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOENT)).context("control socket /x");
        assert_eq!(error_line(&e), "control socket /x: No such file or directory (os error 2)");
    }
}
