//! ipvsadm's language: what nfvs understands in it and what it answers, for the rules file,
//! `nfvs adm` and the `ipvsadm` symlink alike.
//!
//! - [`args`]: stage one, words -> [`args::RawArgs`], as ipvsadm's popt table parses them;
//! - [`command`]: stage two, [`command::Command`] checked against ipvsadm's legality table
//!   and value ranges, with ipvsadm's messages and exit statuses;
//! - [`addresses`]: addresses that cannot work, refused or warned about as IPVS takes them;
//! - [`rules`]: rules files, applying table edits, the difference a SIGHUP reload applies;
//! - [`etc_services`]: port names from `/etc/services`, both ways;
//! - [`listing`]: `-L`, `-S`, `-L -c`, `--timeout`, byte for byte;
//! - [`usage`]: `-h` and `-v`;
//! - [`control`]: the control socket between `nfvs adm` and the daemon.
//!
//! Everything here is pure (words and tables in, commands and text out) except [`control`]'s
//! socket and the reading of files named by the caller.

pub mod addresses;
pub mod args;
pub mod command;
pub mod control;
pub mod etc_services;
pub mod listing;
pub mod rules;
pub mod usage;

/// Input quoted back in a message, cut to a readable length: a rejected 10 MB line is not
/// echoed whole into the log or a terminal (issue 11 #9).
pub fn shorten(s: &str) -> std::borrow::Cow<'_, str> {
    const KEEP: usize = 64;
    if s.len() <= KEEP + 16 {
        return s.into();
    }
    let cut = (0..=KEEP).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    format!("{}... ({} bytes)", &s[..cut], s.len()).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_input_is_shortened_on_a_char_boundary() {
        assert_eq!(super::shorten("-A -t 1.2.3.4:80"), "-A -t 1.2.3.4:80");
        let long = "é".repeat(5_000_000);
        let s = super::shorten(&long);
        assert!(s.len() < 100 && s.ends_with("... (10000000 bytes)"), "{s}");
    }
}
