//! What is checked before a replay starts, without changing anything: that the backup
//! is of the region, where the point cuts (a sequence is resolved through its
//! message's time), that the backup lies before the point, and how far each stream can
//! be replayed from the backup's cursor with what it still holds.

use std::collections::BTreeMap;

use concord_core::changeset::stored;
use concord_core::hlc::Hlc;
use concord_core::ids::RegionId;
use concord_core::merkle::{EntriesRequest, LEAVES, Table};
use concord_storage::Store;

use super::cut::{self, Cut, Point};
use super::logs::Logs;
use super::{ReplayError, StreamReplay};

/// Bytes of registers read per page while looking for the backup's latest change.
const SCAN_PAGE_BYTES: u64 = 4 << 20;

/// A backup of another region's node would be replayed against the wrong log.
pub(super) fn check_region(cursors: &BTreeMap<String, u64>, own: &str, region: &RegionId) -> Result<(), ReplayError> {
    let logs: Vec<&String> = cursors.keys().filter(|s| s.starts_with("CONCORD_LOG_")).collect();
    if logs.is_empty() || logs.iter().any(|s| *s == own) {
        return Ok(());
    }
    Err(ReplayError::Refused(format!(
        "the backup follows {} but not {own}: it is not a backup of a node of {region}",
        logs.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    )))
}

/// The point against the logs: a time as it is; a sequence through its message's time.
pub(super) async fn resolve(
    logs: &Logs,
    own: &str,
    cursors: &BTreeMap<String, u64>,
    point: Point,
) -> Result<Cut, ReplayError> {
    match point {
        Point::UntilTime(t) => {
            if t > chrono::Utc::now() {
                return Err(ReplayError::Refused(format!(
                    "{t} is in the future: the logs still grow up to it; name a time that has passed"
                )));
            }
            Cut::until_time(t).map_err(ReplayError::Refused)
        }
        Point::UntilSeq(n) => {
            let cursor = cursors.get(own).copied().unwrap_or(0);
            if n <= cursor {
                return Err(ReplayError::Refused(format!(
                    "the backup holds {own} through sequence {cursor} already: it cannot be taken back to before \
                     sequence {n}; restore from an older backup"
                )));
            }
            let last = logs.extent(own).await?.last_seq;
            if n > last {
                return Err(ReplayError::Refused(format!("{own} ends at sequence {last}: there is no message {n}")));
            }
            let Some(bad) = logs.message(own, n).await? else {
                return Err(ReplayError::LogsTooShort(format!(
                    "{own} no longer holds message {n} (retention or deleted): its time, where the other regions' \
                     mirrors stop, is unknown; restore --until-time instead"
                )));
            };
            Cut::until_seq(n, &bad).map_err(ReplayError::Refused)
        }
    }
}

/// The latest change the backup holds: of the message at each stream's cursor (the
/// latest a stream gave it), and of every register it stores.
pub(super) async fn backup_latest(
    logs: &Logs,
    store: &Store,
    streams: &BTreeMap<String, RegionId>,
    cursors: &BTreeMap<String, u64>,
) -> Result<Option<Hlc>, ReplayError> {
    let mut latest = latest_register(store)?;
    // (A stream no longer in the region's JetStream counts by its registers alone.)
    for (stream, &seq) in cursors.iter().filter(|(s, seq)| **seq > 0 && streams.contains_key(*s)) {
        let at_cursor = logs.message(stream, seq).await?;
        latest = latest.max(at_cursor.as_deref().and_then(cut::latest_hlc));
    }
    Ok(latest)
}

/// The latest HLC time of any version of any register in `store` (one pass, paged).
fn latest_register(store: &Store) -> Result<Option<Hlc>, ReplayError> {
    let mut req =
        EntriesRequest { leaves: (0..LEAVES).collect(), after: None, bytes_max: SCAN_PAGE_BYTES, with_applied: false };
    let mut latest = None;
    loop {
        let page = store.entries_in(&req)?;
        for e in page.entries.iter().filter(|e| e.table == Table::Kv) {
            let register = stored::decode(&e.value)
                .map_err(|err| ReplayError::Local(format!("a register of the backup does not decode: {err}")))?;
            latest = latest.max(register.versions().iter().map(|v| v.hlc).max());
        }
        match page.next {
            Some(next) if next.0 == Table::Kv => req.after = Some(next),
            _ => return Ok(latest),
        }
    }
}

pub(super) fn check_before(
    cut: &Cut,
    backup_latest: Option<Hlc>,
    cursors: &BTreeMap<String, u64>,
) -> Result<(), ReplayError> {
    match backup_latest {
        Some(latest) if !cut.after(latest) => Err(ReplayError::Refused(format!(
            "the point (before {}) is before the backup: the backup holds a change made at {} (cursors: {}); \
             a restore cannot take it back: restore from an older backup",
            cut::rfc3339(cut.before.wall_ms),
            cut::rfc3339(latest.wall_ms),
            cursors.iter().map(|(s, c)| format!("{s}={c}")).collect::<Vec<_>>().join(" ")
        ))),
        _ => Ok(()),
    }
}

/// How far `stream` can be replayed, checked against what it still holds.
pub(super) async fn plan(
    logs: &Logs,
    stream: &str,
    region: &RegionId,
    own: bool,
    cut: &Cut,
    from: u64,
) -> Result<StreamReplay, ReplayError> {
    let extent = logs.extent(stream).await?;
    if extent.last_seq < from {
        return Err(ReplayError::LogsTooShort(format!(
            "{stream} ends at sequence {} but the backup read it through {from}: the stream was made anew since",
            extent.last_seq
        )));
    }
    let through = match (own, cut.own_through) {
        (true, Some(n)) => n,
        _ => extent.last_seq,
    };
    if through > from && extent.first_seq > from + 1 {
        return Err(ReplayError::LogsTooShort(format!(
            "{stream} no longer holds sequences {}..{} (its oldest is {}; retention removed the rest), which come \
             right after the backup's cursor {from}: the state at the point cannot be rebuilt from this backup; \
             use a newer backup",
            from + 1,
            extent.first_seq - 1,
            extent.first_seq
        )));
    }
    Ok(StreamReplay {
        stream: stream.to_string(),
        region: region.clone(),
        from,
        through,
        replayed: 0,
        stopped_at: None,
        upstream_lag: extent.upstream_lag,
    })
}
