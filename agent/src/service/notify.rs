//! Desktop notifications (`org.freedesktop.Notifications` on the session bus) about mail that
//! needs the user: a message that failed, or one still queued `[notify] after` after it was
//! queued. Each says why, in the server's words, and the `linkrelay` verb that fixes it. Nothing
//! else is announced: mail that goes out is no news.
//!
//! The notifier is a task of its own, fed by the event loop ([`Notifier::failed`],
//! [`Notifier::queue_changed`]); it reads the queue the way a D-Bus client does, with
//! [`Command::Listing`] and a walk off the loop, so it needs no state of the loop's and never blocks it (a stuck
//! notification daemon only delays notifications). Each message is mentioned once; a newer
//! "waiting" notice of a user replaces the older one. The words are built by pure functions
//! ([`failed_note`], [`waiting_note`], [`advice`]).
//!
//! The proxy is `linkrelay_dbus::notifications`'s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::Duration;

use linkrelay_config::{NotifySettings, RelayName, UserName};
use linkrelay_dbus::agent::{AgentError, MessageInfo};
use linkrelay_dbus::notifications::NotificationsProxy;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zbus::Variant;

use crate::clock::now;
use crate::service::interface::Command;
use crate::service::listing::Listing;

/// The `urgency` hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// 1: normal.
    Normal,
    /// 2: critical (servers keep it until the user dismisses it).
    Critical,
}

/// One notification, before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// One line.
    pub summary: String,
    /// Plain text; escaped for servers that read markup.
    pub body: String,
    pub urgency: Urgency,
    /// The `category` hint.
    pub category: &'static str,
}

/// What to do about a message whose status (as `linkrelay queue` shows it) is `status`.
pub fn advice(status: &str, id: Option<&str>) -> String {
    let retry = match id {
        Some(id) => format!("`linkrelay retry {id}` tries again now"),
        None => "`linkrelay flush` tries again now".to_string(),
    };
    if status.starts_with("held: captive portal") {
        "Log in to the network's portal; the mail goes out by itself afterwards.".into()
    } else if status.starts_with("held: no relay for link")
        || status.starts_with("held: no link")
        || status.starts_with("waiting: ")
    {
        "`linkrelay flush --connect` connects to a network that has a relay for you and sends; \
         `linkrelay override --relay NAME` sends through a relay anyway."
            .into()
    } else if status.starts_with("held: connectivity none")
        || status.starts_with("held: limited connectivity")
    {
        "NetworkManager finds no way to the Internet on this link; the mail goes out by itself once \
         it does. If the relay answers anyway (your ISP's own network), `linkrelay override --link \
         NAME` sends over it; `linkrelay flush --connect` tries another network."
            .into()
    } else if status.starts_with("held: ") && status.contains("metered") {
        "`linkrelay override --link NAME` sends over this metered link anyway; otherwise it waits for another link."
            .into()
    } else if status.starts_with("held: ") {
        "`linkrelay status` shows why mail is held.".into()
    } else {
        format!("{retry}; `linkrelay queue` shows every recipient's last reply.")
    }
}

/// Per user, the queued messages not mentioned yet that have waited `after` seconds at `t`:
/// how many, and the oldest.
type Due = BTreeMap<String, (usize, MessageInfo)>;
/// What a walk found: the messages due per user, and when the next one will be.
type Found = Result<(Due, Option<u64>), AgentError>;

/// Walks `listing` (blocking) for the messages that waited too long. `told` (the messages
/// already mentioned) comes back pruned of those that left the outbox, plus the newly due
/// ones; with them, what is due per user and when the next message will be.
fn find_waiting(
    listing: &Listing,
    told: HashSet<String>,
    after: u64,
    t: u64,
) -> (HashSet<String>, Found) {
    let mut kept = HashSet::new();
    let mut due: Due = BTreeMap::new();
    let mut next: Option<u64> = None;
    let walked = listing.for_each(|m| {
        if told.contains(&m.id) {
            kept.insert(m.id);
            return ControlFlow::Continue(());
        }
        if m.folder != "queue" {
            return ControlFlow::Continue(());
        }
        let at = m.queued_at.saturating_add(after);
        if at > t {
            next = Some(next.map_or(at, |n| n.min(at)));
            return ControlFlow::Continue(());
        }
        kept.insert(m.id.clone());
        match due.get_mut(&m.user) {
            Some((count, oldest)) => {
                *count += 1;
                if m.queued_at < oldest.queued_at {
                    *oldest = m;
                }
            }
            None => {
                due.insert(m.user.clone(), (1, m));
            }
        }
        ControlFlow::Continue(())
    });
    match walked {
        Ok(_) => (kept, Ok((due, next))),
        // Keep what was known: nothing is mentioned twice because of a failed walk.
        Err(e) => (told, Err(e)),
    }
}

/// The notice for a message that moved to failed/.
pub fn failed_note(user: &str, id: &str, reason: &str) -> Note {
    Note {
        summary: format!("Mail from {user} could not be sent"),
        body: format!(
            "{reason}\nThe message is kept. `linkrelay retry {id}` sends it again; `linkrelay drop {id}` deletes it."
        ),
        urgency: Urgency::Critical,
        category: "email.bounced",
    }
}

/// The notice for a relay whose OAuth2 login is needed (its refresh token is missing, or the
/// provider refused it).
pub fn login_note(relay: &str, reason: &str) -> Note {
    Note {
        summary: format!("Relay {relay} needs you to log in"),
        body: format!(
            "{reason}\nRun `linkrelay login {relay}`: the mail waiting for it goes out at once. Nothing is lost meanwhile."
        ),
        urgency: Urgency::Critical,
        category: "email",
    }
}

/// The notice for `n` messages of a user queued for longer than `after`, `oldest` first.
pub fn waiting_note(user: &str, n: usize, oldest: &MessageInfo, after: Duration) -> Note {
    let after = humantime::format_duration(after);
    let summary = if n == 1 {
        format!("Mail from {user} has waited over {after}")
    } else {
        format!("{n} messages from {user} have waited over {after}")
    };
    let first = Some(oldest);
    let status = first.map(|m| m.status.as_str()).unwrap_or_default();
    let id = (n == 1).then(|| first.map(|m| m.id.as_str())).flatten();
    let to = first
        .map(|m| {
            m.recipients
                .iter()
                .map(|r| r.addr.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let what = if n == 1 {
        format!("To {to}: {status}")
    } else {
        format!("The oldest, to {to}: {status}")
    };
    Note {
        summary,
        body: format!("{what}\n{}", advice(status, id)),
        urgency: Urgency::Normal,
        category: "email",
    }
}

/// The notice for something wrong with a user's outbox itself (not one message): what
/// happened, and what it means or what to do.
pub fn problem_note(user: &str, what: &str, advice: &str) -> Note {
    Note {
        summary: format!("linkrelay: the outbox of {user} needs a look"),
        body: format!("{what}\n{advice}"),
        urgency: Urgency::Critical,
        category: "email",
    }
}

/// Escapes text for a server with the `body-markup` capability.
pub fn markup_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// What the event loop tells the notifier.
#[derive(Debug)]
enum Event {
    Failed {
        user: UserName,
        id: String,
        reason: String,
    },
    NeedsLogin {
        relay: RelayName,
        reason: String,
    },
    QueueChanged,
    Settings(NotifySettings),
    Problem(Note),
}

/// The event loop's handle on the notifier task.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Event>,
}

impl Notifier {
    /// Starts the notifier. `session` is the session bus (`None`: no notifications);
    /// `commands` is the event loop's command channel.
    pub fn spawn(
        settings: NotifySettings,
        session: Option<zbus::Connection>,
        commands: mpsc::UnboundedSender<Command>,
    ) -> Notifier {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(settings, session, commands, rx));
        Notifier { tx }
    }

    /// A message moved to failed/.
    pub fn failed(&self, user: &UserName, id: &str, reason: &str) {
        let _ = self.tx.send(Event::Failed {
            user: user.clone(),
            id: id.into(),
            reason: reason.into(),
        });
    }

    /// Something is wrong with a user's outbox (see [`problem_note`]).
    pub fn problem(&self, user: &str, what: &str, advice: &str) {
        let _ = self
            .tx
            .send(Event::Problem(problem_note(user, what, advice)));
    }

    /// A relay needs an OAuth2 login.
    pub fn needs_login(&self, relay: &RelayName, reason: &str) {
        let _ = self.tx.send(Event::NeedsLogin {
            relay: relay.clone(),
            reason: reason.into(),
        });
    }

    /// Something in the outboxes changed: look again (coalesced).
    pub fn queue_changed(&self) {
        let _ = self.tx.send(Event::QueueChanged);
    }

    /// The config was reloaded.
    pub fn settings(&self, settings: NotifySettings) {
        let _ = self.tx.send(Event::Settings(settings));
    }
}

/// How long a burst of queue changes may settle before the queue is read.
const SETTLE: Duration = Duration::from_millis(500);
/// Bound on each call to the notification server.
const CALL_LIMIT: Duration = Duration::from_secs(5);

struct State {
    settings: NotifySettings,
    proxy: Option<NotificationsProxy<'static>>,
    markup: Option<bool>,
    /// Messages already mentioned (failed or waiting); pruned when they leave the outbox.
    told: HashSet<String>,
    /// The last "waiting" notification of each user, replaced by the next.
    waiting_ids: HashMap<String, u32>,
    commands: mpsc::UnboundedSender<Command>,
}

async fn run(
    settings: NotifySettings,
    session: Option<zbus::Connection>,
    commands: mpsc::UnboundedSender<Command>,
    mut rx: mpsc::UnboundedReceiver<Event>,
) {
    let proxy = match session {
        Some(conn) => match NotificationsProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
        {
            Ok(p) => Some(p),
            Err(e) => {
                warn!("desktop notifications unavailable: {e}");
                None
            }
        },
        None => None,
    };
    let mut st = State {
        settings,
        proxy,
        markup: None,
        told: HashSet::new(),
        waiting_ids: HashMap::new(),
        commands,
    };
    // Look at the queue once at start: mail may have waited while the agent was down.
    let mut scan_at = Some(Instant::now() + SETTLE);
    loop {
        let sleep = async {
            match scan_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = rx.recv() => match ev {
                None => return,
                Some(Event::Failed { user, id, reason }) => {
                    st.told.insert(id.clone());
                    if st.settings.enabled {
                        st.show(failed_note(&user, &id, &reason), 0).await;
                    }
                }
                Some(Event::NeedsLogin { relay, reason }) => {
                    if st.settings.enabled {
                        st.show(login_note(&relay, &reason), 0).await;
                    }
                }
                // Turned off: nothing to look for (turning it on again looks at once).
                Some(Event::QueueChanged) if !st.settings.enabled => {}
                // A change never makes mail due before the scan already planned: new mail
                // (and retried mail, whose clock restarts) is due last. So a change matters
                // only when no scan is planned. Rescanning on every change walked the whole
                // queue twice a second during a flush: with 100,000 queued, a core's worth.
                Some(Event::QueueChanged) => {
                    scan_at.get_or_insert_with(|| Instant::now() + SETTLE);
                }
                Some(Event::Problem(note)) => {
                    if st.settings.enabled {
                        st.show(note, 0).await;
                    }
                }
                Some(Event::Settings(s)) => {
                    st.settings = s;
                    scan_at = Some(Instant::now());
                }
            },
            () = sleep => {
                scan_at = st.scan().await.map(|secs| {
                    Instant::now() + Duration::from_secs(secs.saturating_sub(now()))
                });
            }
        }
    }
}

impl State {
    /// Reads the queue, announces what has waited too long, and returns the unix second at
    /// which the next message will have. The queue is walked off the event loop, one message
    /// at a time: only the oldest waiting message of each user is kept.
    async fn scan(&mut self) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Listing {
            user: String::new(),
            reply: tx,
        };
        self.commands.send(cmd).ok()?;
        let listing = match rx.await {
            Ok(Ok(listing)) => listing,
            Ok(Err(e)) => {
                warn!("notifications: cannot list the queue: {e:?}");
                return None;
            }
            Err(_) => return None,
        };
        let after = self.settings.after.as_secs().max(1);
        let told = std::mem::take(&mut self.told);
        let walk = tokio::task::spawn_blocking(move || find_waiting(&listing, told, after, now()));
        let (told, found) = match walk.await {
            Ok(walked) => walked,
            Err(e) => {
                warn!("notifications: listing the queue: {e}");
                return None;
            }
        };
        self.told = told;
        let (due, next) = match found {
            Ok(found) => found,
            Err(e) => {
                warn!("notifications: cannot list the queue: {e:?}");
                return None;
            }
        };
        for (user, (count, oldest)) in due {
            if self.settings.enabled {
                let note = waiting_note(&user, count, &oldest, self.settings.after);
                let replaces = self.waiting_ids.get(&user).copied().unwrap_or(0);
                if let Some(id) = self.show(note, replaces).await {
                    self.waiting_ids.insert(user, id);
                }
            }
        }
        next
    }

    /// Sends `note`; the server's id, or `None` when there is no server.
    async fn show(&mut self, note: Note, replaces: u32) -> Option<u32> {
        let proxy = self.proxy.as_ref()?;
        if self.markup.is_none() {
            let caps = tokio::time::timeout(CALL_LIMIT, proxy.get_capabilities()).await;
            self.markup = Some(matches!(&caps, Ok(Ok(c)) if c.iter().any(|c| c == "body-markup")));
        }
        let body = if self.markup == Some(true) {
            markup_escape(&note.body)
        } else {
            note.body.clone()
        };
        let mut hints = HashMap::new();
        let urgency: u8 = match note.urgency {
            Urgency::Normal => 1,
            Urgency::Critical => 2,
        };
        hints.insert("urgency", Variant::from(urgency));
        hints.insert("category", Variant::from(note.category));
        hints.insert("desktop-entry", Variant::from("linkrelay"));
        let call = proxy.notify(
            "linkrelay",
            replaces,
            "mail-send",
            &note.summary,
            &body,
            &[],
            hints,
            -1,
        );
        match tokio::time::timeout(CALL_LIMIT, call).await {
            Ok(Ok(id)) => {
                info!(summary = %note.summary, "desktop notification");
                Some(id)
            }
            Ok(Err(e)) => {
                // No notification daemon (a headless session): the journal still has it all.
                debug!("desktop notification not shown: {e}");
                self.markup = None;
                None
            }
            Err(_) => {
                warn!("the notification server did not answer within {CALL_LIMIT:?}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use linkrelay_dbus::agent::RecipientInfo;

    use super::*;

    #[test]
    fn a_relay_that_needs_a_login_says_which_command_and_that_nothing_is_lost() {
        let n = login_note(
            "gmail",
            "gmail needs login (linkrelay login gmail): invalid_grant",
        );
        assert_eq!(n.summary, "Relay gmail needs you to log in");
        assert!(n.body.contains("Run `linkrelay login gmail`"), "{}", n.body);
        assert!(n.body.contains("Nothing is lost"), "{}", n.body);
        assert_eq!(n.urgency, Urgency::Critical);
    }

    fn msg(id: &str, to: &str, status: &str) -> MessageInfo {
        MessageInfo {
            id: id.into(),
            user: "bob".into(),
            folder: "queue".into(),
            from: "bob@bob.example".into(),
            recipients: vec![RecipientInfo {
                addr: to.into(),
                state: "pending".into(),
                reply: String::new(),
            }],
            size: 10,
            queued_at: 0,
            attempts: 0,
            next_attempt: 0,
            last_relay: String::new(),
            last_error: String::new(),
            status: status.into(),
        }
    }

    #[test]
    fn a_failure_names_the_reason_and_both_verbs() {
        let n = failed_note("bob", "17.1.2.ab", "550 5.1.1 <x@y>: User unknown");
        assert_eq!(n.summary, "Mail from bob could not be sent");
        assert!(n.body.starts_with("550 5.1.1 <x@y>: User unknown\n"));
        assert!(n.body.contains("`linkrelay retry 17.1.2.ab`"));
        assert!(n.body.contains("`linkrelay drop 17.1.2.ab`"));
        assert_eq!(n.urgency, Urgency::Critical);
    }

    #[test]
    fn waiting_mail_gets_the_verb_for_its_reason() {
        let m = msg("1.2", "x@dest", "held: no relay for link home-wifi");
        let n = waiting_note("bob", 1, &m, Duration::from_secs(3600));
        assert_eq!(n.summary, "Mail from bob has waited over 1h");
        assert!(
            n.body
                .starts_with("To x@dest: held: no relay for link home-wifi\n")
        );
        assert!(n.body.contains("linkrelay flush --connect"), "{}", n.body);

        let d = msg(
            "1.3",
            "y@dest",
            "deferred, next try in 4m: 451 4.3.0 try later",
        );
        let n = waiting_note("bob", 1, &d, Duration::from_secs(90));
        assert!(n.body.contains("`linkrelay retry 1.3`"), "{}", n.body);
        let n = waiting_note("bob", 2, &d, Duration::from_secs(90));
        assert_eq!(n.summary, "2 messages from bob have waited over 1m 30s");
        assert!(n.body.starts_with("The oldest, to y@dest: deferred"));
        assert!(n.body.contains("`linkrelay flush`"), "{}", n.body);
    }

    #[test]
    fn advice_by_reason() {
        assert!(advice("held: captive portal on link cafe", None).contains("portal"));
        assert!(
            advice("waiting: relay-a refuses us on link isp-b (554)", None)
                .contains("flush --connect")
        );
        assert!(advice("held: metered link isp-b holds mail", None).contains("override --link"));
        assert!(advice("held: no link", None).contains("flush --connect"));
        for held in [
            "held: connectivity none on isp-b (ISP-B, veth-b)",
            "held: limited connectivity on isp-a (ISP-A, eth0)",
        ] {
            let said = advice(held, None);
            assert!(said.contains("no way to the Internet"), "{said}");
            assert!(said.contains("override --link"), "{said}");
        }
        assert!(advice("due: sending", Some("9")).contains("linkrelay retry 9"));
    }

    #[test]
    fn markup_is_escaped() {
        assert_eq!(markup_escape("<a> & b"), "&lt;a&gt; &amp; b");
    }
}
