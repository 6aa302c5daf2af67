//! The binary end to end: tokenizer training, model init, generation, log-probs, and clear
//! errors for bad input.

use std::path::{Path, PathBuf};

use crate::common::{err, ok};

/// A tokenizer and a tiny random GPT-2 in `dir/model`.
fn tiny_model(dir: &Path) -> PathBuf {
    let text = dir.join("corpus.txt");
    std::fs::write(&text, "the cat sat on the mat. a dog ran. ".repeat(40)).unwrap();
    let tok = dir.join("tokenizer.json");
    ok(&[
        "tokenizer",
        "train",
        "--files",
        text.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        tok.to_str().unwrap(),
    ]);
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        r#"{"model_type": "gpt2", "vocab_size": 300, "n_positions": 48, "n_embd": 32,
            "n_layer": 2, "n_head": 4, "eos_token_id": 0}"#,
    )
    .unwrap();
    let model = dir.join("model");
    ok(&[
        "init",
        "--config",
        config.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--seed",
        "5",
    ]);
    model
}

/// `infalign rollouts` of `model`: `k` per prompt, scored by `length(t_max=T)`, at most `T` new
/// tokens, into `out`.
fn rollouts(model: &str, prompts: &[&str], k: usize, t_max: usize, out: &str) {
    let (k, reward, t) = (
        k.to_string(),
        format!("length(t_max={t_max})"),
        t_max.to_string(),
    );
    let mut args = vec!["rollouts", "--model", model, "--k", &k, "--reward", &reward];
    for prompt in prompts {
        args.extend(["--prompt", prompt]);
    }
    args.extend(["--max-new-tokens", &t, "--out", out]);
    ok(&args);
}

#[test]
fn generate_is_reproducible_and_writes_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let out1 = dir.path().join("a.jsonl");
    let out2 = dir.path().join("b.jsonl");
    let out3 = dir.path().join("c.jsonl");
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"the dog\"}\n").unwrap();
    let args = |out: &Path, seed: &str| {
        vec![
            "generate".to_string(),
            "--model".into(),
            m.into(),
            "--prompt".into(),
            "the cat".into(),
            "--prompts".into(),
            prompts.to_str().unwrap().into(),
            "--n".into(),
            "3".into(),
            "--max-new-tokens".into(),
            "12".into(),
            "--seed".into(),
            seed.into(),
            "--top-k".into(),
            "50".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ]
    };
    let run = |a: Vec<String>| ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    run(args(&out1, "7"));
    run(args(&out2, "7"));
    run(args(&out3, "8"));
    let a = std::fs::read_to_string(&out1).unwrap();
    assert_eq!(
        a,
        std::fs::read_to_string(&out2).unwrap(),
        "same seed, same samples"
    );
    assert_ne!(
        a,
        std::fs::read_to_string(&out3).unwrap(),
        "another seed, other samples"
    );
    let rows: Vec<serde_json::Value> = a
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6, "2 prompts x 3 samples");
    assert_eq!(rows[0]["prompt"], "the cat");
    assert_eq!(rows[5]["prompt"], "the dog");
    for r in &rows {
        let n = r["tokens"].as_array().unwrap().len();
        assert!((1..=12).contains(&n));
        assert!(r["logprob"].as_f64().unwrap() <= 0.0);
        assert!(r["completion"].is_string());
    }
    // Printing mode works too.
    let printed = ok(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "a dog",
        "--max-new-tokens",
        "4",
    ]);
    let e = err(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "a dog",
        "--max-new-tokens",
        "60",
    ]);
    assert!(e.contains("lower --max-new-tokens"), "{e}");
    assert!(printed.starts_with("a dog"));
}

#[test]
fn logprobs_prints_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = ok(&[
        "logprobs",
        "--model",
        model.to_str().unwrap(),
        "--text",
        "the cat sat",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids = v["token_ids"].as_array().unwrap();
    let lps = v["token_logprobs"].as_array().unwrap();
    assert!(ids.len() >= 2);
    assert_eq!(lps.len(), ids.len() - 1);
    assert!(lps.iter().all(|x| x.as_f64().unwrap() < 0.0));
    // Greedy generation is deterministic whatever the seed.
    let m = model.to_str().unwrap();
    let g = |seed| {
        ok(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "the",
            "--greedy",
            "--seed",
            seed,
            "--max-new-tokens",
            "20",
        ])
    };
    assert_eq!(g("1"), g("2"));
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let e = err(&["generate", "--model", m, "--prompt", "x", "--device", "tpu"]);
    assert!(e.contains("unknown device `tpu`"), "{e}");
    if !cfg!(feature = "ndarray") {
        let e = err(&[
            "generate", "--model", m, "--prompt", "x", "--device", "ndarray",
        ]);
        assert!(e.contains("--features ndarray"), "{e}");
    }
    let e = err(&["generate", "--model", "/nonexistent/model", "--prompt", "x"]);
    assert!(e.contains("/nonexistent/model"), "{e}");
    let e = err(&["generate", "--model", m]);
    assert!(e.contains("--prompt"), "{e}");
    let long = "the cat sat on the mat. ".repeat(30);
    let e = err(&["generate", "--model", m, "--prompt", &long]);
    assert!(e.contains("exceeds the model's context of 48"), "{e}");
    let e = err(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "x",
        "--temperature",
        "0",
    ]);
    assert!(e.contains("temperature"), "{e}");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"ok\"}\n{\"text\": \"no prompt key\"}\n",
    )
    .unwrap();
    let e = err(&["generate", "--model", m, "--prompts", bad.to_str().unwrap()]);
    assert!(e.contains("bad.jsonl:2") && e.contains("prompt"), "{e}");
}

#[test]
fn models_that_do_not_fit_together_are_refused_naming_why() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let init = |tokenizer: &str, config: &str, out: &str| {
        let args = [
            "init",
            "--config",
            &path(config),
            "--tokenizer",
            &path(tokenizer),
            "--out",
            &path(out),
        ]
        .map(str::to_string);
        crate::common::infalign(&strs(&args))
    };
    // The same tokenizer with two ids swapped: same size, other text for the same ids.
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("tokenizer.json")).unwrap()).unwrap();
    let vocab = t["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["a"].clone(), vocab["b"].clone());
    vocab["a"] = b;
    vocab["b"] = a;
    std::fs::write(path("swapped.json"), t.to_string()).unwrap();
    assert!(
        init("swapped.json", "config.json", "swapped")
            .status
            .success()
    );
    let e = err(&[
        "eval",
        "--policy",
        &path("swapped"),
        "--base",
        m,
        "--prompt",
        "the",
        "--reward",
        "length",
        "--out",
        &path("eval"),
    ]);
    assert!(e.contains("different tokenizers"), "{e}");
    let e = err(&[
        "sweep",
        "--model",
        &path("swapped"),
        "--base",
        m,
        "--prompt",
        "the",
        "--reward",
        "length",
        "--strategy",
        "bon",
        "--param",
        "n",
        "--values",
        "1",
        "--out",
        &path("sw"),
    ]);
    assert!(e.contains("different tokenizers"), "{e}");
    // A tokenizer with fewer than half the model's ids (276 of 600): another model's.
    let config = std::fs::read_to_string(path("config.json")).unwrap();
    std::fs::write(path("wide.json"), config.replace("300", "600")).unwrap();
    let out = init("tokenizer.json", "wide.json", "wide");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("would vanish"), "{e}");
    // A config with fewer layers than the weights.
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&config).unwrap();
    v["n_layer"] = 1.into();
    std::fs::write(model.join("config.json"), v.to_string()).unwrap();
    let e = err(&["generate", "--model", m, "--prompt", "the"]);
    assert!(
        e.contains("of a layer the config does not have") && e.contains("1 layers"),
        "{e}"
    );
}

#[test]
fn one_name_per_concept_and_older_spellings_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let read = |name: &str| std::fs::read_to_string(out(name)).unwrap();
    // Samples per prompt: `--samples`, and the older `--k` / `--n`, give the same samples.
    for (flag, file) in [("--samples", "new.jsonl"), ("--k", "old.jsonl")] {
        ok(&[
            "rollouts",
            "--model",
            m,
            "--prompt",
            "the",
            flag,
            "3",
            "--reward",
            "length",
            "--max-new-tokens",
            "4",
            "--out",
            &out(file),
        ]);
    }
    assert_eq!(read("new.jsonl"), read("old.jsonl"));
    assert_eq!(read("new.jsonl").lines().count(), 3);
    for (flag, file) in [("--samples", "g-new.jsonl"), ("--n", "g-old.jsonl")] {
        ok(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "the",
            flag,
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            &out(file),
        ]);
    }
    assert_eq!(read("g-new.jsonl"), read("g-old.jsonl"));
    // decode: `--samples` for sampling strategies, `--n` for best-of-N's candidates.
    let decode = |extra: &[&str], file: &str| {
        let mut args = vec![
            "decode",
            "--model",
            m,
            "--prompt",
            "the",
            "--max-new-tokens",
            "4",
            "--reward",
            "length",
        ];
        args.extend(extra);
        let path = out(file);
        args.extend(["--out", path.as_str()]);
        crate::common::infalign(&args)
    };
    assert!(decode(&["--samples", "3"], "d.jsonl").status.success());
    assert_eq!(read("d.jsonl").lines().count(), 3);
    assert!(
        decode(&["--strategy", "bon", "--n", "3"], "b.jsonl")
            .status
            .success()
    );
    assert_eq!(read("b.jsonl").lines().count(), 1);
    let refused = decode(&["--strategy", "bon", "--samples", "3"], "x.jsonl");
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && e.contains("--samples"), "{e}");
    // Closed sets are checked by the parser, naming the flag and the choices.
    for (args, flag, choice) in [
        (
            vec!["align", "--algo", "sgd", "--reward", "length", "--out", "o"],
            "--algo",
            "ppo",
        ),
        (
            vec![
                "train-scorer",
                "--objective",
                "td",
                "--rollouts",
                "r",
                "--out",
                "o",
            ],
            "--objective",
            "fudge",
        ),
        (
            vec!["analytic", "--procedure", "best"],
            "--procedure",
            "bon",
        ),
        (
            vec!["analytic", "--transform", "cubic", "--lambda", "1"],
            "--transform",
            "negexp",
        ),
    ] {
        let e = err(&args);
        assert!(e.contains(flag) && e.contains(choice), "{args:?}: {e}");
    }
    // The optimal transform needs the λ it is solved at.
    let e = err(&[
        "calibrate",
        "--reference",
        "r",
        "--transform",
        "optimal",
        "--out",
        "o",
    ]);
    assert!(e.contains("--lambda"), "{e}");
}

#[test]
fn preferences_can_leave_out_ties_and_eval_measures_other_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // Samples without token ids: the gold reward counts words. Lengths 1 to 3 words, so that
    // some consecutive pairs tie.
    let rows: String = ["the", "a dog", "on the"]
        .iter()
        .flat_map(|p| {
            (0..8).map(move |i| {
                let words = vec!["cat"; 1 + (i * i + p.len()) % 3].join(" ");
                format!("{{\"prompt\": \"{p}\", \"completion\": \"{words}\", \"reward\": 0}}\n")
            })
        })
        .collect();
    std::fs::write(path("r.jsonl"), rows).unwrap();
    // Gold: the completion's word count.
    let prefs = |extra: &[&str], out: &str| {
        let samples = path("r.jsonl");
        let mut args = vec![
            "preferences",
            "--samples",
            &samples,
            "--reward",
            "length",
            "--label-temperature",
            "0",
        ];
        args.extend(extra);
        let o = path(out);
        args.extend(["--out", o.as_str()]);
        ok(&args);
        infalign_core::io::read_jsonl::<serde_json::Value>(path(out)).unwrap()
    };
    let all = prefs(&[], "all.jsonl");
    let kept = prefs(&["--skip-ties"], "kept.jsonl");
    let words = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().split_whitespace().count();
    assert_eq!(all.len(), 12, "4 consecutive pairs of each of 3 prompts");
    let untied = all
        .iter()
        .filter(|p| words(p, "chosen") != words(p, "rejected"))
        .count();
    assert_eq!(kept.len(), untied);
    assert!(untied < all.len(), "some pairs tie");
    // Noiseless labels: the longer completion is always the chosen one.
    assert!(
        kept.iter()
            .all(|p| words(p, "chosen") > words(p, "rejected"))
    );
    // eval --measure records another reward's mean over the policy's samples.
    ok(&[
        "eval",
        "--policy",
        m,
        "--base",
        m,
        "--prompt",
        "the",
        "--reward",
        "length",
        "--samples",
        "4",
        "--max-new-tokens",
        "6",
        "--measure",
        "length(t_max=6)",
        "--out",
        &path("eval"),
    ]);
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("eval/eval.json")).unwrap()).unwrap();
    let measured = e["point"]["measures"]["length(t_max=6)"].as_f64().unwrap();
    assert!(measured.is_finite() && measured <= 0.0, "{e}");
}

#[test]
fn the_optimal_transform_calibrates_and_trains() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (reference, calibrated) = (path("r.jsonl"), path("c.jsonl"));
    // Reference rewards of every length from 1 to 6 tokens, `ln(T/6)`, for both prompts.
    let rows: String = ["the", "a dog"]
        .iter()
        .flat_map(|p| {
            (1..=6).map(move |t| {
                let reward = (f64::from(t) / 6.0).ln();
                let completion = vec!["cat"; t as usize].join(" ");
                format!("{{\"prompt\": \"{p}\", \"completion\": \"{completion}\", \"reward\": {reward}}}\n")
            })
        })
        .collect();
    std::fs::write(&reference, rows).unwrap();
    let optimal = ["--transform", "optimal", "--procedure", "bon", "--n", "4"];
    let mut args = vec!["calibrate", "--reference", &reference];
    args.extend(optimal);
    let e = err(&[args.as_slice(), &["--out", &calibrated]].concat());
    assert!(e.contains("--lambda"), "{e}");
    ok(&[args.as_slice(), &["--lambda", "8", "--out", &calibrated]].concat());
    // Φ of the optimal transform for best-of-4 rises with the calibrated reward.
    let rows = infalign_core::io::read_jsonl::<serde_json::Value>(&calibrated).unwrap();
    let mut pairs: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r["calibrated"].as_f64().unwrap(),
                r["transformed"].as_f64().unwrap(),
            )
        })
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        pairs.windows(2).all(|w| w[0].1 <= w[1].1 + 1e-12),
        "{pairs:?}"
    );
    assert!(
        pairs.first().unwrap().1 < pairs.last().unwrap().1,
        "{pairs:?}"
    );
    // align solves it at λ = 1/β and trains on it.
    let mut args = vec![
        "align",
        "--model",
        m,
        "--prompt",
        "the",
        "--prompt",
        "a dog",
        "--reward",
        "length(t_max=6)",
        "--reference",
        &reference,
        "--beta",
        "0.25",
        "--set",
        "steps=2",
        "--set",
        "k=2",
        "--set",
        "prompts_per_step=2",
        "--set",
        "max_new_tokens=6",
    ];
    args.extend(optimal);
    let out = path("aligned");
    args.extend(["--out", out.as_str()]);
    // One table at one λ: an adaptive β would leave it behind.
    let adaptive = [args.as_slice(), &["--set", "target_kl=1"]].concat();
    let e = err(&adaptive);
    assert!(e.contains("adaptive β"), "{e}");
    ok(&args);
    assert!(dir.path().join("aligned/final/model.safetensors").exists());
}

#[test]
fn decode_strategies_write_scored_samples() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    // A prefix scorer directory from the base model (zero head), as train-scorer would write.
    let device = infalign_core::DeviceSpec::Cpu.device().unwrap();
    let lm = infalign_models::LoadedModel::load(&model, &device).unwrap();
    let scorer = infalign_models::PrefixScorer::from_base(
        lm.model.clone(),
        infalign_models::ScorerLayout::VocabWide,
        &device,
    )
    .unwrap();
    let sdir = dir.path().join("scorer");
    scorer.save(&sdir, &lm.tokenizer, "test").unwrap();
    let s = sdir.to_str().unwrap();
    let out = dir.path().join("out.jsonl");
    let o = out.to_str().unwrap();
    let rows = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec![
            "decode",
            "--model",
            m,
            "--prompt",
            "the cat",
            "--prompt",
            "a dog",
            "--max-new-tokens",
            "6",
            "--out",
            o,
        ];
        all.extend(args);
        ok(&all);
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let bon = rows(&[
        "--strategy",
        "bon",
        "--n",
        "4",
        "--reward",
        "length(t_max=6)",
    ]);
    assert_eq!(bon.len(), 2, "one sample per prompt");
    assert!(bon.iter().all(|r| r["reward"].as_f64().unwrap() <= 0.0));
    let won = rows(&[
        "--strategy",
        "won",
        "--n",
        "4",
        "--reward",
        "length(t_max=6)",
    ]);
    for (b, w) in bon.iter().zip(&won) {
        assert!(b["reward"].as_f64() >= w["reward"].as_f64());
    }
    assert_eq!(
        rows(&[
            "--strategy",
            "soft-bon",
            "--n",
            "3",
            "--reward",
            "sentiment"
        ])
        .len(),
        2
    );
    assert_eq!(
        rows(&[
            "--strategy",
            "cd-token",
            "--scorer",
            s,
            "--n",
            "2",
            "--lambda",
            "2"
        ])
        .len(),
        4
    );
    let block = rows(&[
        "--strategy",
        "cd-block",
        "--scorer",
        s,
        "--scorer",
        s,
        "--weight",
        "1",
        "--weight",
        "-0.5",
        "--k",
        "3",
        "--m",
        "2",
        "--reward",
        "sentiment",
    ]);
    assert_eq!(block.len(), 2);
    assert!(block[0]["reward"].is_number());
    // Missing pieces name the flag.
    let e = err(&[
        "decode",
        "--model",
        m,
        "--prompt",
        "x",
        "--strategy",
        "bon",
        "--out",
        o,
    ]);
    assert!(e.contains("--reward"), "{e}");
    let e = err(&[
        "decode",
        "--model",
        m,
        "--prompt",
        "x",
        "--strategy",
        "cd-block",
        "--out",
        o,
    ]);
    assert!(e.contains("--scorer"), "{e}");
    let e = err(&[
        "decode",
        "--model",
        m,
        "--prompt",
        "x",
        "--strategy",
        "bon",
        "--reward",
        "lenght",
        "--out",
        o,
    ]);
    assert!(e.contains("lenght"), "{e}");
}

#[test]
fn rollouts_calibrate_and_train_a_scorer() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    rollouts(m, &["the cat", "a dog"], 8, 10, &p("ref.jsonl"));
    let refs = std::fs::read_to_string(p("ref.jsonl")).unwrap();
    assert_eq!(refs.lines().count(), 16);
    // Calibrating the reference against itself (leave-one-out) puts every value in [0, 1] and
    // averages one half per prompt.
    ok(&[
        "calibrate",
        "--reference",
        &p("ref.jsonl"),
        "--transform",
        "exp",
        "--t",
        "2",
        "--out",
        &p("cal.jsonl"),
    ]);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(p("cal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let c: Vec<f64> = rows
        .iter()
        .map(|r| r["calibrated"].as_f64().unwrap())
        .collect();
    assert!(c.iter().all(|&x| (0.0..=1.0).contains(&x)));
    let mean = c.iter().sum::<f64>() / c.len() as f64;
    assert!(
        (mean - 0.5).abs() < 1e-9,
        "leave-one-out ranks average 1/2, got {mean}"
    );
    for r in &rows {
        let t = r["transformed"].as_f64().unwrap();
        assert!((t - (2.0 * r["calibrated"].as_f64().unwrap()).exp()).abs() < 1e-12);
    }
    // A scorer trained on the calibrated reward decodes.
    ok(&[
        "train-scorer",
        "--model",
        m,
        "--rollouts",
        &p("ref.jsonl"),
        "--method",
        "q",
        "--calibrate",
        "--set",
        "steps=5",
        "--set",
        "batch_size=4",
        "--out",
        &p("scorer"),
    ]);
    assert!(dir.path().join("scorer/value_head.safetensors").exists());
    ok(&[
        "decode",
        "--model",
        m,
        "--prompt",
        "the cat",
        "--strategy",
        "cd-token",
        "--scorer",
        &p("scorer"),
        "--max-new-tokens",
        "5",
        "--out",
        &p("cd.jsonl"),
    ]);

    // Bad input: a prompt without rollouts, a missing reward, a malformed line; nothing written.
    std::fs::write(
        p("s1.jsonl"),
        "{\"prompt\": \"unseen\", \"completion\": \"x\", \"reward\": 1.0}\n",
    )
    .unwrap();
    let e = err(&[
        "calibrate",
        "--reference",
        &p("ref.jsonl"),
        "--samples",
        &p("s1.jsonl"),
        "--out",
        &p("o.jsonl"),
    ]);
    assert!(e.contains("unseen") && e.contains("rollouts"), "{e}");
    std::fs::write(p("s2.jsonl"), "{\"prompt\": \"the cat\", \"completion\": \"x\", \"reward\": 0.1}\n{\"prompt\": \"the cat\", \"completion\": \"x\", \"reward\": null}\n").unwrap();
    let e = err(&[
        "calibrate",
        "--reference",
        &p("ref.jsonl"),
        "--samples",
        &p("s2.jsonl"),
        "--out",
        &p("o.jsonl"),
    ]);
    assert!(e.contains("s2.jsonl:2") && e.contains("reward"), "{e}");
    std::fs::write(
        p("s3.jsonl"),
        "{\"prompt\": \"the cat\", \"completion\": \"x\", \"reward\": 0.1}\n{oops\n",
    )
    .unwrap();
    let e = err(&[
        "calibrate",
        "--reference",
        &p("ref.jsonl"),
        "--samples",
        &p("s3.jsonl"),
        "--out",
        &p("o.jsonl"),
    ]);
    assert!(e.contains("s3.jsonl:2"), "{e}");
    assert!(
        !dir.path().join("o.jsonl").exists(),
        "nothing written on error"
    );
}

#[test]
fn analytic_prints_closed_forms() {
    let json =
        |args: &[&str]| -> serde_json::Value { serde_json::from_str(ok(args).trim()).unwrap() };
    // Identity at λ = 10: win rate 0.9, KL 1.3031 (docs/ALGORITHMS.md B.5).
    let v = json(&["analytic", "--transform", "identity", "--lambda", "10"]);
    assert!((v["win_rate"].as_f64().unwrap() - 0.9).abs() < 1e-4);
    assert!((v["kl"].as_f64().unwrap() - 1.3031).abs() < 1e-4);
    // Solving for a KL returns that KL.
    let v = json(&[
        "analytic",
        "--procedure",
        "bon",
        "--n",
        "4",
        "--transform",
        "exp",
        "--t",
        "4",
        "--kl",
        "0.5",
    ]);
    assert!((v["kl"].as_f64().unwrap() - 0.5).abs() < 1e-6);
    assert!(v["win_rate"].as_f64().unwrap() > v["standard_win_rate"].as_f64().unwrap());
    let v = json(&[
        "analytic",
        "--procedure",
        "bon",
        "--n",
        "4",
        "--transform",
        "optimal",
        "--lambda",
        "3",
    ]);
    assert!(v["win_rate"].as_f64().unwrap() > 0.5);
    // At a KL, λ is solved with the optimal transform.
    let v: serde_json::Value = serde_json::from_str(&ok(&[
        "analytic",
        "--procedure",
        "bon",
        "--n",
        "4",
        "--transform",
        "optimal",
        "--kl",
        "1",
    ]))
    .unwrap();
    assert!((v["kl"].as_f64().unwrap() - 1.0).abs() < 1e-4, "{v}");
    let e = err(&["analytic", "--transform", "optimal"]);
    assert!(e.contains("--lambda L or --kl K"), "{e}");
}

fn read_points(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sweep_eval_and_report_draw_curves() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let run = dir.path().join("run");
    let sweep_on = |model: &str, out: &str, extra: &[&str]| {
        let out = run.join(out);
        let mut args = vec![
            "sweep",
            "--model",
            model,
            "--prompt",
            "the cat",
            "--prompt",
            "a dog",
            "--prompt",
            "on the",
            "--reward",
            "length(t_max=8)",
            "--max-new-tokens",
            "8",
            "--samples",
            "4",
            "--eval-n",
            "2",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        ok(&args);
        out
    };
    let sweep = |out: &str, extra: &[&str]| sweep_on(m, out, extra);
    // Best-of-N: KL is the bound ln N − (N−1)/N.
    let bon = sweep(
        "bon",
        &["--strategy", "bon", "--param", "n", "--values", "1,3"],
    );
    let points = read_points(&bon.join("points.jsonl"));
    assert_eq!(points.len(), 2);
    let bound = 3f64.ln() - 2.0 / 3.0;
    assert!((points[1]["kl"]["value"].as_f64().unwrap() - bound).abs() < 1e-12);
    assert_eq!(points[1]["kl"]["kind"], "bound");
    assert_eq!(points[0]["kl"]["value"], 0.0);
    // Length reward: best-of-3 is at least as long as the base on average.
    assert!(
        points[1]["mean_reward"].as_f64().unwrap()
            >= points[1]["base_mean_reward"].as_f64().unwrap()
    );
    assert!(bon.join("n=3.jsonl").exists());
    // Decoding from another model against `--base`: the base side is the base's own samples,
    // and the KL adds the decoding model's share. Against itself that share is zero.
    let same = sweep(
        "bon-same-base",
        &[
            "--strategy",
            "bon",
            "--param",
            "n",
            "--values",
            "1,3",
            "--base",
            m,
        ],
    );
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(same.join("base.jsonl")), read(bon.join("base.jsonl")));
    for (p, q) in read_points(&same.join("points.jsonl"))
        .iter()
        .zip(&read_points(&bon.join("points.jsonl")))
    {
        let (kp, kq) = (
            p["kl"]["value"].as_f64().unwrap(),
            q["kl"]["value"].as_f64().unwrap(),
        );
        assert!((kp - kq).abs() < 1e-4 * (1.0 + kq), "{kp} vs {kq}");
        assert_eq!(p["win_rate"], q["win_rate"]);
    }
    let other = dir.path().join("other");
    ok(&[
        "init",
        "--config",
        dir.path().join("config.json").to_str().unwrap(),
        "--tokenizer",
        dir.path().join("tokenizer.json").to_str().unwrap(),
        "--out",
        other.to_str().unwrap(),
        "--seed",
        "9",
    ]);
    let on_other = sweep_on(
        other.to_str().unwrap(),
        "bon-other",
        &[
            "--strategy",
            "bon",
            "--param",
            "n",
            "--values",
            "1",
            "--base",
            m,
            "--replicate",
            "2",
        ],
    );
    assert_eq!(
        read(on_other.join("base.jsonl")),
        read(bon.join("base.jsonl"))
    );
    let p = &read_points(&on_other.join("points.jsonl"))[0];
    // Decoding from one seed's policy: the points carry that replicate for the report.
    assert_eq!(p["replicate"], 2, "{p}");
    assert_eq!(p["kl"]["kind"], "bound");
    assert!(p["kl"]["stderr"].as_f64().unwrap() > 0.0, "{p}");
    // Temperature: exact per-token KL, zero at T = 1 and positive at T = 0.5.
    let temp = sweep(
        "temperature",
        &[
            "--strategy",
            "sample",
            "--param",
            "temperature",
            "--values",
            "1,0.5",
        ],
    );
    let points = read_points(&temp.join("points.jsonl"));
    assert_eq!(points[0]["kl"]["kind"], "zero");
    assert_eq!(points[1]["kl"]["kind"], "exact_per_token");
    assert!(points[1]["kl"]["value"].as_f64().unwrap() > 0.0);
    let html = std::fs::read_to_string(temp.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("exact per-token"));
    assert!(temp.join("win-rate-best-of-2.png").exists());
    // A policy evaluated at a β, then one report over the whole run directory.
    ok(&[
        "eval",
        "--policy",
        m,
        "--base",
        m,
        "--prompt",
        "the cat",
        "--prompt",
        "a dog",
        "--reward",
        "length(t_max=8)",
        "--samples",
        "4",
        "--n",
        "2",
        "--max-new-tokens",
        "8",
        "--method",
        "same model",
        "--param",
        "beta",
        "--value",
        "0.1",
        "--out",
        run.join("policy/eval").to_str().unwrap(),
    ]);
    ok(&["report", "--run", run.to_str().unwrap()]);
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    for text in [
        "| best-of-N | n = 3 |",
        "| sampling | temperature = 0.5 |",
        "| same model | beta = 0.1 |",
    ] {
        assert!(md.contains(text), "{text} missing from\n{md}");
    }
    assert!(run.join("win-rate-standard.svg").exists());
    // Bad input names the flag.
    let bad = run.join("bad");
    let bad_sweep = |extra: &[&str]| {
        let mut args = vec!["sweep", "--model", m, "--prompt", "x", "--reward", "length"];
        args.extend(["--strategy", "bon", "--out", bad.to_str().unwrap()]);
        args.extend(extra);
        err(&args)
    };
    let e = bad_sweep(&["--param", "lambda", "--values", "1"]);
    assert!(
        e.contains("--param Lambda does not apply to --strategy bon"),
        "{e}"
    );
    let e = bad_sweep(&[
        "--param",
        "n",
        "--values",
        "2",
        "--samples",
        "2",
        "--eval-n",
        "4",
    ]);
    assert!(
        e.contains("--eval-n 4 needs --samples of at least 4"),
        "{e}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert!(err(&["report", "--run", empty.to_str().unwrap()]).contains("no points.jsonl"));
    // A policy judged against the sweep's own base samples: its base side is the sweep's, to
    // the reward (the same rows, scored by the same reward).
    let base_file = bon.join("base.jsonl");
    let eval_against = |samples: &str, out: &str| {
        vec![
            "eval".to_string(),
            "--policy".into(),
            m.into(),
            "--base".into(),
            m.into(),
            "--prompt".into(),
            "the cat".into(),
            "--prompt".into(),
            "a dog".into(),
            "--prompt".into(),
            "on the".into(),
            "--reward".into(),
            "length(t_max=8)".into(),
            "--samples".into(),
            samples.into(),
            "--eval-n".into(),
            "2".into(),
            "--max-new-tokens".into(),
            "8".into(),
            "--base-samples".into(),
            base_file.to_str().unwrap().into(),
            "--out".into(),
            dir.path().join(out).to_str().unwrap().into(),
        ]
    };
    ok(&strs(&eval_against("4", "paired-eval")));
    let eval: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("paired-eval/eval.json")).unwrap(),
    )
    .unwrap();
    let swept = read_points(&bon.join("points.jsonl"))[0]["base_mean_reward"]
        .as_f64()
        .unwrap();
    let judged = eval["mean_reward_base"].as_f64().unwrap();
    assert!((swept - judged).abs() < 1e-12, "{swept} vs {judged}");
    let e = err(&strs(&eval_against("2", "paired-eval-2")));
    assert!(
        e.contains("base.jsonl") && e.contains("has 4 rows") && e.contains("--samples 2"),
        "{e}"
    );
}

#[test]
fn calibrated_reward_model_trains_and_aligns() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let mut args = vec![
        "rollouts",
        "--model",
        m,
        "--k",
        "6",
        "--reward",
        "length(t_max=8)",
    ];
    let prompts: Vec<String> = (0..10).map(|i| format!("the cat {i}")).collect();
    for q in &prompts {
        args.extend(["--prompt", q.as_str()]);
    }
    let refs = p("ref.jsonl");
    args.extend(["--max-new-tokens", "8", "--out", &refs]);
    ok(&args);
    let rm = p("cal-rm");
    let summary = ok(&[
        "train-rm",
        "--model",
        m,
        "--rollouts",
        &refs,
        "--holdout",
        "0.2",
        "--set",
        "steps=20",
        "--out",
        &rm,
    ]);
    let s: serde_json::Value = serde_json::from_str(summary.trim()).unwrap();
    assert_eq!(s["objective"], "calibrated");
    assert_eq!(s["heldout_prompts"], 2);
    assert!(s["heldout_mae"].as_f64().unwrap().is_finite());
    let info = std::fs::read_to_string(dir.path().join("cal-rm/reward_model.json")).unwrap();
    assert!(info.contains("calibrated"));
    // Its Ĉ drives CTRL with no reference rollouts: --calibrated-reward applies Φ directly.
    let spec = format!("rm(path={rm})");
    ok(&[
        "align",
        "--model",
        m,
        "--prompt",
        "a new prompt",
        "--reward",
        &spec,
        "--calibrated-reward",
        "--transform",
        "exp",
        "--t",
        "2",
        "--set",
        "steps=2",
        "--set",
        "max_new_tokens=4",
        "--set",
        "prompts_per_step=1",
        "--out",
        &p("ctrl"),
    ]);
    assert!(dir.path().join("ctrl/final/model.safetensors").exists());
    // Both data sources at once, or neither, is a clear error.
    let e = err(&["train-rm", "--model", m, "--out", &p("x")]);
    assert!(e.contains("--rollouts") || e.contains("--data"), "{e}");
    let e = err(&[
        "align",
        "--model",
        m,
        "--prompt",
        "x",
        "--reward",
        "length",
        "--raw",
        "--calibrated-reward",
        "--out",
        &p("y"),
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
}

#[test]
fn align_set_keys_are_not_overwritten_by_flag_defaults() {
    // `--set beta=0.3 --set algo=ppo` with neither flag trains PPO at β = 0.3, and PPO's own
    // metrics reach metrics.jsonl.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("ppo");
    ok(&[
        "align",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "the cat",
        "--prompt",
        "a dog",
        "--reward",
        "length(t_max=4)",
        "--raw",
        "--set",
        "beta=0.3",
        "--set",
        "algo=ppo",
        "--set",
        "steps=2",
        "--set",
        "max_new_tokens=4",
        "--set",
        "prompts_per_step=2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r["objective/beta"].as_f64(), Some(0.3), "{r}");
        let clipfrac = r["policy/clipfrac"]
            .as_f64()
            .expect("PPO logs its clip fraction");
        assert!((0.0..=1.0).contains(&clipfrac), "{r}");
        assert!(r["loss/value"].as_f64().is_some_and(f64::is_finite), "{r}");
    }
    // The flag still wins over the key.
    let rloo = dir.path().join("rloo");
    ok(&[
        "align",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "the cat",
        "--reward",
        "length(t_max=4)",
        "--raw",
        "--set",
        "algo=ppo",
        "--algo",
        "rloo",
        "--beta",
        "0.2",
        "--set",
        "steps=1",
        "--set",
        "max_new_tokens=4",
        "--set",
        "prompts_per_step=1",
        "--out",
        rloo.to_str().unwrap(),
    ]);
    let row: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(rloo.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(row["objective/beta"].as_f64(), Some(0.2));
    assert!(row.get("policy/clipfrac").is_none(), "{row}");
}

#[test]
fn non_finite_numbers_stop_training_naming_the_step() {
    // A transform whose values overflow, and a learning rate that blows the weights up, stop
    // `align` with an error naming the step and the quantity, and no final model is written.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let refs = p("ref.jsonl");
    rollouts(m, &["the cat"], 4, 4, &refs);
    let run = |extra: &[&str], out: &str| {
        let mut args = vec![
            "align",
            "--model",
            m,
            "--prompt",
            "the cat",
            "--reward",
            "length(t_max=4)",
            "--set",
            "steps=3",
            "--set",
            "max_new_tokens=4",
            "--set",
            "prompts_per_step=1",
            "--out",
            out,
        ];
        args.extend(extra);
        err(&args)
    };
    let e = run(
        &["--reference", &refs, "--transform", "exp", "--t", "1e30"],
        &p("overflow"),
    );
    // Refused before training: exp(t·u) would overflow (the step-level check stays as a net).
    assert!(e.contains("is above 700: exp(t·u) would overflow"), "{e}");
    assert!(!dir.path().join("overflow/final").exists());
    let e = run(&["--raw", "--set", "lr=1e30"], &p("lr"));
    assert!(
        e.contains("step ") && (e.contains("is NaN") || e.contains("is inf")),
        "{e}"
    );
    assert!(!dir.path().join("lr/final").exists());
}

#[test]
fn an_output_naming_an_input_is_refused_before_anything_is_read() {
    // `--out` equal to an input (by its own path or through a link) would destroy the input it
    // is computed from: refused, the input unchanged.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let samples = dir.path().join("samples.jsonl");
    rollouts(m, &["the cat"], 2, 4, samples.to_str().unwrap());
    let before = std::fs::read(&samples).unwrap();
    let s = samples.to_str().unwrap();
    let e = err(&[
        "preferences",
        "--samples",
        s,
        "--reward",
        "length(t_max=4)",
        "--out",
        s,
    ]);
    assert!(e.contains("is the --samples input"), "{e}");
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&samples, &link).unwrap();
    let e = err(&[
        "calibrate",
        "--reference",
        s,
        "--out",
        link.to_str().unwrap(),
    ]);
    assert!(e.contains("is the --reference input"), "{e}");
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"the cat\"}\n").unwrap();
    let p = prompts.to_str().unwrap();
    for cmd in [
        vec!["generate", "--model", m, "--prompts", p, "--out", p],
        vec![
            "rollouts",
            "--model",
            m,
            "--prompts",
            p,
            "--reward",
            "length",
            "--out",
            p,
        ],
    ] {
        let e = err(&cmd);
        assert!(e.contains("is the --prompts input"), "{cmd:?}: {e}");
    }
    assert_eq!(std::fs::read(&samples).unwrap(), before);
    assert_eq!(
        std::fs::read_to_string(&prompts).unwrap(),
        "{\"prompt\": \"the cat\"}\n"
    );
}

#[test]
fn out_of_range_numbers_are_refused_naming_the_flag() {
    // Each of these used to run (a best-of-0 win rate, `lambda: null`, a NaN fraction of the
    // prompts held out): now clap refuses them before anything runs, naming the flag.
    for (args, flag) in [
        (vec!["analytic", "--n", "0"], "--n"),
        (vec!["analytic", "--lambda", "inf"], "--lambda"),
        (vec!["analytic", "--lambda=-1"], "--lambda"),
        (vec!["analytic", "--kl", "NaN"], "--kl"),
        (
            vec![
                "eval", "--policy", "p", "--reward", "length", "--n", "0", "--out", "o",
            ],
            "--eval-n",
        ),
        (
            vec![
                "eval",
                "--policy",
                "p",
                "--reward",
                "length",
                "--samples",
                "0",
                "--out",
                "o",
            ],
            "--samples",
        ),
        (
            vec![
                "train-scorer",
                "--rollouts",
                "r",
                "--holdout",
                "NaN",
                "--out",
                "o",
            ],
            "--holdout",
        ),
        (
            vec![
                "train-scorer",
                "--rollouts",
                "r",
                "--holdout=-0.5",
                "--out",
                "o",
            ],
            "--holdout",
        ),
        (
            vec![
                "train-rm",
                "--rollouts",
                "r",
                "--holdout",
                "2",
                "--out",
                "o",
            ],
            "--holdout",
        ),
    ] {
        let e = err(&args);
        assert!(
            e.contains(flag) && e.contains("invalid value"),
            "{args:?}: {e}"
        );
    }
    let e = err(&["generate", "--prompt", "x", "--stop", ""]);
    assert!(e.contains("--stop"), "{e}");
    // A device string is checked by every command, also those that compute on none.
    for args in [
        vec!["--device", "foo", "analytic"],
        vec!["--device", "foo", "report", "--run", "r"],
        vec![
            "--device",
            "foo",
            "calibrate",
            "--reference",
            "r",
            "--out",
            "o",
        ],
    ] {
        let e = err(&args);
        assert!(e.contains("foo"), "{args:?}: {e}");
    }
    // A transform whose values overflow, and a parameter without its transform, before any
    // file is read.
    let e = err(&[
        "calibrate",
        "--reference",
        "r",
        "--transform",
        "exp",
        "--t",
        "800",
        "--out",
        "o",
    ]);
    assert!(e.contains("800 is above 700"), "{e}");
    let e = err(&["calibrate", "--reference", "r", "--t", "5", "--out", "o"]);
    assert!(e.contains("required") && e.contains("--transform"), "{e}");
    // A bad row after blank lines is named by its line in the file.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\": \"p\", \"completion\": \"a\", \"reward\": 1}\n\n\n{\"prompt\": \"p\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    let e = err(&[
        "calibrate",
        "--reference",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("bad.jsonl:4:"), "{e}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn a_run_directory_is_never_mixed_or_shared() {
    // A training command refuses a directory that holds an earlier run unless told to resume
    // it or start over; a directory another live command is writing to is refused (an OS lock,
    // which the system releases when its holder ends); `init` does not write over a directory.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let out = dir.path().join("run");
    let o = out.to_str().unwrap();
    let align = |extra: &[&str]| {
        let mut args = vec![
            "align",
            "--model",
            m,
            "--prompt",
            "the cat",
            "--reward",
            "length(t_max=4)",
            "--raw",
            "--set",
            "steps=2",
            "--set",
            "max_new_tokens=4",
            "--set",
            "prompts_per_step=1",
            "--out",
            o,
        ];
        args.extend(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let first = align(&[]);
    ok(&strs(&first));
    let weights = out.join("final").join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let e = err(&strs(&first));
    assert!(e.contains("already holds an earlier run's files"), "{e}");
    assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        before,
        "refused: nothing changed"
    );
    let both = align(&["--resume", "--overwrite"]);
    assert!(err(&strs(&both)).contains("cannot be used with"));
    // A live holder of the lock (this test's own process) keeps others out.
    let lock = out.join(".lock");
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lock)
        .unwrap();
    held.try_lock().unwrap();
    let e = err(&strs(&align(&["--overwrite"])));
    assert!(e.contains("is writing to"), "{e}");
    drop(held);
    // Released (as when its process ends, killed or not): --overwrite starts over.
    ok(&strs(&align(&["--overwrite"])));
    assert!(weights.is_file());
    // --resume continues the finished run (nothing left to do) and keeps its model.
    ok(&strs(&align(&["--resume"])));
    // Resuming with another reward or shaping is another run: refused, naming what changed.
    let mut other = align(&["--resume"]);
    let at = other.iter().position(|a| a == "length(t_max=4)").unwrap();
    other[at] = "length(t_max=5)".into();
    let e = err(&strs(&other));
    assert!(e.contains("reward changed"), "{e}");
    // `init` refuses a directory that holds files, and --overwrite replaces it whole.
    let init = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "init",
            "--config",
            dir.path().join("config.json").to_str().unwrap(),
            "--tokenizer",
            dir.path().join("tokenizer.json").to_str().unwrap(),
            "--out",
            m,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let e = err(&strs(&init(&[])));
    assert!(e.contains("already holds files"), "{e}");
    std::fs::write(model.join("stray.txt"), "x").unwrap();
    ok(&strs(&init(&["--overwrite"])));
    assert!(!model.join("stray.txt").exists() && model.join("config.json").is_file());
}

#[test]
fn rows_outside_the_models_range_are_refused_naming_the_line() {
    // A token id past the vocabulary, a row longer than the context and an id that is not a
    // token id: each an error naming the file and line, where they used to panic in the
    // embedding lookup. A bad `k` names the config key, and pretraining finds the shipped
    // corpus from another working directory.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let write = |name: &str, bad: serde_json::Value| -> String {
        let mut lines = Vec::new();
        for p in 0..3 {
            for j in 0..3 {
                lines.push(serde_json::json!({
                    "prompt": format!("the cat {p}"), "completion": " sat",
                    "reward": j as f64, "tokens": [5, 6]
                }));
            }
        }
        lines.insert(4, bad);
        let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let path = dir.path().join(name);
        // A blank line first: the error must count it.
        std::fs::write(&path, format!("\n{}\n", text.join("\n"))).unwrap();
        path.to_str().unwrap().to_string()
    };
    let row = |tokens: serde_json::Value, completion: &str| {
        serde_json::json!({"prompt": "the cat 1", "completion": completion, "reward": 1.0,
            "tokens": tokens})
    };
    let big_id = write("big-id.jsonl", row(serde_json::json!([5, 300]), " sat"));
    let negative = write("negative.jsonl", row(serde_json::json!([5, -2]), " sat"));
    let mut long = row(serde_json::json!(null), &" the mat".repeat(60));
    long.as_object_mut().unwrap().remove("tokens");
    let long = write("long.jsonl", long);
    let scorer = |rollouts: &str| {
        err(&[
            "train-scorer",
            "--model",
            m,
            "--rollouts",
            rollouts,
            "--method",
            "q",
            "--set",
            "steps=1",
            "--out",
            dir.path().join("s").to_str().unwrap(),
            "--overwrite",
        ])
    };
    let e = scorer(&big_id);
    assert!(
        e.contains("big-id.jsonl:6:") && e.contains("outside the vocabulary of 300"),
        "{e}"
    );
    let e = scorer(&negative);
    assert!(
        e.contains("negative.jsonl:6:") && e.contains("not a token id"),
        "{e}"
    );
    let e = scorer(&long);
    assert!(
        e.contains("long.jsonl:6:") && e.contains("context of 48"),
        "{e}"
    );
    let e = err(&[
        "train-rm",
        "--model",
        m,
        "--rollouts",
        &long,
        "--set",
        "steps=1",
        "--out",
        dir.path().join("rm").to_str().unwrap(),
    ]);
    assert!(
        e.contains("long.jsonl:6:") && e.contains("context of 48"),
        "{e}"
    );
    let e = err(&[
        "align",
        "--model",
        m,
        "--prompt",
        "the cat",
        "--reward",
        "length",
        "--raw",
        "--set",
        "k=1",
        "--out",
        dir.path().join("a").to_str().unwrap(),
    ]);
    assert!(e.contains("invalid `k`") && e.contains("at least 2"), "{e}");
    // Pretraining with the defaults from a directory that has no `assets/`.
    let out = crate::common::command()
        .args([
            "pretrain",
            "--set",
            "steps=1",
            "--set",
            "batch_size=2",
            "--set",
            "seq_len=16",
        ])
        .arg("--set")
        .arg(format!("out_dir={}", dir.path().join("pt").display()))
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("pt/final/model.safetensors").is_file());
}

#[test]
fn every_reader_survives_random_and_extreme_files() {
    // Fuzz-style: seeded random bytes and valid-but-extreme JSONL fed to every command that
    // reads a user's file. Any outcome but a panic (or an abort) is acceptable: success, or an
    // error.
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap().to_string();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let extreme = [
        serde_json::json!(1e308),
        serde_json::json!(-1e308),
        serde_json::json!(u64::MAX),
        serde_json::json!(i64::MIN),
        serde_json::json!(""),
        serde_json::json!("x".repeat(3000)),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!(null),
        serde_json::json!(true),
        serde_json::json!([[[[[[1]]]]]]),
        serde_json::json!([4294967296u64, 0]),
    ];
    let keys = [
        "prompt",
        "completion",
        "reward",
        "tokens",
        "chosen",
        "rejected",
        "finish",
        "policy",
    ];
    let mut files = Vec::new();
    for f in 0..12 {
        let path = dir.path().join(format!("fuzz-{f}.jsonl"));
        let bytes: Vec<u8> = if f % 3 == 0 {
            (0..rng.random_range(0..400))
                .map(|_| rng.random())
                .collect()
        } else {
            // Every third file: well-formed rows but one extreme value, so that the readers
            // get past their first checks; the others: random keys and values throughout.
            let one_bad = f % 3 == 1;
            let rows = rng.random_range(4..12);
            let bad_row = rng.random_range(0..rows);
            let mut text = String::new();
            for r in 0..rows {
                let mut row = serde_json::Map::new();
                let bad_key = rng.random_range(0..keys.len());
                for (ki, k) in keys.iter().enumerate() {
                    let extreme_here = if one_bad {
                        r == bad_row && ki == bad_key
                    } else {
                        rng.random_bool(0.5)
                    };
                    if one_bad || rng.random_bool(0.7) {
                        let v = if extreme_here {
                            extreme[rng.random_range(0..extreme.len())].clone()
                        } else {
                            match *k {
                                "reward" => serde_json::json!(rng.random_range(-5.0..5.0)),
                                "tokens" => serde_json::json!([rng.random_range(0..400u32)]),
                                _ => {
                                    serde_json::json!(format!("the cat {}", rng.random_range(0..3)))
                                }
                            }
                        };
                        row.insert(k.to_string(), v);
                    }
                }
                text.push_str(&serde_json::Value::Object(row).to_string());
                text.push('\n');
            }
            text.into_bytes()
        };
        std::fs::write(&path, bytes).unwrap();
        files.push(path.to_str().unwrap().to_string());
    }
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for f in &files {
        let runs: Vec<Vec<String>> = vec![
            vec![
                "calibrate".into(),
                "--reference".into(),
                f.clone(),
                "--out".into(),
                out("c.json"),
            ],
            vec![
                "preferences".into(),
                "--samples".into(),
                f.clone(),
                "--reward".into(),
                "length".into(),
                "--out".into(),
                out("p.jsonl"),
            ],
            vec![
                "train-scorer".into(),
                "--model".into(),
                m.clone(),
                "--rollouts".into(),
                f.clone(),
                "--method".into(),
                "q".into(),
                "--set".into(),
                "steps=1".into(),
                "--out".into(),
                out("s"),
                "--overwrite".into(),
            ],
            vec![
                "train-rm".into(),
                "--model".into(),
                m.clone(),
                "--data".into(),
                f.clone(),
                "--set".into(),
                "steps=1".into(),
                "--out".into(),
                out("rm"),
                "--overwrite".into(),
            ],
            vec![
                "train-rm".into(),
                "--model".into(),
                m.clone(),
                "--rollouts".into(),
                f.clone(),
                "--set".into(),
                "steps=1".into(),
                "--out".into(),
                out("rm2"),
                "--overwrite".into(),
            ],
            vec![
                "generate".into(),
                "--model".into(),
                m.clone(),
                "--prompts".into(),
                f.clone(),
                "--max-new-tokens".into(),
                "2".into(),
                "--out".into(),
                out("g.jsonl"),
            ],
        ];
        for args in runs {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = crate::common::infalign(&args);
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(
                !stderr.contains("panicked") && o.status.code().is_some(),
                "{args:?} on {f}: {stderr}"
            );
        }
    }
}

#[test]
fn align_trains_with_online_dpo_and_ipo() {
    // `--algo dpo|ipo` end to end: a final model and one metrics row per step whose loss at the
    // first step with a pair is the closed form (policy = reference: ln 2, (1/(2τ))²).
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    for (algo, first) in [("dpo", std::f64::consts::LN_2), ("ipo", 0.25)] {
        let out = dir.path().join(algo);
        ok(&[
            "align",
            "--model",
            m,
            "--prompt",
            "the cat",
            "--prompt",
            "a dog",
            "--reward",
            "length(t_max=6)",
            "--raw",
            "--algo",
            algo,
            "--beta",
            "1",
            "--set",
            "steps=3",
            "--set",
            "max_new_tokens=6",
            "--set",
            "k=4",
            "--set",
            "prompts_per_step=2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(out.join("final/model.safetensors").is_file());
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 3, "{algo}");
        let loss = rows
            .iter()
            .map(|r| r["loss/policy"].as_f64().unwrap())
            .find(|&l| l != 0.0)
            .expect("some step had a pair");
        assert!(
            (loss - first).abs() < 1e-3,
            "{algo}: first loss {loss}, want {first}"
        );
    }
}

#[test]
fn align_trains_offline_dpo_and_ipo_on_a_trl_preference_file() {
    // TRL's keys (`prompt`, `chosen`, `rejected`) train unchanged; the first step's loss is the
    // closed form (policy = reference); bad files and algorithms are errors naming them.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let prefs = dir.path().join("prefs.jsonl");
    let rows: Vec<String> = (0..6)
        .map(|i| {
            serde_json::json!({"prompt": format!("the cat {i}"), "chosen": " sat on the mat",
                "rejected": " ran"})
            .to_string()
        })
        .collect();
    std::fs::write(&prefs, rows.join("\n") + "\n").unwrap();
    let p = prefs.to_str().unwrap();
    for (algo, first) in [("dpo", std::f64::consts::LN_2), ("ipo", 0.25)] {
        let out = dir.path().join(format!("offline-{algo}"));
        ok(&[
            "align",
            "--model",
            m,
            "--preferences",
            p,
            "--algo",
            algo,
            "--beta",
            "1",
            "--set",
            "steps=3",
            "--set",
            "prompts_per_step=2",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(out.join("final/model.safetensors").is_file());
        let row: serde_json::Value = serde_json::from_str(
            std::fs::read_to_string(out.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        let loss = row["loss/policy"].as_f64().unwrap();
        assert!(
            (loss - first).abs() < 1e-3,
            "{algo}: first loss {loss}, want {first}"
        );
    }
    let out = dir.path().join("bad");
    let o = out.to_str().unwrap();
    let refused = |extra: &[&str]| {
        let mut args = vec!["align", "--model", m, "--preferences", p, "--out", o];
        args.extend_from_slice(extra);
        err(&args)
    };
    let e = refused(&["--algo", "rloo"]);
    assert!(e.contains("--algo dpo"), "{e}");
    let e = refused(&["--algo", "ipo", "--beta", "0"]);
    assert!(e.contains("needs β > 0"), "{e}");
    let e = refused(&["--algo", "dpo", "--set", "target_kl=1"]);
    assert!(e.contains("target_kl"), "{e}");
    let e = refused(&["--algo", "dpo", "--reward", "length"]);
    assert!(e.contains("cannot be used with"), "{e}");
    let long = dir.path().join("long.jsonl");
    let too_long = " the mat".repeat(60);
    std::fs::write(
        &long,
        format!(
            "{}\n{}\n",
            rows[0],
            serde_json::json!({"prompt": "a", "chosen": too_long, "rejected": "b"})
        ),
    )
    .unwrap();
    let e = err(&[
        "align",
        "--model",
        m,
        "--preferences",
        long.to_str().unwrap(),
        "--algo",
        "dpo",
        "--out",
        o,
        "--overwrite",
    ]);
    assert!(
        e.contains("long.jsonl:2") && e.contains("context of 48"),
        "{e}"
    );
}

#[test]
fn train_rm_holds_out_whole_prompts_of_a_preference_file() {
    // Pairs of a held-out prompt never train the model: the hold-out is by prompt, so with 4
    // prompts of 3 pairs each and a quarter held out, exactly one prompt's 3 pairs are held out.
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let rows: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({"prompt": format!("the cat {}", i % 4), "chosen": " sat",
                "rejected": " ran"})
            .to_string()
        })
        .collect();
    let prefs = dir.path().join("prefs.jsonl");
    std::fs::write(&prefs, rows.join("\n") + "\n").unwrap();
    let out = ok(&[
        "train-rm",
        "--model",
        model.to_str().unwrap(),
        "--data",
        prefs.to_str().unwrap(),
        "--holdout",
        "0.25",
        "--set",
        "steps=1",
        "--out",
        dir.path().join("rm").to_str().unwrap(),
    ]);
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(summary["heldout_prompts"], 1, "{summary}");
    assert_eq!(summary["heldout_pairs"], 3, "{summary}");
    assert_eq!(summary["train_pairs"], 9, "{summary}");
}

#[test]
fn a_log_transform_gets_a_smoothed_calibration_without_asking() {
    // Ĉ = 0 (the lowest reward of a prompt) under `log` would be ln(1e-6) ≈ −13.8 without
    // smoothing; with it, the lowest value is ln(½ / (K + 1)) for K references (here K − 1 = 3
    // others in the leave-one-out, so ln(0.5 / 4) ≈ −2.08).
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"prompt": format!("p{}", i % 2), "completion": "x",
                "reward": f64::from(i)})
            .to_string()
        })
        .collect();
    let refs = dir.path().join("refs.jsonl");
    std::fs::write(&refs, rows.join("\n") + "\n").unwrap();
    let out = dir.path().join("c.jsonl");
    ok(&[
        "calibrate",
        "--reference",
        refs.to_str().unwrap(),
        "--transform",
        "log",
        "--out",
        out.to_str().unwrap(),
    ]);
    let lowest = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["transformed"]
                .as_f64()
                .unwrap()
        })
        .fold(f64::INFINITY, f64::min);
    // `log` is ln(u + ε), ε = 1e-6.
    assert!(
        (lowest - (0.5f64 / 4.0 + 1e-6).ln()).abs() < 1e-9,
        "lowest {lowest}"
    );
}

#[test]
fn bon_distill_sets_the_log_transform_and_beta_from_n() {
    // Best-of-N distillation is CTRL with Φ = log and β = 1/(N − 1): the config says so, and the
    // log transform's calibration is smoothed (finite scores).
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let refs = dir.path().join("refs.jsonl");
    rollouts(m, &["the cat"], 4, 6, refs.to_str().unwrap());
    let out = dir.path().join("bon");
    ok(&[
        "align",
        "--model",
        m,
        "--prompt",
        "the cat",
        "--reward",
        "length(t_max=6)",
        "--reference",
        refs.to_str().unwrap(),
        "--bon-distill",
        "4",
        "--set",
        "steps=2",
        "--set",
        "max_new_tokens=6",
        "--set",
        "prompts_per_step=1",
        "--out",
        out.to_str().unwrap(),
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("align_config.json")).unwrap())
            .unwrap();
    assert!(
        (cfg["beta"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12,
        "{cfg}"
    );
    let e = err(&[
        "align",
        "--model",
        m,
        "--prompt",
        "the cat",
        "--reward",
        "length",
        "--reference",
        refs.to_str().unwrap(),
        "--bon-distill",
        "4",
        "--beta",
        "1",
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(e.contains("cannot be used with"), "{e}");
}

#[test]
fn scorer_and_reward_model_runs_resume_only_with_their_settings() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.to_str().unwrap();
    let file = dir.path().join("r.jsonl");
    let r = file.to_str().unwrap();
    rollouts(m, &["the cat", "a dog"], 4, 4, r);
    let s = dir.path().join("s");
    let scorer = |method: &str, extra: &[&str]| {
        let mut args = vec![
            "train-scorer",
            "--model",
            m,
            "--rollouts",
            r,
            "--method",
            method,
            "--set",
            "steps=2",
            "--out",
            s.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    ok(&strs(&scorer("q", &[])));
    ok(&strs(&scorer("q", &["--resume"])));
    let e = err(&strs(&scorer("fudge", &["--resume"])));
    assert!(e.contains("method changed"), "{e}");
    let rm = dir.path().join("rm");
    let train_rm = |holdout: &str, extra: &[&str]| {
        let mut args = vec![
            "train-rm",
            "--model",
            m,
            "--rollouts",
            r,
            "--holdout",
            holdout,
            "--set",
            "steps=2",
            "--out",
            rm.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    ok(&strs(&train_rm("0.5", &[])));
    let e = err(&strs(&train_rm("0.3", &["--resume"])));
    assert!(e.contains("holdout changed"), "{e}");
}
