//! `concord inspect`: read a data directory offline (a restored one above all: no node
//! serves it, so that none catches up past its point), and list a region's log to find
//! the sequence of a bad write.
//!
//! `--data-dir DIR kv|ls|doc|state` opens DIR's store directly (no node may run on it:
//! the database is locked while one does) and reads what a node would answer: a key's
//! current value (the winning version), the live keys of a bucket, a document as JSON,
//! the applied vector, cursors and restore marker. `log --nats URL --region R` reads the
//! region's log (or a mirror) read-only and prints each changeset: sequence, time,
//! origin and what it changes.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use concord_core::changeset::{ChangeBody, Changeset};
use concord_node::replay::{cut::rfc3339, logs::Logs, marker, stream_name};
use concord_storage::Store;

/// Most keys `ls` prints, unless told.
const LS_LIMIT_DEFAULT: usize = 1000;
/// Messages `log --bucket` reads unless told where to start.
const FILTERED_SCAN_DEFAULT: u64 = 10_000;
/// Changes described per changeset by `log`.
const CHANGES_SHOWN_MAX: usize = 5;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// The data directory to read (no node may run on it): before kv, ls, doc, state.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// A key's value, as `concord get` prints it; exit 1 when it is absent or deleted.
    Kv { bucket: String, key: String },
    /// The live keys of a bucket.
    Ls {
        bucket: String,
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = LS_LIMIT_DEFAULT)]
        limit: usize,
    },
    /// A document as JSON.
    Doc { bucket: String, key: String },
    /// The applied vector, the stream cursors, and the restore marker if any.
    State,
    /// The changesets of a region's log (or of a mirror, --stream): sequence, time,
    /// origin, changes. Finds the bad write's sequence for `restore --until-seq`.
    Log {
        /// The region's NATS.
        #[arg(long, value_name = "URL")]
        nats: String,
        /// The region whose log to read.
        #[arg(long)]
        region: String,
        /// Another stream of the region's JetStream (a mirror: CONCORD_MIRROR_<REGION>).
        #[arg(long)]
        stream: Option<String>,
        /// The first sequence to read (default: the last --limit messages; with
        /// --bucket, the last 10000).
        #[arg(long)]
        from: Option<u64>,
        /// Most changesets printed.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// Only changesets that change this bucket...
        #[arg(long)]
        bucket: Option<String>,
        /// ...and this key.
        #[arg(long, requires = "bucket")]
        key: Option<String>,
    },
}

pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    if let What::Log { nats, region, stream, from, limit, bucket, key } = args.what {
        let stream = stream.unwrap_or_else(|| stream_name(&region));
        return log(&nats, &stream, from, limit, bucket.as_deref(), key.as_deref()).await;
    }
    let Some(dir) = args.data_dir else { bail!("give the data directory to read: --data-dir DIR") };
    if !dir.join("state.redb").is_file() {
        bail!("{} holds no node's state (no state.redb)", dir.display());
    }
    let store = Store::open(&dir).with_context(|| format!("opening {} (is a node running on it?)", dir.display()))?;
    match args.what {
        What::Kv { bucket, key } => match store.get_kv(&bucket, &key)?.and_then(|r| r.winner().value.clone()) {
            Some(v) => println!("{}", String::from_utf8_lossy(&v)),
            None => bail!("{bucket}/{key} is absent or deleted in {}", dir.display()),
        },
        What::Ls { bucket, prefix, after, limit } => {
            for key in store.list_kv(&bucket, &prefix, after.as_deref(), limit)? {
                println!("{key}");
            }
        }
        What::Doc { bucket, key } => {
            let Some(saved) = store.get_doc(&bucket, &key)? else {
                bail!("no document {bucket}/{key} in {}", dir.display());
            };
            let doc = concord_core::doc::load_doc(&saved).with_context(|| format!("the document {bucket}/{key}"))?;
            println!("{}", serde_json::to_string_pretty(&concord_core::doc::to_json(&doc))?);
        }
        What::State => state(&store, &dir)?,
        What::Log { .. } => unreachable!("answered above"),
    }
    Ok(())
}

fn state(store: &Store, dir: &Path) -> anyhow::Result<()> {
    println!("applied: {}", super::describe(store)?);
    for (stream, seq) in store.cursors()? {
        println!("cursor {stream}: {seq}");
    }
    match marker::read(dir).map_err(anyhow::Error::msg)? {
        Some(m) => println!(
            "restored to a point ({}; cut at {}; {:?}): see {}",
            m.point,
            m.cut_time,
            m.state,
            marker::path(dir).display()
        ),
        None => println!("not restored to a point (a node started here catches up from the logs)"),
    }
    Ok(())
}

async fn log(
    nats: &str,
    stream: &str,
    from: Option<u64>,
    limit: u64,
    bucket: Option<&str>,
    key: Option<&str>,
) -> anyhow::Result<()> {
    let logs = Logs::connect(nats).await?;
    let extent = logs.extent(stream).await?;
    if extent.last_seq < extent.first_seq {
        println!("{stream} holds no messages (it ended at {})", extent.last_seq);
        return Ok(());
    }
    let window = if bucket.is_some() { FILTERED_SCAN_DEFAULT } else { limit };
    let from = from.unwrap_or(extent.last_seq.saturating_sub(window - 1)).max(extent.first_seq);
    if from > extent.last_seq {
        println!("{stream} ends at {}", extent.last_seq);
        return Ok(());
    }
    let mut reader = logs.read_from(stream, from).await?;
    let mut shown = 0;
    loop {
        let (seq, payload) = reader.next().await?;
        if let Some(line) = describe(seq, &payload, bucket, key) {
            println!("{line}");
            shown += 1;
        }
        if seq >= extent.last_seq || shown >= limit {
            return Ok(());
        }
    }
}

/// One line for the message `seq`, or `None` when the filter leaves it out.
fn describe(seq: u64, payload: &[u8], bucket: Option<&str>, key: Option<&str>) -> Option<String> {
    let cs = match Changeset::decode(payload) {
        Ok(cs) => cs,
        Err(e) => return bucket.is_none().then(|| format!("{seq:>8}  (not a changeset this build reads: {e})")),
    };
    let wanted = |b: &str, k: &str| bucket.is_none_or(|want| want == b) && key.is_none_or(|want| want == k);
    if !cs.changes.iter().any(|c| wanted(&c.bucket, &c.key)) {
        return None;
    }
    let time = cs.changes.iter().map(|c| c.hlc.wall_ms).max().map(rfc3339).unwrap_or_default();
    let mut parts: Vec<String> = cs
        .changes
        .iter()
        .filter(|c| wanted(&c.bucket, &c.key))
        .take(CHANGES_SHOWN_MAX)
        .map(|c| {
            let what = if let ChangeBody::Put { value, .. } = &c.body {
                format!("put ({} bytes)", value.len())
            } else if let ChangeBody::Delete { .. } = &c.body {
                "delete".to_string()
            } else if let ChangeBody::Doc { .. } = &c.body {
                "doc".to_string()
            } else {
                "other".to_string()
            };
            format!("{what} {}/{}", c.bucket, c.key)
        })
        .collect();
    let matching = cs.changes.iter().filter(|c| wanted(&c.bucket, &c.key)).count();
    if matching > CHANGES_SHOWN_MAX {
        parts.push(format!("+{} more", matching - CHANGES_SHOWN_MAX));
    }
    Some(format!("{seq:>8}  {time}  {}:{}..{}  {}", cs.origin, cs.first_seq, cs.last_seq(), parts.join(", ")))
}
