//! Model configs in Hugging Face's `config.json` format, so a directory moves between
//! transformers and infalign unchanged.
//!
//! `model_type` selects the family: `gpt2`, or `llama` / `qwen2` (one implementation; Qwen2 is
//! Llama with q/k/v bias). Each family's config lives beside its model (`Gpt2Config` in
//! `gpt2.rs`, `LlamaConfig` in `llama.rs`, field names as in the checkpoint's `config.json`);
//! this file holds the enum over them, the `model_type` dispatch and the JSON. Fields this crate
//! does not use are ignored on read.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::gpt2::Gpt2Config;
pub use crate::llama::{LlamaConfig, LlamaFlavor};
use crate::{ModelError, Result};

/// `eos_token_id` is an integer or a list of integers in Hugging Face configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EosTokenIds {
    /// One id.
    One(u32),
    /// Several ids, any of which ends a sequence.
    Many(Vec<u32>),
}

impl EosTokenIds {
    /// All ids as a list.
    pub fn ids(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

pub(crate) fn default_ln_eps() -> f64 {
    1e-5
}
pub(crate) fn default_rms_eps() -> f64 {
    1e-6
}
pub(crate) fn default_theta() -> f64 {
    10_000.0
}
pub(crate) fn default_max_pos() -> usize {
    2048
}
pub(crate) fn default_gelu() -> String {
    "gelu_new".into()
}
pub(crate) fn default_silu() -> String {
    "silu".into()
}
pub(crate) fn yes() -> bool {
    true
}

/// A decoder-only model config, tagged by Hugging Face's `model_type`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// GPT-2 family.
    Gpt2(Gpt2Config),
    /// Llama family, and Qwen2.
    Llama(LlamaConfig, LlamaFlavor),
}

impl ModelConfig {
    /// Parses `config.json` text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let config_err = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| config_err(format!("invalid JSON: {e}")))?;
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| config_err("missing string field `model_type`".into()))?
            .to_string();
        let parse_err = |e: serde_json::Error| config_err(e.to_string());
        let config = match model_type.as_str() {
            "gpt2" => Self::Gpt2(serde_json::from_value(value).map_err(parse_err)?),
            "llama" => Self::Llama(
                serde_json::from_value(value).map_err(parse_err)?,
                LlamaFlavor::Llama,
            ),
            "qwen2" => Self::Llama(
                serde_json::from_value(value).map_err(parse_err)?,
                LlamaFlavor::Qwen2,
            ),
            other => {
                return Err(ModelError::UnknownModelType {
                    path: path.to_path_buf(),
                    found: other.into(),
                });
            }
        };
        config.validate().map_err(|e| config_err(e.to_string()))?;
        Ok(config)
    }

    /// Reads and validates `config.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = infalign_core::io::read_to_string(path)?;
        Self::from_json_str(&text, path)
    }

    /// The JSON that Hugging Face transformers reads (with `model_type` and `architectures`).
    pub fn to_json(&self) -> Value {
        let (mut value, model_type, arch) = match self {
            Self::Gpt2(c) => (serde_json::to_value(c), "gpt2", "GPT2LMHeadModel"),
            Self::Llama(c, LlamaFlavor::Llama) => {
                (serde_json::to_value(c), "llama", "LlamaForCausalLM")
            }
            Self::Llama(c, LlamaFlavor::Qwen2) => {
                (serde_json::to_value(c), "qwen2", "Qwen2ForCausalLM")
            }
        };
        let map = value
            .as_mut()
            .ok()
            .and_then(Value::as_object_mut)
            .expect("configs serialize to objects");
        map.insert("model_type".into(), model_type.into());
        map.insert("architectures".into(), vec![arch].into());
        map.insert("torch_dtype".into(), "float32".into());
        value.expect("configs serialize to objects")
    }

    /// Writes `config.json` atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        Ok(infalign_core::io::write_json_atomic(path, &self.to_json())?)
    }

    /// Checks that the hyperparameters describe a model that can exist.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, message: String| Err(ModelError::InvalidConfig { field, message });
        match self {
            Self::Gpt2(c) => {
                for (field, v) in [
                    ("vocab_size", c.vocab_size),
                    ("n_positions", c.n_positions),
                    ("n_embd", c.n_embd),
                    ("n_layer", c.n_layer),
                    ("n_head", c.n_head),
                ] {
                    if v == 0 {
                        return invalid(field, "must be positive".into());
                    }
                }
                if c.n_embd % c.n_head != 0 {
                    return invalid(
                        "n_head",
                        format!("{} does not divide n_embd = {}", c.n_head, c.n_embd),
                    );
                }
                if !c.scale_attn_weights || c.scale_attn_by_inverse_layer_idx {
                    return invalid(
                        "scale_attn_by_inverse_layer_idx",
                        "only scale_attn_weights = true with \
                         scale_attn_by_inverse_layer_idx = false is supported"
                            .into(),
                    );
                }
                if !matches!(
                    c.activation_function.as_str(),
                    "gelu_new" | "gelu" | "gelu_pytorch_tanh" | "gelu_fast"
                ) {
                    return invalid(
                        "activation_function",
                        format!(
                            "`{}` is not supported: expected gelu_new, gelu_pytorch_tanh, gelu_fast or gelu",
                            c.activation_function
                        ),
                    );
                }
            }
            Self::Llama(c, _) => {
                for (field, v) in [
                    ("vocab_size", c.vocab_size),
                    ("hidden_size", c.hidden_size),
                    ("intermediate_size", c.intermediate_size),
                    ("num_hidden_layers", c.num_hidden_layers),
                    ("num_attention_heads", c.num_attention_heads),
                    ("max_position_embeddings", c.max_position_embeddings),
                ] {
                    if v == 0 {
                        return invalid(field, "must be positive".into());
                    }
                }
                let kv = c.n_kv_heads();
                if kv == 0 || c.num_attention_heads % kv != 0 {
                    return invalid(
                        "num_key_value_heads",
                        format!(
                            "{kv} does not divide num_attention_heads = {}",
                            c.num_attention_heads
                        ),
                    );
                }
                if c.head_dim.is_none() && c.hidden_size % c.num_attention_heads != 0 {
                    return invalid(
                        "num_attention_heads",
                        format!(
                            "{} does not divide hidden_size = {}",
                            c.num_attention_heads, c.hidden_size
                        ),
                    );
                }
                if c.head_dim() % 2 != 0 {
                    return invalid("head_dim", "rotary embeddings need an even head_dim".into());
                }
                for (field, v) in [
                    ("rope_scaling", &c.rope_scaling),
                    ("rope_parameters", &c.rope_parameters),
                ] {
                    let kind = v.as_ref().filter(|v| !v.is_null()).map(|v| {
                        v.get("rope_type")
                            .or_else(|| v.get("type"))
                            .and_then(Value::as_str)
                            .unwrap_or("default")
                    });
                    if let Some(kind) = kind
                        && kind != "default"
                    {
                        return invalid(
                            field,
                            format!(
                                "rotary scaling `{kind}` is not supported yet: expected default"
                            ),
                        );
                    }
                }
                if c.hidden_act != "silu" {
                    return invalid(
                        "hidden_act",
                        format!("`{}` is not supported: expected silu", c.hidden_act),
                    );
                }
            }
        }
        Ok(())
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.vocab_size,
            Self::Llama(c, _) => c.vocab_size,
        }
    }

    /// Model width.
    pub fn d_model(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_embd,
            Self::Llama(c, _) => c.hidden_size,
        }
    }

    /// Number of transformer blocks.
    pub fn n_layers(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_layer,
            Self::Llama(c, _) => c.num_hidden_layers,
        }
    }

    /// Maximum number of positions (prompt plus generated tokens).
    pub fn max_positions(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_positions,
            Self::Llama(c, _) => c.max_position_embeddings,
        }
    }

    /// End-of-sequence ids declared by the config.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let eos = match self {
            Self::Gpt2(c) => &c.eos_token_id,
            Self::Llama(c, _) => &c.eos_token_id,
        };
        eos.as_ref().map(EosTokenIds::ids).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_gpt2_and_qwen2() {
        let p = Path::new("config.json");
        let gpt2 = r#"{"model_type":"gpt2","vocab_size":50257,"n_positions":1024,"n_embd":768,
            "n_layer":12,"n_head":12,"n_inner":null,"activation_function":"gelu_new",
            "layer_norm_epsilon":1e-5,"eos_token_id":50256,"resid_pdrop":0.1}"#;
        let c = ModelConfig::from_json_str(gpt2, p).unwrap();
        assert_eq!(c.eos_token_ids(), vec![50256]);
        assert_eq!(c.d_model(), 768);
        let back = ModelConfig::from_json_str(&c.to_json().to_string(), p).unwrap();
        assert_eq!(back, c);

        let qwen = r#"{"model_type":"qwen2","vocab_size":100,"hidden_size":64,
            "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"eos_token_id":[1,2],"rope_theta":1000000.0}"#;
        let c = ModelConfig::from_json_str(qwen, p).unwrap();
        assert!(matches!(&c, ModelConfig::Llama(l, LlamaFlavor::Qwen2) if l.rope_base() == 1e6));
        let v5 = qwen.replace(
            r#""rope_theta":1000000.0"#,
            r#""rope_parameters":{"rope_theta":500000.0,"rope_type":"default"}"#,
        );
        let c5 = ModelConfig::from_json_str(&v5, p).unwrap();
        assert!(matches!(&c5, ModelConfig::Llama(l, _) if l.rope_base() == 5e5));
        let yarn = qwen.replace(
            r#""rope_theta":1000000.0"#,
            r#""rope_scaling":{"type":"yarn"}"#,
        );
        let e = ModelConfig::from_json_str(&yarn, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_scaling") && e.contains("yarn"), "{e}");
        assert_eq!(c.eos_token_ids(), vec![1, 2]);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let p = Path::new("dir/config.json");
        let e = ModelConfig::from_json_str(r#"{"model_type":"mamba"}"#, p).unwrap_err();
        assert!(e.to_string().contains("mamba"), "{e}");
        let e = ModelConfig::from_json_str(r#"{"model_type":"gpt2","vocab_size":10}"#, p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dir/config.json") && e.contains("n_positions"),
            "{e}"
        );
        let e = ModelConfig::from_json_str(
            r#"{"model_type":"gpt2","vocab_size":10,"n_positions":8,"n_embd":10,"n_layer":1,"n_head":3}"#,
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("n_head"), "{e}");
        let e = ModelConfig::from_json_str("{not json", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid JSON"), "{e}");
    }
}
