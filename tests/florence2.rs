//! The Florence-2 family end to end, on the tiny fixture checkpoint of
//! `fixtures/make_fixtures_florence2.py` (both tensor layouts): `docpipe generate` against
//! transformers' beam-search references and first-step logits, `docpipe run` with a shipped
//! pipeline, and `docpipe eval docvqa` with the family's `<DocVQA>` prompt.

use docpipe_core::{DeviceSpec, Dtype};
use docpipe_florence2::Florence2Model;
use docpipe_pipeline::model::Family;
use docpipe_vlm::fixture_check::read_jsonl;
use docpipe_vlm::{candle_device, candle_dtype};

use crate::eval_docvqa::eval_docvqa_scores_every_question;
use crate::idefics3::{assert_rows_are_the_models_answers, run_docvqa_pipeline};
use crate::support::{docpipe, fixture, fixture_arg, generate_against_reference, text};

const NATIVE: &str = "florence2/models/tiny-native";
const REMOTE: &str = "florence2/models/tiny-remote";
const MAX_NEW_TOKENS: usize = 6;

fn load(name: &str) -> Florence2Model {
    let device = candle_device(DeviceSpec::Cpu).unwrap();
    Florence2Model::load(&fixture(name), &device, candle_dtype(Dtype::F32)).unwrap()
}

#[test]
fn generate_matches_transformers_beam_search_in_both_layouts() {
    let reference = fixture("florence2/reference/tiny");
    let expected = read_jsonl(&reference.join("expected.jsonl"));
    for name in [NATIVE, REMOTE] {
        let got = generate_against_reference(name, &reference, "cpu");
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g["id"], e["id"]);
            assert_eq!(g["token_ids"], e["beam"]["token_ids"], "{name} {}", e["id"]);
            assert_eq!(g["text"], e["beam"]["text"], "{name} {}", e["id"]);
            assert_eq!(g["prompt_tokens"], e["prompt_tokens"], "{name} {}", e["id"]);
        }
    }
}

/// Florence-2 fits any device: a device group is a configuration error naming the group.
#[test]
fn a_device_group_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let reference = fixture("florence2/reference/tiny");
    let output = docpipe(
        &[
            "generate",
            "--model",
            &fixture_arg(NATIVE),
            "--requests",
            reference.join("requests.jsonl").to_str().unwrap(),
            "--out",
            dir.path().join("out.jsonl").to_str().unwrap(),
            "--device",
            "cpu+cpu",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let message = text(&output);
    assert!(
        message.contains("cpu+cpu") && message.contains("florence2"),
        "{message}"
    );
}

#[test]
fn a_shipped_pipeline_runs_a_florence2_checkpoint() {
    let overrides = [
        format!("model.path={}", fixture_arg(REMOTE)),
        format!("model.max_new_tokens={MAX_NEW_TOKENS}"),
    ];
    let (rows, documents) = run_docvqa_pipeline(&overrides);

    // The same page and prompt given straight to the model give the same answers; the
    // pipeline's qa task sets no prompt, so the family's `<DocVQA>` template applies.
    let model = load(REMOTE);
    let family = Family::Florence2;
    assert_rows_are_the_models_answers(&model, family, &overrides, &rows, documents, |prepared| {
        assert!(
            prepared.prompt.starts_with("<DocVQA>"),
            "{}",
            prepared.prompt
        );
    });
}

#[test]
fn eval_docvqa_asks_florence2_behind_the_docvqa_prefix() {
    let rows = eval_docvqa_scores_every_question(NATIVE, MAX_NEW_TOKENS);
    // Each row's prompt length is that of "<s><DocVQA>question</s>" after the image tokens.
    let model = load(NATIVE);
    for row in rows {
        let ids = model
            .processor()
            .tokenize(&format!("<DocVQA>{}", row.question))
            .unwrap();
        assert_eq!(
            row.prompt_tokens,
            Some((model.image_tokens() + ids.len()) as u32),
            "{}",
            row.question
        );
    }
}
