//! Pretraining: a few steps lower the loss; a run halted after a checkpoint and resumed ends
//! with exactly the weights of an uninterrupted run; a corrupt checkpoint is refused.

use std::path::Path;

use infalign_core::DeviceSpec;
use infalign_models::training::pretrain::{PretrainConfig, pretrain};
use infalign_models::{LoadedModel, Tokenizer};

fn setup(dir: &Path) -> PretrainConfig {
    let sentences = [
        "the cat sat on the mat.",
        "the dog sat on the log.",
        "a bird sang in the tree.",
        "the sun rose over the hill.",
    ];
    let mut train = String::new();
    for i in 0..200 {
        train.push_str(&format!("{{\"text\": \"{}\"}}\n", sentences[i % 4]));
    }
    std::fs::write(dir.join("train.jsonl"), &train).unwrap();
    let valid: String = train.lines().take(50).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("valid.jsonl"), valid).unwrap();
    let plain = dir.join("plain.txt");
    std::fs::write(&plain, sentences.join("\n").repeat(10)).unwrap();
    Tokenizer::train_byte_level_bpe(&[plain], 300, 2, &[])
        .unwrap()
        .save(dir.join("tokenizer.json"))
        .unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "gpt2", "vocab_size": 300, "n_positions": 64, "n_embd": 32,
            "n_layer": 2, "n_head": 4, "eos_token_id": 0}"#,
    )
    .unwrap();
    PretrainConfig {
        train_data: dir.join("train.jsonl"),
        valid_data: dir.join("valid.jsonl"),
        tokenizer: dir.join("tokenizer.json"),
        model_config: dir.join("config.json"),
        out_dir: dir.join("run"),
        seq_len: 24,
        batch_size: 8,
        grad_accum: 2,
        steps: 40,
        lr: 5e-3,
        warmup_steps: 5,
        eval_every: 20,
        eval_windows: 16,
        save_every: 20,
        ..PretrainConfig::default()
    }
}

fn metric(path: &Path, step: u64, key: &str) -> f64 {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["step"] == step)
        .and_then(|v| v[key].as_f64())
        .unwrap_or_else(|| panic!("no {key} at step {step}"))
}

#[test]
fn a_few_steps_lower_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let device = DeviceSpec::Cpu.device().unwrap();
    let summary = pretrain(&cfg, &device, false, |_| {}).unwrap();
    let metrics = cfg.out_dir.join("metrics.jsonl");
    let first = metric(&metrics, 1, "train/loss");
    let last = metric(&metrics, 40, "train/loss");
    // Uniform over 300 tokens is ln 300 = 5.70 nats.
    assert!((first - 300f64.ln()).abs() < 0.5, "initial loss {first}");
    assert!(last < first - 2.0, "loss fell only from {first} to {last}");
    assert!(
        summary.valid_loss < first - 2.0,
        "valid loss {}",
        summary.valid_loss
    );
    assert!((summary.valid_perplexity - summary.valid_loss.exp()).abs() < 1e-9);
    // The final directory is a loadable model.
    let lm = LoadedModel::load(&summary.final_dir, &device).unwrap();
    assert_eq!(lm.model.config().n_layers(), 2);
}

#[test]
fn halted_then_resumed_equals_uninterrupted() {
    let device = DeviceSpec::Cpu.device().unwrap();
    let a = tempfile::tempdir().unwrap();
    let mut cfg_a = setup(a.path());
    cfg_a.steps = 8;
    cfg_a.save_every = 3;
    cfg_a.eval_every = 4;
    pretrain(&cfg_a, &device, false, |_| {}).unwrap();

    let b = tempfile::tempdir().unwrap();
    let mut cfg_b = setup(b.path());
    cfg_b.steps = 8;
    cfg_b.save_every = 3;
    cfg_b.eval_every = 4;
    cfg_b.halt_after = 4; // killed after step 4; the last checkpoint is step 3
    let halted = pretrain(&cfg_b, &device, false, |_| {}).unwrap();
    assert_eq!(halted.steps, 4);
    cfg_b.halt_after = 0;
    pretrain(&cfg_b, &device, true, |_| {}).unwrap();

    let wa = LoadedModel::load(cfg_a.out_dir.join("final"), &device)
        .unwrap()
        .model
        .export()
        .unwrap();
    let wb = LoadedModel::load(cfg_b.out_dir.join("final"), &device)
        .unwrap()
        .model
        .export()
        .unwrap();
    for ((na, _, va), (nb, _, vb)) in wa.tensors().zip(wb.tensors()) {
        assert_eq!(na, nb);
        assert!(va == vb, "tensor {na} differs after resuming");
    }
    // Metrics of the resumed run have one row per step, no duplicates from the replayed step 4.
    let text = std::fs::read_to_string(cfg_b.out_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());
    assert_eq!(
        metric(&cfg_a.out_dir.join("metrics.jsonl"), 8, "train/loss"),
        metric(&cfg_b.out_dir.join("metrics.jsonl"), 8, "train/loss")
    );
}

#[test]
fn corrupt_checkpoints_are_refused() {
    let device = DeviceSpec::Cpu.device().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = setup(dir.path());
    cfg.steps = 4;
    cfg.save_every = 2;
    cfg.halt_after = 2;
    pretrain(&cfg, &device, false, |_| {}).unwrap();
    let ckpt = cfg.out_dir.join("checkpoint");
    cfg.halt_after = 0;

    let opt = ckpt.join("optimizer.bpk");
    let good = std::fs::read(&opt).unwrap();
    std::fs::write(&opt, &good[..good.len() / 3]).unwrap();
    let e = pretrain(&cfg, &device, true, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("optimizer.bpk"), "{e}");
    std::fs::write(&opt, &good).unwrap();

    let w = ckpt.join("model.safetensors");
    let good = std::fs::read(&w).unwrap();
    std::fs::write(&w, &good[..good.len() - 100]).unwrap();
    let e = pretrain(&cfg, &device, true, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(&w, &good).unwrap();

    std::fs::write(ckpt.join("state.json"), "{\"step\": ").unwrap();
    let e = pretrain(&cfg, &device, true, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("state.json"), "{e}");

    std::fs::remove_dir_all(&ckpt).unwrap();
    let e = pretrain(&cfg, &device, true, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpoint"), "{e}");
}
