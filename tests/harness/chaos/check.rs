//! The checker: reads a run's history and final state, and lists every violation of
//! Concord's guarantees it finds (an empty list: the run is clean).
//!
//! 1. Convergence: every node answered, showed the same applied vector, and shows the
//!    same versions of every register, the same documents and the same key list.
//! 2. Registers: every acknowledged write is current (one of the key's versions), or
//!    causally overwritten (the key's joined version vector covers its `origin:seq`), or
//!    in the conflict log as a competing version. The value a key shows is one that was
//!    written (the setup's or a client's). A client's own keys (no one else writes them)
//!    show exactly its last acknowledged write, or a later write whose outcome was
//!    unknown; so a delete stays deleted unless rewritten.
//! 3. Documents: every acknowledged property is there with its value unless a delete of
//!    it was sent; every acknowledged delete stays deleted; nothing appears that no
//!    client wrote.
//! 4. The counter equals the sum of acknowledged increments, plus at most the sum of
//!    those whose outcome was unknown.
//! 5. Sessions: a read's answer carries a token covering the one the request carried
//!    (the node had applied everything the session saw), and a read of a client's own key never shows
//!    something older than the client's last acknowledged write of it.
//! 6. Fencing: in each region's log, origins (epochs) never interleave: once a newer
//!    epoch appended, no older one appends again, and each epoch's changes are numbered
//!    1, 2, 3, ... without gaps or repeats. An entry of another origin that does not
//!    start at change 1 is void, as the nodes judge it (stored after a message that is
//!    not its predecessor: the tail of a pipelined batch whose first append was refused
//!    because another epoch had appended): no node applies it, so it is left out of the
//!    epoch order, and whether any write it held was acknowledged is the registers'
//!    and documents' check.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::history::{Event, Meta, Op, OpKind, Outcome};
use super::state::FinalState;
use super::{COUNTER, COUNTER_PROP};

/// `origin:seq` split.
fn dot(id: &str) -> Option<(String, u64)> {
    let (o, s) = id.rsplit_once(':')?;
    Some((o.to_string(), s.parse().ok()?))
}

/// The joined version vector of a `format=versions` body, as origin -> seq.
fn joined_vv(body: &Value) -> BTreeMap<String, u64> {
    let mut vv: BTreeMap<String, u64> = BTreeMap::new();
    for v in body["versions"].as_array().into_iter().flatten() {
        for (o, s) in v["vv"].as_object().into_iter().flatten() {
            let s = s.as_u64().unwrap_or(0);
            let e = vv.entry(o.clone()).or_default();
            *e = (*e).max(s);
        }
    }
    vv
}

fn version_ids(body: &Value) -> BTreeSet<String> {
    body["versions"].as_array().into_iter().flatten().filter_map(|v| v["id"].as_str().map(String::from)).collect()
}

/// What a register shows: `None` when absent or its winner is a delete.
fn shown_value(body: &Option<Value>) -> Option<String> {
    let body = body.as_ref()?;
    let winner = body["versions"].as_array()?.first()?;
    if winner["deleted"].as_bool().unwrap_or(false) {
        return None;
    }
    winner["value"].as_str().map(String::from)
}

/// The normalized versions of a register, for comparing replicas.
fn versions_of(body: &Option<Value>) -> Option<Vec<(String, Value, Value)>> {
    let body = body.as_ref()?;
    let mut out: Vec<(String, Value, Value)> = body["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["id"].as_str().unwrap_or("").to_string(), v["value"].clone(), v["vv"].clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Some(out)
}

pub fn check(events: &[Event], state: &FinalState) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(meta) = events.iter().find_map(|e| if let Event::Meta(m) = e { Some(m.clone()) } else { None }) else {
        return vec!["the history has no meta line".into()];
    };
    let ops: Vec<&Op> = events.iter().filter_map(|e| if let Event::Op(o) = e { Some(o) } else { None }).collect();
    convergence(&meta, state, &mut problems);
    // Judge by one node (convergence, above, says whether the others agree): the first
    // that answered.
    let Some((judged, node)) = state.nodes.iter().find(|(_, n)| n.status.is_some()) else {
        problems.push("no node answered at the end".into());
        return problems;
    };
    let conflicts = conflict_versions(state);
    registers(&meta, &ops, node, &conflicts, judged, &mut problems);
    documents(&ops, node, judged, &mut problems);
    sessions(&ops, &mut problems);
    fencing(state, &mut problems);
    problems
}

fn convergence(meta: &Meta, state: &FinalState, problems: &mut Vec<String>) {
    if !state.converged {
        problems.push(format!("the replicas did not converge within the wait ({} ms)", state.converge_ms));
    }
    for name in &meta.nodes {
        match state.nodes.get(name) {
            None => problems.push(format!("{name}: no final state")),
            Some(n) if n.status.is_none() => problems.push(format!("{name}: did not answer at the end")),
            Some(n) => {
                for e in &n.errors {
                    problems.push(format!("{name}: {e}"));
                }
            }
        }
    }
    let answered: Vec<(&String, &super::state::NodeState)> =
        state.nodes.iter().filter(|(_, n)| n.status.is_some()).collect();
    let Some((first_name, first)) = answered.first() else { return };
    for (name, n) in &answered[1..] {
        let (a, b) = (&first.status.as_ref().unwrap().applied, &n.status.as_ref().unwrap().applied);
        if a != b {
            problems.push(format!("applied vectors differ: {first_name} {a:?}, {name} {b:?}"));
        }
        for (key, body) in &first.registers {
            let other = n.registers.get(key).cloned().flatten();
            if versions_of(body) != versions_of(&other) {
                problems.push(format!(
                    "register {key} differs: {first_name} {:?}, {name} {:?}",
                    versions_of(body),
                    versions_of(&other)
                ));
            }
        }
        for (key, doc) in &first.docs {
            let other = n.docs.get(key).cloned().flatten();
            if *doc != other {
                problems.push(format!("document {key} differs: {}", doc_diff(first_name, doc, name, &other)));
            }
        }
        if first.listed != n.listed {
            problems.push(format!("key lists differ: {first_name} {:?}, {name} {:?}", first.listed, n.listed));
        }
    }
}

/// The properties two copies of a document disagree on (the first ten).
fn doc_diff(a_name: &str, a: &Option<Value>, b_name: &str, b: &Option<Value>) -> String {
    let props = |d: &Option<Value>| d.as_ref().and_then(|d| d.as_object().cloned()).unwrap_or_default();
    let (pa, pb) = (props(a), props(b));
    let keys: BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| pa.get(*k) != pb.get(*k))
        .map(|k| format!("{k}: {a_name} {:?}, {b_name} {:?}", pa.get(k), pb.get(k)))
        .collect();
    let more = differing.len().saturating_sub(10);
    let mut text = differing.into_iter().take(10).collect::<Vec<_>>().join("; ");
    if more > 0 {
        text.push_str(&format!("; and {more} more"));
    }
    text
}

/// Every version id any node's conflict log names as competing (or cut).
fn conflict_versions(state: &FinalState) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for n in state.nodes.values() {
        for record in &n.conflicts {
            for v in record["versions"].as_array().into_iter().flatten() {
                if let Some(id) = v["id"].as_str() {
                    ids.insert(id.to_string());
                }
            }
            for id in record["cut"].as_array().into_iter().flatten().filter_map(|v| v.as_str()) {
                ids.insert(id.to_string());
            }
        }
    }
    ids
}

fn registers(
    meta: &Meta,
    ops: &[&Op],
    node: &super::state::NodeState,
    conflicts: &BTreeSet<String>,
    judged: &str,
    problems: &mut Vec<String>,
) {
    // Every value ever sent to a key: a key may show only one of these.
    let mut written: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (k, v) in &meta.fixed {
        written.entry(k).or_default().insert(v);
    }
    for op in ops.iter().filter(|o| o.kind == OpKind::Put && o.result != Outcome::Fail) {
        written.entry(&op.key).or_default().insert(op.value.as_deref().unwrap_or(""));
    }
    for (key, value) in &meta.fixed {
        match node.registers.get(key) {
            Some(body) if shown_value(body).as_deref() == Some(value.as_str()) => {}
            other => problems.push(format!(
                "{judged}: setup key {key} should show {value:?} (written once, never again): shows {:?}",
                other.map(shown_value)
            )),
        }
    }
    for (key, body) in &node.registers {
        if let Some(v) = shown_value(body)
            && !written.get(key.as_str()).is_some_and(|w| w.contains(v.as_str()))
        {
            problems.push(format!("{judged}: {key} shows {v:?}, which no one wrote there"));
        }
    }
    // Rule 2: acknowledged writes are current, overwritten causally, or conflicts.
    for op in ops.iter().filter(|o| matches!(o.kind, OpKind::Put | OpKind::Del) && o.result == Outcome::Ok) {
        let Some((origin, seq)) = op.version.as_deref().and_then(dot) else { continue };
        let id = format!("{origin}:{seq}");
        let body = node.registers.get(&op.key).cloned().flatten();
        let accounted = match &body {
            Some(b) => version_ids(b).contains(&id) || joined_vv(b).get(&origin).is_some_and(|s| *s >= seq),
            // Gone entirely: only a delete (its tombstone collected) may explain that.
            None => ops.iter().any(|o| o.key == op.key && o.kind == OpKind::Del && o.result != Outcome::Fail),
        };
        if !accounted && !conflicts.contains(&id) {
            problems.push(format!(
                "{judged}: acknowledged {:?} {} = {:?} ({id}, client {}, at {} ms) is lost: not current, not \
                 overwritten by a write that saw it, not in the conflict log; the key shows {:?}",
                op.kind,
                op.key,
                op.value,
                op.client,
                op.end_ms,
                body.as_ref().map(version_ids)
            ));
        }
    }
    // Own keys: exactly the last acknowledged write, or a later one of unknown outcome.
    let mut own: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.key.starts_with("own/") && matches!(o.kind, OpKind::Put | OpKind::Del)) {
        own.entry(&op.key).or_default().push(op);
    }
    for (key, writes) in own {
        let shown = shown_value(&node.registers.get(key).cloned().flatten());
        let allowed = allowed_after_last_ack(&writes);
        if !allowed.contains(&shown) {
            problems.push(format!(
                "{judged}: own key {key} shows {shown:?}; its writer's last acknowledged write and any later \
                 unknown ones allow only {allowed:?}"
            ));
        }
    }
}

/// The values a key written only by one sequential client may show, after `writes`
/// (in its order): its last acknowledged write's, or any later unknown-outcome one's
/// (`None`: deleted or absent).
fn allowed_after_last_ack(writes: &[&Op]) -> BTreeSet<Option<String>> {
    let last_ack = writes.iter().rposition(|o| o.result == Outcome::Ok);
    let mut allowed = BTreeSet::new();
    let from = match last_ack {
        Some(i) => {
            allowed.insert(if writes[i].kind == OpKind::Put { writes[i].value.clone() } else { None });
            i + 1
        }
        None => {
            allowed.insert(None);
            0
        }
    };
    for w in &writes[from..] {
        if w.result == Outcome::Unknown {
            allowed.insert(if w.kind == OpKind::Put { w.value.clone() } else { None });
        }
    }
    allowed
}

fn documents(ops: &[&Op], node: &super::state::NodeState, judged: &str, problems: &mut Vec<String>) {
    let mut deleted: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut sets: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for op in ops {
        let (Some(prop), key) = (op.prop.as_deref(), op.key.as_str()) else { continue };
        match (&op.kind, &op.result) {
            (OpKind::DocDel, Outcome::Ok | Outcome::Unknown) => {
                deleted.insert((key, prop));
            }
            (OpKind::DocSet, Outcome::Ok | Outcome::Unknown) => {
                sets.insert((key, prop), op.value.as_deref().unwrap_or(""));
            }
            _ => {}
        }
    }
    for op in ops.iter().filter(|o| o.result == Outcome::Ok) {
        let Some(prop) = op.prop.as_deref() else { continue };
        let doc = node.docs.get(&op.key).cloned().flatten();
        let shown = doc.as_ref().and_then(|d| d.get(prop)).cloned();
        match op.kind {
            OpKind::DocSet
                if !deleted.contains(&(op.key.as_str(), prop))
                    && shown.as_ref().and_then(|v| v.as_str()) != op.value.as_deref() =>
            {
                problems.push(format!(
                    "{judged}: acknowledged set {}.{prop} = {:?} (client {}, at {} ms) is lost: shows {shown:?}",
                    op.key, op.value, op.client, op.end_ms
                ));
            }
            OpKind::DocDel if shown.is_some() => problems.push(format!(
                "{judged}: acknowledged delete of {}.{prop} (client {}, at {} ms) did not stay: shows {shown:?}",
                op.key, op.client, op.end_ms
            )),
            _ => {}
        }
    }
    for (key, doc) in &node.docs {
        for (prop, value) in doc.as_ref().and_then(|d| d.as_object()).into_iter().flatten() {
            if key == COUNTER {
                continue;
            }
            if sets.get(&(key.as_str(), prop.as_str())).is_none_or(|v| value.as_str() != Some(v)) {
                problems.push(format!("{judged}: document {key} shows {prop} = {value}, which no one set"));
            }
        }
    }
    // The counter.
    let (mut acked, mut unknown) = (0i64, 0i64);
    for op in ops.iter().filter(|o| o.kind == OpKind::Inc) {
        match op.result {
            Outcome::Ok => acked += op.by.unwrap_or(0),
            Outcome::Unknown => unknown += op.by.unwrap_or(0),
            Outcome::Fail => {}
        }
    }
    let shown = node.docs.get(COUNTER).cloned().flatten().and_then(|d| d.get(COUNTER_PROP).and_then(|v| v.as_i64()));
    match shown {
        Some(n) if n >= acked && n <= acked + unknown => {}
        other => problems.push(format!(
            "{judged}: the counter shows {other:?}; acknowledged increments sum to {acked}, unknown ones to {unknown}"
        )),
    }
}

fn sessions(ops: &[&Op], problems: &mut Vec<String>) {
    let mut by_client: BTreeMap<usize, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_client.entry(op.client).or_default().push(op);
    }
    for (client, ops) in by_client {
        for (i, op) in ops.iter().enumerate() {
            // Reads wait for the session; writes do not (a write is ordered by its
            // region's leader, not by what the session read elsewhere).
            if op.kind == OpKind::Read
                && op.result == Outcome::Ok
                && let (Ok(sent), Some(Ok(got))) = (
                    concord_core::token::decode(&op.token_in),
                    op.token_out.as_deref().map(concord_core::token::decode),
                )
                && !got.dominates(&sent)
            {
                problems.push(format!(
                    "client {client}: {:?} {} at {} answered with token {} older than the session's {}",
                    op.kind,
                    op.key,
                    op.node,
                    op.token_out.as_deref().unwrap_or(""),
                    op.token_in
                ));
            }
            if op.kind != OpKind::Read || op.result != Outcome::Ok {
                continue;
            }
            let writes: Vec<&Op> = ops[..i]
                .iter()
                .filter(|w| w.key == op.key && matches!(w.kind, OpKind::Put | OpKind::Del))
                .copied()
                .collect();
            let allowed = allowed_after_last_ack(&writes);
            if !allowed.contains(&op.value) {
                problems.push(format!(
                    "client {client}: read of {} at {} ({} ms) went back in time: showed {:?}, the session's own \
                     writes allow only {allowed:?}",
                    op.key, op.node, op.start_ms, op.value
                ));
            }
        }
    }
}

fn fencing(state: &FinalState, problems: &mut Vec<String>) {
    let epoch = |o: &str| o.rsplit_once('.').and_then(|(_, e)| e.parse::<u64>().ok());
    for (region, log) in &state.logs {
        // Each origin's next sequence due, and the origin writing now (the newest epoch).
        let mut next: BTreeMap<&str, u64> = BTreeMap::new();
        let mut current: Option<&str> = None;
        // Origins found void, from the sequence on: a changeset stored right after a
        // message of another origin, past its origin's next sequence, is the tail of a
        // pipelined batch whose predecessor the log refused (a deposed or a new leader's
        // message took its place): every replica dead-letters it and all of its origin
        // after it (concord-engine's classify, "void"); its writes were never
        // acknowledged, which the checks of acknowledged writes hold to.
        let mut void_from: BTreeMap<&str, u64> = BTreeMap::new();
        let mut before: Option<&str> = None;
        for e in log {
            let (origin, at) = (e.origin.as_str(), e.stream_seq);
            let previous = before.replace(origin);
            if origin == "undecodable" {
                problems.push(format!("{region}'s log holds an undecodable entry at {at}"));
                continue;
            }
            if let Some(from) = void_from.get(origin) {
                if e.first_seq < *from {
                    problems.push(format!(
                        "{region}'s log: {origin} appends {} after its void changeset at {from} (stream seq {at})",
                        e.first_seq
                    ));
                }
                continue;
            }
            let after_another = previous != Some(origin);
            match next.get(origin).copied() {
                // A new epoch (or the log's first entry).
                None if e.first_seq == 1 || current.is_none() => {
                    if let Some(o) = current
                        && epoch(o) >= epoch(origin)
                    {
                        problems.push(format!(
                            "{region}'s log: epoch {origin} appends after epoch {o} (stream seq {at}): epochs must grow"
                        ));
                    }
                    if e.first_seq != 1 {
                        problems.push(format!(
                            "{region}'s log: epoch {origin} starts at change {}, not 1 (stream seq {at})",
                            e.first_seq
                        ));
                    }
                    current = Some(origin);
                }
                // A new epoch whose first append the log refused: the rest is void.
                None => {
                    void_from.insert(origin, e.first_seq);
                    continue;
                }
                Some(due) if e.first_seq > due && after_another => {
                    void_from.insert(origin, e.first_seq);
                    continue;
                }
                Some(_) if current != Some(origin) => problems.push(format!(
                    "{region}'s log: {origin} appended again at stream seq {at} after a newer epoch did (epoch \
                     {origin} appends after epoch {}: epochs must grow)",
                    current.unwrap_or("?")
                )),
                Some(due) if e.first_seq != due => problems.push(format!(
                    "{region}'s log: {origin} continues at {} where {due} was due (stream seq {at})",
                    e.first_seq
                )),
                Some(_) => {}
            }
            next.insert(origin, e.first_seq + e.changes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::state::LogEntry;

    fn log(entries: &[(&str, u64, u64)]) -> FinalState {
        let entries = entries
            .iter()
            .enumerate()
            .map(|(i, (origin, first_seq, changes))| LogEntry {
                stream_seq: i as u64 + 1,
                origin: origin.to_string(),
                first_seq: *first_seq,
                changes: *changes,
            })
            .collect();
        FinalState { logs: BTreeMap::from([("us-east".to_string(), entries)]), ..Default::default() }
    }

    fn fencing_problems(entries: &[(&str, u64, u64)]) -> Vec<String> {
        let mut problems = Vec::new();
        fencing(&log(entries), &mut problems);
        problems
    }

    #[test]
    fn a_clean_handover_passes() {
        assert_eq!(
            fencing_problems(&[("us-east.1", 1, 2), ("us-east.1", 3, 1), ("us-east.2", 1, 1)]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_tail_of_a_refused_pipelined_batch_is_void_not_a_violation() {
        // us-east.2's append of change 1 was refused (us-east.1 had appended), its
        // append of change 2 (expecting the sequence after change 1) then landed.
        let problems = fencing_problems(&[
            ("us-east.1", 1, 1),
            ("us-east.1", 2, 1),
            ("us-east.2", 2, 1),
            ("us-east.2", 3, 1),
            ("us-east.3", 1, 1),
            // us-east.1's deposed leader: its append of change 3 was refused by
            // us-east.3's message, its append of change 4 landed after it.
            ("us-east.1", 4, 1),
        ]);
        assert_eq!(problems, Vec::<String>::new());
    }

    #[test]
    fn a_new_leaders_own_refused_tail_is_void_not_a_violation() {
        // us-east.2 took over; a retried append of the deposed us-east.1 took the place
        // us-east.2's change 3 expected, so 3 was refused and its pipelined 4 and 5 were
        // stored behind it (a full CI run's seed 6); us-east.2 goes on as us-east.3.
        let problems = fencing_problems(&[
            ("us-east.1", 1, 2),
            ("us-east.2", 1, 1),
            ("us-east.2", 2, 1),
            ("us-east.1", 4, 1),
            ("us-east.2", 4, 1),
            ("us-east.2", 5, 1),
            ("us-east.3", 1, 1),
        ]);
        assert_eq!(problems, Vec::<String>::new());
    }

    #[test]
    fn a_void_origin_appending_an_earlier_change_is_reported() {
        let problems = fencing_problems(&[
            ("us-east.1", 1, 1),
            ("us-east.2", 1, 1),
            ("us-east.1", 3, 1),
            ("us-east.2", 3, 1),
            ("us-east.2", 2, 1),
        ]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("appends 2 after its void changeset at 3"), "{problems:?}");
    }

    #[test]
    fn a_gap_right_after_its_own_origin_is_reported() {
        // Stored right after its origin's message, a skipped sequence is the writer's.
        let problems = fencing_problems(&[("us-east.1", 1, 1), ("us-east.2", 1, 1), ("us-east.2", 3, 1)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("continues at 3 where 2 was due"), "{problems:?}");
    }

    #[test]
    fn a_gap_within_an_epoch_is_reported() {
        let problems = fencing_problems(&[("us-east.1", 1, 1), ("us-east.1", 3, 1)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("continues at 3 where 2 was due"), "{problems:?}");
    }

    #[test]
    fn an_old_epoch_appending_again_is_reported() {
        let problems = fencing_problems(&[("us-east.1", 1, 1), ("us-east.2", 1, 1), ("us-east.1", 1, 1)]);
        assert!(problems.iter().any(|p| p.contains("epochs must grow")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("appended again")), "{problems:?}");
    }

    #[test]
    fn an_old_epochs_next_change_after_a_newer_epoch_is_reported() {
        // In sequence for its origin, but stored after a newer epoch's message, right
        // after its own predecessor's place: replicas would apply it (not void).
        let problems = fencing_problems(&[("us-east.1", 1, 1), ("us-east.2", 1, 1), ("us-east.1", 2, 1)]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("appended again at stream seq 3 after a newer epoch did"), "{problems:?}");
    }

    #[test]
    fn a_log_that_starts_past_change_1_is_reported() {
        let problems = fencing_problems(&[("us-east.1", 4, 1)]);
        assert!(problems.iter().any(|p| p.contains("starts at change 4, not 1")), "{problems:?}");
    }
}
