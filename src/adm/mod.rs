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
