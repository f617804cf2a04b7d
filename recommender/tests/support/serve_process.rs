//! `leash serve` as a process, for the tests of its alerts, its pull-request loop and its UI
//! listener (`serve_alerts.rs`, `serve_pr.rs`, `serve_ui.rs`): plaintext on free loopback
//! ports (`--http`, `--ui-listen`), its stderr (at `leash=debug`) in a file, ready once
//! `/readyz` answers `200`, killed on drop.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::http::{free_port, get};

/// A running `leash serve --insecure` over a snapshot and a store; killed on drop.
pub struct ServeProcess {
    child: Child,
    /// The address of `--http` (health and metrics).
    pub http: SocketAddr,
    /// The address of `--ui-listen` (`/v1` and the UI).
    pub ui: SocketAddr,
    /// The address of gRPC ingest (plaintext).
    pub grpc: SocketAddr,
    log: PathBuf,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    /// Starts `leash serve` with `--store store --cluster cluster --check-interval interval`
    /// and `extra`, its log in `dir`, without the git token of the test's environment; waits
    /// until it is ready.
    pub fn start<S: AsRef<OsStr>>(
        dir: &Path,
        store: &Path,
        cluster: &Path,
        interval: &str,
        extra: &[S],
    ) -> ServeProcess {
        let source = [OsStr::new("--cluster"), cluster.as_os_str()];
        Self::start_from(dir, store, &source, interval, extra)
    }

    /// [`Self::start`] with the cluster model from `source` (`--cluster FILE`, or `--kube
    /// --kubeconfig FILE`).
    pub fn start_from<S: AsRef<OsStr>, T: AsRef<OsStr>>(
        dir: &Path,
        store: &Path,
        source: &[T],
        interval: &str,
        extra: &[S],
    ) -> ServeProcess {
        // A free port may be taken by a parallel test before leash binds it: try new ports.
        for attempt in 1.. {
            let mut server = Self::spawn(dir, store, source, interval, extra);
            match server.wait_ready(Duration::from_secs(60)) {
                Ok(()) => return server,
                Err(log) if attempt < 4 && log.contains("Address already in use") => {}
                Err(log) => panic!("leash serve exited before it was ready\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn spawn<S: AsRef<OsStr>, T: AsRef<OsStr>>(
        dir: &Path,
        store: &Path,
        source: &[T],
        interval: &str,
        extra: &[S],
    ) -> ServeProcess {
        let http = free_port();
        let grpc = free_port();
        let ui = free_port();
        let log = dir.join(format!("serve-{}.log", http.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_leash"))
            .arg("serve")
            .args(["--listen", &grpc.to_string()])
            .args(["--http", &http.to_string()])
            .args(["--ui-listen", &ui.to_string()])
            .arg("--store")
            .arg(store)
            .args(source)
            .arg("--insecure")
            .args(["--check-interval", interval])
            .args(extra)
            .env("LEASH_LOG", "leash=debug,info")
            .env_remove(leash::pr::secret::TOKEN_ENV)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creates the log file"))
            .spawn()
            .expect("starts leash serve");
        ServeProcess {
            child,
            http,
            ui,
            grpc,
            log,
        }
    }

    /// Waits until `/readyz` answers `200`; the log when the process exits first.
    fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        let start = std::time::Instant::now();
        loop {
            if self.child.try_wait().expect("polls leash serve").is_some() {
                return Err(self.log());
            }
            if matches!(get(self.http, "/readyz"), Ok((200, _))) {
                return Ok(());
            }
            assert!(
                start.elapsed() < within,
                "leash serve not ready within {within:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it as Kubernetes does (SIGTERM) and waits for its exit status, at most `within`.
    #[track_caller]
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM");
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("polls leash serve") {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "leash serve did not exit within {within:?} of SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails the test, with the log, if the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("polls leash serve") {
            panic!("leash serve exited: {status}\n{}", self.log());
        }
    }

    /// The JSON answer to `GET path` on the UI listener, which must be `200`.
    #[track_caller]
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = get(self.ui, path).expect("GET from leash serve");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("a JSON answer")
    }

    /// The served `/metrics`.
    pub fn metrics(&self) -> String {
        get(self.http, "/metrics").expect("GET /metrics").1
    }

    /// The value of the metric line starting with `name` (labels included), if it is there.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
        })
    }

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
