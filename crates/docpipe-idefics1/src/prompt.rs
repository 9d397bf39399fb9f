//! HF chat messages as an Idefics1 prompt, its token ids, and the image each token's
//! cross-attention sees.
//!
//! transformers' `IdeficsProcessor` has no chat template: it takes an interleaved list of
//! strings and images, strips spaces around each string, writes `<s>`, each image as
//! `<fake_token_around_image><image><fake_token_around_image>` (an image right after another
//! only adds `<image><fake_token_around_image>`, sharing the middle one) and tokenizes without
//! further special tokens. docpipe turns chat messages into that list the way the model cards
//! prompt the models: each message is `Role:` (`Role: ` when it starts with text), its items,
//! then `<end_of_utterance>\n` for the instruct models or `\n` for the base ones; `Assistant:`
//! last. A checkpoint is instruct when its tokenizer has `<end_of_utterance>` and the model can
//! embed it (idefics-9b-instruct, idefics-80b-instruct). The text between two images (or
//! between an image and either end) is one string of that list: stripped of spaces like the
//! processor does, and when nothing is left the images are back to back.
//!
//! Which image a token sees is `image_attention_mask_for_packed_input_ids`: the most recent
//! `<image>` at or before it; none before the first image, and none after a `</s>` until the
//! next image.

use std::path::{Path, PathBuf};

use docpipe_core::{ChatMessage, ContentItem};
use docpipe_vlm::chat::{FAKE_TOKEN, IMAGE_TOKEN};
use docpipe_vlm::config::read_json;
use docpipe_vlm::{LoadError, PromptError};
use serde_json::Value;
use tokenizers::Tokenizer;

/// Ends a chat turn in the instruct models.
pub const END_OF_UTTERANCE: &str = "<end_of_utterance>";

/// How messages become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptFormat {
    /// Messages end with `\n` (idefics-9b, idefics-80b).
    Base,
    /// Messages end with `<end_of_utterance>\n` (the -instruct fine-tunes).
    Instruct,
}

/// A tokenized prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The text that was tokenized, `<s>` first.
    pub text: String,
    /// Its token ids.
    pub input_ids: Vec<u32>,
    /// Per token, the index (among the request's images) of the image its cross-attention
    /// sees, if any.
    pub image_index: Vec<Option<u32>>,
}

/// Builds and tokenizes prompts for one checkpoint.
pub struct PromptBuilder {
    tokenizer: Tokenizer,
    bos: String,
    format: PromptFormat,
    image_token_id: u32,
    fake_token_id: u32,
    end_of_utterance_id: Option<u32>,
    eos_token_id: u32,
}

impl std::fmt::Debug for PromptBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptBuilder")
            .field("format", &self.format)
            .field("image_token_id", &self.image_token_id)
            .finish_non_exhaustive()
    }
}

/// `bos_token` of `tokenizer_config.json`, written as a string or as an added-token object.
fn bos_token(dir: &Path) -> Result<Option<String>, LoadError> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    Ok(match read_json(&path)?.get("bos_token") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    })
}

impl PromptBuilder {
    /// Loads `tokenizer.json` of the checkpoint in `dir`. `embeddable` is the model's
    /// embedding table size (ids at or past it cannot be prompted), `eos_token_id` the token
    /// after which the prompt's tokens see no image.
    pub fn load(dir: &Path, embeddable: usize, eos_token_id: u32) -> Result<Self, LoadError> {
        let path = dir.join("tokenizer.json");
        let error = |path: &PathBuf, message: String| LoadError::Tokenizer {
            path: path.clone(),
            message,
        };
        if !path.exists() {
            return Err(error(&path, "missing".into()));
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| error(&path, e.to_string()))?;
        let id = |token: &str| {
            tokenizer
                .token_to_id(token)
                .ok_or_else(|| error(&path, format!("the vocabulary has no {token} token")))
        };
        let bos = bos_token(dir)?.unwrap_or_else(|| "<s>".to_string());
        id(&bos)?;
        let (image_token_id, fake_token_id) = (id(IMAGE_TOKEN)?, id(FAKE_TOKEN)?);
        for (token, found) in [(IMAGE_TOKEN, image_token_id), (FAKE_TOKEN, fake_token_id)] {
            if found as usize >= embeddable {
                return Err(error(
                    &path,
                    format!("{token} is id {found}, past the model's {embeddable} embeddings"),
                ));
            }
        }
        let end_of_utterance_id = tokenizer
            .token_to_id(END_OF_UTTERANCE)
            .filter(|&id| (id as usize) < embeddable);
        Ok(PromptBuilder {
            tokenizer,
            bos,
            format: match end_of_utterance_id {
                Some(_) => PromptFormat::Instruct,
                None => PromptFormat::Base,
            },
            image_token_id,
            fake_token_id,
            end_of_utterance_id,
            eos_token_id,
        })
    }

    /// The chat format.
    pub fn format(&self) -> PromptFormat {
        self.format
    }

    /// `<image>`.
    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// `<fake_token_around_image>`.
    pub fn fake_token_id(&self) -> u32 {
        self.fake_token_id
    }

    /// `<end_of_utterance>`, when the model can embed it.
    pub fn end_of_utterance_id(&self) -> Option<u32> {
        self.end_of_utterance_id
    }

    /// The prompt text of `messages` and its number of images.
    pub fn text(&self, messages: &[ChatMessage]) -> Result<(String, usize), PromptError> {
        if messages.is_empty() {
            return Err(PromptError::NoMessages);
        }
        let mut out = self.bos.clone();
        let mut pending = String::new();
        let mut last_was_image = false;
        let mut images = 0;
        for message in messages {
            let starts_with_image =
                matches!(message.content.first(), Some(ContentItem::Image { .. }));
            pending.push_str(&capitalize(&message.role));
            pending.push_str(if starts_with_image { ":" } else { ": " });
            for item in &message.content {
                match item {
                    ContentItem::Text { text } => pending.push_str(text),
                    ContentItem::Image { .. } => {
                        let text = pending.trim_matches(' ');
                        if !text.is_empty() {
                            out.push_str(text);
                            last_was_image = false;
                        }
                        pending.clear();
                        if !last_was_image {
                            out.push_str(FAKE_TOKEN);
                        }
                        out.push_str(IMAGE_TOKEN);
                        out.push_str(FAKE_TOKEN);
                        last_was_image = true;
                        images += 1;
                    }
                }
            }
            if self.format == PromptFormat::Instruct {
                pending.push_str(END_OF_UTTERANCE);
            }
            pending.push('\n');
        }
        pending.push_str("Assistant:");
        out.push_str(pending.trim_matches(' '));
        Ok((out, images))
    }

    /// The tokenized prompt of `messages`, which must have `images` image items.
    pub fn build(&self, messages: &[ChatMessage], images: usize) -> Result<Prompt, PromptError> {
        let (text, markers) = self.text(messages)?;
        if markers != images {
            return Err(PromptError::ImageCount { markers, images });
        }
        let input_ids = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(PromptError::Tokenizer)?
            .get_ids()
            .to_vec();
        let image_index = image_index(&input_ids, self.image_token_id, self.eos_token_id);
        Ok(Prompt {
            text,
            input_ids,
            image_index,
        })
    }

    /// Decodes generated ids without special tokens, like `batch_decode(skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PromptError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(PromptError::Tokenizer)
    }
}

/// Python's `str.capitalize`: the first character upper case, the rest lower case.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

/// Per token, the image it sees: the count of `<image>` tokens up to it, minus one; none
/// before the first, and none after an `eos_token_id` (which itself still sees its image)
/// until the next `<image>`.
pub fn image_index(input_ids: &[u32], image_token_id: u32, eos_token_id: u32) -> Vec<Option<u32>> {
    let mut seen: Option<u32> = None;
    let mut after_eos = false;
    input_ids
        .iter()
        .map(|&id| {
            if id == image_token_id {
                seen = Some(seen.map_or(0, |n| n + 1));
                after_eos = false;
            }
            let index = if after_eos { None } else { seen };
            if id == eos_token_id {
                after_eos = true;
            }
            index
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_see_their_most_recent_image_until_an_eos() {
        const IMG: u32 = 9;
        const EOS: u32 = 2;
        let ids = [1, 5, IMG, 6, 7, IMG, 8, EOS, 4, IMG, 3];
        let got = image_index(&ids, IMG, EOS);
        let want = [
            None,
            None,
            Some(0),
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(1),
            None,
            Some(2),
            Some(2),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn roles_are_capitalized_as_python_does() {
        assert_eq!(capitalize("user"), "User");
        assert_eq!(capitalize("ASSISTANT"), "Assistant");
        assert_eq!(capitalize(""), "");
    }
}
