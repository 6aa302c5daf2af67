//! A calibrated reward model, trained on leave-one-out Ĉ targets of rollouts, predicts the
//! exact calibrated reward of completions for prompts it never saw (the exact value by
//! enumeration of the sampling distribution).

use infalign_core::{DeviceSpec, Seed};
use infalign_rewards::calibrated_reward_model::{
    CalibratedExample, CalibratedRegression, calibrated_targets,
};
use infalign_rewards::rm_train::{RmTrainConfig, train_reward_model};
use infalign_rewards::{RewardInput, RewardModel, RewardModelOutput};

use crate::common::{gold, random_text, scalar_net};
use infalign_models::test_support::six_word_tokenizer;

const LEN: usize = 6;

/// Exact C(y) = P(g(Y) < g(y)) + ½ P(g(Y) = g(y)) for Y uniform over the 6^6 texts.
fn exact_calibration() -> impl Fn(i32) -> f64 {
    let mut counts = std::collections::BTreeMap::<i32, f64>::new();
    for code in 0..6usize.pow(LEN as u32) {
        let (mut c, mut g) = (code, 0);
        for _ in 0..LEN {
            g += match c % 6 {
                3 => 1,
                4 => -1,
                _ => 0,
            };
            c /= 6;
        }
        *counts.entry(g).or_default() += 1.0;
    }
    let total: f64 = counts.values().sum();
    move |g| {
        let below: f64 = counts.range(..g).map(|(_, c)| c).sum();
        (below + 0.5 * counts.get(&g).copied().unwrap_or(0.0)) / total
    }
}

#[test]
fn calibrated_reward_model_predicts_c_for_unseen_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let tk = six_word_tokenizer();
    let device = DeviceSpec::Cpu.device().unwrap();
    let mut rng = Seed(1).stream("rollouts");
    // 120 prompts x 8 rollouts, scored by the reward.
    let mut rollouts: Vec<(String, String, f64)> = Vec::new();
    for _ in 0..120 {
        let prompt = random_text(&mut rng, 2);
        for _ in 0..8 {
            let y = random_text(&mut rng, LEN);
            let r = gold(&y);
            rollouts.push((prompt.clone(), y, r));
        }
    }
    let scored: Vec<(String, f64)> = rollouts.iter().map(|(p, _, r)| (p.clone(), *r)).collect();
    let targets = calibrated_targets(&scored).unwrap();
    let examples: Vec<CalibratedExample> = rollouts
        .iter()
        .zip(&targets)
        .map(|((p, y, _), &t)| CalibratedExample {
            ids: tk.encode(&format!("{p} {y}")).unwrap(),
            target: t,
        })
        .collect();
    let ad = device.clone().autodiff();
    let net = scalar_net(&ad);
    let cfg = RmTrainConfig {
        steps: 300,
        batch_size: 32,
        lr: 3e-3,
        ..Default::default()
    };
    let objective = CalibratedRegression(&examples);
    let net = train_reward_model(&cfg, net, &objective, 0, None, |_| {}).unwrap();
    let rm = RewardModel::new(net, tk.clone(), device.clone())
        .unwrap()
        .with_output(RewardModelOutput::Calibrated);
    // Saved and loaded through `rm(path=DIR)`, it still reads its head as σ(s).
    let out = dir.path().join("calibrated-rm");
    rm.save(&out, "test").unwrap();
    let loaded =
        infalign_rewards::reward_from_spec(&format!("rm(path={})", out.display())).unwrap();
    let exact = exact_calibration();
    let mut rng = Seed(9).stream("held-out");
    let (mut err, mut err_half) = (0.0, 0.0);
    let n = 300;
    for _ in 0..n {
        let (p, y) = (random_text(&mut rng, 2), random_text(&mut rng, LEN));
        let input = RewardInput {
            prompt: &p,
            completion: &format!(" {y}"),
            tokens: LEN,
            ids: &[],
        };
        let pred = loaded.score(&input).unwrap();
        assert!(pred > 0.0 && pred < 1.0);
        let c = exact(gold(&y) as i32);
        err += (pred - c).abs() / f64::from(n);
        err_half += (0.5 - c).abs() / f64::from(n);
    }
    eprintln!("calibrated RM: held-out MAE {err:.4}, constant ½ {err_half:.4}");
    assert!(err < 0.08, "mean absolute error {err} against the exact C");
    assert!(err < 0.5 * err_half, "{err} is not far below {err_half}");
}
