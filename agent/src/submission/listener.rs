//! The listening sockets: the loopback TCP addresses of `[submission] listen` and the unix
//! socket `$XDG_RUNTIME_DIR/linkrelay/submission.sock`. Each accepted client's uid is asked
//! of the kernel before the first byte is read; it gets a session once a place is free among
//! `max_sessions` (as many more may wait, unanswered; beyond that a client gets 421 at once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrelay_config::Config;
use linkrelay_outbox::submission::Peer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::commit::Committers;
use super::peer::{classify, tcp_peer_uid};
use super::session::serve;

/// What every session of the listener shares.
pub(crate) struct Shared {
    config: Mutex<Arc<Config>>,
    sessions: Mutex<Arc<Semaphore>>,
    /// Clients accepted and waiting for a place.
    waiting: AtomicUsize,
    pub(crate) committers: Committers,
    /// The uid served.
    owner: u32,
    /// The name in the greeting and EHLO.
    pub(crate) host: String,
    /// Where the outboxes and the token are.
    pub(crate) data_dir: PathBuf,
}

impl Shared {
    /// The config in force.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn sessions(&self) -> Arc<Semaphore> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Where the listener listens: a TCP address, or the unix socket's path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The running listener: its accept loops, by endpoint.
pub(crate) struct Listener {
    shared: Arc<Shared>,
    loops: HashMap<Endpoint, JoinHandle<()>>,
    /// The endpoints the config asks for that could not be bound, each with why.
    problems: Vec<String>,
}

impl Listener {
    /// Listens where `config` says (`socket_path`: the unix socket's place, if there is one).
    /// An address that cannot be bound is logged and left out; the agent goes on.
    pub(crate) fn start(
        config: Arc<Config>,
        data_dir: PathBuf,
        socket_path: Option<PathBuf>,
    ) -> Listener {
        let sessions = Arc::new(Semaphore::new(config.submission.max_sessions));
        let shared = Arc::new(Shared {
            config: Mutex::new(config.clone()),
            sessions: Mutex::new(sessions),
            waiting: AtomicUsize::new(0),
            committers: Committers::new(data_dir.clone()),
            owner: rustix::process::geteuid().as_raw(),
            host: host_name(),
            data_dir,
        });
        let mut listener = Listener {
            shared,
            loops: HashMap::new(),
            problems: Vec::new(),
        };
        listener.bind(&config, socket_path);
        listener
    }

    /// Takes a new config: endpoints no longer wanted close, new ones open; new caps apply to
    /// new sessions.
    pub(crate) fn reload(&mut self, config: Arc<Config>, socket_path: Option<PathBuf>) {
        let old = std::mem::replace(
            &mut *self.shared.config.lock().unwrap_or_else(|p| p.into_inner()),
            config.clone(),
        );
        if old.submission.max_sessions != config.submission.max_sessions {
            *self
                .shared
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner()) =
                Arc::new(Semaphore::new(config.submission.max_sessions));
        }
        let users: Vec<String> = config.users.iter().map(|u| u.name.to_string()).collect();
        self.shared.committers.keep_only(&users);
        self.bind(&config, socket_path);
    }

    /// What the config asks for that is not in force: the endpoints that could not be bound
    /// (at start or at the last reload), each with why.
    pub(crate) fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }

    fn bind(&mut self, config: &Config, socket_path: Option<PathBuf>) {
        self.problems.clear();
        let mut wanted: Vec<Endpoint> = config
            .submission
            .listen
            .iter()
            .map(|a| Endpoint::Tcp(*a))
            .collect();
        if config.submission.socket
            && let Some(path) = socket_path
        {
            wanted.push(Endpoint::Unix(path));
        }
        self.loops.retain(|endpoint, task| {
            let keep = wanted.contains(endpoint);
            if !keep {
                task.abort();
                if let Endpoint::Unix(path) = endpoint {
                    let _ = std::fs::remove_file(path);
                }
                info!(
                    "submission listener: no longer listening on {}",
                    show(endpoint)
                );
            }
            keep
        });
        for endpoint in wanted {
            if self.loops.contains_key(&endpoint) {
                continue;
            }
            let shared = self.shared.clone();
            let task = match &endpoint {
                Endpoint::Tcp(addr) => match std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                {
                    Ok(l) => tokio::spawn(accept_tcp(l, shared)),
                    Err(e) => {
                        warn!("submission listener: cannot listen on {addr}: {e}");
                        self.problems
                            .push(format!("[submission] listen: cannot listen on {addr}: {e}"));
                        continue;
                    }
                },
                Endpoint::Unix(path) => match bind_unix(path) {
                    Ok(l) => tokio::spawn(accept_unix(l, shared)),
                    Err(e) => {
                        warn!(
                            "submission listener: cannot listen on {}: {e}",
                            path.display()
                        );
                        self.problems.push(format!(
                            "[submission] socket: cannot listen on {}: {e}",
                            path.display()
                        ));
                        continue;
                    }
                },
            };
            info!("submission listener: listening on {}", show(&endpoint));
            self.loops.insert(endpoint, task);
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for (endpoint, task) in self.loops.drain() {
            task.abort();
            if let Endpoint::Unix(path) = endpoint {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn show(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Tcp(addr) => addr.to_string(),
        Endpoint::Unix(path) => path.display().to_string(),
    }
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>) {
    let mut told_unknown = false;
    loop {
        let (stream, client) = match listener.accept().await {
            // Replies are whole units, written once each: no reason to let Nagle hold one
            // back for the client's delayed ACK.
            Ok(accepted) => {
                let _ = accepted.0.set_nodelay(true);
                accepted
            }
            Err(e) => {
                // Out of file descriptors, most likely: let sessions end first.
                warn!("submission listener: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The kernel answers within the request: no need to leave the event loop's thread.
        let uid = stream
            .local_addr()
            .and_then(|server| tcp_peer_uid(server, client));
        if let Err(e) = &uid
            && !std::mem::replace(&mut told_unknown, true)
        {
            warn!(
                "submission listener: the kernel cannot say who connected from {client} ({e}); \
                 such clients must log in (AUTH PLAIN) with the token `linkrelay token` prints"
            );
        }
        admit(stream, classify(uid.ok(), shared.owner), &shared);
    }
}

async fn accept_unix(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("submission listener: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        admit(stream, classify(uid, shared.owner), &shared);
    }
}

/// Serves a client once one of the `max_sessions` places is free; meanwhile it waits,
/// unanswered. When as many again are waiting already, it is told to come back later.
fn admit<S>(stream: S, peer: Peer, shared: &Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sessions = shared.sessions();
    let shared = shared.clone();
    if let Ok(permit) = sessions.clone().try_acquire_owned() {
        tokio::spawn(async move {
            serve(stream, peer, shared).await;
            drop(permit);
        });
        return;
    }
    let max = shared.config().submission.max_sessions;
    if shared.waiting.fetch_add(1, Ordering::SeqCst) >= max {
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut stream = stream;
            let text = format!(
                "421 4.7.0 {} Too many connections; try again later\r\n",
                shared.host
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(text.as_bytes()))
                .await;
        });
        return;
    }
    tokio::spawn(async move {
        let permit = sessions.acquire_owned().await;
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        if let Ok(permit) = permit {
            serve(stream, peer, shared).await;
            drop(permit);
        }
    });
}

/// Binds the unix socket at `path` in a private directory (0700, ours, not a link), replacing
/// a socket left by an agent that died, but never one that another agent serves. The socket
/// is 0600.
fn bind_unix(path: &Path) -> std::io::Result<UnixListener> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the socket path has no directory"))?;
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Err(e) => return Err(e),
        Ok(meta) => {
            let me = rustix::process::geteuid().as_raw();
            if !meta.is_dir() || meta.uid() != me {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory of uid {me}",
                    dir.display()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another linkrelayd serves it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// This machine's name, for the greeting.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "localhost".to_owned())
}
