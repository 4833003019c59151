//! What every bench shares: the machine's own measurements (`machine`), load generation at a
//! fixed rate or with N clients (`drive`), the hub over HTTP and the SETs sent to it (`hub`),
//! and here the one percentile helper, report rows and the run's failure list.

pub(crate) mod drive;
pub(crate) mod hub;
pub(crate) mod machine;

use std::sync::Mutex;
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
        if v.is_empty() {
            return Pct::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Pct {
            n: v.len(),
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            max: v[v.len() - 1],
        }
    }

    /// `p50 X ms, p99 Y ms, p99.9 Z ms, max W ms (n N)`.
    pub(crate) fn line(&self) -> String {
        format!(
            "p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms (n {})",
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.n
        )
    }

    /// `p50 X ms, p99 Y ms`.
    pub(crate) fn brief(&self) -> String {
        format!("p50 {} ms, p99 {} ms", ms(self.p50), ms(self.p99))
    }

    /// A row under [`PCT_HEADER`].
    pub(crate) fn row(&self, label: &str) -> String {
        let cells = [self.p50, self.p99, self.p999, self.max].map(ms);
        row(&[
            label,
            &self.n.to_string(),
            &cells[0],
            &cells[1],
            &cells[2],
            &cells[3],
        ])
    }
}

pub(crate) const PCT_HEADER: &str =
    "| What | n | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n";

/// A markdown table row.
pub(crate) fn row(cells: &[&str]) -> String {
    format!("| {} |\n", cells.join(" | "))
}

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

static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static REPORT: Mutex<String> = Mutex::new(String::new());

/// Records a failed check; a run with any exits non-zero after its report.
pub(crate) fn fail(msg: impl Into<String>) {
    let msg = msg.into();
    eprintln!("CHECK FAILED: {msg}");
    FAILURES.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
}

pub(crate) fn failures() -> Vec<String> {
    FAILURES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Adds markdown to the report printed at the end of the run.
pub(crate) fn report(text: impl AsRef<str>) {
    REPORT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push_str(text.as_ref());
}

/// Prints the report and the checks; exits non-zero if any failed.
pub(crate) fn finish(started: Instant) -> ! {
    let failures = failures();
    let report = std::mem::take(&mut *REPORT.lock().unwrap_or_else(|p| p.into_inner()));
    println!(
        "\n{report}\nRun time {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        println!("Checks: all passed.");
        std::process::exit(0);
    }
    println!("Checks: **{} failed**:", failures.len());
    for f in failures.iter().take(20) {
        println!("  - {f}");
    }
    std::process::exit(1)
}

/// Progress on stderr, so stdout holds the results.
pub(crate) fn progress(msg: impl AsRef<str>) {
    eprintln!("[load] {}", msg.as_ref());
}
