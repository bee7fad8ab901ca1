//! The agent's config file for a test, built in code: [`Config`] with its [`Link`]s, [`Relay`]s
//! and [`User`]s writes the TOML a user would write, and the agent reads it from the file as
//! always.
//!
//! ```
//! use linkrelay_tests::config::{Config, Link, Relay, User};
//! let toml = Config::new()
//!     .agent("debounce", "50ms")
//!     .link(Link::new("office").id("Office"))
//!     .relay(Relay::local("r", 2525).timeout("5s"))
//!     .user(User::new("me").from(["*"]).route("office", ["r"]))
//!     .to_string();
//! assert!(toml.contains("[[relay]]\nname = \"r\"\nhost = \"127.0.0.1\"\nport = 2525\n"));
//! ```
//!
//! Tests of the config parser itself (errors at a line and column) keep their TOML as text.

use std::fmt;
use std::path::Path;

/// A TOML value, as it is written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value(String);

impl Value {
    /// An inline table of strings: `{ service = "smtp", username = "bob" }`.
    pub fn table(pairs: &[(&str, &str)]) -> Value {
        let mut entries = Entries::default();
        for (k, v) in pairs {
            entries.set(k, *v);
        }
        Value(entries.inline())
    }

    /// An inline table of any values: `{ token_url = "...", scopes = ["a", "b"] }`.
    pub fn inline(pairs: Vec<(&str, Value)>) -> Value {
        let mut entries = Entries::default();
        for (k, v) in pairs {
            entries.set(k, v);
        }
        Value(entries.inline())
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value(quote(s))
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value(quote(&s))
    }
}

impl From<&Path> for Value {
    fn from(p: &Path) -> Value {
        Value(quote(&p.display().to_string()))
    }
}

impl From<u16> for Value {
    fn from(n: u16) -> Value {
        Value(n.to_string())
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value(n.to_string())
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value(b.to_string())
    }
}

impl<const N: usize> From<[&str; N]> for Value {
    fn from(items: [&str; N]) -> Value {
        Value::from(&items[..])
    }
}

impl From<&[&str]> for Value {
    fn from(items: &[&str]) -> Value {
        let items: Vec<String> = items.iter().map(|s| quote(s)).collect();
        Value(format!("[{}]", items.join(", ")))
    }
}

impl From<&[String]> for Value {
    fn from(items: &[String]) -> Value {
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        Value::from(&items[..])
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A key, bare where TOML allows it (`isp-a`), else quoted (`"*"`).
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { k.to_owned() } else { quote(k) }
}

/// One table's keys and values, in the order they were first set.
#[derive(Debug, Clone, Default)]
struct Entries(Vec<(String, Value)>);

impl Entries {
    /// Sets `k`, replacing an earlier value.
    fn set(&mut self, k: &str, v: impl Into<Value>) {
        let v = v.into();
        match self.0.iter_mut().find(|(old, _)| old == k) {
            Some(entry) => entry.1 = v,
            None => self.0.push((k.to_owned(), v)),
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `{ k = v, ... }`.
    fn inline(&self) -> String {
        let pairs: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{} = {}", key(k), v.0))
            .collect();
        format!("{{ {} }}", pairs.join(", "))
    }

    /// A table's header and one `k = v` line per entry, then a blank line.
    fn write(&self, f: &mut fmt::Formatter<'_>, header: &str) -> fmt::Result {
        writeln!(f, "{header}")?;
        for (k, v) in &self.0 {
            writeln!(f, "{} = {}", key(k), v.0)?;
        }
        writeln!(f)
    }
}

/// A whole config file: `[agent]`, `[retry]`, `[outbox]`, then the links, relays and users in the order
/// they were added. Its [`Display`](fmt::Display) is the TOML text.
#[derive(Debug, Clone, Default)]
pub struct Config {
    agent: Entries,
    retry: Entries,
    outbox: Entries,
    submission: Entries,
    links: Vec<Link>,
    relays: Vec<Relay>,
    users: Vec<User>,
}

impl Config {
    /// An empty config.
    pub fn new() -> Config {
        Config::default()
    }

    /// Sets `key` in `[agent]` (`source`, `debounce`).
    pub fn agent(mut self, key: &str, value: impl Into<Value>) -> Config {
        self.agent.set(key, value);
        self
    }

    /// Sets `key` in `[retry]` (`min`, `max`, `lifetime`, `refusal_memory`).
    pub fn retry(mut self, key: &str, value: impl Into<Value>) -> Config {
        self.retry.set(key, value);
        self
    }

    /// Sets `key` in `[outbox]` (`max_message_size`, `keep_sent`, `keep_sent_size`).
    pub fn outbox(mut self, key: &str, value: impl Into<Value>) -> Config {
        self.outbox.set(key, value);
        self
    }

    /// Sets `key` in `[submission]` (`listen`, `socket`, `max_sessions`, `timeout`...).
    pub fn submission(mut self, key: &str, value: impl Into<Value>) -> Config {
        self.submission.set(key, value);
        self
    }

    /// Adds a `[[link]]`.
    pub fn link(mut self, link: Link) -> Config {
        self.links.push(link);
        self
    }

    /// Adds a `[[relay]]`.
    pub fn relay(mut self, relay: Relay) -> Config {
        self.relays.push(relay);
        self
    }

    /// Adds a `[[user]]`.
    pub fn user(mut self, user: User) -> Config {
        self.users.push(user);
        self
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (header, table) in [
            ("[agent]", &self.agent),
            ("[retry]", &self.retry),
            ("[outbox]", &self.outbox),
            ("[submission]", &self.submission),
        ] {
            if !table.is_empty() {
                table.write(f, header)?;
            }
        }
        for link in &self.links {
            let mut entries = link.entries.clone();
            entries.set("match", Value(link.matching.inline()));
            entries.write(f, "[[link]]")?;
        }
        for relay in &self.relays {
            relay.0.write(f, "[[relay]]")?;
        }
        for user in &self.users {
            let mut entries = user.entries.clone();
            if !user.routes.is_empty() {
                entries.set("routes", Value(user.routes.inline()));
            }
            entries.write(f, "[[user]]")?;
        }
        Ok(())
    }
}

/// A `[[link]]`: a name and what it matches.
#[derive(Debug, Clone)]
pub struct Link {
    entries: Entries,
    matching: Entries,
}

impl Link {
    /// A link called `name` that matches nothing yet.
    pub fn new(name: &str) -> Link {
        let mut entries = Entries::default();
        entries.set("name", name);
        Link {
            entries,
            matching: Entries::default(),
        }
    }

    /// Matches NetworkManager's connection id `id`.
    pub fn id(self, id: &str) -> Link {
        self.matching("id", id)
    }

    /// Matches on `key` (`interface`, `type`, `gateway`, `address`, `ssid`...).
    pub fn matching(mut self, key: &str, value: &str) -> Link {
        self.matching.set(key, value);
        self
    }

    /// Sets another key of the link (`metered`).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Link {
        self.entries.set(key, value);
        self
    }
}

/// A `[[relay]]`.
#[derive(Debug, Clone)]
pub struct Relay(Entries);

impl Relay {
    /// A relay called `name`, with nothing else set.
    pub fn new(name: &str) -> Relay {
        let mut entries = Entries::default();
        entries.set("name", name);
        Relay(entries)
    }

    /// A relay called `name` on `127.0.0.1:port`, without TLS (the harness's own relays).
    pub fn local(name: &str, port: u16) -> Relay {
        Relay::new(name).host("127.0.0.1").port(port).tls("none")
    }

    /// `host`.
    pub fn host(self, host: &str) -> Relay {
        self.set("host", host)
    }

    /// `port`.
    pub fn port(self, port: u16) -> Relay {
        self.set("port", port)
    }

    /// `tls`: `"none"`, `"starttls"` or `"tls"`.
    pub fn tls(self, tls: &str) -> Relay {
        self.set("tls", tls)
    }

    /// `timeout`, a duration such as `"5s"`.
    pub fn timeout(self, timeout: &str) -> Relay {
        self.set("timeout", timeout)
    }

    /// `ca_file`.
    pub fn ca_file(self, path: &Path) -> Relay {
        self.set("ca_file", path)
    }

    /// Logs in as `username` with the password `command` prints.
    pub fn password_command(self, username: &str, command: &str) -> Relay {
        self.set("username", username)
            .set("password_command", command)
    }

    /// Logs in as `username` with the password in the keyring item that has `attributes`.
    pub fn password_secret(self, username: &str, attributes: &[(&str, &str)]) -> Relay {
        self.set("username", username)
            .set("password_secret", Value::table(attributes))
    }

    /// Logs in as `username` with `mechanism` ("xoauth2", "oauthbearer") and OAuth2 tokens
    /// from the provider that `oauth2` (the `[relay.oauth2]` keys, as [`Value::inline`]) names.
    pub fn oauth2(self, username: &str, mechanism: &str, oauth2: Value) -> Relay {
        self.set("username", username)
            .set("auth", mechanism)
            .set("oauth2", oauth2)
    }

    /// Sets any other key (`helo`, `dangerous_plaintext_auth`).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Relay {
        self.0.set(key, value);
        self
    }
}

/// A `[[user]]`: a name, the senders that are theirs and their routes.
#[derive(Debug, Clone)]
pub struct User {
    entries: Entries,
    routes: Entries,
}

impl User {
    /// A user called `name`, with no senders or routes yet.
    pub fn new(name: &str) -> User {
        let mut entries = Entries::default();
        entries.set("name", name);
        User {
            entries,
            routes: Entries::default(),
        }
    }

    /// `from`: the sender patterns that are this user's.
    pub fn from(self, patterns: impl Into<Value>) -> User {
        self.set("from", patterns)
    }

    /// On `link` (a link name or `"*"`), mail goes through `relays`, in order.
    pub fn route(mut self, link: &str, relays: impl Into<Value>) -> User {
        self.routes.set(link, relays);
        self
    }

    /// Sets any other key (`default`).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> User {
        self.entries.set(key, value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_is_written_as_the_toml_a_user_would_write() {
        let toml = Config::new()
            .agent("debounce", "50ms")
            .retry("min", "1h")
            .link(Link::new("isp-b").id("ISP-B").set("metered", "hold"))
            .relay(
                Relay::new("r")
                    .host("smtp.example")
                    .port(587)
                    .tls("starttls")
                    .password_secret("bob", &[("service", "smtp"), ("username", "bob")]),
            )
            .user(User::new("me").from(["*"]).route("*", ["r"]))
            .to_string();
        assert_eq!(
            toml,
            "[agent]\ndebounce = \"50ms\"\n\n[retry]\nmin = \"1h\"\n\n\
             [[link]]\nname = \"isp-b\"\nmetered = \"hold\"\nmatch = { id = \"ISP-B\" }\n\n\
             [[relay]]\nname = \"r\"\nhost = \"smtp.example\"\nport = 587\ntls = \"starttls\"\n\
             username = \"bob\"\npassword_secret = { service = \"smtp\", username = \"bob\" }\n\n\
             [[user]]\nname = \"me\"\nfrom = [\"*\"]\nroutes = { \"*\" = [\"r\"] }\n\n"
        );
    }

    #[test]
    fn strings_with_quotes_and_backslashes_are_escaped() {
        assert_eq!(Value::from("a \"b\" \\ c\n").0, r#""a \"b\" \\ c\u000A""#);
    }
}
