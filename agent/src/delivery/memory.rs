//! What the agent remembers about relays per link: who accepted last (tried first next time) and
//! who refused us (skipped for a while). Decisions are pure functions of this data.
//!
//! It also keeps a history: per link, the facts the link showed (NetworkManager's connection id
//! and uuid, the DHCP domain, ...) and each relay's last answer there, accepted or refused, with
//! its time, from flushes and relay tests alike. `linkrelay routes suggest` proposes `[[link]]`
//! rules and routes from it.
//!
//! The memory survives restarts: [`RelayMemory::load`] reads it from a small JSON file beside
//! the outboxes (`<data_dir>/.relay-memory.json`), and every change is written back atomically
//! (temporary file, fsync, rename, fsync of the directory). Losing the file loses nothing but
//! time: the next messages try the relays in route order again.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use linkrelay_config::{LinkFacts, LinkName, RelayName};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// The file name of the persisted memory in the data directory. It starts with a dot, which no
/// user name (an outbox directory) can.
pub const FILE_NAME: &str = ".relay-memory.json";

/// The link a route was decided for, as the relay memory (and the words about a held or
/// refused message) names it.
///
/// Mostly a `[[link]]` rule; but a relay override sends mail even on a link that no rule
/// matches, or with no link at all, and what a relay does there is remembered too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKey {
    /// The `[[link]]` rule in effect: matched, or named by a link override.
    Rule(LinkName),
    /// No rule matched: the link source's own name for the link (NetworkManager's connection
    /// id, or the interface under netlink).
    Unmatched(String),
    /// The link source reports no link.
    NoLink,
}

impl LinkKey {
    /// The key in the memory's file: the rule name, the link's id, or empty for no link.
    pub fn as_str(&self) -> &str {
        match self {
            LinkKey::Rule(name) => name.as_str(),
            LinkKey::Unmatched(id) => id,
            LinkKey::NoLink => "",
        }
    }
}

impl fmt::Display for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal of `relay` on `link`, remembered until `until` (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Unix seconds when the refusal is forgotten.
    pub until: u64,
    /// The server's reply.
    pub reply: String,
}

/// Which relay, on which link: what a refusal is filed under. Named fields, so that the two
/// cannot trade places.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OnLink {
    /// [`LinkKey::as_str`] of the link.
    link: String,
    relay: RelayName,
}

impl OnLink {
    fn new(link: &LinkKey, relay: &RelayName) -> Self {
        OnLink {
            link: link.as_str().to_owned(),
            relay: relay.clone(),
        }
    }
}

/// The most links the history keeps; past it the link answered on longest ago is forgotten.
pub const MAX_SEEN_LINKS: usize = 64;

/// How stale a remembered answer's time may grow before a repeat of the same answer is written
/// down: every sent message is an acceptance, and a file write per message would slow a flush.
const ANSWER_TIME_GRAIN: u64 = 3600;

/// A relay's last answer on a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// It took mail for elsewhere from us (`true`), or refused to relay for us (`false`).
    pub accepted: bool,
    /// Unix seconds of the answer (of the first of a run of equal answers within an hour).
    pub at: u64,
    /// The server's reply, for a refusal; empty for an acceptance.
    #[serde(default)]
    pub reply: String,
}

/// A link relays answered on: what it looked like, and each relay's last answer there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenLink {
    /// The link's identity ([`link_identity`]): NetworkManager's connection uuid, else its id
    /// (the interface under netlink).
    pub key: String,
    /// The link's facts when a relay last answered there, as the `Link` property names them
    /// (id, uuid, type, interface, gateway, ssid, domains); enough to write a rule for it.
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
    /// Relay -> its last answer on this link.
    #[serde(default)]
    pub answers: BTreeMap<RelayName, Answer>,
}

impl SeenLink {
    /// When any relay last answered here.
    fn latest(&self) -> u64 {
        self.answers.values().map(|a| a.at).max().unwrap_or(0)
    }
}

/// The facts of a link worth keeping to recognise it and write a `[[link]]` rule for it.
pub fn facts_map(facts: &LinkFacts) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            map.insert(k.to_string(), v.to_string());
        }
    };
    put("id", &facts.id);
    put("uuid", &facts.uuid);
    put("type", &facts.conn_type);
    put("interface", &facts.interface);
    put("gateway", facts.gateway.as_deref().unwrap_or(""));
    put("ssid", facts.ssid.as_deref().unwrap_or(""));
    put("domains", &facts.domains.join(","));
    map
}

/// What tells one link from another in the history: NetworkManager's connection uuid, else the
/// link's id (the interface under netlink).
pub fn link_identity(facts: &BTreeMap<String, String>) -> Option<String> {
    facts.get("uuid").or_else(|| facts.get("id")).cloned()
}

/// Relay memory, keyed by link.
#[derive(Debug, Default, Clone)]
pub struct RelayMemory {
    /// [`LinkKey::as_str`] -> the relay that accepted last on that link.
    good: HashMap<String, RelayName>,
    refused: HashMap<OnLink, Refusal>,
    /// The history, by [`link_identity`].
    seen: BTreeMap<String, SeenLink>,
    /// [`LinkKey::as_str`] -> the facts of the link it stands for now, as the event loop last
    /// said ([`RelayMemory::link_facts`]); written into the history with the next answer.
    facts: HashMap<String, BTreeMap<String, String>>,
    /// Where changes are written; `None` keeps the memory in this process only.
    path: Option<PathBuf>,
}

/// The file's format.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    /// Link -> the relay that accepted last on it.
    #[serde(default)]
    accepted: BTreeMap<String, RelayName>,
    #[serde(default)]
    refused: Vec<StoredRefusal>,
    /// The history; absent from files of version 1.
    #[serde(default)]
    seen: Vec<SeenLink>,
}

/// The version [`RelayMemory::save`] writes; files of version 1 (no history) load too.
const VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct StoredRefusal {
    relay: RelayName,
    link: String,
    until: u64,
    reply: String,
}

impl RelayMemory {
    /// The memory persisted at `path`, written back there on every change. A missing file is
    /// an empty memory; an unreadable or corrupt one is reported and replaced on the next
    /// change (the memory only saves time, it never holds mail). Refusals that ended before
    /// `now` are dropped.
    pub fn load(path: &Path, now: u64) -> RelayMemory {
        let mut memory = RelayMemory {
            path: Some(path.to_path_buf()),
            ..RelayMemory::default()
        };
        let bytes = match read_capped(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return memory,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read the relay memory; starting without it");
                return memory;
            }
        };
        let stored: Stored = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "corrupt relay memory; starting without it");
                return memory;
            }
        };
        memory.good = stored.accepted.into_iter().collect();
        memory.seen = stored
            .seen
            .into_iter()
            .map(|l| (l.key.clone(), l))
            .collect();
        for r in stored.refused {
            if r.until > now {
                memory.refused.insert(
                    OnLink {
                        link: r.link,
                        relay: r.relay,
                    },
                    Refusal {
                        until: r.until,
                        reply: r.reply,
                    },
                );
            }
        }
        memory
    }

    /// Remembers that `relay` accepted mail on `link`.
    pub fn accepted(&mut self, link: &LinkKey, relay: &RelayName) {
        let changed = (self.good.get(link.as_str()) != Some(relay))
            | self.refused.remove(&OnLink::new(link, relay)).is_some()
            | self.note_answer(link, relay, true, "", crate::clock::now());
        if changed {
            self.good.insert(link.as_str().to_owned(), relay.clone());
            self.save();
        }
    }

    /// Remembers that `relay` refused us on `link` until `until`.
    pub fn refused(&mut self, link: &LinkKey, relay: &RelayName, until: u64, reply: &str) {
        self.refused.insert(
            OnLink::new(link, relay),
            Refusal {
                until,
                reply: reply.to_string(),
            },
        );
        if self.good.get(link.as_str()) == Some(relay) {
            self.good.remove(link.as_str());
        }
        self.note_answer(link, relay, false, reply, crate::clock::now());
        self.save();
    }

    /// Remembers what a relay test found: `relay` would relay for us on `link` (`accepted`),
    /// or refused to with `reply`. It goes into the history only: a test steers no flush,
    /// except that an acceptance ends an older refusal of the same relay on the same link.
    pub fn tested(&mut self, link: &LinkKey, relay: &RelayName, accepted: bool, reply: &str) {
        let lifted = accepted && self.refused.remove(&OnLink::new(link, relay)).is_some();
        if self.note_answer(link, relay, accepted, reply, crate::clock::now()) | lifted {
            self.save();
        }
    }

    /// Tells the memory which link `link` stands for now, so that answers there are kept
    /// with the link's facts.
    pub fn link_facts(&mut self, link: &LinkKey, facts: &LinkFacts) {
        if *link != LinkKey::NoLink {
            self.facts
                .insert(link.as_str().to_owned(), facts_map(facts));
        }
    }

    /// Files `relay`'s answer on `link` in the history. Returns whether the history changed
    /// enough to be written: a new link or relay, another verdict or reply, new facts, or a
    /// time more than [`ANSWER_TIME_GRAIN`] later.
    fn note_answer(
        &mut self,
        link: &LinkKey,
        relay: &RelayName,
        accepted: bool,
        reply: &str,
        at: u64,
    ) -> bool {
        // Filed by the link itself, not the rule: under a link override the rule names
        // another link than the one the relay saw us on.
        let Some(facts) = self.facts.get(link.as_str()).cloned() else {
            return false;
        };
        let Some(identity) = link_identity(&facts) else {
            return false;
        };
        let seen = self
            .seen
            .entry(identity.clone())
            .or_insert_with(|| SeenLink {
                key: identity,
                facts: BTreeMap::new(),
                answers: BTreeMap::new(),
            });
        let mut changed = false;
        if seen.facts != facts {
            seen.facts = facts;
            changed = true;
        }
        let answer = Answer {
            accepted,
            at,
            reply: reply.to_owned(),
        };
        match seen.answers.get_mut(relay) {
            Some(old)
                if old.accepted == accepted
                    && old.reply == reply
                    && at < old.at.saturating_add(ANSWER_TIME_GRAIN) => {}
            Some(old) => {
                *old = answer;
                changed = true;
            }
            None => {
                seen.answers.insert(relay.clone(), answer);
                changed = true;
            }
        }
        while self.seen.len() > MAX_SEEN_LINKS {
            let Some(oldest) = self
                .seen
                .values()
                .min_by_key(|l| l.latest())
                .map(|l| l.key.clone())
            else {
                break;
            };
            self.seen.remove(&oldest);
        }
        changed
    }

    /// Forgets everything about `relay`: its refusals, its acceptances and its answers in
    /// the history. For a relay whose settings changed: what the old settings met says
    /// nothing about the new ones.
    pub fn forget_relay(&mut self, relay: &RelayName) {
        let before = (self.refused.len(), self.good.len());
        self.refused.retain(|on, _| on.relay != *relay);
        self.good.retain(|_, good| good != relay);
        let mut changed = before != (self.refused.len(), self.good.len());
        for seen in self.seen.values_mut() {
            changed |= seen.answers.remove(relay).is_some();
        }
        self.seen.retain(|_, seen| !seen.answers.is_empty());
        if changed {
            self.save();
        }
    }

    /// Moves the end of every refusal remembered for `old` (`[retry] refusal_memory`) to
    /// where `new` puts it: a reload that shortens the memory frees relays sooner.
    pub fn refusal_memory_changed(&mut self, old: Duration, new: Duration) {
        if old == new || self.refused.is_empty() {
            return;
        }
        for r in self.refused.values_mut() {
            r.until = r
                .until
                .saturating_sub(old.as_secs())
                .saturating_add(new.as_secs());
        }
        self.save();
    }

    /// The history: every link relays answered on, with their last answers.
    pub fn history(&self) -> Vec<SeenLink> {
        self.seen.values().cloned().collect()
    }

    /// Writes the memory to its file, if it has one. Failures are logged: the memory stays
    /// right in this process.
    fn save(&mut self) {
        let Some(path) = &self.path else {
            return;
        };
        let now = crate::clock::now();
        self.refused.retain(|_, r| r.until > now);
        let mut refused: Vec<StoredRefusal> = self
            .refused
            .iter()
            .map(|(on, r)| StoredRefusal {
                relay: on.relay.clone(),
                link: on.link.clone(),
                until: r.until,
                reply: r.reply.clone(),
            })
            .collect();
        refused.sort_by(|a, b| (&a.link, &a.relay).cmp(&(&b.link, &b.relay)));
        let stored = Stored {
            version: VERSION,
            accepted: self.good.clone().into_iter().collect(),
            refused,
            seen: self.history(),
        };
        let result = serde_json::to_vec_pretty(&stored)
            .map_err(std::io::Error::other)
            .and_then(|mut json| {
                json.push(b'\n');
                let dir = path.parent().unwrap_or(Path::new("."));
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(FILE_NAME);
                linkrelay_outbox::replace_file(dir, name, &json)
            });
        if let Err(e) = result {
            warn!(path = %path.display(), error = %e, "cannot save the relay memory");
        }
    }

    /// The active refusal of `relay` on `link`, if any.
    pub fn refusal(&self, link: &LinkKey, relay: &RelayName, now: u64) -> Option<&Refusal> {
        self.refused
            .get(&OnLink::new(link, relay))
            .filter(|r| r.until > now)
    }

    /// The order to try `relays` in on `link`: the one that accepted last first, the rest in
    /// route order, relays with an active refusal left out.
    pub fn order(&self, link: &LinkKey, relays: &[RelayName], now: u64) -> Vec<RelayName> {
        self.order_retrying(link, relays, now, |_| false)
    }

    /// [`RelayMemory::order`], except that relays with an active refusal for which
    /// `once_more` says so are kept: the user asked for them to be tried again.
    pub fn order_retrying(
        &self,
        link: &LinkKey,
        relays: &[RelayName],
        now: u64,
        once_more: impl Fn(&RelayName) -> bool,
    ) -> Vec<RelayName> {
        let mut out: Vec<RelayName> = relays
            .iter()
            .filter(|r| self.refusal(link, r, now).is_none() || once_more(r))
            .cloned()
            .collect();
        if let Some(good) = self.good.get(link.as_str())
            && let Some(pos) = out.iter().position(|r| r == good)
        {
            let g = out.remove(pos);
            out.insert(0, g);
        }
        out
    }

    /// When the earliest of the given relays' refusals on `link` ends.
    pub fn earliest_release(&self, link: &LinkKey, relays: &[RelayName], now: u64) -> Option<u64> {
        relays
            .iter()
            .filter_map(|r| self.refusal(link, r, now).map(|f| f.until))
            .min()
    }
}

/// Locks the relay memory the flushers and listings share; a poisoned lock (a panic elsewhere)
/// still holds usable data.
pub fn lock(m: &Mutex<RelayMemory>) -> MutexGuard<'_, RelayMemory> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The largest relay memory read: a few hundred bytes per (relay, link); a larger file is
/// not one we wrote (a sparse file would otherwise be read by the size it claims).
const MAX_FILE_SIZE: u64 = 4 * 1024 * 1024;

/// The bytes of the relay memory file, at most [`MAX_FILE_SIZE`] of them.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    // Without blocking: a FIFO here would hold the agent's start.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let size = meta.len();
    if size > MAX_FILE_SIZE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("it is {size} bytes, more than the {MAX_FILE_SIZE} a relay memory may have"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<RelayName> {
        v.iter().map(|s| RelayName::from(*s)).collect()
    }

    fn link(name: &str) -> LinkKey {
        LinkKey::Rule(name.into())
    }

    fn relay(name: &str) -> RelayName {
        name.into()
    }

    #[test]
    fn accepted_relay_goes_first_on_that_link_only() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b", "c"]);
        m.accepted(&link("home"), &relay("c"));
        assert_eq!(m.order(&link("home"), &relays, 0), names(&["c", "a", "b"]));
        assert_eq!(m.order(&link("office"), &relays, 0), relays);
    }

    #[test]
    fn refused_relay_is_skipped_until_the_memory_ends() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b"]);
        m.refused(
            &link("home"),
            &relay("a"),
            100,
            "554 5.7.1 Relay access denied",
        );
        assert_eq!(m.order(&link("home"), &relays, 50), names(&["b"]));
        assert_eq!(m.order(&link("office"), &relays, 50), relays);
        assert_eq!(m.order(&link("home"), &relays, 100), relays);
        assert_eq!(m.earliest_release(&link("home"), &relays, 50), Some(100));
        m.accepted(&link("home"), &relay("a"));
        assert_eq!(m.order(&link("home"), &relays, 50), relays);
    }

    #[test]
    fn memory_survives_a_restart_and_forgets_ended_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let relays = names(&["a", "b", "c"]);
        // The test's clock, given to every call that takes the time. It is far ahead of the
        // wall clock, which saving reads to drop ended refusals: a refusal ending at now + 1
        // is still on for it however long the test takes (it once lost that refusal when
        // the wall clock ticked between two lines).
        let now: u64 = 4_000_000_000; // 2096
        let mut m = RelayMemory::load(&path, now);
        assert_eq!(
            m.order(&link("home"), &relays, now),
            relays,
            "no file: empty"
        );
        m.accepted(&link("home"), &relay("c"));
        m.refused(
            &link("home"),
            &relay("a"),
            now + 600,
            "554 5.7.1 Relay access denied",
        );
        m.refused(
            &link("office"),
            &relay("b"),
            now + 1,
            "530 5.7.0 Authentication required",
        );
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let again = RelayMemory::load(&path, now);
        assert_eq!(again.order(&link("home"), &relays, now), names(&["c", "b"]));
        assert_eq!(
            again
                .refusal(&link("home"), &relay("a"), now)
                .map(|r| r.reply.as_str()),
            Some("554 5.7.1 Relay access denied")
        );
        assert_eq!(
            again.order(&link("office"), &relays, now),
            names(&["a", "c"])
        );
        // Loaded after the office refusal ended: it is gone.
        let later = RelayMemory::load(&path, now + 2);
        assert_eq!(later.order(&link("office"), &relays, now + 2), relays);
        assert!(later.refusal(&link("home"), &relay("a"), now + 2).is_some());
        // Nothing is left beside it.
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, [FILE_NAME]);
    }

    #[test]
    fn a_corrupt_file_is_an_empty_memory_and_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, b"{ not json").unwrap();
        let relays = names(&["a", "b"]);
        let mut m = RelayMemory::load(&path, 0);
        assert_eq!(m.order(&link("home"), &relays, 0), relays);
        m.accepted(&link("home"), &relay("b"));
        let again = RelayMemory::load(&path, 0);
        assert_eq!(again.order(&link("home"), &relays, 0), names(&["b", "a"]));
    }

    #[test]
    fn without_a_file_nothing_is_written() {
        let mut m = RelayMemory::default();
        m.accepted(&link("home"), &relay("a"));
        m.refused(&link("home"), &relay("b"), 10, "535");
        assert_eq!(
            m.order(&link("home"), &names(&["a", "b"]), 0),
            names(&["a"])
        );
    }

    #[test]
    fn a_refusal_demotes_the_remembered_relay() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b"]);
        m.accepted(&link("home"), &relay("b"));
        m.refused(&link("home"), &relay("b"), 100, "535");
        assert_eq!(m.order(&link("home"), &relays, 0), names(&["a"]));
    }

    fn isp_a() -> LinkFacts {
        LinkFacts {
            id: "ISP-A".into(),
            uuid: "0a1b".into(),
            conn_type: "802-3-ethernet".into(),
            interface: "lr-a".into(),
            domains: vec!["isp-a.example".into()],
            ..LinkFacts::default()
        }
    }

    #[test]
    fn the_history_keeps_each_relays_last_answer_with_the_links_facts() {
        let mut m = RelayMemory::default();
        let unmatched = LinkKey::Unmatched("ISP-A".into());
        m.link_facts(&unmatched, &isp_a());
        m.accepted(&unmatched, &relay("a"));
        m.refused(
            &unmatched,
            &relay("b"),
            100,
            "554 5.7.1 Relay access denied",
        );
        m.tested(&link("isp-b"), &relay("b"), true, "");
        m.tested(&LinkKey::NoLink, &relay("a"), true, "");
        assert_eq!(m.history().len(), 1);

        let history = m.history();
        assert_eq!(
            history.len(),
            1,
            "no history without the link's facts: {history:?}"
        );
        let a = &history[0];
        assert_eq!(a.key, "0a1b", "filed by the connection's uuid");
        assert_eq!(a.facts["id"], "ISP-A");
        assert_eq!(a.facts["uuid"], "0a1b");
        assert_eq!(a.facts["domains"], "isp-a.example");
        assert!(!a.facts.contains_key("ssid"), "empty facts are left out");
        assert!(a.answers[&relay("a")].accepted);
        assert!(!a.answers[&relay("b")].accepted);
        assert_eq!(
            a.answers[&relay("b")].reply,
            "554 5.7.1 Relay access denied"
        );

        // Under a link override the rule's name stands for the link that is really up.
        let isp_b = LinkFacts {
            id: "ISP-B".into(),
            ..LinkFacts::default()
        };
        m.link_facts(&link("isp-a"), &isp_b);
        m.tested(
            &link("isp-a"),
            &relay("a"),
            false,
            "554 5.7.1 Relay access denied",
        );
        let history = m.history();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].key, "ISP-B", "no uuid: filed by the id");
        assert!(!history[1].answers[&relay("a")].accepted);

        // A later acceptance replaces the refusal.
        m.accepted(&unmatched, &relay("b"));
        assert!(m.history()[0].answers[&relay("b")].accepted);
    }

    #[test]
    fn a_tested_acceptance_ends_a_refusal_and_a_tested_refusal_steers_nothing() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b"]);
        m.refused(
            &link("home"),
            &relay("a"),
            100,
            "554 5.7.1 Relay access denied",
        );
        m.tested(&link("home"), &relay("a"), true, "");
        assert_eq!(m.order(&link("home"), &relays, 50), relays);
        m.tested(
            &link("home"),
            &relay("b"),
            false,
            "554 5.7.1 Relay access denied",
        );
        assert_eq!(m.order(&link("home"), &relays, 50), relays);
    }

    #[test]
    fn the_history_survives_a_restart_and_a_file_without_one_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        std::fs::write(
            &path,
            r#"{"version":1,"accepted":{"home":"a"},"refused":[]}"#,
        )
        .unwrap();
        let mut m = RelayMemory::load(&path, 0);
        assert_eq!(
            m.order(&link("home"), &names(&["b", "a"]), 0),
            names(&["a", "b"])
        );
        assert!(m.history().is_empty());
        m.link_facts(&link("home"), &isp_a());
        m.tested(
            &link("home"),
            &relay("b"),
            false,
            "530 5.7.0 Authentication required",
        );
        let again = RelayMemory::load(&path, 0);
        assert_eq!(again.history(), m.history());
        assert_eq!(again.history()[0].facts["interface"], "lr-a");
    }

    #[test]
    fn the_history_forgets_the_link_answered_on_longest_ago() {
        let mut m = RelayMemory::default();
        for i in 0..=MAX_SEEN_LINKS as u64 {
            let facts = LinkFacts {
                id: format!("l{i}"),
                ..LinkFacts::default()
            };
            m.link_facts(&link("wifi"), &facts);
            m.note_answer(&link("wifi"), &relay("a"), true, "", 1000 + i);
        }
        let history = m.history();
        assert_eq!(history.len(), MAX_SEEN_LINKS);
        assert!(!history.iter().any(|l| l.key == "l0"), "the oldest is gone");
    }

    #[test]
    fn a_repeated_answer_is_written_down_again_only_after_an_hour() {
        let mut m = RelayMemory::default();
        m.link_facts(&link("home"), &isp_a());
        assert!(m.note_answer(&link("home"), &relay("a"), true, "", 1000));
        assert!(!m.note_answer(&link("home"), &relay("a"), true, "", 1000 + 60));
        assert!(m.note_answer(
            &link("home"),
            &relay("a"),
            true,
            "",
            1000 + ANSWER_TIME_GRAIN
        ));
        assert!(m.note_answer(
            &link("home"),
            &relay("a"),
            false,
            "554",
            1000 + ANSWER_TIME_GRAIN
        ));
    }

    #[test]
    fn a_relay_whose_settings_changed_is_forgotten_everywhere_and_the_others_are_kept() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b"]);
        m.link_facts(&link("home"), &isp_a());
        m.refused(&link("home"), &relay("a"), 100, "554 5.7.1");
        m.refused(&link("office"), &relay("a"), 100, "554 5.7.1");
        m.accepted(&link("cafe"), &relay("a"));
        m.refused(&link("office"), &relay("b"), 100, "554 5.7.1");
        m.forget_relay(&relay("a"));
        assert_eq!(m.order(&link("home"), &relays, 0), relays);
        assert_eq!(m.order(&link("office"), &relays, 0), names(&["a"]));
        assert!(m.good.is_empty(), "{:?}", m.good);
        assert!(m.history().is_empty(), "{:?}", m.history());
    }

    #[test]
    fn a_changed_refusal_memory_moves_the_end_of_each_refusal() {
        let mut m = RelayMemory::default();
        // Refused at 1000 with a memory of 3600 s.
        m.refused(&link("home"), &relay("a"), 4600, "554");
        m.refusal_memory_changed(Duration::from_secs(3600), Duration::from_secs(60));
        assert_eq!(
            m.refusal(&link("home"), &relay("a"), 0).unwrap().until,
            1060
        );
        m.refusal_memory_changed(Duration::from_secs(60), Duration::from_secs(7200));
        assert_eq!(
            m.refusal(&link("home"), &relay("a"), 0).unwrap().until,
            8200
        );
    }

    #[test]
    fn a_relay_asked_for_once_more_is_kept_in_the_order_despite_its_refusal() {
        let mut m = RelayMemory::default();
        let relays = names(&["a", "b", "c"]);
        m.refused(&link("home"), &relay("a"), 100, "554");
        m.refused(&link("home"), &relay("b"), 100, "554");
        let a = relay("a");
        assert_eq!(
            m.order_retrying(&link("home"), &relays, 50, |r| *r == a),
            names(&["a", "c"])
        );
        assert_eq!(m.order(&link("home"), &relays, 50), names(&["c"]));
    }
}
