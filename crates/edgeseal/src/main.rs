//! `edgeseal`: the agent and its command line. See `README.md` to start and
//! `docs/` for how it works. Wiring only: the logic lives in the library crates.

mod agent;
mod api;
mod bench;
mod bench_cloudsync;
mod bench_sharing;
mod cli;
mod cloudsync;
mod commands;
mod config;
mod control;
mod embedded;
mod keyfile;
mod live;
mod pki_cmd;
mod sensors_cmd;
mod share;
mod share_cmd;
mod timefmt;
mod ui;
mod web;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes: 0 success, 1 error, 2 usage or configuration error, 3 integrity problems found.
pub const EXIT_INTEGRITY: u8 = 3;

fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.chain().any(|c| c.to_string().starts_with("invalid configuration")) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
