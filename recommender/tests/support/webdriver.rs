//! A headless Chromium driven over W3C WebDriver by `chromedriver`, for the web UI's tests
//! (`ui_browser.rs`). A small client over [`super::http`]'s loopback HTTP: the tests need a
//! dozen commands, and the maintained client crates pull in a second `http`, `cookie` and
//! `thiserror` and Unicode segmentation tables (fantoccini's `webdriver` dependency) or a whole
//! `reqwest` stack (thirtyfour), for the same JSON over loopback.
//!
//! Every command is bounded (socket timeouts); every wait is bounded by its caller.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::http::{free_port, parse_answer};

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver's key codes.
pub mod keys {
    /// Tab.
    pub const TAB: &str = "\u{E004}";
    /// Enter.
    pub const ENTER: &str = "\u{E007}";
    /// Escape.
    pub const ESCAPE: &str = "\u{E00C}";
}

/// Where `chromedriver` and the browser are, or why the browser tests cannot run.
pub fn find() -> Result<(PathBuf, PathBuf), String> {
    let driver = std::env::var_os("LEASH_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    let browser = std::env::var_os("LEASH_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    for p in [&driver, &browser] {
        if !p.exists() {
            return Err(format!(
                "{} is missing (install chromium and chromium-driver: scripts/setup.sh)",
                p.display()
            ));
        }
    }
    Ok((driver, browser))
}

/// A running `chromedriver` with one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
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
    pub fn start(driver: &Path, browser: &Path, width: u32, height: u32) -> Browser {
        let addr = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts chromedriver");
        let mut b = Browser {
            driver: child,
            addr,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if b.call("GET", "/status", None)
                .is_ok_and(|v| v["ready"] == true)
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 20 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": browser.to_str().expect("a UTF-8 browser path"),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    format!("--window-size={width},{height}"),
                ],
            },
            "timeouts": {"implicit": 0, "pageLoad": 30_000, "script": 10_000},
        }}});
        let v = b
            .call("POST", "/session", Some(&caps))
            .expect("a new browser session");
        b.session = v["sessionId"].as_str().expect("a session id").to_owned();
        b
    }

    /// One WebDriver command: its `value`, or the error it answered.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .map_err(|e| format!("write: {e}"))?;
        let raw = read_answer(&mut s).map_err(|e| format!("{method} {path}: read: {e}"))?;
        let answer = parse_answer(&raw);
        let v: Value = serde_json::from_str(&answer.body)
            .map_err(|e| format!("{method} {path}: {e}: {}", answer.body))?;
        if answer.status != 200 {
            return Err(format!(
                "{method} {path}: {}: {}",
                answer.status, v["value"]
            ));
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body)
            .unwrap_or_else(|e| panic!("WebDriver: {e}"))
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The elements matching the CSS `selector` now.
    pub fn find_all(&self, selector: &str) -> Vec<Element> {
        let v = self.session_call(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": selector})),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `selector`, waiting at most `within` for it.
    #[track_caller]
    pub fn wait_find(&self, selector: &str, within: Duration) -> Element {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self.find_all(selector).into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no element {selector:?} within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits at most `within` until `check` holds.
    #[track_caller]
    pub fn wait_until(&self, what: &str, within: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !check() {
            assert!(
                Instant::now() < deadline,
                "timed out ({within:?}) waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks `e`.
    pub fn click(&self, e: &Element) {
        self.session_call("POST", &format!("/element/{}/click", e.0), Some(&json!({})));
    }

    /// Types `text` into `e`.
    pub fn type_into(&self, e: &Element, text: &str) {
        self.session_call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(&json!({ "text": text })),
        );
    }

    /// Clears the input `e`.
    pub fn clear(&self, e: &Element) {
        self.session_call("POST", &format!("/element/{}/clear", e.0), Some(&json!({})));
    }

    /// `e`'s rendered text.
    pub fn text(&self, e: &Element) -> String {
        self.session_call("GET", &format!("/element/{}/text", e.0), None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// `e`'s attribute `name`, if set.
    pub fn attribute(&self, e: &Element, name: &str) -> Option<String> {
        self.session_call("GET", &format!("/element/{}/attribute/{name}", e.0), None)
            .as_str()
            .map(str::to_owned)
    }

    /// Presses and releases `key` (a [`keys`] code or a character) on the focused element.
    pub fn press(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key},
        ]}]});
        self.session_call("POST", "/actions", Some(&actions));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page, its value.
    pub fn script(&self, script: &str, args: &[Value]) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": args})),
        )
    }

    /// A screenshot of the window, written to `path` as PNG.
    pub fn screenshot(&self, path: &Path) {
        let v = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("a base64 screenshot"))
            .expect("a base64 screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("creates the screenshot directory");
        }
        std::fs::write(path, png).expect("writes the screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

/// One HTTP answer, read up to its `Content-Length` (chromedriver keeps the connection open
/// even when asked to close it), or to the end without one.
fn read_answer(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
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
