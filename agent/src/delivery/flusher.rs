//! One flusher task per user: takes the user's route, walks the outbox in order and records
//! every outcome durably before the next message.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrelay_config::{Relay, RelayName, RetrySettings, UserName};
use linkrelay_outbox::{
    Counts, Folder, Ingested, Journal, Limits, MessageState, Outbox, OutboxError, RecipientStatus,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::clock::now;
use crate::delivery::backoff::{next_step, retry_delay, route_key};
use crate::delivery::credentials;
use crate::delivery::memory::{LinkKey, RelayMemory, lock};
use crate::delivery::message::Message;
use crate::delivery::outcome::Outcome;
use crate::delivery::smtp::{Session, Verdict};
use crate::router::Route;

/// The route a flusher follows, with the link it was decided for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRoute {
    /// The link the route was decided for, for relay memory.
    pub link: LinkKey,
    /// The router's decision.
    pub route: Route,
}

/// Everything a flusher needs that can change on reload.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    /// Relays by name.
    pub relays: HashMap<RelayName, Relay>,
    /// Backoff and lifetime.
    pub retry: RetrySettings,
    /// What the outbox reads at most (`[outbox]`).
    pub limits: Limits,
}

/// A request to flush.
#[derive(Debug, Default)]
pub struct FlushRequest {
    /// Ignore `next_attempt` (user asked, or the route changed).
    pub force: bool,
    /// Told when the batch is over.
    pub done: Option<oneshot::Sender<BatchResult>>,
    /// Asked only because new mail arrived (inotify): while mail is held and the queue was
    /// walked since the route last changed, taking the new mail in is all there is to do.
    pub arrival: bool,
    /// The user asked (`retry ID`, `flush`, `override`): a relay whose refusal on this link
    /// is remembered is tried once more in this batch.
    pub once_more: bool,
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
        user: UserName,
        id: String,
        /// Relay that took it, as the message's state records it (`sent_via`).
        relay: String,
        reply: String,
    },
    /// A message stays queued until `next_attempt`.
    Deferred {
        user: UserName,
        id: String,
        reason: String,
        /// Unix seconds.
        next_attempt: u64,
    },
    /// A message moved to failed/.
    Failed {
        user: UserName,
        id: String,
        reason: String,
    },
    /// A relay's OAuth2 refresh token is missing or was refused: its mail waits for
    /// `linkrelay login` (sent once, until a refresh works again).
    NeedsLogin { relay: RelayName, reason: String },
    /// A relay refused us on a link.
    RelayRefused {
        user: UserName,
        relay: RelayName,
        link: LinkKey,
        reply: String,
    },
    /// A batch ended.
    Finished {
        user: UserName,
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
    /// Set when mail arrived in `incoming/` or `new/`: the flusher takes it in between two
    /// messages, so that it shows in the queue even while a long batch runs.
    pub arrived: Arc<AtomicBool>,
    /// Set while the last round could not move mail out of `incoming/` or `new/` for lack of
    /// disk space (listings say so of what waits there).
    pub no_space: Arc<AtomicBool>,
}

/// Starts the flusher of `user`. With `journal` (the outbox's outcome journal, see
/// [`linkrelay_outbox::Journal`]) each outcome costs one fdatasync; without it, the folders
/// are rewritten durably (four fsyncs).
pub fn spawn(
    user: UserName,
    outbox: Outbox,
    journal: Option<Journal>,
    route: UserRoute,
    settings: Arc<FlushSettings>,
    memory: Arc<Mutex<RelayMemory>>,
    events: mpsc::UnboundedSender<FlushEvent>,
) -> FlusherHandle {
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (route_tx, route_rx) = watch::channel(route);
    let (settings_tx, settings_rx) = watch::channel(settings);
    let arrived = Arc::new(AtomicBool::new(false));
    let no_space = Arc::new(AtomicBool::new(false));
    let flusher = Flusher {
        held_walk: HeldWalk::NotWalked,
        arrived: arrived.clone(),
        no_space: no_space.clone(),
        user,
        outbox,
        journal,
        route: route_rx,
        settings: settings_rx,
        memory,
        events,
        passwords: HashMap::new(),
        unsaved: HashMap::new(),
        rerouted: HashSet::new(),
        batches: 0,
        in_flight: None,
        unrecorded: Vec::new(),
        ingest_retry: None,
    };
    tokio::spawn(flusher.run(req_rx));
    FlusherHandle {
        requests: req_tx,
        route: route_tx,
        settings: settings_tx,
        arrived,
        no_space,
    }
}

/// How long a flush asked for by new mail waits for more to arrive first.
const ARRIVAL_GATHER: Duration = Duration::from_millis(10);

/// How long to wait before trying again to record a state the disk did not take.
const RECORD_RETRY: u64 = 30;
/// How soon to take in again mail that could not be moved from `incoming/` into the queue (a
/// full disk): it is safe where it is, and nothing else may come to wake the flusher.
const INGEST_RETRY: u64 = 5;

struct Flusher {
    /// Whether new mail needs a walk of the queue while mail is held. See
    /// [`Flusher::arrivals_while_held`].
    held_walk: HeldWalk,
    /// See [`FlusherHandle::arrived`].
    arrived: Arc<AtomicBool>,
    /// See [`FlusherHandle::no_space`].
    no_space: Arc<AtomicBool>,
    user: UserName,
    outbox: Outbox,
    /// Where outcomes are recorded; `None` when the journal could not be opened.
    journal: Option<Journal>,
    route: watch::Receiver<UserRoute>,
    settings: watch::Receiver<Arc<FlushSettings>>,
    memory: Arc<Mutex<RelayMemory>>,
    events: mpsc::UnboundedSender<FlushEvent>,
    passwords: HashMap<RelayName, String>,
    /// States this process could not write (a full disk): they stand in for what is on disk,
    /// so that a recipient that was delivered is not sent to again, and are written as soon
    /// as the disk takes them.
    unsaved: HashMap<String, MessageState>,
    /// Messages that were queued when the route last changed and have not been attempted
    /// since: their backoff starts again at their next deferral.
    rerouted: HashSet<String>,
    /// Batches run so far.
    batches: u64,
    /// The last delivered message's move to sent/, being recorded on the blocking pool while
    /// the next message's envelope goes out ([`Flusher::settle`]).
    in_flight: Option<InFlight>,
    /// When to come back for delivered messages whose record failed (a full disk): a batch
    /// counted them as sent and takes them back ([`Flusher::take_unrecorded`]).
    unrecorded: Vec<u64>,
    /// When to take in again what the last round could not move out of `incoming/` or
    /// `new/` (a full disk); `None` when it took in everything.
    ingest_retry: Option<u64>,
}

/// What a record task gives back: the journal, the state as recorded (its revision bumped),
/// and whether it was recorded.
type Recorded = (Journal, MessageState, Result<(), OutboxError>);

/// A delivered message whose record (journal append, fdatasync, move to sent/) is under way.
struct InFlight {
    task: JoinHandle<Recorded>,
    /// Says when the record is durable (before the move to sent/); gone once heard, or
    /// when the task ended without saying so (the append failed: [`Flusher::settle`] tells).
    durable: Option<oneshot::Receiver<()>>,
    /// The state as it was handed to the task, for the fsync path if the task panicked.
    state: MessageState,
    relay: String,
    reply: String,
    t: u64,
}

/// Where a hold stands for mail that arrives while it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeldWalk {
    /// No batch walked the whole queue under the current hold (or the route or the settings
    /// changed since): new mail needs a batch.
    NotWalked,
    /// A batch walked the whole queue while mail was held on the current route; `next_due` is
    /// the earliest time something was due then.
    Walked { next_due: Option<u64> },
}

/// One open session and the relay it belongs to.
struct Open {
    relay: RelayName,
    session: Session,
}

/// What one batch keeps between messages.
struct BatchState {
    /// The open session, reused for the next message through the same relay.
    open: Option<Open>,
    /// Relays that did not answer (connect, greeting, TLS, a timeout) earlier in this batch,
    /// with why: the next messages skip them instead of waiting for the same timeout again.
    down: HashMap<RelayName, Verdict>,
    /// Tells when the route changes: an attempt in flight is then abandoned, unless the end of
    /// its data is out ([`until_rerouted`]). Never marked seen: the batch stops at the change.
    rerouted: watch::Receiver<UserRoute>,
    /// When the user asked for this batch: the relays tried so far in it. A relay whose
    /// refusal is remembered is tried once more, then the memory decides again.
    once_more: Option<HashSet<RelayName>>,
}

impl Flusher {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<FlushRequest>) {
        while let Some(first) = requests.recv().await {
            if first.arrival {
                // Let mail that comes in a stream (a script, a mailing) gather, so that one
                // round of taking it in (one syncfs) serves several messages, not one each.
                tokio::time::sleep(ARRIVAL_GATHER).await;
            }
            // Coalesce everything that queued up meanwhile into one batch.
            let mut force = first.force;
            let mut once_more = first.once_more;
            let mut arrivals_only = first.arrival;
            let mut waiters: Vec<_> = first.done.into_iter().collect();
            while let Ok(more) = requests.try_recv() {
                force |= more.force;
                once_more |= more.once_more;
                arrivals_only &= more.arrival;
                waiters.extend(more.done);
            }
            debug!(user = %self.user, force, arrivals_only, waiters = waiters.len(), "batch asked for");
            let result = if arrivals_only && !force {
                match self.arrivals_while_held() {
                    Some(result) => result,
                    None => self.batch(force, once_more).await,
                }
            } else {
                self.batch(force, once_more).await
            };
            for w in waiters {
                let _ = w.send(result);
            }
        }
    }

    fn emit(&self, event: FlushEvent) {
        let _ = self.events.send(event);
    }

    /// The ids of the queue in order. States are read one at a time as the batch reaches
    /// them ([`Flusher::load`]): a queue of 100,000 messages is not held in memory, and the
    /// first message goes out without waiting for the last state to be read.
    fn queued(&mut self) -> Vec<String> {
        let ids = match self.outbox.message_ids(Folder::Queue) {
            Ok(ids) => ids,
            Err(e) => {
                warn!(user = %self.user, error = %e, "cannot list the outbox");
                return Vec::new();
            }
        };
        // The others left the queue meanwhile (dropped by the user). `ids` is sorted.
        self.unsaved.retain(|id, _| ids.binary_search(id).is_ok());
        ids
    }

    /// The state of queued message `id`: the one this process could not write if there is
    /// one, else the one on disk (`None` when it left the queue or cannot be read now).
    fn load(&self, id: &str) -> Option<MessageState> {
        match self.unsaved.get(id) {
            Some(newer) => Some(newer.clone()),
            None => self.outbox.entry(Folder::Queue, id),
        }
    }

    /// Takes what arrived in `incoming/` (from `linkrelay sendmail`) and `new/` (dropped by
    /// mail clients) into the queue. What could not be taken in (an I/O error such as a full
    /// disk) is tried again after [`INGEST_RETRY`] (see `ingest_retry`).
    fn ingest(&mut self) {
        self.arrived.store(false, Ordering::Relaxed);
        let incoming = self
            .outbox
            .ingest_incoming()
            .into_iter()
            .map(|i| ("incoming/", i));
        let new = self.outbox.ingest_new().into_iter().map(|i| ("new/", i));
        let (mut deferred, mut no_space) = (false, false);
        for (from, ingested) in incoming.chain(new) {
            debug!(user = %self.user, ?ingested, "ingested from {from}");
            if let Ingested::Deferred { file, error } = &ingested {
                warn!(user = %self.user, file = %file, %error, "cannot queue mail from {from} now; trying again soon");
                deferred = true;
                no_space |= error.is_no_space();
            }
        }
        self.no_space.store(no_space, Ordering::Relaxed);
        self.ingest_retry = deferred.then(|| now().saturating_add(INGEST_RETRY));
    }

    /// With mail held on an unchanged route and the queue already walked under it, new mail
    /// needs no walk of the whole queue: it is taken in, and the earliest time something is
    /// due stays what the walk found (new mail expires last). `None` when a walk is needed.
    fn arrivals_while_held(&mut self) -> Option<BatchResult> {
        let HeldWalk::Walked { next_due: walked } = self.held_walk else {
            return None;
        };
        let unchanged = !self.route.has_changed().unwrap_or(true)
            && !self.settings.has_changed().unwrap_or(true)
            && matches!(self.route.borrow().route, Route::Hold { .. });
        if !unchanged {
            return None;
        }
        self.ingest();
        let counts = self.outbox.counts().ok()?;
        let lifetime = self.settings.borrow().retry.lifetime.as_secs();
        let next_due = min_some(walked, now().saturating_add(lifetime));
        let next_due = self
            .ingest_retry
            .map_or(next_due, |at| min_some(next_due, at));
        let result = BatchResult {
            sent: 0,
            remaining: counts.queued as u32,
        };
        self.emit(FlushEvent::Finished {
            user: self.user.clone(),
            result,
            counts,
            next_due,
        });
        Some(result)
    }

    async fn batch(&mut self, force: bool, once_more: bool) -> BatchResult {
        let (route, settings, ids) = self.begin_batch();
        let mut tally = Tally::default();
        let mut b = BatchState {
            open: None,
            down: HashMap::new(),
            rerouted: self.route.clone(),
            once_more: once_more.then(HashSet::new),
        };
        for id in ids {
            self.take_unrecorded(&mut tally);
            if self.arrived.load(Ordering::Relaxed) {
                // Queued now, sent in the next batch (the agent asked for one).
                self.ingest();
            }
            if b.rerouted.has_changed().unwrap_or(false) {
                debug!(user = %self.user, "route changed mid-flush; stopping this batch");
                break;
            }
            let Some(mut msg) = self.load(&id) else {
                continue;
            };
            match self.visit(&mut msg, &route, &settings, force, &mut b).await {
                Done::Interrupted => {
                    info!(user = %self.user, id = %msg.id, "route changed during the attempt; the message stays queued");
                    break;
                }
                done => tally.count(&done),
            }
        }
        self.finish_batch(b, &route, tally).await
    }

    /// Starts a batch: takes in new mail, and gives the route and settings to follow and the
    /// queue in order. Messages queued when the route changed start their backoff again.
    fn begin_batch(&mut self) -> (UserRoute, Arc<FlushSettings>, Vec<String>) {
        self.held_walk = HeldWalk::NotWalked;
        self.ingest();
        // The agent sends a route only when it changed; the first one (at start-up) replaces
        // the "starting" placeholder and is not a change of the message's route.
        let rerouted = self.route.has_changed().unwrap_or(false);
        let route = self.route.borrow_and_update().clone();
        let old = self.settings.borrow().clone();
        let settings = self.settings.borrow_and_update().clone();
        // A relay whose settings changed (a reload) may have new credentials.
        self.passwords
            .retain(|name, _| old.relays.get(name) == settings.relays.get(name));
        self.outbox = self.outbox.clone().with_limits(settings.limits);
        let ids = self.queued();
        if rerouted && self.batches > 0 {
            self.rerouted = ids.iter().cloned().collect();
        } else {
            self.rerouted.retain(|id| ids.binary_search(id).is_ok());
        }
        self.batches += 1;
        (route, settings, ids)
    }

    /// Takes one queued message as far as its route allows now: finishes it when no recipient
    /// is pending, holds it (failing it when its lifetime is over), leaves it until its next
    /// attempt (unless `force`), or delivers it.
    async fn visit(
        &mut self,
        msg: &mut MessageState,
        route: &UserRoute,
        settings: &FlushSettings,
        force: bool,
        b: &mut BatchState,
    ) -> Done {
        let t = now();
        if msg.is_done() {
            // Every recipient was dealt with, but the move out of queue/ did not happen
            // (a crash or a full disk): finish it without sending anything again.
            return self.complete(msg, t).await;
        }
        let relays = match relays_for(route, msg) {
            Ok(relays) => relays,
            Err(why) => {
                // A held message is not attempted, but its lifetime still runs out.
                let expires = msg
                    .queued_at
                    .saturating_add(settings.retry.lifetime.as_secs());
                if t >= expires {
                    return self.expire(msg, settings, &why).await;
                }
                return Done::Deferred(expires);
            }
        };
        if !force && msg.next_attempt > t {
            return Done::Deferred(msg.next_attempt);
        }
        self.deliver(msg, &route.link, relays, settings, b).await
    }

    /// Ends a batch: closes its session, waits for the last record, and reports the outbox's
    /// counts and when to come back.
    async fn finish_batch(
        &mut self,
        mut b: BatchState,
        route: &UserRoute,
        mut tally: Tally,
    ) -> BatchResult {
        if let Some(o) = b.open.take() {
            o.session.close().await;
        }
        self.settle().await;
        // Between batches a user holds no descriptor: the next record opens the journal.
        if let Some(journal) = self.journal.as_mut() {
            journal.release();
        }
        self.take_unrecorded(&mut tally);
        let Tally {
            mut result,
            mut next_due,
        } = tally;
        if matches!(route.route, Route::Hold { .. }) && !self.route.has_changed().unwrap_or(true) {
            self.held_walk = HeldWalk::Walked { next_due };
        }
        if let Some(at) = self.ingest_retry {
            next_due = min_some(next_due, at);
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

    /// The password (or access token) for `relay`. Passwords are kept for the flusher's
    /// life; OAuth2 access tokens are kept by [`crate::delivery::tokens`], which knows when
    /// they end.
    async fn password_for(
        &mut self,
        relay: &Relay,
    ) -> Result<Option<String>, credentials::CredentialError> {
        if let Some(p) = self.passwords.get(&relay.name) {
            return Ok(Some(p.clone()));
        }
        let p = credentials::fetch(relay).await?;
        if let Some(p) = &p
            && !credentials::is_oauth2(relay)
        {
            self.passwords.insert(relay.name.clone(), p.clone());
        }
        Ok(p)
    }

    /// Tries the route's relays for one message and records the result.
    async fn deliver(
        &mut self,
        msg: &mut MessageState,
        link: &LinkKey,
        relays: &[RelayName],
        settings: &FlushSettings,
        b: &mut BatchState,
    ) -> Done {
        let a = Attempt {
            link,
            relays,
            settings,
            t: now(),
        };
        let message = match self.open_queued(msg, a.t).await {
            Ok(message) => message,
            Err(done) => return done,
        };
        let order = match &b.once_more {
            Some(tried) => {
                lock(&self.memory).order_retrying(link, relays, a.t, |r| !tried.contains(r))
            }
            None => lock(&self.memory).order(link, relays, a.t),
        };
        let mut tries = Tries {
            last: None,
            tried_any: false,
        };
        for relay_name in &order {
            let Some(relay) = settings.relays.get(relay_name) else {
                continue; // config validation makes this unreachable
            };
            if let Some(v) = b.down.get(relay_name) {
                tries.last = Some((relay_name.clone(), v.clone()));
                continue;
            }
            tries.tried_any = true;
            if let Some(tried) = &mut b.once_more {
                tried.insert(relay_name.clone());
            }
            match self.try_relay(msg, relay, &message, &a, b).await {
                Step::Next(v) => tries.last = Some((relay_name.clone(), v)),
                Step::Stop(v) => {
                    tries.last = v.map(|v| (relay_name.clone(), v));
                    break;
                }
                Step::End(done) => return done,
            }
        }
        self.conclude(msg, &a, tries).await
    }

    /// Queued message `msg`, opened to be sent, or how its attempt ends when it cannot be
    /// read. A large message is not read into memory: it is sent from its file.
    async fn open_queued(&mut self, msg: &mut MessageState, t: u64) -> Result<Message, Done> {
        let file = match self.outbox.open_message(Folder::Queue, &msg.id) {
            Ok(file) => file,
            // Dropped by the user since the batch began.
            Err(e) if e.is_not_found() => return Err(Done::Failed),
            Err(e @ OutboxError::Io { .. }) => return Err(self.unreadable_now(msg, t, &e)),
            // message.eml missing, a link, not a file: this message cannot be sent.
            Err(e) => {
                let reason = format!("cannot read the message: {e}");
                fail_pending(msg, &reason);
                msg.failure = Some(reason);
                return Err(self.fail(msg).await);
            }
        };
        Message::open(file)
            .await
            .map_err(|e| self.unreadable_now(msg, t, &e))
    }

    /// A passing I/O error (EIO, EMFILE) while reading `msg`: it is tried again later; nothing
    /// was attempted.
    fn unreadable_now(&self, msg: &MessageState, t: u64, e: &dyn std::fmt::Display) -> Done {
        warn!(user = %self.user, id = %msg.id, error = %e, "cannot read the message now");
        Done::Deferred(t + RECORD_RETRY)
    }

    /// Sends `msg` to its pending recipients through `relay` and records what each verdict
    /// changed.
    async fn try_relay(
        &mut self,
        msg: &mut MessageState,
        relay: &Relay,
        message: &Message,
        a: &Attempt<'_>,
        b: &mut BatchState,
    ) -> Step {
        let mut o = match self.session_for(relay, a, b).await {
            Ok(o) => o,
            Err(step) => return step,
        };
        let pending: Vec<String> = msg.pending().map(|r| r.addr.clone()).collect();
        let committed = past_the_dot(&o.session, &self.user, &msg.id, &relay.name);
        let Some(transaction) = until_rerouted(
            &b.rerouted,
            committed,
            o.session.send(
                &msg.from,
                &pending,
                msg.dsn.as_ref(),
                message,
                self.durable(),
            ),
        )
        .await
        else {
            // Dropping the session closes the connection before the end of the data: the relay
            // took nothing.
            return Step::End(Done::Interrupted);
        };
        let verdicts = match transaction {
            Ok(tx) => tx.recipients,
            Err(v) => return self.transaction_failed(msg, o, v, a, b).await,
        };
        b.open = Some(o);
        let applied = apply_verdicts(msg, &relay.name, verdicts);
        if applied.any_sent {
            lock(&self.memory).accepted(a.link, &relay.name);
        }
        if let Some(v) = &applied.refusal {
            self.refused(a.link, &relay.name, v, a.settings);
        }
        if applied.changed && !msg.is_done() {
            // Record the delivered recipients now: a crash or a route change before the
            // end of this attempt must not send to them again.
            self.save(msg).await;
        }
        applied.next_step(msg.is_done())
    }

    /// A session with `relay`: the batch's open one when it is with this relay and still
    /// usable, else a new one. `Err` when the relay cannot be used now (a refusal is
    /// remembered, a relay that does not answer is skipped for the rest of the batch) or the
    /// route changed meanwhile.
    async fn session_for(
        &mut self,
        relay: &Relay,
        a: &Attempt<'_>,
        b: &mut BatchState,
    ) -> Result<Open, Step> {
        if let Some(o) = b.open.take() {
            if o.relay == relay.name && o.session.is_usable() {
                return Ok(o);
            }
            o.session.close().await;
        }
        let password = match self.password_for(relay).await {
            Ok(p) => p,
            Err(e) => {
                if e.needs_login && crate::delivery::tokens::first_login_notice(&relay.name).await {
                    self.emit(FlushEvent::NeedsLogin {
                        relay: relay.name.clone(),
                        reason: e.text.clone(),
                    });
                }
                let v = credentials::verdict(e);
                b.down.insert(relay.name.clone(), v.clone());
                return Err(Step::Next(v));
            }
        };
        let Some(mut opened) =
            until_rerouted(&b.rerouted, never, Session::open(relay, password)).await
        else {
            return Err(Step::End(Done::Interrupted));
        };
        if let Err(v) = &opened
            && credentials::refused_token(relay, v)
        {
            // The access token in memory may have been revoked or cut short: one refresh,
            // one more try.
            info!(user = %self.user, relay = %relay.name, reply = %v.describe(), "access token refused; refreshing it once");
            let retried = async {
                match credentials::fetch_renewed(relay).await {
                    Ok(token) => Session::open(relay, token).await,
                    Err(e) => Err(credentials::verdict(e)),
                }
            };
            let Some(retried) = until_rerouted(&b.rerouted, never, retried).await else {
                return Err(Step::End(Done::Interrupted));
            };
            opened = retried;
        }
        let v = match opened {
            Ok(session) => {
                return Ok(Open {
                    relay: relay.name.clone(),
                    session,
                });
            }
            Err(v) => v,
        };
        if v.outcome == Outcome::RelayRefused {
            self.refused(a.link, &relay.name, &v, a.settings);
            // A wrong password may be stale: ask again next time.
            self.passwords.remove(&relay.name);
        } else {
            // Not answering, or not now: skip it for the rest of this batch.
            b.down.insert(relay.name.clone(), v.clone());
        }
        info!(user = %self.user, relay = %relay.name, reply = %v.describe(), "relay unusable");
        Err(Step::Next(v))
    }

    /// The message transaction through `o` ended before per-recipient verdicts (MAIL FROM or
    /// DATA as a whole, or the connection): the message fails for good, or the next relay is
    /// tried.
    async fn transaction_failed(
        &mut self,
        msg: &mut MessageState,
        o: Open,
        v: Verdict,
        a: &Attempt<'_>,
        b: &mut BatchState,
    ) -> Step {
        if v.outcome == Outcome::Failed {
            msg.attempts += 1;
            msg.last_attempt = Some(a.t);
            msg.last_relay = Some(o.relay.to_string());
            msg.last_error = Some(format!("{}: {}", o.relay, v.describe()));
            b.open = Some(o);
            fail_pending(msg, &v.describe());
            msg.failure = Some(v.describe());
            return Step::End(self.fail(msg).await);
        }
        if v.outcome == Outcome::RelayRefused {
            self.refused(a.link, &o.relay, &v, a.settings);
        } else if v.is_timeout() {
            b.down.insert(o.relay.clone(), v.clone());
        }
        if o.session.is_usable() {
            b.open = Some(o);
        } else {
            o.session.close().await;
        }
        Step::Next(v)
    }

    /// Ends an attempt that went through the relays: the message leaves the queue when no
    /// recipient is pending any more, fails when its lifetime is over, and is deferred
    /// otherwise.
    async fn conclude(&mut self, msg: &mut MessageState, a: &Attempt<'_>, tries: Tries) -> Done {
        note_attempt(msg, &tries, a.t);
        if msg.is_done() {
            return self.complete(msg, a.t).await;
        }
        let age = a.t.saturating_sub(msg.queued_at);
        if age > a.settings.retry.lifetime.as_secs() {
            let last = msg.last_error.clone().unwrap_or_default();
            return self.expire(msg, a.settings, &last).await;
        }
        // Every relay of the route refuses us now (remembered, or just now): nothing can be
        // tried before the first refusal ends.
        let all_refused = lock(&self.memory).order(a.link, a.relays, a.t).is_empty();
        let nothing_tried = !tries.tried_any && tries.last.is_none();
        self.defer(msg, a, all_refused, nothing_tried).await
    }

    /// Keeps a pending message queued until its next attempt: after the backoff of its route,
    /// or, when every relay refused us recently on this link (`all_refused`), when the first of
    /// those refusals ends. When `nothing_tried`, its last error says why.
    async fn defer(
        &mut self,
        msg: &mut MessageState,
        a: &Attempt<'_>,
        all_refused: bool,
        nothing_tried: bool,
    ) -> Done {
        let key = route_key(a.link, a.relays);
        let step = next_step(
            msg.backoff_step,
            msg.backoff_route.as_deref(),
            &key,
            self.rerouted.remove(&msg.id),
        );
        msg.backoff_step = step;
        msg.backoff_route = Some(key);
        let retry = &a.settings.retry;
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        let mut at = a.t
            + retry_delay(step, retry.min, retry.max, jitter)
                .as_secs()
                .max(1);
        if all_refused {
            let (release, why) = self.refused_everywhere(a);
            at = after_refusals(at, release, a.t);
            if nothing_tried {
                msg.last_error = Some(why);
            }
        }
        msg.next_attempt = at;
        self.save(msg).await;
        let reason = msg.last_error.clone().unwrap_or_default();
        info!(user = %self.user, id = %msg.id, %reason, next_attempt = at, step, "deferred");
        self.emit(FlushEvent::Deferred {
            user: self.user.clone(),
            id: msg.id.clone(),
            reason,
            next_attempt: at,
        });
        Done::Deferred(at)
    }

    /// When every relay of the route refused us recently on this link: when the first of those
    /// refusals ends, and what to tell the user.
    fn refused_everywhere(&self, a: &Attempt<'_>) -> (Option<u64>, String) {
        let m = lock(&self.memory);
        let release = m.earliest_release(a.link, a.relays, a.t);
        let why = match a.relays.first() {
            Some(r) => {
                let reply = m
                    .refusal(a.link, r, a.t)
                    .map(|f| f.reply.clone())
                    .unwrap_or_default();
                let link = a.link;
                format!(
                    "{r}: refused us on link {link} ({reply}); not retried before the refusal memory ends"
                )
            }
            None => "no relay".into(),
        };
        (release, why)
    }

    /// Waits until the record in flight, if any, is durable: the gate before the next message's
    /// data. Its move to sent/ may still be under way, and [`Flusher::settle`] finishes it
    /// (before the next record): only the journal's fdatasync is on the way from one message
    /// to the next. Cancel-safe.
    async fn durable(&mut self) {
        let Some(f) = self.in_flight.as_mut() else {
            return;
        };
        if let Some(rx) = f.durable.as_mut() {
            // An error means the task ended without a durable record; settle() says why.
            let _ = rx.await;
            f.durable = None;
        }
    }

    /// Waits for the record in flight, if any, and finishes it: the journal comes back, and the
    /// message is announced as sent, or (when the disk did not take the record) kept in memory
    /// and noted in `unrecorded`. Cancel-safe: dropped while waiting, the record stays in
    /// flight and the next call finishes it. Awaited before any other record, before the next
    /// message's data is handed over, and at the end of a batch.
    async fn settle(&mut self) {
        let Some(f) = self.in_flight.as_mut() else {
            return;
        };
        let joined = (&mut f.task).await;
        let Some(f) = self.in_flight.take() else {
            return;
        };
        let (state, result) = match joined {
            Ok((journal, state, result)) => {
                self.journal = Some(journal);
                (state, result)
            }
            // Only if record() panicked: the journal is gone, fall back to the fsync path.
            Err(e) => {
                warn!(user = %self.user, error = %e, "the outcome journal failed; recording with fsyncs from now on");
                let result = self.write_synced(&f.state, Folder::Sent);
                (f.state, result)
            }
        };
        if self.recorded(&state, result, "cannot move to sent/") {
            self.announce_sent(&state.id, f.relay, f.reply);
        } else {
            self.unrecorded.push(f.t + RECORD_RETRY);
        }
    }

    /// Says that a message went out, once its move to sent/ is recorded.
    fn announce_sent(&self, id: &str, relay: String, reply: String) {
        info!(user = %self.user, id = %id, relay = %relay, "sent");
        self.emit(FlushEvent::Sent {
            user: self.user.clone(),
            id: id.to_string(),
            relay,
            reply,
        });
    }

    /// Takes back from `tally` the messages counted as sent whose record then failed; they
    /// stay queued, and the batch comes back for them.
    fn take_unrecorded(&mut self, tally: &mut Tally) {
        for at in self.unrecorded.drain(..) {
            tally.result.sent = tally.result.sent.saturating_sub(1);
            tally.next_due = min_some(tally.next_due, at);
        }
    }

    /// Writes a queued message's state; if the disk does not take it, keeps it in memory so
    /// that this process goes on from it (and writes it later).
    async fn save(&mut self, msg: &mut MessageState) {
        let result = self.write(msg, Folder::Queue).await;
        self.recorded(msg, result, "cannot record the attempt");
    }

    /// Records `msg`'s new state durably, in folder `to` (the queue for an attempt that
    /// changed nothing but the state).
    ///
    /// The journal's fdatasync runs on tokio's blocking pool: the flushers of other users, and
    /// the agent's D-Bus service, go on while the disk flushes.
    async fn write(&mut self, msg: &mut MessageState, to: Folder) -> Result<(), OutboxError> {
        // One record at a time: the journal is with the one in flight.
        self.settle().await;
        let Some((task, _)) = self.start_record(msg, to) else {
            return self.write_synced(msg, to);
        };
        match task.await {
            Ok((journal, state, result)) => {
                self.journal = Some(journal);
                *msg = state;
                result
            }
            // Only if record() panicked: the journal is gone, fall back to the fsync path.
            Err(e) => {
                warn!(user = %self.user, error = %e, "the outcome journal failed; recording with fsyncs from now on");
                self.write_synced(msg, to)
            }
        }
    }

    /// Hands the journal and `msg`'s new state (into folder `to`) to the blocking pool, which
    /// records it; the task gives the journal back. `None` without a journal.
    /// Also gives a receiver that hears when the record is durable, before the task moves the
    /// message in the folders.
    fn start_record(
        &mut self,
        msg: &MessageState,
        to: Folder,
    ) -> Option<(JoinHandle<Recorded>, oneshot::Receiver<()>)> {
        let mut journal = self.journal.take()?;
        let mut state = msg.clone();
        let (durable_tx, durable) = oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let result = journal.record_then(&mut state, to, || {
                let _ = durable_tx.send(());
            });
            (journal, state, result)
        });
        Some((task, durable))
    }

    /// Records `msg`'s new state without the journal: the folders are rewritten durably.
    fn write_synced(&self, msg: &MessageState, to: Folder) -> Result<(), OutboxError> {
        match to {
            Folder::Queue => self.outbox.update(msg),
            Folder::Sent => self.outbox.finish_sent(msg),
            Folder::Failed => self.outbox.finish_failed(msg),
        }
    }

    /// Keeps `msg` in memory when writing it failed (but not when the message is gone), and
    /// forgets the kept copy once it is written. True when it was written.
    fn recorded(
        &mut self,
        msg: &MessageState,
        result: Result<(), OutboxError>,
        what: &str,
    ) -> bool {
        match result {
            Ok(()) => {
                self.unsaved.remove(&msg.id);
                true
            }
            Err(e) => {
                warn!(user = %self.user, id = %msg.id, error = %e, "{what}; keeping the state in memory");
                if e.is_not_found() {
                    self.unsaved.remove(&msg.id);
                } else {
                    self.unsaved.insert(msg.id.clone(), msg.clone());
                }
                false
            }
        }
    }

    /// Moves a message whose recipients are all done out of the queue: to sent/ when every
    /// one was delivered, else to failed/ (some or all were rejected: the user should know).
    async fn complete(&mut self, msg: &mut MessageState, t: u64) -> Done {
        let sent: Vec<&str> = msg
            .recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Sent)
            .map(|r| r.addr.as_str())
            .collect();
        let rejected: Vec<String> = msg
            .recipients
            .iter()
            .filter(|r| r.status == RecipientStatus::Failed)
            .map(|r| format!("{} ({})", r.addr, r.reply.as_deref().unwrap_or("rejected")))
            .collect();
        if rejected.is_empty() {
            if msg.sent_at.is_none() {
                msg.sent_at = Some(t);
            }
            let relay = msg.sent_via.clone().unwrap_or_default();
            let reply = msg
                .recipients
                .iter()
                .find(|r| r.status == RecipientStatus::Sent)
                .and_then(|r| r.reply.clone())
                .unwrap_or_default();
            self.settle().await;
            if let Some((task, durable)) = self.start_record(msg, Folder::Sent) {
                // Recorded while the next message's envelope goes out; see `settle`.
                self.in_flight = Some(InFlight {
                    task,
                    durable: Some(durable),
                    state: msg.clone(),
                    relay,
                    reply,
                    t,
                });
                return Done::Sent;
            }
            let result = self.write_synced(msg, Folder::Sent);
            if !self.recorded(msg, result, "cannot move to sent/") {
                return Done::Deferred(t + RECORD_RETRY);
            }
            self.announce_sent(&msg.id, relay, reply);
            return Done::Sent;
        }
        if msg.failure.is_none() {
            msg.failure = Some(if sent.is_empty() {
                format!("every recipient was rejected: {}", rejected.join("; "))
            } else {
                format!(
                    "{} of {} recipients rejected: {}; delivered to {}",
                    rejected.len(),
                    msg.recipients.len(),
                    rejected.join("; "),
                    sent.join(", ")
                )
            });
        }
        self.fail(msg).await
    }

    /// The message's lifetime ran out: it goes to failed/ with the reason, its undelivered
    /// recipients marked failed (`linkrelay retry` puts them back).
    async fn expire(
        &mut self,
        msg: &mut MessageState,
        settings: &FlushSettings,
        last: &str,
    ) -> Done {
        let reason = format!(
            "not delivered within {} (lifetime); last: {}",
            humantime::format_duration(settings.retry.lifetime),
            if last.is_empty() {
                "never attempted"
            } else {
                last
            }
        );
        fail_pending(msg, &reason);
        msg.failure = Some(reason);
        self.fail(msg).await
    }

    fn refused(&self, link: &LinkKey, relay: &RelayName, v: &Verdict, settings: &FlushSettings) {
        let until = now() + settings.retry.refusal_memory.as_secs();
        lock(&self.memory).refused(link, relay, until, &v.describe());
        warn!(user = %self.user, %relay, %link, reply = %v.describe(), "relay refused us on this link");
        self.emit(FlushEvent::RelayRefused {
            user: self.user.clone(),
            relay: relay.clone(),
            link: link.clone(),
            reply: v.describe(),
        });
    }

    async fn fail(&mut self, msg: &mut MessageState) -> Done {
        let reason = msg.failure.clone().unwrap_or_else(|| "failed".into());
        let result = self.write(msg, Folder::Failed).await;
        if !self.recorded(msg, result, "cannot move to failed/") {
            // Come back to record it (the message stays queued on disk meanwhile).
            return Done::Deferred(now() + RECORD_RETRY);
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

/// Marks every recipient still pending as failed (the message itself failed, or its lifetime
/// ran out), keeping the last server reply about it when there is one.
fn fail_pending(msg: &mut MessageState, reason: &str) {
    for r in msg
        .recipients
        .iter_mut()
        .filter(|r| r.status == RecipientStatus::Pending)
    {
        r.status = RecipientStatus::Failed;
        if r.reply.is_none() {
            r.reply = Some(reason.to_string());
        }
    }
}

/// What a batch did so far.
#[derive(Default)]
struct Tally {
    result: BatchResult,
    /// The earliest unix second at which a message that stays queued is due.
    next_due: Option<u64>,
}

impl Tally {
    fn count(&mut self, done: &Done) {
        match done {
            Done::Sent => self.result.sent += 1,
            Done::Deferred(at) => self.next_due = min_some(self.next_due, *at),
            Done::Failed | Done::Interrupted => {}
        }
    }
}

/// The relays to try `msg` through on `route`, or why it is held: the route holds all mail, or
/// the message is larger than the metered link allows. Pure.
fn relays_for<'r>(route: &'r UserRoute, msg: &MessageState) -> Result<&'r [RelayName], String> {
    match &route.route {
        Route::Hold { reason } => Err(format!("held: {reason}")),
        Route::Send {
            max_size: Some(max),
            ..
        } if msg.size > *max => Err(format!(
            "held: larger than the {max} bytes allowed on metered link {}",
            route.link
        )),
        Route::Send { relays, .. } => Ok(relays),
    }
}

/// What one message is tried with: the link it goes out on, the route's relays, the settings,
/// and when the attempt began.
struct Attempt<'a> {
    link: &'a LinkKey,
    relays: &'a [RelayName],
    settings: &'a FlushSettings,
    t: u64,
}

/// How trying the relays for one message went.
struct Tries {
    /// The last relay that did not take every recipient, with why; `None` when the last relay
    /// tried took them all, or when there was none to try.
    last: Option<(RelayName, Verdict)>,
    /// Whether any relay was tried, rather than left out by a recent refusal or down earlier in
    /// the batch.
    tried_any: bool,
}

/// Writes down an attempt that went through the relays: one more attempt only when a relay
/// was actually tried (a relay left out for its remembered refusal, or down earlier in the
/// batch, is no attempt), and why the last relay did not take the message. Pure.
fn note_attempt(msg: &mut MessageState, tries: &Tries, t: u64) {
    if tries.tried_any {
        msg.attempts += 1;
        msg.last_attempt = Some(t);
    }
    if let Some((relay, v)) = &tries.last {
        msg.last_error = Some(format!("{relay}: {}", v.describe()));
    }
}

/// The next attempt of a message every relay of whose route refused us recently: when the
/// first refusal ends (`release`), which is when the message can next go anywhere, and what
/// its `last_error` says; the backoff's `at` only when no refusal is known. Pure.
fn after_refusals(at: u64, release: Option<u64>, t: u64) -> u64 {
    match release {
        Some(release) => release.max(t + 1),
        None => at,
    }
}

/// What comes after trying one relay.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Try the next relay; this verdict says why this one did not take the message.
    Next(Verdict),
    /// Try no more relays: no recipient is pending, or the relay asked us to come back later.
    /// With the relay's last verdict that did not deliver, if any.
    Stop(Option<Verdict>),
    /// The attempt is over: the message failed, or the route changed.
    End(Done),
}

/// What a relay's per-recipient verdicts changed in a message ([`apply_verdicts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    /// A recipient was delivered or failed: the new state is worth recording.
    changed: bool,
    /// The relay took the message for at least one recipient.
    any_sent: bool,
    /// A verdict that says the relay refuses us on this link.
    refusal: Option<Verdict>,
    /// The last verdict that did not deliver; `None` when every recipient was taken.
    worst: Option<Verdict>,
}

impl Applied {
    /// Whether to try the next relay: not when every recipient was taken or none is pending
    /// (`done`), nor when the relay only deferred them (come back later) without refusing us.
    fn next_step(self, done: bool) -> Step {
        let Some(v) = self.worst else {
            return Step::Stop(None);
        };
        let deferred_only = v.outcome == Outcome::Deferred;
        if done || (deferred_only && self.refusal.is_none()) {
            Step::Stop(Some(v))
        } else {
            Step::Next(v)
        }
    }
}

/// Applies `relay`'s per-recipient verdicts to `msg`: each recipient named gets the reply, and
/// a final status when the verdict is final (sent, failed); `relay` becomes the last relay
/// tried, and the one that took the message if it took it for anyone. Pure: what to record,
/// remember and try next is left to the caller.
fn apply_verdicts(
    msg: &mut MessageState,
    relay: &str,
    verdicts: Vec<(String, Verdict)>,
) -> Applied {
    let mut applied = Applied {
        changed: false,
        any_sent: false,
        refusal: None,
        worst: None,
    };
    for (addr, v) in verdicts {
        let Some(r) = msg.recipients.iter_mut().find(|r| r.addr == addr) else {
            continue;
        };
        r.reply = Some(v.describe());
        match v.outcome {
            Outcome::Sent => {
                r.status = RecipientStatus::Sent;
                applied.any_sent = true;
                applied.changed = true;
            }
            Outcome::Failed => {
                r.status = RecipientStatus::Failed;
                applied.changed = true;
            }
            Outcome::RelayRefused => applied.refusal = Some(v.clone()),
            Outcome::Deferred => {}
        }
        if v.outcome != Outcome::Sent {
            applied.worst = Some(v);
        }
    }
    msg.last_relay = Some(relay.to_string());
    if applied.any_sent {
        msg.sent_via = Some(relay.to_string());
    }
    applied
}

/// Runs `fut` unless the route changes first (`None` then). When the agent drops the route
/// (the user was removed from the config) the attempt runs to its end.
///
/// Once `committed` says so when the route changes (the end of a message's data is on the
/// wire: the relay may have taken it), `fut` runs to its end all the same, and its result is
/// what happened: abandoning it then would send the message again through the new route. The
/// session's time limits bound that wait.
///
/// The change is left unseen in `rerouted`: the batch stops at it, and later attempts in it
/// give up at once.
async fn until_rerouted<T>(
    rerouted: &watch::Receiver<UserRoute>,
    committed: impl FnOnce() -> bool,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let mut watch = rerouted.clone();
    let changed = async {
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let mut fut = std::pin::pin!(fut);
    tokio::select! {
        biased;
        v = &mut fut => return Some(v),
        () = changed => {}
    }
    if committed() { Some(fut.await) } else { None }
}

/// For [`until_rerouted`]: whether the end of the data of message `id` is on its way through
/// `session`, said in the log when it is (the user may wonder why the old route is still used).
fn past_the_dot(
    session: &Session,
    user: &UserName,
    id: &str,
    relay: &RelayName,
) -> impl FnOnce() -> bool + use<> {
    let (flag, user, id, relay) = (
        session.past_the_dot(),
        user.clone(),
        id.to_owned(),
        relay.clone(),
    );
    move || {
        let past = flag.load(Ordering::SeqCst);
        if past {
            info!(%user, %id, %relay, "route changed while the relay's answer to the message is due; waiting for it, so that the message does not go out twice");
        }
        past
    }
}

/// For [`until_rerouted`]: an attempt that may always be abandoned (nothing is handed over).
fn never() -> bool {
    false
}

/// Where one message stands after a batch looked at it.
#[derive(Debug, PartialEq, Eq)]
enum Done {
    /// Delivered: on its way to sent/.
    Sent,
    /// Stays queued; due again at this unix second.
    Deferred(u64),
    /// Moved to failed/, or gone from the queue.
    Failed,
    /// The route changed while the message was being sent: nothing more was confirmed, the
    /// message stays queued as it is.
    Interrupted,
}

fn min_some(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

#[cfg(test)]
mod tests {
    use linkrelay_outbox::{Envelope, RecipientStatus::*};

    use super::Step::{Next, Stop};
    use super::*;
    use crate::delivery::outcome::Stage;

    fn message(recipients: &[&str]) -> MessageState {
        let envelope = Envelope {
            from: "alice@example.org".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            dsn: None,
        };
        MessageState::new("m1", &envelope, 100, 0)
    }

    fn ok() -> Verdict {
        Verdict::new(Stage::Message, Some(250), "2.0.0 Ok: queued".into())
    }
    fn bad() -> Verdict {
        Verdict::new(Stage::Rcpt, Some(550), "5.1.1 no such user".into())
    }
    fn busy() -> Verdict {
        Verdict::new(Stage::Rcpt, Some(451), "4.3.0 try again later".into())
    }
    fn refused() -> Verdict {
        Verdict::new(Stage::Rcpt, Some(554), "5.7.1 Relay access denied".into())
    }

    #[test]
    fn verdicts_set_each_recipient_and_say_whether_to_try_the_next_relay() {
        // One row per case: what the relay answered for a and b, their statuses then, what next.
        #[rustfmt::skip]
        let cases = [
            ("every recipient taken", [ok(), ok()], [Sent, Sent], Stop(None)),
            ("one taken, one rejected", [ok(), bad()], [Sent, Failed], Stop(Some(bad()))),
            ("one taken, one deferred", [ok(), busy()], [Sent, Pending], Stop(Some(busy()))),
            ("the relay busy", [busy(), busy()], [Pending, Pending], Stop(Some(busy()))),
            ("one taken, one refused", [ok(), refused()], [Sent, Pending], Next(refused())),
            ("refused, then deferred", [refused(), busy()], [Pending, Pending], Next(busy())),
        ];
        for (what, verdicts, statuses, next) in cases {
            let mut msg = message(&["a@example.net", "b@example.net"]);
            let given = ["a@example.net".to_string(), "b@example.net".to_string()];
            let applied = apply_verdicts(
                &mut msg,
                "relay-a",
                given.into_iter().zip(verdicts.clone()).collect(),
            );
            let now: Vec<RecipientStatus> = msg.recipients.iter().map(|r| r.status).collect();
            assert_eq!(now, statuses, "{what}");
            let replies: Vec<Option<String>> =
                msg.recipients.iter().map(|r| r.reply.clone()).collect();
            let expected: Vec<Option<String>> =
                verdicts.iter().map(|v| Some(v.describe())).collect();
            assert_eq!(replies, expected, "{what}");
            assert_eq!(
                applied.changed,
                statuses.iter().any(|s| *s != Pending),
                "{what}"
            );
            assert_eq!(msg.last_relay.as_deref(), Some("relay-a"), "{what}");
            let sent_via = statuses.contains(&Sent).then_some("relay-a");
            assert_eq!(msg.sent_via.as_deref(), sent_via, "{what}");
            assert_eq!(applied.next_step(msg.is_done()), next, "{what}");
        }
    }

    /// A message to a@example.net, after relay-a gave `v` for `addr`.
    fn one_verdict_for_a(addr: &str, v: Verdict) -> (MessageState, Applied) {
        let mut msg = message(&["a@example.net"]);
        let applied = apply_verdicts(&mut msg, "relay-a", vec![(addr.to_string(), v)]);
        (msg, applied)
    }

    fn held(reason: &str) -> UserRoute {
        UserRoute {
            link: LinkKey::NoLink,
            route: Route::Hold {
                reason: reason.into(),
            },
        }
    }

    #[tokio::test]
    async fn a_route_change_abandons_an_attempt_only_before_the_end_of_its_data() {
        // (whether the end of the data was out when the route changed, what the attempt gives)
        for (past_the_dot, given) in [(false, None), (true, Some("250 2.0.0 Ok"))] {
            let (route, rerouted) = watch::channel(held("no link"));
            let (answer, relay_answers) = oneshot::channel();
            let attempt = until_rerouted(&rerouted, || past_the_dot, async {
                relay_answers.await.unwrap_or("the relay hung up")
            });
            let relay = async {
                tokio::task::yield_now().await;
                route.send_replace(held("another link"));
                // Two turns: the attempt sees the change before the answer comes, whichever
                // of the two join! polls first.
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                let _ = answer.send("250 2.0.0 Ok");
            };
            let (got, ()) = tokio::join!(attempt, relay);
            assert_eq!(got, given, "past the dot: {past_the_dot}");
            assert!(
                rerouted.has_changed().unwrap(),
                "the batch still sees the change and stops at it"
            );
        }
    }

    #[test]
    fn a_refusal_on_this_link_is_reported_for_the_relay_memory() {
        let (msg, applied) = one_verdict_for_a("a@example.net", refused());
        assert_eq!(applied.refusal, Some(refused()));
        assert!(!applied.any_sent);
        assert_eq!(msg.recipients[0].status, Pending);
    }

    #[test]
    fn a_verdict_for_an_address_the_message_does_not_have_changes_nothing() {
        let (msg, applied) = one_verdict_for_a("stranger@example.net", ok());
        assert!(!applied.changed && !applied.any_sent);
        assert_eq!(msg.recipients[0].status, Pending);
        assert_eq!(msg.recipients[0].reply, None);
        assert_eq!(msg.sent_via, None);
    }

    #[test]
    fn attempts_count_only_relays_actually_tried_and_last_error_says_why() {
        let down = || Some((RelayName::from("a"), busy()));
        // (relay tried, last answer) -> (attempts, last attempt, last error)
        let table = [
            (true, down(), 1, Some(500), Some("a: ")),
            (true, None, 1, Some(500), None),
            // Left out for its remembered refusal: no attempt.
            (false, None, 0, None, None),
            // Down earlier in the batch: no attempt, but the reason stands.
            (false, down(), 0, None, Some("a: ")),
        ];
        for (tried_any, last, attempts, last_attempt, error) in table {
            let mut msg = message(&["x@example.org"]);
            let tries = Tries { last, tried_any };
            note_attempt(&mut msg, &tries, 500);
            assert_eq!(msg.attempts, attempts, "{tried_any}");
            assert_eq!(msg.last_attempt, last_attempt, "{tried_any}");
            match error {
                Some(prefix) => assert!(
                    msg.last_error.as_deref().unwrap().starts_with(prefix),
                    "{:?}",
                    msg.last_error
                ),
                None => assert_eq!(msg.last_error, None),
            }
        }
    }

    #[test]
    fn mail_every_relay_refused_waits_for_the_first_refusal_to_end_not_the_backoff() {
        // (backoff's time, first refusal's end, now) -> next attempt
        let table = [
            (160, Some(3700), 100, 3700),
            (9000, Some(3700), 100, 3700),
            (160, Some(50), 100, 101),
            (160, None, 100, 160),
        ];
        for (at, release, t, want) in table {
            assert_eq!(after_refusals(at, release, t), want, "{at} {release:?} {t}");
        }
    }
}
