//! The director sysctls from the seed (`ip_forward=1`, `send_redirects=0` for `all`, `default`
//! and every interface), set on start and restored on stop.
//!
//! The values nfvs replaced are written to a state file *before* anything is changed, so that
//! after a crash the next run finds the original values there (and does not mistake its own
//! values for them); the clean stop that follows restores what the system had before nfvs
//! first ran and removes the file. /proc/sys/net is per network namespace, and /run is not:
//! the state file name carries the namespace's inode number so several directors in several
//! namespaces on one host keep separate files.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A sysctl failure, naming the operation and the key or file.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("read sysctl {key}: {source}")]
    Read { key: String, source: io::Error },
    #[error("set sysctl {key}={value}: {source}")]
    Write { key: String, value: String, source: io::Error },
    #[error("write sysctl state file {path}: {source}")]
    StateWrite { path: PathBuf, source: io::Error },
    #[error("read sysctl state file {path}: {source}")]
    StateRead { path: PathBuf, source: io::Error },
    #[error("sysctl state file {path} line {line} is malformed: {text:?} (remove the file if the values in it are no longer wanted)")]
    StateParse { path: PathBuf, line: usize, text: String },
}

/// One wanted setting: key relative to /proc/sys (`net/ipv4/ip_forward`) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
}

impl Setting {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Setting {
        Setting { key: key.into(), value: value.into() }
    }
}

/// One record of the state file: a key, its value before nfvs, and the value nfvs set (absent
/// in files written before this field existed).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Saved {
    key: String,
    original: String,
    set: Option<String>,
}

/// Where sysctls and the state file live; tests point both at temporary directories.
#[derive(Debug, Clone)]
pub struct Sysctl {
    pub proc_sys: PathBuf,
    pub state_file: PathBuf,
}

/// The default state directory.
pub const STATE_DIR: &str = "/run/nfvs";

impl Sysctl {
    /// The real /proc/sys, with a state file under `state_dir` named after the current
    /// network namespace.
    pub fn system(state_dir: &Path) -> Sysctl {
        let ns = fs::metadata("/proc/self/ns/net").map(|m| m.ino()).unwrap_or(0);
        Sysctl { proc_sys: PathBuf::from("/proc/sys"), state_file: state_dir.join(format!("sysctl-netns-{ns}.state")) }
    }

    /// The seed's director settings for the interfaces present now.
    pub fn director_settings(&self) -> Result<Vec<Setting>, SysctlError> {
        let mut out = vec![Setting::new("net/ipv4/ip_forward", "1")];
        let conf = self.proc_sys.join("net/ipv4/conf");
        let mut names: Vec<String> = fs::read_dir(&conf)
            .map_err(|source| SysctlError::Read { key: "net/ipv4/conf".into(), source })?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n != "all" && n != "default")
            .collect();
        names.sort();
        for n in ["all".to_string(), "default".to_string()].into_iter().chain(names) {
            out.push(Setting::new(format!("net/ipv4/conf/{n}/send_redirects"), "0"));
        }
        Ok(out)
    }

    fn path(&self, key: &str) -> PathBuf {
        self.proc_sys.join(key)
    }

    pub fn read(&self, key: &str) -> Result<String, SysctlError> {
        fs::read_to_string(self.path(key))
            .map(|s| s.trim().to_string())
            .map_err(|source| SysctlError::Read { key: key.to_string(), source })
    }

    pub fn write(&self, key: &str, value: &str) -> Result<(), SysctlError> {
        fs::write(self.path(key), format!("{value}\n"))
            .map_err(|source| SysctlError::Write { key: key.to_string(), value: value.to_string(), source })
    }

    /// The saved records, if a state file exists.
    fn load_state(&self) -> Result<Vec<Saved>, SysctlError> {
        let text = match fs::read_to_string(&self.state_file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(SysctlError::StateRead { path: self.state_file.clone(), source }),
        };
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split(' ');
            let (Some(key), Some(original)) = (words.next(), words.next()) else {
                return Err(SysctlError::StateParse { path: self.state_file.clone(), line: i + 1, text: line.to_string() });
            };
            let set = words.next().map(str::to_string);
            out.push(Saved { key: key.to_string(), original: original.to_string(), set });
        }
        Ok(out)
    }

    fn save_state(&self, saved: &[Saved]) -> Result<(), SysctlError> {
        let err = |source| SysctlError::StateWrite { path: self.state_file.clone(), source };
        if let Some(dir) = self.state_file.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = self.state_file.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(err)?;
        writeln!(f, "# key, value before nfvs, value nfvs set; restored and removed on nfvs's clean stop").map_err(err)?;
        for s in saved {
            writeln!(f, "{} {} {}", s.key, s.original, s.set.as_deref().unwrap_or("")).map_err(err)?;
        }
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &self.state_file).map_err(err)
    }

    /// Sets `wanted`, first recording the values it replaces. A record left by an earlier run
    /// that did not stop cleanly is kept when the value is still the one that run set: the
    /// recorded value is then the system's own. When the value is something else, the record
    /// is stale (an admin changed the value since, or the file belongs to an earlier namespace
    /// whose inode the kernel reused) and the current value is taken instead.
    pub fn apply(&self, wanted: &[Setting]) -> Result<(), SysctlError> {
        let old = self.load_state()?;
        let mut saved = Vec::with_capacity(wanted.len());
        for w in wanted {
            let current = self.read(&w.key)?;
            let original = match old.iter().find(|s| s.key == w.key) {
                Some(s) if s.set.as_ref().is_none_or(|set| *set == current) => s.original.clone(),
                _ => current,
            };
            saved.push(Saved { key: w.key.clone(), original, set: Some(w.value.clone()) });
        }
        self.save_state(&saved)?;
        for w in wanted {
            self.write(&w.key, &w.value)?;
        }
        Ok(())
    }

    /// Restores every recorded value and removes the state file. Keys that no longer exist
    /// (an interface removed meanwhile) are skipped; other failures are returned after every
    /// key was tried, and the state file is then kept so a later stop can try again.
    pub fn restore(&self) -> Result<(), SysctlError> {
        let saved = self.load_state()?;
        let mut first_err = None;
        for s in &saved {
            match self.write(&s.key, &s.original) {
                Ok(()) => {}
                Err(SysctlError::Write { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        match fs::remove_file(&self.state_file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SysctlError::StateWrite { path: self.state_file.clone(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        dir: PathBuf,
        s: Sysctl,
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn fake(name: &str) -> Fake {
        let dir = std::env::temp_dir().join(format!("nfvs-sysctl-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ps = dir.join("proc");
        for n in ["all", "default", "ens33", "ens37"] {
            fs::create_dir_all(ps.join(format!("net/ipv4/conf/{n}"))).unwrap();
            fs::write(ps.join(format!("net/ipv4/conf/{n}/send_redirects")), "1\n").unwrap();
        }
        fs::write(ps.join("net/ipv4/ip_forward"), "0\n").unwrap();
        let s = Sysctl { proc_sys: ps, state_file: dir.join("run/sysctl.state") };
        Fake { dir, s }
    }

    #[test]
    fn apply_then_restore() {
        let f = fake("a");
        let want = f.s.director_settings().unwrap();
        let keys: Vec<&str> = want.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "net/ipv4/ip_forward",
                "net/ipv4/conf/all/send_redirects",
                "net/ipv4/conf/default/send_redirects",
                "net/ipv4/conf/ens33/send_redirects",
                "net/ipv4/conf/ens37/send_redirects"
            ]
        );
        f.s.apply(&want).unwrap();
        assert_eq!(f.s.read("net/ipv4/ip_forward").unwrap(), "1");
        assert_eq!(f.s.read("net/ipv4/conf/ens33/send_redirects").unwrap(), "0");
        assert!(f.s.state_file.exists());
        f.s.restore().unwrap();
        assert_eq!(f.s.read("net/ipv4/ip_forward").unwrap(), "0");
        assert_eq!(f.s.read("net/ipv4/conf/all/send_redirects").unwrap(), "1");
        assert!(!f.s.state_file.exists());
    }

    #[test]
    fn crash_then_restart_keeps_original_values() {
        let f = fake("b");
        let want = f.s.director_settings().unwrap();
        f.s.apply(&want).unwrap();
        // crash: no restore. The restart reads current values (nfvs's own) but must keep the
        // originals recorded by the first run.
        f.s.apply(&want).unwrap();
        f.s.restore().unwrap();
        assert_eq!(f.s.read("net/ipv4/ip_forward").unwrap(), "0");
        assert_eq!(f.s.read("net/ipv4/conf/ens37/send_redirects").unwrap(), "1");
    }

    #[test]
    fn stale_state_file_is_not_trusted() {
        let f = fake("d");
        let want = f.s.director_settings().unwrap();
        f.s.apply(&want).unwrap();
        // "Crash". Then something else sets ip_forward to a value nfvs never set (an admin, or
        // a new namespace that got this namespace's inode): the record is stale for that key.
        f.s.write("net/ipv4/ip_forward", "7").unwrap();
        f.s.apply(&want).unwrap();
        f.s.restore().unwrap();
        assert_eq!(f.s.read("net/ipv4/ip_forward").unwrap(), "7", "the value found, not the stale record");
        // ens37 still had nfvs's value at the restart: its record held, the pre-nfvs 1 is back.
        assert_eq!(f.s.read("net/ipv4/conf/ens37/send_redirects").unwrap(), "1");
    }

    #[test]
    fn vanished_interface_is_skipped_on_restore() {
        let f = fake("c");
        f.s.apply(&f.s.director_settings().unwrap()).unwrap();
        fs::remove_dir_all(f.s.proc_sys.join("net/ipv4/conf/ens33")).unwrap();
        f.s.restore().unwrap();
        assert_eq!(f.s.read("net/ipv4/ip_forward").unwrap(), "0");
    }
}
