//! Decoding as transformers' `generate` does it for Florence-2: the logits processors of the
//! generation config (no-repeat n-grams, forced BOS at the first step, forced EOS at the last
//! one), then greedy argmax when `num_beams` is 1, or its vectorised beam search otherwise.
//!
//! The search is written against [`StepModel`], so it knows nothing of tensors: a step feeds
//! one token per row and gets one row of logits back. Rows are the running beams of the
//! requests still going (one row per request at the first step, when all beams of a request
//! are the same), and the cache is narrowed to the rows that continue after every step.
//!
//! Beam search follows `GenerationMixin._beam_search` of transformers 5.23 step for step: the
//! `max(2, 1 + eos ids) × num_beams` best continuations of the log-softmax scores plus each
//! beam's running score; a continuation that ends (an eos, or the length limit) among the best
//! `num_beams` joins the finished hypotheses with its score divided by
//! `length^length_penalty`; the other best `num_beams` keep running. Beams other than the
//! first start at -1e9 so that the first step picks distinct tokens of beam 0. A request stops
//! when the early-stopping rule says so; transformers runs a batch until all its requests have
//! stopped, which changes none of the stopped requests' results.

use docpipe_core::FinishReason;

use crate::config::{EarlyStopping, GenerationConfig};

/// transformers' stand-in for minus infinity in beam bookkeeping.
const MASKED: f32 = -1.0e9;

/// The decoding rules of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// Beams per request; 1 is greedy.
    pub num_beams: usize,
    /// Bans the next token of any n-gram of this size already in the sequence (0: off).
    pub no_repeat_ngram_size: usize,
    /// When a request's beam search ends.
    pub early_stopping: EarlyStopping,
    /// Exponent of the length that divides a finished beam's score.
    pub length_penalty: f32,
    /// The decoder's first input.
    pub decoder_start: u32,
    /// Forced at the first step.
    pub forced_bos: Option<u32>,
    /// Forced at the last step `max_new_tokens` allows.
    pub forced_eos: Option<u32>,
    /// Tokens that end a sequence.
    pub eos: Vec<u32>,
}

impl Search {
    /// The rules of a generation config.
    pub fn new(config: &GenerationConfig) -> Self {
        Search {
            num_beams: config.num_beams.max(1),
            no_repeat_ngram_size: config.no_repeat_ngram_size,
            early_stopping: config.early_stopping,
            length_penalty: config.length_penalty,
            decoder_start: config.decoder_start_token_id,
            forced_bos: config.forced_bos_token_id,
            forced_eos: config.forced_eos_token_id,
            eos: config.eos_token_ids(),
        }
    }

    /// The logits processors, in transformers' order, on one row's `scores` for the sequence
    /// `seq` (decoder start included) of a generation limited to `max_length` tokens.
    pub fn process(&self, scores: &mut [f32], seq: &[u32], max_length: usize) {
        let len = seq.len();
        let n = self.no_repeat_ngram_size;
        if n > 0 && len >= n {
            let prefix = &seq[len + 1 - n..];
            for window in seq.windows(n) {
                if &window[..n - 1] == prefix {
                    scores[window[n - 1] as usize] = f32::NEG_INFINITY;
                }
            }
        }
        let force = |scores: &mut [f32], id: u32| {
            scores.fill(f32::NEG_INFINITY);
            scores[id as usize] = 0.0;
        };
        if let Some(bos) = self.forced_bos.filter(|_| len == 1) {
            force(scores, bos);
        }
        if let Some(eos) = self.forced_eos.filter(|_| len + 1 == max_length) {
            force(scores, eos);
        }
    }
}

/// What the search needs of a model.
pub trait StepModel {
    /// The error of a step.
    type Error;
    /// Feeds `tokens[r]` to row `r` at `position` and returns each row's logits. `rows[i]` is
    /// how many consecutive rows request `active[i]` has.
    fn step(
        &mut self,
        tokens: &[u32],
        position: usize,
        active: &[usize],
        rows: &[usize],
    ) -> Result<Vec<Vec<f32>>, Self::Error>;
    /// Keeps the cache rows `parents`, in that order, for the next step.
    fn select(&mut self, parents: &[u32]) -> Result<(), Self::Error>;
}

/// One request's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The generated ids after the decoder start token (the forced BOS leads them).
    pub token_ids: Vec<u32>,
    /// `stop` when the sequence ended before `max_new_tokens`, `length` otherwise.
    pub finish_reason: FinishReason,
    /// The first step's raw logits, when asked for.
    pub first_logits: Option<Vec<f32>>,
}

/// A running beam: its tokens, its summed log-probability, and its cache row.
#[derive(Debug, Clone)]
struct Beam {
    seq: Vec<u32>,
    score: f32,
    row: usize,
}

/// A finished-hypothesis slot.
#[derive(Debug, Clone)]
struct Slot {
    seq: Vec<u32>,
    score: f32,
    finished: bool,
}

/// One request's search state.
#[derive(Debug)]
struct Request {
    beams: Vec<Beam>,
    slots: Vec<Slot>,
    improvable: bool,
    max_length: usize,
    done: bool,
}

/// `log_softmax` of a row, in f32 with the sum of exponentials accumulated in f64.
fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    logits.iter().map(|&x| x - lse).collect()
}

/// The first index of the largest value.
fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// The `k` best `(score, index)` pairs, best first; equal scores in index order.
fn top_k(scores: impl Iterator<Item = f32>, k: usize) -> Vec<(f32, usize)> {
    let mut all: Vec<(f32, usize)> = scores.enumerate().map(|(i, s)| (s, i)).collect();
    let order = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let k = k.min(all.len());
    if k < all.len() {
        all.select_nth_unstable_by(k, order);
        all.truncate(k);
    }
    all.sort_by(order);
    all
}

impl Search {
    fn new_request(&self, max_new_tokens: usize, row: usize) -> Request {
        let start = vec![self.decoder_start];
        let beams = (0..self.num_beams)
            .map(|b| Beam {
                seq: start.clone(),
                score: if b == 0 { 0.0 } else { MASKED },
                row,
            })
            .collect();
        let slots = (0..self.num_beams)
            .map(|_| Slot {
                seq: start.clone(),
                score: MASKED,
                finished: false,
            })
            .collect();
        Request {
            beams,
            slots,
            improvable: true,
            max_length: max_new_tokens + 1,
            done: false,
        }
    }

    fn length_norm(&self, length: usize) -> f32 {
        (length as f32).powf(self.length_penalty)
    }

    /// Greedy: the best processed logit of the one beam.
    fn greedy_step(&self, request: &mut Request, logits: &[f32]) {
        let beam = &mut request.beams[0];
        let mut scores = logits.to_vec();
        self.process(&mut scores, &beam.seq, request.max_length);
        let token = argmax(&scores);
        beam.seq.push(token);
        request.done = self.eos.contains(&token) || beam.seq.len() >= request.max_length;
        if request.done {
            request.slots[0] = Slot {
                seq: beam.seq.clone(),
                score: 0.0,
                finished: true,
            };
        }
    }

    /// One beam-search step of a request given each running beam's logits.
    fn beam_step(&self, request: &mut Request, logits: &[&[f32]]) {
        let nb = self.num_beams;
        let vocab = logits[0].len();
        let keep = (1 + self.eos.len()).max(2) * nb;
        let cur_len = request.beams[0].seq.len();
        let mut flat = Vec::with_capacity(nb * vocab);
        for (beam, row) in request.beams.iter().zip(logits) {
            let mut lp = log_softmax(row);
            self.process(&mut lp, &beam.seq, request.max_length);
            flat.extend(lp.into_iter().map(|x| x + beam.score));
        }
        let top = top_k(flat.into_iter(), keep);
        let candidates: Vec<(f32, usize, u32, bool)> = top
            .iter()
            .map(|&(score, i)| {
                let token = (i % vocab) as u32;
                let ends = self.eos.contains(&token) || cur_len + 1 >= request.max_length;
                (score, i / vocab, token, ends)
            })
            .collect();
        let extend = |parent: usize, token: u32| {
            let mut seq = request.beams[parent].seq.clone();
            seq.push(token);
            seq
        };

        let running = top_k(
            candidates
                .iter()
                .map(|&(s, _, _, ends)| if ends { s + MASKED } else { s }),
            nb,
        );
        let next_beams: Vec<Beam> = running
            .iter()
            .map(|&(score, k)| {
                let (_, parent, token, _) = candidates[k];
                Beam {
                    seq: extend(parent, token),
                    score,
                    row: request.beams[parent].row,
                }
            })
            .collect();

        let full = request.slots.iter().all(|s| s.finished)
            && self.early_stopping == EarlyStopping::Flag(true);
        let norm = self.length_norm(cur_len);
        let mut merged: Vec<Slot> = request.slots.clone();
        for (k, &(score, parent, token, ends)) in candidates.iter().enumerate() {
            let just_finished = ends && k < nb;
            let mut s = score / norm;
            for penalised in [full, !request.improvable, !just_finished] {
                s += if penalised { MASKED } else { 0.0 };
            }
            merged.push(Slot {
                seq: extend(parent, token),
                score: s,
                finished: just_finished,
            });
        }
        let best = top_k(merged.iter().map(|s| s.score), nb);
        request.slots = best.iter().map(|&(_, i)| merged[i].clone()).collect();
        request.beams = next_beams;

        let cur_len = cur_len + 1;
        let best_length = match self.early_stopping {
            EarlyStopping::Never(_) if self.length_penalty > 0.0 => request.max_length - 1,
            _ => cur_len - 1,
        };
        let best_possible = request.beams[0].score / self.length_norm(best_length);
        let worst = request
            .slots
            .iter()
            .fold(f32::INFINITY, |m, s| m.min(s.score));
        request.improvable &= request
            .slots
            .iter()
            .any(|s| best_possible > if s.finished { worst } else { MASKED });
        let all_finished = request.slots.iter().all(|s| s.finished);
        request.done = !request.improvable
            || (all_finished && self.early_stopping == EarlyStopping::Flag(true))
            || candidates.iter().all(|c| c.3);
    }

    /// Decodes every request (`max_new_tokens` each) with `model`, in one batch.
    pub fn run<M: StepModel>(
        &self,
        model: &mut M,
        max_new_tokens: &[usize],
        want_logits: bool,
    ) -> Result<Vec<Decoded>, M::Error> {
        let mut active: Vec<usize> = (0..max_new_tokens.len())
            .filter(|&i| max_new_tokens[i] > 0)
            .collect();
        let mut requests: Vec<Request> = max_new_tokens
            .iter()
            .map(|&m| self.new_request(m, 0))
            .collect();
        for (row, &i) in active.iter().enumerate() {
            requests[i] = self.new_request(max_new_tokens[i], row);
        }
        let mut first_logits: Vec<Option<Vec<f32>>> = vec![None; requests.len()];
        let mut tokens: Vec<u32> = vec![self.decoder_start; active.len()];
        let mut rows: Vec<usize> = vec![1; active.len()];
        let mut position = 0;
        while !active.is_empty() {
            let logits = model.step(&tokens, position, &active, &rows)?;
            for &i in &active {
                let request = &mut requests[i];
                if position == 0 && want_logits {
                    first_logits[i] = Some(logits[request.beams[0].row].clone());
                }
                if self.num_beams == 1 {
                    self.greedy_step(request, &logits[request.beams[0].row]);
                } else {
                    let beam_logits: Vec<&[f32]> = request
                        .beams
                        .iter()
                        .map(|b| logits[b.row].as_slice())
                        .collect();
                    self.beam_step(request, &beam_logits);
                }
            }
            active.retain(|&i| !requests[i].done);
            let mut parents = Vec::new();
            tokens.clear();
            rows.clear();
            for &i in &active {
                let request = &mut requests[i];
                for beam in &mut request.beams {
                    parents.push(beam.row as u32);
                    beam.row = parents.len() - 1;
                    tokens.push(*beam.seq.last().expect("a beam holds the start token"));
                }
                rows.push(request.beams.len());
            }
            if active.is_empty() {
                break;
            }
            model.select(&parents)?;
            position += 1;
        }
        Ok(requests
            .into_iter()
            .zip(max_new_tokens)
            .zip(first_logits)
            .map(|((request, &max_new), first_logits)| {
                let token_ids = request.slots[0].seq[1..].to_vec();
                let finish_reason = if token_ids.len() < max_new {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                };
                Decoded {
                    token_ids,
                    finish_reason,
                    first_logits,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NeverTag;

    fn search(num_beams: usize) -> Search {
        Search {
            num_beams,
            no_repeat_ngram_size: 3,
            early_stopping: EarlyStopping::Flag(true),
            length_penalty: 1.0,
            decoder_start: 2,
            forced_bos: Some(0),
            forced_eos: Some(2),
            eos: vec![2],
        }
    }

    #[test]
    fn processors_ban_repeated_ngrams_and_force_the_ends() {
        let s = search(1);
        let mut scores = vec![0.5f32; 8];
        // The sequence ends with (5, 6), which was followed by 5 before: 5 is banned.
        s.process(&mut scores, &[2, 0, 5, 6, 5, 6], 20);
        assert_eq!(scores[5], f32::NEG_INFINITY);
        assert!(scores.iter().filter(|x| x.is_finite()).count() == 7);
        let mut scores = vec![0.5f32; 8];
        s.process(&mut scores, &[2], 20);
        assert_eq!(argmax(&scores), 0);
        assert_eq!(scores.iter().filter(|x| x.is_finite()).count(), 1);
        let mut scores = vec![0.5f32; 8];
        s.process(&mut scores, &[2, 0, 4], 4);
        assert_eq!(argmax(&scores), 2);
        assert_eq!(scores.iter().filter(|x| x.is_finite()).count(), 1);
    }

    /// A model whose logits depend only on the last token: `table[last]`.
    struct Table {
        table: Vec<Vec<f32>>,
    }

    impl StepModel for Table {
        type Error = ();
        fn step(
            &mut self,
            tokens: &[u32],
            _: usize,
            _: &[usize],
            _: &[usize],
        ) -> Result<Vec<Vec<f32>>, ()> {
            Ok(tokens
                .iter()
                .map(|&t| self.table[t as usize].clone())
                .collect())
        }
        fn select(&mut self, _: &[u32]) -> Result<(), ()> {
            Ok(())
        }
    }

    #[test]
    fn beam_search_finds_a_better_sequence_than_greedy() {
        // From 0, greedy takes 3 (p 0.55) and is then unsure; 4 (p 0.45) leads to a sure eos.
        let ln = |p: f32| p.ln();
        let row = |pairs: &[(usize, f32)]| {
            let mut r = vec![-30.0f32; 6];
            for &(t, p) in pairs {
                r[t] = ln(p);
            }
            r
        };
        let table = vec![
            row(&[(3, 0.55), (4, 0.45)]),
            row(&[(2, 1.0)]),
            row(&[(2, 1.0)]),
            row(&[(5, 0.34), (1, 0.33), (2, 0.33)]),
            row(&[(2, 0.99)]),
            row(&[(2, 1.0)]),
        ];
        let mut model = Table { table };
        let mut s = search(1);
        s.no_repeat_ngram_size = 0;
        let greedy = s.run(&mut model, &[6], false).unwrap();
        assert_eq!(greedy[0].token_ids[..3], [0, 3, 5]);
        s.num_beams = 2;
        let beam = s.run(&mut model, &[6], false).unwrap();
        assert_eq!(beam[0].token_ids, [0, 4, 2]);
        assert_eq!(beam[0].finish_reason, FinishReason::Stop);
        s.early_stopping = EarlyStopping::Never(NeverTag::Never);
        assert_eq!(
            s.run(&mut model, &[6], false).unwrap()[0].token_ids,
            [0, 4, 2]
        );
    }
}
