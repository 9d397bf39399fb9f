//! Devices and dtypes from docpipe's specs, and device failures as the pool's `ModelError`s.

use candle_core::{DType, Device};
use docpipe_core::{DeviceGroup, DeviceSpec, Dtype, ModelError};

use crate::error::DeviceError;
use crate::placement::Placement;

/// The candle device of one replica. `cuda:all` is a pipeline-level spec, expanded into
/// `cuda:N` devices before any model is loaded.
pub fn candle_device(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::CudaAll => Err(DeviceError::NotExpanded),
        DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(DeviceError::NoCudaBuild(spec)),
        DeviceSpec::Cuda(ordinal) => {
            Device::new_cuda(ordinal).map_err(|source| DeviceError::Unavailable {
                device: spec,
                source,
            })
        }
    }
}

/// The devices of one replica, opened in layer order.
pub fn candle_placement(group: &DeviceGroup) -> Result<Placement, DeviceError> {
    let devices = group
        .devices()
        .iter()
        .map(|&spec| candle_device(spec))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Placement::new(devices))
}

/// The candle dtype of weights and activations.
pub fn candle_dtype(dtype: Dtype) -> DType {
    match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::Bf16 => DType::BF16,
    }
}

/// A failed tensor operation as the pool sees it: out of memory (the pool splits the batch)
/// or a device failure (the replica retires).
pub fn model_error(e: candle_core::Error) -> ModelError {
    let message = e.to_string();
    if message.to_lowercase().contains("out of memory") {
        ModelError::OutOfMemory(message)
    } else {
        ModelError::Device(message)
    }
}
