//! Prefill and decode throughput on one device, run by hand:
//!
//! ```sh
//! cargo bench -p docpipe-idefics2 --bench generate -- MODEL_DIR REQUESTS.jsonl [BATCH] [DTYPE] [REPEATS]
//! ```
//!
//! Prefill is timed with every request cut to one new token (vision, connector and the prompt
//! pass); decode is the extra time of the full run divided over the extra tokens. Each is the
//! fastest of REPEATS runs (default 3): on a shared machine the noise of one run is larger than
//! the decode time of a small model.

use std::time::Instant;

use docpipe_core::{Dtype, VisionLanguageModel};
use docpipe_idefics2::request_file::read_requests;
use docpipe_idefics2::{candle_dtype, Idefics2Model, Idefics2Request};

/// The fastest of `repeats` runs: seconds and generated tokens.
fn fastest(
    model: &Idefics2Model,
    prepared: &[Idefics2Request],
    batch: usize,
    repeats: usize,
) -> (f64, usize) {
    (0..repeats.max(1))
        .map(|_| run(model, prepared, batch))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .expect("at least one run")
}

fn run(model: &Idefics2Model, prepared: &[Idefics2Request], batch: usize) -> (f64, usize) {
    let start = Instant::now();
    let mut generated = 0;
    for chunk in prepared.chunks(batch) {
        let refs: Vec<&Idefics2Request> = chunk.iter().collect();
        generated += model
            .generate(&refs)
            .expect("generation")
            .iter()
            .map(|g| g.token_ids.len())
            .sum::<usize>();
    }
    (start.elapsed().as_secs_f64(), generated)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [model_dir, requests, rest @ ..] = args.as_slice() else {
        eprintln!("usage: generate MODEL_DIR REQUESTS.jsonl [BATCH] [DTYPE] [REPEATS]");
        std::process::exit(2);
    };
    let batch: usize = rest.first().map_or(8, |b| b.parse().expect("batch size"));
    let dtype: Dtype = rest
        .get(1)
        .map_or("f32", String::as_str)
        .parse()
        .expect("dtype");
    let dtype = candle_dtype(dtype);
    let repeats: usize = rest.get(2).map_or(3, |r| r.parse().expect("repeats"));
    let start = Instant::now();
    let model = Idefics2Model::load(
        model_dir.as_ref(),
        &docpipe_vlm::placement::Placement::single(&candle_core::Device::Cpu),
        dtype,
    )
    .expect("model");
    println!(
        "load: {:.2} s ({})",
        start.elapsed().as_secs_f64(),
        model.model_id()
    );
    let requests = read_requests(requests.as_ref()).expect("requests");
    let start = Instant::now();
    let full: Vec<Idefics2Request> = requests
        .iter()
        .map(|r| model.prepare(&r.request).expect("prepare"))
        .collect();
    println!(
        "prepare: {:.3} s for {} requests",
        start.elapsed().as_secs_f64(),
        full.len()
    );
    let prompt_tokens: usize = full.iter().map(|r| r.input_ids.len()).sum();
    let patches: usize = full.iter().map(|r| model.cost(r).image_patches).sum();
    let first_only: Vec<Idefics2Request> = full
        .iter()
        .cloned()
        .map(|r| Idefics2Request {
            max_new_tokens: r.max_new_tokens.min(1),
            ..r
        })
        .collect();
    let (prefill_s, first_tokens) = fastest(&model, &first_only, batch, repeats);
    let (total_s, all_tokens) = fastest(&model, &full, batch, repeats);
    let decode_tokens = all_tokens - first_tokens;
    println!(
        "prefill: {prompt_tokens} prompt tokens, {patches} patches in {prefill_s:.2} s = {:.1} prompt tokens/s",
        prompt_tokens as f64 / prefill_s
    );
    println!(
        "decode: {decode_tokens} tokens in {:.2} s = {:.2} tokens/s (batch {batch}, {dtype:?})",
        total_s - prefill_s,
        decode_tokens as f64 / (total_s - prefill_s)
    );
}
