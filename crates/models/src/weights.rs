//! Where parameters come from and where they go: one code path builds a model from a seeded
//! random initialiser or from safetensors files, so that initialising and loading can never
//! disagree on names or shapes.
//!
//! Names and shapes are Hugging Face's: GPT-2's `Conv1D` stores `[in, out]` (burn's `Linear`
//! layout, no transpose); Llama/Qwen2 `nn.Linear` stores `[out, in]` (transposed on load and on
//! save). Invariant: for every model, `export` followed by loading gives back the same
//! parameters bit for bit.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{Param, ParamId};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use safetensors::{Dtype, SafeTensors};

use crate::{ModelError, Result};

/// How a freshly initialised parameter is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Normal with mean 0 and this standard deviation.
    Normal(f32),
    /// All zeros (biases).
    Zeros,
    /// All ones (norm gains).
    Ones,
}

/// A provider of named parameters in Hugging Face's names and layouts.
pub trait WeightSource {
    /// The tensor `name`, as f32 values of exactly `shape` (row-major).
    fn take(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>>;

    /// Whether the source holds `name` (a random initialiser holds everything).
    fn contains(&self, name: &str) -> bool;
}

/// Seeded random initialisation on the host: the same seed gives the same weights on every
/// device.
#[derive(Debug)]
pub struct RandomInit {
    rng: ChaCha8Rng,
    scale: f32,
}

impl RandomInit {
    /// Draws from `rng` (use `Seed::stream("init")`).
    pub fn new(rng: ChaCha8Rng) -> Self {
        Self { rng, scale: 1.0 }
    }

    /// Multiplies every normal standard deviation by `scale`. Tests use a large scale so that
    /// a random model's outputs are far from uniform and any error shows.
    pub fn with_scale(rng: ChaCha8Rng, scale: f32) -> Self {
        Self { rng, scale }
    }
}

impl WeightSource for RandomInit {
    fn take(&mut self, _name: &str, shape: &[usize], init: Init) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        Ok(match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => {
                let std = std * self.scale;
                (0..n)
                    .map(|_| std * standard_normal(&mut self.rng))
                    .collect()
            }
        })
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }
}

/// A standard normal draw (Box-Muller), so initialisation depends on no distribution crate.
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Parameters read from one or more safetensors files (a single `model.safetensors`, or the
/// shards listed by `model.safetensors.index.json`). F32, F16 and BF16 are converted to f32.
#[derive(Debug)]
pub struct SafetensorsSource {
    files: Vec<(PathBuf, Vec<u8>)>,
    index: BTreeMap<String, usize>,
    used: HashSet<String>,
}

impl SafetensorsSource {
    /// Opens the weights of a model directory: `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            Self::open(&[single])
        } else if index.exists() {
            let text = infalign_core::io::read_to_string(&index)?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Config {
                    path: index.clone(),
                    message: format!("invalid JSON: {e}"),
                })?;
            let map = value
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Config {
                    path: index.clone(),
                    message: "missing object field `weight_map`".into(),
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
            Self::open(&paths)
        } else {
            Err(ModelError::Core(infalign_core::CoreError::io(
                single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model directory",
                ),
            )))
        }
    }

    /// Opens the given safetensors files; tensor names must be unique across them.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for path in paths {
            let bytes = std::fs::read(path)
                .map_err(|e| ModelError::Core(infalign_core::CoreError::io(path, e)))?;
            let names: Vec<String> = SafeTensors::deserialize(&bytes)
                .map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?
                .names()
                .into_iter()
                .map(String::from)
                .collect();
            for name in names {
                index.insert(name, files.len());
            }
            files.push((path.clone(), bytes));
        }
        Ok(Self {
            files,
            index,
            used: HashSet::new(),
        })
    }

    /// Names present in the files that no `take` asked for.
    pub fn unused(&self) -> Vec<String> {
        self.index
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect()
    }

    fn describe(&self) -> String {
        self.files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl WeightSource for SafetensorsSource {
    fn take(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Vec<f32>> {
        let Some(&file) = self.index.get(name) else {
            return Err(ModelError::MissingTensor {
                file: self.describe(),
                name: name.into(),
                expected: shape.to_vec(),
            });
        };
        let (path, bytes) = &self.files[file];
        let st = SafeTensors::deserialize(bytes).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let view = st.tensor(name).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if view.shape() != shape {
            return Err(ModelError::ShapeMismatch {
                file: path.display().to_string(),
                name: name.into(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    file: path.display().to_string(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let values: Vec<f32> = values;
        if let Some(first) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFiniteWeights {
                file: path.display().to_string(),
                name: name.into(),
                count: values.iter().filter(|v| !v.is_finite()).count(),
                first,
                value: values[first],
            });
        }
        self.used.insert(name.to_string());
        Ok(values)
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// How a checkpoint stores a linear layer's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfLayout {
    /// `[in, out]`, GPT-2's Conv1D (same as burn's `Linear`).
    Conv1d,
    /// `[out, in]`, PyTorch's `nn.Linear`.
    Linear,
}

/// Builds a parameter of rank D from the source.
pub(crate) fn param<const D: usize>(
    src: &mut dyn WeightSource,
    name: &str,
    shape: [usize; D],
    init: Init,
    device: &Device,
) -> Result<Param<Tensor<D>>> {
    let values = src.take(name, &shape, init)?;
    let tensor = Tensor::<D>::from_data(TensorData::new(values, shape), device);
    Ok(named_param(name, tensor))
}

/// A trainable parameter whose id is derived from its checkpoint name, so that optimizer state
/// saved in one process matches the parameters loaded in another (resuming training).
pub(crate) fn named_param<const D: usize>(name: &str, tensor: Tensor<D>) -> Param<Tensor<D>> {
    let mut p = Param::from_tensor(tensor);
    p.id = ParamId::from(name_hash(name));
    p
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Builds a burn `Linear` (`[in, out]` weight) from `{prefix}.weight` and `{prefix}.bias`.
pub(crate) fn linear(
    src: &mut dyn WeightSource,
    prefix: &str,
    [d_in, d_out]: [usize; 2],
    bias: bool,
    layout: HfLayout,
    std: f32,
    device: &Device,
) -> Result<Linear> {
    let name = format!("{prefix}.weight");
    let weight = match layout {
        HfLayout::Conv1d => param(src, &name, [d_in, d_out], Init::Normal(std), device)?,
        HfLayout::Linear => {
            let values = src.take(&name, &[d_out, d_in], Init::Normal(std))?;
            let t = Tensor::<2>::from_data(TensorData::new(values, [d_out, d_in]), device);
            named_param(&name, t.transpose())
        }
    };
    let bias = if bias {
        Some(param(
            src,
            &format!("{prefix}.bias"),
            [d_out],
            Init::Zeros,
            device,
        )?)
    } else {
        None
    };
    Ok(Linear { weight, bias })
}

/// Collects a model's parameters under Hugging Face names and layouts, then writes them.
#[derive(Debug, Default)]
pub struct Exporter {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Exporter {
    /// Adds a tensor under `name`.
    pub(crate) fn tensor<const D: usize>(&mut self, name: &str, tensor: Tensor<D>) -> Result<()> {
        let shape = tensor.dims().to_vec();
        let values = read_f32(tensor)?;
        self.tensors.push((name.to_string(), shape, values));
        Ok(())
    }

    /// Adds a burn `Linear` as `{prefix}.weight` (+ `.bias`) in the given layout.
    pub(crate) fn linear(&mut self, prefix: &str, l: &Linear, layout: HfLayout) -> Result<()> {
        let w = l.weight.val();
        let w = match layout {
            HfLayout::Conv1d => w,
            HfLayout::Linear => w.transpose(),
        };
        self.tensor(&format!("{prefix}.weight"), w)?;
        if let Some(b) = &l.bias {
            self.tensor(&format!("{prefix}.bias"), b.val())?;
        }
        Ok(())
    }

    /// The collected tensors, by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &[usize], &[f32])> {
        self.tensors
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice()))
    }

    /// Writes one f32 safetensors file atomically, with `{"format": "pt"}` metadata so that
    /// transformers accepts it.
    pub fn write_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, s, v)| {
                let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (n.clone(), s.clone(), b)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| ModelError::Safetensors {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<_>>()?;
        let metadata = Some(
            [("format".to_string(), "pt".to_string())]
                .into_iter()
                .collect(),
        );
        let data =
            safetensors::serialize(views, metadata).map_err(|e| ModelError::Safetensors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(infalign_core::io::write_atomic(path, &data)?)
    }
}

/// Reads a float tensor back to the host as f32.
pub fn read_f32<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::Read(format!("{e:?}")))
}

/// Reads an int tensor back to the host as i64.
pub fn read_i64<const D: usize>(tensor: Tensor<D, burn::tensor::Int>) -> Result<Vec<i64>> {
    tensor
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| ModelError::Read(format!("{e:?}")))
}
