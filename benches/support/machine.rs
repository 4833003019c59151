//! Machine measurements: environment knobs, this process's memory and CPU by thread group, and
//! how busy the whole machine was, so every figure can say whether something else shared the
//! cores.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.replace('_', "").parse().ok()
}

pub(crate) fn env_u64(name: &str, default: u64) -> u64 {
    env(name).unwrap_or(default)
}

pub(crate) fn env_f64(name: &str, default: f64) -> f64 {
    env(name).unwrap_or(default)
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A file's text, or nothing.
fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The first word of `text`, parsed.
fn first<T: std::str::FromStr>(text: &str) -> Option<T> {
    text.split_whitespace().next()?.parse().ok()
}

/// What follows `key` (and a `:`) on the first line of `file` that starts with `key`.
fn field(file: &str, key: &str) -> String {
    let text = read(file);
    let value = text.lines().find_map(|l| l.strip_prefix(key));
    let value = value.unwrap_or_default().trim_start();
    value.trim_start_matches(':').trim().to_owned()
}

/// Cores, CPU model, memory, kernel and open-file limit, for the top of a report.
pub(crate) fn describe() -> String {
    let model = field("/proc/cpuinfo", "model name");
    let mem = field("/proc/meminfo", "MemTotal");
    let kernel = read("/proc/sys/kernel/osrelease");
    let (cores, kernel, files) = (cores(), kernel.trim(), open_file_limit());
    format!("{cores} cores ({model}), MemTotal {mem}, Linux {kernel}, open-file limit {files}")
}

pub(crate) fn open_file_limit() -> u64 {
    first(&field("/proc/self/limits", "Max open files")).unwrap_or(0)
}

/// Bytes of the files under `path`.
pub(crate) fn dir_size(path: &Path) -> u64 {
    let size = |e: std::fs::DirEntry| match e.metadata() {
        Ok(m) if m.is_dir() => dir_size(&e.path()),
        Ok(m) => m.len(),
        Err(_) => 0,
    };
    let entries = std::fs::read_dir(path).into_iter().flatten();
    entries.flatten().map(size).sum()
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `RssAnon`, `VmHWM`).
pub(crate) fn status_kib(name: &str) -> u64 {
    first(&field("/proc/self/status", &format!("{name}:"))).unwrap_or(0)
}

/// A thread name without its trailing number: its group (`hub-w`, `hub-blk`, `load-w`, ...).
fn group_of(name: &str) -> String {
    let name = name.trim().trim_end_matches(|c: char| c.is_ascii_digit());
    name.trim_end_matches(['-', ' ', '.']).to_owned()
}

/// utime + stime from a `stat` file, in clock ticks (1/100 s).
fn ticks(stat: &str) -> Option<u64> {
    let fields = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = fields.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of this process, exited threads included (tokio's blocking threads exit after
/// idling, taking their own counters with them).
fn own_ticks() -> u64 {
    ticks(&read("/proc/self/stat")).unwrap_or(0)
}

/// CPU seconds used so far by each live thread of this process, by thread group.
fn cpu_by_group() -> BTreeMap<String, f64> {
    cpu_by_group_of("self")
}

/// The same for process `pid` (`self`, or a number).
fn cpu_by_group_of(pid: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    for task in tasks.flatten().map(|t| t.path()) {
        // schedstat: nanoseconds on CPU; else stat's utime+stime.
        let ns = first::<f64>(&read(task.join("schedstat")));
        let stat = || Some(ticks(&read(task.join("stat")))? as f64 * 1e7);
        let secs = ns.or_else(stat).unwrap_or(0.0) / 1e9;
        *out.entry(group_of(&read(task.join("comm")))).or_default() += secs;
    }
    out
}

/// Voluntary context switches so far (a thread blocked, then woken: one wake-up each) of each
/// live thread of this process, by thread group.
fn switches_by_group() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    for task in tasks.flatten().map(|t| t.path()) {
        let status = task.join("status");
        let n = first::<f64>(&field(&status.to_string_lossy(), "voluntary_ctxt_switches"));
        *out.entry(group_of(&read(task.join("comm")))).or_default() += n.unwrap_or(0.0);
    }
    out
}

/// Bytes written to whole disks (`/proc/diskstats`), by everyone.
fn disk_written() -> u64 {
    let whole_disk = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let name = f.get(2)?;
        let partition = name.ends_with(|c: char| c.is_ascii_digit());
        let virtual_disk = name.starts_with("loop") || name.starts_with("ram");
        let sectors: u64 = f.get(9)?.parse().ok()?;
        (!partition && !virtual_disk).then_some(sectors * 512)
    };
    read("/proc/diskstats").lines().filter_map(whole_disk).sum()
}

/// What a phase is judged by, taken at its start: this process's CPU (by thread group and in
/// all), the whole machine's CPU ticks, and bytes written to disk.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    groups: BTreeMap<String, f64>,
    switches: BTreeMap<String, f64>,
    at: Instant,
    /// Clock ticks: `[this process, machine busy, machine in all, stolen by the hypervisor]`.
    ticks: [u64; 4],
    /// Bytes written: `[to whole disks by everyone, by this process]`.
    disk: [u64; 2],
}

impl Phase {
    pub(crate) fn start() -> Phase {
        let stat = read("/proc/stat");
        let cpu = stat.lines().next().unwrap_or_default().split_whitespace();
        let f: Vec<u64> = cpu.skip(1).filter_map(|v| v.parse().ok()).collect();
        let get = |i: usize| f.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal
        let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
        let ticks = [own_ticks(), busy, busy + get(3) + get(4), get(7)];
        let own_disk = first(&field("/proc/self/io", "write_bytes")).unwrap_or(0);
        let (groups, switches, at) = (cpu_by_group(), switches_by_group(), Instant::now());
        Phase {
            groups,
            switches,
            at,
            ticks,
            disk: [disk_written(), own_disk],
        }
    }

    /// Percent of the machine used by this process, by everything else, and stolen, since the
    /// start.
    fn shares(&self) -> [f64; 3] {
        let now = Phase::start();
        let d = |i: usize| now.ticks[i].saturating_sub(self.ticks[i]) as f64;
        let others = (d(1) - d(0) - d(3)).max(0.0);
        [d(0), others, d(3)].map(|t| 100.0 * t / d(2).max(1.0))
    }

    /// Percent of the machine other processes and the hypervisor took since the start.
    pub(crate) fn others(&self) -> f64 {
        let [_, others, steal] = self.shares();
        others + steal
    }

    /// How busy the machine was since the start, and what was written to disk.
    pub(crate) fn note(&self) -> String {
        let [own, others, steal] = self.shares();
        let now = Phase::start().disk;
        let [disk, own_disk] = [0, 1].map(|i| mib(now[i].saturating_sub(self.disk[i])));
        let noisy =
            (others > 5.0 || steal > 2.0).then_some("  <-- NOISY: other load on the machine");
        format!("[machine: CPU this process {own:.0}%, others {others:.0}%, steal {steal:.0}%; disk: {disk:.0} MiB written to the device, {own_disk:.0} MiB by this process]{}", noisy.unwrap_or_default())
    }

    /// CPU used since the start.
    pub(crate) fn used(&self) -> CpuUse {
        let process = own_ticks().saturating_sub(self.ticks[0]) as f64 / 100.0;
        CpuUse {
            groups: grown(&self.groups, cpu_by_group()),
            switches: grown(&self.switches, switches_by_group()),
            process,
            wall: self.at.elapsed(),
        }
    }

    /// Prints the CPU used by thread group and how busy the machine was; returns the CPU.
    pub(crate) fn end(&self, label: &str) -> CpuUse {
        let used = self.used();
        let capacity = used.wall.as_secs_f64() * cores() as f64;
        let (cpu, share) = (used.process, 100.0 * used.process / capacity);
        println!("  CPU during {label}: {cpu:.2} s of {capacity:.2} s available ({share:.0}%)");
        for (group, s) in &used.groups {
            let share = 100.0 * s / capacity;
            println!("    {group:<16} {s:>7.2} s  {share:>5.1}% of machine");
        }
        println!("  {}", self.note());
        used
    }
}

/// The thread groups whose CPU grew from `before` to `now`, by how much, biggest first.
fn grown(before: &BTreeMap<String, f64>, now: BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let before = |k: &String| before.get(k).copied().unwrap_or(0.0);
    let delta =
        |(k, a): (String, f64)| (a - before(&k) > 0.005).then(|| (k.clone(), a - before(&k)));
    let mut groups: Vec<(String, f64)> = now.into_iter().filter_map(delta).collect();
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    groups
}

/// Another process's CPU over a phase (a child hub, the broker), by thread group and in all;
/// taken at its start. Only the Kafka scenario runs other processes.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) struct ProcCpu {
    pid: String,
    groups: BTreeMap<String, f64>,
    ticks: u64,
    at: Instant,
}

#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
impl ProcCpu {
    pub(crate) fn start(pid: u32) -> ProcCpu {
        let pid = pid.to_string();
        ProcCpu {
            groups: cpu_by_group_of(&pid),
            ticks: ticks(&read(format!("/proc/{pid}/stat"))).unwrap_or(0),
            at: Instant::now(),
            pid,
        }
    }

    /// CPU used since the start (the process's own counters include threads that exited).
    pub(crate) fn used(&self) -> CpuUse {
        let now = ticks(&read(format!("/proc/{}/stat", self.pid))).unwrap_or(0);
        CpuUse {
            groups: grown(&self.groups, cpu_by_group_of(&self.pid)),
            switches: Vec::new(),
            process: now.saturating_sub(self.ticks) as f64 / 100.0,
            wall: self.at.elapsed(),
        }
    }
}

/// CPU used by thread groups over a phase.
#[derive(Debug, Clone)]
pub(crate) struct CpuUse {
    pub(crate) groups: Vec<(String, f64)>,
    /// Voluntary context switches (wake-ups) by thread group, of threads alive at both ends.
    pub(crate) switches: Vec<(String, f64)>,
    pub(crate) process: f64,
    pub(crate) wall: Duration,
}

impl CpuUse {
    pub(crate) fn of(&self, pred: impl Fn(&str) -> bool) -> f64 {
        let groups = self.groups.iter().filter(|(g, _)| pred(g));
        groups.map(|g| g.1).sum()
    }

    /// Everything the hub ran (its runtime, the storage engine's threads, threads that exited
    /// meanwhile): the process minus the load generator (`load-*`), the receivers (`rx-*`) and
    /// the bench's main thread.
    pub(crate) fn hub(&self) -> f64 {
        let main = group_of(&read("/proc/thread-self/comm"));
        let bench = |g: &str| g.starts_with("load") || g.starts_with("rx") || g == main;
        (self.process.max(self.of(|_| true)) - self.of(bench)).max(0.0)
    }

    /// The hub's share of [`CpuUse::hub`] by thread group (tokio workers `hub-w`, its blocking
    /// pool `hub-blk`, the storage engine's threads, anything else it started), biggest first,
    /// plus `(exited threads)`: what the process used beyond its live threads (tokio's blocking
    /// threads exit after idling and take their counters with them), never negative.
    pub(crate) fn hub_groups(&self) -> Vec<(String, f64)> {
        let main = group_of(&read("/proc/thread-self/comm"));
        let bench = |g: &str| g.starts_with("load") || g.starts_with("rx") || g == main;
        let mut out: Vec<(String, f64)> = self
            .groups
            .iter()
            .filter(|(g, _)| !bench(g))
            .cloned()
            .collect();
        let exited = (self.process - self.of(|_| true)).max(0.0);
        if exited > 0.0 {
            out.push(("(exited threads)".into(), exited));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// One line: `group: N s, ...`.
    pub(crate) fn line(&self) -> String {
        let big = self.groups.iter().filter(|(_, s)| *s >= 0.05);
        let parts: Vec<String> = big.map(|(g, s)| format!("{g}: {s:.1} s")).collect();
        parts.join(", ")
    }
}

/// Waits (at most `max`) until other processes use under 5% of the machine over three seconds,
/// so a phase does not start in the middle of somebody else's build.
pub(crate) fn wait_quiet(max: Duration) {
    let start = Instant::now();
    loop {
        let phase = Phase::start();
        std::thread::sleep(Duration::from_secs(3));
        let others = phase.others();
        if others < 5.0 {
            break;
        }
        if start.elapsed() >= max {
            return println!("  (machine still busy after {max:?}: {others:.0}% used by others)");
        }
    }
    let waited = start.elapsed().as_secs_f64();
    if waited > 4.0 {
        println!("  (waited {waited:.0} s for other load on the machine to stop)");
    }
}
