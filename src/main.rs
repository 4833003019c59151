//! `ssf-hub`: parses the command line and hands it to the library.

use clap::Parser as _;

fn main() {
    std::process::exit(ssf_hub::cli::run(ssf_hub::cli::Cli::parse()));
}
