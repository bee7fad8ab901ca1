//! Choosing the link source: `[agent] source` = `networkmanager`, `netlink`, or `auto`
//! (NetworkManager while it owns its bus name, netlink while it does not).
//!
//! Every source publishes whole [`LinkState`] snapshots; the chosen one is forwarded into the
//! agent's channel, so the agent never sees which source it was, beyond `LinkState::source`
//! (published as the `Source` property).

use std::time::Duration;

use futures_util::StreamExt;
use linkrelay_config::SourceKind;
use linkrelay_dbus::nm::NM_BUS_NAME;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};
use zbus::{Connection, MessageStream};

use crate::source::link::{LinkState, SourceName};

/// Longest wait between attempts to reach the system bus or reopen a netlink socket.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// With `auto`, how long NetworkManager may own its name without giving a readable state
/// before netlink is used instead.
const NM_GRACE: Duration = Duration::from_secs(2);

/// Starts the source(s) that `kind` asks for; they publish into `tx` until the runtime ends or
/// the returned task is aborted (a reload that changes `[agent] source`).
pub fn start(kind: SourceKind, tx: watch::Sender<LinkState>) -> tokio::task::JoinHandle<()> {
    match kind {
        SourceKind::NetworkManager => tokio::spawn(networkmanager(tx)),
        SourceKind::Netlink => tokio::spawn(netlink(tx)),
        SourceKind::Auto => tokio::spawn(auto(tx)),
    }
}

/// NetworkManager only: its state, or why it cannot be read.
async fn networkmanager(tx: watch::Sender<LinkState>) {
    let mut delay = Duration::from_secs(1);
    loop {
        match Connection::system().await {
            Ok(system) => {
                delay = Duration::from_secs(1);
                if let Err(e) = crate::source::nm::run(system, tx.clone()).await {
                    warn!("NetworkManager source: {e}");
                }
            }
            Err(e) => {
                let _ = tx.send(LinkState {
                    source: SourceName::None,
                    problem: Some(format!(
                        "cannot connect to the system bus to reach NetworkManager ({e}); is the system dbus-daemon running? Without NetworkManager, use [agent] source = \"netlink\" or \"auto\""
                    )),
                    link: None,
                });
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// Netlink only: the kernel's default-route link; the socket is reopened if it ever fails.
async fn netlink(tx: watch::Sender<LinkState>) {
    let mut delay = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let error = match crate::source::netlink::Watcher::subscribe() {
            Ok(watcher) => watcher.run(tx.clone()).await,
            Err(e) => e,
        };
        warn!("netlink source: {error}");
        let _ = tx.send(LinkState {
            source: SourceName::Netlink,
            problem: Some(error.to_string()),
            link: None,
        });
        if started.elapsed() > MAX_RETRY {
            delay = Duration::from_secs(1);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// A task that ends when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A source running in its own task, publishing into its own channel.
struct Running {
    _task: AbortOnDrop,
    rx: watch::Receiver<LinkState>,
}

/// `auto`: forwards NetworkManager's state while NetworkManager owns its bus name (and has
/// been read), netlink's otherwise.
struct Auto {
    tx: watch::Sender<LinkState>,
    netlink: Option<Running>,
}

impl Auto {
    fn start_netlink(&mut self) {
        if self.netlink.is_none() {
            let (tx, rx) = watch::channel(LinkState::unknown());
            let task = AbortOnDrop(tokio::spawn(netlink(tx)));
            self.netlink = Some(Running { _task: task, rx });
        }
    }

    fn stop_netlink(&mut self) {
        if self.netlink.take().is_some() {
            info!("NetworkManager is back: using it instead of netlink");
        }
    }

    /// Forwards `state` if it differs from what the agent has.
    fn forward(&self, state: LinkState) {
        self.tx.send_if_modified(|old| {
            if *old == state {
                false
            } else {
                *old = state;
                true
            }
        });
    }

    /// Forwards netlink's state once it has spoken.
    fn forward_netlink(&mut self) {
        let state = match &mut self.netlink {
            Some(n) => n.rx.borrow_and_update().clone(),
            None => return,
        };
        if state.source == SourceName::Netlink {
            self.forward(state);
        }
    }

    /// Waits until netlink publishes (forever if it is not running).
    async fn netlink_changed(&mut self) {
        match &mut self.netlink {
            Some(n) => {
                if n.rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

async fn auto(tx: watch::Sender<LinkState>) {
    let mut auto = Auto { tx, netlink: None };
    let mut delay = Duration::from_secs(1);
    loop {
        match Connection::system().await {
            Ok(system) => {
                delay = Duration::from_secs(1);
                if let Err(e) = follow(&system, &mut auto).await {
                    warn!("NetworkManager watch: {e}");
                }
                // The bus went away under us, and NetworkManager with it, as far as we can see.
                auto.start_netlink();
                auto.forward_netlink();
            }
            Err(e) => {
                if auto.netlink.is_none() {
                    info!("no system bus ({e}), so no NetworkManager: using netlink");
                }
                auto.start_netlink();
                auto.forward_netlink();
            }
        }
        // Keep following netlink (if it runs) while waiting to try the bus again.
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => break,
                _ = auto.netlink_changed() => auto.forward_netlink(),
            }
        }
        delay = (delay * 2).min(MAX_RETRY);
    }
}

/// Follows NetworkManager's name on `system`, switching between it and netlink; returns when
/// the bus connection fails.
async fn follow(system: &Connection, auto: &mut Auto) -> zbus::Result<()> {
    let owner_changes = crate::source::nm::owner_changes()?;
    // Subscribe first, then ask: an owner change in between is not missed.
    let mut owners = MessageStream::for_match_rule(owner_changes, system, None).await?;
    let dbus = zbus::fdo::DBusProxy::new(system).await?;
    let name = zbus::names::BusName::try_from(NM_BUS_NAME)?;

    let (nm_tx, mut nm_rx) = watch::channel(LinkState::unknown());
    let _nm = AbortOnDrop(tokio::spawn({
        let system = system.clone();
        async move {
            if let Err(e) = crate::source::nm::run(system, nm_tx).await {
                warn!("NetworkManager source: {e}");
            }
        }
    }));

    let mut owned = dbus.name_has_owner(name.clone()).await?;
    let mut owned_since = Instant::now();
    let far = Duration::from_secs(365 * 86400);
    loop {
        let nm_state = nm_rx.borrow_and_update().clone();
        let nm_ready = owned && nm_state.source == SourceName::NetworkManager;
        let mut grace_until = None;
        if nm_ready {
            auto.stop_netlink();
            auto.forward(nm_state);
        } else if owned && owned_since.elapsed() < NM_GRACE && auto.netlink.is_none() {
            // NetworkManager has just appeared (or the agent just started): give it a moment
            // to be read rather than flashing netlink's link first.
            grace_until = Some(owned_since + NM_GRACE);
        } else {
            if auto.netlink.is_none() {
                if owned {
                    warn!(
                        "NetworkManager owns its name but cannot be read ({}); using netlink",
                        nm_state.problem.as_deref().unwrap_or("no state yet")
                    );
                } else {
                    info!("NetworkManager is not running: using netlink");
                }
            }
            auto.start_netlink();
            auto.forward_netlink();
        }
        let grace = grace_until.unwrap_or_else(|| Instant::now() + far);
        tokio::select! {
            m = owners.next() => {
                if m.is_none() {
                    return Ok(());
                }
                let now_owned = dbus.name_has_owner(name.clone()).await?;
                if now_owned && !owned {
                    owned_since = Instant::now();
                }
                owned = now_owned;
            }
            r = nm_rx.changed() => {
                if r.is_err() {
                    return Ok(());
                }
            }
            _ = auto.netlink_changed() => {}
            _ = tokio::time::sleep_until(grace), if grace_until.is_some() => {}
        }
    }
}
