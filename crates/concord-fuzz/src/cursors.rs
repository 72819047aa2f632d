//! Cursors and filters of the listing routes, against a replica's real store:
//! `GET /v1/kv/{bucket}?prefix=&after=&limit=`, `GET /v1/conflicts?bucket=&since=&before=`
//! and `GET /v1/dead-letters?before=` (over NATS: the `Concord-Prefix`, `Concord-After`,
//! `Concord-Since`, `Concord-Before` headers).

use std::sync::OnceLock;

use concord_core::input;
use concord_storage::{ConflictQuery, Store};

use crate::scratch::ScratchStore;
use crate::seeds;

/// The input is lines: `bucket`, `prefix`, `after`, `since`, `before` (a conflicts
/// cursor), `before` (a dead-letters cursor); a missing line is an absent parameter.
/// Each listing answers or refuses the cursor, without a panic; what it answers is
/// ordered, filtered and bounded as asked; and following its cursors page by page gives
/// exactly the one long listing.
pub fn cursors(data: &[u8]) {
    // The front ends decode query values lossily into strings (headers are strings).
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let mut field = || lines.next().map(str::to_string);
    let (bucket, prefix, after, since, before, dead_before) = (field(), field(), field(), field(), field(), field());
    let store = populated_store();
    if let Some(bucket) = bucket.as_deref().filter(|b| input::check_bucket(b).is_ok()) {
        keys(store, bucket, prefix.as_deref().unwrap_or(""), after.as_deref());
    }
    // As the route: an RFC 3339 time, or 400 (then nothing is listed; the store is
    // asked anyway, with no time, to fuzz the cursor).
    let since = since.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.to_utc());
    let q = ConflictQuery { bucket: bucket.filter(|b| !b.is_empty()), key: None, since, before, limit: 1_000 };
    conflicts(store, q);
    // As the route: a number, or 400.
    if let Some(before) = dead_before.map(|b| b.parse::<u64>()) {
        dead_letters(store, before.ok());
    }
}

/// Keys: ascending, under the prefix, after the cursor, live; pages of 2 (each asked
/// for one more, as the route does to know whether there is more) add up to the listing.
fn keys(store: &Store, bucket: &str, prefix: &str, after: Option<&str>) {
    let all = store.list_kv(bucket, prefix, after, 10_000).expect("the replica's store is not corrupt");
    assert!(all.windows(2).all(|w| w[0] < w[1]), "keys ascend: {all:?}");
    for key in &all {
        assert!(key.starts_with(prefix), "{key:?} is under the prefix {prefix:?}");
        assert!(after.is_none_or(|a| key.as_str() > a), "{key:?} is after {after:?}");
        let reg = store.get_kv(bucket, key).expect("not corrupt").expect("a listed key exists");
        assert!(!reg.winner().is_tombstone(), "{key:?} is deleted but listed");
    }
    const PAGE: usize = 2;
    let (mut paged, mut cursor) = (Vec::new(), after.map(str::to_string));
    loop {
        let mut page = store.list_kv(bucket, prefix, cursor.as_deref(), PAGE + 1).expect("not corrupt");
        let more = page.len() > PAGE;
        page.truncate(PAGE);
        cursor = page.last().cloned();
        paged.extend(page);
        if !more {
            break;
        }
        assert!(paged.len() <= all.len(), "paging runs past the listing");
    }
    assert_eq!(paged, all, "pages add up to the listing");
}

/// Conflict records: a cursor this node did not give out is refused; otherwise newest
/// first, since the time, in the bucket; pages of 1 add up to the listing, and every
/// `next` cursor is one the route accepts.
fn conflicts(store: &Store, q: ConflictQuery) {
    let Ok((all, next)) = store.list_conflicts(&q) else {
        assert!(q.before.is_some(), "only a cursor is refused");
        return;
    };
    assert!(next.is_none(), "fewer than 1,000 records: one page");
    let since_ms = q.since.map_or(0, |t| t.timestamp_millis().max(0));
    for r in &all {
        assert!(r.detected_at.timestamp_millis() >= since_ms, "{} is before since", r.detected_at);
        assert!(q.bucket.as_ref().is_none_or(|b| *b == r.bucket), "{} is not in the bucket", r.bucket);
    }
    assert!(all.windows(2).all(|w| w[0].detected_at >= w[1].detected_at), "newest first");
    let (mut paged, mut cursor) = (Vec::new(), q.before.clone());
    loop {
        let page_q = ConflictQuery { before: cursor.clone(), limit: 1, ..q.clone() };
        let (page, next) = store.list_conflicts(&page_q).expect("a cursor this node gave out is accepted");
        paged.extend(page);
        let Some(next) = next else { break };
        assert!(next.len() == 48 && next.bytes().all(|c| c.is_ascii_hexdigit()), "the route takes {next:?}");
        assert!(paged.len() <= all.len(), "paging runs past the listing");
        cursor = Some(next);
    }
    assert_eq!(paged, all, "pages add up to the listing");
}

/// Dead letters: below the cursor, newest first, as many as asked.
fn dead_letters(store: &Store, before: Option<u64>) {
    let letters = store.dead_letters(before, 100).expect("not corrupt");
    assert!(letters.iter().all(|d| before.is_none_or(|b| d.id < b)), "every id is below the cursor");
    assert!(letters.windows(2).all(|w| w[0].id > w[1].id), "newest first");
}

/// The store of the seeds' populated replica, built once per process. Its directory is
/// removed at once: the open database keeps the file alive, and nothing is left behind.
fn populated_store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let scratch = ScratchStore::new();
        seeds::populated(Some(&scratch.store));
        scratch.store.clone()
    })
}
