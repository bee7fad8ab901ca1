//! From TOML text to a valid [`Config`], collecting every problem on the way.
//!
//! The text is parsed into toml's spanned document tree ([`DeTable`]) and walked by hand rather
//! than deserialized with serde: serde stops at the first unknown key or wrong type, and we
//! want every problem of a file reported at once, each at its own position.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use crate::diag::{Diagnostic, Diagnostics, Note, line_col};
use crate::{
    AgentSettings, Config, IpNet, LinkMatch, LinkName, LinkRule, MeteredPolicy, NETLINK_FIELDS,
    NotifySettings, OutboxSettings, Relay, RelayName, RetrySettings, SetupSettings, SourceKind,
    SubmissionSettings, TlsMode, User, glob,
};

mod relay_auth;
mod relay_oauth2;
mod submission;

type Span = Range<usize>;

/// A key a table may have, with an example line for help messages.
struct Key {
    name: &'static str,
    example: &'static str,
}

/// A kind of table: how it is written, and its keys.
struct Schema {
    /// How the table is written in the file, e.g. `[[relay]]`.
    title: &'static str,
    keys: &'static [Key],
    /// Keys refused with a message and a help of their own.
    refused: &'static [(&'static str, &'static str, &'static str)],
}

const fn key(name: &'static str, example: &'static str) -> Key {
    Key { name, example }
}

const ROOT: Schema = Schema {
    title: "the top level",
    keys: &[
        key(
            "agent",
            "[agent] on a line of its own, with its keys below it",
        ),
        key(
            "retry",
            "[retry] on a line of its own, with its keys below it",
        ),
        key(
            "notify",
            "[notify] on a line of its own, with its keys below it",
        ),
        key(
            "outbox",
            "[outbox] on a line of its own, with its keys below it",
        ),
        key(
            "submission",
            "[submission] on a line of its own, with its keys below it",
        ),
        key(
            "setup",
            "[setup] on a line of its own, with its keys below it",
        ),
        key(
            "link",
            "[[link]] on a line of its own, with its keys below it",
        ),
        key(
            "relay",
            "[[relay]] on a line of its own, with its keys below it",
        ),
        key(
            "user",
            "[[user]] on a line of its own, with its keys below it",
        ),
    ],
    refused: &[],
};

const AGENT: Schema = Schema {
    title: "[agent]",
    keys: &[
        key(
            "source",
            r#"source = "auto" (or "networkmanager", "netlink")"#,
        ),
        key("debounce", r#"debounce = "300ms""#),
    ],
    refused: &[],
};

const RETRY: Schema = Schema {
    title: "[retry]",
    keys: &[
        key("min", r#"min = "5m""#),
        key("max", r#"max = "1h""#),
        key("lifetime", r#"lifetime = "5d""#),
        key("refusal_memory", r#"refusal_memory = "30m""#),
    ],
    refused: &[],
};

const NOTIFY: Schema = Schema {
    title: "[notify]",
    keys: &[
        key("enabled", "enabled = true"),
        key("after", r#"after = "1h""#),
    ],
    refused: &[],
};

const OUTBOX: Schema = Schema {
    title: "[outbox]",
    keys: &[
        key("max_message_size", "max_message_size = 52428800"),
        key("keep_sent", r#"keep_sent = "3d""#),
        key("keep_sent_size", "keep_sent_size = 104857600"),
    ],
    refused: &[],
};

const SETUP: Schema = Schema {
    title: "[setup]",
    keys: &[
        key(
            "ispdb",
            r#"ispdb = "https://autoconfig.thunderbird.net/v1.1/""#,
        ),
        key("nameserver", r#"nameserver = "192.0.2.53""#),
    ],
    refused: &[],
};

const LINK: Schema = Schema {
    title: "[[link]]",
    keys: &[
        key("name", r#"name = "isp-a""#),
        key("match", r#"match = { id = "ISP-A" }"#),
        key("metered", r#"metered = "send" (or "hold", "small")"#),
        key("metered_max_size", "metered_max_size = 1048576"),
    ],
    refused: &[],
};

const MATCH: Schema = Schema {
    title: "match",
    keys: &[
        key("id", r#"id = "ISP-A""#),
        key("uuid", r#"uuid = "5f1c3a52-8a5e-4a6e-9d3c-1f0b2c3d4e5f""#),
        key("type", r#"type = "802-3-ethernet""#),
        key("interface", r#"interface = "eth*""#),
        key("ssid", r#"ssid = "Home*""#),
        key("gateway", r#"gateway = "192.0.2.1""#),
        key("domain", r#"domain = "isp-a.example""#),
        key("address", r#"address = "192.0.2.0/24""#),
    ],
    refused: &[],
};

const RELAY: Schema = Schema {
    title: "[[relay]]",
    keys: &[
        key("name", r#"name = "relay-a""#),
        key("host", r#"host = "smtp.example.net""#),
        key("port", "port = 587"),
        key("tls", r#"tls = "starttls" (or "tls", "none")"#),
        key("helo", r#"helo = "laptop""#),
        key("username", r#"username = "alice""#),
        key("auth", r#"auth = "password" (or "xoauth2", "oauthbearer")"#),
        key(
            "password_command",
            r#"password_command = "pass show smtp/relay-a""#,
        ),
        key(
            "password_secret",
            r#"password_secret = { service = "smtp", username = "alice" }"#,
        ),
        key(
            "oauth2",
            r#"[relay.oauth2] on a line of its own after the relay's keys, with provider = "google" and client_id = "...""#,
        ),
        key("ca_file", r#"ca_file = "/etc/ssl/my-ca.pem""#),
        key("timeout", r#"timeout = "60s""#),
        key(
            "dangerous_plaintext_auth",
            "dangerous_plaintext_auth = true",
        ),
    ],
    refused: &[(
        "password",
        "passwords are not written in the config file",
        r#"remove it: keep the password in the desktop keyring and write password_secret = { service = "smtp", username = "alice" } (stored with `secret-tool store --label=smtp service smtp username alice`), or write password_command = "pass show smtp/relay-a" (a command whose first line of output is the password)"#,
    )],
};

const OAUTH2: Schema = Schema {
    title: "[relay.oauth2]",
    keys: &[
        key("provider", r#"provider = "google" (or "microsoft")"#),
        key("tenant", r#"tenant = "contoso.onmicrosoft.com""#),
        key(
            "authorization_url",
            r#"authorization_url = "https://login.example.net/authorize""#,
        ),
        key(
            "token_url",
            r#"token_url = "https://login.example.net/token""#,
        ),
        key(
            "device_url",
            r#"device_url = "https://login.example.net/device""#,
        ),
        key(
            "revocation_url",
            r#"revocation_url = "https://login.example.net/revoke""#,
        ),
        key("scopes", r#"scopes = ["https://mail.google.com/"]"#),
        key(
            "client_id",
            r#"client_id = "1234-abc.apps.googleusercontent.com""#,
        ),
        key(
            "client_secret_command",
            r#"client_secret_command = "pass show oauth/client-secret""#,
        ),
        key("login", r#"login = "browser" (or "device")"#),
        key("token_file", r#"token_file = "relay-a.token""#),
    ],
    refused: &[
        (
            "client_secret",
            "client secrets are not written in the config file",
            r#"write client_secret_command = "pass show oauth/client-secret" (a command whose first line of output is the secret)"#,
        ),
        (
            "refresh_token",
            "tokens are not written in the config file",
            "remove it and run `linkrelay login RELAY`: the refresh token goes to the desktop keyring (or to token_file)",
        ),
        (
            "access_token",
            "tokens are not written in the config file",
            "remove it and run `linkrelay login RELAY`: the agent gets access tokens by itself",
        ),
    ],
};

const USER: Schema = Schema {
    title: "[[user]]",
    keys: &[
        key("name", r#"name = "alice""#),
        key("from", r#"from = ["alice@example.net", "*@alice.example"]"#),
        key("default", "default = true"),
        key(
            "routes",
            r#"routes = { isp-a = ["relay-a"], "*" = ["relay-b"] }"#,
        ),
    ],
    refused: &[],
};

const ROUTES: Schema = Schema {
    title: "routes",
    keys: &[],
    refused: &[],
};

const DURATION_HELP: &str = r#"write a number and a unit, e.g. "300ms", "30s", "5m", "1h" or "5d""#;

const TLS_HELP: &str = r#"write tls = "starttls" (port 587, STARTTLS required), "tls" (port 465, TLS from the start) or "none" (port 25, no encryption)"#;

/// Everything found so far.
struct Ctx<'a> {
    text: &'a str,
    origin: &'a Path,
    diags: Vec<Diagnostic>,
    notes: Vec<Note>,
}

impl Ctx<'_> {
    fn error(&mut self, at: usize, message: impl Into<String>, help: impl Into<String>) {
        let (line, col) = line_col(self.text, at);
        self.diags.push(Diagnostic {
            path: self.origin.to_path_buf(),
            line,
            col,
            message: message.into(),
            help: Some(help.into()),
        });
    }

    fn note(&mut self, at: usize, message: impl Into<String>) {
        let (line, col) = line_col(self.text, at);
        self.notes.push(Note {
            path: self.origin.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    fn line(&self, span: &Span) -> usize {
        line_col(self.text, span.start).0
    }

    /// The byte offset in the file of byte `offset` of string value `value` written at `span`;
    /// the start of the value if it was written with escapes (then offsets differ).
    fn offset_in_string(&self, span: &Span, value: &str, offset: usize) -> usize {
        let raw = self.text.get(span.clone()).unwrap_or_default();
        let inner = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')));
        match inner {
            Some(inner) if inner == value => span.start + 1 + offset,
            _ => span.start,
        }
    }
}

/// A value in a table, with where its key and it are.
struct Entry<'t, 'i> {
    key: &'t str,
    key_span: Span,
    span: Span,
    value: &'t DeValue<'i>,
}

/// A table whose keys were checked against its schema.
struct Table<'t, 'i> {
    schema: &'static Schema,
    /// Where to point when a key is missing: the table's header (or inline table).
    span: Span,
    entries: Vec<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)>,
}

impl<'t, 'i> Table<'t, 'i> {
    /// Checks the keys of `table` against `schema`, reporting unknown and refused ones.
    fn new(
        ctx: &mut Ctx<'_>,
        table: &'t DeTable<'i>,
        span: Span,
        schema: &'static Schema,
    ) -> Table<'t, 'i> {
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        if !schema.keys.is_empty() {
            for (k, _) in &entries {
                let name: &str = k.get_ref();
                if schema.keys.iter().any(|key| key.name == name) {
                    continue;
                }
                if let Some((_, message, help)) =
                    schema.refused.iter().find(|(refused, ..)| *refused == name)
                {
                    ctx.error(k.span().start, *message, *help);
                    continue;
                }
                let valid = list(schema.keys.iter().map(|k| k.name));
                let help = match suggest(name, schema.keys.iter().map(|k| k.name)) {
                    Some(s) => format!("did you mean `{s}`? valid keys are {valid}"),
                    None => format!("valid keys are {valid}"),
                };
                ctx.error(
                    k.span().start,
                    format!("unknown key `{name}` in {}", schema.title),
                    help,
                );
            }
        }
        Table {
            schema,
            span,
            entries,
        }
    }

    fn get(&self, name: &str) -> Option<Entry<'t, 'i>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == name)
            .map(|(k, v)| Entry {
                key: k.get_ref().as_ref(),
                key_span: k.span(),
                span: v.span(),
                value: v.get_ref(),
            })
    }

    fn example(&self, name: &str) -> String {
        self.schema
            .keys
            .iter()
            .find(|k| k.name == name)
            .map_or_else(|| format!("{name} = ..."), |k| k.example.to_owned())
    }

    fn wrong_type(&self, ctx: &mut Ctx<'_>, e: &Entry<'_, '_>, expected: &str) {
        let found = e.value.type_str();
        ctx.error(
            e.span.start,
            format!(
                "`{}` in {} must be {expected}, not {} {found}",
                e.key,
                self.schema.title,
                article(found)
            ),
            format!("write {}", self.example(e.key)),
        );
    }

    fn string(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<Str<'t>> {
        let e = self.get(name)?;
        match e.value {
            DeValue::String(s) => Some(Str {
                value: s.as_ref(),
                span: e.span,
            }),
            _ => {
                self.wrong_type(ctx, &e, "a string");
                None
            }
        }
    }

    /// A string that must not be empty (nor only white space).
    fn text(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<Str<'t>> {
        let s = self.string(ctx, name)?;
        if s.value.trim().is_empty() {
            ctx.error(
                s.span.start,
                format!("`{name}` in {} is empty", self.schema.title),
                format!("write {}, or remove the key", self.example(name)),
            );
            return None;
        }
        Some(s)
    }

    fn boolean(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<(bool, Span)> {
        let e = self.get(name)?;
        match e.value {
            DeValue::Boolean(b) => Some((*b, e.span)),
            _ => {
                self.wrong_type(ctx, &e, "true or false");
                None
            }
        }
    }

    fn integer(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<(i128, Span)> {
        let e = self.get(name)?;
        match e.value {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some((n, e.span)),
                Err(_) => {
                    ctx.error(
                        e.span.start,
                        format!("`{name}` is too large a number"),
                        format!("write {}", self.example(name)),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(ctx, &e, "an integer");
                None
            }
        }
    }

    fn duration(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<(Duration, Span)> {
        let e = self.get(name)?;
        let DeValue::String(s) = e.value else {
            let found = e.value.type_str();
            ctx.error(
                e.span.start,
                format!(
                    "`{name}` in {} must be a duration in a string, not {} {found}",
                    self.schema.title,
                    article(found)
                ),
                format!("write {}", self.example(name)),
            );
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) => Some((d, e.span)),
            Err(err) => {
                ctx.error(
                    e.span.start,
                    format!("invalid duration \"{s}\" for `{name}`: {err}"),
                    DURATION_HELP,
                );
                None
            }
        }
    }

    fn table(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<(&'t DeTable<'i>, Span)> {
        let e = self.get(name)?;
        match e.value {
            DeValue::Table(t) => Some((t, e.span)),
            _ => {
                self.wrong_type(ctx, &e, "a table");
                None
            }
        }
    }

    /// `[[name]]` tables (or `name = [{...}, ...]`).
    fn tables(&self, ctx: &mut Ctx<'_>, name: &str) -> Vec<(&'t DeTable<'i>, Span)> {
        let Some(e) = self.get(name) else {
            return Vec::new();
        };
        match e.value {
            DeValue::Array(items) => items
                .iter()
                .filter_map(|item| match item.get_ref() {
                    DeValue::Table(t) => Some((t, item.span())),
                    other => {
                        let found = other.type_str();
                        ctx.error(
                            item.span().start,
                            format!(
                                "each `{name}` must be a table, not {} {found}",
                                article(found)
                            ),
                            format!("write {}", self.example(name)),
                        );
                        None
                    }
                })
                .collect(),
            other => {
                let found = other.type_str();
                ctx.error(
                    e.key_span.start,
                    format!(
                        "`{name}` must be an array of tables, not {} {found}",
                        article(found)
                    ),
                    format!(
                        "write [[{name}]] (double brackets) on a line of its own, with its keys below it"
                    ),
                );
                Vec::new()
            }
        }
    }

    /// An array of strings; a lone string is reported with the array to write instead.
    fn strings(&self, ctx: &mut Ctx<'_>, name: &str) -> Option<(Vec<Str<'t>>, Span)> {
        let e = self.get(name)?;
        strings_of(ctx, &e, || format!("write {}", self.example(name)))
            .map(|items| (items, e.span.clone()))
    }
}

/// The strings of an array value; reports a value that is not one.
fn strings_of<'t>(
    ctx: &mut Ctx<'_>,
    e: &Entry<'t, '_>,
    example: impl FnOnce() -> String,
) -> Option<Vec<Str<'t>>> {
    match e.value {
        DeValue::Array(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push(Str {
                        value: s.as_ref(),
                        span: item.span(),
                    }),
                    other => {
                        let found = other.type_str();
                        ctx.error(
                            item.span().start,
                            format!(
                                "the items of `{}` must be strings, not {} {found}",
                                e.key,
                                article(found)
                            ),
                            "put each item in double quotes",
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        DeValue::String(s) => {
            ctx.error(
                e.span.start,
                format!("`{}` must be an array of strings, not a string", e.key),
                format!("write {} = [\"{}\"]", toml_key(e.key), s.escape_default()),
            );
            None
        }
        other => {
            let found = other.type_str();
            ctx.error(
                e.span.start,
                format!(
                    "`{}` must be an array of strings, not {} {found}",
                    e.key,
                    article(found)
                ),
                example(),
            );
            None
        }
    }
}

/// A string value and where it is.
#[derive(Debug, Clone)]
struct Str<'t> {
    value: &'t str,
    span: Span,
}

/// "a" or "an" before a TOML type name.
fn article(type_name: &str) -> &'static str {
    if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// `a`, `b`, `c`
fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items
        .into_iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Edit distance, counting a swap of two neighbours as one edit (and case as no edit).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    // d[i][j]: distance between a[..i] and b[..j]
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// `key` as written in TOML: bare if it can be, else quoted.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        key.to_owned()
    } else {
        format!("\"{}\"", key.escape_default())
    }
}

/// Whether `name` is `[a-z0-9][a-z0-9._-]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// A valid name close to `name`, if one can be made: lowercase, runs of other characters as
/// `-`.
fn name_like(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c) {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out
        .trim_start_matches(['.', '_', '-'])
        .trim_end_matches('-')
        .to_owned();
    valid_name(&out).then_some(out)
}

/// Reads the required `name` of a `[[kind]]` table; reports it missing or invalid.
fn name<'t>(ctx: &mut Ctx<'_>, t: &Table<'t, '_>, kind: &str) -> Option<Str<'t>> {
    let Some(e) = t.get("name") else {
        ctx.error(
            t.span.start,
            format!("[[{kind}]] without a `name`"),
            format!("add {}", t.example("name")),
        );
        return None;
    };
    let s = t.string(ctx, "name")?;
    if !valid_name(s.value) {
        let rule = "a name is lowercase letters, digits, '.', '_' and '-', starting with a letter or digit";
        let help = match name_like(s.value) {
            Some(good) => format!("{rule}: write name = \"{good}\""),
            None => format!("{rule}, e.g. {}", t.example("name")),
        };
        ctx.error(
            e.span.start,
            format!("invalid {kind} name \"{}\"", s.value.escape_default()),
            help,
        );
    }
    Some(s)
}

/// Reports names used twice (at the second and later uses).
fn check_unique(ctx: &mut Ctx<'_>, kind: &str, names: &[Str<'_>]) {
    let mut first: HashMap<&str, Span> = HashMap::new();
    for n in names {
        match first.get(n.value) {
            Some(span) => {
                let line = ctx.line(span);
                ctx.error(
                    n.span.start,
                    format!("duplicate {kind} name \"{}\"", n.value),
                    format!(
                        "the first [[{kind}]] named \"{}\" is at line {line}; give this one another name",
                        n.value
                    ),
                );
            }
            None => {
                first.insert(n.value, n.span.clone());
            }
        }
    }
}

/// Reads glob `name`; reports an invalid one at the character at fault.
fn glob_field(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, name: &str) -> Option<String> {
    let s = t.string(ctx, name)?;
    if s.value.is_empty() {
        ctx.error(
            s.span.start,
            format!("empty pattern for `{name}` in {}", t.schema.title),
            format!(
                "write a pattern, e.g. {}, or remove `{name}`",
                t.example(name)
            ),
        );
        return None;
    }
    check_glob(ctx, &s)?;
    Some(s.value.to_owned())
}

fn check_glob(ctx: &mut Ctx<'_>, s: &Str<'_>) -> Option<()> {
    match glob::check(s.value) {
        Ok(()) => Some(()),
        Err(err) => {
            let at = ctx.offset_in_string(&s.span, s.value, err.offset);
            ctx.error(
                at,
                format!("invalid pattern \"{}\": {}", s.value, err.message),
                err.help,
            );
            None
        }
    }
}

/// Parses and validates `text`.
pub(crate) fn parse(text: &str, origin: &Path) -> Result<Config, Diagnostics> {
    let mut ctx = Ctx {
        text,
        origin,
        diags: Vec::new(),
        notes: Vec::new(),
    };
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        // The tree is incomplete after a syntax error: checking it would only add noise.
        for error in &errors {
            syntax_error(&mut ctx, error);
        }
        return Err(finish(ctx));
    }
    let config = config(&mut ctx, root.get_ref());
    if ctx.diags.is_empty() {
        Ok(config)
    } else {
        Err(finish(ctx))
    }
}

/// The top level of a text that holds one `[[relay]]` table and nothing else.
const RELAY_ONLY: Schema = Schema {
    title: "a relay's settings",
    keys: &[key(
        "relay",
        "[[relay]] on a line of its own, with its keys below it",
    )],
    refused: &[],
};

/// Validates `text` as exactly one `[[relay]]` table, with the file's own rules for it.
pub(crate) fn parse_relay(text: &str, origin: &Path) -> Result<Relay, Diagnostics> {
    let mut ctx = Ctx {
        text,
        origin,
        diags: Vec::new(),
        notes: Vec::new(),
    };
    let (root, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for error in &errors {
            syntax_error(&mut ctx, error);
        }
        return Err(finish(ctx));
    }
    let root = Table::new(&mut ctx, root.get_ref(), 0..0, &RELAY_ONLY);
    let mut relays = Vec::new();
    for (t, span) in root.tables(&mut ctx, "relay") {
        let t = Table::new(&mut ctx, t, span, &RELAY);
        let name = name(&mut ctx, &t, "relay");
        relays.push(relay(&mut ctx, &t, name.as_ref().map_or("", |n| n.value)));
    }
    if relays.len() != 1 && ctx.diags.is_empty() {
        ctx.error(
            0,
            format!("{} [[relay]] tables where one is expected", relays.len()),
            "give exactly one [[relay]] table",
        );
    }
    match (relays.pop(), ctx.diags.is_empty()) {
        (Some(relay), true) => Ok(relay),
        _ => Err(finish(ctx)),
    }
}

fn finish(ctx: Ctx<'_>) -> Diagnostics {
    let mut diags = ctx.diags;
    diags.sort_by_key(|d| (d.line, d.col));
    diags.dedup();
    Diagnostics(diags)
}

/// Help for toml's syntax errors, by a part of their message.
const SYNTAX_HELP: &[(&str, &str)] = &[
    (
        "duplicate key",
        "a key or [table] may appear only once: remove or merge the second one (only [[link]], [[relay]] and [[user]] repeat)",
    ),
    (
        "must be quoted",
        r#"put text values in double quotes, e.g. host = "smtp.example.net""#,
    ),
    (
        "opening quote",
        r#"put text values in double quotes, e.g. host = "smtp.example.net""#,
    ),
    (
        "escape",
        r#"in "..." a backslash starts an escape: write \\ for a backslash, or use '...' which has no escapes"#,
    ),
    (
        "unicode",
        r#"in "..." a backslash starts an escape: write \\ for a backslash, or use '...' which has no escapes"#,
    ),
    (
        "string",
        r#"close the string with the quote it was opened with, on the same line"#,
    ),
    ("missing comma", "separate the items with `,`"),
    ("extra comma", "remove the extra `,`"),
    (
        "unclosed array table",
        "close the header with `]]`, as in [[user]]",
    ),
    ("unclosed table", "close the header with `]`, as in [agent]"),
    (
        "unclosed inline table",
        "close it with `}`, on the same line",
    ),
    ("unclosed array", "close the array with `]`"),
    (
        "value",
        r#"write one key = value per line, e.g. name = "alice""#,
    ),
    (
        "assignment",
        r#"write one key = value per line, e.g. name = "alice""#,
    ),
    (
        "`=`",
        r#"write one key = value per line, e.g. name = "alice""#,
    ),
    (
        "key",
        r#"write one key = value per line, e.g. name = "alice""#,
    ),
];

fn syntax_error(ctx: &mut Ctx<'_>, error: &toml::de::Error) {
    let at = error.span().map_or(0, |s| s.start);
    let message = error.message().trim();
    let message = message
        .strip_suffix(", expected nothing")
        .unwrap_or(message);
    let help = SYNTAX_HELP
        .iter()
        .find(|(part, _)| message.contains(part))
        .map_or(
            "this is not valid TOML: write key = value lines below [table] or [[table]] headers",
            |(_, help)| help,
        );
    ctx.error(at, format!("TOML syntax: {message}"), help);
}

/// Checks that `s` is one of `choices`; reports it otherwise.
fn choice<'t>(
    ctx: &mut Ctx<'_>,
    s: &Str<'t>,
    what: &str,
    choices: &[&str],
    help: &str,
) -> Option<&'t str> {
    if choices.contains(&s.value) {
        return Some(s.value);
    }
    let help = match suggest(s.value, choices.iter().copied()) {
        Some(near) => format!("did you mean \"{near}\"? {help}"),
        None => help.to_owned(),
    };
    ctx.error(
        s.span.start,
        format!("unknown {what} \"{}\"", s.value.escape_default()),
        help,
    );
    None
}

/// How to refer to a named table in messages: `link "isp-a"`, or `this link` without a name.
fn called(kind: &str, name: &str) -> String {
    if name.is_empty() {
        format!("this {kind}")
    } else {
        format!("{kind} \"{name}\"")
    }
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn agent(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> AgentSettings {
    let mut agent = AgentSettings::default();
    if let Some(s) = t.string(ctx, "source") {
        let help = r#"write source = "auto" (NetworkManager if it is running, else netlink), "networkmanager" or "netlink""#;
        agent.source = match choice(
            ctx,
            &s,
            "source",
            &["auto", "networkmanager", "netlink"],
            help,
        ) {
            Some("networkmanager") => SourceKind::NetworkManager,
            Some("netlink") => SourceKind::Netlink,
            _ => SourceKind::Auto,
        };
    }
    if let Some((d, _)) = t.duration(ctx, "debounce") {
        agent.debounce = d;
    }
    agent
}

fn retry(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> RetrySettings {
    let mut retry = RetrySettings::default();
    // Ok(span) when given and valid, Ok(None) when not given, Err when given but refused.
    let positive = |ctx: &mut Ctx<'_>, name: &str, slot: &mut Duration| {
        if t.get(name).is_none() {
            return Ok(None);
        }
        let (d, span) = t.duration(ctx, name).ok_or(())?;
        if d.is_zero() {
            ctx.error(
                span.start,
                format!("`{name}` in [retry] must be more than 0"),
                format!("write {}", t.example(name)),
            );
            return Err(());
        }
        *slot = d;
        Ok(Some(span))
    };
    let min = positive(ctx, "min", &mut retry.min);
    let max = positive(ctx, "max", &mut retry.max);
    let _ = positive(ctx, "lifetime", &mut retry.lifetime);
    if let Some((d, _)) = t.duration(ctx, "refusal_memory") {
        retry.refusal_memory = d;
    }
    // A refused `min` or `max` has its error already; comparing the default that stands in
    // for it would only add a second, wrong one.
    let (Ok(min), Ok(max)) = (min, max) else {
        return retry;
    };
    if retry.max < retry.min {
        let (min_s, max_s) = (show(retry.min), show(retry.max));
        match (max, min) {
            (Some(span), _) => ctx.error(
                span.start,
                format!("`max` ({max_s}) is less than `min` ({min_s})"),
                format!("write max = \"{min_s}\" or more, or lower `min`"),
            ),
            (None, Some(span)) => ctx.error(
                span.start,
                format!("`min` ({min_s}) is more than `max` ({max_s}, the default)"),
                format!("write min = \"{max_s}\" or less, or add max = \"{min_s}\" or more"),
            ),
            (None, None) => {}
        }
    }
    retry
}

fn notify(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> NotifySettings {
    let mut notify = NotifySettings::default();
    if let Some((b, _)) = t.boolean(ctx, "enabled") {
        notify.enabled = b;
    }
    if let Some((d, span)) = t.duration(ctx, "after") {
        if d.is_zero() {
            ctx.error(
                span.start,
                "`after` in [notify] must be more than 0",
                r#"write after = "1h" (how long mail may wait before you are told), or enabled = false for no notifications"#,
            );
        } else {
            notify.after = d;
        }
    }
    notify
}

fn outbox(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> OutboxSettings {
    let mut outbox = OutboxSettings::default();
    let bytes = |ctx: &mut Ctx<'_>, name: &str, min: u64, slot: &mut u64| {
        if let Some((n, span)) = t.integer(ctx, name) {
            match u64::try_from(n) {
                Ok(n) if n >= min => *slot = n,
                _ => ctx.error(
                    span.start,
                    format!("`{name}` in [outbox] must be a number of bytes, at least {min}"),
                    format!("write {}", t.example(name)),
                ),
            }
        }
    };
    bytes(ctx, "max_message_size", 1, &mut outbox.max_message_size);
    bytes(ctx, "keep_sent_size", 0, &mut outbox.keep_sent_size);
    if let Some((d, _)) = t.duration(ctx, "keep_sent") {
        outbox.keep_sent = d;
    }
    outbox
}

fn setup(ctx: &mut Ctx<'_>, t: &Table<'_, '_>) -> SetupSettings {
    let mut setup = SetupSettings::default();
    if let Some(s) = t.text(ctx, "ispdb") {
        if s.value.starts_with("https://") || s.value.starts_with("http://") {
            setup.ispdb = Some(s.value.to_string());
        } else {
            ctx.error(
                s.span.start,
                format!("`ispdb` must be an http(s) URL, not {:?}", s.value),
                r#"write ispdb = "https://autoconfig.thunderbird.net/v1.1/" (or your own mirror of it)"#,
            );
        }
    }
    if let Some(s) = t.text(ctx, "nameserver") {
        match SetupSettings::parse_nameserver(s.value) {
            Some(addr) => setup.nameserver = Some(addr),
            None => ctx.error(
                s.span.start,
                format!(
                    "`nameserver` must be an IP address, with or without a port, not {:?}",
                    s.value
                ),
                r#"write nameserver = "192.0.2.53" (or "192.0.2.53:5353", "[2001:db8::53]:53")"#,
            ),
        }
    }
    setup
}

fn link(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, name: &str, source: SourceKind) -> LinkRule {
    let matcher = match t.get("match") {
        None => {
            ctx.error(
                t.span.start,
                format!("{} has no `match`", called("link", name)),
                format!(
                    "add {}, with one or more of {}",
                    t.example("match"),
                    list(MATCH.keys.iter().map(|k| k.name))
                ),
            );
            LinkMatch::default()
        }
        Some(_) => match t.table(ctx, "match") {
            Some((m, span)) => link_match(ctx, m, span, name, source),
            None => LinkMatch::default(),
        },
    };

    let mut metered = MeteredPolicy::Send;
    // Some(word) if `metered` is absent or valid; None if it is invalid (then nothing more
    // is said about metered_max_size).
    let mut word = Some("send");
    if let Some(s) = t.string(ctx, "metered") {
        let help = r#"write metered = "send" (as usual), "hold" (nothing while metered) or "small" (only messages up to metered_max_size)"#;
        word = choice(ctx, &s, "metered policy", &["send", "hold", "small"], help);
        metered = match word {
            Some("hold") => MeteredPolicy::Hold,
            Some("small") => MeteredPolicy::Small {
                max_size: MeteredPolicy::DEFAULT_MAX_SIZE,
            },
            _ => MeteredPolicy::Send,
        };
    }
    if let Some(e) = t.get("metered_max_size") {
        if let Some(other) = word.filter(|w| *w != "small") {
            ctx.error(
                e.key_span.start,
                format!("`metered_max_size` is only used with metered = \"small\", and this link has metered = \"{other}\""),
                "add metered = \"small\", or remove metered_max_size",
            );
        }
        if let Some((n, span)) = t.integer(ctx, "metered_max_size") {
            match u64::try_from(n) {
                Ok(n) if n > 0 => {
                    if let MeteredPolicy::Small { max_size } = &mut metered {
                        *max_size = n;
                    }
                }
                _ => ctx.error(
                    span.start,
                    format!("`metered_max_size` must be a size in bytes, more than 0, not {n}"),
                    "write metered_max_size = 1048576 (1 MiB, the default)",
                ),
            }
        }
    }

    LinkRule {
        name: name.into(),
        matcher,
        metered,
    }
}

fn link_match(
    ctx: &mut Ctx<'_>,
    m: &DeTable<'_>,
    span: Span,
    name: &str,
    source: SourceKind,
) -> LinkMatch {
    let t = Table::new(ctx, m, span, &MATCH);
    if m.is_empty() {
        ctx.error(
            t.span.start,
            "empty `match`: it would match every link",
            format!(
                "give one or more of {}, e.g. match = {{ id = \"ISP-A\" }}",
                list(MATCH.keys.iter().map(|k| k.name))
            ),
        );
    }
    let matcher = LinkMatch {
        id: glob_field(ctx, &t, "id"),
        uuid: glob_field(ctx, &t, "uuid"),
        conn_type: glob_field(ctx, &t, "type"),
        interface: glob_field(ctx, &t, "interface"),
        ssid: glob_field(ctx, &t, "ssid"),
        gateway: glob_field(ctx, &t, "gateway"),
        domain: glob_field(ctx, &t, "domain"),
        address: prefix_field(ctx, &t, "address"),
    };
    source_notes(ctx, &t, &matcher, name, source);
    matcher
}

/// Notes on `match` fields the link source cannot see: the rule then never matches (netlink),
/// or only while NetworkManager runs (auto).
fn source_notes(
    ctx: &mut Ctx<'_>,
    t: &Table<'_, '_>,
    matcher: &LinkMatch,
    name: &str,
    source: SourceKind,
) {
    let unseen: Vec<&str> = matcher
        .fields()
        .into_iter()
        .filter(|f| !NETLINK_FIELDS.contains(f))
        .collect();
    let who = called("link", name);
    let seen = list(NETLINK_FIELDS.iter().copied());
    if let Some(first) = unseen.first().and_then(|f| t.get(f)) {
        let fields = list(unseen.iter().copied());
        let never: Vec<&str> = unseen.iter().copied().filter(|f| *f != "id").collect();
        let message = match source {
            SourceKind::Netlink if never.is_empty() => format!(
                "{who} matches on `id`, a NetworkManager connection name; under netlink `id` is only the interface name: match on `interface` instead"
            ),
            SourceKind::Netlink => format!(
                "{who} matches on {}, which the netlink source cannot see, so it never matches; netlink sees {seen}",
                list(never.iter().copied())
            ),
            SourceKind::Auto => format!(
                "{who} matches on {fields}, which only NetworkManager sees: it matches only while NetworkManager runs (without it, source \"auto\" uses netlink, which sees {seen})"
            ),
            SourceKind::NetworkManager => return,
        };
        ctx.note(first.key_span.start, message);
    }
    // NetworkManager's type names are not netlink's kinds.
    if source == SourceKind::Netlink
        && let Some(e) = t.get("type")
        && let Some(ty) = &matcher.conn_type
        && (ty.starts_with("802-") || ["gsm", "cdma", "vpn", "wifi-p2p"].contains(&ty.as_str()))
    {
        ctx.note(
            e.key_span.start,
            format!(
                "{who}: type \"{ty}\" is a NetworkManager connection type; under netlink `type` is the interface's kind (ethernet, wifi, wwan, ppp, veth, wireguard, tun, ...)"
            ),
        );
    }
}

/// Reads an address prefix (`"192.0.2.0/24"`, `"2001:db8::/32"`) or one address (`"192.0.2.7"`,
/// taken as /32 or /128); reports one that is not valid, or has bits set past its length.
fn prefix_field(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, name: &str) -> Option<IpNet> {
    const HELP: &str = r#"write a network as address/length, e.g. address = "192.0.2.0/24" or "2001:db8::/32", or one address, e.g. address = "192.0.2.7""#;
    let s = t.string(ctx, name)?;
    let value = s.value;
    let net = if value.contains('/') {
        value.parse::<IpNet>().map_err(|e| e.to_string())
    } else {
        value
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|e| e.to_string())
    };
    match net {
        Ok(net) if net.trunc() == net => Some(net),
        Ok(net) => {
            ctx.error(
                s.span.start,
                format!(
                    "`{name}` \"{value}\" has bits set after its first {} bits",
                    net.prefix_len()
                ),
                format!(
                    "write {name} = \"{}\" (the network), or {name} = \"{}\" for this one address",
                    net.trunc(),
                    net.addr()
                ),
            );
            None
        }
        Err(e) => {
            ctx.error(
                s.span.start,
                format!(
                    "invalid address prefix \"{}\" for `{name}`: {e}",
                    value.escape_default()
                ),
                HELP,
            );
            None
        }
    }
}

fn relay(ctx: &mut Ctx<'_>, t: &Table<'_, '_>, name: &str) -> Relay {
    let who = called("relay", name);

    let host = match t.get("host") {
        None => {
            ctx.error(
                t.span.start,
                format!("{who} has no `host`"),
                format!("add {}", t.example("host")),
            );
            String::new()
        }
        Some(_) => match t.text(ctx, "host") {
            Some(s) => {
                let port_in_host = s.value.split_once(':').filter(|(h, p)| {
                    !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
                });
                if let Some((h, p)) = port_in_host {
                    ctx.error(
                        s.span.start,
                        format!("`host` \"{}\" includes a port", s.value),
                        format!("write host = \"{h}\" and port = {p}"),
                    );
                } else if s.value.contains(char::is_whitespace) || s.value.contains('/') {
                    ctx.error(
                        s.span.start,
                        format!("`host` \"{}\" is not a host name", s.value.escape_default()),
                        "write only the host name or address, e.g. host = \"smtp.example.net\"",
                    );
                }
                s.value.to_owned()
            }
            None => String::new(),
        },
    };

    let tls = match t.get("tls") {
        None => {
            ctx.error(
                t.span.start,
                format!("{who} has no `tls`: it is required"),
                TLS_HELP,
            );
            None
        }
        Some(_) => t.string(ctx, "tls").and_then(|s| {
            match choice(ctx, &s, "tls mode", &["starttls", "tls", "none"], TLS_HELP) {
                Some("starttls") => Some(TlsMode::Starttls),
                Some("tls") => Some(TlsMode::Tls),
                Some("none") => Some(TlsMode::None),
                _ => None,
            }
        }),
    };

    let mut port = tls.map_or(0, TlsMode::default_port);
    if let Some((n, span)) = t.integer(ctx, "port") {
        match u16::try_from(n) {
            Ok(p) if p > 0 => port = p,
            _ => {
                let default = match tls {
                    Some(tls) => format!("the default for tls = \"{tls}\", {}", tls.default_port()),
                    None => "the default for its tls mode".to_owned(),
                };
                ctx.error(
                    span.start,
                    format!("port {n} is not a valid port"),
                    format!("write a port from 1 to 65535, or remove `port` to use {default}"),
                );
            }
        }
    }

    let helo = t.text(ctx, "helo").map(|s| {
        if s.value.contains(char::is_whitespace) {
            ctx.error(
                s.span.start,
                format!("`helo` \"{}\" contains white space", s.value.escape_default()),
                "write a single host name, e.g. helo = \"laptop.example.net\", or remove `helo` to use this machine's host name",
            );
        }
        s.value.to_owned()
    });

    let auth = relay_auth::auth(ctx, t, &who, name);
    let dangerous_plaintext_auth = relay_auth::plaintext_auth(ctx, t, &who, tls);

    let ca_file = t.text(ctx, "ca_file").map(|s| {
        let path = PathBuf::from(s.value);
        match ctx.origin.parent() {
            Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
            _ => path,
        }
    });

    let mut timeout = Relay::DEFAULT_TIMEOUT;
    if let Some((d, span)) = t.duration(ctx, "timeout") {
        if d.is_zero() {
            ctx.error(
                span.start,
                "`timeout` must be more than 0",
                r#"write timeout = "60s", or remove it to use 60s"#,
            );
        } else {
            timeout = d;
        }
    }

    Relay {
        name: name.into(),
        host,
        port,
        tls: tls.unwrap_or(TlsMode::Starttls),
        helo,
        auth,
        ca_file,
        timeout,
        dangerous_plaintext_auth,
    }
}

/// A `[[user]]` as read, before the checks that need every user, link and relay.
struct RawUser<'t> {
    name: String,
    /// Where to point if `from` is empty and must not be (`None`: it is not empty).
    empty_from_at: Option<usize>,
    from: Vec<String>,
    default: Option<Span>,
    routes: Vec<(Str<'t>, Vec<Str<'t>>)>,
}

fn user<'t>(ctx: &mut Ctx<'_>, t: &Table<'t, '_>, name: &str) -> RawUser<'t> {
    let default = match t.boolean(ctx, "default") {
        Some((true, span)) => Some(span),
        _ => None,
    };

    let mut from = Vec::new();
    let mut empty_from_at = None;
    match t.strings(ctx, "from") {
        Some((items, span)) => {
            if items.is_empty() {
                empty_from_at = Some(span.start);
            }
            for item in &items {
                if check_glob(ctx, item).is_some() {
                    from.push(item.value.to_owned());
                }
            }
        }
        None if t.get("from").is_none() => empty_from_at = Some(t.span.start),
        None => {}
    }

    let mut routes = Vec::new();
    if let Some((rt, span)) = t.table(ctx, "routes") {
        let rt = Table::new(ctx, rt, span, &ROUTES);
        for (k, v) in &rt.entries {
            let e = Entry {
                key: k.get_ref().as_ref(),
                key_span: k.span(),
                span: v.span(),
                value: v.get_ref(),
            };
            let link = Str {
                value: e.key,
                span: e.key_span.clone(),
            };
            let example = || format!("write {} = [\"relay-a\", \"relay-b\"]", toml_key(e.key));
            if let Some(relays) = strings_of(ctx, &e, example) {
                routes.push((link, relays));
            }
        }
    }

    RawUser {
        name: name.to_owned(),
        empty_from_at,
        from,
        default,
        routes,
    }
}

/// Walks the document; anything wrong goes to `ctx`.
fn config(ctx: &mut Ctx<'_>, root: &DeTable<'_>) -> Config {
    let root = Table::new(ctx, root, 0..0, &ROOT);

    let agent = match root.table(ctx, "agent") {
        Some((t, span)) => {
            let t = Table::new(ctx, t, span, &AGENT);
            agent(ctx, &t)
        }
        None => AgentSettings::default(),
    };
    let retry = match root.table(ctx, "retry") {
        Some((t, span)) => {
            let t = Table::new(ctx, t, span, &RETRY);
            retry(ctx, &t)
        }
        None => RetrySettings::default(),
    };
    let notify = match root.table(ctx, "notify") {
        Some((t, span)) => {
            let t = Table::new(ctx, t, span, &NOTIFY);
            notify(ctx, &t)
        }
        None => NotifySettings::default(),
    };
    let outbox = match root.table(ctx, "outbox") {
        Some((t, span)) => {
            let t = Table::new(ctx, t, span, &OUTBOX);
            outbox(ctx, &t)
        }
        None => OutboxSettings::default(),
    };
    let submission = match root.table(ctx, "submission") {
        Some((t, span)) => {
            let t = Table::new(ctx, t, span, &submission::SUBMISSION);
            submission::submission(ctx, &t)
        }
        None => SubmissionSettings::default(),
    };

    let setup = match root.table(ctx, "setup") {
        Some((t, span)) => {
            let t = Table::new(ctx, t, span, &SETUP);
            setup(ctx, &t)
        }
        None => SetupSettings::default(),
    };

    let mut links = Vec::new();
    let mut link_names = Vec::new();
    for (t, span) in root.tables(ctx, "link") {
        let t = Table::new(ctx, t, span, &LINK);
        let name = name(ctx, &t, "link");
        links.push(link(
            ctx,
            &t,
            name.as_ref().map_or("", |n| n.value),
            agent.source,
        ));
        link_names.extend(name);
    }
    check_unique(ctx, "link", &link_names);

    let mut relays = Vec::new();
    let mut relay_names = Vec::new();
    for (t, span) in root.tables(ctx, "relay") {
        let t = Table::new(ctx, t, span, &RELAY);
        let name = name(ctx, &t, "relay");
        relays.push(relay(ctx, &t, name.as_ref().map_or("", |n| n.value)));
        relay_names.extend(name);
    }
    check_unique(ctx, "relay", &relay_names);

    let mut raw_users = Vec::new();
    let mut user_names = Vec::new();
    let user_tables = root.tables(ctx, "user");
    let no_users = user_tables.is_empty()
        && root
            .get("user")
            .is_none_or(|e| matches!(e.value, DeValue::Array(a) if a.is_empty()));
    if no_users {
        ctx.error(
            0,
            "no [[user]]: mail needs a user to belong to",
            r#"add a user, e.g. [[user]] with name = "default", from = ["*"] and routes = { "*" = ["relay-a"] }"#,
        );
    }
    for (t, span) in user_tables {
        let t = Table::new(ctx, t, span, &USER);
        let name = name(ctx, &t, "user");
        raw_users.push(user(ctx, &t, name.as_ref().map_or("", |n| n.value)));
        user_names.extend(name);
    }
    check_unique(ctx, "user", &user_names);

    let users = check_users(ctx, raw_users, &link_names, &relay_names);
    let mut notes = std::mem::take(&mut ctx.notes);
    notes.sort_by_key(|n| (n.line, n.col));
    Config {
        path: Some(ctx.origin.to_path_buf()),
        agent,
        retry,
        notify,
        outbox,
        submission,
        setup,
        links,
        relays,
        users,
        notes,
    }
}

/// The checks on users that need all users, links and relays; then the users.
fn check_users(
    ctx: &mut Ctx<'_>,
    raw: Vec<RawUser<'_>>,
    link_names: &[Str<'_>],
    relay_names: &[Str<'_>],
) -> Vec<User> {
    let defaults: Vec<(&str, &Span)> = raw
        .iter()
        .filter_map(|u| Some((u.name.as_str(), u.default.as_ref()?)))
        .collect();
    if let Some(((first, first_span), others)) = defaults.split_first() {
        let line = ctx.line(first_span);
        for (_, span) in others {
            ctx.error(
                span.start,
                "more than one user has default = true",
                format!(
                    "{} (line {line}) is already the default: remove default = true here or there",
                    called("user", first)
                ),
            );
        }
    }
    let has_default = !defaults.is_empty();
    let only_user = raw.len() == 1;

    for u in &raw {
        if let Some(at) = u.empty_from_at
            && u.default.is_none()
            && !only_user
        {
            let help = if has_default {
                r#"add the senders whose mail is this user's, e.g. from = ["alice@example.net", "*@alice.example"]"#.to_owned()
            } else {
                r#"add the senders whose mail is this user's, e.g. from = ["alice@example.net"], or make this the default user with default = true"#.to_owned()
            };
            ctx.error(
                at,
                format!(
                    "{} has no `from`, and is not the default user: no mail would ever be theirs",
                    called("user", &u.name)
                ),
                help,
            );
        }
    }

    let known = |names: &[Str<'_>]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for n in names {
            if !v.iter().any(|known| known == n.value) {
                v.push(n.value.to_owned());
            }
        }
        v
    };
    let known_links = known(link_names);
    let known_relays = known(relay_names);

    let mut users = Vec::new();
    for u in raw {
        let mut routes = BTreeMap::new();
        let mut other_links = None;
        for (link, relays) in &u.routes {
            if link.value != "*" && !known_links.iter().any(|l| l == link.value) {
                let mut help = String::new();
                if let Some(near) = suggest(link.value, known_links.iter().map(String::as_str)) {
                    help = format!("did you mean \"{near}\"? ");
                }
                if known_links.is_empty() {
                    help.push_str(&format!(
                        "no [[link]] is defined: add one with name = \"{}\", or write \"*\" for any link",
                        link.value
                    ));
                } else {
                    help.push_str(&format!(
                        "known links are {}; \"*\" stands for any other link",
                        list(known_links.iter().map(String::as_str))
                    ));
                }
                ctx.error(
                    link.span.start,
                    format!("route for unknown link \"{}\"", link.value),
                    help,
                );
            }
            let mut seen: Vec<&str> = Vec::new();
            for relay in relays {
                if !known_relays.iter().any(|r| r == relay.value) {
                    let mut help = String::new();
                    if let Some(near) =
                        suggest(relay.value, known_relays.iter().map(String::as_str))
                    {
                        help = format!("did you mean \"{near}\"? ");
                    }
                    if known_relays.is_empty() {
                        help.push_str(&format!(
                            "no [[relay]] is defined: add one with name = \"{}\"",
                            relay.value
                        ));
                    } else {
                        help.push_str(&format!(
                            "known relays are {}",
                            list(known_relays.iter().map(String::as_str))
                        ));
                    }
                    ctx.error(
                        relay.span.start,
                        format!("unknown relay \"{}\"", relay.value),
                        help,
                    );
                } else if seen.contains(&relay.value) {
                    ctx.error(
                        relay.span.start,
                        format!(
                            "relay \"{}\" is listed twice for link \"{}\"",
                            relay.value, link.value
                        ),
                        "list each relay once: they are tried in order",
                    );
                }
                seen.push(relay.value);
            }
            let relays = relays.iter().map(|r| RelayName::from(r.value)).collect();
            match link.value {
                "*" => other_links = Some(relays),
                name => {
                    routes.insert(LinkName::from(name), relays);
                }
            }
        }
        users.push(User {
            name: u.name.into(),
            from: u.from,
            default: u.default.is_some(),
            routes,
            other_links,
        });
    }
    users
}
