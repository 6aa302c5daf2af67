//! `--resume` of `align`, `train-scorer` and `train-rm` on the shipped base model: a run halted
//! after its last checkpoint (`--set halt_after=N`) and resumed writes the same final weights
//! as an uninterrupted run, with one metrics row per step; `--resume` without a checkpoint is a
//! clear error naming the missing file.

use std::path::Path;

use crate::common::{err, ok};
use infalign_models::test_support::steps_logged;

/// Runs `args --out A` whole, then `args --out B` halted after step 3 (checkpoints every 2
/// steps) and resumed; the files `compare` (relative to the output directory) must agree byte
/// for byte, and B's metrics must have one row per step.
fn halt_resume_equals_whole(args: &[&str], metrics: &str, compare: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let with = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend(["--set", "steps=4", "--set", "save_every=2", "--out"].map(String::from));
        v.push(out.to_str().unwrap().into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let e = err(&with(&b, &["--resume"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    assert!(e.contains("state.json"), "{e}");
    run(with(&a, &[]));
    run(with(&b, &["--set", "halt_after=3"]));
    assert_eq!(steps_logged(&b.join(metrics)), [1, 2, 3]);
    run(with(&b, &["--resume"]));
    assert_eq!(steps_logged(&b.join(metrics)), [1, 2, 3, 4]);
    for f in compare {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{args:?}: {f} differs after --resume");
    }
}

#[test]
fn align_resumes_exactly() {
    for algo in ["rloo", "ppo"] {
        halt_resume_equals_whole(
            &[
                "align",
                "--prompt",
                "The dog",
                "--prompt",
                "Love is",
                "--reward",
                "length(t_max=6)",
                "--raw",
                "--algo",
                algo,
                "--set",
                "prompts_per_step=2",
                "--set",
                "k=2",
                "--set",
                "max_new_tokens=6",
                "--set",
                "lr=1e-3",
                "--set",
                "target_kl=0.1",
            ],
            "metrics.jsonl",
            &["final/model.safetensors"],
        );
    }
}

#[test]
fn train_scorer_and_train_rm_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let rollouts = dir.path().join("rollouts.jsonl");
    let mut text = String::new();
    for (i, c) in [" was bound.", " a dog ran home", " good", " bad and sad"]
        .iter()
        .enumerate()
    {
        text.push_str(&format!(
            "{{\"prompt\": \"The dog\", \"completion\": \"{c}\", \"reward\": {}}}\n",
            i as f64 * 0.5
        ));
    }
    std::fs::write(&rollouts, text).unwrap();
    halt_resume_equals_whole(
        &[
            "train-scorer",
            "--rollouts",
            rollouts.to_str().unwrap(),
            "--method",
            "q",
            "--set",
            "batch_size=2",
            "--set",
            "log_every=1",
            "--set",
            "target_sync_every=3",
        ],
        "metrics.jsonl",
        &["model.safetensors", "value_head.safetensors"],
    );

    let prefs = dir.path().join("prefs.jsonl");
    let mut text = String::new();
    for (c, r) in [("happy", "sad"), ("good day", "bad day"), ("love", "hate")] {
        text.push_str(&format!(
            "{{\"prompt\": \"It was\", \"chosen\": \" {c}\", \"rejected\": \" {r}\"}}\n"
        ));
    }
    std::fs::write(&prefs, text).unwrap();
    halt_resume_equals_whole(
        &[
            "train-rm",
            "--data",
            prefs.to_str().unwrap(),
            "--set",
            "batch_size=2",
            "--set",
            "lr=1e-3",
        ],
        "metrics.jsonl",
        &["model.safetensors", "value_head.safetensors"],
    );
}
