//! The decoding-strategy trait and the configuration of the built-in strategies (burn's
//! `Config` + `init` pattern): a [`StrategyConfig`] is plain, serialisable data that validates
//! its parameters, says what the strategy needs (a reward, prefix scorers), how many samples one
//! call yields per prompt and how the KL of those samples to the decoding model is known
//! ([`KlProvenance`]); [`StrategyConfig::init`] builds the [`DecodingStrategy`] over a reward and
//! scorers.
//!
//! A new strategy is one file implementing [`DecodingStrategy`] plus one variant here; commands
//! map their flags to a config and never match on strategies themselves.
//!
//! Invariants: `validate` runs before anything is decoded and names the parameter as the command
//! line spells it; `init` refuses a strategy without the reward or scorers it needs.

use infalign_core::Seed;
use infalign_rewards::Reward;
use serde::{Deserialize, Serialize};

use crate::generate::{GenerationConfig, Generator};
use crate::{
    Ancestral, BestOfN, BlockwiseCd, DecodingError, Sample, ScorerMix, SoftBestOfN, TieBreak,
    TokenwiseCd, WorstOfN,
};

/// A way to decode: completions of prompts from a model behind a [`Generator`].
pub trait DecodingStrategy {
    /// Decodes every prompt: `cfg.n` samples per prompt when the strategy yields several
    /// ([`StrategyConfig::samples_per_prompt`]), one otherwise, prompt-major. Samples that a
    /// reward ranked carry it.
    fn decode(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError>;
}

/// How the KL of a strategy's samples to the decoding model is known.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlProvenance {
    /// Each sample records the exact KL of every step's distribution (`Sample::path_kl`): plain
    /// sampling (zero at temperature 1), a reshaped sampler, tokenwise CD.
    ExactPerToken,
    /// One of `n` i.i.d. samples picked by rank: `KL ≤ ln n − (n−1)/n` (Beirami et al. 2024).
    BestOfNBound {
        /// Candidates.
        n: usize,
    },
    /// One of `n` i.i.d. samples picked by any rule (soft best-of-N): `π(y) ≤ n·π_ref(y)`, so
    /// `KL ≤ ln n`.
    SelectionBound {
        /// Candidates.
        n: usize,
    },
    /// Blockwise CD: `(ln k − (k−1)/k)` per block of `m` tokens, times the decoded length over
    /// `m`.
    BlockwiseBound {
        /// Candidates per block.
        k: usize,
        /// Tokens per block.
        m: usize,
    },
}

/// A built-in strategy and its parameters. Serialised with `strategy` naming the variant as the
/// command line does (`sample`, `greedy`, `bon`, `won`, `soft-bon`, `cd-token`, `cd-block`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Ancestral sampling (with the sampler's temperature, top-k and top-p).
    Sample,
    /// The most likely token each step.
    Greedy,
    /// Best of `n` samples by a reward.
    #[serde(rename = "bon")]
    BestOfN {
        /// Candidates per prompt.
        n: usize,
    },
    /// Worst of `n` samples by a reward.
    #[serde(rename = "won")]
    WorstOfN {
        /// Candidates per prompt.
        n: usize,
    },
    /// Soft best-of-N: sample i of `n` with probability ∝ exp(r_i / τ).
    #[serde(rename = "soft-bon")]
    SoftBestOfN {
        /// Candidates per prompt.
        n: usize,
        /// Temperature τ > 0 of the selection.
        tau: f64,
    },
    /// Tokenwise controlled decoding: `p · exp(λ V)`.
    #[serde(rename = "cd-token")]
    TokenwiseCd {
        /// Strength λ of the value term.
        lambda: f32,
        /// Restrict to the base model's top-k tokens (not the paper's; needed by scalar
        /// scorers).
        top_k: Option<usize>,
    },
    /// Blockwise controlled decoding: the best of `k` blocks of `m` tokens by the scorers'
    /// value.
    #[serde(rename = "cd-block")]
    BlockwiseCd {
        /// Candidates per block.
        k: usize,
        /// Tokens per block.
        m: usize,
        /// Break ties at random instead of taking the first.
        random_ties: bool,
    },
}

/// `v ≥ 1`, or an error naming `field`.
pub(crate) fn at_least_one(field: &'static str, v: usize) -> Result<(), DecodingError> {
    if v == 0 {
        return Err(DecodingError::InvalidParameter {
            field,
            message: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// `0 < v < ∞`, or an error naming `field`.
pub(crate) fn positive(field: &'static str, v: f64) -> Result<(), DecodingError> {
    if !(v > 0.0 && v.is_finite()) {
        return Err(DecodingError::InvalidParameter {
            field,
            message: format!("{v} must be a positive number"),
        });
    }
    Ok(())
}

/// A finite `v`, or an error naming `field`.
pub(crate) fn finite(field: &'static str, v: f64) -> Result<(), DecodingError> {
    if !v.is_finite() {
        return Err(DecodingError::InvalidParameter {
            field,
            message: format!("{v} is not finite"),
        });
    }
    Ok(())
}

impl StrategyConfig {
    /// Checks every parameter, naming the first bad one as the command line spells it.
    pub fn validate(&self) -> Result<(), DecodingError> {
        match *self {
            Self::Sample | Self::Greedy => Ok(()),
            Self::BestOfN { n } | Self::WorstOfN { n } => at_least_one("n", n),
            Self::SoftBestOfN { n, tau } => {
                at_least_one("n", n)?;
                positive("tau", tau)
            }
            Self::TokenwiseCd { lambda, top_k } => {
                finite("lambda", f64::from(lambda))?;
                top_k.map_or(Ok(()), |k| at_least_one("cd-top-k", k))
            }
            Self::BlockwiseCd { k, m, .. } => {
                at_least_one("k", k)?;
                at_least_one("m", m)
            }
        }
    }

    /// The strategy's name as configs and the command line spell it (`bon`, `cd-block`, ...).
    pub fn id(&self) -> &'static str {
        match self {
            Self::Sample => "sample",
            Self::Greedy => "greedy",
            Self::BestOfN { .. } => "bon",
            Self::WorstOfN { .. } => "won",
            Self::SoftBestOfN { .. } => "soft-bon",
            Self::TokenwiseCd { .. } => "cd-token",
            Self::BlockwiseCd { .. } => "cd-block",
        }
    }

    /// The name of the method in tables and legends.
    pub fn method_name(&self) -> &'static str {
        match self {
            Self::Sample => "sampling",
            Self::Greedy => "greedy",
            Self::BestOfN { .. } => "best-of-N",
            Self::WorstOfN { .. } => "worst-of-N",
            Self::SoftBestOfN { .. } => "soft best-of-N",
            Self::TokenwiseCd { .. } => "tokenwise CD",
            Self::BlockwiseCd { .. } => "blockwise CD",
        }
    }

    /// Whether the strategy ranks samples by a reward.
    pub fn needs_reward(&self) -> bool {
        matches!(
            self,
            Self::BestOfN { .. } | Self::WorstOfN { .. } | Self::SoftBestOfN { .. }
        )
    }

    /// Whether the strategy steers by prefix scorers.
    pub fn needs_scorer(&self) -> bool {
        matches!(self, Self::TokenwiseCd { .. } | Self::BlockwiseCd { .. })
    }

    /// Samples one call yields per prompt: `n` of the generation config for strategies that
    /// sample each prompt independently (`Some(n)`), one selected sample otherwise (`None`).
    pub fn samples_per_prompt(&self, n: usize) -> Option<usize> {
        match self {
            Self::Sample | Self::Greedy | Self::TokenwiseCd { .. } => Some(n),
            _ => None,
        }
    }

    /// How the KL of the samples to the decoding model is known.
    pub fn kl_provenance(&self) -> KlProvenance {
        match *self {
            Self::Sample | Self::Greedy | Self::TokenwiseCd { .. } => KlProvenance::ExactPerToken,
            Self::BestOfN { n } | Self::WorstOfN { n } => KlProvenance::BestOfNBound { n },
            Self::SoftBestOfN { n, .. } => KlProvenance::SelectionBound { n },
            Self::BlockwiseCd { k, m, .. } => KlProvenance::BlockwiseBound { k, m },
        }
    }

    /// The strategy over `reward` and `scorers` (the scorers' weighted mix); an error names what
    /// a strategy needs and was not given.
    pub fn init<'a>(
        &self,
        reward: Option<&'a dyn Reward>,
        scorers: Option<ScorerMix<'a>>,
    ) -> Result<Box<dyn DecodingStrategy + 'a>, DecodingError> {
        self.validate()?;
        let reward = || {
            reward.ok_or(DecodingError::InvalidParameter {
                field: "reward",
                message: format!("{} ranks samples by a reward: give one", self.method_name()),
            })
        };
        let mut scorers = scorers;
        let mut mix = || {
            scorers.take().ok_or(DecodingError::InvalidParameter {
                field: "scorer",
                message: format!("{} steers by a prefix scorer: give one", self.method_name()),
            })
        };
        Ok(match *self {
            Self::Sample => Box::new(Ancestral { greedy: false }),
            Self::Greedy => Box::new(Ancestral { greedy: true }),
            Self::BestOfN { n } => Box::new(BestOfN {
                n,
                reward: reward()?,
            }),
            Self::WorstOfN { n } => Box::new(WorstOfN {
                n,
                reward: reward()?,
            }),
            Self::SoftBestOfN { n, tau } => Box::new(SoftBestOfN {
                n,
                tau,
                reward: reward()?,
            }),
            Self::TokenwiseCd { lambda, top_k } => {
                Box::new(TokenwiseCd::new(lambda, top_k, mix()?)?)
            }
            Self::BlockwiseCd { k, m, random_ties } => {
                let tie = if random_ties {
                    TieBreak::Random
                } else {
                    TieBreak::First
                };
                Box::new(BlockwiseCd::new(k, m, tie, mix()?)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<StrategyConfig> {
        vec![
            StrategyConfig::Sample,
            StrategyConfig::Greedy,
            StrategyConfig::BestOfN { n: 4 },
            StrategyConfig::WorstOfN { n: 4 },
            StrategyConfig::SoftBestOfN { n: 4, tau: 0.5 },
            StrategyConfig::TokenwiseCd {
                lambda: 2.0,
                top_k: None,
            },
            StrategyConfig::BlockwiseCd {
                k: 4,
                m: 8,
                random_ties: false,
            },
        ]
    }

    #[test]
    fn configs_round_trip_under_the_command_line_names() {
        for config in all() {
            let json = serde_json::to_value(&config).unwrap();
            assert_eq!(json["strategy"], config.id(), "{json}");
            let back: StrategyConfig = serde_json::from_value(json).unwrap();
            assert_eq!(back, config);
        }
        let e = serde_json::from_str::<StrategyConfig>(r#"{"strategy": "bon", "n": 2, "k": 3}"#);
        assert!(e.unwrap_err().to_string().contains("unknown field `k`"));
    }

    #[test]
    fn bad_parameters_and_missing_inputs_are_named() {
        let field = |c: StrategyConfig| match c.validate() {
            Err(DecodingError::InvalidParameter { field, .. }) => field,
            other => panic!("{c:?}: {other:?}"),
        };
        assert_eq!(field(StrategyConfig::BestOfN { n: 0 }), "n");
        assert_eq!(field(StrategyConfig::SoftBestOfN { n: 2, tau: 0.0 }), "tau");
        let cd = |lambda, top_k| StrategyConfig::TokenwiseCd { lambda, top_k };
        assert_eq!(field(cd(f32::INFINITY, None)), "lambda");
        assert_eq!(field(cd(1.0, Some(0))), "cd-top-k");
        let block = |k, m| StrategyConfig::BlockwiseCd {
            k,
            m,
            random_ties: true,
        };
        assert_eq!(field(block(0, 8)), "k");
        assert_eq!(field(block(2, 0)), "m");
        for config in all() {
            config.validate().unwrap();
            let missing = config.init(None, None).err().map(|e| e.to_string());
            let needs = config.needs_reward() || config.needs_scorer();
            assert_eq!(missing.is_some(), needs, "{config:?}: {missing:?}");
            if let Some(e) = missing {
                let what = if config.needs_reward() {
                    "reward"
                } else {
                    "scorer"
                };
                assert!(e.contains(what), "{e}");
            }
        }
    }

    #[test]
    fn each_strategy_says_how_its_kl_is_known() {
        let kinds: Vec<KlProvenance> = all().iter().map(StrategyConfig::kl_provenance).collect();
        assert_eq!(
            kinds,
            [
                KlProvenance::ExactPerToken,
                KlProvenance::ExactPerToken,
                KlProvenance::BestOfNBound { n: 4 },
                KlProvenance::BestOfNBound { n: 4 },
                KlProvenance::SelectionBound { n: 4 },
                KlProvenance::ExactPerToken,
                KlProvenance::BlockwiseBound { k: 4, m: 8 },
            ]
        );
        let yields: Vec<Option<usize>> = all().iter().map(|c| c.samples_per_prompt(3)).collect();
        assert_eq!(yields, [Some(3), Some(3), None, None, None, Some(3), None]);
    }
}
