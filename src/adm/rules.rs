//! Rules files (one ipvsadm command per line, as `ipvsadm -S -n` prints them), applying table
//! edits, and the difference between two tables that a SIGHUP reload applies.

use std::path::Path;

use crate::sched::SchedOptions;
use crate::service::{DestSpec, EditError, Table};

use super::addresses;
use super::args::parse_line;
use super::command::{edit_hint, edit_message, Command};

/// Why a rules file was refused: where, and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The OS error is the source, not part of the message: error chains (`{:#}`) print
    /// each link once.
    #[error("cannot read rules file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line { path: String, line: usize, message: String },
    /// The file as a whole cannot be a rules file (its kind, its size).
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: no virtual service defined (add a line such as `-A -t 192.168.199.200:80 -s wrr`)")]
    Empty { path: String },
}

/// Applies an editing command to a table. Listing and other non-editing commands are not
/// allowed here (the caller handles them).
pub fn apply(table: &mut Table, cmd: &Command) -> Result<(), EditError> {
    match cmd {
        Command::AddService(s) => table.add_service(s.clone()),
        Command::EditService(s) => table.edit_service(s.clone()),
        Command::DelService(k) => table.del_service(k).map(|_| ()),
        Command::Clear => {
            table.clear();
            Ok(())
        }
        Command::AddDest(k, d) => table.add_dest(k, *d).map(|_| ()),
        Command::EditDest(k, d) => table.edit_dest(k, *d),
        Command::DelDest(k, a, p) => table.del_dest(k, *a, *p).map(|_| ()),
        _ => Ok(()),
    }
}

/// A rules file read: the table it builds, and what it sets up that IPVS takes but that
/// cannot work ([`addresses::warnings`]), each as `FILE:LINE: what`.
#[derive(Debug)]
pub struct Rules {
    pub table: Table,
    pub warnings: Vec<String>,
}

/// Reads a rules file: one ipvsadm command per line in `ipvsadm -S -n` form (a leading
/// `ipvsadm` word is allowed; blank lines and `#` comments are skipped). Only table edits
/// (-A -E -D -C -a -e -d) are allowed. The file is applied to an empty table in order; the
/// first bad line stops everything with an error naming the file, line and what is wrong.
pub fn load_rules(path: &Path) -> Result<Table, ConfigError> {
    load_rules_with(path, SchedOptions::default())
}

/// [`load_rules`] with director-wide scheduler settings (see [`Table::with_defaults`]). Its
/// warnings go to the log: this is how the daemon reads its file, at start-up and on SIGHUP.
/// [`read_rules`] returns them instead.
pub fn load_rules_with(path: &Path, defaults: SchedOptions) -> Result<Table, ConfigError> {
    let rules = read_rules(path, defaults)?;
    for w in &rules.warnings {
        log::warn!("{w}");
    }
    Ok(rules.table)
}

/// [`load_rules_with`], the warnings returned with the table.
pub fn read_rules(path: &Path, defaults: SchedOptions) -> Result<Rules, ConfigError> {
    let p = path.display().to_string();
    let bytes = read_regular_file(path).map_err(|e| match e {
        Unreadable::Io(source) => ConfigError::Read { path: p.clone(), source },
        Unreadable::Kind(message) => ConfigError::File { path: p.clone(), message },
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let text = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = text.iter().filter(|&&b| b == b'\n').count() + 1;
        ConfigError::Line { path: p.clone(), line, message: "not UTF-8 text".into() }
    })?;
    parse_rules_text(&text, &p, defaults)
}

/// Rules files are read whole into memory: larger ones are refused (10,000 services with a
/// real server each take about 1 MiB).
pub const MAX_RULES_FILE: u64 = 64 << 20;

enum Unreadable {
    Io(std::io::Error),
    Kind(String),
}

/// A regular file's bytes, opened without blocking: a FIFO given as the rules file used to
/// hang the signal thread (SIGTERM ignored until someone wrote to it; issue 11 #9).
fn read_regular_file(path: &Path) -> Result<Vec<u8>, Unreadable> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(Unreadable::Io)?;
    let meta = f.metadata().map_err(Unreadable::Io)?;
    if !meta.is_file() {
        return Err(Unreadable::Kind("not a regular file (a FIFO, a device, a directory...): nfvs reads rules from regular files only".into()));
    }
    if meta.len() > MAX_RULES_FILE {
        return Err(Unreadable::Kind(format!("{} bytes: larger than the {} MiB nfvs reads", meta.len(), MAX_RULES_FILE >> 20)));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.by_ref().take(MAX_RULES_FILE + 1).read_to_end(&mut bytes).map_err(Unreadable::Io)?;
    Ok(bytes)
}

/// A line without its comment: `#` at the start of a word starts one, as at the start of a
/// line (`-A -t VIP:80 -s wrr # the web site`). No word of ipvsadm's language starts with it.
pub fn strip_comment(line: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// [`load_rules`] on text already read; `path` only names the source in errors.
pub fn parse_rules(text: &str, path: &str) -> Result<Table, ConfigError> {
    parse_rules_with(text, path, SchedOptions::default())
}

/// [`parse_rules`] with director-wide scheduler settings.
pub fn parse_rules_with(text: &str, path: &str, defaults: SchedOptions) -> Result<Table, ConfigError> {
    Ok(parse_rules_text(text, path, defaults)?.table)
}

/// [`parse_rules_with`], the warnings returned with the table.
pub fn parse_rules_text(text: &str, path: &str, defaults: SchedOptions) -> Result<Rules, ConfigError> {
    let mut table = Table::with_defaults(defaults);
    let mut warnings = Vec::new();
    // A UTF-8 byte order mark, as some Windows editors write, is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (n, line) in text.lines().enumerate() {
        let err = |message: String| ConfigError::Line { path: path.to_string(), line: n + 1, message };
        let trimmed = strip_comment(line).trim();
        if trimmed.is_empty() {
            continue;
        }
        let cmd = parse_line(trimmed).map_err(|e| err(e.to_string()))?;
        if !cmd.is_edit() {
            return Err(err(format!(
                "'{}' does not edit the table; a rules file holds only -A -E -D -C -a -e -d lines",
                super::shorten(trimmed)
            )));
        }
        apply(&mut table, &cmd).map_err(|e| {
            let mut m = edit_message(&cmd, &e);
            if let Some(h) = edit_hint(&e) {
                m.push_str(&format!(" ({h})"));
            } else if e == EditError::NoService {
                m.push_str(" (a real server's service must be added with -A on an earlier line)");
            }
            err(m)
        })?;
        warnings.extend(addresses::warnings(&cmd).into_iter().map(|w| format!("{path}:{}: {w}", n + 1)));
    }
    if table.services().is_empty() {
        return Err(ConfigError::Empty { path: path.to_string() });
    }
    Ok(Rules { table, warnings })
}

/// The table edits that turn `old` into `new` (for SIGHUP reload): only what differs, so
/// untouched services keep their scheduler state and counters. Deletions come first; new real
/// servers are added oldest first, which reproduces `new`'s list order.
pub fn diff(old: &Table, new: &Table) -> Vec<Command> {
    let mut out = Vec::new();
    for s in old.services() {
        if new.find(&s.key()).is_none() {
            out.push(Command::DelService(s.key()));
        }
    }
    for n in new.services() {
        let key = n.key();
        let adds = |from: &[crate::service::Dest], out: &mut Vec<Command>| {
            for d in from.iter().rev() {
                out.push(Command::AddDest(key, dest_spec_of(d)));
            }
        };
        match old.find(&key).map(|i| &old.services()[i]) {
            None => {
                out.push(Command::AddService(n.spec.clone()));
                adds(&n.dests, &mut out);
            }
            Some(o) => {
                if o.spec != n.spec {
                    out.push(Command::EditService(n.spec.clone()));
                }
                for d in &o.dests {
                    if n.dest_index(d.addr, d.port).is_none() {
                        out.push(Command::DelDest(key, d.addr, d.port));
                    }
                }
                let fresh: Vec<crate::service::Dest> =
                    n.dests.iter().filter(|d| o.dest_index(d.addr, d.port).is_none()).cloned().collect();
                adds(&fresh, &mut out);
                for d in &n.dests {
                    if let Some(i) = o.dest_index(d.addr, d.port) {
                        if dest_spec_of(&o.dests[i]) != dest_spec_of(d) {
                            out.push(Command::EditDest(key, dest_spec_of(d)));
                        }
                    }
                }
            }
        }
    }
    out
}

fn dest_spec_of(d: &crate::service::Dest) -> DestSpec {
    DestSpec { addr: d.addr, port: d.port, weight: d.weight, u_threshold: d.u_threshold, l_threshold: d.l_threshold }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const LAB: &str = "-A -t 192.168.199.200:80 -s wrr\n\
        -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\n\
        -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1\n";

    fn err_of(text: &str) -> String {
        parse_rules(text, "t.rules").unwrap_err().to_string()
    }

    /// Issue 11 #9: `#` after the words, and a UTF-8 byte order mark, as the README promises
    /// and editors write.
    #[test]
    fn comments_after_words_and_a_byte_order_mark() {
        let text = "\u{feff}-A -t 192.168.199.200:80 -s wrr # the web site\n\
                    -a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1\t# rs1\n";
        let t = parse_rules(text, "t").unwrap();
        assert_eq!((t.services().len(), t.services()[0].dests.len()), (1, 1));
        assert_eq!(strip_comment("-A -t 1.2.3.4:80 -s wrr#x"), "-A -t 1.2.3.4:80 -s wrr#x", "not at a word's start");
    }

    /// Issue 11 #9: `-x 10 -y 20` (lower above upper) was taken; the kernel answers ERANGE.
    #[test]
    fn lower_threshold_above_upper_is_out_of_range() {
        for dest in ["-x 10 -y 20", "-y 5"] {
            let text = format!("-A -t 10.0.0.1:80 -s wlc\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m {dest}\n");
            let e = parse_rules(&text, "f").unwrap_err().to_string();
            assert!(e.starts_with("f:2: Numerical result out of range (the lower threshold"), "{dest}: {e}");
        }
        let ok = "-A -t 10.0.0.1:80 -s wlc\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m -x 20 -y 20\n";
        assert!(parse_rules(ok, "f").is_ok());
    }

    /// Issue 11 #9: a FIFO as the rules file hung the reader (and with it SIGTERM); only regular
    /// files are read, without blocking. A 10 MB bad line is quoted shortened.
    #[test]
    fn a_fifo_is_refused_at_once_and_bad_input_is_quoted_short() {
        let dir = std::env::temp_dir().join(format!("nfvs-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("rules.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        let e = read_rules(&fifo, SchedOptions::default()).err().expect("a FIFO is no rules file").to_string();
        assert!(t.elapsed() < std::time::Duration::from_secs(1) && e.contains("not a regular file"), "{e}");
        let long = format!("-A -t 10.0.0.1:80 -s rr\n-a --{}\n", "x".repeat(10 << 20));
        let e = parse_rules(&long, "f").unwrap_err().to_string();
        assert!(e.len() < 300 && e.contains("bytes)"), "{} bytes: {}", e.len(), &e[..e.len().min(300)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn seed_lab_rules() {
        let t = parse_rules(LAB, "lab.rules").unwrap();
        let s = &t.services()[0];
        assert_eq!(s.key().vip().to_string(), "192.168.199.200:80");
        assert_eq!(s.scheduler_name(), "wrr");
        // IPVS list order: newest first.
        let order: Vec<String> = s.dests.iter().map(|d| d.rip().to_string()).collect();
        assert_eq!(order, ["192.168.226.131:80", "192.168.226.130:80"]);
    }

    #[test]
    fn ipvsadm_prefix_comments_and_long_options() {
        let text = "# saved\nipvsadm -A -t 10.0.0.1:80 --scheduler rr\n\n\
            ipvsadm --add-server --tcp-service=10.0.0.1:80 --real-server 10.0.1.1 --masquerading --weight 3\n";
        let t = parse_rules(text, "x").unwrap();
        let d = &t.services()[0].dests[0];
        assert_eq!((d.port, d.weight), (80, 3), "port defaults to the service's");
    }

    #[test]
    fn bad_files_name_the_line() {
        assert_eq!(
            err_of("-A -t 192.168.199.200:80 -s wrr --frobnicate\n"),
            "t.rules:1: --frobnicate: unknown option (see `nfvs adm --help` for the options nfvs understands)"
        );
        assert!(err_of("-A -t 192.168.199.200:80 -s wrr\n-a -t 192.168.199.200:80 -r 192.168.226.300:80 -m\n")
            .starts_with("t.rules:2: illegal real server address[:port] specified"));
        assert!(err_of("-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m\n").starts_with("t.rules:1: Service not defined"));
        assert_eq!(
            err_of("-A -t 192.168.199.200:80 -s wrr\n\n-A -t 192.168.199.200:80 -s rr\n"),
            "t.rules:3: Service already exists"
        );
        assert!(err_of("-A -t 1.2.3.4:80 -s nosuch\n").starts_with("t.rules:1: Scheduler or persistence engine not found"));
        assert!(err_of("-A -t 1.2.3.4:80 -s rr\n-a -t 1.2.3.4:80 -r 5.6.7.8 -g\n").contains("direct routing (-g) is not supported"));
        assert!(err_of("-A -t 1.2.3.4:80 -s rr\n-a -t 1.2.3.4:80 -r 5.6.7.8\n").contains("add -m"));
        assert!(err_of("-A -t 1.2.3.4:80 -s rr\n-a -t 1.2.3.4:80 -r 5.6.7.8 -m -w 70000\n").contains("illegal weight specified"));
        assert!(err_of("-L -n\n").contains("does not edit the table"));
        assert!(err_of("# nothing\n").contains("no virtual service defined"));
    }

    #[test]
    fn reload_diff_applies_only_changes() {
        let old = parse_rules(LAB, "old").unwrap();
        let new_text = "-A -t 192.168.199.200:80 -s wrr\n\
            -a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 3\n\
            -a -t 192.168.199.200:80 -r 192.168.226.132:80 -m -w 1\n\
            -A -t 192.168.199.200:443 -s rr\n\
            -a -t 192.168.199.200:443 -r 192.168.226.130:443 -m\n";
        let new = parse_rules(new_text, "new").unwrap();
        let cmds = diff(&old, &new);
        let lines: Vec<String> = cmds.iter().map(|c| format!("{c:?}")).collect();
        assert_eq!(cmds.len(), 5, "{lines:#?}");
        assert!(matches!(cmds[0], Command::DelDest(_, a, 80) if a == Ipv4Addr::new(192, 168, 226, 130)));
        assert!(matches!(cmds[1], Command::AddDest(_, d) if d.addr == Ipv4Addr::new(192, 168, 226, 132)));
        assert!(matches!(cmds[2], Command::EditDest(_, d) if d.weight == 3));
        assert!(matches!(cmds[3], Command::AddService(ref s) if s.key.port == 443));
        // Applying the diff to the old table gives the new one, list order included.
        let mut t = parse_rules(LAB, "old").unwrap();
        for c in &cmds {
            apply(&mut t, c).unwrap();
        }
        assert!(diff(&t, &new).is_empty());
        let order = |t: &Table| -> Vec<String> {
            t.services().iter().flat_map(|s| s.dests.iter().map(|d| format!("{} {}", d.rip(), d.weight))).collect()
        };
        assert_eq!(order(&t), order(&new));
        assert!(diff(&new, &new).is_empty());
    }

    #[test]
    fn director_wide_scheduler_settings_reach_every_service() {
        let defaults = SchedOptions { overhead: crate::sched::Overhead::Total, seed: 7, ..SchedOptions::default() };
        let t = parse_rules_with("-A -t 1.2.3.4:80 -s sh -b sh-port\n", "x", defaults).unwrap();
        let o = t.services()[0].spec.sched_opts;
        assert_eq!((o.overhead, o.seed), (crate::sched::Overhead::Total, 7));
        assert!(o.flags.flag2, "the service's own -b flags are kept");
    }

    /// Issue 10: why a file cannot be read is said once, also when the error is printed as a
    /// chain (`{:#}`: main's error line, the SIGHUP log); a file that is not UTF-8 names the
    /// line where it stops being text.
    #[test]
    fn unreadable_files_say_why_once() {
        let chain = |path: &Path| format!("{:#}", anyhow::Error::from(load_rules(path).unwrap_err()));
        assert_eq!(
            chain(Path::new("/nonexistent/nfvs.rules")),
            "cannot read rules file /nonexistent/nfvs.rules: No such file or directory (os error 2)"
        );
        let path = std::env::temp_dir().join(format!("nfvs-{}-latin1.rules", std::process::id()));
        std::fs::write(&path, b"-A -t 1.2.3.4:80 -s rr\n# caf\xe9\n").unwrap();
        let got = chain(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(got, format!("{}:2: not UTF-8 text", path.display()));
    }

    /// Issue 10: addresses that cannot work are refused in a rules file's `FILE:LINE: what`
    /// form where IPVS refuses them, and warned about, line named, where IPVS takes them.
    #[test]
    fn addresses_that_cannot_work_name_the_line() {
        let svc = "-A -t 10.0.0.1:80 -s rr\n";
        assert_eq!(
            err_of(&format!("{svc}-a -t 10.0.0.1:80 -r 0.0.0.0:80 -m\n")),
            "t.rules:2: Invalid operation.  Possibly wrong module version, address not unicast, ... \
             (0.0.0.0: a real server needs a unicast address (IPVS refuses it too))"
        );
        let text = format!("{svc}# loopback next\n-a -t 10.0.0.1:80 -r 127.0.0.1:80 -m\n-A -t 0.0.0.0:80 -s rr\n");
        let rules = parse_rules_text(&text, "t.rules", SchedOptions::default()).unwrap();
        assert_eq!(rules.table.services().len(), 2);
        let w = &rules.warnings;
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("t.rules:3: real server 127.0.0.1:80 of -t 10.0.0.1:80 is a loopback address"), "{w:?}");
        assert!(w[1].starts_with("t.rules:4: virtual service -t 0.0.0.0:80: 0.0.0.0 is no address"), "{w:?}");
        assert!(parse_rules_text(LAB, "t.rules", SchedOptions::default()).unwrap().warnings.is_empty());
    }
}
