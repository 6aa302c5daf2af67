//! Llama (Touvron et al. 2023) and Qwen2: RMSNorm, rotary position embeddings with a
//! configurable base, SwiGLU MLP, grouped-query attention, optional q/k/v bias (Qwen2) or bias
//! everywhere (`attention_bias`), tied or untied output head. Parameter names and layouts are
//! Hugging Face's `LlamaForCausalLM` / `Qwen2ForCausalLM` (`nn.Linear` weights are `[out, in]`
//! there and transposed here). The tensor names are written once (`names`) for loading and
//! export, and the Rust fields mirror them (`layers[i].self_attn.q_proj` is
//! `model.layers.{i}.self_attn.q_proj`). The config (`LlamaConfig`) is `config.json`'s fields.
//!
//! Invariant: rotary angles come from positions taken from the attention mask, so a left-padded
//! row computes exactly what the same row computes alone.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{EosTokenIds, default_rms_eps, default_silu, default_theta};

use crate::Result;
use crate::cache::{KvCache, LayerCache};
use crate::layers::{AttentionContext, RmsNorm, Rotary, attend, split_heads};
use crate::weights::{Exporter, HfLayout, Init, WeightSource, linear, param};

/// Llama family (also Qwen2): RMSNorm, rotary embeddings, SwiGLU, grouped-query attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// SwiGLU inner width.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `None` means as many as query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; `None` means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Context length.
    #[serde(default = "crate::config::default_max_pos")]
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    #[serde(default = "crate::config::default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base.
    #[serde(default = "crate::config::default_theta")]
    pub rope_theta: f64,
    /// Rotary scaling (transformers 4.x); only `null` or type `default` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Rotary parameters (transformers 5.x: `{"rope_theta", "rope_type"}`); when present, its
    /// `rope_theta` overrides the top-level one. Only `rope_type = "default"` is supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Whether the output head shares the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama's `attention_bias`: bias on q, k, v and o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama's `mlp_bias`.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Activation of the gate; only `silu` is supported.
    #[serde(default = "crate::config::default_silu")]
    pub hidden_act: String,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: Option<EosTokenIds>,
}

/// Which Llama-family variant a [`LlamaConfig`] was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlamaFlavor {
    /// `model_type = "llama"`: bias everywhere or nowhere (`attention_bias`).
    Llama,
    /// `model_type = "qwen2"`: bias on q, k, v only.
    Qwen2,
}

impl LlamaConfig {
    /// A config with Llama's defaults for everything but the shape (as many key/value heads as
    /// query heads, RMSNorm epsilon 1e-6, rotary base 10000, untied head, no bias).
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        max_position_embeddings: usize,
    ) -> Self {
        Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: None,
            head_dim: None,
            max_position_embeddings,
            rms_norm_eps: default_rms_eps(),
            rope_theta: default_theta(),
            rope_scaling: None,
            rope_parameters: None,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: default_silu(),
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Key/value heads.
    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The rotary base: `rope_parameters.rope_theta` when given, else `rope_theta`.
    pub fn rope_base(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(self.rope_theta)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

const INIT_STD: f32 = 0.02;

/// The Hugging Face names of the model's tensors, written once for loading and export alike.
mod names {
    pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
    pub const NORM: &str = "model.norm.weight";
    pub const LM_HEAD: &str = "lm_head.weight";

    /// One layer's tensor names, under `model.layers.{i}`.
    pub struct Layer {
        pub input_layernorm: String,
        pub q_proj: String,
        pub k_proj: String,
        pub v_proj: String,
        pub o_proj: String,
        pub post_attention_layernorm: String,
        pub gate_proj: String,
        pub up_proj: String,
        pub down_proj: String,
    }

    pub fn layer(i: usize) -> Layer {
        let p = format!("model.layers.{i}");
        Layer {
            input_layernorm: format!("{p}.input_layernorm.weight"),
            q_proj: format!("{p}.self_attn.q_proj"),
            k_proj: format!("{p}.self_attn.k_proj"),
            v_proj: format!("{p}.self_attn.v_proj"),
            o_proj: format!("{p}.self_attn.o_proj"),
            post_attention_layernorm: format!("{p}.post_attention_layernorm.weight"),
            gate_proj: format!("{p}.mlp.gate_proj"),
            up_proj: format!("{p}.mlp.up_proj"),
            down_proj: format!("{p}.mlp.down_proj"),
        }
    }
}

/// A layer's attention projections (`model.layers.{i}.self_attn`).
#[derive(Module, Debug)]
pub struct LlamaAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
}

/// A layer's SwiGLU MLP (`model.layers.{i}.mlp`).
#[derive(Module, Debug)]
pub struct LlamaMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// One Llama layer (`model.layers.{i}`): `x + attn(norm(x))`, then
/// `x + down(silu(gate(h)) * up(h))`.
#[derive(Module, Debug)]
pub struct LlamaBlock {
    input_layernorm: RmsNorm,
    self_attn: LlamaAttention,
    post_attention_layernorm: RmsNorm,
    mlp: LlamaMlp,
    n_heads: usize,
    n_kv_heads: usize,
}

impl LlamaBlock {
    fn forward(
        &self,
        x: Tensor<3>,
        layer: &mut LayerCache,
        ctx: &AttentionContext,
        cos: &Tensor<4>,
        sin: &Tensor<4>,
    ) -> Tensor<3> {
        let (attn, mlp) = (&self.self_attn, &self.mlp);
        let h = self.input_layernorm.forward(x.clone());
        let q = split_heads(crate::layers::linear(&attn.q_proj, h.clone()), self.n_heads);
        let k = split_heads(
            crate::layers::linear(&attn.k_proj, h.clone()),
            self.n_kv_heads,
        );
        let v = split_heads(crate::layers::linear(&attn.v_proj, h), self.n_kv_heads);
        let q = Rotary::apply(q, cos, sin);
        let k = Rotary::apply(k, cos, sin);
        let x = x + crate::layers::linear(&attn.o_proj, attend(q, k, v, layer, ctx));
        let h = self.post_attention_layernorm.forward(x.clone());
        let gated = silu(crate::layers::linear(&mlp.gate_proj, h.clone()))
            * crate::layers::linear(&mlp.up_proj, h);
        x + crate::layers::linear(&mlp.down_proj, gated)
    }
}

/// The Llama / Qwen2 language model.
#[derive(Module, Debug)]
pub struct Llama {
    embed_tokens: Param<Tensor<2>>,
    layers: Vec<LlamaBlock>,
    norm: RmsNorm,
    /// `[vocab, d]` when the head is not tied to the embedding.
    lm_head: Option<Param<Tensor<2>>>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    flavor: LlamaFlavor,
}

fn rms_norm(
    src: &mut dyn WeightSource,
    name: &str,
    d: usize,
    eps: f64,
    device: &Device,
) -> Result<RmsNorm> {
    Ok(RmsNorm {
        gamma: param(src, name, [d], Init::Ones, device)?,
        epsilon: eps,
    })
}

impl Llama {
    /// Builds the model from `src` (a seeded initialiser or a checkpoint).
    pub fn init(
        config: &LlamaConfig,
        flavor: LlamaFlavor,
        src: &mut dyn WeightSource,
        device: &Device,
    ) -> Result<Self> {
        let c = config;
        let d = c.hidden_size;
        let hd = c.head_dim();
        let (qkv_bias, o_bias) = match flavor {
            LlamaFlavor::Llama => (c.attention_bias, c.attention_bias),
            LlamaFlavor::Qwen2 => (true, false),
        };
        let proj_std = INIT_STD / (2.0 * c.num_hidden_layers as f32).sqrt();
        let lin = |src: &mut dyn WeightSource, name: &str, dims, bias, std| {
            linear(src, name, dims, bias, HfLayout::Linear, std, device)
        };
        let inner = c.intermediate_size;
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let n = names::layer(i);
                let eps = c.rms_norm_eps;
                let (heads, kv) = (c.num_attention_heads * hd, c.n_kv_heads() * hd);
                Ok(LlamaBlock {
                    input_layernorm: rms_norm(src, &n.input_layernorm, d, eps, device)?,
                    self_attn: LlamaAttention {
                        q_proj: lin(src, &n.q_proj, [d, heads], qkv_bias, INIT_STD)?,
                        k_proj: lin(src, &n.k_proj, [d, kv], qkv_bias, INIT_STD)?,
                        v_proj: lin(src, &n.v_proj, [d, kv], qkv_bias, INIT_STD)?,
                        o_proj: lin(src, &n.o_proj, [heads, d], o_bias, proj_std)?,
                    },
                    post_attention_layernorm: rms_norm(
                        src,
                        &n.post_attention_layernorm,
                        d,
                        eps,
                        device,
                    )?,
                    mlp: LlamaMlp {
                        gate_proj: lin(src, &n.gate_proj, [d, inner], c.mlp_bias, INIT_STD)?,
                        up_proj: lin(src, &n.up_proj, [d, inner], c.mlp_bias, INIT_STD)?,
                        down_proj: lin(src, &n.down_proj, [inner, d], c.mlp_bias, proj_std)?,
                    },
                    n_heads: c.num_attention_heads,
                    n_kv_heads: c.n_kv_heads(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = param(
            src,
            names::EMBED_TOKENS,
            [c.vocab_size, d],
            Init::Normal(INIT_STD),
            device,
        )?;
        let norm = rms_norm(src, names::NORM, d, c.rms_norm_eps, device)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(param(
                src,
                names::LM_HEAD,
                [c.vocab_size, d],
                Init::Normal(INIT_STD),
                device,
            )?)
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            config: config.clone(),
            flavor,
        })
    }

    /// The config and flavor the model was built from.
    pub fn config(&self) -> (&LlamaConfig, LlamaFlavor) {
        (&self.config, self.flavor)
    }

    /// Hidden states after the final norm, `[B, L, d]`, for `tokens` `[B, L]` following what
    /// `cache` holds. `mask` (`[B, L]`) is 1 for real tokens and 0 for padding.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        mask: Tensor<2>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let device = tokens.device();
        let [b, l] = tokens.dims();
        let d = self.config.hidden_size;
        let ctx = AttentionContext::new(cache, mask, &device);
        let rotary = Rotary::new(self.config.head_dim(), self.config.rope_base(), &device);
        let (cos, sin) = rotary.cos_sin(&ctx.positions);
        let mut x = self
            .embed_tokens
            .val()
            .select(0, tokens.reshape([b * l]))
            .reshape([b, l, d]);
        for (block, layer) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(x, layer, &ctx, &cos, &sin);
        }
        self.norm.forward(x)
    }

    /// Output-head weight, `[vocab, d]`.
    pub fn head_weight(&self) -> Tensor<2> {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens).val()
    }

    /// Writes every parameter under its Hugging Face name.
    pub fn export(&self, out: &mut Exporter) -> Result<()> {
        out.tensor(names::EMBED_TOKENS, self.embed_tokens.val())?;
        for (i, b) in self.layers.iter().enumerate() {
            let n = names::layer(i);
            let (attn, mlp) = (&b.self_attn, &b.mlp);
            out.tensor(&n.input_layernorm, b.input_layernorm.gamma.val())?;
            out.linear(&n.q_proj, &attn.q_proj, HfLayout::Linear)?;
            out.linear(&n.k_proj, &attn.k_proj, HfLayout::Linear)?;
            out.linear(&n.v_proj, &attn.v_proj, HfLayout::Linear)?;
            out.linear(&n.o_proj, &attn.o_proj, HfLayout::Linear)?;
            out.tensor(
                &n.post_attention_layernorm,
                b.post_attention_layernorm.gamma.val(),
            )?;
            out.linear(&n.gate_proj, &mlp.gate_proj, HfLayout::Linear)?;
            out.linear(&n.up_proj, &mlp.up_proj, HfLayout::Linear)?;
            out.linear(&n.down_proj, &mlp.down_proj, HfLayout::Linear)?;
        }
        out.tensor(names::NORM, self.norm.gamma.val())?;
        if let Some(h) = &self.lm_head {
            out.tensor(names::LM_HEAD, h.val())?;
        }
        Ok(())
    }
}
