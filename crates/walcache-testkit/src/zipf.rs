//! A Zipf sampler for skewed key distributions in tests, benchmarks and the staleness auditor.

/// Zipf(s) over the ranks `0..n`: rank `k` has weight `1 / (k + 1)^s` (`s = 0` is uniform),
/// sampled by inverse CDF from a uniform number, so callers bring their own generator.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A sampler over `0..n` with exponent `s`.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    pub fn new(n: usize, s: f64) -> Zipf {
        assert!(n > 0, "Zipf over an empty range");
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// The rank for a uniform sample `u` in `[0, 1)`.
    pub fn rank(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::Zipf;

    #[test]
    fn ranks_cover_the_range_and_favour_the_first() {
        let z = Zipf::new(4, 1.0);
        // Weights 1, 1/2, 1/3, 1/4 over 25/12: the first rank holds 48% of the mass.
        assert_eq!(z.rank(0.0), 0);
        assert_eq!(z.rank(0.47), 0);
        assert_eq!(z.rank(0.49), 1);
        assert_eq!(z.rank(0.999_999), 3);
        let uniform = Zipf::new(4, 0.0);
        assert_eq!(uniform.rank(0.3), 1);
    }
}
