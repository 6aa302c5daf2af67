//! The language-model contracts, for every architecture: cached decoding equals a full
//! recompute, a left-padded row equals the row alone, save-then-load is exact, and bad input is
//! a clear error.

use burn::tensor::{Device, Tensor};
use infalign_core::{DeviceSpec, Seed};
use infalign_models::weights::{RandomInit, read_f32};
use infalign_models::{
    CausalLm, Gpt2Config, LlamaConfig, LlamaFlavor, LoadedModel, ModelConfig, TokenBatch,
    Tokenizer, save_model_dir,
};

const VOCAB: usize = 61;

fn gpt2(tied: bool) -> ModelConfig {
    let mut c = Gpt2Config::new(VOCAB, 64, 32, 2, 4);
    c.tie_word_embeddings = tied;
    ModelConfig::Gpt2(c)
}

/// GQA (4 query heads over 2 kv heads), untied head, with the given flavor (Qwen2: q/k/v bias).
fn llama(flavor: LlamaFlavor) -> ModelConfig {
    let mut c = LlamaConfig::new(VOCAB, 32, 48, 2, 4, 64);
    c.num_key_value_heads = Some(2);
    ModelConfig::Llama(c, flavor)
}

fn configs() -> Vec<(&'static str, ModelConfig)> {
    vec![
        ("gpt2-tied", gpt2(true)),
        ("gpt2-untied", gpt2(false)),
        ("llama-gqa", llama(LlamaFlavor::Llama)),
        ("qwen2-bias", llama(LlamaFlavor::Qwen2)),
    ]
}

fn device() -> Device {
    DeviceSpec::Cpu.device().unwrap()
}

fn host(t: Tensor<2>) -> Vec<f32> {
    read_f32(t).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// How far two computations of the same log-probs may differ when only the order of the f32
/// sums differs (batch size, cache layout, the CPU's SIMD width): 32 ulps of the largest value
/// compared. Errors in positions, masking or caching move them by 0.1 or more.
fn tolerance(reference: &[f32]) -> f32 {
    let largest = reference.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    32.0 * f32::EPSILON * (1.0 + largest)
}

/// Random models at the usual init have near-uniform outputs; a 25x larger init makes them
/// peaky, so that any error in positions, masking or caching shows.
fn model(config: &ModelConfig) -> CausalLm {
    let mut src = RandomInit::with_scale(Seed(3).stream("init"), 25.0);
    let m = CausalLm::init(config, &mut src, &device()).unwrap();
    let lp = m
        .sequence_logprobs(&[vec![1, 2, 3, 4, 5, 6]], 0, &device())
        .unwrap();
    let spread = lp[0].iter().cloned().fold(f32::MIN, f32::max)
        - lp[0].iter().cloned().fold(f32::MAX, f32::min);
    assert!(
        spread > 1.0,
        "test model too flat to detect errors: spread {spread}"
    );
    m
}

#[test]
fn cached_decoding_equals_full_recompute() {
    let dev = device();
    let seq: Vec<u32> = vec![5, 17, 3, 42, 8, 60, 1, 29, 33, 7];
    for (name, config) in configs() {
        let m = model(&config);
        // Full recompute: log-probs after every prefix in one pass.
        let full = m.forward(
            &TokenBatch::left_padded(std::slice::from_ref(&seq), 0, &dev).unwrap(),
            &mut m.new_cache(),
        );
        let full = read_f32(full).unwrap();
        // Cached: prefill 4 tokens, then one at a time.
        let mut cache = m.new_cache();
        let mut got = host(m.next_token_logprobs(
            &TokenBatch::left_padded(&[seq[..4].to_vec()], 0, &dev).unwrap(),
            &mut cache,
        ));
        let mut worst = max_abs_diff(&got, &full[3 * VOCAB..4 * VOCAB]);
        for (i, &t) in seq.iter().enumerate().skip(4) {
            got = host(m.next_token_logprobs(&TokenBatch::step(&[t], &dev), &mut cache));
            worst = worst.max(max_abs_diff(&got, &full[i * VOCAB..(i + 1) * VOCAB]));
        }
        assert_eq!(cache.len(), seq.len());
        let tol = tolerance(&full);
        assert!(
            worst < tol,
            "{name}: cached vs full differ by {worst} (tolerance {tol})"
        );
    }
}

#[test]
fn left_padded_row_equals_row_alone() {
    let dev = device();
    let short: Vec<u32> = vec![9, 4, 23];
    let long: Vec<u32> = vec![1, 2, 3, 4, 5, 6, 7];
    for (name, config) in configs() {
        let m = model(&config);
        let alone = m
            .sequence_logprobs(std::slice::from_ref(&short), 0, &dev)
            .unwrap();
        let batched = m
            .sequence_logprobs(&[long.clone(), short.clone()], 0, &dev)
            .unwrap();
        let (d, tol) = (max_abs_diff(&alone[0], &batched[1]), tolerance(&alone[0]));
        assert!(
            d < tol,
            "{name}: padded row differs by {d} (tolerance {tol})"
        );
        // Next-token distributions with a cache, continued two steps, also agree.
        let mut c1 = m.new_cache();
        let mut c2 = m.new_cache();
        let a = host(m.next_token_logprobs(
            &TokenBatch::left_padded(std::slice::from_ref(&short), 0, &dev).unwrap(),
            &mut c1,
        ));
        let b = host(m.next_token_logprobs(
            &TokenBatch::left_padded(&[long.clone(), short.clone()], 0, &dev).unwrap(),
            &mut c2,
        ));
        assert!(
            max_abs_diff(&a, &b[VOCAB..]) < tolerance(&a),
            "{name}: prefill"
        );
        let a = host(m.next_token_logprobs(&TokenBatch::step(&[11], &dev), &mut c1));
        let b = host(m.next_token_logprobs(&TokenBatch::step(&[12, 11], &dev), &mut c2));
        assert!(
            max_abs_diff(&a, &b[VOCAB..]) < tolerance(&a),
            "{name}: step"
        );
    }
}

#[test]
fn sequence_logprobs_are_normalised_and_match_the_full_forward() {
    let dev = device();
    for (name, config) in configs() {
        let m = model(&config);
        let seq = vec![3u32, 1, 4, 1, 5, 9, 2, 6];
        let lp = m
            .sequence_logprobs(std::slice::from_ref(&seq), 0, &dev)
            .unwrap();
        let full = read_f32(m.forward(
            &TokenBatch::left_padded(std::slice::from_ref(&seq), 0, &dev).unwrap(),
            &mut m.new_cache(),
        ))
        .unwrap();
        for (i, &l) in lp[0].iter().enumerate() {
            let row = &full[i * VOCAB..(i + 1) * VOCAB];
            let z: f32 = row.iter().map(|x| x.exp()).sum();
            assert!((z - 1.0).abs() < 1e-4, "{name}: row {i} sums to {z}");
            assert_eq!(l, row[seq[i + 1] as usize], "{name}: token {i}");
        }
    }
}

#[test]
fn repeat_interleave_shares_one_prefill() {
    let dev = device();
    for (name, config) in configs() {
        let m = model(&config);
        let prompts = vec![vec![1u32, 2, 3], vec![7u32, 8]];
        let mut shared = m.new_cache();
        m.next_token_logprobs(
            &TokenBatch::left_padded(&prompts, 0, &dev).unwrap(),
            &mut shared,
        );
        let mut shared = shared.repeat_interleave(3);
        let next = [10u32, 11, 12, 13, 14, 15];
        let got = host(m.next_token_logprobs(&TokenBatch::step(&next, &dev), &mut shared));
        for (r, &t) in next.iter().enumerate() {
            let mut seq = prompts[r / 3].clone();
            seq.push(t);
            let mut c = m.new_cache();
            let want = host(
                m.next_token_logprobs(&TokenBatch::left_padded(&[seq], 0, &dev).unwrap(), &mut c),
            );
            let d = max_abs_diff(&got[r * VOCAB..(r + 1) * VOCAB], &want);
            let tol = tolerance(&want);
            assert!(d < tol, "{name}: row {r} differs by {d} (tolerance {tol})");
        }
    }
}

#[test]
fn retaining_rows_decodes_as_selecting_them() {
    // Rows leaving a batch: `retain` (in place on the CPU) and `select` (new buffers) must leave
    // caches that decode the same bits, also after a second retain and steps in between.
    let dev = device();
    for (name, config) in configs() {
        let m = model(&config);
        let prompts = vec![
            vec![1u32, 2, 3],
            vec![7u32, 8],
            vec![4u32],
            vec![5u32, 6, 9, 2],
        ];
        let prefill = |cache: &mut infalign_models::KvCache| {
            m.next_token_logprobs(&TokenBatch::left_padded(&prompts, 0, &dev).unwrap(), cache);
            cache.reserve(6);
        };
        let (mut a, mut b) = (m.new_cache(), m.new_cache());
        prefill(&mut a);
        prefill(&mut b);
        let step = |cache: &mut infalign_models::KvCache, tokens: &[u32]| {
            host(m.next_token_logprobs(&TokenBatch::step(tokens, &dev), cache))
        };
        assert_eq!(
            step(&mut a, &[10, 11, 12, 13]),
            step(&mut b, &[10, 11, 12, 13])
        );
        let indices = |rows: &[i64]| {
            Tensor::<1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(rows.to_vec(), [rows.len()]),
                &dev,
            )
        };
        assert!(
            a.retain(&[1, 2, 3], &dev),
            "{name}: rows not moved in place"
        );
        let mut b = b.select(indices(&[1, 2, 3]));
        assert_eq!(
            step(&mut a, &[14, 15, 16]),
            step(&mut b, &[14, 15, 16]),
            "{name}"
        );
        assert!(
            a.retain(&[0, 2], &dev),
            "{name}: rows not moved in place again"
        );
        let mut b = b.select(indices(&[0, 2]));
        for t in [[17u32, 18], [19, 20], [21, 22]] {
            assert_eq!(step(&mut a, &t), step(&mut b, &t), "{name}: after {t:?}");
        }
        // A cache whose buffers are shared (a clone kept elsewhere) is copied, not moved.
        let shared = a.clone();
        assert!(!a.retain(&[1], &dev), "{name}: shared buffers moved");
        let mut d = shared.select(indices(&[1]));
        assert_eq!(step(&mut a, &[23]), step(&mut d, &[23]), "{name}: shared");
    }
}

fn tiny_tokenizer(dir: &std::path::Path) -> Tokenizer {
    let text = dir.join("t.txt");
    std::fs::write(&text, "ab ba abc cab bca ".repeat(20)).unwrap();
    // 256 bytes + <|endoftext|> = 257 ids at least: the test models use a larger vocab below.
    Tokenizer::train_byte_level_bpe(&[text], 260, 2, &[]).unwrap()
}

fn with_vocab(config: &ModelConfig, vocab: usize) -> ModelConfig {
    let mut c = config.clone();
    match &mut c {
        ModelConfig::Gpt2(g) => g.vocab_size = vocab,
        ModelConfig::Llama(l, _) => l.vocab_size = vocab,
    }
    c
}

#[test]
fn save_then_load_is_exact() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    let tk = tiny_tokenizer(dir.path());
    for (name, config) in configs() {
        let config = with_vocab(&config, 264);
        let m = CausalLm::random(&config, Seed(11), &dev).unwrap();
        let out = dir.path().join(name);
        save_model_dir(&out, &m, &tk).unwrap();
        let loaded = LoadedModel::load(&out, &dev).unwrap();
        assert_eq!(loaded.model.config(), config, "{name}: config");
        let a = m.export().unwrap();
        let b = loaded.model.export().unwrap();
        let names_a: Vec<_> = a
            .tensors()
            .map(|(n, s, _)| (n.to_string(), s.to_vec()))
            .collect();
        let names_b: Vec<_> = b
            .tensors()
            .map(|(n, s, _)| (n.to_string(), s.to_vec()))
            .collect();
        assert_eq!(names_a, names_b, "{name}: tensor names");
        for ((n, _, va), (_, _, vb)) in a.tensors().zip(b.tensors()) {
            assert!(va == vb, "{name}: tensor {n} changed on the round trip");
        }
        let seq = vec![vec![100u32, 3, 200, 7]];
        assert_eq!(
            m.sequence_logprobs(&seq, 0, &dev).unwrap(),
            loaded.model.sequence_logprobs(&seq, 0, &dev).unwrap(),
            "{name}: outputs"
        );
    }
}

#[test]
fn same_seed_same_weights_different_seed_different_weights() {
    let dev = device();
    let c = gpt2(true);
    let a = CausalLm::random(&c, Seed(1), &dev)
        .unwrap()
        .export()
        .unwrap();
    let b = CausalLm::random(&c, Seed(1), &dev)
        .unwrap()
        .export()
        .unwrap();
    let z = CausalLm::random(&c, Seed(2), &dev)
        .unwrap()
        .export()
        .unwrap();
    let first = |e: &infalign_models::weights::Exporter| e.tensors().next().unwrap().2.to_vec();
    assert_eq!(first(&a), first(&b));
    assert_ne!(first(&a), first(&z));
}

#[test]
fn bad_input_is_a_clear_error() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    let tk = tiny_tokenizer(dir.path());

    // Missing directory / files.
    let e = LoadedModel::load(dir.path().join("nope"), &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("config.json"), "{e}");

    // Malformed config.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("config.json"),
        r#"{"model_type": "gpt2", "n_embd": "wide"}"#,
    )
    .unwrap();
    let e = LoadedModel::load(&bad, &dev).unwrap_err().to_string();
    assert!(
        e.contains("config.json") && e.contains("invalid type"),
        "{e}"
    );

    // A tokenizer larger than the model's vocabulary.
    let small = dir.path().join("small");
    let m = CausalLm::random(&gpt2(true), Seed(0), &dev).unwrap();
    save_model_dir(&small, &m, &tk).unwrap();
    let e = LoadedModel::load(&small, &dev).unwrap_err().to_string();
    assert!(e.contains("vocab_size is 61"), "{e}");

    // A missing tensor, and a tensor of the wrong shape, are named.
    let ok = dir.path().join("ok");
    let config = with_vocab(&gpt2(true), 264);
    let m = CausalLm::random(&config, Seed(0), &dev).unwrap();
    save_model_dir(&ok, &m, &tk).unwrap();
    let mut cfg_json = config.to_json();
    cfg_json["n_layer"] = 3.into();
    std::fs::write(ok.join("config.json"), cfg_json.to_string()).unwrap();
    let e = LoadedModel::load(&ok, &dev).unwrap_err().to_string();
    assert!(e.contains("transformer.h.2.ln_1.weight"), "{e}");
    cfg_json["n_layer"] = 2.into();
    cfg_json["n_inner"] = 64.into();
    std::fs::write(ok.join("config.json"), cfg_json.to_string()).unwrap();
    let e = LoadedModel::load(&ok, &dev).unwrap_err().to_string();
    assert!(
        e.contains("mlp.c_fc.weight") && e.contains("[32, 64]"),
        "{e}"
    );

    // Weights holding NaN (a diverged run's) are refused, naming the tensor.
    cfg_json["n_inner"] = serde_json::Value::Null;
    std::fs::write(ok.join("config.json"), cfg_json.to_string()).unwrap();
    let w = ok.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, v.data().to_vec(), v.shape().to_vec()))
        .collect();
    let (_, data, _) = tensors
        .iter_mut()
        .find(|(n, _, _)| n == "transformer.ln_f.weight")
        .unwrap();
    data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d);
            (n.clone(), v.unwrap())
        })
        .collect();
    std::fs::write(&w, safetensors::serialize(views, None).unwrap()).unwrap();
    let e = LoadedModel::load(&ok, &dev).unwrap_err().to_string();
    assert!(
        e.contains("transformer.ln_f.weight")
            && e.contains("1 non-finite")
            && e.contains("index 1"),
        "{e}"
    );
    std::fs::write(&w, &bytes).unwrap();
    LoadedModel::load(&ok, &dev).unwrap();

    // A truncated weights file.
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = LoadedModel::load(&ok, &dev).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );

    // A sequence longer than the context, and an id outside the vocabulary.
    let long: Vec<u32> = (0..65).map(|i| i % 60).collect();
    let e = m
        .sequence_logprobs(&[long], 0, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("65 tokens") && e.contains("64"), "{e}");
    let e = m
        .sequence_logprobs(&[vec![1, 999]], 0, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("999"), "{e}");
}
