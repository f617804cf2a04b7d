//! In-lab servers: TCP echo, UDP echo sinks and the DNS server, each a thread of the test process
//! whose socket was created inside the target network namespace (a socket stays in the namespace
//! it was created in, whatever the thread does afterwards).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use leash_records::error::Chain;

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
/// Open connections kept per TCP server; beyond it the oldest is closed.
const MAX_CONNS: usize = 1024;

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
        message: format!("{what}: {}", Chain(&e)),
    }
}

/// One accepted connection of the event loop.
struct Conn {
    stream: TcpStream,
    /// Unconsumed DNS-over-TCP bytes (length-prefixed framing).
    pending: Vec<u8>,
}

/// A single-threaded poll loop: the listener plus up to [`MAX_CONNS`] open connections. Accepting
/// without a thread per connection keeps up with bursts of thousands of short connections.
fn serve_tcp(l: &TcpListener, stop: &AtomicBool, c: &Counters, b: &Behaviour) {
    if l.set_nonblocking(true).is_err() {
        return;
    }
    // std listens with a backlog of 128; raise it so bursts are not dropped (and retried by the
    // client a second later). Calling listen(2) again on a listening socket updates the backlog.
    // SAFETY: plain syscall on a valid socket.
    unsafe { libc::listen(l.as_raw_fd(), 4096) };
    let mut conns: Vec<Conn> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        fds.clear();
        fds.push(pollfd(l.as_raw_fd()));
        fds.extend(conns.iter().map(|k| pollfd(k.stream.as_raw_fd())));
        let ms = i32::try_from(TICK.as_millis()).unwrap_or(50);
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: `fds` is a valid array of `nfds` pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), nfds, ms) };
        if rc <= 0 {
            continue;
        }
        // Serve readable connections; collect the ones to close.
        let mut closed = vec![false; conns.len()];
        for (k, pfd) in conns.iter_mut().zip(&fds[1..]).zip(closed.iter_mut()) {
            let ((conn, pfd), done) = (k, pfd);
            if pfd.revents != 0 {
                *done = !serve_readable(conn, &mut buf, c, b);
            }
        }
        let mut it = closed.iter();
        conns.retain(|_| !it.next().copied().unwrap_or(false));
        if fds[0].revents & libc::POLLIN != 0 {
            // Bounded: at most 1024 accepts per wake-up.
            for _ in 0..1024 {
                let Ok((stream, peer)) = l.accept() else {
                    break;
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                c.peer(peer.ip());
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= MAX_CONNS {
                    conns.remove(0);
                }
                conns.push(Conn {
                    stream,
                    pending: Vec::new(),
                });
            }
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Reads what is available on a non-blocking connection and answers it. Returns false when the
/// connection is finished (EOF, error, or a protocol violation).
fn serve_readable(conn: &mut Conn, buf: &mut [u8], c: &Counters, b: &Behaviour) -> bool {
    // Bounded: 64 reads per wake-up, then back to the poll loop.
    for _ in 0..64 {
        let n = match conn.stream.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        c.bytes.fetch_add(n as u64, Ordering::SeqCst);
        match b {
            Behaviour::Echo => {
                if write_fully(&mut conn.stream, &buf[..n]).is_err() {
                    return false;
                }
            }
            Behaviour::Dns(zone, dc) => {
                conn.pending.extend_from_slice(&buf[..n]);
                // DNS over TCP: 2-byte length prefix per message.
                while conn.pending.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([conn.pending[0], conn.pending[1]]));
                    if conn.pending.len() < 2 + len {
                        break;
                    }
                    let msg: Vec<u8> = conn.pending.drain(..2 + len).skip(2).collect();
                    c.datagrams.fetch_add(1, Ordering::SeqCst);
                    if let Some(resp) = zone.respond(&msg, Transport::Tcp, dc) {
                        let Ok(rlen) = u16::try_from(resp.len()) else {
                            return false;
                        };
                        let mut out = rlen.to_be_bytes().to_vec();
                        out.extend_from_slice(&resp);
                        if write_fully(&mut conn.stream, &out).is_err() {
                            return false;
                        }
                    }
                }
                if conn.pending.len() > 70_000 {
                    return false;
                }
            }
        }
    }
    true
}

/// Writes all of `data` to a non-blocking stream, waiting (bounded, 2 s) while its buffer is full.
fn write_fully(s: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > deadline {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn serve_udp(s: &UdpSocket, stop: &AtomicBool, c: &Counters, b: &Behaviour) {
    if s.set_read_timeout(Some(TICK)).is_err() {
        return;
    }
    // A large receive buffer, so bursts from load tests are counted rather than dropped.
    // SO_RCVBUFFORCE ignores rmem_max (we have CAP_NET_ADMIN); failure only means a smaller buffer.
    let size: libc::c_int = 8 << 20;
    // SAFETY: plain setsockopt with a correctly sized int.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
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
