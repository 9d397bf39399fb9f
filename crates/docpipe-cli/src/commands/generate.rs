//! `docpipe generate`: batched greedy generation with an Idefics2 checkpoint over a JSONL file
//! of HF chat requests. Other tools drive this command, so its flags and output fields are a
//! fixed contract (issue 3).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use docpipe_core::VisionLanguageModel;
use docpipe_idefics2::request_file::read_requests;
use docpipe_idefics2::{device_from_spec, dtype_from_name, Idefics2Model, Idefics2Request};
use rayon::prelude::*;
use serde::Serialize;

use crate::exit;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Checkpoint directory in the Hugging Face hub layout.
    #[arg(long)]
    model: PathBuf,
    /// JSONL requests: {"id", "messages": [HF chat messages], "max_new_tokens"}; image items
    /// are {"type": "image", "path": ...} relative to this file.
    #[arg(long)]
    requests: PathBuf,
    /// JSONL results, one line per request in input order.
    #[arg(long)]
    out: PathBuf,
    /// Requests generated together; results do not depend on it.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// `cpu` or `cuda:N` (the latter in a `cuda` feature build).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weight and activation dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Writes a float32 .npy [requests, vocab] of the raw logits that chose each first token.
    #[arg(long)]
    logits_out: Option<PathBuf>,
}

#[derive(Serialize)]
struct OutputLine<'a> {
    id: &'a str,
    text: &'a str,
    token_ids: &'a [u32],
    finish_reason: &'a str,
    prompt_tokens: usize,
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: exit::USAGE,
        message: message.into(),
    }
}

fn incomplete(message: impl Into<String>) -> Failure {
    Failure {
        code: exit::INCOMPLETE,
        message: message.into(),
    }
}

pub fn run(args: GenerateArgs) -> u8 {
    match execute(&args) {
        Ok(()) => exit::OK,
        Err(failure) => {
            eprintln!("docpipe generate: {}", failure.message);
            failure.code
        }
    }
}

/// A little-endian float32 `.npy` (format 1.0) of shape `[rows, cols]`.
fn write_npy(path: &Path, rows: &[Vec<f32>]) -> std::io::Result<()> {
    let cols = rows.first().map_or(0, Vec::len);
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {cols}), }}",
        rows.len()
    );
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&(header.len() as u16).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    for value in rows.iter().flatten() {
        out.write_all(&value.to_le_bytes())?;
    }
    out.flush()
}

fn execute(args: &GenerateArgs) -> Result<(), Failure> {
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1"));
    }
    let device = device_from_spec(&args.device).map_err(usage)?;
    let dtype = dtype_from_name(&args.dtype).map_err(usage)?;
    let requests = read_requests(&args.requests).map_err(|e| usage(e.to_string()))?;
    let model =
        Idefics2Model::load(&args.model, &device, dtype).map_err(|e| usage(e.to_string()))?;
    tracing::debug!(
        model = model.model_id(),
        requests = requests.len(),
        "generating"
    );
    // Image preprocessing is CPU work that would otherwise hold up the device for every page.
    let prepared: Vec<Idefics2Request> = requests
        .par_iter()
        .map(|r| {
            model
                .prepare(&r.request)
                .map_err(|e| usage(format!("{}: request {}: {e}", r.location, r.id)))
        })
        .collect::<Result<_, _>>()?;
    let mut out = BufWriter::new(
        std::fs::File::create(&args.out)
            .map_err(|e| usage(format!("{}: {e}", args.out.display())))?,
    );
    let write_error = |e: std::io::Error| incomplete(format!("{}: {e}", args.out.display()));
    let mut first_logits = Vec::new();
    let mut ids = requests.iter().map(|r| &r.id);
    for batch in prepared.chunks(args.batch_size) {
        let batch: Vec<&Idefics2Request> = batch.iter().collect();
        let results = model
            .generate_detailed(&batch, args.logits_out.is_some())
            .map_err(|e| incomplete(e.to_string()))?;
        for result in results {
            let id = ids.next().map(String::as_str).unwrap_or_default();
            let g = &result.generation;
            let line = OutputLine {
                id,
                text: &g.text,
                token_ids: &g.token_ids,
                finish_reason: g.finish_reason.as_str(),
                prompt_tokens: g.prompt_tokens,
            };
            let json = serde_json::to_string(&line).map_err(|e| incomplete(e.to_string()))?;
            writeln!(out, "{json}").map_err(write_error)?;
            // A request with max_new_tokens 0 chose no token; its row is zeros.
            first_logits.push(result.first_logits.unwrap_or_default());
        }
    }
    out.flush().map_err(write_error)?;
    if let Some(path) = &args.logits_out {
        let vocab = model.config().text.vocab_size;
        for row in &mut first_logits {
            row.resize(vocab, 0.0);
        }
        write_npy(path, &first_logits)
            .map_err(|e| incomplete(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}
