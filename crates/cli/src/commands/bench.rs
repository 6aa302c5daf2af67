//! `infalign bench`: decoding throughput with the KV cache and training throughput, for a tiny
//! shape and a GPT-2-small shape with random weights. Run it through `cargo xtask bench`
//! (release build); it prints a table and writes JSON.
//!
//! On a device that compiles its kernels at first use (wgpu, CUDA), each decoding row runs once
//! untimed first, so that its time holds no kernel compilation or autotuning; on the CPU the
//! first run is the timed one, as a user's first call would be.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Int, Tensor, TensorData};
use infalign_core::{Device, Seed};
use infalign_models::{CausalLm, Gpt2Config, ModelConfig, TokenBatch, weights::read_i64};
use rand::Rng;
use serde::Serialize;

/// Flags of `infalign bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Skip the GPT-2-small shape (minutes on a CPU).
    #[arg(long)]
    pub quick: bool,
    /// Prompt tokens per row.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// New tokens per row.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/models.json")]
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Row {
    shape: String,
    params: usize,
    task: String,
    batch: usize,
    tokens_per_s: f64,
    seconds: f64,
}

fn gpt2(vocab: usize, positions: usize, d: usize, layers: usize, heads: usize) -> ModelConfig {
    ModelConfig::Gpt2(Gpt2Config::new(vocab, positions, d, layers, heads))
}

fn random_ids(rng: &mut impl Rng, rows: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..rows)
        .map(|_| {
            (0..len)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

/// Prefill `prompt` tokens, then `new` greedy steps, reading each step's ids back to the host
/// as a sampler would. Returns new tokens per second over the whole call.
fn decode(m: &CausalLm, device: &Device, batch: usize, prompt: usize, new: usize) -> Result<f64> {
    let vocab = m.config().vocab_size();
    let mut rng = Seed(1).stream("bench");
    let rows = random_ids(&mut rng, batch, prompt, vocab);
    let start = Instant::now();
    let mut cache = m.new_cache();
    let mut logp = m.next_token_logprobs(&TokenBatch::left_padded(&rows, 0, device)?, &mut cache);
    for _ in 0..new {
        let ids: Tensor<1, Int> = logp.argmax(1).reshape([batch]);
        let host: Vec<u32> = read_i64(ids)?.into_iter().map(|x| x as u32).collect();
        logp = m.next_token_logprobs(&TokenBatch::step(&host, device), &mut cache);
    }
    let _ = read_i64(logp.argmax(1))?;
    Ok((batch * new) as f64 / start.elapsed().as_secs_f64())
}

/// AdamW steps on `batch` rows of `len` tokens; returns trained tokens per second.
fn train(
    config: &ModelConfig,
    device: &Device,
    batch: usize,
    len: usize,
    steps: usize,
) -> Result<f64> {
    let device = device.clone().autodiff();
    let mut model = CausalLm::random(config, Seed(0), &device)?;
    let mut optim = AdamWConfig::new().init();
    let vocab = config.vocab_size();
    let mut rng = Seed(2).stream("bench");
    let mut step = |model: CausalLm| -> Result<CausalLm> {
        let rows = random_ids(&mut rng, batch, len, vocab);
        let flat: Vec<i64> = rows.iter().flatten().map(|&t| i64::from(t)).collect();
        let batch_t = TokenBatch {
            tokens: Tensor::from_data(TensorData::new(flat, [batch, len]), &device),
            mask: Tensor::ones([batch, len], &device),
            pad_left: vec![0; batch],
        };
        let loss = model.next_token_loss(&batch_t);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        Ok(optim.step(1e-3, model, grads))
    };
    model = step(model)?; // warm-up
    let start = Instant::now();
    for _ in 0..steps {
        model = step(model)?;
    }
    let _ = model.num_params();
    Ok((steps * batch * len) as f64 / start.elapsed().as_secs_f64())
}

/// Throughput of the decoding strategies on one model, as ratios to base sampling measured in
/// the same run: base sampling, best-of-4 and best-of-16 (shared prefill), tokenwise CD and
/// blockwise CD (K = 4, M = 8) with a scorer the size of the base model, and beside best-of-N
/// the plain sampling of as many rows as separate prompts (what those rows' tokens cost without
/// the strategy). Each time is the fastest of five runs.
///
/// Each row also counts its work: the rows a model of the base's size runs per row of base
/// sampling (best-of-N: N; tokenwise CD: the base and the scorer, 2; blockwise CD: K candidates
/// through the base and the scorer, 2K). A time ratio below its work means batching pays; a
/// ratio target below what batching can gain on the machine is out of reach for that strategy.
fn strategies(
    config: &ModelConfig,
    device: &Device,
    new_tokens: usize,
) -> Result<Vec<StrategyRow>> {
    use infalign_decoding::{GenerationConfig, Generator, ScorerMix, StrategyConfig};
    use infalign_models::{LoadedModel, PrefixScorer, ScorerLayout};
    let tokenizer =
        infalign_models::Tokenizer::from_file(crate::shipped_model_dir().join("tokenizer.json"))?;
    let model = CausalLm::random(config, Seed(0), device)?;
    let mut lm = LoadedModel::assemble(model, tokenizer, std::path::Path::new("."));
    lm.eos_ids.clear(); // every sample runs to the token budget
    let g = Generator::new(&lm, device.clone());
    let scorer = PrefixScorer::from_base(lm.model.clone(), ScorerLayout::VocabWide, device)?;
    let prompts: Vec<String> = (0..4).map(|i| format!("The dog {i} was")).collect();
    let cfg = GenerationConfig {
        max_new_tokens: new_tokens,
        ..Default::default()
    };
    let reward = infalign_rewards::reward_from_spec("length")?;
    let vocab = config.vocab_size();
    // The fastest of `REPEATS` runs: each run is a fraction of a second, where one stray
    // scheduling delay would move a single measurement by tens of percent.
    const REPEATS: usize = 5;
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..REPEATS {
            let t = Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let base = time(&mut || {
        g.generate(&prompts, &cfg, Seed(1))?;
        Ok(())
    })?;
    let mut rows = vec![StrategyRow {
        name: "base sampling".to_string(),
        seconds: base,
        work: 1.0,
    }];
    // Best-of-N's rows without the strategy: its N rows per prompt sampled as separate prompts
    // (no shared prefill, no scoring or selection).
    for n in [4, 16] {
        let many: Vec<String> = prompts
            .iter()
            .flat_map(|p| std::iter::repeat_n(p.clone(), n))
            .collect();
        let t = time(&mut || {
            g.generate(&many, &cfg, Seed(1))?;
            Ok(())
        })?;
        rows.push(StrategyRow {
            name: format!(
                "sampling {n} rows per prompt as separate prompts (best-of-{n} without selection)"
            ),
            seconds: t,
            work: n as f64,
        });
    }
    let cases = [
        (
            "best-of-4 (time per prompt vs one sample)",
            StrategyConfig::BestOfN { n: 4 },
            4.0,
        ),
        (
            "best-of-16 (time per prompt vs one sample)",
            StrategyConfig::BestOfN { n: 16 },
            16.0,
        ),
        (
            "tokenwise CD (time per token vs base)",
            StrategyConfig::TokenwiseCd {
                lambda: 1.0,
                top_k: None,
            },
            2.0,
        ),
        (
            "blockwise CD K=4 M=8 (time per token vs base)",
            StrategyConfig::BlockwiseCd {
                k: 4,
                m: 8,
                random_ties: false,
            },
            8.0,
        ),
    ];
    for (name, config, work) in cases {
        let t = time(&mut || {
            let mix = ScorerMix::new(vec![(1.0, &scorer)], vocab, device.clone())?;
            let mut strategy = config.init(Some(reward.as_ref()), Some(mix))?;
            strategy.decode(&g, &prompts, &cfg, Seed(1))?;
            Ok(())
        })?;
        rows.push(StrategyRow {
            name: name.to_string(),
            seconds: t,
            work,
        });
    }
    Ok(rows)
}

/// One row of [`strategies`].
struct StrategyRow {
    name: String,
    seconds: f64,
    /// Rows through a model of the base's size per row of base sampling.
    work: f64,
}

/// `infalign bench` on `device`; `compiles_kernels` says whether the device compiles (and
/// autotunes) kernels at first use, which an untimed first run then absorbs.
pub fn run(a: Args, device: &Device, compiles_kernels: bool) -> Result<()> {
    let mut shapes = vec![("tiny (4x256, vocab 4096)", gpt2(4096, 512, 256, 4, 4))];
    if !a.quick {
        shapes.push((
            "gpt2-small (12x768, vocab 50257)",
            gpt2(50257, 1024, 768, 12, 12),
        ));
    }
    let mut rows = Vec::new();
    for (name, config) in &shapes {
        let m = CausalLm::random(config, Seed(0), device)?;
        let params = m.num_params();
        for batch in [1, 16] {
            if compiles_kernels {
                decode(&m, device, batch, a.prompt_tokens, a.new_tokens)?;
            }
            let t = Instant::now();
            let tps = decode(&m, device, batch, a.prompt_tokens, a.new_tokens)?;
            rows.push(Row {
                shape: name.to_string(),
                params,
                task: format!("decode {}+{} (KV cache)", a.prompt_tokens, a.new_tokens),
                batch,
                tokens_per_s: tps,
                seconds: t.elapsed().as_secs_f64(),
            });
            eprintln!("{name}: decode batch {batch}: {tps:.1} tokens/s");
        }
    }
    let (name, config) = &shapes[0];
    let t = Instant::now();
    let tps = train(config, device, 8, 128, 10)?;
    rows.push(Row {
        shape: name.to_string(),
        params: CausalLm::random(config, Seed(0), device)?.num_params(),
        task: "train 8x128 AdamW".into(),
        batch: 8,
        tokens_per_s: tps,
        seconds: t.elapsed().as_secs_f64(),
    });
    println!("| shape | params | task | batch | tokens/s |");
    println!("|---|---:|---|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1}M | {} | {} | {:.1} |",
            r.shape,
            r.params as f64 / 1e6,
            r.task,
            r.batch,
            r.tokens_per_s
        );
    }
    let strat = strategies(&shapes[0].1, device, a.new_tokens.min(64))?;
    println!(
        "\n| strategy ({}, 4 prompts, {} new tokens) | seconds | ratio to base sampling | \
         model rows vs base | ratio / model rows |\n|---|---:|---:|---:|---:|",
        shapes[0].0,
        a.new_tokens.min(64)
    );
    // Every ratio is to base sampling, the first row.
    let base = strat.first().map_or(f64::NAN, |r| r.seconds);
    for r in &strat {
        let ratio = r.seconds / base;
        println!(
            "| {} | {:.3} | {:.2} | {:.0} | {:.2} |",
            r.name,
            r.seconds,
            ratio,
            r.work,
            ratio / r.work
        );
    }
    let strat_json: Vec<_> = strat
        .iter()
        .map(|r| {
            serde_json::json!({
                "strategy": r.name,
                "seconds": r.seconds,
                "ratio_to_base": r.seconds / base,
                "model_rows_vs_base": r.work,
            })
        })
        .collect();
    let report = serde_json::json!({ "device": format!("{device:?}"), "rows": rows, "strategies": strat_json });
    infalign_core::io::write_json_atomic(&a.out, &report)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
