//! Idefics3 prompts: the checkpoint's chat template, then `<image>` expansion as
//! `Idefics3Processor` does it (spec G.3), then the tokenizer with its special tokens.
//!
//! Each image becomes, per tile, `F <row_r_col_c> I×n` with a `"\n"` after each row, then
//! `"\n" F <global-img> I×n F`; an unsplit image only `F <global-img> I×n F`. Adjacent images
//! keep both fake tokens (no merging, unlike Idefics2). The expansion is text, tokenized as a
//! whole: `<row_r_col_c>` and `<global-img>` are plain BPE text in the 8B vocabulary and single
//! tokens in SmolVLM's, and the last row's `"\n"` merges with the global block's into one
//! `"\n\n"` token only where the vocabulary has it. The template writes a BOS and the
//! tokenizer adds another where its post-processor does (the 8B's double BOS).

use std::path::Path;

use docpipe_core::ChatMessage;
pub use docpipe_vlm::chat::FAKE_TOKEN;
use docpipe_vlm::chat::{ChatTemplate, Prompt, IMAGE_TOKEN};
use docpipe_vlm::{LoadError, PromptError};
use tokenizers::Tokenizer;

use crate::processor::Layout;

/// The tag of the global image.
pub const GLOBAL_IMAGE_TAG: &str = "<global-img>";

/// Renders chat messages into token ids for one checkpoint.
#[derive(Debug)]
pub struct PromptBuilder {
    chat: ChatTemplate,
    image_seq_len: usize,
}

impl PromptBuilder {
    /// `<image>` must be `image_token_id` in the vocabulary, and `<fake_token_around_image>`
    /// one token.
    pub fn load(dir: &Path, image_seq_len: usize, image_token_id: u32) -> Result<Self, LoadError> {
        let chat = ChatTemplate::load_with_image_tokens(dir, image_token_id)?;
        Ok(PromptBuilder {
            chat,
            image_seq_len,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        self.chat.tokenizer()
    }

    /// `apply_chat_template`, checked to have one `<image>` per image.
    pub fn render(&self, messages: &[ChatMessage], images: usize) -> Result<String, PromptError> {
        self.chat.render(messages, images)
    }

    /// The text that replaces one `<image>` of an image cut as `layout`.
    pub fn image_block(&self, layout: &Layout) -> String {
        let images = IMAGE_TOKEN.repeat(self.image_seq_len);
        let global = format!("{FAKE_TOKEN}{GLOBAL_IMAGE_TAG}{images}{FAKE_TOKEN}");
        if layout.rows == 0 && layout.cols == 0 {
            return global;
        }
        let mut text = String::new();
        for r in 1..=layout.rows {
            for c in 1..=layout.cols {
                text.push_str(&format!("{FAKE_TOKEN}<row_{r}_col_{c}>{images}"));
            }
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&global);
        text
    }

    /// Replaces the `<image>` markers of a rendered prompt by the blocks of `layouts`, in order.
    pub fn expand_images(&self, rendered: &str, layouts: &[Layout]) -> String {
        let mut parts = rendered.split(IMAGE_TOKEN);
        let mut text = parts.next().unwrap_or_default().to_string();
        for (part, layout) in parts.zip(layouts) {
            text.push_str(&self.image_block(layout));
            text.push_str(part);
        }
        text
    }

    /// Renders, checks the image count, expands and tokenizes.
    pub fn build(
        &self,
        messages: &[ChatMessage],
        layouts: &[Layout],
    ) -> Result<Prompt, PromptError> {
        let rendered = self.render(messages, layouts.len())?;
        let text = self.expand_images(&rendered, layouts);
        let input_ids = self.chat.encode(&text)?;
        Ok(Prompt { text, input_ids })
    }

    /// Decodes generated ids without special tokens, like `batch_decode(skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PromptError> {
        self.chat.decode(ids)
    }
}
