//! Prompt building: the checkpoint's chat template (rendered with minijinja the way transformers
//! renders Jinja: `trim_blocks`, `lstrip_blocks`, Python string methods), `<image>` expansion as
//! `Idefics2Processor` does it, and tokenization with the checkpoint's `tokenizer.json`.

use std::path::{Path, PathBuf};

use docpipe_core::ChatMessage;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::read_json;
use crate::error::{LoadError, PromptError};

pub const IMAGE_TOKEN: &str = "<image>";
pub const FAKE_TOKEN: &str = "<fake_token_around_image>";

/// Where a checkpoint keeps its chat template, in the order transformers looks.
fn find_chat_template(dir: &Path) -> Result<(String, PathBuf), LoadError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let text = std::fs::read_to_string(&jinja).map_err(|source| LoadError::Io {
            path: jinja.clone(),
            source,
        })?;
        return Ok((text, jinja));
    }
    for name in [
        "chat_template.json",
        "processor_config.json",
        "tokenizer_config.json",
    ] {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        match read_json(&path)?.get("chat_template") {
            Some(Value::String(text)) => return Ok((text.clone(), path)),
            Some(Value::Array(named)) => {
                let default = named
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"));
                if let Some(text) = default
                    .and_then(|t| t.get("template"))
                    .and_then(Value::as_str)
                {
                    return Ok((text.to_string(), path));
                }
            }
            _ => {}
        }
    }
    Err(LoadError::Template {
        path: dir.to_path_buf(),
        message: "no chat template in chat_template.jinja, chat_template.json, processor_config.json or tokenizer_config.json".into(),
    })
}

/// A tokenized prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The rendered and expanded text that was tokenized.
    pub text: String,
    pub input_ids: Vec<u32>,
}

/// Renders chat messages into token ids for one checkpoint.
pub struct PromptBuilder {
    env: minijinja::Environment<'static>,
    template_path: PathBuf,
    tokenizer: Tokenizer,
    image_seq_len: usize,
    images_per_input: usize,
    image_token_id: u32,
}

impl std::fmt::Debug for PromptBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptBuilder")
            .field("template_path", &self.template_path)
            .field("image_seq_len", &self.image_seq_len)
            .field("images_per_input", &self.images_per_input)
            .finish_non_exhaustive()
    }
}

impl PromptBuilder {
    /// `images_per_input` is 5 when the image processor splits images, else 1.
    pub fn load(
        dir: &Path,
        image_seq_len: usize,
        images_per_input: usize,
        image_token_id: u32,
    ) -> Result<Self, LoadError> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(LoadError::Tokenizer {
                path: tokenizer_path,
                message: "missing".into(),
            });
        }
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| LoadError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        for token in [IMAGE_TOKEN, FAKE_TOKEN] {
            if tokenizer.token_to_id(token).is_none() {
                return Err(LoadError::Tokenizer {
                    path: tokenizer_path.clone(),
                    message: format!("the vocabulary has no {token} token"),
                });
            }
        }
        if tokenizer.token_to_id(IMAGE_TOKEN) != Some(image_token_id) {
            return Err(LoadError::Tokenizer {
                path: tokenizer_path,
                message: format!(
                    "{IMAGE_TOKEN} is id {:?} but config.json says image_token_id {image_token_id}",
                    tokenizer.token_to_id(IMAGE_TOKEN)
                ),
            });
        }
        let (source, template_path) = find_chat_template(dir)?;
        let mut env = minijinja::Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks on.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| LoadError::Template {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template_owned("chat", source)
            .map_err(|e| LoadError::Template {
                path: template_path.clone(),
                message: e.to_string(),
            })?;
        Ok(PromptBuilder {
            env,
            template_path,
            tokenizer,
            image_seq_len,
            images_per_input,
            image_token_id,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn image_token_id(&self) -> u32 {
        self.image_token_id
    }

    /// `apply_chat_template(messages, add_generation_prompt=True)` without tokenizing.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, PromptError> {
        if messages.is_empty() {
            return Err(PromptError::NoMessages);
        }
        let template_error = |source| PromptError::Template {
            template: self.template_path.clone(),
            source,
        };
        let template = self.env.get_template("chat").map_err(template_error)?;
        let special = |id: Option<u32>| {
            id.and_then(|i| self.tokenizer.id_to_token(i))
                .unwrap_or_default()
        };
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => true,
                bos_token => special(self.tokenizer.token_to_id("<s>")),
                eos_token => special(self.tokenizer.token_to_id("</s>")),
            })
            .map_err(template_error)
    }

    /// Replaces each `<image>` by its fake-token-delimited block of `image_seq_len` image tokens
    /// (five blocks when splitting) and merges adjacent fake tokens, as `Idefics2Processor`.
    pub fn expand_images(&self, text: &str) -> String {
        let block = format!(
            "{FAKE_TOKEN}{}{FAKE_TOKEN}",
            IMAGE_TOKEN.repeat(self.image_seq_len)
        );
        let per_image = block.repeat(self.images_per_input);
        text.replace(IMAGE_TOKEN, &per_image)
            .replace(&format!("{FAKE_TOKEN}{FAKE_TOKEN}"), FAKE_TOKEN)
    }

    /// Renders, checks the image count, expands and tokenizes (BOS as the tokenizer's
    /// post-processor adds it).
    pub fn build(&self, messages: &[ChatMessage], image_count: usize) -> Result<Prompt, PromptError> {
        let rendered = self.render(messages)?;
        let markers = rendered.matches(IMAGE_TOKEN).count();
        if markers != image_count {
            return Err(PromptError::ImageCount {
                markers,
                images: image_count,
            });
        }
        let text = self.expand_images(&rendered);
        let encoding = self
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(PromptError::Tokenizer)?;
        Ok(Prompt {
            text,
            input_ids: encoding.get_ids().to_vec(),
        })
    }

    /// Decodes generated ids without special tokens, like `batch_decode(skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PromptError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(PromptError::Tokenizer)
    }
}
