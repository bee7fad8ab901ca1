//! The `org.linkrelay.Agent1` interface: names, wire types, errors and the client proxy.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use zbus::{DBusError, Type, proxy};

/// The agent's well-known bus name.
pub const AGENT_BUS_NAME: &str = "org.linkrelay.Agent";
/// The object path the agent serves.
pub const AGENT_PATH: &str = "/org/linkrelay/Agent";
/// The checked-in introspection XML of the interface.
pub const AGENT_INTERFACE_XML: &str = include_str!("../org.linkrelay.Agent1.xml");

/// What the router decided for one user on the current link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct RouteInfo {
    /// The user (outbox) name from the config.
    pub user: String,
    /// Relays to try, in order; empty when held.
    pub relays: Vec<String>,
    /// Why mail is held ("no link", "captive portal on link isp-a", ...); empty when sending.
    pub hold: String,
}

/// A relay refusal the agent remembers: the relay is not tried on that link until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct RefusalInfo {
    /// The relay's name in the config.
    pub relay: String,
    /// The link it refused us on (the `[[link]]` rule, else the link's id).
    pub link: String,
    /// The relay's reply ("554 5.7.1 ...").
    pub reply: String,
    /// Unix seconds when the refusal is forgotten and the relay tried again.
    pub until: u64,
}

/// Why one user's mail waits, beyond the route: what `Waits` reports per user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct UserWait {
    /// The user.
    pub user: String,
    /// Relays of the user's route that refuse us on the current link, remembered.
    pub refusals: Vec<RefusalInfo>,
    /// OAuth2 relays of the user's route that wait for `linkrelay login RELAY`.
    pub needs_login: Vec<String>,
    /// The last error of a delivery attempt (connection, TLS, a reply), "" when none since
    /// mail last went out.
    pub last_error: String,
    /// Unix seconds of `last_error`; 0 when none.
    pub last_error_at: u64,
    /// Unix seconds of the next attempt at deferred mail; 0 when none is planned (nothing
    /// deferred, or the route holds the mail).
    pub next_retry: u64,
}

/// Message counts of one user's outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct QueueCount {
    /// The user.
    pub user: String,
    /// Messages waiting in queue/.
    pub queued: u32,
    /// Messages in failed/ (need the user's attention).
    pub failed: u32,
    /// Messages in sent/.
    pub sent: u32,
}

/// The manual override of the router, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct OverrideInfo {
    /// "" (none), "link" (act as if this link were up) or "relay" (send through this relay).
    pub kind: String,
    /// The link or relay name.
    pub name: String,
    /// Unix seconds when it ends; 0 = until cleared.
    pub expires: u64,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct RecipientInfo {
    /// The address.
    pub addr: String,
    /// "pending", "sent" or "failed".
    pub state: String,
    /// The last server reply about it, "" when none.
    pub reply: String,
}

/// One message as `ListQueue` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct MessageInfo {
    /// The message id (unique within the agent).
    pub id: String,
    /// The user whose outbox holds it.
    pub user: String,
    /// "queue" or "failed".
    pub folder: String,
    /// Envelope sender.
    pub from: String,
    /// Recipients with their state.
    pub recipients: Vec<RecipientInfo>,
    /// Size in bytes.
    pub size: u64,
    /// Unix seconds when it was queued.
    pub queued_at: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Unix seconds of the next attempt; 0 = as soon as the route allows.
    pub next_attempt: u64,
    /// The relay of the last attempt, "" when none.
    pub last_relay: String,
    /// What happened last (server reply or error), "" when nothing yet.
    pub last_error: String,
    /// Why it is waiting right now, in words, or why it failed.
    pub status: String,
}

/// One line of the listing `StreamQueue` writes into the pipe it returns: a JSON object on a
/// line of its own (`{"message":{...}}` per message, in the order of `ListQueue`), and last
/// either `{"end":{"count":N}}` or `{"error":{"name":"...","message":"..."}}`. A stream that
/// stops without one of those two was cut short (the agent stopped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueLine {
    /// One message, with the fields of `ListQueue`'s entries.
    Message(MessageInfo),
    /// The listing is complete.
    End {
        /// How many messages were listed.
        count: u64,
    },
    /// The listing stopped because of this error.
    Error {
        /// The D-Bus error name it would have had (`org.linkrelay.Agent1.Error.Io`, ...).
        name: String,
        /// What went wrong.
        message: String,
    },
}

/// Result of a flush for one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct FlushResult {
    /// The user.
    pub user: String,
    /// Messages delivered during this flush.
    pub sent: u32,
    /// Messages still queued afterwards.
    pub remaining: u32,
}

/// What a prune of sent mail did for one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct PruneResult {
    /// The user.
    pub user: String,
    /// Sent messages removed.
    pub removed: u32,
    /// Bytes of message they held.
    pub freed: u64,
    /// Sent messages kept.
    pub kept: u32,
}

/// One step of a relay test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct RelayStep {
    /// "connect", "starttls", "auth", "mail from", "rcpt to".
    pub stage: String,
    /// "ok", "failed" or "skipped".
    pub state: String,
    /// The server's reply or what happened, one line.
    pub text: String,
}

/// What `TestRelay` found out, without sending anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct RelayTest {
    /// The relay's name in the config.
    pub relay: String,
    /// host:port.
    pub address: String,
    /// Its `tls` setting.
    pub tls: String,
    /// The link the agent is on (its `[[link]]` name, "" when none matches or none is up).
    pub link: String,
    /// The users whose route on this link lists this relay.
    pub routed_for: Vec<String>,
    /// The steps, in order.
    pub steps: Vec<RelayStep>,
    /// The extensions the relay offers (EHLO lines), on the secured connection when there is
    /// one; empty when it could not be reached.
    pub offers: Vec<String>,
    /// Whether the connection was encrypted.
    pub encrypted: bool,
    /// "yes" (it accepted a recipient elsewhere from us), "no" (it refused to relay for us
    /// here), "unknown" (the test did not get that far, or the answer says nothing either way).
    pub may_relay: String,
    /// The answer in one sentence.
    pub verdict: String,
}

/// A relay's last answer on a link, as `LinkHistory` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct RelayAnswer {
    /// The relay's name in the config (or the name a `ProbeRelay` gave it).
    pub relay: String,
    /// Whether it took mail for elsewhere from us (`false`: it refused to relay for us).
    pub accepted: bool,
    /// Unix seconds of the answer.
    pub at: u64,
    /// The server's reply to a refusal; "" for an acceptance.
    pub reply: String,
}

/// A link relays answered on, as `LinkHistory` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SeenLink {
    /// The link's identity: NetworkManager's connection uuid, else its id (the interface
    /// under netlink).
    pub key: String,
    /// What the link looked like: id, uuid, type, interface, gateway, ssid, domains (the keys
    /// of the `Link` property; empty ones left out).
    pub facts: HashMap<String, String>,
    /// Each relay's last answer there.
    pub answers: Vec<RelayAnswer>,
}

/// Errors the agent returns, as D-Bus error names `org.linkrelay.Agent1.Error.*`.
#[derive(Debug, DBusError, PartialEq)]
#[zbus(prefix = "org.linkrelay.Agent1.Error")]
pub enum AgentError {
    /// A D-Bus level error (transport, unknown method, ...).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No user of that name in the config.
    UnknownUser(String),
    /// No message with that id in any outbox.
    UnknownId(String),
    /// No link rule of that name in the config.
    UnknownLink(String),
    /// No relay of that name in the config.
    UnknownRelay(String),
    /// An argument is malformed (bad id, too long, bad kind...).
    InvalidArgument(String),
    /// The caller may not change this agent's state.
    AccessDenied(String),
    /// The config file is broken; the old config keeps running.
    ConfigInvalid(String),
    /// Reading or writing the outbox failed.
    Io(String),
}

/// Client side of `org.linkrelay.Agent1`. See `org.linkrelay.Agent1.xml` for the documentation
/// of each member.
#[proxy(
    interface = "org.linkrelay.Agent1",
    default_service = "org.linkrelay.Agent",
    default_path = "/org/linkrelay/Agent"
)]
pub trait Agent {
    /// Sets an override: `kind` "link" or "relay", for `seconds` (0 = until cleared).
    fn set_override(&self, kind: &str, name: &str, seconds: u64) -> zbus::Result<()>;
    /// Clears the override.
    fn clear_override(&self) -> zbus::Result<()>;
    /// Flushes one user's outbox ("" = all); with `wait`, replies when done.
    fn flush(&self, user: &str, wait: bool) -> zbus::Result<Vec<FlushResult>>;
    /// Tells the agent mail was queued for a user ("" = all); respects retry delays.
    fn wake(&self, user: &str) -> zbus::Result<()>;
    /// Lists queued and failed messages of one user ("" = all).
    fn list_queue(&self, user: &str) -> zbus::Result<Vec<MessageInfo>>;
    /// The same listing streamed: returns the read end of a pipe carrying [`QueueLine`]s as
    /// JSON lines, so neither side holds the whole queue at once.
    fn stream_queue(&self, user: &str) -> zbus::Result<zbus::OwnedFd>;
    /// Makes a message due now (queued) or puts it back in the queue (failed).
    fn retry(&self, id: &str) -> zbus::Result<()>;
    /// Deletes a queued, failed or sent message.
    fn drop(&self, id: &str) -> zbus::Result<()>;
    /// The user whose outbox holds message `id` (queued, failed or sent).
    fn message_user(&self, id: &str) -> zbus::Result<String>;
    /// Removes the sent mail of a user ("" = all) that `[outbox] keep_sent` and
    /// `keep_sent_size` no longer keep.
    fn prune(&self, user: &str) -> zbus::Result<Vec<PruneResult>>;
    /// Re-reads the config file; on error the old config stays.
    fn reload(&self) -> zbus::Result<()>;
    /// Connects to a relay as a flush would (TLS, AUTH), asks MAIL FROM `from` and RCPT TO
    /// `to` and resets: sends nothing. "" picks defaults.
    fn test_relay(&self, relay: &str, from: &str, to: &str) -> zbus::Result<RelayTest>;
    /// Tests a relay given by its settings (one `[[relay]]` table in TOML, as in the config
    /// file; never a password) like `test_relay`.
    fn probe_relay(&self, relay: &str, from: &str, to: &str) -> zbus::Result<RelayTest>;
    /// Every link relays answered on, with each relay's last answer there.
    fn link_history(&self) -> zbus::Result<Vec<SeenLink>>;

    /// The agent's version.
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    /// The link source in use: "networkmanager", "netlink" or "none".
    #[zbus(property)]
    fn source(&self) -> zbus::Result<String>;
    /// What is wrong with the link source, and how to fix it; "" when fine.
    #[zbus(property)]
    fn source_problem(&self) -> zbus::Result<String>;
    /// The current link as key/value strings; empty when no link is up.
    #[zbus(property)]
    fn link(&self) -> zbus::Result<HashMap<String, String>>;
    /// The route of each user.
    #[zbus(property)]
    fn routes(&self) -> zbus::Result<Vec<RouteInfo>>;
    /// Why each user's mail waits: remembered refusals, relays that need a login, the last
    /// error and the next retry.
    #[zbus(property)]
    fn waits(&self) -> zbus::Result<Vec<UserWait>>;
    /// The override, if any.
    #[zbus(property, name = "Override")]
    fn override_(&self) -> zbus::Result<OverrideInfo>;
    /// Outbox counts of each user.
    #[zbus(property)]
    fn queue(&self) -> zbus::Result<Vec<QueueCount>>;
    /// The config file in use ("" = embedded default).
    #[zbus(property)]
    fn config_path(&self) -> zbus::Result<String>;
    /// The error of the last failed reload; "" when the file in use is the file on disk.
    #[zbus(property)]
    fn config_error(&self) -> zbus::Result<String>;
    /// What the running config asks for that is not in force, each with why; empty when all
    /// of it is.
    #[zbus(property)]
    fn config_not_in_force(&self) -> zbus::Result<Vec<String>>;

    /// A user's route changed.
    #[zbus(signal)]
    fn route_changed(&self, user: &str, relays: Vec<String>, hold: &str) -> zbus::Result<()>;
    /// A message was delivered to every recipient that will ever take it.
    #[zbus(signal)]
    fn message_sent(&self, user: &str, id: &str, relay: &str, reply: &str) -> zbus::Result<()>;
    /// A message waits for a later attempt.
    #[zbus(signal)]
    fn message_deferred(
        &self,
        user: &str,
        id: &str,
        reason: &str,
        next_attempt: u64,
    ) -> zbus::Result<()>;
    /// A message moved to failed/.
    #[zbus(signal)]
    fn message_failed(&self, user: &str, id: &str, reason: &str) -> zbus::Result<()>;
    /// A relay refused us on this link (the message is kept and another relay tried).
    #[zbus(signal)]
    fn relay_refused(&self, user: &str, relay: &str, link: &str, reply: &str) -> zbus::Result<()>;
    /// A flush of one user finished.
    #[zbus(signal)]
    fn flush_finished(&self, user: &str, sent: u32, remaining: u32) -> zbus::Result<()>;
}
