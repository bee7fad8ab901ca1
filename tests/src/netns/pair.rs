//! Two network namespaces joined by a veth pair, for tests that need a relay that is *not* on
//! loopback: the relay's side has 198.51.100.1/30, the client's side 198.51.100.2/30
//! (TEST-NET-2). The machine's own namespace is not touched: nothing is added to it, and both
//! namespaces (with their veth ends) are deleted on drop, also when the test fails.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context;

use super::NetNs;

/// The relay side's address.
pub const RELAY_ADDR: &str = "198.51.100.1";
/// The client side's address.
pub const CLIENT_ADDR: &str = "198.51.100.2";

/// Two namespaces, `relay` and `client`, joined by a veth pair.
#[derive(Debug)]
pub struct NetnsPair {
    /// The relay side's namespace.
    pub relay: NetNs,
    /// The client side's namespace.
    pub client: NetNs,
}

impl NetnsPair {
    /// Creates both namespaces and the link between them, both ends up.
    pub fn create() -> anyhow::Result<NetnsPair> {
        // From here on, each namespace's Drop cleans up what was made.
        let pair = NetnsPair {
            relay: NetNs::create("relay")?,
            client: NetNs::create("client")?,
        };
        let (veth_r, veth_c) = ("lrr0", "lrc0");
        pair.relay.veth(veth_r, &pair.client, veth_c)?;
        for (ns, dev, addr) in [
            (&pair.relay, veth_r, RELAY_ADDR),
            (&pair.client, veth_c, CLIENT_ADDR),
        ] {
            ns.ip(&format!("addr add {addr}/30 dev {dev}"))?;
            ns.ip(&format!("link set {dev} up"))?;
        }
        Ok(pair)
    }

    /// A TCP listener on `RELAY_ADDR:0` inside the relay namespace (a socket keeps the
    /// namespace it was made in, so it can be served from anywhere); non-blocking, for tokio.
    pub fn listen_in_relay(&self) -> anyhow::Result<TcpListener> {
        let addr: SocketAddr = format!("{RELAY_ADDR}:0").parse()?;
        let listener = self
            .relay
            .run_in(move || TcpListener::bind(addr))?
            .with_context(|| format!("binding {addr} in {}", self.relay.name()))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// The command prefix that runs a program in the client namespace.
    pub fn client_prefix(&self) -> Vec<String> {
        self.client.exec_prefix()
    }
}
