// temporary profiling harness (not committed)
use infalign_core::Seed;
use infalign_decoding::*;
use infalign_models::*;
use std::time::Instant;
fn main() {
    let what = std::env::args().nth(1).unwrap();
    let reps: usize = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(5);
    let device = infalign_core::Device::default();
    let config = if what == "gpt2" {
        ModelConfig::Gpt2(infalign_models::Gpt2Config::new(50257, 1024, 768, 12, 12))
    } else {
        ModelConfig::Gpt2(infalign_models::Gpt2Config::new(4096, 512, 256, 4, 4))
    };
    let tokenizer = Tokenizer::from_file("/work/main/assets/base-model/tokenizer.json").unwrap();
    let model = CausalLm::random(&config, Seed(0), &device).unwrap();
    let mut lm = LoadedModel::assemble(model, tokenizer, std::path::Path::new("."));
    lm.eos_ids.clear();
    let g = Generator::new(&lm, device.clone());
    let scorer =
        PrefixScorer::from_base(lm.model.clone(), ScorerLayout::VocabWide, &device).unwrap();
    let prompts: Vec<String> = (0..4).map(|i| format!("The dog {i} was")).collect();
    let cfg = GenerationConfig {
        max_new_tokens: 64,
        ..Default::default()
    };
    let reward = infalign_rewards::reward_from_spec("length").unwrap();
    for _ in 0..reps {
        let t = Instant::now();
        match what.as_str() {
            "gpt2" => {
                let c = GenerationConfig {
                    max_new_tokens: 64,
                    ..Default::default()
                };
                g.generate(&prompts[..1], &c, Seed(1)).unwrap();
            }
            "base" => {
                g.generate(&prompts, &cfg, Seed(1)).unwrap();
            }
            "bon16" => {
                BestOfN {
                    n: 16,
                    reward: reward.as_ref(),
                }
                .decode(&g, &prompts, &cfg, Seed(1))
                .unwrap();
            }
            "tok" => {
                let mix = ScorerMix::new(vec![(1.0, &scorer)], 4096, device.clone()).unwrap();
                TokenwiseCd::new(1.0, None, mix)
                    .unwrap()
                    .decode(&g, &prompts, &cfg, Seed(1))
                    .unwrap();
            }
            "block" => {
                let mix = ScorerMix::new(vec![(1.0, &scorer)], 4096, device.clone()).unwrap();
                BlockwiseCd::new(4, 8, TieBreak::First, mix)
                    .unwrap()
                    .decode(&g, &prompts, &cfg, Seed(1))
                    .unwrap();
            }
            _ => panic!(),
        }
        eprintln!("{what} {:.4}", t.elapsed().as_secs_f64());
    }
}
