//! The cgroup v2 filesystem: finding its mount, and resolving a cgroup id to its path.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use leash_records::error::Chain;

use super::{Error, Result};
use crate::metrics::Metrics;

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
pub const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// The paths where distributions mount cgroup v2, checked even when mountinfo cannot be read.
const WELL_KNOWN: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// Whether `path` is on a cgroup v2 filesystem, by `statfs(2)` magic.
pub fn is_cgroup2(path: &Path) -> Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Statfs {
        path: path.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c_path is NUL-terminated and buf is a valid, writable statfs buffer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::Statfs {
            path: path.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: statfs returned 0, so it filled the buffer.
    let stat = unsafe { buf.assume_init() };
    // `f_type`'s width differs between architectures; the magic fits all of them.
    Ok(u64::try_from(stat.f_type).ok() == Some(CGROUP2_SUPER_MAGIC))
}

/// Mount points listed in a `/proc/<pid>/mountinfo` text whose filesystem type is `cgroup2`,
/// in file order, with mountinfo's octal escapes (`\040` for a space) decoded.
pub fn cgroup2_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = fields.get(4).filter(|m| !m.is_empty())?;
            let dash = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(dash + 1)?;
            (*fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the cgroup v2 mount of this process's mount namespace.
///
/// Candidates are the `cgroup2` entries of `/proc/self/mountinfo` plus the well-known
/// `/sys/fs/cgroup` and `/sys/fs/cgroup/unified` (hybrid hosts); the first whose `statfs` magic
/// is `CGROUP2_SUPER_MAGIC` wins, preferring `/sys/fs/cgroup`.
pub fn find_cgroup2_mount() -> Result<PathBuf> {
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let listed = match std::fs::read_to_string(mountinfo_path) {
        Ok(text) => cgroup2_mount_points(&text),
        Err(source) => {
            tracing::warn!(path = %mountinfo_path.display(), %source, "cannot read mountinfo; trying well-known paths");
            Vec::new()
        }
    };
    let mut candidates: Vec<PathBuf> = WELL_KNOWN.iter().map(PathBuf::from).collect();
    for path in listed {
        if !candidates.contains(&path) {
            candidates.push(path);
        }
    }
    for candidate in &candidates {
        // A missing or unreadable candidate is simply not the mount.
        if is_cgroup2(candidate).unwrap_or(false) {
            return Ok(candidate.clone());
        }
    }
    Err(Error::NoCgroup2Mount {
        checked: candidates,
    })
}

/// One cached id → path entry, tagged with the scan that last saw it.
#[derive(Debug)]
struct Entry {
    path: Arc<str>,
    generation: u64,
}

/// Resolves cgroup ids (the inode of the cgroup directory) to paths relative to the mount.
///
/// The cache is filled by walking the tree. A miss triggers a rescan, at most once per
/// `min_rescan_interval`, so a storm of unknown ids costs one walk, not one per id. Entries not
/// seen by recent scans (deleted cgroups) are kept, so late records from short-lived cgroups
/// still resolve, until the cache exceeds its capacity; then the least recently seen go first.
#[derive(Debug)]
pub struct CgroupPaths {
    mount: PathBuf,
    scan_root: PathBuf,
    entries: HashMap<u64, Entry>,
    generation: u64,
    last_scan: Option<Instant>,
    /// Wall-clock start of the last walk: a cgroup that existed after it must have been seen.
    last_scan_wall: Option<SystemTime>,
    min_rescan_interval: Duration,
    capacity: usize,
    metrics: Metrics,
}

impl CgroupPaths {
    /// Default bound on cached entries.
    pub const DEFAULT_CAPACITY: usize = 65_536;
    /// Default minimum time between two rescans.
    pub const DEFAULT_MIN_RESCAN_INTERVAL: Duration = Duration::from_millis(100);

    /// A resolver for the cgroup v2 tree mounted at `mount`, scanning all of it.
    pub fn new(mount: impl Into<PathBuf>, metrics: Metrics) -> Self {
        let mount = mount.into();
        Self {
            scan_root: mount.clone(),
            mount,
            entries: HashMap::new(),
            generation: 0,
            last_scan: None,
            last_scan_wall: None,
            min_rescan_interval: Self::DEFAULT_MIN_RESCAN_INTERVAL,
            capacity: Self::DEFAULT_CAPACITY,
            metrics,
        }
    }

    /// Restricts scans to the sub-tree at `root` (e.g. the `--cgroup` the agent attaches to);
    /// paths stay relative to the mount.
    pub fn with_scan_root(mut self, root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.starts_with(&self.mount) {
            return Err(Error::OutsideMount {
                path: root,
                mount: self.mount.clone(),
            });
        }
        self.scan_root = root;
        Ok(self)
    }

    /// Sets the bound on cached entries (at least 1).
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Sets the minimum time between two rescans.
    #[must_use]
    pub fn with_min_rescan_interval(mut self, interval: Duration) -> Self {
        self.min_rescan_interval = interval;
        self
    }

    /// The mount this resolver reads.
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The path of cgroup `id` relative to the mount (starting with `/`), rescanning on a miss.
    pub fn resolve(&mut self, id: u64) -> Option<Arc<str>> {
        self.resolve_at(id, Instant::now())
    }

    /// [`Self::resolve`] with an explicit clock, for tests of the rescan rate limit.
    pub fn resolve_at(&mut self, id: u64, now: Instant) -> Option<Arc<str>> {
        if let Some(entry) = self.entries.get(&id) {
            return Some(entry.path.clone());
        }
        let allowed = self
            .last_scan
            .is_none_or(|last| now.saturating_duration_since(last) >= self.min_rescan_interval);
        if allowed {
            if let Err(error) = self.rescan_at(now, Some(id)) {
                tracing::warn!(error = %Chain(&error), "cgroup rescan failed");
            }
            if let Some(entry) = self.entries.get(&id) {
                return Some(entry.path.clone());
            }
        }
        self.metrics.cgroup_path_misses.inc();
        None
    }

    /// The path of cgroup `id`, which produced an event at `seen_at`.
    ///
    /// A miss rescans whenever the last walk started before `seen_at`: the cgroup existed at
    /// that moment, so a walk from now on can only miss it if it was deleted meanwhile. This
    /// resolves cgroups created just after a walk (container restarts, rollouts) without a rate
    /// limit that would drop them, and a miss storm from one batch of events still costs one
    /// walk, because every event older than that walk is answered from it.
    pub fn resolve_seen(&mut self, id: u64, seen_at: SystemTime) -> Option<Arc<str>> {
        if let Some(entry) = self.entries.get(&id) {
            return Some(entry.path.clone());
        }
        if self.last_scan_wall.is_none_or(|last| last <= seen_at) {
            if let Err(error) = self.rescan_at(Instant::now(), Some(id)) {
                tracing::warn!(error = %Chain(&error), "cgroup rescan failed");
            }
            if let Some(entry) = self.entries.get(&id) {
                return Some(entry.path.clone());
            }
        }
        self.metrics.cgroup_path_misses.inc();
        None
    }

    /// Walks the tree now, regardless of the rate limit; returns the number of cgroups seen.
    pub fn rescan(&mut self) -> Result<usize> {
        self.rescan_at(Instant::now(), None)
    }

    fn rescan_at(&mut self, now: Instant, keep: Option<u64>) -> Result<usize> {
        self.last_scan = Some(now);
        self.last_scan_wall = Some(SystemTime::now());
        self.generation += 1;
        self.metrics.cgroup_rescans.inc();
        let mut seen = 0usize;
        let mut stack = vec![self.scan_root.clone()];
        while let Some(dir) = stack.pop() {
            let meta = match std::fs::symlink_metadata(&dir) {
                Ok(meta) => meta,
                // The root must exist; a child may vanish mid-walk.
                Err(source) if dir == self.scan_root => {
                    return Err(Error::Io { path: dir, source });
                }
                Err(_) => continue,
            };
            let rel = relative_path(&self.mount, &dir);
            seen += 1;
            self.entries.insert(
                meta.ino(),
                Entry {
                    path: rel,
                    generation: self.generation,
                },
            );
            let Ok(children) = std::fs::read_dir(&dir) else {
                continue;
            };
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(child.path());
                }
            }
        }
        self.evict(keep);
        self.metrics
            .cgroup_path_cache_size
            .set(self.entries.len() as i64);
        Ok(seen)
    }

    /// Drops the least recently seen entries beyond capacity, never `keep`.
    fn evict(&mut self, keep: Option<u64>) {
        let excess = self.entries.len().saturating_sub(self.capacity);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter(|(id, _)| Some(**id) != keep)
            .map(|(id, e)| (e.generation, *id))
            .collect();
        // Oldest generation first; ties broken by id so eviction is deterministic.
        by_age.sort_unstable();
        for (_, id) in by_age.into_iter().take(excess) {
            self.entries.remove(&id);
        }
    }
}

/// `dir` relative to `mount`, as `/a/b` (the mount itself is `/`).
fn relative_path(mount: &Path, dir: &Path) -> Arc<str> {
    let rel = dir.strip_prefix(mount).unwrap_or(dir);
    let mut out = String::from("/");
    out.push_str(&rel.to_string_lossy());
    Arc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
99 31 0:40 / /mnt/my\\040cgroup rw - cgroup2 none rw
";

    #[test]
    fn mountinfo_lists_cgroup2_only() {
        assert_eq!(
            cgroup2_mount_points(MOUNTINFO),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/my cgroup"),
            ]
        );
        assert!(cgroup2_mount_points("garbage\n- -\n1 2 3").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn mountinfo_parser_never_panics(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::strategy::Just("-".to_owned()),
                        proptest::strategy::Just("cgroup2".to_owned()),
                        "[0-9/a-z\\\\]{0,6}",
                    ],
                    0..10,
                ),
                0..5,
            )
        ) {
            let text = lines.iter().map(|l| l.join(" ")).collect::<Vec<_>>().join("\n");
            for path in cgroup2_mount_points(&text) {
                proptest::prop_assert!(!path.as_os_str().is_empty());
            }
        }
    }

    #[test]
    fn detects_this_hosts_mount_by_magic() {
        let mount = find_cgroup2_mount().expect("this machine has cgroup v2");
        assert!(is_cgroup2(&mount).expect("statfs"));
        assert!(mount.join("cgroup.controllers").exists());
        // /sys/fs/cgroup is tmpfs on hybrid hosts, so magic, not the path, decides.
        if mount != Path::new("/sys/fs/cgroup") {
            assert!(!is_cgroup2(Path::new("/sys/fs/cgroup")).expect("statfs"));
        }
    }

    #[test]
    fn statfs_error_names_path() {
        let err = is_cgroup2(Path::new("/nonexistent/leash")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/leash"), "{err}");
        assert!(err.to_string().contains("statfs"), "{err}");
    }

    /// A plain directory tree stands in for cgroupfs: ids are inodes either way.
    fn tree() -> (tempfile::TempDir, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("kubepods.slice/pod-a");
        std::fs::create_dir_all(&a).unwrap();
        let b = dir.path().join("system.slice");
        std::fs::create_dir_all(&b).unwrap();
        let ia = std::fs::metadata(&a).unwrap().ino();
        let ib = std::fs::metadata(&b).unwrap().ino();
        (dir, ia, ib)
    }

    #[test]
    fn resolves_ids_and_root() {
        let (dir, ia, ib) = tree();
        let root_ino = std::fs::metadata(dir.path()).unwrap().ino();
        let mut paths = CgroupPaths::new(dir.path(), Metrics::new());
        assert_eq!(paths.resolve(ia).as_deref(), Some("/kubepods.slice/pod-a"));
        assert_eq!(paths.resolve(ib).as_deref(), Some("/system.slice"));
        assert_eq!(paths.resolve(root_ino).as_deref(), Some("/"));
    }

    #[test]
    fn miss_rescans_but_rate_limited() {
        let (dir, _, _) = tree();
        let metrics = Metrics::new();
        let mut paths = CgroupPaths::new(dir.path(), metrics.clone())
            .with_min_rescan_interval(Duration::from_millis(100));
        let t0 = Instant::now();
        assert_eq!(paths.resolve_at(u64::MAX, t0), None);
        assert_eq!(metrics.cgroup_rescans.get(), 1);
        // A new cgroup appears; within the interval a miss storm does not rescan.
        let late = dir.path().join("late");
        std::fs::create_dir(&late).unwrap();
        let il = std::fs::metadata(&late).unwrap().ino();
        for _ in 0..1000 {
            assert_eq!(paths.resolve_at(il, t0 + Duration::from_millis(50)), None);
        }
        assert_eq!(metrics.cgroup_rescans.get(), 1);
        assert_eq!(metrics.cgroup_path_misses.get(), 1001);
        // After the interval, the miss rescans and finds it.
        assert_eq!(
            paths
                .resolve_at(il, t0 + Duration::from_millis(150))
                .as_deref(),
            Some("/late")
        );
        assert_eq!(metrics.cgroup_rescans.get(), 2);
        assert_eq!(metrics.cgroup_path_cache_size.get(), paths.len() as i64);
    }

    #[test]
    fn miss_after_the_last_walk_rescans_without_rate_limit() {
        let (dir, _, _) = tree();
        let metrics = Metrics::new();
        let mut paths = CgroupPaths::new(dir.path(), metrics.clone())
            .with_min_rescan_interval(Duration::from_secs(3600));
        paths.rescan().unwrap();
        let before = SystemTime::now();
        // Created after the walk; its event is newer than the walk, so it must resolve at once.
        let late = dir.path().join("late");
        std::fs::create_dir(&late).unwrap();
        let il = std::fs::metadata(&late).unwrap().ino();
        let seen = SystemTime::now();
        assert_eq!(paths.resolve_seen(il, seen).as_deref(), Some("/late"));
        assert_eq!(metrics.cgroup_rescans.get(), 2);
        // An unknown id whose event predates the last walk does not walk again.
        assert_eq!(paths.resolve_seen(u64::MAX, before), None);
        assert_eq!(metrics.cgroup_rescans.get(), 2);
        assert_eq!(metrics.cgroup_path_misses.get(), 1);
    }

    #[test]
    fn deleted_cgroups_stay_until_capacity() {
        let (dir, ia, _) = tree();
        // Created up front: a plain filesystem may reuse a freed inode, unlike cgroupfs ids.
        std::fs::create_dir(dir.path().join("late")).unwrap();
        let mut paths =
            CgroupPaths::new(dir.path(), Metrics::new()).with_min_rescan_interval(Duration::ZERO);
        assert!(paths.resolve(ia).is_some());
        std::fs::remove_dir(dir.path().join("kubepods.slice/pod-a")).unwrap();
        paths.rescan().unwrap();
        assert_eq!(paths.resolve(ia).as_deref(), Some("/kubepods.slice/pod-a"));
        // 4 live dirs (root, kubepods.slice, system.slice, late) with capacity 4 push the stale one out.
        let mut paths = paths.with_capacity(4);
        paths.rescan().unwrap();
        assert_eq!(paths.len(), 4);
        assert!(!paths.entries.contains_key(&ia));
    }

    #[test]
    fn scan_root_limits_walk() {
        let (dir, ia, ib) = tree();
        let mut paths = CgroupPaths::new(dir.path(), Metrics::new())
            .with_scan_root(dir.path().join("kubepods.slice"))
            .unwrap();
        assert_eq!(paths.resolve(ia).as_deref(), Some("/kubepods.slice/pod-a"));
        assert_eq!(paths.resolve(ib), None);
        assert!(
            CgroupPaths::new(dir.path(), Metrics::new())
                .with_scan_root("/elsewhere")
                .is_err()
        );
    }

    #[test]
    fn real_cgroup_tree_resolves_own_cgroup() {
        let mount = find_cgroup2_mount().unwrap();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        // The v2 line is `0::<path>`.
        let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            println!("SKIP: no cgroup v2 line in /proc/self/cgroup");
            return;
        };
        let dir = mount.join(rel.trim_start_matches('/'));
        let Ok(meta) = std::fs::metadata(&dir) else {
            println!("SKIP: {} not visible", dir.display());
            return;
        };
        let mut paths = CgroupPaths::new(&mount, Metrics::new());
        assert_eq!(paths.resolve(meta.ino()).as_deref(), Some(rel));
    }
}
