//! What /proc says about a running process: resident memory and context switches (each
//! wake-up of a sleeping thread is one voluntary switch when it sleeps again).

use std::path::Path;

/// Resident memory and context switches of a set of processes, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// VmHWM (peak resident) in KiB.
    pub hwm_kib: u64,
    /// Voluntary plus involuntary context switches of every thread.
    pub switches: u64,
}

fn status_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Reads one process (all its threads). `None` if it is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut s = Sample {
        rss_kib: status_field(&status, "VmRSS:"),
        hwm_kib: status_field(&status, "VmHWM:"),
        switches: 0,
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("status")) {
            s.switches += status_field(&text, "voluntary_ctxt_switches:")
                + status_field(&text, "nonvoluntary_ctxt_switches:");
        }
    }
    Some(s)
}

/// Reads several processes and sums them (missing ones count as zero).
pub fn sample_all(pids: &[u32]) -> Sample {
    pids.iter()
        .filter_map(|p| sample(*p))
        .fold(Sample::default(), |a, b| Sample {
            rss_kib: a.rss_kib + b.rss_kib,
            hwm_kib: a.hwm_kib + b.hwm_kib,
            switches: a.switches + b.switches,
        })
}

/// The pids of the direct children of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) =
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.hwm_kib >= s.rss_kib);
    }
}
