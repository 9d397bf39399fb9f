//! Where a model replica runs and in which precision, as users write it (`--device cuda:0`,
//! `model.devices = ["cuda:all"]`, `model.dtype = "bf16"`).
//!
//! These are parsed once, at the edge (command line or pipeline file), and travel as values
//! down to the model crates, which turn them into their framework's device and dtype. Keeping
//! them here, free of any tensor library, lets the pipeline and the CLI name devices without
//! depending on how a model family computes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// One device as written in a pipeline file or on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU (`cpu`).
    Cpu,
    /// One GPU by CUDA ordinal (`cuda:N`).
    Cuda(usize),
    /// Every visible GPU: expanded into `Cuda(0..n)` when the model is loaded.
    CudaAll,
}

/// A device string that is none of `cpu`, `cuda:N`, `cuda:all`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device {0:?}: expected \"cpu\", \"cuda:N\" or \"cuda:all\"")]
pub struct UnknownDevice(pub String);

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::CudaAll => f.write_str("cuda:all"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "cuda:all" => Ok(DeviceSpec::CudaAll),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| UnknownDevice(s.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The precision of weights and activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit floats (`f32`), the default: use it on the CPU, where candle's bf16 matmul is slow.
    #[default]
    F32,
    /// IEEE half precision (`f16`); overflows in idefics2-8b's wide MLPs, so prefer bf16 there.
    F16,
    /// bfloat16 (`bf16`): half the memory of f32, the precision to run on a GPU.
    Bf16,
}

/// A dtype string that is none of `f32`, `f16`, `bf16`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dtype {0:?}: expected f32, bf16 or f16")]
pub struct UnknownDtype(pub String);

impl Dtype {
    /// The name users write.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dtype {
    type Err = UnknownDtype;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Dtype::F32, Dtype::F16, Dtype::Bf16]
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownDtype(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_round_trip_and_unknown_ones_are_named() {
        for text in ["cpu", "cuda:3", "cuda:all"] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap().to_string(), text);
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::CudaAll));
        let error = "gpu0".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(error.contains("\"gpu0\""), "{error}");
    }

    #[test]
    fn dtypes_round_trip_and_unknown_ones_are_named() {
        for text in ["f32", "f16", "bf16"] {
            assert_eq!(text.parse::<Dtype>().unwrap().to_string(), text);
        }
        let error = "fp8".parse::<Dtype>().unwrap_err().to_string();
        assert!(error.contains("fp8"), "{error}");
    }
}
