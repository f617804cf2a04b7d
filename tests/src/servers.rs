//! In-lab servers: TCP echo, UDP echo sinks and the DNS server, each a thread of the test process
//! whose socket was created inside the target network namespace (a socket stays in the namespace
//! it was created in, whatever the thread does afterwards).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::dns::{DnsCounters, Transport, Zone};
use crate::error::{Error, Result};
use crate::sys;

/// A transport protocol, as Kubernetes spells it in `protocol:` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `"TCP"` or `"UDP"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a server has received so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// UDP datagrams (or DNS-over-TCP messages) received.
    pub datagrams: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Source addresses seen.
    pub peers: BTreeSet<IpAddr>,
}

#[derive(Default)]
pub(crate) struct Counters {
    connections: AtomicU64,
    datagrams: AtomicU64,
    bytes: AtomicU64,
    peers: Mutex<BTreeSet<IpAddr>>,
}

impl Counters {
    fn peer(&self, ip: IpAddr) {
        if let Ok(mut p) = self.peers.lock() {
            p.insert(canonical(ip));
        }
    }

    pub(crate) fn snapshot(&self) -> ServerStats {
        ServerStats {
            connections: self.connections.load(Ordering::SeqCst),
            datagrams: self.datagrams.load(Ordering::SeqCst),
            bytes: self.bytes.load(Ordering::SeqCst),
            peers: self.peers.lock().map(|p| p.clone()).unwrap_or_default(),
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// What a server does with what it receives.
#[derive(Clone)]
pub(crate) enum Behaviour {
    /// Echo bytes back (TCP) or datagrams back (UDP).
    Echo,
    /// Answer DNS queries from a zone.
    Dns(Arc<Zone>, Arc<DnsCounters>),
}

/// One running server.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    pub(crate) proto: Proto,
    pub(crate) counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

/// All servers of a lab, stopped together.
pub(crate) struct Servers {
    stop: Arc<AtomicBool>,
    pub(crate) list: Vec<Server>,
}

/// How long a serving loop may block before it re-checks the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// Connection handlers running at once per TCP server before new ones are served inline.
const MAX_HANDLERS: usize = 64;

impl Servers {
    pub(crate) fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            list: Vec::new(),
        }
    }

    /// Starts a server bound to `addr` inside network namespace `netns`; returns once it is bound.
    pub(crate) fn start(
        &mut self,
        netns: &Arc<OwnedFd>,
        netns_name: &str,
        addr: SocketAddr,
        proto: Proto,
        behaviour: Behaviour,
    ) -> Result<()> {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Result<()>>();
        let stop = Arc::clone(&self.stop);
        let fd = Arc::clone(netns);
        let what = netns_name.to_owned();
        let c = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name(format!("lab-{proto}-{addr}"))
            .spawn(move || {
                if let Err(e) = sys::setns_net(fd.as_fd(), &what) {
                    let _ = tx.send(Err(e));
                    return;
                }
                drop(fd);
                match proto {
                    Proto::Tcp => match TcpListener::bind(addr) {
                        Ok(l) => {
                            let _ = tx.send(Ok(()));
                            serve_tcp(&l, &stop, &c, &behaviour);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(server_err(addr, proto, "bind", &e)));
                        }
                    },
                    Proto::Udp => match UdpSocket::bind(addr) {
                        Ok(s) => {
                            let _ = tx.send(Ok(()));
                            serve_udp(&s, &stop, &c, &behaviour);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(server_err(addr, proto, "bind", &e)));
                        }
                    },
                }
            })
            .map_err(|e| server_err(addr, proto, "spawn thread", &e))?;
        let server = Server {
            addr,
            proto,
            counters,
            thread: Some(thread),
        };
        let res = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|_| {
            Err(Error::Server {
                addr: addr.to_string(),
                proto: proto.as_str(),
                message: "did not start within 5 s".into(),
            })
        });
        self.list.push(server);
        res
    }

    pub(crate) fn find(&self, ip: IpAddr, proto: Proto, port: u16) -> Option<&Server> {
        self.list
            .iter()
            .find(|s| s.addr.ip() == ip && s.addr.port() == port && s.proto == proto)
    }

    /// Stops every server and joins its thread (each notices within one [`TICK`]).
    pub(crate) fn stop_all(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for s in &mut self.list {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn server_err(addr: SocketAddr, proto: Proto, what: &str, e: &io::Error) -> Error {
    Error::Server {
        addr: addr.to_string(),
        proto: proto.as_str(),
        message: format!("{what}: {e}"),
    }
}

fn serve_tcp(l: &TcpListener, stop: &Arc<AtomicBool>, c: &Arc<Counters>, b: &Behaviour) {
    if l.set_nonblocking(true).is_err() {
        return;
    }
    let active = Arc::new(AtomicUsize::new(0));
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if !sys::poll_readable(l.as_fd(), TICK) {
            continue;
        }
        let Ok((stream, peer)) = l.accept() else {
            continue;
        };
        c.connections.fetch_add(1, Ordering::SeqCst);
        c.peer(peer.ip());
        handlers.retain(|h| !h.is_finished());
        if active.load(Ordering::SeqCst) < MAX_HANDLERS {
            active.fetch_add(1, Ordering::SeqCst);
            let (c2, b2, s2, a2) = (
                Arc::clone(c),
                b.clone(),
                Arc::clone(stop),
                Arc::clone(&active),
            );
            match std::thread::Builder::new().spawn(move || {
                handle_conn(stream, &c2, &b2, &s2);
                a2.fetch_sub(1, Ordering::SeqCst);
            }) {
                Ok(h) => handlers.push(h),
                Err(_) => {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        } else {
            handle_conn(stream, c, b, stop);
        }
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// Serves one connection until EOF, an error, the stop flag, or one second of silence.
fn handle_conn(mut s: TcpStream, c: &Counters, b: &Behaviour, stop: &AtomicBool) {
    if s.set_nonblocking(false).is_err() || s.set_read_timeout(Some(TICK)).is_err() {
        return;
    }
    let mut buf = vec![0u8; 65_536];
    let mut pending: Vec<u8> = Vec::new();
    let mut idle_ticks = 0u32;
    // Bounded: at most 20 idle ticks (1 s) between reads, and the stop flag.
    while !stop.load(Ordering::SeqCst) && idle_ticks < 20 {
        let n = match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                idle_ticks += 1;
                continue;
            }
            Err(_) => return,
        };
        idle_ticks = 0;
        c.bytes.fetch_add(n as u64, Ordering::SeqCst);
        match b {
            Behaviour::Echo => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Behaviour::Dns(zone, dc) => {
                pending.extend_from_slice(&buf[..n]);
                // DNS over TCP: 2-byte length prefix per message.
                while pending.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
                    if pending.len() < 2 + len {
                        break;
                    }
                    let msg: Vec<u8> = pending.drain(..2 + len).skip(2).collect();
                    c.datagrams.fetch_add(1, Ordering::SeqCst);
                    if let Some(resp) = zone.respond(&msg, Transport::Tcp, dc) {
                        let Ok(rlen) = u16::try_from(resp.len()) else {
                            return;
                        };
                        let mut out = rlen.to_be_bytes().to_vec();
                        out.extend_from_slice(&resp);
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
                if pending.len() > 70_000 {
                    return;
                }
            }
        }
    }
}

fn serve_udp(s: &UdpSocket, stop: &AtomicBool, c: &Counters, b: &Behaviour) {
    if s.set_read_timeout(Some(TICK)).is_err() {
        return;
    }
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, peer)) = s.recv_from(&mut buf) else {
            continue;
        };
        c.datagrams.fetch_add(1, Ordering::SeqCst);
        c.bytes.fetch_add(n as u64, Ordering::SeqCst);
        c.peer(peer.ip());
        match b {
            Behaviour::Echo => {
                let _ = s.send_to(&buf[..n], peer);
            }
            Behaviour::Dns(zone, dc) => {
                if let Some(resp) = zone.respond(&buf[..n], Transport::Udp, dc) {
                    let _ = s.send_to(&resp, peer);
                }
            }
        }
    }
}
