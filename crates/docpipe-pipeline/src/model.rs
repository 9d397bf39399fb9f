//! Loading `[model]`: one replica per device, dispatched on the checkpoint's `model_type`.
//!
//! This is the only place that names model families; everything downstream is generic over
//! `VisionLanguageModel`. A new family adds a variant to [`LoadedModel`] and an arm below.

use std::path::Path;
use std::sync::Arc;

use docpipe_idefics2::{device_from_spec, dtype_from_name, Idefics2Model, LoadError};

use crate::config::{DeviceSpec, ModelConfig};
use crate::pool::Replica;

/// The replicas of a loaded model, by family.
pub enum LoadedModel {
    Idefics2(Vec<Replica<Idefics2Model>>),
}

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelLoadError {
    /// The checkpoint is missing, unreadable or of an unsupported family: a configuration
    /// problem (`model.path`).
    #[error("model.path {path}: {message}")]
    Checkpoint { path: String, message: String },
    /// No usable device: the run cannot proceed on this machine.
    #[error("model.devices: {0}")]
    Device(String),
}

/// The model families `model.path` may hold, by `config.json` `model_type`.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["idefics2"];

/// Reads `model_type` from the checkpoint's `config.json`.
pub fn model_type(dir: &Path) -> Result<String, ModelLoadError> {
    let path = dir.join("config.json");
    let checkpoint = |message: String| ModelLoadError::Checkpoint {
        path: dir.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| checkpoint(format!("{}: {e}", path.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| checkpoint(format!("{}: invalid JSON: {e}", path.display())))?;
    value
        .get("model_type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| checkpoint(format!("{}: no \"model_type\"", path.display())))
}

/// Loads one replica per device entry (`cuda:all` expands to every visible GPU).
pub fn load(config: &ModelConfig) -> Result<LoadedModel, ModelLoadError> {
    let dir = Path::new(&config.path);
    match model_type(dir)?.as_str() {
        "idefics2" => load_idefics2(dir, config).map(LoadedModel::Idefics2),
        other => Err(ModelLoadError::Checkpoint {
            path: config.path.clone(),
            message: format!(
                "unsupported model_type {other:?} (supported: {})",
                SUPPORTED_MODEL_TYPES.join(", ")
            ),
        }),
    }
}

fn load_idefics2(
    dir: &Path,
    config: &ModelConfig,
) -> Result<Vec<Replica<Idefics2Model>>, ModelLoadError> {
    let dtype = dtype_from_name(config.dtype.as_str()).map_err(ModelLoadError::Device)?;
    let mut replicas = Vec::new();
    for spec in expand_devices(&config.devices, |ordinal| {
        device_from_spec(&format!("cuda:{ordinal}")).is_ok()
    })? {
        let device = device_from_spec(&spec).map_err(ModelLoadError::Device)?;
        let model = Idefics2Model::load(dir, &device, dtype).map_err(|e| match e {
            LoadError::Device(message) => ModelLoadError::Device(message),
            other => ModelLoadError::Checkpoint {
                path: dir.display().to_string(),
                message: other.to_string(),
            },
        })?;
        tracing::info!(device = %spec, model = %docpipe_core::VisionLanguageModel::model_id(&model), "model replica loaded");
        replicas.push(Replica {
            device: spec,
            model: Arc::new(model),
        });
    }
    Ok(replicas)
}

/// The device of each replica; `cuda:all` becomes `cuda:0..n` for the ordinals `available`
/// accepts (probed in order until the first that is not).
fn expand_devices(
    specs: &[DeviceSpec],
    available: impl Fn(usize) -> bool,
) -> Result<Vec<String>, ModelLoadError> {
    let mut devices = Vec::new();
    for spec in specs {
        match spec {
            DeviceSpec::CudaAll => {
                let count = (0..).take_while(|&i| available(i)).count();
                if count == 0 {
                    return Err(ModelLoadError::Device(
                        "cuda:all: no usable CUDA device".into(),
                    ));
                }
                devices.extend((0..count).map(|i| format!("cuda:{i}")));
            }
            other => devices.push(other.to_string()),
        }
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_all_expands_to_the_visible_devices() {
        let specs = [DeviceSpec::Cpu, DeviceSpec::CudaAll, DeviceSpec::Cuda(7)];
        assert_eq!(
            expand_devices(&specs, |i| i < 2).unwrap(),
            vec!["cpu", "cuda:0", "cuda:1", "cuda:7"]
        );
        assert!(matches!(
            expand_devices(&[DeviceSpec::CudaAll], |_| false),
            Err(ModelLoadError::Device(_))
        ));
    }

    #[test]
    fn unsupported_families_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type": "llava"}"#).unwrap();
        let config = crate::config::PipelineConfig::load(
            "demo",
            crate::config::DEMO_PIPELINE,
            &[format!("model.path={}", dir.path().display())],
        )
        .unwrap();
        let Err(ModelLoadError::Checkpoint { message, .. }) = load(&config.model) else {
            panic!("a llava checkpoint loaded");
        };
        assert!(
            message.contains("llava") && message.contains("idefics2"),
            "{message}"
        );
        let missing = dir.path().join("nothing");
        assert!(matches!(
            model_type(&missing),
            Err(ModelLoadError::Checkpoint { .. })
        ));
    }
}
