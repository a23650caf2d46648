//! Summaries of samples, both ways: the paper's (mean and a 95 %
//! confidence interval over repetitions, Student's t) and ours (p50, p99,
//! max over every sample).

use serde::Serialize;

/// Two-sided 97.5 % quantiles of Student's t for 1 to 30 degrees of
/// freedom (beyond: the normal's 1.96).
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// A sample, summarised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Stats {
    /// Samples.
    pub(crate) n: usize,
    /// Mean.
    pub(crate) mean: f64,
    /// Half-width of the 95 % confidence interval of the mean (0 with
    /// fewer than two samples).
    pub(crate) ci95: f64,
    /// Median.
    pub(crate) p50: f64,
    /// 99th percentile (nearest rank).
    pub(crate) p99: f64,
    /// Smallest.
    pub(crate) min: f64,
    /// Largest.
    pub(crate) max: f64,
}

impl Stats {
    /// Of `v` (any order; non-finite values ignored).
    pub(crate) fn of(v: &[f64]) -> Self {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Self::default();
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let ci95 = if n < 2 {
            0.0
        } else {
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let t = T975.get(n - 2).copied().unwrap_or(1.96);
            t * (var / n as f64).sqrt()
        };
        let rank = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        Self {
            n,
            mean,
            ci95,
            p50: rank(0.5),
            p99: rank(0.99),
            min: v[0],
            max: v[n - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        let s = Stats::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            (s.n, s.mean, s.p50, s.p99, s.min, s.max),
            (5, 3.0, 3.0, 5.0, 1.0, 5.0)
        );
        // sd = sqrt(2.5); t(4) = 2.776.
        assert!((s.ci95 - 2.776 * (2.5f64 / 5.0).sqrt()).abs() < 1e-9);
        assert_eq!(Stats::of(&[]).n, 0);
        assert_eq!(Stats::of(&[7.0]).ci95, 0.0);
        assert_eq!(Stats::of(&[f64::NAN, 2.0]).n, 1);
    }

    proptest! {
        #[test]
        fn ordered_and_inside(v in proptest::collection::vec(-1e6f64..1e6, 1..200)) {
            let s = Stats::of(&v);
            prop_assert!(s.min <= s.p50 && s.p50 <= s.p99 && s.p99 <= s.max);
            prop_assert!(s.min <= s.mean + 1e-6 && s.mean <= s.max + 1e-6);
            prop_assert!(s.ci95 >= 0.0);
        }
    }
}
