//! The process-level system calls the daemon needs: signals, CPU affinity, privileges, and the
//! few files under /proc it reads.

use std::time::Duration;

use log::{info, warn};

/// The signals the daemon handles (in its signal thread only).
const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A set of blocked signals, received with [`Signals::wait`].
#[derive(Clone, Copy)]
pub struct Signals {
    set: libc::sigset_t,
}

/// Blocks the signals the daemon handles in the calling thread and every thread it starts,
/// so that only the signal thread receives them (with sigwait).
pub fn block_signals() -> Signals {
    // SAFETY: plain libc calls on a locally owned sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            // A shell starts background jobs with SIGINT ignored, and an ignored signal is
            // discarded instead of becoming pending: restore the default so sigwait sees it.
            libc::signal(s, libc::SIG_DFL);
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        Signals { set }
    }
}

impl Signals {
    /// Waits for one of the signals and returns it.
    pub fn wait(&self) -> libc::c_int {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid, initialised signal set; `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&self.set, &mut sig) } == 0 {
                return sig;
            }
        }
    }

    /// Waits up to `timeout` for one of the signals; whether one came.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: valid signal set and timeout; a null siginfo pointer is allowed.
        unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) > 0 }
    }
}

/// Pins the calling thread to the CPUs whose SYNs go to queue `i` of `total`: with the fanout
/// flag the divert rule picks queue `first + cpu % total` (net/netfilter/xt_NFQUEUE.c
/// `nfqueue_tg_v3`, nft_queue.c), cpu being the one the packet is processed on.
pub fn pin_to_queue_cpus(i: u16, total: u16) {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: cpu_set_t is plain data; the libc calls get its size and a pointer to it, and
    // CPU_ISSET/CPU_SET index within CPU_SETSIZE.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            warn!("--pin-workers: sched_getaffinity: {}", std::io::Error::last_os_error());
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let mut cpus = Vec::new();
        for c in 0..libc::CPU_SETSIZE as usize {
            if libc::CPU_ISSET(c, &allowed) && c % usize::from(total) == usize::from(i) {
                libc::CPU_SET(c, &mut set);
                cpus.push(c.to_string());
            }
        }
        if cpus.is_empty() {
            warn!("--pin-workers: no CPU of this process feeds queue worker {i} of {total}; not pinned");
            return;
        }
        if libc::sched_setaffinity(0, size, &set) != 0 {
            warn!("--pin-workers: sched_setaffinity: {}", std::io::Error::last_os_error());
            return;
        }
        info!("queue worker {i} of {total} pinned to CPU {}", cpus.join(","));
    }
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Packets the kernel dropped because the queues `queues` were full or our sockets could not
/// take them: columns 6 and 7 (queue_dropped, queue_user_dropped) of
/// /proc/net/netfilter/nfnetlink_queue (nfnetlink_queue.c, seq_show).
pub fn queue_drops(queues: std::ops::Range<u16>) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue") else { return 0 };
    queue_drops_in(&text, queues)
}

fn queue_drops_in(text: &str, queues: std::ops::Range<u16>) -> u64 {
    text.lines()
        .filter_map(|l| {
            let f: Vec<u64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            let num = u16::try_from(*f.first()?).ok()?;
            queues.contains(&num).then(|| f.get(5).copied().unwrap_or(0) + f.get(6).copied().unwrap_or(0))
        })
        .sum()
}

/// A numeric value under /proc/sys/net/netfilter (0 if unreadable).
pub fn netfilter_sysctl(name: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two queues as nfnetlink_queue.c's seq_show prints them: queue number, portid, queue
    /// total, copy mode, copy range, queue dropped, user dropped, id sequence, 1.
    #[test]
    fn queue_drops_sums_both_drop_columns_of_our_queues_only() {
        let text = "    0  12345     0 2 65531    7    3     100  1\n    \
                    1  12346     0 2 65531   10    0      50  1\n    \
                    5  99999     0 2 65531 1000 1000      50  1\n";
        assert_eq!(queue_drops_in(text, 0..2), 7 + 3 + 10);
        assert_eq!(queue_drops_in(text, 5..6), 2000);
        assert_eq!(queue_drops_in(text, 2..5), 0);
        assert_eq!(queue_drops_in("garbage\n\n", 0..9), 0);
    }
}
