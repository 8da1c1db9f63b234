use std::{path::Path, sync::Arc};

use ipnet::IpNet;

use super::*;
use crate::policy::{self, Mode};

fn policy(text: &str) -> Policy {
    policy::parse(Path::new("test.yaml"), text).unwrap()
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn copies(lists: &[(&str, &str)]) -> Copies {
    let mut copies = Copies::default();
    for (source, text) in lists {
        let source = if source.starts_with('/') {
            ListSource::File(source.into())
        } else {
            ListSource::Url(crate::policy::ListUrl::parse(source).unwrap())
        };
        copies.update(Update {
            source,
            at_unix: 1_700_000_000,
            outcome: Outcome::Copy {
                copy: Arc::new(format::parse(text, format::EntryBound::none()).unwrap()),
                from_cache: false,
            },
        });
    }
    copies
}

#[test]
fn list_entries_go_in_under_the_entry_s_name_and_mode() {
    let declared = policy(
        "deny:\n  - 192.0.2.0/24\n  - {list: /lists/drop.txt, name: spamhaus, mode: shadow}\n  - {list: 'http://lists.example/level1.netset'}\n",
    );
    let copies = copies(&[
        (
            "/lists/drop.txt",
            "1.10.16.0/20 ; SBL256894\n2001:db8::/32\n",
        ),
        (
            "http://lists.example/level1.netset",
            "# level1\n5.6.7.0/24\n",
        ),
    ]);
    let (expanded, in_force) = expand(&declared, &copies);
    assert_eq!(expanded.deny, declared.deny);
    assert_eq!(
        expanded.listed,
        vec![
            nets(&["1.10.16.0/20", "2001:db8::/32"]),
            nets(&["5.6.7.0/24"])
        ]
    );
    assert_eq!(in_force[0].entries, 2);
    assert_eq!(
        expanded.lists[0].action,
        ListAction::Deny {
            name: "spamhaus".to_string(),
            mode: Mode::Shadow
        }
    );
    assert_eq!(
        expanded.lists[1].action,
        ListAction::Deny {
            name: "deny".to_string(),
            mode: Mode::Enforce
        }
    );
}

#[test]
fn allow_wins_over_every_deny_entry_inside_it() {
    let declared = policy(
        "allow:\n  - {list: /lists/partners.txt}\ndeny:\n  - 10.1.2.0/24\n  - 198.51.100.0/24\n  - {list: /lists/drop.txt}\n",
    );
    let copies = copies(&[
        ("/lists/partners.txt", "10.1.0.0/16\n203.0.113.7\n"),
        (
            "/lists/drop.txt",
            "203.0.113.0/24\n203.0.113.7\n10.1.9.9\n192.0.2.0/24\n",
        ),
    ]);
    let (expanded, in_force) = expand(&declared, &copies);
    // The declared 10.1.2.0/24 is inside the partners' 10.1.0.0/16: the allow list wins.
    assert_eq!(
        expanded.deny.iter().map(|d| d.net).collect::<Vec<_>>(),
        nets(&["198.51.100.0/24"])
    );
    assert_eq!(expanded.listed[0], nets(&["10.1.0.0/16", "203.0.113.7/32"]));
    // 203.0.113.7 is allowed (the same prefix), 10.1.9.9 is inside an allow entry; the
    // wider 203.0.113.0/24 stays: the allowed host inside it is the longer match.
    assert_eq!(
        expanded.listed[1],
        nets(&["203.0.113.0/24", "192.0.2.0/24"])
    );
    assert_eq!(in_force[1].covered_by_allow, 2);
}

#[test]
fn entries_already_held_are_counted_not_repeated() {
    let declared = policy(
        "deny:\n  - 192.0.2.0/24\n  - {list: /lists/a.txt, name: a}\n  - {list: /lists/b.txt, name: b}\n",
    );
    let copies = copies(&[
        ("/lists/a.txt", "192.0.2.0/24\n5.6.7.0/24\n5.6.7.0/24\n"),
        ("/lists/b.txt", "5.6.7.0/24\n8.8.8.0/24\n"),
    ]);
    let (expanded, in_force) = expand(&declared, &copies);
    assert_eq!(
        expanded.listed,
        vec![nets(&["5.6.7.0/24"]), nets(&["8.8.8.0/24"])]
    );
    assert_eq!((in_force[0].entries, in_force[0].duplicates), (1, 2));
    assert_eq!((in_force[1].entries, in_force[1].duplicates), (1, 1));
}

#[test]
fn a_list_over_the_capacity_is_not_applied_and_says_so() {
    let declared = policy(
        "capacity: {cidrs: 3}\ndeny:\n  - 192.0.2.0/24\n  - {list: /lists/small.txt, name: small}\n  - {list: /lists/big.txt, name: big}\n",
    );
    let copies = copies(&[
        ("/lists/small.txt", "5.6.7.0/24\n2001:db8::/32\n"),
        ("/lists/big.txt", "8.8.8.0/24\n9.9.9.0/24\n"),
    ]);
    let (expanded, in_force) = expand(&declared, &copies);
    assert_eq!(expanded.listed[0], nets(&["5.6.7.0/24", "2001:db8::/32"]));
    assert!(expanded.listed[1].is_empty());
    assert_eq!(
        in_force[1].not_applied.as_deref(),
        Some(
            "its 2 entries would take a family over capacity.cidrs (3); raise it (a restart applies it)"
        )
    );
}

#[test]
fn a_list_without_a_copy_applies_as_empty() {
    let declared = policy("deny:\n  - {list: 'https://lists.example/drop.txt'}\n");
    let (expanded, in_force) = expand(&declared, &Copies::default());
    assert_eq!(expanded.listed, vec![Vec::<IpNet>::new()]);
    assert_eq!(in_force[0], InForce::default());
    let status = Copies::default().status(&declared, &in_force);
    assert_eq!(status[0].read_unix, None);
    assert_eq!(
        status[0].rule,
        "deny list https://lists.example/drop.txt (deny, enforce)"
    );
}

#[test]
fn a_failed_read_keeps_the_copy_in_force() {
    let declared = policy("deny:\n  - {list: /lists/drop.txt}\n");
    let mut copies = copies(&[("/lists/drop.txt", "5.6.7.0/24\n")]);
    let failed = Update {
        source: ListSource::File("/lists/drop.txt".into()),
        at_unix: 1_700_000_100,
        outcome: Outcome::Failed("cannot read: No such file or directory".to_string()),
    };
    assert!(!copies.update(failed));
    let (expanded, in_force) = expand(&declared, &copies);
    assert_eq!(expanded.listed[0], nets(&["5.6.7.0/24"]));
    let status = copies.status(&declared, &in_force);
    assert_eq!(status[0].read_unix, Some(1_700_000_000));
    assert_eq!(status[0].failing_since_unix, Some(1_700_000_100));
    assert_eq!(
        status[0].error.as_deref(),
        Some("cannot read: No such file or directory")
    );
}

#[test]
fn mode_switches_reach_a_list_by_its_name() {
    let declared = policy("deny:\n  - {list: /lists/drop.txt, name: spamhaus}\n");
    let modes = [("spamhaus".to_string(), Mode::Shadow)];
    let switched = declared
        .with_modes(modes.iter().map(|(n, m)| (n, m)))
        .unwrap();
    assert_eq!(
        switched.lists[0].action,
        ListAction::Deny {
            name: "spamhaus".to_string(),
            mode: Mode::Shadow
        }
    );
}

#[test]
fn a_new_copy_shows_as_counts_not_entries() {
    let declared = policy("deny:\n  - {list: /lists/drop.txt, name: spamhaus}\n");
    let (old, _) = expand(
        &declared,
        &copies(&[("/lists/drop.txt", "1.0.0.0/24\n2.0.0.0/24\n")]),
    );
    let (new, _) = expand(
        &declared,
        &copies(&[("/lists/drop.txt", "2.0.0.0/24\n3.0.0.0/24\n4.0.0.0/24\n")]),
    );
    assert_eq!(
        policy::diff::diff(&old, &new),
        vec!["~ deny list /lists/drop.txt (spamhaus, enforce): 2 -> 3 entries (+2 -1)"]
    );
    let shadowed = declared
        .clone()
        .with_modes([(&"spamhaus".to_string(), &Mode::Shadow)])
        .unwrap();
    let (shadowed, _) = expand(
        &shadowed,
        &copies(&[("/lists/drop.txt", "1.0.0.0/24\n2.0.0.0/24\n")]),
    );
    assert_eq!(
        policy::diff::diff(&old, &shadowed),
        vec![
            "~ deny list /lists/drop.txt (spamhaus, enforce) -> deny list /lists/drop.txt (spamhaus, shadow)"
        ]
    );
}
