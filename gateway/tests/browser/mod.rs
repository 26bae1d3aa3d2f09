//! Headless Chromium driven over the DevTools protocol (CDP), for the tests of pages the gateway
//! serves.
//!
//! A few CDP calls are all a test needs (navigate, evaluate, screenshot), so this speaks the protocol
//! itself over a WebSocket (tungstenite, already in the tree for the WebSocket tests) rather than
//! bringing in a CDP crate and its generated bindings for the whole protocol. The browser is Debian's
//! `chromium` (`scripts/lib.sh` `ensure_chromium` installs it; `CHROMIUM` names another binary). It
//! listens for DevTools on 127.0.0.1 only, on a port it picks and writes into its profile folder
//! (`DevToolsActivePort`), so no port race; it is killed by its PID when the [`Browser`] is dropped.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// How long one CDP call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A headless Chromium with one page, driven over CDP. Fields drop in order: the connection, the
/// process (killed), its profile folder.
pub struct Browser {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// The session on the test's page; calls without one go to the browser.
    session: Option<String>,
    process: Process,
}

/// The Chromium process and its profile; killed by its PID when dropped, also when [`Browser::launch`]
/// fails half-way.
struct Process {
    child: Child,
    profile: tempfile::TempDir,
}

impl Process {
    /// What Chromium wrote to stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromium.log")).unwrap_or_default()
    }

    /// The DevTools endpoint Chromium opened: the port it chose and the browser's WebSocket path,
    /// the two lines of `DevToolsActivePort` in its profile.
    fn devtools_endpoint(&mut self) -> (u16, String) {
        let file = self.profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let mut lines = text.lines();
            if let (Some(Ok(port)), Some(path)) =
                (lines.next().map(|p| p.trim().parse()), lines.next())
            {
                return (port, path.trim().to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open DevTools within 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this process runs as root (Chromium's sandbox refuses to start as root without
/// `--no-sandbox`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        .unwrap_or(false)
}

impl Browser {
    /// Start Chromium headless, `width` × `height` pixels, on about:blank, and connect to its page.
    pub fn launch(width: u32, height: u32) -> Browser {
        let program = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_string());
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let mut cmd = Command::new(&program);
        cmd.args([
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"));
        if is_root() {
            cmd.arg("--no-sandbox");
        }
        let child = cmd
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `{program}` ({e}): install Debian's chromium \
                     (scripts/test.sh does, through ensure_chromium) or set CHROMIUM"
                )
            });
        let mut process = Process { child, profile };
        let (port, path) = process.devtools_endpoint();
        let mut browser = Browser {
            ws: connect(port, &path),
            next_id: 0,
            session: None,
            process,
        };
        // A page of its own, and a session on it that the page's calls go to.
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        browser.session = Some(attached["sessionId"].as_str().unwrap().to_string());
        browser
    }

    /// What Chromium wrote to stderr so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// One CDP call on the page (on the browser before the page is attached); its `result`. Panics
    /// on a protocol error or after [`CALL_TIMEOUT`].
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            assert!(
                Instant::now() < deadline,
                "CDP {method}: no answer in {CALL_TIMEOUT:?}"
            );
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    // Anything else is an event (of the target domain, say) or an older call's answer.
                    if v["id"] != json!(id) {
                        continue;
                    }
                    if let Some(e) = v.get("error") {
                        panic!("CDP {method}: {e}");
                    }
                    return v["result"].clone();
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("CDP {method}: {e}; chromium: {}", self.log()),
            }
        }
    }

    /// Load `url` and wait until its document and scripts are loaded (`readyState` complete).
    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
        self.wait_for(&format!("{url} loaded"), Duration::from_secs(15), |b| {
            (b.eval("document.readyState") == json!("complete")).then_some(())
        });
    }

    /// Evaluate `expression` in the page (awaiting a promise); its value as JSON. Panics on an
    /// exception.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating `{expression}`: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Poll `probe` every 100 ms until it gives a value; panics naming `what` after `timeout`.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&mut Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as shown.
    pub fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }
}

/// Connect to the browser's DevTools WebSocket at `path` on 127.0.0.1:`port`.
fn connect(port: u16, path: &str) -> WebSocket<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tungstenite::client(url.as_str(), stream)
        .map_err(|e| e.to_string())
        .unwrap();
    // Reads wake up every second so that a call's deadline is checked.
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    ws
}
