//! Rewards named on a command line or in a config: `length`, `length(t_max=64)`, `tokens`
//! (the token count, linear), `sentiment`, `rm(path=DIR)` (a trained reward model; `read=score|calibrated|log_probability`
//! overrides how its head is read, e.g. `log_probability` for CD's log-probability-of-classifier
//! reward), and weighted sums such as `sentiment - 0.05*length(t_max=64)`.
//!
//! Grammar: `term (('+' | '-') term)*`, `term = [number '*'] name ['(' key '=' value, ... ')']`.
//! Reward models load on the device given to [`reward_from_spec_on`] ([`reward_from_spec`]:
//! the CPU).

use burn::tensor::Device;

use crate::rewards::{LengthReward, LexiconSentiment, TokenCount, WeightedSum};
use crate::{Reward, RewardError, RewardModel};

fn bad(spec: &str, message: String) -> RewardError {
    RewardError::InvalidParameter {
        field: "reward",
        message: format!("`{spec}`: {message}"),
    }
}

fn single(
    spec: &str,
    name: &str,
    args: &[(String, String)],
    device: &Device,
) -> Result<Box<dyn Reward>, RewardError> {
    let arg = |key: &str| args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if let Some((k, _)) = args.iter().find(|(k, _)| {
        !matches!(
            (name, k.as_str()),
            ("length", "t_max") | ("sentiment", "lexicon") | ("rm", "path" | "read")
        )
    }) {
        return Err(bad(spec, format!("`{name}` takes no argument `{k}`")));
    }
    match name {
        "length" => {
            let t_max = match arg("t_max") {
                Some(v) => v
                    .parse()
                    .map_err(|_| bad(spec, format!("t_max `{v}` is not a whole number")))?,
                None => 1024,
            };
            Ok(Box::new(LengthReward::new(t_max)?))
        }
        "tokens" => Ok(Box::new(TokenCount)),
        "sentiment" => Ok(Box::new(match arg("lexicon") {
            Some(path) => LexiconSentiment::from_file(path)?,
            None => LexiconSentiment::vader(),
        })),
        "rm" => {
            let path = arg("path").ok_or_else(|| bad(spec, "`rm` needs `path=DIR`".into()))?;
            let rm = RewardModel::load(path, device)
                .map_err(|e| bad(spec, format!("loading the reward model {path}: {e}")))?;
            Ok(Box::new(match arg("read") {
                Some(read) => rm.with_output(read.parse()?),
                None => rm,
            }))
        }
        other => Err(bad(
            spec,
            format!("unknown reward `{other}`: expected length, tokens, sentiment or rm"),
        )),
    }
}

/// Builds the reward a spec names; reward models run on the CPU.
pub fn reward_from_spec(spec: &str) -> Result<Box<dyn Reward>, RewardError> {
    let cpu = infalign_core::DeviceSpec::Cpu
        .device()
        .map_err(|e| bad(spec, e.to_string()))?;
    reward_from_spec_on(spec, &cpu)
}

/// Builds the reward a spec names, with reward models on `device`.
pub fn reward_from_spec_on(spec: &str, device: &Device) -> Result<Box<dyn Reward>, RewardError> {
    let mut terms: Vec<(f64, String)> = Vec::new();
    let mut sign = 1.0;
    let mut cur = String::new();
    let mut depth = 0;
    for c in spec.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            '+' | '-'
                if depth == 0
                    && !cur.trim().is_empty()
                    && !cur.trim_end().ends_with(['*', 'e', 'E']) =>
            {
                terms.push((sign, std::mem::take(&mut cur)));
                sign = if c == '-' { -1.0 } else { 1.0 };
            }
            '-' if depth == 0 && cur.trim().is_empty() => sign = -sign,
            _ => cur.push(c),
        }
    }
    terms.push((sign, cur));
    let mut parts: Vec<(f64, Box<dyn Reward>)> = Vec::new();
    for (sign, term) in terms {
        let term = term.trim();
        if term.is_empty() {
            return Err(bad(spec, "empty term".into()));
        }
        let (weight, rest) = match term.split_once('*') {
            Some((w, r)) => (
                w.trim()
                    .parse::<f64>()
                    .map_err(|_| bad(spec, format!("weight `{w}` is not a number")))?,
                r.trim(),
            ),
            None => (1.0, term),
        };
        let (name, args) = match rest.split_once('(') {
            Some((n, a)) => {
                let a = a
                    .strip_suffix(')')
                    .ok_or_else(|| bad(spec, "missing `)`".into()))?;
                let args = a
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                            .ok_or_else(|| bad(spec, format!("argument `{kv}` is not key=value")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (n.trim(), args)
            }
            None => (rest, Vec::new()),
        };
        parts.push((sign * weight, single(spec, name, &args, device)?));
    }
    if parts.len() == 1 && parts[0].0 == 1.0 {
        return Ok(parts.pop().expect("one part").1);
    }
    Ok(Box::new(WeightedSum::new(parts)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RewardInput;

    #[test]
    fn parses_names_arguments_and_sums() {
        let i = RewardInput {
            prompt: "",
            completion: "I love it",
            tokens: 8,
            ids: &[],
        };
        let len = reward_from_spec("length(t_max=16)").unwrap();
        assert!((len.score(&i).unwrap() - 0.5f64.ln()).abs() < 1e-12);
        let sent = reward_from_spec("sentiment").unwrap().score(&i).unwrap();
        let mix = reward_from_spec("2*sentiment - 0.5*length(t_max=16)").unwrap();
        assert!((mix.score(&i).unwrap() - (2.0 * sent - 0.5 * 0.5f64.ln())).abs() < 1e-12);
        let neg = reward_from_spec("-length(t_max=16)").unwrap();
        assert!((neg.score(&i).unwrap() + 0.5f64.ln()).abs() < 1e-12);
        for bad in [
            "lenght",
            "length(tmax=3)",
            "x*length",
            "length(t_max=3",
            "sentiment +",
        ] {
            let e = reward_from_spec(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("reward"), "{bad}: {e}");
        }
    }

    #[test]
    fn rm_loads_a_saved_reward_model() {
        use infalign_core::{DeviceSpec, Seed};
        use infalign_models::weights::RandomInit;
        use infalign_models::{
            CausalLm, Gpt2Config, ModelConfig, PrefixScorer, ScorerLayout, Tokenizer,
        };
        let dir = tempfile::tempdir().unwrap();
        let tk = Tokenizer::word_level(&["a", "b", "c"]).unwrap();
        let device = DeviceSpec::Cpu.device().unwrap();
        let config = ModelConfig::Gpt2(Gpt2Config::new(3, 16, 16, 1, 2));
        let mut init = RandomInit::with_scale(Seed(3).stream("init"), 20.0);
        let base = CausalLm::init(&config, &mut init, &device).unwrap();
        let net = PrefixScorer::init(base, ScorerLayout::Scalar, &mut init, &device).unwrap();
        // A path with a dash: the spec's sum syntax must not split it.
        let rm_dir = dir.path().join("proxy-rm");
        net.save(&rm_dir, &tk, "test").unwrap();
        let direct = RewardModel::load(&rm_dir, &device).unwrap();
        let spec = format!("rm(path={})", rm_dir.display());
        let via_spec = reward_from_spec(&spec).unwrap();
        let scaled = reward_from_spec(&format!("2*{spec} - length(t_max=4)")).unwrap();
        for text in ["a b c", "c c", "b"] {
            let i = RewardInput {
                prompt: "a",
                completion: text,
                tokens: 2,
                ids: &[],
            };
            let r = direct.score(&i).unwrap();
            assert_eq!(via_spec.score(&i).unwrap(), r);
            let expect = 2.0 * r - 0.5f64.ln();
            assert!((scaled.score(&i).unwrap() - expect).abs() < 1e-9);
        }
        let missing = reward_from_spec("rm(path=/no/such/dir)").err().unwrap();
        assert!(missing.to_string().contains("/no/such/dir"), "{missing}");
        // The same head read as a classifier's log-probability.
        let logp = reward_from_spec(&format!(
            "rm(path={}, read=log_probability)",
            rm_dir.display()
        ))
        .unwrap();
        let i = RewardInput {
            prompt: "a",
            completion: "b c",
            tokens: 2,
            ids: &[],
        };
        let s = direct.score(&i).unwrap();
        let expect = (1.0 / (1.0 + (-s).exp())).ln();
        assert!((logp.score(&i).unwrap() - expect).abs() < 1e-9);
        let bad_read = format!("rm(path={}, read=odds)", rm_dir.display());
        assert!(
            reward_from_spec(&bad_read)
                .err()
                .unwrap()
                .to_string()
                .contains("odds")
        );
        let no_path = reward_from_spec("rm").err().unwrap();
        assert!(no_path.to_string().contains("path=DIR"), "{no_path}");
    }
}
