//! From `[[task]]`s to the questions asked of each page, and from a question and a page to a
//! [`ChatRequest`].
//!
//! Every page of a document is asked the same list of [`Query`]s, so the rows a document must
//! produce are known as soon as its page count is: pages × queries.

use std::sync::Arc;

use docpipe_core::{ChatMessage, ChatRequest, ContentItem, DocumentRef};

use crate::config::TaskConfig;

/// One question asked of every page of a document: one output row per page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The `task` column.
    pub task: String,
    /// The `question_id` column: the question's id, the field name, or none for OCR.
    pub question_id: Option<String>,
    /// The `question` column: the question, or the transcription prompt for OCR.
    pub question: String,
    /// What the model is asked: the task's prompt with the question filled in.
    pub prompt: String,
    /// The generation limit: the task's own, else `model.max_new_tokens`.
    pub max_new_tokens: usize,
    /// For field extraction: the field this answers, gathered into the `fields` column.
    pub field: Option<String>,
}

/// What a task asks when its `prompt` is not set. Each family is asked the way it was trained:
/// the chat models (Idefics) take an instruction and the question as written, Florence-2 takes
/// its task tokens (`<OCR>`, the DocVQA fine-tune's `<DocVQA>` prefix), without which it
/// answers something else. See `Family::default_prompts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultPrompts {
    /// An `ocr` task's instruction.
    pub ocr: &'static str,
    /// A `qa` or `fields` task's template; `{question}` is the question.
    pub question: &'static str,
}

/// The tasks of a pipeline, ready to be expanded per document.
#[derive(Debug, Clone)]
pub struct TaskPlan {
    tasks: Vec<TaskConfig>,
    default_max_new_tokens: usize,
    prompts: DefaultPrompts,
}

impl TaskPlan {
    /// The plan for `tasks`, in order; `default_max_new_tokens` (`model.max_new_tokens`) serves
    /// tasks that set none, `prompts` (the model family's) tasks without a `prompt`.
    pub fn new(
        tasks: Vec<TaskConfig>,
        default_max_new_tokens: usize,
        prompts: DefaultPrompts,
    ) -> Self {
        Self {
            tasks,
            default_max_new_tokens,
            prompts,
        }
    }

    /// The queries asked of every page of `doc`, in task order; a `qa` task adds the
    /// document's own questions (from a manifest) after its configured ones.
    pub fn queries(&self, doc: &DocumentRef) -> Vec<Query> {
        let mut queries = Vec::new();
        for task in &self.tasks {
            let max_new_tokens = task.max_new_tokens().unwrap_or(self.default_max_new_tokens);
            let name = task.name().to_owned();
            match task {
                TaskConfig::Ocr { prompt, .. } => {
                    let prompt = prompt.as_deref().unwrap_or(self.prompts.ocr);
                    queries.push(Query {
                        task: name,
                        question_id: None,
                        question: prompt.to_owned(),
                        prompt: prompt.to_owned(),
                        max_new_tokens,
                        field: None,
                    })
                }
                TaskConfig::Qa {
                    prompt,
                    questions,
                    document_questions,
                    ..
                } => {
                    let from_doc = document_questions
                        .then_some(&doc.questions)
                        .into_iter()
                        .flatten();
                    let prompt = prompt.as_deref().unwrap_or(self.prompts.question);
                    for question in questions.iter().chain(from_doc) {
                        queries.push(Query {
                            task: name.clone(),
                            question_id: Some(question.id.clone()),
                            question: question.text.clone(),
                            prompt: prompt.replace("{question}", &question.text),
                            max_new_tokens,
                            field: None,
                        });
                    }
                }
                TaskConfig::Fields { prompt, fields, .. } => {
                    let prompt = prompt.as_deref().unwrap_or(self.prompts.question);
                    for field in fields {
                        let question = field.question.clone().unwrap_or_else(|| {
                            format!("What is the {}?", field.name.replace('_', " "))
                        });
                        queries.push(Query {
                            task: name.clone(),
                            question_id: Some(field.name.clone()),
                            prompt: prompt
                                .replace("{question}", &question)
                                .replace("{field}", &field.name),
                            question,
                            max_new_tokens,
                            field: Some(field.name.clone()),
                        });
                    }
                }
            }
        }
        queries
    }
}

/// The request for one query about one page: a user turn with the page image then the prompt.
/// The image is the page's `Arc`, shared by all of the page's requests, so the model can encode
/// the page once for all of its questions.
pub fn chat_request(query: &Query, page_image: &Arc<image::RgbImage>) -> ChatRequest {
    ChatRequest {
        messages: vec![ChatMessage {
            role: "user".to_owned(),
            content: vec![
                ContentItem::Image { path: None },
                ContentItem::Text {
                    text: query.prompt.clone(),
                },
            ],
        }],
        images: vec![page_image.clone()],
        max_new_tokens: query.max_new_tokens,
    }
}

#[cfg(test)]
mod tests {
    use docpipe_core::Question;

    use super::*;
    use crate::model::Family;
    use crate::test_pipeline::{test_config, QUERIES_PER_PAGE};

    #[test]
    fn tasks_expand_to_one_query_per_question() {
        let config = test_config(&[]);
        let plan = TaskPlan::new(
            config.tasks,
            config.model.max_new_tokens,
            Family::Idefics2.default_prompts(),
        );
        let mut doc = DocumentRef::new("a.pdf");
        doc.questions.push(Question {
            id: "m1".into(),
            text: "Who signed it?".into(),
        });
        let queries = plan.queries(&doc);
        let keys: Vec<(&str, Option<&str>)> = queries
            .iter()
            .map(|q| (q.task.as_str(), q.question_id.as_deref()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("ocr", None),
                ("qa", Some("title")),
                ("qa", Some("date")),
                ("qa", Some("m1")),
                ("fields", Some("sender")),
                ("fields", Some("total_amount")),
            ]
        );
        assert_eq!(
            queries[3].prompt,
            "Who signed it?\nGive a very brief answer."
        );
        assert_eq!(queries[4].question, "What is the sender?");
        assert_eq!(queries[5].field.as_deref(), Some("total_amount"));
        assert!(queries.iter().all(|q| q.max_new_tokens == 16));
    }

    /// Tasks without a prompt take the family's: Florence-2 is asked with its task tokens.
    #[test]
    fn unset_prompts_are_the_familys() {
        let config = test_config(&[]);
        let florence = Family::Florence2.default_prompts();
        let plan = TaskPlan::new(config.tasks, 16, florence);
        let mut doc = DocumentRef::new("a.pdf");
        doc.questions.push(Question {
            id: "m1".into(),
            text: "Who signed it?".into(),
        });
        let queries = plan.queries(&doc);
        assert_eq!(queries[0].prompt, "<OCR>");
        assert_eq!(queries[0].question, "<OCR>");
        assert_eq!(queries[3].prompt, "<DocVQA>Who signed it?");
        assert_eq!(queries[3].question, "Who signed it?");
        assert_eq!(queries[4].prompt, "<DocVQA>What is the sender?");
    }

    #[test]
    fn prompts_are_templates() {
        let config = test_config(&[
            "task.1.prompt=Q: {question} A:".into(),
            "task.1.document_questions=false".into(),
            "task.2.prompt={field}? {question}".into(),
            "task.2.max_new_tokens=5".into(),
        ]);
        let plan = TaskPlan::new(config.tasks, 7, Family::Idefics2.default_prompts());
        let mut doc = DocumentRef::new("a.pdf");
        doc.questions.push(Question {
            id: "ignored".into(),
            text: "?".into(),
        });
        let queries = plan.queries(&doc);
        assert_eq!(queries.len(), QUERIES_PER_PAGE);
        assert_eq!(
            queries[1].prompt,
            "Q: What is the title of this document? A:"
        );
        assert_eq!(queries[4].prompt, "total_amount? What is the total amount?");
        assert_eq!(queries[4].max_new_tokens, 5);
        assert_eq!(queries[0].max_new_tokens, 7);
        let image = Arc::new(image::RgbImage::new(3, 2));
        let request = chat_request(&queries[1], &image);
        assert!(Arc::ptr_eq(&request.images[0], &image));
        assert_eq!(request.max_new_tokens, 7);
    }
}
