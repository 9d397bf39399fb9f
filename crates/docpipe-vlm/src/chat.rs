//! A checkpoint's chat template and tokenizer: the template rendered with minijinja the way
//! transformers renders Jinja (`trim_blocks`, `lstrip_blocks`, Python string methods), and
//! tokenization with `tokenizer.json` (spec B.1, B.3). What a family does between the two, the
//! expansion of `<image>`, is the family's own.

use std::path::{Path, PathBuf};

use docpipe_core::ChatMessage;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::read_json;
use crate::error::{LoadError, PromptError};

/// The marker a chat template writes for each image.
pub const IMAGE_TOKEN: &str = "<image>";
/// The delimiter both families put around image blocks (Idefics3 also before each tile).
pub const FAKE_TOKEN: &str = "<fake_token_around_image>";

/// Where a checkpoint keeps its chat template, in the order transformers 5 looks: a
/// `chat_template` key in `processor_config.json`, `chat_template.jinja`,
/// `chat_template.json`, then the tokenizer's own.
fn find_chat_template(dir: &Path) -> Result<(String, PathBuf), LoadError> {
    let from_json = |name: &str| -> Result<Option<(String, PathBuf)>, LoadError> {
        let path = dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        Ok(match read_json(&path)?.get("chat_template") {
            Some(Value::String(text)) => Some((text.clone(), path)),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(|text| (text.to_string(), path)),
            _ => None,
        })
    };
    if let Some(found) = from_json("processor_config.json")? {
        return Ok(found);
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let text = std::fs::read_to_string(&jinja).map_err(|source| LoadError::Io {
            path: jinja.clone(),
            source,
        })?;
        return Ok((text, jinja));
    }
    for name in ["chat_template.json", "tokenizer_config.json"] {
        if let Some(found) = from_json(name)? {
            return Ok(found);
        }
    }
    Err(LoadError::Template {
        path: dir.to_path_buf(),
        message: "no chat template in processor_config.json, chat_template.jinja, chat_template.json or tokenizer_config.json".into(),
    })
}

/// Renders chat messages and tokenizes text for one checkpoint.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    template_path: PathBuf,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("template_path", &self.template_path)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Loads `tokenizer.json` and the chat template of the checkpoint in `dir`.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
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
        Ok(ChatTemplate {
            env,
            template_path,
            tokenizer,
            tokenizer_path,
        })
    }

    /// [`ChatTemplate::load`] for a model whose image blocks need `<fake_token_around_image>`
    /// as one token and `<image>` as `image_token_id` (the id `config.json` gives it).
    pub fn load_with_image_tokens(dir: &Path, image_token_id: u32) -> Result<Self, LoadError> {
        let chat = ChatTemplate::load(dir)?;
        chat.required_id(FAKE_TOKEN)?;
        chat.check_id(IMAGE_TOKEN, image_token_id)?;
        Ok(chat)
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The id of a token the model cannot work without; the error names `tokenizer.json`.
    pub fn required_id(&self, token: &str) -> Result<u32, LoadError> {
        self.tokenizer
            .token_to_id(token)
            .ok_or_else(|| LoadError::Tokenizer {
                path: self.tokenizer_path.clone(),
                message: format!("the vocabulary has no {token} token"),
            })
    }

    /// Checks that `token` is `id`, as `config.json` says (`image_token_id`).
    pub fn check_id(&self, token: &str, id: u32) -> Result<(), LoadError> {
        let found = self.required_id(token)?;
        if found == id {
            Ok(())
        } else {
            Err(LoadError::Tokenizer {
                path: self.tokenizer_path.clone(),
                message: format!("{token} is id {found} but config.json says {id}"),
            })
        }
    }

    /// `apply_chat_template(messages, add_generation_prompt=True)` without tokenizing, and a
    /// check that it has one `<image>` marker per image of the request.
    pub fn render(&self, messages: &[ChatMessage], images: usize) -> Result<String, PromptError> {
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
        let rendered = template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => true,
                bos_token => special(self.tokenizer.token_to_id("<s>")),
                eos_token => special(self.tokenizer.token_to_id("</s>")),
            })
            .map_err(template_error)?;
        let markers = rendered.matches(IMAGE_TOKEN).count();
        if markers != images {
            return Err(PromptError::ImageCount { markers, images });
        }
        Ok(rendered)
    }

    /// Token ids of `text`, special tokens added as the tokenizer's post-processor adds them
    /// (the processors tokenize with `add_special_tokens=True`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, PromptError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(PromptError::Tokenizer)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes generated ids without special tokens, like `batch_decode(skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PromptError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(PromptError::Tokenizer)
    }
}

/// A tokenized prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The rendered and expanded text that was tokenized.
    pub text: String,
    /// Its token ids.
    pub input_ids: Vec<u32>,
}
