//! Machine measurements shared by the load benches (included with `#[path]`, not a bench
//! target): environment knobs, this process's memory and CPU by thread group, and how busy the
//! whole machine was, so every figure can say whether something else shared the cores.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `RssAnon`, `RssFile`).
pub(crate) fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident set size of this process, in KiB.
pub(crate) fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

/// CPU seconds used so far by each live thread of this process, grouped by thread name with
/// trailing digits removed (`hub-w`, `hub-blk`, `load-w`, `sled-io`, ...).
pub(crate) fn cpu_by_group() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in dir.flatten() {
        let p = task.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let group = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches(['-', ' ', '.'])
            .to_owned();
        // schedstat: nanoseconds on CPU; fall back to stat's utime+stime in 100 Hz ticks.
        let secs = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map(|ns| ns / 1e9)
            .or_else(|| {
                let stat = std::fs::read_to_string(p.join("stat")).ok()?;
                let rest = &stat[stat.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
                Some(ticks / 100.0)
            })
            .unwrap_or(0.0);
        *out.entry(group).or_default() += secs;
    }
    out
}

/// Machine-wide CPU ticks (`/proc/stat`) and this process's own, to tell how much of the machine
/// something else used during a phase (another build, a noisy neighbour).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MachineCpu {
    busy: u64,
    total: u64,
    steal: u64,
    own: u64,
    /// Bytes written to whole disks by everyone (`/proc/diskstats`) and by this process.
    disk_written: u64,
    own_written: u64,
}

impl MachineCpu {
    pub(crate) fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let get = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
        let total = busy + get(3) + get(4);
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|st| {
                let rest = st[st.rfind(')')? + 2..].to_owned();
                let v: Vec<&str> = rest.split_whitespace().collect();
                Some(v.get(11)?.parse::<u64>().ok()? + v.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        let disk_written = std::fs::read_to_string("/proc/diskstats")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let name = *f.get(2)?;
                let whole = !name.ends_with(|c: char| c.is_ascii_digit())
                    && !name.starts_with("loop")
                    && !name.starts_with("ram");
                whole.then(|| f.get(9)?.parse::<u64>().ok().map(|s| s * 512))?
            })
            .sum();
        let own_written = std::fs::read_to_string("/proc/self/io")
            .ok()
            .and_then(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("write_bytes:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        MachineCpu {
            busy,
            total,
            steal: get(7),
            own,
            disk_written,
            own_written,
        }
    }

    /// Percent of the machine used by this process, by everything else, and stolen.
    pub(crate) fn since(&self, before: &MachineCpu) -> (f64, f64, f64) {
        let total = (self.total - before.total).max(1) as f64;
        let own = (self.own - before.own) as f64;
        let busy = (self.busy - before.busy) as f64;
        let steal = (self.steal - before.steal) as f64;
        (
            100.0 * own / total,
            (100.0 * (busy - own - steal) / total).max(0.0),
            100.0 * steal / total,
        )
    }

    pub(crate) fn note(&self, before: &MachineCpu) -> String {
        let (own, others, steal) = self.since(before);
        let disk = self.disk_written.saturating_sub(before.disk_written) as f64 / 1048576.0;
        let own_disk = self.own_written.saturating_sub(before.own_written) as f64 / 1048576.0;
        let warn = if others > 5.0 || steal > 2.0 {
            "  <-- NOISY: other load on the machine"
        } else {
            ""
        };
        format!(
            "[machine: CPU this process {own:.0}%, others {others:.0}%, steal {steal:.0}%; disk: {disk:.0} MiB written to the device, {own_disk:.0} MiB written by this process]{warn}"
        )
    }
}

/// Waits (at most `max`) until other processes use under 5% of the machine over three seconds,
/// so a phase does not start in the middle of somebody else's build.
pub(crate) fn wait_quiet(max: Duration) {
    let start = Instant::now();
    loop {
        let m = MachineCpu::now();
        std::thread::sleep(Duration::from_secs(3));
        let (_, others, steal) = MachineCpu::now().since(&m);
        if others + steal < 5.0 {
            break;
        }
        if start.elapsed() >= max {
            println!("  (machine still busy after {max:?}: {others:.0}% used by other processes; going on)");
            return;
        }
    }
    if start.elapsed() > Duration::from_secs(4) {
        println!(
            "  (waited {:.0} s for other load on the machine to stop)",
            start.elapsed().as_secs_f64()
        );
    }
}
