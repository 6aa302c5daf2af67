//! Exact resumption of policy training (RLOO, PPO with its value network, adaptive β) and of
//! prefix-scorer training (CD-FUDGE, CD-Q with a target network): a run halted after its last
//! checkpoint and resumed ends with the files of an uninterrupted run, bit for bit, and its
//! `metrics.jsonl` has one row per step. A missing or corrupt checkpoint is an error naming the
//! file.

use std::path::{Path, PathBuf};

use infalign_core::{DeviceSpec, Seed};
use infalign_models::test_support::{six_word_tokenizer, steps_logged};
use infalign_models::weights::RandomInit;
use infalign_models::{
    CausalLm, Gpt2Config, LoadedModel, ModelConfig, PrefixScorer, RunFiles, ScorerLayout,
    Tokenizer, save_model_dir,
};
use infalign_rewards::{Reward, RewardError, RewardInput};
use infalign_rl::{
    Algo, KlMode, PolicyTrainConfig, PpoConfig, RewardPipeline, ScorerMethod, ScorerRollout,
    ScorerTrainConfig, train_policy, train_scorer,
};

fn config() -> ModelConfig {
    let mut c = Gpt2Config::new(6, 16, 16, 1, 2);
    c.eos_token_id = Some(infalign_models::EosTokenIds::One(5));
    ModelConfig::Gpt2(c)
}

fn model(device: &burn::tensor::Device) -> CausalLm {
    CausalLm::init(
        &config(),
        &mut RandomInit::with_scale(Seed(7).stream("init"), 4.0),
        device,
    )
    .unwrap()
}

/// Reward: how many "d" in the completion, minus a little per token.
struct CountD;

impl Reward for CountD {
    fn name(&self) -> String {
        "count-d".into()
    }
    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        Ok(input.ids.iter().filter(|&&t| t == 3).count() as f64 - 0.1 * input.ids.len() as f64)
    }
}

/// The files of two directories named in `files` are byte-identical.
fn assert_same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(
            x == y,
            "{f} differs between {} and {} ({} and {} bytes, first difference at {:?})",
            a.display(),
            b.display(),
            x.len(),
            y.len(),
            x.iter().zip(&y).position(|(p, q)| p != q)
        );
    }
}

struct PolicyRun {
    lm: LoadedModel,
    prompts: Vec<String>,
}

impl PolicyRun {
    fn new(dir: &Path) -> Self {
        let device = DeviceSpec::Cpu.device().unwrap();
        let lm = LoadedModel::assemble(model(&device), six_word_tokenizer(), dir);
        assert_eq!(lm.eos_ids, vec![5]);
        Self {
            lm,
            prompts: vec!["a".into(), "b c".into(), "e".into()],
        }
    }

    /// Runs `cfg` (fresh or resumed); returns the metrics of every step it ran and the policy.
    fn run(&self, cfg: &RunCfg, resume: bool) -> Result<CausalLm, String> {
        let device = DeviceSpec::Cpu.device().unwrap();
        let pipeline = RewardPipeline {
            reward: &CountD,
            calibrator: None,
            transform: None,
        };
        train_policy(
            cfg,
            &self.lm,
            model(&device.clone().autodiff()),
            &self.prompts,
            &pipeline,
            &device,
            Some(RunFiles {
                dir: &cfg.out_dir,
                tokenizer: &self.lm.tokenizer,
                resume,
            }),
            |_| {},
        )
        .map_err(|e| e.to_string())
    }
}

/// A policy config with its run directory.
#[derive(Clone)]
struct RunCfg {
    cfg: PolicyTrainConfig,
    out_dir: PathBuf,
}

impl std::ops::Deref for RunCfg {
    type Target = PolicyTrainConfig;
    fn deref(&self) -> &PolicyTrainConfig {
        &self.cfg
    }
}

impl std::ops::DerefMut for RunCfg {
    fn deref_mut(&mut self) -> &mut PolicyTrainConfig {
        &mut self.cfg
    }
}

fn policy_cfg(algo: Algo, out: PathBuf) -> RunCfg {
    let cfg = PolicyTrainConfig {
        algo,
        ppo: PpoConfig {
            value_lr: 1e-2,
            ..Default::default()
        },
        steps: 8,
        prompts_per_step: 2,
        k: 3,
        max_new_tokens: 4,
        lr: 2e-2,
        beta: 0.1,
        // Adaptive β, so that its state must survive the checkpoint.
        target_kl: 0.05,
        save_every: 3,
        ..Default::default()
    };
    RunCfg { cfg, out_dir: out }
}

#[test]
fn policy_training_resumes_exactly() {
    for algo in [Algo::Rloo, Algo::Ppo, Algo::Dpo, Algo::Ipo] {
        let dir = tempfile::tempdir().unwrap();
        let run = PolicyRun::new(dir.path());
        let device = DeviceSpec::Cpu.device().unwrap();

        let cfg_a = policy_cfg(algo, dir.path().join("a"));
        let whole = run.run(&cfg_a, false).unwrap();

        let mut cfg_b = policy_cfg(algo, dir.path().join("b"));
        cfg_b.halt_after = 4; // killed after step 4; the last checkpoint is step 3
        let halted = run.run(&cfg_b, false).unwrap();
        assert_eq!(
            steps_logged(&cfg_b.out_dir.join("metrics.jsonl")),
            [1, 2, 3, 4]
        );
        // The halted run is not yet the uninterrupted one.
        save_model_dir(dir.path().join("halted"), &halted, &run.lm.tokenizer).unwrap();
        save_model_dir(dir.path().join("whole"), &whole, &run.lm.tokenizer).unwrap();
        let differs = std::fs::read(dir.path().join("halted/model.safetensors")).unwrap()
            != std::fs::read(dir.path().join("whole/model.safetensors")).unwrap();
        assert!(
            differs,
            "{algo:?}: training did not change the weights after step 4"
        );

        cfg_b.halt_after = 0;
        let resumed = run.run(&cfg_b, true).unwrap();
        save_model_dir(dir.path().join("resumed"), &resumed, &run.lm.tokenizer).unwrap();
        assert_same_files(
            &dir.path().join("whole"),
            &dir.path().join("resumed"),
            &["model.safetensors"],
        );
        // The final checkpoints agree too: weights, value network, β and step. (Optimizer
        // files are not compared byte for byte: burn writes their entries in hash order. A lost
        // optimizer state shows in the weights of the steps after the resumption.)
        let (ca, cb) = (
            cfg_a.out_dir.join("checkpoint"),
            cfg_b.out_dir.join("checkpoint"),
        );
        let mut files = vec!["model.safetensors"];
        if algo == Algo::Ppo {
            files.extend(["value/model.safetensors", "value/value_head.safetensors"]);
        }
        assert_same_files(&ca, &cb, &files);
        let state = |d: &Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("state.json")).unwrap()).unwrap()
        };
        let (sa, sb) = (state(&ca), state(&cb));
        assert_eq!(sb["step"], 8);
        assert_eq!(sa["beta"], sb["beta"]);
        assert_ne!(sb["beta"].as_f64().unwrap(), 0.1, "β did not adapt");
        // One metrics row per step, and the same values as the uninterrupted run.
        let (ma, mb) = (
            std::fs::read_to_string(cfg_a.out_dir.join("metrics.jsonl")).unwrap(),
            std::fs::read_to_string(cfg_b.out_dir.join("metrics.jsonl")).unwrap(),
        );
        assert_eq!(
            steps_logged(&cfg_b.out_dir.join("metrics.jsonl")),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(ma, mb, "{algo:?}: metrics differ after resuming");
        let _ = device;
    }
}

#[test]
fn checkpoints_that_still_name_their_run_directory_resume() {
    // Before the run directory left the config, state.json carried `config.out_dir`.
    let dir = tempfile::tempdir().unwrap();
    let run = PolicyRun::new(dir.path());
    let mut cfg = policy_cfg(Algo::Rloo, dir.path().join("run"));
    cfg.steps = 4;
    cfg.save_every = 2;
    cfg.halt_after = 2;
    run.run(&cfg, false).unwrap();
    let path = cfg.out_dir.join("checkpoint/state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    state["config"]["out_dir"] = cfg.out_dir.to_string_lossy().as_ref().into();
    std::fs::write(&path, state.to_string()).unwrap();
    cfg.halt_after = 0;
    run.run(&cfg, true).unwrap();
}

#[test]
fn policy_resume_refuses_missing_and_corrupt_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let run = PolicyRun::new(dir.path());
    let mut cfg = policy_cfg(Algo::Ppo, dir.path().join("run"));
    cfg.steps = 4;
    cfg.save_every = 2;

    let e = run.run(&cfg, true).unwrap_err();
    assert!(e.contains("checkpoint") && e.contains("state.json"), "{e}");

    cfg.halt_after = 2;
    run.run(&cfg, false).unwrap();
    cfg.halt_after = 0;
    let ckpt = cfg.out_dir.join("checkpoint");
    for file in [
        "optimizer.bpk",
        "value_optimizer.bpk",
        "model.safetensors",
        "value/value_head.safetensors",
        "state.json",
    ] {
        let path = ckpt.join(file);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() / 3]).unwrap();
        let e = run.run(&cfg, true).unwrap_err();
        assert!(e.contains(file), "corrupt {file}: {e}");
        std::fs::write(&path, &good).unwrap();
    }
    // Another objective cannot continue the run: refused, naming what changed.
    for (algo, mode) in [(Algo::Rloo, KlMode::RewardK1), (Algo::Ppo, KlMode::LossK3)] {
        let mut other = cfg.clone();
        other.algo = algo;
        other.kl_mode = mode;
        let e = run.run(&other, true).unwrap_err();
        let named = if algo == Algo::Rloo {
            "algo"
        } else {
            "kl_mode"
        };
        assert!(e.contains(&format!("({named} changed)")), "{e}");
    }
    std::fs::remove_file(ckpt.join("value_optimizer.bpk")).unwrap();
    let e = run.run(&cfg, true).unwrap_err();
    assert!(e.contains("value_optimizer.bpk"), "{e}");
}

/// Rollouts over the six-word vocabulary with a reward the scorer can learn.
fn rollouts() -> Vec<ScorerRollout> {
    use rand::Rng;
    let mut rng = Seed(11).stream("rollouts");
    (0..40)
        .map(|_| {
            let tokens: Vec<u32> = (0..rng.random_range(1..5))
                .map(|_| rng.random_range(0..5))
                .collect();
            ScorerRollout {
                prompt_ids: vec![rng.random_range(0..3)],
                reward: tokens.iter().filter(|&&t| t == 3).count() as f64,
                tokens,
                terminal: true,
            }
        })
        .collect()
}

fn scorer(device: &burn::tensor::Device) -> PrefixScorer {
    PrefixScorer::from_base(model(device), ScorerLayout::VocabWide, device).unwrap()
}

fn scorer_cfg(method: ScorerMethod) -> ScorerTrainConfig {
    ScorerTrainConfig {
        method,
        steps: 8,
        batch_size: 6,
        lr: 1e-2,
        // CD-Q: a target network synchronised at steps 1 and 5, so the resumed run (from step
        // 3) must restore it rather than rebuild it.
        target_sync_every: 4,
        log_every: 1,
        save_every: 3,
        ..Default::default()
    }
}

fn run_scorer(
    cfg: &ScorerTrainConfig,
    out: &Path,
    tk: &Tokenizer,
    resume: bool,
) -> Result<PrefixScorer, String> {
    let device = DeviceSpec::Cpu.device().unwrap();
    let base = model(&device);
    let files = RunFiles {
        dir: out,
        tokenizer: tk,
        resume,
    };
    train_scorer(
        cfg,
        &base,
        scorer(&device.clone().autodiff()),
        &rollouts(),
        0,
        &device,
        Some(files),
        |_| {},
    )
    .map_err(|e| e.to_string())
}

#[test]
fn scorer_training_resumes_exactly() {
    for method in [ScorerMethod::Fudge, ScorerMethod::Q] {
        let dir = tempfile::tempdir().unwrap();
        let tk = six_word_tokenizer();
        let cfg = scorer_cfg(method);
        let whole = run_scorer(&cfg, &dir.path().join("a"), &tk, false).unwrap();
        whole.save(dir.path().join("whole"), &tk, "").unwrap();

        let mut halting = cfg.clone();
        halting.halt_after = 4;
        let b = dir.path().join("b");
        run_scorer(&halting, &b, &tk, false).unwrap();
        assert_eq!(steps_logged(&b.join("metrics.jsonl")), [1, 2, 3, 4]);
        if method == ScorerMethod::Q {
            assert!(b.join("checkpoint/target/value_head.safetensors").exists());
        }
        let resumed = run_scorer(&cfg, &b, &tk, true).unwrap();
        resumed.save(dir.path().join("resumed"), &tk, "").unwrap();
        assert_same_files(
            &dir.path().join("whole"),
            &dir.path().join("resumed"),
            &["model.safetensors", "value_head.safetensors"],
        );
        assert_eq!(
            steps_logged(&b.join("metrics.jsonl")),
            (1..=8).collect::<Vec<_>>()
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a/metrics.jsonl")).unwrap(),
            std::fs::read_to_string(b.join("metrics.jsonl")).unwrap(),
            "{method:?}: metrics differ after resuming"
        );
    }
}

#[test]
fn scorer_resume_refuses_missing_and_corrupt_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let tk = six_word_tokenizer();
    let mut cfg = scorer_cfg(ScorerMethod::Q);
    let out = dir.path().join("run");
    let e = run_scorer(&cfg, &out, &tk, true).unwrap_err();
    assert!(e.contains("state.json"), "{e}");
    cfg.halt_after = 3;
    run_scorer(&cfg, &out, &tk, false).unwrap();
    cfg.halt_after = 0;
    for file in [
        "optimizer.bpk",
        "value_head.safetensors",
        "target/model.safetensors",
    ] {
        let path = out.join("checkpoint").join(file);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let e = run_scorer(&cfg, &out, &tk, true).unwrap_err();
        assert!(e.contains(file), "corrupt {file}: {e}");
        std::fs::write(&path, &good).unwrap();
    }
}

#[test]
fn adaptive_beta_follows_the_proportional_controller() {
    // At step 1 the policy is the reference: KL 0, relative error −1, clipped to −0.2; so the
    // β logged at step 2 is β·(1 − 0.2·gain).
    for gain in [0.1, 1.0] {
        let dir = tempfile::tempdir().unwrap();
        let run = PolicyRun::new(dir.path());
        let mut cfg = policy_cfg(Algo::Rloo, dir.path().join("run"));
        cfg.steps = 2;
        cfg.kl_gain = gain;
        run.run(&cfg, false).unwrap();
        let rows: Vec<serde_json::Value> =
            infalign_core::io::read_jsonl(cfg.out_dir.join("metrics.jsonl")).unwrap();
        let beta = |i: usize| rows[i]["objective/beta"].as_f64().unwrap();
        assert!((beta(0) - 0.1).abs() < 1e-12);
        assert!(
            (beta(1) - 0.1 * (1.0 - 0.2 * gain)).abs() < 1e-9,
            "gain {gain}: β {}",
            beta(1)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let run = PolicyRun::new(dir.path());
    let mut cfg = policy_cfg(Algo::Rloo, dir.path().join("bad"));
    cfg.kl_gain = 0.0;
    assert!(run.run(&cfg, false).unwrap_err().contains("kl_gain"));
}

#[test]
fn snapshots_are_the_policy_along_training() {
    let dir = tempfile::tempdir().unwrap();
    let run = PolicyRun::new(dir.path());
    let mut cfg = policy_cfg(Algo::Rloo, dir.path().join("run"));
    cfg.steps = 4;
    cfg.snapshot_every = 2;
    let last = run.run(&cfg, false).unwrap();
    let snaps = cfg.out_dir.join(infalign_rl::SNAPSHOT_DIR);
    assert!(snaps.join("step-2/model.safetensors").exists());
    assert!(!snaps.join("step-3").exists());
    save_model_dir(dir.path().join("last"), &last, &run.lm.tokenizer).unwrap();
    assert_same_files(
        &snaps.join("step-4"),
        &dir.path().join("last"),
        &["model.safetensors"],
    );
    let differs = std::fs::read(snaps.join("step-2/model.safetensors")).unwrap()
        != std::fs::read(snaps.join("step-4/model.safetensors")).unwrap();
    assert!(
        differs,
        "the snapshots of steps 2 and 4 are the same weights"
    );
}
