//! Llama (Touvron et al. 2023) and Qwen2: RMSNorm, rotary position embeddings with a
//! configurable base, SwiGLU MLP, grouped-query attention, optional q/k/v bias (Qwen2) or bias
//! everywhere (`attention_bias`), tied or untied output head. Parameter names and layouts are
//! Hugging Face's `LlamaForCausalLM` / `Qwen2ForCausalLM` (`nn.Linear` weights are `[out, in]`
//! there and transposed here).
//!
//! Invariant: rotary angles come from positions taken from the attention mask, so a left-padded
//! row computes exactly what the same row computes alone.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};

use crate::Result;
use crate::cache::{KvCache, LayerCache};
use crate::config::{LlamaConfig, LlamaFlavor};
use crate::layers::{AttentionContext, RmsNorm, Rotary, attend, split_heads};
use crate::weights::{Exporter, HfLayout, Init, WeightSource, linear, param};

const INIT_STD: f32 = 0.02;

/// One Llama block: `x + attn(norm(x))`, then `x + down(silu(gate(h)) * up(h))`.
#[derive(Module, Debug)]
pub struct LlamaBlock {
    input_norm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_norm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
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
        let h = self.input_norm.forward(x.clone());
        let q = split_heads(crate::layers::linear(&self.q_proj, h.clone()), self.n_heads);
        let k = split_heads(
            crate::layers::linear(&self.k_proj, h.clone()),
            self.n_kv_heads,
        );
        let v = split_heads(crate::layers::linear(&self.v_proj, h), self.n_kv_heads);
        let q = Rotary::apply(q, cos, sin);
        let k = Rotary::apply(k, cos, sin);
        let x = x + crate::layers::linear(&self.o_proj, attend(q, k, v, layer, ctx));
        let h = self.post_norm.forward(x.clone());
        let gated = silu(crate::layers::linear(&self.gate_proj, h.clone()))
            * crate::layers::linear(&self.up_proj, h);
        x + crate::layers::linear(&self.down_proj, gated)
    }
}

/// The Llama / Qwen2 language model.
#[derive(Module, Debug)]
pub struct Llama {
    embed_tokens: Param<Tensor<2>>,
    blocks: Vec<LlamaBlock>,
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
        let lin = |src: &mut dyn WeightSource, name: String, dims, bias, std| {
            linear(src, &name, dims, bias, HfLayout::Linear, std, device)
        };
        let blocks = (0..c.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let eps = c.rms_norm_eps;
                Ok(LlamaBlock {
                    input_norm: rms_norm(
                        src,
                        &format!("{p}.input_layernorm.weight"),
                        d,
                        eps,
                        device,
                    )?,
                    q_proj: lin(
                        src,
                        format!("{p}.self_attn.q_proj"),
                        [d, c.num_attention_heads * hd],
                        qkv_bias,
                        INIT_STD,
                    )?,
                    k_proj: lin(
                        src,
                        format!("{p}.self_attn.k_proj"),
                        [d, c.n_kv_heads() * hd],
                        qkv_bias,
                        INIT_STD,
                    )?,
                    v_proj: lin(
                        src,
                        format!("{p}.self_attn.v_proj"),
                        [d, c.n_kv_heads() * hd],
                        qkv_bias,
                        INIT_STD,
                    )?,
                    o_proj: lin(
                        src,
                        format!("{p}.self_attn.o_proj"),
                        [c.num_attention_heads * hd, d],
                        o_bias,
                        proj_std,
                    )?,
                    post_norm: rms_norm(
                        src,
                        &format!("{p}.post_attention_layernorm.weight"),
                        d,
                        eps,
                        device,
                    )?,
                    gate_proj: lin(
                        src,
                        format!("{p}.mlp.gate_proj"),
                        [d, c.intermediate_size],
                        c.mlp_bias,
                        INIT_STD,
                    )?,
                    up_proj: lin(
                        src,
                        format!("{p}.mlp.up_proj"),
                        [d, c.intermediate_size],
                        c.mlp_bias,
                        INIT_STD,
                    )?,
                    down_proj: lin(
                        src,
                        format!("{p}.mlp.down_proj"),
                        [c.intermediate_size, d],
                        c.mlp_bias,
                        proj_std,
                    )?,
                    n_heads: c.num_attention_heads,
                    n_kv_heads: c.n_kv_heads(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed_tokens = param(
            src,
            "model.embed_tokens.weight",
            [c.vocab_size, d],
            Init::Normal(INIT_STD),
            device,
        )?;
        let norm = rms_norm(src, "model.norm.weight", d, c.rms_norm_eps, device)?;
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
            embed_tokens,
            blocks,
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
        for (block, layer) in self.blocks.iter().zip(cache.layers.iter_mut()) {
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
        out.tensor("model.embed_tokens.weight", self.embed_tokens.val())?;
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.tensor(
                &format!("{p}.input_layernorm.weight"),
                b.input_norm.gamma.val(),
            )?;
            out.linear(
                &format!("{p}.self_attn.q_proj"),
                &b.q_proj,
                HfLayout::Linear,
            )?;
            out.linear(
                &format!("{p}.self_attn.k_proj"),
                &b.k_proj,
                HfLayout::Linear,
            )?;
            out.linear(
                &format!("{p}.self_attn.v_proj"),
                &b.v_proj,
                HfLayout::Linear,
            )?;
            out.linear(
                &format!("{p}.self_attn.o_proj"),
                &b.o_proj,
                HfLayout::Linear,
            )?;
            out.tensor(
                &format!("{p}.post_attention_layernorm.weight"),
                b.post_norm.gamma.val(),
            )?;
            out.linear(
                &format!("{p}.mlp.gate_proj"),
                &b.gate_proj,
                HfLayout::Linear,
            )?;
            out.linear(&format!("{p}.mlp.up_proj"), &b.up_proj, HfLayout::Linear)?;
            out.linear(
                &format!("{p}.mlp.down_proj"),
                &b.down_proj,
                HfLayout::Linear,
            )?;
        }
        out.tensor("model.norm.weight", self.norm.gamma.val())?;
        if let Some(h) = &self.lm_head {
            out.tensor("lm_head.weight", h.val())?;
        }
        Ok(())
    }
}
