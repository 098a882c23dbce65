//! Addresses that cannot work: refused where IPVS refuses them, warned about where IPVS takes
//! them, so that a script that runs against IPVS runs against nfvs too and the admin learns
//! why nothing arrives.
//!
//! What IPVS does (net/netfilter/ipvs, 6.12):
//! - `ip_vs_add_service` (ip_vs_ctl.c) checks no address: a service on 0.0.0.0, the broadcast
//!   address or a multicast group is created, and no TCP connection ever reaches it. nfvs
//!   takes it too (its divert rule matches nothing) and warns.
//! - `ip_vs_new_dest` (ip_vs_ctl.c) refuses a real server unless `inet_addr_type` is
//!   RTN_UNICAST or RTN_LOCAL: 0.0.0.0/8, 255.255.255.255 (RTN_BROADCAST) and 224.0.0.0/4
//!   (RTN_MULTICAST) fail with EINVAL, which ipvsadm reports as libipvs's message for it. nfvs
//!   refuses the same addresses the same way (other broadcast addresses depend on the
//!   director's routes, which nfvs does not read).
//! - A real server on 127.0.0.0/8 is RTN_LOCAL and is taken, but `ip_vs_nat_xmit`
//!   (ip_vs_xmit.c) drops every connection from another host that would be sent to it
//!   ("stopping DNAT to loopback address"). nfvs only ever balances connections from other
//!   hosts (its divert rule is in prerouting), and the kernel does not route packets from
//!   outside to a loopback address either: nfvs takes it and warns that no connection can work.
//! - A real server on the VIP itself is RTN_LOCAL on a director that holds the VIP: IPVS takes
//!   it and hands its connections to the director's own stack. nfvs's DNAT to a local address
//!   does the same, so it works only if a program on the director serves that port: nfvs takes
//!   it and warns.

use std::net::Ipv4Addr;

use crate::service::{DestSpec, ServiceKey};

use super::args::parse_line;
use super::command::{Command, UsageError};

/// libipvs's message for EINVAL (`ipvs_strerror`), what ipvsadm prints when the kernel refuses
/// a real server's address (lvs-semantics.md §8.4).
pub const EINVAL_MESSAGE: &str = "Invalid operation.  Possibly wrong module version, address not unicast, ...";

/// ipvsadm's exit status for an error the kernel returns.
const KERNEL_ERROR: i32 = 255;

/// Whether `inet_addr_type` calls `addr` broadcast or multicast whatever the routes are
/// (`__inet_dev_addr_type` in net/ipv4/fib_frontend.c: `ipv4_is_zeronet`, `ipv4_is_lbcast`,
/// `ipv4_is_multicast`).
fn never_unicast(addr: Ipv4Addr) -> bool {
    addr.octets()[0] == 0 || addr.is_broadcast() || addr.is_multicast()
}

/// `-a`: the kernel's refusal of a real server whose address is not unicast, as ipvsadm prints
/// it, with nfvs's reason.
pub fn check_new_dest(dest: &DestSpec) -> Result<(), UsageError> {
    if !never_unicast(dest.addr) {
        return Ok(());
    }
    let mut e = UsageError::new(EINVAL_MESSAGE)
        .hint(format!("{}: a real server needs a unicast address (IPVS refuses it too)", dest.addr));
    e.exit_code = KERNEL_ERROR;
    Err(e)
}

/// What an edit that IPVS takes sets up that cannot work, one sentence each (empty for the
/// usual case). Only `-A`, `-E`, `-a` and `-e` can have any.
pub fn warnings(cmd: &Command) -> Vec<String> {
    match cmd {
        Command::AddService(s) | Command::EditService(s) => service_warnings(&s.key),
        Command::AddDest(key, dest) | Command::EditDest(key, dest) => dest_warnings(key, dest),
        _ => Vec::new(),
    }
}

/// [`warnings`] of each line of `-R`'s input that parses, as `NAME:LINE: what` (`name` is
/// what to call the input).
pub fn restore_warnings(text: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Ok(cmd) = parse_line(line) {
            out.extend(warnings(&cmd).into_iter().map(|w| format!("{name}:{}: {w}", n + 1)));
        }
    }
    out
}

fn service_warnings(key: &ServiceKey) -> Vec<String> {
    if !never_unicast(key.addr) {
        return Vec::new();
    }
    vec![format!(
        "virtual service {key}: {} is no address a client connects to, so no connection will \
         reach this service (IPVS takes it too)",
        key.addr
    )]
}

fn dest_warnings(key: &ServiceKey, dest: &DestSpec) -> Vec<String> {
    let rip = format!("{}:{}", dest.addr, dest.port);
    let mut out = Vec::new();
    if dest.addr.is_loopback() {
        out.push(format!(
            "real server {rip} of {key} is a loopback address, which the kernel never forwards \
             another host's connection to: every connection sent to it fails (IPVS takes it too, \
             and drops them)"
        ));
    }
    if dest.addr == key.addr {
        out.push(format!(
            "real server {rip} of {key} is the virtual address itself: its connections go to \
             the director's own port {}, so a program on the director must serve it (as with \
             IPVS)",
            dest.port
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings_of(line: &str) -> Vec<String> {
        warnings(&parse_line(line).unwrap_or_else(|e| panic!("{line}: {e}")))
    }

    /// Issue 10: a real server IPVS refuses (`ip_vs_new_dest`: not RTN_UNICAST/RTN_LOCAL) is
    /// refused with ipvsadm's message for the kernel's EINVAL and its exit status.
    #[test]
    fn non_unicast_real_servers_are_refused_as_ipvs_refuses_them() {
        for rs in ["0.0.0.0", "0.1.2.3", "255.255.255.255", "224.0.0.1", "239.255.255.250"] {
            let e = parse_line(&format!("-a -t 10.0.0.1:80 -r {rs}:80 -m")).unwrap_err();
            assert_eq!((e.message.as_str(), e.exit_code), (EINVAL_MESSAGE, 255), "{rs}");
            assert!(e.hint.as_deref().is_some_and(|h| h.starts_with(&format!("{rs}: "))), "{e:?}");
        }
        // Such a server never exists, so -e and -d meet the kernel's "No such destination".
        assert!(parse_line("-e -t 10.0.0.1:80 -r 0.0.0.0:80 -m -w 2").is_ok());
        assert!(parse_line("-d -t 10.0.0.1:80 -r 0.0.0.0:80").is_ok());
        // Ordinary usage errors come first, as ipvsadm finds them before the kernel is asked.
        let e = parse_line("-a -t 10.0.0.1:80 -r 0.0.0.0:80 -m -w 70000").unwrap_err();
        assert_eq!(e.message, "illegal weight specified");
    }

    /// Issue 10: what IPVS takes but cannot work is taken, with a warning saying why.
    #[test]
    fn what_ipvs_takes_is_taken_with_a_warning() {
        let w = warnings_of("-A -t 0.0.0.0:80 -s rr");
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("virtual service -t 0.0.0.0:80: 0.0.0.0 is no address a client connects to"), "{w:?}");
        assert_eq!(warnings_of("-E -t 224.0.0.1:80 -s rr").len(), 1);
        let w = warnings_of("-a -t 10.0.0.1:80 -r 127.0.0.1:8080 -m");
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("real server 127.0.0.1:8080 of -t 10.0.0.1:80 is a loopback address"), "{w:?}");
        let w = warnings_of("-e -t 10.0.0.1:80 -r 10.0.0.1:8080 -m -w 3");
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("real server 10.0.0.1:8080 of -t 10.0.0.1:80 is the virtual address itself"), "{w:?}");
        assert!(w[0].contains("port 8080"), "{w:?}");
        let w = restore_warnings("-A -t 10.0.0.1:80 -s rr\n\n-a -t 10.0.0.1:80 -r 127.0.0.1:80 -m\nbad\n", "stdin");
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("stdin:3: real server 127.0.0.1:80"), "{w:?}");
        for fine in ["-A -t 10.0.0.1:80 -s rr", "-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m", "-D -t 0.0.0.0:80", "-L -n"] {
            assert!(warnings_of(fine).is_empty(), "{fine}");
        }
    }
}
