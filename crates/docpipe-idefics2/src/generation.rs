//! Batched greedy decoding: one prefill over all prompts (image features merged into the
//! `<image>` positions), then one token per unfinished sequence per step, with bad-words
//! masking and stopping on any eos id or at `max_new_tokens`.
//!
//! Finished sequences leave the batch instead of being fed padding, and every sequence is
//! computed independently of the others (see `text`), so a request's tokens do not depend on
//! its batch.

use candle_core::{Result, Tensor};
use docpipe_core::FinishReason;

use crate::config::GenerationConfig;
use crate::text::{Segment, TextModel};

/// One sequence to generate for.
pub struct SequenceInput<'a> {
    pub input_ids: &'a [u32],
    /// `(number of image-token positions, hidden)` features in prompt order, if any.
    pub image_features: Option<Tensor>,
    pub max_new_tokens: usize,
}

/// What greedy decoding produced for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceOutput {
    /// Generated ids, the stopping eos included.
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// The raw logits (before bad-words masking) that chose the first token, when asked for.
    pub first_logits: Option<Vec<f32>>,
}

/// Bans from `bad_words_ids`: single ids always, the last id of a longer sequence only when
/// the tokens so far end with the rest of it (`NoBadWordsLogitsProcessor`).
struct BadWords {
    always: Vec<u32>,
    sequences: Vec<Vec<u32>>,
}

impl BadWords {
    fn new(config: &GenerationConfig) -> Self {
        let (single, multi): (Vec<_>, Vec<_>) =
            config.bad_words_ids.iter().partition(|s| s.len() == 1);
        BadWords {
            always: single.iter().map(|s| s[0]).collect(),
            sequences: multi.into_iter().cloned().collect(),
        }
    }

    fn banned(&self, tokens: &[u32]) -> Vec<u32> {
        let mut banned = self.always.clone();
        for seq in &self.sequences {
            if let Some((last, prefix)) = seq.split_last() {
                if tokens.ends_with(prefix) {
                    banned.push(*last);
                }
            }
        }
        banned
    }
}

struct Sequence {
    /// Prompt and generated tokens.
    tokens: Vec<u32>,
    generated: Vec<u32>,
    max_new_tokens: usize,
    finish: Option<FinishReason>,
    first_logits: Option<Vec<f32>>,
}

/// Prompt embeddings with image features written over the image-token positions.
fn prompt_embeddings(
    model: &TextModel,
    input: &SequenceInput<'_>,
    image_token_id: u32,
) -> Result<Tensor> {
    let text = model.embed(input.input_ids)?;
    let Some(features) = &input.image_features else {
        return Ok(text);
    };
    let n = input.input_ids.len() as u32;
    let mut next_feature = n;
    let index: Vec<u32> = input
        .input_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            if id == image_token_id {
                next_feature += 1;
                next_feature - 1
            } else {
                i as u32
            }
        })
        .collect();
    let used = (next_feature - n) as usize;
    if used != features.dim(0)? {
        candle_core::bail!(
            "the prompt has {used} image tokens but the images give {} feature rows",
            features.dim(0)?
        );
    }
    let table = Tensor::cat(&[&text, &features.to_dtype(text.dtype())?], 0)?;
    let index = Tensor::from_vec(index, input.input_ids.len(), model.device())?;
    table.index_select(&index, 0)
}

/// Greedy generation for a batch of sequences.
pub fn generate(
    model: &TextModel,
    inputs: &[SequenceInput<'_>],
    config: &GenerationConfig,
    image_token_id: u32,
    keep_first_logits: bool,
) -> Result<Vec<SequenceOutput>> {
    let vocab = model.config().vocab_size;
    let bad_words = BadWords::new(config);
    let mut caches: Vec<_> = inputs
        .iter()
        .map(|i| model.new_cache(i.input_ids.len() + i.max_new_tokens))
        .collect();
    let mut seqs: Vec<Sequence> = inputs
        .iter()
        .map(|i| Sequence {
            tokens: i.input_ids.to_vec(),
            generated: Vec::new(),
            max_new_tokens: i.max_new_tokens,
            finish: (i.max_new_tokens == 0).then_some(FinishReason::Length),
            first_logits: None,
        })
        .collect();
    let mut active: Vec<usize> = (0..seqs.len())
        .filter(|&i| seqs[i].finish.is_none())
        .collect();
    let mut step_embeds: Vec<Tensor> = active
        .iter()
        .map(|&i| prompt_embeddings(model, &inputs[i], image_token_id))
        .collect::<Result<_>>()?;
    let mut step_tokens: Vec<usize> = active.iter().map(|&i| inputs[i].input_ids.len()).collect();
    let mut first_step = true;
    while !active.is_empty() {
        let embeds = Tensor::cat(&step_embeds, 0)?;
        // `active` is ascending, so filtering the caches keeps them aligned with it.
        let mut segments: Vec<Segment<'_>> = caches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.binary_search(i).is_ok())
            .zip(&step_tokens)
            .map(|((_, cache), &tokens)| Segment { tokens, cache })
            .collect();
        let logits = model.forward(&embeds, &mut segments)?;
        if first_step && keep_first_logits {
            for (row, &i) in logits.to_vec2::<f32>()?.into_iter().zip(&active) {
                seqs[i].first_logits = Some(row);
            }
        }
        first_step = false;
        let mut bans: Vec<Vec<u32>> = active
            .iter()
            .map(|&i| bad_words.banned(&seqs[i].tokens))
            .collect();
        bans.iter_mut()
            .for_each(|b| b.retain(|&id| (id as usize) < vocab));
        let masked = if bans.iter().all(Vec::is_empty) {
            logits
        } else {
            let mut mask = vec![0f32; active.len() * vocab];
            for (row, banned) in bans.iter().enumerate() {
                for &id in banned {
                    mask[row * vocab + id as usize] = f32::NEG_INFINITY;
                }
            }
            (logits + Tensor::from_vec(mask, (active.len(), vocab), model.device())?)?
        };
        let next = masked.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        for (&i, &token) in active.iter().zip(&next) {
            let seq = &mut seqs[i];
            seq.tokens.push(token);
            seq.generated.push(token);
            if config.eos_token_ids.contains(&token) {
                seq.finish = Some(FinishReason::Stop);
            } else if seq.generated.len() >= seq.max_new_tokens {
                seq.finish = Some(FinishReason::Length);
            }
        }
        let still: Vec<(usize, u32)> = active
            .iter()
            .zip(&next)
            .filter(|(&i, _)| seqs[i].finish.is_none())
            .map(|(&i, &t)| (i, t))
            .collect();
        active = still.iter().map(|&(i, _)| i).collect();
        step_tokens = vec![1; active.len()];
        step_embeds = if active.is_empty() {
            Vec::new()
        } else {
            let ids: Vec<u32> = still.iter().map(|&(_, t)| t).collect();
            vec![model.embed(&ids)?]
        };
    }
    Ok(seqs
        .into_iter()
        .map(|s| SequenceOutput {
            token_ids: s.generated,
            finish_reason: s.finish.unwrap_or(FinishReason::Length),
            first_logits: s.first_logits,
        })
        .collect())
}
