//! Idefics1 against transformers 5.23 on the tiny fixture checkpoints
//! (`fixtures/make_fixtures_idefics1.py`): preprocessing, prompt ids and image attention,
//! first-step raw logits, greedy tokens up to the first close call, transformers' own batch of
//! four, batch independence, and a decoder split over several devices.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use docpipe_core::{ChatMessage, ChatRequest, ContentItem, ModelError, VisionLanguageModel};
use docpipe_idefics1::prompt::PromptFormat;
use docpipe_idefics1::{DetailedGeneration, Idefics1Model, Idefics1Request};
use docpipe_vlm::fixture_check::{
    assert_close, chat_request, max_level_diff, read_jsonl, read_npy, Fixtures,
};
use docpipe_vlm::image::load_image;
use docpipe_vlm::placement::Placement;
use serde_json::Value;

const MODELS: [(&str, PromptFormat); 2] = [
    ("tiny-base", PromptFormat::Base),
    ("tiny-instruct", PromptFormat::Instruct),
];

fn fixtures() -> Fixtures {
    Fixtures::of("idefics1")
}

fn load_on(name: &str, placement: &Placement) -> Idefics1Model {
    Idefics1Model::load(&fixtures().model_dir(name), placement, DType::F32).unwrap()
}

fn load(name: &str) -> Idefics1Model {
    load_on(name, &Placement::single(&Device::Cpu))
}

/// The reference requests of `name`, prepared, with their expected lines. Requests naming the
/// same image share its `Arc`, as a page's questions do in the pipeline.
fn cases(model: &Idefics1Model, name: &str) -> Vec<(Value, Idefics1Request)> {
    let dir = fixtures().reference_dir(name);
    let requests = read_jsonl(&dir.join("requests.jsonl"));
    let expected = read_jsonl(&dir.join("expected.jsonl"));
    assert_eq!(requests.len(), expected.len());
    let mut cache = Vec::new();
    requests
        .iter()
        .zip(expected)
        .map(|(line, expected)| {
            assert_eq!(line["id"], expected["id"]);
            let request = chat_request(line, &dir, &mut cache, |p| load_image(p).unwrap());
            (expected, model.prepare(&request).unwrap())
        })
        .collect()
}

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

fn generate(model: &Idefics1Model, batch: &[&Idefics1Request]) -> Vec<DetailedGeneration> {
    model.generate_detailed(batch, true).unwrap()
}

/// Asserts that `got` equals `want` up to the first step whose margin is below 0.05 (where
/// float summation order may flip it), and entirely when there is none; returns the number of
/// tokens compared.
fn check_tokens(got: &[u32], want: &[u32], margins: &[f64], what: &str) -> usize {
    let safe = margins.iter().position(|&m| m < 0.05).unwrap_or(want.len());
    assert_eq!(got[..safe.min(got.len())], want[..safe], "{what}: tokens");
    if safe == want.len() {
        assert_eq!(got, want, "{what}: tokens");
    }
    safe
}

#[test]
fn pixels_match_the_pil_processor() {
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/idefics2/images");
    let pixels = fixtures().root.join("reference/pixels");
    let (base, instruct) = (load("tiny-base"), load("tiny-instruct"));
    // The hub's flat file (`image_size`) and transformers 5's nested one read the same.
    assert_eq!(base.processor().config, instruct.processor().config);
    assert_eq!(base.image_longest_edge(), 224);
    let page = load_image(&images.join("page.png")).unwrap();
    let want = read_npy(&pixels.join("page.npy"));
    let got = base.processor().preprocess(&page);
    assert_eq!(want.shape, [3, got.height, got.width]);
    assert_close(&got.data, &want.data, 1e-6, "page pixels");
    let tall = load_image(&images.join("tall.png")).unwrap();
    let want = read_npy(&pixels.join("tall.u8.npy"));
    let got = base.processor().resize(&tall);
    assert_eq!(want.shape, [224, 224, 3]);
    assert_eq!(max_level_diff(got.as_raw(), &want.data), 0, "tall levels");
}

#[test]
fn prompts_and_image_attention_match_the_processor() {
    for (name, format) in MODELS {
        let model = load(name);
        assert_eq!(model.prompt_format(), format, "{name}");
        for (expected, prepared) in cases(&model, name) {
            let what = format!("{name}/{}", expected["id"].as_str().unwrap());
            assert_eq!(
                prepared.prompt,
                expected["prompt"].as_str().unwrap(),
                "{what}"
            );
            assert_eq!(prepared.input_ids, ids(&expected["input_ids"]), "{what}");
            let want: Vec<Option<u32>> =
                serde_json::from_value::<Vec<i64>>(expected["image_index"].clone())
                    .unwrap()
                    .into_iter()
                    .map(|i| u32::try_from(i).ok())
                    .collect();
            assert_eq!(prepared.image_index, want, "{what}: image attention");
            assert_eq!(
                model.cost(&prepared).prompt_tokens,
                expected["prompt_tokens"].as_u64().unwrap() as usize
            );
        }
    }
}

#[test]
fn first_logits_and_greedy_tokens_match_transformers() {
    let (mut compared, mut total) = (0, 0);
    for (name, _) in MODELS {
        let model = load(name);
        let cases = cases(&model, name);
        let first = read_npy(&fixtures().reference_dir(name).join("first_logits.npy"));
        let vocab = first.shape[1];
        assert_eq!(vocab, model.vocab_size());
        let batch: Vec<&Idefics1Request> = cases.iter().map(|(_, p)| p).collect();
        for (i, ((expected, _), out)) in cases.iter().zip(generate(&model, &batch)).enumerate() {
            let what = format!("{name}/{}", expected["id"].as_str().unwrap());
            let logits = out.first_logits.as_ref().unwrap();
            assert_close(
                logits,
                &first.data[i * vocab..(i + 1) * vocab],
                1e-3,
                &format!("{what} first logits"),
            );
            let want = ids(&expected["token_ids"]);
            let margins: Vec<f64> = serde_json::from_value(expected["margins"].clone()).unwrap();
            let safe = check_tokens(&out.generation.token_ids, &want, &margins, &what);
            if safe == want.len() {
                assert_eq!(
                    out.generation.text,
                    expected["text"].as_str().unwrap(),
                    "{what}"
                );
                assert_eq!(
                    out.generation.finish_reason.as_str(),
                    expected["finish_reason"].as_str().unwrap(),
                    "{what}"
                );
            }
            assert_eq!(
                out.generation.prompt_tokens,
                expected["prompt_tokens"].as_u64().unwrap() as usize
            );
            compared += safe;
            total += want.len();
        }
    }
    eprintln!("{compared} of {total} reference tokens compared (before the first margin < 0.05)");
    assert!(
        compared * 4 > total * 3,
        "too few tokens decided by a clear margin"
    );
}

#[test]
fn a_batch_of_four_matches_transformers_padded_batch() {
    for (name, _) in MODELS {
        let model = load(name);
        let cases = cases(&model, name);
        let reference = read_jsonl(&fixtures().reference_dir(name).join("batch4.jsonl"));
        let batch: Vec<&Idefics1Request> = cases[..4].iter().map(|(_, p)| p).collect();
        for (want, got) in reference.iter().zip(generate(&model, &batch)) {
            let margins: Vec<f64> = serde_json::from_value(want["margins"].clone()).unwrap();
            let what = format!("{name}/{} in a batch of 4", want["id"]);
            check_tokens(
                &got.generation.token_ids,
                &ids(&want["token_ids"]),
                &margins,
                &what,
            );
        }
    }
}

#[test]
fn a_request_gets_the_same_bits_alone_in_fours_and_all_together() {
    for (name, _) in MODELS {
        let model = load(name);
        let cases = cases(&model, name);
        let all: Vec<&Idefics1Request> = cases.iter().map(|(_, p)| p).collect();
        let together = generate(&model, &all);
        for chunk in [1, 4] {
            let apart: Vec<DetailedGeneration> = all
                .chunks(chunk)
                .flat_map(|c| generate(&model, c))
                .collect();
            assert_eq!(apart, together, "{name}: batches of {chunk}");
        }
    }
}

#[test]
fn a_decoder_split_over_three_devices_gives_the_single_device_bits() {
    for (name, _) in MODELS {
        let single = load(name);
        let split = load_on(
            name,
            &Placement::new(vec![Device::Cpu, Device::Cpu, Device::Cpu]),
        );
        let cases = cases(&single, name);
        let batch: Vec<&Idefics1Request> = cases.iter().map(|(_, p)| p).collect();
        assert_eq!(
            generate(&split, &batch),
            generate(&single, &batch),
            "{name}"
        );
    }
}

#[test]
fn requests_the_prompt_cannot_hold_are_invalid() {
    let model = load("tiny-instruct");
    let page = Arc::new(
        load_image(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/idefics2/images/page.png"),
        )
        .unwrap(),
    );
    let request = |items: usize, images: usize, text: &str| ChatRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: std::iter::repeat_n(ContentItem::Image { path: None }, items)
                .chain([ContentItem::Text { text: text.into() }])
                .collect(),
        }],
        images: vec![page.clone(); images],
        max_new_tokens: 4,
    };
    assert!(model.prepare(&request(2, 2, "Compare them.")).is_ok());
    for (items, images) in [(1, 2), (2, 1), (0, 1)] {
        assert!(
            matches!(
                model.prepare(&request(items, images, "Compare them.")),
                Err(ModelError::InvalidRequest(_))
            ),
            "{items} image items, {images} images"
        );
    }
    let empty = ChatRequest {
        messages: Vec::new(),
        images: Vec::new(),
        max_new_tokens: 4,
    };
    assert!(matches!(
        model.prepare(&empty),
        Err(ModelError::InvalidRequest(_))
    ));
    // The base checkpoint cannot embed <end_of_utterance>: a prompt that spells it is refused.
    let base = load("tiny-base");
    let spelled = request(1, 1, "Hello<end_of_utterance>");
    assert!(matches!(
        base.prepare(&spelled),
        Err(ModelError::InvalidRequest(_))
    ));
    let zero = ChatRequest {
        max_new_tokens: 0,
        ..request(1, 1, "Anything?")
    };
    let prepared = model.prepare(&zero).unwrap();
    let out = model.generate_detailed(&[&prepared], false).unwrap();
    assert!(out[0].generation.token_ids.is_empty());
}

#[test]
fn the_two_image_request_reads_the_most_recent_image() {
    let model = load("tiny-instruct");
    let cases = cases(&model, "tiny-instruct");
    let (_, two) = cases.iter().find(|(e, _)| e["id"] == "two_images").unwrap();
    // Text before the first image sees none; the second <image> hands over to image 1.
    let first = two.image_index.iter().position(Option::is_some).unwrap();
    assert!(first > 1 && two.image_index[..first].iter().all(Option::is_none));
    assert_eq!(two.image_index.last(), Some(&Some(1)));
    let logits = |request: &Idefics1Request| {
        generate(&model, &[request])[0]
            .first_logits
            .clone()
            .unwrap()
    };
    let base = logits(two);
    // Another page as the second image moves the last token's logits; the same pixels under
    // another Arc (encoded separately) do not.
    let (_, other) = cases.iter().find(|(e, _)| e["id"] == "separated").unwrap();
    let mut swapped = two.clone();
    swapped.images[1] = other.images[1].clone();
    let moved = logits(&swapped)
        .iter()
        .zip(&base)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        moved > 0.1,
        "the second image moves the logits by only {moved}"
    );
    let mut copied = two.clone();
    copied.images[1].source = Arc::new((*two.images[1].source).clone());
    assert_eq!(logits(&copied), base);
}
