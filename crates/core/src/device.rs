//! Device selection from a string: `cpu` / `flex` (burn-flex, the default), `ndarray`, `wgpu`,
//! `cuda` / `cuda:N`.
//!
//! Invariant: every backend other than the CPU default sits behind a Cargo feature of the same
//! name; asking for one that the build lacks is [`CoreError::DeviceNotBuilt`], naming the feature.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::CoreError;

/// A compute device, as written on the command line or in a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// burn-flex on the CPU (the default; always built).
    #[default]
    Cpu,
    /// burn-ndarray on the CPU (feature `ndarray`).
    Ndarray,
    /// wgpu: Vulkan, Metal or WebGPU (feature `wgpu`). Without a GPU, Mesa's lavapipe.
    Wgpu,
    /// CUDA device N (feature `cuda`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "ndarray" => Ok(Self::Ndarray),
            "wgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| CoreError::UnknownDevice { given: s.into() }),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Ndarray => write!(f, "ndarray"),
            Self::Wgpu => write!(f, "wgpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    /// The Cargo feature that builds this device's backend (`None` for the default CPU).
    pub fn feature(&self) -> Option<&'static str> {
        match self {
            Self::Cpu => None,
            Self::Ndarray => Some("ndarray"),
            Self::Wgpu => Some("wgpu"),
            Self::Cuda(_) => Some("cuda"),
        }
    }

    /// Whether this build includes the backend.
    pub fn is_built(&self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Ndarray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda(_) => cfg!(feature = "cuda"),
        }
    }

    /// The burn device (without autodiff; call `.autodiff()` on it to train).
    pub fn device(&self) -> Result<Device, CoreError> {
        if !self.is_built() {
            return Err(CoreError::DeviceNotBuilt {
                device: self.to_string(),
                feature: self.feature().unwrap_or("flex"),
            });
        }
        Ok(match self {
            Self::Cpu => Device::flex(),
            // burn deprecates ndarray in favour of flex; kept for users who ask for it.
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            Self::Cuda(n) => {
                // The CUDA backend loads the driver at run time and panics without it.
                if std::env::var_os("INFALIGN_CUDA_NO_PROBE").is_none()
                    && let Some(reason) = cuda_driver_problem()
                {
                    return Err(CoreError::DeviceUnavailable {
                        device: self.to_string(),
                        reason: format!(
                            "{reason}; set INFALIGN_CUDA_NO_PROBE=1 to skip this check"
                        ),
                    });
                }
                Device::cuda(*n)
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("is_built() checked the feature"),
        })
    }

    /// Every device this build includes.
    pub fn built() -> Vec<DeviceSpec> {
        [Self::Cpu, Self::Ndarray, Self::Wgpu, Self::Cuda(0)]
            .into_iter()
            .filter(Self::is_built)
            .collect()
    }
}

/// Why the CUDA driver library cannot be loaded, as far as the files where the dynamic loader
/// would look show; `None` when it can.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn cuda_driver_problem() -> Option<String> {
    let ld_library_path: Vec<std::path::PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    let usual = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/lib/wsl/lib",
    ]
    .map(std::path::PathBuf::from);
    cuda_driver_problem_in(
        &ld_library_path,
        &usual,
        std::fs::read("/etc/ld.so.cache").ok().as_deref(),
    )
}

/// [`cuda_driver_problem`] over given places: `ld_library_path` in its order, then the `usual`
/// directories and the ld.so cache. The CUDA toolkit's `stubs` directory holds a `libcuda.so`
/// that only links programs. The CUDA bindings open `libcuda.so` before `libcuda.so.1`, and the
/// loader searches LD_LIBRARY_PATH before anything else, so when the first LD_LIBRARY_PATH
/// directory holding a `libcuda.so` is a stubs directory, the stub is loaded instead of the
/// driver (even with the driver's `libcuda.so.1` earlier on the path) and every CUDA call fails
/// (CUDA_ERROR_STUB_LIBRARY): that is a problem too.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn cuda_driver_problem_in(
    ld_library_path: &[std::path::PathBuf],
    usual: &[std::path::PathBuf],
    ld_cache: Option<&[u8]>,
) -> Option<String> {
    let names = ["libcuda.so.1", "libcuda.so"];
    let holds_driver = |d: &std::path::PathBuf| names.iter().any(|n| d.join(n).exists());
    let opened_first = ld_library_path
        .iter()
        .find(|d| d.join("libcuda.so").exists());
    if let Some(dir) = opened_first
        && dir.components().any(|c| c.as_os_str() == "stubs")
    {
        return Some(format!(
            "LD_LIBRARY_PATH names the CUDA toolkit's stub driver library ({}) before any real \
             libcuda.so: the stub can link programs but not run them \
             (CUDA_ERROR_STUB_LIBRARY); remove that directory from LD_LIBRARY_PATH",
            dir.display()
        ));
    }
    let found = ld_library_path.iter().any(holds_driver)
        || usual.iter().any(holds_driver)
        || ld_cache.is_some_and(|c| c.windows(12).any(|w| w == b"libcuda.so.1"));
    (!found).then(|| {
        "no CUDA driver library (libcuda.so.1) was found in LD_LIBRARY_PATH, the ld.so cache or \
         the usual directories"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("FLEX".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        let err = "tpu".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cuda:N"), "{err}");
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn missing_backend_names_its_feature() {
        for spec in [DeviceSpec::Ndarray, DeviceSpec::Wgpu, DeviceSpec::Cuda(1)] {
            if !spec.is_built() {
                let err = spec.device().unwrap_err().to_string();
                assert!(
                    err.contains(&format!("--features {}", spec.feature().unwrap())),
                    "{err}"
                );
            }
        }
        assert!(DeviceSpec::Cpu.device().is_ok());
    }

    #[test]
    fn cuda_probe_looks_in_the_given_places() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let missing = cuda_driver_problem_in(&[], &dirs, Some(b"libc.so.6 libm.so.6")).unwrap();
        assert!(missing.contains("no CUDA driver library"), "{missing}");
        assert_eq!(
            cuda_driver_problem_in(&[], &dirs, Some(b"..libcuda.so.1..")),
            None
        );
        std::fs::write(dir.path().join("libcuda.so.1"), b"").unwrap();
        assert_eq!(cuda_driver_problem_in(&[], &dirs, None), None);
        assert_eq!(cuda_driver_problem_in(&dirs, &[], None), None);
        let _ = cuda_driver_problem(); // never panics, whatever the machine has
    }

    #[test]
    fn cuda_probe_refuses_the_toolkits_stub_driver_first_on_the_path() {
        let root = tempfile::tempdir().unwrap();
        let stubs = root.path().join("cuda/lib64/stubs");
        let real = root.path().join("driver");
        for (d, name) in [(&stubs, "libcuda.so"), (&real, "libcuda.so.1")] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join(name), b"").unwrap();
        }
        let refused = |path: &[std::path::PathBuf]| {
            let err = cuda_driver_problem_in(path, &[], None).unwrap();
            assert!(
                err.contains("stub") && err.contains(&stubs.display().to_string()),
                "{err}"
            );
        };
        refused(&[stubs.clone(), real.clone()]);
        // The driver's libcuda.so.1 first is not enough: `libcuda.so` is opened first, and the
        // stub is the first one on the path.
        refused(&[real.clone(), stubs.clone()]);
        // A real libcuda.so before the stubs is what gets loaded.
        std::fs::write(real.join("libcuda.so"), b"").unwrap();
        assert_eq!(cuda_driver_problem_in(&[real, stubs], &[], None), None);
    }
}
