//! A headless Chromium driven over W3C WebDriver by `chromedriver`: the one client of the web
//! UI's browser tests (`recommender/tests/ui_browser.rs`), its benchmark
//! (`recommender/benches/ui.rs`) and the demo's screenshot (`lab-demo`).
//!
//! A small client over loopback HTTP/1.1: the callers need a dozen commands, and the
//! maintained client crates pull in a second `http`, `cookie` and `thiserror` and Unicode
//! segmentation tables (fantoccini's `webdriver` dependency) or a whole `reqwest` stack
//! (thirtyfour), for the same JSON over loopback.
//!
//! Every command is bounded (socket timeouts); every wait is bounded by its caller. Errors are
//! values: a test unwraps them, the demo reports them as a failed step.

use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The environment variable naming `chromedriver` (default `/usr/bin/chromedriver`).
pub const DRIVER_ENV: &str = "LEASH_CHROMEDRIVER";
/// The environment variable naming the browser (default `/usr/bin/chromium`).
pub const BROWSER_ENV: &str = "LEASH_CHROMIUM";
/// The environment variable that turns a missing browser into a failure (set by CI).
pub const REQUIRE_ENV: &str = "LEASH_REQUIRE_BROWSER";

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long `chromedriver` may take to answer `/status` after it started.
const DRIVER_READY: Duration = Duration::from_secs(20);

/// The result of a WebDriver command.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to the browser.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `chromedriver` or the browser is not installed where it was looked for.
    #[error("{} is missing (install chromium and chromium-driver: scripts/setup.sh)", .0.display())]
    Missing(PathBuf),
    /// `chromedriver` could not be started.
    #[error("cannot start {}", .path.display())]
    Spawn {
        /// The driver's path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No free loopback port for the driver.
    #[error("no free loopback port")]
    Port(#[source] std::io::Error),
    /// `chromedriver` did not report ready in time.
    #[error("chromedriver not ready within {0:?}")]
    NotReady(Duration),
    /// The connection to `chromedriver` failed.
    #[error("{command}: {what}")]
    Io {
        /// The command (`METHOD /path`).
        command: String,
        /// What was being done: connect, write or read.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// `chromedriver` answered something that is not WebDriver's JSON.
    #[error("{command}: not a WebDriver answer: {body}")]
    Answer {
        /// The command (`METHOD /path`).
        command: String,
        /// The body it answered (at most 500 bytes).
        body: String,
    },
    /// The command failed: WebDriver's error value.
    #[error("{command}: {status}: {value}")]
    Command {
        /// The command (`METHOD /path`).
        command: String,
        /// The HTTP status.
        status: u16,
        /// WebDriver's `value` (error, message).
        value: String,
    },
    /// An element did not appear, or a condition did not hold, in time.
    #[error("timed out ({within:?}) waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        within: Duration,
    },
    /// A screenshot could not be decoded or written.
    #[error("screenshot {}: {what}", .path.display())]
    Screenshot {
        /// Where it was to go.
        path: PathBuf,
        /// What failed.
        what: String,
    },
}

/// WebDriver's key codes.
pub mod keys {
    /// Tab.
    pub const TAB: &str = "\u{E004}";
    /// Enter.
    pub const ENTER: &str = "\u{E007}";
    /// Escape.
    pub const ESCAPE: &str = "\u{E00C}";
}

/// Where `chromedriver` and the browser are ([`DRIVER_ENV`], [`BROWSER_ENV`], else the
/// Debian paths), or [`Error::Missing`].
pub fn find() -> Result<(PathBuf, PathBuf)> {
    let driver = std::env::var_os(DRIVER_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    let browser = std::env::var_os(BROWSER_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    for p in [&driver, &browser] {
        if !p.exists() {
            return Err(Error::Missing(p.clone()));
        }
    }
    Ok((driver, browser))
}

/// Whether a missing browser must fail rather than skip ([`REQUIRE_ENV`]`=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// A running `chromedriver` with one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A DOM element of the session.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts `driver` on a free loopback port and a headless `browser` session with a
    /// `width`×`height` window.
    pub fn start(driver: &Path, browser: &Path, width: u32, height: u32) -> Result<Browser> {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::Port)?;
        let child = Command::new(driver)
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                path: driver.to_path_buf(),
                source,
            })?;
        let mut b = Browser {
            driver: child,
            addr,
            session: String::new(),
        };
        let deadline = Instant::now() + DRIVER_READY;
        while !b
            .call("GET", "/status", None)
            .is_ok_and(|v| v["ready"] == true)
        {
            if Instant::now() >= deadline {
                return Err(Error::NotReady(DRIVER_READY));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": browser.to_string_lossy(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                ],
            },
            "timeouts": {"implicit": 0, "pageLoad": 30_000, "script": 10_000},
        }}});
        let v = b.call("POST", "/session", Some(&caps))?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| Error::Answer {
                command: "POST /session".into(),
                body: clip(&v.to_string()),
            })?
            .to_owned();
        Ok(b)
    }

    /// One WebDriver command: its `value`, or the error it answered.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let command = format!("{method} {path}");
        let io = |what, source| Error::Io {
            command: command.clone(),
            what,
            source,
        };
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| io("connect", e))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| io("connect", e))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .map_err(|e| io("write", e))?;
        let raw = read_answer(&mut s).map_err(|e| io("read", e))?;
        let (status, body) = parse_answer(&raw);
        let v: Value = serde_json::from_str(&body).map_err(|_| Error::Answer {
            command: command.clone(),
            body: clip(&body),
        })?;
        if status != 200 {
            return Err(Error::Command {
                command,
                status,
                value: clip(&v["value"].to_string()),
            });
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.session_call("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// The elements matching the CSS `selector` now.
    pub fn find_all(&self, selector: &str) -> Result<Vec<Element>> {
        let v = self.session_call(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": selector})),
        )?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first element matching `selector`, waiting at most `within` for it.
    pub fn wait_find(&self, selector: &str, within: Duration) -> Result<Element> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self.find_all(selector)?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("an element {selector:?}"),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits at most `within` until `check` holds (polling every 100 ms); `what` names it in
    /// the timeout. An error of `check` ends the wait.
    pub fn wait_until(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + within;
        while !check()? {
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    within,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Clicks `e`.
    pub fn click(&self, e: &Element) -> Result<()> {
        self.session_call("POST", &format!("/element/{}/click", e.0), Some(&json!({})))
            .map(drop)
    }

    /// Types `text` into `e`.
    pub fn type_into(&self, e: &Element, text: &str) -> Result<()> {
        self.session_call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(&json!({ "text": text })),
        )
        .map(drop)
    }

    /// Clears the input `e`.
    pub fn clear(&self, e: &Element) -> Result<()> {
        self.session_call("POST", &format!("/element/{}/clear", e.0), Some(&json!({})))
            .map(drop)
    }

    /// `e`'s rendered text.
    pub fn text(&self, e: &Element) -> Result<String> {
        let v = self.session_call("GET", &format!("/element/{}/text", e.0), None)?;
        Ok(v.as_str().unwrap_or_default().to_owned())
    }

    /// `e`'s attribute `name`, if set.
    pub fn attribute(&self, e: &Element, name: &str) -> Result<Option<String>> {
        let v = self.session_call("GET", &format!("/element/{}/attribute/{name}", e.0), None)?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// Presses and releases `key` (a [`keys`] code or a character) on the focused element.
    pub fn press(&self, key: &str) -> Result<()> {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key},
        ]}]});
        self.session_call("POST", "/actions", Some(&actions))
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page: its value.
    pub fn script(&self, script: &str, args: &[Value]) -> Result<Value> {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// A screenshot of the window as PNG bytes.
    pub fn screenshot_png(&self) -> Result<Vec<u8>> {
        let v = self.session_call("GET", "/screenshot", None)?;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| Error::Answer {
                command: "GET /screenshot".into(),
                body: format!("not base64: {e}"),
            })
    }

    /// A screenshot of the window, written to `path` as PNG (its directory made if missing).
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let png = self.screenshot_png()?;
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, png)
        };
        write().map_err(|e| Error::Screenshot {
            path: path.to_path_buf(),
            what: e.to_string(),
        })
    }
}

/// At most 500 bytes of `s`, for messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// One HTTP answer, read up to its `Content-Length` (chromedriver keeps the connection open
/// even when asked to close it), or to the end without one.
fn read_answer(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|n| n.trim().parse::<usize>().ok())
            });
            if let Some(length) = length {
                while raw.len() < end + 4 + length {
                    let n = s.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                raw.truncate(end + 4 + length);
                return Ok(raw);
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// The status (0 when the status line does not parse) and body of an HTTP/1.1 answer
/// (de-chunked when chunked).
fn parse_answer(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// A chunked body's data; a malformed size or a short chunk ends it.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 {
            break;
        }
        let Some(chunk) = rest.get(..n) else {
            out.push_str(rest);
            break;
        };
        out.push_str(chunk);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_to_their_length_and_parsed() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"value\":null}trailing".to_vec();
        let read = read_answer(&mut raw.as_slice()).unwrap();
        assert_eq!(parse_answer(&read), (200, "{\"value\":null}".to_owned()));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_answer(&read_answer(&mut chunked.as_slice()).unwrap()),
            (404, "abcde".to_owned())
        );
        // Malformed input never panics.
        for bad in [
            &b"garbage"[..],
            b"HTTP/1.1 x\r\n\r\nzz\r\nabc",
            b"\r\n\r\n5\r\nab",
        ] {
            let _ = parse_answer(bad);
        }
        assert_eq!(dechunk("5\r\nab"), "ab");
        assert_eq!(clip(&"é".repeat(600)).chars().count(), 501);
    }

    #[test]
    fn a_missing_driver_is_named() {
        let e = Error::Missing(PathBuf::from("/nowhere/chromedriver"));
        assert!(e.to_string().contains("/nowhere/chromedriver"), "{e}");
        assert!(e.to_string().contains("scripts/setup.sh"), "{e}");
    }
}
