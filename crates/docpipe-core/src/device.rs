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

/// The devices of one replica, as one entry of `model.devices` (or `--device`) names them: one
/// device (`cuda:0`), or a group joined by `+` (`cuda:0+cuda:1+cuda:2+cuda:3`) over which the
/// replica's layers are split in order, for a model that does not fit one GPU (docs/pipeline.md,
/// "A replica across several GPUs"). `cuda:all` stands alone: it is one replica per GPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceGroup(Vec<DeviceSpec>);

/// A `model.devices` entry that is not a device or a valid group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceGroupError {
    /// One of its devices is unknown.
    #[error(transparent)]
    Unknown(#[from] UnknownDevice),
    /// `cuda:all` inside a group.
    #[error("{0:?}: cuda:all cannot be part of a group; name the GPUs (cuda:0+cuda:1)")]
    AllInGroup(String),
    /// A GPU named twice in one group.
    #[error("{0:?}: a group names each GPU once")]
    Repeated(String),
}

impl DeviceGroup {
    /// A replica on one device.
    pub fn single(device: DeviceSpec) -> Self {
        DeviceGroup(vec![device])
    }

    /// Its devices, in layer order (never empty).
    pub fn devices(&self) -> &[DeviceSpec] {
        &self.0
    }

    /// Whether it spans more than one device.
    pub fn is_split(&self) -> bool {
        self.0.len() > 1
    }
}

impl From<DeviceSpec> for DeviceGroup {
    fn from(device: DeviceSpec) -> Self {
        DeviceGroup::single(device)
    }
}

impl fmt::Display for DeviceGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, device) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{device}")?;
        }
        Ok(())
    }
}

impl FromStr for DeviceGroup {
    type Err = DeviceGroupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let devices = s
            .split('+')
            .map(|d| d.trim().parse())
            .collect::<Result<Vec<DeviceSpec>, _>>()?;
        if devices.len() > 1 {
            if devices.contains(&DeviceSpec::CudaAll) {
                return Err(DeviceGroupError::AllInGroup(s.to_owned()));
            }
            // The CPU may repeat: a group of `cpu` devices runs the split code path in tests.
            let gpus: Vec<_> = devices.iter().filter(|d| **d != DeviceSpec::Cpu).collect();
            if (1..gpus.len()).any(|i| gpus[..i].contains(&gpus[i])) {
                return Err(DeviceGroupError::Repeated(s.to_owned()));
            }
        }
        Ok(DeviceGroup(devices))
    }
}

impl<'de> Deserialize<'de> for DeviceGroup {
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
    fn groups_round_trip_and_bad_ones_say_why() {
        for text in ["cpu", "cuda:all", "cuda:0+cuda:1+cuda:2", "cpu+cpu"] {
            assert_eq!(text.parse::<DeviceGroup>().unwrap().to_string(), text);
        }
        let group: DeviceGroup = "cuda:2+cuda:3".parse().unwrap();
        assert_eq!(group.devices(), [DeviceSpec::Cuda(2), DeviceSpec::Cuda(3)]);
        assert!(group.is_split() && !DeviceGroup::single(DeviceSpec::Cpu).is_split());
        assert!(matches!(
            "cuda:0+cuda:all".parse::<DeviceGroup>(),
            Err(DeviceGroupError::AllInGroup(_))
        ));
        assert!(matches!(
            "cuda:1+cuda:0+cuda:1".parse::<DeviceGroup>(),
            Err(DeviceGroupError::Repeated(_))
        ));
        assert!(matches!(
            "cuda:0+tpu".parse::<DeviceGroup>(),
            Err(DeviceGroupError::Unknown(_))
        ));
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
