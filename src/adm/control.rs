//! The control socket: `nfvs adm ARGS` (or `ipvsadm ARGS` through a symlink) sends its words to
//! the running daemon, which parses them with the same parser as the rules file
//! ([`super::args`]), applies them to the live table and answers with what ipvsadm would print
//! and its exit status.
//!
//! Wire format (one request per connection, both directions plain bytes):
//! - request: `nfvs-adm 1\n`, then each word followed by a NUL, then one more NUL, then the
//!   client's standard input for `-R` (until the client shuts down its writing side);
//! - reply: `<exit status>\n<length of stdout>\n<stdout><stderr>` (stderr runs to EOF).
//!
//! The socket is created with mode 0600 in a root-owned directory, and the daemon also checks
//! the peer's uid (SO_PEERCRED): only root may change or read the director.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: &[u8] = b"nfvs-adm 1\n";
/// Requests larger than this are refused, unread (a restore of 10,000 services with a real
/// server each is about 1 MiB).
pub const MAX_REQUEST: usize = 4 << 20;
/// The whole request must arrive within this, however it trickles in.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Clients served at once (50 parallel `nfvs adm` must all be served); one more is answered
/// "busy" at once.
pub const MAX_CLIENTS: usize = 64;

/// What the daemon answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    pub fn ok(stdout: impl Into<String>) -> Reply {
        Reply { code: 0, stdout: stdout.into(), stderr: String::new() }
    }
    pub fn err(code: i32, stderr: impl Into<String>) -> Reply {
        let mut e: String = stderr.into();
        if !e.ends_with('\n') {
            e.push('\n');
        }
        Reply { code, stdout: String::new(), stderr: e }
    }
}

/// A request as the daemon receives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    pub args: Vec<String>,
    pub stdin: String,
}

/// The default socket path: per network namespace, since /run is shared by all namespaces
/// of a host while each namespace can run its own director (as each has its own IPVS table).
pub fn default_path() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ns = fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
    Path::new(crate::kernel::sysctl::STATE_DIR).join(format!("control-netns-{ns}.sock"))
}

pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    for a in &req.args {
        out.extend_from_slice(a.as_bytes());
        out.push(0);
    }
    out.push(0);
    out.extend_from_slice(req.stdin.as_bytes());
    out
}

pub fn decode_request(bytes: &[u8]) -> Result<Request, String> {
    let rest = bytes.strip_prefix(MAGIC).ok_or("not an nfvs adm request (version mismatch?)")?;
    let mut args = Vec::new();
    let mut pos = 0;
    loop {
        let end = rest[pos..].iter().position(|&b| b == 0).ok_or("truncated request")? + pos;
        if end == pos {
            pos += 1;
            break;
        }
        args.push(String::from_utf8(rest[pos..end].to_vec()).map_err(|_| "argument is not UTF-8")?);
        pos = end + 1;
    }
    let stdin = String::from_utf8(rest[pos..].to_vec()).map_err(|_| "standard input is not UTF-8")?;
    Ok(Request { args, stdin })
}

pub fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut out = format!("{}\n{}\n", r.code, r.stdout.len()).into_bytes();
    out.extend_from_slice(r.stdout.as_bytes());
    out.extend_from_slice(r.stderr.as_bytes());
    out
}

pub fn decode_reply(bytes: &[u8]) -> Result<Reply, String> {
    let text = String::from_utf8_lossy(bytes);
    let (code, rest) = text.split_once('\n').ok_or("truncated reply")?;
    let (len, rest) = rest.split_once('\n').ok_or("truncated reply")?;
    let code: i32 = code.parse().map_err(|_| "bad reply status")?;
    let len: usize = len.parse().map_err(|_| "bad reply length")?;
    if len > rest.len() || !rest.is_char_boundary(len) {
        return Err("truncated reply".into());
    }
    Ok(Reply { code, stdout: rest[..len].to_string(), stderr: rest[len..].to_string() })
}

/// Client side: sends one request and returns the daemon's reply.
pub fn call(path: &Path, req: &Request) -> Result<Reply, String> {
    let mut s = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied => "Permission denied (you must be root)".to_string(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
            "no nfvs daemon is listening on {} (start one with `nfvs run`, or give its socket with --control)",
            path.display()
        ),
        _ => format!("cannot connect to {}: {e}", path.display()),
    })?;
    let io_err = |e: io::Error| format!("talking to the nfvs daemon on {}: {e}", path.display());
    let sent = s.write_all(&encode_request(req)).and_then(|()| s.shutdown(std::net::Shutdown::Write));
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    // A daemon that refuses the peer (SO_PEERCRED) answers without reading the request and
    // closes: the write may then fail with EPIPE, or the read end in ECONNRESET (af_unix.c,
    // unix_release_sock: unread data left behind), after its answer arrived. The answer wins.
    match decode_reply(&buf) {
        Ok(r) => Ok(r),
        Err(e) => {
            sent.map_err(io_err)?;
            read.map_err(io_err)?;
            Err(e)
        }
    }
}

/// Server side: the bound listening socket, removed on drop.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Binds `path` with mode 0600 (replacing a stale socket left by a crash; refusing when a
    /// live daemon answers on it).
    pub fn bind(path: &Path) -> io::Result<Server> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    // The caller names the path (daemon/start.rs: "control socket PATH: ...").
                    "another nfvs daemon is listening on it (one director per network namespace)",
                ));
            }
            fs::remove_file(path)?;
        }
        // Create it private from the first moment: umask, then chmod to be sure.
        // SAFETY: umask has no preconditions; the old mask is restored right after bind.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        unsafe { libc::umask(old) };
        let listener = bound?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        Ok(Server { listener, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests forever with `handle`, each client in a thread of its own (at most
    /// [`MAX_CLIENTS`] at once), so an idle or trickling client holds up no other (issue 11
    /// #8): each has [`REQUEST_DEADLINE`] to send at most [`MAX_REQUEST`] bytes.
    pub fn serve(&self, handle: impl Fn(Request) -> Reply + Send + Sync + 'static) {
        let handle = Arc::new(handle);
        let busy = Arc::new(AtomicUsize::new(0));
        for conn in self.listener.incoming() {
            let Ok(mut s) = conn else { continue };
            if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                busy.fetch_sub(1, Ordering::AcqRel);
                // Answered here, at once: no thread for it, and only a short wait for its
                // request (read so the answer is not lost to ECONNRESET, see serve_one).
                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                let _ = s.read(&mut [0u8; 4096]);
                let msg = format!("the nfvs daemon is busy with {MAX_CLIENTS} other nfvs adm clients; try again");
                let _ = s.write_all(&encode_reply(&Reply::err(255, msg)));
                continue;
            }
            let (handle, done) = (handle.clone(), busy.clone());
            let spawned = std::thread::Builder::new().name("control-client".into()).spawn(move || {
                serve_one(&mut s, &*handle);
                done.fetch_sub(1, Ordering::AcqRel);
            });
            if spawned.is_err() {
                busy.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// One client: its request (read in either case: closing a Unix socket with unread data makes
/// the peer's read fail with ECONNRESET, and a refusal would never reach it), the answer.
fn serve_one(s: &mut UnixStream, handle: &dyn Fn(Request) -> Reply) {
    let request = read_request(s);
    let big = request.as_ref().is_ok_and(|r| r.stdin.len() > 1 << 20);
    let reply = match (peer_uid(s), request) {
        (Some(0), Ok(req)) => handle(req),
        (Some(0), Err(e)) => Reply::err(255, e),
        _ => Reply::err(255, "Permission denied (you must be root)"),
    };
    let _ = s.write_all(&encode_reply(&reply));
    if big {
        // A large restore's buffers are freed by now: give the memory back.
        crate::kernel::os::give_back_memory();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Reads a whole request within [`REQUEST_DEADLINE`] and [`MAX_REQUEST`] bytes.
fn read_request(s: &mut UnixStream) -> Result<Request, String> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the request did not arrive within {}s", REQUEST_DEADLINE.as_secs()));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if buf.len() + n > MAX_REQUEST => {
                return Err(format!("the request is larger than {} MiB: refused", MAX_REQUEST >> 20));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(format!("the request did not arrive within {}s", REQUEST_DEADLINE.as_secs()));
            }
            Err(e) => return Err(format!("reading request: {e}")),
        }
    }
    decode_request(&buf)
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd, and a correctly sized out buffer for SO_PEERCRED.
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, &mut cred as *mut _ as *mut libc::c_void, &mut len)
    };
    (r == 0).then_some(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request { args: vec!["-a".into(), "-t".into(), "1.2.3.4:80".into(), "".into()], stdin: "x\ny\n".into() };
        // An empty word cannot be told from the terminator; words from a shell are never empty
        // in practice, so the encoder's contract is "non-empty words".
        let r2 = Request { args: r.args[..3].to_vec(), stdin: r.stdin.clone() };
        assert_eq!(decode_request(&encode_request(&r2)).unwrap(), r2);
        assert!(decode_request(b"GET / HTTP/1.0\r\n").is_err());
        assert!(decode_request(b"nfvs-adm 1\n-L").is_err());
    }

    #[test]
    fn reply_round_trip() {
        let r = Reply { code: 2, stdout: "héllo\n".into(), stderr: "bad\n".into() };
        assert_eq!(decode_reply(&encode_reply(&r)).unwrap(), r);
        assert!(decode_reply(b"0\n99\nshort").is_err());
    }
}
