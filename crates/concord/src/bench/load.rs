//! Load: `clients` connections, each a task doing one operation at a time, either as fast
//! as answers come (closed loop: throughput) or on a schedule (open loop: latency at a
//! given rate, measured from when each operation was due, so a stall is not hidden by
//! the requests it kept from being sent). The same code drives Concord and its peers.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::wire::{Answer, Conn, Target};

/// What one run measured.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Operations answered 2xx (or a Redis/NATS success) inside the measured window.
    pub ok: u64,
    /// Failed operations (an error status, a timeout, a broken connection).
    pub errors: u64,
    /// The measured window.
    pub seconds: f64,
    /// Latencies of the successful operations in the window, microseconds.
    pub latencies_us: Vec<u32>,
    /// The first error seen, to show.
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 { self.ok as f64 / self.seconds } else { 0.0 }
    }

    /// The `q`-quantile latency in milliseconds (0 when nothing succeeded).
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        quantile_ms(&mut self.latencies_us, q)
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

pub fn quantile_ms(samples: &mut [u32], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i] as f64 / 1000.0
}

/// How a run is paced and how long it lasts.
#[derive(Clone, Copy)]
pub struct Plan {
    pub clients: usize,
    /// Not counted: connections warm up, batches settle.
    pub warmup: Duration,
    pub measure: Duration,
    /// `None`: closed loop. `Some(r)`: `r` operations per second in all, spread evenly
    /// over the clients.
    pub rate: Option<f64>,
    /// Keys are `k0 .. k<keyspace>`, visited in turn by the clients together.
    pub keyspace: u64,
    /// Stop early once this many operations succeeded (in all, warm-up included).
    pub ops_max: Option<u64>,
    /// Put before every key (so that runs in different regions write different keys).
    pub prefix: &'static str,
}

/// Called with each successful answer (the lag probe uses the write's token).
pub type OnAnswer = Arc<dyn Fn(&str, &Answer, Instant) + Send + Sync>;

/// Run `plan` against `target`, showing progress under `label`.
pub async fn run(label: &str, target: &Target, plan: Plan, on_answer: Option<OnAnswer>) -> anyhow::Result<Outcome> {
    let mut conns = Vec::with_capacity(plan.clients);
    for _ in 0..plan.clients {
        conns.push(target.connect().await.with_context(|| format!("{label}: opening a client"))?);
    }
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.measure;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Progress::start(label, start, plan.warmup + plan.measure, plan.ops_max, done.clone(), stop.clone());
    let mut tasks = Vec::with_capacity(plan.clients);
    for (c, conn) in conns.into_iter().enumerate() {
        let (done, stop, on_answer) = (done.clone(), stop.clone(), on_answer.clone());
        tasks.push(tokio::spawn(client(
            c,
            target.clone(),
            conn,
            plan,
            start,
            measure_from,
            end,
            done,
            stop,
            on_answer,
        )));
    }
    let mut total = Outcome::default();
    for t in tasks {
        total.merge(t.await.context("a client task panicked")?);
    }
    let finished = Instant::now().min(end);
    total.seconds = finished.saturating_duration_since(measure_from).as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    progress.finish(&total);
    Ok(total)
}

#[allow(clippy::too_many_arguments)]
async fn client(
    c: usize,
    target: Target,
    mut conn: Conn,
    plan: Plan,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    on_answer: Option<OnAnswer>,
) -> Outcome {
    let mut out = Outcome::default();
    // Open loop: this client's share of the rate, its first slot staggered.
    let interval = plan.rate.map(|r| Duration::from_secs_f64(plan.clients as f64 / r));
    let mut due = start + interval.map(|i| i.mul_f64(c as f64 / plan.clients as f64)).unwrap_or_default();
    let mut i: u64 = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(interval) = interval {
            tokio::time::sleep_until(due.into()).await;
            due += interval;
        }
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let key = format!("{}k{}", plan.prefix, (c as u64 + i * plan.clients as u64) % plan.keyspace.max(1));
        i += 1;
        let from = if interval.is_some() { due - interval.unwrap_or_default() } else { sent };
        let result = conn.call(&key, None).await;
        let now = Instant::now();
        let counted = from >= measure_from && now <= end;
        match result {
            Ok(a) if (200..300).contains(&a.status) => {
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if counted {
                    out.ok += 1;
                    out.latencies_us.push(now.duration_since(from).as_micros().min(u32::MAX as u128) as u32);
                }
                if let Some(f) = &on_answer {
                    f(&key, &a, now);
                }
                if plan.ops_max.is_some_and(|m| n >= m) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Ok(a) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("status {}", a.status));
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
                // A broken connection: open another one before going on.
                tokio::time::sleep(Duration::from_millis(50)).await;
                match target.connect().await {
                    Ok(c) => conn = c,
                    Err(_) => break,
                }
            }
        }
    }
    out
}

/// A progress bar on stderr while a run lasts (a line every few seconds when stderr is
/// not a terminal, as in CI).
pub struct Progress {
    task: tokio::task::JoinHandle<()>,
    label: String,
}

impl Progress {
    pub fn start(
        label: &str,
        start: Instant,
        length: Duration,
        ops_max: Option<u64>,
        done: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let name = label.to_string();
        let task = tokio::spawn(async move {
            let every = if tty { Duration::from_millis(250) } else { Duration::from_secs(5) };
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(every).await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = Instant::now();
                let n = done.load(Ordering::Relaxed);
                let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, n);
                let frac = match ops_max {
                    Some(m) => n as f64 / m.max(1) as f64,
                    None => now.duration_since(start).as_secs_f64() / length.as_secs_f64(),
                }
                .min(1.0);
                bar(&name, frac, &format!("{} ops/s", human(rate)), tty);
            }
        });
        Progress { task, label: label.to_string() }
    }

    pub fn finish(self, out: &Outcome) {
        self.task.abort();
        let tty = std::io::stderr().is_terminal();
        if tty {
            eprint!("\r\x1b[2K");
        }
        let errors = if out.errors > 0 {
            format!(", {} errors (first: {})", out.errors, out.first_error.as_deref().unwrap_or("?"))
        } else {
            String::new()
        };
        eprintln!("  {:<34} {:>10} ops/s over {:.1} s{errors}", self.label, human(out.rate()), out.seconds);
    }
}

/// One progress line: `label [#####.....] 45% detail`.
pub fn bar(label: &str, frac: f64, detail: &str, tty: bool) {
    let width = 30;
    let filled = (frac * width as f64) as usize;
    let line =
        format!("  {label:<34} [{}{}] {:>3.0}% {detail}", "#".repeat(filled), ".".repeat(width - filled), frac * 100.0);
    let mut err = std::io::stderr();
    if tty {
        let _ = write!(err, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// 12345.6 → "12.3k".
pub fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}
