//! Loads the kernel programs, attaches them to a cgroup v2 directory, and reads what they
//! report.
//!
//! [`Capture::start`] loads the embedded object, writes the configuration (refresh interval,
//! DNS ports), and attaches the six programs (`connect4/6`, `sendmsg4/6`, `sock_release`,
//! `cgroup_skb/ingress`) to the directory. The caller then pulls events with
//! [`Capture::next_event`] (async, cancel-safe) and drives the rest:
//!
//! - [`CaptureEvent::Flow`] carries a **cumulative** [`FlowSample`]; feed it to
//!   [`crate::aggregate::Aggregator::observe`], which turns samples into per-key deltas.
//! - [`CaptureEvent::Dns`] carries a raw [`DnsPacket`] for the DNS parser.
//! - Periodically: settle quiet keys ([`crate::aggregate::Aggregator::due_for_settle`] +
//!   [`Capture::lookup_many`], which batches map reads when many keys are due), read [`Capture::counters`] (drops per cause; on new flow drops run a
//!   recovery [`Capture::sweep`]) and flush the aggregator.
//! - On shutdown: [`Capture::detach`], drain with [`Capture::try_next_event`], then a final
//!   [`Capture::sweep`] and flush.
//!
//! The consumer sets the pace: if it stops calling `next_event`, the kernel rings fill up and
//! the kernel counts the failed reservations ([`KernelCounters`]); nothing is lost silently.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use leash_agent::aggregate::{Aggregator, SampleSource};
//! use leash_agent::capture::{Capture, CaptureConfig, CaptureEvent};
//!
//! let config = CaptureConfig::new("/sys/fs/cgroup/unified/lab");
//! let mut capture = Capture::start(&config)?;
//! let mut agg = Aggregator::new(config.refresh, capture.clock());
//! let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
//! # let stop = async {};
//! # tokio::pin!(stop);
//! loop {
//!     tokio::select! {
//!         event = capture.next_event() => match event? {
//!             CaptureEvent::Flow(sample) => agg.observe(&sample, SampleSource::Ring),
//!             CaptureEvent::Dns(packet) => { /* parse packet.payload */ }
//!             CaptureEvent::Malformed(error) => { /* count and skip */ }
//!         },
//!         _ = tick.tick() => {
//!             let due = agg.due_for_settle(leash_agent::capture::monotonic_now_ns());
//!             for (id, state) in capture.lookup_many(&due)? {
//!                 match state {
//!                     Some(sample) => agg.observe(&sample, SampleSource::Lookup),
//!                     None => agg.mark_settled(&id),
//!                 }
//!             }
//!             for delta in agg.flush() { /* write delta */ }
//!         }
//!         _ = &mut stop => break,
//!     }
//! }
//! capture.detach()?;
//! while let Some(event) = capture.try_next_event()? {
//!     if let CaptureEvent::Flow(sample) = event { agg.observe(&sample, SampleSource::Ring) }
//! }
//! for sample in capture.sweep()? { agg.observe(&sample, SampleSource::Lookup) }
//! for delta in agg.flush() { /* write delta */ }
//! # Ok(()) }
//! ```

mod batch;
mod decode;
#[cfg(test)]
mod docs;

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

pub use agent_ebpf::Counter;
pub use agent_ebpf::PathCounter;
use agent_ebpf::{
    ConfigIndex, FlowKey, FlowValue, MAP_CONFIG, MAP_COUNTERS, MAP_DNS_EVENTS, MAP_DNS_PORTS,
    MAP_FLOW_EVENTS, MAP_FLOWS, MAP_PATH_COUNTERS,
};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, IterableMap as _, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
    },
};
pub use decode::{
    DecodeError, DnsPacket, DnsTransport, FlowId, FlowSample, KernelClock, decode_dns, decode_flow,
    monotonic_now_ns,
};
use tokio::io::{Interest, unix::AsyncFd};

/// The kernel programs, built by `build.rs` from `agent-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/leash-ebpf"));

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

const PRIVILEGE_HINT: &str = "leash-agent needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root) to load and attach eBPF programs";

/// Errors of loading, attaching and reading the kernel programs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `--cgroup` directory does not exist or cannot be opened.
    #[error("cgroup directory {path} not found or not openable")]
    CgroupNotFound {
        /// The directory.
        path: PathBuf,
        /// The `open` error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused an operation with EPERM: capabilities are missing.
    #[error("permission denied while {action}: {PRIVILEGE_HINT}")]
    MissingPrivileges {
        /// What was being done (e.g. "loading program leash_connect4").
        action: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The verifier rejected a program.
    // The one message that shows its source: the multi-line log must come last, after the
    // errno, so the errno goes in the middle. `Chain` skips a cause already written.
    #[error("the kernel verifier rejected program {program} ({source}); verifier log:\n{log}")]
    VerifierRejected {
        /// The program's name.
        program: String,
        /// The `BPF_PROG_LOAD` error.
        #[source]
        source: io::Error,
        /// The verifier's log.
        log: String,
    },
    /// Parsing the object or creating its maps failed (other than missing privileges).
    #[error("loading the eBPF object failed")]
    Load(#[source] EbpfError),
    /// The object lacks a program or map this module expects (build mismatch).
    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        /// Its name.
        name: &'static str,
    },
    /// Loading or attaching a program failed for another reason.
    #[error("{action} program {program} failed")]
    Program {
        /// "loading" or "attaching".
        action: &'static str,
        /// The program's name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },
    /// A system call made while loading or attaching a program failed.
    #[error("{action} program {program}: {call} failed")]
    ProgramSyscall {
        /// "loading" or "attaching".
        action: &'static str,
        /// The program's name.
        program: &'static str,
        /// The system call's name.
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A map operation failed.
    #[error("{action} on map {map} failed")]
    Map {
        /// The operation, e.g. "lookup" or "setting refresh interval".
        action: &'static str,
        /// The map's name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },
    /// A system call failed.
    #[error("{call} failed")]
    Syscall {
        /// The system call's name.
        call: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Whether `err` or any of its sources is an `io::Error` with EPERM.
fn is_eperm(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Configuration of [`Capture::start`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// cgroup v2 directory to attach to; every cgroup below it is observed.
    pub cgroup: PathBuf,
    /// An active key is pushed to user space at most once per this interval (≥ 1 ms).
    pub refresh: Duration,
    /// Source ports whose UDP/TCP payloads are captured as DNS responses.
    pub dns_ports: Vec<u16>,
    /// Count TCP outcomes (established / failed): one pending-map entry per TCP connect and
    /// the `sock_release` program; see `benches/connect_latency.rs` for the cost.
    pub tcp_outcome: bool,
}

impl CaptureConfig {
    /// Defaults: refresh 1 s, DNS port 53.
    pub fn new(cgroup: impl Into<PathBuf>) -> Self {
        Self {
            cgroup: cgroup.into(),
            refresh: Duration::from_nanos(agent_ebpf::DEFAULT_REFRESH_NS),
            dns_ports: vec![53],
            tcp_outcome: true,
        }
    }
}

/// An event read from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureEvent {
    /// A flow's cumulative state (new key, or periodic refresh of an active key).
    Flow(FlowSample),
    /// A DNS response packet.
    Dns(DnsPacket),
    /// A ring record that could not be decoded (counted, skipped).
    Malformed(DecodeError),
}

/// The kernel's per-cause counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Value per counter, in [`Counter::ALL`] order.
    pub values: BTreeMap<Counter, u64>,
}

impl KernelCounters {
    /// One counter's value.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values.get(&counter).copied().unwrap_or(0)
    }

    /// Flow records that were produced but not delivered (ring full).
    pub fn flow_drops(&self) -> u64 {
        self.get(Counter::FlowRingFull)
    }

    /// DNS packets produced but not delivered (ring full or copy failure).
    pub fn dns_drops(&self) -> u64 {
        self.get(Counter::DnsRingFull) + self.get(Counter::DnsLoadFailed)
    }
}

/// Loaded and attached kernel programs plus their maps. Dropping it detaches everything.
pub struct Capture {
    // Field order: the readers and maps hold their own fds; `ebpf` owns programs and links.
    flow_ring: AsyncFd<RingBuf<MapData>>,
    dns_ring: AsyncFd<RingBuf<MapData>>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    counters: PerCpuArray<MapData, u64>,
    path_counters: PerCpuArray<MapData, u64>,
    dns_ports: Array<MapData, u64>,
    ebpf: Option<Ebpf>,
    clock: KernelClock,
    cgroup_id: u64,
    prefer_dns: bool,
    /// Set once the kernel refused `BPF_MAP_LOOKUP_BATCH`; later reads walk key by key.
    batch_unsupported: AtomicBool,
    /// Entries seen by the latest whole-map walk: the estimate of the map's size used by
    /// [`Capture::lookup_many`] to choose between per-key lookups and a batched walk.
    last_map_len: AtomicUsize,
}

/// How [`Capture::sweep_with`] and [`Capture::lookup_many_with`] read the kernel flow map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MapRead {
    /// The cheaper of the two for the request (see [`Capture::lookup_many`]); a sweep is
    /// always batched.
    #[default]
    Auto,
    /// One `BPF_MAP_LOOKUP_ELEM` per requested key; a sweep walks with `get_next_key` +
    /// lookup (two system calls per key).
    PerKey,
    /// `BPF_MAP_LOOKUP_BATCH` over the whole map, 4096 entries per system call; falls back
    /// to [`MapRead::PerKey`] on kernels without batch operations (< 5.6).
    Batched,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("cgroup_id", &self.cgroup_id)
            .field("attached", &self.ebpf.is_some())
            .finish_non_exhaustive()
    }
}

const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    "leash_connect4",
    "leash_connect6",
    "leash_sendmsg4",
    "leash_sendmsg6",
];
const RELEASE_PROGRAM: &str = "leash_sock_release";
const INGRESS_PROGRAM: &str = "leash_ingress";

/// Program `name` of the object as its concrete type; `action` says what it is wanted for.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str, action: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|e| program_error(action, name, e))
}

/// Loads the `cgroup_skb` program `name` of `ebpf` into the kernel (without attaching it), as
/// [`Capture::start`] does for its ingress program.
///
/// A verifier rejection comes back as [`Error::VerifierRejected`] with the kernel's log, a
/// missing capability as [`Error::MissingPrivileges`], and a program that is absent or of
/// another type as [`Error::Missing`] or [`Error::Program`].
pub fn load_cgroup_skb(ebpf: &mut Ebpf, name: &'static str) -> Result<()> {
    let prog: &mut CgroupSkb = program(ebpf, name, "loading")?;
    prog.load().map_err(|e| program_error("loading", name, e))
}

fn program_error(action: &'static str, program: &'static str, source: ProgramError) -> Error {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = source
    {
        if io_error.raw_os_error() == Some(libc::EPERM) {
            return Error::MissingPrivileges {
                action: format!("{action} program {program}"),
                source: Box::new(io_error),
            };
        }
        return Error::VerifierRejected {
            program: program.to_owned(),
            source: io_error,
            log: verifier_log.to_string(),
        };
    }
    if is_eperm(&source) {
        return Error::MissingPrivileges {
            action: format!("{action} program {program}"),
            source: Box::new(source),
        };
    }
    match source {
        ProgramError::SyscallError(aya::sys::SyscallError { call, io_error }) => {
            Error::ProgramSyscall {
                action,
                program,
                call,
                source: io_error,
            }
        }
        source => Error::Program {
            action,
            program,
            source,
        },
    }
}

fn map_error(action: &'static str, map: &'static str, source: MapError) -> Error {
    if is_eperm(&source) {
        return Error::MissingPrivileges {
            action: format!("{action} on map {map}"),
            source: Box::new(source),
        };
    }
    Error::Map {
        action,
        map,
        source,
    }
}

/// Registers a ring buffer with the tokio reactor (epoll), for readability only.
fn register_ring(ring: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::Syscall {
            call: "epoll_ctl",
            source: io::Error::other("Capture::start must run inside a tokio runtime"),
        });
    }
    // SAFETY: the RingBuf owns its map fd; it stays open and unchanged until the RingBuf,
    // and thus the AsyncFd, is dropped.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
        Error::Syscall {
            call: "epoll_ctl",
            source: io::Error::from(e),
        }
    })
}

/// Sets `port`'s bit in the kernel's DNS port bitmap (word `port / 64`, bit `port % 64`).
fn set_dns_port(map: &mut Array<MapData, u64>, port: u16) -> Result<()> {
    let index = u32::from(port >> 6);
    let word = map
        .get(&index, 0)
        .map_err(|e| map_error("reading the DNS port bitmap", MAP_DNS_PORTS, e))?;
    map.set(index, word | (1u64 << (port & 63)), 0)
        .map_err(|e| map_error("adding a DNS port", MAP_DNS_PORTS, e))
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or(Error::Missing { kind: "map", name })
}

impl Capture {
    /// Loads the programs, configures them, and attaches them to `config.cgroup`.
    ///
    /// Must be called inside a tokio runtime (the ring buffers are registered with it).
    pub fn start(config: &CaptureConfig) -> Result<Self> {
        let cgroup = File::open(&config.cgroup).map_err(|source| Error::CgroupNotFound {
            path: config.cgroup.clone(),
            source,
        })?;
        let cgroup_id = cgroup
            .metadata()
            .map_err(|source| Error::Syscall {
                call: "fstat",
                source,
            })?
            .ino();
        let clock = KernelClock::now();

        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(|e| {
            if is_eperm(&e) {
                Error::MissingPrivileges {
                    action: "creating eBPF maps".to_owned(),
                    source: Box::new(e),
                }
            } else {
                Error::Load(e)
            }
        })?;

        {
            let map = ebpf.map_mut(MAP_CONFIG).ok_or(Error::Missing {
                kind: "map",
                name: MAP_CONFIG,
            })?;
            let mut cfg: Array<_, u64> =
                Array::try_from(map).map_err(|e| map_error("opening", MAP_CONFIG, e))?;
            let refresh_ns = u64::try_from(config.refresh.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1_000_000);
            cfg.set(ConfigIndex::RefreshNs as u32, refresh_ns, 0)
                .map_err(|e| map_error("setting the refresh interval", MAP_CONFIG, e))?;
            cfg.set(
                ConfigIndex::NoTcpOutcome as u32,
                u64::from(!config.tcp_outcome),
                0,
            )
            .map_err(|e| map_error("setting TCP outcome tracking", MAP_CONFIG, e))?;
        }
        let mut dns_ports: Array<MapData, u64> =
            Array::try_from(take_map(&mut ebpf, MAP_DNS_PORTS)?)
                .map_err(|e| map_error("opening", MAP_DNS_PORTS, e))?;
        for &port in &config.dns_ports {
            set_dns_port(&mut dns_ports, port)?;
        }
        let flows = HashMap::try_from(take_map(&mut ebpf, MAP_FLOWS)?)
            .map_err(|e| map_error("opening", MAP_FLOWS, e))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, MAP_COUNTERS)?)
            .map_err(|e| map_error("opening", MAP_COUNTERS, e))?;
        let path_counters = PerCpuArray::try_from(take_map(&mut ebpf, MAP_PATH_COUNTERS)?)
            .map_err(|e| map_error("opening", MAP_PATH_COUNTERS, e))?;
        let flow_ring = RingBuf::try_from(take_map(&mut ebpf, MAP_FLOW_EVENTS)?)
            .map_err(|e| map_error("opening", MAP_FLOW_EVENTS, e))?;
        let dns_ring = RingBuf::try_from(take_map(&mut ebpf, MAP_DNS_EVENTS)?)
            .map_err(|e| map_error("opening", MAP_DNS_EVENTS, e))?;
        let flow_ring = register_ring(flow_ring)?;
        let dns_ring = register_ring(dns_ring)?;

        // Load everything first, then attach, so that a verifier rejection leaves nothing
        // half-attached.
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name, "loading")?;
            prog.load().map_err(|e| program_error("loading", name, e))?;
        }
        let release: &mut CgroupSock = program(&mut ebpf, RELEASE_PROGRAM, "loading")?;
        release
            .load()
            .map_err(|e| program_error("loading", RELEASE_PROGRAM, e))?;
        load_cgroup_skb(&mut ebpf, INGRESS_PROGRAM)?;

        // Attached through bpf_link (kernel ≥ 5.7), which is always multi-attach: several agents
        // or tests may watch overlapping sub-trees. Link creation takes no attach flags.
        let mode = CgroupAttachMode::Single;
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name, "attaching")?;
            prog.attach(&cgroup, mode)
                .map_err(|e| program_error("attaching", name, e))?;
        }
        let release: &mut CgroupSock = program(&mut ebpf, RELEASE_PROGRAM, "attaching")?;
        if config.tcp_outcome {
            release
                .attach(&cgroup, mode)
                .map_err(|e| program_error("attaching", RELEASE_PROGRAM, e))?;
        }
        let dns: &mut CgroupSkb = program(&mut ebpf, INGRESS_PROGRAM, "attaching")?;
        dns.attach(&cgroup, CgroupSkbAttachType::Ingress, mode)
            .map_err(|e| program_error("attaching", INGRESS_PROGRAM, e))?;

        Ok(Self {
            flow_ring,
            dns_ring,
            flows,
            counters,
            path_counters,
            dns_ports,
            ebpf: Some(ebpf),
            clock,
            cgroup_id,
            prefer_dns: false,
            batch_unsupported: AtomicBool::new(false),
            last_map_len: AtomicUsize::new(0),
        })
    }

    /// cgroup id (inode) of the attach directory.
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    /// The monotonic-to-wall-clock conversion used for every timestamp.
    pub fn clock(&self) -> KernelClock {
        self.clock
    }

    /// Adds a DNS source port at run time.
    pub fn add_dns_port(&mut self, port: u16) -> Result<()> {
        set_dns_port(&mut self.dns_ports, port)
    }

    /// Detaches all programs (no new events); the rings and maps stay readable.
    pub fn detach(&mut self) -> Result<()> {
        // Dropping the Ebpf object closes the programs' links, which detaches them.
        drop(self.ebpf.take());
        Ok(())
    }

    /// Reads one already-available event without waiting; `None` when both rings are empty.
    pub fn try_next_event(&mut self) -> Result<Option<CaptureEvent>> {
        // Alternate which ring goes first so that neither starves the other.
        self.prefer_dns = !self.prefer_dns;
        let clock = self.clock;
        let read_flow = |ring: &mut RingBuf<MapData>| {
            ring.next()
                .map(|item| match decode::decode_flow(&item, &clock) {
                    Ok(sample) => CaptureEvent::Flow(sample),
                    Err(e) => CaptureEvent::Malformed(e),
                })
        };
        let read_dns = |ring: &mut RingBuf<MapData>| {
            ring.next()
                .map(|item| match decode::decode_dns(&item, &clock) {
                    Ok(packet) => CaptureEvent::Dns(packet),
                    Err(e) => CaptureEvent::Malformed(e),
                })
        };
        let event = if self.prefer_dns {
            read_dns(self.dns_ring.get_mut()).or_else(|| read_flow(self.flow_ring.get_mut()))
        } else {
            read_flow(self.flow_ring.get_mut()).or_else(|| read_dns(self.dns_ring.get_mut()))
        };
        Ok(event)
    }

    /// Waits for the next event. Cancel-safe: dropping the future loses nothing.
    pub async fn next_event(&mut self) -> Result<CaptureEvent> {
        loop {
            if let Some(event) = self.try_next_event()? {
                return Ok(event);
            }
            let Self {
                flow_ring,
                dns_ring,
                ..
            } = self;
            // Clearing readiness before re-checking the rings cannot lose a wakeup: data that
            // arrives afterwards raises a new epoll edge.
            tokio::select! {
                guard = flow_ring.readable_mut() => {
                    guard.map_err(|source| Error::Syscall { call: "epoll_wait", source })?.clear_ready();
                }
                guard = dns_ring.readable_mut() => {
                    guard.map_err(|source| Error::Syscall { call: "epoll_wait", source })?.clear_ready();
                }
            }
        }
    }

    /// Each attached program's cumulative run count and run time, as the kernel keeps them
    /// while BPF run-time statistics are enabled ([`enable_run_time_stats`], or the sysctl
    /// `kernel.bpf_stats_enabled=1`); both stay 0 otherwise. Sorted by program name. Empty
    /// after [`Capture::detach`].
    pub fn program_stats(&self) -> Result<Vec<ProgramStats>> {
        let Some(ebpf) = &self.ebpf else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, prog) in ebpf.programs() {
            // A program the configuration left unattached (sock_release without TCP outcome)
            // is loaded all the same; its counts stay 0.
            let info = prog.info().map_err(|e| {
                program_error("reading statistics of", static_program_name(name), e)
            })?;
            out.push(ProgramStats {
                name: name.to_owned(),
                run_count: info.run_count(),
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Reads the kernel counters (produced records, drops per cause), summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters> {
        let mut values = BTreeMap::new();
        for counter in Counter::ALL {
            let per_cpu = self
                .counters
                .get(&(counter as u32), 0)
                .map_err(|e| map_error("lookup", MAP_COUNTERS, e))?;
            values.insert(
                counter,
                per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
            );
        }
        Ok(KernelCounters { values })
    }

    /// One data-path counter ([`PathCounter`]), summed over CPUs.
    pub fn path_counter(&self, counter: PathCounter) -> Result<u64> {
        let per_cpu = self
            .path_counters
            .get(&(counter as u32), 0)
            .map_err(|e| map_error("lookup", MAP_PATH_COUNTERS, e))?;
        Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
    }

    /// The latest cumulative state of one flow ("settle"), or `None` if the kernel no longer
    /// holds it (evicted). One system call; for many keys use [`Capture::lookup_many`].
    pub fn lookup(&self, id: &FlowId) -> Result<Option<FlowSample>> {
        let key = id.to_key();
        match self.flows.get(&key, 0) {
            Ok(value) => Ok(FlowSample::from_kernel(&key, &value, &self.clock)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error("lookup", MAP_FLOWS, e)),
        }
    }

    /// [`Capture::lookup`] of every id, choosing the cheaper way to read the kernel map
    /// ([`MapRead::Auto`]). Returns one `(id, state)` pair per input id, in input order
    /// (duplicates included); `None` = the kernel no longer holds the flow.
    ///
    /// Trade-off: a per-key lookup is one system call (~1.15 µs CPU on the lab VM), while a
    /// batched walk reads the *whole* map (~110 µs fixed + ~0.3 µs per entry in the kernel,
    /// ~0.2 µs per requested id to match), however few ids were asked for. Up to
    /// [`LOOKUP_MANY_PER_KEY_MAX`] ids, and whenever the walk is estimated dearer (map size
    /// as of the latest whole-map walk, at least `ids.len()`), each id is looked up on its
    /// own; otherwise one batched walk is filtered to the requested ids
    /// ([`Capture::lookup_many_would_batch`] tells which). Both give the same result; a
    /// flow evicted or created during the call may be seen either way.
    pub fn lookup_many(&self, ids: &[FlowId]) -> Result<Vec<(FlowId, Option<FlowSample>)>> {
        self.lookup_many_with(ids, MapRead::Auto)
    }

    /// [`Capture::lookup_many`] with an explicit read method (benchmarks and tests).
    pub fn lookup_many_with(
        &self,
        ids: &[FlowId],
        method: MapRead,
    ) -> Result<Vec<(FlowId, Option<FlowSample>)>> {
        let batched = match method {
            MapRead::PerKey => false,
            MapRead::Batched => true,
            MapRead::Auto => self.lookup_many_would_batch(ids.len()),
        };
        if batched {
            // Requested key -> index of its first occurrence in `ids`; the walk then hashes
            // each map entry once and writes the sample straight into its output slot.
            let mut out: Vec<(FlowId, Option<FlowSample>)> =
                ids.iter().map(|id| (*id, None)).collect();
            let mut index: std::collections::HashMap<[u64; 4], usize, batch::KeyHashState> =
                std::collections::HashMap::with_capacity_and_hasher(
                    ids.len(),
                    batch::KeyHashState::default(),
                );
            let mut duplicates = false;
            for (i, id) in ids.iter().enumerate() {
                // The first occurrence gets the sample; repeats are copied from it below.
                match index.entry(batch::key_words(&id.to_key())) {
                    std::collections::hash_map::Entry::Occupied(_) => duplicates = true,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(i);
                    }
                }
            }
            let clock = self.clock;
            let walked = self.walk_batched(|key, value| {
                if let Some(slot) = index
                    .get(&batch::key_words(key))
                    .and_then(|&i| out.get_mut(i))
                {
                    slot.1 = FlowSample::from_kernel(key, value, &clock);
                }
            })?;
            if walked {
                if duplicates {
                    for i in 0..out.len() {
                        let first = index
                            .get(&batch::key_words(&out[i].0.to_key()))
                            .copied()
                            .unwrap_or(i);
                        out[i].1 = out[first].1;
                    }
                }
                return Ok(out);
            }
        }
        ids.iter().map(|id| Ok((*id, self.lookup(id)?))).collect()
    }

    /// Whether [`Capture::lookup_many`] of `n_ids` ids would read them with one batched walk
    /// (rather than per-key lookups), given the current map-size estimate.
    pub fn lookup_many_would_batch(&self, n_ids: usize) -> bool {
        if n_ids <= LOOKUP_MANY_PER_KEY_MAX || self.batch_unsupported.load(Ordering::Relaxed) {
            return false;
        }
        // Every requested id was in the map recently, so the map holds at least about that
        // many. A stale (too small) estimate costs one over-priced walk, which corrects it.
        let entries = self.last_map_len.load(Ordering::Relaxed).max(n_ids);
        let walk_ns = WALK_FIXED_NS
            .saturating_add(entries.saturating_mul(WALK_ENTRY_NS))
            .saturating_add(n_ids.saturating_mul(WALK_INDEX_NS));
        n_ids.saturating_mul(PER_KEY_LOOKUP_NS) >= walk_ns
    }

    /// Walks the flow map with `BPF_MAP_LOOKUP_BATCH`, calling `f` per entry. `Ok(false)`:
    /// the kernel has no batch operations (remembered; nothing was passed to `f`).
    fn walk_batched(&self, mut f: impl FnMut(&FlowKey, &FlowValue)) -> Result<bool> {
        if self.batch_unsupported.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let mut entries = 0usize;
        let walk = batch::walk(
            self.flows.map().fd().as_fd(),
            batch::BATCH_ENTRIES,
            |key, value| {
                entries += 1;
                f(key, value);
            },
        )
        .map_err(|source| {
            if source.raw_os_error() == Some(libc::EPERM) {
                Error::MissingPrivileges {
                    action: format!("reading map {MAP_FLOWS} in batches"),
                    source: Box::new(source),
                }
            } else {
                Error::Syscall {
                    call: "bpf(BPF_MAP_LOOKUP_BATCH)",
                    source,
                }
            }
        })?;
        match walk {
            batch::Walk::Complete => {
                self.last_map_len.store(entries, Ordering::Relaxed);
                Ok(true)
            }
            batch::Walk::Unsupported => {
                self.batch_unsupported.store(true, Ordering::Relaxed);
                Ok(false)
            }
        }
    }

    /// Whether batched map reads work on this kernel (`false` once the kernel refused one;
    /// reads then fall back to per-key walks).
    pub fn batch_reads_supported(&self) -> bool {
        !self.batch_unsupported.load(Ordering::Relaxed)
    }

    /// Every flow the kernel currently holds (recovery after drops, and the final sweep),
    /// sorted by id. Keys evicted during the walk are skipped. Batched ([`MapRead::Batched`]).
    pub fn sweep(&self) -> Result<Vec<FlowSample>> {
        self.sweep_with(MapRead::Auto)
    }

    /// [`Capture::sweep`] with an explicit read method (benchmarks and tests).
    pub fn sweep_with(&self, method: MapRead) -> Result<Vec<FlowSample>> {
        let mut out = Vec::new();
        let clock = self.clock;
        if method != MapRead::PerKey
            && self.walk_batched(|key, value| {
                out.extend(FlowSample::from_kernel(key, value, &clock));
            })?
        {
            out.sort_by_key(|s| s.id);
            return Ok(out);
        }
        let mut entries = 0usize;
        for entry in self.flows.iter() {
            match entry {
                Ok((key, value)) => {
                    entries += 1;
                    out.extend(FlowSample::from_kernel(&key, &value, &clock));
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error("iterating", MAP_FLOWS, e)),
            }
        }
        self.last_map_len.store(entries, Ordering::Relaxed);
        out.sort_by_key(|s| s.id);
        Ok(out)
    }

    /// Number of keys currently in the kernel flow map (walks the map, batched when possible).
    pub fn flow_keys(&self) -> Result<usize> {
        let mut n = 0usize;
        if self.walk_batched(|_, _| n += 1)? {
            return Ok(n);
        }
        Ok(self.flows.keys().filter(Result::is_ok).count())
    }
}

/// One program's cumulative statistics ([`Capture::program_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// The program's function name (e.g. `leash_ingress`).
    pub name: String,
    /// Runs counted while statistics were enabled (`bpf_prog_info.run_cnt`).
    pub run_count: u64,
    /// Nanoseconds spent in those runs (`bpf_prog_info.run_time_ns`).
    pub run_time_ns: u64,
}

/// Turns on the kernel's BPF run-time statistics (`BPF_ENABLE_STATS`, `BPF_STATS_RUN_TIME`)
/// for as long as the returned descriptor stays open: the same switch as the sysctl
/// `kernel.bpf_stats_enabled`, but closed (and so restored) even if the process dies.
/// Statistics cost two clock reads per program run, so benchmarks of throughput run without.
pub fn enable_run_time_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| {
        if e.io_error.raw_os_error() == Some(libc::EPERM) {
            Error::MissingPrivileges {
                action: "enabling BPF run-time statistics".to_owned(),
                source: Box::new(e.io_error),
            }
        } else {
            Error::Syscall {
                call: "bpf(BPF_ENABLE_STATS)",
                source: e.io_error,
            }
        }
    })
}

/// The `&'static str` of a program this module loads (errors carry static names).
fn static_program_name(name: &str) -> &'static str {
    SOCK_ADDR_PROGRAMS
        .into_iter()
        .chain([RELEASE_PROGRAM, INGRESS_PROGRAM])
        .find(|&p| p == name)
        .unwrap_or("(unknown)")
}

/// [`Capture::lookup_many`] never batches this many ids or fewer.
pub const LOOKUP_MANY_PER_KEY_MAX: usize = 64;

// Cost model of `Capture::lookup_many`, in CPU ns (thread CPU time, 6.18 lab VM, flow map of
// 2k-60k UDP keys): one `BPF_MAP_LOOKUP_ELEM` system call ~1.15 µs; a batched walk ~110 µs
// fixed (scanning the 131,072 mostly empty buckets) plus ~300 ns per entry in the kernel
// (bucket lock + copy-out per bucket); indexing and matching a requested id ~200 ns.
// E.g. 60k due ids in a 60k-entry map: ~0.53 µs per id batched vs ~1.2 µs per key.
const PER_KEY_LOOKUP_NS: usize = 1_150;
const WALK_FIXED_NS: usize = 110_000;
const WALK_ENTRY_NS: usize = 300;
const WALK_INDEX_NS: usize = 200;

// `Capture` is moved into the agent's tokio tasks.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Capture>();
};

#[cfg(test)]
mod tests {
    use super::*;

    fn syscall(call: &'static str, errno: i32) -> ProgramError {
        ProgramError::SyscallError(aya::sys::SyscallError {
            call,
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn eperm_names_the_three_capabilities() {
        let err = program_error(
            "attaching",
            "leash_connect4",
            syscall("bpf_link_create", libc::EPERM),
        );
        assert!(matches!(err, Error::MissingPrivileges { .. }), "{err:?}");
        let msg = err.to_string();
        for needle in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "leash_connect4"] {
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn other_syscall_errors_carry_the_call_name_and_errno() {
        let err = program_error(
            "attaching",
            "leash_ingress",
            syscall("bpf_link_create", libc::EINVAL),
        );
        // As a person sees it: the message, then its cause.
        let msg = leash_records::error::Chain(&err).to_string();
        assert!(
            matches!(
                err,
                Error::ProgramSyscall {
                    call: "bpf_link_create",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            msg.contains("leash_ingress") && msg.contains("bpf_link_create"),
            "{msg}"
        );
        assert!(
            msg.contains(&io::Error::from_raw_os_error(libc::EINVAL).to_string()),
            "{msg}"
        );
    }
}
