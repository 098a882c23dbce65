//! nfvs's own command line (`nfvs run|rules|check|adm ...`): clap with nfvs's value parsers
//! (queue counts, ct marks, CIDRs), `--control` found among `nfvs adm`'s ipvsadm words, and
//! the nftables rules the network options make. The vocabulary is each subcommand's options
//! and choices as clap knows them (so it follows the command line as it grows), edge values,
//! the ipvsadm words of `adm.rs`, and random strings.

use clap::{CommandFactory, Parser};
use nfvs::adm::rules::parse_rules;
use nfvs::cli::{adm_control, Cli, Command, NetArgs};
use nfvs::ruleset;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::Union;

use crate::adm::{check_words, option_names, word, LAB_RULES};
use crate::harness::fuzz;

/// What clap knows of a subcommand: its name; its long options, each as the word and the
/// values it may take (none for a flag; its choices, or the edge values, for the others).
struct Subcommand {
    name: String,
    options: Vec<(String, Vec<String>)>,
}

fn subcommands() -> Vec<Subcommand> {
    Cli::command()
        .get_subcommands()
        .map(|sub| {
            let mut options: Vec<(String, Vec<String>)> = vec![("--".into(), vec![])];
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let values = if !arg.get_action().takes_values() {
                    vec![]
                } else if arg.get_possible_values().is_empty() {
                    VALUES.iter().map(|v| v.to_string()).collect()
                } else {
                    arg.get_possible_values().iter().map(|v| v.get_name().to_string()).chain(["".into()]).collect()
                };
                options.push((format!("--{long}"), values));
            }
            Subcommand { name: sub.get_name().to_string(), options }
        })
        .collect()
}

#[rustfmt::skip]
const VALUES: &[&str] = &[
    "192.168.226.0/24", "10.0.0.0/8", "0.0.0.0/0", "1.2.3.4", "1.2.3.4/32", "1.2.3.4/24", "1.2.3.0/33",
    "1.2.3.0/+24", "1.2.3.0/", "/24", "::1/128", "0", "1", "2", "64", "65", "65535", "65536", "auto", "AUTO",
    "0x6e667673", "0X0", "0x", "0x1ffffffff", "4294967295", "4294967296", "-1", "1048576", "1048577",
    "18446744073709551615", "rules/lab.rules", "/tmp/nfvs-fuzz.sock", "--control=/tmp/nfvs-fuzz.sock",
];

fn argv() -> impl Strategy<Value = Vec<String>> {
    let per_subcommand = subcommands().into_iter().map(|Subcommand { name, options }| {
        // An option with a value it takes; now and then with any value, or alone where it needs
        // one. For `adm`, ipvsadm's words too.
        let option =
            (select(options), any::<Index>(), "\\PC{0,12}", 0..8u8).prop_map(
                |((o, values), i, any, dice)| match dice {
                    0 => vec![o, any],
                    1 => vec![o],
                    _ if values.is_empty() => vec![o],
                    _ => vec![o, values[i.index(values.len())].clone()],
                },
            );
        let ipvsadm = if name == "adm" { 2 } else { 0 };
        let item = prop_oneof![3 => option, ipvsadm => word(&option_names()).prop_map(|w| vec![w])];
        proptest::collection::vec(item, 0..8)
            .prop_map(move |items| ["nfvs".to_string(), name.clone()].into_iter().chain(items.concat()).collect())
            .boxed()
    });
    let other = proptest::collection::vec("\\PC{0,12}", 0..4).prop_map(|w| [vec!["nfvs".to_string()], w].concat());
    prop_oneof![9 => Union::new(per_subcommand), 1 => other]
}

/// The rules the network options make for the lab's table, as `nfvs rules` prints them.
fn check_net(net: &NetArgs) {
    let table = parse_rules(LAB_RULES, "lab.rules").expect("the lab's rules");
    let rs = ruleset::for_table(&table, &net.masquerade, net.queue, net.queues, net.overload.into(), net.ct_mark);
    if rs.validate().is_ok() {
        let _ = rs.render();
    }
}

#[test]
fn nfvs_command_line() {
    fuzz("cli::Cli (nfvs run|rules|check|adm)", 1_500, argv(), |argv| match Cli::try_parse_from(&argv) {
        Err(e) => drop(e.to_string()),
        Ok(cli) => match cli.command {
            Command::Run { net, .. } => check_net(&net),
            Command::Rules { table } => check_net(&table.net),
            Command::Check { .. } => {}
            Command::Adm { control, args } => {
                if let Ok((_, words)) = adm_control(control, args) {
                    check_words(&words);
                }
            }
        },
    });
}
