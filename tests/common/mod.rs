//! Helpers shared by the integration tests (`mod common;` in each `tests/*.rs`).
//!
//! Every test that sends packets or changes netfilter/sysctl state runs in network namespaces
//! that a guard here creates with a unique name and removes on drop, on success and on failure
//! (the habit of aya's `NetNsGuard`, `aya/src/test_helpers.rs`):
//!
//! - [`Lab`]: the seed's LVS-NAT lab (`scripts/lab.sh`): client, director, real servers with
//!   nginx. `Lab::up()` builds one under a prefix unique to this process; drop removes it.
//! - [`NetNs`]: one empty namespace with `lo` up, for tests that need no lab.
//! - [`Daemon`]: a process (nfvs, usually) started inside a namespace with `ip netns exec`, its
//!   output in a log file, waited on until it says it is ready; killed by PID on drop.
//!
//! Names: labs are `t<pid>x<n>` (namespaces `t<pid>x<n>-<role>`), single namespaces
//! `t<pid>x<n>-ns`, where `<pid>` is the test process. `scripts/test.sh` treats any namespace of
//! that form whose process is gone as a leftover: it reports and removes it.
//!
//! These are real tests: they need root (`require_root`), and `scripts/test.sh` (CI) runs them
//! as root.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// The client's address (on `eth0` of `<prefix>-client`).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 199, 1);
/// The VIP: the director's outer address (`ens37`).
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 168, 199, 200);
/// The director's inner address (`ens33`), the real servers' default gateway.
pub const DIP: Ipv4Addr = Ipv4Addr::new(192, 168, 226, 129);
pub const RS1: Ipv4Addr = Ipv4Addr::new(192, 168, 226, 130);
pub const RS2: Ipv4Addr = Ipv4Addr::new(192, 168, 226, 131);
/// Only in labs built with [`LabConfig::rs3`].
pub const RS3: Ipv4Addr = Ipv4Addr::new(192, 168, 226, 132);
/// The real servers' network, the seed's MASQUERADE source.
pub const RS_NET: &str = "192.168.226.0/24";
/// The line the nfvs daemon logs (info level) once its table is installed.
pub const NFVS_READY: &str = "nfvs: ready";

/// Deadline for a lab's or daemon's start-up; generous for a loaded 2-core CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `t<pid>x<n>`: unique within this process and among processes; at most 15 characters
/// (`t` + 7-digit pid_max + `x` + counter) so it also fits an interface name.
fn unique_prefix() -> String {
    format!(
        "t{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The repository root (where `scripts/` is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory for test artifacts (daemon logs, downloads) that cargo keeps under `target/`.
pub fn tmp_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let _ = fs::create_dir_all(&dir);
    dir
}

/// The nfvs binary cargo built for this test run. Read with `option_env!` so that test binaries
/// that never start the daemon still build when the crate has no binary target.
pub fn nfvs_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_nfvs") {
        Some(path) => PathBuf::from(path),
        None => panic!("cargo built no `nfvs` binary for these tests (is src/main.rs missing?)"),
    }
}

/// `rules/lab.rules`: the seed's service, in `ipvsadm -S -n` form.
pub fn lab_rules() -> PathBuf {
    repo_root().join("rules/lab.rules")
}

/// Panics with a clear message unless the test runs as root: these tests create network
/// namespaces and change netfilter state (CAP_SYS_ADMIN, CAP_NET_ADMIN).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail (geteuid(2)).
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN to create network \
             namespaces and netfilter state): run `sudo scripts/test.sh`"
        );
    }
}

/// Polls `cond` every 50 ms until it is true or `timeout` passes; returns its last value.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `ip netns exec NS PROGRAM`: a command to run inside the namespace. `ip netns exec` execs
/// the program after entering the namespace (no fork), so the child's PID is the program's.
pub fn netns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// Runs `args` inside `ns` and returns its output (stdin closed).
pub fn netns_exec(ns: &str, args: &[&str]) -> Output {
    let (program, rest) = args.split_first().expect("netns_exec: empty command");
    netns_command(ns, program)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip netns exec {ns} {}`: {e}", args.join(" ")))
}

/// Runs `args` inside `ns`; panics with its stderr unless it succeeds; returns its stdout.
pub fn netns_exec_ok(ns: &str, args: &[&str]) -> String {
    let out = netns_exec(ns, args);
    assert!(
        out.status.success(),
        "`{}` in {ns} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread that has entered network namespace `ns` (setns(2) with CLONE_NEWNET
/// changes only the calling thread). Sockets made inside `f` stay in `ns` wherever they are
/// used afterwards, so a test can bind a listener in one namespace and connect from another.
pub fn in_netns<T, F>(ns: &str, f: F) -> T
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = format!("/run/netns/{ns}");
    thread::scope(|s| {
        let handle = s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `file` is an open namespace file for the duration of the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns({path}): {}", io::Error::last_os_error());
            }
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// `curl` from inside `ns`, bounded in time; the body on success, curl's exit code and stderr
/// otherwise.
pub fn curl_in(ns: &str, url: &str) -> anyhow::Result<String> {
    let out = netns_command(ns, "curl")
        .args(["-sS", "--connect-timeout", "3", "--max-time", "10", url])
        .stdin(Stdio::null())
        .output()
        .context("cannot run curl")?;
    if !out.status.success() {
        bail!(
            "curl {url} in {ns}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    String::from_utf8(out.stdout).context("curl output is not UTF-8")
}

/// sha256 of a file, lower-case hex (as `sha256sum` prints it).
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sha256sum: {e}"));
    assert!(
        out.status.success(),
        "sha256sum {}: {}",
        path.display(),
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Names of the network namespaces that exist now.
pub fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("cannot run `ip netns list`");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// PIDs of the processes inside namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("cannot run `ip netns pids`");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// True when process `pid` runs in namespace `ns` (same inode as `/run/netns/NS`).
pub fn pid_in_netns(pid: u32, ns: &str) -> bool {
    match (
        fs::metadata(format!("/proc/{pid}/ns/net")),
        fs::metadata(format!("/run/netns/{ns}")),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// A role in the lab; its namespace is `<prefix>-<suffix>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Director,
    /// The bridge between the director's `ens33` and the real servers.
    Switch,
    Rs1,
    Rs2,
    Rs3,
}

impl Role {
    pub fn suffix(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Director => "dir",
            Role::Switch => "sw",
            Role::Rs1 => "rs1",
            Role::Rs2 => "rs2",
            Role::Rs3 => "rs3",
        }
    }

    /// The real server's address, for the real-server roles.
    pub fn rs_ip(self) -> Option<Ipv4Addr> {
        match self {
            Role::Rs1 => Some(RS1),
            Role::Rs2 => Some(RS2),
            Role::Rs3 => Some(RS3),
            _ => None,
        }
    }
}

/// Options of [`Lab::up_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LabConfig {
    /// Add the third real server, `<prefix>-rs3` at 192.168.226.132.
    pub rs3: bool,
}

/// The seed lab, built by `scripts/lab.sh up` under a unique prefix and removed by
/// `scripts/lab.sh down` on drop. The director's sysctls are the namespace defaults.
pub struct Lab {
    prefix: String,
    rs3: bool,
}

impl Lab {
    /// The two-server lab of the seed.
    pub fn up() -> Lab {
        Lab::up_with(LabConfig::default())
    }

    pub fn up_with(config: LabConfig) -> Lab {
        require_root();
        let lab = Lab {
            prefix: unique_prefix(),
            rs3: config.rs3,
        };
        let mut cmd = Command::new("bash");
        cmd.arg(lab_script()).args(["up", &lab.prefix]);
        if config.rs3 {
            cmd.arg("rs3");
        }
        // Built before the script runs, so a failed `up` is still torn down by Drop.
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run scripts/lab.sh: {e}"));
        assert!(
            out.status.success(),
            "scripts/lab.sh up {} failed ({}):\n{}{}",
            lab.prefix,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of `role`.
    pub fn ns(&self, role: Role) -> String {
        format!("{}-{}", self.prefix, role.suffix())
    }

    pub fn client(&self) -> String {
        self.ns(Role::Client)
    }

    pub fn director(&self) -> String {
        self.ns(Role::Director)
    }

    /// The real servers' roles, in address order.
    pub fn real_servers(&self) -> Vec<Role> {
        let mut roles = vec![Role::Rs1, Role::Rs2];
        if self.rs3 {
            roles.push(Role::Rs3);
        }
        roles
    }

    /// `/run/nfvs-lab/<prefix>`: nginx configs, pids, logs and the big file.
    pub fn runtime_dir(&self) -> PathBuf {
        Path::new("/run/nfvs-lab").join(&self.prefix)
    }

    /// The 20 MiB random file every real server serves as `/big.bin`.
    pub fn big_bin(&self) -> PathBuf {
        self.runtime_dir().join("www/big.bin")
    }

    /// Where lab.sh saved the big file's sha256 (sha256sum format).
    pub fn big_bin_sha256_path(&self) -> PathBuf {
        self.runtime_dir().join("www/big.bin.sha256")
    }

    /// The big file's sha256, lower-case hex.
    pub fn big_bin_sha256(&self) -> String {
        let path = self.big_bin_sha256_path();
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        text.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// A real server's nginx access log.
    pub fn access_log(&self, role: Role) -> PathBuf {
        self.runtime_dir().join(role.suffix()).join("access.log")
    }

    /// A real server's nginx master PID (from its PID file).
    pub fn nginx_pid(&self, role: Role) -> Option<u32> {
        let path = self.runtime_dir().join(role.suffix()).join("nginx.pid");
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// `ip netns exec <ns of role> PROGRAM`, to add arguments and spawn or run.
    pub fn command(&self, role: Role, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_command(&self.ns(role), program)
    }

    /// Runs `args` in the namespace of `role`.
    pub fn exec(&self, role: Role, args: &[&str]) -> Output {
        netns_exec(&self.ns(role), args)
    }

    /// Runs `args` in the namespace of `role`; panics unless it succeeds; returns stdout.
    pub fn exec_ok(&self, role: Role, args: &[&str]) -> String {
        netns_exec_ok(&self.ns(role), args)
    }

    /// Runs `f` on a thread inside the namespace of `role` (see [`in_netns`]).
    pub fn in_ns<T: Send>(&self, role: Role, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.ns(role), f)
    }

    /// `curl URL` from the namespace of `role` (bounded in time).
    pub fn curl(&self, role: Role, url: &str) -> anyhow::Result<String> {
        curl_in(&self.ns(role), url)
    }

    /// `curl URL` from the client.
    pub fn client_curl(&self, url: &str) -> anyhow::Result<String> {
        self.curl(Role::Client, url)
    }

    /// `curl http://<VIP>/` from the client: the answering server's greeting.
    pub fn client_curl_vip(&self) -> anyhow::Result<String> {
        self.client_curl(&format!("http://{VIP}/"))
    }

    /// Starts a download of the lab's 20 MiB file through the VIP from the client into `out`,
    /// limited to `rate` (curl's `--limit-rate`, e.g. "4M": about 5 s), so it outlives what a
    /// test does meanwhile. stderr is piped (curl prints only on failure).
    pub fn start_download(&self, out: &Path, rate: &str) -> std::process::Child {
        let _ = std::fs::remove_file(out);
        self.command(Role::Client, "curl")
            .args(["-sS", "--fail", "--limit-rate", rate, "--max-time", "60", "-o"])
            .arg(out)
            .arg(format!("http://{VIP}/big.bin"))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn curl")
    }

    /// A sysctl's value in the namespace of `role`, e.g. `net.ipv4.ip_forward`.
    pub fn sysctl(&self, role: Role, key: &str) -> String {
        self.exec_ok(role, &["sysctl", "-n", key]).trim().to_owned()
    }

    /// A daemon to start in the director's namespace (see [`DaemonCmd`]).
    pub fn daemon(&self, bin: impl AsRef<Path>) -> DaemonCmd {
        DaemonCmd::new(self.director(), bin)
    }

    /// The seed's director: `nfvs run --rules rules/lab.rules --masquerade 192.168.226.0/24`
    /// in the director's namespace, RUST_LOG=info, ready at [`NFVS_READY`]. Add arguments
    /// (`.args(["--queue", "3"])`) and call `.start()`.
    pub fn nfvs(&self) -> DaemonCmd {
        self.nfvs_with_rules(&lab_rules())
    }

    /// [`Lab::nfvs`] with another rules file.
    pub fn nfvs_with_rules(&self, rules: &Path) -> DaemonCmd {
        self.daemon(nfvs_bin())
            .arg("run")
            .arg("--rules")
            .arg(rules.to_string_lossy())
            .args(["--masquerade", RS_NET])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Never panic here: this runs while a failed test unwinds.
        match Command::new("bash")
            .arg(lab_script())
            .args(["down", &self.prefix])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: scripts/lab.sh down {} failed ({}): {}",
                self.prefix,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!(
                "warning: cannot run scripts/lab.sh down {}: {e}",
                self.prefix
            ),
        }
    }
}

fn lab_script() -> PathBuf {
    repo_root().join("scripts/lab.sh")
}

// ---------------------------------------------------------------------------------------
// What the lab's servers and nfvs's log say

/// The real server that answered, from nginx's "hello, i am from <ip>".
pub fn rs_of(body: &str) -> String {
    body.trim().strip_prefix("hello, i am from ").unwrap_or_else(|| panic!("unexpected answer {body:?}")).to_string()
}

/// Waits until a download started with [`Lab::start_download`] has written 1 MB into `out`.
pub fn wait_download_started(out: &Path) {
    assert!(
        wait_until(Duration::from_secs(10), || fs::metadata(out).is_ok_and(|m| m.len() > 1_000_000)),
        "the download did not start"
    );
}

/// One decision line of nfvs's log: `conn client=C vip=V sched=S rs=IP:PORT ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub client: SocketAddrV4,
    pub sched: String,
    /// None for `rs=none` (no eligible server).
    pub rs: Option<Ipv4Addr>,
    /// The line ends in `(persistent)`: a persistence template hit.
    pub persistent: bool,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

/// The decision a log line records, if it is a decision line.
pub fn parse_decision(line: &str) -> Option<Decision> {
    let rest = &line[line.find("conn client=")? + "conn ".len()..];
    let client = SocketAddrV4::from_str(field(rest, "client=")?).ok()?;
    let sched = field(rest, "sched=")?.to_owned();
    let rs = match field(rest, "rs=")?.trim_end_matches(':') {
        "none" => None,
        s => Some(*SocketAddrV4::from_str(s).ok()?.ip()),
    };
    Some(Decision { client, sched, rs, persistent: rest.trim_end().ends_with("(persistent)") })
}

/// Every decision `d` has logged so far, in order.
pub fn decisions(d: &Daemon) -> Vec<Decision> {
    d.log().lines().filter_map(parse_decision).collect()
}

/// One uniquely named, empty network namespace with `lo` up, removed (with any process still
/// in it) on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        require_root();
        let ns = NetNs {
            name: format!("{}-ns", unique_prefix()),
        };
        let out = Command::new("ip")
            .args(["netns", "add", &ns.name])
            .output()
            .expect("cannot run `ip netns add`");
        assert!(
            out.status.success(),
            "ip netns add {}: {}",
            ns.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        netns_command(&self.name, program)
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        netns_exec(&self.name, args)
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        netns_exec_ok(&self.name, args)
    }

    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }

    pub fn daemon(&self, bin: impl AsRef<Path>) -> DaemonCmd {
        DaemonCmd::new(self.name.clone(), bin)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // A namespace lives as long as a process in it: stop what a test left behind (only
        // processes inside this test's own namespace), then remove the name.
        for pid in netns_pids(&self.name) {
            // SAFETY: kill(2) with a PID taken from our namespace; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

/// When a started daemon counts as ready.
#[derive(Debug, Clone)]
pub enum Ready {
    /// This text appears in its output (stdout or stderr), e.g. [`NFVS_READY`].
    Log(String),
    /// `nft list table FAMILY NAME` succeeds in its namespace.
    Table { family: String, name: String },
    /// Right after spawning.
    Spawned,
}

/// How to start a [`Daemon`]: program, arguments, environment, readiness, deadline.
pub struct DaemonCmd {
    ns: String,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    ready: Ready,
    timeout: Duration,
    log: Option<PathBuf>,
}

impl DaemonCmd {
    /// `bin` inside `ns`; by default RUST_LOG=info and ready when [`NFVS_READY`] is logged.
    /// For nfvs pass `env!("CARGO_BIN_EXE_nfvs")` (defined in integration tests).
    pub fn new(ns: impl Into<String>, bin: impl AsRef<Path>) -> DaemonCmd {
        DaemonCmd {
            ns: ns.into(),
            bin: bin.as_ref().to_owned(),
            args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info".into())],
            ready: Ready::Log(NFVS_READY.into()),
            timeout: START_TIMEOUT,
            log: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets (or replaces) an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    /// Ready when `text` appears in the output.
    pub fn ready_line(self, text: &str) -> Self {
        self.ready(Ready::Log(text.into()))
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where its stdout and stderr go; default `<target tmp>/<ns>-d<n>.log`.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Starts it and waits until it is ready. On a timeout or an early exit the process is
    /// gone and the error carries its log.
    pub fn start(self) -> anyhow::Result<Daemon> {
        let log = self.log.clone().unwrap_or_else(|| {
            tmp_dir().join(format!(
                "{}-d{}.log",
                self.ns,
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ))
        });
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone().context("dup log file")?;
        let child = netns_command(&self.ns, &self.bin)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {} in {}", self.bin.display(), self.ns))?;
        let mut daemon = Daemon {
            child,
            ns: self.ns,
            log,
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; its log:\n{}",
                    self.bin.display(),
                    daemon.log()
                );
            }
            let ready = match &self.ready {
                Ready::Spawned => true,
                Ready::Log(text) => daemon.log().contains(text.as_str()),
                Ready::Table { family, name } => {
                    netns_exec(&daemon.ns, &["nft", "list", "table", family, name])
                        .status
                        .success()
                }
            };
            if ready {
                return Ok(daemon);
            }
            if Instant::now() >= deadline {
                daemon.kill();
                bail!(
                    "{} not ready ({:?}) within {:?}; its log:\n{}",
                    self.bin.display(),
                    self.ready,
                    self.timeout,
                    daemon.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A process started by [`DaemonCmd::start`] in a namespace; SIGKILLed and reaped on drop if
/// still running.
pub struct Daemon {
    child: Child,
    ns: String,
    log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn ns(&self) -> &str {
        &self.ns
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything it has written so far (stdout and stderr).
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its output lines that contain `text`.
    pub fn log_lines(&self, text: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(text))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `text` appears in its output.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) -> anyhow::Result<()> {
        if wait_until(timeout, || self.log().contains(text)) {
            Ok(())
        } else {
            Err(anyhow!(
                "'{text}' not logged within {timeout:?}; the log:\n{}",
                self.log()
            ))
        }
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`). Refused once it has been reaped, so a recycled PID
    /// is never signalled (an exited but unreaped process keeps its PID).
    pub fn signal(&mut self, sig: i32) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("cannot send signal {sig}: the daemon already exited ({status})");
        }
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on our own unreaped child; no memory is involved.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(io::Error::last_os_error()).context(format!("kill({pid}, {sig})"));
        }
        Ok(())
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait()
    }

    /// Waits at most `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` and waits up to `timeout` for the exit; SIGKILLs it and fails after that.
    pub fn stop(&mut self, sig: i32, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal(sig)?;
        match self.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => {
                self.kill();
                bail!(
                    "did not exit within {timeout:?} of signal {sig}; its log:\n{}",
                    self.log()
                )
            }
        }
    }

    /// SIGKILL and reap, if it is still running.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
