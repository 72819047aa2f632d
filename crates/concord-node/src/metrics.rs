//! What a node counts and measures, served at `/metrics` in the OpenMetrics text format
//! (`prometheus-client`): counters of what happened, latency histograms (writes by
//! durability, reads, applying a batch), conflict records by rule, and at each scrape the
//! gauges of what the replica holds back, its lag behind each origin, its followers' lag
//! and its epoch. Every sample carries the node's `region` and `node` labels.
//!
//! The metrics are plain handles (an atomic each, shared by clone); the registry that
//! names them is built for each scrape, with that scrape's gauges (a few dozen entries:
//! microseconds).

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::api::Durability;

/// Labels of one sample (`[("durability", "async")]`).
pub type Labels = Vec<(String, String)>;
/// `[("op", "kv.put"), ("outcome", "ok")]`: static, so counting a request allocates nothing.
pub type RequestLabels = [(&'static str, &'static str); 2];
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Latency buckets: 0.25 ms to 4 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        pub struct Metrics {
            $(pub $name: Counter,)*
            /// Acknowledged writes, from the request to the answer, by durability.
            write_seconds: Histograms,
            /// Its histogram of each level, by [`Durability::index`] (looked up once, not
            /// per write).
            write_by_level: [Histogram; 4],
            /// Reads over HTTP (values, listings, documents), from the request to the answer.
            pub read_seconds: Histogram,
            /// One batch of log entries applied: load, apply, commit.
            pub apply_seconds: Histogram,
            /// Conflict-log records written, by rule and state (`open`, `resolved`).
            pub conflict_records: Family<Labels, Counter>,
            /// Data requests (HTTP and NATS) answered, by operation and outcome.
            pub requests: Family<RequestLabels, Counter>,
        }

        impl Default for Metrics {
            fn default() -> Metrics {
                let write_seconds: Histograms = Family::new_with_constructor(latency as fn() -> Histogram);
                let write_by_level = Durability::ALL
                    .map(|d| write_seconds.get_or_create(&vec![("durability".to_string(), d.name().to_string())]).clone());
                Metrics {
                    $($name: Counter::default(),)*
                    write_seconds,
                    write_by_level,
                    read_seconds: latency(),
                    apply_seconds: latency(),
                    conflict_records: Family::default(),
                    requests: Family::default(),
                }
            }
        }

        impl Metrics {
            fn register(&self, reg: &mut Registry) {
                $(
                    let name = stringify!($name);
                    reg.register(name.strip_suffix("_total").unwrap_or(name), $help.trim_end_matches('.'), self.$name.clone());
                )*
                reg.register_with_unit("write", "Acknowledged writes, request to answer, by durability", Unit::Seconds, self.write_seconds.clone());
                reg.register_with_unit("read", "HTTP reads, request to answer", Unit::Seconds, self.read_seconds.clone());
                reg.register_with_unit("apply", "Batches of log entries applied (load, apply, commit)", Unit::Seconds, self.apply_seconds.clone());
                reg.register("conflict_records_by_rule", "Conflict-log records written, by rule and state", self.conflict_records.clone());
                reg.register("requests", "Data requests (HTTP and NATS) by operation (kv.put, doc.get, ...) and outcome: ok, siblings (300), or the error code", self.requests.clone());
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
    promotions_total: "Times this node took its region's lease as a follower and became its leader (failovers).",
    anti_entropy_rounds_total: "Anti-entropy comparisons of this replica's state with a peer's that ran to the end.",
    anti_entropy_failures_total: "Anti-entropy comparisons that failed (a peer that did not answer, a damaged reply); tried again later.",
    anti_entropy_entries_repaired_total: "Registers and documents taken from a peer's state because they differed from this replica's.",
    anti_entropy_values_dropped_total: "Values dropped by anti-entropy: a peer had applied them and holds them no more (superseded by a delete it has collected since).",
    anti_entropy_refused_total: "Entries of a peer's state refused (they do not decode, or a document refused their changes).",
    forged_total: "Changesets whose publisher may not write as their origin (not the owner of its epoch in the lease history): dead letters.",
    tombstones_collected_total: "Tombstones collected once every region had applied them (causal stability).",
    gc_sweeps_total: "Sweeps of the store for collectable tombstones.",
    marks_written_total: "Marks this writer put in its region's log (what it had applied, for tombstone collection).",
    sync_messages_received_total: "Messages received from sync clients (GET /v1/sync).",
    sync_messages_sent_total: "Messages sent to sync clients (GET /v1/sync).",
    sync_changes_written_total: "Automerge changes from sync clients written (here or by the region's leader).",
    sync_refused_total: "Sync connections ended with an error message (a bad frame or message, changes the store refused).",
    anti_entropy_gaps_lifted_total: "Gaps in an origin's sequence lifted by a repair from a peer's state (their messages were gone from every log).",
}

/// What a scrape adds to the counters: gauges read at that moment.
#[derive(Default)]
pub struct Scrape {
    /// (name, help, value) of plain gauges.
    pub gauges: Vec<(&'static str, &'static str, i64)>,
    /// Gauges by label.
    pub families: Vec<GaugeFamily>,
}

/// A gauge with a value per label set.
pub struct GaugeFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
    pub samples: Vec<(Labels, f64)>,
}

impl Scrape {
    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.gauges.push((name, help, i64::try_from(value).unwrap_or(i64::MAX)));
    }

    pub fn family(&mut self, name: &'static str, help: &'static str, unit: Option<Unit>, samples: Vec<(Labels, f64)>) {
        self.families.push(GaugeFamily { name, help, unit, samples });
    }
}

impl Metrics {
    /// The OpenMetrics text of the counters, histograms and `scrape`'s gauges.
    pub fn render(&self, region: &str, node: &str, scrape: Scrape) -> String {
        let labels: [(Cow<'static, str>, Cow<'static, str>); 2] =
            [("region".into(), region.to_string().into()), ("node".into(), node.to_string().into())];
        let mut reg = Registry::with_prefix_and_labels("concord", labels.into_iter());
        self.register(&mut reg);
        for (name, help, value) in scrape.gauges {
            let g: Gauge = Gauge::default();
            g.set(value);
            reg.register(name, help.trim_end_matches('.'), g);
        }
        for GaugeFamily { name, help, unit, samples } in scrape.families {
            let family: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
            for (l, v) in samples {
                family.get_or_create(&l).set(v);
            }
            match unit {
                Some(unit) => reg.register_with_unit(name, help, unit, family),
                None => reg.register(name, help, family),
            }
        }
        let mut out = String::new();
        encode(&mut out, &reg).expect("writing to a String does not fail");
        out
    }

    /// An acknowledged write of durability `level` that took `took`.
    pub fn observe_write(&self, level: Durability, took: Duration) {
        self.write_by_level[level.index()].observe(took.as_secs_f64());
    }
}

/// The gauges of what this replica holds back now.
pub fn view_gauges(scrape: &mut Scrape, view: &crate::view::EngineView) {
    scrape.gauge("parked_streams", "Streams parked now (see /v1/status: streams)", view.parked.len() as u64);
    scrape.gauge("origin_gaps", "Origins whose changesets wait behind a gap now", view.gaps.len() as u64);
    scrape.gauge(
        "context_waits",
        "Origins whose next changeset waits until this replica applies what its mark says every region had",
        view.context_waits as u64,
    );
    scrape.gauge("changesets_waiting", "Changesets waiting behind gaps now", view.waiting as u64);
    scrape.gauge(
        "dead_letters_recorded",
        "Dead letters ever recorded by this replica (see /v1/dead-letters)",
        view.dead_letters,
    );
}

pub fn inc(c: &Counter) {
    c.inc();
}

pub fn add(c: &Counter, n: u64) {
    c.inc_by(n);
}
