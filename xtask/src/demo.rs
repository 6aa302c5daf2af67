//! `cargo xtask demo`: the main job end to end on the shipped base model, sized for a 2-core
//! CPU. It calibrates a sentiment reward against base rollouts; aligns with CTRL (calibrated
//! reward, exp transform, aimed at best-of-4; β = 1, since exp(4u) spans 1 to 55) and with
//! standard RLHF (raw reward in (-1, 1); β = 0.05); trains a CD-Q
//! prefix scorer; decodes with tokenwise and blockwise CD; evaluates every policy against the
//! base (standard and best-of-4 win rates, KL); and writes `runs/demo/report.md` with a summary
//! table, which it also prints.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::cargo;

const REWARD: &str = "sentiment";

fn infalign(args: &[&str]) -> Result<()> {
    let mut all = vec!["run", "-q", "-p", "infalign", "--"];
    all.extend(args);
    cargo(&all)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// Mean reward and standard/best-of-4 win rates of decoded samples against base samples.
fn decoder_row(name: &str, samples: &Path, base: &Path) -> Result<String> {
    let rows = |p: &Path| -> Result<Vec<(String, f64)>> {
        std::fs::read_to_string(p)?
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)?;
                Ok((
                    v["prompt"].as_str().unwrap_or_default().to_string(),
                    v["reward"].as_f64().unwrap_or(0.0),
                ))
            })
            .collect()
    };
    let (s, b) = (rows(samples)?, rows(base)?);
    let mean = s.iter().map(|x| x.1).sum::<f64>() / s.len().max(1) as f64;
    let mut wins = 0.0f64;
    let mut total = 0.0f64;
    for (p, r) in &s {
        for (_, rb) in b.iter().filter(|(q, _)| q == p) {
            wins += if r > rb {
                1.0
            } else if r == rb {
                0.5
            } else {
                0.0
            };
            total += 1.0;
        }
    }
    Ok(format!(
        "| {name} | {mean:.3} | {:.3} | - | - |",
        wins / total.max(1.0)
    ))
}

pub fn run(root: &Path) -> Result<()> {
    let start = Instant::now();
    let out = root.join("runs/demo");
    std::fs::create_dir_all(&out)?;
    let p = |name: &str| out.join(name).display().to_string();
    // Prompts: the first 24 of the shipped prompt set.
    let prompts: String = std::fs::read_to_string(root.join("assets/prompts.jsonl"))?
        .lines()
        .take(24)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(out.join("prompts.jsonl"), prompts)?;
    let prompts = p("prompts.jsonl");
    eprintln!("[demo] 1/6 reference rollouts (8 per prompt) scored by `{REWARD}`");
    infalign(&[
        "rollouts",
        "--prompts",
        &prompts,
        "--k",
        "8",
        "--reward",
        REWARD,
        "--max-new-tokens",
        "32",
        "--out",
        &p("reference.jsonl"),
    ])?;
    // Both alignments share everything but how the reward is shaped and β.
    let align = |shaping: &[&str], beta: &str, out_dir: &str| -> Result<()> {
        let out = p(out_dir);
        let mut a = vec![
            "align",
            "--prompts",
            &prompts,
            "--reward",
            REWARD,
            "--beta",
            beta,
        ];
        a.extend(shaping);
        a.extend([
            "--set",
            "steps=60",
            "--set",
            "lr=1e-4",
            "--set",
            "max_new_tokens=32",
        ]);
        a.extend(["--set", "k=4", "--set", "prompts_per_step=6", "--out", &out]);
        infalign(&a)
    };
    eprintln!("[demo] 2/6 CTRL: calibrated reward, exp transform (t = 4), β = 1, RLOO");
    let reference = p("reference.jsonl");
    align(
        &["--reference", &reference, "--transform", "exp", "--t", "4"],
        "1.0",
        "ctrl-exp",
    )?;
    eprintln!("[demo] 3/6 standard RLHF: raw reward, β = 0.05, RLOO");
    align(&["--raw"], "0.05", "rlhf-raw")?;
    eprintln!("[demo] 4/6 CD-Q prefix scorer on the calibrated reward");
    infalign(&[
        "train-scorer",
        "--rollouts",
        &p("reference.jsonl"),
        "--method",
        "q",
        "--calibrate",
        "--set",
        "steps=300",
        "--set",
        "batch_size=16",
        "--set",
        "lr=3e-4",
        "--out",
        &p("scorer-cdq"),
    ])?;
    eprintln!("[demo] 5/6 decoding: base, tokenwise CD, blockwise CD");
    let dec = |strategy: &str, extra: &[&str], name: &str| -> Result<()> {
        let mut a = vec![
            "decode",
            "--strategy",
            strategy,
            "--prompts",
            &prompts,
            "--reward",
            REWARD,
            "--max-new-tokens",
            "32",
            "--seed",
            "7",
            "--out",
        ];
        let o = p(name);
        a.push(&o);
        a.extend(extra);
        infalign(&a)
    };
    let scorer = p("scorer-cdq");
    dec("sample", &["--n", "4"], "base.jsonl")?;
    dec(
        "cd-token",
        &["--scorer", &scorer, "--lambda", "4", "--n", "4"],
        "cd-token.jsonl",
    )?;
    dec(
        "cd-block",
        &["--scorer", &scorer, "--k", "4", "--m", "8"],
        "cd-block.jsonl",
    )?;
    dec("bon", &["--n", "4"], "bon4.jsonl")?;
    eprintln!("[demo] 6/6 evaluation against the base model");
    let mut table = String::from(
        "| method | mean reward | win rate vs base | best-of-4 win rate | KL (k3) |\n|---|---:|---:|---:|---:|\n",
    );
    for (name, dir) in [
        ("CTRL (calibrated, exp t=4)", "ctrl-exp"),
        ("RLHF (raw reward)", "rlhf-raw"),
    ] {
        let ev_dir = out.join(format!("{dir}/eval"));
        infalign(&[
            "eval",
            "--policy",
            &p(&format!("{dir}/final")),
            "--prompts",
            &prompts,
            "--reward",
            REWARD,
            "--samples",
            "12",
            "--n",
            "4",
            "--max-new-tokens",
            "32",
            "--out",
            &ev_dir.display().to_string(),
        ])?;
        let ev = read_json(&ev_dir.join("eval.json"))?;
        let wr = |i: usize| {
            ev["win_rates"][i]["win_rate"]["mean"]
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        writeln!(
            table,
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} |",
            ev["mean_reward_policy"].as_f64().unwrap_or(f64::NAN),
            wr(0),
            wr(1),
            ev["kl"]["k3"]["mean"].as_f64().unwrap_or(f64::NAN)
        )?;
    }
    for (name, file) in [
        ("tokenwise CD-Q (λ = 4)", "cd-token.jsonl"),
        ("blockwise CD-Q (K = 4, M = 8)", "cd-block.jsonl"),
        ("best-of-4", "bon4.jsonl"),
    ] {
        writeln!(
            table,
            "{}",
            decoder_row(name, &out.join(file), &out.join("base.jsonl"))?
        )?;
    }
    let report = format!(
        "# infalign demo\n\nBase model `assets/base-model`, reward `{REWARD}`, 24 prompts. Win rates \
         count ties as one half; decoders are compared with 4 base samples per prompt.\n\n{table}\n\
         Wall time: {:.0} s.\n",
        start.elapsed().as_secs_f64()
    );
    std::fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    Ok(())
}
