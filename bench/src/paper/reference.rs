//! The paper's numbers (4 cores), as the issue quotes them: what our
//! figures and tables are set against. Where the paper gives only the ends
//! of a series, the points between are interpolated linearly and said to
//! be; where Table 1 has no quoted cell, it is derived from Fig. 5a's
//! recovery time as 1 − R / MTBF (which reproduces the quoted cells) and
//! said to be.

/// The four mechanisms, in the order of every table: the API's names, ours
/// on the command line, and the paper's.
pub(crate) const MECHANISMS: [(&str, &str); 4] = [
    ("0r", "0R"),
    ("1r-as", "1R-AS"),
    ("1r-aa", "1R-AA"),
    ("mr-aa", "MR-AA"),
];

/// Fig. 5a: recovery after one VNF failure, s, flat in chain length (0R:
/// "up to 3.6 s").
pub(crate) fn fig5a_s(mechanism: usize) -> f64 {
    [3.6, 1.14, 0.05, 0.0002][mechanism]
}

/// Fig. 5b: 8-VNF chain, `k` (1 to 8) simultaneous failures, s; and
/// whether the value is interpolated (only k = 1 and 8 are quoted).
pub(crate) fn fig5b_s(mechanism: usize, k: usize) -> (f64, bool) {
    let (a, b) = [(3.56, 7.8), (1.14, 2.52), (0.004, 0.009), (0.0004, 0.0009)][mechanism];
    let k = k.clamp(1, 8);
    (a + (b - a) * (k - 1) as f64 / 7.0, k != 1 && k != 8)
}

/// Fig. 6a: throughput lost against the chain without NHAM, %.
pub(crate) fn fig6a_loss_pct(mechanism: usize) -> f64 {
    [11.5, 11.5, 4.7, 14.1][mechanism]
}

/// Table 1's MTBFs, s; its runs were 3 hours each.
pub(crate) const TABLE1_MTBF_S: [f64; 5] = [60.0, 120.0, 300.0, 600.0, 1800.0];

/// Table 1's run length, s.
pub(crate) const TABLE1_RUN_S: f64 = 3.0 * 3600.0;

/// Table 1: availability, %, at `mtbf_s`; and whether it is derived (not
/// quoted).
pub(crate) fn table1_pct(mechanism: usize, mtbf_s: f64) -> (f64, bool) {
    match (mechanism, mtbf_s as u64) {
        (2, 60) => (99.916, false),
        (3, 60) => (99.999, false),
        _ => (100.0 * (1.0 - fig5a_s(mechanism) / mtbf_s), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_cells_agree_with_the_quoted_ones() {
        // 1 − 0.05 / 60 = 99.917 %, quoted 99.916 %.
        assert!((100.0 * (1.0 - fig5a_s(2) / 60.0) - 99.916).abs() < 0.01);
        assert!((100.0 * (1.0 - fig5a_s(3) / 60.0) - 99.999).abs() < 0.001);
        assert_eq!(fig5b_s(0, 1), (3.56, false));
        assert!((fig5b_s(0, 8).0 - 7.8).abs() < 1e-9 && !fig5b_s(0, 8).1);
        assert!(fig5b_s(1, 4).1);
    }
}
