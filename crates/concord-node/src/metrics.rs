//! Counters served at `/metrics` in the Prometheus text format, and the gauges of what a
//! replica holds back (read from the engine's view when rendered).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        #[derive(Default)]
        pub struct Metrics { $(pub $name: AtomicU64,)* }

        impl Metrics {
            pub fn render(&self, labels: &str) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP concord_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE concord_{} counter", stringify!($name));
                    let _ = writeln!(out, "concord_{}{{{}}} {}", stringify!($name), labels, self.$name.load(Ordering::Relaxed));
                )*
                out
            }
        }
    };
}

counters! {
    writes_acked_total: "Writes acknowledged to clients.",
    writes_failed_total: "Writes answered with an error after they were queued.",
    writes_rejected_total: "Requests refused for bad input (4xx).",
    changesets_published_total: "Changesets appended to the region's log.",
    changes_published_total: "Changes appended to the region's log.",
    changesets_applied_total: "Changesets applied from the log.",
    changesets_duplicate_total: "Changesets skipped because they were already applied.",
    log_gaps_total: "Gaps opened in an origin's sequence (later changesets of that origin wait durably).",
    dead_letters_total: "Messages put in the dead-letter table (undecodable, invalid, or refused by a document).",
    streams_parked_total: "Streams parked at a message of a newer format than this node reads.",
    gap_repair_messages_total: "Messages missing from a stream (a hole in a mirror) read back from their origin's log to fill a gap.",
    stream_messages_missing_total: "Stream messages removed (retention) before this replica read them.",
    task_failures_total: "Supervised tasks that failed or panicked (restarted, or the node stopped).",
    lww_conflicts_total: "Concurrent LWW versions reconciled by merge.",
    append_retries_total: "Log appends retried after an error.",
    reads_served_total: "Reads (values, listings, documents) answered by this node.",
    conflict_records_written_total: "Conflict-log records created, extended or resolved.",
    conflicts_unpublished_total: "Conflict records not published on NATS (publisher queue full).",
    requests_overloaded_total: "Requests refused with 503 overloaded (HTTP or NATS concurrency limit reached).",
    requests_timed_out_total: "Requests answered with 504 timeout after request_timeout_ms.",
}

/// The gauges: what this replica holds back now.
pub fn render_gauges(out: &mut String, labels: &str, view: &crate::view::EngineView) {
    let gauges = [
        ("streams_parked", "Streams parked now (see /v1/status: streams).", view.parked.len() as u64),
        ("origin_gaps", "Origins whose changesets wait behind a gap now.", view.gaps.len() as u64),
        ("changesets_waiting", "Changesets waiting behind gaps now.", view.waiting as u64),
        ("dead_letters", "Dead letters ever recorded by this replica (see /v1/dead-letters).", view.dead_letters),
    ];
    for gauge in gauges {
        render_gauge(out, labels, gauge);
    }
}

/// One gauge: (name, help, value).
pub fn render_gauge(out: &mut String, labels: &str, (name, help, value): (&str, &str, u64)) {
    let _ = writeln!(out, "# HELP concord_{name} {help}");
    let _ = writeln!(out, "# TYPE concord_{name} gauge");
    let _ = writeln!(out, "concord_{name}{{{labels}}} {value}");
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
