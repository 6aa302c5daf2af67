//! Exact resumption of Bradley-Terry reward-model training: a run halted after its last
//! checkpoint and resumed ends with the weights of an uninterrupted run, bit for bit, with one
//! metrics row per step; a missing or corrupt checkpoint is an error naming the file.

use std::path::Path;

use infalign_core::{DeviceSpec, Seed};
use infalign_models::test_support::{six_word_tokenizer, steps_logged};
use infalign_models::weights::RandomInit;
use infalign_models::{
    CausalLm, Gpt2Config, ModelConfig, PrefixScorer, RunFiles, ScorerLayout, Tokenizer,
};
use infalign_rewards::bradley_terry::{BradleyTerryConfig, EncodedPair, train_bradley_terry};
use rand::Rng;

/// Pairs whose chosen side has more 3s.
fn pairs() -> Vec<EncodedPair> {
    let mut rng = Seed(1).stream("pairs");
    let mut text = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..6)).collect() };
    (0..30)
        .map(|_| {
            let (a, b) = (text(4), text(4));
            let count = |v: &[u32]| v.iter().filter(|&&t| t == 3).count();
            if count(&a) >= count(&b) {
                EncodedPair {
                    chosen: a,
                    rejected: b,
                }
            } else {
                EncodedPair {
                    chosen: b,
                    rejected: a,
                }
            }
        })
        .collect()
}

fn net() -> PrefixScorer {
    let ad = DeviceSpec::Cpu.device().unwrap().autodiff();
    let config = ModelConfig::Gpt2(Gpt2Config::new(6, 16, 16, 1, 2));
    let backbone =
        CausalLm::init(&config, &mut RandomInit::new(Seed(4).stream("init")), &ad).unwrap();
    PrefixScorer::from_base(backbone, ScorerLayout::Scalar, &ad).unwrap()
}

fn cfg() -> BradleyTerryConfig {
    BradleyTerryConfig {
        steps: 8,
        batch_size: 6,
        lr: 1e-2,
        save_every: 3,
        ..Default::default()
    }
}

fn run(
    cfg: &BradleyTerryConfig,
    dir: &Path,
    tk: &Tokenizer,
    resume: bool,
) -> Result<PrefixScorer, String> {
    let files = RunFiles {
        dir,
        tokenizer: tk,
        resume,
    };
    train_bradley_terry(cfg, net(), &pairs(), 0, Some(files), |_| {}).map_err(|e| e.to_string())
}

#[test]
fn reward_model_training_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let tk = six_word_tokenizer();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    run(&cfg(), &a, &tk, false)
        .unwrap()
        .save(dir.path().join("whole"), &tk, "")
        .unwrap();

    let mut halting = cfg();
    halting.halt_after = 4; // killed after step 4; the last checkpoint is step 3
    run(&halting, &b, &tk, false)
        .unwrap()
        .save(dir.path().join("halted"), &tk, "")
        .unwrap();
    assert_eq!(steps_logged(&b.join("metrics.jsonl")), [1, 2, 3, 4]);
    let weights = |d: &str, f: &str| std::fs::read(dir.path().join(d).join(f)).unwrap();
    assert!(
        weights("halted", "value_head.safetensors") != weights("whole", "value_head.safetensors"),
        "training did not change the head after step 4"
    );

    run(&cfg(), &b, &tk, true)
        .unwrap()
        .save(dir.path().join("resumed"), &tk, "")
        .unwrap();
    for f in ["model.safetensors", "value_head.safetensors"] {
        assert!(
            weights("whole", f) == weights("resumed", f),
            "{f} differs after resuming"
        );
    }
    assert_eq!(
        steps_logged(&b.join("metrics.jsonl")),
        (1..=8).collect::<Vec<_>>()
    );
    assert_eq!(
        std::fs::read_to_string(a.join("metrics.jsonl")).unwrap(),
        std::fs::read_to_string(b.join("metrics.jsonl")).unwrap()
    );
}

#[test]
fn reward_model_resume_refuses_missing_and_corrupt_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let tk = six_word_tokenizer();
    let out = dir.path().join("run");
    let e = run(&cfg(), &out, &tk, true).unwrap_err();
    assert!(e.contains("checkpoint") && e.contains("state.json"), "{e}");
    let mut halting = cfg();
    halting.halt_after = 3;
    run(&halting, &out, &tk, false).unwrap();
    for file in [
        "optimizer.bpk",
        "model.safetensors",
        "value_head.safetensors",
        "scorer.json",
        "state.json",
    ] {
        let path = out.join("checkpoint").join(file);
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let e = run(&cfg(), &out, &tk, true).unwrap_err();
        assert!(e.contains(file), "corrupt {file}: {e}");
        std::fs::write(&path, &good).unwrap();
    }
    run(&cfg(), &out, &tk, true).unwrap();
}
