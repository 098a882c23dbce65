//! The analysis over rule sets captured in network namespaces (tests/fixtures/forward/, each
//! file's origin in its README), with the seed lab's interfaces: the VIP on `ens37`, the real
//! servers behind `ens33`.

use super::*;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/forward/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn lab_packets() -> [Packet; 3] {
    Packet::flow(&["ens37".into()], &["ens33".into()])
}

/// The blockers of every table in `tables`, as `family table chain: packet`.
fn blocked(tables: &[Table], packets: &[Packet]) -> Vec<String> {
    tables
        .iter()
        .flat_map(|t| blockers(t, packets))
        .map(|b| format!("{} {} {} {}: {}", b.source, b.family, b.table, b.chain, b.drops))
        .collect()
}

fn nft(name: &str) -> Vec<String> {
    blocked(&parse_nft(&fixture(name)), &lab_packets())
}

fn ipt(name: &str, source: Source) -> Vec<String> {
    blocked(&parse_iptables_save(&fixture(name), source), &lab_packets())
}

const NEW: &str = "at their first packet (NEW, DNATed)";

#[test]
fn iptables_legacy_policy_drop_with_established_accept_drops_the_first_packet() {
    assert_eq!(ipt("legacy-drop.iptables-save", Source::IptablesLegacy), [format!("iptables-legacy ip filter FORWARD: {NEW}")]);
}

#[test]
fn the_dnat_state_rule_lets_every_packet_through() {
    assert_eq!(ipt("legacy-drop-fixed.iptables-save", Source::IptablesLegacy), Vec::<String>::new());
}

#[test]
fn iptables_nft_is_read_the_same_from_iptables_save_and_from_nft() {
    assert_eq!(ipt("iptables-nft-drop.iptables-save", Source::IptablesNft), [format!("iptables-nft ip filter FORWARD: {NEW}")]);
    // nft prints iptables-nft's conntrack match natively (`ct state related,established`).
    assert_eq!(nft("iptables-nft-drop.nft"), [format!("nft ip filter FORWARD: {NEW}")]);
}

#[test]
fn a_native_inet_table_with_policy_drop() {
    assert_eq!(nft("nft-inet-drop.nft"), [format!("nft inet filter forward: {NEW}")]);
    let mut t = parse_nft(&fixture("nft-inet-drop.nft"));
    // `nft insert rule inet filter forward ct status dnat accept`: first in the chain.
    t[0].chains[0].rules.insert(0, parse_nft_rule(&nft_tokens("ct status dnat accept")));
    assert!(blocked(&t, &lab_packets()).is_empty());
}

#[test]
fn docker_drops_through_its_chains_unless_docker_user_accepts() {
    // Every accept of docker's layout is for its bridge: the director's interfaces are not.
    let t = parse_iptables_save(&fixture("docker.iptables-save"), Source::IptablesNft);
    assert_eq!(blocked(&t, &lab_packets()), [format!("iptables-nft ip filter FORWARD: {NEW}")]);
    // Without knowing the interfaces, docker0's rules may or may not match: no verdict.
    assert!(blocked(&t, &Packet::flow(&[], &[])).is_empty());
    let fixed = fixture("docker.iptables-save").replace(
        ":DOCKER-USER - [0:0]\n",
        ":DOCKER-USER - [0:0]\n-A DOCKER-USER -m conntrack --ctstate DNAT -j ACCEPT\n",
    );
    assert!(blocked(&parse_iptables_save(&fixed, Source::IptablesNft), &lab_packets()).is_empty());
}

#[test]
fn ufw_drops_routed_connections_by_default() {
    assert_eq!(ipt("ufw.iptables-save", Source::IptablesNft), [format!("iptables-nft ip filter FORWARD: {NEW}")]);
    // `ufw route allow proto tcp to 192.168.226.130 port 80` adds an address and port rule to
    // ufw-user-forward: nfvs cannot tell statically whether it covers every flow.
    let routed = fixture("ufw.iptables-save")
        .replacen("COMMIT", "-A ufw-user-forward -d 192.168.226.130/32 -p tcp -m tcp --dport 80 -j ACCEPT\nCOMMIT", 1);
    assert!(blocked(&parse_iptables_save(&routed, Source::IptablesNft), &lab_packets()).is_empty());
}

#[test]
fn firewalld_accepts_dnat_unless_its_forward_ports_are_strict() {
    assert!(nft("firewalld-1.3.nft").is_empty());
    assert_eq!(nft("firewalld-strict.nft"), [format!("nft inet firewalld filter_FORWARD: {NEW}")]);
}

#[test]
fn only_forward_filter_chains_of_ipv4_families_count() {
    let text = "table ip6 f {\n\tchain fw {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n}\n\
                table inet g {\n\tchain in {\n\t\ttype filter hook input priority filter; policy drop;\n\t}\n}\n";
    assert!(blocked(&parse_nft(text), &lab_packets()).is_empty());
}

#[test]
fn replies_dropped_when_only_new_connections_are_accepted() {
    let text = "table inet f {\n\tchain fw {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\tct state new accept\n\t}\n}\n";
    assert_eq!(blocked(&parse_nft(text), &lab_packets()), ["nft inet f fw: at the clients' later packets"]);
}

#[test]
fn a_condition_nfvs_cannot_evaluate_makes_the_verdict_unknown() {
    let text = "table inet f {\n\tchain fw {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\t\
                ct state established,related accept\n\t\tip daddr 192.168.226.0/24 tcp dport 80 accept\n\t}\n}\n";
    let t = parse_nft(text);
    assert!(blocked(&t, &lab_packets()).is_empty());
    assert_eq!(eval(&t[0], 0, &lab_packets()[0]), Outcome::Unknown);
    // ... unless both ways end the same.
    let text = text.replace("tcp dport 80 accept", "tcp dport 80 counter log prefix \"x \" drop");
    assert_eq!(eval(&parse_nft(&text)[0], 0, &lab_packets()[0]), Outcome::Drop);
}

#[test]
fn verdict_maps_on_state_and_interface() {
    let text = "table inet f {\n\tmap m {\n\t\ttype ifname : verdict\n\t\telements = { \"x\" : drop,\n\t\t\t\"y\" : accept }\n\t}\n\n\
                \tchain fw {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\t\
                ct state vmap { invalid : drop, established : accept, related : accept }\n\t\t\
                iifname vmap { \"ens37\" : jump ok, \"eth9\" : drop }\n\t}\n\n\tchain ok {\n\t\tct status dnat accept\n\t}\n}\n";
    let t = parse_nft(text);
    assert_eq!(t[0].chains.len(), 2, "{t:?}");
    assert!(blocked(&t, &lab_packets()).is_empty(), "{t:?}");
    // A named map's elements are not read: unknown.
    let named = text.replace("iifname vmap { \"ens37\" : jump ok, \"eth9\" : drop }", "iifname vmap @m");
    assert_eq!(eval(&parse_nft(&named)[0], 0, &lab_packets()[0]), Outcome::Unknown);
}

#[test]
fn goto_and_return_follow_nft_semantics() {
    // `goto` does not come back: falling off `g` ends in the base chain's policy.
    let text = "table ip f {\n\tchain fw {\n\t\ttype filter hook forward priority filter; policy drop;\n\t\t\
                goto g\n\t\taccept\n\t}\n\tchain g {\n\t\tcounter\n\t}\n}\n";
    assert_eq!(eval(&parse_nft(text)[0], 0, &lab_packets()[0]), Outcome::Drop);
    let jump = text.replace("goto g", "jump g");
    assert_eq!(eval(&parse_nft(&jump)[0], 0, &lab_packets()[0]), Outcome::Accept);
    let ret = jump.replace("\t\tcounter\n", "\t\treturn\n\t\tdrop\n");
    assert_eq!(eval(&parse_nft(&ret)[0], 0, &lab_packets()[0]), Outcome::Accept);
}

#[test]
fn interface_patterns_and_negation() {
    let p = lab_packets();
    for (rule, want) in [
        ("-A FORWARD -i ens+ -j ACCEPT", Outcome::Accept),
        ("-A FORWARD ! -i ens37 -j ACCEPT", Outcome::Drop),
        ("-A FORWARD -o ens33 -m conntrack --ctstate NEW,DNAT -j ACCEPT", Outcome::Accept),
        ("-A FORWARD -m state --state NEW -j ACCEPT", Outcome::Accept),
        ("-A FORWARD -m conntrack ! --ctstate DNAT -j DROP", Outcome::Drop),
        ("-A FORWARD -p udp -j ACCEPT", Outcome::Drop),
        ("-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j ACCEPT", Outcome::Unknown),
        ("-A FORWARD -j NFQUEUE --queue-num 3", Outcome::Unknown),
        ("-A FORWARD -j LOG --log-prefix \"fw drop \"", Outcome::Drop),
    ] {
        let text = format!("*filter\n:FORWARD DROP [0:0]\n{rule}\nCOMMIT\n");
        let t = parse_iptables_save(&text, Source::IptablesLegacy);
        assert_eq!(eval(&t[0], 0, &p[0]), want, "{rule}: {:?}", t[0].chains[0].rules);
    }
}

#[test]
fn ct_status_forms() {
    for (rule, want) in [
        ("ct status dnat accept", Outcome::Accept),
        ("ct status & dnat == dnat accept", Outcome::Accept),
        ("ct status & dnat != 0 accept", Outcome::Accept),
        ("ct status != dnat accept", Outcome::Drop),
        ("ct status seen-reply accept", Outcome::Unknown),
    ] {
        let text = format!("table ip f {{\n\tchain fw {{\n\t\ttype filter hook forward priority filter; policy drop;\n\t\t{rule}\n\t}}\n}}\n");
        assert_eq!(eval(&parse_nft(&text)[0], 0, &lab_packets()[0]), want, "{rule}");
    }
}
