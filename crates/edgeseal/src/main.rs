//! `edgeseal`: the agent's command line. See `README.md` to start and
//! `docs/` for how it works. Wiring only: clap, the configuration's layers,
//! passphrase prompts, the printers, and the wiring of `up`; the agent
//! itself is the `edgeseal-agent` library, its HTTP side `edgeseal-web`.

mod bench;
mod bench_agent;
mod bench_cloudsync;
mod bench_fleet;
mod bench_sharing;
mod broker_cmd;
mod cli;
mod commands;
mod config;
mod passphrase;
mod pki_cmd;
mod sensors_cmd;
mod share_cmd;
mod signals;
mod up;
mod writer;

use std::process::ExitCode;

use std::io::IsTerminal;
use std::sync::Arc;

use clap::Parser;
use edgeseal_agent::Error;

use crate::cli::{BenchCommand, Command, ConfigCommand, KeysCommand, SensorsCommand};
use crate::config::Overrides;
use crate::passphrase::PassphraseSource;

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
    match runtime.block_on(run(cli)) {
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

async fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    if let Command::Config { command: ConfigCommand::PrintDefault } = &cli.command {
        print!("{}", config::DEFAULT_TOML);
        return Ok(ExitCode::SUCCESS);
    }
    let mut overrides =
        Overrides { data_dir: cli.global.data_dir.clone(), store: cli.global.store.clone(), ..Default::default() };
    overrides.broker(cli.global.broker.clone());
    overrides.time_zone(cli.global.tz.clone());
    match &cli.command {
        Command::Init { name, .. } => overrides.name = name.clone(),
        Command::Broker { run, .. } => {
            overrides.broker = Some(config::BrokerOverrides {
                listen: run.listen.clone(),
                level: run.level,
                mutual_tls: run.mutual_tls,
                dir: run.dir.clone(),
            })
        }
        Command::Up(args) => {
            overrides.name = args.name.clone();
            if args.batch_count.is_some() || args.batch_interval.is_some() {
                overrides.batch =
                    Some(config::BatchOverrides { count: args.batch_count, interval: args.batch_interval.clone() });
            }
        }
        _ => {}
    }
    let cfg = config::load(cli.global.config.as_deref(), &overrides)?;
    edgeseal_agent::times::set_output_zone(cfg.time_zone.clone());
    let agent = matches!(cli.command, Command::Up(_) | Command::Broker { command: None, .. } | Command::Ingest { .. });
    init_logging(if agent { &cfg.log } else { "warn" });
    let pass = PassphraseSource { file: cli.global.passphrase_file.clone(), ..Default::default() };
    let cfg = Arc::new(cfg);
    // `bench agent` uses a database and a broker only when given on the command line.
    let (store_flag, broker_flag) = (cli.global.store.clone(), cli.global.broker.clone());
    match cli.command {
        Command::Init { protect, from: None, .. } => commands::init(&cfg, &pass, protect),
        Command::Init { protect, from: Some(from), backup_passphrase_file, name } => {
            let backup = PassphraseSource::backup(backup_passphrase_file);
            commands::restore(&cfg, &pass, protect, &from, &backup, name.is_some()).await
        }
        Command::Id { json } => commands::id(&cfg, json),
        Command::Up(args) => up::up(cfg, args, pass).await,
        Command::Streams { json } => commands::streams(cfg, json).await,
        Command::Fetch(args) => commands::fetch(cfg, &pass, args).await,
        Command::Verify { all_devices: true, json, .. } => commands::verify_all(cfg, json).await,
        Command::Verify { stream, device, json, .. } => commands::verify(cfg, stream, device, json).await,
        Command::Keys { command: KeysCommand::Rotate { stream } } => share_cmd::rotate(cfg, &pass, &stream).await,
        Command::Keys { command: KeysCommand::Export { to, backup_passphrase_file } } => {
            commands::export(&cfg, &pass, &to, &PassphraseSource::backup(backup_passphrase_file)).await
        }
        Command::Pair(args) => share_cmd::pair(cfg, &pass, args).await,
        Command::Peers { json } => share_cmd::peers(cfg, json).await,
        Command::Share { stream, peer, from, to, new } => {
            share_cmd::share(cfg, &pass, &stream, &peer, from, to, new).await
        }
        Command::Revoke { peer, stream } => share_cmd::revoke(cfg, &pass, &peer, stream).await,
        Command::Ingest { group, name, run_for } => {
            broker_cmd::ingest(&cfg, &group, name.as_deref(), run_for.as_deref()).await
        }
        Command::Watch { peer, stream, json, run_for } => {
            share_cmd::watch(cfg, &pass, peer, stream, json, run_for).await
        }
        Command::Config { command: ConfigCommand::Show { origins } } => {
            print!("{}", config::effective(cli.global.config.as_deref(), &overrides, origins)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command: ConfigCommand::PrintDefault } => Ok(ExitCode::SUCCESS),
        Command::Pki { command } => pki_cmd::pki(&cfg, command),
        Command::Broker { command: Some(command), .. } => pki_cmd::broker(command),
        Command::Broker { command: None, run } => broker_cmd::run(&cfg, run.run_for.as_deref()).await,
        Command::Sensors { command: SensorsCommand::List { json } } => sensors_cmd::list(cfg, &pass, json).await,
        Command::Sensors { command: SensorsCommand::Probe { bus } } => sensors_cmd::probe(&cfg, bus).await,
        Command::Bench { command: BenchCommand::Storage { readings, batch, json } } => {
            bench::storage(readings, batch, json).await
        }
        Command::Bench { command: BenchCommand::Agent { readings, batch, no_stdin, json } } => {
            bench_agent::agent(readings, batch, store_flag, broker_flag, no_stdin, json).await
        }
        Command::Bench { command: BenchCommand::Cloudsync { requests, connections, json } } => {
            bench_cloudsync::run(&cfg, requests, connections, json).await
        }
        Command::Bench { command: BenchCommand::Fleet { devices, workers, run_for, batch, every, kill, json } } => {
            let duration = |flag: &str, v: &str| {
                humantime::parse_duration(v).map_err(|_| anyhow::anyhow!("{flag} {v:?} is not a duration (e.g. 30s)"))
            };
            let (run_for, every) = (duration("--for", &run_for)?, duration("--every", &every)?);
            bench_fleet::fleet(&cfg, devices, workers, run_for, batch, every, kill, json).await
        }
        Command::Bench { command: BenchCommand::Sharing { messages, json } } => {
            bench_sharing::sharing(&cfg, messages, json).await
        }
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{default},sqlx=warn,mqtt5=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
