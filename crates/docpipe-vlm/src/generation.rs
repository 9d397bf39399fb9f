//! Batched greedy decoding: one prefill over the prompts admitted together (image features
//! merged into the `<image>` positions), then one token per unfinished sequence per step, with
//! bad-words masking and stopping on any eos id or at `max_new_tokens`. A [`Decoder`] admits
//! more prompts between steps (continuous batching); [`generate`] admits one batch and steps it
//! to the end.
//!
//! A prompt with images is prefilled in two parts: its tokens up to the last image token,
//! then the rest (the question) after them. Several questions about one page then compute
//! the page's tokens, most of each prompt, once: causal attention makes a prefix's keys and
//! values independent of what follows it.
//!
//! Finished sequences leave the batch instead of being fed padding, and every sequence is
//! computed independently of the others (see `text` and `kv_cache`), so a request's tokens do
//! not depend on its batch, nor on the step it joined the batch at. Prefixes are shared only
//! within one admission: the keys of a page are not kept once its questions are prefilled.

use candle_core::{Result, Tensor};
use docpipe_core::{FinishReason, Generation, ModelError};

use crate::config::GenerationConfig;
use crate::error::PromptError;
use crate::kv_cache::{BatchCache, SequenceKv};
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

/// Finds each sequence's image prefix, shared between sequences where identical. Returns the
/// distinct prefixes and, per sequence, the index of its own.
///
/// Every sequence with images is split there, alone or in a batch, shared or not: the two
/// passes multiply matrices of other shapes than one pass over the whole prompt (another
/// summation order in the backend), and a request must give the same bits in any batch.
fn image_prefixes(
    inputs: &[&SequenceInput<'_>],
    image_token_id: u32,
) -> (Vec<ImagePrefix>, Vec<Option<usize>>) {
    let mut prefixes: Vec<ImagePrefix> = Vec::new();
    let mut of_sequence = vec![None; inputs.len()];
    for (i, input) in inputs.iter().enumerate() {
        let ids = input.input_ids;
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
                && other.image_ids == input.image_ids
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

/// A running decoding batch. Sequences join with [`Decoder::admit`], which prefills them as one
/// group (questions about one page of the group share its prefix), and leave at the
/// [`Decoder::step`] that finishes them. The static [`generate`] is one admission and steps
/// until nothing is left; continuous batching admits between steps. Since every row is
/// computed as it would be alone, a sequence's tokens do not depend on when it joined.
pub struct Decoder<'m, K> {
    model: &'m TextModel,
    config: &'m GenerationConfig,
    bad_words: BadWords,
    image_token_id: u32,
    keep_first_logits: bool,
    /// The unfinished sequences, in the order of the cache's rows and of `logits`.
    rows: Vec<(K, Sequence)>,
    cache: BatchCache,
    /// `(rows, vocab)`: what chooses each row's next token (a prefill's or the last step's).
    logits: Option<Tensor>,
    /// Admitted with a limit of 0 tokens: finished before any step, returned by the next.
    finished: Vec<(K, SequenceOutput)>,
}

impl<'m, K: Copy> Decoder<'m, K> {
    /// An empty batch over `model`, with `config`'s bans and eos ids; `keep_first_logits` keeps
    /// the raw logits that choose each sequence's first token.
    pub fn new(
        model: &'m TextModel,
        config: &'m GenerationConfig,
        image_token_id: u32,
        keep_first_logits: bool,
    ) -> Self {
        Decoder {
            model,
            config,
            bad_words: BadWords::new(config),
            image_token_id,
            keep_first_logits,
            rows: Vec::new(),
            cache: BatchCache::default(),
            logits: None,
            finished: Vec::new(),
        }
    }

    /// Sequences admitted and not yet returned by a step.
    pub fn live(&self) -> usize {
        self.rows.len() + self.finished.len()
    }

    /// Prefills `sequences` and adds them to the batch; the next step chooses their first
    /// tokens from the prefill's logits.
    pub fn admit(&mut self, sequences: &[(K, SequenceInput<'_>)]) -> Result<()> {
        let mut keys = Vec::with_capacity(sequences.len());
        let mut inputs = Vec::with_capacity(sequences.len());
        for (key, input) in sequences {
            if input.max_new_tokens == 0 {
                let output = SequenceOutput {
                    token_ids: Vec::new(),
                    finish_reason: FinishReason::Length,
                    first_logits: None,
                };
                self.finished.push((*key, output));
            } else {
                keys.push(*key);
                inputs.push(input);
            }
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let (logits, kvs) = self.prefill(&inputs)?;
        let limits: Vec<usize> = inputs
            .iter()
            .map(|i| i.input_ids.len() + i.max_new_tokens)
            .collect();
        self.cache.extend(&kvs, &limits)?;
        drop(kvs);
        let first_logits: Vec<Option<Vec<f32>>> = if self.keep_first_logits {
            logits.to_vec2::<f32>()?.into_iter().map(Some).collect()
        } else {
            vec![None; inputs.len()]
        };
        self.logits = Some(match self.logits.take() {
            Some(running) => Tensor::cat(&[&running, &logits], 0)?,
            None => logits,
        });
        for ((key, input), first_logits) in keys.into_iter().zip(inputs).zip(first_logits) {
            self.rows.push((
                key,
                Sequence {
                    tokens: input.input_ids.to_vec(),
                    generated: Vec::new(),
                    max_new_tokens: input.max_new_tokens,
                    finish: None,
                    first_logits,
                },
            ));
        }
        Ok(())
    }

    /// The last-token logits `(inputs, vocab)` and the keys and values of `inputs`' prompts,
    /// each image prefix computed once.
    fn prefill(&self, inputs: &[&SequenceInput<'_>]) -> Result<(Tensor, Vec<SequenceKv>)> {
        let model = self.model;
        let embeds: Vec<Tensor> = inputs
            .iter()
            .map(|i| prompt_embeddings(model, i, self.image_token_id))
            .collect::<Result<_>>()?;
        let (prefixes, prefix_of) = image_prefixes(inputs, self.image_token_id);
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
        let mut packed = Vec::with_capacity(inputs.len());
        let mut segments = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let past = prefix_of[i].map(|p| &prefix_kv[p]);
            let skip = past.map_or(0, |kv| kv.len());
            let tokens = input.input_ids.len() - skip;
            packed.push(embeds[i].narrow(0, skip, tokens)?);
            segments.push(Segment { tokens, past });
        }
        model.prefill(&Tensor::cat(&packed, 0)?, &segments)
    }

    /// Chooses one token for every unfinished sequence and, for those that go on, computes the
    /// logits of the next. Returns the sequences that finished.
    pub fn step(&mut self) -> Result<Vec<(K, SequenceOutput)>> {
        let mut done = std::mem::take(&mut self.finished);
        let Some(logits) = self.logits.take() else {
            return Ok(done);
        };
        let vocab = self.model.config().vocab_size;
        let mut bans: Vec<Vec<u32>> = self
            .rows
            .iter()
            .map(|(_, seq)| self.bad_words.banned(&seq.tokens))
            .collect();
        bans.iter_mut()
            .for_each(|b| b.retain(|&id| (id as usize) < vocab));
        let masked = if bans.iter().all(Vec::is_empty) {
            logits
        } else {
            let mut mask = vec![0f32; self.rows.len() * vocab];
            for (row, banned) in bans.iter().enumerate() {
                for &id in banned {
                    mask[row * vocab + id as usize] = f32::NEG_INFINITY;
                }
            }
            (&logits + Tensor::from_vec(mask, (self.rows.len(), vocab), logits.device())?)?
        };
        let next = masked.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
        for ((_, seq), &token) in self.rows.iter_mut().zip(&next) {
            seq.tokens.push(token);
            seq.generated.push(token);
            if self.config.eos_token_ids.contains(&token) {
                seq.finish = Some(FinishReason::Stop);
            } else if seq.generated.len() >= seq.max_new_tokens {
                seq.finish = Some(FinishReason::Length);
            }
        }
        // Rows of the cache follow `rows`; finished sequences leave both.
        let (mut going_on, mut ids, mut running) = (Vec::new(), Vec::new(), Vec::new());
        for (r, (key, seq)) in std::mem::take(&mut self.rows).into_iter().enumerate() {
            if seq.finish.is_none() {
                going_on.push(r);
                ids.push(next[r]);
                running.push((key, seq));
            } else {
                done.push((key, seq.into_output()));
            }
        }
        self.rows = running;
        self.cache.retain(&going_on)?;
        if !ids.is_empty() {
            let embeds = self.model.embed(&ids)?;
            self.logits = Some(self.model.decode(&embeds, &mut self.cache)?);
        }
        Ok(done)
    }
}

/// Greedy generation for a batch of sequences: all admitted at once, stepped until each is
/// finished; outputs in input order.
pub fn generate(
    model: &TextModel,
    inputs: Vec<SequenceInput<'_>>,
    config: &GenerationConfig,
    image_token_id: u32,
    keep_first_logits: bool,
) -> Result<Vec<SequenceOutput>> {
    let mut decoder = Decoder::new(model, config, image_token_id, keep_first_logits);
    let sequences: Vec<(usize, SequenceInput<'_>)> = inputs.into_iter().enumerate().collect();
    decoder.admit(&sequences)?;
    let mut outputs = Vec::with_capacity(sequences.len());
    while decoder.live() > 0 {
        outputs.extend(decoder.step()?);
    }
    outputs.sort_by_key(|(i, _)| *i);
    Ok(outputs.into_iter().map(|(_, output)| output).collect())
}

impl Sequence {
    fn into_output(self) -> SequenceOutput {
        SequenceOutput {
            token_ids: self.generated,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            first_logits: self.first_logits,
        }
    }
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
        ];
        let refs: Vec<&SequenceInput<'_>> = inputs.iter().collect();
        let (prefixes, of) = image_prefixes(&refs, IMG);
        // Same page, same tokens up to the last image token: one prefix of 4 tokens.
        assert_eq!(of[0], of[1]);
        assert_eq!(prefixes[of[0].unwrap()].len, 4);
        // Another page, or other tokens before the image: their own prefixes.
        assert!(of[2].is_some() && of[2] != of[0]);
        assert!(of[3].is_some() && of[3] != of[0]);
        // No image, or a prompt ending with its image: none.
        assert_eq!((of[4], of[5]), (None, None));
        assert_eq!(prefixes.len(), 3);
    }
}
