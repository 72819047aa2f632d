//! The fault schedule of a run, drawn from its seed, and its injection through
//! `concord cluster` (the same commands a person would type): partitions of a region,
//! one-way delays, SIGKILL and restart of leaders, followers, region NATS servers and
//! backbone servers, SIGSTOP of a leader past its lease then SIGCONT, and clock skew of
//! up to ±30 s. One fault at a time; each is undone before the next begins, except
//! clock skews, which stay until the heal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::history::{Event, Fault, Recorder};
use super::rng::Rng;

/// The kinds of fault, with their weights in the draw.
pub const KINDS: &[(&str, u64)] = &[
    ("partition", 3),
    ("delay", 2),
    ("kill-leader", 3),
    ("kill-follower", 2),
    ("kill-nats", 2),
    ("kill-backbone", 1),
    ("pause-leader", 2),
    ("skew", 2),
];

pub struct Injector<'a> {
    pub dir: &'a Path,
    pub bin: &'a Path,
    pub rec: &'a Recorder,
    pub regions: &'a [String],
    /// (node name, HTTP URL)
    pub nodes: &'a [(String, String)],
    /// How long a leader's lease lives (a pause is longer than this).
    pub lease_ttl: Duration,
}

impl Injector<'_> {
    /// Run `concord cluster VERB --dir DIR ARGS` and record it as a fault event.
    pub fn ctl(&self, verb: &str, target: &str, arg: Option<i64>) -> bool {
        let start_ms = self.rec.now_ms();
        let mut cmd = Command::new(self.bin);
        cmd.args(["cluster", verb, "--dir"]).arg(self.dir).arg(target);
        if let Some(a) = arg {
            cmd.arg(a.to_string());
        }
        let (ok, error) = match cmd.output() {
            Ok(out) if out.status.success() => (true, None),
            Ok(out) => (false, Some(String::from_utf8_lossy(&out.stderr).trim().to_string())),
            Err(e) => (false, Some(e.to_string())),
        };
        self.rec.record(&Event::Fault(Fault {
            kind: verb.to_string(),
            target: target.to_string(),
            arg,
            start_ms,
            end_ms: self.rec.now_ms(),
            ok,
            error,
        }));
        ok
    }

    /// The node of `region` that writes now, if one answers that it does.
    async fn leader_of(&self, region: &str) -> Option<String> {
        let client = crate::client_builder().timeout(Duration::from_millis(800)).build().unwrap();
        for (name, url) in self.nodes.iter().filter(|(n, _)| n.starts_with(&format!("{region}-"))) {
            if let Ok(r) = client.get(format!("{url}/v1/status")).send().await
                && let Ok(s) = r.json::<concord_api::StatusBody>().await
                && s.writer == "writing"
            {
                return Some(name.clone());
            }
        }
        None
    }

    /// Inject one fault drawn from `rng`, hold it, undo it.
    pub async fn one(&self, rng: &mut Rng) {
        let total: u64 = KINDS.iter().map(|(_, w)| w).sum();
        let mut draw = rng.below(total);
        let kind = KINDS
            .iter()
            .find(|(_, w)| {
                if draw < *w {
                    true
                } else {
                    draw -= w;
                    false
                }
            })
            .expect("a kind")
            .0;
        let region = rng.pick(self.regions).clone();
        let hold = Duration::from_millis(rng.between(1_000, 4_000));
        // What was drawn (the fault commands name only a verb and a target): for the
        // summary of what each kind of fault did.
        self.rec.note(format!("drawn: {kind} {region}"));
        match kind {
            "partition" => {
                self.ctl("partition", &region, None);
                tokio::time::sleep(hold).await;
                self.ctl("heal", &region, None);
            }
            "delay" => {
                let ms = rng.between(20, 400) as i64;
                self.ctl("delay", &region, Some(ms));
                tokio::time::sleep(hold).await;
                self.ctl("delay", &region, Some(0));
            }
            "kill-leader" | "pause-leader" => {
                let Some(leader) = self.leader_of(&region).await else {
                    self.rec.note(format!("{kind}: no node of {region} writes now; skipped"));
                    return;
                };
                if kind == "kill-leader" {
                    self.ctl("kill", &leader, None);
                    tokio::time::sleep(hold).await;
                    self.ctl("start", &leader, None);
                } else {
                    // Frozen past its lease: a follower takes over; the old leader must
                    // find itself fenced when it runs again.
                    self.ctl("pause", &leader, None);
                    tokio::time::sleep(self.lease_ttl + hold).await;
                    self.ctl("resume", &leader, None);
                }
            }
            "kill-follower" => {
                let leader = self.leader_of(&region).await;
                let others: Vec<&String> = self
                    .nodes
                    .iter()
                    .map(|(n, _)| n)
                    .filter(|n| n.starts_with(&format!("{region}-")) && Some(*n) != leader.as_ref())
                    .collect();
                if others.is_empty() {
                    self.rec.note(format!("kill-follower: {region} has no follower; skipped"));
                    return;
                }
                let node = rng.pick(&others).to_string();
                self.ctl("kill", &node, None);
                tokio::time::sleep(hold).await;
                self.ctl("start", &node, None);
            }
            "kill-nats" | "kill-backbone" => {
                let name = if kind == "kill-nats" { format!("nats-{region}") } else { format!("backbone-{region}") };
                self.ctl("kill", &name, None);
                tokio::time::sleep(hold).await;
                self.ctl("start", &name, None);
            }
            "skew" => {
                let node = &rng.pick(self.nodes).0;
                let ms = rng.between(1_000, 30_000) as i64 * if rng.below(2) == 0 { 1 } else { -1 };
                let node_region = self.regions.iter().find(|r| node.starts_with(&format!("{r}-")));
                let leads = match node_region {
                    Some(r) => self.leader_of(r).await.as_ref() == Some(node),
                    None => false,
                };
                self.rec.note(format!("drawn: skew of {node}, which {}", if leads { "leads" } else { "follows" }));
                self.ctl("skew", node, Some(ms));
            }
            other => unreachable!("fault kind {other}"),
        }
    }

    /// Undo everything: heal every link, remove delays and skews, resume and start
    /// every process (a command that finds nothing to do fails harmlessly; recorded).
    pub async fn heal_all(&self) {
        self.ctl_all("heal", None);
        for region in self.regions {
            self.ctl("delay", region, Some(0));
            for name in [format!("backbone-{region}"), format!("nats-{region}")] {
                if !self.running(&name) {
                    self.ctl("start", &name, None);
                }
            }
        }
        for (node, _) in self.nodes {
            self.ctl("resume", node, None);
            self.ctl("skew", node, Some(0));
            if !self.running(node) {
                self.ctl("start", node, None);
            }
        }
    }

    fn ctl_all(&self, verb: &str, arg: Option<i64>) {
        let start_ms = self.rec.now_ms();
        let out = Command::new(self.bin).args(["cluster", verb, "--dir"]).arg(self.dir).output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        self.rec.record(&Event::Fault(Fault {
            kind: verb.into(),
            target: "*".into(),
            arg,
            start_ms,
            end_ms: self.rec.now_ms(),
            ok,
            error: None,
        }));
    }

    /// Whether the process `name` of the deployment is running (its recorded pid lives).
    pub fn running(&self, name: &str) -> bool {
        let Ok(bytes) = std::fs::read(self.dir.join("procs").join(format!("{name}.json"))) else { return false };
        let pid = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| v["pid"].as_u64());
        pid.is_some_and(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            !stat.is_empty() && !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    }
}
