//! Who is connecting: the uid of the program at the other end, as the kernel tells it.
//!
//! On the unix socket, `SO_PEERCRED`. On loopback TCP, any local uid can connect, and the
//! kernel knows the owner of the client's socket: a `NETLINK_SOCK_DIAG` request
//! (`SOCK_DIAG_BY_FAMILY`, an `inet_diag_req_v2` for the connection's 4-tuple seen from the
//! client: source = its address and port, destination = ours; state ESTABLISHED) answers with
//! an `inet_diag_msg` whose `idiag_uid` is that uid (sock_diag(7); what `ss -e` shows). Where
//! the kernel cannot say (no sock_diag, the socket already gone), the peer is
//! [`Peer::Unknown`] and must log in with the owner's token.

use std::io;
use std::net::{IpAddr, SocketAddr};

use linkrelay_outbox::submission::Peer;
use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// What a peer uid means for the listener of `owner` (pure).
pub(crate) fn classify(uid: Option<u32>, owner: u32) -> Peer {
    match uid {
        Some(uid) if uid == owner => Peer::Owner,
        Some(uid) => Peer::Other { uid, owner },
        None => Peer::Unknown,
    }
}

/// The uid that owns the client's end of the loopback TCP connection `client` -> `server`
/// (`server` is our end). Blocking, but the kernel answers within the `send`.
pub(crate) fn tcp_peer_uid(server: SocketAddr, client: SocketAddr) -> io::Result<u32> {
    let (server_ip, client_ip) = (plain(server.ip()), plain(client.ip()));
    let family = match (server_ip, client_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) => AF_INET,
        (IpAddr::V6(_), IpAddr::V6(_)) => AF_INET6,
        _ => return Err(io::Error::other("the two ends are of different families")),
    };
    let mut socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    socket_id.source_address = client_ip;
    socket_id.source_port = client.port();
    socket_id.destination_address = server_ip;
    socket_id.destination_port = server.port();
    // No cookie: look the socket up by its addresses alone.
    socket_id.cookie = [0xff; 8];
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::ESTABLISHED,
        socket_id,
    });
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(request));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);

    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    let mut reply = vec![0; 8192];
    let n = socket.recv(&mut &mut reply[..], 0)?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => Ok(r.header.uid),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag reply {other:?}"),
        )),
    }
}

/// An IPv4 address inside an IPv6 one (a dual-stack socket's view of a v4 client) as IPv4.
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_served_another_uid_refused_and_an_unknown_one_asked_to_log_in() {
        assert_eq!(classify(Some(1000), 1000), Peer::Owner);
        assert_eq!(
            classify(Some(0), 1000),
            Peer::Other {
                uid: 0,
                owner: 1000
            }
        );
        assert_eq!(classify(None, 1000), Peer::Unknown);
    }

    #[test]
    fn the_kernel_names_the_uid_of_a_loopback_client_over_ipv4_and_ipv6() {
        let me = rustix::process::geteuid().as_raw();
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = std::net::TcpListener::bind(bind) else {
                continue; // no IPv6 loopback here
            };
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, peer) = listener.accept().unwrap();
            assert_eq!(peer, client.local_addr().unwrap());
            let uid = tcp_peer_uid(server.local_addr().unwrap(), peer).unwrap();
            assert_eq!(uid, me, "{bind}");
        }
    }

    #[test]
    fn a_connection_that_is_gone_is_not_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(tcp_peer_uid(server, nobody).is_err());
    }
}
