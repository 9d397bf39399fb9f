//! Test support for storage code: throw-away stores of every backend, a local S3 server and
//! a proxy that injects faults.
//!
//! [`TestStore`] is a fresh, empty store of one [`Backend`] (`file://`, `memory://`, moto S3),
//! named by URLs; [`conformance_tests!`] runs each behaviour of a storage conformance suite,
//! written once over a `TestStore`, against every backend.
//!
//! [`MotoServer`] runs moto's S3 server (installed by `make setup` into `.cache/moto-venv`) on a
//! free loopback port, so storage tests talk real S3 HTTP without touching the network: one per
//! test, or one per test process ([`MotoServer::shared`]) with a bucket per test.
//! [`FaultyProxy`] sits between a client and that server and answers chosen requests with
//! `503 Service Unavailable` or by dropping the connection, to show that transient faults are
//! retried.
//!
//! [`HubServer`] is a Hugging Face hub on a loopback port serving chosen checkpoint folders, with
//! a request log and planted faults, for the tests of model resolution (`HF_ENDPOINT`).

#![warn(missing_docs)]

mod conformance;
mod http;
mod hub;
mod moto;
mod proxy;
mod test_store;

pub use hub::{HubRepo, HubRequest, HubServer};
pub use moto::{unreachable_s3_options, MotoServer, TestkitError};
pub use proxy::{Fault, FaultPlan, FaultyProxy};
pub use test_store::{Backend, TestStore};
