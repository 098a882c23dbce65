//! Port names from `/etc/services`, both ways: ipvsadm names ports in listings without `-n`
//! (`getservbyport`) and takes names for ports in service and server addresses
//! (`getservbyname`). One reader serves both.
//!
//! The file is `name port/proto [aliases...] [# comment]`; the first line that matches wins, as
//! glibc's files backend returns it.

use std::collections::HashMap;

use crate::model::Protocol;

/// `/etc/services` read once: names by port, ports by name or alias.
#[derive(Debug, Clone, Default)]
pub struct PortNames {
    by_port: HashMap<(Protocol, u16), String>,
    by_name: HashMap<(Protocol, String), u16>,
}

impl PortNames {
    /// No names at all: every port prints as a number, and no name is a port.
    pub fn none() -> PortNames {
        PortNames::default()
    }

    /// The system's `/etc/services`. If it cannot be read, ports print as numbers and names
    /// are not ports, which is what ipvsadm does when `getservbyport`/`getservbyname` find
    /// nothing.
    pub fn system() -> PortNames {
        std::fs::read_to_string("/etc/services").map(|t| PortNames::parse(&t)).unwrap_or_default()
    }

    /// Parses `/etc/services` text. Lines that do not read as `name port/tcp` or
    /// `name port/udp` are skipped.
    pub fn parse(text: &str) -> PortNames {
        let mut names = PortNames::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let (Some(name), Some(port_proto)) = (words.next(), words.next()) else { continue };
            let Some((port, proto)) = port_proto.split_once('/') else { continue };
            let Ok(port) = port.parse::<u16>() else { continue };
            let proto = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => continue,
            };
            names.by_port.entry((proto, port)).or_insert_with(|| name.to_string());
            for n in std::iter::once(name).chain(words) {
                names.by_name.entry((proto, n.to_string())).or_insert(port);
            }
        }
        names
    }

    /// The name of `port` (`getservbyport`).
    pub fn name(&self, proto: Protocol, port: u16) -> Option<&str> {
        self.by_port.get(&(proto, port)).map(String::as_str)
    }

    /// The port named `name`, by its name or an alias (`getservbyname`).
    pub fn port(&self, proto: Protocol, name: &str) -> Option<u16> {
        self.by_name.get(&(proto, name.to_string())).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# c\nhttp\t80/tcp\twww # web\nwww-alt 80/tcp\nhttp 80/udp\nbad line\nx 99999/tcp\n\
        alt 8080/tcp www\nhttps 443/tcp\n";

    #[test]
    fn first_match_wins_by_port() {
        let n = PortNames::parse(TEXT);
        assert_eq!(n.name(Protocol::Tcp, 80), Some("http"));
        assert_eq!(n.name(Protocol::Udp, 80), Some("http"));
        assert_eq!(n.name(Protocol::Tcp, 81), None);
    }

    #[test]
    fn first_match_wins_by_name_and_alias() {
        let n = PortNames::parse(TEXT);
        assert_eq!(n.port(Protocol::Tcp, "http"), Some(80));
        // `www` is an alias of http (80) first, of alt (8080) later.
        assert_eq!(n.port(Protocol::Tcp, "www"), Some(80));
        assert_eq!(n.port(Protocol::Tcp, "alt"), Some(8080));
        assert_eq!(n.port(Protocol::Udp, "https"), None);
        assert_eq!(n.port(Protocol::Tcp, "x"), None, "99999 is no port");
        assert_eq!(n.port(Protocol::Tcp, "comment"), None);
    }
}
