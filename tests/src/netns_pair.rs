//! Two network namespaces joined by a veth pair, for tests that need a relay that is *not* on
//! loopback: the relay's side has 198.51.100.1/30, the client's side 198.51.100.2/30
//! (TEST-NET-2). The machine's own namespace is not touched: nothing is added to it, and both
//! namespaces (with their veth ends) are deleted on drop, also when the test fails.
//!
//! Needs root (`ip netns add`), as CI has.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// The relay side's address.
pub const RELAY_ADDR: &str = "198.51.100.1";
/// The client side's address.
pub const CLIENT_ADDR: &str = "198.51.100.2";

/// Two namespaces, `relay` and `client`, joined by a veth pair.
#[derive(Debug)]
pub struct NetnsPair {
    /// The relay side's namespace name (`ip netns exec NAME ...`).
    pub relay: String,
    /// The client side's namespace name.
    pub client: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetnsPair {
    /// Creates both namespaces and the link between them, both ends up.
    pub fn create() -> anyhow::Result<NetnsPair> {
        let tag = format!("{}{:04x}", std::process::id() % 100_000, rand_u16());
        let pair = NetnsPair {
            relay: format!("lr-r-{tag}"),
            client: format!("lr-c-{tag}"),
        };
        // From here on, Drop cleans up whatever was made.
        ip(&["netns", "add", &pair.relay])?;
        ip(&["netns", "add", &pair.client])?;
        let (veth_r, veth_c) = ("lrr0", "lrc0");
        ip(&[
            "-n",
            &pair.relay,
            "link",
            "add",
            veth_r,
            "type",
            "veth",
            "peer",
            "name",
            veth_c,
            "netns",
            &pair.client,
        ])?;
        for (ns, dev, addr) in [
            (&pair.relay, veth_r, RELAY_ADDR),
            (&pair.client, veth_c, CLIENT_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// A TCP listener on `RELAY_ADDR:0` inside the relay namespace (a socket keeps the
    /// namespace it was made in, so it can be served from anywhere).
    pub fn listen_in_relay(&self) -> anyhow::Result<TcpListener> {
        let path = format!("/run/netns/{}", self.relay);
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> anyhow::Result<TcpListener> {
                    let ns =
                        std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
                    // Only this short-lived thread moves into the namespace.
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&ns),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .context("setns into the relay namespace")?;
                    let addr: SocketAddr = format!("{RELAY_ADDR}:0").parse()?;
                    let listener = TcpListener::bind(addr)
                        .with_context(|| format!("binding {addr} in {}", self.relay))?;
                    listener.set_nonblocking(true)?;
                    Ok(listener)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        })
    }

    /// The command prefix that runs a program in the client namespace.
    pub fn client_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", self.client.as_str()]
            .map(String::from)
            .to_vec()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and with it its peer.
        let _ = ip(&["netns", "del", &self.relay]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}
