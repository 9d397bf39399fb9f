//! Pipeline files (`pipelines/*.toml`): parsing, `--set` overrides and validation.
//!
//! Overrides are applied to the parsed `toml::Table` before deserializing, so an override goes
//! through exactly the same checks as a key written in the file: an unknown key or a bad value
//! fails before any work starts, with the key named.

use docpipe_core::{DeviceGroup, DeviceSpec, Dtype, Question};
use serde::Deserialize;

use crate::pool::Batching;

/// The pipeline used by `docpipe run` without a file: the demo on the repository's fixtures.
pub const DEMO_PIPELINE: &str = include_str!("../../../pipelines/demo.toml");

/// Why a pipeline file or an override was rejected. Always names the key concerned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The pipeline file is not valid TOML.
    #[error("{origin}: not valid TOML: {message}")]
    Syntax {
        /// The file as named in messages: its path, or e.g. `embedded demo.toml`.
        origin: String,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// A `--set` item (given here) has no `=`, or its key is not `section.key` with non-empty
    /// segments.
    #[error("--set {0:?}: expected section.key=value")]
    OverrideSyntax(String),
    /// A `--set` key cannot be followed: it goes through a value that is not a table, or indexes
    /// past the end of a list of tables.
    #[error("--set {key}: {message}")]
    OverridePath {
        /// The dotted key of the override, e.g. `task.3.prompt`.
        key: String,
        /// Why the key cannot be set.
        message: String,
    },
    /// After the overrides, a key is unknown, missing, of the wrong type or out of range.
    #[error("{origin}: `{key}`: {message}")]
    Invalid {
        /// The file as named in messages.
        origin: String,
        /// The key at fault, e.g. `render.workers` or `task[1].prompt`.
        key: String,
        /// What is wrong with its value.
        message: String,
    },
}

/// A whole pipeline: what to read, how to render, which model, which tasks, where to write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// `[source]`: the documents to process.
    pub source: SourceConfig,
    /// `[render]`: page rendering; every key has a default.
    #[serde(default)]
    pub render: RenderConfig,
    /// `[model]`: the checkpoint, its replicas and the batch budgets.
    pub model: ModelConfig,
    /// `[[task]]`, at least one: what to ask about every page, in the order the rows are written.
    #[serde(rename = "task")]
    pub tasks: Vec<TaskConfig>,
    /// `[sink]`: where the rows go.
    pub sink: SinkConfig,
}

/// Where the documents come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A folder or bucket prefix to list, or (with `manifest`) a Parquet/CSV/JSONL manifest.
    pub uri: String,
    /// File extensions to keep when listing a prefix (case-insensitive).
    #[serde(default = "default_extensions")]
    pub extensions: Vec<String>,
    /// Read `uri` as a manifest table rather than listing it.
    #[serde(default)]
    pub manifest: Option<ManifestConfig>,
    /// Process at most this many documents (after skipping committed ones).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// How to read a manifest table: which column holds the document URI, which columns are keys
/// copied to every output row, and which column (if any) holds per-document questions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    /// The column holding each document's URI; default `uri`.
    #[serde(default = "default_uri_column")]
    pub uri_column: String,
    /// Columns copied into every output row of the document (lake enrichment), as text, under the
    /// same names, before the standard columns.
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// The column of per-document questions (a list of `{id, text}`); `None`: `questions` in a
    /// JSONL manifest, no questions in CSV and Parquet.
    #[serde(default)]
    pub questions_column: Option<String>,
}

/// Page rendering.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderConfig {
    /// Longest side of a rendered page in pixels. Unset: what the model's image processor keeps
    /// (`size.longest_edge`: 980 for Idefics2, 1456 for Idefics3), since anything larger is
    /// scaled down again. 1960 lets each of Idefics2's four split crops keep its native
    /// resolution.
    #[serde(default)]
    pub longest_edge: Option<u32>,
    /// Render worker processes.
    #[serde(default = "default_render_workers")]
    pub workers: usize,
    /// Seconds a worker may spend on one page before it is killed and the page fails.
    #[serde(default = "default_render_timeout")]
    pub timeout_s: u64,
    /// Render at most this many pages per document (the rest are not asked about).
    #[serde(default)]
    pub max_pages: Option<u32>,
}

impl Default for RenderConfig {
    fn default() -> Self {
        Self {
            longest_edge: None,
            workers: default_render_workers(),
            timeout_s: default_render_timeout(),
            max_pages: None,
        }
    }
}

/// The model and its inference pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A checkpoint directory in the hub layout (`config.json`, tokenizer, safetensors).
    pub path: String,
    /// One replica per entry: `"cpu"`, `"cuda:N"`, `"cuda:all"` (one per visible GPU) or a
    /// group such as `"cuda:0+cuda:1"`, one replica whose layers are split over those GPUs.
    #[serde(default = "default_devices")]
    pub devices: Vec<DeviceGroup>,
    /// Precision of weights and activations; `f32` by default (use `bf16` on GPUs).
    #[serde(default)]
    pub dtype: Dtype,
    /// Default generation length; a task may set its own.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// A batch holds at most this many tokens (prompt plus max new tokens, summed).
    #[serde(default = "default_batch_tokens")]
    pub batch_tokens: usize,
    /// A batch holds at most this many vision patches (summed over its requests' images).
    #[serde(default = "default_batch_patches")]
    pub batch_patches: usize,
    /// Requests join a replica's running batch between decode steps, and leave it as they
    /// finish, for the families that support it (Idefics2, Idefics3); `false` runs every batch
    /// to its longest generation. Answers are the same either way.
    #[serde(default = "default_true")]
    pub continuous_batching: bool,
    /// Prepared requests waiting for a replica; bounds memory and applies back-pressure.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl ModelConfig {
    /// How the replicas batch, from `continuous_batching`.
    pub fn batching(&self) -> Batching {
        if self.continuous_batching {
            Batching::Continuous
        } else {
            Batching::Static
        }
    }
}

/// One `[[task]]`: what to ask about every page.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum TaskConfig {
    /// Transcribe each page.
    Ocr {
        /// The `task` column; defaults to the kind.
        name: Option<String>,
        /// The instruction sent with the page image; also the `question` column. Unset: the
        /// model family's own ([`crate::tasks::DefaultPrompts`]).
        prompt: Option<String>,
        /// Overrides `model.max_new_tokens` for this task.
        max_new_tokens: Option<usize>,
    },
    /// Questions about each page: those listed here plus the document's own (from a manifest).
    Qa {
        /// The `task` column; defaults to the kind.
        name: Option<String>,
        /// `{question}` is replaced by the question text. Unset: the model family's own
        /// ([`crate::tasks::DefaultPrompts`]).
        prompt: Option<String>,
        /// Asked of every page, before the document's own; ids must be unique.
        #[serde(default)]
        questions: Vec<Question>,
        /// Also ask the questions the source attached to each document.
        #[serde(default = "default_true")]
        document_questions: bool,
        /// Overrides `model.max_new_tokens` for this task.
        max_new_tokens: Option<usize>,
    },
    /// Named fields, each asked as a question; the page's answers are also written together as
    /// one JSON object in the `fields` column.
    Fields {
        /// The `task` column; defaults to the kind.
        name: Option<String>,
        /// `{question}` is replaced by the field's question, `{field}` by its name. Unset: the
        /// model family's question template ([`crate::tasks::DefaultPrompts`]).
        prompt: Option<String>,
        /// The fields, at least one; names must be unique.
        fields: Vec<FieldConfig>,
        /// Overrides `model.max_new_tokens` for this task.
        max_new_tokens: Option<usize>,
    },
}

/// A named field of a `fields` task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// The `question_id` column and the field's key in the `fields` JSON object.
    pub name: String,
    /// Defaults to "What is the <name with spaces>?".
    pub question: Option<String>,
}

/// Where and how the rows are written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// A folder or bucket prefix; `{date}` is replaced by the UTC date when the run starts.
    pub uri: String,
    /// Documents per part file (a document's rows never span two parts).
    #[serde(default = "default_docs_per_part")]
    pub documents_per_part: usize,
    /// Claim documents before processing them, so that runs overlapping on this sink process
    /// each document once (docs/storage.md, "Overlapping runs"). Off only for stores that do not
    /// honour create-only writes, where overlapping runs must then be prevented by other means.
    #[serde(default = "default_exclusive")]
    pub exclusive: bool,
    /// Seconds a run's claims outlive its last heartbeat: how long documents of a run that died
    /// stay held before another run takes them over.
    #[serde(default = "default_hold_s")]
    pub hold_s: u64,
}

fn default_exclusive() -> bool {
    true
}
fn default_hold_s() -> u64 {
    60
}
fn default_extensions() -> Vec<String> {
    vec!["pdf".to_owned()]
}
fn default_uri_column() -> String {
    "uri".to_owned()
}
fn default_render_workers() -> usize {
    2
}
fn default_render_timeout() -> u64 {
    60
}
fn default_devices() -> Vec<DeviceGroup> {
    vec![DeviceSpec::Cpu.into()]
}
fn default_max_new_tokens() -> usize {
    64
}
fn default_batch_tokens() -> usize {
    16_384
}
fn default_batch_patches() -> usize {
    // Five 70×70-patch images (one split page at 980 px): 24,500 patches.
    25_000
}
fn default_queue() -> usize {
    64
}
fn default_true() -> bool {
    true
}
fn default_docs_per_part() -> usize {
    1
}

impl PipelineConfig {
    /// Parses a pipeline file, applies `--set` overrides (`section.key=value`), then
    /// deserializes and validates. `origin` names the file in messages.
    pub fn load(origin: &str, text: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.to_owned(),
                    message: e.to_string(),
                })?;
        Self::from_table(origin, table, overrides)
    }

    /// A pipeline built in code (as `docpipe eval docvqa` does), with the user's overrides
    /// checked exactly like those of a pipeline file.
    pub fn from_table(
        origin: &str,
        mut table: toml::Table,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        for item in overrides {
            apply_override(&mut table, item)?;
        }
        let config: PipelineConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                ConfigError::Invalid {
                    origin: origin.to_owned(),
                    key,
                    message: e.into_inner().to_string(),
                }
            })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                message,
            })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: String| Err((key.to_owned(), message));
        if self.source.uri.trim().is_empty() {
            return bad("source.uri", "must not be empty".into());
        }
        if let Some(edge) = self
            .render
            .longest_edge
            .filter(|e| !(64..=8192).contains(e))
        {
            return bad(
                "render.longest_edge",
                format!("{edge} is outside 64..=8192"),
            );
        }
        if self.render.workers == 0 {
            return bad("render.workers", "must be at least 1".into());
        }
        if self.render.max_pages == Some(0) {
            return bad(
                "render.max_pages",
                "must be at least 1 (leave it unset for every page)".into(),
            );
        }
        if self.model.path.trim().is_empty() {
            return bad("model.path", "must not be empty".into());
        }
        if self.model.devices.is_empty() {
            return bad("model.devices", "needs at least one device".into());
        }
        for (key, value) in [
            ("model.max_new_tokens", self.model.max_new_tokens),
            ("model.batch_tokens", self.model.batch_tokens),
            ("model.batch_patches", self.model.batch_patches),
            ("model.queue", self.model.queue),
            ("sink.documents_per_part", self.sink.documents_per_part),
            ("sink.hold_s", self.sink.hold_s as usize),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.tasks.is_empty() {
            return bad("task", "at least one [[task]] is needed".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, task) in self.tasks.iter().enumerate() {
            let key = |k: &str| format!("task[{i}].{k}");
            if !names.insert(task.name()) {
                return bad(
                    &key("name"),
                    format!("task name {:?} is used twice", task.name()),
                );
            }
            match task {
                TaskConfig::Ocr { .. } => {}
                TaskConfig::Qa {
                    prompt,
                    questions,
                    document_questions,
                    ..
                } => {
                    if questions.is_empty() && !document_questions {
                        return bad(
                            &key("questions"),
                            "no questions and document_questions = false".into(),
                        );
                    }
                    if prompt.as_ref().is_some_and(|p| !p.contains("{question}")) {
                        return bad(&key("prompt"), "must contain {question}".into());
                    }
                    let mut ids = std::collections::HashSet::new();
                    if let Some(q) = questions.iter().find(|q| !ids.insert(&q.id)) {
                        return bad(
                            &key("questions"),
                            format!("question id {:?} is used twice", q.id),
                        );
                    }
                }
                TaskConfig::Fields { fields, .. } => {
                    if fields.is_empty() {
                        return bad(&key("fields"), "needs at least one field".into());
                    }
                    let mut seen = std::collections::HashSet::new();
                    if let Some(f) = fields.iter().find(|f| !seen.insert(&f.name)) {
                        return bad(
                            &key("fields"),
                            format!("field {:?} is listed twice", f.name),
                        );
                    }
                }
            }
            if task.max_new_tokens() == Some(0) {
                return bad(&key("max_new_tokens"), "must be at least 1".into());
            }
        }
        if self.sink.uri.trim().is_empty() {
            return bad("sink.uri", "must not be empty".into());
        }
        Ok(())
    }
}

impl TaskConfig {
    /// The value of the `task` column.
    pub fn name(&self) -> &str {
        match self {
            TaskConfig::Ocr { name, .. } => name.as_deref().unwrap_or("ocr"),
            TaskConfig::Qa { name, .. } => name.as_deref().unwrap_or("qa"),
            TaskConfig::Fields { name, .. } => name.as_deref().unwrap_or("fields"),
        }
    }

    /// The task's own generation length, when it sets one (else `model.max_new_tokens`).
    pub fn max_new_tokens(&self) -> Option<usize> {
        match self {
            TaskConfig::Ocr { max_new_tokens, .. }
            | TaskConfig::Qa { max_new_tokens, .. }
            | TaskConfig::Fields { max_new_tokens, .. } => *max_new_tokens,
        }
    }
}

/// Applies one `section.key=value` override. The value is read as a TOML value (`3`, `true`,
/// `["cpu", "cpu"]`, `"x"`) and, if it is not one, taken as a plain string. A numeric path
/// segment indexes an array of tables: `task.0.prompt=...`.
///
/// This is the one rule for every command's `--set`, so a value means the same everywhere.
pub fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), ConfigError> {
    let (path, raw) = item
        .split_once('=')
        .ok_or_else(|| ConfigError::OverrideSyntax(item.to_owned()))?;
    let path = path.trim();
    let segments: Vec<&str> = path.split('.').collect();
    if segments.len() < 2 || segments.iter().any(|s| s.is_empty()) {
        return Err(ConfigError::OverrideSyntax(item.to_owned()));
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    let result = set_path(&mut root, &segments, parse_value(raw.trim()));
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    result.map_err(|message| ConfigError::OverridePath {
        key: path.to_owned(),
        message,
    })
}

fn set_path(target: &mut toml::Value, segments: &[&str], value: toml::Value) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        *target = value;
        return Ok(());
    };
    let child = match target {
        toml::Value::Table(t) => t
            .entry((*first).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new())),
        toml::Value::Array(items) => {
            let len = items.len();
            let index: usize = first
                .parse()
                .map_err(|_| format!("`{first}` must be an index into a list of {len}"))?;
            items.get_mut(index).ok_or_else(|| {
                format!("index {index} is out of range: the list has {len} elements")
            })?
        }
        _ => return Err(format!("cannot set `{first}` inside a plain value")),
    };
    set_path(child, rest, value)
}

/// A TOML value when `raw` is one, else `raw` as a string (so `--set sink.uri=out/x` needs no
/// quotes).
fn parse_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Replaces `{date}` with the UTC date (YYYY-MM-DD) of `now`.
pub fn expand_date(uri: &str, now: std::time::SystemTime) -> String {
    let days = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (y, m, d) = civil_from_days(days);
    uri.replace("{date}", &format!("{y:04}-{m:02}-{d:02}"))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pipeline::TEST_PIPELINE;

    fn load(overrides: &[&str]) -> Result<PipelineConfig, ConfigError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        PipelineConfig::load("test.toml", TEST_PIPELINE, &overrides)
    }

    fn invalid_key(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid key, got {other}"),
        }
    }

    #[test]
    fn every_shipped_pipeline_parses() {
        for (name, text) in [
            ("demo", DEMO_PIPELINE),
            (
                "nightly",
                include_str!("../../../pipelines/nightly-extraction.toml"),
            ),
            (
                "docvqa",
                include_str!("../../../pipelines/docvqa-eval.toml"),
            ),
            (
                "lake",
                include_str!("../../../pipelines/lake-enrichment.toml"),
            ),
        ] {
            PipelineConfig::load(name, text, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn overrides_replace_required_keys() {
        let config = load(&[
            "source.uri=s3://bucket/in/",
            "model.path=/models/x",
            "model.devices=[\"cpu\", \"cuda:1\", \"cuda:all\", \"cuda:2+cuda:3\"]",
            "model.dtype=bf16",
            "sink.uri=out/elsewhere",
            "render.longest_edge=1960",
            "task.0.prompt=Read it.",
        ])
        .unwrap();
        assert_eq!(config.source.uri, "s3://bucket/in/");
        assert_eq!(config.model.path, "/models/x");
        let devices: Vec<String> = config.model.devices.iter().map(|d| d.to_string()).collect();
        assert_eq!(devices, ["cpu", "cuda:1", "cuda:all", "cuda:2+cuda:3"]);
        assert_eq!(config.model.dtype, Dtype::Bf16);
        assert_eq!(config.sink.uri, "out/elsewhere");
        assert_eq!(config.render.longest_edge, Some(1960));
        match &config.tasks[0] {
            TaskConfig::Ocr { prompt, .. } => assert_eq!(prompt.as_deref(), Some("Read it.")),
            other => panic!("task 0 is {other:?}"),
        }
    }

    #[test]
    fn continuous_batching_is_on_unless_turned_off() {
        assert_eq!(load(&[]).unwrap().model.batching(), Batching::Continuous);
        let off = load(&["model.continuous_batching=false"]).unwrap();
        assert_eq!(off.model.batching(), Batching::Static);
        let bad = load(&["model.continuous_batching=sometimes"]).unwrap_err();
        assert_eq!(invalid_key(bad), "model.continuous_batching");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load(&["source.bogus=1"]).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = load(&["nosuch.key=1"]).unwrap_err();
        assert!(err.to_string().contains("nosuch"), "{err}");
        let err = load(&["task.1.colour=red"]).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let text = format!("{TEST_PIPELINE}\n[render]\nlongest_side = 3");
        let err = PipelineConfig::load("x.toml", &text, &[]).unwrap_err();
        assert!(err.to_string().contains("longest_side"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            invalid_key(load(&["render.longest_edge=big"]).unwrap_err()),
            "render.longest_edge"
        );
        assert_eq!(
            invalid_key(load(&["render.longest_edge=0"]).unwrap_err()),
            "render.longest_edge"
        );
        assert_eq!(
            invalid_key(load(&["render.max_pages=0"]).unwrap_err()),
            "render.max_pages"
        );
        assert_eq!(
            invalid_key(load(&["model.dtype=f64"]).unwrap_err()),
            "model.dtype"
        );
        let err = load(&["model.devices=[\"tpu\"]"]).unwrap_err();
        assert!(
            err.to_string().contains("model.devices") && err.to_string().contains("tpu"),
            "{err}"
        );
        assert_eq!(
            invalid_key(load(&["model.devices=[]"]).unwrap_err()),
            "model.devices"
        );
        assert!(matches!(
            load(&["sink.uri"]).unwrap_err(),
            ConfigError::OverrideSyntax(_)
        ));
        assert!(matches!(
            load(&["task.9.prompt=x"]).unwrap_err(),
            ConfigError::OverridePath { .. }
        ));
    }

    #[test]
    fn override_values_fall_back_to_strings() {
        assert_eq!(parse_value("3"), toml::Value::Integer(3));
        assert_eq!(parse_value("\"3\""), toml::Value::String("3".into()));
        assert_eq!(
            parse_value("out/x y"),
            toml::Value::String("out/x y".into())
        );
        assert_eq!(
            parse_value("1\nb = 2"),
            toml::Value::String("1\nb = 2".into())
        );
    }

    #[test]
    fn date_placeholder_is_the_utc_day() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_772_323_200 + 3_600);
        assert_eq!(expand_date("s3://b/{date}/", t), "s3://b/2026-03-01/");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(expand_date("{date}", leap), "2000-02-29");
    }
}
