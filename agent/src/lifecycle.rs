//! The agent's life as a service: telling systemd when it is ready and that its event loop is
//! alive (sd_notify(3), through the `sd-notify` crate), and noticing when its bus goes away.
//!
//! - [`ready`] sends `READY=1` (with a `STATUS=` line) once the bus name is claimed, so a
//!   `Type=notify` unit is "started" exactly when clients can reach the agent.
//! - [`Watchdog`] pings `WATCHDOG=1` at half the interval systemd asked for (`WatchdogSec=`,
//!   passed as `WATCHDOG_USEC`). Its [`Watchdog::tick`] is an arm of the event loop's `select!`,
//!   so a loop that is stuck stops pinging and systemd restarts the agent.
//! - [`stopping`] sends `STOPPING=1` on the way out.
//! - [`BusWatch::lost`] resolves when the connection to the bus the agent serves on breaks
//!   (the session ended, the bus daemon died): an agent without its bus is of no use to anyone.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every notification is a no-op.
//!
//! - [`raise_fd_limit`] raises the soft limit of open files to the hard one at start: a
//!   desktop session gives 1024, and each user that sends holds a few descriptors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Descriptors a user holds while it sends: its outcome journal, the relay's socket, a file
/// of its outbox being read, and a listing's pipe. An idle user holds none.
pub const FDS_PER_SENDING_USER: u64 = 4;
/// Descriptors the agent needs besides the users': the buses, inotify, the runtime, logs.
const FDS_BESIDES: u64 = 64;

/// Raises the soft limit of open files to the hard one; the limit in force afterwards
/// (`None`: unlimited). A failure leaves the limit as it was.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-files limit");
                return limit.maximum;
            }
            Err(e) => warn!("cannot raise the open-files limit: {e}"),
        }
    }
    limit.current
}

/// How many users can send at once under a limit of `limit` open files. Pure.
pub fn users_sending_at_once(limit: u64) -> u64 {
    limit.saturating_sub(FDS_BESIDES) / FDS_PER_SENDING_USER
}

/// The shortest ping interval used, whatever `WATCHDOG_USEC` says.
const MIN_PING: Duration = Duration::from_millis(10);

/// Tells the service manager that the agent is ready, with a one-line status.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

/// Updates the one-line status `systemctl --user status linkrelayd` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(&one_line(status))]);
}

/// Tells the service manager that the agent is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// The `STATUS=` line for the agent's state: the link, each user's route, the queue.
pub fn status_line(
    link: Option<&str>,
    routes: &[linkrelay_dbus::agent::RouteInfo],
    queue: &[linkrelay_dbus::agent::QueueCount],
) -> String {
    let mut parts = vec![match link {
        Some(l) => format!("link {l}"),
        None => "no matched link".to_string(),
    }];
    for r in routes {
        if r.hold.is_empty() {
            parts.push(format!("{} via {}", r.user, r.relays.join(",")));
        } else {
            parts.push(format!("{} held: {}", r.user, r.hold));
        }
    }
    let queued: u32 = queue.iter().map(|q| q.queued).sum();
    let failed: u32 = queue.iter().map(|q| q.failed).sum();
    parts.push(format!("{queued} queued, {failed} failed"));
    parts.join("; ")
}

fn send(states: &[NotifyState<'_>]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states) {
        // NOTIFY_SOCKET is set but unusable: systemd will notice the missing READY/WATCHDOG
        // itself; say why once, so the journal explains it without a line per status update.
        if WARNED.swap(true, Ordering::Relaxed) {
            debug!("cannot notify the service manager: {e}");
        } else {
            warn!("cannot notify the service manager: {e}");
        }
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// How often to ping for a watchdog of `timeout`: half of it, as sd_watchdog_enabled(3) says.
pub fn ping_interval(timeout: Duration) -> Duration {
    (timeout / 2).max(MIN_PING)
}

/// The systemd watchdog, if the service manager asked for one.
#[derive(Debug)]
pub struct Watchdog {
    ticker: Option<tokio::time::Interval>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be ours when set). Call inside the
    /// tokio runtime.
    pub fn from_env() -> Watchdog {
        let ticker = sd_notify::watchdog_enabled().map(|timeout| {
            let every = ping_interval(timeout);
            debug!(?timeout, ?every, "systemd watchdog enabled");
            let mut t = tokio::time::interval(every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        Watchdog { ticker }
    }

    /// Resolves when the next ping is due; never without a watchdog.
    pub async fn tick(&mut self) {
        match &mut self.ticker {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Tells systemd the event loop is alive.
    pub fn ping(&self) {
        if self.ticker.is_some() {
            send(&[NotifyState::Watchdog]);
        }
    }
}

/// Watches the connection the agent serves on; [`BusWatch::lost`] resolves when it breaks.
///
/// The subscription (an `AddMatch` call) is made in [`BusWatch::subscribe`], before the event
/// loop starts, and never inside it. This matters: the event loop's `select!` keeps polling this
/// watch between events, and a call in flight there would hold zbus's send lock while the loop
/// runs a handler that sends too (a signal), and waits for that very lock. That is how the agent
/// once hung for good at start-up: a deadlock that only needed the first `AddMatch` to queue
/// behind another message on the socket.
pub struct BusWatch {
    stream: Option<zbus::MessageStream>,
}

impl BusWatch {
    /// Subscribes to `NameLost` (which the agent never expects: it does not allow replacement),
    /// whose stream ends with the connection. If the subscription fails, [`BusWatch::lost`]
    /// never resolves (and a warning says so).
    pub async fn subscribe(conn: &zbus::Connection) -> BusWatch {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.DBus")
            .interface("org.freedesktop.DBus")
            .member("NameLost")
            .build();
        let stream = match rule {
            Ok(rule) => zbus::MessageStream::for_match_rule(rule, conn, None).await,
            Err(e) => Err(e),
        };
        match stream {
            Ok(stream) => BusWatch {
                stream: Some(stream),
            },
            Err(e) => {
                warn!("cannot watch the bus connection: {e}");
                BusWatch { stream: None }
            }
        }
    }

    /// Resolves when the connection breaks. Only reads the subscription's stream: it takes no
    /// lock of the connection, so the event loop may drop or hold it in `select!` freely.
    pub async fn lost(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return std::future::pending().await;
        };
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(_) => warn!("the bus says this agent lost a name it owned"),
                Err(e) => {
                    debug!("bus connection error: {e}");
                    break;
                }
            }
        }
        self.stream = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        assert_eq!(
            ping_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            ping_interval(Duration::from_millis(300)),
            Duration::from_millis(150)
        );
        // A silly WATCHDOG_USEC=1 does not make the loop spin.
        assert_eq!(ping_interval(Duration::from_micros(1)), MIN_PING);
    }

    #[test]
    fn status_line_says_link_routes_and_counts() {
        let routes = [
            linkrelay_dbus::agent::RouteInfo {
                user: "alice".into(),
                relays: vec![],
                hold: "no relay for link isp-b".into(),
            },
            linkrelay_dbus::agent::RouteInfo {
                user: "bob".into(),
                relays: vec!["relay-b".into()],
                hold: String::new(),
            },
        ];
        let queue = [linkrelay_dbus::agent::QueueCount {
            user: "alice".into(),
            queued: 2,
            failed: 1,
            sent: 5,
        }];
        assert_eq!(
            status_line(Some("isp-b"), &routes, &queue),
            "link isp-b; alice held: no relay for link isp-b; bob via relay-b; 2 queued, 1 failed"
        );
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
    }
}
