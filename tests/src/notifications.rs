//! A fake desktop notification server (`org.freedesktop.Notifications`, Desktop Notifications
//! Specification 1.2) on a test session bus. Nothing real can play this part headless (every
//! real server draws on a display), so this records what a user would have read.
//!
//! It answers `GetCapabilities` (as configured), `GetServerInformation`, `Notify` (ids count up
//! from 1; a `replaces_id` that it gave out is reused) and `CloseNotification`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::watch;
use zbus::{Connection, OwnedVariant, interface};

/// The service's well-known name.
pub const NOTIFICATIONS_BUS_NAME: &str = "org.freedesktop.Notifications";

/// One `Notify` call.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// The id the server answered.
    pub id: u32,
    /// `app_name`.
    pub app_name: String,
    /// `replaces_id` as sent.
    pub replaces_id: u32,
    /// `app_icon`.
    pub app_icon: String,
    /// `summary`.
    pub summary: String,
    /// `body` as sent (markup when the server has the `body-markup` capability).
    pub body: String,
    /// `body` as the user sees it: markup entities decoded and tags dropped, when the server
    /// reads markup.
    pub rendered: String,
    /// The `urgency` hint (0 low, 1 normal, 2 critical), if sent.
    pub urgency: Option<u8>,
    /// The `category` hint, if sent.
    pub category: Option<String>,
    /// `expire_timeout`.
    pub expire_timeout: i32,
}

struct Server {
    capabilities: Vec<String>,
    shown: Arc<Mutex<Vec<Shown>>>,
    count: watch::Sender<usize>,
    next_id: u32,
}

/// What a server with `body-markup` shows for `body`.
pub fn render_markup(body: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[interface(name = "org.freedesktop.Notifications", introspection_docs = false)]
impl Server {
    fn get_capabilities(&self) -> Vec<String> {
        self.capabilities.clone()
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "fake-notifications".into(),
            "linkrelay-tests".into(),
            "1.0".into(),
            "1.2".into(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn notify(
        &mut self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        hints: HashMap<String, OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        let id = if replaces_id != 0 && replaces_id < self.next_id {
            replaces_id
        } else {
            let id = self.next_id;
            self.next_id += 1;
            id
        };
        let markup = self.capabilities.iter().any(|c| c == "body-markup");
        let rendered = if markup {
            render_markup(&body)
        } else {
            body.clone()
        };
        let urgency = hints.get("urgency").and_then(|v| u8::try_from(v).ok());
        let category = hints
            .get("category")
            .and_then(|v| String::try_from(v.try_clone().ok()?).ok());
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        shown.push(Shown {
            id,
            app_name,
            replaces_id,
            app_icon,
            summary,
            body,
            rendered,
            urgency,
            category,
            expire_timeout,
        });
        let n = shown.len();
        drop(shown);
        self.count.send_replace(n);
        id
    }

    fn close_notification(&self, _id: u32) {}
}

/// A running fake notification server; dropping it closes its connection (and its name).
pub struct FakeNotifications {
    conn: Connection,
    shown: Arc<Mutex<Vec<Shown>>>,
    count: watch::Receiver<usize>,
}

impl FakeNotifications {
    /// Serves on the bus at `address` with these capabilities (e.g. `["body",
    /// "body-markup"]`) and owns [`NOTIFICATIONS_BUS_NAME`].
    pub async fn start(address: &str, capabilities: &[&str]) -> anyhow::Result<Self> {
        let shown = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let server = Server {
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            shown: shown.clone(),
            count: count_tx,
            next_id: 1,
        };
        let conn = zbus::connection::Builder::address(address)
            .serve_at("/org/freedesktop/Notifications", server)
            .name(NOTIFICATIONS_BUS_NAME)
            .build()
            .await
            .context("starting the fake notification server")?;
        Ok(FakeNotifications { conn, shown, count })
    }

    /// Every notification so far.
    pub fn shown(&self) -> Vec<Shown> {
        self.shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until `n` notifications were shown and returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Shown>> {
        let mut rx = self.count.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await {
            Ok(Ok(_)) => Ok(self.shown()),
            _ => bail!(
                "{} of {n} notifications within {timeout:?}: {:#?}",
                self.shown().len(),
                self.shown()
            ),
        }
    }

    /// The server's connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_renders_as_a_server_shows_it() {
        assert_eq!(
            render_markup("<b>554</b> 5.7.1 &lt;x@y&gt;: a &amp; b"),
            "554 5.7.1 <x@y>: a & b"
        );
    }
}
