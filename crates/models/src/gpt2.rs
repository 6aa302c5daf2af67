//! GPT-2 (Radford et al. 2019): learned absolute positions, pre-LayerNorm blocks, GELU MLP,
//! fused q/k/v projection, output head tied to the token embedding unless the config says
//! otherwise. Parameter names and layouts are Hugging Face's `GPT2LMHeadModel`: the tensor
//! names are written once (`Names`) for loading and export, and the Rust fields mirror them
//! (`h[i].attn.c_attn` is `transformer.h.{i}.attn.c_attn`). The config (`Gpt2Config`) is
//! `config.json`'s fields.
//!
//! Invariant: positions come from the attention mask, so a left-padded row computes exactly
//! what the same row computes alone.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::{EosTokenIds, default_gelu, default_ln_eps};

use crate::Result;
use crate::cache::{KvCache, LayerCache};
use crate::layers::{AttentionContext, LayerNorm, attend, gelu, split_heads};
use crate::weights::{Exporter, HfLayout, Init, WeightSource, linear, param};

/// GPT-2 family: learned absolute positions, pre-LayerNorm, GELU, tied embeddings by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    /// Vocabulary size (rows of `wte`).
    pub vocab_size: usize,
    /// Context length (rows of `wpe`).
    pub n_positions: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// MLP width; `None` means 4 × `n_embd`.
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// LayerNorm epsilon.
    #[serde(default = "crate::config::default_ln_eps")]
    pub layer_norm_epsilon: f64,
    /// `gelu_new` (tanh approximation, GPT-2's) or `gelu` (erf).
    #[serde(default = "crate::config::default_gelu")]
    pub activation_function: String,
    /// Whether the output head shares the token embedding.
    #[serde(default = "crate::config::yes")]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id.
    #[serde(default)]
    pub eos_token_id: Option<EosTokenIds>,
    /// Scale attention scores by 1/sqrt(head_dim); only `true` is supported.
    #[serde(default = "crate::config::yes")]
    pub scale_attn_weights: bool,
    /// Also scale by 1/(layer index + 1); only `false` is supported.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
}

impl Gpt2Config {
    /// A config with GPT-2's defaults for everything but the shape (tied head, `gelu_new`,
    /// LayerNorm epsilon 1e-5, 4× MLP).
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            layer_norm_epsilon: default_ln_eps(),
            activation_function: default_gelu(),
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
        }
    }

    /// MLP inner width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

const INIT_STD: f32 = 0.02;

/// The Hugging Face names of the model's tensors (`GPT2LMHeadModel`), written once for loading
/// and export alike. `prefix` is `transformer.`, or empty for the original OpenAI checkpoints.
struct Names {
    prefix: &'static str,
}

/// One block's tensor names, under `{prefix}h.{i}`.
struct BlockNames {
    ln_1: String,
    c_attn: String,
    attn_c_proj: String,
    ln_2: String,
    c_fc: String,
    mlp_c_proj: String,
}

impl Names {
    fn wte(&self) -> String {
        format!("{}wte.weight", self.prefix)
    }
    fn wpe(&self) -> String {
        format!("{}wpe.weight", self.prefix)
    }
    fn ln_f(&self) -> String {
        format!("{}ln_f", self.prefix)
    }
    const LM_HEAD: &'static str = "lm_head.weight";
    fn block(&self, i: usize) -> BlockNames {
        let b = format!("{}h.{i}", self.prefix);
        BlockNames {
            ln_1: format!("{b}.ln_1"),
            c_attn: format!("{b}.attn.c_attn"),
            attn_c_proj: format!("{b}.attn.c_proj"),
            ln_2: format!("{b}.ln_2"),
            c_fc: format!("{b}.mlp.c_fc"),
            mlp_c_proj: format!("{b}.mlp.c_proj"),
        }
    }
}

/// A block's attention projections (`h.{i}.attn`).
#[derive(Module, Debug)]
pub struct Gpt2Attention {
    /// Fused q, k, v.
    c_attn: Linear,
    /// Output projection.
    c_proj: Linear,
}

/// A block's MLP (`h.{i}.mlp`).
#[derive(Module, Debug)]
pub struct Gpt2Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

/// One GPT-2 block (`h.{i}`): `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    ln_1: LayerNorm,
    attn: Gpt2Attention,
    ln_2: LayerNorm,
    mlp: Gpt2Mlp,
    n_head: usize,
    gelu_tanh: bool,
}

impl Gpt2Block {
    fn forward(&self, x: Tensor<3>, layer: &mut LayerCache, ctx: &AttentionContext) -> Tensor<3> {
        let [_, _, d] = x.dims();
        let qkv = crate::layers::linear(&self.attn.c_attn, self.ln_1.forward(x.clone()));
        let q = split_heads(qkv.clone().narrow(2, 0, d), self.n_head);
        let k = split_heads(qkv.clone().narrow(2, d, d), self.n_head);
        let v = split_heads(qkv.narrow(2, 2 * d, d), self.n_head);
        let x = x + crate::layers::linear(&self.attn.c_proj, attend(q, k, v, layer, ctx));
        let h = gelu(
            crate::layers::linear(&self.mlp.c_fc, self.ln_2.forward(x.clone())),
            self.gelu_tanh,
        );
        x + crate::layers::linear(&self.mlp.c_proj, h)
    }
}

/// The GPT-2 language model.
#[derive(Module, Debug)]
pub struct Gpt2 {
    wte: Param<Tensor<2>>,
    wpe: Param<Tensor<2>>,
    h: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    /// `[vocab, d]` when the head is not tied to `wte`.
    lm_head: Option<Param<Tensor<2>>>,
    #[module(skip)]
    config: Gpt2Config,
}

fn layer_norm(
    src: &mut dyn WeightSource,
    prefix: &str,
    d: usize,
    eps: f64,
    device: &Device,
) -> Result<LayerNorm> {
    Ok(LayerNorm {
        gamma: param(src, &format!("{prefix}.weight"), [d], Init::Ones, device)?,
        beta: param(src, &format!("{prefix}.bias"), [d], Init::Zeros, device)?,
        epsilon: eps,
    })
}

impl Gpt2 {
    /// Builds the model from `src` (a seeded initialiser or a checkpoint).
    pub fn init(config: &Gpt2Config, src: &mut dyn WeightSource, device: &Device) -> Result<Self> {
        let c = config;
        let d = c.n_embd;
        // Original OpenAI checkpoints have no `transformer.` prefix.
        let names = Names {
            prefix: if !src.contains("transformer.wte.weight") && src.contains("wte.weight") {
                ""
            } else {
                "transformer."
            },
        };
        let proj_std = INIT_STD / (2.0 * c.n_layer as f32).sqrt();
        let gelu_tanh = c.activation_function != "gelu";
        let conv1d = |src: &mut dyn WeightSource, name: &str, dims, std| {
            linear(src, name, dims, true, HfLayout::Conv1d, std, device)
        };
        let h = (0..c.n_layer)
            .map(|i| {
                let n = names.block(i);
                Ok(Gpt2Block {
                    ln_1: layer_norm(src, &n.ln_1, d, c.layer_norm_epsilon, device)?,
                    attn: Gpt2Attention {
                        c_attn: conv1d(src, &n.c_attn, [d, 3 * d], INIT_STD)?,
                        c_proj: conv1d(src, &n.attn_c_proj, [d, d], proj_std)?,
                    },
                    ln_2: layer_norm(src, &n.ln_2, d, c.layer_norm_epsilon, device)?,
                    mlp: Gpt2Mlp {
                        c_fc: conv1d(src, &n.c_fc, [d, c.inner()], INIT_STD)?,
                        c_proj: conv1d(src, &n.mlp_c_proj, [c.inner(), d], proj_std)?,
                    },
                    n_head: c.n_head,
                    gelu_tanh,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let wte = param(
            src,
            &names.wte(),
            [c.vocab_size, d],
            Init::Normal(INIT_STD),
            device,
        )?;
        let wpe = param(
            src,
            &names.wpe(),
            [c.n_positions, d],
            Init::Normal(0.01),
            device,
        )?;
        let ln_f = layer_norm(src, &names.ln_f(), d, c.layer_norm_epsilon, device)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(param(
                src,
                Names::LM_HEAD,
                [c.vocab_size, d],
                Init::Normal(INIT_STD),
                device,
            )?)
        };
        Ok(Self {
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
            config: config.clone(),
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// Hidden states after the final LayerNorm, `[B, L, d]`, for `tokens` `[B, L]` following
    /// what `cache` holds. `mask` (`[B, L]`) is 1 for real tokens and 0 for padding.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        mask: Tensor<2>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let device = tokens.device();
        let [b, l] = tokens.dims();
        let d = self.config.n_embd;
        let ctx = AttentionContext::new(cache, mask, &device);
        let tok = self.wte.val().select(0, tokens.reshape([b * l]));
        let pos = self
            .wpe
            .val()
            .select(0, ctx.positions.clone().reshape([b * l]));
        let mut x = (tok + pos).reshape([b, l, d]);
        for (block, layer) in self.h.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(x, layer, &ctx);
        }
        self.ln_f.forward(x)
    }

    /// Output-head weight, `[vocab, d]`.
    pub fn head_weight(&self) -> Tensor<2> {
        self.lm_head.as_ref().unwrap_or(&self.wte).val()
    }

    /// Writes every parameter under its Hugging Face name (with the `transformer.` prefix).
    pub fn export(&self, out: &mut Exporter) -> Result<()> {
        let names = Names {
            prefix: "transformer.",
        };
        let layer_norm = |out: &mut Exporter, name: &str, ln: &LayerNorm| -> Result<()> {
            out.tensor(&format!("{name}.weight"), ln.gamma.val())?;
            out.tensor(&format!("{name}.bias"), ln.beta.val())
        };
        out.tensor(&names.wte(), self.wte.val())?;
        out.tensor(&names.wpe(), self.wpe.val())?;
        for (i, b) in self.h.iter().enumerate() {
            let n = names.block(i);
            layer_norm(out, &n.ln_1, &b.ln_1)?;
            out.linear(&n.c_attn, &b.attn.c_attn, HfLayout::Conv1d)?;
            out.linear(&n.attn_c_proj, &b.attn.c_proj, HfLayout::Conv1d)?;
            layer_norm(out, &n.ln_2, &b.ln_2)?;
            out.linear(&n.c_fc, &b.mlp.c_fc, HfLayout::Conv1d)?;
            out.linear(&n.mlp_c_proj, &b.mlp.c_proj, HfLayout::Conv1d)?;
        }
        layer_norm(out, &names.ln_f(), &self.ln_f)?;
        if let Some(h) = &self.lm_head {
            out.tensor(Names::LM_HEAD, h.val())?;
        }
        Ok(())
    }
}
