//! Changing the config file as a person would: add a `[[link]]`, a `[[relay]]`, a user's
//! sender or route, keeping every comment, blank line and the order of what is there
//! (`toml_edit`), then showing the change as a diff and writing it only when asked.
//!
//! The edits are pure functions on the document; [`write_checked`] is the one that touches the
//! disk, and only after the new text passed the config's own check.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, anyhow, bail};
use linkrelay_config::{Config, ConfigError};
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value, value};

/// The config text at `path`, or "" when there is no file yet.
pub fn read_or_empty(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Parses `text` for editing.
pub fn document(text: &str, path: &Path) -> anyhow::Result<DocumentMut> {
    text.parse::<DocumentMut>().map_err(|e| {
        anyhow!(
            "{} is not valid TOML ({e}); `linkrelay config check` says more",
            path.display()
        )
    })
}

/// The array of tables `key` (`[[link]]`, `[[relay]]`, `[[user]]`), made when absent.
fn tables<'d>(doc: &'d mut DocumentMut, key: &str) -> anyhow::Result<&'d mut ArrayOfTables> {
    let item = doc
        .entry(key)
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    item.as_array_of_tables_mut()
        .ok_or_else(|| anyhow!("`{key}` is not a list of [[{key}]] tables"))
}

/// The names the `[[key]]` tables have.
pub fn names(doc: &DocumentMut, key: &str) -> Vec<String> {
    doc.get(key)
        .and_then(|i| i.as_array_of_tables())
        .map(|a| {
            a.iter()
                .filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// A table of string keys and values, in the order given.
fn string_table(pairs: &[(&str, &str)]) -> InlineTable {
    let mut t = InlineTable::new();
    for (k, v) in pairs {
        t.insert(*k, Value::from(*v));
    }
    t
}

fn string_array<S: AsRef<str>>(items: &[S]) -> Array {
    items.iter().map(|s| s.as_ref()).collect()
}

/// Appends a `[[link]]` rule `name` matching `pairs` (e.g. `[("id", "ISP-A")]`), with a
/// comment saying where it came from.
pub fn add_link(
    doc: &mut DocumentMut,
    name: &str,
    pairs: &[(&str, &str)],
    comment: &str,
) -> anyhow::Result<()> {
    let mut t = Table::new();
    t.decor_mut().set_prefix(format!("\n# {comment}\n"));
    t.insert("name", value(name));
    t.insert("match", value(string_table(pairs)));
    tables(doc, "link")?.push(t);
    Ok(())
}

/// A relay as setup writes it: where it is, and how to log in without a password in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySpec {
    /// Its name.
    pub name: String,
    /// Host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// `starttls` or `tls`.
    pub tls: String,
    /// How to log in, if at all.
    pub login: Option<Login>,
}

/// A relay's login: the user name and where its password is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The SMTP user name.
    pub username: String,
    /// Where the password is.
    pub secret: SecretSpec,
}

/// Where a relay's password is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSpec {
    /// In the keyring, under these attributes.
    Keyring(Vec<(String, String)>),
    /// Printed by this command.
    Command(String),
}

impl RelaySpec {
    /// The relay as a `[[relay]]` table.
    pub fn table(&self) -> Table {
        let mut t = Table::new();
        t.insert("name", value(&self.name));
        t.insert("host", value(&self.host));
        t.insert("port", value(i64::from(self.port)));
        t.insert("tls", value(&self.tls));
        if let Some(login) = &self.login {
            t.insert("username", value(&login.username));
            match &login.secret {
                SecretSpec::Keyring(attrs) => {
                    let pairs: Vec<(&str, &str)> = attrs
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    t.insert("password_secret", value(string_table(&pairs)));
                }
                SecretSpec::Command(cmd) => {
                    t.insert("password_command", value(cmd));
                }
            }
        }
        t
    }

    /// The relay alone, as the TOML `ProbeRelay` takes (and as it would appear in the file).
    pub fn toml(&self) -> String {
        let mut doc = DocumentMut::new();
        let mut list = ArrayOfTables::new();
        list.push(self.table());
        doc.insert("relay", Item::ArrayOfTables(list));
        doc.to_string()
    }
}

/// Appends `relay` as a `[[relay]]` table with a comment saying where it came from.
pub fn add_relay(doc: &mut DocumentMut, relay: &RelaySpec, comment: &str) -> anyhow::Result<()> {
    let mut t = relay.table();
    t.decor_mut().set_prefix(format!("\n# {comment}\n"));
    tables(doc, "relay")?.push(t);
    Ok(())
}

/// The `[[user]]` table named `user`.
fn user_table<'d>(doc: &'d mut DocumentMut, user: &str) -> anyhow::Result<&'d mut Table> {
    tables(doc, "user")?
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(user))
        .ok_or_else(|| anyhow!("no [[user]] named {user:?}"))
}

/// Makes sure user `user` exists and sends as `address`: a new `[[user]]` when there is none
/// of that name, else `address` added to its `from` unless there.
pub fn ensure_user(doc: &mut DocumentMut, user: &str, address: &str) -> anyhow::Result<()> {
    if !names(doc, "user").iter().any(|n| n == user) {
        let mut t = Table::new();
        t.decor_mut().set_prefix("\n");
        t.insert("name", value(user));
        t.insert("from", value(string_array(&[address])));
        t.insert("routes", value(InlineTable::new()));
        tables(doc, "user")?.push(t);
        return Ok(());
    }
    let t = user_table(doc, user)?;
    let from = t
        .entry("from")
        .or_insert_with(|| value(Array::new()))
        .as_array_mut()
        .ok_or_else(|| anyhow!("`from` of user {user} is not a list"))?;
    if !from
        .iter()
        .any(|f| f.as_str().is_some_and(|f| f.eq_ignore_ascii_case(address)))
    {
        from.push(address);
    }
    Ok(())
}

/// Adds `relays` to user `user`'s route on `link`: a new entry when the user has none for
/// that link, else the relays it lacks appended after the ones it has. Returns whether
/// anything changed.
pub fn add_route(
    doc: &mut DocumentMut,
    user: &str,
    link: &str,
    relays: &[String],
) -> anyhow::Result<bool> {
    let t = user_table(doc, user)?;
    let routes = t
        .entry("routes")
        .or_insert_with(|| value(InlineTable::new()));
    let shape = || anyhow!("`routes` of user {user} is not a table");
    let entry: &mut Item = match routes {
        Item::Value(Value::InlineTable(t)) => {
            if !t.contains_key(link) {
                t.insert(link, Value::Array(Array::new()));
            }
            let Some(v) = t.get_mut(link) else {
                return Err(shape());
            };
            let changed = append_missing(
                v.as_array_mut().ok_or_else(|| route_shape(user, link))?,
                relays,
            );
            // Spaces inside `{ ... }` as toml_edit writes them, so that a new entry does not
            // inherit the old last entry's trailing space before its comma.
            if changed {
                t.fmt();
            }
            return Ok(changed);
        }
        Item::Table(t) => t.entry(link).or_insert_with(|| value(Array::new())),
        _ => return Err(shape()),
    };
    let list = entry
        .as_array_mut()
        .ok_or_else(|| route_shape(user, link))?;
    Ok(append_missing(list, relays))
}

fn route_shape(user: &str, link: &str) -> anyhow::Error {
    anyhow!("the route of user {user} on {link} is not a list")
}

fn append_missing(list: &mut Array, relays: &[String]) -> bool {
    let mut changed = false;
    for r in relays {
        if !list.iter().any(|v| v.as_str() == Some(r)) {
            list.push(r.as_str());
            changed = true;
        }
    }
    changed
}

/// A name allowed in the config (`[a-z0-9][a-z0-9._-]*`) made from `text`, not among `taken`:
/// lower case, other characters as `-`, a number added when taken.
pub fn fresh_name(text: &str, fallback: &str, taken: &[String]) -> String {
    let mut base: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    base = base
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .trim_end_matches('-')
        .chars()
        .take(48)
        .collect();
    if base.is_empty() {
        base = fallback.to_string();
    }
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// The unified diff from `old` to `new`, labelled with `path`; empty when they are equal.
pub fn diff(old: &str, new: &str, path: &Path) -> String {
    if old == new {
        return String::new();
    }
    let label = path.display().to_string();
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&label, &label)
        .to_string()
}

/// Checks `text` as a config, then writes it to `path` in place of the old file: through a
/// temporary file beside it (mode 0600) and a rename, so a crash leaves the old file or the
/// new one. Nothing is written when the check fails.
pub fn write_checked(path: &Path, text: &str) -> anyhow::Result<Config> {
    let config = match Config::parse(text, path) {
        Ok(c) => c,
        Err(ConfigError::Invalid(d)) => {
            bail!("the changed config would not be valid, so nothing was written:\n{d}")
        }
        Err(e) => bail!("the changed config would not be valid, so nothing was written: {e}"),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"# my relays
[[link]]
name = "isp-a"   # home
match = { id = "ISP-A" }

[[relay]]
name = "relay-a"
host = "smtp.isp-a.example"
tls = "starttls"

[[user]]
name = "me"
from = ["*"]
routes = { isp-a = ["relay-a"] }   # at home
"#;

    #[test]
    fn edits_keep_comments_and_order_and_add_what_is_missing() {
        let mut doc = document(START, Path::new("c.toml")).unwrap();
        add_link(&mut doc, "isp-b", &[("id", "ISP-B")], "seen by linkrelay").unwrap();
        add_route(&mut doc, "me", "isp-b", &["relay-a".into()]).unwrap();
        assert!(!add_route(&mut doc, "me", "isp-a", &["relay-a".into()]).unwrap());
        ensure_user(&mut doc, "me", "me@isp-a.example").unwrap();
        let text = doc.to_string();
        assert!(text.starts_with("# my relays\n[[link]]\nname = \"isp-a\"   # home\n"));
        assert!(
            text.contains("routes = { isp-a = [\"relay-a\"], isp-b = [\"relay-a\"] }   # at home"),
            "{text}"
        );
        assert!(
            text.contains("from = [\"*\", \"me@isp-a.example\"]"),
            "{text}"
        );
        assert!(
            text.contains(
                "# seen by linkrelay\n[[link]]\nname = \"isp-b\"\nmatch = { id = \"ISP-B\" }"
            ),
            "{text}"
        );
        let config = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(config.links.len(), 2);
    }

    #[test]
    fn a_fresh_config_gets_a_relay_a_link_and_a_user_and_no_password() {
        let mut doc = document("", Path::new("c.toml")).unwrap();
        let relay = RelaySpec {
            name: "isp-b.example".into(),
            host: "smtp.isp-b.example".into(),
            port: 587,
            tls: "starttls".into(),
            login: Some(Login {
                username: "bob".into(),
                secret: SecretSpec::Keyring(vec![
                    ("service".into(), "smtp".into()),
                    ("username".into(), "bob".into()),
                ]),
            }),
        };
        add_relay(&mut doc, &relay, "from autoconfig").unwrap();
        add_link(&mut doc, "isp-b", &[("id", "ISP-B")], "seen").unwrap();
        ensure_user(&mut doc, "bob", "bob@isp-b.example").unwrap();
        add_route(&mut doc, "bob", "isp-b", &["isp-b.example".into()]).unwrap();
        let text = doc.to_string();
        let config = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert_eq!(config.relays[0].port, 587);
        assert!(
            text.contains(r#"password_secret = { service = "smtp", username = "bob" }"#),
            "{text}"
        );
        assert_eq!(
            config.users[0].relays_for("isp-b").map(|r| r.len()),
            Some(1)
        );
        assert!(
            relay
                .toml()
                .starts_with("[[relay]]\nname = \"isp-b.example\"\n")
        );
    }

    #[test]
    fn names_are_made_valid_and_unique() {
        let taken = vec!["isp-a".to_string()];
        assert_eq!(fresh_name("ISP-A", "link", &taken), "isp-a-2");
        assert_eq!(
            fresh_name("Hotel Wi-Fi (5 GHz)", "link", &[]),
            "hotel-wi-fi--5-ghz"
        );
        assert_eq!(fresh_name("--", "link", &[]), "link");
        assert_eq!(fresh_name("Ünïcode", "link", &[]), "n-code");
    }

    #[test]
    fn a_change_that_breaks_the_config_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, START).unwrap();
        let mut doc = document(START, &path).unwrap();
        add_route(&mut doc, "me", "isp-a", &["no-such-relay".into()]).unwrap();
        let err = write_checked(&path, &doc.to_string()).unwrap_err();
        assert!(err.to_string().contains("no-such-relay"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), START);
        assert!(
            diff(START, &doc.to_string(), &path)
                .contains("+routes = { isp-a = [\"relay-a\", \"no-such-relay\"] }")
        );
    }
}
