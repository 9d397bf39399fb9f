//! Batched greedy decoding: one prefill over all prompts (image features merged into the
//! `<image>` positions), then one token per unfinished sequence per step, with bad-words
//! masking and stopping on any eos id or at `max_new_tokens`.
//!
//! A prompt with images is prefilled in two parts: its tokens up to the last image token,
//! then the rest (the question) after them. Several questions about one page then compute
//! the page's tokens, most of each prompt, once: causal attention makes a prefix's keys and
//! values independent of what follows it.
//!
//! Finished sequences leave the batch instead of being fed padding, and every sequence is
//! computed independently of the others (see `text` and `kv_cache`), so a request's tokens do
//! not depend on its batch.

use candle_core::{Result, Tensor};
use docpipe_core::{FinishReason, Generation, ModelError};

use crate::config::GenerationConfig;
use crate::error::PromptError;
use crate::kv_cache::BatchCache;
use crate::request::DetailedGeneration;
use crate::text::{Segment, TextModel};

/// One sequence to generate for.
pub struct SequenceInput<'a> {
    /// The prompt.
    pub input_ids: &'a [u32],
    /// `(number of image-token positions, hidden)` features in prompt order, if any.
    pub image_features: Option<Tensor>,
    /// Identities of the input images in prompt order: sequences with equal ids get the same
    /// image features, so the tokens their prompts start with in common are computed once.
    pub image_ids: Vec<usize>,
    /// The generation limit.
    pub max_new_tokens: usize,
}

/// What greedy decoding produced for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceOutput {
    /// Generated ids, the stopping eos included.
    pub token_ids: Vec<u32>,
    /// Stopped on an eos, or at the limit.
    pub finish_reason: FinishReason,
    /// The raw logits (before bad-words masking) that chose the first token, when asked for.
    pub first_logits: Option<Vec<f32>>,
}

impl SequenceOutput {
    /// The request's result: the ids decoded to text with `decode`, and the prompt length. A
    /// tokenizer that cannot decode ids the model produced is a broken model, hence `Device`.
    pub fn into_detailed(
        self,
        prompt_tokens: usize,
        decode: impl FnOnce(&[u32]) -> std::result::Result<String, PromptError>,
    ) -> std::result::Result<DetailedGeneration, ModelError> {
        let text = decode(&self.token_ids).map_err(|e| ModelError::Device(e.to_string()))?;
        Ok(DetailedGeneration {
            generation: Generation {
                text,
                token_ids: self.token_ids,
                finish_reason: self.finish_reason,
                prompt_tokens,
            },
            first_logits: self.first_logits,
        })
    }
}

/// Bans from `bad_words_ids`: single ids always, the last id of a longer sequence only when
/// the tokens so far end with the rest of it (`NoBadWordsLogitsProcessor`).
pub struct BadWords {
    always: Vec<u32>,
    sequences: Vec<Vec<u32>>,
}

impl BadWords {
    /// The bans of a generation config.
    pub fn new(config: &GenerationConfig) -> Self {
        let (single, multi): (Vec<_>, Vec<_>) =
            config.bad_words_ids.iter().partition(|s| s.len() == 1);
        BadWords {
            always: single.iter().map(|s| s[0]).collect(),
            sequences: multi.into_iter().cloned().collect(),
        }
    }

    /// The ids banned after `tokens` (prompt and generated so far).
    pub fn banned(&self, tokens: &[u32]) -> Vec<u32> {
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

/// The prompt prefix of sequences with images: every token up to the last image token, computed
/// once for all the sequences of a batch that have the same images and the same prefix.
struct ImagePrefix {
    /// The sequence whose embeddings it is taken from.
    source: usize,
    len: usize,
}

/// Finds each active sequence's image prefix, shared between sequences where identical.
/// Returns the distinct prefixes and, per sequence, the index of its own.
///
/// Every sequence with images is split there, alone or in a batch, shared or not: the two
/// passes multiply matrices of other shapes than one pass over the whole prompt (another
/// summation order in the backend), and a request must give the same bits in any batch.
fn image_prefixes(
    inputs: &[SequenceInput<'_>],
    active: &[usize],
    image_token_id: u32,
) -> (Vec<ImagePrefix>, Vec<Option<usize>>) {
    let mut prefixes: Vec<ImagePrefix> = Vec::new();
    let mut of_sequence = vec![None; inputs.len()];
    for &i in active {
        let ids = inputs[i].input_ids;
        let Some(last_image) = ids.iter().rposition(|&id| id == image_token_id) else {
            continue;
        };
        let len = last_image + 1;
        if len == ids.len() {
            // The last token's logits choose the first new token: it must be the sequence's own.
            continue;
        }
        let same = |p: &ImagePrefix| {
            let other = &inputs[p.source];
            p.len == len
                && other.image_ids == inputs[i].image_ids
                && other.input_ids[..len] == ids[..len]
        };
        of_sequence[i] = Some(match prefixes.iter().position(same) {
            Some(p) => p,
            None => {
                prefixes.push(ImagePrefix { source: i, len });
                prefixes.len() - 1
            }
        });
    }
    (prefixes, of_sequence)
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
    if active.is_empty() {
        return Ok(finished(seqs));
    }
    let embeds: Vec<Tensor> = inputs
        .iter()
        .map(|i| prompt_embeddings(model, i, image_token_id))
        .collect::<Result<_>>()?;
    let (prefixes, prefix_of) = image_prefixes(inputs, &active, image_token_id);
    let prefix_kv = if prefixes.is_empty() {
        Vec::new()
    } else {
        let packed = prefixes
            .iter()
            .map(|p| embeds[p.source].narrow(0, 0, p.len))
            .collect::<Result<Vec<_>>>()?;
        let segments: Vec<Segment<'_>> = prefixes
            .iter()
            .map(|p| Segment {
                tokens: p.len,
                past: None,
            })
            .collect();
        model.prefill(&Tensor::cat(&packed, 0)?, &segments)?.1
    };
    let mut packed = Vec::with_capacity(active.len());
    let mut segments = Vec::with_capacity(active.len());
    for &i in &active {
        let past = prefix_of[i].map(|p| &prefix_kv[p]);
        let skip = past.map_or(0, |kv| kv.len());
        let tokens = inputs[i].input_ids.len() - skip;
        packed.push(embeds[i].narrow(0, skip, tokens)?);
        segments.push(Segment { tokens, past });
    }
    let (mut logits, kvs) = model.prefill(&Tensor::cat(&packed, 0)?, &segments)?;
    // Free the prompts' tensors before decoding; the cache below holds what is still needed.
    drop((prefix_kv, embeds));
    if keep_first_logits {
        for (row, &i) in logits.to_vec2::<f32>()?.into_iter().zip(&active) {
            seqs[i].first_logits = Some(row);
        }
    }
    let max_len = active
        .iter()
        .map(|&i| inputs[i].input_ids.len() + inputs[i].max_new_tokens)
        .max()
        .unwrap_or(0);
    let mut cache = BatchCache::new(&kvs, max_len)?;
    drop(kvs);
    loop {
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
            (&logits + Tensor::from_vec(mask, (active.len(), vocab), logits.device())?)?
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
        // Rows of the cache follow `active`; finished sequences leave both.
        let rows: Vec<usize> = (0..active.len())
            .filter(|&r| seqs[active[r]].finish.is_none())
            .collect();
        if rows.is_empty() {
            break;
        }
        cache.retain(&rows)?;
        let ids: Vec<u32> = rows.iter().map(|&r| next[r]).collect();
        active = rows.iter().map(|&r| active[r]).collect();
        logits = model.decode(&model.embed(&ids)?, &mut cache)?;
    }
    Ok(finished(seqs))
}

fn finished(seqs: Vec<Sequence>) -> Vec<SequenceOutput> {
    seqs.into_iter()
        .map(|s| SequenceOutput {
            token_ids: s.generated,
            finish_reason: s.finish.unwrap_or(FinishReason::Length),
            first_logits: s.first_logits,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: u32 = 9;

    fn input(ids: &'static [u32], image_ids: &[usize]) -> SequenceInput<'static> {
        SequenceInput {
            input_ids: ids,
            image_features: None,
            image_ids: image_ids.to_vec(),
            max_new_tokens: 4,
        }
    }

    #[test]
    fn questions_about_one_page_share_its_prefix_and_nothing_else_does() {
        let inputs = [
            input(&[1, 5, IMG, IMG, 6, 20, 21], &[100]),
            input(&[1, 5, IMG, IMG, 6, 30], &[100]),
            input(&[1, 5, IMG, IMG, 6, 20, 21], &[200]),
            input(&[1, 7, IMG, IMG, 6, 20], &[100]),
            input(&[1, 5, 20, 21], &[]),
            input(&[1, 5, IMG, IMG], &[100]),
            input(&[1, 5, IMG, IMG, 6, 40], &[100]),
        ];
        let active: Vec<usize> = (0..inputs.len()).filter(|&i| i != 6).collect();
        let (prefixes, of) = image_prefixes(&inputs, &active, IMG);
        // Same page, same tokens up to the last image token: one prefix of 4 tokens.
        assert_eq!(of[0], of[1]);
        assert_eq!(prefixes[of[0].unwrap()].len, 4);
        // Another page, or other tokens before the image: their own prefixes.
        assert!(of[2].is_some() && of[2] != of[0]);
        assert!(of[3].is_some() && of[3] != of[0]);
        // No image, a prompt ending with its image, and inactive sequences: none.
        assert_eq!((of[4], of[5], of[6]), (None, None, None));
        assert_eq!(prefixes.len(), 3);
    }
}
