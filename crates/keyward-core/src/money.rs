//! Money as integer micro-dollars: no floating point where budgets are compared.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An amount in millionths of a US dollar.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl Micros {
    /// Zero dollars.
    pub const ZERO: Micros = Micros(0);

    /// Converts a dollar amount given by a person (`12.5`); `None` for negative,
    /// non-finite or absurd (over a billion dollars) amounts.
    pub fn from_usd(usd: f64) -> Option<Micros> {
        (usd.is_finite() && (0.0..=1e9).contains(&usd)).then(|| Micros((usd * 1e6).round() as i64))
    }

    /// The amount in dollars, for display only.
    pub fn as_usd(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.6}", self.as_usd())
    }
}

impl std::ops::Add for Micros {
    type Output = Micros;
    fn add(self, o: Micros) -> Micros {
        Micros(self.0.saturating_add(o.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_dollars_and_rejects_nonsense() {
        assert_eq!(Micros::from_usd(1.5), Some(Micros(1_500_000)));
        assert_eq!(Micros::from_usd(0.000_001), Some(Micros(1)));
        assert_eq!(Micros::from_usd(-1.0), None);
        assert_eq!(Micros::from_usd(f64::NAN), None);
        assert_eq!(Micros::from_usd(1e12), None);
        assert_eq!(Micros(2_500_000).to_string(), "$2.500000");
    }
}
