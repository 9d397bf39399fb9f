//! Idefics2 prompts: the checkpoint's chat template, then `<image>` expansion as
//! `Idefics2Processor` 4.4x does it (spec B.2), then the tokenizer (spec B.3).

use std::path::Path;

use docpipe_core::ChatMessage;
pub use docpipe_vlm::chat::FAKE_TOKEN;
use docpipe_vlm::chat::{ChatTemplate, Prompt, IMAGE_TOKEN};
use docpipe_vlm::{LoadError, PromptError};
use tokenizers::Tokenizer;

/// Renders chat messages into token ids for one checkpoint.
#[derive(Debug)]
pub struct PromptBuilder {
    chat: ChatTemplate,
    image_seq_len: usize,
    images_per_input: usize,
}

impl PromptBuilder {
    /// `images_per_input` is 5 when the image processor splits images, else 1; `<image>` must
    /// be `image_token_id` in the vocabulary.
    pub fn load(
        dir: &Path,
        image_seq_len: usize,
        images_per_input: usize,
        image_token_id: u32,
    ) -> Result<Self, LoadError> {
        let chat = ChatTemplate::load_with_image_tokens(dir, image_token_id)?;
        Ok(PromptBuilder {
            chat,
            image_seq_len,
            images_per_input,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        self.chat.tokenizer()
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
    pub fn build(
        &self,
        messages: &[ChatMessage],
        image_count: usize,
    ) -> Result<Prompt, PromptError> {
        let text = self.expand_images(&self.chat.render(messages, image_count)?);
        let input_ids = self.chat.encode(&text)?;
        Ok(Prompt { text, input_ids })
    }

    /// Decodes generated ids without special tokens, like `batch_decode(skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PromptError> {
        self.chat.decode(ids)
    }
}
