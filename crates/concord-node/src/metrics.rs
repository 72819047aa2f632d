//! Counters served at `/metrics` in the Prometheus text format.

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
    changesets_rejected_total: "Changesets from the log that did not decode or validate (counted, skipped).",
    log_gaps_total: "Changesets that arrived after a gap in their origin's sequence.",
    lww_conflicts_total: "Concurrent LWW versions reconciled by merge.",
    append_retries_total: "Log appends retried after an error.",
    reads_served_total: "Reads (values, listings, documents) answered by this node.",
    conflict_records_written_total: "Conflict-log records created, extended or resolved.",
    conflicts_unpublished_total: "Conflict records not published on NATS (publisher queue full).",
    requests_overloaded_total: "Requests refused with 503 overloaded (HTTP or NATS concurrency limit reached).",
    requests_timed_out_total: "Requests answered with 504 timeout after request_timeout_ms.",
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}
