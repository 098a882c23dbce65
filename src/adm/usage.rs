//! What `ipvsadm -h` and `ipvsadm -v` print: ipvsadm 1.31's help with nfvs's refusals marked,
//! and a version line that says what nfvs is.

use std::fmt::Write as _;

use super::command::DEFAULT_SCHED;
use super::listing::IPVS_VERSION;

/// The ipvsadm release whose command language and output nfvs reproduces.
pub const IPVSADM_VERSION: &str = "v1.31 2019/12/24";

/// `-v`: ipvsadm prints `ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)`;
/// nfvs says what it is and which ipvsadm it follows.
pub fn version() -> String {
    format!(
        "nfvs v{} (ipvsadm {IPVSADM_VERSION} commands and output, IPVS v{IPVS_VERSION} behaviour, NAT in userspace)\n",
        env!("CARGO_PKG_VERSION")
    )
}

const NOT_NFVS: &str = "(not supported by nfvs)";

/// `-h`: ipvsadm 1.31's help (`usage_exit`) with the same commands and options in the same
/// layout; what nfvs refuses is marked rather than left out, so a reader who knows ipvsadm
/// sees at once what is missing. `program` is the name to show (`ipvsadm`, `nfvs adm`).
// Long (about 100 lines) because it is the help text itself, kept in ipvsadm's order so that it
// can be read against `usage_exit` line by line.
pub fn usage(program: &str) -> String {
    let p = program;
    let scheds = crate::sched::NAMES.join("|");
    let n = NOT_NFVS;
    let mut s = version();
    let _ = write!(
        s,
        "Usage:\n\
         \x20 {p} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask] [--pe persistence_engine] [-b sched-flags]\n\
         \x20 {p} -D virtual-service\n\
         \x20 {p} -C\n\
         \x20 {p} -R\n\
         \x20 {p} -S [-n]\n\
         \x20 {p} -a|e virtual-service -r server-address [options]\n\
         \x20 {p} -d virtual-service -r server-address\n\
         \x20 {p} -L|l [virtual-service] [options]\n\
         \x20 {p} -Z [virtual-service]\n\
         \x20 {p} --set tcp tcpfin udp\n\
         \x20 {p} --start-daemon {{master|backup}} [daemon-options]\n\
         \x20 {p} --stop-daemon {{master|backup}}\n\
         \x20 {p} -h\n\n"
    );
    let _ = write!(
        s,
        "Commands:\n\
         Either long or short options are allowed.\n\
         \x20 --add-service     -A        add virtual service with options\n\
         \x20 --edit-service    -E        edit virtual service with options\n\
         \x20 --delete-service  -D        delete virtual service\n\
         \x20 --clear           -C        clear the whole table\n\
         \x20 --restore         -R        restore rules from stdin\n\
         \x20 --save            -S        save rules to stdout\n\
         \x20 --add-server      -a        add real server with options\n\
         \x20 --edit-server     -e        edit real server with options\n\
         \x20 --delete-server   -d        delete real server\n\
         \x20 --list            -L|-l     list the table\n\
         \x20 --zero            -Z        zero counters in a service or all services\n\
         \x20 --set tcp tcpfin udp        set connection timeout values\n\
         \x20 --start-daemon              start connection sync daemon {n}\n\
         \x20 --stop-daemon               stop connection sync daemon {n}\n\
         \x20 --help            -h        display this help message\n\n"
    );
    let _ = write!(
        s,
        "virtual-service:\n\
         \x20 --tcp-service|-t  service-address   service-address is host[:port]\n\
         \x20 --udp-service|-u  service-address   service-address is host[:port] {n}\n\
         \x20 --sctp-service    service-address   service-address is host[:port] {n}\n\
         \x20 --fwmark-service|-f fwmark          fwmark is an integer greater than zero {n}\n\n"
    );
    let _ = write!(
        s,
        "Options:\n\
         \x20 --ipv6         -6                   fwmark entry uses IPv6 {n}\n\
         \x20 --scheduler    -s scheduler         one of {scheds},\n\
         \x20                                     the default scheduler is {DEFAULT_SCHED}.\n\
         \x20 --pe            engine              alternate persistence engine may be sip,\n\
         \x20                                     not set by default {n}.\n\
         \x20 --persistent   -p [timeout]         persistent service\n\
         \x20 --netmask      -M netmask           persistent granularity mask\n\
         \x20 --real-server  -r server-address    server-address is host (and port)\n\
         \x20 --gatewaying   -g                   gatewaying (direct routing) (ipvsadm's default) {n}\n\
         \x20 --ipip         -i                   ipip encapsulation (tunneling) {n}\n\
         \x20 --masquerading -m                   masquerading (NAT) (nfvs's only method: required with -a)\n\
         \x20 --tun-type      type                one of ipip|gue|gre,\n\
         \x20                                     the default tunnel type is ipip {n}.\n\
         \x20 --tun-port      port                tunnel destination port {n}\n\
         \x20 --tun-nocsum                        tunnel encapsulation without checksum {n}\n\
         \x20 --tun-csum                          tunnel encapsulation with checksum {n}\n\
         \x20 --tun-remcsum                       tunnel encapsulation with remote checksum {n}\n\
         \x20 --weight       -w weight            capacity of real server\n\
         \x20 --u-threshold  -x uthreshold        upper threshold of connections\n\
         \x20 --l-threshold  -y lthreshold        lower threshold of connections\n\
         \x20 --connection   -c                   output of current connections (read from conntrack)\n\
         \x20 --timeout                           output of timeout (tcp tcpfin udp)\n\
         \x20 --daemon                            output of daemon information (nfvs has no sync daemon)\n\
         \x20 --stats                             output of statistics information\n\
         \x20 --rate                              output of rate information\n\
         \x20 --exact                             expand numbers (display exact values)\n\
         \x20 --thresholds                        output of thresholds information\n\
         \x20 --persistent-conn                   output of persistent connection info\n\
         \x20 --tun-info                          output of tunnel information {n}\n\
         \x20 --nosort                            disable sorting output of service/server entries\n\
         \x20 --sort                              does nothing, for backwards compatibility\n\
         \x20 --ops          -o                   one-packet scheduling {n}\n\
         \x20 --numeric      -n                   numeric output of addresses and ports\n\
         \x20                                     (nfvs never resolves addresses; without -n it names ports)\n\
         \x20 --sched-flags  -b flags             scheduler flags (comma-separated)\n"
    );
    let _ = write!(
        s,
        "Daemon Options: {n}\n\
         \x20 --syncid sid                        syncid for connection sync (default=255)\n\
         \x20 --sync-maxlen length                Max sync message length (default=1472)\n\
         \x20 --mcast-interface interface         multicast interface for connection sync\n\
         \x20 --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)\n\
         \x20 --mcast-port port                   UDP port (default=8848)\n\
         \x20 --mcast-ttl ttl                     Multicast TTL (default=1)\n"
    );
    s
}
