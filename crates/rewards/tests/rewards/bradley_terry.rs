//! Bradley-Terry training on preferences labelled (with logistic noise) by a known reward
//! recovers that reward's ranking on held-out pairs.

use infalign_core::{DeviceSpec, Seed};
use infalign_rewards::bradley_terry::{
    BradleyTerryConfig, EncodedPair, pairwise_accuracy, train_bradley_terry,
};
use infalign_rewards::preferences::label_pairs;
use infalign_rewards::{Reward, RewardInput, RewardModel};

use crate::common::{gold, random_text, scalar_net};
use infalign_models::test_support::six_word_tokenizer;

#[test]
fn bradley_terry_recovers_the_gold_ranking() {
    let tk = six_word_tokenizer();
    let device = DeviceSpec::Cpu.device().unwrap();
    let mut rng = Seed(1).stream("texts");
    let raw: Vec<(String, String, f64, String, f64)> = (0..600)
        .map(|_| {
            let (a, b) = (random_text(&mut rng, 6), random_text(&mut rng, 6));
            ("f".to_string(), a.clone(), gold(&a), b.clone(), gold(&b))
        })
        .collect();
    let prefs = label_pairs(&raw, 0.5, Seed(2)).unwrap();
    let enc = |s: &str| tk.encode(&format!("f {s}")).unwrap();
    let pairs: Vec<EncodedPair> = prefs
        .iter()
        .map(|p| EncodedPair {
            chosen: enc(&p.chosen),
            rejected: enc(&p.rejected),
        })
        .collect();
    let ad = device.clone().autodiff();
    let net = scalar_net(&ad);
    let cfg = BradleyTerryConfig {
        steps: 300,
        batch_size: 32,
        lr: 3e-3,
        ..Default::default()
    };
    let mut losses = Vec::new();
    let net =
        train_bradley_terry(&cfg, net, &pairs, 0, None, |r| losses.push(r.metrics[0].1)).unwrap();
    let rm = RewardModel::new(net, tk.clone(), device).unwrap();
    // Held-out pairs with different gold rewards.
    let mut rng = Seed(9).stream("held-out");
    let (mut sc, mut sr) = (Vec::new(), Vec::new());
    while sc.len() < 300 {
        let (a, b) = (random_text(&mut rng, 6), random_text(&mut rng, 6));
        let (ga, gb) = (gold(&a), gold(&b));
        if ga == gb {
            continue;
        }
        let (w, l) = if ga > gb { (a, b) } else { (b, a) };
        let score = |c: &str| {
            rm.score(&RewardInput {
                prompt: "f ",
                completion: c,
                tokens: 6,
                ids: &[],
            })
            .unwrap()
        };
        sc.push(score(&w));
        sr.push(score(&l));
    }
    let acc = pairwise_accuracy(&sc, &sr);
    let first: f64 = losses[..20].iter().sum::<f64>() / 20.0;
    let last: f64 = losses[losses.len() - 20..].iter().sum::<f64>() / 20.0;
    eprintln!("Bradley-Terry: loss {first:.3} -> {last:.3}, held-out accuracy {acc:.3}");
    assert!(acc > 0.9, "held-out accuracy {acc}");
    assert!(last < first);
}
