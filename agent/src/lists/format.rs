//! The text of an IP list: one address or CIDR per line, with `#` and `;` comments (FireHOL
//! netsets, Spamhaus DROP: `1.10.16.0/20 ; SBL256894`).

use ipnet::IpNet;

use crate::policy::units;

/// A list's entries as read, and the lines that were not entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListCopy {
    pub nets: Vec<IpNet>,
    pub bad: Vec<BadLine>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    pub line: usize,
    pub problem: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.problem)
    }
}

/// Why a whole copy is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("not an IP list: {bad} of {lines} entry lines are not addresses or CIDRs ({first})")]
pub struct NotAList {
    pub bad: usize,
    pub lines: usize,
    pub first: BadLine,
}

/// Reads a list. A bad line is skipped and reported, and the rest applies: one odd line in
/// a community list of thousands must not lift the other entries. A text where more than
/// half of the entry lines are bad is not a list at all (an HTML error page, a wrong URL)
/// and is refused whole, so the copy in force stays.
pub fn parse(text: &str) -> Result<ListCopy, NotAList> {
    let mut copy = ListCopy::default();
    let mut lines = 0;
    for (index, raw) in text.lines().enumerate() {
        let entry = raw.split(['#', ';']).next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        lines += 1;
        match entry_net(entry) {
            Ok(net) => copy.nets.push(net),
            Err(problem) => copy.bad.push(BadLine {
                line: index + 1,
                problem,
            }),
        }
    }
    if copy.bad.len() * 2 > lines {
        return Err(NotAList {
            bad: copy.bad.len(),
            lines,
            first: copy.bad[0].clone(),
        });
    }
    Ok(copy)
}

/// The widest entry a list may hold. A feed's line with a short prefix is a mistake
/// (`10.77.0.5/0` for `/32`) or an attack on the node, never a network to allow or deny:
/// in an allow list it would switch off enforcement, in a deny list blackhole the node.
const MIN_PREFIX_V4: u8 = 8;
const MIN_PREFIX_V6: u8 = 16;

/// One entry: the first word (FireHOL and Spamhaus put nothing else on the line, others a
/// comment without a marker). Host bits are cleared, as ipset does: lists are written by
/// programs that mean the network. An entry wider than the bounds above is a bad line.
fn entry_net(entry: &str) -> Result<IpNet, String> {
    let word = entry.split_whitespace().next().unwrap_or_default();
    let net = match units::parse_cidr(word) {
        Ok(net) => net,
        Err(units::UnitError::CidrHostBits { network, .. }) => network,
        Err(e) => return Err(e.to_string()),
    };
    let widest = match net {
        IpNet::V4(_) => MIN_PREFIX_V4,
        IpNet::V6(_) => MIN_PREFIX_V6,
    };
    if net.prefix_len() < widest {
        return Err(format!(
            "'{word}' is wider than /{widest}; a list entry is never that wide (write it in the policy file if you mean it)"
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn firehol_and_spamhaus_lines_are_read() {
        let text = "#\n# firehol_level1\n#\n1.0.0.0/24\n2.3.4.5\r\n\n\
                    ; Spamhaus DROP List 2026/11/30\n1.10.16.0/20 ; SBL256894\n\
                    2001:db8::/32 # documentation\n  10.1.2.3/16  \n";
        let copy = parse(text).unwrap();
        assert_eq!(
            copy.nets,
            nets(&[
                "1.0.0.0/24",
                "2.3.4.5/32",
                "1.10.16.0/20",
                "2001:db8::/32",
                "10.1.0.0/16"
            ])
        );
        assert!(copy.bad.is_empty());
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number_and_the_rest_applies() {
        let copy =
            parse("# list\n1.2.3.0/24\n1.2.3.999\n::ffff:1.2.3.4\n5.6.7.0/24\n9.9.9.9\n").unwrap();
        assert_eq!(copy.nets, nets(&["1.2.3.0/24", "5.6.7.0/24", "9.9.9.9/32"]));
        let bad: Vec<String> = copy.bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 2);
        assert!(
            bad[0].starts_with("line 3: invalid CIDR '1.2.3.999'"),
            "{bad:?}"
        );
        assert!(
            bad[1].starts_with("line 4: invalid CIDR '::ffff:1.2.3.4'"),
            "{bad:?}"
        );
        assert!(bad[1].contains("write 1.2.3.4/32"), "{bad:?}");
    }

    #[test]
    fn an_entry_wider_than_a_slash_8_is_a_bad_line_never_widened() {
        let copy = parse(
            "10.77.0.5/0\n10.77.0.5/7\n0.0.0.0/0\n::/0\n2001:db8::1/15\n\
             10.0.0.0/8\n2001::/16\n10.1.2.3/8\n1.2.3.4\n5.6.7.8\n6.7.8.9\n7.8.9.10\n",
        )
        .unwrap();
        assert_eq!(
            copy.nets,
            nets(&[
                "10.0.0.0/8",
                "2001::/16",
                "10.0.0.0/8",
                "1.2.3.4/32",
                "5.6.7.8/32",
                "6.7.8.9/32",
                "7.8.9.10/32"
            ])
        );
        let bad: Vec<String> = copy.bad.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 5, "{bad:?}");
        assert_eq!(
            bad[0],
            "line 1: '10.77.0.5/0' is wider than /8; a list entry is never that wide \
             (write it in the policy file if you mean it)"
        );
        assert!(
            bad[3].starts_with("line 4: '::/0' is wider than /16"),
            "{bad:?}"
        );
        assert!(bad[4].starts_with("line 5: '2001:db8::1/15'"), "{bad:?}");
    }

    #[test]
    fn an_html_page_is_not_a_list() {
        let page = "<html>\n<head><title>404 Not Found</title></head>\n<body>\n\
                    <center><h1>404 Not Found</h1></center>\n</body>\n</html>\n";
        let refused = parse(page).unwrap_err();
        assert_eq!(refused.bad, 6);
        assert_eq!(refused.first.line, 1);
        assert!(
            refused.to_string().starts_with(
                "not an IP list: 6 of 6 entry lines are not addresses or CIDRs (line 1: invalid CIDR '<html>'"
            ),
            "{refused}"
        );
    }

    #[test]
    fn comments_only_is_an_empty_list() {
        assert_eq!(
            parse("# nothing listed today\n; really\n").unwrap(),
            ListCopy::default()
        );
        assert_eq!(parse("").unwrap(), ListCopy::default());
    }
}
