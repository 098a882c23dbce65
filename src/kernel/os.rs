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

/// The name of the director lock: an abstract unix socket. Abstract names belong to the
/// network namespace they were bound in (unix(7), "Abstract sockets"; net/unix/af_unix.c looks
/// them up per `struct net`), and go away with the last descriptor: a crashed daemon leaves
/// nothing behind to clean up.
const DIRECTOR_LOCK: &[u8] = b"\0nfvs-director";

/// Held for the whole life of a daemon: while it exists, no other nfvs daemon can run in the
/// same network namespace, whatever its queue, control socket or state directory.
pub struct DirectorLock {
    _fd: std::os::fd::OwnedFd,
}

/// Why [`lock_director`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another nfvs daemon{} already runs in this network namespace: one director per namespace \
             (stop it first, or run this one in another namespace)", .0.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Taken(Option<i32>),
    #[error("cannot take the director lock (abstract unix socket): {0}")]
    Os(#[source] std::io::Error),
}

/// Takes the network namespace's director lock. A second daemon learns the first one's pid
/// from the lock itself (it listens; SO_PEERCRED of a connection to it names its owner).
pub fn lock_director() -> Result<DirectorLock, LockError> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let socket = || {
        // SAFETY: socket(2) with constant arguments; the descriptor is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(LockError::Os(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    // SAFETY: sockaddr_un is plain data; the name fits in sun_path (108 bytes).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(DIRECTOR_LOCK) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + DIRECTOR_LOCK.len()) as libc::socklen_t;
    let sa = (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>();
    let fd = socket()?;
    // SAFETY: `sa` points to `addr`, valid for `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), sa, len) } == 0 {
        // SAFETY: listen on the socket just bound.
        if unsafe { libc::listen(fd.as_raw_fd(), 4) } != 0 {
            return Err(LockError::Os(std::io::Error::last_os_error()));
        }
        return Ok(DirectorLock { _fd: fd });
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EADDRINUSE) {
        return Err(LockError::Os(err));
    }
    // Who holds it? Connect and ask the kernel for the peer's credentials.
    let probe = socket()?;
    // SAFETY: as for bind.
    let pid = if unsafe { libc::connect(probe.as_raw_fd(), sa, len) } == 0 {
        // SAFETY: ucred is plain data and `n` its size.
        let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
        let mut n = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let got = unsafe {
            libc::getsockopt(probe.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut n)
        };
        (got == 0 && cred.pid > 0).then_some(cred.pid)
    } else {
        None
    };
    Err(LockError::Taken(pid))
}

/// Returns freed heap memory to the system (glibc keeps it otherwise: after a large table is
/// freed, its dynamic mmap threshold puts the next ones on the heap), so RSS falls after a
/// burst. Called rarely (the connection map shrank).
pub fn give_back_memory() {
    // SAFETY: malloc_trim has no preconditions; 0 keeps no extra padding.
    unsafe { libc::malloc_trim(0) };
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
