//! Child processes of a local deployment: each is recorded in `DIR/procs/NAME.json`
//! (its command line and pid), so `kill` and `start` work from another shell.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Environment set on top of the caller's, recorded so that `cluster start` from
    /// another shell starts the process as `up` did.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub pid: Option<u32>,
}

fn spec_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("procs").join(format!("{name}.json"))
}

pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

pub fn load(dir: &Path, name: &str) -> anyhow::Result<ProcSpec> {
    let path = spec_path(dir, name);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("no process {name:?} in {} (is `concord cluster up --dir {}` running?)", dir.display(), dir.display())
    })?;
    Ok(serde_json::from_str(&text)?)
}

pub fn all(dir: &Path) -> Vec<ProcSpec> {
    let Ok(entries) = std::fs::read_dir(dir.join("procs")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str(&t).ok())
        .collect()
}

fn save(dir: &Path, spec: &ProcSpec) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("procs"))?;
    let tmp = spec_path(dir, &format!("{}.tmp", spec.name));
    std::fs::write(&tmp, serde_json::to_vec_pretty(spec)?)?;
    std::fs::rename(&tmp, spec_path(dir, &spec.name))?;
    Ok(())
}

/// Start the process described by `spec` in its own process group (so a Ctrl-C in the
/// terminal reaches only the supervisor, which stops the children in order), with its
/// output appended to `DIR/logs/NAME.log`.
pub fn spawn(dir: &Path, mut spec: ProcSpec) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    if let Some(pid) = spec.pid
        && alive(pid)
    {
        bail!("{} is already running (pid {pid})", spec.name);
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(dir, &spec.name))?;
    let mut cmd = Command::new(&spec.program);
    // Credentials reach a process only as its spec says (by file), never by inheritance.
    for var in super::up::SECRET_ENV {
        cmd.env_remove(var);
    }
    let child = cmd
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} ({})", spec.name, spec.program.display()))?;
    spec.pid = Some(child.id());
    save(dir, &spec)?;
    Ok(child)
}

pub fn alive(pid: u32) -> bool {
    // Signal 0 checks existence; a zombie still counts, so also look at /proc.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    exists && !zombie
}

pub fn signal(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Send `sig` to the running process `name`.
pub fn signal_node(dir: &Path, name: &str, sig: i32) -> anyhow::Result<()> {
    let spec = load(dir, name)?;
    let pid = spec.pid.filter(|p| alive(*p)).with_context(|| format!("{name} is not running"))?;
    signal(pid, sig);
    Ok(())
}

/// SIGKILL a recorded process and wait until it is gone.
pub fn kill(dir: &Path, name: &str) -> anyhow::Result<()> {
    let spec = load(dir, name)?;
    let Some(pid) = spec.pid.filter(|&p| alive(p)) else {
        bail!("{name} is not running");
    };
    signal(pid, libc::SIGKILL);
    wait_gone(pid, Duration::from_secs(10))?;
    Ok(())
}

pub fn wait_gone(pid: u32, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("pid {pid} is still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stop a process: SIGTERM, then SIGKILL after `grace`.
pub fn stop(pid: u32, grace: Duration) {
    if !alive(pid) {
        return;
    }
    signal(pid, libc::SIGTERM);
    if wait_gone(pid, grace).is_err() {
        signal(pid, libc::SIGKILL);
        let _ = wait_gone(pid, Duration::from_secs(5));
    }
}
