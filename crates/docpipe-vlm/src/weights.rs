//! Memory-mapped safetensors access (one file or shards listed in
//! `model.safetensors.index.json`) through prefixed views, the way candle-nn's `VarBuilder`
//! is used (`w.pp("self_attn").pp("q_proj")`), with errors that name the full tensor name and
//! the file holding it, plus the checkpoint fingerprint used in `model_id`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::config::read_json;
use crate::error::LoadError;

/// The tensors of a checkpoint, memory-mapped: loading converts to the requested dtype one
/// tensor at a time, never holding a second copy of a whole file.
struct Checkpoint {
    /// Which file each tensor lives in, for error messages.
    file_of: HashMap<String, PathBuf>,
    /// The file named when a tensor is missing altogether.
    listing: PathBuf,
    /// Bytes that identify the weights: the index file, or the single file's header.
    fingerprint: Vec<u8>,
}

/// A view of a checkpoint's tensors under a name prefix. Component constructors take the view
/// of their own subtree (`model.text_model.layers.3`) and name tensors relative to it.
#[derive(Clone)]
pub struct Weights {
    checkpoint: Arc<Checkpoint>,
    /// The mapped files, loading onto this view's device (see [`Weights::on`]).
    vb: VarBuilder<'static>,
    prefix: String,
}

fn weights_error(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError::Weights {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The JSON header of a safetensors file (length prefix included), read without mapping the
/// rest of the file.
fn safetensors_header(path: &Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        weights_error(
            path,
            "not a safetensors file (shorter than its 8-byte header length)",
        )
    })?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(weights_error(
            path,
            "not a safetensors file (header length out of range)",
        ));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|_| weights_error(path, "corrupt safetensors file (truncated header)"))?;
    Ok([len.to_vec(), header].concat())
}

impl Weights {
    /// Maps the checkpoint in `dir` (`model.safetensors`, or the shards of
    /// `model.safetensors.index.json`); tensors load as `dtype` on `device`. The view has no
    /// prefix.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self, LoadError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (files, file_of, listing, fingerprint) = if single.exists() {
            let header = safetensors_header(&single)?;
            let names: HashMap<String, serde_json::Value> = serde_json::from_slice(&header[8..])
                .map_err(|e| weights_error(&single, format!("corrupt safetensors header: {e}")))?;
            let file_of = names
                .into_keys()
                .filter(|k| k != "__metadata__")
                .map(|k| (k, single.clone()))
                .collect();
            (vec![single.clone()], file_of, single.clone(), header)
        } else if index.exists() {
            let bytes = std::fs::read(&index).map_err(|source| LoadError::Io {
                path: index.clone(),
                source,
            })?;
            let map = read_json(&index)?;
            let weight_map = map
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| weights_error(&index, "no weight_map object"))?;
            let mut file_of = HashMap::new();
            let mut files: Vec<PathBuf> = Vec::new();
            for (name, file) in weight_map {
                let file = file.as_str().ok_or_else(|| {
                    weights_error(
                        &index,
                        format!("weight_map entry {name} is not a file name"),
                    )
                })?;
                let path = dir.join(file);
                if !files.contains(&path) {
                    files.push(path.clone());
                }
                file_of.insert(name.clone(), path);
            }
            for file in &files {
                if !file.exists() {
                    return Err(weights_error(
                        file,
                        "missing (listed in model.safetensors.index.json)",
                    ));
                }
            }
            (files, file_of, index.clone(), bytes)
        } else {
            return Err(weights_error(
                dir,
                "no model.safetensors or model.safetensors.index.json in the checkpoint directory",
            ));
        };
        for file in &files {
            // Parsing each file alone pins a corrupt header or truncated data on its file.
            // SAFETY: the mapping is read-only; checkpoint files are not modified while loaded.
            unsafe { candle_core::safetensors::MmapedSafetensors::new(file) }
                .map_err(|e| weights_error(file, format!("corrupt safetensors file: {e}")))?;
        }
        // SAFETY: as above.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }
            .map_err(|e| weights_error(&listing, e.to_string()))?;
        Ok(Weights {
            checkpoint: Arc::new(Checkpoint {
                file_of,
                listing,
                fingerprint,
            }),
            vb,
            prefix: String::new(),
        })
    }

    /// The view of the subtree `name` (dots allowed) under this one.
    pub fn pp(&self, name: impl std::fmt::Display) -> Weights {
        Weights {
            checkpoint: self.checkpoint.clone(),
            vb: self.vb.clone(),
            prefix: self.path(&name.to_string()),
        }
    }

    /// The same view, its tensors loading onto `device`: the parts of a replica that spans
    /// several devices load from one mapping (see [`crate::placement`]).
    pub fn on(&self, device: &Device) -> Weights {
        Weights {
            checkpoint: self.checkpoint.clone(),
            vb: self.vb.clone().set_device(device.clone()),
            prefix: self.prefix.clone(),
        }
    }

    /// The full tensor name of `name` in this view.
    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The dtype tensors load as.
    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    /// The device tensors load onto.
    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    /// Whether the checkpoint has the tensor `name` of this view.
    pub fn contains(&self, name: &str) -> bool {
        self.checkpoint.file_of.contains_key(&self.path(name))
    }

    /// Loads the tensor `name` of this view, checking its shape, converted to the model dtype.
    /// Errors give the full tensor name and the file that holds it (or the listing when no
    /// file does).
    pub fn get(&self, name: &str, shape: impl Into<Shape>) -> Result<Tensor, LoadError> {
        let shape = shape.into();
        let name = self.path(name);
        let checkpoint = &self.checkpoint;
        let Some(file) = checkpoint.file_of.get(&name) else {
            return Err(weights_error(
                &checkpoint.listing,
                format!("missing tensor {name} (expected shape {shape:?})"),
            ));
        };
        let tensor = self
            .vb
            .get_unchecked(&name)
            .map_err(|e| weights_error(file, format!("tensor {name}: {e}")))?;
        if tensor.shape() != &shape {
            return Err(weights_error(
                file,
                format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    tensor.dims()
                ),
            ));
        }
        Ok(tensor)
    }

    /// The bytes that identify these weights (index file or safetensors header).
    pub fn fingerprint(&self) -> &[u8] {
        &self.checkpoint.fingerprint
    }

    /// The `model` column of a checkpoint loaded from a local folder: the folder's name and a
    /// short hash of its `config.json` bytes and these weights' fingerprint. (A checkpoint
    /// fetched from the hub or a bucket is named by its origin instead, see
    /// `IdeficsModel::with_model_id`.)
    pub fn model_id(&self, dir: &Path, config_bytes: &[u8]) -> String {
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_string());
        let hash = docpipe_core::fnv1a64(&[config_bytes, self.fingerprint()]);
        format!("{name}@{:08x}", hash >> 32)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A checkpoint of two shards and an index, one tensor per shard.
    fn sharded(dir: &Path) {
        let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let shard = |name: &str, file: &str, t: &Tensor| {
            let tensors = HashMap::from([(name.to_string(), t.clone())]);
            candle_core::safetensors::save(&tensors, dir.join(file)).unwrap();
        };
        shard("model.layers.0.proj.weight", "a.safetensors", &a);
        shard("model.norm.weight", "b.safetensors", &b);
        let index = serde_json::json!({"weight_map": {
            "model.layers.0.proj.weight": "a.safetensors",
            "model.norm.weight": "b.safetensors",
        }});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }

    #[test]
    fn views_name_tensors_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        sharded(dir.path());
        let w = Weights::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let layer = w.pp("model").pp("layers.0");
        assert!(layer.contains("proj.weight"));
        assert_eq!(
            layer.pp("proj").get("weight", (2, 3)).unwrap().dims(),
            &[2, 3]
        );
        assert!(w.pp("model").get("norm.weight", 4).is_ok());
        let moved = w.pp("model").on(&Device::Cpu);
        assert!(moved.device().same_device(&Device::Cpu));
        assert!(moved.pp("layers.0").contains("proj.weight"));
    }

    #[test]
    fn a_misshapen_tensor_names_itself_and_its_shard() {
        let dir = tempfile::tempdir().unwrap();
        sharded(dir.path());
        let w = Weights::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let message = w
            .pp("model.layers.0")
            .pp("proj")
            .get("weight", (3, 2))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("model.layers.0.proj.weight") && message.contains("a.safetensors"),
            "{message}"
        );
        let message = w.pp("model").get("missing", 1).unwrap_err().to_string();
        assert!(
            message.contains("model.missing") && message.contains("model.safetensors.index.json"),
            "{message}"
        );
    }
}
