//! The Idefics1 family end to end, on the tiny fixture checkpoints of
//! `fixtures/make_fixtures_idefics1.py` (a base and an instruct one): `docpipe generate`
//! against transformers' greedy references and first-step logits, on one device and on a
//! replica split over three; `docpipe run` with the shipped DocVQA pipeline on a replica split
//! over two devices; `docpipe eval docvqa`.

use docpipe_core::{DeviceSpec, Dtype};
use docpipe_idefics1::Idefics1Model;
use docpipe_pipeline::model::Family;
use docpipe_vlm::fixture_check::read_jsonl;
use docpipe_vlm::placement::Placement;
use docpipe_vlm::{candle_device, candle_dtype};
use serde_json::Value;

use crate::eval_docvqa::eval_docvqa_scores_every_question;
use crate::idefics3::{assert_rows_are_the_models_answers, run_docvqa_pipeline};
use crate::support::{fixture, fixture_arg, generate_against_reference};

const BASE: &str = "idefics1/models/tiny-base";
const INSTRUCT: &str = "idefics1/models/tiny-instruct";
const MAX_NEW_TOKENS: usize = 6;

fn ids(value: &Value) -> Vec<u64> {
    serde_json::from_value(value.clone()).unwrap()
}

#[test]
fn generate_matches_transformers_on_one_device_and_split_over_three() {
    for (name, reference, device) in [
        (BASE, "idefics1/reference/tiny-base", "cpu"),
        (INSTRUCT, "idefics1/reference/tiny-instruct", "cpu+cpu+cpu"),
    ] {
        let reference = fixture(reference);
        let expected = read_jsonl(&reference.join("expected.jsonl"));
        // Logits over the decoupled vocabulary: checked by the helper.
        let got = generate_against_reference(name, &reference, device);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            let what = format!("{name} {}", e["id"]);
            assert_eq!(g["id"], e["id"]);
            assert_eq!(g["prompt_tokens"], e["prompt_tokens"], "{what}");
            // Tokens agree up to the first step transformers decided by less than 0.05.
            let margins: Vec<f64> = serde_json::from_value(e["margins"].clone()).unwrap();
            let want = ids(&e["token_ids"]);
            let safe = margins.iter().position(|&m| m < 0.05).unwrap_or(want.len());
            let got = ids(&g["token_ids"]);
            assert_eq!(&got[..safe.min(got.len())], &want[..safe], "{what}");
        }
    }
}

#[test]
fn a_shipped_pipeline_runs_idefics1_on_a_replica_split_over_two_devices() {
    let overrides = [
        format!("model.path={}", fixture_arg(INSTRUCT)),
        format!("model.max_new_tokens={MAX_NEW_TOKENS}"),
        r#"model.devices=["cpu+cpu"]"#.to_owned(),
    ];
    let (rows, documents) = run_docvqa_pipeline(&overrides);

    // The same page and prompt given to the model on one device give the same answers.
    let device = candle_device(DeviceSpec::Cpu).unwrap();
    let model = Idefics1Model::load(
        &fixture(INSTRUCT),
        &Placement::single(&device),
        candle_dtype(Dtype::F32),
    )
    .unwrap();
    assert_rows_are_the_models_answers(
        &model,
        Family::Idefics1,
        &overrides,
        &rows,
        documents,
        |prepared| {
            assert!(
                prepared.prompt.ends_with("<end_of_utterance>\nAssistant:"),
                "{}",
                prepared.prompt
            );
        },
    );
}

#[test]
fn eval_docvqa_scores_an_idefics1_base_checkpoint() {
    let rows = eval_docvqa_scores_every_question(BASE, MAX_NEW_TOKENS);
    assert!(rows.iter().all(|r| r.error.is_none()), "{rows:?}");
}
