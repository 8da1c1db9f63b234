//! The text of an IP list: one address or CIDR per line, with `#` and `;` comments (FireHOL
//! netsets, Spamhaus DROP: `1.10.16.0/20 ; SBL256894`).

use ipnet::IpNet;

use crate::policy::units;

/// Bad lines kept with their problems (`status`, logs); the rest are only counted.
pub const BAD_LINES_KEPT: usize = 5;
/// A line longer than this is bad, and not held in memory while it goes on.
const MAX_LINE_BYTES: usize = 1024;

/// A list's entries as read, and the lines that were not entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListCopy {
    pub nets: Vec<IpNet>,
    /// The first `BAD_LINES_KEPT` bad lines.
    pub bad: Vec<BadLine>,
    /// All the bad lines.
    pub bad_lines: usize,
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

/// Why a whole copy is refused; the copy in force stays.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    #[error("not an IP list: {bad} of {lines} entry lines are not addresses or CIDRs ({first})")]
    NotAList {
        bad: usize,
        lines: usize,
        first: BadLine,
    },
    #[error("more than {max} entries ({why}); read up to line {line} and refused")]
    TooMany {
        max: usize,
        why: String,
        line: usize,
    },
}

/// The most entries one list may hold, and why: what `capacity.cidrs` could ever take
/// (both families), or less where the agent's memory limit leaves room for less.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryBound {
    pub max: usize,
    pub why: String,
}

impl EntryBound {
    /// No bound beyond what the text holds (`policy validate`, tests).
    pub fn none() -> Self {
        Self {
            max: usize::MAX,
            why: String::new(),
        }
    }
}

/// Reads a list as its bytes arrive, holding the entries and a few bad lines, never the
/// text: memory follows the entries, which `EntryBound` bounds, whatever the text's size.
///
/// A bad line is skipped and reported, and the rest applies: one odd line in a community
/// list of thousands must not lift the other entries. A text where more than half of the
/// entry lines are bad is not a list at all (an HTML error page, a wrong URL) and is
/// refused whole, as is one with more entries than the bound.
pub struct Reader {
    copy: ListCopy,
    bound: EntryBound,
    /// Entry lines (not blank, not only a comment) so far.
    lines: usize,
    /// Lines begun so far.
    line: usize,
    /// The current line's bytes so far, unless it is over `MAX_LINE_BYTES`.
    partial: Vec<u8>,
    too_long: bool,
}

impl Reader {
    pub fn new(bound: EntryBound) -> Self {
        Self {
            copy: ListCopy::default(),
            bound,
            lines: 0,
            line: 0,
            partial: Vec::new(),
            too_long: false,
        }
    }

    /// Reads the next bytes of the text.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Refused> {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.take(&bytes[..end]);
            self.end_line()?;
            bytes = &bytes[end + 1..];
        }
        self.take(bytes);
        Ok(())
    }

    /// Reads all of `source`, passing each chunk to `seen` too (a hash, say): the copy, or
    /// why it is refused; an error if `source` could not be read.
    pub fn read_all(
        mut self,
        source: &mut impl std::io::Read,
        mut seen: impl FnMut(&[u8]),
    ) -> std::io::Result<Result<ListCopy, Refused>> {
        let mut chunk = vec![0; 64 * 1024];
        loop {
            let n = source.read(&mut chunk)?;
            if n == 0 {
                return Ok(self.finish());
            }
            seen(&chunk[..n]);
            if let Err(refused) = self.feed(&chunk[..n]) {
                return Ok(Err(refused));
            }
        }
    }

    /// The copy, once the text has ended.
    pub fn finish(mut self) -> Result<ListCopy, Refused> {
        if !self.partial.is_empty() || self.too_long {
            self.end_line()?;
        }
        if self.copy.bad_lines * 2 > self.lines {
            return Err(Refused::NotAList {
                bad: self.copy.bad_lines,
                lines: self.lines,
                first: self.copy.bad[0].clone(),
            });
        }
        Ok(self.copy)
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.too_long {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE_BYTES {
            self.too_long = true;
            self.partial.clear();
            return;
        }
        self.partial.extend_from_slice(bytes);
    }

    fn end_line(&mut self) -> Result<(), Refused> {
        self.line += 1;
        let entry = if std::mem::take(&mut self.too_long) {
            Err(format!("longer than {MAX_LINE_BYTES} bytes"))
        } else {
            match std::str::from_utf8(&self.partial) {
                Ok(text) => match text.split(['#', ';']).next().unwrap_or_default().trim() {
                    "" => {
                        self.partial.clear();
                        return Ok(());
                    }
                    entry => entry_net(entry),
                },
                Err(_) => Err("not UTF-8 text".to_string()),
            }
        };
        self.partial.clear();
        self.lines += 1;
        match entry {
            Ok(net) => {
                if self.copy.nets.len() >= self.bound.max {
                    return Err(Refused::TooMany {
                        max: self.bound.max,
                        why: self.bound.why.clone(),
                        line: self.line,
                    });
                }
                self.copy.nets.push(net);
            }
            Err(problem) => {
                self.copy.bad_lines += 1;
                if self.copy.bad.len() < BAD_LINES_KEPT {
                    self.copy.bad.push(BadLine {
                        line: self.line,
                        problem,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Reads a whole list text.
pub fn parse(text: &str, bound: EntryBound) -> Result<ListCopy, Refused> {
    let mut reader = Reader::new(bound);
    reader.feed(text.as_bytes())?;
    reader.finish()
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

    fn read(text: &str) -> Result<ListCopy, Refused> {
        parse(text, EntryBound::none())
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn firehol_and_spamhaus_lines_are_read() {
        let text = "#\n# firehol_level1\n#\n1.0.0.0/24\n2.3.4.5\r\n\n\
                    ; Spamhaus DROP List 2026/11/30\n1.10.16.0/20 ; SBL256894\n\
                    2001:db8::/32 # documentation\n  10.1.2.3/16  \n";
        let copy = read(text).unwrap();
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
            read("# list\n1.2.3.0/24\n1.2.3.999\n::ffff:1.2.3.4\n5.6.7.0/24\n9.9.9.9\n").unwrap();
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
        let copy = read(
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
        let refused = read(page).unwrap_err();
        let Refused::NotAList { bad, first, .. } = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(*bad, 6);
        assert_eq!(first.line, 1);
        assert!(
            refused.to_string().starts_with(
                "not an IP list: 6 of 6 entry lines are not addresses or CIDRs (line 1: invalid CIDR '<html>'"
            ),
            "{refused}"
        );
    }

    #[test]
    fn bytes_read_in_any_pieces_give_the_same_copy() {
        let text = "# list\r\n1.2.3.0/24 ; SBL1\r\nnot-an-address\n2001:db8::/32\n\n9.9.9.9";
        let whole = read(text).unwrap();
        assert_eq!(whole.nets.len(), 3);
        assert_eq!(whole.bad_lines, 1);
        for split in 0..text.len() {
            let mut reader = Reader::new(EntryBound::none());
            reader.feed(&text.as_bytes()[..split]).unwrap();
            reader.feed(&text.as_bytes()[split..]).unwrap();
            assert_eq!(reader.finish().unwrap(), whole, "split at {split}");
        }
    }

    #[test]
    fn more_entries_than_the_bound_refuse_the_copy_as_soon_as_they_are_read() {
        let bound = EntryBound {
            max: 2,
            why: "capacity.cidrs is 1".to_string(),
        };
        assert_eq!(
            parse("1.1.1.1\n2.2.2.2\n", bound.clone())
                .unwrap()
                .nets
                .len(),
            2
        );
        let mut reader = Reader::new(bound);
        let refused = reader
            .feed(b"1.1.1.1\nbad\n2.2.2.2\n3.3.3.3\n4.4.4.4\n")
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "more than 2 entries (capacity.cidrs is 1); read up to line 4 and refused"
        );
    }

    #[test]
    fn long_lines_and_bytes_that_are_not_text_are_bad_lines() {
        let mut text = b"1.1.1.1\n".to_vec();
        text.extend(std::iter::repeat_n(b'9', 5000));
        text.extend(b"\n\xff\xfe1.2.3.4\n2.2.2.2\n3.3.3.3\n");
        let mut reader = Reader::new(EntryBound::none());
        for piece in text.chunks(7) {
            reader.feed(piece).unwrap();
        }
        let copy = reader.finish().unwrap();
        assert_eq!(copy.nets, nets(&["1.1.1.1/32", "2.2.2.2/32", "3.3.3.3/32"]));
        let bad: Vec<String> = copy.bad.iter().map(ToString::to_string).collect();
        assert_eq!(
            bad,
            ["line 2: longer than 1024 bytes", "line 3: not UTF-8 text"]
        );
    }

    #[test]
    fn every_bad_line_is_counted_and_the_first_few_kept() {
        let mut text = String::new();
        for i in 0..20 {
            text.push_str(&format!("bad{i}\n10.0.{i}.0/24\n10.1.{i}.0/24\n"));
        }
        let copy = read(&text).unwrap();
        assert_eq!(copy.nets.len(), 40);
        assert_eq!(copy.bad_lines, 20);
        assert_eq!(copy.bad.len(), BAD_LINES_KEPT);
        assert_eq!(copy.bad[4].line, 13);
    }

    #[test]
    fn comments_only_is_an_empty_list() {
        assert_eq!(
            read("# nothing listed today\n; really\n").unwrap(),
            ListCopy::default()
        );
        assert_eq!(read("").unwrap(), ListCopy::default());
    }
}
