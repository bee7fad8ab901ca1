//! The netlink link source, for machines without NetworkManager: the link is the interface that
//! carries the default route, as the kernel says over rtnetlink.
//!
//! How it stays right without polling:
//! 1. one rtnetlink socket joins the link, IPv4/IPv6 address and IPv4/IPv6 route multicast
//!    groups *before* anything is read, so no change can fall between reading and listening;
//! 2. it dumps links, addresses and routes on that socket and computes the link ([`choose`]);
//! 3. it sleeps until the kernel sends an event, lets the burst settle, and dumps again. A
//!    socket overrun (ENOBUFS: the kernel dropped events) is just one more reason to dump.
//!
//! Dumping everything again rather than applying each event keeps it level-triggered: the
//! kernel does not announce every route it removes (IPv4 routes of an interface that goes down
//! vanish without RTM_DELROUTE), but it always announces the link or address change behind it.
//!
//! The link: among the default routes (prefix length 0, table main (254), unicast) of both
//! families whose interface is up with carrier (IFF_UP and IFF_LOWER_UP) and that the kernel
//! does not mark linkdown/dead, the one with the lowest metric; ties go to IPv4, then to the
//! lower interface index. Its facts: the interface name (also used as the link's id), its kind
//! (`type`), the route's gateway and the interface's addresses. Connectivity is unknown (the
//! router treats that as usable) and the link is never metered.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt, TryStreamExt};
use linkrelay_config::LinkFacts;
use linkrelay_dbus::nm::Connectivity;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHopFlags,
    RouteType, RouteVia,
};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::source::link::{Link, LinkState, SourceName};

/// The groups that announce what [`choose`] depends on.
const GROUPS: [MulticastGroup; 5] = [
    MulticastGroup::Link,
    MulticastGroup::Ipv4Ifaddr,
    MulticastGroup::Ipv6Ifaddr,
    MulticastGroup::Ipv4Route,
    MulticastGroup::Ipv6Route,
];

/// How long to let a burst of events settle before dumping (bringing an interface up sends a
/// dozen messages).
const SETTLE: Duration = Duration::from_millis(20);

/// The receive buffer asked for (the kernel caps it at net.core.rmem_max).
const RX_BUFFER: usize = 1 << 20;

/// The main routing table.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// The multicast events of a connection.
type Events = std::pin::Pin<
    Box<dyn Stream<Item = (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)> + Send + Sync>,
>;

/// Why the netlink source stopped.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened or subscribed.
    #[error("cannot open a netlink socket: {0}")]
    Open(#[source] io::Error),
    /// A dump failed.
    #[error("cannot read the kernel's links, addresses and routes over netlink: {0}")]
    Dump(#[from] rtnetlink::Error),
    /// The socket closed under us.
    #[error("the netlink socket closed")]
    Closed,
}

/// A subscribed rtnetlink socket and the task that drives it.
pub struct Watcher {
    handle: Handle,
    /// Multicast events (and the overrun messages netlink-proto makes of ENOBUFS).
    events: Events,
    driver: tokio::task::JoinHandle<()>,
    overruns: Arc<AtomicU64>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Watcher {
    /// Opens a socket in the calling thread's network namespace and joins the link, address
    /// and route groups. Must be called inside a tokio runtime.
    pub fn subscribe() -> Result<Watcher, NetlinkError> {
        Watcher::subscribe_with_buffer(RX_BUFFER)
    }

    /// [`Watcher::subscribe`] with a receive buffer of `bytes` (small ones make the kernel drop
    /// events: tests use that to check recovery from overruns).
    pub fn subscribe_with_buffer(bytes: usize) -> Result<Watcher, NetlinkError> {
        let (mut conn, handle, events) =
            rtnetlink::new_multicast_connection(&GROUPS).map_err(NetlinkError::Open)?;
        let size = i32::try_from(bytes).unwrap_or(i32::MAX);
        conn.socket_mut()
            .socket_mut()
            .set_rx_buf_sz(size)
            .map_err(NetlinkError::Open)?;
        let driver = tokio::spawn(conn);
        Ok(Watcher {
            handle,
            events: Box::pin(events),
            driver,
            overruns: Arc::new(AtomicU64::new(0)),
        })
    }

    /// How many socket overruns (lost events, each followed by a fresh dump) were seen so far.
    pub fn overruns(&self) -> Arc<AtomicU64> {
        self.overruns.clone()
    }

    /// Dumps links, addresses and default routes.
    pub async fn snapshot(&self) -> Result<Snapshot, rtnetlink::Error> {
        let links: Vec<LinkMessage> = self.handle.link().get().execute().try_collect().await?;
        let addresses: Vec<AddressMessage> =
            self.handle.address().get().execute().try_collect().await?;
        let mut routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await?;
        let v6: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await?;
        routes.extend(v6);
        Ok(Snapshot::from_messages(&links, &addresses, &routes))
    }

    /// Publishes the link into `tx` now and after every change the kernel announces; returns
    /// only when the socket fails.
    pub async fn run(mut self, tx: watch::Sender<LinkState>) -> NetlinkError {
        loop {
            let state = match self.read().await {
                Ok(link) => LinkState {
                    source: SourceName::Netlink,
                    problem: None,
                    link,
                },
                Err(e) => {
                    warn!("netlink: {e}");
                    LinkState {
                        source: SourceName::Netlink,
                        problem: Some(e.to_string()),
                        link: None,
                    }
                }
            };
            tx.send_if_modified(|old| {
                if *old == state {
                    return false;
                }
                info!(
                    interface = ?state.link.as_ref().map(|l| &l.facts.interface),
                    gateway = ?state.link.as_ref().and_then(|l| l.facts.gateway.as_ref()),
                    problem = ?state.problem,
                    "netlink state"
                );
                *old = state;
                true
            });
            // Sleep until the kernel says something, then let the burst settle.
            match self.events.next().await {
                Some((msg, _)) => self.note(&msg),
                None => return NetlinkError::Closed,
            }
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    _ = &mut settle => break,
                    msg = self.events.next() => match msg {
                        Some((msg, _)) => self.note(&msg),
                        None => return NetlinkError::Closed,
                    },
                }
            }
        }
    }

    /// The link now; a dump interrupted by changes is tried again.
    async fn read(&self) -> Result<Option<Link>, NetlinkError> {
        let mut last = None;
        for _ in 0..3 {
            match self.snapshot().await {
                Ok(snapshot) => return Ok(choose(&snapshot)),
                Err(e) => {
                    debug!("netlink dump failed ({e}); dumping again");
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        match last {
            Some(e) => Err(NetlinkError::Dump(e)),
            None => Err(NetlinkError::Closed),
        }
    }

    fn note(&self, msg: &NetlinkMessage<RouteNetlinkMessage>) {
        if let NetlinkPayload::Overrun(_) = msg.payload {
            self.overruns.fetch_add(1, Ordering::Relaxed);
            warn!("netlink: the kernel dropped events (socket overrun); reading everything again");
        }
    }
}

/// An interface as [`choose`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface index.
    pub index: u32,
    /// Name, e.g. `eth0`.
    pub name: String,
    /// Kind: `IFLA_INFO_KIND` (veth, wireguard, tun, ...), else the device type the kernel
    /// gives in sysfs (wifi, wwan), else from the link-layer type (ethernet, ppp, ...).
    pub kind: String,
    /// Administratively up and with carrier (IFF_UP and IFF_LOWER_UP).
    pub carrier: bool,
}

/// A default route (or one next hop of a multipath default route) in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultRoute {
    /// Whether it is an IPv6 route.
    pub ipv6: bool,
    /// Metric (RTA_PRIORITY; 0 when absent).
    pub metric: u32,
    /// Output interface index.
    pub interface: u32,
    /// Gateway, if any (point-to-point links have none).
    pub gateway: Option<IpAddr>,
    /// The kernel marks it linkdown or dead.
    pub down: bool,
}

/// What the kernel said, reduced to what [`choose`] needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Interfaces by index.
    pub interfaces: HashMap<u32, Interface>,
    /// Usable addresses (global or site scope, not tentative, not failed DAD) by interface
    /// index, in dump order.
    pub addresses: HashMap<u32, Vec<IpAddr>>,
    /// Default routes of the main table.
    pub routes: Vec<DefaultRoute>,
}

impl Snapshot {
    /// Reduces dumped messages (or events) to a snapshot.
    pub fn from_messages(
        links: &[LinkMessage],
        addresses: &[AddressMessage],
        routes: &[RouteMessage],
    ) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for link in links {
            let i = interface(link);
            snapshot.interfaces.insert(i.index, i);
        }
        for a in addresses {
            if let Some(ip) = usable_address(a) {
                snapshot
                    .addresses
                    .entry(a.header.index)
                    .or_default()
                    .push(ip);
            }
        }
        for r in routes {
            snapshot.routes.extend(default_routes(r));
        }
        snapshot
    }
}

/// The link: the up interface carrying the lowest-metric default route.
pub fn choose(snapshot: &Snapshot) -> Option<Link> {
    let (route, iface) = snapshot
        .routes
        .iter()
        .filter(|r| !r.down)
        .filter_map(|r| {
            let iface = snapshot.interfaces.get(&r.interface)?;
            iface.carrier.then_some((r, iface))
        })
        .min_by_key(|(r, i)| (r.metric, r.ipv6, i.index))?;
    let mut addresses = snapshot
        .addresses
        .get(&iface.index)
        .cloned()
        .unwrap_or_default();
    addresses.sort_by_key(|a| a.is_ipv6());
    Some(Link {
        facts: LinkFacts {
            id: iface.name.clone(),
            interface: iface.name.clone(),
            conn_type: iface.kind.clone(),
            gateway: route.gateway.map(|g| g.to_string()),
            addresses,
            ..LinkFacts::default()
        },
        connectivity: Connectivity::Unknown,
    })
}

fn interface(link: &LinkMessage) -> Interface {
    let index = link.header.index;
    let mut name = String::new();
    let mut kind = None;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let flags = link.header.flags;
    let carrier = flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp);
    let kind = kind
        .filter(|k| !k.is_empty())
        .or_else(|| sysfs_devtype(&name, index))
        .unwrap_or_else(|| layer_kind(link.header.link_layer_type));
    Interface {
        index,
        name,
        kind,
        carrier,
    }
}

/// DEVTYPE from `/sys/class/net/<name>/uevent` (wlan, wwan, ...), if that file is about the
/// same interface (the sysfs mounted may belong to another network namespace).
fn sysfs_devtype(name: &str, index: u32) -> Option<String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/uevent")).ok()?;
    devtype_of(&text, index)
}

/// The kind named by a sysfs `uevent` text, if it is about interface `index`.
fn devtype_of(uevent: &str, index: u32) -> Option<String> {
    let field = |key: &str| {
        uevent
            .lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
    };
    if field("IFINDEX=")?.parse::<u32>().ok()? != index {
        return None;
    }
    match field("DEVTYPE=")? {
        "wlan" => Some("wifi".into()),
        "" => None,
        other => Some(other.to_string()),
    }
}

fn layer_kind(layer: LinkLayerType) -> String {
    match layer {
        LinkLayerType::Ether => "ethernet".into(),
        LinkLayerType::Ppp => "ppp".into(),
        LinkLayerType::Loopback => "loopback".into(),
        LinkLayerType::Ieee80211
        | LinkLayerType::Ieee80211Prism
        | LinkLayerType::Ieee80211Radiotap => "wifi".into(),
        other => other.to_string().to_lowercase(),
    }
}

fn usable_address(a: &AddressMessage) -> Option<IpAddr> {
    if !matches!(a.header.scope, AddressScope::Universe | AddressScope::Site) {
        return None;
    }
    let mut local = None;
    let mut address = None;
    let mut flags = None;
    for attr in &a.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = Some(*f),
            _ => {}
        }
    }
    let unusable = match flags {
        Some(f) => f.intersects(AddressFlags::Tentative | AddressFlags::Dadfailed),
        None => a
            .header
            .flags
            .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed),
    };
    if unusable {
        return None;
    }
    // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours.
    local.or(address)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn gateway_of(attrs: &[RouteAttribute]) -> Option<IpAddr> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_ip(g),
        RouteAttribute::Via(RouteVia::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Via(RouteVia::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

/// The default routes of the main table in `r`: one, or one per next hop of a multipath route.
fn default_routes(r: &RouteMessage) -> Vec<DefaultRoute> {
    let h = &r.header;
    if h.destination_prefix_length != 0 || h.kind != RouteType::Unicast {
        return Vec::new();
    }
    let ipv6 = match h.address_family {
        rtnetlink::packet_route::AddressFamily::Inet => false,
        rtnetlink::packet_route::AddressFamily::Inet6 => true,
        _ => return Vec::new(),
    };
    // The header's table is 8 bits; RTA_TABLE holds the real one.
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(h.table));
    if table != MAIN_TABLE {
        return Vec::new();
    }
    let metric = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    let down = h.flags.intersects(RouteFlags::Linkdown | RouteFlags::Dead);
    let multipath = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::MultiPath(hops) => Some(hops),
        _ => None,
    });
    if let Some(hops) = multipath {
        return hops
            .iter()
            .map(|hop| DefaultRoute {
                ipv6,
                metric,
                interface: hop.interface_index,
                gateway: gateway_of(&hop.attributes),
                down: down
                    || hop
                        .flags
                        .intersects(RouteNextHopFlags::Linkdown | RouteNextHopFlags::Dead),
            })
            .collect();
    }
    let oif = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    match oif {
        Some(interface) => vec![DefaultRoute {
            ipv6,
            metric,
            interface,
            gateway: gateway_of(&r.attributes),
            down,
        }],
        None => {
            // A route through a nexthop object (RTA_NH_ID) names no interface itself.
            debug!(
                ?r,
                "netlink: default route without an output interface; ignored"
            );
            Vec::new()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::AddressFamily;
    use rtnetlink::packet_route::link::InfoKind;
    use rtnetlink::packet_route::route::RouteNextHop;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn link(index: u32, name: &str, kind: Option<InfoKind>, up: bool) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.link_layer_type = LinkLayerType::Ether;
        if up {
            m.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Running;
        } else {
            m.header.flags = LinkFlags::Up;
        }
        m.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(k) = kind {
            m.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(k)]));
        }
        m
    }

    fn addr(index: u32, ip: &str, scope: AddressScope) -> AddressMessage {
        let mut m = AddressMessage::default();
        let ip: IpAddr = ip.parse().unwrap();
        m.header.family = if ip.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.index = index;
        m.header.scope = scope;
        m.attributes.push(AddressAttribute::Address(ip));
        m
    }

    fn route(gw: &str, oif: u32, metric: Option<u32>, table: u32) -> RouteMessage {
        let gw: IpAddr = gw.parse().unwrap();
        let mut m = RouteMessage::default();
        m.header.address_family = if gw.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        m.header.kind = RouteType::Unicast;
        m.header.table = if table > 255 { 252 } else { table as u8 };
        m.attributes.push(RouteAttribute::Table(table));
        m.attributes.push(RouteAttribute::Gateway(gw.into()));
        m.attributes.push(RouteAttribute::Oif(oif));
        if let Some(p) = metric {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        m
    }

    fn world(routes: &[RouteMessage]) -> Snapshot {
        let links = [
            link(1, "lo", None, true),
            link(2, "eth0", None, true),
            link(3, "wg0", Some(InfoKind::Wireguard), true),
            link(4, "veth1", Some(InfoKind::Veth), false),
        ];
        let addrs = [
            addr(1, "127.0.0.1", AddressScope::Host),
            addr(2, "192.0.2.10", AddressScope::Universe),
            addr(2, "2001:db8::10", AddressScope::Universe),
            addr(2, "fe80::1", AddressScope::Link),
            addr(3, "10.9.0.2", AddressScope::Universe),
        ];
        Snapshot::from_messages(&links, &addrs, routes)
    }

    fn chosen(routes: &[RouteMessage]) -> Option<LinkFacts> {
        choose(&world(routes)).map(|l| l.facts)
    }

    #[test]
    fn the_lowest_metric_default_route_with_carrier_wins() {
        let f = chosen(&[
            route("192.0.2.1", 2, Some(100), 254),
            route("10.9.0.1", 3, Some(50), 254),
        ])
        .unwrap();
        assert_eq!(f.interface, "wg0");
        assert_eq!(f.id, "wg0");
        assert_eq!(f.conn_type, "wireguard");
        assert_eq!(f.gateway.as_deref(), Some("10.9.0.1"));
        assert_eq!(f.addresses, ["10.9.0.2".parse::<IpAddr>().unwrap()]);

        // metric change
        let f = chosen(&[
            route("192.0.2.1", 2, Some(10), 254),
            route("10.9.0.1", 3, Some(50), 254),
        ])
        .unwrap();
        assert_eq!(f.interface, "eth0");
        // global addresses only, IPv4 first; the link-local one is left out
        assert_eq!(
            f.addresses,
            [
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
                IpAddr::V6("2001:db8::10".parse::<Ipv6Addr>().unwrap())
            ]
        );
        // no metric at all is metric 0
        let f = chosen(&[
            route("192.0.2.1", 2, Some(10), 254),
            route("10.9.0.1", 3, None, 254),
        ])
        .unwrap();
        assert_eq!(f.interface, "wg0");
    }

    #[test]
    fn routes_on_links_without_carrier_or_outside_main_do_not_count() {
        // veth1 has no carrier: its better route does not count
        let f = chosen(&[
            route("192.0.2.1", 2, Some(100), 254),
            route("198.51.100.1", 4, Some(1), 254),
        ])
        .unwrap();
        assert_eq!(f.interface, "eth0");
        // only a route in another table (a VPN's policy table, or local)
        assert_eq!(chosen(&[route("10.9.0.1", 3, Some(1), 1000)]), None);
        assert_eq!(chosen(&[route("10.9.0.1", 3, Some(1), 255)]), None);
        // linkdown flag from the kernel
        let mut r = route("10.9.0.1", 3, Some(1), 254);
        r.header.flags = RouteFlags::Linkdown;
        assert_eq!(
            chosen(&[r, route("192.0.2.1", 2, Some(100), 254)])
                .unwrap()
                .interface,
            "eth0"
        );
        // not a default route
        let mut r = route("10.9.0.1", 3, Some(1), 254);
        r.header.destination_prefix_length = 8;
        assert_eq!(chosen(&[r]), None);
        // unreachable default
        let mut r = route("10.9.0.1", 3, Some(1), 254);
        r.header.kind = RouteType::Unreachable;
        assert_eq!(chosen(&[r]), None);
        assert_eq!(chosen(&[]), None);
    }

    #[test]
    fn ipv6_only_and_ties() {
        let f = chosen(&[route("2001:db8::1", 2, Some(1024), 254)]).unwrap();
        assert_eq!(f.interface, "eth0");
        assert_eq!(f.gateway.as_deref(), Some("2001:db8::1"));
        // equal metrics: IPv4 first
        let f = chosen(&[
            route("2001:db8::1", 3, Some(100), 254),
            route("192.0.2.1", 2, Some(100), 254),
        ])
        .unwrap();
        assert_eq!(f.interface, "eth0");
        assert_eq!(f.gateway.as_deref(), Some("192.0.2.1"));
    }

    #[test]
    fn multipath_routes_count_per_next_hop() {
        let mut r = route("192.0.2.1", 0, Some(5), 254);
        r.attributes
            .retain(|a| !matches!(a, RouteAttribute::Oif(_) | RouteAttribute::Gateway(_)));
        let mut dead = RouteNextHop::default();
        dead.interface_index = 4;
        let mut live = RouteNextHop::default();
        live.interface_index = 3;
        live.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 9, 0, 1,
            ))));
        r.attributes
            .push(RouteAttribute::MultiPath(vec![dead, live]));
        let f = chosen(&[r, route("192.0.2.1", 2, Some(100), 254)]).unwrap();
        assert_eq!(f.interface, "wg0");
        assert_eq!(f.gateway.as_deref(), Some("10.9.0.1"));
    }

    #[test]
    fn kinds_and_point_to_point_addresses() {
        let mut ppp = link(7, "ppp0", None, true);
        ppp.header.link_layer_type = LinkLayerType::Ppp;
        assert_eq!(interface(&ppp).kind, "ppp");
        assert_eq!(
            interface(&link(8, "x", Some(InfoKind::Tun), true)).kind,
            "tun"
        );

        let mut a = addr(7, "198.51.100.1", AddressScope::Universe);
        a.attributes
            .insert(0, AddressAttribute::Local("198.51.100.77".parse().unwrap()));
        assert_eq!(usable_address(&a), Some("198.51.100.77".parse().unwrap()));
        let mut t = addr(2, "2001:db8::5", AddressScope::Universe);
        t.attributes
            .push(AddressAttribute::Flags(AddressFlags::Tentative));
        assert_eq!(usable_address(&t), None);

        assert_eq!(
            devtype_of("DEVTYPE=wlan\nINTERFACE=wlp2s0\nIFINDEX=3\n", 3).as_deref(),
            Some("wifi")
        );
        assert_eq!(
            devtype_of("DEVTYPE=wwan\nIFINDEX=5\n", 5).as_deref(),
            Some("wwan")
        );
        // another namespace's interface of the same name
        assert_eq!(devtype_of("DEVTYPE=wlan\nIFINDEX=3\n", 4), None);
        assert_eq!(devtype_of("INTERFACE=eth0\nIFINDEX=2\n", 2), None);
    }
}
