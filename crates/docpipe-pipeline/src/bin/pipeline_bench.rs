//! Benchmark: is the pipeline the bottleneck?
//!
//! `pipeline-bench e2e --pages N`: a whole `docpipe_pipeline::run` over N synthetic one-page
//! PDFs (OCR task, tiny model, CPU); prints pages/s and the process's peak memory (VmHWM).
//! Run it for several N in separate processes to see whether memory stays flat.
//!
//! `pipeline-bench model --pages N`: the model stage alone on the same pages: they are rendered
//! up front, then prepared (in parallel on rayon) and generated through the same inference pool
//! and budgets, timed from the first request to the last answer.
//!
//! Render workers are the `docpipe` binary (`--docpipe`, default `target/release/docpipe`).
//! Results go to docs/benchmarks.md, section "Pipeline".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docpipe_core::{DocumentRef, VisionLanguageModel};
use docpipe_pipeline::config::PipelineConfig;
use docpipe_pipeline::model::{self, LoadedModel};
use docpipe_pipeline::tasks::{chat_request, TaskPlan};
use docpipe_pipeline::{BatchBudget, Completed, InferencePool, Job, RunOptions};
use docpipe_render::{DocumentOptions, RenderPool, RenderPoolConfig, WorkerCommand};
use docpipe_store::StoreOptions;
use rayon::prelude::*;

const USAGE: &str = "usage: pipeline-bench e2e|model --pages N [--work DIR] [--docpipe PATH]";

fn main() {
    if let Err(message) = run() {
        eprintln!("pipeline-bench: {message}\n{USAGE}");
        std::process::exit(2);
    }
}

struct Args {
    mode: String,
    pages: usize,
    work: PathBuf,
    docpipe: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().ok_or("missing mode")?;
    let mut parsed = Args {
        mode,
        pages: 100,
        work: PathBuf::from("target/pipeline-bench"),
        docpipe: PathBuf::from("target/release/docpipe"),
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pages" => {
                parsed.pages = value.parse().map_err(|_| format!("bad --pages {value}"))?
            }
            "--work" => parsed.work = value.into(),
            "--docpipe" => parsed.docpipe = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(parsed)
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let pdfs = args.work.join(format!("pdfs-{}", args.pages));
    write_pdfs(&pdfs, args.pages).map_err(|e| format!("{}: {e}", pdfs.display()))?;
    let config = bench_config(
        &pdfs,
        &args
            .work
            .join(format!("out-{}-{}", args.pages, std::process::id())),
    )?;
    let worker = WorkerCommand::new(&args.docpipe).arg("render-worker");
    match args.mode.as_str() {
        "e2e" => end_to_end(config, worker, args.pages),
        "model" => model_alone(config, worker, &pdfs, args.pages),
        other => Err(format!("unknown mode {other}")),
    }
}

/// The pipeline measured: OCR of every page with a short answer, so that the tiny model is as
/// fast as it gets and any pipeline overhead shows.
fn bench_config(pdfs: &Path, out: &Path) -> Result<PipelineConfig, String> {
    let text = format!(
        r#"
[source]
uri = "{}"
[render]
longest_edge = 980
workers = 2
[model]
path = "fixtures/idefics2/models/tiny-gqa-split"
devices = ["cpu"]
max_new_tokens = 8
[[task]]
kind = "ocr"
[sink]
uri = "{}"
documents_per_part = 64
"#,
        pdfs.display(),
        out.display()
    );
    PipelineConfig::load("bench", &text, &[]).map_err(|e| e.to_string())
}

fn end_to_end(config: PipelineConfig, worker: WorkerCommand, pages: usize) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let summary = runtime
        .block_on(docpipe_pipeline::run(RunOptions {
            config,
            worker_command: worker,
            store_options: StoreOptions::default(),
            log_every: Duration::from_secs(3600),
            shard: None,
            checkpoint: None,
        }))
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed().as_secs_f64();
    let report = &summary.report;
    println!(
        "e2e pages={pages} rows={} failed={} wall_s={wall:.2} pages_per_s={:.2} vm_hwm_mib={:.1} stages={:?}",
        report.written.rows,
        report.written.rows_failed,
        pages as f64 / wall,
        vm_hwm_mib(),
        report.seconds_by_stage
    );
    Ok(())
}

fn model_alone(
    config: PipelineConfig,
    worker: WorkerCommand,
    pdfs: &Path,
    pages: usize,
) -> Result<(), String> {
    let LoadedModel::Idefics2(replicas) = model::load(&config.model).map_err(|e| e.to_string())?
    else {
        return Err("the model-alone bench runs an Idefics2 checkpoint".into());
    };
    let pool = RenderPool::new(RenderPoolConfig {
        workers: config.render.workers,
        longest_edge: config
            .render
            .longest_edge
            .unwrap_or_else(|| replicas[0].model.image_longest_edge()),
        worker_command: worker,
        ..RenderPoolConfig::new().map_err(|e| e.to_string())?
    })
    .map_err(|e| e.to_string())?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(pdfs)
        .map_err(|e| e.to_string())?
        .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let images: Vec<Arc<image::RgbImage>> = files
        .par_iter()
        .map(|path| {
            let mut stream = pool
                .render(path, &DocumentOptions::default())
                .map_err(|e| e.to_string())?;
            let page = stream.next().ok_or("no page")?.map_err(|e| e.to_string())?;
            Ok(Arc::new(page.image))
        })
        .collect::<Result<_, String>>()?;
    let plan = TaskPlan::new(
        config.tasks.clone(),
        config.model.max_new_tokens,
        model::Family::Idefics2.default_prompts(),
    );
    let queries = plan.queries(&DocumentRef::new("bench"));
    let preparer = replicas[0].model.clone();
    let (tx, rx) = std::sync::mpsc::channel::<Completed<usize>>();
    let started = Instant::now();
    let infer = InferencePool::start(
        replicas,
        BatchBudget {
            tokens: config.model.batch_tokens,
            patches: config.model.batch_patches,
        },
        config.model.batching(),
        config.model.queue,
        tx,
    );
    let submitter = infer.submitter();
    // Pages are prepared in parallel on rayon, a few at a time, as the pipeline's render threads
    // do; submitting (which blocks while the queue is full) stays off the rayon pool, which the
    // model's CPU kernels also use.
    let producer = std::thread::spawn(move || {
        for (chunk_index, chunk) in images.chunks(8).enumerate() {
            let prepared: Vec<(usize, _)> = chunk
                .par_iter()
                .enumerate()
                .flat_map_iter(|(j, image)| {
                    queries
                        .iter()
                        .filter_map(|query| preparer.prepare(&chat_request(query, image)).ok())
                        .map(move |p| (chunk_index * 8 + j, p))
                        .collect::<Vec<_>>()
                })
                .collect();
            for (i, prepared) in prepared {
                let job = Job::new(&*preparer, i, prepared, i as u64);
                if submitter.submit(job).is_err() {
                    return;
                }
            }
        }
    });
    let answered = rx.iter().take(pages).filter(|c| c.result.is_ok()).count();
    let wall = started.elapsed().as_secs_f64();
    producer.join().map_err(|_| "producer panicked")?;
    infer.finish().map_err(|e| e.to_string())?;
    println!(
        "model pages={pages} answered={answered} wall_s={wall:.2} pages_per_s={:.2}",
        pages as f64 / wall
    );
    Ok(())
}

/// Peak resident memory of this process, from /proc/self/status.
fn vm_hwm_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// `n` distinct one-page PDFs (a line of text each), written once.
fn write_pdfs(dir: &Path, n: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for i in 0..n {
        let path = dir.join(format!("doc-{i:05}.pdf"));
        if !path.exists() {
            std::fs::write(
                path,
                tiny_pdf(&format!("Invoice {i} total {} EUR", i * 7 % 1000)),
            )?;
        }
    }
    Ok(())
}

fn tiny_pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 24 Tf 40 300 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 396] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}
