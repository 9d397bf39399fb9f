//! `docpipe generate`: batched generation with an Idefics1, Idefics2, Idefics3 (greedy) or Florence-2
//! (the checkpoint's beam search) checkpoint (by `config.json`'s `model_type`; a local folder, a
//! hub id or a bucket prefix, see docpipe-hub) over a JSONL file of HF chat requests. Other tools
//! drive this command, so its flags and output fields are a fixed contract, documented in
//! docs/generate.md.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use docpipe_core::{DeviceGroup, Dtype, ModelError, VisionLanguageModel};
use docpipe_florence2::Florence2Model;
use docpipe_idefics1::Idefics1Model;
use docpipe_idefics2::model::Idefics2;
use docpipe_idefics3::model::Idefics3;
use docpipe_pipeline::model::{load_model, Family};
use docpipe_vlm::candle_dtype;
use docpipe_vlm::model::{Family as ModelFamily, IdeficsModel};
use docpipe_vlm::request::DetailedGeneration;
use docpipe_vlm::request_file::{read_requests, FileRequest};
use rayon::prelude::*;
use serde::Serialize;

use crate::exit::{CommandError, Outcome, ResultExt};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// The checkpoint: a folder in the Hugging Face hub layout, a hub id `org/name` or
    /// `org/name@REVISION` (fetched into the huggingface_hub cache; HF_HOME, HF_HUB_CACHE,
    /// HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE apply), or an object-store prefix such as
    /// `s3://bucket/idefics2-8b/` (docs/models.md).
    #[arg(long, value_name = "DIR_OR_ID_OR_URL")]
    model: String,
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
    /// `cpu` or `cuda:N` (the latter in a `cuda` feature build), or a group such as
    /// `cuda:0+cuda:1` over which the model's layers are split (Idefics families).
    #[arg(long, default_value = "cpu")]
    device: DeviceGroup,
    /// Weight and activation dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
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

pub fn run(args: GenerateArgs) -> Result<Outcome, CommandError> {
    if args.batch_size == 0 {
        return Err(anyhow!("--batch-size must be at least 1")).usage();
    }
    let requests = read_requests(&args.requests).usage()?;
    let dtype = candle_dtype(args.dtype);
    let checkpoint = docpipe_hub::resolve(&args.model).classified()?;
    match Family::of_checkpoint(checkpoint.dir()).usage()? {
        Family::Idefics2 => generate_all(
            &args,
            &requests,
            &load_model::<IdeficsModel<Idefics2>>(&checkpoint, &args.device, dtype).classified()?,
        ),
        Family::Idefics3 => generate_all(
            &args,
            &requests,
            &load_model::<IdeficsModel<Idefics3>>(&checkpoint, &args.device, dtype).classified()?,
        ),
        Family::Florence2 => generate_all(
            &args,
            &requests,
            &load_model::<Florence2Model>(&checkpoint, &args.device, dtype).classified()?,
        ),
        Family::Idefics1 => generate_all(
            &args,
            &requests,
            &load_model::<Idefics1Model>(&checkpoint, &args.device, dtype).classified()?,
        ),
    }
}

/// What this command needs of a family's model beyond the pipeline's trait: generation that
/// can return the first step's raw logits, and their width.
trait DetailedModel: VisionLanguageModel {
    fn generate_detailed(
        &self,
        batch: &[&Self::Prepared],
        first_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError>;

    fn vocab_size(&self) -> usize;
}

impl<F: ModelFamily> DetailedModel for IdeficsModel<F> {
    fn generate_detailed(
        &self,
        batch: &[&Self::Prepared],
        first_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        IdeficsModel::generate_detailed(self, batch, first_logits)
    }

    fn vocab_size(&self) -> usize {
        self.config().text.vocab_size
    }
}

impl DetailedModel for Florence2Model {
    fn generate_detailed(
        &self,
        batch: &[&Self::Prepared],
        first_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        Florence2Model::generate_detailed(self, batch, first_logits)
    }

    fn vocab_size(&self) -> usize {
        self.text_config().vocab_size
    }
}

impl DetailedModel for Idefics1Model {
    fn generate_detailed(
        &self,
        batch: &[&Self::Prepared],
        first_logits: bool,
    ) -> Result<Vec<DetailedGeneration>, ModelError> {
        Idefics1Model::generate_detailed(self, batch, first_logits)
    }

    /// The base vocabulary and the added tokens' decoupled rows.
    fn vocab_size(&self) -> usize {
        Idefics1Model::vocab_size(self)
    }
}

/// Prepares every request, generates in batches of `--batch-size` and writes the answers (and
/// the first-step logits, vocabulary-wide, when asked) for a model of any family.
fn generate_all<M: DetailedModel>(
    args: &GenerateArgs,
    requests: &[FileRequest],
    model: &M,
) -> Result<Outcome, CommandError> {
    tracing::debug!(
        model = model.model_id(),
        requests = requests.len(),
        "generating"
    );
    // Image preprocessing is CPU work that would otherwise hold up the device for every page.
    let prepared: Vec<M::Prepared> = requests
        .par_iter()
        .map(|r| {
            model
                .prepare(&r.request)
                .with_context(|| format!("{}: request {}", r.location, r.id))
        })
        .collect::<anyhow::Result<_>>()
        .usage()?;
    let mut out = BufWriter::new(
        std::fs::File::create(&args.out)
            .with_context(|| args.out.display().to_string())
            .usage()?,
    );
    let write_error = |e: std::io::Error| anyhow!("{}: {e}", args.out.display());
    let mut first_logits = Vec::new();
    let mut ids = requests.iter().map(|r| &r.id);
    for batch in prepared.chunks(args.batch_size) {
        let batch: Vec<&M::Prepared> = batch.iter().collect();
        let results = model
            .generate_detailed(&batch, args.logits_out.is_some())
            .incomplete()?;
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
            let json = serde_json::to_string(&line).incomplete()?;
            writeln!(out, "{json}").map_err(write_error).incomplete()?;
            // A request with max_new_tokens 0 chose no token; its row is zeros.
            first_logits.push(result.first_logits.unwrap_or_default());
        }
    }
    out.flush().map_err(write_error).incomplete()?;
    if let Some(path) = &args.logits_out {
        let vocab = model.vocab_size();
        for row in &mut first_logits {
            row.resize(vocab, 0.0);
        }
        write_npy(path, &first_logits)
            .with_context(|| path.display().to_string())
            .incomplete()?;
    }
    Ok(Outcome::Success)
}
