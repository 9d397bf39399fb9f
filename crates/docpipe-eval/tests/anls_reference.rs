//! ANLS against the `anls` package on PyPI, on the random cases of
//! `fixtures/anls/make_cases.py` (see that script for how `expected`, `package` and `differs`
//! relate).

use docpipe_eval::anls::question_score;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    prediction: Option<String>,
    answers: Vec<String>,
    expected: f64,
    package: Option<f64>,
    differs: Option<String>,
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/anls/cases.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn agrees_with_the_anls_package_to_1e_9() {
    let cases = cases();
    assert!(cases.len() >= 2000, "only {} cases", cases.len());
    let mut compared = 0;
    for (i, case) in cases.iter().enumerate() {
        let ours = question_score(case.prediction.as_deref(), &case.answers);
        assert!(
            (ours - case.expected).abs() < 1e-9,
            "case {i}: {:?} vs {:?}: ours {ours}, expected {}",
            case.prediction,
            case.answers,
            case.expected
        );
        if let (Some(package), None) = (case.package, &case.differs) {
            assert!(
                (ours - package).abs() < 1e-9,
                "case {i}: package {package}, ours {ours}"
            );
            compared += 1;
        }
    }
    assert!(
        compared > cases.len() * 8 / 10,
        "only {compared} cases compared to the package"
    );
}

#[test]
fn documented_differences_are_the_only_ones_and_really_differ() {
    let cases = cases();
    for reason in ["isspace-separators", "upper-length"] {
        let marked: Vec<&Case> = cases
            .iter()
            .filter(|c| c.differs.as_deref() == Some(reason))
            .collect();
        assert!(!marked.is_empty(), "no case marked {reason}");
        for case in marked {
            let package = case.package.unwrap();
            let ours = question_score(case.prediction.as_deref(), &case.answers);
            assert!(
                (ours - package).abs() > 1e-9,
                "{reason} case does not differ: {:?}",
                case.prediction
            );
        }
    }
    assert!(cases.iter().all(|c| c.differs.is_none()
        || matches!(
            c.differs.as_deref(),
            Some("isspace-separators" | "upper-length")
        )));
}

#[test]
fn cases_cover_the_corners() {
    let cases = cases();
    let any = |f: &dyn Fn(&Case) -> bool| cases.iter().any(f);
    assert!(any(&|c| c.prediction.is_none()));
    assert!(any(&|c| c.prediction.as_deref() == Some("")));
    assert!(any(&|c| c.answers.len() >= 3));
    assert!(any(&|c| c.answers.iter().any(|a| a
        .chars()
        .any(|ch| ('\u{4e00}'..='\u{9fff}').contains(&ch)))));
    assert!(any(&|c| c
        .answers
        .iter()
        .any(|a| a.chars().any(|ch| ch > '\u{1f000}'))));
    assert!(any(&|c| c
        .answers
        .iter()
        .any(|a| a.contains('é') || a.contains('ü'))));
    assert!(any(&|c| c
        .answers
        .iter()
        .any(|a| a.contains('\u{a0}') || a.contains('\u{3000}'))));
}
