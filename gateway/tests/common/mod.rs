//! Test harness: real upstream servers on 127.0.0.1:0, the gateway, a raw HTTP client.
//!
//! Two ways to run the gateway, with the same accessors: [`Gateway::in_process`] runs it on a thread of
//! the test, on listeners the harness binds to 127.0.0.1:0 before it starts (no port race, no wait, no
//! `exec`): for everything about its behaviour. [`Gateway::start`] runs the real `tollgate` binary on
//! ports picked just before: for the command line, signals (SIGHUP, SIGTERM's drain), upgrades and
//! whatever else is about the process.
//!
//! The client writes request bytes as given, so path vectors like `/%2e%2e/` reach the gateway unaltered
//! (a URL library would normalize them first and the test would prove nothing).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a test backend behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer every request with a JSON echo of what it received.
    Echo,
    /// Read the request and never answer.
    Hang,
    /// Echo, but only after this many milliseconds.
    Delay(u64),
}

/// A tiny HTTP/1.1 upstream. `/healthz` answers 200 or 503 depending on `healthy`.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub healthy: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    /// Requests for `/healthz` (health checks) received.
    pub probes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(name: &str, mode: Mode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, n, p, s, nm) = (
            healthy.clone(),
            hits.clone(),
            probes.clone(),
            stop.clone(),
            name.to_string(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (h, n, p, nm) = (h.clone(), n.clone(), p.clone(), nm.clone());
                std::thread::spawn(move || serve(conn, &nm, mode, &h, &n, &p));
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            healthy,
            hits,
            probes,
            stop,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    conn: TcpStream,
    name: &str,
    mode: Mode,
    healthy: &AtomicBool,
    hits: &AtomicUsize,
    probes: &AtomicUsize,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let mut body = vec![0; len];
        if chunked {
            // `size CRLF data CRLF` ... `0 CRLF CRLF` (no extensions or trailers in these tests).
            body.clear();
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let Ok(n) = usize::from_str_radix(size.trim_end(), 16) else {
                    return;
                };
                let mut chunk = vec![0; n + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if reader.read_exact(&mut body).is_err() {
            return;
        }
        if target == "/healthz" {
            probes.fetch_add(1, Ordering::Relaxed);
            let ok = healthy.load(Ordering::Relaxed);
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = write!(conn, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            continue;
        }
        hits.fetch_add(1, Ordering::Relaxed);
        if mode == Mode::Hang {
            std::thread::sleep(Duration::from_secs(60));
            return;
        }
        if let Mode::Delay(ms) = mode {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mut hmap = serde_json::Map::new();
        for (k, v) in &headers {
            match hmap.get_mut(k) {
                Some(serde_json::Value::String(s)) => {
                    s.push_str(", ");
                    s.push_str(v);
                }
                _ => {
                    hmap.insert(k.clone(), serde_json::Value::String(v.clone()));
                }
            }
        }
        let echo = serde_json::json!({
            "backend": name, "method": method, "path": target, "headers": hmap,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nkeep-alive: timeout=5\r\nx-backend: {name}\r\n\r\n{echo}",
            echo.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A running gateway: a `tollgate run` process (killed on drop) or one in this process (stopped on
/// drop).
pub struct Gateway {
    pub addr: SocketAddr,
    /// The admin listener (a free port, unless the config sets its own `admin`).
    pub admin: SocketAddr,
    /// The HTTPS listener, when the config has `{tls_listen}`.
    pub tls: Option<SocketAddr>,
    runner: Runner,
    pub dir: tempfile::TempDir,
    /// The process's stdout; in process, the access-log file the harness points the config at.
    pub stdout: PathBuf,
    /// The process's stderr; in process, the lines the gateway's threads logged (see [`Capture`]).
    pub stderr: PathBuf,
}

enum Runner {
    Process(Child),
    InProcess(Option<tollgate::server::Running>),
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// A port that was free a moment ago (Pingora binds by address, so the test picks one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `config` with `{listen}`, `{admin}`, `{tls_listen}` and `{dir}` filled in. Unless the config sets its own `admin`,
/// every test gateway gets its own admin listener, so tests can run in parallel; `access_log`, when
/// given, is where the access log goes unless the config says (in process, stdout is the test's).
/// Both are added next to `listen: ["{listen}"]`, in the flow or block style that line is written in.
fn fill_in(
    config: &str,
    addr: SocketAddr,
    admin: SocketAddr,
    tls: Option<SocketAddr>,
    dir: &std::path::Path,
    access_log: Option<&std::path::Path>,
) -> String {
    let mut extra = Vec::new();
    if !config.contains("admin:") {
        extra.push(format!("admin: {{ listen: \"{admin}\" }}"));
    }
    if let Some(path) = access_log.filter(|_| !config.contains("access_log")) {
        extra.push(format!("access_log: {{ path: \"{}\" }}", path.display()));
    }
    let listen = "\"{listen}\"]";
    let lines: Vec<String> = config
        .split('\n')
        .map(|line| {
            if extra.is_empty() || !line.contains(listen) {
                return line.to_string();
            }
            let indent = &line[..line.len() - line.trim_start().len()];
            if line.trim_start().starts_with("listen:") && !indent.is_empty() {
                // `server:` in block style: one more key at the same indentation.
                let more: Vec<String> = extra.iter().map(|e| format!("\n{indent}{e}")).collect();
                format!("{line}{}", more.concat())
            } else {
                let more: Vec<String> = extra.iter().map(|e| format!(", {e}")).collect();
                line.replace(listen, &format!("{listen}{}", more.concat()))
            }
        })
        .collect();
    lines
        .join("\n")
        .replace("{listen}", &addr.to_string())
        .replace("{admin}", &admin.to_string())
        .replace(
            "{tls_listen}",
            &tls.map(|a| a.to_string()).unwrap_or_default(),
        )
        .replace("{dir}", &dir.display().to_string())
}

impl Gateway {
    /// Start the `tollgate` binary with `config`, where `{listen}` is replaced by the chosen address.
    pub fn start(config: &str) -> Gateway {
        Self::start_program(std::path::Path::new(bin()), &["run", "-c"], config)
    }

    /// Run the gateway in this process with `config` (placeholders as for [`Gateway::start`]), on
    /// listeners bound before it starts; with the built-in plugins. Its access log goes to
    /// [`Gateway::stdout`] unless the config says where, its log lines to [`Gateway::stderr`].
    /// What is about the process (signals, upgrades, the exit code) needs [`Gateway::start`].
    pub fn in_process(config: &str) -> Gateway {
        Capture::install();
        let with_tls = config.contains("{tls_listen}");
        let listeners = tollgate::server::Listeners::loopback(true, with_tls).unwrap();
        let addr = listeners.proxy.local_addr().unwrap();
        let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
        let tls = listeners.tls.as_ref().map(|l| l.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("tollgate.yaml");
        let stdout = dir.path().join("access.log");
        let stderr = dir.path().join("stderr.log");
        let text = fill_in(config, addr, admin, tls, dir.path(), Some(&stdout));
        std::fs::write(&cfg_path, text).unwrap();
        let tag = addr.to_string();
        Capture::route(&tag, &stderr);
        let running = tollgate::server::spawn_in_process(
            cfg_path.to_str().unwrap(),
            Arc::new(tollgate::plugin::Registry::builtin()),
            listeners,
        )
        .unwrap_or_else(|e| panic!("the gateway did not start in process: {e}"));
        assert_eq!(running.tag, tag);
        Gateway {
            addr,
            admin,
            tls,
            runner: Runner::InProcess(Some(running)),
            dir,
            stdout,
            stderr,
        }
    }

    /// The in-process gateway; panics for a process, naming what the test wanted.
    fn running(&self, what: &str) -> &tollgate::server::Running {
        match &self.runner {
            Runner::InProcess(Some(r)) => r,
            _ => panic!("{what}: not a gateway in process"),
        }
    }

    /// The process; panics in process (signals, exit codes and upgrades need `Gateway::start`).
    fn child(&self, what: &str) -> &Child {
        match &self.runner {
            Runner::Process(c) => c,
            Runner::InProcess(_) => {
                panic!("{what} is about the process: start this gateway with Gateway::start")
            }
        }
    }

    /// Start the gateway with `config` and these extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_program_env(std::path::Path::new(bin()), &["run", "-c"], config, env)
    }

    /// Start `program` with `args` followed by the config file's path.
    pub fn start_program(program: &std::path::Path, args: &[&str], config: &str) -> Gateway {
        Self::start_program_env(program, args, config, &[])
    }

    /// Start `program` with `args` followed by the config file's path, with these extra environment
    /// variables.
    pub fn start_program_env(
        program: &std::path::Path,
        args: &[&str],
        config: &str,
        env: &[(&str, &str)],
    ) -> Gateway {
        for _attempt in 0..3 {
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let cfg_path = dir.path().join("tollgate.yaml");
            let tls = config
                .contains("{tls_listen}")
                .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
            let text = fill_in(config, addr, admin, tls, dir.path(), None);
            std::fs::write(&cfg_path, text).unwrap();
            let stdout = dir.path().join("stdout.log");
            let stderr = dir.path().join("stderr.log");
            let child = Command::new(program)
                .args(args)
                .arg(cfg_path.to_str().unwrap())
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .expect("spawn tollgate");
            let mut g = Gateway {
                addr,
                admin,
                tls,
                runner: Runner::Process(child),
                dir,
                stdout,
                stderr,
            };
            // Every listener the config has: Pingora starts its services one by one, so the proxy
            // may accept before the admin listener does (a test that went to admin first got a
            // refused connection).
            let mut listening = vec![addr];
            if config.contains("{admin}") {
                listening.push(admin);
            }
            listening.extend(tls);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Some(Ok(Some(_))) = g.child_mut().map(|c| c.try_wait()) {
                    break;
                }
                if listening.iter().all(|a| TcpStream::connect(a).is_ok()) {
                    return g;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            eprintln!("gateway did not come up on {addr}: {}", g.stderr_text());
        }
        panic!("gateway failed to start three times");
    }

    fn child_mut(&mut self) -> Option<&mut Child> {
        match &mut self.runner {
            Runner::Process(c) => Some(c),
            Runner::InProcess(_) => None,
        }
    }

    /// Rewrite the config file with `edit` and reload it, and wait until the reload succeeded: for a
    /// process by SIGHUP, in process through the handle (the same reloader SIGHUP and the admin API
    /// run).
    pub fn reload(&self, edit: impl FnOnce(String) -> String) {
        if let Runner::InProcess(Some(r)) = &self.runner {
            let text = std::fs::read_to_string(self.config_path()).unwrap();
            std::fs::write(self.config_path(), edit(text)).unwrap();
            let status = r.reload();
            assert!(
                status.ok,
                "reload did not succeed: {:?}\n{}",
                status.errors,
                self.stderr_text()
            );
            return;
        }
        let successes = || {
            let m = self.admin_request("GET", "/metrics", &[]);
            String::from_utf8_lossy(&m.body)
                .lines()
                .filter(|l| l.starts_with("tollgate_config_reloads_total{result=\"success\"}"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let before = successes();
        let text = std::fs::read_to_string(self.config_path()).unwrap();
        std::fs::write(self.config_path(), edit(text)).unwrap();
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while successes() <= before {
            assert!(
                Instant::now() < deadline,
                "reload did not succeed: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The in-process gateway's handle (its reload, its tag).
    pub fn handle(&self) -> &tollgate::server::Running {
        self.running("handle")
    }

    /// Stop the in-process gateway now and wait until it is done (its listeners closed, its access
    /// log written out).
    pub fn stop(&mut self) {
        match &mut self.runner {
            Runner::InProcess(r) => {
                if let Some(r) = r.take() {
                    r.stop();
                }
            }
            Runner::Process(_) => panic!("stop: use signal or drop for a process"),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tollgate.yaml")
    }

    pub fn pid(&self) -> u32 {
        self.child("pid").id()
    }

    /// Send a signal (`TERM`, `QUIT`, `HUP`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child("a signal").id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Wait up to `timeout` for the process to exit; its exit code, or None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        self.child("the exit code");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child_mut().map(|c| c.try_wait()) {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Start a second `tollgate run --upgrade` on this gateway's config file, to take over its sockets.
    pub fn start_upgrade(&self) -> Gateway {
        self.start_upgrade_with_env(&[])
    }

    /// [`Gateway::start_upgrade`] with extra environment variables.
    pub fn start_upgrade_with_env(&self, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        self.child("an upgrade");
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(bin())
            .args([
                "run",
                "--upgrade",
                "-c",
                self.config_path().to_str().unwrap(),
            ])
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn tollgate --upgrade");
        Gateway {
            addr: self.addr,
            admin: self.admin,
            tls: self.tls,
            runner: Runner::Process(child),
            dir,
            stdout,
            stderr,
        }
    }

    /// A request to the admin listener.
    pub fn admin_request(&self, method: &str, path: &str, headers: &[&str]) -> Response {
        // `start` waits for the public listener only; the admin one starts alongside, maybe a moment
        // later.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(self.admin).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        request(self.admin, method, path, headers, None)
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Access-log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Poll the access log until `pred` holds for some line (the writer is asynchronous).
    pub fn wait_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self.access_log().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no matching access-log line in {:?}",
                self.access_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n"
        ))
    }

    pub fn send(&self, raw: &str) -> Response {
        send(self.addr, raw.as_bytes())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        match &mut self.runner {
            Runner::Process(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Runner::InProcess(r) => {
                if let Some(r) = r.take() {
                    r.stop();
                }
                Capture::unroute(&self.addr.to_string());
            }
        }
    }
}

/// The process's logger while gateways run in it: a line logged on a thread of an in-process gateway
/// (its threads' names end with its tag, see `tollgate::server::spawn_in_process`) is appended to that
/// gateway's `stderr` file; any other line goes to the test's stderr. At `warn`, as the binary runs
/// with `RUST_LOG=warn` in [`Gateway::start`].
pub struct Capture;

/// Tag (` 127.0.0.1:PORT`) to file, for the gateways running now.
static ROUTES: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());

impl Capture {
    fn install() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if log::set_logger(&Capture).is_ok() {
                log::set_max_level(log::LevelFilter::Warn);
            }
        });
    }

    fn route(tag: &str, file: &std::path::Path) {
        ROUTES
            .lock()
            .unwrap()
            .push((format!(" {tag}"), file.to_path_buf()));
    }

    fn unroute(tag: &str) {
        let tag = format!(" {tag}");
        ROUTES.lock().unwrap().retain(|(t, _)| *t != tag);
    }
}

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let line = format!("[{} {}] {}\n", r.level(), r.target(), r.args());
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        let file = ROUTES.lock().ok().and_then(|routes| {
            routes
                .iter()
                .find(|(t, _)| name.ends_with(t.as_str()))
                .map(|(_, f)| f.clone())
        });
        match file {
            Some(f) => {
                if let Ok(mut f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f)
                {
                    let _ = f.write_all(line.as_bytes());
                }
            }
            None => eprint!("{line}"),
        }
    }

    fn flush(&self) {}
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    /// For echo responses: the header as the upstream received it.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_str()
            .map(str::to_string)
    }
    /// The JSON error code of a gateway error.
    pub fn error_code(&self) -> String {
        let v = self.json();
        assert_eq!(
            v["error"]["status"].as_u64(),
            Some(self.status as u64),
            "status in body"
        );
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// Send raw bytes, read the response until the server closes (requests say `Connection: close`).
pub fn send(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect gateway");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Response {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = buf[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 4 + n..];
    }
}

/// Run `tollgate` with arguments; returns (exit code, stdout, stderr).
pub fn tollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tiny HTTP server that answers every request with a status and body that a test can change, e.g.
/// a JWKS endpoint or a trace collector. Counts requests and keeps their bodies.
pub struct StaticServer {
    pub addr: SocketAddr,
    pub state: Arc<std::sync::Mutex<(u16, String)>>,
    pub hits: Arc<AtomicUsize>,
    pub bodies: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl StaticServer {
    pub fn start(status: u16, body: &str) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(std::sync::Mutex::new((status, body.to_string())));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (st, h, s, b) = (state.clone(), hits.clone(), stop.clone(), bodies.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                h.fetch_add(1, Ordering::Relaxed);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_ok() && length > 0 {
                    b.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                }
                let (code, body) = st.lock().unwrap().clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        StaticServer {
            addr,
            state,
            hits,
            bodies,
            stop,
        }
    }

    pub fn set(&self, status: u16, body: &str) {
        *self.state.lock().unwrap() = (status, body.to_string());
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// A request with extra header lines (`"Name: value"`) and an optional body, `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n");
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    if let Some(b) = body {
        raw.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        raw.push_str("\r\n");
    }
    send(addr, raw.as_bytes())
}

/// Where the test fixtures (keys) are.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A real `redis-server` on a loopback port, killed on drop. `scripts/test.sh` installs redis-server.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)start on the same port, and wait until it answers.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed; scripts/test.sh installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                if s.read(&mut buf)
                    .is_ok_and(|n| n > 0 && buf.starts_with(b"+PONG"))
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every key Redis holds (`KEYS *`, spoken in RESP over a plain socket).
    pub fn keys(&self) -> Vec<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"KEYS *\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let n: usize = line.trim().strip_prefix('*').unwrap().parse().unwrap();
        (0..n)
            .map(|_| {
                line.clear();
                r.read_line(&mut line).unwrap();
                let len: usize = line.trim().strip_prefix('$').unwrap().parse().unwrap();
                let mut buf = vec![0u8; len + 2];
                r.read_exact(&mut buf).unwrap();
                String::from_utf8_lossy(&buf[..len]).into_owned()
            })
            .collect()
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of one sample line of the Prometheus text (`name{labels} value`), labels in any order.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        if l.starts_with('#') {
            return None;
        }
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let ok = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        ok.then(|| value.parse().ok()).flatten()
    })
}
