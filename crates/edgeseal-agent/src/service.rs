//! The service: one per process, opened once (local state, the store
//! connected and migrated on first use and then kept, identity, config), with
//! the operations the CLI, the REST API and the UI share. Each returns a
//! typed view ([`crate::views`]) or an [`Error`] a caller can act on.
//!
//! Inside `up` the service also reaches the running sealer (batch policy,
//! "store now") and hosts pairings started from the UI, API or CLI.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::times::format_ms;
use edgeseal_core::chain::{Audit, Finding, Scope, Status};
use edgeseal_core::keys::{Identity, PublicIdentity};
use edgeseal_core::pairing::PairCode;
use edgeseal_core::{DeviceId, Readings, StreamName};
use edgeseal_mqtt::link::Link;
use edgeseal_sensors::batcher::Policy;
use edgeseal_store::local::{LocalState, PeerRow};
use edgeseal_store::reader::{ReadOptions, StreamRead, open_batches, open_rows, read_stream_with};
use edgeseal_store::{AnyStore, ConnectOptions, Store, StoredBatch, TimeRange};
use tokio::sync::{OnceCell, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::batching::{self, Kept};
use crate::config::Config;
use crate::error::LocalContext;
use crate::pairing::{Side, run_pairing};
use crate::share::{Grants, KeyRing, Topics, find_peer};
use crate::views::*;
use crate::{Error, Result, datadir, now_ms};

/// How long a code shown on the page waits for the other agent.
pub const PAIR_WAIT: Duration = Duration::from_secs(300);

/// What the running sealer is asked to do.
#[derive(Debug)]
pub enum SealerCommand {
    /// Cut and seal every open batch now; answers what was sealed.
    StoreNow(oneshot::Sender<Result<StoreNowView>>),
    /// The batch policy of streams without their own.
    SetPolicy(Policy),
    /// Start a new batch of the stream at these reading times (a grant's ends).
    CutAt(StreamName, Vec<i64>),
}

/// The store, connected and migrated on first use, then kept for the
/// process's life. A failed attempt is not kept: the next use tries again.
#[derive(Debug)]
pub struct StoreCell {
    url: String,
    opts: ConnectOptions,
    sqlite_file: Option<PathBuf>,
    cell: OnceCell<AnyStore>,
}

impl StoreCell {
    pub fn new(cfg: &Config, lazy: bool) -> StoreCell {
        StoreCell {
            url: cfg.store_url.clone(),
            opts: ConnectOptions { lazy, timeout: cfg.store_timeout },
            sqlite_file: cfg.sqlite_file(),
            cell: OnceCell::new(),
        }
    }

    /// The store, ready for use.
    pub async fn get(&self) -> Result<&AnyStore, edgeseal_store::Error> {
        self.cell
            .get_or_try_init(|| async {
                let store = AnyStore::connect(&self.url, self.opts).await?;
                store.migrate().await?;
                if let Some(f) = &self.sqlite_file {
                    datadir::make_private(f);
                }
                Ok(store)
            })
            .await
    }

    /// The store's URL without its password.
    pub fn url(&self) -> String {
        edgeseal_store::redact_url(&self.url)
    }

    pub async fn close(&self) {
        if let Some(s) = self.cell.get() {
            s.close().await;
        }
    }
}

/// Which keys a process opens the service with.
#[derive(Debug)]
pub enum Keys {
    /// The public identity only: enough to list, verify and share-manage; no passphrase asked.
    Public,
    /// The whole identity (opening batches, signing grants and checkpoints).
    Secret(Box<Identity>),
}

/// The pairing a running agent hosts (one code shown at a time).
#[derive(Debug, Default)]
struct Hosting {
    stop: Option<CancellationToken>,
    /// Why the last hosted pairing failed: its error's kind and text, so the
    /// variant (broker unreachable, pairing refused, …) reaches the caller intact.
    failure: Option<(&'static str, String)>,
}

#[derive(Debug)]
pub struct Service {
    cfg: Arc<Config>,
    name: String,
    public: PublicIdentity,
    identity: Option<Arc<Identity>>,
    local: LocalState,
    store: Arc<StoreCell>,
    sealer: Option<mpsc::Sender<SealerCommand>>,
    policy: Mutex<Policy>,
    pairing: watch::Sender<PairingView>,
    hosting: Arc<Mutex<Hosting>>,
    tasks: TaskTracker,
    counts: Arc<Counts>,
}

/// What the service counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counts {
    pub pairings_started: AtomicU64,
    pub pairings_failed: AtomicU64,
    /// Findings of every audit this service made (`verify`, `fetch`, the API, the pages), by kind.
    pub findings: Mutex<BTreeMap<&'static str, u64>>,
}

/// A range read and audited, with the keys to open it: the CLI opens it in
/// chunks (constant memory), the API all at once ([`Service::read`]).
#[derive(Debug)]
pub struct Retrieved {
    pub device: DeviceId,
    pub stream: StreamName,
    pub read: StreamRead,
    keys: KeyRing,
}

impl Retrieved {
    /// Whether this agent holds any key of the stream (its own, or granted).
    pub fn granted(&self) -> bool {
        self.keys.holds(self.device, &self.stream)
    }

    /// Opens the authentic rows in `range` (`None`: not authentic; `Err`: no key or damaged).
    pub fn open(
        &self,
        range: std::ops::Range<usize>,
    ) -> Vec<Option<std::result::Result<Readings, edgeseal_core::Error>>> {
        open_rows(&self.read, range, &|epoch| self.keys.key(self.device, &self.stream, epoch))
    }
}

/// A row of a stream read by [`Service::stream_readings`]: its status and,
/// when authentic, its readings (`Err`: no key for its time, or damaged).
#[derive(Debug)]
pub struct OpenedRow {
    pub row: StoredBatch,
    pub status: Status,
    pub readings: Option<std::result::Result<Readings, edgeseal_core::Error>>,
}

/// A stream read to its end by [`Service::stream_readings`].
#[derive(Debug)]
pub struct Streamed {
    pub device: DeviceId,
    /// Whether this agent holds any key of the stream (its own, or granted).
    pub granted: bool,
    pub audit: Audit,
}

/// A stream name given in a request.
pub fn parse_stream(s: &str) -> Result<StreamName> {
    parse_stream_as("stream", s)
}

/// A stream name given as `what` (`--stream`, `stream`); the error names it.
pub fn parse_stream_as(what: &str, s: &str) -> Result<StreamName> {
    StreamName::new(s).map_err(|e| Error::bad(format!("{what} {s:?}: {e}")))
}

impl Service {
    /// Opens the agent in `cfg.data_dir` (it must exist): its local state now,
    /// the store on first use (`lazy_store`: connect without waiting, as the
    /// agent does, so it starts while the database is down).
    pub async fn open(cfg: Arc<Config>, keys: Keys, lazy_store: bool) -> Result<Service> {
        let (name, public) = datadir::load_public(&cfg.data_dir)?;
        let identity = match keys {
            Keys::Public => None,
            Keys::Secret(id) => Some(Arc::new(*id)),
        };
        let local = LocalState::open(&cfg.state_path()).await.local()?;
        datadir::make_private(&cfg.state_path());
        let store = Arc::new(StoreCell::new(&cfg, lazy_store));
        let (pairing, _) = watch::channel(PairingView::Idle);
        Ok(Service {
            policy: Mutex::new(cfg.batch),
            cfg,
            name,
            public,
            identity,
            local,
            store,
            sealer: None,
            pairing,
            hosting: Arc::default(),
            tasks: TaskTracker::new(),
            counts: Arc::default(),
        })
    }

    /// Connects the service to the running sealer, whose policy is `policy` now.
    pub fn attach_sealer(&mut self, sealer: mpsc::Sender<SealerCommand>, policy: Policy) {
        self.sealer = Some(sealer);
        *self.policy.get_mut().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// What this service counted, for `/metrics`.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn device(&self) -> DeviceId {
        self.public.device_id()
    }

    pub fn fingerprint(&self) -> String {
        self.public.fingerprint()
    }

    pub fn local(&self) -> &LocalState {
        &self.local
    }

    pub fn store_cell(&self) -> &Arc<StoreCell> {
        &self.store
    }

    /// The store, ready (connected and migrated once).
    pub async fn store(&self) -> Result<&AnyStore> {
        self.store.get().await.map_err(Error::store)
    }

    /// The secret identity; the service was opened with it, or this is a bug of the caller.
    pub fn identity(&self) -> Result<&Arc<Identity>> {
        self.identity.as_ref().ok_or_else(|| Error::Internal("this command opened the agent without its keys".into()))
    }

    /// Tasks the service spawned (pairings); drained at shutdown.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Ends what the service started and closes its connections.
    pub async fn close(&self, wait: Duration) {
        self.cancel_pairing();
        self.tasks.close();
        let _ = tokio::time::timeout(wait, self.tasks.wait()).await;
        self.store.close().await;
        self.local.close().await;
    }

    pub fn identity_view(&self) -> IdentityView {
        IdentityView::new(&self.name, &self.public)
    }

    /// Every stream in the store and what waits locally (`streams --json`).
    pub async fn streams(&self) -> Result<Vec<StreamView>> {
        let device = self.device();
        let mut rows: BTreeMap<(String, bool, DeviceId), StreamView> = BTreeMap::new();
        // A device that keeps no store (store = "broker") shows what waits locally.
        let stored = match self.cfg.stores_through_broker() {
            true => Vec::new(),
            false => self.store().await?.streams().await.map_err(Error::store)?,
        };
        for s in stored {
            let own = s.device == device;
            rows.insert(
                (s.stream.clone(), !own, s.device),
                StreamView {
                    stream: s.stream,
                    device: s.device.to_string(),
                    own,
                    batches: s.batches,
                    readings: s.readings,
                    first: Some(format_ms(s.first_ts)),
                    last: Some(format_ms(s.last_ts)),
                    head_seq: Some(s.head_seq),
                    epoch: None,
                    pending_readings: None,
                    outbox_batches: None,
                },
            );
        }
        // This agent's own streams: sealed, or with readings and batches still waiting locally.
        for (name, st) in self.local.stream_states().await.local()? {
            let v = rows.entry((name.to_string(), false, device)).or_insert_with(|| empty_own(name.as_str(), device));
            v.epoch = Some(st.epoch);
            v.pending_readings = Some(0);
            v.outbox_batches = Some(0);
        }
        for (name, b) in self.local.backlog().await.local()? {
            let v = rows.entry((name.clone(), false, device)).or_insert_with(|| empty_own(&name, device));
            v.epoch.get_or_insert(0);
            v.pending_readings = Some(b.pending_readings);
            v.outbox_batches = Some(b.outbox_batches);
        }
        Ok(rows.into_values().collect())
    }

    /// Fails with [`Error::NoSuchStream`], naming the streams there are, unless
    /// the store holds batches of `stream` of `device` or this agent knows it
    /// (it remembers a head of it, or, for its own, has state or readings waiting).
    async fn known_stream(&self, device: DeviceId, stream: &StreamName) -> Result<()> {
        let store = self.store().await?;
        if store.head_seq(device, stream).await.map_err(Error::store)?.is_some()
            || self.local.remembered(device, stream).await.local()?.is_some()
        {
            return Ok(());
        }
        if device == self.device()
            && (self.local.stream_states().await.local()?.iter().any(|(s, _)| s == stream)
                || self.local.backlog().await.local()?.contains_key(stream.as_str()))
        {
            return Ok(());
        }
        let names: Vec<String> = store
            .streams()
            .await
            .map_err(Error::store)?
            .into_iter()
            .filter(|s| s.device == device)
            .map(|s| s.stream)
            .collect();
        let whose = if device == self.device() { "this agent".to_string() } else { format!("device {device}") };
        Err(Error::NoSuchStream(match names.as_slice() {
            [] => format!("no stream {stream:?} of {whose}: the store holds no stream of it yet"),
            _ => format!("no stream {stream:?} of {whose}; its streams: {}", names.join(", ")),
        }))
    }

    /// The device a `--device` names: this agent when none; else a device id,
    /// this agent's name, or a peer's name, unique device-id prefix (6+ hex
    /// digits, as `streams` shows 8) or fingerprint.
    async fn device_named(&self, arg: Option<&str>) -> Result<DeviceId> {
        let Some(s) = arg.map(str::trim).filter(|s| !s.is_empty()) else { return Ok(self.device()) };
        if let Ok(d) = s.parse::<DeviceId>() {
            return Ok(d);
        }
        if s.eq_ignore_ascii_case(&self.name) {
            return Ok(self.device());
        }
        let peers = self.local.peers().await.local()?;
        crate::share::find_peer(&peers, s).map(|p| p.device)
    }

    /// Fails with [`Error::NoSuchStream`] unless `stream` is one of this
    /// agent's: a configured sensor's, or one it has sealed, holds readings
    /// of, or finds in the store (a store that does not answer blocks nothing).
    async fn own_stream(&self, stream: &StreamName) -> Result<()> {
        let configured: Vec<StreamName> = self.cfg.sensors.iter().flat_map(|s| s.streams()).collect();
        let sealed: Vec<StreamName> = self.local.stream_states().await.local()?.into_iter().map(|(s, _)| s).collect();
        if configured.contains(stream)
            || sealed.contains(stream)
            || self.local.backlog().await.local()?.contains_key(stream.as_str())
        {
            return Ok(());
        }
        match self.store().await {
            Ok(store) => match store.head_seq(self.device(), stream).await {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return Ok(()),
            },
            Err(_) => return Ok(()),
        }
        let mut known: Vec<String> = configured.iter().chain(&sealed).map(ToString::to_string).collect();
        known.sort();
        known.dedup();
        let known = if known.is_empty() { "none yet".to_string() } else { known.join(", ") };
        Err(Error::NoSuchStream(format!(
            "no stream {stream:?} of this agent (its streams: {known}); to name one before its first reading, pass --new"
        )))
    }

    /// Fetches and audits one stream, all at once, remembering any newer authentic head.
    async fn audited(
        &self,
        device: DeviceId,
        stream: &StreamName,
        range: TimeRange,
        scope: Scope,
    ) -> Result<StreamRead> {
        let mut read = StreamRead::default();
        let audit = self.audit_stream(device, stream, range, scope, true, |chunk| read.take(chunk)).await?;
        Ok(read.with(audit))
    }

    /// Reads and audits one stream in the store's order (constant memory;
    /// `shown` gets the rows, with their sealed bytes when `bytes`, a chunk at a
    /// time as each is decided), then remembers any newer authentic head and
    /// names checkpoints that vanished.
    async fn audit_stream(
        &self,
        device: DeviceId,
        stream: &StreamName,
        range: TimeRange,
        scope: Scope,
        bytes: bool,
        shown: impl FnMut(Vec<(StoredBatch, Status)>) -> edgeseal_store::Result<()>,
    ) -> Result<Audit> {
        let store = self.store().await?;
        let remembered = self.local.remembered(device, stream).await.local()?;
        let opts = ReadOptions { range, remembered, scope, bytes };
        let mut audit = read_stream_with(store, device, stream, opts, shown).await.map_err(Error::store)?;
        if !audit.findings.is_empty() {
            let mut by_kind = self.counts.findings.lock().unwrap_or_else(|p| p.into_inner());
            for f in &audit.findings {
                *by_kind.entry(f.kind()).or_default() += 1;
            }
        }
        if let Some(head) = audit.head {
            self.local.remember(device, stream, head).await.local()?;
        }
        // Checkpoint rows that vanished: the store's newest is older than one seen before.
        let seen = self.local.checkpoint_seen(device, stream).await.local()?;
        if let Some(seen) = seen
            && audit.checkpoint.is_none_or(|s| s < seen)
        {
            audit.findings.push(Finding::CheckpointsRemoved { seen, store: audit.checkpoint });
        }
        if let Some(cp) = audit.checkpoint.filter(|&c| seen.is_none_or(|s| c > s)) {
            self.local.saw_checkpoint(device, stream, cp).await.local()?;
        }
        Ok(audit)
    }

    /// What a read of a time range of a stream (of `device`, default this
    /// agent) needs: whose it is, what to check it against, the keys to open it.
    async fn to_read(
        &self,
        stream: &StreamName,
        device: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<(DeviceId, Scope, KeyRing)> {
        let identity = self.identity()?.clone();
        let device = self.device_named(device).await?;
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            return Err(Error::bad("from is after to"));
        }
        let now = now_ms();
        let scope = Scope { from_start: from.is_none(), to_end: to.is_none_or(|t| t >= now) };
        self.known_stream(device, stream).await?;
        let mut keys = KeyRing::load(identity.clone(), &self.local).await?;
        if device != identity.device_id() {
            // A grant the broker never brought may be in the store (its owner or ingest wrote it).
            let stored = self.store().await?.grants_to(identity.device_id()).await.map_err(Error::store)?;
            keys.add_stored(&stored, &self.local.peers().await.local()?);
        }
        Ok((device, scope, keys))
    }

    /// A time range of a stream (of `device`, default this agent), audited, with the keys to open it.
    pub async fn retrieve(
        &self,
        stream: &StreamName,
        device: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<Retrieved> {
        let (device, scope, keys) = self.to_read(stream, device, from, to).await?;
        let read = self.audited(device, stream, TimeRange { from, to }, scope).await?;
        Ok(Retrieved { device, stream: stream.clone(), read, keys })
    }

    /// A time range of a stream, read in the store's order in constant
    /// memory (`fetch`): `shown` gets each chunk of rows as they are decided,
    /// each with its status and, when authentic and this agent holds its key,
    /// its readings. Without `shown`, the rows are audited only, nothing
    /// opened or kept (`fetch --strict`'s first read). The audit is whole
    /// once the read is.
    pub async fn stream_readings(
        &self,
        stream: &StreamName,
        device: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
        mut shown: Option<&mut dyn FnMut(Vec<OpenedRow>) -> edgeseal_store::Result<()>>,
    ) -> Result<Streamed> {
        let (device, scope, keys) = self.to_read(stream, device, from, to).await?;
        let key = |epoch| keys.key(device, stream, epoch);
        let range = TimeRange { from, to };
        let audit = self
            .audit_stream(device, stream, range, scope, shown.is_some(), |chunk| {
                let Some(shown) = shown.as_mut() else { return Ok(()) };
                let opened = open_batches(&chunk, &key);
                shown(
                    chunk
                        .into_iter()
                        .zip(opened)
                        .map(|((row, status), readings)| OpenedRow { row, status, readings })
                        .collect(),
                )
            })
            .await?;
        Ok(Streamed { device, granted: keys.holds(device, stream), audit })
    }

    /// A time range of a stream, verified and opened: every batch with its
    /// status, the findings, and the readings of the authentic batches this
    /// agent holds keys for.
    pub async fn read(
        &self,
        stream: &StreamName,
        device: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<ReadView> {
        let got = self.retrieve(stream, device, from, to).await?;
        let keep = |t: i64| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t <= e);
        let (mut readings, mut unreadable, mut outside) = (Vec::new(), 0usize, 0usize);
        for o in got.open(0..got.read.rows.len()).into_iter().flatten() {
            match o {
                Ok(r) => readings.extend(ReadingView::of_batch(stream, &r, keep)),
                // Outside the time granted: not this agent's to read, not damage.
                Err(edgeseal_core::Error::NotGranted) => outside += 1,
                Err(_) => unreadable += 1,
            }
        }
        let batches = got
            .read
            .rows
            .iter()
            .zip(&got.read.audit.statuses)
            .map(|(r, s)| BatchView {
                seq: r.seq,
                first: format_ms(r.first_ts),
                last: format_ms(r.last_ts),
                status: s.as_str().to_string(),
            })
            .collect();
        Ok(ReadView {
            stream: stream.to_string(),
            device: got.device.to_string(),
            verified: got.read.audit.is_clean(),
            batches,
            findings: got.read.audit.findings.iter().map(FindingView::from).collect(),
            readings,
            unreadable_batches: unreadable,
            granted: got.granted(),
            outside_grant_batches: outside,
        })
    }

    /// Audits streams of `device` (default this agent): `stream`, or every one.
    pub async fn verify(&self, stream: Option<&str>, device: Option<&str>) -> Result<VerifyView> {
        let device = self.device_named(device).await?;
        let streams: Vec<StreamName> = match stream {
            Some(s) => {
                let s = parse_stream(s)?;
                self.known_stream(device, &s).await?;
                vec![s]
            }
            None => {
                let store = self.store().await?;
                let mut names: Vec<StreamName> = store
                    .streams()
                    .await
                    .map_err(Error::store)?
                    .into_iter()
                    .filter(|s| s.device == device)
                    .filter_map(|s| StreamName::new(s.stream).ok())
                    .collect();
                names.extend(self.local.remembered_streams(device).await.local()?);
                names.sort();
                names.dedup();
                names
            }
        };
        let mut out = Vec::with_capacity(streams.len());
        for s in &streams {
            // Row by row, holding no sealed bytes: constant memory however long the stream.
            let audit = self.audit_stream(device, s, TimeRange::default(), Scope::WHOLE, false, |_| Ok(())).await?;
            out.push(StreamAudit {
                stream: s.to_string(),
                device: device.to_string(),
                batches: audit.rows as usize,
                verified: audit.authentic as usize,
                head_seq: audit.head.map(|h| h.seq),
                start: audit.start,
                ok: audit.is_clean(),
                findings: audit.findings.iter().map(FindingView::from).collect(),
            });
        }
        Ok(VerifyView { ok: out.iter().all(|s| s.ok), device: device.to_string(), streams: out })
    }

    /// Every device the store holds streams of (and this agent), each audited
    /// as [`Service::verify`] audits one, `parallel` at a time; this agent first.
    /// A device needs no pairing for this: its batches carry the key they are signed with.
    pub async fn verify_all(&self, parallel: usize) -> Result<Vec<VerifyView>> {
        use futures_util::{StreamExt as _, TryStreamExt as _};
        let store = self.store().await?;
        let mut devices: Vec<DeviceId> =
            store.streams().await.map_err(Error::store)?.into_iter().map(|s| s.device).collect();
        devices.push(self.device());
        devices.sort();
        devices.dedup();
        let ids: Vec<String> = devices.iter().map(DeviceId::to_string).collect();
        let mut out: Vec<VerifyView> = futures_util::stream::iter(&ids)
            .map(|d| self.verify(None, Some(d)))
            .buffer_unordered(parallel.max(1))
            .try_collect()
            .await?;
        let me = self.device().to_string();
        out.sort_by(|a, b| (a.device != me, &a.device).cmp(&(b.device != me, &b.device)));
        Ok(out)
    }

    /// Paired peers with the grants each way (`peers --json`).
    pub async fn peers(&self) -> Result<Vec<PeerView>> {
        let peers = self.local.peers().await.local()?;
        let given = self.local.grants_out().await.local()?;
        let received = self.local.grants_in().await.local()?;
        Ok(peers
            .iter()
            .map(|p| {
                let grants = given
                    .iter()
                    .filter(|g| g.peer == p.device)
                    .map(|g| GrantView::Given {
                        stream: g.stream.to_string(),
                        from: format_ms(g.from_ms),
                        to: g.to_ms.map(format_ms),
                        revoked: g.revoked,
                        published: g.published,
                    })
                    .chain(received.iter().filter(|(o, ..)| *o == p.device).map(|(_, s, _, revoked)| {
                        GrantView::Received { stream: s.to_string(), revoked: revoked.is_some() }
                    }))
                    .collect();
                PeerView::new(p, grants)
            })
            .collect())
    }

    async fn find_peer(&self, what: &str) -> Result<PeerRow> {
        let peers = self.local.peers().await.local()?;
        find_peer(&peers, what).cloned()
    }

    fn grants(&self) -> Result<Grants<'_>> {
        Ok(Grants { identity: self.identity()?, local: &self.local })
    }

    /// Lets `peer` (name, device id or fingerprint) read the batches of
    /// `stream` that begin from `from_ms` (default: now, live only) up to
    /// `to_ms` (default: no end), and nothing else. Stored; published by the
    /// running agent, whose sealer starts a new batch at those times.
    pub async fn grant(
        &self,
        peer: &str,
        stream: &StreamName,
        (from_ms, to_ms): (Option<i64>, Option<i64>),
        new: bool,
    ) -> Result<GrantedView> {
        let peer = self.find_peer(peer).await?;
        if !new {
            self.own_stream(stream).await?;
        }
        let from_ms = from_ms.unwrap_or_else(now_ms);
        let epoch = self.grants()?.share(&peer, stream, from_ms, to_ms).await?;
        if let Some(sealer) = &self.sealer {
            let cuts = crate::share::grant_times(from_ms, to_ms);
            let _ = sealer.send(SealerCommand::CutAt(stream.clone(), cuts)).await;
        }
        Ok(GrantedView { peer: peer.name, device_id: peer.device.to_string(), stream: stream.to_string(), epoch })
    }

    /// Revokes `peer`'s grants of `streams` (all when empty).
    pub async fn revoke(&self, peer: &str, streams: &[StreamName]) -> Result<RevokedView> {
        let peer = self.find_peer(peer).await?;
        let done = self.grants()?.revoke(&peer, streams).await?;
        if done.is_empty() {
            let what = streams.iter().map(|s| format!(" of {s}")).collect::<String>();
            return Err(Error::NoSuchGrant { peer: peer.name, what });
        }
        Ok(RevokedView {
            peer: peer.name,
            device_id: peer.device.to_string(),
            revoked: done.iter().map(ToString::to_string).collect(),
        })
    }

    /// Seals `stream` under a new key epoch from now on.
    pub async fn rotate(&self, stream: &StreamName) -> Result<RotatedView> {
        self.own_stream(stream).await?;
        let epoch = self.grants()?.rotate(stream).await?;
        Ok(RotatedView { stream: stream.to_string(), epoch })
    }

    /// Publishes (retained) every grant not yet published; returns how many went out.
    pub async fn publish_grants(&self, link: &Link) -> Result<usize> {
        self.grants()?.publish(link, &Topics::new(&self.cfg.mqtt.prefix), false).await
    }

    /// Whether a grant waits to be published.
    pub async fn grants_unpublished(&self) -> Result<bool> {
        Ok(self.local.grants_out().await.local()?.iter().any(|g| !g.published))
    }

    pub fn policy(&self) -> Policy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The batch policy, with the streams that have their own.
    pub fn batching(&self) -> BatchingView {
        let p = PolicyView::from(self.policy());
        let per_stream = self.cfg.per_stream.iter().map(|(s, p)| (s.to_string(), PolicyView::from(*p))).collect();
        BatchingView { count: p.count, interval: p.interval, per_stream }
    }

    fn sealer(&self) -> Result<&mpsc::Sender<SealerCommand>> {
        self.sealer.as_ref().ok_or_else(|| Error::Stopping("this agent is not running (`edgeseal up`)".into()))
    }

    /// Applies `p` to the running sealer and keeps it in state.db for the next start.
    pub async fn set_batching(&self, p: Policy) -> Result<BatchingView> {
        let sealer = self.sealer()?;
        let value = serde_json::to_string(&Kept { count: p.count, interval_ms: p.interval_ms })
            .map_err(|e| Error::Internal(e.to_string()))?;
        self.local.put_setting(batching::SETTING, &value).await.local()?;
        sealer.send(SealerCommand::SetPolicy(p)).await.map_err(|_| Error::Stopping("the agent is stopping".into()))?;
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = p;
        Ok(self.batching())
    }

    /// Seals every open batch now (they go to the store and to peers next).
    pub async fn store_now(&self) -> Result<StoreNowView> {
        let (tx, rx) = oneshot::channel();
        let stopping = || Error::Stopping("the agent is stopping".into());
        self.sealer()?.send(SealerCommand::StoreNow(tx)).await.map_err(|_| stopping())?;
        rx.await.map_err(|_| stopping())?
    }

    /// Where the pairing started here stands.
    pub fn pairing(&self) -> PairingView {
        self.pairing.borrow().clone()
    }

    /// Changes to the pairing state.
    pub fn pairing_changes(&self) -> watch::Receiver<PairingView> {
        self.pairing.subscribe()
    }

    fn check_sharing(&self) -> Result<()> {
        if !self.cfg.has_broker() {
            return Err(Error::NoBroker(
                "this agent has no MQTT broker to pair through: set mqtt.broker, or let `up` run the embedded one (broker.listen)".into(),
            ));
        }
        Ok(())
    }

    /// Starts showing a pairing code (ending one shown before) that waits up to
    /// `wait`; returns once the agent listens for it.
    pub async fn host(&self, wait: Duration) -> Result<PairingView> {
        self.check_sharing()?;
        let identity = self.identity()?.clone();
        self.counts.pairings_started.fetch_add(1, Ordering::Relaxed);
        let counts = self.counts.clone();
        let stop = CancellationToken::new();
        if let Some(before) = self.hosting.lock().unwrap_or_else(|p| p.into_inner()).stop.replace(stop.clone()) {
            before.cancel();
        }
        let (listening_tx, listening) = oneshot::channel::<()>();
        let (cfg, local, name, slot) = (self.cfg.clone(), self.local.clone(), self.name.clone(), self.pairing.clone());
        let hosting = self.hosting.clone();
        let task = self.tasks.spawn(async move {
            let shown = |code: PairCode| {
                let until = format_ms(now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)));
                slot.send_replace(PairingView::Waiting { code: code.to_string(), until });
                let _ = listening_tx.send(());
            };
            let no_sas = |_: String, _: &_| Ok(());
            let pairing = run_pairing(&cfg, &local, &identity, &name, Side::Host { sas: false }, wait, shown, no_sas);
            tokio::select! {
                res = pairing => {
                    if let Err(e) = &res {
                        counts.pairings_failed.fetch_add(1, Ordering::Relaxed);
                        hosting.lock().unwrap_or_else(|p| p.into_inner()).failure = Some((e.kind(), e.to_string()));
                    }
                    slot.send_replace(outcome(res));
                }
                _ = stop.cancelled() => {}
            }
        });
        // Dropped unsent when pairing ended before a code was shown: the task then records why
        // just after, so wait for it rather than read the state before it does.
        if listening.await.is_err() {
            let _ = task.await;
        }
        match self.pairing() {
            PairingView::Failed { error } => Err(self.hosting_failure(error)),
            p => Ok(p),
        }
    }

    /// Why the pairing this agent hosted failed, as the error it failed with.
    pub fn hosting_failure(&self, shown: String) -> Error {
        match self.hosting.lock().unwrap_or_else(|p| p.into_inner()).failure.take() {
            Some((kind, message)) => Error::from_wire(kind, message),
            None => Error::PairingFailed(shown),
        }
    }

    /// Stops showing a pairing code.
    pub fn cancel_pairing(&self) {
        if let Some(stop) = self.hosting.lock().unwrap_or_else(|p| p.into_inner()).stop.take() {
            stop.cancel();
        }
        self.pairing.send_replace(PairingView::Idle);
    }

    /// Enters the code another agent shows; waits until paired (or failed).
    pub async fn join(&self, code: &str) -> Result<PeerView> {
        self.check_sharing()?;
        let identity = self.identity()?.clone();
        let code: PairCode = code.trim().parse().map_err(|e: edgeseal_core::Error| Error::bad(e.to_string()))?;
        self.counts.pairings_started.fetch_add(1, Ordering::Relaxed);
        let no_sas = |_: String, _: &_| Ok(());
        let res =
            run_pairing(&self.cfg, &self.local, &identity, &self.name, Side::Join(code), PAIR_WAIT, |_| {}, no_sas)
                .await;
        match res {
            Ok(peer) => {
                let view = PeerView::new(&peer, Vec::new());
                self.pairing.send_replace(PairingView::Paired { peer: view.clone() });
                Ok(view)
            }
            Err(e) => {
                self.counts.pairings_failed.fetch_add(1, Ordering::Relaxed);
                self.pairing.send_replace(PairingView::Failed { error: e.to_string() });
                Err(e)
            }
        }
    }
}

fn empty_own(name: &str, device: DeviceId) -> StreamView {
    StreamView {
        stream: name.to_string(),
        device: device.to_string(),
        own: true,
        batches: 0,
        readings: 0,
        first: None,
        last: None,
        head_seq: None,
        epoch: None,
        pending_readings: None,
        outbox_batches: None,
    }
}

fn outcome(res: Result<PeerRow>) -> PairingView {
    match res {
        Ok(peer) => PairingView::Paired { peer: PeerView::new(&peer, Vec::new()) },
        Err(e) => PairingView::Failed { error: e.to_string() },
    }
}
