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
    /// MQTT broker for sharing and pairing: mqtt://HOST[:PORT] or mqtts://… [env: EDGESEAL_MQTT__BROKER]
    #[arg(long, global = true, value_name = "URL")]
    pub broker: Option<String>,
    /// Show times in this zone: UTC (the default), local (TZ), an IANA name (Europe/Paris) or +HH:MM [env: EDGESEAL_UI__TIME_ZONE]
    #[arg(long, global = true, value_name = "ZONE")]
    pub tz: Option<String>,
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
        /// Restore the identity from a backup (`keys export`): the same device and streams, on new hardware
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// The backup's passphrase in a file [default: EDGESEAL_BACKUP_PASSPHRASE, or a prompt]
        #[arg(long, value_name = "FILE", requires = "from")]
        backup_passphrase_file: Option<PathBuf>,
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
        /// A peer's name, device id or a unique prefix of it [default: this agent]
        #[arg(long, conflicts_with = "all_devices")]
        device: Option<String>,
        /// Every device the store holds streams of, in parallel: a line per device
        #[arg(long, conflicts_with = "stream")]
        all_devices: bool,
        #[arg(long)]
        json: bool,
    },
    /// Pair with another agent through the broker: without CODE, show a code and wait; with it, join
    Pair(PairArgs),
    /// List paired peers and the grants given to them
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Grant a paired peer a stream: live from now, or also from a past time
    Share {
        /// The stream to share
        stream: String,
        /// The peer: its name, device id (or its first 6+ hex digits) or fingerprint
        #[arg(long = "with", value_name = "PEER")]
        peer: String,
        /// Grant the readings from this time on (their own timestamps): RFC 3339 or relative (-1h) [default: now]
        #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
        from: Option<String>,
        /// Grant nothing that begins after this time (a past range) [default: no end]
        #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
        to: Option<String>,
        /// The stream has no readings yet and no configured sensor makes it (e.g. --sensor stdin's)
        #[arg(long)]
        new: bool,
    },
    /// Revoke a peer: it can open nothing sealed afterwards
    Revoke {
        /// The peer: its name, device id (or a prefix) or fingerprint
        peer: String,
        /// Only this stream [default: every stream granted to the peer]
        #[arg(long)]
        stream: Option<String>,
    },
    /// Store the batches devices publish to the broker (any number of these share the load)
    Ingest {
        /// The shared subscription's group: processes of one group split the batches between them.
        /// "" subscribes without sharing (every process gets every batch), for brokers without
        /// shared subscriptions: NATS 2.9 and RabbitMQ 3.x
        #[arg(long, default_value = "edgeseal-ingest")]
        group: String,
        /// This process's name in the group: its broker session then outlives it, so a restart
        /// under the same name is sent what it had taken and not stored [default: a fresh one]
        #[arg(long)]
        name: Option<String>,
        /// Stop after this long (e.g. 10m) [default: until SIGINT/SIGTERM]
        #[arg(long = "for", value_name = "DURATION")]
        run_for: Option<String>,
    },
    /// Show what peers share, live: verified, checked for replay and gaps, decrypted
    Watch {
        /// Only this peer
        #[arg(long)]
        peer: Option<String>,
        /// Only this stream
        #[arg(long)]
        stream: Option<String>,
        /// One JSON object per reading
        #[arg(long)]
        json: bool,
        /// Stop after this long (e.g. 30s) [default: until Ctrl-C]
        #[arg(long = "for", value_name = "DURATION")]
        run_for: Option<String>,
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
    /// Certificates for brokers and agents (replaces the manual openssl steps)
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Run the embedded MQTT broker alone (as inside `up`), or write a mosquitto set-up
    #[command(args_conflicts_with_subcommands = true)]
    Broker {
        #[command(subcommand)]
        command: Option<BrokerCommand>,
        #[command(flatten)]
        run: BrokerArgs,
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
pub struct PairArgs {
    /// The code the other agent shows (e.g. 7-amber-tiger; with --sas only its number)
    pub code: Option<String>,
    /// No code to type: both sides show a six-digit comparison code to confirm instead
    #[arg(long)]
    pub sas: bool,
    /// How long to wait for the other agent (e.g. 5m)
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub timeout: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
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
    /// Write an encrypted backup of this agent's keys (without it, a lost keystore makes every stored batch unreadable)
    Export {
        /// The backup file to create (mode 0600; never overwritten)
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// The backup's passphrase in a file [default: EDGESEAL_BACKUP_PASSPHRASE, or a prompt]
        #[arg(long, value_name = "FILE")]
        backup_passphrase_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every configuration key with its default and a comment
    PrintDefault,
    /// Print the effective configuration as TOML (passwords hidden)
    Show {
        /// One line per setting, with where it came from (default, file, env, flag)
        #[arg(long)]
        origins: bool,
    },
}

#[derive(Debug, Args)]
pub struct PkiOut {
    /// Directory for the PEM files [default: <data dir>/pki]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Validity in days
    #[arg(long, default_value_t = 825)]
    pub days: i64,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create a CA: ca.pem and ca-key.pem (0600)
    Ca {
        #[command(flatten)]
        out: PkiOut,
        /// The CA's common name
        #[arg(long, default_value = "edgeseal CA")]
        name: String,
        /// Replace an existing CA (certificates it signed stop verifying)
        #[arg(long)]
        force: bool,
    },
    /// Issue a broker certificate: server.pem and server-key.pem
    Server {
        #[command(flatten)]
        out: PkiOut,
        /// DNS names the broker is reached by (repeatable)
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses the broker is reached by (repeatable)
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
    },
    /// Issue a client certificate NAME.pem and NAME-key.pem (NAME is the MQTT user under mutual TLS)
    Client {
        name: String,
        #[command(flatten)]
        out: PkiOut,
    },
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// ADDRESS[:PORT] to listen on [default: broker.listen, 127.0.0.1]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// 1 = anonymous (port 1883), 2 = TLS (8883), 3 = TLS and passwords [default: broker.level, 1]
    #[arg(long)]
    pub level: Option<u8>,
    /// Also require client certificates (levels 2 and 3)
    #[arg(long)]
    pub mutual_tls: bool,
    /// Certificates, password file and persistent sessions [default: <data dir>/broker]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Stop after this long (e.g. 10m) [default: until SIGINT/SIGTERM]
    #[arg(long = "for", value_name = "DURATION")]
    pub run_for: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum BrokerCommand {
    /// Write a mosquitto.conf (and certificates, password file) for a security level
    MosquittoConfig {
        /// 1 = anonymous on 1883, 2 = TLS on 8883, 3 = TLS and passwords
        #[arg(long)]
        level: u8,
        /// Also require client certificates (levels 2 and 3)
        #[arg(long)]
        mutual_tls: bool,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Listener port [default: 1883 for level 1, 8883 otherwise]
        #[arg(long)]
        port: Option<u16>,
        /// Listener address
        #[arg(long, default_value = "0.0.0.0")]
        bind: String,
        /// Users for level 3 or mutual TLS (repeatable) [default: edgeseal]
        #[arg(long)]
        user: Vec<String>,
        /// DNS names in the broker certificate (repeatable) [default: localhost]
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses in the broker certificate (repeatable) [default: 127.0.0.1]
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
    },
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
    /// Live sharing through the broker given by --broker (or mqtt.broker): sealed vs plaintext
    /// messages/s, latency, losses, pairing time
    Sharing {
        /// Messages per throughput run
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        #[arg(long)]
        json: bool,
    },
    /// The CloudSync publish endpoint over a real socket, through the broker given by --broker:
    /// requests/s and latency under concurrent keep-alive connections
    Cloudsync {
        /// Requests in total
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        /// Concurrent connections
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long)]
        json: bool,
    },
    /// The agent's own path end to end: the pipeline `up` runs (source, journal, batcher, seal,
    /// outbox, store), and a real `up --sensor stdin` fed JSON lines; with --broker URL also
    /// publishing, and a reading's latency to a paired agent's live feed. --store URL: that
    /// database [default: SQLite in a temporary directory]
    Agent {
        /// Readings in total (spread over the three simulated sensors at 1 Hz)
        #[arg(long, default_value_t = 3_000_000)]
        readings: u64,
        /// Readings per batch (the agent's batch.count)
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Only the in-process pipeline, not the `up --sensor stdin` run
        #[arg(long)]
        no_stdin: bool,
        #[arg(long)]
        json: bool,
    },
    /// A fleet through the broker given by --broker into the store given by --store: simulated
    /// devices in this process (each its own identity and MQTT connection) publish sealed batches
    /// as `store = "broker"` devices do, `edgeseal ingest` workers store them; batches/s and
    /// readings/s stored, seal-to-stored latency, lost, CPU; then verify --all-devices
    Fleet {
        /// Simulated devices, each its own MQTT connection
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// `edgeseal ingest` processes
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// How long the devices publish (e.g. 30s)
        #[arg(long = "for", value_name = "DURATION", default_value = "30s")]
        run_for: String,
        /// Readings per batch
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// How often each device seals a batch (e.g. 100ms)
        #[arg(long, default_value = "1s")]
        every: String,
        /// Kill ingest worker 0 with SIGKILL halfway through and start it again under its name
        #[arg(long)]
        kill: bool,
        #[arg(long)]
        json: bool,
    },
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
