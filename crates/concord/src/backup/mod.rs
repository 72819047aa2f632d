//! `concord backup` and `concord restore`: a node's whole state as one file, and a new
//! node built from it, as of the backup or of a later point before a bad write.
//!
//! A backup is the node's snapshot (`GET /v1/snapshot`: every table as of one read
//! transaction, with the applied vector and the stream cursors it corresponds to). It is
//! downloaded with a progress bar to `FILE.partial`, checked by loading it into a scratch
//! store (a backup that does not restore is no backup), made durable, and only then
//! renamed to `FILE`: a failed or interrupted backup never leaves a file that looks
//! whole.
//!
//! `concord restore --from FILE --data-dir DIR` loads it into an empty data directory
//! (refusing one that holds state). A node of the backup's region started on DIR goes
//! on from the backup's cursors: it catches up from the logs like a node that was down
//! since the backup was taken.
//!
//! With a point (`--until-time T` or `--until-seq N`, and the region's NATS), the
//! restore then replays the region's log and mirrors up to the point ([`point`],
//! `concord_node::replay`) and marks DIR so that no node starts on it and catches up
//! past the point. From there the old values are read with `concord inspect`
//! ([`inspect`]) and written back into the live deployment with `--write-back`
//! ([`write_back`]).

pub mod inspect;
mod point;
mod write_back;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use concord_storage::Store;

use crate::bench::bar;
use crate::client::Endpoint;

/// Scratch stores are opened with a small page cache.
const SCRATCH_CACHE_BYTES: usize = 16 << 20;

pub async fn backup(ep: &Endpoint, out: &Path) -> anyhow::Result<()> {
    let url = format!("{}/v1/snapshot", ep.endpoint.trim_end_matches('/'));
    let partial = with_suffix(out, "partial");
    let result = download(&url, &partial).await.and_then(|bytes| {
        let applied = check(&partial).with_context(|| format!("checking the backup {}", partial.display()))?;
        std::fs::rename(&partial, out)
            .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))?;
        sync_dir(out)?;
        Ok((bytes, applied))
    });
    match result {
        Ok((bytes, applied)) => {
            println!("wrote {} ({bytes} bytes) from {}; applied: {applied}", out.display(), ep.endpoint);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// `concord restore`'s flags.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file (`concord backup --out FILE`). Without it, --write-back writes
    /// back from a data directory restored to a point already.
    #[arg(long, required_unless_present = "write_back")]
    pub from: Option<PathBuf>,
    /// The new node's data directory: empty (with --from), or restored to a point
    /// (--write-back alone).
    #[arg(long)]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub point: point::PointArgs,
    #[command(flatten)]
    pub write_back: write_back::WriteBackArgs,
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let point = args.point.resolve()?;
    if point.is_some() && args.from.is_none() {
        bail!("a restore to a point starts from a backup: give --from FILE and an empty --data-dir");
    }
    let store =
        Store::open(&args.data_dir).with_context(|| format!("opening a store in {}", args.data_dir.display()))?;
    if let Some(from) = &args.from {
        load_into_empty(&store, from, &args.data_dir)?;
        match &point {
            None => println!(
                "restored {} into {}; applied: {}\nstart a node of the backup's region with --data-dir {}: it catches up from the logs",
                from.display(),
                args.data_dir.display(),
                describe(&store)?,
                args.data_dir.display()
            ),
            Some(point) => point::replay(&store, from, &args.data_dir, point).await?,
        }
    }
    if let Some(url) = &args.write_back.write_back {
        write_back::run(&store, &args.data_dir, url, &args.write_back).await?;
    }
    Ok(())
}

fn load_into_empty(store: &Store, from: &Path, data_dir: &Path) -> anyhow::Result<()> {
    if !store.applied()?.is_empty() {
        bail!("{} holds a node's state already: restore into an empty data directory", data_dir.display());
    }
    load(store, from, "restore").with_context(|| format!("loading {}", from.display()))
}

/// Stream `url` into `path`, with a progress bar on stderr. Returns the bytes written.
async fn download(url: &str, path: &Path) -> anyhow::Result<u64> {
    // A whole store may take long to send: no overall timeout but a day's.
    let client = crate::http::client(Duration::from_secs(24 * 3600));
    let mut resp = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET {url}: {status}: {}", resp.text().await.unwrap_or_default().trim());
    }
    let total = resp.content_length();
    let mut file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_millis(200) } else { Duration::from_secs(5) };
    let (started, mut shown, mut written) = (Instant::now(), Instant::now(), 0u64);
    while let Some(chunk) = resp.chunk().await.with_context(|| format!("reading {url}"))? {
        file.write_all(&chunk).with_context(|| format!("writing {}", path.display()))?;
        written += chunk.len() as u64;
        if shown.elapsed() >= every {
            shown = Instant::now();
            progress(written, total, started, tty);
        }
    }
    if let Some(total) = total.filter(|t| *t != written) {
        bail!("GET {url}: the answer ended after {written} of {total} bytes");
    }
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    // Done: the whole size is known now (a streamed snapshot comes without a length).
    progress(written, Some(written), started, tty);
    if tty {
        eprintln!();
    }
    Ok(written)
}

fn progress(written: u64, total: Option<u64>, started: Instant, tty: bool) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rate = mib(written) / started.elapsed().as_secs_f64().max(1e-3);
    let (frac, of) = match total {
        Some(t) => (written as f64 / t.max(1) as f64, format!(" of {:.1} MiB", mib(t))),
        None => (0.0, String::new()),
    };
    bar("backup", frac.min(1.0), &format!("{:.1} MiB{of}, {rate:.1} MiB/s", mib(written)), tty);
}

/// Load the backup into a scratch store and describe its applied vector.
fn check(path: &Path) -> anyhow::Result<String> {
    let scratch = tempdir(path)?;
    let result = (|| {
        let store = Store::open_with_cache(&scratch, SCRATCH_CACHE_BYTES)?;
        load(&store, path, "check")?;
        describe(&store)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Load the snapshot in `path` into `store`, streamed from the file, with a progress bar.
pub(crate) fn load(store: &Store, path: &Path, what: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0).max(1);
    let tty = std::io::stderr().is_terminal();
    let every = if tty { Duration::from_millis(200) } else { Duration::from_secs(5) };
    let (started, mut shown) = (Instant::now(), Instant::now());
    let mut progress = |read: u64| {
        if shown.elapsed() >= every {
            shown = Instant::now();
            loaded(what, read, total, started, tty);
        }
    };
    store.import_snapshot_from(&mut std::io::BufReader::new(file), &mut progress)?;
    loaded(what, total, total, started, tty);
    if tty {
        eprintln!();
    }
    Ok(())
}

fn loaded(what: &str, read: u64, total: u64, started: Instant, tty: bool) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rate = mib(read) / started.elapsed().as_secs_f64().max(1e-3);
    let detail = format!("{:.1} of {:.1} MiB loaded, {rate:.1} MiB/s", mib(read), mib(total));
    bar(what, (read as f64 / total as f64).min(1.0), &detail, tty);
}

pub(crate) fn describe(store: &Store) -> anyhow::Result<String> {
    let applied = store.applied()?;
    if applied.is_empty() {
        return Ok("nothing (an empty node)".into());
    }
    Ok(applied.iter().map(|(origin, seq)| format!("{origin}={seq}")).collect::<Vec<_>>().join(" "))
}

/// A fresh directory beside `path` for the scratch store.
fn tempdir(path: &Path) -> anyhow::Result<PathBuf> {
    let dir = with_suffix(path, &format!("check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{suffix}"));
    path.with_file_name(name)
}

/// Make the rename durable: sync the directory that holds `path`.
fn sync_dir(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}
