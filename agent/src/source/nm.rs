//! The NetworkManager link source: reads NM's state over the system bus at start-up and again
//! whenever NM says anything (level-triggered), and follows NM leaving and coming back.
//!
//! NM's signals are only a nudge: on one, the whole state is read again at once, each object
//! with one `Properties.GetAll`, the objects that do not depend on each other concurrently
//! (three or four round trips through the bus in all). A read that NM signals during is
//! dropped and started again: the state may have moved under it. NM's signals and its replies
//! reach us in the order NM sent them, so a read with no signal in between is a consistent
//! snapshot. A burst of signals (NM sends a dozen for one activation) therefore costs one read
//! in flight at a time and one complete read after the burst (or after each pause in it that
//! is longer than a read); the agent hears of it only if the state read differs.

use std::collections::HashMap;

use futures_util::{FutureExt, StreamExt};
use linkrelay_config::LinkFacts;
use linkrelay_dbus::nm::{self, Connectivity, NM_BUS_NAME};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zbus::fdo::DBusProxy;
use zbus::names::BusName;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant};

use crate::source::link::{Link, LinkState, SourceName};

/// How many reads in a row NM may signal during before one is let finish and published anyway:
/// more than the signals of one activation, so that only NM signalling without pause (never
/// seen) gets a state read in the middle of a change published; reading goes on as long as it
/// signals.
const MAX_DISTURBED_READS: usize = 16;

/// How many times to read again when an object vanishes under a read (a link going down).
const READ_TRIES: usize = 3;

const MANAGER_PATH: &str = "/org/freedesktop/NetworkManager";
const MANAGER_IFACE: &str = "org.freedesktop.NetworkManager";
const ACTIVE_IFACE: &str = "org.freedesktop.NetworkManager.Connection.Active";
const DEVICE_IFACE: &str = "org.freedesktop.NetworkManager.Device";
const WIRELESS_IFACE: &str = "org.freedesktop.NetworkManager.Device.Wireless";
const IP4_IFACE: &str = "org.freedesktop.NetworkManager.IP4Config";
const AP_IFACE: &str = "org.freedesktop.NetworkManager.AccessPoint";

/// What to tell the user when NetworkManager is absent.
pub fn nm_absent_problem() -> String {
    "NetworkManager is not running (org.freedesktop.NetworkManager has no owner on the system bus); \
     start it with `systemctl start NetworkManager`, or let linkrelayd follow the kernel's default route instead ([agent] source = \"auto\" or \"netlink\")"
        .to_string()
}

/// The match rule for NetworkManager's bus name changing hands (NM starting, stopping).
pub(crate) fn owner_changes() -> zbus::Result<MatchRule<'static>> {
    MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.DBus")
        .interface("org.freedesktop.DBus")
        .member("NameOwnerChanged")
        .add_arg(NM_BUS_NAME)
        .build()
}

/// Follows NetworkManager on `system` and publishes every change into `tx`. Returns only if the
/// bus connection itself breaks.
pub async fn run(system: Connection, tx: watch::Sender<LinkState>) -> zbus::Result<()> {
    let nm_signals = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(NM_BUS_NAME)
        .path_namespace(MANAGER_PATH)
        .build()?;
    let owner_changes = owner_changes()?;
    // Subscribe first, then read: nothing that happens in between is missed.
    let mut nudges = Nudges {
        signals: MessageStream::for_match_rule(nm_signals, &system, None).await?,
        owners: MessageStream::for_match_rule(owner_changes, &system, None).await?,
    };
    let reader = Reader {
        dbus: DBusProxy::new(&system).await?,
        system,
    };

    loop {
        let mut reads = 0;
        let (state, settled) = loop {
            reads += 1;
            let last_try = reads >= MAX_DISTURBED_READS;
            let state = tokio::select! {
                biased;
                state = reader.read_state() => state,
                // NM moved on before the read was done: the rest of it would only describe a
                // state that is gone. Start again (unless NM never pauses).
                more = nudges.wait(), if !last_try => {
                    if !more || nudges.take_pending().is_none() {
                        return Ok(());
                    }
                    debug!("NetworkManager signalled during the read; reading again");
                    continue;
                }
            };
            // Signals that came with the last reply: the read may mix before and after.
            match nudges.take_pending() {
                None => return Ok(()),
                Some(false) => break (state, true),
                Some(true) if last_try => break (state, false),
                Some(true) => debug!("NetworkManager signalled during the read; reading again"),
            }
        };
        tx.send_if_modified(|old| {
            if *old != state {
                info!(link = ?state.link.as_ref().map(|l| &l.facts.id), problem = ?state.problem, "NetworkManager state");
                *old = state;
                true
            } else {
                false
            }
        });
        // Sleep until NM says something (no polling, no settling delay). A read published
        // while NM kept signalling is followed by another at once.
        if settled {
            if !nudges.wait().await {
                return Ok(());
            }
            // Whatever else has queued up meanwhile is covered by the read that follows.
            if nudges.take_pending().is_none() {
                return Ok(());
            }
        }
    }
}

/// What makes the source read NM's state again: NM's own signals and its name changing owner.
struct Nudges {
    signals: MessageStream,
    owners: MessageStream,
}

impl Nudges {
    /// Waits for the next nudge; false when the bus connection is gone.
    async fn wait(&mut self) -> bool {
        tokio::select! {
            m = self.signals.next() => m.is_some(),
            m = self.owners.next() => m.is_some(),
        }
    }

    /// Takes every nudge that has already arrived, without waiting: whether there was one, or
    /// `None` when the bus connection is gone.
    fn take_pending(&mut self) -> Option<bool> {
        let mut any = false;
        for stream in [&mut self.signals, &mut self.owners] {
            while let Some(m) = stream.next().now_or_never() {
                // `None`: the stream ended with the connection.
                m.as_ref()?;
                any = true;
            }
        }
        Some(any)
    }
}

/// Reads NM's state on the system bus.
struct Reader {
    system: Connection,
    dbus: DBusProxy<'static>,
}

impl Reader {
    /// Whether NM owns its name; `Err` with the problem to report when the bus cannot say.
    async fn nm_running(&self) -> Result<bool, String> {
        let name = BusName::try_from(NM_BUS_NAME).map_err(|e| e.to_string())?;
        self.dbus
            .name_has_owner(name)
            .await
            .map_err(|e| format!("cannot ask the system bus about NetworkManager: {e}"))
    }

    /// Reads the whole link state; NM absent or half-gone yields a state that says so.
    async fn read_state(&self) -> LinkState {
        // Objects can vanish between two reads (a link going down); try a few times.
        let mut last_err = None;
        for _ in 0..READ_TRIES {
            // Ask the bus whether NM is there while reading: no extra round trip.
            let (running, link) = tokio::join!(self.nm_running(), self.read_primary());
            match running {
                Ok(true) => {}
                Ok(false) => return problem(nm_absent_problem()),
                Err(e) => return problem(e),
            }
            match link {
                Ok(link) => {
                    return LinkState {
                        source: SourceName::NetworkManager,
                        problem: None,
                        link,
                    };
                }
                Err(e) => {
                    // NetworkManager stopping: it signals while it shuts down, then leaves the
                    // bus, so the read that its last signals start fails. Say that it is not
                    // running rather than report a read error.
                    if !matches!(self.nm_running().await, Ok(true)) {
                        return problem(nm_absent_problem());
                    }
                    // The error means NM's state moved on: the next read sees where it went.
                    debug!(error = %e, "NetworkManager state changed while reading it; reading again");
                    last_err = Some(e);
                }
            }
        }
        let e = last_err.map(|e| e.to_string()).unwrap_or_default();
        warn!(error = %e, "cannot read NetworkManager's state");
        problem(format!("cannot read NetworkManager's state: {e}"))
    }

    /// Calls `method` of `org.freedesktop.DBus.Properties` on NM's object `path`.
    async fn properties<B>(
        &self,
        path: &OwnedObjectPath,
        method: &str,
        body: &B,
    ) -> zbus::Result<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.system
            .call_method(
                Some(NM_BUS_NAME),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                method,
                body,
            )
            .await
    }

    /// Every property of `iface` on NM's object `path`, in one round trip.
    async fn get_all(&self, path: &OwnedObjectPath, iface: &'static str) -> zbus::Result<Props> {
        let reply = self.properties(path, "GetAll", &(iface,)).await?;
        Ok(Props {
            iface,
            map: reply.body().deserialize()?,
        })
    }

    /// One property of `iface` on NM's object `path`.
    async fn get(
        &self,
        path: &OwnedObjectPath,
        iface: &'static str,
        name: &str,
    ) -> zbus::Result<OwnedVariant> {
        let reply = self.properties(path, "Get", &(iface, name)).await?;
        reply.body().deserialize()
    }

    async fn read_primary(&self) -> zbus::Result<Option<Link>> {
        let mut manager = self
            .get_all(&OwnedObjectPath::try_from(MANAGER_PATH)?, MANAGER_IFACE)
            .await?;
        let primary: OwnedObjectPath = manager.req("PrimaryConnection")?;
        if is_none(&primary) {
            return Ok(None);
        }
        let global: u32 = manager.req("Connectivity")?;
        let mut active = self.get_all(&primary, ACTIVE_IFACE).await?;
        if active.req::<u32>("State")? != nm::ACTIVE_STATE_ACTIVATED {
            return Ok(None);
        }
        let mut facts = LinkFacts {
            id: active.req("Id")?,
            uuid: active.req("Uuid")?,
            conn_type: active.req("Type")?,
            ..LinkFacts::default()
        };
        let active_ip4: OwnedObjectPath = active.req("Ip4Config")?;
        let devices: Vec<OwnedObjectPath> = active.req("Devices")?;

        // The device, its access point if it is wifi (asked before knowing: an error otherwise,
        // and ignored), and the connection's IP4Config do not depend on each other.
        // The other devices of the connection (rare: bonds, bridges) only count for
        // connectivity; read with the rest.
        let others = futures_util::future::join_all(
            devices
                .iter()
                .skip(1)
                .map(|path| self.get_all(path, DEVICE_IFACE)),
        );
        let (device, wifi_ap, ip4, others) = match devices.first() {
            Some(dev_path) => {
                let (device, ap, ip4, others) = tokio::join!(
                    self.get_all(dev_path, DEVICE_IFACE),
                    self.get(dev_path, WIRELESS_IFACE, "ActiveAccessPoint"),
                    self.read_ip4(&active_ip4),
                    others,
                );
                (Some(device?), ap.ok(), ip4, others)
            }
            None => (None, None, self.read_ip4(&active_ip4).await, Vec::new()),
        };
        let mut per_device: Vec<(u32, u32)> = Vec::new();
        for other in others {
            per_device.push(device_connectivity(&mut other?));
        }
        let mut ip4 = ip4;
        if let Some(mut device) = device {
            per_device.push(device_connectivity(&mut device));
            let ip_iface: String = device.opt("IpInterface").unwrap_or_default();
            facts.interface = if ip_iface.is_empty() {
                device.req("Interface")?
            } else {
                ip_iface
            };
            facts.metered = nm::metered_from_nm(device.opt("Metered").unwrap_or(0));
            if is_none(&active_ip4)
                && let Some(dev_ip4) = device.opt::<OwnedObjectPath>("Ip4Config")
            {
                ip4 = self.read_ip4(&dev_ip4).await;
            }
            if device.opt::<u32>("DeviceType").unwrap_or(0) == nm::device::DEVICE_TYPE_WIFI {
                let ap = wifi_ap.and_then(|v| OwnedObjectPath::try_from(v).ok());
                facts.ssid = match ap {
                    Some(ap) => self.read_ssid(&ap).await,
                    None => None,
                };
            }
        } else {
            facts.metered = nm::metered_from_nm(manager.opt("Metered").unwrap_or(0));
        }
        if let Some(mut cfg) = ip4 {
            let gw: String = cfg.opt("Gateway").unwrap_or_default();
            facts.gateway = (!gw.is_empty()).then_some(gw);
            let mut domains: Vec<String> = cfg.opt("Domains").unwrap_or_default();
            for s in cfg.opt::<Vec<String>>("Searches").unwrap_or_default() {
                if !domains.contains(&s) {
                    domains.push(s);
                }
            }
            facts.domains = domains;
            facts.addresses = cfg
                .opt::<Vec<HashMap<String, OwnedVariant>>>("AddressData")
                .unwrap_or_default()
                .into_iter()
                .filter_map(|mut entry| {
                    String::try_from(entry.remove("address")?)
                        .ok()?
                        .parse()
                        .ok()
                })
                .collect();
        }
        Ok(Some(Link {
            facts,
            connectivity: primary_connectivity(&per_device, global),
        }))
    }

    /// The IP4Config at `path`, if there is one and it can be read (it is optional: a link
    /// without one has no gateway, domains or addresses).
    async fn read_ip4(&self, path: &OwnedObjectPath) -> Option<Props> {
        if is_none(path) {
            return None;
        }
        self.get_all(path, IP4_IFACE).await.ok()
    }

    async fn read_ssid(&self, ap: &OwnedObjectPath) -> Option<String> {
        if is_none(ap) {
            return None;
        }
        let bytes = Vec::<u8>::try_from(self.get(ap, AP_IFACE, "Ssid").await.ok()?).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The properties of one interface of one object, as `GetAll` gave them.
struct Props {
    iface: &'static str,
    map: HashMap<String, OwnedVariant>,
}

impl Props {
    /// Property `name`, if present and of type `T`.
    fn opt<T: TryFrom<OwnedVariant>>(&mut self, name: &str) -> Option<T> {
        T::try_from(self.map.remove(name)?).ok()
    }

    /// Property `name`, which NM always has: missing or of another type is an error.
    fn req<T: TryFrom<OwnedVariant>>(&mut self, name: &str) -> zbus::Result<T> {
        self.opt(name).ok_or_else(|| {
            zbus::Error::Failure(format!(
                "{} has no property {name} of the expected type",
                self.iface
            ))
        })
    }
}

/// A device's `(Ip4Connectivity, Ip6Connectivity)`; 0 (unknown) where NM does not have them
/// (before 1.16).
fn device_connectivity(device: &mut Props) -> (u32, u32) {
    (
        device.opt("Ip4Connectivity").unwrap_or(0),
        device.opt("Ip6Connectivity").unwrap_or(0),
    )
}

/// The connectivity of the primary connection: the best that any of its devices reports over
/// IPv4 or IPv6, and NM's global `Connectivity` only where the devices report none (all 0,
/// unknown). Not the global value first: NM 1.42 computes it from the failing device when the
/// primary link drops and may not compute it again after the default route has moved. Pure.
pub(crate) fn primary_connectivity(devices: &[(u32, u32)], global: u32) -> Connectivity {
    // NM's values rank as they are numbered: unknown 0 < none < portal < limited < full 4.
    let rank = |v: u32| if v > 4 { 0 } else { v };
    let best = devices
        .iter()
        .map(|&(ip4, ip6)| rank(ip4).max(rank(ip6)))
        .max()
        .unwrap_or(0);
    Connectivity::from_nm(if best == 0 { global } else { best })
}

fn problem(text: String) -> LinkState {
    LinkState {
        source: SourceName::None,
        problem: Some(text),
        link: None,
    }
}

fn is_none(path: &OwnedObjectPath) -> bool {
    path.as_str() == "/"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_devices_connectivity_decides_over_the_global_value() {
        use Connectivity as C;
        /// The devices' (Ip4Connectivity, Ip6Connectivity), Manager.Connectivity, the result.
        type Case = (&'static [(u32, u32)], u32, Connectivity);
        let table: &[Case] = &[
            // NM 1.42's stale global NONE after the primary moved to a healthy link.
            (&[(4, 0)], 1, C::Full),
            // The better of IPv4 and IPv6.
            (&[(1, 4)], 1, C::Full),
            (&[(2, 3)], 4, C::Limited),
            // A portal on the primary holds, whatever the global value says.
            (&[(2, 0)], 4, C::Portal),
            (&[(1, 0)], 4, C::None),
            // Devices that give nothing (NM < 1.16, or not checked yet): the global value.
            (&[(0, 0)], 2, C::Portal),
            (&[], 3, C::Limited),
            (&[], 0, C::Unknown),
            // Several devices: the best of them.
            (&[(1, 0), (4, 0)], 1, C::Full),
            // Values NM does not define count as unknown.
            (&[(9, 0)], 4, C::Full),
        ];
        for (devices, global, want) in table {
            assert_eq!(
                primary_connectivity(devices, *global),
                *want,
                "devices {devices:?}, global {global}"
            );
        }
    }
}
