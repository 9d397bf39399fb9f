//! The source's integration tests, as one binary: the storage conformance suite (listing,
//! fetching and manifests against a local folder, memory and moto S3) and the errors only S3
//! has (a missing bucket, an unreachable endpoint).

mod conformance;
mod s3_errors;
