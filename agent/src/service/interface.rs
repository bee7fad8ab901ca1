//! The `org.linkrelay.Agent1` interface as served: a thin shim. Properties are read from a
//! snapshot the event loop publishes; methods check the caller, validate their arguments and
//! send a command to the event loop, which owns all state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use linkrelay_config::{Config, Relay, RelayName};
use linkrelay_dbus::agent::{
    AgentError, FlushResult, MessageInfo, OverrideInfo, PruneResult, QueueCount, RelayTest,
    RouteInfo, SeenLink, UserWait,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{Connection, interface};

use crate::router::Override;
use crate::service::listing::Listing;

/// Longest string argument accepted (names, ids): anything longer is hostile or a mistake.
const MAX_ARG: usize = 256;
/// Longest `[[relay]]` table `ProbeRelay` takes.
const MAX_RELAY_TOML: usize = 4096;
/// Queue listings served at once; more callers wait for a slot.
const MAX_LISTINGS: usize = 4;

/// What the properties show; written by the event loop only.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Link source in use.
    pub source: String,
    /// Link source problem.
    pub source_problem: String,
    /// Current link.
    pub link: HashMap<String, String>,
    /// Route per user.
    pub routes: Vec<RouteInfo>,
    pub override_info: Option<OverrideInfo>,
    /// Queue counts.
    pub queue: Vec<QueueCount>,
    /// Config in use.
    pub config_path: String,
    /// Last reload error.
    pub config_error: String,
    /// What the running config asks for that is not in force, each with why.
    pub not_in_force: Vec<String>,
    /// Why each user's mail waits, beyond the route.
    pub waits: Vec<UserWait>,
}

/// A reply channel for a command.
pub type Reply<T> = oneshot::Sender<Result<T, AgentError>>;

/// What the interface asks of the event loop.
#[derive(Debug)]
pub enum Command {
    /// Set the override (the loop checks that the link or relay exists).
    SetOverride {
        target: Override,
        /// Duration; 0 = until cleared.
        seconds: u64,
        reply: Reply<()>,
    },
    /// Clear the override.
    ClearOverride { reply: Reply<()> },
    /// Flush a user ("" = all).
    Flush {
        user: String,
        /// Reply when done.
        wait: bool,
        reply: Reply<Vec<FlushResult>>,
    },
    /// Look at a user's outbox now, respecting retry delays.
    Wake {
        /// User ("" = all).
        user: String,
        reply: Reply<()>,
    },
    /// What a listing of queued and failed messages walks (the walk runs off the loop).
    Listing {
        /// User ("" = all).
        user: String,
        reply: Reply<Listing>,
    },
    /// Retry a message.
    Retry { id: String, reply: Reply<()> },
    /// Delete a message.
    Drop { id: String, reply: Reply<()> },
    /// Whose outbox holds a message.
    MessageUser { id: String, reply: Reply<String> },
    /// Prune a user's sent mail ("" = all).
    Prune {
        user: String,
        reply: Reply<Vec<PruneResult>>,
    },
    /// Re-read the config.
    Reload { reply: Reply<()> },
    /// Test a relay without sending.
    TestRelay {
        relay: RelayName,
        /// Envelope sender to try ("" = a default).
        from: String,
        /// Recipient to try ("" = a default).
        to: String,
        reply: Reply<RelayTest>,
    },
    /// Test a relay that is given by its settings, without sending.
    ProbeRelay {
        relay: Box<Relay>,
        /// Envelope sender to try ("" = a default).
        from: String,
        /// Recipient to try ("" = a default).
        to: String,
        reply: Reply<RelayTest>,
    },
    /// The links relays answered on.
    LinkHistory { reply: Reply<Vec<SeenLink>> },
}

/// The served object.
pub struct AgentInterface {
    commands: mpsc::UnboundedSender<Command>,
    published: Arc<Mutex<Published>>,
    owner_uid: u32,
    /// Listings walking the outboxes at once (each holds a blocking thread).
    listings: Arc<Semaphore>,
}

impl AgentInterface {
    /// A new interface sending commands to `commands` and reading `published`.
    pub fn new(commands: mpsc::UnboundedSender<Command>, published: Arc<Mutex<Published>>) -> Self {
        Self {
            commands,
            published,
            owner_uid: rustix::process::geteuid().as_raw(),
            listings: Arc::new(Semaphore::new(MAX_LISTINGS)),
        }
    }

    fn snapshot(&self) -> Published {
        self.published
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Only the agent's own user may talk to it (on a system bus others could try).
    async fn check_caller(&self, conn: &Connection, header: &Header<'_>) -> Result<(), AgentError> {
        let Some(sender) = header.sender() else {
            return Err(AgentError::AccessDenied("no sender".into()));
        };
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let creds = dbus
            .get_connection_credentials(sender.clone().into())
            .await
            .map_err(|e| AgentError::AccessDenied(format!("cannot identify the caller: {e}")))?;
        match creds.unix_user_id() {
            Some(uid) if uid == self.owner_uid => Ok(()),
            Some(uid) => Err(AgentError::AccessDenied(format!(
                "uid {uid} may not use the agent of uid {}",
                self.owner_uid
            ))),
            None => Err(AgentError::AccessDenied("caller has no uid".into())),
        }
    }

    /// Waits for a listing slot, then takes the listing of `user` from the event loop.
    async fn listing(&self, user: String) -> Result<(Listing, OwnedSemaphorePermit), AgentError> {
        let permit = self
            .listings
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AgentError::Io("the agent is shutting down".into()))?;
        let listing = self.ask(|reply| Command::Listing { user, reply }).await?;
        Ok((listing, permit))
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| AgentError::Io("the agent is shutting down".into()))?;
        rx.await
            .map_err(|_| AgentError::Io("the agent is shutting down".into()))?
    }
}

fn bounded(what: &str, value: &str) -> Result<(), AgentError> {
    if value.len() > MAX_ARG {
        return Err(AgentError::InvalidArgument(format!(
            "{what} is longer than {MAX_ARG} bytes"
        )));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(AgentError::InvalidArgument(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

/// The relay `ProbeRelay` was given: TOML with exactly one `[[relay]]` table, checked by the
/// config file's own rules (so an inline password is refused as it is in the file).
fn probe_target(text: &str) -> Result<Relay, AgentError> {
    if text.len() > MAX_RELAY_TOML {
        return Err(AgentError::InvalidArgument(format!(
            "relay is longer than {MAX_RELAY_TOML} bytes"
        )));
    }
    Config::parse_relay(text, std::path::Path::new("ProbeRelay"))
        .map_err(|e| AgentError::InvalidArgument(format!("relay: {e}")))
}

/// SetOverride's `kind` and `name` as the override they ask for: `"link"` names a [[link]]
/// rule, `"relay"` a relay. Any other kind is an InvalidArgument.
fn override_target(kind: &str, name: String) -> Result<Override, AgentError> {
    match kind {
        "link" => Ok(Override::Link(name.into())),
        "relay" => Ok(Override::Relay(name.into())),
        other => Err(AgentError::InvalidArgument(format!(
            "override kind must be \"link\" or \"relay\", not {other:?}"
        ))),
    }
}

#[interface(name = "org.linkrelay.Agent1")]
impl AgentInterface {
    /// Overrides the router. `kind` is "link" (act as if that [[link]] rule matched) or
    /// "relay" (send every user's mail through that relay). `seconds` = 0 lasts until
    /// ClearOverride.
    async fn set_override(
        &self,
        kind: String,
        name: String,
        seconds: u64,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("kind", &kind)?;
        bounded("name", &name)?;
        let target = override_target(&kind, name)?;
        self.ask(|reply| Command::SetOverride {
            target,
            seconds,
            reply,
        })
        .await
    }

    /// Removes the override.
    async fn clear_override(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), AgentError> {
        self.check_caller(conn, &header).await?;
        self.ask(|reply| Command::ClearOverride { reply }).await
    }

    /// Flushes a user's outbox now, ignoring retry delays ("" = every user). With `wait`, the
    /// reply comes when the flush is over and says what was sent and what remains.
    async fn flush(
        &self,
        user: String,
        wait: bool,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<FlushResult>, AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("user", &user)?;
        self.ask(|reply| Command::Flush { user, wait, reply }).await
    }

    /// Tells the agent that mail was queued for a user ("" = every user): it looks at the
    /// outbox now. Unlike Flush it respects retry delays. `linkrelay sendmail` calls it.
    async fn wake(
        &self,
        user: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("user", &user)?;
        self.ask(|reply| Command::Wake { user, reply }).await
    }

    /// Lists the queued and failed messages of a user ("" = every user), each with the reason
    /// it is waiting.
    async fn list_queue(
        &self,
        user: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<MessageInfo>, AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("user", &user)?;
        let (listing, _permit) = self.listing(user).await?;
        tokio::task::spawn_blocking(move || listing.collect())
            .await
            .map_err(|e| AgentError::Io(format!("listing the queue: {e}")))?
    }

    /// The listing of ListQueue, streamed: returns the read end of a pipe into which the agent
    /// writes one JSON object per line, `{"message":{...}}` for each message (the fields of
    /// ListQueue's entries: id, user, folder, from, recipients [addr, state, reply], size,
    /// queued_at, attempts, next_attempt, last_relay, last_error, status), then
    /// `{"end":{"count":N}}`, or `{"error":{"name":...,"message":...}}` if it stopped. Neither
    /// side needs the whole queue in memory; `linkrelay queue` uses it.
    async fn stream_queue(
        &self,
        user: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<zbus::OwnedFd, AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("user", &user)?;
        let (listing, permit) = self.listing(user).await?;
        Ok(listing.stream(permit)?.into())
    }

    /// Makes a queued message due now, or puts a failed one back in the queue.
    async fn retry(
        &self,
        id: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("id", &id)?;
        self.ask(|reply| Command::Retry { id, reply }).await
    }

    /// Deletes a queued, failed or sent message for good.
    async fn drop(
        &self,
        id: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("id", &id)?;
        self.ask(|reply| Command::Drop { id, reply }).await
    }

    /// The user whose outbox holds message `id` (queued, failed or sent): `linkrelay retry` reads
    /// that user's route to say whether the message is held, and why.
    async fn message_user(
        &self,
        id: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<String, AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("id", &id)?;
        self.ask(|reply| Command::MessageUser { id, reply }).await
    }

    /// Removes the sent mail of a user ("" = every user) that `[outbox] keep_sent` and
    /// `keep_sent_size` no longer keep; says per user how many messages and bytes went and
    /// how many messages stay. The agent does the same by itself, at most once an hour.
    async fn prune(
        &self,
        user: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<PruneResult>, AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("user", &user)?;
        self.ask(|reply| Command::Prune { user, reply }).await
    }

    /// Re-reads the config file. A broken file is reported (file:line:col) and the running
    /// config stays in use.
    async fn reload(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<(), AgentError> {
        self.check_caller(conn, &header).await?;
        self.ask(|reply| Command::Reload { reply }).await
    }

    /// Tests relay `relay` from the link that is up, as a flush would use it: connects, says
    /// EHLO, STARTTLS and AUTH as configured, then MAIL FROM `from` and RCPT TO `to` and RSET,
    /// so nothing is sent; says what the relay offers and whether it would relay for us here.
    /// `from` "" is a sender of a user routed through it (else the null sender), `to` ""
    /// an address outside the relay's domains.
    async fn test_relay(
        &self,
        relay: String,
        from: String,
        to: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<RelayTest, AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("relay", &relay)?;
        bounded("from", &from)?;
        bounded("to", &to)?;
        self.ask(|reply| Command::TestRelay {
            relay: relay.into(),
            from,
            to,
            reply,
        })
        .await
    }

    /// Tests a relay that need not be in the config, given by its settings: `relay` is one
    /// [[relay]] table in TOML as the config file has it (name, host, port, tls, username with
    /// password_secret or password_command, ca_file, ...; an inline password is refused). The
    /// test and its answer are those of TestRelay. `linkrelay setup` tries a relay it found
    /// with it before writing it into the config.
    async fn probe_relay(
        &self,
        relay: String,
        from: String,
        to: String,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<RelayTest, AgentError> {
        self.check_caller(conn, &header).await?;
        bounded("from", &from)?;
        bounded("to", &to)?;
        let relay = Box::new(probe_target(&relay)?);
        self.ask(|reply| Command::ProbeRelay {
            relay,
            from,
            to,
            reply,
        })
        .await
    }

    /// Every link relays answered on (in flushes and relay tests), keyed by the link's
    /// identity (NetworkManager's connection uuid, else its id: the interface under netlink);
    /// with its facts (id, uuid, type, interface, gateway, ssid, domains) and each relay's last
    /// answer there: (relay, accepted, unix seconds, the refusal's reply). `linkrelay routes
    /// suggest` reads it.
    async fn link_history(
        &self,
        #[zbus(connection)] conn: &Connection,
        #[zbus(header)] header: Header<'_>,
    ) -> Result<Vec<SeenLink>, AgentError> {
        self.check_caller(conn, &header).await?;
        self.ask(|reply| Command::LinkHistory { reply }).await
    }

    /// The agent's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// The link source in use: "networkmanager", "netlink" or "none".
    #[zbus(property)]
    fn source(&self) -> String {
        self.snapshot().source
    }

    /// What is wrong with the link source and how to fix it; "" when fine.
    #[zbus(property)]
    fn source_problem(&self) -> String {
        self.snapshot().source_problem
    }

    /// The current link: name (matched [[link]] rule, "" if none), id, uuid, type, interface,
    /// gateway, ssid, domains (comma-separated), addresses (comma-separated), metered (yes/no),
    /// connectivity (full/portal/limited/none/unknown). Empty when no link is up. Under netlink
    /// id is the interface name, type its kind (ethernet, wifi, wwan, ppp, veth, ...).
    #[zbus(property)]
    fn link(&self) -> HashMap<String, String> {
        self.snapshot().link
    }

    /// Each user's route: (user, relays in order, hold reason); relays empty when held.
    #[zbus(property)]
    fn routes(&self) -> Vec<RouteInfo> {
        self.snapshot().routes
    }

    /// Why each user's mail waits beyond its route: (user, refusals remembered for the relays
    /// of its route on this link [(relay, link, the relay's reply, until unix seconds)],
    /// OAuth2 relays of its route that need `linkrelay login RELAY`, the last error of a
    /// delivery attempt ("" when none since mail last went out), its unix seconds (0 = none),
    /// the next retry of deferred mail in unix seconds (0 = none planned, or the route holds
    /// the mail)).
    #[zbus(property)]
    fn waits(&self) -> Vec<UserWait> {
        self.snapshot().waits
    }

    /// The override: (kind "" | "link" | "relay", name, expires unix seconds or 0).
    #[zbus(property, name = "Override")]
    fn override_(&self) -> OverrideInfo {
        self.snapshot().override_info.unwrap_or(OverrideInfo {
            kind: String::new(),
            name: String::new(),
            expires: 0,
        })
    }

    /// Outbox counts: (user, queued, failed, sent).
    #[zbus(property)]
    fn queue(&self) -> Vec<QueueCount> {
        self.snapshot().queue
    }

    /// The config file in use; "" for the embedded default.
    #[zbus(property)]
    fn config_path(&self) -> String {
        self.snapshot().config_path
    }

    /// Why the last reload failed (file:line:col: ...); "" when the running config is the
    /// file on disk.
    #[zbus(property)]
    fn config_error(&self) -> String {
        self.snapshot().config_error
    }

    /// What the running config asks for that is not in force, each with why (a listen address
    /// that cannot be bound: the port is taken, or needs privileges); empty when all of it is.
    #[zbus(property)]
    fn config_not_in_force(&self) -> Vec<String> {
        self.snapshot().not_in_force
    }

    /// A user's route changed: relays in order, or empty with the reason mail is held.
    #[zbus(signal)]
    pub async fn route_changed(
        emitter: &SignalEmitter<'_>,
        user: &str,
        relays: Vec<String>,
        hold: &str,
    ) -> zbus::Result<()>;

    /// A message was delivered to every recipient and moved to sent/.
    #[zbus(signal)]
    pub async fn message_sent(
        emitter: &SignalEmitter<'_>,
        user: &str,
        id: &str,
        relay: &str,
        reply: &str,
    ) -> zbus::Result<()>;

    /// A message stays queued until `next_attempt` (unix seconds).
    #[zbus(signal)]
    pub async fn message_deferred(
        emitter: &SignalEmitter<'_>,
        user: &str,
        id: &str,
        reason: &str,
        next_attempt: u64,
    ) -> zbus::Result<()>;

    /// A message moved to failed/ (it is bad, a recipient was rejected, or its lifetime ran
    /// out); it needs the user (retry or drop).
    #[zbus(signal)]
    pub async fn message_failed(
        emitter: &SignalEmitter<'_>,
        user: &str,
        id: &str,
        reason: &str,
    ) -> zbus::Result<()>;

    /// A relay refused us on a link; its messages stay queued and other relays are tried.
    #[zbus(signal)]
    pub async fn relay_refused(
        emitter: &SignalEmitter<'_>,
        user: &str,
        relay: &str,
        link: &str,
        reply: &str,
    ) -> zbus::Result<()>;

    /// A flush of a user ended.
    #[zbus(signal)]
    pub async fn flush_finished(
        emitter: &SignalEmitter<'_>,
        user: &str,
        sent: u32,
        remaining: u32,
    ) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probed_relay_is_one_relay_table_without_a_password() {
        let relay = probe_target(
            "[[relay]]\nname = \"isp-a\"\nhost = \"smtp.isp-a.example\"\ntls = \"starttls\"\n",
        )
        .map(|r| (r.name.to_string(), r.host, r.port));
        assert_eq!(
            relay,
            Ok(("isp-a".into(), "smtp.isp-a.example".into(), 587))
        );
        let inline = probe_target(
            "[[relay]]\nname = \"b\"\nhost = \"h\"\ntls = \"tls\"\nusername = \"bob\"\npassword = \"hunter2\"\n",
        );
        match inline {
            Err(AgentError::InvalidArgument(text)) => {
                assert!(text.contains("password"), "{text}");
                assert!(
                    !text.contains("hunter2"),
                    "the password is never repeated: {text}"
                );
            }
            other => panic!("an inline password must be refused: {other:?}"),
        }
        let two = "[[relay]]\nname = \"a\"\nhost = \"h\"\ntls = \"tls\"\n".repeat(2);
        assert!(probe_target(&two).is_err());
        assert!(probe_target(&"#".repeat(MAX_RELAY_TOML + 1)).is_err());
    }

    #[test]
    fn an_override_names_a_link_or_a_relay_and_any_other_kind_is_refused() {
        assert_eq!(
            override_target("link", "isp-a".into()),
            Ok(Override::Link("isp-a".into()))
        );
        assert_eq!(
            override_target("relay", "relay-b".into()),
            Ok(Override::Relay("relay-b".into()))
        );
        assert_eq!(
            override_target("Link", "isp-a".into()),
            Err(AgentError::InvalidArgument(
                "override kind must be \"link\" or \"relay\", not \"Link\"".into()
            ))
        );
    }
}
