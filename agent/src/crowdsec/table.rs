//! The decisions the agent holds, by Local API id, and what each prefix's kernel entry is:
//! the decision on it that lasts longest (several may cover one prefix, from different
//! scenarios or origins, and each is deleted on its own).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use agent_common::{DecisionEntry, decision::Origin};
use ipnet::IpNet;

use super::lapi::{self, Decision, Stream};

/// A decision enforced: its prefix, when it ends (`CLOCK_MONOTONIC` ns) and its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    net: IpNet,
    expires_ns: u64,
    origin: Origin,
}

/// Why a decision was not enforced, a metric label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ignored {
    /// A type other than `ban` (`captcha`, `throttle`, a custom one): nothing in the
    /// kernel can ask a client to solve a captcha.
    Type(String),
    /// A scope other than `Ip` and `Range` (`Country`, `AS`, a username...).
    Scope(String),
    /// A value that is not an address or a prefix, or a duration that is not one.
    Malformed,
}

impl Ignored {
    pub fn label(&self) -> String {
        match self {
            Ignored::Type(kind) => format!("type:{kind}"),
            Ignored::Scope(scope) => format!("scope:{scope}"),
            Ignored::Malformed => "malformed".to_string(),
        }
    }
}

/// What one pull changed (see `Table::apply`).
#[derive(Debug, Default)]
pub struct Applied {
    pub touched: HashSet<IpNet>,
    pub ignored: Vec<Ignored>,
    pub own: Vec<(IpNet, u64)>,
}

#[derive(Debug, Default)]
pub struct Table {
    by_id: HashMap<i64, Held>,
    /// The ids on each prefix: usually one, so a short list rather than a set.
    by_net: HashMap<IpNet, Vec<i64>>,
}

impl Table {
    /// Takes in a pull: deletions first, then new decisions (one that is already held is
    /// replaced). With `startup` the pull is the whole set and replaces the table. A
    /// decision `is_own` says this node posted (its own ban, come back) is not held: the
    /// node's ban already enforces it. Returns the prefixes whose kernel entry may have
    /// changed, what was ignored, and the own decisions (prefix, end) seen.
    pub fn apply(
        &mut self,
        stream: &Stream,
        startup: bool,
        now_ns: u64,
        is_own: impl Fn(&Decision) -> bool,
    ) -> Applied {
        let mut touched = HashSet::new();
        if startup {
            touched.extend(self.by_net.keys().copied());
            self.by_id.clear();
            self.by_net.clear();
        }
        for decision in &stream.deleted {
            if let Some(net) = self.remove(decision.id) {
                touched.insert(net);
            }
        }
        let mut ignored = Vec::new();
        let mut own = Vec::new();
        for decision in &stream.new {
            if let Some(net) = self.remove(decision.id) {
                touched.insert(net);
            }
            match held(decision, now_ns) {
                Ok(Some(held)) if is_own(decision) => own.push((held.net, held.expires_ns)),
                Ok(Some(held)) => {
                    touched.insert(held.net);
                    self.by_net.entry(held.net).or_default().push(decision.id);
                    self.by_id.insert(decision.id, held);
                }
                Ok(None) => {}
                Err(why) => ignored.push(why),
            }
        }
        Applied {
            touched,
            ignored,
            own,
        }
    }

    /// Drops the decisions that ended by `now_ns`; returns their prefixes.
    pub fn expire(&mut self, now_ns: u64) -> HashSet<IpNet> {
        let ended: Vec<i64> = self
            .by_id
            .iter()
            .filter(|(_, held)| held.expires_ns <= now_ns)
            .map(|(id, _)| *id)
            .collect();
        ended.into_iter().filter_map(|id| self.remove(id)).collect()
    }

    fn remove(&mut self, id: i64) -> Option<IpNet> {
        let held = self.by_id.remove(&id)?;
        if let Some(ids) = self.by_net.get_mut(&held.net) {
            ids.retain(|&held_id| held_id != id);
            if ids.is_empty() {
                self.by_net.remove(&held.net);
            }
        }
        Some(held.net)
    }

    /// What the kernel should hold for `net`: the decision on it that ends last, or none.
    pub fn entry(&self, net: IpNet) -> Option<DecisionEntry> {
        let longest = self
            .by_net
            .get(&net)?
            .iter()
            .map(|id| self.by_id[id])
            .max_by_key(|held| held.expires_ns)?;
        Some(DecisionEntry::new(longest.expires_ns, longest.origin))
    }

    /// Every prefix a decision covers.
    pub fn nets(&self) -> impl Iterator<Item = &IpNet> {
        self.by_net.keys()
    }
}

/// A decision as the kernel enforces it, `None` for one that has already ended, or why it
/// is not enforced.
fn held(decision: &Decision, now_ns: u64) -> Result<Option<Held>, Ignored> {
    if !decision.kind.eq_ignore_ascii_case("ban") {
        return Err(Ignored::Type(decision.kind.to_ascii_lowercase()));
    }
    let value = decision.value.trim();
    let net = match decision.scope.to_ascii_lowercase().as_str() {
        "ip" => value
            .parse::<IpAddr>()
            .map(|addr| IpNet::from(addr.to_canonical()))
            .map_err(|_| Ignored::Malformed)?,
        "range" => {
            let net: IpNet = value.parse().map_err(|_| Ignored::Malformed)?;
            canonical(net.trunc())
        }
        other => return Err(Ignored::Scope(other.to_string())),
    };
    let left = lapi::go_duration(&decision.duration).ok_or(Ignored::Malformed)?;
    if left == Duration::ZERO {
        return Ok(None);
    }
    let expires_ns = now_ns.saturating_add(left.as_nanos().min(u64::MAX as u128) as u64);
    Ok(Some(Held {
        net,
        expires_ns,
        origin: Origin::from_name(&decision.origin),
    }))
}

/// An IPv4-mapped IPv6 prefix (`::ffff:192.0.2.0/120`) as the IPv4 prefix it is: the
/// kernel judges such sources as IPv4.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(v4.into(), v6.prefix_len() - 96).expect("at most 32"),
            None => net,
        },
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn decision(id: i64, scope: &str, value: &str, duration: &str, origin: &str) -> Decision {
        Decision {
            id,
            origin: origin.into(),
            kind: "ban".into(),
            scope: scope.into(),
            value: value.into(),
            duration: duration.into(),
            scenario: "test".into(),
        }
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn the_longest_decision_on_a_prefix_is_its_entry_until_deleted() {
        let mut table = Table::default();
        let stream = Stream {
            new: vec![
                decision(1, "Ip", "192.0.2.7", "1h", "crowdsec"),
                decision(2, "Ip", "192.0.2.7", "4h", "cscli"),
                decision(3, "Range", "198.51.100.77/24", "10m", "lists"),
                decision(4, "ip", "2001:db8::1", "1m", "CAPI"),
                decision(5, "Ip", "::ffff:203.0.113.5", "1m", "crowdsec"),
            ],
            deleted: vec![],
        };
        let Applied {
            touched, ignored, ..
        } = table.apply(&stream, true, 0, |_| false);
        assert!(ignored.is_empty());
        assert_eq!(touched.len(), 4);
        let entry = table.entry(net("192.0.2.7/32")).unwrap();
        assert_eq!(entry.expires_ns, 4 * 3600 * SECOND);
        assert_eq!(entry.origin, Origin::Cscli.code());
        assert!(
            table.entry(net("198.51.100.0/24")).is_some(),
            "range truncated"
        );
        assert!(table.entry(net("2001:db8::1/128")).is_some());
        assert!(
            table.entry(net("203.0.113.5/32")).is_some(),
            "mapped as IPv4"
        );
        // Deleting the longer one leaves the shorter in force.
        let touched = table
            .apply(
                &Stream {
                    new: vec![],
                    deleted: vec![decision(2, "Ip", "192.0.2.7", "-1s", "cscli")],
                },
                false,
                SECOND,
                |_| false,
            )
            .touched;
        assert_eq!(touched, HashSet::from([net("192.0.2.7/32")]));
        let entry = table.entry(net("192.0.2.7/32")).unwrap();
        assert_eq!(entry.origin, Origin::Crowdsec.code());
        assert_eq!(
            table.entry(net("198.51.100.0/24")).unwrap().origin,
            Origin::Lists.code()
        );
        // Time passes: the one-minute decisions end.
        let ended = table.expire(61 * SECOND);
        assert_eq!(
            ended,
            HashSet::from([net("2001:db8::1/128"), net("203.0.113.5/32")])
        );
        assert!(table.entry(net("2001:db8::1/128")).is_none());
        // A startup pull replaces everything: what it lacks is lifted.
        let touched = table
            .apply(
                &Stream {
                    new: vec![decision(9, "Ip", "192.0.2.9", "1h", "cscli")],
                    deleted: vec![],
                },
                true,
                62 * SECOND,
                |_| false,
            )
            .touched;
        assert!(touched.contains(&net("192.0.2.7/32")) && touched.contains(&net("192.0.2.9/32")));
        assert!(table.entry(net("192.0.2.7/32")).is_none());
        assert_eq!(table.nets().count(), 1);
    }

    #[test]
    fn what_cannot_be_enforced_is_ignored_and_said_why() {
        let mut table = Table::default();
        let mut captcha = decision(1, "Ip", "192.0.2.1", "1h", "crowdsec");
        captcha.kind = "captcha".into();
        let stream = Stream {
            new: vec![
                captcha,
                decision(2, "Country", "FR", "1h", "crowdsec"),
                decision(3, "Ip", "not-an-address", "1h", "crowdsec"),
                decision(4, "Range", "192.0.2.0/33", "1h", "crowdsec"),
                decision(5, "Ip", "192.0.2.5", "eventually", "crowdsec"),
                decision(6, "Ip", "192.0.2.6", "-3s", "crowdsec"),
            ],
            deleted: vec![],
        };
        let Applied {
            touched, ignored, ..
        } = table.apply(&stream, false, 0, |_| false);
        assert!(
            touched.is_empty(),
            "an ended decision is not enforced either"
        );
        assert_eq!(
            ignored,
            vec![
                Ignored::Type("captcha".into()),
                Ignored::Scope("country".into()),
                Ignored::Malformed,
                Ignored::Malformed,
                Ignored::Malformed,
            ]
        );
        assert_eq!(ignored[1].label(), "scope:country");
    }

    #[test]
    fn own_decisions_come_back_without_a_second_entry() {
        let mut table = Table::default();
        let mut own = decision(1, "Ip", "192.0.2.1", "10m", "portcullis");
        own.scenario = "portcullis/login (node-a)".into();
        let mut other = decision(2, "Ip", "192.0.2.2", "10m", "portcullis");
        other.scenario = "portcullis/login (node-b)".into();
        let applied = table.apply(
            &Stream {
                new: vec![own, other],
                deleted: vec![],
            },
            true,
            0,
            |d| d.scenario.ends_with("(node-a)"),
        );
        assert_eq!(applied.own, vec![(net("192.0.2.1/32"), 600 * SECOND)]);
        assert!(
            table.entry(net("192.0.2.1/32")).is_none(),
            "held once, as a ban"
        );
        let entry = table.entry(net("192.0.2.2/32")).unwrap();
        assert_eq!(entry.origin, Origin::Portcullis.code());
    }
}
