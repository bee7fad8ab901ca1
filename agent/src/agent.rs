//! The event loop: the one task that owns the agent's state (config, link, override, routes,
//! counts) and reacts to events: link changes, D-Bus commands, flusher reports, timers, signals.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrelay_config::{Config, ConfigError, UserName};
use linkrelay_dbus::address;
use linkrelay_dbus::agent::{
    AGENT_BUS_NAME, AGENT_PATH, AgentError, FlushResult, OverrideInfo, PruneResult, QueueCount,
    RelayAnswer, RouteInfo, SeenLink, UserWait,
};
use linkrelay_outbox::{AgentLock, Counts, Limits, LockError, Outbox, OutboxError, Owner};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zbus::object_server::InterfaceRef;

use crate::clock::now;
use crate::delivery::flusher::{
    self, BatchResult, FlushEvent, FlushRequest, FlushSettings, UserRoute,
};
use crate::delivery::memory::{self, LinkKey, RelayMemory, lock};
use crate::lifecycle;
use crate::router::{self, Override, Route, Routing};
use crate::service::interface::{AgentInterface, Command, Published, Reply};
use crate::service::listing::{ListedUser, Listing, map_outbox_err};
use crate::service::notify::Notifier;
use crate::service::prune;
use crate::service::waits::Waits;
use crate::source::debounce;
use crate::source::link::{LinkState, link_property};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// D-Bus trouble (no session bus, ...).
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    /// The bus to serve on cannot be reached: said once, with what to do.
    #[error("cannot connect to the {bus} bus at {address} ({why}). {fix}")]
    NoBus {
        /// "session" or "system".
        bus: &'static str,
        /// The address tried.
        address: String,
        /// The innermost cause (the socket's error).
        why: String,
        /// What to do about it.
        fix: &'static str,
    },
    /// Another agent owns the name.
    #[error("another linkrelayd already owns {0} on this bus")]
    AlreadyRunning(String),
    /// The data directory (or its lock) cannot be made.
    #[error("data directory: {0}")]
    DataDir(OutboxError),
    /// Another agent holds the data directory (its outboxes): this one gives way.
    #[error(
        "{0}; this one exits (one agent per data directory: two would send mail twice). `linkrelay` and `sendmail` work with the one that runs"
    )]
    DataDirBusy(LockError),
    /// The connection to the bus broke (the session ended, the bus daemon went away).
    #[error("lost the connection to the bus it serves on")]
    BusLost,
    /// Installing a signal handler failed.
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
}

/// Which bus to serve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeBus {
    /// The user's session bus (default).
    Session,
    /// The system bus (a system-wide agent).
    System,
}

/// How often a user whose outbox cannot be used is tried again, without a reload.
const HELD_RECHECK: Duration = Duration::from_secs(15);

/// How the agent was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file to reload from (`None`: embedded default, nothing to reload).
    pub config_path: Option<PathBuf>,
    /// Where outboxes live (`<data_dir>/<user>/`).
    pub data_dir: PathBuf,
    /// The bus to serve on.
    pub bus: ServeBus,
}

/// What the loop keeps for each user: the handles to the user's flusher task, and the user's
/// outbox (for counts, listings, retry and drop).
struct UserSlot {
    handle: flusher::FlusherHandle,
    outbox: Outbox,
}

struct Agent {
    opts: Options,
    config: Arc<Config>,
    config_error: Option<String>,
    link: LinkState,
    ovr: Option<(Override, u64)>,
    routing: Routing,
    flushers: BTreeMap<UserName, UserSlot>,
    /// Users whose outbox cannot be used, with why: they have no flusher, their route holds
    /// their mail with that reason, and the others run.
    held: BTreeMap<UserName, String>,
    /// When to try the held users' outboxes again (unix seconds), while any is held.
    held_recheck: Option<u64>,
    /// The open-files limit in force (raised to the hard one at start); `None`: unlimited.
    fd_limit: Option<u64>,
    counts: BTreeMap<UserName, Counts>,
    next_due: BTreeMap<UserName, u64>,
    memory: Arc<Mutex<RelayMemory>>,
    events_tx: mpsc::UnboundedSender<FlushEvent>,
    drops_tx: mpsc::UnboundedSender<UserName>,
    drop_watch: Option<tokio::task::JoinHandle<()>>,
    published: Arc<Mutex<Published>>,
    /// What the flushers said lately that the `Waits` property shows.
    waits: Waits,
    iface: InterfaceRef<AgentInterface>,
    notifier: Notifier,
    /// The SMTP submission listener, once the agent owns its bus name.
    listener: Option<crate::submission::Listener>,
    prunes: Prunes,
    /// The link source's task, and where it publishes: a reload that changes `[agent]
    /// source` stops it and starts the new one.
    source: (tokio::task::JoinHandle<()>, watch::Sender<LinkState>),
}

/// Where pruning of sent mail stands (see [`crate::service::prune`]).
struct Prunes {
    /// When to prune next (unix seconds); `None` while one runs, or when nothing is kept.
    at: Option<u64>,
    /// When the last prune started.
    last: u64,
    /// Mail was sent since the last prune started.
    sent_since: bool,
    /// Where prunes report to the loop.
    done: mpsc::UnboundedSender<Vec<prune::Report>>,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(opts: Options, config: Config) -> Result<(), RunError> {
    // First of all: no outbox is touched while another agent holds them.
    let _lock = take_data_dir(&opts)?;
    let fd_limit = lifecycle::raise_fd_limit();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (drops_tx, mut drops_rx) = mpsc::unbounded_channel::<UserName>();
    let (prunes_tx, mut prunes_rx) = mpsc::unbounded_channel();
    let published = Arc::new(Mutex::new(Published::default()));

    let builder = match opts.bus {
        ServeBus::Session => zbus::connection::Builder::session(),
        ServeBus::System => zbus::connection::Builder::system(),
    };
    let notifier_commands = cmd_tx.clone();
    let conn = builder
        .serve_at(AGENT_PATH, AgentInterface::new(cmd_tx, published.clone()))
        .build()
        .await
        .map_err(|e| no_bus(opts.bus, &e))?;
    let iface = conn
        .object_server()
        .interface::<_, AgentInterface>(AGENT_PATH)
        .await?;

    // Desktop notifications go to the user's session bus, whichever bus the agent serves on.
    let session = match opts.bus {
        ServeBus::Session => Some(conn.clone()),
        ServeBus::System => zbus::Connection::session().await.ok(),
    };
    let notifier = Notifier::spawn(config.notify, session, notifier_commands);

    let (link_tx, mut link_rx) = watch::channel(LinkState::unknown());
    let source = (
        crate::source::start(config.agent.source, link_tx.clone()),
        link_tx,
    );

    // Which relay took mail on which link, and who refused us: kept across restarts.
    let memory = RelayMemory::load(
        &opts.data_dir.join(crate::delivery::memory::FILE_NAME),
        now(),
    );
    let mut agent = Agent {
        opts,
        config: Arc::new(config),
        config_error: None,
        link: LinkState::unknown(),
        ovr: None,
        routing: Routing {
            link_name: None,
            routes: BTreeMap::new(),
        },
        flushers: BTreeMap::new(),
        held: BTreeMap::new(),
        held_recheck: None,
        fd_limit,
        counts: BTreeMap::new(),
        next_due: BTreeMap::new(),
        memory: Arc::new(Mutex::new(memory)),
        events_tx,
        drops_tx,
        drop_watch: None,
        published,
        waits: Waits::default(),
        iface,
        notifier,
        listener: None,
        // Once at start-up: mail may have aged while the agent was down.
        prunes: Prunes {
            at: Some(now()),
            last: 0,
            sent_since: false,
            done: prunes_tx,
        },
        source,
    };
    agent.sync_flushers();

    // Wait briefly for the link source's first reading so the first published state is real.
    let _ = tokio::time::timeout(Duration::from_secs(2), link_rx.changed()).await;
    agent.link = link_rx.borrow_and_update().clone();
    agent.reroute().await;
    agent.publish_all().await;
    for f in agent.flushers.values() {
        let _ = f.handle.requests.send(FlushRequest::default());
    }

    // Subscribed before the loop: nothing the loop polls between events may call the bus (see
    // lifecycle::BusWatch).
    let mut bus = lifecycle::BusWatch::subscribe(&conn).await;
    // Before anyone can see the agent (its name, its listener): a SIGHUP sent as soon as it
    // shows must reload it, not end it as the default action would.
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    // Claim the name last: once a client sees it, the state behind it is real.
    let flags = zbus::fdo::RequestNameFlags::DO_NOT_QUEUE;
    match conn.request_name_with_flags(AGENT_BUS_NAME, flags).await? {
        zbus::fdo::RequestNameReply::PrimaryOwner | zbus::fdo::RequestNameReply::AlreadyOwner => {}
        _ => return Err(RunError::AlreadyRunning(AGENT_BUS_NAME.into())),
    }
    // Only now: a second agent of the same user stops at the name, before it could take over
    // the first one's socket.
    agent.listener = Some(crate::submission::Listener::start(
        agent.config.clone(),
        agent.opts.data_dir.clone(),
        linkrelay_config::submission_socket_path(),
    ));
    agent.publish_all().await;
    info!(bus = ?agent.opts.bus, "linkrelayd ready as {AGENT_BUS_NAME}");
    lifecycle::ready(&format!("serving {AGENT_BUS_NAME}"));
    let mut watchdog = lifecycle::Watchdog::from_env();

    let mut last_applied = Instant::now();
    let mut pending_link: Option<LinkState> = None;
    let far = Duration::from_secs(365 * 86400);
    let mut link_source_alive = true;

    loop {
        // Read each time round: a reload may have changed it.
        let debounce = agent.config.agent.debounce;
        let debounce_at = match pending_link {
            Some(_) => last_applied + debounce,
            None => Instant::now() + far,
        };
        let wake_at = agent.next_wake();
        tokio::select! {
            changed = link_rx.changed(), if link_source_alive => {
                if changed.is_err() {
                    // Keep serving with the last state, and stop polling the closed channel
                    // (it would answer at once, for ever: a busy loop).
                    warn!("link source ended; the link stays what it was last");
                    link_source_alive = false;
                    continue;
                }
                let state = link_rx.borrow_and_update().clone();
                let change = debounce::Change {
                    quiet: last_applied.elapsed() >= debounce,
                    pending: pending_link.is_some(),
                    sendable_before: agent.sends_any(),
                    sendable_after: agent.would_send(&state),
                };
                match debounce::decide(change) {
                    debounce::Step::Apply => {
                        pending_link = None;
                        agent.link = state;
                        last_applied = Instant::now();
                        agent.reroute().await;
                    }
                    debounce::Step::Wait => pending_link = Some(state),
                }
            }
            _ = tokio::time::sleep_until(debounce_at), if pending_link.is_some() => {
                if let Some(state) = pending_link.take() {
                    agent.link = state;
                    last_applied = Instant::now();
                    agent.reroute().await;
                }
            }
            _ = sleep_until_unix(wake_at), if wake_at.is_some() => {
                agent.on_timer().await;
            }
            Some(cmd) = cmd_rx.recv() => agent.on_command(cmd).await,
            Some(ev) = events_rx.recv() => agent.on_flush_event(ev).await,
            Some(reports) = prunes_rx.recv() => agent.on_pruned(reports).await,
            Some(user) = drops_rx.recv() => {
                if let Some(f) = agent.flushers.get(&user) {
                    f.handle.arrived.store(true, std::sync::atomic::Ordering::Relaxed);
                    let _ = f.handle.requests.send(FlushRequest {
                        arrival: true,
                        ..FlushRequest::default()
                    });
                }
            }
            _ = hup.recv() => {
                if let Err(e) = agent.reload().await {
                    warn!("reload failed, the running config stays: {e:?}");
                }
            }
            // From the loop itself: a loop that is stuck stops pinging and systemd restarts it.
            _ = watchdog.tick() => watchdog.ping(),
            _ = bus.lost() => {
                lifecycle::stopping();
                return Err(RunError::BusLost);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    lifecycle::stopping();
    info!("linkrelayd stopping");
    Ok(())
}

/// The error for a bus that cannot be reached. zbus repeats its cause at each level of the
/// chain; the innermost one is said once, with the fixes.
fn no_bus(bus: ServeBus, e: &zbus::Error) -> RunError {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let (bus, address, fix) = match bus {
        ServeBus::Session => (
            "session",
            address::session_bus_address(),
            "Run linkrelayd from your desktop session (or as the user service that `linkrelay install --user` sets up), \
             start a session bus for it with `dbus-run-session -- linkrelayd`, \
             or serve the system bus with `linkrelayd --bus system`",
        ),
        ServeBus::System => (
            "system",
            address::system_bus_address(),
            "Is the system dbus-daemon running? Or serve your session bus: run linkrelayd without `--bus system`",
        ),
    };
    RunError::NoBus {
        bus,
        address,
        why: inner.to_string(),
        fix,
    }
}

/// Takes the lock of the data directory for this process, saying where it serves.
fn take_data_dir(opts: &Options) -> Result<AgentLock, RunError> {
    let (bus, address) = match opts.bus {
        ServeBus::Session => ("session", address::session_bus_address()),
        ServeBus::System => ("system", address::system_bus_address()),
    };
    let owner = Owner {
        pid: std::process::id(),
        bus: bus.into(),
        address,
    };
    AgentLock::take(&opts.data_dir, &owner).map_err(|e| match e {
        e @ LockError::Held { .. } => RunError::DataDirBusy(e),
        LockError::Outbox(e) => RunError::DataDir(e),
    })
}

async fn sleep_until_unix(at: Option<u64>) {
    let Some(at) = at else {
        std::future::pending::<()>().await;
        return;
    };
    let secs = at.saturating_sub(now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

impl Agent {
    fn settings(&self) -> Arc<FlushSettings> {
        Arc::new(FlushSettings {
            relays: self
                .config
                .relays
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            retry: self.config.retry,
            limits: self.outbox_limits(),
        })
    }

    /// What the outboxes read at most, from `[outbox]`.
    fn outbox_limits(&self) -> Limits {
        Limits {
            max_message_size: self.config.outbox.max_message_size,
        }
    }

    /// The link that is up, as the relay memory names it.
    fn link_key(&self) -> LinkKey {
        match (&self.routing.link_name, &self.link.link) {
            (Some(rule), _) => LinkKey::Rule(rule.clone()),
            (None, Some(link)) => LinkKey::Unmatched(link.facts.id.clone()),
            (None, None) => LinkKey::NoLink,
        }
    }

    /// What a relay test needs: the config, the link and the memory its answer goes into.
    fn bench(&self) -> crate::service::relaytest::Bench {
        crate::service::relaytest::Bench {
            config: self.config.clone(),
            link: self.link_key(),
            memory: self.memory.clone(),
        }
    }

    fn user_route(&self, user: &str) -> UserRoute {
        let link = self.link_key();
        let route = self
            .routing
            .routes
            .get(user)
            .cloned()
            .unwrap_or(Route::Hold {
                reason: "starting".into(),
            });
        UserRoute { link, route }
    }

    /// Starts flushers for new users (and for held ones whose outbox can be used now), stops
    /// those of removed users, updates settings. A user whose outbox cannot be used is held
    /// ([`Agent::hold`]); the others run.
    fn sync_flushers(&mut self) {
        let settings = self.settings();
        let users: Vec<UserName> = self.config.users.iter().map(|u| u.name.clone()).collect();
        self.say_how_many_fit(users.len() as u64);
        self.flushers.retain(|name, _| users.contains(name));
        self.held.retain(|name, _| users.contains(name));
        self.counts.retain(|name, _| users.contains(name));
        self.waits.retain_users(&users);
        let limits = self.outbox_limits();
        for name in users {
            if let Some(f) = self.flushers.get_mut(&name) {
                let _ = f.handle.settings.send(settings.clone());
                f.outbox = f.outbox.clone().with_limits(limits);
                continue;
            }
            match self.start_flusher(&name, &settings) {
                Ok(()) => {
                    if self.held.remove(&name).is_some() {
                        info!(user = %name, "the outbox can be used again");
                    }
                }
                Err(e) => self.hold(&name, &e),
            }
        }
        // (Re)watch every user's new/ for files dropped by mail clients, incoming/ for what
        // `linkrelay sendmail` submits, and queue/ for what it queues when it finds no agent
        // (one may be starting): sendmail does not tell us over D-Bus.
        if let Some(old) = self.drop_watch.take() {
            old.abort();
        }
        let dirs = self
            .flushers
            .iter()
            .flat_map(|(user, f)| {
                ["new", "incoming", "queue"].map(|d| (user.clone(), f.outbox.root().join(d)))
            })
            .collect();
        match crate::delivery::dropwatch::spawn(dirs, self.drops_tx.clone()) {
            Ok(task) => self.drop_watch = Some(task),
            Err(e) => {
                warn!("cannot watch the outboxes ({e}); new mail waits for the next flush")
            }
        }
    }

    /// Says at start (and reload) how many users can send at once under the open-files
    /// limit: a warning when some cannot, and what to do.
    fn say_how_many_fit(&self, users: u64) {
        let Some(limit) = self.fd_limit else {
            info!(users, "open files: no limit");
            return;
        };
        let fit = lifecycle::users_sending_at_once(limit);
        if users <= fit {
            info!(
                users,
                limit, "open files: up to {fit} users can send at once"
            );
        } else {
            warn!(
                "{users} users, but the open-files limit of {limit} lets only about {fit} send at once \
                 ({} descriptors each while sending; none while idle): the others' mail waits and is \
                 retried. Raise the limit (`ulimit -Hn`, or LimitNOFILE= in the unit).",
                lifecycle::FDS_PER_SENDING_USER
            );
        }
    }

    /// Opens `user`'s outbox (replaying its journal) and starts its flusher.
    fn start_flusher(
        &mut self,
        user: &UserName,
        settings: &Arc<FlushSettings>,
    ) -> Result<(), OutboxError> {
        let outbox =
            Outbox::open(&self.opts.data_dir.join(user))?.with_limits(self.outbox_limits());
        if let Err(e) = outbox.recover() {
            warn!(%user, error = %e, "outbox recovery");
        }
        // Before anything lists the queue: the replay may move messages.
        let journal = match outbox.open_journal() {
            Ok((journal, replayed)) => {
                if let Some(size) = replayed.set_aside {
                    self.journal_set_aside(user, size);
                }
                if replayed.applied > 0 || replayed.torn > 0 {
                    info!(%user, records = replayed.records, applied = replayed.applied, torn = replayed.torn, "outcome journal replayed");
                }
                Some(journal)
            }
            Err(e) => {
                warn!(%user, error = %e, "cannot use the outcome journal; recording each outcome with fsyncs instead");
                None
            }
        };
        if let Ok(c) = outbox.counts() {
            self.counts.insert(user.clone(), c);
        }
        let handle = flusher::spawn(
            user.clone(),
            outbox.clone(),
            journal,
            self.user_route(user),
            settings.clone(),
            self.memory.clone(),
            self.events_tx.clone(),
        );
        self.flushers
            .insert(user.clone(), UserSlot { handle, outbox });
        Ok(())
    }

    /// Holds `user`, whose outbox cannot be used: logged and notified (once per reason), and
    /// shown as the user's route.
    fn hold(&mut self, user: &UserName, e: &OutboxError) {
        self.held_recheck = Some(now().saturating_add(HELD_RECHECK.as_secs()));
        let why = format!("its outbox cannot be used: {e}");
        if self.held.get(user) == Some(&why) {
            return;
        }
        let advice = format!(
            "Mail from {user} is held meanwhile; the other users' mail goes on. Fix it: linkrelayd \
             tries it again every 15 s, or at once on `linkrelay reload`."
        );
        warn!(%user, "{why}. {advice}");
        self.notifier
            .problem(user, &format!("Its outbox cannot be used: {e}."), &advice);
        self.held.insert(user.clone(), why);
    }

    /// The error for a command about `user`, who has no flusher: held (and why), or unknown.
    fn no_flusher(&self, user: &str) -> AgentError {
        match self.held.get(user) {
            Some(why) => AgentError::Io(format!("{user}: {why}")),
            None => AgentError::UnknownUser(format!("no user named {user:?}")),
        }
    }

    /// Whether the outboxes of the users `config` adds can be used; every problem, if not.
    fn new_outboxes_usable(&self, config: &Config) -> Result<(), String> {
        let problems: Vec<String> = config
            .users
            .iter()
            .map(|u| u.name.as_str())
            .filter(|u| !self.flushers.contains_key(*u) && !self.held.contains_key(*u))
            .filter_map(|u| {
                let e = Outbox::open(&self.opts.data_dir.join(u)).err()?;
                Some(format!("user {u}: its outbox cannot be used: {e}"))
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        Err(format!(
            "the config is not applied (the running one stays): {}",
            problems.join("; ")
        ))
    }

    /// Reports a journal too large to replay, which the outbox set aside.
    fn journal_set_aside(&self, user: &str, size: u64) {
        let what = format!(
            "Its outcome journal was {size} bytes, too large to be one linkrelayd wrote, and was set aside as journal.oversized."
        );
        let advice = "Mail sent just before linkrelayd last stopped may go out once more. Delete journal.oversized once you have looked at it.";
        warn!(%user, size, "{what} {advice}");
        self.notifier.problem(user, &what, advice);
    }

    fn override_now(&mut self) -> Option<Override> {
        if let Some((_, expires)) = &self.ovr
            && *expires != 0
            && *expires <= now()
        {
            info!("override expired");
            self.ovr = None;
        }
        self.ovr.as_ref().map(|(o, _)| o.clone())
    }

    /// Whether the routes in effect send some user's mail.
    fn sends_any(&self) -> bool {
        router::sends_any(&self.routing)
    }

    /// Whether link state `state` would send some user's mail (the override as it stands).
    fn would_send(&self, state: &LinkState) -> bool {
        let ovr = self.ovr.as_ref().map(|(o, _)| o);
        router::sends_any(&router::route(&self.config, state, ovr))
    }

    /// Recomputes every route; changed ones go to their flusher (which flushes at once, backoff
    /// reset) and out as RouteChanged.
    async fn reroute(&mut self) {
        let ovr = self.override_now();
        let mut routing = router::route(&self.config, &self.link, ovr.as_ref());
        for (user, why) in &self.held {
            let reason = format!(
                "{why}; fix it: it is tried again every {} s (or `linkrelay reload`)",
                HELD_RECHECK.as_secs()
            );
            routing.routes.insert(user.clone(), Route::Hold { reason });
        }
        let old = std::mem::replace(&mut self.routing, routing);
        let link_changed = old.link_name != self.routing.link_name;
        if let Some(link) = &self.link.link {
            lock(&self.memory).link_facts(&self.link_key(), &link.facts);
        }
        let emitter = self.iface.signal_emitter().clone();
        let users: Vec<UserName> = self.flushers.keys().cloned().collect();
        for user in users {
            let new_route = self.user_route(&user);
            let Some(f) = self.flushers.get(&user) else {
                continue;
            };
            let changed = old.routes.get(&*user) != Some(&new_route.route) || link_changed;
            if !changed {
                continue;
            }
            info!(%user, route = ?new_route.route, "route");
            let _ = f.handle.route.send(new_route.clone());
            let _ = f.handle.requests.send(FlushRequest {
                force: true,
                ..FlushRequest::default()
            });
            let info = route_info(&user, &new_route.route);
            let _ = AgentInterface::route_changed(&emitter, &user, info.relays, &info.hold).await;
        }
        self.publish_all().await;
    }

    async fn publish_all(&mut self) {
        let ovr = self.override_now();
        let expires = self.ovr.as_ref().map(|(_, e)| *e).unwrap_or(0);
        let next = Published {
            source: self.link.source.as_str().to_string(),
            source_problem: self.link.problem.clone().unwrap_or_default(),
            link: link_property(self.link.link.as_ref(), self.routing.link_name.as_deref()),
            routes: self
                .routing
                .routes
                .iter()
                .map(|(u, r)| route_info(u, r))
                .collect(),
            override_info: ovr.map(|o| {
                let (kind, name) = match o {
                    Override::Link(name) => ("link", name.into()),
                    Override::Relay(name) => ("relay", name.into()),
                };
                OverrideInfo {
                    kind: kind.into(),
                    name,
                    expires,
                }
            }),
            queue: self.queue_counts(),
            config_path: self
                .opts
                .config_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            config_error: self.config_error.clone().unwrap_or_default(),
            not_in_force: self
                .listener
                .as_ref()
                .map(|l| l.problems())
                .unwrap_or_default(),
            waits: self.wait_infos(),
        };
        let old = {
            let mut p = self.published.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *p, next.clone())
        };
        lifecycle::status(&lifecycle::status_line(
            self.routing.link_name.as_deref(),
            &next.routes,
            &next.queue,
        ));
        // PropertiesChanged only for what changed: watchers wake for news, not for noise.
        let iface = self.iface.get().await;
        let e = self.iface.signal_emitter();
        if old.source != next.source {
            let _ = iface.source_changed(e).await;
        }
        if old.source_problem != next.source_problem {
            let _ = iface.source_problem_changed(e).await;
        }
        if old.link != next.link {
            let _ = iface.link_changed(e).await;
        }
        if old.routes != next.routes {
            let _ = iface.routes_changed(e).await;
        }
        if old.override_info != next.override_info {
            let _ = iface.override_changed(e).await;
        }
        if old.queue != next.queue {
            let _ = iface.queue_changed(e).await;
            self.notifier.queue_changed();
        }
        if old.config_path != next.config_path {
            let _ = iface.config_path_changed(e).await;
        }
        if old.config_error != next.config_error {
            let _ = iface.config_error_changed(e).await;
        }
        if old.not_in_force != next.not_in_force {
            let _ = iface.config_not_in_force_changed(e).await;
        }
        if old.waits != next.waits {
            let _ = iface.waits_changed(e).await;
        }
    }

    async fn publish_queue(&mut self) {
        let queue = self.queue_counts();
        let waits = self.wait_infos();
        let (changed, waits_changed) = {
            let mut p = self.published.lock().unwrap_or_else(|p| p.into_inner());
            let changed = p.queue != queue;
            let waits_changed = p.waits != waits;
            p.queue = queue;
            p.waits = waits;
            if changed {
                lifecycle::status(&lifecycle::status_line(
                    self.routing.link_name.as_deref(),
                    &p.routes,
                    &p.queue,
                ));
            }
            (changed, waits_changed)
        };
        if changed {
            let iface = self.iface.get().await;
            let _ = iface.queue_changed(self.iface.signal_emitter()).await;
            self.notifier.queue_changed();
        }
        if waits_changed {
            let iface = self.iface.get().await;
            let _ = iface.waits_changed(self.iface.signal_emitter()).await;
        }
    }

    /// Why each user's mail waits, beyond its route ([`Waits::info`]).
    fn wait_infos(&self) -> Vec<UserWait> {
        let t = now();
        let memory = lock(&self.memory);
        self.flushers
            .keys()
            .map(|user| {
                let route = self.user_route(user);
                let next_due = self.next_due.get(user).copied();
                self.waits.info(user, &route, &memory, next_due, t)
            })
            .collect()
    }

    fn queue_counts(&self) -> Vec<QueueCount> {
        self.counts
            .iter()
            .map(|(user, c)| QueueCount {
                user: user.to_string(),
                queued: c.queued as u32,
                failed: c.failed as u32,
                sent: c.sent as u32,
            })
            .collect()
    }

    fn next_wake(&self) -> Option<u64> {
        let due = self.next_due.values().copied();
        let ovr = self.ovr.as_ref().map(|(_, e)| *e).filter(|e| *e != 0);
        due.chain(ovr)
            .chain(self.prunes.at)
            .chain(self.held_recheck)
            .min()
    }

    async fn on_timer(&mut self) {
        let t = now();
        if self.held_recheck.is_some_and(|at| at <= t) {
            // A user fixed their outbox (permissions, a full disk): start its flusher without
            // a reload. A user still held sets the next try.
            self.held_recheck = None;
            let held = self.held.len();
            self.sync_flushers();
            if self.held.len() < held {
                self.reroute().await;
                self.publish_all().await;
            }
        }
        if self.prunes.at.is_some_and(|at| at <= t) {
            self.prune("", None);
        }
        if self.ovr.as_ref().is_some_and(|(_, e)| *e != 0 && *e <= t) {
            self.reroute().await;
        }
        let due: Vec<UserName> = self
            .next_due
            .iter()
            .filter(|(_, at)| **at <= t)
            .map(|(u, _)| u.clone())
            .collect();
        for user in due {
            self.next_due.remove(&user);
            if let Some(f) = self.flushers.get(&user) {
                let _ = f.handle.requests.send(FlushRequest::default());
            }
        }
    }

    async fn on_flush_event(&mut self, ev: FlushEvent) {
        self.waits.record(&ev, now());
        let e = self.iface.signal_emitter().clone();
        match ev {
            FlushEvent::Sent {
                user,
                id,
                relay,
                reply,
            } => {
                self.mail_sent();
                let _ = AgentInterface::message_sent(&e, &user, &id, &relay, &reply).await;
            }
            FlushEvent::Deferred {
                user,
                id,
                reason,
                next_attempt,
            } => {
                let _ =
                    AgentInterface::message_deferred(&e, &user, &id, &reason, next_attempt).await;
            }
            FlushEvent::Failed { user, id, reason } => {
                self.notifier.failed(&user, &id, &reason);
                let _ = AgentInterface::message_failed(&e, &user, &id, &reason).await;
            }
            FlushEvent::NeedsLogin { relay, reason } => {
                self.notifier.needs_login(&relay, &reason);
            }
            FlushEvent::RelayRefused {
                user,
                relay,
                link,
                reply,
            } => {
                let link = link.as_str();
                let _ = AgentInterface::relay_refused(&e, &user, &relay, link, &reply).await;
            }
            FlushEvent::Finished {
                user,
                result,
                counts,
                next_due,
            } => {
                match next_due {
                    Some(at) => self.next_due.insert(user.clone(), at),
                    None => self.next_due.remove(&user),
                };
                self.counts.insert(user.clone(), counts);
                self.publish_queue().await;
                let _ =
                    AgentInterface::flush_finished(&e, &user, result.sent, result.remaining).await;
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::SetOverride {
                target,
                seconds,
                reply,
            } => {
                let r = self.set_override(target, seconds).await;
                let _ = reply.send(r);
            }
            Command::ClearOverride { reply } => {
                self.ovr = None;
                self.reroute().await;
                let _ = reply.send(Ok(()));
            }
            Command::Flush { user, wait, reply } => self.flush(&user, wait, reply),
            Command::Wake { user, reply } => {
                let r = if user.is_empty() || self.flushers.contains_key(user.as_str()) {
                    for (name, f) in &self.flushers {
                        if user.is_empty() || *name == *user {
                            let _ = f.handle.requests.send(FlushRequest::default());
                        }
                    }
                    Ok(())
                } else {
                    Err(self.no_flusher(&user))
                };
                let _ = reply.send(r);
            }
            Command::Listing { user, reply } => {
                let _ = reply.send(self.listing(&user));
            }
            Command::Retry { id, reply } => {
                let r = self.find(&id).and_then(|(user, outbox)| {
                    outbox.retry(&id).map_err(map_outbox_err)?;
                    Ok(user)
                });
                let r = match r {
                    Ok(user) => {
                        if let Some(f) = self.flushers.get(&user) {
                            let _ = f.handle.requests.send(FlushRequest {
                                once_more: true,
                                ..FlushRequest::default()
                            });
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(r);
            }
            Command::Drop { id, reply } => {
                let r = self.find(&id).and_then(|(user, outbox)| {
                    outbox.remove(&id).map_err(map_outbox_err)?;
                    info!(%user, %id, "dropped by the user");
                    if let Ok(c) = outbox.counts() {
                        self.counts.insert(user, c);
                    }
                    Ok(())
                });
                if r.is_ok() {
                    self.publish_queue().await;
                }
                let _ = reply.send(r);
            }
            Command::MessageUser { id, reply } => {
                let _ = reply.send(self.find(&id).map(|(user, _)| user.to_string()));
            }
            Command::Prune { user, reply } => self.prune(&user, Some(reply)),
            Command::Reload { reply } => {
                let r = self.reload().await;
                let _ = reply.send(r);
            }
            Command::TestRelay {
                relay,
                from,
                to,
                reply,
            } => crate::service::relaytest::spawn(self.bench(), relay, from, to, reply),
            Command::ProbeRelay {
                relay,
                from,
                to,
                reply,
            } => crate::service::relaytest::spawn_probe(self.bench(), *relay, from, to, reply),
            Command::LinkHistory { reply } => {
                let history = lock(&self.memory).history();
                let _ = reply.send(Ok(history.into_iter().map(seen_link_info).collect()));
            }
        }
    }

    async fn set_override(&mut self, ovr: Override, seconds: u64) -> Result<(), AgentError> {
        match &ovr {
            Override::Link(name) if self.config.link(name).is_none() => {
                let known: Vec<_> = self.config.links.iter().map(|l| l.name.as_str()).collect();
                return Err(AgentError::UnknownLink(format!(
                    "no link named {name:?}; known links: {}",
                    list_or_none(&known)
                )));
            }
            Override::Relay(name) if self.config.relay(name).is_none() => {
                let known: Vec<_> = self.config.relays.iter().map(|r| r.name.as_str()).collect();
                return Err(AgentError::UnknownRelay(format!(
                    "no relay named {name:?}; known relays: {}",
                    list_or_none(&known)
                )));
            }
            _ => {}
        }
        let expires = if seconds == 0 {
            0
        } else {
            now().saturating_add(seconds)
        };
        info!(?ovr, expires, "override set");
        self.ovr = Some((ovr, expires));
        self.reroute().await;
        // The user chose the route: its relays are tried now, even one that refused us.
        self.flush_all(true);
        Ok(())
    }

    fn flush(&mut self, user: &str, wait: bool, reply: Reply<Vec<FlushResult>>) {
        let users: Vec<UserName> = if user.is_empty() {
            self.flushers.keys().cloned().collect()
        } else if self.flushers.contains_key(user) {
            vec![user.into()]
        } else {
            let _ = reply.send(Err(self.no_flusher(user)));
            return;
        };
        let mut waits = Vec::new();
        for u in &users {
            let Some(f) = self.flushers.get(u) else {
                continue;
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = f.handle.requests.send(FlushRequest {
                force: true,
                done: wait.then_some(tx),
                arrival: false,
                once_more: true,
            });
            waits.push((u.clone(), rx));
        }
        if !wait {
            let now: Vec<FlushResult> = users
                .iter()
                .map(|u| FlushResult {
                    user: u.to_string(),
                    sent: 0,
                    remaining: self.counts.get(u).map(|c| c.queued as u32).unwrap_or(0),
                })
                .collect();
            let _ = reply.send(Ok(now));
            return;
        }
        // Wait off the event loop: flushes take as long as the relays do.
        tokio::spawn(async move {
            let mut out = Vec::new();
            for (user, rx) in waits {
                let r: BatchResult = rx.await.unwrap_or_default();
                out.push(FlushResult {
                    user: user.into(),
                    sent: r.sent,
                    remaining: r.remaining,
                });
            }
            let _ = reply.send(Ok(out));
        });
    }

    /// Starts a prune of `user`'s sent mail ("" = every user), off the loop; with `reply`,
    /// for `linkrelay prune`.
    fn prune(&mut self, user: &str, reply: Option<Reply<Vec<PruneResult>>>) {
        if !user.is_empty() && !self.flushers.contains_key(user) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(self.no_flusher(user)));
            }
            return;
        }
        let users = self
            .flushers
            .iter()
            .filter(|(name, _)| user.is_empty() || *name == user)
            .map(|(name, f)| (name.clone(), f.outbox.clone()))
            .collect();
        let t = now();
        if user.is_empty() {
            self.prunes.at = None;
            self.prunes.last = t;
            self.prunes.sent_since = false;
        }
        let outbox = self.config.outbox;
        prune::Job {
            users,
            now: t,
            keep: outbox.keep_sent,
            keep_size: outbox.keep_sent_size,
        }
        .spawn(self.prunes.done.clone(), reply);
    }

    /// Mail went out: `sent/` may now be over its size; prune within the hour.
    fn mail_sent(&mut self) {
        self.prunes.sent_since = true;
        let soon = prune::next_prune(self.prunes.last, None, true);
        self.prunes.at = prune::earliest(self.prunes.at, soon);
    }

    /// A prune ended: new counts, and when to prune next.
    async fn on_pruned(&mut self, reports: Vec<prune::Report>) {
        let mut expiry = None;
        for r in reports {
            if let Some(c) = r.counts
                && self.flushers.contains_key(&r.user)
            {
                self.counts.insert(r.user, c);
            }
            if let Ok(p) = r.result {
                expiry = prune::earliest(expiry, p.next_expiry);
            }
        }
        let next = prune::next_prune(self.prunes.last, expiry, self.prunes.sent_since);
        self.prunes.at = prune::earliest(self.prunes.at, next);
        self.publish_queue().await;
    }

    fn find(&self, id: &str) -> Result<(UserName, Outbox), AgentError> {
        linkrelay_outbox::validate_id(id).map_err(map_outbox_err)?;
        // Take in what `linkrelay sendmail` handed over first (a stat each when nothing
        // waits): an id it just printed is then known, and a message dropped now cannot
        // linger in incoming/ (and in listings) until a flusher's round takes it in.
        for (user, f) in &self.flushers {
            for ingested in f.outbox.ingest_incoming() {
                debug!(%user, ?ingested, "ingested from incoming/ before a retry or drop");
            }
        }
        for (user, f) in &self.flushers {
            match f.outbox.locate(id) {
                Ok(Some(_)) => return Ok((user.clone(), f.outbox.clone())),
                Ok(_) => {}
                Err(e) => return Err(map_outbox_err(e)),
            }
        }
        Err(AgentError::UnknownId(format!("no message with id {id}")))
    }

    /// What a queue listing of `user` ("" = every user) walks; the walk happens off the loop
    /// ([`crate::service::listing`]).
    fn listing(&self, user: &str) -> Result<Listing, AgentError> {
        if !user.is_empty() && !self.flushers.contains_key(user) {
            return Err(self.no_flusher(user));
        }
        let users = self
            .flushers
            .iter()
            .filter(|(name, _)| user.is_empty() || *name == user)
            .map(|(name, f)| ListedUser {
                name: name.clone(),
                outbox: f.outbox.clone(),
                route: self.user_route(name),
                no_space: f.handle.no_space.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect();
        Ok(Listing {
            users,
            memory: self.memory.clone(),
            t: now(),
        })
    }

    async fn reload(&mut self) -> Result<(), AgentError> {
        // An agent that started without a file takes the one written since (`linkrelay
        // config init` or `linkrelay setup`) at the default path.
        let written = || linkrelay_config::default_config_path().filter(|p| p.exists());
        let Some(path) = self.opts.config_path.clone().or_else(written) else {
            return Err(AgentError::ConfigInvalid(
                "running on the embedded default config; there is no file to reload (write one with `linkrelay config init` or `linkrelay setup`)".into(),
            ));
        };
        match Config::load(&path).map_err(|e| match e {
            ConfigError::Invalid(d) => d.to_string(),
            other => other.to_string(),
        }) {
            Ok(config) if let Err(text) = self.new_outboxes_usable(&config) => {
                self.reload_failed(text).await
            }
            Ok(config) => {
                info!(path = %path.display(), "config reloaded");
                self.opts.config_path = Some(path);
                self.apply(config).await;
                Ok(())
            }
            Err(text) => self.reload_failed(text).await,
        }
    }

    /// Puts a reloaded config in force, every setting of it: `[agent] debounce` is read by the
    /// loop each time round, the rest is applied here.
    async fn apply(&mut self, config: Config) {
        let old = std::mem::replace(&mut self.config, Arc::new(config));
        self.config_error = None;
        if old.agent.source != self.config.agent.source {
            info!(source = %self.config.agent.source, "[agent] source changed; starting it");
            self.source.0.abort();
            let tx = self.source.1.clone();
            self.source.0 = crate::source::start(self.config.agent.source, tx);
        }
        self.notifier.settings(self.config.notify);
        if let Some(listener) = &mut self.listener {
            listener.reload(
                self.config.clone(),
                linkrelay_config::submission_socket_path(),
            );
        }
        // Sent mail the new `keep_sent`/`keep_sent_size` no longer keeps goes now, unless a
        // prune runs now (`at` is `None`; the next one applies them).
        if (old.outbox.keep_sent, old.outbox.keep_sent_size)
            != (
                self.config.outbox.keep_sent,
                self.config.outbox.keep_sent_size,
            )
            && let Some(at) = &mut self.prunes.at
        {
            *at = now();
        }
        let relays = changed_relays(&old, &self.config);
        {
            let mut memory = lock(&self.memory);
            for relay in &relays {
                info!(%relay, "relay settings changed; forgetting what the old settings met");
                memory.forget_relay(relay);
            }
            memory
                .refusal_memory_changed(old.retry.refusal_memory, self.config.retry.refusal_memory);
        }
        self.sync_flushers();
        self.reroute().await;
        // Mail that waits on what the old settings decided (a refusal, a backoff) is tried
        // under the new ones now.
        if !relays.is_empty() || old.retry != self.config.retry {
            self.flush_all(false);
        }
        self.publish_all().await;
    }

    /// Asks every flusher for a batch that ignores the backoff; with `once_more`, relays
    /// whose refusal is remembered are tried once more too.
    fn flush_all(&self, once_more: bool) {
        for f in self.flushers.values() {
            let _ = f.handle.requests.send(FlushRequest {
                force: true,
                once_more,
                ..FlushRequest::default()
            });
        }
    }

    /// A reload that is not applied: the running config stays, and says why.
    async fn reload_failed(&mut self, text: String) -> Result<(), AgentError> {
        warn!("config reload failed; the running config stays:\n{text}");
        self.config_error = Some(text.clone());
        self.publish_all().await;
        Err(AgentError::ConfigInvalid(text))
    }
}

/// The relays of both `old` and `new` whose settings differ. An added relay keeps what is
/// known of it: `linkrelay setup` probes a relay before it writes it into the file. Pure.
fn changed_relays(old: &Config, new: &Config) -> Vec<linkrelay_config::RelayName> {
    old.relays
        .iter()
        .filter(|r| new.relay(&r.name).is_some_and(|n| n != *r))
        .map(|r| r.name.clone())
        .collect()
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// The D-Bus form of a link in the relay memory's history.
fn seen_link_info(seen: memory::SeenLink) -> SeenLink {
    SeenLink {
        key: seen.key,
        facts: seen.facts.into_iter().collect(),
        answers: seen
            .answers
            .into_iter()
            .map(|(relay, a)| RelayAnswer {
                relay: relay.into(),
                accepted: a.accepted,
                at: a.at,
                reply: a.reply,
            })
            .collect(),
    }
}

/// The D-Bus form of a route.
pub fn route_info(user: &str, route: &Route) -> RouteInfo {
    match route {
        Route::Send { relays, .. } => RouteInfo {
            user: user.to_string(),
            relays: relays.iter().map(|r| r.to_string()).collect(),
            hold: String::new(),
        },
        Route::Hold { reason } => RouteInfo {
            user: user.to_string(),
            relays: Vec::new(),
            hold: reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(relays: &str) -> Config {
        let text = format!(
            "{relays}\n[[user]]\nname = \"me\"\nfrom = [\"*\"]\nroutes = {{ \"*\" = [\"a\"] }}\n"
        );
        Config::parse(&text, std::path::Path::new("test.toml")).unwrap()
    }

    #[test]
    fn a_reload_names_the_relays_whose_settings_changed_and_only_those() {
        let a = "[[relay]]\nname = \"a\"\nhost = \"a.example\"\ntls = \"tls\"\n";
        let a_port = "[[relay]]\nname = \"a\"\nhost = \"a.example\"\ntls = \"tls\"\nport = 2525\n";
        let b = "[[relay]]\nname = \"b\"\nhost = \"b.example\"\ntls = \"tls\"\n";
        let names = |v: Vec<linkrelay_config::RelayName>| -> Vec<String> {
            v.iter().map(|r| r.to_string()).collect()
        };
        let ab = format!("{a}{b}");
        let table: [(&str, &str, &[&str]); 4] = [
            (a, a, &[]),
            (a, a_port, &["a"]),
            (&ab, a, &[]),
            (a, &ab, &[]),
        ];
        for (old, new, want) in table {
            assert_eq!(
                names(changed_relays(&config(old), &config(new))),
                want,
                "{old} -> {new}"
            );
        }
    }
}
