//! The load scenarios: an in-process hub (`ssf_hub::app::spawn`, fjall storage in a tempdir)
//! driven over loopback HTTP and websockets only, each figure beside the machine's own limit
//! measured in the same run. They take minutes, so they stay out of a plain `cargo bench`: run
//! `cargo bench --bench load -- <scenario>` (`USAGE` below lists them). Knobs are environment
//! variables, listed at the top of each scenario's module.

#[path = "load/delivery.rs"]
mod delivery;
#[path = "load/ingest.rs"]
mod ingest;
#[path = "load/kafka.rs"]
mod kafka;
#[path = "load/revocation.rs"]
mod revocation;
mod support;

/// The binary's allocator (`src/main.rs`), so the hub here runs as it ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: cargo bench --bench load -- <scenario> [args]

scenarios (see BENCHMARKS.md and each module's doc comment for the knobs):
  ingest                 push ingest: machine limits, max sustained rate, 1,000 SETs/s, growth
  delivery               push (1 stream), fan-out to 100 streams (ES256, RS256), long poll
  revocation [A,B,C,D]   deltas on /revocations/ws, decisions over 1M subjects, /feed fan-out
  kafka                  Kafka mode (--features kafka): broker baseline, two replicas vs embedded, ceilings";

fn main() {
    if revocation::child() || kafka::child() {
        return;
    }
    // `cargo bench` adds `--bench`; `cargo test --benches` runs this without arguments.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let started = std::time::Instant::now();
    match args.next().as_deref() {
        Some("ingest") => ingest::run(),
        Some("delivery") => delivery::run(),
        Some("revocation") => revocation::run(&args.next().unwrap_or("A,B,C,D".into())),
        Some("kafka") => kafka::run(),
        // Nothing to run, or a criterion filter meant for `verify` (`cargo bench <filter>`).
        _ => return println!("{USAGE}"),
    }
    support::finish(started)
}
