//! What an admin (or a script, or a peer on the control socket) types: ipvsadm word vectors,
//! command lines, rules files as text, as any UTF-8 and as any bytes through the file reader,
//! `-R` input, control requests and replies, `/etc/services`.
//!
//! Word vectors mix every option nfvs's help lists with the values its options take (edge
//! numbers, addresses, scheduler names and flags) and random strings, so most inputs get past
//! the option parser into the checks of stage two and the table edits; real ipvsadm lines are
//! damaged word by word and character by character. Whatever parses is then carried as far as
//! the daemon carries it: applied to a table, listed, saved, and scheduled.

use std::net::Ipv4Addr;
use std::sync::LazyLock;
use std::time::Duration;

use nfvs::adm::addresses;
use nfvs::adm::args::{parse_args, parse_line};
use nfvs::adm::command::{Command, ListFormat, ListWhat};
use nfvs::adm::control::{decode_reply, decode_request, encode_reply, encode_request, Reply, Request};
use nfvs::adm::etc_services::PortNames;
use nfvs::adm::listing;
use nfvs::adm::rules::{self, parse_rules, parse_rules_text, read_rules};
use nfvs::adm::usage;
use nfvs::model::Protocol;
use nfvs::ruleset::{self, Overload};
use nfvs::sched::{self, SchedOptions};
use nfvs::service::Table;
use nfvs::stats::NoStats;
use proptest::prelude::*;
use proptest::sample::{select, Index};

use crate::harness::{apply_edits, bytes_from, fuzz, random_bytes, Edit};

/// The seed's rules file.
pub(crate) const LAB_RULES: &str = include_str!("../../rules/lab.rules");

/// Real ipvsadm command lines: the lab's, and one of each command and option family, as the
/// README, the issue and `tests/adm_lab.rs` use them.
const REAL_LINES: &[&str] = &[
    "-A -t 192.168.199.200:80 -s wrr",
    "-a -t 192.168.199.200:80 -r 192.168.226.130:80 -m -w 1",
    "-a -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 1",
    "ipvsadm -A -t 192.168.199.200:81 -s rr",
    "-E -t 192.168.199.200:80 -s sh -b sh-fallback,sh-port -p 60 -M 255.255.255.0",
    "-A -t 192.168.199.200:443 -s mh -b mh-port -p",
    "-A -t 192.168.199.202:0 -s rr -p",
    "-e -t 192.168.199.200:80 -r 192.168.226.131:80 -m -w 0 -x 10 -y 5",
    "-a -t 192.168.199.200:80 -r 192.168.226.132 -m -w 3 -x 20 -y 10",
    "-d -t 192.168.199.200:80 -r 192.168.226.131:80",
    "-D -t 192.168.199.200:80",
    "-C",
    "-L -n --stats --exact",
    "-L -n -t 192.168.199.200:80 --thresholds",
    "-L -c -n --persistent-conn",
    "-Ln --rate --nosort",
    "-L --timeout",
    "-S -n",
    "-R",
    "-Z -t 192.168.199.200:80",
    "--set 900 120 300",
    "--start-daemon master --mcast-interface eth0 --syncid 3",
    "-A -t 192.168.199.200:80 -s wrr # comment",
    "-a -t 192.168.199.200:http -r 192.168.226.130:www -m",
    "--add-service --tcp-service=192.168.199.200:80 --scheduler=lblcr --persistent=30 --netmask=24",
];

// ---------------------------------------------------------------------------------------------
// Words.
// ---------------------------------------------------------------------------------------------

/// Every option spelling nfvs's own help lists (so the vocabulary follows the parser as it
/// grows), and the few that it does not print.
pub(crate) fn option_names() -> Vec<String> {
    let help = usage::usage("ipvsadm");
    let mut names: Vec<String> = help
        .split(|c: char| c.is_whitespace() || "|[]{},".contains(c))
        .filter(|w| w.len() > 1 && w.starts_with('-') && w[1..].chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_string)
        .collect();
    names.extend(["-v", "--version", "-X", "-l", "--list"].map(String::from));
    names.sort();
    names.dedup();
    names
}

#[rustfmt::skip]
const ADDRESSES: &[&str] = &[
    "192.168.199.200:80", "192.168.226.130:80", "192.168.226.131", "1.2.3.4", "0.0.0.0:0", "0.0.0.0",
    "255.255.255.255:65535", "127.0.0.1:80", "224.0.0.1:80", "192.168.199.200:http", "1.2.3.4:99999",
    "1.2.3.4:-1", "1.2.3.4:", ":80", "1.2.3.4:80:90", "::1", "[::1]:80", "fd00::1", "1.2.3", "1.2.3.4.5",
    "01.2.3.4:080", "localhost:80", "1.2.3.4:nosuchname",
];

#[rustfmt::skip]
const NUMBERS: &[&str] = &[
    "0", "1", "2", "5", "10", "20", "30", "60", "255", "360", "65535", "65536", "2147483647", "2147483648",
    "4294967295", "4294967296", "18446744073709551616", "-1", "+1", "01", " 1", "1e3", "0x10", "",
];

#[rustfmt::skip]
const FLAGS: &[&str] = &[
    "flag-1", "flag-2", "flag-3", "flag-1,flag-2,flag-3", "sh-fallback", "sh-port", "sh-fallback,sh-port",
    "mh-fallback", "mh-port", "mh-fallback,mh-port", "flag-4", ",", "flag-1,",
];

const MASKS: &[&str] =
    &["255.255.255.0", "255.255.0.0", "255.255.255.255", "0.0.0.0", "255.0.255.0", "0", "16", "24", "32", "33"];

const OTHER_VALUES: &[&str] =
    &["master", "backup", "eth0", "224.0.0.81", "sip", "gue", "ipvsadm", "-", "--", "#", "# comment", "\u{feff}-A"];

/// A value an option may be given: an edge, a real one, or anything at all.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(ADDRESSES).prop_map(String::from),
        3 => select(NUMBERS).prop_map(String::from),
        2 => select(sched::NAMES).prop_map(String::from),
        1 => select(FLAGS).prop_map(String::from),
        1 => select(MASKS).prop_map(String::from),
        1 => select(OTHER_VALUES).prop_map(String::from),
        1 => "\\PC{0,16}",
        1 => any::<String>(),
    ]
}

/// One word of a command line: an option (alone, `--long=value`, or a cluster of short ones
/// with or without a value), or a value.
pub(crate) fn word(options: &[String]) -> impl Strategy<Value = String> {
    let shorts: Vec<char> = options
        .iter()
        .filter_map(|o| o.strip_prefix('-').filter(|s| s.len() == 1))
        .filter_map(|s| s.chars().next())
        .collect();
    let longs: Vec<String> = options.iter().filter(|o| o.starts_with("--")).cloned().collect();
    prop_oneof![
        5 => select(options.to_vec()),
        4 => value(),
        1 => (select(longs), value()).prop_map(|(o, v)| format!("{o}={v}")),
        1 => (proptest::collection::vec(select(shorts), 1..4), prop_oneof![Just(String::new()), value()])
            .prop_map(|(cs, v)| format!("-{}{v}", cs.into_iter().collect::<String>())),
    ]
}

fn words() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(word(&option_names()), 0..12)
}

/// What is done to one word of a real line.
#[derive(Debug, Clone)]
enum WordEdit {
    Replace(Index, String),
    Insert(Index, String),
    Remove(Index),
    Repeat(Index),
    /// Damage the word's characters.
    Chars(Index, Index, char, bool),
}

fn word_edit() -> impl Strategy<Value = WordEdit> {
    let options = option_names();
    prop_oneof![
        3 => (any::<Index>(), word(&options)).prop_map(|(i, w)| WordEdit::Replace(i, w)),
        2 => (any::<Index>(), word(&options)).prop_map(|(i, w)| WordEdit::Insert(i, w)),
        1 => any::<Index>().prop_map(WordEdit::Remove),
        1 => any::<Index>().prop_map(WordEdit::Repeat),
        2 => (any::<Index>(), any::<Index>(), any::<char>(), any::<bool>())
            .prop_map(|(i, at, c, cut)| WordEdit::Chars(i, at, c, cut)),
    ]
}

fn edit_words(mut words: Vec<String>, edits: &[WordEdit]) -> Vec<String> {
    for e in edits {
        let n = words.len();
        match e {
            WordEdit::Replace(i, w) if n > 0 => words[i.index(n)] = w.clone(),
            WordEdit::Insert(i, w) => words.insert(i.index(n + 1), w.clone()),
            WordEdit::Remove(i) if n > 0 => drop(words.remove(i.index(n))),
            WordEdit::Repeat(i) if n > 0 => {
                let i = i.index(n);
                words.insert(i, words[i].clone());
            }
            WordEdit::Chars(i, at, c, cut) if n > 0 => {
                let w = &mut words[i.index(n)];
                let chars: Vec<char> = w.chars().collect();
                let at = at.index(chars.len() + 1);
                *w = if *cut {
                    chars[..at].iter().collect()
                } else {
                    chars[..at].iter().chain(std::iter::once(c)).chain(&chars[at..]).collect()
                };
            }
            _ => {}
        }
    }
    words
}

/// A real ipvsadm line, damaged word by word.
fn real_words() -> impl Strategy<Value = Vec<String>> {
    (select(REAL_LINES), proptest::collection::vec(word_edit(), 0..4))
        .prop_map(|(line, edits)| edit_words(line.split_whitespace().map(String::from).collect(), &edits))
}

/// Word vectors: damaged real lines and free mixes of options and values.
fn arguments() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![real_words(), words()]
}

const SEPARATORS: &[&str] = &[" ", "  ", "\t", " '", "' ", "\"", " \" ", "\u{a0}", "\r"];
const NEWLINES: &[&str] = &["\n", "\r\n"];

/// Words joined into one line, with spaces, tabs or quotes between them as a shell user types.
fn line() -> impl Strategy<Value = String> {
    let sep = select(SEPARATORS);
    prop_oneof![
        6 => (arguments(), proptest::collection::vec(sep, 12)).prop_map(|(words, seps)| {
            let mut line = String::new();
            for (w, s) in words.iter().zip(seps.iter().cycle()) {
                line.push_str(w);
                line.push_str(s);
            }
            line
        }),
        1 => "\\PC{0,60}",
        1 => any::<String>(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Rules files.
// ---------------------------------------------------------------------------------------------

/// Services and servers the generated edits share, so that servers find their services and
/// edits find what they edit.
const VIPS: &[&str] = &["192.168.199.200:80", "192.168.199.200:443", "192.168.199.201:80", "10.0.0.1:8080"];
const RIPS: &[&str] = &["192.168.226.130:80", "192.168.226.131", "192.168.226.132:8080", "10.0.1.1:80"];

/// A number for an option: mostly a plausible one, sometimes an edge.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![3 => (0u32..100).prop_map(|n| n.to_string()), 1 => select(NUMBERS).prop_map(String::from)]
}

/// ` FLAG VALUE`, or nothing.
fn maybe(flag: &'static str, value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), value.prop_map(move |v| format!(" {flag} {v}"))]
}

/// `-A`/`-E` with every option they take, mostly good values.
fn service_line() -> impl Strategy<Value = String> {
    (
        select(&["-A", "-E"][..]),
        select(VIPS),
        select(sched::NAMES),
        maybe("-p", number()),
        maybe("-M", select(MASKS).prop_map(String::from)),
        prop_oneof![3 => Just(String::new()), 1 => maybe("-b", select(FLAGS).prop_map(String::from))],
    )
        .prop_map(|(c, vip, s, p, m, b)| format!("{c} -t {vip} -s {s}{p}{m}{b}"))
}

/// Table edits in ipvsadm's grammar with every option they take, mostly good ones: a rules
/// file of these gets past its first line, to the table and what is done with it.
fn edit_line() -> impl Strategy<Value = String> {
    let server = (
        select(&["-a", "-e"][..]),
        select(VIPS),
        select(RIPS),
        maybe("-w", number()),
        maybe("-x", number()),
        maybe("-y", number()),
    )
        .prop_map(|(c, vip, rip, w, x, y)| format!("{c} -t {vip} -r {rip} -m{w}{x}{y}"));
    let delete = prop_oneof![
        (select(VIPS), select(RIPS)).prop_map(|(v, r)| format!("-d -t {v} -r {r}")),
        select(VIPS).prop_map(|v| format!("-D -t {v}")),
        Just("-C".to_string()),
    ];
    prop_oneof![3 => service_line(), 6 => server, 1 => delete]
}

/// A rules file: the lab's, or services to start with (or neither, or a byte-order mark),
/// then lines that are mostly good edits, some damaged real lines, blanks and comments.
fn rules_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        12 => edit_line(),
        3 => line(),
        1 => Just(String::new()),
        1 => "[ \t]{0,3}#\\PC{0,20}",
        1 => edit_line().prop_map(|l| format!("ipvsadm {l} # a comment")),
    ];
    let start = prop_oneof![
        2 => Just(vec![]),
        3 => Just(vec![LAB_RULES.to_string()]),
        4 => proptest::collection::vec(service_line(), 1..4),
        4 => proptest::collection::vec(select(sched::NAMES), VIPS.len())
            .prop_map(|s| VIPS.iter().zip(s).map(|(vip, s)| format!("-A -t {vip} -s {s}")).collect()),
        1 => Just(vec!["\u{feff}".to_string()]),
    ];
    (start, proptest::collection::vec(line, 0..16), select(NEWLINES)).prop_map(|(start, lines, nl)| {
        let mut text = String::new();
        for l in start.iter().chain(&lines) {
            text.push_str(l.trim_end_matches('\n'));
            text.push_str(nl);
        }
        text
    })
}

/// Names for ports: the system's file, as the daemon reads it (once), and none.
fn port_names() -> [&'static PortNames; 2] {
    static SYSTEM: LazyLock<PortNames> = LazyLock::new(PortNames::system);
    static NONE: LazyLock<PortNames> = LazyLock::new(PortNames::none);
    [&SYSTEM, &NONE]
}

/// A table built from outside input, carried as far as the daemon carries one: listed in every
/// format, saved, made into nftables rules, and a connection scheduled on each service. What
/// `-S -n` saves reads back as the same table (but for one quirk of ipvsadm's).
fn check_table(t: &mut Table) {
    let formats = [
        ListFormat::default(),
        ListFormat { numeric: true, stats: true, exact: true, ..Default::default() },
        ListFormat { rate: true, nosort: true, ..Default::default() },
        ListFormat { numeric: true, thresholds: true, persistent_conn: true, ..Default::default() },
    ];
    for names in port_names() {
        for fmt in &formats {
            let _ = listing::list(t, None, fmt, &NoStats, names);
            for s in t.services() {
                assert!(listing::list(t, Some(&s.spec.key), fmt, &NoStats, names).is_ok());
            }
        }
        let _ = listing::save(t, false, names);
    }
    let text = saved(t);
    // ipvsadm's one save that does not read back, kept on purpose (`listing::sched_flag_names`):
    // flag-3 of sh and mh has no name, so `-b ` is printed with nothing after it.
    let nameless_flag = text.lines().any(|l| l.ends_with(" -b "));
    if !t.services().is_empty() && !nameless_flag {
        let again =
            parse_rules(&text, "saved").unwrap_or_else(|e| panic!("`-S -n` output does not read back: {e}\n{text}"));
        assert_eq!(saved(&again), text, "`-S -n` does not read back as the same table");
    }
    // `nfvs rules`: the table this file makes, as the nftables rules that carry it out.
    for overload in [Overload::Drop, Overload::Fallback] {
        let rs = ruleset::for_table(t, &[], 0, 1, overload, ruleset::DEFAULT_CT_MARK);
        if rs.validate().is_ok() {
            let _ = rs.render();
        }
    }
    for (n, svc) in t.services_mut().iter_mut().enumerate() {
        let key = svc.spec.key;
        for client in 0..3u16 {
            let req = sched::Request {
                caddr: Ipv4Addr::new(192, 168, 199, 1 + client as u8),
                cport: 40000 + client,
                daddr: key.addr,
                dport: key.port,
                now: Duration::from_secs(n as u64),
            };
            let _ = svc.schedule(&req);
        }
    }
}

/// A table as `-S -n` saves it.
fn saved(t: &Table) -> String {
    listing::save(t, true, &PortNames::none())
}

/// A command that parsed, carried out as the daemon would on the lab's table: an edit applied
/// (and its refusal worded), a listing printed.
fn check_command(cmd: &Command) {
    let _ = addresses::warnings(cmd);
    let mut t = parse_rules(LAB_RULES, "lab.rules").expect("the lab's rules");
    match cmd {
        c if c.is_edit() => {
            if let Err(e) = rules::apply(&mut t, c) {
                let _ = nfvs::adm::command::edit_message(c, &e);
                let _ = nfvs::adm::command::edit_hint(&e);
            }
            let _ = listing::save(&t, true, &PortNames::none());
        }
        Command::List(ListWhat::All, fmt) => drop(listing::list(&t, None, fmt, &NoStats, &PortNames::none())),
        Command::List(ListWhat::Service(k), fmt) => drop(listing::list(&t, Some(k), fmt, &NoStats, &PortNames::none())),
        Command::List(ListWhat::Connections, fmt) => drop(listing::connections(&[], fmt, &PortNames::none())),
        Command::Save { numeric } => drop(listing::save(&t, *numeric, &PortNames::none())),
        _ => {}
    }
}

pub(crate) fn check_words(words: &[String]) {
    match parse_args(words).and_then(|raw| raw.validate()) {
        Ok(cmd) => check_command(&cmd),
        Err(e) => drop(e.to_string()),
    }
}

fn check_line(line: &str) {
    match parse_line(line) {
        Ok(cmd) => check_command(&cmd),
        Err(e) => drop(e.to_string()),
    }
}

/// A rules file's text, and the same lines as `nfvs adm` commands one after another (or as
/// `-R` input, with its warnings), each applied to the live table whatever became of the one
/// before: the table that gets the furthest.
fn check_rules_text(text: &str) {
    if let Ok(mut rules) = parse_rules_text(text, "fuzz.rules", SchedOptions::default()) {
        check_table(&mut rules.table);
    }
    let _ = addresses::restore_warnings(text, "-R");
    let mut table = Table::default();
    for cmd in text.lines().filter_map(|l| parse_line(l).ok()).filter(Command::is_edit) {
        let _ = rules::apply(&mut table, &cmd);
    }
    check_table(&mut table);
}

// ---------------------------------------------------------------------------------------------
// Targets.
// ---------------------------------------------------------------------------------------------

#[test]
fn args_parse_args_validate() {
    fuzz("adm::args::parse_args + validate", 8_000, arguments(), |w| check_words(&w));
}

#[test]
fn args_parse_line() {
    fuzz("adm::args::parse_line", 6_000, line(), |l| check_line(&l));
}

#[test]
fn rules_parse_rules() {
    fuzz("adm::rules::parse_rules (text)", 2_000, rules_text(), |t| check_rules_text(&t));
}

#[test]
fn rules_parse_rules_any_utf8() {
    fuzz("adm::rules::parse_rules (any UTF-8)", 4_000, any::<String>(), |t| check_rules_text(&t));
}

/// Any bytes as a rules file: read through the file reader, they give what the same text
/// gives, or (not UTF-8) an error naming the line of the first bad byte.
#[test]
fn rules_read_rules_any_bytes() {
    let dir = std::env::temp_dir().join(format!("nfvs-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("fuzz.rules");
    let seeds = vec![LAB_RULES.as_bytes().to_vec(), REAL_LINES.join("\n").into_bytes()];
    fuzz("adm::rules::read_rules (bytes)", 1_500, bytes_from(seeds, 200), |bytes| {
        std::fs::write(&path, &bytes).expect("write the rules file");
        let read = read_rules(&path, SchedOptions::default()).map(|r| r.table);
        match std::str::from_utf8(&bytes) {
            Ok(text) => {
                let parsed = parse_rules_text(text, &path.display().to_string(), SchedOptions::default());
                match (read, parsed) {
                    (Ok(a), Ok(b)) => assert_eq!(saved(&a), saved(&b.table)),
                    (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => panic!("read {:?}, parsed {:?}", a.map(|t| saved(&t)), b.map(|r| saved(&r.table))),
                }
            }
            Err(e) => {
                let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
                let want = format!("{}:{line}: not UTF-8 text", path.display());
                assert_eq!(read.map(drop).map_err(|e| e.to_string()), Err(want));
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests as the daemon reads them from the control socket: well-formed ones damaged, and
/// anything at all. Whatever decodes is handled as the daemon handles it (the words as a
/// command, the standard input as `-R` input) and encodes back to the same bytes.
#[test]
fn control_decode_request() {
    let encoded =
        (arguments(), rules_text(), proptest::collection::vec(edit_any(), 0..4)).prop_map(|(args, stdin, edits)| {
            let args = args.into_iter().filter(|a| !a.is_empty() && !a.contains('\0')).collect();
            apply_edits(encode_request(&Request { args, stdin }), &edits, &[])
        });
    let magic = random_bytes(60).prop_map(|b| [&b"nfvs-adm 1\n"[..], &b].concat());
    let input = prop_oneof![4 => encoded, 1 => magic, 1 => random_bytes(60)];
    fuzz("adm::control::decode_request", 2_000, input, |bytes| {
        let Ok(req) = decode_request(&bytes) else { return };
        assert_eq!(encode_request(&req), bytes, "{req:?}");
        check_words(&req.args);
        check_rules_text(&req.stdin);
    });
}

/// Replies as `nfvs adm` reads them from the daemon: well-formed ones read back whole, damaged
/// ones and anything at all never panic.
#[test]
fn control_decode_reply() {
    let reply =
        (any::<i32>(), "\\PC{0,40}", "\\PC{0,40}").prop_map(|(code, stdout, stderr)| Reply { code, stdout, stderr });
    let damaged = (reply, proptest::collection::vec(edit_any(), 0..4)).prop_map(|(reply, edits)| {
        let bytes = apply_edits(encode_reply(&reply), &edits, &[]);
        (edits.is_empty().then_some(reply), bytes)
    });
    let input = prop_oneof![2 => damaged, 1 => random_bytes(60).prop_map(|b| (None, b))];
    fuzz("adm::control::decode_reply", 4_000, input, |(whole, bytes)| {
        let got = decode_reply(&bytes);
        if let Some(reply) = whole {
            assert_eq!(got, Ok(reply));
        }
    });
}

/// `/etc/services` text: each line `name port/proto aliases # comment`, damaged.
#[test]
fn etc_services_parse() {
    let real = "http 80/tcp www # WorldWideWeb HTTP\nhttps 443/tcp\ndomain 53/udp\nx 65535/tcp y z\n";
    let text = prop_oneof![
        3 => bytes_from(vec![real.as_bytes().to_vec()], 80).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => any::<String>(),
    ];
    fuzz("adm::etc_services::PortNames::parse", 4_000, text, |text| {
        let names = PortNames::parse(&text);
        for w in text.split_whitespace().take(8) {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                if let Some(port) = names.port(proto, w) {
                    let _ = names.name(proto, port);
                }
            }
        }
    });
}

/// A byte edit on its own, for inputs built by a strategy rather than picked from seeds.
fn edit_any() -> impl Strategy<Value = Edit> {
    (any::<Index>(), any::<u8>(), any::<Index>(), 0u8..3).prop_map(|(at, byte, cut, kind)| match kind {
        0 => Edit::Set(at, byte),
        1 => Edit::Truncate(cut),
        _ => Edit::Insert(at, vec![byte]),
    })
}
