//! Lexicon sentiment: the VADER lexicon (Hutto and Gilbert 2014; 7,519 entries, MIT licence,
//! shipped in `assets/lexicons/`) with VADER's negation rule and normalisation, without its
//! other heuristics (capitalisation, degree adverbs, "but").
//!
//! Score: the valences `v_i` of the words found in the lexicon are summed, each flipped and
//! damped (`× -0.74`) when one of the three preceding words is a negation; the sum `S` is
//! normalised to `S / sqrt(S² + 15)`, in (-1, 1). Text with no lexicon word scores 0.
//!
//! Invariant: the score depends only on the completion text.

use std::collections::HashMap;
use std::path::Path;

use crate::RewardError;
use crate::reward::{Reward, RewardInput};

const SHIPPED: &str = include_str!("../../../../assets/lexicons/vader_lexicon.txt");
const NEGATIONS: [&str; 14] = [
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "nowhere", "cannot",
    "without", "isnt", "dont", "aint",
];
const NEGATION_SCALE: f64 = -0.74;
const ALPHA: f64 = 15.0;

/// Sentiment from a word-valence lexicon.
#[derive(Debug, Clone)]
pub struct LexiconSentiment {
    valence: HashMap<String, f64>,
}

impl LexiconSentiment {
    /// The shipped VADER lexicon.
    pub fn vader() -> Self {
        Self::parse(SHIPPED, Path::new("assets/lexicons/vader_lexicon.txt"))
            .expect("the shipped lexicon parses")
    }

    /// A lexicon file: one `token<TAB>valence[<TAB>...]` per line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, RewardError> {
        let path = path.as_ref();
        Self::parse(&infalign_core::io::read_to_string(path)?, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Self, RewardError> {
        let mut valence = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut fields = line.split('\t');
            let (Some(token), Some(v)) = (fields.next(), fields.next()) else {
                return Err(RewardError::Lexicon {
                    path: path.into(),
                    line: i + 1,
                    message: "expected `token<TAB>valence`".into(),
                });
            };
            let v: f64 = v.trim().parse().map_err(|_| RewardError::Lexicon {
                path: path.into(),
                line: i + 1,
                message: format!("valence `{v}` is not a number"),
            })?;
            valence.insert(token.to_lowercase(), v);
        }
        Ok(Self { valence })
    }

    /// The normalised score of a text, in (-1, 1).
    pub fn polarity(&self, text: &str) -> f64 {
        let words: Vec<String> = text
            .split_whitespace()
            .map(|w| {
                let lower = w.to_lowercase();
                if self.valence.contains_key(&lower) {
                    lower
                } else {
                    lower
                        .trim_matches(|c: char| !c.is_alphanumeric() && c != '\'')
                        .to_string()
                }
            })
            .collect();
        let mut sum = 0.0;
        for (i, w) in words.iter().enumerate() {
            let Some(&v) = self.valence.get(w) else {
                continue;
            };
            let negated = words[i.saturating_sub(3)..i].iter().any(|p| {
                let bare: String = p.chars().filter(|c| c.is_alphanumeric()).collect();
                NEGATIONS.contains(&bare.as_str()) || p.ends_with("n't")
            });
            sum += if negated { v * NEGATION_SCALE } else { v };
        }
        sum / (sum * sum + ALPHA).sqrt()
    }
}

impl Reward for LexiconSentiment {
    fn name(&self) -> String {
        "sentiment".into()
    }

    fn score(&self, input: &RewardInput<'_>) -> Result<f64, RewardError> {
        Ok(self.polarity(input.completion))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_negation_and_normalisation() {
        let s = LexiconSentiment::vader();
        assert!(s.polarity("I love this wonderful day!") > 0.5);
        assert!(s.polarity("I hate this awful mess.") < -0.5);
        assert!(s.polarity("This is not good.") < 0.0);
        assert!(s.polarity("It isn't bad at all") > 0.0);
        assert_eq!(s.polarity("The table has four legs."), 0.0);
        // One word of valence v scores v / sqrt(v^2 + 15): "good" is 1.9 in VADER.
        let want = 1.9 / (1.9f64 * 1.9 + 15.0).sqrt();
        assert!((s.polarity("good") - want).abs() < 1e-12);
        let long = "wonderful ".repeat(200);
        assert!(s.polarity(&long) < 1.0);
    }

    #[test]
    fn malformed_lexicon_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lex.txt");
        std::fs::write(&p, "good\t1.9\nbad\tminus\n").unwrap();
        let e = LexiconSentiment::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("lex.txt:2") && e.contains("minus"), "{e}");
    }
}
