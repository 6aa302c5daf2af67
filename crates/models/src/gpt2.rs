//! GPT-2 (Radford et al. 2019): learned absolute positions, pre-LayerNorm blocks, GELU MLP,
//! fused q/k/v projection, output head tied to the token embedding unless the config says
//! otherwise. Parameter names and layouts are Hugging Face's `GPT2LMHeadModel`.
//!
//! Invariant: positions come from the attention mask, so a left-padded row computes exactly
//! what the same row computes alone.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor};

use crate::Result;
use crate::cache::{KvCache, LayerCache};
use crate::config::Gpt2Config;
use crate::layers::{AttentionContext, LayerNorm, attend, gelu, split_heads};
use crate::weights::{Exporter, HfLayout, Init, WeightSource, linear, param};

const INIT_STD: f32 = 0.02;

/// One GPT-2 block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
#[derive(Module, Debug)]
pub struct Gpt2Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
    n_head: usize,
    gelu_tanh: bool,
}

impl Gpt2Block {
    fn forward(&self, x: Tensor<3>, layer: &mut LayerCache, ctx: &AttentionContext) -> Tensor<3> {
        let [_, _, d] = x.dims();
        let qkv = crate::layers::linear(&self.c_attn, self.ln_1.forward(x.clone()));
        let q = split_heads(qkv.clone().narrow(2, 0, d), self.n_head);
        let k = split_heads(qkv.clone().narrow(2, d, d), self.n_head);
        let v = split_heads(qkv.narrow(2, 2 * d, d), self.n_head);
        let x = x + crate::layers::linear(&self.attn_proj, attend(q, k, v, layer, ctx));
        let h = gelu(
            crate::layers::linear(&self.c_fc, self.ln_2.forward(x.clone())),
            self.gelu_tanh,
        );
        x + crate::layers::linear(&self.mlp_proj, h)
    }
}

/// The GPT-2 language model.
#[derive(Module, Debug)]
pub struct Gpt2 {
    wte: Param<Tensor<2>>,
    wpe: Param<Tensor<2>>,
    blocks: Vec<Gpt2Block>,
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
        let p = if !src.contains("transformer.wte.weight") && src.contains("wte.weight") {
            ""
        } else {
            "transformer."
        };
        let proj_std = INIT_STD / (2.0 * c.n_layer as f32).sqrt();
        let gelu_tanh = c.activation_function != "gelu";
        let blocks = (0..c.n_layer)
            .map(|i| {
                let b = format!("{p}h.{i}");
                Ok(Gpt2Block {
                    ln_1: layer_norm(src, &format!("{b}.ln_1"), d, c.layer_norm_epsilon, device)?,
                    c_attn: linear(
                        src,
                        &format!("{b}.attn.c_attn"),
                        [d, 3 * d],
                        true,
                        HfLayout::Conv1d,
                        INIT_STD,
                        device,
                    )?,
                    attn_proj: linear(
                        src,
                        &format!("{b}.attn.c_proj"),
                        [d, d],
                        true,
                        HfLayout::Conv1d,
                        proj_std,
                        device,
                    )?,
                    ln_2: layer_norm(src, &format!("{b}.ln_2"), d, c.layer_norm_epsilon, device)?,
                    c_fc: linear(
                        src,
                        &format!("{b}.mlp.c_fc"),
                        [d, c.inner()],
                        true,
                        HfLayout::Conv1d,
                        INIT_STD,
                        device,
                    )?,
                    mlp_proj: linear(
                        src,
                        &format!("{b}.mlp.c_proj"),
                        [c.inner(), d],
                        true,
                        HfLayout::Conv1d,
                        proj_std,
                        device,
                    )?,
                    n_head: c.n_head,
                    gelu_tanh,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let wte = param(
            src,
            &format!("{p}wte.weight"),
            [c.vocab_size, d],
            Init::Normal(INIT_STD),
            device,
        )?;
        let wpe = param(
            src,
            &format!("{p}wpe.weight"),
            [c.n_positions, d],
            Init::Normal(0.01),
            device,
        )?;
        let ln_f = layer_norm(src, &format!("{p}ln_f"), d, c.layer_norm_epsilon, device)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(param(
                src,
                "lm_head.weight",
                [c.vocab_size, d],
                Init::Normal(INIT_STD),
                device,
            )?)
        };
        Ok(Self {
            wte,
            wpe,
            blocks,
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
        for (block, layer) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            x = block.forward(x, layer, &ctx);
        }
        self.ln_f.forward(x)
    }

    /// Output-head weight, `[vocab, d]`.
    pub fn head_weight(&self) -> Tensor<2> {
        self.lm_head.as_ref().unwrap_or(&self.wte).val()
    }

    /// Writes every parameter under its Hugging Face name.
    pub fn export(&self, out: &mut Exporter) -> Result<()> {
        out.tensor("transformer.wte.weight", self.wte.val())?;
        out.tensor("transformer.wpe.weight", self.wpe.val())?;
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            out.tensor(&format!("{p}.ln_1.weight"), b.ln_1.gamma.val())?;
            out.tensor(&format!("{p}.ln_1.bias"), b.ln_1.beta.val())?;
            out.linear(&format!("{p}.attn.c_attn"), &b.c_attn, HfLayout::Conv1d)?;
            out.linear(&format!("{p}.attn.c_proj"), &b.attn_proj, HfLayout::Conv1d)?;
            out.tensor(&format!("{p}.ln_2.weight"), b.ln_2.gamma.val())?;
            out.tensor(&format!("{p}.ln_2.bias"), b.ln_2.beta.val())?;
            out.linear(&format!("{p}.mlp.c_fc"), &b.c_fc, HfLayout::Conv1d)?;
            out.linear(&format!("{p}.mlp.c_proj"), &b.mlp_proj, HfLayout::Conv1d)?;
        }
        out.tensor("transformer.ln_f.weight", self.ln_f.gamma.val())?;
        out.tensor("transformer.ln_f.bias", self.ln_f.beta.val())?;
        if let Some(h) = &self.lm_head {
            out.tensor("lm_head.weight", h.val())?;
        }
        Ok(())
    }
}
