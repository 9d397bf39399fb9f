//! Comparisons with the transformers 5.23 references in `fixtures/idefics3` (see its README).

#[path = "../../docpipe-idefics2/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use docpipe_core::{ChatMessage, ChatRequest, ContentItem, VisionLanguageModel};
use docpipe_idefics3::config::{LongestEdge, ProcessorConfig};
use docpipe_idefics3::processor::ImageProcessor;
use docpipe_idefics3::{Idefics3Model, Idefics3Request};
use docpipe_vlm::config::{Normalization, Resample};
use docpipe_vlm::image::{load_image, ProcessedImage};
use docpipe_vlm::resample::resize;
use docpipe_vlm::rope::inv_freq;
use image::RgbImage;
use serde_json::Value;
use support::{read_jsonl, read_npy};

const MODELS: &[&str] = &["tiny-llama3", "tiny-smolvlm", "tiny-nosplit"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/idefics3")
}

fn reference_dir(name: &str) -> PathBuf {
    fixtures().join("reference").join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(name: &str) -> Idefics3Model {
    let dir = fixtures().join("models").join(name);
    Idefics3Model::load(&dir, &Device::Cpu, DType::F32).unwrap()
}

/// A request line of `requests.jsonl`, images loaded relative to the file as transformers
/// 5.23's Idefics3 processor sees them (alpha composited onto white, like `load_image`).
/// Lines that name the same image share one `Arc`, as pages do in the pipeline.
fn chat_request(
    line: &Value,
    base: &Path,
    cache: &mut Vec<(String, Arc<RgbImage>)>,
) -> ChatRequest {
    let messages: Vec<ChatMessage> = serde_json::from_value(line["messages"].clone()).unwrap();
    let mut images = Vec::new();
    for item in messages.iter().flat_map(|m| &m.content) {
        if let ContentItem::Image { path: Some(p) } = item {
            let image = match cache.iter().find(|(q, _)| q == p) {
                Some((_, img)) => img.clone(),
                None => {
                    let img = Arc::new(load_image(&base.join(p)).unwrap());
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

struct Case {
    id: String,
    expected: Value,
    prepared: Idefics3Request,
}

/// The reference tiles of a request, when the fixtures have them.
fn reference_tiles(name: &str, id: &str) -> Option<Vec<ProcessedImage>> {
    let path = reference_dir(name).join(format!("pixels/{id}.pixel_values.npy"));
    if !path.exists() {
        return None;
    }
    let values = read_npy(&path);
    let (n, side) = (values.shape[0], values.shape[2]);
    let len = 3 * side * side;
    Some(
        (0..n)
            .map(|t| ProcessedImage {
                height: side,
                width: side,
                data: values.data[t * len..(t + 1) * len].to_vec(),
            })
            .collect(),
    )
}

/// Largest |difference| between our tiles and the reference's.
fn pixel_diff(ours: &[&ProcessedImage], reference: &[ProcessedImage]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "tile count");
    ours.iter()
        .zip(reference)
        .flat_map(|(a, b)| {
            assert_eq!((a.height, a.width), (b.height, b.width), "tile size");
            a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs())
        })
        .fold(0f32, f32::max)
}

/// One level of a u8 pixel after normalization to [-1, 1].
const ONE_LEVEL: f32 = 2.0 / 255.0 + 1e-6;

/// Prepares every reference request and checks its prompt ids against the processor's.
///
/// Where our tiles differ from the reference's (Pillow's pass order on the `tall` image, see
/// `docpipe_vlm::resample`; the JPEG decoder on `cmyk`), the reference tiles replace ours, so
/// that the model itself is compared; `pixel_values_match_the_pil_processor` bounds the
/// difference.
fn cases(model: &Idefics3Model, name: &str) -> Vec<Case> {
    let dir = reference_dir(name);
    let requests = read_jsonl(&dir.join("requests.jsonl"));
    let expected = read_jsonl(&dir.join("expected.jsonl"));
    assert_eq!(requests.len(), expected.len());
    let mut cache = Vec::new();
    requests
        .iter()
        .zip(expected)
        .map(|(line, expected)| {
            let id = line["id"].as_str().unwrap().to_string();
            let request = chat_request(line, &dir, &mut cache);
            let mut prepared = model.prepare(&request).unwrap();
            let want: Vec<u32> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
            assert_eq!(prepared.input_ids, want, "{name}/{id}: prompt ids");
            if let Some(reference) = reference_tiles(name, &id) {
                let ours: Vec<_> = prepared
                    .images
                    .iter()
                    .flat_map(|i| i.crops.iter())
                    .collect();
                if pixel_diff(&ours, &reference) > 0.0 {
                    let mut rest = reference.into_iter();
                    for image in &mut prepared.images {
                        let n = image.crops.len();
                        image.crops = Arc::new(rest.by_ref().take(n).collect());
                        // Other requests about this page keep our tiles: a page of its own.
                        image.source = Arc::new(image.source.as_ref().clone());
                    }
                }
            }
            Case {
                id,
                expected,
                prepared,
            }
        })
        .collect()
}

fn max_level_diff(a: &[u8], b: &[f32]) -> i32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as i32 - y as i32).abs())
        .max()
        .unwrap_or(0)
}

/// Pillow's LANCZOS on every RGB case. The RGBA case is for a port that resizes before the
/// RGB conversion (the spec's 4.x order); 5.23 converts first, so no resize runs on RGBA.
#[test]
fn resize_matches_pillow_lanczos() {
    let dir = fixtures().join("resize");
    let index = read_json(&dir.join("index.json"));
    let mut checked = 0;
    for case in index["cases"].as_array().unwrap() {
        if case["mode"] != "RGB" {
            continue;
        }
        let src = read_npy(&dir.join(case["src"].as_str().unwrap()));
        let dst = read_npy(&dir.join(case["dst"].as_str().unwrap()));
        let (h, w) = (src.shape[0] as u32, src.shape[1] as u32);
        let image = RgbImage::from_raw(w, h, src.data.iter().map(|&v| v as u8).collect()).unwrap();
        let ours = resize(
            &image,
            dst.shape[1] as u32,
            dst.shape[0] as u32,
            Resample::Lanczos,
        );
        let diff = max_level_diff(ours.as_raw(), &dst.data);
        assert_eq!(diff, 0, "{}", case["name"]);
        checked += 1;
    }
    assert!(checked >= 4);
}

/// Step-1 and step-2 sizes and tile grids of every `sizes.json` case, at the real settings
/// (8B, SmolVLM) and the fixtures'.
#[test]
fn layouts_match_the_processor() {
    let sizes = read_json(&fixtures().join("reference/sizes.json"));
    for case in sizes["cases"].as_array().unwrap() {
        let setting = &sizes["settings"][case["setting"].as_str().unwrap()];
        let processor = ImageProcessor::new(ProcessorConfig {
            do_convert_rgb: true,
            do_resize: true,
            size: LongestEdge {
                longest_edge: setting["longest_edge"].as_u64().unwrap() as usize,
            },
            max_image_size: LongestEdge {
                longest_edge: setting["max_image_size"].as_u64().unwrap() as usize,
            },
            resample: Resample::Lanczos,
            normalization: Normalization {
                do_rescale: true,
                rescale_factor: 1.0 / 255.0,
                do_normalize: true,
                image_mean: [0.5; 3],
                image_std: [0.5; 3],
            },
            do_image_splitting: setting["do_image_splitting"].as_bool().unwrap(),
            image_seq_len: 1,
        });
        let hw: Vec<usize> = serde_json::from_value(case["hw"].clone()).unwrap();
        let layout = processor.layout(hw[0], hw[1]);
        let what = format!("{case}");
        let pair = |v: (usize, usize)| serde_json::json!([v.0, v.1]);
        assert_eq!(pair(layout.resized), case["resized_hw"], "{what}");
        assert_eq!(
            layout.encoder.map(pair).unwrap_or(Value::Null),
            case["encoder_hw"],
            "{what}"
        );
        assert_eq!(layout.rows as u64, case["rows"].as_u64().unwrap(), "{what}");
        assert_eq!(layout.cols as u64, case["cols"].as_u64().unwrap(), "{what}");
        assert_eq!(
            layout.tiles() as u64,
            case["n_tiles"].as_u64().unwrap(),
            "{what}"
        );
    }
}

#[test]
fn rope_frequencies_match_transformers() {
    let versions = read_json(&fixtures().join("VERSIONS.json"));
    for name in MODELS {
        let model = load(name);
        let text = &model.config().text;
        let want: Vec<f32> =
            serde_json::from_value(versions["models"][name]["rope_inv_freq"].clone()).unwrap();
        assert_eq!(inv_freq(&text.rope, text.head_dim), want, "{name}");
    }
}

/// Tiles equal the PIL processor's bit for bit, except where Pillow 13 runs its two passes in
/// the other order (the `tall` image, see `docpipe_vlm::resample`: one level after the first
/// resize, up to 10 after the LANCZOS ringing of the next two) and where
/// Pillow's libjpeg decodes the CMYK JPEG differently from the Rust decoder.
#[test]
fn pixel_values_match_the_pil_processor() {
    let mut exact = 0;
    for name in MODELS {
        let model = load(name);
        let dir = reference_dir(name);
        let requests = read_jsonl(&dir.join("requests.jsonl"));
        let mut cache = Vec::new();
        for line in &requests {
            let id = line["id"].as_str().unwrap();
            let Some(reference) = reference_tiles(name, id) else {
                continue;
            };
            let prepared = model
                .prepare(&chat_request(line, &dir, &mut cache))
                .unwrap();
            let ours: Vec<_> = prepared
                .images
                .iter()
                .flat_map(|i| i.crops.iter())
                .collect();
            let worst = pixel_diff(&ours, &reference);
            eprintln!("{name}/{id}: max pixel diff {worst}");
            let tolerance = match id {
                "cmyk" => 0.1,
                "tall" => 10.0 * ONE_LEVEL,
                _ => 0.0,
            };
            assert!(worst <= tolerance, "{name}/{id}: pixel diff {worst}");
            exact += usize::from(worst == 0.0);
        }
    }
    assert!(exact >= 3 * 6, "{exact} requests with exact pixels");
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) -> f32 {
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

#[test]
fn vision_and_connector_outputs_match() {
    for name in MODELS {
        let model = load(name);
        let inter = reference_dir(name).join("intermediates");
        for case in cases(&model, name) {
            let tiles: Vec<_> = case
                .prepared
                .images
                .iter()
                .flat_map(|i| i.crops.iter().cloned())
                .collect();
            let features_path = inter.join(format!("{}.image_features.npy", case.id));
            if features_path.exists() {
                let features = model.image_features(&tiles).unwrap();
                let features = features.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let what = format!("{name}/{} features", case.id);
                assert_close(&features, &read_npy(&features_path).data, 1e-4, &what);
            }
            let hidden_path = inter.join(format!("{}.vision_hidden.npy", case.id));
            if hidden_path.exists() {
                let want = read_npy(&hidden_path);
                let got: Vec<f32> = tiles
                    .iter()
                    .flat_map(|t| {
                        let h = model.vision_hidden(t).unwrap();
                        h.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    })
                    .collect();
                let what = format!("{name}/{} vision", case.id);
                assert_close(&got, &want.data, 1e-4, &what);
            }
        }
    }
}

/// Prefill logits within 1e-3 of the largest |logit|, and greedy tokens identical up to the
/// first reference step whose margin is below 0.05 (where float summation order may flip it).
#[test]
fn logits_and_tokens_match_transformers() {
    for name in MODELS {
        let model = load(name);
        let cases = cases(&model, name);
        let batch: Vec<&Idefics3Request> = cases.iter().map(|c| &c.prepared).collect();
        let outputs = model.generate_detailed(&batch, true).unwrap();
        let prefill = read_npy(&reference_dir(name).join("prefill_logits.npy"));
        let vocab = prefill.shape[1];
        let (mut worst, mut compared, mut safe_total) = (0f32, 0, 0);
        for (i, (case, out)) in cases.iter().zip(&outputs).enumerate() {
            let what = format!("{name}/{}", case.id);
            let logits = out.first_logits.as_ref().unwrap();
            let want = &prefill.data[i * vocab..(i + 1) * vocab];
            worst = worst.max(assert_close(logits, want, 1e-3, &format!("{what} prefill")));
            let want: Vec<u32> =
                serde_json::from_value(case.expected["token_ids"].clone()).unwrap();
            let margins: Vec<f64> =
                serde_json::from_value(case.expected["margins"].clone()).unwrap();
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
}

/// A request's tokens and first logits are bit-identical alone and in batches of 4.
#[test]
fn results_do_not_depend_on_the_batch() {
    for name in MODELS {
        let model = load(name);
        let cases = cases(&model, name);
        let all: Vec<&Idefics3Request> = cases.iter().map(|c| &c.prepared).collect();
        let together = model.generate_detailed(&all, true).unwrap();
        for chunk in [1usize, 4] {
            let mut apart = Vec::new();
            for part in all.chunks(chunk) {
                apart.extend(model.generate_detailed(part, true).unwrap());
            }
            for (case, (a, t)) in cases.iter().zip(apart.iter().zip(&together)) {
                let what = format!("{name}/{}: batch size {chunk} vs {}", case.id, all.len());
                assert_eq!(a.generation, t.generation, "{what}");
                assert_eq!(a.first_logits, t.first_logits, "{what}");
            }
        }
    }
}
