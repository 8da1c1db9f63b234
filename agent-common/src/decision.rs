//! Where a detector's decision came from: a stable code the kernel keeps in each
//! `DecisionEntry` and passes on in events, named as CrowdSec names its origins.

/// A decision's origin. Codes are stable (event fields); never renumber one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// An origin this version does not know by name.
    Other = 0,
    /// The CrowdSec engine's own scenarios (on this node or, through the Local API, any
    /// node: Portcullis agents share their bans with this origin too).
    Crowdsec = 1,
    /// Added by hand with `cscli decisions add`.
    Cscli = 2,
    /// CrowdSec's community blocklist (the Central API).
    Capi = 3,
    /// Third-party blocklists subscribed through the CrowdSec console.
    Lists = 4,
    /// Imported in bulk with `cscli decisions import`.
    CscliImport = 5,
    /// A ban another Portcullis agent made and shared through the Local API.
    Portcullis = 6,
}

impl Origin {
    pub const ALL: [Origin; 7] = [
        Origin::Other,
        Origin::Crowdsec,
        Origin::Cscli,
        Origin::Capi,
        Origin::Lists,
        Origin::CscliImport,
        Origin::Portcullis,
    ];

    /// The origin as the Local API writes it (`origin` of a decision).
    pub const fn name(self) -> &'static str {
        match self {
            Origin::Other => "other",
            Origin::Crowdsec => "crowdsec",
            Origin::Cscli => "cscli",
            Origin::Capi => "CAPI",
            Origin::Lists => "lists",
            Origin::CscliImport => "cscli-import",
            Origin::Portcullis => "portcullis",
        }
    }

    pub fn from_name(name: &str) -> Origin {
        Origin::ALL
            .into_iter()
            .find(|o| o.name() == name)
            .unwrap_or(Origin::Other)
    }

    pub const fn from_code(code: u32) -> Origin {
        match code {
            1 => Origin::Crowdsec,
            2 => Origin::Cscli,
            3 => Origin::Capi,
            4 => Origin::Lists,
            5 => Origin::CscliImport,
            6 => Origin::Portcullis,
            _ => Origin::Other,
        }
    }

    pub const fn code(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for origin in Origin::ALL {
            assert_eq!(Origin::from_code(origin.code()), origin);
            assert_eq!(Origin::from_name(origin.name()), origin);
        }
        assert_eq!(Origin::from_name("appsec"), Origin::Other);
    }
}
