//! Comparisons with the transformers 5.23 references in `fixtures/idefics3` (see its README).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use docpipe_core::VisionLanguageModel;
use docpipe_idefics3::config::{LongestEdge, ProcessorConfig};
use docpipe_idefics3::processor::ImageProcessor;
use docpipe_idefics3::Idefics3Model;
use docpipe_vlm::config::{Normalization, Resample};
use docpipe_vlm::fixture_check::{
    assert_close, chat_request, check_batch_independence, check_continuous_batching,
    check_logits_and_tokens, max_level_diff, read_json, read_jsonl, read_npy, Case, Fixtures,
};
use docpipe_vlm::image::{load_image, ProcessedImage};
use docpipe_vlm::resample::resize;
use docpipe_vlm::rope::inv_freq;
use image::RgbImage;
use serde_json::Value;

const MODELS: &[&str] = &["tiny-llama3", "tiny-smolvlm", "tiny-nosplit"];

fn fixtures() -> Fixtures {
    Fixtures::of("idefics3")
}

fn reference_dir(name: &str) -> PathBuf {
    fixtures().reference_dir(name)
}

fn load(name: &str) -> Idefics3Model {
    fixtures().load(name)
}

/// A fixture image as transformers 5.23's Idefics3 processor sees it (alpha composited onto
/// white, like `load_image`).
fn load_like_reference(path: &Path) -> RgbImage {
    load_image(path).unwrap()
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
    docpipe_vlm::fixture_check::cases(
        model,
        &reference_dir(name),
        load_like_reference,
        |id, _, expected, prepared| {
            let want: Vec<u32> = serde_json::from_value(expected["input_ids"].clone()).unwrap();
            assert_eq!(prepared.input_ids, want, "{name}/{id}: prompt ids");
            if let Some(reference) = reference_tiles(name, id) {
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
        },
    )
}

/// Pillow's LANCZOS on every RGB case. The RGBA case is for a port that resizes before the
/// RGB conversion (the spec's 4.x order); 5.23 converts first, so no resize runs on RGBA.
#[test]
fn resize_matches_pillow_lanczos() {
    let fixtures = fixtures();
    let index = read_json(&fixtures.root.join("resize/index.json"));
    let mut checked = 0;
    for case in index["cases"].as_array().unwrap() {
        if case["mode"] != "RGB" {
            continue;
        }
        let (image, dst) = fixtures.resize_case(case);
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
    let sizes = read_json(&fixtures().root.join("reference/sizes.json"));
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
    let versions = read_json(&fixtures().root.join("VERSIONS.json"));
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
                .prepare(&chat_request(line, &dir, &mut cache, load_like_reference))
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
        check_logits_and_tokens(&model, name, &reference_dir(name), &cases(&model, name));
    }
}

/// A request's tokens and first logits are bit-identical alone and in batches of 4.
#[test]
fn results_do_not_depend_on_the_batch() {
    for name in MODELS {
        let model = load(name);
        check_batch_independence(&model, name, &cases(&model, name));
    }
}

/// Requests that join a running batch mid-way, in slots freed by shorter ones, get the bits
/// they get alone and in a static batch, and the session takes fewer steps than static
/// batches of the same size.
#[test]
fn continuous_batching_gives_the_tokens_of_static_batches() {
    for name in MODELS {
        let model = load(name);
        check_continuous_batching(&model, name, &cases(&model, name), 3);
    }
}
