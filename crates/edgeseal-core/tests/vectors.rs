//! Known-answer vectors (`tests/vectors/*.json`): format v2 batches, live
//! frames and the key tree checked byte for byte as this build seals them;
//! format v1 files (sealed by earlier builds) parsed and opened as they are;
//! and malformed inputs that must be rejected without a panic.
//! `EDGESEAL_WRITE_VECTORS=1 cargo test -p edgeseal-core --test vectors`
//! regenerates them (only when the format changes on purpose).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use edgeseal_core::checkpoint::Checkpoint;
use edgeseal_core::envelope::{self, Authorship, BatchHash, SealParams, seal};
use edgeseal_core::frame::{FrameParams, parse_frame, seal_frame};
use edgeseal_core::grant::range_nodes;
use edgeseal_core::keys::{EpochKeys, Identity, LeafCache, TreeNode, cover, slot_of};
use edgeseal_core::retention::Retention;
use edgeseal_core::{BlobBatch, Readings, ScalarBatch, StreamName, codec};
use serde_json::{Value, json};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn writing() -> bool {
    std::env::var("EDGESEAL_WRITE_VECTORS").is_ok_and(|v| v == "1")
}

fn identity_secret() -> [u8; 96] {
    let mut s = [0u8; 96];
    for (i, b) in s.iter_mut().enumerate() {
        *b = i as u8;
    }
    s
}

struct Case {
    name: &'static str,
    /// The hashes of the batches before it that it covers (v2, signed only).
    covers: Vec<[u8; 32]>,
    stream: &'static str,
    seq: u64,
    epoch: u32,
    prev: [u8; 32],
    salt: [u8; 16],
    signed: bool,
    readings: Readings,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "batch-scalar-signed",
            stream: "temperature",
            seq: 0,
            epoch: 0,
            prev: [0; 32],
            salt: [0x11; 16],
            signed: true,
            covers: vec![],
            readings: Readings::Scalar(ScalarBatch {
                unit: "°C".into(),
                ts: vec![1_767_225_600_000, 1_767_225_601_000, 1_767_225_602_000, 1_767_225_603_000],
                values: vec![21.5, 21.6, 21.6, 21.4],
                labels: vec![],
            }),
        },
        Case {
            name: "batch-scalar-labels-raw",
            stream: "lab.meter",
            seq: 41,
            epoch: 3,
            prev: [0xab; 32],
            salt: [0x22; 16],
            signed: true,
            covers: vec![],
            readings: Readings::Scalar(ScalarBatch {
                unit: "V".into(),
                ts: vec![1000, 1500, 1490],
                values: vec![0.1 + 0.2, f64::NAN, -0.0],
                labels: vec![Some("Normal".into()), None, Some("Hot".into())],
            }),
        },
        Case {
            name: "batch-blob-signed",
            stream: "door.camera",
            seq: 7,
            epoch: 1,
            prev: [0x5a; 32],
            salt: [0x33; 16],
            signed: true,
            covers: vec![],
            readings: Readings::Blob(BlobBatch {
                media_type: "image/jpeg".into(),
                ts: vec![1_767_225_600_000, 1_767_225_660_000],
                items: vec![vec![0xff, 0xd8, 0xff, 0xe0], vec![]],
            }),
        },
        Case {
            name: "batch-scalar-unsigned",
            stream: "temperature",
            seq: 1,
            epoch: 0,
            prev: [0x01; 32],
            salt: [0x44; 16],
            signed: false,
            covers: vec![],
            readings: Readings::Scalar(ScalarBatch {
                unit: "°C".into(),
                ts: vec![5],
                values: vec![20.0],
                labels: vec![],
            }),
        },
        // A batch of one labelled reading (the live "every reading" cadence with
        // the original's description): the label is kept.
        Case {
            name: "batch-scalar-one-labelled",
            stream: "temperature",
            seq: 2,
            epoch: 0,
            prev: [0x02; 32],
            salt: [0x55; 16],
            signed: true,
            covers: vec![],
            readings: Readings::Scalar(ScalarBatch {
                unit: "°C".into(),
                ts: vec![1_767_225_600_000],
                values: vec![21.5],
                labels: vec![Some("Normal".into())],
            }),
        },
        // -0.0 among values that would otherwise scale to decimals: raw IEEE 754, sign kept.
        Case {
            name: "batch-scalar-negative-zero",
            stream: "temperature",
            seq: 3,
            epoch: 0,
            prev: [0x03; 32],
            salt: [0x66; 16],
            signed: true,
            covers: vec![],
            readings: Readings::Scalar(ScalarBatch {
                unit: "°C".into(),
                ts: vec![1_767_225_600_000, 1_767_225_601_000, 1_767_225_602_000],
                values: vec![0.5, -0.0, 0.0],
                labels: vec![],
            }),
        },
        // The last batch of a round: it vouches for the three before it.
        Case {
            name: "round-signed",
            stream: "temperature",
            seq: 12,
            epoch: 0,
            prev: [0x0b; 32],
            salt: [0x88; 16],
            signed: true,
            covers: vec![[0x09; 32], [0x0a; 32], [0x0b; 32]],
            readings: Readings::Scalar(ScalarBatch {
                unit: "°C".into(),
                ts: vec![1_767_225_612_000],
                values: vec![21.7],
                labels: vec![],
            }),
        },
    ]
}

fn readings_json(r: &Readings) -> Value {
    match r {
        Readings::Scalar(b) => json!({
            "kind": "scalar",
            "unit": b.unit,
            "ts": b.ts,
            "value_bits": b.values.iter().map(|v| format!("{:016x}", v.to_bits())).collect::<Vec<_>>(),
            "labels": b.labels,
        }),
        Readings::Blob(b) => json!({
            "kind": "blob",
            "media_type": b.media_type,
            "ts": b.ts,
            "items": b.items.iter().map(hex::encode).collect::<Vec<_>>(),
        }),
    }
}

/// Files sealed by format v1 builds still parse, verify and open (with the whole epoch key).
#[test]
fn format_v1_is_still_read() {
    let id = Identity::from_secret_bytes(&identity_secret());
    let mut n = 0;
    for c in cases().into_iter().filter(|c| c.covers.is_empty()) {
        let stored: Value =
            serde_json::from_str(&std::fs::read_to_string(dir().join(format!("{}.json", c.name))).unwrap()).unwrap();
        let stream = StreamName::new(c.stream).unwrap();
        let key = id.epoch_key(&stream, c.epoch);
        assert_eq!(stored["epoch_key"], hex::encode(key.0.expose_secret()));
        let bytes = hex::decode(stored["sealed"].as_str().unwrap()).unwrap();
        let parsed = envelope::parse(&bytes).unwrap();
        assert_eq!(parsed.header.version, 1);
        assert_eq!(parsed.hash().to_string(), stored["hash"].as_str().unwrap());
        let want = if c.signed { Authorship::Device } else { Authorship::Unsigned };
        assert_eq!(parsed.authorship(&parsed.hash()), want);
        assert_eq!(readings_json(&parsed.open(&key.clone().into()).unwrap()), readings_json(&c.readings), "{}", c.name);
        // A v1 batch needs the whole epoch: tree nodes of a time range do not open it.
        let mut part = EpochKeys::default();
        for node in range_nodes(&key, 1, i64::MAX) {
            part.add(node);
        }
        assert_eq!(parsed.open(&part).unwrap_err(), edgeseal_core::Error::NotGranted);
        n += 1;
    }
    assert_eq!(n, 6);
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("frame-scalar.json")).unwrap()).unwrap();
    let bytes = hex::decode(stored["frame"].as_str().unwrap()).unwrap();
    let p = parse_frame(&bytes).unwrap();
    assert_eq!((p.header.version, p.authorship()), (1, Authorship::Device));
    let key = id.epoch_key(&StreamName::new("temperature").unwrap(), 0);
    assert!(p.open(&key.into()).is_ok());
}

#[test]
fn known_answers() {
    let id = Identity::from_secret_bytes(&identity_secret());
    for c in cases() {
        let stream = StreamName::new(c.stream).unwrap();
        let key = id.epoch_key(&stream, c.epoch);
        let params = SealParams {
            device: id.device_id(),
            stream: stream.clone(),
            seq: c.seq,
            epoch: c.epoch,
            prev: BatchHash(c.prev),
            salt: c.salt,
            covers: c.covers.iter().map(|h| BatchHash(*h)).collect(),
        };
        let sealed = seal(&c.readings, &params, &key, c.signed.then_some(&id), &mut Vec::new()).unwrap();
        let mut body = Vec::new();
        codec::encode(&c.readings, &mut body).unwrap();
        let leaf = LeafCache::new(&key).leaf(slot_of(c.readings.time_range().unwrap().0));
        let vector = json!({
            "description": "edgeseal sealed batch, format v2, suite 1",
            "identity_secret": hex::encode(identity_secret()),
            "device_id": id.device_id().to_string(),
            "stream": c.stream,
            "seq": c.seq,
            "epoch": c.epoch,
            "prev_hash": hex::encode(c.prev),
            "salt": hex::encode(c.salt),
            "signed": c.signed,
            "covers": c.covers.iter().map(hex::encode).collect::<Vec<_>>(),
            "readings": readings_json(&c.readings),
            "epoch_key": hex::encode(key.0.expose_secret()),
            "leaf_key": hex::encode(leaf.0.expose_secret()),
            "body": hex::encode(&body),
            "hash": sealed.hash.to_string(),
            "sealed": hex::encode(&sealed.bytes),
        });
        let path = dir().join(format!("v2-{}.json", c.name));
        if writing() {
            std::fs::write(&path, serde_json::to_string_pretty(&vector).unwrap() + "\n").unwrap();
            continue;
        }
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for field in ["device_id", "epoch_key", "leaf_key", "body", "hash", "sealed"] {
            assert_eq!(stored[field], vector[field], "{}: {field} differs", c.name);
        }
        // And the stored bytes open back to the readings.
        let bytes = hex::decode(stored["sealed"].as_str().unwrap()).unwrap();
        let parsed = envelope::parse(&bytes).unwrap();
        let want = if c.signed { Authorship::Device } else { Authorship::Unsigned };
        assert_eq!(parsed.authorship(&parsed.hash()), want);
        assert_eq!(parsed.header.covers.len(), c.covers.len());
        assert_eq!(readings_json(&parsed.open(&key.clone().into()).unwrap()), readings_json(&c.readings), "{}", c.name);
    }

    // A live frame: the same body, its own header, key label and signature.
    let stream = StreamName::new("temperature").unwrap();
    let key = id.epoch_key(&stream, 0);
    let readings = Readings::Scalar(ScalarBatch {
        unit: "°C".into(),
        ts: vec![1_767_225_600_000],
        values: vec![21.5],
        labels: vec![Some("Normal".into())],
    });
    let at = FrameParams { stream: stream.clone(), pos: 1234, epoch: 0, salt: [0x77; 16] };
    let bytes = seal_frame(&readings, &at, &key, &id, &mut Vec::new()).unwrap();
    let vector = json!({
        "description": "edgeseal live frame, version 2, suite 1",
        "identity_secret": hex::encode(identity_secret()),
        "stream": "temperature", "pos": 1234, "epoch": 0, "salt": hex::encode([0x77; 16]),
        "readings": readings_json(&readings),
        "epoch_key": hex::encode(key.0.expose_secret()),
        "frame": hex::encode(&bytes),
    });
    let path = dir().join("v2-frame-scalar.json");
    if writing() {
        std::fs::write(&path, serde_json::to_string_pretty(&vector).unwrap() + "\n").unwrap();
    } else {
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(stored["frame"], vector["frame"], "frame-scalar: frame differs");
        let bytes = hex::decode(stored["frame"].as_str().unwrap()).unwrap();
        let p = parse_frame(&bytes).unwrap();
        assert_eq!(p.authorship(), Authorship::Device);
        assert_eq!(readings_json(&p.open(&key.clone().into()).unwrap()), readings_json(&readings));
    }

    // The key tree: leaves, and the nodes a grant of a range hands over.
    let root = TreeNode::root(&key);
    let slots = [0u64, 1, 1_767_225_600_000, (1 << 48) - 1];
    let (from, to) = (1_767_225_600_000i64, 1_767_229_199_999i64);
    let vector = json!({
        "description": "edgeseal key tree (format v2): leaf keys and the cover of a range",
        "epoch_key": hex::encode(key.0.expose_secret()),
        "leaves": slots.iter().map(|s| json!({"slot": s, "key": hex::encode(root.leaf(*s).unwrap().0.expose_secret())})).collect::<Vec<_>>(),
        "range": {"from": from, "to": to,
            "nodes": cover(slot_of(from), slot_of(to)).iter().map(|(d, i)| {
                let n = root.descend(*d, *i).unwrap();
                json!({"depth": d, "index": i, "key": hex::encode(n.key.expose_secret())})
            }).collect::<Vec<_>>()},
    });
    let path = dir().join("v2-key-tree.json");
    if writing() {
        std::fs::write(&path, serde_json::to_string_pretty(&vector).unwrap() + "\n").unwrap();
    } else {
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(stored, vector, "v2-key-tree differs");
    }

    let cp = Checkpoint {
        device: id.device_id(),
        stream: StreamName::new("temperature").unwrap(),
        seq: 41,
        head: BatchHash([0xcd; 32]),
        ts: 1_767_225_600_000,
    };
    let bytes = cp.sign(&id).unwrap();
    let path = dir().join("checkpoint.json");
    let vector = json!({
        "description": "edgeseal checkpoint, format v1",
        "identity_secret": hex::encode(identity_secret()),
        "stream": "temperature", "seq": 41, "head": hex::encode([0xcd; 32]), "ts": 1_767_225_600_000i64,
        "signed": hex::encode(&bytes),
    });
    if writing() {
        std::fs::write(&path, serde_json::to_string_pretty(&vector).unwrap() + "\n").unwrap();
    } else {
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(stored["signed"], vector["signed"]);
    }

    let rec = Retention {
        device: id.device_id(),
        stream: StreamName::new("temperature").unwrap(),
        from: 42,
        head: BatchHash([0xcd; 32]),
        before: 1_759_449_600_000,
        ts: 1_767_225_600_000,
    };
    let bytes = rec.sign(&id).unwrap();
    assert_eq!(Retention::parse(&bytes).unwrap(), (rec, Authorship::Device));
    let path = dir().join("retention.json");
    let vector = json!({
        "description": "edgeseal retention record, version 1",
        "identity_secret": hex::encode(identity_secret()),
        "stream": "temperature", "from": 42, "head": hex::encode([0xcd; 32]),
        "before": 1_759_449_600_000i64, "ts": 1_767_225_600_000i64,
        "signed": hex::encode(&bytes),
    });
    if writing() {
        std::fs::write(&path, serde_json::to_string_pretty(&vector).unwrap() + "\n").unwrap();
    } else {
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(stored, vector, "retention.json differs");
    }
}

/// Each file in `malformed/` is a hex line that must be rejected: not parse,
/// or parse but fail authentication or opening. The file name says why.
#[test]
fn malformed_inputs_are_rejected() {
    let id = Identity::from_secret_bytes(&identity_secret());
    let mdir = dir().join("malformed");
    if writing() {
        write_malformed(&mdir);
    }
    let mut n = 0;
    for entry in std::fs::read_dir(&mdir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let bytes = hex::decode(text.trim()).unwrap();
        n += 1;
        let rejected = match envelope::parse(&bytes) {
            Err(_) => true,
            Ok(p) => {
                let key = id.epoch_key(&p.header.stream, p.header.epoch);
                p.authorship(&p.hash()) != Authorship::Device || p.open(&key.into()).is_err()
            }
        };
        assert!(rejected, "{} was accepted", path.display());
    }
    assert!(n >= 8, "expected the malformed vectors, found {n}");
}

fn write_malformed(mdir: &Path) {
    std::fs::create_dir_all(mdir).unwrap();
    let good: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("batch-scalar-signed.json")).unwrap()).unwrap();
    let good = hex::decode(good["sealed"].as_str().unwrap()).unwrap();
    let n = good.len();
    let mut variants: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated-header", good[..20].to_vec()),
        ("truncated-signature", good[..n - 1].to_vec()),
        ("trailing-byte", [&good[..], &[0]].concat()),
        ("bad-magic", [&b"XS"[..], &good[2..]].concat()),
    ];
    let mut flip = |name: &'static str, at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x01;
        variants.push((name, b));
    };
    flip("version-2", 2);
    flip("unknown-suite", 3);
    flip("unknown-flag", 4);
    flip("device-id-changed", 5);
    flip("seq-changed", 21 + 1 + 11 + 7);
    flip("ciphertext-bit", n - 96 - 20);
    flip("tag-bit", n - 96 - 1);
    flip("signature-bit", n - 1);
    flip("signer-key-bit", n - 96);
    // Format v2: the covers field.
    let round: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("v2-round-signed.json")).unwrap()).unwrap();
    let round = hex::decode(round["sealed"].as_str().unwrap()).unwrap();
    // magic 2, version, suite, flags, device 16, stream len + "temperature", seq, times, count, epoch, prev, salt
    let covers_at = 2 + 3 + 16 + 1 + 11 + 8 + 16 + 4 + 4 + 32 + 16;
    let mut b = round.clone();
    b[covers_at..covers_at + 2].copy_from_slice(&0xffffu16.to_be_bytes());
    variants.push(("v2-covers-too-many", b));
    let mut b = round.clone();
    b[4] = 0;
    b.truncate(b.len() - 96);
    variants.push(("v2-unsigned-with-covers", b));
    let mut b = round.clone();
    b[covers_at + 2] ^= 1;
    variants.push(("v2-covered-hash-changed", b));
    let mut b = round;
    b[2] = 3;
    variants.push(("v2-version-3", b));
    for (name, bytes) in variants {
        std::fs::write(mdir.join(format!("{name}.hex")), hex::encode(bytes) + "\n").unwrap();
    }
}
