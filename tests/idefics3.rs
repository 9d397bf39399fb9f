//! The Idefics3 family through the same commands as Idefics2: `docpipe run` with a shipped
//! pipeline and only `model.path` changed, and `docpipe eval docvqa`, on the tiny Idefics3
//! fixture checkpoints (both checkpoint layouts) on the CPU.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use docpipe_core::{DeviceSpec, DocumentRef, Dtype, Question, VisionLanguageModel};
use docpipe_idefics3::Idefics3Model;
use docpipe_pipeline::config::PipelineConfig;
use docpipe_pipeline::model::Family;
use docpipe_pipeline::tasks::{chat_request, TaskPlan};
use docpipe_render::{DocumentOptions, RenderPool, RenderPoolConfig};
use docpipe_sink::OutputRow;
use docpipe_store::StoreOptions;
use docpipe_vlm::placement::Placement;
use docpipe_vlm::{candle_device, candle_dtype};
use serde_json::Value;

use crate::eval_docvqa::eval_docvqa_scores_every_question;
use crate::support::{docpipe, fixture, fixture_arg, rows_at, text, worker};

/// The hub layout (sharded, template in chat_template.json).
const HUB_LAYOUT: &str = "idefics3/models/tiny-llama3";
/// transformers 5's `save_pretrained` layout (processor_config.json, chat_template.jinja).
const SAVE_PRETRAINED_LAYOUT: &str = "idefics3/models/tiny-smolvlm";
const MAX_NEW_TOKENS: usize = 6;
/// The shipped pipeline, run with only the checkpoint (and the output) changed.
const PIPELINE: &str = "pipelines/docvqa-eval.toml";

/// The manifest's documents: the file name of each page and its questions.
pub(crate) fn manifest_documents() -> Vec<(String, Vec<Question>)> {
    let text = std::fs::read_to_string(fixture("docvqa/json/manifest.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let doc: Value = serde_json::from_str(line).unwrap();
            let file = doc["uri"].as_str().unwrap().rsplit('/').next().unwrap();
            let questions = doc["questions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| Question {
                    id: q["id"].as_str().unwrap().to_owned(),
                    text: q["text"].as_str().unwrap().to_owned(),
                })
                .collect();
            (file.to_owned(), questions)
        })
        .collect()
}

/// Runs the shipped DocVQA pipeline with `overrides` (and a temporary sink), checks that every
/// manifest question got one row, and returns the rows and the manifest's documents.
pub(crate) fn run_docvqa_pipeline(
    overrides: &[String],
) -> (Vec<OutputRow>, Vec<(String, Vec<Question>)>) {
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().to_str().unwrap().to_owned();
    let sink_set = format!("sink.uri={sink}");
    let mut args = vec!["run", PIPELINE, "--set", &sink_set];
    for item in overrides {
        args.extend(["--set", item.as_str()]);
    }
    let output = docpipe(&args, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let rows = rows_at(&sink, StoreOptions::default());
    let documents = manifest_documents();
    let questions: usize = documents.iter().map(|(_, q)| q.len()).sum();
    assert_eq!(rows.len(), questions, "one row per question");
    let ids: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.question_id.as_deref())
        .collect();
    assert_eq!(ids.len(), questions, "each question once");
    (rows, documents)
}

#[test]
fn a_shipped_pipeline_runs_an_idefics3_checkpoint_by_model_path_alone() {
    let overrides = [
        format!("model.path={}", fixture_arg(HUB_LAYOUT)),
        format!("model.max_new_tokens={MAX_NEW_TOKENS}"),
    ];
    let (rows, documents) = run_docvqa_pipeline(&overrides);

    // The same page, rendered at the size the Idefics3 processor keeps (the pipeline's default),
    // and the same prompt given straight to the model give the same answers.
    let model = Idefics3Model::load(
        &fixture(HUB_LAYOUT),
        &Placement::single(&candle_device(DeviceSpec::Cpu).unwrap()),
        candle_dtype(Dtype::F32),
    )
    .unwrap();
    assert_rows_are_the_models_answers(
        &model,
        Family::Idefics3,
        &overrides,
        &rows,
        documents,
        |_| {},
    );
}

/// Each row's answer and prompt length are what `model` (of `family`) gives for the same page
/// (rendered at the size its processor keeps, as the pipeline does) and prompt (from the
/// pipeline with `overrides`, the family's default prompts where it sets none); `check` looks
/// at each prepared request too.
pub(crate) fn assert_rows_are_the_models_answers<M: VisionLanguageModel>(
    model: &M,
    family: Family,
    overrides: &[String],
    rows: &[OutputRow],
    documents: Vec<(String, Vec<Question>)>,
    check: impl Fn(&M::Prepared),
) {
    assert!(rows.iter().all(|r| r.model == model.model_id()));
    let pool = RenderPool::new(RenderPoolConfig {
        workers: 1,
        longest_edge: model.image_longest_edge(),
        worker_command: worker(),
        ..RenderPoolConfig::new().unwrap()
    })
    .unwrap();
    let text = std::fs::read_to_string(crate::support::repo().join(PIPELINE)).unwrap();
    let config = PipelineConfig::load(PIPELINE, &text, overrides).unwrap();
    let plan = TaskPlan::new(
        config.tasks,
        config.model.max_new_tokens,
        family.default_prompts(),
    );
    for (file, questions) in documents {
        let image = render_first_page(&pool, &fixture("docvqa/json/documents").join(&file));
        let mut doc = DocumentRef::new(file.as_str());
        doc.questions = questions;
        for query in plan.queries(&doc) {
            let prepared = model.prepare(&chat_request(&query, &image)).unwrap();
            check(&prepared);
            let expected = model.generate(&[&prepared]).unwrap().remove(0);
            let row = rows
                .iter()
                .find(|r| r.question_id == query.question_id)
                .unwrap();
            assert!(row.doc_uri.ends_with(file.as_str()), "{}", row.doc_uri);
            assert_eq!(
                row.answer.as_deref(),
                Some(expected.text.as_str()),
                "{query:?}"
            );
            assert_eq!(row.prompt_tokens, Some(expected.prompt_tokens as u32));
        }
    }
}

pub(crate) fn render_first_page(pool: &RenderPool, path: &Path) -> Arc<image::RgbImage> {
    let mut pages = pool.render(path, &DocumentOptions::default()).unwrap();
    Arc::new(pages.next().unwrap().unwrap().image)
}

#[test]
fn eval_docvqa_scores_an_idefics3_checkpoint_in_the_save_pretrained_layout() {
    eval_docvqa_scores_every_question(SAVE_PRETRAINED_LAYOUT, MAX_NEW_TOKENS);
}
