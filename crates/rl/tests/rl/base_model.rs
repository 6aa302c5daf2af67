//! Issue #7.3: PPO and RLOO raise the reward of the shipped base model (`assets/base-model`)
//! within a few steps, while the KL to the base stays finite and is reported (in the step
//! metrics and in `metrics.jsonl`).
//!
//! Reward: CD's length reward `ln(T / T_max)` with `T_max = max_new_tokens` (cheap, and the base
//! model often ends its completions early, so there is room to rise). The mean reward of 16
//! samples for each of 16 prompts, drawn with a seed the training never uses, is compared before
//! and after training: the rise must exceed 4 standard errors. Seen on 2 CPU cores (dev
//! profile): RLOO 12 steps, -0.361 ± 0.034 -> -0.025 ± 0.011, KL 0.87, 8 s; PPO 12 steps,
//! -0.361 ± 0.034 -> -0.017 ± 0.011, KL 1.16, 20 s.

use std::path::PathBuf;
use std::time::Instant;

use infalign_core::{DeviceSpec, Seed};
use infalign_decoding::{GenerationConfig, Generator};
use infalign_models::{CausalLm, LoadedModel, RunFiles};
use infalign_rewards::rewards::LengthReward;
use infalign_rewards::{Reward, RewardInput};
use infalign_rl::{Algo, PolicyTrainConfig, PpoConfig, RewardPipeline, StepMetrics, train_policy};

const MAX_NEW: usize = 12;
/// Evaluation samples per prompt.
const EVAL_N: usize = 16;

fn base_model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/base-model")
}

fn prompts(n: usize) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/prompts.jsonl");
    let rows: Vec<serde_json::Value> = infalign_core::io::read_jsonl(&path).unwrap();
    rows.iter()
        .take(n)
        .map(|r| r["prompt"].as_str().unwrap().to_string())
        .collect()
}

/// Mean and standard error of the reward of `n` samples per prompt.
fn mean_reward(
    policy: &LoadedModel,
    prompts: &[String],
    n: usize,
    reward: &dyn Reward,
) -> (f64, f64) {
    let device = DeviceSpec::Cpu.device().unwrap();
    let cfg = GenerationConfig {
        max_new_tokens: MAX_NEW,
        n,
        prompt_batch: prompts.len(),
        ..Default::default()
    };
    let samples = Generator::new(policy, device)
        .generate(prompts, &cfg, Seed(12345))
        .unwrap();
    let r: Vec<f64> = samples
        .iter()
        .map(|s| {
            reward
                .score(&RewardInput {
                    prompt: &s.prompt,
                    completion: &s.completion,
                    tokens: s.tokens.len(),
                    ids: &s.tokens,
                })
                .unwrap()
        })
        .collect();
    let m = r.iter().sum::<f64>() / r.len() as f64;
    let var = r.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (r.len() - 1) as f64;
    (m, (var / r.len() as f64).sqrt())
}

fn check(algo: Algo, lr: f64) {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let cfg = PolicyTrainConfig {
        algo,
        ppo: PpoConfig {
            value_lr: 1e-3,
            ..Default::default()
        },
        steps: 12,
        prompts_per_step: 8,
        k: 4,
        max_new_tokens: MAX_NEW,
        lr,
        beta: 0.05,
        seed: 1,
        ..Default::default()
    };
    let device = DeviceSpec::Cpu.device().unwrap();
    let lm = LoadedModel::load(base_model_dir(), &device).unwrap();
    let prompts = prompts(16);
    let reward = LengthReward::new(MAX_NEW).unwrap();
    let before = mean_reward(&lm, &prompts, EVAL_N, &reward);
    let t_eval = t0.elapsed();
    let policy = LoadedModel::load(base_model_dir(), &device.clone().autodiff())
        .unwrap()
        .model;
    let pipeline = RewardPipeline {
        reward: &reward,
        calibrator: None,
        transform: None,
    };
    let mut log: Vec<StepMetrics> = Vec::new();
    let trained: CausalLm = train_policy(
        &cfg,
        &lm,
        policy,
        &prompts,
        &pipeline,
        &device,
        Some(RunFiles {
            dir: dir.path(),
            tokenizer: &lm.tokenizer,
            resume: false,
        }),
        |r| {
            let get = |name| r.get(name).expect("reported every step");
            log.push(StepMetrics {
                kl: get("objective/kl"),
                raw_reward: get("objective/raw_reward"),
                ..Default::default()
            })
        },
    )
    .unwrap();
    let t_train = t0.elapsed() - t_eval;
    let after_lm = LoadedModel::assemble(trained, lm.tokenizer.clone(), &lm.dir);
    let after = mean_reward(&after_lm, &prompts, EVAL_N, &reward);
    let z = (after.0 - before.0) / (before.1.powi(2) + after.1.powi(2)).sqrt();
    let tail = &log[log.len().saturating_sub(5)..];
    let kl = tail.iter().map(|m| m.kl).sum::<f64>() / tail.len() as f64;
    eprintln!(
        "{algo:?}: reward {:.3} ± {:.3} -> {:.3} ± {:.3} (z = {z:.1}); KL of the last steps {kl:.3}; \
         first-step KL {:.4}, raw reward per step {:?}; eval {:.1?}, training {:.1?} ({} steps), total {:.1?}",
        before.0,
        before.1,
        after.0,
        after.1,
        log[0].kl,
        log.iter()
            .map(|m| (m.raw_reward * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        t_eval,
        t_train,
        log.len(),
        t0.elapsed()
    );
    assert!(
        log.iter().all(|m| m.kl.is_finite()),
        "{algo:?}: a reported KL is not finite"
    );
    assert!(
        kl > 0.0,
        "{algo:?}: the KL to the base after training is {kl}"
    );
    // metrics.jsonl reports the same KL, one row per step.
    let rows: Vec<serde_json::Value> =
        infalign_core::io::read_jsonl(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(rows.len(), log.len());
    for (row, m) in rows.iter().zip(&log) {
        let reported = row["objective/kl"]
            .as_f64()
            .expect("objective/kl is reported");
        assert!(
            reported.is_finite() && (reported - m.kl).abs() < 1e-9,
            "{row}"
        );
    }
    assert!(
        z > 4.0,
        "{algo:?}: the reward rose from {before:?} to {after:?} only (z = {z:.1})"
    );
}

#[test]
fn rloo_raises_the_reward_of_the_base_model() {
    check(Algo::Rloo, 1e-4);
}

#[test]
fn ppo_raises_the_reward_of_the_base_model() {
    check(Algo::Ppo, 5e-5);
}
