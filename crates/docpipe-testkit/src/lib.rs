//! Test support for storage code: a throw-away S3 server and a proxy that injects faults.
//!
//! [`MotoServer`] runs moto's S3 server (installed by `make setup` into `.cache/moto-venv`) on a
//! free loopback port, so storage tests talk real S3 HTTP without touching the network.
//! [`FaultyProxy`] sits between a client and that server and answers chosen requests with
//! `503 Service Unavailable` or by dropping the connection, to show that transient faults are
//! retried.

mod http;
mod moto;
mod proxy;

pub use moto::{MotoServer, TestkitError};
pub use proxy::{Fault, FaultPlan, FaultyProxy};
