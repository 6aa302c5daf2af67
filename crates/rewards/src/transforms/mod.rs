//! Reward transforms Φ (InfAlign, docs/ALGORITHMS.md B.4), applied to a calibrated reward
//! `u ∈ [0, 1]` before KL-regularised RL. One file per transform; [`Transform`] is the
//! serializable config that names one (`{"kind": "exp", "t": 4.0}`).
//!
//! Invariant: every transform is non-decreasing in u (a better-ranked sample never gets a lower
//! transformed reward); each file's tests check it on a grid.

mod exp;
mod identity;
mod log;
mod neg_exp;
mod power;
mod tabulated;

pub use exp::Exp;
pub use identity::Identity;
pub use log::Log;
pub use neg_exp::NegExp;
pub use power::Power;
pub use tabulated::Tabulated;

/// The largest `t` of `exp(t·u)` and `−exp(−t·u)`: exp(700) ≈ 1e304 is still finite in f64.
pub const MAX_EXP_T: f64 = 700.0;

use serde::{Deserialize, Serialize};

use crate::RewardError;

/// A map from calibrated reward `u ∈ [0, 1]` to the reward RL maximises.
pub trait RewardTransform {
    /// Φ(u).
    fn apply(&self, u: f64) -> f64;
}

/// One of the transforms, as written in a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transform {
    /// Φ(u) = u: optimal for the standard win rate.
    Identity(Identity),
    /// Φ(u) = log(u + eps): best-of-N distillation.
    Log(Log),
    /// Φ(u) = exp(t u): best-of-N.
    Exp(Exp),
    /// Φ(u) = -exp(-t u): worst-of-N.
    NegExp(NegExp),
    /// Φ(u) = u^k.
    Power(Power),
    /// Φ tabulated on a uniform grid (the optimal transform evaluation computes).
    Tabulated(Tabulated),
}

impl Transform {
    /// `exp(t u)`.
    pub fn exp(t: f64) -> Self {
        Self::Exp(Exp { t })
    }
    /// `-exp(-t u)`.
    pub fn neg_exp(t: f64) -> Self {
        Self::NegExp(NegExp { t })
    }
    /// `log(u + eps)`.
    pub fn log(eps: f64) -> Self {
        Self::Log(Log { eps })
    }

    /// Whether Φ(u) goes to −∞ as u → 0 (`log` with a tiny ε): such a transform needs the
    /// calibrated reward kept away from 0, so calibration smooths it for them
    /// ([`crate::Calibrator::smoothing`]).
    pub fn unbounded_at_zero(&self) -> bool {
        matches!(self, Self::Log(_))
    }

    /// Parses a command-line name (`identity`, `log`, `exp`, `negexp`, `power`) with its
    /// parameter (`t` for exp/negexp, `k` for power, `eps` for log).
    pub fn from_name(name: &str, param: Option<f64>) -> Result<Self, RewardError> {
        let t = param.unwrap_or(1.0);
        let transform = match name {
            "identity" => Self::Identity(Identity),
            "log" => Self::log(param.unwrap_or(1e-6)),
            "exp" => Self::exp(t),
            "negexp" | "neg_exp" => Self::neg_exp(t),
            "power" => Self::Power(Power { k: t }),
            other => {
                return Err(RewardError::InvalidParameter {
                    field: "transform",
                    message: format!("`{other}`: expected identity, log, exp, negexp or power"),
                });
            }
        };
        transform.validate()?;
        Ok(transform)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), RewardError> {
        let bad = |field, message: String| Err(RewardError::InvalidParameter { field, message });
        match self {
            Self::Exp(Exp { t }) | Self::NegExp(NegExp { t }) if !(*t > 0.0 && t.is_finite()) => {
                bad("t", format!("{t} must be a positive number"))
            }
            // Calibrated rewards lie in [0, 1]: exp(t·u) must stay finite at u = 1.
            Self::Exp(Exp { t }) | Self::NegExp(NegExp { t }) if *t > MAX_EXP_T => bad(
                "t",
                format!("{t} is above {MAX_EXP_T}: exp(t·u) would overflow at u = 1"),
            ),
            Self::Log(Log { eps }) if !(*eps >= 0.0 && eps.is_finite()) => {
                bad("eps", format!("{eps} must be non-negative"))
            }
            Self::Power(Power { k }) if !(*k > 0.0 && k.is_finite()) => {
                bad("k", format!("{k} must be a positive number"))
            }
            Self::Tabulated(t) => t.validate(),
            _ => Ok(()),
        }
    }
}

impl RewardTransform for Transform {
    fn apply(&self, u: f64) -> f64 {
        match self {
            Self::Identity(x) => x.apply(u),
            Self::Log(x) => x.apply(u),
            Self::Exp(x) => x.apply(u),
            Self::NegExp(x) => x.apply(u),
            Self::Power(x) => x.apply(u),
            Self::Tabulated(x) => x.apply(u),
        }
    }
}

/// Checks that `phi` is non-decreasing on a grid of [0, 1] (used by every transform's tests).
#[cfg(test)]
pub(crate) fn assert_monotone(phi: &dyn RewardTransform) {
    let values: Vec<f64> = (0..=1000).map(|i| phi.apply(i as f64 / 1000.0)).collect();
    for w in values.windows(2) {
        assert!(w[1] >= w[0], "not monotone: {} then {}", w[0], w[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_and_validate() {
        let t = Transform::exp(4.0);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"kind":"exp","t":4.0}"#);
        assert_eq!(serde_json::from_str::<Transform>(&json).unwrap(), t);
        assert!(Transform::from_name("exp", Some(-1.0)).is_err());
        let e = Transform::from_name("sqrt", None).unwrap_err().to_string();
        assert!(e.contains("sqrt"), "{e}");
        assert_eq!(
            Transform::from_name("negexp", Some(2.0)).unwrap(),
            Transform::neg_exp(2.0)
        );
    }
}
