//! Client proxies for NetworkManager (`org.freedesktop.NetworkManager` on the system bus).
//!
//! Only what linkrelay reads is declared. Property names and types follow NetworkManager 1.42's
//! introspection data.

pub mod access_point;
pub mod active;
pub mod device;
pub mod ip4config;
pub mod manager;
pub mod settings;
pub mod wireless;

/// NetworkManager's well-known bus name.
pub const NM_BUS_NAME: &str = "org.freedesktop.NetworkManager";

/// `NMConnectivityState`: the result of NetworkManager's connectivity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// 0: not known (checking disabled, or not yet run).
    Unknown,
    /// 1: no network connection at all.
    None,
    /// 2: behind a captive portal.
    Portal,
    /// 3: connected, but the internet is not reachable.
    Limited,
    /// 4: full access.
    Full,
}

impl Connectivity {
    /// Decodes NetworkManager's numeric value; unknown numbers count as `Unknown`.
    pub fn from_nm(value: u32) -> Self {
        match value {
            1 => Self::None,
            2 => Self::Portal,
            3 => Self::Limited,
            4 => Self::Full,
            _ => Self::Unknown,
        }
    }

    /// A short lowercase word for status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::None => "none",
            Self::Portal => "portal",
            Self::Limited => "limited",
            Self::Full => "full",
        }
    }
}

/// `NMMetered`: 1 yes, 2 no, 3 guess-yes, 4 guess-no, 0 unknown. Guesses count as their guess.
pub fn metered_from_nm(value: u32) -> bool {
    matches!(value, 1 | 3)
}

/// `NMActiveConnectionState` value for an activated connection.
pub const ACTIVE_STATE_ACTIVATED: u32 = 2;
