//! What the agent remembers about relays per link: who accepted last (tried first next time) and
//! who refused us (skipped for a while). Decisions are pure functions of this data.

use std::collections::HashMap;

/// A refusal of `relay` on `link`, remembered until `until` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Unix seconds when the refusal is forgotten.
    pub until: u64,
    /// The server's reply.
    pub reply: String,
}

/// Relay memory, keyed by link name.
#[derive(Debug, Default, Clone)]
pub struct RelayMemory {
    good: HashMap<String, String>,
    refused: HashMap<(String, String), Refusal>,
}

impl RelayMemory {
    /// Remembers that `relay` accepted mail on `link`.
    pub fn accepted(&mut self, link: &str, relay: &str) {
        self.good.insert(link.to_string(), relay.to_string());
        self.refused.remove(&(relay.to_string(), link.to_string()));
    }

    /// Remembers that `relay` refused us on `link` until `until`.
    pub fn refused(&mut self, link: &str, relay: &str, until: u64, reply: &str) {
        self.refused.insert(
            (relay.to_string(), link.to_string()),
            Refusal {
                until,
                reply: reply.to_string(),
            },
        );
        if self.good.get(link).is_some_and(|r| r == relay) {
            self.good.remove(link);
        }
    }

    /// The active refusal of `relay` on `link`, if any.
    pub fn refusal(&self, link: &str, relay: &str, now: u64) -> Option<&Refusal> {
        self.refused
            .get(&(relay.to_string(), link.to_string()))
            .filter(|r| r.until > now)
    }

    /// The order to try `relays` in on `link`: the one that accepted last first, the rest in
    /// route order, relays with an active refusal left out.
    pub fn order(&self, link: &str, relays: &[String], now: u64) -> Vec<String> {
        let mut out: Vec<String> = relays
            .iter()
            .filter(|r| self.refusal(link, r, now).is_none())
            .cloned()
            .collect();
        if let Some(good) = self.good.get(link)
            && let Some(pos) = out.iter().position(|r| r == good)
        {
            let g = out.remove(pos);
            out.insert(0, g);
        }
        out
    }

    /// When the earliest of the given relays' refusals on `link` ends.
    pub fn earliest_release(&self, link: &str, relays: &[String], now: u64) -> Option<u64> {
        relays
            .iter()
            .filter_map(|r| self.refusal(link, r, now).map(|f| f.until))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepted_relay_goes_first_on_that_link_only() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b", "c"]);
        m.accepted("home", "c");
        assert_eq!(m.order("home", &relays, 0), names(&["c", "a", "b"]));
        assert_eq!(m.order("office", &relays, 0), relays);
    }

    #[test]
    fn refused_relay_is_skipped_until_the_memory_ends() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b"]);
        m.refused("home", "a", 100, "554 5.7.1 Relay access denied");
        assert_eq!(m.order("home", &relays, 50), names(&["b"]));
        assert_eq!(m.order("office", &relays, 50), relays);
        assert_eq!(m.order("home", &relays, 100), relays);
        assert_eq!(m.earliest_release("home", &relays, 50), Some(100));
        m.accepted("home", "a");
        assert_eq!(m.order("home", &relays, 50), relays);
    }

    #[test]
    fn a_refusal_demotes_the_remembered_relay() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b"]);
        m.accepted("home", "b");
        m.refused("home", "b", 100, "535");
        assert_eq!(m.order("home", &relays, 0), names(&["a"]));
    }
}
