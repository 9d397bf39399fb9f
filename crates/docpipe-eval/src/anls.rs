//! ANLS (Average Normalized Levenshtein Similarity), as defined for DocVQA
//! (Biten et al., "Scene Text Visual Question Answering", ICCV 2019; Mathew et al., "DocVQA", 2021).
//!
//! Per question: the best, over the gold answers, of `1 − NL` when `NL < 0.5` and 0 otherwise,
//! where `NL` is the Levenshtein distance between the normalized prediction and gold answer,
//! counted in Unicode scalar values, divided by the longer of the two lengths. Two strings that
//! are both empty after normalization score 1 (they are equal), as in the `anls` package on PyPI.
//!
//! Known differences from that package, both decided by the definition above (docs/eval.md,
//! "ANLS") and marked in `fixtures/anls/cases.jsonl`: it treats U+001C..U+001F as whitespace
//! (Python's `str.isspace`), and it divides by the length of the *upper-cased* strings, which
//! differs for `ß`, `ﬁ`, `ŉ` and a few more.

/// Above this normalized distance an answer is considered wrong and scores 0.
pub const THRESHOLD: f64 = 0.5;

/// Lower-cases, trims and collapses every run of Unicode whitespace to one space, so that case
/// and layout differences in the model's output are not counted as errors.
pub fn normalize(text: &str) -> String {
    text.to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Levenshtein distance between two strings, counted in chars (Unicode scalar values).
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// The thresholded similarity of two already normalized strings.
fn similarity(prediction: &str, gold: &str) -> f64 {
    let longest = prediction.chars().count().max(gold.chars().count());
    if longest == 0 {
        return 1.0;
    }
    let nl = levenshtein(prediction, gold) as f64 / longest as f64;
    if nl < THRESHOLD {
        1.0 - nl
    } else {
        0.0
    }
}

/// The ANLS score of one question: 0 without a prediction or without gold answers.
pub fn question_score<S: AsRef<str>>(prediction: Option<&str>, answers: &[S]) -> f64 {
    let Some(prediction) = prediction else {
        return 0.0;
    };
    let prediction = normalize(prediction);
    answers
        .iter()
        .map(|gold| similarity(&prediction, &normalize(gold.as_ref())))
        .fold(0.0, f64::max)
}

/// Whether the normalized prediction equals some normalized gold answer.
pub fn exact_match<S: AsRef<str>>(prediction: Option<&str>, answers: &[S]) -> bool {
    prediction.is_some_and(|p| {
        let p = normalize(p);
        answers.iter().any(|gold| normalize(gold.as_ref()) == p)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_lowercases_trims_and_collapses_unicode_whitespace() {
        assert_eq!(normalize("  Total\t\tDUE \n"), "total due");
        assert_eq!(
            normalize("\u{3000}東京\u{a0}\u{2003}Tower\u{202f}"),
            "東京 tower"
        );
        assert_eq!(normalize(" \t\n "), "");
        // Full Unicode lower-casing: İ becomes i + combining dot (2 chars), final sigma.
        assert_eq!(normalize("İ"), "i\u{307}");
        assert_eq!(normalize("ΟΔΟΣ ΣΑ"), "οδος σα");
        // U+001F is not Unicode White_Space (Python's isspace says it is).
        assert_eq!(normalize("a\u{1f}b"), "a\u{1f}b");
    }

    #[test]
    fn levenshtein_counts_chars_not_bytes() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("日本語", "日本"), 1);
        assert_eq!(levenshtein("é", "e"), 1);
        assert_eq!(levenshtein("😀a", "🎉a"), 1);
    }

    #[test]
    fn score_follows_the_threshold_and_takes_the_best_gold() {
        // 1 edit in 4 chars: NL 0.25.
        assert_eq!(question_score(Some("abcd"), &["abce"]), 0.75);
        // 2 edits in 4 chars: NL 0.5 is not below the threshold.
        assert_eq!(question_score(Some("abcd"), &["abxy"]), 0.0);
        assert_eq!(question_score(Some("ABCD "), &["zzzz", " abcd"]), 1.0);
        assert_eq!(question_score(None, &["abcd"]), 0.0);
        assert_eq!(question_score(Some("abcd"), &[] as &[&str]), 0.0);
        assert_eq!(question_score(Some(" "), &[""]), 1.0);
        assert_eq!(question_score(Some(""), &["a"]), 0.0);
        // ß is one char: 1 edit over 6 chars (the PyPI package divides by len("STRASSE") = 7).
        assert_eq!(question_score(Some("straße"), &["strase"]), 1.0 - 1.0 / 6.0);
    }

    #[test]
    fn exact_match_compares_normalized_strings() {
        assert!(exact_match(Some(" INV-42 "), &["x", "inv-42"]));
        assert!(!exact_match(Some("inv-4"), &["inv-42"]));
        assert!(!exact_match(None, &["inv-42"]));
    }
}
