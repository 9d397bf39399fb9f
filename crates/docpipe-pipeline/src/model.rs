//! Loading `[model]`: the checkpoint is resolved once (a local folder, a hub id or a bucket
//! prefix, see docpipe-hub: downloads happen here, before any replica loads, so that all
//! replicas share them), then one replica is loaded per device, dispatched on the checkpoint's
//! `model_type`.
//!
//! This is the only place that names model families; everything downstream is generic over
//! `VisionLanguageModel`. A new family adds a variant to [`LoadedModel`] and an arm below.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use docpipe_core::VisionLanguageModel;
use docpipe_core::{DeviceGroup, DeviceSpec};
use docpipe_florence2::Florence2Model;
use docpipe_hub::{Checkpoint, HubError};
use docpipe_idefics1::Idefics1Model;
use docpipe_idefics2::Idefics2Model;
use docpipe_idefics3::Idefics3Model;
use docpipe_vlm::model::{Family as ModelFamily, IdeficsModel};
use docpipe_vlm::placement::Placement;
use docpipe_vlm::{candle_device, candle_dtype, candle_placement, DeviceError, LoadError};

use crate::config::ModelConfig;
use crate::pool::Replica;
use crate::tasks::DefaultPrompts;

/// The replicas of a loaded model, by family.
pub enum LoadedModel {
    /// An Idefics2 checkpoint (`model_type` `idefics2`), one replica per device.
    Idefics2(Vec<Replica<Idefics2Model>>),
    /// An Idefics3 checkpoint (`model_type` `idefics3`), one replica per device.
    Idefics3(Vec<Replica<Idefics3Model>>),
    /// A Florence-2 checkpoint (`model_type` `florence2`, either tensor layout), one replica
    /// per device.
    Florence2(Vec<Replica<Florence2Model>>),
    /// An Idefics1 checkpoint (`model_type` `idefics`), one replica per device or group.
    Idefics1(Vec<Replica<Idefics1Model>>),
}

/// A model family docpipe can run, named by `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Idefics2 (`model_type` `idefics2`, e.g. `HuggingFaceM4/idefics2-8b`), in crate
    /// docpipe-idefics2.
    Idefics2,
    /// Idefics3 (`model_type` `idefics3`), in crate docpipe-idefics3.
    Idefics3,
    /// Florence-2 (`model_type` `florence2`, e.g. `HuggingFaceM4/Florence-2-DocVQA`), in crate
    /// docpipe-florence2.
    Florence2,
    /// Idefics1 (`model_type` `idefics`, e.g. `HuggingFaceM4/idefics-9b-instruct`), in crate
    /// docpipe-idefics1.
    Idefics1,
}

impl Family {
    /// Every supported family, in the order error messages list them.
    pub const ALL: &'static [Family] = &[
        Family::Idefics2,
        Family::Idefics3,
        Family::Florence2,
        Family::Idefics1,
    ];

    /// The `model_type` of its checkpoints.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Idefics2 => docpipe_idefics2::config::MODEL_TYPE,
            Family::Idefics3 => docpipe_idefics3::config::MODEL_TYPE,
            Family::Florence2 => docpipe_florence2::config::MODEL_TYPE,
            Family::Idefics1 => docpipe_idefics1::MODEL_TYPE,
        }
    }

    /// What a pipeline task (and `docpipe eval docvqa`) asks when it sets no prompt. The chat
    /// models get an instruction, and a question followed by the short-answer instruction of
    /// the Idefics2 DocVQA evaluation prompts: answers become column values and are scored
    /// against short spans, and without it the chat models answer in sentences. Florence-2
    /// gets its task tokens: `<OCR>`, and the DocVQA fine-tune's `<DocVQA>` prefix (trained on
    /// `"<DocVQA>" + question`, no space, no instruction).
    pub fn default_prompts(self) -> DefaultPrompts {
        match self {
            Family::Idefics2 | Family::Idefics3 | Family::Idefics1 => DefaultPrompts {
                ocr: "Transcribe all the text on this page.",
                question: "{question}\nGive a very brief answer.",
            },
            Family::Florence2 => DefaultPrompts {
                ocr: "<OCR>",
                question: "<DocVQA>{question}",
            },
        }
    }

    /// The family of the checkpoint in `dir`, from its `config.json`.
    pub fn of_checkpoint(dir: &Path) -> Result<Family, ModelLoadError> {
        let found = model_type(dir).map_err(ModelLoadError::Checkpoint)?;
        Family::ALL
            .iter()
            .copied()
            .find(|f| f.model_type() == found)
            .ok_or_else(|| ModelLoadError::UnsupportedFamily {
                path: dir.join("config.json"),
                found,
            })
    }
}

/// The supported `model_type`s, for messages.
fn supported_model_types() -> String {
    let names: Vec<&str> = Family::ALL.iter().map(|f| f.model_type()).collect();
    names.join(", ")
}

/// Why the model could not be loaded. Messages name the file or device, not the pipeline key:
/// [`ModelLoadError::key`] says which key is at fault, for the commands that have one.
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    /// The checkpoint could not be fetched (unknown hub repository or revision, no token for a
    /// gated one, offline without a cache, hub or bucket unreachable); the error says which.
    #[error(transparent)]
    Source(#[from] HubError),
    /// The checkpoint is missing or unreadable: a configuration problem.
    #[error(transparent)]
    Checkpoint(LoadError),
    /// The checkpoint is of a family docpipe does not run: a configuration problem.
    #[error(
        "{}: unsupported model_type {found:?} (supported: {})",
        path.display(),
        supported_model_types()
    )]
    UnsupportedFamily {
        /// The checkpoint's `config.json`.
        path: PathBuf,
        /// Its `model_type`.
        found: String,
    },
    /// No usable device: the run cannot proceed on this machine.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// `cuda:all` found no GPU.
    #[error("cuda:all: no usable CUDA device")]
    NoCudaDevice,
    /// A device group was given for a family whose replicas run on one device.
    #[error(
        "{group}: a {family} replica runs on one device; list the devices as separate replicas"
    )]
    Unsplittable {
        /// The group.
        group: DeviceGroup,
        /// The family's `model_type`.
        family: &'static str,
    },
    /// The weights did not fit on, or could not be moved to, the device.
    #[error(transparent)]
    Weights(LoadError),
}

impl ModelLoadError {
    /// True when the configuration is at fault (exit 2) rather than the machine (exit 3).
    pub fn is_usage(&self) -> bool {
        match self {
            ModelLoadError::Source(e) => e.is_usage(),
            ModelLoadError::Checkpoint(_) | ModelLoadError::UnsupportedFamily { .. } => true,
            ModelLoadError::Device(e) => e.is_usage(),
            ModelLoadError::Unsplittable { .. } => true,
            ModelLoadError::NoCudaDevice | ModelLoadError::Weights(_) => false,
        }
    }

    /// The pipeline key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            ModelLoadError::Source(_)
            | ModelLoadError::Checkpoint(_)
            | ModelLoadError::UnsupportedFamily { .. } => "model.path",
            _ => "model.devices",
        }
    }
}

/// Reads `model_type` from the checkpoint's `config.json`.
fn model_type(dir: &Path) -> Result<String, LoadError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| LoadError::Json {
            path: path.clone(),
            source,
        })?;
    value
        .get("model_type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| LoadError::Invalid {
            path,
            message: "no \"model_type\"".into(),
        })
}

impl LoadedModel {
    /// The family of its replicas.
    pub fn family(&self) -> Family {
        match self {
            LoadedModel::Idefics2(_) => Family::Idefics2,
            LoadedModel::Idefics3(_) => Family::Idefics3,
            LoadedModel::Florence2(_) => Family::Florence2,
            LoadedModel::Idefics1(_) => Family::Idefics1,
        }
    }
}

/// Resolves `model.path` (fetching what is missing), then loads one replica per device entry
/// (`cuda:all` expands to every visible GPU).
pub fn load(config: &ModelConfig) -> Result<LoadedModel, ModelLoadError> {
    load_resolved(&docpipe_hub::resolve(&config.path)?, config)
}

/// [`load`] of a checkpoint `config.path` was already resolved to.
pub fn load_resolved(
    checkpoint: &Checkpoint,
    config: &ModelConfig,
) -> Result<LoadedModel, ModelLoadError> {
    match Family::of_checkpoint(checkpoint.dir())? {
        Family::Idefics2 => {
            load_replicas::<Idefics2Model>(checkpoint, config).map(LoadedModel::Idefics2)
        }
        Family::Idefics3 => {
            load_replicas::<Idefics3Model>(checkpoint, config).map(LoadedModel::Idefics3)
        }
        Family::Florence2 => {
            load_replicas::<Florence2Model>(checkpoint, config).map(LoadedModel::Florence2)
        }
        Family::Idefics1 => {
            load_replicas::<Idefics1Model>(checkpoint, config).map(LoadedModel::Idefics1)
        }
    }
}

/// A family's model as docpipe loads it: from a checkpoint folder, then renamed after the
/// checkpoint's origin when it has one.
pub trait Loadable: VisionLanguageModel + Sized {
    /// The family's `model_type`, for messages.
    const MODEL_TYPE: &'static str;
    /// Whether one replica can span several devices (a [`Placement`] of more than one).
    const SPLITS: bool;
    /// Loads the checkpoint in `dir` onto the devices of `placement`.
    fn load_dir(
        dir: &Path,
        placement: &Placement,
        dtype: candle_core::DType,
    ) -> Result<Self, LoadError>;
    /// The same model under another `model_id`.
    fn named(self, model_id: String) -> Self;
}

impl<F: ModelFamily> Loadable for IdeficsModel<F> {
    const MODEL_TYPE: &'static str = <F::Config as docpipe_vlm::config::FamilyConfig>::MODEL_TYPE;
    const SPLITS: bool = true;
    fn load_dir(
        dir: &Path,
        placement: &Placement,
        dtype: candle_core::DType,
    ) -> Result<Self, LoadError> {
        IdeficsModel::load(dir, placement, dtype)
    }
    fn named(self, model_id: String) -> Self {
        self.with_model_id(model_id)
    }
}

/// Florence-2 (0.23 B parameters) fits any device whole.
impl Loadable for Florence2Model {
    const MODEL_TYPE: &'static str = docpipe_florence2::config::MODEL_TYPE;
    const SPLITS: bool = false;
    fn load_dir(
        dir: &Path,
        placement: &Placement,
        dtype: candle_core::DType,
    ) -> Result<Self, LoadError> {
        Florence2Model::load(dir, placement.first(), dtype)
    }
    fn named(self, model_id: String) -> Self {
        self.with_model_id(model_id)
    }
}

/// idefics-80b needs several GPUs: its decoder layers split over a group.
impl Loadable for Idefics1Model {
    const MODEL_TYPE: &'static str = docpipe_idefics1::MODEL_TYPE;
    const SPLITS: bool = true;
    fn load_dir(
        dir: &Path,
        placement: &Placement,
        dtype: candle_core::DType,
    ) -> Result<Self, LoadError> {
        Idefics1Model::load(dir, placement, dtype)
    }
    fn named(self, model_id: String) -> Self {
        self.with_model_id(model_id)
    }
}

/// One model from a resolved checkpoint on the devices of `group`, named in the `model` column
/// by its origin when it has one (`org/name@<commit>`, a bucket URL and a hash of its etags),
/// else by its folder and a hash of its files. `docpipe generate` loads through this too.
pub fn load_model<M: Loadable>(
    checkpoint: &Checkpoint,
    group: &DeviceGroup,
    dtype: candle_core::DType,
) -> Result<M, ModelLoadError> {
    if group.is_split() && !M::SPLITS {
        return Err(ModelLoadError::Unsplittable {
            group: group.clone(),
            family: M::MODEL_TYPE,
        });
    }
    let placement = candle_placement(group)?;
    let model = M::load_dir(checkpoint.dir(), &placement, dtype).map_err(|e| match e {
        LoadError::Device(_) => ModelLoadError::Weights(e),
        other => ModelLoadError::Checkpoint(other),
    })?;
    Ok(match checkpoint.model_id() {
        Some(id) => model.named(id.to_owned()),
        None => model,
    })
}

/// One replica of a family's model per `model.devices` entry (`cuda:all` expanded).
fn load_replicas<M: Loadable>(
    checkpoint: &Checkpoint,
    config: &ModelConfig,
) -> Result<Vec<Replica<M>>, ModelLoadError> {
    let dtype = candle_dtype(config.dtype);
    let mut replicas = Vec::new();
    for group in expand_devices(&config.devices, |ordinal| {
        candle_device(DeviceSpec::Cuda(ordinal)).is_ok()
    })? {
        let model = load_model::<M>(checkpoint, &group, dtype)?;
        tracing::info!(device = %group, model = %model.model_id(), "model replica loaded");
        replicas.push(Replica {
            device: group,
            model: Arc::new(model),
        });
    }
    Ok(replicas)
}

/// The devices of each replica; `cuda:all` becomes one replica on each of `cuda:0..n` for the
/// ordinals `available` accepts (probed in order until the first that is not).
fn expand_devices(
    groups: &[DeviceGroup],
    available: impl Fn(usize) -> bool,
) -> Result<Vec<DeviceGroup>, ModelLoadError> {
    let mut replicas = Vec::new();
    for group in groups {
        if group.devices() == [DeviceSpec::CudaAll] {
            let count = (0..).take_while(|&i| available(i)).count();
            if count == 0 {
                return Err(ModelLoadError::NoCudaDevice);
            }
            replicas.extend((0..count).map(|i| DeviceSpec::Cuda(i).into()));
        } else {
            replicas.push(group.clone());
        }
    }
    Ok(replicas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_all_expands_to_the_visible_devices() {
        let groups: Vec<DeviceGroup> = ["cpu", "cuda:all", "cuda:7", "cuda:2+cuda:3"]
            .iter()
            .map(|g| g.parse().unwrap())
            .collect();
        let expanded: Vec<String> = expand_devices(&groups, |i| i < 2)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            expanded,
            ["cpu", "cuda:0", "cuda:1", "cuda:7", "cuda:2+cuda:3"]
        );
        assert!(matches!(
            expand_devices(&[DeviceSpec::CudaAll.into()], |_| false),
            Err(ModelLoadError::NoCudaDevice)
        ));
    }

    #[test]
    fn unsupported_families_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llava"}"#).unwrap();
        let config =
            crate::test_pipeline::test_config(&[format!("model.path={}", dir.path().display())]);
        let Err(error @ ModelLoadError::UnsupportedFamily { .. }) = load(&config.model) else {
            panic!("a llava checkpoint loaded");
        };
        let message = error.to_string();
        assert!(
            message.contains("llava") && message.contains("idefics2"),
            "{message}"
        );
        let missing = dir.path().join("nothing");
        assert!(matches!(
            Family::of_checkpoint(&missing),
            Err(ModelLoadError::Checkpoint(_))
        ));
    }
}
