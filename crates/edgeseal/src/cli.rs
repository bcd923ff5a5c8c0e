//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "edgeseal",
    version,
    about = "End-to-end encrypted storage and sharing of sensor data through untrusted databases and brokers",
    after_help = "Start with `edgeseal up`: it creates an agent in ./edgeseal-data if there is none and runs it."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Configuration file [default: ./edgeseal.toml if present]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory holding the keystore, local state and default store [env: EDGESEAL_DATA_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH, postgres://… or mysql://… [env: EDGESEAL_STORE]
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// Read the keystore passphrase from this file (else EDGESEAL_PASSPHRASE, else a prompt)
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this agent's identity (Ed25519 + X25519) in a 0600 keystore
    Init {
        /// The agent's name as peers see it [default: the host name]
        #[arg(long)]
        name: Option<String>,
        /// Protect the keystore with a passphrase (Argon2id)
        #[arg(long)]
        protect: bool,
    },
    /// Print this agent's public identity and fingerprint
    Id {
        #[arg(long)]
        json: bool,
    },
    /// Run the agent: read sensors, seal batches, store them
    Up(UpArgs),
    /// List the streams in the store and what waits locally
    Streams {
        #[arg(long)]
        json: bool,
    },
    /// Retrieve, verify and decrypt a time range of a stream
    Fetch(FetchArgs),
    /// Verify streams in the store: tampering, gaps, replay, reordering, truncation, rollback
    Verify {
        /// Only this stream [default: every stream of the device]
        #[arg(long)]
        stream: Option<String>,
        /// Device id [default: this agent]
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Manage stream keys
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Show the configuration
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Configured sensors and the GrovePi bus
    Sensors {
        #[command(subcommand)]
        command: SensorsCommand,
    },
    /// Measure performance
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Stop after this long (e.g. 30s, 10m) [default: until SIGINT/SIGTERM]
    #[arg(long = "for", value_name = "DURATION")]
    pub run_for: Option<String>,
    /// Replace the configured sensors: simulated, hwmon, stdin (JSON lines), none. Repeatable
    #[arg(long = "sensor", value_name = "KIND")]
    pub sensors: Vec<String>,
    /// Cut a batch after this many readings (0: no count limit)
    #[arg(long, value_name = "N")]
    pub batch_count: Option<usize>,
    /// Cut a batch when its oldest reading is this old (e.g. 10s; off: no age limit)
    #[arg(long, value_name = "DURATION")]
    pub batch_interval: Option<String>,
    /// The agent's name, used when `up` creates a new agent
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[arg(long)]
    pub stream: String,
    /// Device id [default: this agent]
    #[arg(long)]
    pub device: Option<String>,
    /// Start: RFC 3339, relative (-1h) or now [default: the beginning]
    #[arg(long, allow_hyphen_values = true)]
    pub from: Option<String>,
    /// End: RFC 3339, relative (-5m) or now [default: the end]
    #[arg(long, allow_hyphen_values = true)]
    pub to: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Refuse to print anything when verification finds a problem
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Start a new key epoch for a stream; older batches stay readable
    Rotate {
        #[arg(long)]
        stream: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every configuration key with its default and a comment
    PrintDefault,
    /// Print the effective configuration (passwords hidden)
    Show,
}

#[derive(Debug, Subcommand)]
pub enum SensorsCommand {
    /// What is configured, and each stream's last reading
    List {
        #[arg(long)]
        json: bool,
    },
    /// Scan an I²C bus for a GrovePi and the Grove LCD
    Probe {
        /// The bus [default: the [grovepi] bus setting]; `emulated` for the emulated board
        #[arg(long)]
        bus: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Seal+store and fetch+verify+open throughput, and bytes at rest, on SQLite
    Storage {
        /// Readings in total (spread over the three simulated sensors at 1 Hz)
        #[arg(long, default_value_t = 3_000_000)]
        readings: usize,
        /// Readings per batch
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long)]
        json: bool,
    },
}
