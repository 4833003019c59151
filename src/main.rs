//! `ssf-hub`: parses the command line and hands it to the library.

use clap::Parser as _;

/// See `Cargo.toml`: many small allocations, freed on other threads than made them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ssf_hub::cli::run(ssf_hub::cli::Cli::parse()));
}
