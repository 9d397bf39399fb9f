//! The comparisons both families' fixture tests make against their transformers references
//! (`fixtures/idefics2`, `fixtures/idefics3`): reading `requests.jsonl`, `expected.jsonl` and
//! `.npy` arrays, preparing every reference request, and checking logits and tokens with the
//! margin rule, batch independence and continuous batching. One copy, so that both families are held to the same
//! rule.
//!
//! Test code only: it panics on any mismatch. It is compiled with the `fixture-testing`
//! feature, which only the family crates' `[dev-dependencies]` enable, so release builds do
//! not carry it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use docpipe_core::{
    ChatMessage, ChatRequest, ContentItem, GenerationSession, RequestKey, VisionLanguageModel,
};
use image::RgbImage;
use serde_json::Value;

use crate::model::{Family, IdeficsModel};
use crate::placement::Placement;
use crate::request::PreparedRequest;

/// A little-endian, C-order `.npy` array of f32 (`<f4`) or u8/bool (`|u1`, `|b1`) values,
/// converted to f32.
#[derive(Debug, Clone)]
pub struct Npy {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

/// Reads a `.npy` file written by numpy (version 1 or 2 header).
pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not an npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let body = &bytes[start + header_len..];
    let data: Vec<f32> = if header.contains("'<f4'") {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else if header.contains("'|u1'") || header.contains("'|b1'") {
        body.iter().map(|&b| b as f32).collect()
    } else {
        panic!("{}: unsupported dtype in {header}", path.display())
    };
    assert_eq!(
        data.len(),
        shape.iter().product::<usize>(),
        "{}",
        path.display()
    );
    Npy { shape, data }
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Reads the non-empty lines of a JSONL file.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A family's fixture folder: `models/NAME` checkpoints, `reference/NAME` outputs.
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// The folder (`fixtures/idefics2`, `fixtures/idefics3`).
    pub root: PathBuf,
}

impl Fixtures {
    /// The workspace's `fixtures/FAMILY` folder.
    pub fn of(family: &str) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures");
        Fixtures {
            root: root.join(family),
        }
    }

    /// Fixture model `name` on the CPU in f32, as the references ran.
    pub fn load<F: Family>(&self, name: &str) -> IdeficsModel<F> {
        IdeficsModel::load(
            &self.model_dir(name),
            &Placement::single(&Device::Cpu),
            DType::F32,
        )
        .unwrap()
    }

    /// The checkpoint directory of fixture model `name`.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name)
    }

    /// The transformers outputs for fixture model `name`.
    pub fn reference_dir(&self, name: &str) -> PathBuf {
        self.root.join("reference").join(name)
    }

    /// The source image and the reference output of a `resize/index.json` case.
    pub fn resize_case(&self, case: &Value) -> (RgbImage, Npy) {
        let dir = self.root.join("resize");
        let src = read_npy(&dir.join(case["src"].as_str().unwrap()));
        let dst = read_npy(&dir.join(case["dst"].as_str().unwrap()));
        let (h, w) = (src.shape[0] as u32, src.shape[1] as u32);
        let image = RgbImage::from_raw(w, h, src.data.iter().map(|&v| v as u8).collect()).unwrap();
        (image, dst)
    }
}

/// A request line of `requests.jsonl`, images loaded relative to `base` with `load` (how the
/// reference saw them). Lines that name the same image share one `Arc`, as pages do in the
/// pipeline.
pub fn chat_request(
    line: &Value,
    base: &Path,
    cache: &mut Vec<(String, Arc<RgbImage>)>,
    load: impl Fn(&Path) -> RgbImage,
) -> ChatRequest {
    let messages: Vec<ChatMessage> = serde_json::from_value(line["messages"].clone()).unwrap();
    let mut images = Vec::new();
    for item in messages.iter().flat_map(|m| &m.content) {
        if let ContentItem::Image { path: Some(p) } = item {
            let image = match cache.iter().find(|(q, _)| q == p) {
                Some((_, img)) => img.clone(),
                None => {
                    let img = Arc::new(load(&base.join(p)));
                    cache.push((p.clone(), img.clone()));
                    img
                }
            };
            images.push(image);
        }
    }
    ChatRequest {
        messages,
        images,
        max_new_tokens: line["max_new_tokens"].as_u64().unwrap() as usize,
    }
}

/// A reference request, prepared.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its `id`.
    pub id: String,
    /// Its line of `expected.jsonl`.
    pub expected: Value,
    /// What the model generates from.
    pub prepared: PreparedRequest,
}

/// Prepares every request of a reference directory. `adjust` gets each request's id, chat
/// request, expected line and preparation, to check the prompt ids and to substitute reference
/// inputs where a family's tests compare the model past a known input difference.
pub fn cases<F: Family>(
    model: &IdeficsModel<F>,
    dir: &Path,
    load: impl Fn(&Path) -> RgbImage,
    mut adjust: impl FnMut(&str, &ChatRequest, &Value, &mut PreparedRequest),
) -> Vec<Case> {
    let requests = read_jsonl(&dir.join("requests.jsonl"));
    let expected = read_jsonl(&dir.join("expected.jsonl"));
    assert_eq!(requests.len(), expected.len());
    let mut cache = Vec::new();
    requests
        .iter()
        .zip(expected)
        .map(|(line, expected)| {
            let id = line["id"].as_str().unwrap().to_string();
            assert_eq!(expected["id"], line["id"]);
            let request = chat_request(line, dir, &mut cache, &load);
            let mut prepared = model.prepare(&request).unwrap();
            adjust(&id, &request, &expected, &mut prepared);
            Case {
                id,
                expected,
                prepared,
            }
        })
        .collect()
}

/// Asserts that the largest |difference| is at most `rel` times the largest |want|; returns
/// the relative difference.
pub fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "{what}: max diff {worst} (scale {scale}, relative {})",
        worst / scale
    );
    assert!(
        worst <= rel * scale,
        "{what}: max diff {worst} > {rel} × {scale}"
    );
    worst / scale
}

/// The largest difference, in levels, between u8 pixels and a reference's.
pub fn max_level_diff(a: &[u8], b: &[f32]) -> i32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as i32 - y as i32).abs())
        .max()
        .unwrap_or(0)
}

/// Generates all `cases` in one batch and compares with the reference run of `dir`: prefill
/// logits within 1e-3 of the largest |logit|, and greedy tokens identical up to the first
/// reference step whose margin is below 0.05 (where float summation order may flip it); all
/// of them, the finish reason and the text when no step is that close.
pub fn check_logits_and_tokens<F: Family>(
    model: &IdeficsModel<F>,
    name: &str,
    dir: &Path,
    cases: &[Case],
) {
    let batch: Vec<&PreparedRequest> = cases.iter().map(|c| &c.prepared).collect();
    let outputs = model.generate_detailed(&batch, true).unwrap();
    let prefill = read_npy(&dir.join("prefill_logits.npy"));
    let vocab = prefill.shape[1];
    let (mut worst, mut compared, mut safe_total) = (0f32, 0, 0);
    for (i, (case, out)) in cases.iter().zip(&outputs).enumerate() {
        let what = format!("{name}/{}", case.id);
        let logits = out.first_logits.as_ref().unwrap();
        let want = &prefill.data[i * vocab..(i + 1) * vocab];
        worst = worst.max(assert_close(logits, want, 1e-3, &format!("{what} prefill")));
        let want: Vec<u32> = serde_json::from_value(case.expected["token_ids"].clone()).unwrap();
        let margins: Vec<f64> = serde_json::from_value(case.expected["margins"].clone()).unwrap();
        let safe = margins.iter().position(|&m| m < 0.05).unwrap_or(want.len());
        let got = &out.generation.token_ids;
        assert_eq!(&got[..safe.min(got.len())], &want[..safe], "{what}: tokens");
        compared += safe.min(got.len());
        safe_total += want.len();
        if safe == want.len() {
            assert_eq!(got, &want, "{what}: tokens");
            assert_eq!(
                out.generation.finish_reason.as_str(),
                case.expected["finish_reason"].as_str().unwrap(),
                "{what}: finish reason"
            );
            assert_eq!(
                out.generation.text,
                case.expected["text"].as_str().unwrap(),
                "{what}: text"
            );
        }
        assert_eq!(
            out.generation.prompt_tokens,
            case.expected["prompt_tokens"].as_u64().unwrap() as usize
        );
    }
    eprintln!(
        "{name}: worst relative prefill diff {worst}, {compared} of {safe_total} reference tokens compared (before the first margin < 0.05)"
    );
}

/// Asserts that each request's tokens and first logits are bit-identical in one batch of all
/// `cases`, alone, and in batches of 4.
pub fn check_batch_independence<F: Family>(model: &IdeficsModel<F>, name: &str, cases: &[Case]) {
    let all: Vec<&PreparedRequest> = cases.iter().map(|c| &c.prepared).collect();
    let together = model.generate_detailed(&all, true).unwrap();
    for chunk in [1usize, 4] {
        let mut apart = Vec::new();
        for part in all.chunks(chunk) {
            apart.extend(model.generate_detailed(part, true).unwrap());
        }
        assert_eq!(apart.len(), together.len(), "{name}: batch size {chunk}");
        for (case, (a, t)) in cases.iter().zip(apart.iter().zip(&together)) {
            let what = format!("{name}/{}: batch size {chunk} vs {}", case.id, all.len());
            assert_eq!(a.generation, t.generation, "{what}");
            assert_eq!(a.first_logits, t.first_logits, "{what}");
        }
    }
}

/// Runs `cases` through one session ([`IdeficsModel::session`]) of at most `slots` requests, as
/// the pool does: the first `slots` are admitted together, and after every step the next cases
/// fill the slots that step freed, so later requests join rows that are mid-way. Asserts that
/// each request's tokens and first logits are the bits it gets alone and in one static batch,
/// that requests did join mid-way and refill freed slots, and that the session took fewer
/// decode steps than static batches of `slots` requests.
pub fn check_continuous_batching<F: Family>(
    model: &IdeficsModel<F>,
    name: &str,
    cases: &[Case],
    slots: usize,
) {
    let all: Vec<&PreparedRequest> = cases.iter().map(|c| &c.prepared).collect();
    let together = model.generate_detailed(&all, true).unwrap();
    let mut session = model.session(true);
    let mut results = vec![None; cases.len()];
    let (mut next, mut steps, mut joined_mid_way) = (0, 0, 0);
    while next < cases.len() || session.live() > 0 {
        let free = slots - session.live();
        let joining: Vec<(RequestKey, &PreparedRequest)> = (next..cases.len().min(next + free))
            .map(|i| (RequestKey(i as u64), all[i]))
            .collect();
        if !joining.is_empty() {
            if steps > 0 && session.live() > 0 {
                joined_mid_way += joining.len();
            }
            next += joining.len();
            session.admit(&joining).unwrap();
        }
        for (key, detailed) in session.step_detailed().unwrap() {
            let slot = &mut results[key.0 as usize];
            assert!(slot.is_none(), "{name}: request {} finished twice", key.0);
            *slot = Some(detailed);
        }
        steps += 1;
    }
    eprintln!("{name}: {steps} decode steps, {joined_mid_way} requests joined mid-way");
    assert!(
        joined_mid_way >= cases.len() / 2,
        "{name}: only {joined_mid_way} requests joined a running batch"
    );
    for (i, (case, result)) in cases.iter().zip(results).enumerate() {
        let what = format!("{name}/{}: continuous batching", case.id);
        let result = result.unwrap_or_else(|| panic!("{what}: never finished"));
        let alone = model
            .generate_detailed(&all[i..=i], true)
            .unwrap()
            .remove(0);
        assert_eq!(result.generation, alone.generation, "{what} vs alone");
        assert_eq!(result.first_logits, alone.first_logits, "{what} vs alone");
        assert_eq!(
            result.generation, together[i].generation,
            "{what} vs static"
        );
        assert_eq!(
            result.first_logits, together[i].first_logits,
            "{what} vs static"
        );
    }
    let static_steps: usize = all
        .chunks(slots)
        .map(|batch| {
            model
                .generate_detailed(batch, false)
                .unwrap()
                .iter()
                .map(|d| d.generation.token_ids.len())
                .max()
                .unwrap_or(0)
        })
        .sum();
    assert!(
        steps < static_steps,
        "{name}: {steps} steps, static batches {static_steps}"
    );
}
