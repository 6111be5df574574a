//! A small seeded random source (SplitMix64) for key choice and Poisson
//! gaps. Contract: the same seed gives the same sequence on every machine,
//! so a run can be repeated exactly; [`mix`] is also the stateless hash
//! that turns a call number into a key and a Zipf rank into an actor id.

/// SplitMix64's finaliser: a bijective 64-bit mix.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform float in [0, 1) from 64 random bits.
pub fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A sequential SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// An exponential variate with mean `1/rate` (a Poisson process's gap).
    pub fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - unit(self.next_u64())).ln() / rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_gaps_have_the_right_mean() {
        let mut r = Rng::new(7);
        let n = 100_000;
        let mean: f64 = (0..n).map(|_| r.exp(2000.0)).sum::<f64>() / n as f64;
        assert!((mean - 0.0005).abs() < 0.00001, "mean gap {mean}");
    }
}
