//! The `signals` thread: SIGHUP re-reads the rules file; SIGTERM/SIGINT stop, after a drain.

use std::time::{Duration, Instant};

use anyhow::bail;
use log::{info, warn};

use super::Shared;
use crate::adm::{command, rules};
use crate::engine::EditEffects;
use crate::events::{EditSource, Event};
use crate::kernel::conntrack::Conntrack;
use crate::kernel::nftables;
use crate::kernel::os::Signals;
use crate::model::TcpState;
use crate::ruleset::Ruleset;
use crate::service::Table;

pub(super) fn run(sh: &Shared, signals: Signals) {
    loop {
        let sig = signals.wait();
        if sig == libc::SIGHUP {
            match reload(sh) {
                Ok(n) => info!("SIGHUP: reloaded the rules file ({n} change(s))"),
                Err(e) => warn!("SIGHUP: reload refused, table unchanged: {e:#}"),
            }
            super::forward::check_on_reload(sh);
            continue;
        }
        crate::events::flush_repeats(true);
        info!("signal {sig}: stopping; {}", sh.loop_stats.summary());
        stop(sh, &signals);
    }
}

/// Re-reads the rules file and applies only the difference: untouched services keep their
/// scheduler state and counters; running connections are never cut. Each change is logged,
/// so an admin sees what the file undid of live `nfvs adm` edits.
fn reload(sh: &Shared) -> anyhow::Result<usize> {
    let Some(path) = &sh.opts.rules else { bail!("nfvs was started without --rules: nothing to reload") };
    // The new file is checked whole before anything changes; the edits derived from it are
    // then valid for the live table (same parser, same checks).
    let new = rules::load_rules_with(path, sh.opts.sched)?;
    let ((applied, refused), installed) = sh.edit(|engine| {
        let mut fx = EditEffects::default();
        let mut done = Vec::new();
        for c in rules::diff(&engine.table, &new) {
            match engine.apply_edit(&c) {
                Ok(f) => {
                    fx.expire.extend(f.expire);
                    done.push(c);
                }
                Err(e) => return ((done, Some(anyhow::anyhow!("{}", command::edit_message(&c, &e)))), fx),
            }
        }
        ((done, None), fx)
    });
    for c in &applied {
        Event::Edit { source: EditSource::Reload, what: &super::control::describe(c) }.emit();
    }
    if let Some(e) = refused {
        return Err(e);
    }
    installed?;
    Ok(applied.len())
}

/// Stops taking new connections, waits (bounded) for the flows nfvs balanced to finish, then
/// removes the table and restores the sysctls. Restoring ip_forward=0 or removing the last
/// nat chain cuts running flows, so both wait for the drain. A second signal during the wait
/// stops at once.
fn stop(sh: &Shared, signals: &Signals) -> ! {
    // Held until the process exits: neither an `nfvs adm` edit during the drain nor the
    // ticker's watch (daemon/watch.rs) may put the table or the sysctls back once the stop
    // has begun to take them away.
    let _installing = sh.install.lock().unwrap_or_else(|e| e.into_inner());
    let installed = sh.cleanup.lock().unwrap_or_else(|e| e.into_inner()).table_installed;
    if installed && !sh.opts.drain_timeout.is_zero() {
        let draining = Ruleset { diverts: Vec::new(), fallback: Vec::new(), ..sh.ruleset(&Table::new()) };
        match nftables::apply(&draining, sh.qimpl) {
            Ok(()) => drain(sh, signals),
            Err(e) => warn!("could not remove the divert rules before draining: {e}"),
        }
    }
    sh.cleanup.lock().unwrap_or_else(|e| e.into_inner()).run();
    info!("stopped");
    crate::logging::flush();
    std::process::exit(0);
}

/// Whether the drain waits for a connection in this state: running ones, yes; finished ones
/// and half-open ones, no. A SYN still unanswered at stop (a flood's spoofed SYNs above all,
/// issue 11 #9) would hold the stop for the whole drain timeout and most never complete.
fn worth_waiting_for(s: TcpState) -> bool {
    !matches!(s, TcpState::TimeWait | TcpState::Close | TcpState::None | TcpState::SynSent | TcpState::SynSent2)
}

fn drain(sh: &Shared, signals: &Signals) {
    let deadline = Instant::now() + sh.opts.drain_timeout;
    let mut ct = match Conntrack::open() {
        Ok(c) => c,
        Err(e) => return warn!("cannot watch running connections ({e}); stopping now"),
    };
    let mut announced = false;
    loop {
        let live = match ct.dump(sh.opts.ct_mark, u32::MAX) {
            Ok(entries) => entries.iter().filter(|e| e.tcp_state.is_some_and(worth_waiting_for)).count(),
            Err(e) => return warn!("cannot list running connections ({e}); stopping now"),
        };
        if live == 0 {
            return;
        }
        if !announced {
            info!(
                "draining: no new connections; waiting up to {}s for {live} running connection(s) to finish \
                 (signal again to stop now)",
                sh.opts.drain_timeout.as_secs()
            );
            announced = true;
        }
        if Instant::now() >= deadline {
            return warn!("drain timeout: {live} connection(s) still running will be cut");
        }
        if signals.wait_timeout(Duration::from_millis(200)) {
            return info!("second signal: stopping now");
        }
    }
}
