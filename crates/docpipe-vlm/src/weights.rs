//! Memory-mapped safetensors access (one file or shards listed in
//! `model.safetensors.index.json`) with errors that name the file holding a tensor, plus the
//! checkpoint fingerprint used in `model_id`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::config::read_json;
use crate::error::LoadError;

/// The tensors of a checkpoint, memory-mapped: loading converts to the requested dtype one
/// tensor at a time, never holding a second copy of a whole file.
pub struct Weights {
    vb: VarBuilder<'static>,
    /// Which file each tensor lives in, for error messages.
    file_of: HashMap<String, PathBuf>,
    /// The file named when a tensor is missing altogether.
    listing: PathBuf,
    /// Bytes that identify the weights: the index file, or the single file's header.
    fingerprint: Vec<u8>,
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
            vb,
            file_of,
            listing,
            fingerprint,
        })
    }

    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.file_of.contains_key(name)
    }

    /// Loads a tensor, checking its shape, converted to the model dtype.
    pub fn get(&self, name: &str, shape: impl Into<Shape>) -> Result<Tensor, LoadError> {
        let shape = shape.into();
        let Some(file) = self.file_of.get(name) else {
            return Err(weights_error(
                &self.listing,
                format!("missing tensor {name} (expected shape {shape:?})"),
            ));
        };
        let tensor = self
            .vb
            .get_unchecked(name)
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
        &self.fingerprint
    }
}
