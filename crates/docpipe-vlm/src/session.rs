//! Continuous batching for both families: an [`IdeficsSession`] keeps one decoding batch
//! running and admits requests between its steps, so that a slot freed by a short answer is
//! refilled while long transcriptions go on. It is the [`Decoder`] that static generation runs
//! to the end, driven step by step, so a request gets the same bits either way. Questions about
//! one page that join at different steps share its vision encoding, not its prefill.

use std::collections::HashMap;

use docpipe_core::{FinishedRequest, GenerationSession, ModelError, RequestKey};

use crate::device::model_error;
use crate::generation::Decoder;
use crate::model::{Family, IdeficsModel};
use crate::request::{sequence_inputs, DetailedGeneration, EncodedPages, PreparedRequest};

/// Pages whose features a session keeps for requests that join later. A page's questions are
/// queued together, so the last few pages are the ones asked about; at real dimensions each
/// holds a few MB of features.
const ENCODED_PAGES: usize = 16;

/// A running batch of an [`IdeficsModel`]; see [`IdeficsModel::session`].
pub struct IdeficsSession<'m, F: Family> {
    model: &'m IdeficsModel<F>,
    decoder: Decoder<'m, RequestKey>,
    /// Prompt lengths of the unfinished requests, for their results.
    prompt_tokens: HashMap<RequestKey, usize>,
    /// Features of recent pages, for their questions that join later.
    pages: EncodedPages,
}

impl<'m, F: Family> IdeficsSession<'m, F> {
    pub(crate) fn new(model: &'m IdeficsModel<F>, decoder: Decoder<'m, RequestKey>) -> Self {
        IdeficsSession {
            model,
            decoder,
            prompt_tokens: HashMap::new(),
            pages: EncodedPages::new(ENCODED_PAGES),
        }
    }

    /// Encodes the pages of `requests` that the session has not encoded yet, prefills their
    /// prompts and adds them to the batch.
    pub fn admit(&mut self, requests: &[(RequestKey, &PreparedRequest)]) -> Result<(), ModelError> {
        let batch: Vec<&PreparedRequest> = requests.iter().map(|(_, r)| *r).collect();
        let inputs = sequence_inputs(&batch, &mut self.pages, |crops| {
            self.model.image_features(crops)
        })?;
        let sequences: Vec<_> = requests.iter().map(|(key, _)| *key).zip(inputs).collect();
        self.decoder.admit(&sequences).map_err(model_error)?;
        self.prompt_tokens.extend(
            requests
                .iter()
                .map(|(key, request)| (*key, request.input_ids.len())),
        );
        Ok(())
    }

    /// One token for every unfinished request; the requests that finished, with their first
    /// logits when the session keeps them.
    pub fn step_detailed(&mut self) -> Result<Vec<(RequestKey, DetailedGeneration)>, ModelError> {
        let finished = self.decoder.step().map_err(model_error)?;
        finished
            .into_iter()
            .map(|(key, output)| {
                let prompt_tokens = self.prompt_tokens.remove(&key).unwrap_or_default();
                let detailed = output
                    .into_detailed(prompt_tokens, |ids| F::decode(self.model.prompt(), ids))?;
                Ok((key, detailed))
            })
            .collect()
    }
}

impl<F: Family> GenerationSession<PreparedRequest> for IdeficsSession<'_, F> {
    fn admit(&mut self, requests: &[(RequestKey, &PreparedRequest)]) -> Result<(), ModelError> {
        IdeficsSession::admit(self, requests)
    }

    fn step(&mut self) -> Result<Vec<FinishedRequest>, ModelError> {
        Ok(self
            .step_detailed()?
            .into_iter()
            .map(|(key, detailed)| FinishedRequest {
                key,
                generation: detailed.generation,
            })
            .collect())
    }

    fn live(&self) -> usize {
        self.decoder.live()
    }
}
