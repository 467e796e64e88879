//! `--device cpu|cuda[:N[,M,...]]`: where a command computes.
//!
//! The CPU is burn's flex backend, always built. CUDA needs the `cuda` cargo feature (burn's
//! CubeCL CUDA backend, which loads the NVIDIA driver at run time) and a GPU; asking for it
//! without either is an error that says which is missing, never a panic deep inside burn.
//!
//! With the `cuda` feature burn's `Device::default()` means CUDA device 0 even where there is
//! no GPU, so every command names its device through [`DeviceSpec`] instead.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, ensure};
use burn::tensor::Device;

/// A `--device` value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// burn's flex backend on the CPU (the default).
    #[default]
    Cpu,
    /// These CUDA devices, by index; several mean data-parallel training.
    Cuda(Vec<usize>),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use cpu, cuda (device 0), cuda:N, or cuda:N,M,... for several GPUs";
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(vec![0])),
            other => {
                let Some(list) = other.strip_prefix("cuda:") else {
                    return Err(format!("unknown device `{other}`: {usage}"));
                };
                let mut indices = Vec::new();
                for part in list.split(',') {
                    let index: usize = part.trim().parse().map_err(|_| {
                        format!("`{part}` in `{other}` is not a device number: {usage}")
                    })?;
                    if indices.contains(&index) {
                        return Err(format!("`{other}` names cuda:{index} twice"));
                    }
                    indices.push(index);
                }
                Ok(Self::Cuda(indices))
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(indices) => {
                let list: Vec<String> = indices.iter().map(usize::to_string).collect();
                write!(f, "cuda:{}", list.join(","))
            }
        }
    }
}

impl DeviceSpec {
    /// The devices, checked to exist (without autodiff).
    pub fn devices(&self) -> Result<Vec<Device>> {
        match self {
            Self::Cpu => Ok(vec![Device::flex()]),
            Self::Cuda(indices) => cuda_devices(indices),
        }
    }

    /// The first device, and the others for data-parallel replicas.
    pub fn split(&self) -> Result<(Device, Vec<Device>)> {
        let mut devices = self.devices()?;
        ensure!(!devices.is_empty(), "--device {self} names no device");
        let first = devices.remove(0);
        Ok((first, devices))
    }

    /// The one device of a command that runs on one; an error for a list of several.
    pub fn single(&self) -> Result<Device> {
        let (first, others) = self.split()?;
        ensure!(
            others.is_empty(),
            "--device {self}: this command runs on one device (several are for `pdecay train` and `pdecay sweep` of the MLP and CNN); give one, e.g. cuda:0"
        );
        Ok(first)
    }
}

#[cfg(feature = "cuda")]
fn cuda_devices(indices: &[usize]) -> Result<Vec<Device>> {
    use burn::tensor::DeviceType;
    // enumerate() returns no device, instead of panicking, without a driver or a GPU
    let available = Device::enumerate(DeviceType::Cuda).len();
    ensure!(
        available > 0,
        "--device cuda: no CUDA GPU found (no NVIDIA driver, libcuda.so not found, or no GPU in this machine); use --device cpu"
    );
    indices
        .iter()
        .map(|&i| {
            ensure!(
                i < available,
                "--device cuda:{i}: this machine has {available} CUDA device(s), cuda:0 to cuda:{}",
                available - 1
            );
            Ok(Device::cuda(i))
        })
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn cuda_devices(_indices: &[usize]) -> Result<Vec<Device>> {
    anyhow::bail!(
        "--device cuda: this pdecay was built without CUDA; build it with `cargo build --release --features cuda` (see the README's GPU section), or use --device cpu"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_values_parse() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(vec![0])));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(vec![3])));
        assert_eq!("cuda:0, 1".parse(), Ok(DeviceSpec::Cuda(vec![0, 1])));
        assert_eq!(DeviceSpec::Cuda(vec![0, 2]).to_string(), "cuda:0,2");
        for (bad, needle) in [
            ("gpu", "unknown device"),
            ("cuda:x", "not a device number"),
            ("cuda:", "not a device number"),
            ("cuda:1,1", "twice"),
        ] {
            let message = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(message.contains(needle), "{bad}: {message}");
        }
    }

    #[test]
    fn the_cpu_is_one_device_and_a_list_is_refused_where_one_is_needed() {
        assert_eq!(DeviceSpec::Cpu.devices().unwrap(), [Device::flex()]);
        assert_eq!(DeviceSpec::Cpu.single().unwrap(), Device::flex());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_get_it() {
        let message = DeviceSpec::Cuda(vec![0]).single().unwrap_err().to_string();
        assert!(message.contains("--features cuda"), "{message}");
        assert!(message.contains("--device cpu"), "{message}");
    }
}
