//! Parsers for the small value syntaxes of policy files: rates, durations, port ranges and
//! CIDRs. Each returns a `UnitError` that says what was expected.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "invalid rate '{0}': expected a positive whole number, '/' and s, m or h (e.g. 100/s or 6000/m)"
    )]
    RateSyntax(String),
    #[error("invalid rate '{0}': a rate must be above zero")]
    RateZero(String),
    #[error("invalid rate '{0}': at most 1000000000/s")]
    RateTooHigh(String),
    #[error(
        "invalid duration '{0}': expected a positive whole number and ms, s, m, h or d (e.g. 30s or 10m)"
    )]
    DurationSyntax(String),
    #[error("invalid duration '{0}': must be above zero")]
    DurationZero(String),
    #[error("invalid duration '{0}': at most 365d")]
    DurationTooLong(String),
    #[error("invalid port range '{0}': expected a port (1-65535) or a range like 8000-8080")]
    PortSyntax(String),
    #[error("invalid port range '{0}': the first port is above the last")]
    PortRangeReversed(String),
    #[error("invalid CIDR '{0}': expected an IPv4 or IPv6 address with an optional /prefix")]
    CidrSyntax(String),
    #[error("invalid CIDR '{given}': host bits are set; did you mean {network}?")]
    CidrHostBits { given: String, network: IpNet },
    #[error(
        "invalid CIDR '{given}': IPv4-mapped IPv6 addresses are judged as the IPv4 hosts they name; write {ipv4}"
    )]
    CidrV4Mapped { given: String, ipv4: String },
}

const NS_PER_SEC: u64 = 1_000_000_000;
/// The longest duration anything takes (a ban, its window, a block's `--ttl`): a year. A
/// block meant to last longer is a block without `--ttl`.
pub const MAX_DURATION_NS: u64 = 365 * 86_400 * NS_PER_SEC;

/// A rate as "one token every `interval_ns`", the form the kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// The number written before the slash: tokens per period.
    pub count: u64,
    pub period_ns: u64,
    pub interval_ns: u64,
}

/// Parses `N/s`, `N/m` or `N/h` (also `N/sec`, `N/min`, `N/hour`).
pub fn parse_rate(text: &str) -> Result<Rate, UnitError> {
    let syntax = || UnitError::RateSyntax(text.to_string());
    let (count, unit) = text.trim().split_once('/').ok_or_else(syntax)?;
    let count: u64 = count.trim().parse().map_err(|_| syntax())?;
    let period_ns = match unit.trim() {
        "s" | "sec" | "second" => NS_PER_SEC,
        "m" | "min" | "minute" => 60 * NS_PER_SEC,
        "h" | "hour" => 3600 * NS_PER_SEC,
        _ => return Err(syntax()),
    };
    if count == 0 {
        return Err(UnitError::RateZero(text.to_string()));
    }
    let interval_ns = period_ns / count;
    if interval_ns == 0 {
        return Err(UnitError::RateTooHigh(text.to_string()));
    }
    Ok(Rate {
        count,
        period_ns,
        interval_ns,
    })
}

/// Parses `500ms`, `30s`, `10m`, `2h`, `1d` into nanoseconds, at most `MAX_DURATION_NS`.
pub fn parse_duration(text: &str) -> Result<u64, UnitError> {
    let syntax = || UnitError::DurationSyntax(text.to_string());
    let text_trimmed = text.trim();
    let split = text_trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(syntax)?;
    let (number, unit) = text_trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| syntax())?;
    let unit_ns = match unit {
        "ms" => 1_000_000,
        "s" => NS_PER_SEC,
        "m" => 60 * NS_PER_SEC,
        "h" => 3600 * NS_PER_SEC,
        "d" => 86_400 * NS_PER_SEC,
        _ => return Err(syntax()),
    };
    if number == 0 {
        return Err(UnitError::DurationZero(text.to_string()));
    }
    match number.checked_mul(unit_ns) {
        Some(ns) if ns <= MAX_DURATION_NS => Ok(ns),
        _ => Err(UnitError::DurationTooLong(text.to_string())),
    }
}

/// Parses `443` or `8000-8080` into an inclusive range.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), UnitError> {
    let syntax = || UnitError::PortSyntax(text.to_string());
    let port = |s: &str| -> Result<u16, UnitError> {
        match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(syntax()),
            Ok(p) => Ok(p),
        }
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if first > last {
        return Err(UnitError::PortRangeReversed(text.to_string()));
    }
    Ok((first, last))
}

/// Parses a CIDR or a bare address (a host route). Host bits must be clear, so a typo such
/// as `10.1.2.3/8` is caught rather than silently widened.
pub fn parse_cidr(text: &str) -> Result<IpNet, UnitError> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match text.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => return Err(UnitError::CidrSyntax(text.to_string())),
        },
    };
    if net.trunc() != net {
        return Err(UnitError::CidrHostBits {
            given: text.to_string(),
            network: net.trunc(),
        });
    }
    // Sources in ::ffff:0:0/96 are looked up as IPv4: an entry written in that range would
    // never match.
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(ipv4) = v6.addr().to_ipv4_mapped()
    {
        return Err(UnitError::CidrV4Mapped {
            given: text.to_string(),
            ipv4: format!("{ipv4}/{}", v6.prefix_len() - 96),
        });
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let cases: &[(&str, Result<u64, UnitError>)] = &[
            ("100/s", Ok(10_000_000)),
            ("6000/m", Ok(10_000_000)),
            ("1/h", Ok(3_600_000_000_000)),
            ("3/s", Ok(333_333_333)),
            (" 10 / sec ", Ok(100_000_000)),
            ("1000000000/s", Ok(1)),
            ("0/s", Err(UnitError::RateZero("0/s".into()))),
            (
                "2000000000/s",
                Err(UnitError::RateTooHigh("2000000000/s".into())),
            ),
            ("100", Err(UnitError::RateSyntax("100".into()))),
            ("100/d", Err(UnitError::RateSyntax("100/d".into()))),
            ("-1/s", Err(UnitError::RateSyntax("-1/s".into()))),
            ("1.5/s", Err(UnitError::RateSyntax("1.5/s".into()))),
            ("/s", Err(UnitError::RateSyntax("/s".into()))),
        ];
        for (text, want) in cases {
            let got = parse_rate(text).map(|r| r.interval_ns);
            assert_eq!(&got, want, "parse_rate({text:?})");
        }
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Result<u64, UnitError>)] = &[
            ("500ms", Ok(500_000_000)),
            ("30s", Ok(30_000_000_000)),
            ("10m", Ok(600_000_000_000)),
            ("2h", Ok(7_200_000_000_000)),
            ("1d", Ok(86_400_000_000_000)),
            ("0s", Err(UnitError::DurationZero("0s".into()))),
            ("10", Err(UnitError::DurationSyntax("10".into()))),
            ("s", Err(UnitError::DurationSyntax("s".into()))),
            ("10 m", Err(UnitError::DurationSyntax("10 m".into()))),
            ("1w", Err(UnitError::DurationSyntax("1w".into()))),
            ("365d", Ok(365 * 86_400_000_000_000)),
            // A year at most: the kernel adds these to a clock and must not wrap.
            ("366d", Err(UnitError::DurationTooLong("366d".into()))),
            ("213503d", Err(UnitError::DurationTooLong("213503d".into()))),
            (
                "99999999999999999d",
                Err(UnitError::DurationTooLong("99999999999999999d".into())),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_duration(text), want, "parse_duration({text:?})");
        }
    }

    #[test]
    fn port_ranges() {
        type Case = (&'static str, Result<(u16, u16), UnitError>);
        let cases: &[Case] = &[
            ("443", Ok((443, 443))),
            ("8000-8080", Ok((8000, 8080))),
            ("1-65535", Ok((1, 65535))),
            ("80-80", Ok((80, 80))),
            ("0", Err(UnitError::PortSyntax("0".into()))),
            ("65536", Err(UnitError::PortSyntax("65536".into()))),
            ("90-80", Err(UnitError::PortRangeReversed("90-80".into()))),
            ("http", Err(UnitError::PortSyntax("http".into()))),
            ("80-", Err(UnitError::PortSyntax("80-".into()))),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_port_range(text), want, "parse_port_range({text:?})");
        }
    }

    #[test]
    fn cidrs() {
        let ok: &[(&str, &str)] = &[
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.1", "192.0.2.1/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("2001:db8::1", "2001:db8::1/128"),
            ("::/0", "::/0"),
        ];
        for (text, want) in ok {
            assert_eq!(parse_cidr(text).unwrap().to_string(), *want, "{text}");
        }
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Err(UnitError::CidrHostBits {
                given: "10.1.2.3/8".into(),
                network: "10.0.0.0/8".parse().unwrap()
            })
        );
        // IPv4-mapped sources are looked up as IPv4: such an entry would never match.
        for (given, ipv4) in [
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:192.0.2.1", "192.0.2.1/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
        ] {
            assert_eq!(
                parse_cidr(given),
                Err(UnitError::CidrV4Mapped {
                    given: given.into(),
                    ipv4: ipv4.into()
                }),
                "{given}"
            );
        }
        for bad in [
            "10.0.0.0/33",
            "300.1.1.1",
            "2001:db8::/129",
            "example.com",
            "",
        ] {
            assert!(
                matches!(parse_cidr(bad), Err(UnitError::CidrSyntax(_))),
                "{bad}"
            );
        }
    }
}
