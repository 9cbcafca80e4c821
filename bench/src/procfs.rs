//! CPU time and memory of a process tree, read from Linux's `/proc`.
//!
//! Beam's Python pool may run workers as child processes, so the figures cover
//! the process and all its live descendants (each with all its threads), plus
//! the CPU time of children that already exited and were waited for.

use std::collections::HashMap;
use std::fs;

/// `USER_HZ`: the unit of the tick counts in `/proc/PID/stat`. It is 100 on
/// every Linux architecture this runs on (the kernel fixes it for user space).
const TICKS_PER_SECOND: f64 = 100.0;

/// A `/proc` read that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read /proc/{pid}: {source}")]
    Read {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("/proc/{pid}/stat has an unexpected format")]
    Format { pid: u32 },
}

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct ProcSample {
    /// User plus system CPU seconds since the processes started.
    pub cpu_seconds: f64,
    /// Sum of each process's peak resident set (`VmHWM`) over its lifetime.
    pub peak_rss_bytes: u64,
    /// Sum of the current resident sets (`VmRSS`).
    pub rss_bytes: u64,
    /// Processes counted.
    pub processes: usize,
}

struct Stat {
    ppid: u32,
    /// utime + stime + cutime + cstime, in ticks.
    ticks: u64,
}

fn read_stat(pid: u32) -> Result<Stat, ProcError> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| ProcError::Read { pid, source })?;
    // The command name (field 2) may hold spaces and parentheses: parse after the last ')'.
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or(ProcError::Format { pid })?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); ppid is field 4, utime..cstime are 14..17.
    let field = |n: usize| -> Result<u64, ProcError> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or(ProcError::Format { pid })
    };
    Ok(Stat {
        ppid: field(4)? as u32,
        ticks: field(14)? + field(15)? + field(16)? + field(17)?,
    })
}

/// `VmHWM` and `VmRSS` of `pid`, in bytes (0 for a zombie, which has no memory).
fn read_memory(pid: u32) -> Result<(u64, u64), ProcError> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| ProcError::Read { pid, source })?;
    let kb = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok((kb("VmHWM:"), kb("VmRSS:")))
}

/// `pid` and its live descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(stat) = read_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree
}

/// Reads the tree rooted at `pid`. The root must exist; descendants that exit
/// while being read are skipped.
pub fn sample_tree(pid: u32) -> Result<ProcSample, ProcError> {
    let mut sample = ProcSample::default();
    for (i, p) in process_tree(pid).into_iter().enumerate() {
        let read = read_stat(p).and_then(|s| Ok((s, read_memory(p)?)));
        match read {
            Ok((stat, (hwm, rss))) => {
                sample.cpu_seconds += stat.ticks as f64 / TICKS_PER_SECOND;
                sample.peak_rss_bytes += hwm;
                sample.rss_bytes += rss;
                sample.processes += 1;
            }
            Err(e) if i == 0 => return Err(e),
            Err(_) => {}
        }
    }
    Ok(sample)
}

/// CPU seconds of this process alone (the driver), for showing that it is
/// not the bottleneck.
pub fn self_cpu_seconds() -> Result<f64, ProcError> {
    Ok(read_stat(std::process::id())?.ticks as f64 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = sample_tree(std::process::id()).unwrap();
        assert!(s.processes >= 1);
        assert!(s.peak_rss_bytes >= s.rss_bytes && s.rss_bytes > 0);
        // Burn a little CPU and see the clock move forward, never backward.
        let before = self_cpu_seconds().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(self_cpu_seconds().unwrap() >= before);
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(sample_tree(u32::MAX - 1).is_err());
    }
}
