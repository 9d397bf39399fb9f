//! The sink's integration tests, as one binary: the storage conformance suite (each behaviour
//! against a local folder, memory and moto S3), S3 fault injection, and the output schema.

mod conformance;
mod faults;
mod rows;
mod schema;
