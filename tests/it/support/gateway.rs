//! Runs the real `portcullis` binary as a child process for black-box tests.
//!
//! The gateway is started with a fresh data dir (a [`TempDir`]) and ephemeral
//! loopback ports; the harness waits for the `portcullis ready` log line and
//! reads the bound addresses from its `proxy.addr=` / `admin.addr=` fields.
//! Both output streams are drained by background threads for the life of the
//! process, so the child never blocks on a full pipe.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Admin key given to the gateway unless the options say otherwise.
pub const DEFAULT_ADMIN_KEY: &str = "adm-test-key-8c1f2e";

/// How long to wait for the `portcullis ready` line by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a SIGTERM'd gateway gets to exit before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How many trailing log lines a panic message shows.
const PANIC_LOG_LINES: usize = 300;

/// The log message that marks a started gateway.
const READY_MARKER: &str = "portcullis ready";

/// Options for [`Gateway::start_with`] / [`Gateway::try_start`].
#[derive(Debug, Clone)]
pub struct GatewayOpts {
    /// Extra command-line arguments, after the harness's own.
    pub args: Vec<String>,
    /// Extra environment variables (applied last, so they win).
    pub env: Vec<(String, String)>,
    /// Environment variables to remove from the child.
    pub env_remove: Vec<String>,
    /// Value of `PORTCULLIS_ADMIN_KEY`; `None` leaves it unset.
    pub admin_key: Option<String>,
    /// Data dir to use; `None` creates a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// How long to wait for the ready line.
    pub ready_timeout: Duration,
}

impl Default for GatewayOpts {
    fn default() -> Self {
        GatewayOpts {
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            admin_key: Some(DEFAULT_ADMIN_KEY.to_string()),
            data_dir: None,
            ready_timeout: READY_TIMEOUT,
        }
    }
}

impl GatewayOpts {
    /// Default options: default admin key, fresh data dir.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes an environment variable from the child.
    pub fn env_remove(mut self, key: impl Into<String>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Uses `key` as the admin key.
    pub fn admin_key(mut self, key: impl Into<String>) -> Self {
        self.admin_key = Some(key.into());
        self
    }

    /// Leaves `PORTCULLIS_ADMIN_KEY` unset (the gateway generates a key).
    pub fn no_admin_key(mut self) -> Self {
        self.admin_key = None;
        self
    }

    /// Starts on an existing data dir instead of a fresh one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Changes how long to wait for the ready line.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// The gateway process exited before it became ready.
pub struct StartFailure {
    /// How the process exited.
    pub status: ExitStatus,
    /// Its stderr and stdout, interleaved in arrival order.
    pub output: String,
}

impl fmt::Debug for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gateway exited before ready ({})\n--- output ---\n{}--- end ---",
            self.status, self.output
        )
    }
}

impl fmt::Display for StartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A response from the gateway, whatever its status.
#[derive(Debug, Clone)]
pub struct Resp {
    /// HTTP status code.
    pub status: u16,
    /// Headers in order; names lowercased (ureq normalises them).
    pub headers: Vec<(String, String)>,
    /// The body, decoded lossily as UTF-8.
    pub body: String,
    /// Set when reading the body failed part-way (e.g. the connection
    /// was cut); `body` then holds what arrived before the error.
    pub body_error: Option<String>,
}

impl Resp {
    /// The body parsed as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status, self.body
            )
        })
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Panics (showing the body) unless the status is `status`.
    pub fn expect_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; headers: {:?}; body: {}",
            self.headers, self.body
        );
        self
    }
}

/// Output of one child process, shared with its reader threads.
#[derive(Default)]
struct Output {
    /// Stderr and stdout lines (ANSI codes stripped), in arrival order.
    text: Mutex<String>,
    /// Signalled whenever a line is appended.
    grew: Condvar,
}

impl Output {
    fn snapshot(&self) -> String {
        self.text.lock().expect("output mutex poisoned").clone()
    }

    fn push_line(&self, line: &str) {
        let mut text = self.text.lock().expect("output mutex poisoned");
        text.push_str(line);
        text.push('\n');
        self.grew.notify_all();
    }
}

/// One running child and the threads draining its output.
struct Proc {
    child: Child,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    fn join_readers(&mut self) {
        for handle in self.readers.drain(..) {
            let _ = handle.join();
        }
    }
}

/// A running `portcullis` process. Drop kills it.
pub struct Gateway {
    /// The running process; `None` after [`Gateway::stop`].
    proc: Option<Proc>,
    /// Options used for this process and for restarts.
    opts: GatewayOpts,
    /// The data dir passed with `--data-dir`.
    data_dir: PathBuf,
    /// Owns the data dir when the harness created it; dropped after the child.
    _tmp: Option<TempDir>,
    /// Proxy listener reported by the ready line.
    proxy_addr: SocketAddr,
    /// Admin listener reported by the ready line.
    admin_addr: SocketAddr,
    /// Output of processes stopped by `stop`/`restart`.
    previous_logs: String,
    /// HTTP client: no redirects, no connection reuse.
    agent: ureq::Agent,
}

impl Gateway {
    /// Starts the gateway with default options; panics if it fails.
    pub fn start() -> Gateway {
        Gateway::start_with(GatewayOpts::default())
    }

    /// Starts the gateway with `opts`; panics (with its output) if it fails.
    pub fn start_with(opts: GatewayOpts) -> Gateway {
        Gateway::try_start(opts).unwrap_or_else(|f| panic!("{f:?}"))
    }

    /// Starts the gateway on an existing data dir with default options.
    pub fn start_in(dir: impl AsRef<Path>) -> Gateway {
        Gateway::start_with(GatewayOpts::default().data_dir(dir.as_ref()))
    }

    /// Starts the gateway; returns the exit status and output if the process
    /// exits before it is ready. Still panics on a ready timeout.
    pub fn try_start(opts: GatewayOpts) -> Result<Gateway, StartFailure> {
        let (data_dir, tmp) = match &opts.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("portcullis-it-")
                    .tempdir()
                    .expect("create temporary data dir");
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        let (proc, proxy_addr, admin_addr) = spawn_ready(&opts, &data_dir)?;
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .timeout_connect(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build();
        Ok(Gateway {
            proc: Some(proc),
            opts,
            data_dir,
            _tmp: tmp,
            proxy_addr,
            admin_addr,
            previous_logs: String::new(),
            agent,
        })
    }

    /// The proxy listener's address.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://<proxy addr><path>`.
    pub fn proxy_url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy_addr, path)
    }

    /// `http://<admin addr><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// The data dir the gateway runs on.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// The admin key the gateway was given, if any.
    pub fn admin_key(&self) -> Option<&str> {
        self.opts.admin_key.as_deref()
    }

    /// The running process's pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// Stderr and stdout of the current process so far (ANSI stripped).
    pub fn logs(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| p.output.snapshot())
            .unwrap_or_default()
    }

    /// Output of all processes this `Gateway` ran, oldest first.
    pub fn all_logs(&self) -> String {
        format!("{}{}", self.previous_logs, self.logs())
    }

    /// Waits until a log line of the current process contains `needle` and
    /// returns that line; panics with the logs after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let proc = self.proc.as_ref().expect("gateway is not running");
        let deadline = Instant::now() + timeout;
        let mut text = proc.output.text.lock().expect("output mutex poisoned");
        loop {
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("no log line containing {needle:?} within {timeout:?}; logs:\n{text}");
            }
            text = proc
                .output
                .grew
                .wait_timeout(text, deadline - now)
                .expect("output mutex poisoned")
                .0;
        }
    }

    /// Stops the process gracefully (SIGTERM, then SIGKILL after
    /// [`STOP_TIMEOUT`]) and returns its exit status; `None` if not running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut proc = self.proc.take()?;
        let pid = proc.child.id();
        let status = terminate(&mut proc.child);
        proc.join_readers();
        let mut logs = proc.output.snapshot();
        if status.is_none() {
            logs.push_str(&format!(
                "[harness] pid {pid} ignored SIGTERM for {STOP_TIMEOUT:?}; killed\n"
            ));
        }
        self.previous_logs.push_str(&logs);
        status.or_else(|| proc.child.wait().ok())
    }

    /// Stops the process gracefully and starts a new one on the same data dir
    /// with the same options and fresh ports; panics if it does not start.
    pub fn restart(&mut self) {
        self.stop();
        let (proc, proxy_addr, admin_addr) = spawn_ready(&self.opts, &self.data_dir)
            .unwrap_or_else(|f| {
                panic!(
                    "restart failed: {f:?}\n--- earlier output ---\n{}",
                    self.previous_logs
                )
            });
        self.proc = Some(proc);
        self.proxy_addr = proxy_addr;
        self.admin_addr = admin_addr;
    }

    /// Sends an admin request with the admin key header (if the gateway has
    /// a key) and an optional JSON body.
    pub fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let url = self.admin_url(path);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(key) = self.admin_key() {
            headers.push(("X-API-KEY", key));
        }
        let body = body.map(|b| b.to_string());
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        self.request(method, &url, &headers, body.as_deref().map(str::as_bytes))
    }

    /// Sends an admin request with exactly the given headers (no key added).
    pub fn admin_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        let url = self.admin_url(path);
        self.request(method, &url, headers, body.map(str::as_bytes))
    }

    /// `PUT /apisix/admin/routes/<id>`; asserts 200 or 201.
    pub fn put_route(&self, id: &str, route: Value) -> Resp {
        self.put_resource("routes", id, route)
    }

    /// `PUT /apisix/admin/<kind>/<id>`; asserts 200 or 201.
    pub fn put_resource(&self, kind: &str, id: &str, value: Value) -> Resp {
        let path = format!("/apisix/admin/{kind}/{id}");
        let resp = self.admin("PUT", &path, Some(value));
        assert!(
            resp.status == 200 || resp.status == 201,
            "PUT {path} answered {}: {}",
            resp.status,
            resp.body
        );
        resp
    }

    /// Sends a body-less request to the proxy listener.
    pub fn proxy(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(method, &self.proxy_url(path), headers, None)
    }

    /// Sends a request with a body to the proxy listener.
    pub fn proxy_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        self.request(method, &self.proxy_url(path), headers, Some(body))
    }

    /// Sends a request to any URL; panics (with the gateway's logs) on a
    /// transport error such as a refused or reset connection.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        self.try_request(method, url, headers, body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {url} failed: {e}\n--- gateway logs ---\n{}",
                    tail(&self.logs(), PANIC_LOG_LINES)
                )
            })
    }

    /// Like [`Gateway::request`] but returns transport errors as `Err`.
    pub fn try_request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, String> {
        http_request(&self.agent, method, url, headers, body)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            if thread::panicking() {
                let logs = format!("{}{}", self.previous_logs, proc.output.snapshot());
                eprintln!(
                    "--- portcullis output (pid {}) ---\n{}--- end ---",
                    proc.child.id(),
                    tail(&logs, PANIC_LOG_LINES)
                );
            }
        }
        // `_tmp` (the data dir) is dropped after this, with the child gone.
    }
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("pid", &self.pid())
            .field("proxy_addr", &self.proxy_addr)
            .field("admin_addr", &self.admin_addr)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// Sends one request with `agent`, turning any HTTP status into a [`Resp`].
pub fn http_request(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Resp, String> {
    let mut req = agent.request(method, url);
    for (name, value) in headers {
        req = req.set(name, value);
    }
    let result = match body {
        Some(body) => req.send_bytes(body),
        None => req.call(),
    };
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
    };
    Ok(into_resp(response))
}

fn into_resp(response: ureq::Response) -> Resp {
    let status = response.status();

    // `headers_names` repeats a name once per occurrence; pair the k-th
    // occurrence with the k-th value.
    let mut headers = Vec::new();
    let mut seen: Vec<(String, usize)> = Vec::new();
    for name in response.headers_names() {
        let k = match seen.iter_mut().find(|(n, _)| *n == name) {
            Some((_, k)) => {
                *k += 1;
                *k
            }
            None => {
                seen.push((name.clone(), 0));
                0
            }
        };
        if let Some(value) = response.all(&name).get(k) {
            headers.push((name, value.to_string()));
        }
    }

    let mut bytes = Vec::new();
    let body_error = response
        .into_reader()
        .read_to_end(&mut bytes)
        .err()
        .map(|e| e.to_string());
    Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        body_error,
    }
}

/// Spawns the binary and waits for its ready line.
fn spawn_ready(
    opts: &GatewayOpts,
    data_dir: &Path,
) -> Result<(Proc, SocketAddr, SocketAddr), StartFailure> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("--data-dir")
        .arg(data_dir)
        .args(["--proxy-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(&opts.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    // Keep the developer's environment from leaking into the gateway.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PORTCULLIS_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    if let Some(key) = &opts.admin_key {
        cmd.env("PORTCULLIS_ADMIN_KEY", key);
    }
    for key in &opts.env_remove {
        cmd.env_remove(key);
    }
    for (key, value) in &opts.env {
        cmd.env(key, value);
    }

    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", env!("CARGO_BIN_EXE_portcullis")));
    let output = Arc::new(Output::default());
    let mut readers = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        readers.push(drain(stderr, Arc::clone(&output), "stderr"));
    }
    if let Some(stdout) = child.stdout.take() {
        readers.push(drain(stdout, Arc::clone(&output), "stdout"));
    }
    let mut proc = Proc {
        child,
        output,
        readers,
    };

    // Wait for the ready line, an early exit, or the timeout.
    let deadline = Instant::now() + opts.ready_timeout;
    loop {
        let text = proc.output.snapshot();
        if let Some(line) = text.lines().find(|l| l.contains(READY_MARKER)) {
            match parse_ready_line(line) {
                Some((proxy, admin)) => return Ok((proc, proxy, admin)),
                None => {
                    let _ = proc.child.kill();
                    let _ = proc.child.wait();
                    panic!(
                        "ready line lacks proxy.addr=/admin.addr=: {line:?}\n\
                         --- output ---\n{text}--- end ---"
                    );
                }
            }
        }
        match proc.child.try_wait() {
            Ok(Some(status)) => {
                proc.join_readers();
                return Err(StartFailure {
                    status,
                    output: proc.output.snapshot(),
                });
            }
            Ok(None) => {}
            Err(e) => panic!("cannot poll gateway process: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            proc.join_readers();
            panic!(
                "gateway not ready within {:?} (data dir {})\n--- output ---\n{}--- end ---",
                opts.ready_timeout,
                data_dir.display(),
                proc.output.snapshot()
            );
        }
        let guard = proc.output.text.lock().expect("output mutex poisoned");
        let _ = proc
            .output
            .grew
            .wait_timeout(guard, Duration::from_millis(50))
            .expect("output mutex poisoned");
    }
}

/// Copies lines from `stream` into `output` until EOF.
fn drain(stream: impl Read + Send + 'static, output: Arc<Output>, name: &str) -> JoinHandle<()> {
    thread::Builder::new()
        .name(format!("gateway-{name}"))
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        output.push_line(strip_ansi(line.trim_end_matches(['\r', '\n'])).as_str());
                    }
                }
            }
        })
        .expect("spawn output reader thread")
}

/// Sends SIGTERM via `kill` and waits up to [`STOP_TIMEOUT`]; on timeout
/// kills the child and returns `None`.
fn terminate(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run `kill -TERM`");
    if sent.success() {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("cannot poll gateway process {pid}: {e}"),
            }
        }
    }
    let _ = child.kill();
    None
}

/// Extracts `(proxy, admin)` addresses from a ready line. Accepts
/// `key=value` (text logs, value optionally quoted) and `"key":"value"`
/// (JSON logs).
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = strip_ansi(line);
    Some((
        field_addr(&line, "proxy.addr")?,
        field_addr(&line, "admin.addr")?,
    ))
}

fn field_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let mut search = 0;
    while let Some(found) = line[search..].find(key) {
        let start = search + found;
        let after = &line[start + key.len()..];
        search = start + key.len();
        // The key must stand alone: not part of a longer name.
        let before_ok = line[..start]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || c == '"' || c == '{' || c == ',');
        let rest = after.trim_start_matches('"');
        let Some(rest) = rest.strip_prefix('=').or_else(|| rest.strip_prefix(':')) else {
            continue;
        };
        if !before_ok {
            continue;
        }
        let value: String = rest
            .trim_start_matches([' ', '"'])
            .chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | ',' | '}'))
            .collect();
        if let Ok(addr) = value.parse() {
            return Some(addr);
        }
    }
    None
}

/// The last `n` lines of `text`, with a note when lines were dropped.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        return text.to_string();
    }
    let mut out = format!("[… {} earlier lines omitted …]\n", lines.len() - n);
    for line in &lines[lines.len() - n..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Removes ANSI escape sequences (CSI `ESC [ … final` and two-byte `ESC x`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        // `ESC [` starts a CSI sequence: parameters and intermediates, then
        // one final byte in @..~. Any other `ESC x` pair is dropped whole.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}
