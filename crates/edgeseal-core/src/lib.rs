//! The sans-IO core of edgeseal.
//!
//! Everything here is plain functions over bytes and values: no sockets, no
//! clock, no global random number generator (callers pass time and random
//! bytes in). Start with [`envelope`] (the sealed-batch format, specified in
//! `docs/format.md`), then [`chain`] (how a reader detects tampering, gaps,
//! replay and rollback) and [`keys`] / [`keystore`] (identities and epoch keys).

#![forbid(unsafe_code)]

mod bits;
pub mod chain;
pub mod checkpoint;
pub mod codec;
pub mod envelope;
mod error;
pub mod frame;
pub mod grant;
pub mod id;
pub mod keys;
pub mod keystore;
pub mod pairing;
pub mod reading;
pub mod retention;
mod signed;
pub mod time;
mod varint;

pub use error::Error;
pub use id::{DeviceId, StreamName};
pub use reading::{BlobBatch, Reading, Readings, Refusal, ScalarBatch, Value};
