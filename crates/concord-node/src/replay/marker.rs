//! `DIR/restored-until.json`: a data directory restored to a point says so, and a node
//! refuses to start on it.
//!
//! A node started on such a directory would follow its streams from the cursors the
//! restore left and catch up past the point, undoing the restore without a word. So
//! [`refuse_to_serve`] stops `concord serve` there, naming what the operator can do:
//! read the old values (`concord inspect`), write them back into the live deployment
//! (`concord restore --write-back`), or delete the file to let a node go on from the
//! point. The marker is written before the replay starts ([`State::Replaying`]) and
//! rewritten once it ended ([`State::Complete`]), each time to a temporary file that is
//! synced and renamed over it, so a restore that died half-way leaves a directory that
//! says so rather than one a node would catch up from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cut::{Cut, Point};

pub const MARKER_FILE: &str = "restored-until.json";
/// The marker's format; a newer one is refused (read as "do not serve").
const FORMAT: u32 = 1;
/// A marker is small; a larger file is not one.
const MARKER_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// The replay started and did not end: the state is somewhere between the backup
    /// and the point.
    Replaying,
    /// The state is the backup's plus everything the logs held before the point.
    Complete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format: u32,
    pub state: State,
    pub region: String,
    pub point: Point,
    pub cut: Cut,
    /// The cut's time as RFC 3339 (what `cut.before` says, for a reader).
    pub cut_time: String,
    /// Per origin, the highest contiguous sequence applied (after the replay).
    pub applied: BTreeMap<String, u64>,
    /// Per stream, the last sequence consumed.
    pub cursors: BTreeMap<String, u64>,
    /// Per stream, the messages replayed after the backup.
    pub replayed: BTreeMap<String, u64>,
    /// Per stream, the first message the point left out (absent: the stream ended).
    pub stopped_at: BTreeMap<String, u64>,
    /// When the restore was made.
    pub restored_at: String,
}

impl Marker {
    pub fn new(region: &str, point: Point, cut: Cut) -> Marker {
        Marker {
            format: FORMAT,
            state: State::Replaying,
            region: region.to_string(),
            point,
            cut,
            cut_time: super::cut::rfc3339(cut.before.wall_ms),
            applied: BTreeMap::new(),
            cursors: BTreeMap::new(),
            replayed: BTreeMap::new(),
            stopped_at: BTreeMap::new(),
            restored_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(MARKER_FILE)
}

/// The marker of `dir`, if it has one.
pub fn read(dir: &Path) -> Result<Option<Marker>, String> {
    let p = path(dir);
    let len = match std::fs::metadata(&p) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", p.display())),
    };
    if len > MARKER_BYTES_MAX {
        return Err(format!("{} is {len} bytes: no restore marker", p.display()));
    }
    let bytes = std::fs::read(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
    let marker: Marker = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} does not read as a restore marker: {e}", p.display()))?;
    if marker.format != FORMAT {
        return Err(format!("{}: marker format {} (this build reads {FORMAT})", p.display(), marker.format));
    }
    Ok(Some(marker))
}

/// Write `marker` into `dir`: to a temporary file, synced, renamed over the marker,
/// and the directory synced.
pub fn write(dir: &Path, marker: &Marker) -> Result<(), String> {
    let p = path(dir);
    let tmp = dir.join(format!("{MARKER_FILE}.partial"));
    let json = serde_json::to_vec_pretty(marker).expect("a marker serializes");
    let io = |e: std::io::Error| format!("writing {}: {e}", p.display());
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &p).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// `Err` (why, and what to do) when `dir` was restored to a point: a node must not
/// start there and catch up past it.
pub fn refuse_to_serve(dir: &Path) -> Result<(), String> {
    let p = path(dir);
    let what = match read(dir) {
        Ok(None) => return Ok(()),
        Ok(Some(m)) if m.state == State::Replaying => {
            return Err(format!(
                "{} was being restored to a point ({}) when the restore stopped: its state is partial. Restore again into an empty data directory.",
                dir.display(),
                m.point
            ));
        }
        Ok(Some(m)) => format!("was restored to a point ({}; cut at {})", m.point, m.cut_time),
        Err(e) => format!("holds a restore marker that does not read ({e})"),
    };
    Err(format!(
        "{} {what}. A node started on it would catch up from the logs past that point. Read the restored values with \
         `concord inspect --data-dir {}`, write them back with `concord restore --data-dir {} --write-back URL --bucket B`; \
         to let a node go on from the point and catch up, delete {}.",
        dir.display(),
        dir.display(),
        dir.display(),
        p.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_directory_refuses_to_serve_until_the_marker_is_gone() {
        let dir = std::env::temp_dir().join(format!("concord-marker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(refuse_to_serve(&dir), Ok(()));
        let cut = Cut { before: concord_core::hlc::Hlc { wall_ms: 5, logical: 0 }, own_through: Some(6) };
        let mut m = Marker::new("us-east", Point::UntilSeq(7), cut);
        write(&dir, &m).unwrap();
        assert!(refuse_to_serve(&dir).unwrap_err().contains("partial"));
        m.state = State::Complete;
        write(&dir, &m).unwrap();
        assert_eq!(read(&dir).unwrap(), Some(m));
        let why = refuse_to_serve(&dir).unwrap_err();
        assert!(why.contains("before sequence 7") && why.contains("delete"), "{why}");
        std::fs::write(path(&dir), b"{").unwrap();
        assert!(refuse_to_serve(&dir).unwrap_err().contains("does not read"));
        std::fs::remove_file(path(&dir)).unwrap();
        assert_eq!(refuse_to_serve(&dir), Ok(()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
