//! What every bench shares: the machine's own measurements (`machine`), load generation at a
//! fixed rate or with N clients (`drive`), the hub over HTTP and the SETs sent to it (`hub`),
//! and here the one percentile helper, report rows and the run's failure list.

pub(crate) mod drive;
pub(crate) mod hub;
pub(crate) mod machine;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Percentiles of a sample, in microseconds; signed, since an arrival may precede the instant
/// it is measured from (a delivery seen before the ingest 202 came back).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Pct {
    pub(crate) n: usize,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
}

impl Pct {
    pub(crate) fn of(mut v: Vec<f64>) -> Pct {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let at = |q: f64| match n {
            0 => 0.0,
            _ => v[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
        };
        let [p50, p99, p999, max] = [0.5, 0.99, 0.999, 1.0].map(at);
        Pct {
            n,
            p50,
            p99,
            p999,
            max,
        }
    }

    fn cells(&self) -> [String; 4] {
        [self.p50, self.p99, self.p999, self.max].map(ms)
    }

    /// `p50 X ms, p99 Y ms, p99.9 Z ms, max W ms (n N)`.
    pub(crate) fn line(&self) -> String {
        let ([p50, p99, p999, max], n) = (self.cells(), self.n);
        format!("p50 {p50} ms, p99 {p99} ms, p99.9 {p999} ms, max {max} ms (n {n})")
    }

    /// `p50 X ms, p99 Y ms`.
    pub(crate) fn brief(&self) -> String {
        format!("p50 {} ms, p99 {} ms", ms(self.p50), ms(self.p99))
    }

    /// A row under [`PCT_HEADER`].
    pub(crate) fn row(&self, label: &str) -> String {
        let ([p50, p99, p999, max], n) = (self.cells(), self.n);
        format!("| {label} | {n} | {p50} | {p99} | {p999} | {max} |\n")
    }
}

pub(crate) const PCT_HEADER: &str =
    "| What | n | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n";

/// Microseconds as milliseconds, three decimals.
pub(crate) fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

pub(crate) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `a - b` in microseconds, negative when `a` is earlier.
pub(crate) fn signed_us(a: Instant, b: Instant) -> f64 {
    match a.checked_duration_since(b) {
        Some(d) => us(d),
        None => -us(b - a),
    }
}

/// A rate, with `k` above 10,000.
pub(crate) fn kfmt(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.1}k", rate / 1000.0)
    } else {
        format!("{rate:.0}")
    }
}

pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// A goal's verdict.
pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

/// A mutex's contents, even if a panicking thread held it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static REPORT: Mutex<String> = Mutex::new(String::new());

/// Records a failed check (`format!` arguments); a run with any exits non-zero after its report.
macro_rules! fail {
    ($($arg:tt)*) => { $crate::support::failure(format!($($arg)*)) };
}

/// Adds markdown (`format!` arguments) to the report printed at the end of the run.
macro_rules! report {
    ($($arg:tt)*) => { $crate::support::add_to_report(&format!($($arg)*)) };
}

/// Progress (`format!` arguments) on stderr, so stdout holds the results.
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("[load] {}", format!($($arg)*)) };
}

pub(crate) use {fail, progress, report};

/// Use [`fail!`].
pub(crate) fn failure(msg: String) {
    eprintln!("CHECK FAILED: {msg}");
    lock(&FAILURES).push(msg);
}

/// How many checks failed so far.
pub(crate) fn failed() -> usize {
    lock(&FAILURES).len()
}

/// Use [`report!`].
pub(crate) fn add_to_report(text: &str) {
    lock(&REPORT).push_str(text);
}

/// The hub's logging as `ssf-hub serve` sets it up, at `level` unless `RUST_LOG` is set.
pub(crate) fn init_tracing(level: &str) {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", level);
    }
    ssf_hub::telemetry::init_tracing();
}

/// Prints the report and the checks; exits non-zero if any failed.
pub(crate) fn finish(started: Instant) -> ! {
    let (failures, secs) = (lock(&FAILURES), started.elapsed().as_secs_f64());
    println!("\n{}\nRun time {secs:.0} s.", lock(&REPORT));
    if failures.is_empty() {
        println!("Checks: all passed.");
        std::process::exit(0);
    }
    println!("Checks: **{} failed**:", failures.len());
    failures.iter().take(20).for_each(|f| println!("  - {f}"));
    std::process::exit(1)
}
