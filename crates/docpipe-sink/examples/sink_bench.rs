//! Sink throughput and resume-scan time, without and with claims (what `sink.exclusive` costs
//! per document), run by hand (numbers go in docs/benchmarks.md):
//!
//! ```sh
//! cargo run -p docpipe-sink --example sink_bench            # local folder and moto S3
//! ```

use std::time::{Duration, Instant};

use docpipe_core::{DocumentRef, FinishReason};
use docpipe_sink::{unix_micros, Claim, OutputRow, Sink, SinkOptions};
use docpipe_store::Stores;
use docpipe_testkit::MotoServer;

const DOCUMENTS: usize = 2_000;
const PAGES: u32 = 5;
const QUESTIONS: usize = 4;

fn document(i: usize) -> Vec<OutputRow> {
    let mut doc = DocumentRef::new(format!("s3://incoming/pdfs/{i:06}.pdf"));
    doc.version = Some(format!("\"{i:032x}\""));
    let now = unix_micros(std::time::SystemTime::now());
    let mut rows = Vec::new();
    for page in 1..=PAGES {
        for q in 0..QUESTIONS {
            let mut row = OutputRow::for_document(&doc, "bench", "idefics2-8b@0123abcd", now);
            row.page = Some(page);
            row.page_count = Some(PAGES);
            row.task = "fields".into();
            row.question_id = Some(format!("q{q}"));
            row.question = format!("What is field {q}?");
            row.answer = Some(format!("answer {i} {page} {q} lorem ipsum dolor sit amet"));
            row.finish_reason = Some(FinishReason::Stop);
            row.prompt_tokens = Some(1200);
            row.answer_tokens = Some(12);
            row.latency_ms = Some(85.0);
            rows.push(row);
        }
    }
    rows
}

/// Writes every document (claiming each first when `exclusive`) and reads the resume scan.
async fn run(label: &str, stores: &Stores, location: &str, exclusive: bool) {
    let mut sink = Sink::open(stores, SinkOptions::new(location)).expect("open sink");
    let claims = match exclusive {
        true => Some(
            sink.start_claims("bench", Duration::from_secs(60))
                .await
                .expect("claims"),
        ),
        false => None,
    };
    let started = Instant::now();
    for i in 0..DOCUMENTS {
        let rows = document(i);
        if let Some(claims) = &claims {
            let claim = claims.claim(&rows[0].document_key()).await.expect("claim");
            assert!(matches!(claim, Claim::Claimed { .. }), "{claim:?}");
        }
        sink.commit_document(rows).await.expect("commit");
    }
    sink.flush().await.expect("flush");
    let write = started.elapsed().as_secs_f64();
    let rows = DOCUMENTS * PAGES as usize * QUESTIONS;
    let bytes: u64 = sink.parts_written().iter().map(|p| p.bytes).sum();
    let started = Instant::now();
    let committed = sink.committed().await.expect("resume scan");
    let scan = started.elapsed().as_secs_f64();
    assert_eq!(committed.document_count(), DOCUMENTS);
    println!(
        "{label} (exclusive: {exclusive}): {rows} rows / {DOCUMENTS} documents in {} parts \
         ({:.1} MiB): write {write:.2} s ({:.0} rows/s, {:.2} ms per document); resume scan \
         {scan:.3} s",
        sink.parts_written().len(),
        bytes as f64 / (1 << 20) as f64,
        rows as f64 / write,
        write * 1e3 / DOCUMENTS as f64,
    );
    if let Some(claims) = claims {
        claims.end().await;
    }
}

#[tokio::main]
async fn main() {
    let moto = MotoServer::start("bench").expect("moto S3 server");
    for exclusive in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let local = dir.path().to_str().expect("utf-8 path");
        run("local", &Stores::default(), local, exclusive).await;
        let s3 = format!("s3://bench/out-{exclusive}/");
        run(
            "moto s3",
            &Stores::new(moto.store_options()),
            &s3,
            exclusive,
        )
        .await;
    }
}
