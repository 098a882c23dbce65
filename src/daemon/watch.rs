//! What the daemon set up stays set up: every tick, the table and the sysctls are checked
//! against what nfvs installed, and put back (loudly) when another program removed, replaced
//! or reset them (issue 11 #1: a second daemon's stop, an admin's `nft flush ruleset`, a
//! firewall reload, `sysctl -w net.ipv4.ip_forward=0`). A table install that failed earlier
//! (an edit's "table updated but the nft rules were not") is retried here too.

use log::{info, warn};

use super::Shared;
use crate::kernel::nftables;

/// One check of the table and the sysctls (the ticker's). Under the install lock, taken like
/// an edit takes it: no install runs meanwhile, and a stop (which holds it until the process
/// exits) is never undone here.
pub(super) fn check(sh: &Shared) {
    let mut installed = sh.install.lock().unwrap_or_else(|e| e.into_inner());
    check_table(sh, &mut installed);
    check_sysctls(sh);
}

fn check_table(sh: &Shared, installed: &mut crate::ruleset::Ruleset) {
    let want = sh.ruleset(&sh.lock().table);
    let what = if want != *installed {
        "does not hold the current services (an earlier install failed)"
    } else if nftables::verify(installed, sh.qimpl).is_err() {
        "was removed or changed by another program"
    } else {
        return;
    };
    warn!("table ip {} {what}; installing it again", crate::ruleset::TABLE);
    match nftables::apply(&want, sh.qimpl) {
        Ok(()) => {
            info!("table ip {} installed again", crate::ruleset::TABLE);
            *installed = want;
        }
        Err(e) => warn!(
            "cannot install table ip {} again: {e}; new connections are not balanced until it is back \
             (nfvs tries again every tick)",
            crate::ruleset::TABLE
        ),
    }
}

fn check_sysctls(sh: &Shared) {
    let Some((sysctl, wanted)) = &sh.sysctls else { return };
    for w in wanted {
        let Ok(now) = sysctl.read(&w.key) else { continue }; // an interface gone: nothing to keep
        if now == w.value {
            continue;
        }
        let name = w.key.replace('/', ".");
        match sysctl.write(&w.key, &w.value) {
            Ok(()) => warn!("sysctl {name} was set to {now} by another program; nfvs needs {} and set it back", w.value),
            Err(e) => warn!("sysctl {name} was set to {now} by another program and cannot be set back: {e}"),
        }
    }
}
