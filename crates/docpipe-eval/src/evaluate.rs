//! Scoring predictions against gold annotations: overall ANLS, ANLS per question type and
//! exact-match accuracy, plus one scored row per question.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::anls;
use crate::dataset::Annotation;
use crate::predictions::Prediction;

/// The `--json` object of `docpipe eval anls`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnlsSummary {
    /// Mean ANLS over the questions with gold answers (0 when there are none).
    pub anls: f64,
    /// Questions with gold answers, the denominator of `anls` and `accuracy`.
    pub questions: usize,
    /// Mean ANLS per question type; a question with several types counts in each.
    pub per_type: BTreeMap<String, f64>,
    /// Share of questions whose normalized prediction equals a normalized gold answer.
    pub accuracy: f64,
}

/// `metrics.json`: the summary plus what did not line up between gold and predictions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    /// ANLS, per-type ANLS and accuracy; its fields sit at the top level of the JSON.
    #[serde(flatten)]
    pub summary: AnlsSummary,
    /// Scored questions without a prediction (each scored 0).
    pub missing_predictions: usize,
    /// Predictions whose questionId is not in the annotations (ignored).
    pub unknown_predictions: usize,
    /// Predictions repeating a questionId already predicted (the first one is scored).
    pub duplicate_predictions: usize,
    /// Questions without gold answers (test split) or with an empty list, not scored.
    pub questions_without_answers: usize,
}

/// One question with its prediction and score; `score` and `exact_match` are `None` for a
/// question without gold answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredQuestion {
    /// DocVQA's `questionId`.
    pub question_id: i64,
    /// The question text.
    pub question: String,
    /// The predicted answer as read; `None` when the predictions have none for the question.
    pub prediction: Option<String>,
    /// The gold answers; `None` in the test split.
    pub answers: Option<Vec<String>>,
    /// The question's DocVQA categories.
    pub question_types: Vec<String>,
    /// ANLS of the prediction against the gold answers, 0 to 1 (0 without a prediction).
    pub score: Option<f64>,
    /// Whether the normalized prediction equals a normalized gold answer.
    pub exact_match: Option<bool>,
}

/// Everything [`evaluate`] computes: the metrics, the per-question rows and what is needed to print
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// What goes into `metrics.json`.
    pub metrics: Metrics,
    /// Scored questions per type, for the readable table.
    pub type_counts: BTreeMap<String, usize>,
    /// The ids counted in `unknown_predictions`, in file order.
    pub unknown_question_ids: Vec<i64>,
    /// One row per annotation, in annotation order.
    pub rows: Vec<ScoredQuestion>,
}

/// Scores `predictions` against `annotations`.
pub fn evaluate(annotations: &[Annotation], predictions: &[Prediction]) -> Evaluation {
    let known: HashSet<i64> = annotations.iter().map(|a| a.question_id).collect();
    let mut by_id: HashMap<i64, &str> = HashMap::new();
    let mut unknown_question_ids = Vec::new();
    let mut duplicate_predictions = 0;
    for prediction in predictions {
        if !known.contains(&prediction.question_id) {
            unknown_question_ids.push(prediction.question_id);
            continue;
        }
        match by_id.entry(prediction.question_id) {
            Entry::Occupied(_) => duplicate_predictions += 1,
            Entry::Vacant(slot) => {
                slot.insert(&prediction.answer);
            }
        }
    }

    let mut total = 0.0;
    let mut exact = 0usize;
    let mut scored = 0usize;
    let mut missing_predictions = 0;
    let mut type_totals: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut rows = Vec::with_capacity(annotations.len());
    for annotation in annotations {
        let prediction = by_id.get(&annotation.question_id).copied();
        // An empty gold list is as unscorable as a missing one: no answer could match it.
        let (score, exact_match) = match annotation.answers.as_deref() {
            Some(answers) if !answers.is_empty() => {
                let score = anls::question_score(prediction, answers);
                let matched = anls::exact_match(prediction, answers);
                scored += 1;
                total += score;
                exact += usize::from(matched);
                missing_predictions += usize::from(prediction.is_none());
                for kind in &annotation.question_types {
                    let entry = type_totals.entry(kind.clone()).or_default();
                    entry.0 += score;
                    entry.1 += 1;
                }
                (Some(score), Some(matched))
            }
            _ => (None, None),
        };
        rows.push(ScoredQuestion {
            question_id: annotation.question_id,
            question: annotation.question.clone(),
            prediction: prediction.map(str::to_owned),
            answers: annotation.answers.clone(),
            question_types: annotation.question_types.clone(),
            score,
            exact_match,
        });
    }

    let mean = |sum: f64, n: usize| if n == 0 { 0.0 } else { sum / n as f64 };
    let summary = AnlsSummary {
        anls: mean(total, scored),
        questions: scored,
        per_type: type_totals
            .iter()
            .map(|(kind, &(sum, n))| (kind.clone(), mean(sum, n)))
            .collect(),
        accuracy: mean(exact as f64, scored),
    };
    Evaluation {
        metrics: Metrics {
            summary,
            missing_predictions,
            unknown_predictions: unknown_question_ids.len(),
            duplicate_predictions,
            questions_without_answers: annotations.len() - scored,
        },
        type_counts: type_totals.into_iter().map(|(k, (_, n))| (k, n)).collect(),
        unknown_question_ids,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gold(id: i64, answers: Option<&[&str]>, types: &[&str]) -> Annotation {
        Annotation {
            question_id: id,
            question: format!("q{id}"),
            answers: answers.map(|a| a.iter().map(|s| s.to_string()).collect()),
            question_types: types.iter().map(|s| s.to_string()).collect(),
            doc_id: 1,
        }
    }

    fn pred(id: i64, answer: &str) -> Prediction {
        Prediction {
            question_id: id,
            answer: answer.into(),
        }
    }

    #[test]
    fn counts_unknown_missing_and_duplicate_predictions() {
        let annotations = [
            gold(1, Some(&["abcd"]), &["form", "layout"]),
            gold(2, Some(&["xyz"]), &["form"]),
            gold(3, Some(&["hello"]), &[]),
            gold(4, None, &["form"]),
            gold(5, Some(&[]), &["form"]),
        ];
        let predictions = [
            pred(1, "ABCE"),
            pred(99, "?"),
            pred(2, "xyz"),
            pred(2, "nope"),
            pred(4, "anything"),
            pred(-5, "?"),
        ];
        let eval = evaluate(&annotations, &predictions);
        let m = &eval.metrics;
        assert_eq!(eval.unknown_question_ids, vec![99, -5]);
        assert_eq!(m.unknown_predictions, 2);
        assert_eq!(m.duplicate_predictions, 1);
        assert_eq!(m.missing_predictions, 1);
        assert_eq!(m.questions_without_answers, 2);
        assert_eq!(m.summary.questions, 3);
        assert!((m.summary.anls - (0.75 + 1.0 + 0.0) / 3.0).abs() < 1e-12);
        assert!((m.summary.accuracy - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.summary.per_type["form"], (0.75 + 1.0) / 2.0);
        assert_eq!(m.summary.per_type["layout"], 0.75);
        assert_eq!(eval.type_counts["form"], 2);
        assert_eq!(eval.rows.len(), 5);
        assert_eq!(eval.rows[4].score, None);
        assert_eq!(eval.rows[3].score, None);
        assert_eq!(eval.rows[3].prediction.as_deref(), Some("anything"));
    }

    #[test]
    fn no_scorable_question_gives_zero_not_nan() {
        let eval = evaluate(&[gold(1, None, &[])], &[]);
        assert_eq!(eval.metrics.summary.anls, 0.0);
        assert_eq!(eval.metrics.summary.questions, 0);
    }
}
