//! A real PostgreSQL server for the store tests: Debian's `postgresql` package (installed by
//! `scripts/setup.sh`), `initdb` in a temporary directory, `postgres` on a private loopback
//! port (and a Unix socket in the directory), stopped when dropped, on a panic too.
//!
//! PostgreSQL refuses to run as root, and the tests run as root in CI: then `initdb` and
//! `postgres` run as `nobody` (`setpriv --reuid`), in a directory owned by it. As another
//! user they run as that user. Clients (the tests, `createdb`) connect over TCP with the
//! password of the `leash` superuser, by SCRAM.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser's name and password.
pub const USER: &str = "leash";
/// The superuser's password (tests only).
pub const PASSWORD: &str = "lab-secret-7Qx";

/// How long the server may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running server.
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    /// Extra `-c` settings.
    conf: Vec<String>,
    // Removed last: the server's files.
    _dir: tempfile::TempDir,
}

/// The directory of Debian's PostgreSQL binaries (`/usr/lib/postgresql/<version>/bin`), the
/// newest when several are installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A server, or `None` (the test skips, saying why) when PostgreSQL is not installed and
/// `LEASH_REQUIRE_PRIVILEGED` is not `1`.
pub fn postgres_or_skip() -> Option<Postgres> {
    let Some(bin) = bin_dir() else {
        assert!(
            std::env::var(leash_lab::REQUIRE_PRIVILEGED_ENV).as_deref() != Ok("1"),
            "{}=1 but PostgreSQL is not installed (/usr/lib/postgresql/*/bin): run ./scripts/setup.sh",
            leash_lab::REQUIRE_PRIVILEGED_ENV,
        );
        eprintln!(
            "SKIPPED: PostgreSQL is not installed (/usr/lib/postgresql/*/bin): run ./scripts/setup.sh"
        );
        return None;
    };
    Some(Postgres::start(&bin))
}

fn is_root() -> bool {
    // SAFETY: plain syscall.
    unsafe { libc::geteuid() == 0 }
}

/// `nobody`'s uid and gid.
fn nobody() -> (u32, u32) {
    // SAFETY: getpwnam with a NUL-terminated name; the record is read before any other call.
    unsafe {
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(!pw.is_null(), "no user `nobody` to run PostgreSQL as");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// `program` run as the unprivileged user when we are root.
fn command(program: &Path) -> Command {
    if is_root() {
        let (uid, gid) = nobody();
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Postgres {
    /// Initializes and starts a server with the binaries of `bin`.
    pub fn start(bin: &Path) -> Postgres {
        Postgres::start_with(bin, None)
    }

    /// As [`Postgres::start`], with extra server settings (`name=value`) that override the
    /// test defaults (`fsync=off`, `synchronous_commit=off`, `full_page_writes=off`): the
    /// ingest benchmark runs with production durability.
    pub fn start_with_settings(bin: &Path, settings: &[&str]) -> Postgres {
        let mut pg = Postgres::start_with(bin, None);
        pg.stop();
        for s in settings {
            pg.conf.extend(["-c".to_owned(), (*s).to_owned()]);
        }
        pg.spawn();
        pg
    }

    /// The postmaster's process id (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// As [`Postgres::start`], serving TLS with `tls` (a PEM certificate chain and key) and
    /// refusing TCP clients without it (`hostssl` only).
    pub fn start_with(bin: &Path, tls: Option<(&Path, &Path)>) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("leash-pg-")
            .tempdir()
            .expect("a temporary directory");
        // The unprivileged user must reach its files through the directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temporary directory");
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        let pwfile = dir.path().join("pw");
        for d in [&data, &sockets] {
            std::fs::create_dir(d).expect("create a server directory");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                .expect("chmod a server directory");
        }
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).expect("write the password file");
        if is_root() {
            let (uid, gid) = nobody();
            for p in [&data, &sockets, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to nobody");
            }
        }
        let out = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync"])
            .args(["--encoding=UTF8", "--locale=C.UTF-8"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .current_dir(dir.path())
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = Vec::new();
        if let Some((cert, key)) = tls {
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                let to = data.join(name);
                std::fs::copy(from, &to).expect("copy the TLS files");
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod the TLS files");
                if is_root() {
                    let (uid, gid) = nobody();
                    std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
            )
            .expect("pg_hba.conf");
            conf.extend(["-c", "ssl=on"]);
        }
        let port = free_port();
        std::fs::File::create(dir.path().join("server.log")).expect("the server log");
        if is_root() {
            let (uid, gid) = nobody();
            std::os::unix::fs::chown(dir.path().join("server.log"), Some(uid), Some(gid))
                .expect("chown the log");
        }
        let mut pg = Postgres {
            child: None,
            port,
            bin: bin.to_path_buf(),
            data,
            conf: conf.iter().map(|c| (*c).to_owned()).collect(),
            _dir: dir,
        };
        pg.spawn();
        pg.wait_ready();
        pg
    }

    /// Starts `postgres` on the data directory (appending to its log).
    fn spawn(&mut self) {
        let dir = self._dir.path();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("server.log"))
            .expect("the server log");
        let child = command(&self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1", "-c"])
            .arg(format!("port={}", self.port))
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                dir.join("sockets").display()
            ))
            // A test server: durability is not what is tested.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(&self.conf)
            .current_dir(dir)
            .stdin(Stdio::null())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stops the server (a fast shutdown: clients are disconnected) and starts it again on
    /// the same data and port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the server: SIGINT, a bounded wait, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child (setpriv execs postgres in place).
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("postgres exited at start ({status}): {}", self.log());
            }
            let ok = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                start.elapsed() < READY_WITHIN,
                "postgres not ready within {READY_WITHIN:?}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` as the superuser, with `password`.
    pub fn url_with_password(&self, db: &str, password: &str) -> String {
        format!(
            "postgres://{USER}:{password}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        self.url_with_password(db, PASSWORD)
    }

    /// Creates database `db` and returns its URL.
    pub fn create_database(&self, db: &str) -> String {
        let out = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                db,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("createdb runs");
        assert!(
            out.status.success(),
            "createdb {db}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(db)
    }

    /// Runs `sql` in database `db` with `psql` and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
