//! KL-regularised RL on a one-step bandit over a 6-token vocabulary, against closed forms.
//!
//! With the KL in the reward (k1), RLOO follows the gradient of `E_π R − β KL(π ‖ π_ref)`, whose
//! maximiser is `π* = π_ref · exp(R/β) / Z`. With k3 in the loss, the expected gradient is that
//! of the *forward* KL, `E_π R − β KL(π_ref ‖ π)` (`E_π ∇k3 = −Σ π_ref ∇log π`), whose maximiser
//! is `π(y) = β π_ref(y) / (μ − R(y))` with μ > max R normalising it. Each mode must reach its
//! own optimum.

use infalign_core::{DeviceSpec, Seed};
use infalign_models::test_support::six_word_tokenizer;
use infalign_models::weights::{RandomInit, read_f32};
use infalign_models::{CausalLm, Gpt2Config, LoadedModel, ModelConfig, TokenBatch, Tokenizer};
use infalign_rewards::{Reward, RewardError, RewardInput};
use infalign_rl::{
    Algo, KlMode, OfflinePair, PolicyTrainConfig, PpoConfig, RewardPipeline, train_policy,
    train_policy_on_pairs,
};

const REWARD: [f64; 6] = [0.0, 1.0, 0.5, 2.0, -1.0, 0.3];

/// R(y) for the single generated token.
struct Table;

impl Reward for Table {
    fn name(&self) -> String {
        "table".into()
    }
    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        Ok(REWARD[input.ids[0] as usize])
    }
}

fn probs(m: &CausalLm) -> Vec<f64> {
    let device = DeviceSpec::Cpu.device().unwrap();
    let b = TokenBatch::left_padded(&[vec![0]], 0, &device).unwrap();
    read_f32(m.next_token_logprobs(&b, &mut m.new_cache()))
        .unwrap()
        .iter()
        .map(|&l| f64::from(l).exp())
        .collect()
}

/// The maximiser of `E_π R − β KL(π_ref ‖ π)`.
fn forward_kl_optimum(p_ref: &[f64], beta: f64) -> Vec<f64> {
    let max_r = REWARD.iter().copied().fold(f64::MIN, f64::max);
    let mass = |mu: f64| -> f64 {
        p_ref
            .iter()
            .zip(REWARD)
            .map(|(p, r)| beta * p / (mu - r))
            .sum()
    };
    let (mut lo, mut hi) = (max_r + 1e-12, max_r + 1e3);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mass(mid) > 1.0 { lo = mid } else { hi = mid }
    }
    let mu = 0.5 * (lo + hi);
    p_ref
        .iter()
        .zip(REWARD)
        .map(|(p, r)| beta * p / (mu - r))
        .collect()
}

fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).map(|(a, b)| a * (a / b).ln()).sum()
}

#[test]
fn rloo_and_ppo_reach_the_kl_regularised_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceSpec::Cpu.device().unwrap();
    let config = ModelConfig::Gpt2(Gpt2Config::new(6, 4, 16, 1, 2));
    let init = |d: &burn::tensor::Device| {
        CausalLm::init(
            &config,
            &mut RandomInit::with_scale(Seed(3).stream("init"), 20.0),
            d,
        )
        .unwrap()
    };
    let lm = LoadedModel::assemble(init(&device), six_word_tokenizer(), dir.path());
    assert!(lm.eos_ids.is_empty());
    let p_ref = probs(&lm.model);
    let beta = 0.5;
    let w: Vec<f64> = p_ref
        .iter()
        .zip(REWARD)
        .map(|(p, r)| p * (r / beta).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let p_star: Vec<f64> = w.iter().map(|x| x / z).collect();
    let start = kl(&p_ref, &p_star);
    assert!(
        start > 0.3,
        "the optimum must be far from the reference: {start}"
    );
    let p_fwd = forward_kl_optimum(&p_ref, beta);
    assert!((p_fwd.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    for (algo, mode, target) in [
        (Algo::Rloo, KlMode::RewardK1, &p_star),
        (Algo::Rloo, KlMode::LossK3, &p_fwd),
        (Algo::Ppo, KlMode::RewardK1, &p_star),
    ] {
        let cfg = PolicyTrainConfig {
            algo,
            ppo: PpoConfig {
                value_lr: 1e-2,
                ..Default::default()
            },
            steps: 250,
            prompts_per_step: 4,
            k: 8,
            max_new_tokens: 1,
            lr: 2e-2,
            beta,
            kl_mode: mode,
            ..Default::default()
        };
        let pipeline = RewardPipeline {
            reward: &Table,
            calibrator: None,
            transform: None,
        };
        let trained = train_policy(
            &cfg,
            &lm,
            init(&device.clone().autodiff()),
            &["a".into()],
            &pipeline,
            &device,
            None,
            |_| {},
        )
        .unwrap();
        let p = probs(&trained);
        let gap = kl(&p, target);
        eprintln!(
            "{algo:?} {mode:?}: KL(π ‖ optimum) = {gap:.4} (reference was {:.3} away); π = {p:.3?}, optimum = {target:.3?}",
            kl(&p_ref, target)
        );
        assert!(gap < 0.02, "{algo:?} {mode:?}: KL to the optimum {gap}");
    }
}

/// A two-armed bandit: arm 1 ("b") has the higher reward, so every pair of one sample of each
/// arm prefers it. IPO's loss `(h − 1/(2τ))²` then has its minimum at the margin
/// `h = log(π(b)/π(a)) − log(π_ref(b)/π_ref(a)) = 1/(2τ)` whatever the sampling frequencies;
/// DPO's `−log σ(β h)` keeps raising h. Both start at their closed-form loss (policy =
/// reference): `ln 2` and `(1/(2τ))²`. The same online (pairs of the policy's own samples) and
/// offline (a fixed pair).
#[test]
fn dpo_and_ipo_online_and_offline_start_at_their_closed_form_loss_and_ipo_reaches_its_margin() {
    struct TwoArms;
    impl Reward for TwoArms {
        fn name(&self) -> String {
            "two arms".into()
        }
        fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
            Ok(f64::from(input.ids[0]))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let device = DeviceSpec::Cpu.device().unwrap();
    let config = ModelConfig::Gpt2(Gpt2Config::new(2, 4, 16, 1, 2));
    let init = |d: &burn::tensor::Device| {
        CausalLm::init(
            &config,
            &mut RandomInit::with_scale(Seed(5).stream("init"), 1.0),
            d,
        )
        .unwrap()
    };
    let tok = Tokenizer::word_level(&["a", "b"]).unwrap();
    let lm = LoadedModel::assemble(init(&device), tok, dir.path());
    let p_ref = probs(&lm.model);
    assert!(
        p_ref[0] > 0.2 && p_ref[1] > 0.2,
        "both arms are sampled: {p_ref:?}"
    );
    let margin = |p: &[f64]| (p[1] / p[0]).ln() - (p_ref[1] / p_ref[0]).ln();
    let tau = 1.0;
    // Offline, from fixed pairs (prompt "a", chosen "b", rejected "a"), the same two optima.
    let pairs = vec![OfflinePair {
        prompt: vec![0],
        chosen: vec![1],
        rejected: vec![0],
    }];
    for (algo, offline) in [
        (Algo::Dpo, false),
        (Algo::Ipo, false),
        (Algo::Dpo, true),
        (Algo::Ipo, true),
    ] {
        let cfg = PolicyTrainConfig {
            algo,
            steps: 300,
            prompts_per_step: 8,
            k: 2,
            max_new_tokens: 1,
            lr: 2e-2,
            beta: tau,
            ..Default::default()
        };
        let pipeline = RewardPipeline {
            reward: &TwoArms,
            calibrator: None,
            transform: None,
        };
        let mut first_loss = None;
        let on_step = |r: &infalign_models::StepReport<'_>| {
            // The first step with a pair (a step whose samples all agree has none).
            let loss = r.get("loss/policy").expect("a policy loss");
            if first_loss.is_none() && loss != 0.0 {
                first_loss = Some(loss);
            }
        };
        let policy = init(&device.clone().autodiff());
        let trained = if offline {
            train_policy_on_pairs(&cfg, &lm, policy, &pairs, &device, None, on_step)
        } else {
            let prompts = ["a".to_string()];
            train_policy(
                &cfg, &lm, policy, &prompts, &pipeline, &device, None, on_step,
            )
        }
        .unwrap();
        let first = first_loss.unwrap();
        let want = match algo {
            Algo::Dpo => std::f64::consts::LN_2,
            _ => (0.5 / tau).powi(2),
        };
        // The policy's and the reference's log-probs differ only by the rounding of two
        // forward paths (about 1e-6 on log-probs of order 1).
        assert!(
            (first - want).abs() < 1e-4,
            "{algo:?} offline {offline}: first loss {first}, want {want}"
        );
        let h = margin(&probs(&trained));
        eprintln!(
            "{algo:?} offline {offline}: margin {h:.4} (IPO's optimum {})",
            0.5 / tau
        );
        match algo {
            Algo::Ipo => assert!((h - 0.5 / tau).abs() < 0.05, "IPO margin {h}"),
            _ => assert!(
                h > 0.5 / tau,
                "DPO must keep raising the preferred arm: {h}"
            ),
        }
    }
}
