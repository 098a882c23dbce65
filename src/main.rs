//! nfvs: thin entry point. Parse the command line, start logging, run, and print any error
//! once, as one line, with a non-zero exit status.

use std::process::ExitCode;

use clap::Parser;
use nfvs::cli::{Cli, Command};
use nfvs::{config, daemon, ruleset};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nfvs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { table, state_dir, ct_mark, fail_open, drain_timeout } => daemon::run(daemon::RunOptions {
            rules: table.rules,
            masquerade: table.masquerade,
            queue: table.queue,
            state_dir,
            ct_mark,
            fail_open,
            drain_timeout: std::time::Duration::from_secs(drain_timeout),
        }),
        Command::Rules { table } => {
            let t = config::load_rules(&table.rules)?;
            let rs = daemon::ruleset_for(&t, &table.masquerade, table.queue)?;
            print!("{}", rs.render());
            Ok(())
        }
        Command::Check { rules } => {
            let t = config::load_rules(&rules)?;
            for s in t.services() {
                println!("{} -s {}", s.key(), s.scheduler_name());
                for d in &s.dests {
                    println!("  -> {}:{} weight {}", d.addr, d.port, d.weight);
                }
            }
            let _ = ruleset::TABLE;
            Ok(())
        }
    }
}
