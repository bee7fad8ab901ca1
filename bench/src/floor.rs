//! The file system's durable floor, measured in the same run and on the same file system as
//! the queues: how many 4 KB records one writer can make durable by appending them to a file
//! and calling `fdatasync`, one record per call (what one flusher or one session pays per
//! message at best), and with a group commit of 4 and of 32 records per call (what several
//! writers sharing one `fdatasync` could reach). Every durable row of the table is set beside
//! the floor that matches it.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;

use crate::env::Settings;
use crate::stats::median;

/// Bytes of one record: the bench's message.
const RECORD: usize = 4096;

/// The floor's medians, in records per second.
#[derive(Debug, Clone, Copy)]
pub struct Floor {
    /// One 4 KB record per append + `fdatasync`.
    pub single: f64,
    /// Four records in one append + `fdatasync`.
    pub group4: f64,
    /// Thirty-two records in one append + `fdatasync`.
    pub group32: f64,
}

impl Floor {
    /// The median of each kind over `floors` (the measurements before each group), for the
    /// floor's own rows; `None` when there is none.
    pub fn median_of(floors: &[Floor]) -> Option<Floor> {
        let of = |pick: fn(&Floor) -> f64| median(&floors.iter().map(pick).collect::<Vec<_>>());
        Some(Floor {
            single: of(|f| f.single)?,
            group4: of(|f| f.group4)?,
            group32: of(|f| f.group32)?,
        })
    }
}

/// Appends `syncs` times `group` records of 4 KB to a new file in `dir`, each append followed
/// by `fdatasync` (so the file grows, as a journal does): records made durable per second.
pub fn appends(dir: &Path, group: usize, syncs: usize) -> anyhow::Result<f64> {
    let path = dir.join(format!("floor-probe-{group}"));
    let mut f =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let block = vec![b'x'; RECORD * group];
    let t = Instant::now();
    for _ in 0..syncs {
        f.write_all(&block)?;
        f.sync_data()?;
    }
    let dt = t.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((syncs * group) as f64 / dt)
}

/// `fdatasync` calls per measurement: about a second of single appends on a fast disk.
fn syncs(s: &Settings) -> usize {
    if s.smoke { 20 } else { 1000 }
}

/// The floor in `dir` (a directory on the queues' file system): the median of `s.reps`
/// measurements of each kind, interleaved so that a drift of the machine touches all three.
pub fn measure(s: &Settings, dir: &Path) -> anyhow::Result<Floor> {
    let n = syncs(s);
    let (mut one, mut four, mut many) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.reps {
        one.push(appends(dir, 1, n)?);
        four.push(appends(dir, 4, n / 2)?);
        many.push(appends(dir, 32, n / 8)?);
    }
    Ok(Floor {
        single: median(&one).context("no samples")?,
        group4: median(&four).context("no samples")?,
        group32: median(&many).context("no samples")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_commit_counts_every_record_it_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let rate = appends(dir.path(), 4, 3).unwrap();
        assert!(rate > 0.0);
        // The probe leaves nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
