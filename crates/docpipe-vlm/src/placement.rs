//! Where the parts of one replica live when it spans several devices (a pipeline split, for
//! models such as idefics-80b that do not fit one GPU).
//!
//! The devices are in layer order: the input side (embeddings, vision tower, connector or
//! resampler) lives on the first, the decoder layers are cut into contiguous runs of nearly
//! equal length, one run per device, and the output side (final norm, `lm_head`) lives on the
//! last. Hidden states cross a device boundary once per run, so a forward pass moves
//! `devices - 1` activations, never weights. A single device is the one-entry case, so every
//! family runs the same code whether split or not.

use candle_core::Device;

/// The devices of one replica, in layer order.
#[derive(Debug, Clone)]
pub struct Placement {
    devices: Vec<Device>,
}

impl Placement {
    /// A replica on one device.
    pub fn single(device: &Device) -> Self {
        Placement {
            devices: vec![device.clone()],
        }
    }

    /// A replica split over `devices`, in order.
    ///
    /// # Panics
    /// When `devices` is empty: a replica runs somewhere.
    pub fn new(devices: Vec<Device>) -> Self {
        assert!(!devices.is_empty(), "a placement needs at least one device");
        Placement { devices }
    }

    /// Its devices, in layer order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The device of the input side: embeddings, vision tower, connector.
    pub fn first(&self) -> &Device {
        &self.devices[0]
    }

    /// The device of the output side: final norm and `lm_head`.
    pub fn last(&self) -> &Device {
        &self.devices[self.devices.len() - 1]
    }

    /// The device of decoder layer `layer` of `layers`.
    pub fn layer(&self, layer: usize, layers: usize) -> &Device {
        &self.devices[self.stage_of(layer, layers)]
    }

    /// Which device (index into [`Placement::devices`]) runs decoder layer `layer` of
    /// `layers`: contiguous runs whose lengths differ by at most one, the longer runs first.
    pub fn stage_of(&self, layer: usize, layers: usize) -> usize {
        let stages = self.devices.len();
        let (base, extra) = (layers / stages, layers % stages);
        // The first `extra` stages hold `base + 1` layers each.
        let long = extra * (base + 1);
        if layer < long {
            layer / (base + 1)
        } else {
            extra + (layer - long) / base.max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(devices: usize, layers: usize) -> Vec<usize> {
        let placement = Placement::new(vec![Device::Cpu; devices]);
        (0..layers).map(|l| placement.stage_of(l, layers)).collect()
    }

    #[test]
    fn layers_are_cut_into_contiguous_nearly_equal_runs() {
        assert_eq!(stages(1, 3), [0, 0, 0]);
        assert_eq!(stages(2, 4), [0, 0, 1, 1]);
        assert_eq!(stages(3, 8), [0, 0, 0, 1, 1, 1, 2, 2]);
        assert_eq!(stages(4, 80).iter().filter(|&&s| s == 3).count(), 20);
        // More devices than layers: the last devices hold none.
        assert_eq!(stages(4, 2), [0, 1]);
    }
}
