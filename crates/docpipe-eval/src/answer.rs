//! The prompt and answer clean-up for short-answer DocVQA with Idefics2.
//!
//! DocVQA gold answers are short spans copied from the page, and ANLS punishes every extra
//! character, so the model is asked for a very brief answer and the chat-model debris around it
//! (end-of-turn token, a closing period, spaces) is removed before scoring.

use docpipe_pipeline::model::Family;
use serde::{Deserialize, Serialize};

/// The placeholder replaced by the question in [`ShortAnswerPrompt::template`].
pub const QUESTION_PLACEHOLDER: &str = "{question}";

/// The user-turn text sent with the page image.
///
/// The default is the checkpoint family's question prompt, the one pipelines use too
/// (`Family::default_prompts`): for the chat models `"{question}\nGive a very brief answer."`,
/// the short-answer instruction of the Idefics2 evaluation prompts for DocVQA (the chat
/// template adds the image and the `Assistant:` turn); for Florence-2 `"<DocVQA>{question}"`,
/// what the DocVQA fine-tune was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShortAnswerPrompt {
    /// Text with one `{question}` placeholder.
    pub template: String,
}

/// The chat models' prompt: a checkpoint not yet looked at is taken for one.
impl Default for ShortAnswerPrompt {
    fn default() -> Self {
        ShortAnswerPrompt::for_family(Family::Idefics2)
    }
}

/// A [`ShortAnswerPrompt::template`] without exactly one `{question}` placeholder.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("prompt template {template:?} must contain {QUESTION_PLACEHOLDER} exactly once")]
pub struct TemplateError {
    /// The template as given.
    pub template: String,
}

impl ShortAnswerPrompt {
    /// The default prompt for a model family: its pipelines' question prompt.
    pub fn for_family(family: Family) -> Self {
        ShortAnswerPrompt {
            template: family.default_prompts().question.to_owned(),
        }
    }

    /// Checks the template once, at configuration time, rather than on every question.
    pub fn validate(&self) -> Result<(), TemplateError> {
        if self.template.matches(QUESTION_PLACEHOLDER).count() == 1 {
            Ok(())
        } else {
            Err(TemplateError {
                template: self.template.clone(),
            })
        }
    }
}

/// Which clean-ups to apply to a generated answer before scoring. All on by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerPostprocess {
    /// Cut the answer at the first `<end_of_utterance>` (Idefics2's end-of-turn token), in case
    /// the decoder did not stop on it or the tokenizer kept it.
    pub strip_end_of_utterance: bool,
    /// Remove one trailing `.`: the model often ends a short answer as a sentence, gold answers
    /// almost never do. Ellipses (`...`) and abbreviations with more than one period are kept.
    pub strip_trailing_period: bool,
    /// Remove leading and trailing whitespace.
    pub trim: bool,
}

impl Default for AnswerPostprocess {
    fn default() -> Self {
        AnswerPostprocess {
            strip_end_of_utterance: true,
            strip_trailing_period: true,
            trim: true,
        }
    }
}

/// Idefics2's end-of-turn token.
pub const END_OF_UTTERANCE: &str = "<end_of_utterance>";

impl AnswerPostprocess {
    /// The answer after the enabled clean-ups, in this order: cut at the end-of-turn token, trim,
    /// drop one trailing period.
    pub fn apply(&self, raw: &str) -> String {
        let mut text = raw;
        if self.strip_end_of_utterance {
            text = text.split(END_OF_UTTERANCE).next().unwrap_or_default();
        }
        if self.trim {
            text = text.trim();
        }
        if self.strip_trailing_period {
            if let Some(stripped) = text.strip_suffix('.') {
                if !stripped.ends_with('.') {
                    text = stripped;
                }
            }
            if self.trim {
                text = text.trim_end();
            }
        }
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_need_one_placeholder() {
        ShortAnswerPrompt::default().validate().unwrap();
        let bad = ShortAnswerPrompt {
            template: "no placeholder".into(),
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn postprocess_strips_token_period_and_space() {
        let all = AnswerPostprocess::default();
        assert_eq!(all.apply(" $1,234.56.<end_of_utterance>\n"), "$1,234.56");
        assert_eq!(
            all.apply("Philip Morris .<end_of_utterance>junk"),
            "Philip Morris"
        );
        assert_eq!(all.apply("see below..."), "see below...");
        assert_eq!(all.apply("R.J."), "R.J");
        assert_eq!(all.apply(""), "");
        let none = AnswerPostprocess {
            strip_end_of_utterance: false,
            strip_trailing_period: false,
            trim: false,
        };
        assert_eq!(none.apply(" a.<end_of_utterance>"), " a.<end_of_utterance>");
        let no_period = AnswerPostprocess {
            strip_trailing_period: false,
            ..AnswerPostprocess::default()
        };
        assert_eq!(
            no_period.apply("May 5, 1998.<end_of_utterance>"),
            "May 5, 1998."
        );
    }
}
