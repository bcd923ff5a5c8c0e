//! `edgeseal`: the agent's command line. See `README.md` to start and
//! `docs/` for how it works. Wiring only: clap, the configuration's layers,
//! passphrase prompts, the printers, and the wiring of `up`; the agent
//! itself is the `edgeseal-agent` library, its HTTP side `edgeseal-web`.

mod bench;
mod bench_cloudsync;
mod bench_sharing;
mod broker_cmd;
mod cli;
mod commands;
mod config;
mod passphrase;
mod pki_cmd;
mod sensors_cmd;
mod share_cmd;
mod up;
mod writer;

use std::process::ExitCode;

use clap::Parser;
use edgeseal_agent::Error;

/// Exit codes: 0 success, 1 error, 2 configuration error (clap's usage errors are 2 too), 3 integrity problems found.
pub const EXIT_CONFIG: u8 = 2;
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
            exit_code(&e)
        }
    }
}

/// The exit code an error calls for, by the agent error's variant anywhere in its chain.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    let agent = e.chain().find_map(|c| c.downcast_ref::<Error>());
    match agent {
        Some(Error::Config(_)) => ExitCode::from(EXIT_CONFIG),
        Some(Error::Integrity(_)) => ExitCode::from(EXIT_INTEGRITY),
        _ => ExitCode::FAILURE,
    }
}
