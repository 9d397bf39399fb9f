//! Florence-2 against transformers 5.23 on the tiny fixture checkpoint
//! (`fixtures/make_fixtures_florence2.py`), saved in both layouts with the same weights:
//! preprocessing, prompt ids, first-step raw logits, beam-search tokens, greedy tokens up to
//! the first close call, and batch independence.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device};
use docpipe_core::{ChatMessage, ChatRequest, ContentItem, ModelError, VisionLanguageModel};
use docpipe_florence2::beam::Search;
use docpipe_florence2::layout::Layout;
use docpipe_florence2::{DetailedGeneration, Florence2Model, Florence2Request};
use docpipe_vlm::fixture_check::{assert_close, chat_request, read_jsonl, read_npy, Fixtures};
use docpipe_vlm::image::load_image;
use serde_json::Value;

const MODELS: [(&str, Layout); 2] = [
    ("tiny-native", Layout::Native),
    ("tiny-remote", Layout::RemoteCode),
];

fn fixtures() -> Fixtures {
    Fixtures::of("florence2")
}

fn load(name: &str) -> Florence2Model {
    Florence2Model::load(&fixtures().model_dir(name), &Device::Cpu, DType::F32).unwrap()
}

/// The reference requests, prepared, with their expected lines.
fn cases(model: &Florence2Model) -> Vec<(Value, Florence2Request)> {
    let dir = fixtures().reference_dir("tiny");
    let requests = read_jsonl(&dir.join("requests.jsonl"));
    let expected = read_jsonl(&dir.join("expected.jsonl"));
    let mut cache = Vec::new();
    requests
        .iter()
        .zip(expected)
        .map(|(line, expected)| {
            let request = chat_request(line, &dir, &mut cache, |p| load_image(p).unwrap());
            (expected, model.prepare(&request).unwrap())
        })
        .collect()
}

fn ids(value: &Value) -> Vec<u32> {
    serde_json::from_value(value.clone()).unwrap()
}

fn generate(
    model: &Florence2Model,
    search: &Search,
    batch: &[&Florence2Request],
) -> Vec<DetailedGeneration> {
    model.generate_with(search, batch, true).unwrap()
}

#[test]
fn both_layouts_load_and_say_which_they_are() {
    for (name, layout) in MODELS {
        assert_eq!(load(name).layout(), layout, "{name}");
    }
}

#[test]
fn prompts_and_pixels_match_the_processor() {
    let dir = fixtures().reference_dir("tiny");
    for (name, _) in MODELS {
        let model = load(name);
        for (expected, prepared) in cases(&model) {
            let id = expected["id"].as_str().unwrap();
            assert_eq!(
                prepared.prompt,
                expected["prompt"].as_str().unwrap(),
                "{name}/{id}"
            );
            let input_ids = ids(&expected["input_ids"]);
            assert_eq!(
                prepared.text_ids,
                input_ids[model.image_tokens()..],
                "{name}/{id}: text ids"
            );
            assert_eq!(
                model.cost(&prepared).prompt_tokens,
                expected["prompt_tokens"].as_u64().unwrap() as usize
            );
            let want = read_npy(&dir.join("pixels").join(format!("{id}.npy")));
            assert_eq!(
                want.shape,
                [3, prepared.pixels.height, prepared.pixels.width]
            );
            assert_close(
                &prepared.pixels.data,
                &want.data,
                1e-6,
                &format!("{name}/{id} pixels"),
            );
        }
    }
}

#[test]
fn first_logits_and_beam_search_match_transformers() {
    let first = read_npy(&fixtures().reference_dir("tiny").join("first_logits.npy"));
    let vocab = first.shape[1];
    for (name, _) in MODELS {
        let model = load(name);
        let cases = cases(&model);
        assert_eq!(model.generation_config().num_beams, 3);
        let batch: Vec<&Florence2Request> = cases.iter().map(|(_, p)| p).collect();
        let search = Search::new(model.generation_config());
        for (i, ((expected, _), out)) in cases
            .iter()
            .zip(generate(&model, &search, &batch))
            .enumerate()
        {
            let id = expected["id"].as_str().unwrap();
            let logits = out.first_logits.as_ref().unwrap();
            assert_close(
                logits,
                &first.data[i * vocab..(i + 1) * vocab],
                1e-3,
                &format!("{name}/{id} first logits"),
            );
            let beam = &expected["beam"];
            assert_eq!(
                out.generation.token_ids,
                ids(&beam["token_ids"]),
                "{name}/{id}: beam tokens"
            );
            assert_eq!(
                out.generation.text,
                beam["text"].as_str().unwrap(),
                "{name}/{id}: text"
            );
            assert_eq!(
                out.generation.prompt_tokens,
                expected["prompt_tokens"].as_u64().unwrap() as usize
            );
        }
    }
}

#[test]
fn greedy_tokens_match_transformers_up_to_the_first_close_call() {
    let (mut compared, mut total) = (0, 0);
    for (name, _) in MODELS {
        let model = load(name);
        let cases = cases(&model);
        let mut search = Search::new(model.generation_config());
        search.num_beams = 1;
        let batch: Vec<&Florence2Request> = cases.iter().map(|(_, p)| p).collect();
        for ((expected, _), out) in cases.iter().zip(generate(&model, &search, &batch)) {
            let id = expected["id"].as_str().unwrap();
            let want = ids(&expected["greedy"]["token_ids"]);
            let margins: Vec<f64> =
                serde_json::from_value(expected["greedy"]["margins"].clone()).unwrap();
            let safe = margins.iter().position(|&m| m < 0.05).unwrap_or(want.len());
            let got = &out.generation.token_ids;
            assert_eq!(
                got[..safe.min(got.len())],
                want[..safe],
                "{name}/{id}: greedy tokens"
            );
            if safe == want.len() {
                assert_eq!(got, &want, "{name}/{id}: greedy tokens");
                assert_eq!(
                    out.generation.text,
                    expected["greedy"]["text"].as_str().unwrap()
                );
            }
            compared += safe;
            total += want.len();
        }
    }
    eprintln!(
        "greedy: {compared} of {total} reference tokens compared (before the first margin < 0.05)"
    );
    assert!(
        compared * 2 > total,
        "too few greedy tokens are decided by a clear margin"
    );
}

#[test]
fn a_request_gets_the_same_bits_alone_in_fours_and_all_together() {
    let model = load("tiny-native");
    let cases = cases(&model);
    let all: Vec<&Florence2Request> = cases.iter().map(|(_, p)| p).collect();
    for beams in [1, 3] {
        let mut search = Search::new(model.generation_config());
        search.num_beams = beams;
        let together = generate(&model, &search, &all);
        for chunk in [1, 4] {
            let apart: Vec<DetailedGeneration> = all
                .chunks(chunk)
                .flat_map(|c| generate(&model, &search, c))
                .collect();
            assert_eq!(apart, together, "{beams} beams, batches of {chunk}");
        }
    }
}

#[test]
fn the_remote_layout_gives_the_native_layouts_bits() {
    let (native, remote) = (load("tiny-native"), load("tiny-remote"));
    let (a, b) = (cases(&native), cases(&remote));
    let batch = |c: &[(Value, Florence2Request)]| -> Vec<Florence2Request> {
        c.iter().map(|(_, p)| p.clone()).collect()
    };
    let (a, b) = (batch(&a), batch(&b));
    let search = Search::new(native.generation_config());
    assert_eq!(
        generate(&native, &search, &a.iter().collect::<Vec<_>>()),
        generate(&remote, &search, &b.iter().collect::<Vec<_>>())
    );
}

#[test]
fn a_batch_of_four_matches_transformers_padded_batch() {
    let model = load("tiny-native");
    let dir = fixtures().reference_dir("tiny");
    let reference = read_jsonl(&dir.join("batch4.jsonl"));
    let cases = cases(&model);
    let batch: Vec<Florence2Request> = cases[..4]
        .iter()
        .map(|(_, p)| Florence2Request {
            max_new_tokens: 16,
            ..p.clone()
        })
        .collect();
    let batch: Vec<&Florence2Request> = batch.iter().collect();
    let out = model.generate_detailed(&batch, false).unwrap();
    let beam: Vec<&Value> = reference.iter().filter(|r| r["kind"] == "beam").collect();
    assert_eq!(beam.len(), 4);
    for (want, got) in beam.iter().zip(&out) {
        assert_eq!(
            got.generation.token_ids,
            ids(&want["token_ids"]),
            "{}",
            want["id"]
        );
    }
}

#[test]
fn requests_the_processor_refuses_are_invalid() {
    let model = load("tiny-native");
    let page = Arc::new(
        load_image(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/idefics2/images/page.png"),
        )
        .unwrap(),
    );
    let request = |text: &str, images: usize| ChatRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: std::iter::repeat_n(ContentItem::Image { path: None }, images)
                .chain([ContentItem::Text { text: text.into() }])
                .collect(),
        }],
        images: vec![page.clone(); images],
        max_new_tokens: 4,
    };
    assert!(model
        .prepare(&request("<DocVQA>What is the date?", 1))
        .is_ok());
    for (text, images) in [
        ("<OCR> and more", 1),
        ("<DocVQA>Which page?", 2),
        ("<CAPTION>", 0),
    ] {
        assert!(
            matches!(
                model.prepare(&request(text, images)),
                Err(ModelError::InvalidRequest(_))
            ),
            "{text} with {images} images"
        );
    }
    let mut long = request("<DocVQA>date", 1);
    long.max_new_tokens = 1000;
    assert!(matches!(
        model.prepare(&long),
        Err(ModelError::InvalidRequest(_))
    ));
}
