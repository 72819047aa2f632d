//! Headless Chromium driven over the Chrome DevTools Protocol, for tests of the
//! dashboard. The browser is Debian's `chromium-headless-shell` (or `chromium`):
//! `$CONCORD_CHROMIUM`, else the first of them on `PATH` (`.ci/setup.sh` installs it).
//!
//! It talks over `--remote-debugging-pipe` (the browser reads commands on its fd 3 and
//! writes answers and events on its fd 4, each message JSON ended by a NUL byte), so
//! no WebSocket library and no open port are needed. Every command has a timeout; the
//! events kept (errors the page reported) are bounded; the browser runs in a process
//! group of its own, closed on drop and killed (that group only) if it does not exit.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use concord_tests::TempDir;

/// The longest one command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Errors the page reported, kept at most.
const ERRORS_MAX: usize = 100;
/// The largest message read from the browser (a screenshot is the largest).
const MESSAGE_BYTES_MAX: usize = 64 << 20;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;
/// Errors the pages reported, each with the session of the page that reported it.
type Errors = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// A running headless Chromium.
pub struct Browser {
    child: Child,
    commands: Mutex<File>,
    pending: Pending,
    errors: Errors,
    next_id: AtomicU64,
    profile: TempDir,
}

/// Chromium's binary, or why there is none.
pub fn find_chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("CONCORD_CHROMIUM") {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("$CONCORD_CHROMIUM={} is no file", p.display())) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium-headless-shell", "chromium"] {
        if let Some(p) = std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()) {
            return Ok(p);
        }
    }
    Err("neither chromium-headless-shell nor chromium is on PATH (bash .ci/setup.sh installs it)".into())
}

/// A pipe whose ends close on exec (the child gets copies at fds 3 and 4).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Start the browser with a fresh profile.
    pub fn launch() -> Result<Browser, String> {
        let bin = find_chromium()?;
        let profile = TempDir::new("chromium");
        let (their_in, commands) = pipe();
        let (answers, their_out) = pipe();
        let (fd_in, fd_out) = (their_in.as_raw_fd(), their_out.as_raw_fd());
        let log = File::create(profile.0.join("chromium.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--headless", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run"])
            .args(["--no-default-browser-check", "--disable-extensions", "--disable-background-networking"])
            .args(["--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--window-size=1400,1000"])
            .arg(format!("--user-data-dir={}", profile.0.join("profile").display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0);
        if unsafe { libc::geteuid() } == 0 {
            // Chromium refuses to run as root with its sandbox on.
            cmd.arg("--no-sandbox");
        }
        unsafe {
            cmd.pre_exec(move || {
                // Through fds >= 10 first, so neither dup2 overwrites the other's source.
                let (a, b) = (libc::fcntl(fd_in, libc::F_DUPFD, 10), libc::fcntl(fd_out, libc::F_DUPFD, 10));
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(a);
                libc::close(b);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("starting {}: {e}", bin.display()))?;
        drop((their_in, their_out));
        let pending: Pending = Default::default();
        let errors: Errors = Default::default();
        let (p, e) = (pending.clone(), errors.clone());
        std::thread::spawn(move || read_messages(File::from(answers), p, e));
        Ok(Browser {
            child,
            commands: Mutex::new(File::from(commands)),
            pending,
            errors,
            next_id: AtomicU64::new(1),
            profile,
        })
    }

    /// The end of the browser's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.profile.0.join("chromium.log")).unwrap_or_default();
        text.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Errors the pages reported (uncaught exceptions, console errors, failed loads).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().iter().map(|(_, e)| e.clone()).collect()
    }

    /// Send one command (to a page when `session` is set) and wait for its result.
    pub async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.commands
            .lock()
            .unwrap()
            .write_all(&bytes)
            .map_err(|e| format!("{method}: writing to the browser: {e}"))?;
        let answer = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(format!("{method}: the browser went away\n{}", self.log_tail())),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                return Err(format!("{method}: no answer in {COMMAND_TIMEOUT:?}"));
            }
        };
        match answer.get("error") {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(answer["result"].clone()),
        }
    }

    /// Open a page (a new tab) and attach to it.
    pub async fn new_page(&self) -> Result<Page<'_>, String> {
        let target = self.call(None, "Target.createTarget", json!({"url": "about:blank"})).await?;
        let attached =
            self.call(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await?;
        let session = attached["sessionId"].as_str().ok_or("no sessionId")?.to_string();
        let page = Page { browser: self, session };
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({})).await?;
        }
        Ok(page)
    }
}

/// Route answers to their callers; keep what the pages report as errors.
fn read_messages(from: File, pending: Pending, errors: Errors) {
    let mut reader = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.by_ref().take(MESSAGE_BYTES_MAX as u64).read_until(0, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() != Some(&0) {
            return; // over the limit, or the browser closed the pipe mid-message
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&buf[..buf.len() - 1]) else { continue };
        if let Some(id) = msg["id"].as_u64() {
            if let Some(tx) = pending.lock().unwrap().remove(&id) {
                let _ = tx.send(msg);
            }
        } else if let Some(text) = page_error(&msg) {
            let mut errors = errors.lock().unwrap();
            if errors.len() < ERRORS_MAX {
                errors.push((msg["sessionId"].as_str().map(String::from), text));
            }
        }
    }
}

/// The text of an event that reports an error in a page, if it is one.
fn page_error(msg: &Value) -> Option<String> {
    let p = &msg["params"];
    match msg["method"].as_str()? {
        "Runtime.exceptionThrown" => {
            let d = &p["exceptionDetails"];
            Some(format!("exception: {} {}", d["text"], d["exception"]["description"]))
        }
        "Runtime.consoleAPICalled" if p["type"] == "error" => Some(format!("console.error: {}", p["args"])),
        "Log.entryAdded" if p["entry"]["level"] == "error" => {
            Some(format!("log: {} {}", p["entry"]["text"], p["entry"]["url"]))
        }
        _ => None,
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(mut commands) = self.commands.lock() {
            let _ = commands.write_all(b"{\"id\":0,\"method\":\"Browser.close\"}\0");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The browser's process group (its renderers and helpers), started by `launch`.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// One page of the browser.
pub struct Page<'a> {
    browser: &'a Browser,
    session: String,
}

impl Page<'_> {
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.browser.call(Some(&self.session), method, params).await
    }

    /// Evaluate `expression` (a promise is awaited) and return its value as JSON.
    pub async fn eval(&self, expression: &str) -> Result<Value, String> {
        let params = json!({"expression": expression, "awaitPromise": true, "returnByValue": true});
        let r = self.call("Runtime.evaluate", params).await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {}", e["exception"]["description"].as_str().unwrap_or(&e.to_string())));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Poll `expression` every 200 ms until it gives something other than null, false or
    /// an error, and return that; the last value or error in the panic after `timeout`.
    pub async fn wait_for(&self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.eval(expression).await;
            match &last {
                Ok(v) if !v.is_null() && *v != Value::Bool(false) => return v.clone(),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what} within {timeout:?}; last: {last:?}; page errors: {:?}",
                self.browser.errors()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Errors this page reported.
    pub fn errors(&self) -> Vec<String> {
        let errors = self.browser.errors.lock().unwrap();
        errors.iter().filter(|(s, _)| s.as_deref() == Some(self.session.as_str())).map(|(_, e)| e.clone()).collect()
    }

    /// Load `url` (its fragment is the page's: it may take it off the address bar) and
    /// wait until its document has loaded.
    pub async fn navigate(&self, url: &str) -> Result<(), String> {
        let without_fragment = url.split('#').next().unwrap_or(url);
        self.load(&format!("{without_fragment} loaded"), "Page.navigate", json!({"url": url}), without_fragment).await
    }

    /// Load the page again and wait until it has loaded.
    pub async fn reload(&self) -> Result<(), String> {
        let href = self.eval("location.href.split('#')[0]").await?;
        let href = href.as_str().ok_or("no location")?;
        self.load(&format!("{href} reloaded"), "Page.reload", json!({}), href).await
    }

    /// Run `method`, then wait for a new document at `href` (fragment aside) to have
    /// loaded: the old one is marked first, so its own `complete` is not taken for it.
    async fn load(&self, what: &str, method: &str, params: Value, href: &str) -> Result<(), String> {
        self.eval("window.__cdpOldDocument = true").await?;
        let r = self.call(method, params).await?;
        if let Some(e) = r.get("errorText") {
            return Err(format!("{what}: {e}"));
        }
        let loaded = format!(
            "window.__cdpOldDocument === undefined && location.href.split('#')[0] === {} \
             && document.readyState === 'complete'",
            json!(href)
        );
        self.wait_for(what, &loaded, Duration::from_secs(30)).await;
        Ok(())
    }

    /// Click the middle of the element `selector` finds, as a mouse would (so it must be
    /// visible and not covered), after scrolling it into view.
    pub async fn click(&self, selector: &str) -> Result<(), String> {
        // The click lands at coordinates, as a user's does, so it waits for the element to
        // hold still (a page still loading moves it) and to be the one at that point.
        let js = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return null; e.scrollIntoView({{block: 'center'}}); \
             const r = e.getBoundingClientRect(); const x = r.x + r.width / 2, y = r.y + r.height / 2; \
             const at = document.elementFromPoint(x, y); return [x, y, !!at && (at === e || e.contains(at))]; }})()",
            json!(selector)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut before: Option<(f64, f64)> = None;
        loop {
            let at = self.eval(&js).await?;
            let (x, y, hit) = match (at[0].as_f64(), at[1].as_f64()) {
                (Some(x), Some(y)) => (x, y, at[2] == Value::Bool(true)),
                // Not there (yet, or replaced while the page draws): look again.
                _ if Instant::now() < deadline => {
                    before = None;
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    continue;
                }
                _ => return Err(format!("{selector}: no such element")),
            };
            if hit && before == Some((x, y)) {
                for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
                    let p = json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1});
                    self.call("Input.dispatchMouseEvent", p).await?;
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{selector}: never held still where a click reaches it (last at {x},{y}, hit {hit})"
                ));
            }
            before = Some((x, y));
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Type `text` into the focused element.
    pub async fn type_text(&self, text: &str) -> Result<(), String> {
        self.call("Input.insertText", json!({"text": text})).await.map(|_| ())
    }

    /// A PNG of the whole page, `width` pixels wide (at most 4000 pixels high).
    pub async fn screenshot(&self, width: u32) -> Result<Vec<u8>, String> {
        let metrics = json!({"width": width, "height": 800, "deviceScaleFactor": 1, "mobile": false});
        self.call("Emulation.setDeviceMetricsOverride", metrics).await?;
        let height = self.eval("document.documentElement.scrollHeight").await?.as_u64().unwrap_or(800).clamp(400, 4000);
        let metrics = json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false});
        self.call("Emulation.setDeviceMetricsOverride", metrics).await?;
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"})).await?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        base64::engine::general_purpose::STANDARD.decode(data).map_err(|e| e.to_string())
    }
}
