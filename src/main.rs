//! nfvs: thin entry point. Parse the command line, start logging, run, and print any error
//! once, as one line, with a non-zero exit status. Invoked as `ipvsadm` (a symlink), it is
//! `nfvs adm`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use nfvs::adm::command::{Command as AdmCommand, UsageError};
use nfvs::adm::etc_services::PortNames;
use nfvs::adm::{addresses, args, control, listing, rules, usage};
use nfvs::cli::{self, Cli, Command};
use nfvs::daemon;
use nfvs::sched::SchedOptions;
use nfvs::service::Table;

fn main() -> ExitCode {
    let mut argv = std::env::args();
    let argv0 = argv.next().unwrap_or_default();
    if Path::new(&argv0).file_name().is_some_and(|n| n == "ipvsadm") {
        return adm("ipvsadm", None, argv.collect());
    }
    let cli = Cli::parse();
    nfvs::logging::init("info,mnl=info");
    let result = run(cli);
    // The log's writer thread ends with the process: what it still holds goes out first, and
    // before the error line, which would otherwise overtake it.
    nfvs::logging::flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nfvs: error: {}", cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            rules,
            net,
            control,
            expire_nodest,
            state_dir,
            drain_timeout,
            overhead,
            sched_seed,
            sched_index,
            pin_workers,
            queue_maxlen,
            half_open_timeout,
        } => {
            daemon::run(daemon::RunOptions {
                rules,
                masquerade: net.masquerade,
                queue: net.queue,
                queues: net.queues,
                state_dir,
                control: control.unwrap_or_else(control::default_path),
                ct_mark: net.ct_mark,
                overload: net.overload.into(),
                drain_timeout: std::time::Duration::from_secs(drain_timeout),
                expire_nodest,
                pin_workers,
                queue_maxlen,
                half_open_timeout,
                sched: nfvs::sched::SchedOptions {
                    overhead: overhead.into(),
                    seed: sched_seed,
                    incremental: sched_index,
                    ..Default::default()
                },
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules { table } => {
            let t = read_rules(&table.rules)?;
            let rs = nfvs::ruleset::for_table(&t, &table.net.masquerade, table.net.queue, table.net.queues, table.net.overload.into(), table.net.ct_mark);
            rs.validate()?;
            print!("{}", rs.render());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { rules } => {
            let t = read_rules(&rules)?;
            let rs = nfvs::ruleset::for_table(&t, &[], 0, 1, nfvs::ruleset::Overload::Drop, nfvs::ruleset::DEFAULT_CT_MARK);
            rs.validate()?;
            print!("{}", listing::save(&t, true, &PortNames::none()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Adm { control, args } => Ok(adm("nfvs adm", control, args)),
    }
}

/// A rules file for `nfvs check` and `nfvs rules`, its warnings printed on stderr.
fn read_rules(path: &Path) -> anyhow::Result<Table> {
    let r = rules::read_rules(path, SchedOptions::default())?;
    for w in &r.warnings {
        eprintln!("nfvs: warning: {w}");
    }
    Ok(r.table)
}

/// `nfvs adm ARGS` / `ipvsadm ARGS` (`program` says which): help, version and usage errors are
/// answered here, as ipvsadm answers them without the kernel; everything else goes to the
/// daemon.
fn adm(program: &str, control: Option<PathBuf>, args: Vec<String>) -> ExitCode {
    let exit = |code: i32| ExitCode::from(code.clamp(0, 255) as u8);
    let usage_error = |e: UsageError| {
        eprintln!("{}", e.message);
        if let Some(h) = &e.hint {
            eprintln!("  nfvs: {h}");
        }
        exit(e.exit_code)
    };
    let (control, args) = match cli::adm_control(control, args) {
        Ok(split) => split,
        Err(e) => return usage_error(e),
    };
    let cmd = match args::parse_args(&args).and_then(|r| r.validate()) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    match cmd {
        AdmCommand::Help => {
            print!("{}", usage::usage(program));
            return ExitCode::SUCCESS;
        }
        AdmCommand::Version => {
            print!("{}", usage::version());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut stdin = String::new();
    if cmd == AdmCommand::Restore {
        if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
            eprintln!("reading standard input: {e}");
            return exit(255);
        }
    }
    // What IPVS would take but cannot work is said once the daemon has taken it.
    let warnings = match &cmd {
        AdmCommand::Restore => addresses::restore_warnings(&stdin, "stdin"),
        edit => addresses::warnings(edit),
    };
    let path = control.unwrap_or_else(control::default_path);
    match control::call(&path, &control::Request { args, stdin }) {
        Ok(r) => {
            let _ = std::io::stdout().write_all(r.stdout.as_bytes());
            let _ = std::io::stderr().write_all(r.stderr.as_bytes());
            if r.code == 0 {
                for w in &warnings {
                    eprintln!("nfvs: warning: {w}");
                }
            }
            exit(r.code)
        }
        Err(e) => {
            eprintln!("{e}");
            exit(255)
        }
    }
}
