//! The load scenarios: an in-process hub (`ssf_hub::app::spawn`, fjall storage in a tempdir)
//! driven over loopback HTTP and websockets only, each figure beside the machine's own limit
//! measured in the same run. They take minutes, so they stay out of a plain `cargo bench`:
//!
//! ```sh
//! cargo bench --bench load -- ingest               # push ingest: max rate, 1,000/s, memory growth
//! cargo bench --bench load -- delivery             # push, fan-out (ES256, RS256), long poll
//! cargo bench --bench load -- revocation [A,B,C,D] # deltas, decisions over 1M subjects, feeds
//! ```
//!
//! Knobs are environment variables, listed at the top of each scenario's module.

#[path = "load/delivery.rs"]
mod delivery;
#[path = "load/ingest.rs"]
mod ingest;
#[path = "load/revocation.rs"]
mod revocation;
mod support;

const USAGE: &str = "usage: cargo bench --bench load -- <scenario> [args]

scenarios (see BENCHMARKS.md and each module's doc comment for the knobs):
  ingest                 push ingest: machine limits, max sustained rate, 1,000 SETs/s, growth
  delivery               push (1 stream), fan-out to 100 streams (ES256, RS256), long poll
  revocation [A,B,C,D]   deltas on /revocations/ws, decisions over 1M subjects, /feed fan-out";

fn main() {
    if let Some(mode) = revocation::child_mode() {
        return revocation::child(&mode);
    }
    // `cargo bench` adds `--bench`; `cargo test --benches` runs this without arguments.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let started = std::time::Instant::now();
    match args.first().map(String::as_str) {
        Some("ingest") => ingest::run(),
        Some("delivery") => delivery::run(),
        Some("revocation") => revocation::run(args.get(1).map_or("A,B,C,D", String::as_str)),
        // Nothing to run, or a criterion filter meant for `verify` (`cargo bench <filter>`).
        _ => return println!("{USAGE}"),
    }
    support::finish(started)
}
