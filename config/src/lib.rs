//! linkrelay's configuration: the TOML schema, its validation (every problem reported with
//! `file:line:col` and what to write instead), link matching and choosing a user by sender.
//!
//! The file lives at [`default_config_path`] (or wherever `--config` says); its schema is in
//! `docs/architecture.md`, and [`STARTER_CONFIG`] shows every option. Without a file the agent
//! uses [`Config::embedded_default`].
//!
//! ```
//! use linkrelay_config::{Config, LinkFacts};
//! use std::path::Path;
//!
//! let config = Config::parse(
//!     r#"
//! [[link]]
//! name = "isp-a"
//! match = { id = "ISP-A" }
//!
//! [[relay]]
//! name = "relay-a"
//! host = "smtp.isp-a.example"
//! tls = "starttls"
//!
//! [[user]]
//! name = "alice"
//! from = ["alice@isp-a.example"]
//! routes = { isp-a = ["relay-a"] }
//! "#,
//!     Path::new("config.toml"),
//! )?;
//! let facts = LinkFacts { id: "ISP-A".into(), ..LinkFacts::default() };
//! let link = config.match_link(&facts).map(|l| l.name.as_str());
//! assert_eq!(link, Some("isp-a"));
//! let user = config.user_for_sender("Alice@ISP-A.example").map(|u| u.name.as_str());
//! assert_eq!(user, Some("alice"));
//! # Ok::<(), linkrelay_config::ConfigError>(())
//! ```

// In tests a failed unwrap is a failed test, with its location.
#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub mod autoconfig;
mod diag;
mod glob;
mod names;
mod parse;
mod perms;
mod read;
#[cfg(test)]
mod tests;

pub use diag::{ConfigError, Diagnostic, Diagnostics, Note};
pub use ipnet::IpNet;
pub use names::{LinkName, RelayName, UserName};
pub use read::MAX_CONFIG_SIZE;

/// The starter config that `linkrelay config init` writes: every option, commented where
/// optional. As written it parses, and behaves like [`Config::embedded_default`] (one user
/// named `default`, so mail already queued without a config stays in the same outbox).
pub const STARTER_CONFIG: &str = include_str!("starter.toml");

/// A loaded, valid configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from ([`Config::load`]) or the origin given to [`Config::parse`];
    /// `None` for [`Config::embedded_default`].
    pub path: Option<PathBuf>,
    /// `[agent]`
    pub agent: AgentSettings,
    /// `[retry]`
    pub retry: RetrySettings,
    /// `[notify]`
    pub notify: NotifySettings,
    /// `[submission]`
    pub submission: SubmissionSettings,
    /// `[outbox]`
    pub outbox: OutboxSettings,
    /// `[setup]`
    pub setup: SetupSettings,
    /// `[[link]]` tables, in file order (the order [`Config::match_link`] tries them in).
    pub links: Vec<LinkRule>,
    /// `[[relay]]` tables, in file order.
    pub relays: Vec<Relay>,
    /// `[[user]]` tables, in file order (the order [`Config::user_for_sender`] tries them in).
    pub users: Vec<User>,
    /// Remarks that are not errors, in file order: e.g. a rule that matches on a field the
    /// configured link source cannot see.
    pub notes: Vec<Note>,
}

/// `[agent]`: how the agent watches links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentSettings {
    /// `source`: where link state comes from. Default [`SourceKind::Auto`].
    pub source: SourceKind,
    /// `debounce`: the window that rides out a flapping link. A change that makes mail
    /// sendable, or one after a quiet window, applies at once; switching away or back within
    /// the window waits for its end. Default 300 ms.
    pub debounce: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            source: SourceKind::Auto,
            debounce: Duration::from_millis(300),
        }
    }
}

/// `[agent] source`: where link state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// `"auto"`: NetworkManager if it is on the system bus, else netlink.
    #[default]
    Auto,
    /// `"networkmanager"`: NetworkManager's active connections, over the system bus.
    NetworkManager,
    /// `"netlink"`: the interface that carries the default route.
    Netlink,
}

impl SourceKind {
    /// The `match` fields of a `[[link]]` rule that this source can see, in schema order: all
    /// of them for NetworkManager (and auto, which prefers it); `interface`, `type` (the
    /// interface's kind), `gateway` and `address` for netlink.
    pub fn visible_fields(self) -> &'static [&'static str] {
        match self {
            SourceKind::Auto | SourceKind::NetworkManager => NETWORKMANAGER_FIELDS,
            SourceKind::Netlink => NETLINK_FIELDS,
        }
    }

    /// One line for `linkrelay config check`: which source is used and what it can match on.
    pub fn describe_fields(self) -> String {
        let nm = NETWORKMANAGER_FIELDS.join(", ");
        let nl = NETLINK_FIELDS.join(", ");
        match self {
            SourceKind::Auto => format!(
                "source auto: NetworkManager while it runs (matches on {nm}), else netlink (matches on {nl})"
            ),
            SourceKind::NetworkManager => format!("source networkmanager: matches on {nm}"),
            SourceKind::Netlink => format!("source netlink: matches on {nl}"),
        }
    }

    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Auto => "auto",
            SourceKind::NetworkManager => "networkmanager",
            SourceKind::Netlink => "netlink",
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `match` fields NetworkManager can see: all of them.
pub const NETWORKMANAGER_FIELDS: &[&str] = &[
    "id",
    "uuid",
    "type",
    "interface",
    "ssid",
    "gateway",
    "domain",
    "address",
];

/// The `match` fields the netlink source can see (`type` is the interface's kind there).
pub const NETLINK_FIELDS: &[&str] = &["interface", "type", "gateway", "address"];

/// `[retry]`: backoff and lifetime of queued messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySettings {
    /// `min`: the first retry delay; it doubles (with jitter) up to `max`. Default 5 minutes.
    pub min: Duration,
    /// `max`: the longest retry delay. Default 1 hour. Never less than `min`.
    pub max: Duration,
    /// `lifetime`: after this a message moves to `failed/` and the user is told. Default 5 days.
    pub lifetime: Duration,
    /// `refusal_memory`: how long a (relay, link) refusal is remembered. Default 30 minutes.
    pub refusal_memory: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            min: Duration::from_secs(5 * 60),
            max: Duration::from_secs(60 * 60),
            lifetime: Duration::from_secs(5 * 24 * 60 * 60),
            refusal_memory: Duration::from_secs(30 * 60),
        }
    }
}

/// `[notify]`: desktop notifications about mail that needs the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifySettings {
    /// `enabled`: show desktop notifications at all. Default true.
    pub enabled: bool,
    /// `after`: tell the user about a message still queued this long after it was queued.
    /// Default 1 hour; more than 0.
    pub after: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            enabled: true,
            after: Duration::from_secs(60 * 60),
        }
    }
}

/// `[submission]`: the SMTP submission listener, where mail clients (Thunderbird, Evolution,
/// Geary, KMail, msmtp, ...) hand mail to linkrelay. It takes mail only from programs of the
/// agent's own uid on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionSettings {
    /// `listen`: loopback TCP addresses to listen on, e.g. `127.0.0.1:2525` and `[::1]:2525`.
    /// Default none: a port is shared by every user of the machine, so it is opt-in.
    pub listen: Vec<SocketAddr>,
    /// `socket`: listen on the unix socket [`submission_socket_path`] too. Default true.
    /// (The largest message it takes, announced as `SIZE`, is `[outbox] max_message_size`.)
    pub socket: bool,
    /// `max_sessions`: the most clients served at once; more wait to be accepted. Default 32.
    pub max_sessions: usize,
    /// `max_recipients`: the most recipients of one message. Default 1000.
    pub max_recipients: usize,
    /// `timeout`: how long a client may take over each command. Default 5 minutes.
    pub timeout: Duration,
    /// `data_timeout`: how long a client may take over a whole message's data. Default 10
    /// minutes.
    pub data_timeout: Duration,
}

impl Default for SubmissionSettings {
    fn default() -> Self {
        SubmissionSettings {
            listen: Vec::new(),
            socket: true,
            max_sessions: 32,
            max_recipients: 1000,
            timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// `[outbox]`: what the outboxes keep and take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxSettings {
    /// `max_message_size`: the largest message taken, in bytes. `sendmail` refuses a larger
    /// one (exit 65), one dropped in `new/` or found queued goes to `failed/` with the reason.
    /// Default [`OutboxSettings::DEFAULT_MAX_MESSAGE_SIZE`].
    pub max_message_size: u64,
    /// `keep_sent`: how long sent mail stays in `sent/` (`linkrelay prune` and the agent, at
    /// most hourly, remove it then). Default [`OutboxSettings::DEFAULT_KEEP_SENT`].
    pub keep_sent: Duration,
    /// `keep_sent_size`: at most this many bytes of sent mail are kept per user; the oldest
    /// go first. Default [`OutboxSettings::DEFAULT_KEEP_SENT_SIZE`].
    pub keep_sent_size: u64,
}

impl OutboxSettings {
    /// `keep_sent` when not given: 3 days. Long enough to answer "did Friday's mail go, and
    /// through which relay?" on Monday; the mail client keeps its own copy in its Sent folder.
    pub const DEFAULT_KEEP_SENT: Duration = Duration::from_secs(3 * 24 * 60 * 60);

    /// `keep_sent_size` when not given: 100 MiB, two messages of the largest default size.
    pub const DEFAULT_KEEP_SENT_SIZE: u64 = 100 * 1024 * 1024;

    /// `max_message_size` when not given: 50 MiB, the top of the range Postfix admins use
    /// (Postfix's own default is 10 MB). What the common providers take (25 MB of attachments,
    /// about 35 MB once encoded) passes; a relay with a lower limit answers 552 and the
    /// message fails with its words.
    pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 50 * 1024 * 1024;
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            max_message_size: OutboxSettings::DEFAULT_MAX_MESSAGE_SIZE,
            keep_sent: OutboxSettings::DEFAULT_KEEP_SENT,
            keep_sent_size: OutboxSettings::DEFAULT_KEEP_SENT_SIZE,
        }
    }
}

/// `[setup]`: where `linkrelay setup` looks for a mail domain's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupSettings {
    /// `ispdb`: the base URL of the ISP database (Thunderbird's, or a mirror of it);
    /// `None` = Thunderbird's.
    pub ispdb: Option<String>,
    /// `nameserver`: the DNS server to ask for SRV and MX records and host addresses;
    /// `None` = the system's (`/etc/resolv.conf`).
    pub nameserver: Option<std::net::SocketAddr>,
}

impl SetupSettings {
    /// `"192.0.2.53"`, `"192.0.2.53:5353"` or `"[2001:db8::53]:53"` as an address (port 53
    /// when none is given).
    pub fn parse_nameserver(text: &str) -> Option<std::net::SocketAddr> {
        text.parse::<std::net::SocketAddr>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(|ip| (ip, 53).into()))
    }
}

/// `[[link]]`: a named kind of network link, recognised by its [`LinkMatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRule {
    /// `name`: `[a-z0-9][a-z0-9._-]*`, unique among links; users' `routes` refer to it.
    pub name: LinkName,
    /// `match = { ... }`: which links this rule stands for.
    pub matcher: LinkMatch,
    /// `metered` (and `metered_max_size`): what to do when the link is metered.
    pub metered: MeteredPolicy,
}

/// `[[link]] metered`: what to do with mail while the link is metered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MeteredPolicy {
    /// `"send"`: send as usual (the default).
    #[default]
    Send,
    /// `"hold"`: keep everything queued until the link is no longer metered.
    Hold,
    /// `"small"`: send only messages of at most `max_size` bytes (`metered_max_size`,
    /// default [`MeteredPolicy::DEFAULT_MAX_SIZE`]); hold the others.
    Small {
        /// Largest message, in bytes, sent over the metered link.
        max_size: u64,
    },
}

impl MeteredPolicy {
    /// `metered_max_size` when not given: 1 MiB.
    pub const DEFAULT_MAX_SIZE: u64 = 1024 * 1024;

    /// The word used in the config file: `send`, `hold` or `small`.
    pub fn as_str(self) -> &'static str {
        match self {
            MeteredPolicy::Send => "send",
            MeteredPolicy::Hold => "hold",
            MeteredPolicy::Small { .. } => "small",
        }
    }
}

impl fmt::Display for MeteredPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MeteredPolicy::Small { max_size } => write!(f, "small (at most {max_size} bytes)"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// `[[link]] match = { ... }`: globs on the facts of a link; every one given must match.
///
/// Globs: `*` any run of characters, `?` one character, `[a-z]` / `[!a-z]` a character (not)
/// in a set, `\x` the character `x`; a glob matches the whole value. `domain` is matched
/// without regard to case (DNS names); the others are case-sensitive. A field left `None` is
/// not looked at; an all-`None` match (the `Default`) matches every link, which a config file
/// is not allowed to say. A glob that is not valid (the config file rejects those) matches
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkMatch {
    /// `id`: NetworkManager's connection id (its name), e.g. `"ISP-A"`.
    pub id: Option<String>,
    /// `uuid`: NetworkManager's connection uuid.
    pub uuid: Option<String>,
    /// `type`: NetworkManager's connection type, e.g. `"802-3-ethernet"`, `"802-11-wireless"`.
    pub conn_type: Option<String>,
    /// `interface`: the network interface, e.g. `"eth*"`.
    pub interface: Option<String>,
    /// `ssid`: the Wi-Fi network name; a link without one does not match.
    pub ssid: Option<String>,
    /// `gateway`: the default gateway's address; a link without one does not match.
    pub gateway: Option<String>,
    /// `domain`: matches if any of the link's DNS search domains matches (case-insensitive; a
    /// trailing `.` on the link's domain is ignored).
    pub domain: Option<String>,
    /// `address`: a network (`"192.0.2.0/24"`, `"2001:db8::/32"`) or one address; matches if
    /// any of the link's addresses is in it. Not a glob.
    pub address: Option<IpNet>,
}

impl LinkMatch {
    /// Whether no field is given.
    pub fn is_empty(&self) -> bool {
        self == &LinkMatch::default()
    }

    /// Whether the link described by `facts` matches every field given.
    pub fn matches(&self, facts: &LinkFacts) -> bool {
        let field = |pattern: &Option<String>, value: &str| {
            pattern
                .as_deref()
                .is_none_or(|p| glob::matches(p, value, false))
        };
        let optional = |pattern: &Option<String>, value: &Option<String>| match pattern {
            None => true,
            Some(p) => value.as_deref().is_some_and(|v| glob::matches(p, v, false)),
        };
        field(&self.id, &facts.id)
            && field(&self.uuid, &facts.uuid)
            && field(&self.conn_type, &facts.conn_type)
            && field(&self.interface, &facts.interface)
            && optional(&self.ssid, &facts.ssid)
            && optional(&self.gateway, &facts.gateway)
            && self.domain.as_deref().is_none_or(|p| {
                facts
                    .domains
                    .iter()
                    .any(|d| glob::matches(p, d.trim_end_matches('.'), true))
            })
            && self
                .address
                .is_none_or(|net| facts.addresses.iter().any(|a| net.contains(a)))
    }

    /// The config-file names of the fields given (`id`, `type`, `address`, ...), in schema order.
    pub fn fields(&self) -> Vec<&'static str> {
        let given = [
            ("id", self.id.is_some()),
            ("uuid", self.uuid.is_some()),
            ("type", self.conn_type.is_some()),
            ("interface", self.interface.is_some()),
            ("ssid", self.ssid.is_some()),
            ("gateway", self.gateway.is_some()),
            ("domain", self.domain.is_some()),
            ("address", self.address.is_some()),
        ];
        given
            .into_iter()
            .filter_map(|(name, on)| on.then_some(name))
            .collect()
    }
}

/// What is known about a link, as [`LinkMatch::matches`] sees it (filled in by the link
/// source: NetworkManager's active connection, or the netlink default-route interface).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    /// Connection id (NetworkManager's name for it); the interface name under netlink.
    pub id: String,
    /// Connection uuid; empty under netlink.
    pub uuid: String,
    /// Connection type, e.g. `802-3-ethernet`; under netlink the interface's kind (`ethernet`,
    /// `wifi`, `wwan`, `ppp`, `veth`, `wireguard`, `tun`, ...).
    pub conn_type: String,
    /// Network interface, e.g. `eth0`.
    pub interface: String,
    /// Wi-Fi network name, if it is a Wi-Fi link.
    pub ssid: Option<String>,
    /// Default gateway address, if known.
    pub gateway: Option<String>,
    /// DNS search domains.
    pub domains: Vec<String>,
    /// The link's own addresses (IPv4 and IPv6, global and site scope).
    pub addresses: Vec<IpAddr>,
    /// Whether the link is metered.
    pub metered: bool,
}

/// `[[relay]]`: an SMTP server we submit mail to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// `name`: `[a-z0-9][a-z0-9._-]*`, unique among relays; users' `routes` refer to it.
    pub name: RelayName,
    /// `host`: host name or address.
    pub host: String,
    /// `port`: default by `tls` (see [`TlsMode::default_port`]).
    pub port: u16,
    /// `tls`: required.
    pub tls: TlsMode,
    /// `helo`: the name we give in EHLO/HELO; `None` = this machine's host name.
    pub helo: Option<String>,
    /// `username` with `password_secret` or `password_command`: how to log in (SMTP AUTH);
    /// `None` for a relay that takes mail without.
    pub auth: Option<Auth>,
    /// `dangerous_plaintext_auth = true`: allows AUTH on a connection without TLS to a relay
    /// that is not on this machine (the password crosses the network in clear). Only with
    /// `tls = "none"`; without it such an AUTH is refused.
    pub dangerous_plaintext_auth: bool,
    /// `ca_file`: an extra CA certificate (PEM) to trust besides the system store. A relative
    /// path in the file is taken relative to the config file's directory.
    pub ca_file: Option<PathBuf>,
    /// `timeout`: per SMTP stage. Default 60 s.
    pub timeout: Duration,
}

impl Relay {
    /// `timeout` when not given.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
}

/// `[[relay]] username`, `auth` and the secret's source: how we log in to a relay.
///
/// The parser pairs [`Secret::OAuth2`] only with a bearer mechanism ([`Mechanism::Xoauth2`],
/// [`Mechanism::OAuthBearer`]); with those, a [`Secret::Keyring`] or [`Secret::Command`] gives
/// an access token made elsewhere (a helper such as oama or pizauth) rather than a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// `username`: the account name on the relay.
    pub username: String,
    /// `auth`: the SASL mechanism. Default [`Mechanism::Password`].
    pub mechanism: Mechanism,
    /// Where the password or token comes from.
    pub secret: Secret,
}

/// `[[relay]] auth`: how the relay is shown who we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mechanism {
    /// `"password"`: AUTH PLAIN, or LOGIN when only that is offered (the default).
    #[default]
    Password,
    /// `"xoauth2"`: Google's and Microsoft's SASL XOAUTH2 with an OAuth2 access token.
    Xoauth2,
    /// `"oauthbearer"`: SASL OAUTHBEARER (RFC 7628) with an OAuth2 access token.
    OAuthBearer,
}

impl Mechanism {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Password => "password",
            Mechanism::Xoauth2 => "xoauth2",
            Mechanism::OAuthBearer => "oauthbearer",
        }
    }

    /// Whether it sends an OAuth2 bearer token rather than a password.
    pub fn is_bearer(self) -> bool {
        !matches!(self, Mechanism::Password)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a relay's password or token comes from: exactly one of `password_secret`,
/// `password_command` and `[relay.oauth2]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// `password_secret = { service = "smtp", username = "bob" }`: the password is the secret
    /// of the item with these attributes in the Secret Service (the desktop keyring, as
    /// `secret-tool lookup service smtp username bob` finds it).
    Keyring(BTreeMap<String, String>),
    /// `password_command`: run with `sh -c`; the first line of its stdout is the password
    /// (or, with a bearer mechanism, the access token).
    Command(String),
    /// `[relay.oauth2]`: access tokens come from an OAuth2 provider, by a refresh token that
    /// `linkrelay login` obtained.
    OAuth2(OAuth2),
}

/// `[relay.oauth2]`: the OAuth2 provider that issues the relay's access tokens, and where the
/// refresh token is kept. A `provider` preset fills in the endpoints and scopes; keys given
/// beside it override the preset's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2 {
    /// `provider`: the preset used, if any.
    pub provider: Option<Provider>,
    /// `authorization_url`: where the browser logs in (authorization code grant). `None`: no
    /// browser login.
    pub authorization_url: Option<String>,
    /// `token_url`: where codes and refresh tokens are exchanged for access tokens.
    pub token_url: String,
    /// `device_url`: the device authorization endpoint (RFC 8628). `None`: no device login.
    pub device_url: Option<String>,
    /// `revocation_url`: where `linkrelay logout` revokes the refresh token (RFC 7009), if the
    /// provider has one.
    pub revocation_url: Option<String>,
    /// `scopes`: what the tokens allow, e.g. `["https://mail.google.com/"]`.
    pub scopes: Vec<String>,
    /// `client_id`: the user's own client registration with the provider.
    pub client_id: String,
    /// `client_secret_command`: run with `sh -c`; its first line is the client secret (for
    /// providers that want one even from a desktop client, such as Google).
    pub client_secret_command: Option<String>,
    /// `login`: the grant `linkrelay login` uses when given neither `--device` nor
    /// `--browser`. Default: the provider's ([`Provider::default_login`]), else device when
    /// there is a `device_url`.
    pub login: LoginFlow,
    /// The host name of the loopback redirect of a browser login: `127.0.0.1`, or `localhost`
    /// for Microsoft, whose app registrations take only that.
    pub redirect_host: &'static str,
    /// `token_file`: where the refresh token is kept. Default: the desktop keyring.
    pub token_store: TokenStore,
}

/// `[relay.oauth2] provider`: a preset for a well-known provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// `"google"`: Gmail and Google Workspace.
    Google,
    /// `"microsoft"`: Microsoft 365 and Outlook.com (Exchange Online), in the tenant given by
    /// `tenant` (default `common`).
    Microsoft,
}

impl Provider {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Google => "google",
            Provider::Microsoft => "microsoft",
        }
    }

    /// The login grant that works with this provider's mail scopes: Google allows its mail
    /// scope only to the browser (authorization code) grant; Microsoft allows the device grant.
    pub fn default_login(self) -> LoginFlow {
        match self {
            Provider::Google => LoginFlow::Browser,
            Provider::Microsoft => LoginFlow::Device,
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How `linkrelay login` obtains the first tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFlow {
    /// The device authorization grant (RFC 8628): a code to enter on any device's browser.
    Device,
    /// The authorization code grant with PKCE and a loopback redirect (RFC 8252), in this
    /// machine's browser.
    Browser,
}

impl LoginFlow {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            LoginFlow::Device => "device",
            LoginFlow::Browser => "browser",
        }
    }
}

/// Where a relay's OAuth2 refresh token is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenStore {
    /// The desktop keyring (Secret Service), in an item whose attributes name the relay and
    /// the account (the default).
    Keyring,
    /// `token_file`: a file of mode 0600. A relative path in the config is taken relative to
    /// the config file's directory.
    File(PathBuf),
}

/// `[[relay]] tls`: how the connection to a relay is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `"starttls"`: plain connection, then STARTTLS, which is required (never downgrades).
    Starttls,
    /// `"tls"`: TLS from the first byte ("implicit TLS", "SMTPS").
    Tls,
    /// `"none"`: no TLS at all.
    None,
}

impl TlsMode {
    /// The word used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Starttls => "starttls",
            TlsMode::Tls => "tls",
            TlsMode::None => "none",
        }
    }

    /// The port used when `port` is not given: 587, 465 or 25.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
            TlsMode::None => 25,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[user]]`: a person or identity with their own outbox and routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `name`: `[a-z0-9][a-z0-9._-]*`, unique among users; also the outbox directory name.
    pub name: UserName,
    /// `from`: globs on the envelope sender, case-insensitive.
    pub from: Vec<String>,
    /// `default`: chosen when no user's `from` matches.
    pub default: bool,
    /// `routes`: link name -> relays tried in order. An empty list means: hold mail on that
    /// link.
    pub routes: BTreeMap<LinkName, Vec<RelayName>>,
    /// `routes`' `"*"` entry: the relays for any link not listed in [`User::routes`]. `None`
    /// when there is no `"*"` entry; an empty list holds mail.
    pub other_links: Option<Vec<RelayName>>,
}

impl User {
    /// The relays to try, in order, on the link named `link_name`: its own entry in `routes`,
    /// else the `"*"` entry, else `None` (no relay for this link).
    pub fn relays_for(&self, link_name: &str) -> Option<&[RelayName]> {
        self.routes
            .get(link_name)
            .or(self.other_links.as_ref())
            .map(Vec::as_slice)
    }

    /// Every relay this user's routes name, on any link (with repeats).
    pub fn all_relays(&self) -> impl Iterator<Item = &RelayName> {
        self.routes.values().chain(&self.other_links).flatten()
    }

    /// Whether one of this user's `from` globs matches the envelope sender (case-insensitive).
    pub fn matches_sender(&self, sender: &str) -> bool {
        self.from.iter().any(|p| glob::matches(p, sender, true))
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    ///
    /// Besides [`Config::parse`]'s checks, the file itself must be safe to trust: a file
    /// that another user could write (mode `g+w`/`o+w`, or owned by another user than the
    /// reader or root) is refused, since it decides which commands run and where mail goes;
    /// a file that others can read and that names credentials (`username`) is refused too.
    ///
    /// The file is opened without blocking and must be a regular file of at most
    /// [`MAX_CONFIG_SIZE`] bytes (a FIFO would otherwise hang the caller until someone writes
    /// to it); bytes that are not UTF-8 are an error at their line and column.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read::config_text(path)?;
        let config = Config::parse(&text, path)?;
        perms::check(path, &text, &config).map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// Validates config `text`; `origin` is the file name used in diagnostics (and as
    /// [`Config::path`]; relative `ca_file`s are taken relative to its directory).
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        parse::parse(text, origin).map_err(ConfigError::Invalid)
    }

    /// Validates `text` as one `[[relay]]` table and nothing else, by the rules of the file
    /// (an inline password is refused, ...): how the agent takes a relay that is not in the
    /// config yet (`ProbeRelay`).
    pub fn parse_relay(text: &str, origin: &Path) -> Result<Relay, ConfigError> {
        parse::parse_relay(text, origin).map_err(ConfigError::Invalid)
    }

    /// The config used when there is no file: no links, no relays, one user `default` with
    /// `from = ["*"]` (so all mail is held with "no relay"), default agent and retry settings.
    pub fn embedded_default() -> Config {
        Config {
            path: None,
            agent: AgentSettings::default(),
            retry: RetrySettings::default(),
            notify: NotifySettings::default(),
            submission: SubmissionSettings::default(),
            outbox: OutboxSettings::default(),
            setup: SetupSettings::default(),
            links: Vec::new(),
            relays: Vec::new(),
            users: vec![User {
                name: "default".into(),
                from: vec!["*".to_owned()],
                default: true,
                routes: BTreeMap::new(),
                other_links: None,
            }],
            notes: Vec::new(),
        }
    }

    /// The first link rule, in file order, that matches `facts`.
    pub fn match_link(&self, facts: &LinkFacts) -> Option<&LinkRule> {
        self.links.iter().find(|l| l.matcher.matches(facts))
    }

    /// The user whose mail this is: the first user (in file order) one of whose `from` globs
    /// matches `sender`, else the [default user](Config::default_user).
    pub fn user_for_sender(&self, sender: &str) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.matches_sender(sender))
            .or_else(|| self.default_user())
    }

    /// The user marked `default = true`, or, if none is, the only user.
    pub fn default_user(&self) -> Option<&User> {
        self.users
            .iter()
            .find(|u| u.default)
            .or(match &self.users[..] {
                [only] => Some(only),
                _ => None,
            })
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The relay named `name`.
    pub fn relay(&self, name: &str) -> Option<&Relay> {
        self.relays.iter().find(|r| r.name == name)
    }

    /// The link rule named `name`.
    pub fn link(&self, name: &str) -> Option<&LinkRule> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// Where the config file is by default: `$XDG_CONFIG_HOME/linkrelay/config.toml`, else
/// `$HOME/.config/linkrelay/config.toml`; `None` if neither variable is usable.
pub fn default_config_path() -> Option<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config").map(|d| d.join("linkrelay").join("config.toml"))
}

/// Where the outboxes are by default: `$XDG_DATA_HOME/linkrelay`, else
/// `$HOME/.local/share/linkrelay`; `None` if neither variable is usable.
pub fn default_data_dir() -> Option<PathBuf> {
    xdg_dir("XDG_DATA_HOME", ".local/share").map(|d| d.join("linkrelay"))
}

/// The submission listener's unix socket: `$XDG_RUNTIME_DIR/linkrelay/submission.sock`;
/// `None` when `XDG_RUNTIME_DIR` is not set to an absolute path.
pub fn submission_socket_path() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(|d| d.join("linkrelay").join("submission.sock"))
}

/// `$var` if it is set to an absolute path (the XDG spec says to ignore relative ones), else
/// `$HOME/fallback` if `HOME` is set to an absolute path.
fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    xdg_dir_from(|name| std::env::var_os(name), var, fallback)
}

/// [`xdg_dir`] with the environment given as a function (for tests).
fn xdg_dir_from(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    var: &str,
    fallback: &str,
) -> Option<PathBuf> {
    let absolute = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(var).or_else(|| absolute("HOME").map(|home| home.join(fallback)))
}
