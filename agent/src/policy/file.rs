//! The policy file as written: serde structures with `deny_unknown_fields`. Sections and
//! rules keep their source location so validation errors can name the line; allow and deny
//! entries, which may number a million, do not, and `EntryLines` finds theirs when an error
//! needs one.

use ipnet::IpNet;
use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, Visitor, value::MapAccessDeserializer},
};
use serde_saphyr::Spanned;

use super::units;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub allow: Vec<AllowItem>,
    #[serde(default)]
    pub deny: Vec<DenyItem>,
    #[serde(default)]
    pub rate_limits: Vec<Spanned<RateLimitItem>>,
    #[serde(default)]
    pub events: Option<Spanned<EventsSection>>,
    #[serde(default)]
    pub capacity: Option<Spanned<CapacitySection>>,
    #[serde(default)]
    pub http: Option<Spanned<HttpSection>>,
}

pub use agent_common::Mode;

/// The lines the allow and deny entries start on, read by parsing the file a second time,
/// only when an error names an entry: a line kept for each entry as it is parsed cost a
/// million-entry deny list a fifth of its parse time.
#[derive(Debug, Default, Deserialize)]
pub struct EntryLines {
    #[serde(default)]
    pub allow: Vec<Spanned<IgnoredAny>>,
    #[serde(default)]
    pub deny: Vec<Spanned<IgnoredAny>>,
}

/// What an allow or deny entry covers: one CIDR, or every entry of an IP list.
#[derive(Debug)]
pub enum Target {
    /// Parsed as it is read, sparing a million-entry list a `String` an entry; the text
    /// where it does not parse, for validation to say why, on its line.
    Cidr(Result<IpNet, Box<str>>),
    /// Boxed: rare, and the size of every entry is that of the largest kind.
    List(Box<ListTarget>),
}

#[derive(Debug)]
pub struct ListTarget {
    /// An absolute file path or an http(s) URL.
    pub list: String,
    /// How often a URL is fetched again (e.g. 1h).
    pub refresh: Option<String>,
}

impl Target {
    fn cidr(text: &str) -> Target {
        Target::Cidr(units::parse_cidr(text).map_err(|_| text.into()))
    }
}

/// The fields an allow or deny entry written as a map may have; which are allowed depends
/// on the entry (allow entries have no mode or name).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryMap {
    cidr: Option<String>,
    list: Option<String>,
    refresh: Option<String>,
    #[serde(default)]
    mode: Mode,
    name: Option<String>,
}

impl EntryMap {
    fn target<E: de::Error>(self) -> Result<(Target, Mode, Option<String>), E> {
        let target = match (self.cidr, self.list) {
            (Some(cidr), None) if self.refresh.is_none() => Target::cidr(&cidr),
            (Some(_), None) => return Err(E::custom("refresh applies to a list, not a cidr")),
            (None, Some(list)) => Target::List(Box::new(ListTarget {
                list,
                refresh: self.refresh,
            })),
            _ => return Err(E::custom("give either cidr or list")),
        };
        Ok((target, self.mode, self.name))
    }
}

/// A deny entry: a bare CIDR string (enforced, unnamed) or a map with a cidr or a list.
#[derive(Debug)]
pub struct DenyItem {
    pub target: Target,
    pub mode: Mode,
    pub name: Option<String>,
}

impl<'de> Deserialize<'de> for DenyItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DenyVisitor;
        impl<'de> Visitor<'de> for DenyVisitor {
            type Value = DenyItem;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CIDR, or a map with cidr or list, and optional mode and name")
            }

            fn visit_str<E: de::Error>(self, cidr: &str) -> Result<DenyItem, E> {
                Ok(DenyItem {
                    target: Target::cidr(cidr),
                    mode: Mode::Enforce,
                    name: None,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<DenyItem, A::Error> {
                let item = EntryMap::deserialize(MapAccessDeserializer::new(map))?;
                let (target, mode, name) = item.target()?;
                Ok(DenyItem { target, mode, name })
            }
        }
        deserializer.deserialize_any(DenyVisitor)
    }
}

/// An allow entry: a bare CIDR string, or a map with a cidr or a list.
#[derive(Debug)]
pub struct AllowItem {
    pub target: Target,
}

impl<'de> Deserialize<'de> for AllowItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AllowVisitor;
        impl<'de> Visitor<'de> for AllowVisitor {
            type Value = AllowItem;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CIDR, or a map with cidr or list")
            }

            fn visit_str<E: de::Error>(self, cidr: &str) -> Result<AllowItem, E> {
                Ok(AllowItem {
                    target: Target::cidr(cidr),
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AllowItem, A::Error> {
                let item = EntryMap::deserialize(MapAccessDeserializer::new(map))?;
                if item.name.is_some() || item.mode != Mode::Enforce {
                    return Err(de::Error::custom(
                        "allow entries have no name or mode: allowed traffic is not counted by rule",
                    ));
                }
                let (target, _, _) = item.target()?;
                Ok(AllowItem { target })
            }
        }
        deserializer.deserialize_any(AllowVisitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
    /// Every IP packet, whatever its protocol.
    Any,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Count {
    /// Every packet takes a token (the default).
    #[default]
    Packets,
    /// Only new TCP connections (SYN without ACK) take a token.
    Connections,
}

/// A port or a port range; YAML gives `443` as a number and `8000-8080` as a string.
#[derive(Debug, Clone)]
pub struct PortSpec(pub String);

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortSpec;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port number or a range like \"8000-8080\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                Ok(PortSpec(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                Ok(PortSpec(v.to_string()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                Ok(PortSpec(v.to_string()))
            }
        }
        deserializer.deserialize_any(PortVisitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitItem {
    pub name: String,
    pub protocol: Protocol,
    /// Destination ports; empty means every port of the protocol.
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub count: Count,
    pub rate: String,
    /// Tokens a source may spend at once; defaults to the rate's count (one period's worth).
    pub burst: Option<u64>,
    /// Sources are grouped by this IPv4 prefix; defaults to 32 (one bucket per address).
    pub prefix_v4: Option<u8>,
    /// Sources are grouped by this IPv6 prefix; defaults to 64, so one host cannot dodge its
    /// limit by rotating through the addresses of its /64.
    pub prefix_v6: Option<u8>,
    pub ban: Option<BanSection>,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanSection {
    /// Over-limit packets that trigger the ban.
    pub after: u32,
    /// Window in which they must happen; defaults to 60s.
    pub within: Option<String>,
    /// How long the ban lasts.
    #[serde(rename = "for")]
    pub duration: String,
    /// When to ban a wider prefix instead of one more group inside it.
    pub aggregate: Option<AggregateSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateSection {
    /// Bans of the rule inside one wider prefix (within a ban's duration) after which the
    /// next ban there is of the wider prefix; 0 never widens. Defaults to 16.
    pub after: Option<u32>,
    /// The wider prefixes; default 24 (IPv4) and 48 (IPv6).
    pub prefix_v4: Option<u8>,
    pub prefix_v6: Option<u8>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Ring-buffer events the kernel may write per second, over all CPUs.
    pub per_second: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySection {
    pub sources: Option<u32>,
    pub cidrs: Option<u32>,
    pub bans: Option<u32>,
    pub blocks: Option<u32>,
    pub rules: Option<u32>,
    pub decisions: Option<u32>,
}

/// `http.strict` as written: a boolean, or a word (`shadow`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StrictField {
    Flag(bool),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// TCP destination ports carrying plaintext HTTP/1.x.
    #[serde(default)]
    pub ports: Vec<u32>,
    /// true (the default), false, or shadow.
    pub strict: Option<StrictField>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteItem>>,
    #[serde(default)]
    pub responses: Vec<Spanned<ResponseItem>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteItem {
    pub name: String,
    /// Default: every method.
    #[serde(default)]
    pub methods: Vec<String>,
    pub path: String,
    /// Either a rate (with burst, ban and prefixes as for rate_limits) or `deny: true`.
    pub rate: Option<String>,
    pub burst: Option<u64>,
    pub ban: Option<BanSection>,
    pub prefix_v4: Option<u8>,
    pub prefix_v6: Option<u8>,
    #[serde(default)]
    pub deny: bool,
    /// What a request over the rate gets: `reset` (the default) or `drop`.
    pub over_limit: Option<String>,
    #[serde(default)]
    pub mode: Mode,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseItem {
    pub name: String,
    pub status: Vec<u16>,
    pub ban: BanSection,
    pub prefix_v4: Option<u8>,
    pub prefix_v6: Option<u8>,
    #[serde(default)]
    pub mode: Mode,
}
