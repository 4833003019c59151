//! Load generation. An open loop starts request `i` at its scheduled time from a dedicated timer
//! thread, whatever earlier requests are doing, so a stall shows in the tail (no coordinated
//! omission). A closed loop runs N clients, each sending its next request when the previous one
//! is answered. Both run a [`Job`] per request index on a tokio runtime and keep every sample.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use super::{fail, lock, signed_us, Pct};

/// One request, by its index: `Ok` or an error.
pub(crate) type Job =
    Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

pub(crate) fn job<F, Fut>(f: F) -> Job
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) i: u64,
    /// When it was due (open loop) or started (closed loop).
    pub(crate) sched: Instant,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) ok: bool,
}

/// The outcome of a loop: every kept sample, sorted by index, and the error count.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) samples: Vec<Sample>,
    pub(crate) total: u64,
    pub(crate) done: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) began: Instant,
    pub(crate) ended: Instant,
}

impl Run {
    fn new(began: Instant, total: u64) -> Run {
        Run {
            samples: Vec::new(),
            total,
            done: 0,
            errors: 0,
            first_error: None,
            began,
            ended: began,
        }
    }

    /// Counts request `i`, (scheduled, started, ended), and keeps its sample if `keep`.
    fn add(&mut self, i: u64, t: [Instant; 3], r: Result<(), String>, keep: bool) {
        let [sched, start, end] = t;
        (self.done, self.ended) = (self.done + 1, self.ended.max(end));
        let ok = r.is_ok();
        if let Err(e) = r {
            self.errors += 1;
            self.first_error.get_or_insert(e);
        }
        if keep {
            self.samples.push(Sample {
                i,
                sched,
                start,
                end,
                ok,
            });
        }
    }

    /// Records a failure unless every request was answered without error.
    pub(crate) fn check(&self, what: &str) -> bool {
        let (errors, first, total) = (self.errors, &self.first_error, self.total);
        let unanswered = total.saturating_sub(self.done);
        if errors + unanswered > 0 {
            fail!("{what}: {errors} errors (first: {first:?}), {unanswered} unanswered of {total}");
        }
        errors + unanswered == 0
    }

    /// The samples from index `i0` on (after a warm-up).
    pub(crate) fn from(&self, i0: u64) -> Run {
        let mut run = self.clone();
        run.samples.retain(|s| s.i >= i0);
        run.began = run.samples.first().map_or(self.began, |s| s.sched);
        run
    }

    fn ok(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.ok)
    }

    /// Requests started per second (first scheduled to last started).
    pub(crate) fn dispatched_rate(&self) -> f64 {
        match self.samples.iter().map(|s| s.start).max() {
            Some(last) if self.samples.len() > 1 => {
                (self.samples.len() - 1) as f64 / (last - self.began).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Answers per second, from the first schedule (or the window's start) to the last answer.
    pub(crate) fn completed_rate(&self) -> f64 {
        self.ok().count() as f64 / (self.ended - self.began).as_secs_f64().max(1e-9)
    }

    /// Latency from the scheduled time.
    pub(crate) fn lat(&self) -> Pct {
        Pct::of(self.ok().map(|s| signed_us(s.end, s.sched)).collect())
    }

    /// Latency from the actual send.
    pub(crate) fn lat_start(&self) -> Pct {
        Pct::of(self.ok().map(|s| signed_us(s.end, s.start)).collect())
    }

    /// How late the timer started requests.
    pub(crate) fn lag(&self) -> Pct {
        let lag = self.samples.iter().map(|s| signed_us(s.start, s.sched));
        Pct::of(lag.collect())
    }
}

/// Runs `job(0..n)` at `rate` per second on `rt`, each started at its scheduled time by a timer
/// thread (`load-timer`), and waits for every answer.
pub(crate) fn open_loop(rt: &Handle, rate: f64, n: u64, job: Job) -> Run {
    let began = Instant::now() + Duration::from_millis(5);
    let spawn = |i| {
        let sched = began + Duration::from_secs_f64(i as f64 / rate);
        if let Some(d) = sched.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let job = job.clone();
        rt.spawn(async move {
            let start = Instant::now();
            let r = job(i).await;
            (i, [sched, start, Instant::now()], r)
        })
    };
    let timer = std::thread::Builder::new().name("load-timer".into());
    let handles = std::thread::scope(|s| {
        let timer = timer.spawn_scoped(s, || (0..n).map(spawn).collect::<Vec<_>>());
        timer.expect("timer thread").join().expect("timer thread")
    });
    let mut run = Run::new(began, n);
    for h in handles {
        let (i, t, r) = rt.block_on(h).expect("open-loop job");
        run.add(i, t, r, true);
    }
    run
}

/// `clients` clients run `job(0..n)` between them, each starting its next request when the
/// previous one is answered. With a `window` of (warm-up, length) they stop at its end and only
/// requests inside it are kept; `keep: false` keeps no samples at all (for runs of millions, so
/// the load generator's memory stays flat).
pub(crate) fn closed_loop(
    rt: &Handle,
    clients: usize,
    n: u64,
    window: Option<(Duration, Duration)>,
    keep: bool,
    job: Job,
) -> Run {
    let start = Instant::now();
    let (from, until) = match window {
        Some((warm, len)) => (start + warm, Some(start + warm + len)),
        None => (start, None),
    };
    let next = Arc::new(AtomicU64::new(0));
    let run = Arc::new(Mutex::new(Run::new(from, n)));
    let client = |_| {
        let (job, next, run) = (job.clone(), next.clone(), run.clone());
        rt.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || until.is_some_and(|u| Instant::now() >= u) {
                    return;
                }
                let t0 = Instant::now();
                let r = job(i).await;
                let t1 = Instant::now();
                let inside = t0 >= from && until.is_none_or(|u| t1 <= u);
                lock(&run).add(i, [t0, t0, t1], r, keep && inside);
            }
        })
    };
    for task in (0..clients).map(client).collect::<Vec<_>>() {
        rt.block_on(task).expect("closed-loop client");
    }
    let mut run = lock(&run).clone();
    run.samples.sort_unstable_by_key(|s| s.i);
    if let Some(u) = until {
        (run.total, run.ended) = (run.done, run.ended.min(u));
    }
    run
}
