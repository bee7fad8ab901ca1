//! One flusher task per user: takes the user's route, walks the outbox in order and records
//! every outcome durably before the next message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use linkrelay_config::{Relay, RetrySettings};
use linkrelay_outbox::{Counts, Folder, MessageState, Outbox, RecipientStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::backoff::retry_delay;
use crate::memory::RelayMemory;
use crate::outcome::Outcome;
use crate::router::Route;
use crate::smtp::{Session, Verdict};

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The route a flusher follows, with the link it was decided for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRoute {
    /// Link rule name (or the link's id when no rule matched), for relay memory.
    pub link: String,
    /// The router's decision.
    pub route: Route,
}

/// Everything a flusher needs that can change on reload.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    /// Relays by name.
    pub relays: HashMap<String, Relay>,
    /// Backoff and lifetime.
    pub retry: RetrySettings,
}

/// A request to flush.
#[derive(Debug, Default)]
pub struct FlushRequest {
    /// Ignore `next_attempt` (user asked, or the route changed).
    pub force: bool,
    /// Told when the batch is over.
    pub done: Option<oneshot::Sender<BatchResult>>,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchResult {
    /// Messages delivered in this batch.
    pub sent: u32,
    /// Messages still queued.
    pub remaining: u32,
}

/// What a flusher tells the agent (which turns it into D-Bus signals and properties).
#[derive(Debug, Clone)]
pub enum FlushEvent {
    /// A message left the queue delivered.
    Sent {
        /// User.
        user: String,
        /// Message id.
        id: String,
        /// Relay that took it.
        relay: String,
        /// Its reply.
        reply: String,
    },
    /// A message stays queued until `next_attempt`.
    Deferred {
        /// User.
        user: String,
        /// Message id.
        id: String,
        /// Why.
        reason: String,
        /// Unix seconds.
        next_attempt: u64,
    },
    /// A message moved to failed/.
    Failed {
        /// User.
        user: String,
        /// Message id.
        id: String,
        /// Why.
        reason: String,
    },
    /// A relay refused us on a link.
    RelayRefused {
        /// User.
        user: String,
        /// Relay.
        relay: String,
        /// Link.
        link: String,
        /// The reply.
        reply: String,
    },
    /// A batch ended.
    Finished {
        /// User.
        user: String,
        /// Result.
        result: BatchResult,
        /// Outbox counts afterwards.
        counts: Counts,
        /// Earliest unix second at which a deferred message is due, if any.
        next_due: Option<u64>,
    },
}

/// Handles to a running flusher.
pub struct FlusherHandle {
    /// Where to send flush requests.
    pub requests: mpsc::UnboundedSender<FlushRequest>,
    /// The route it follows.
    pub route: watch::Sender<UserRoute>,
    /// Settings it uses.
    pub settings: watch::Sender<Arc<FlushSettings>>,
}

/// Starts the flusher of `user`.
pub fn spawn(
    user: String,
    outbox: Outbox,
    route: UserRoute,
    settings: Arc<FlushSettings>,
    memory: Arc<Mutex<RelayMemory>>,
    events: mpsc::UnboundedSender<FlushEvent>,
) -> FlusherHandle {
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (route_tx, route_rx) = watch::channel(route);
    let (settings_tx, settings_rx) = watch::channel(settings);
    let flusher = Flusher {
        user,
        outbox,
        route: route_rx,
        settings: settings_rx,
        memory,
        events,
        passwords: HashMap::new(),
    };
    tokio::spawn(flusher.run(req_rx));
    FlusherHandle {
        requests: req_tx,
        route: route_tx,
        settings: settings_tx,
    }
}

struct Flusher {
    user: String,
    outbox: Outbox,
    route: watch::Receiver<UserRoute>,
    settings: watch::Receiver<Arc<FlushSettings>>,
    memory: Arc<Mutex<RelayMemory>>,
    events: mpsc::UnboundedSender<FlushEvent>,
    passwords: HashMap<String, String>,
}

/// One open session and the relay it belongs to.
struct Open {
    relay: String,
    session: Session,
}

impl Flusher {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<FlushRequest>) {
        while let Some(first) = requests.recv().await {
            // Coalesce everything that queued up meanwhile into one batch.
            let mut force = first.force;
            let mut waiters: Vec<_> = first.done.into_iter().collect();
            while let Ok(more) = requests.try_recv() {
                force |= more.force;
                waiters.extend(more.done);
            }
            let result = self.batch(force).await;
            for w in waiters {
                let _ = w.send(result);
            }
        }
    }

    fn emit(&self, event: FlushEvent) {
        let _ = self.events.send(event);
    }

    async fn batch(&mut self, force: bool) -> BatchResult {
        for ingested in self.outbox.ingest_new() {
            debug!(user = %self.user, ?ingested, "ingested from new/");
        }
        let route = self.route.borrow_and_update().clone();
        let settings = self.settings.borrow_and_update().clone();
        let messages = match self.outbox.list(Folder::Queue) {
            Ok(m) => m,
            Err(e) => {
                warn!(user = %self.user, error = %e, "cannot list the outbox");
                Vec::new()
            }
        };
        let mut result = BatchResult::default();
        let mut next_due: Option<u64> = None;
        let mut open: Option<Open> = None;

        if let Route::Send { relays, max_size } = &route.route {
            for mut msg in messages {
                if self.route.has_changed().unwrap_or(false) {
                    debug!(user = %self.user, "route changed mid-flush; stopping this batch");
                    break;
                }
                let t = now();
                if !force && msg.next_attempt > t {
                    next_due = min_some(next_due, msg.next_attempt);
                    continue;
                }
                if max_size.is_some_and(|max| msg.size > max) {
                    continue; // waits for an unmetered link; status says why
                }
                let outcome = self
                    .deliver(&mut msg, &route.link, relays, &settings, &mut open)
                    .await;
                match outcome {
                    Done::Sent => result.sent += 1,
                    Done::Deferred(at) => next_due = min_some(next_due, at),
                    Done::Failed => {}
                }
            }
        }
        if let Some(o) = open.take() {
            o.session.close().await;
        }
        let counts = self.outbox.counts().unwrap_or(Counts {
            queued: 0,
            failed: 0,
            sent: 0,
        });
        result.remaining = counts.queued as u32;
        self.emit(FlushEvent::Finished {
            user: self.user.clone(),
            result,
            counts,
            next_due,
        });
        result
    }

    async fn password_for(&mut self, relay: &Relay) -> Result<Option<String>, String> {
        if let Some(p) = self.passwords.get(&relay.name) {
            return Ok(Some(p.clone()));
        }
        let p = crate::password::fetch(relay).await?;
        if let Some(p) = &p {
            self.passwords.insert(relay.name.clone(), p.clone());
        }
        Ok(p)
    }

    /// Tries the route's relays for one message and records the result.
    async fn deliver(
        &mut self,
        msg: &mut MessageState,
        link: &str,
        relays: &[String],
        settings: &FlushSettings,
        open: &mut Option<Open>,
    ) -> Done {
        let t = now();
        let data = match self.outbox.read_message(Folder::Queue, &msg.id) {
            Ok(d) => d,
            Err(e) => {
                msg.failure = Some(format!("cannot read the message: {e}"));
                return self.fail(msg);
            }
        };
        let order = lock(&self.memory).order(link, relays, t);
        let mut last: Option<(String, Verdict)> = None;
        let mut tried_any = false;

        for relay_name in &order {
            let Some(relay) = settings.relays.get(relay_name) else {
                continue; // config validation makes this unreachable
            };
            tried_any = true;
            // Reuse the open session when it is for this relay and still healthy.
            if open
                .as_ref()
                .is_some_and(|o| o.relay != *relay_name || !o.session.is_usable())
                && let Some(o) = open.take()
            {
                o.session.close().await;
            }
            if open.is_none() {
                let password = match self.password_for(relay).await {
                    Ok(p) => p,
                    Err(e) => {
                        last = Some((
                            relay_name.clone(),
                            Verdict {
                                stage: crate::outcome::Stage::Auth,
                                code: None,
                                text: e,
                                outcome: Outcome::Deferred,
                            },
                        ));
                        continue;
                    }
                };
                match Session::open(relay, password).await {
                    Ok(session) => {
                        *open = Some(Open {
                            relay: relay_name.clone(),
                            session,
                        })
                    }
                    Err(v) => {
                        if v.outcome == Outcome::RelayRefused {
                            self.refused(link, relay_name, &v, settings);
                            // A wrong password may be stale: ask again next time.
                            self.passwords.remove(relay_name);
                        }
                        info!(user = %self.user, relay = %relay_name, reply = %v.describe(), "relay unusable");
                        last = Some((relay_name.clone(), v));
                        continue;
                    }
                }
            }
            let Some(o) = open.as_mut() else { continue };
            let pending: Vec<String> = msg.pending().map(|r| r.addr.clone()).collect();
            let transaction = o.session.send(&msg.from, &pending, &data).await;
            let verdicts = match transaction {
                Ok(tx) => tx.recipients,
                Err(v) => {
                    if v.outcome == Outcome::Failed {
                        msg.last_error = Some(v.describe());
                        msg.failure = Some(v.describe());
                        return self.fail(msg);
                    }
                    if v.outcome == Outcome::RelayRefused {
                        self.refused(link, relay_name, &v, settings);
                    }
                    if v.code.is_none()
                        && let Some(o) = open.take()
                    {
                        o.session.close().await;
                    }
                    last = Some((relay_name.clone(), v));
                    continue;
                }
            };
            let mut any_sent = false;
            let mut refusal: Option<Verdict> = None;
            let mut worst: Option<Verdict> = None;
            for (addr, v) in verdicts {
                let Some(r) = msg.recipients.iter_mut().find(|r| r.addr == addr) else {
                    continue;
                };
                r.reply = Some(v.describe());
                match v.outcome {
                    Outcome::Sent => {
                        r.status = RecipientStatus::Sent;
                        any_sent = true;
                    }
                    Outcome::Failed => r.status = RecipientStatus::Failed,
                    Outcome::RelayRefused => refusal = Some(v.clone()),
                    Outcome::Deferred => {}
                }
                if v.outcome != Outcome::Sent {
                    worst = Some(v);
                }
            }
            msg.last_relay = Some(relay_name.clone());
            if any_sent {
                lock(&self.memory).accepted(link, relay_name);
                msg.sent_via = Some(relay_name.clone());
            }
            if let Some(v) = &refusal {
                self.refused(link, relay_name, v, settings);
            }
            match worst {
                None => {
                    last = None;
                    break;
                }
                Some(v) => {
                    let deferred_only = v.outcome == Outcome::Deferred;
                    last = Some((relay_name.clone(), v));
                    if msg.is_done() || (deferred_only && refusal.is_none()) {
                        break; // nothing left, or this relay asked us to come back later
                    }
                }
            }
        }

        msg.attempts += 1;
        msg.last_attempt = Some(t);
        if let Some((relay, v)) = &last {
            msg.last_error = Some(format!("{relay}: {}", v.describe()));
        }
        if msg.is_done() {
            let delivered = msg
                .recipients
                .iter()
                .any(|r| r.status == RecipientStatus::Sent);
            if delivered {
                msg.sent_at = Some(now());
                let relay = msg.sent_via.clone().unwrap_or_default();
                let reply = msg
                    .recipients
                    .iter()
                    .find(|r| r.status == RecipientStatus::Sent)
                    .and_then(|r| r.reply.clone())
                    .unwrap_or_default();
                if let Err(e) = self.outbox.finish_sent(msg) {
                    warn!(user = %self.user, id = %msg.id, error = %e, "cannot move to sent/");
                    return Done::Deferred(t);
                }
                info!(user = %self.user, id = %msg.id, relay = %relay, "sent");
                self.emit(FlushEvent::Sent {
                    user: self.user.clone(),
                    id: msg.id.clone(),
                    relay,
                    reply,
                });
                return Done::Sent;
            }
            msg.failure = Some(format!(
                "every recipient was refused: {}",
                msg.last_error.clone().unwrap_or_default()
            ));
            return self.fail(msg);
        }

        // Still pending: defer, unless the lifetime is over.
        let age = t.saturating_sub(msg.queued_at);
        if age > settings.retry.lifetime.as_secs() {
            msg.failure = Some(format!(
                "not delivered within {} (lifetime); last: {}",
                humantime::format_duration(settings.retry.lifetime),
                msg.last_error.clone().unwrap_or_default()
            ));
            return self.fail(msg);
        }
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        let mut at =
            t + retry_delay(msg.attempts, settings.retry.min, settings.retry.max, jitter).as_secs();
        if !tried_any {
            // Every relay refused us recently on this link: come back when the first memory ends.
            if let Some(release) = lock(&self.memory).earliest_release(link, relays, t) {
                at = at.min(release.max(t + 1));
            }
            msg.last_error = Some(match relays.first() {
                Some(r) => {
                    let m = lock(&self.memory);
                    let reply = m
                        .refusal(link, r, t)
                        .map(|f| f.reply.clone())
                        .unwrap_or_default();
                    format!(
                        "{r}: refused us on link {link} ({reply}); not retried before the refusal memory ends"
                    )
                }
                None => "no relay".into(),
            });
        }
        msg.next_attempt = at;
        if let Err(e) = self.outbox.update(msg) {
            warn!(user = %self.user, id = %msg.id, error = %e, "cannot record the attempt");
        }
        let reason = msg.last_error.clone().unwrap_or_default();
        info!(user = %self.user, id = %msg.id, %reason, next_attempt = at, "deferred");
        self.emit(FlushEvent::Deferred {
            user: self.user.clone(),
            id: msg.id.clone(),
            reason,
            next_attempt: at,
        });
        Done::Deferred(at)
    }

    fn refused(&self, link: &str, relay: &str, v: &Verdict, settings: &FlushSettings) {
        let until = now() + settings.retry.refusal_memory.as_secs();
        lock(&self.memory).refused(link, relay, until, &v.describe());
        warn!(user = %self.user, relay, link, reply = %v.describe(), "relay refused us on this link");
        self.emit(FlushEvent::RelayRefused {
            user: self.user.clone(),
            relay: relay.to_string(),
            link: link.to_string(),
            reply: v.describe(),
        });
    }

    fn fail(&self, msg: &mut MessageState) -> Done {
        let reason = msg.failure.clone().unwrap_or_else(|| "failed".into());
        if let Err(e) = self.outbox.finish_failed(msg) {
            warn!(user = %self.user, id = %msg.id, error = %e, "cannot move to failed/");
        }
        warn!(user = %self.user, id = %msg.id, %reason, "message failed");
        self.emit(FlushEvent::Failed {
            user: self.user.clone(),
            id: msg.id.clone(),
            reason,
        });
        Done::Failed
    }
}

enum Done {
    Sent,
    Deferred(u64),
    Failed,
}

fn min_some(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Locks relay memory; a poisoned lock (a panic elsewhere) still holds usable data.
pub fn lock(m: &Mutex<RelayMemory>) -> std::sync::MutexGuard<'_, RelayMemory> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
