//! Deterministic pseudo-random values, and models built from them: for tests, benchmarks and runs without a
//! checkpoint. One generator for all of them, so a seed means the same numbers everywhere.

use crate::config::{DacConfig, DiaConfig};
use crate::dac::{dac_tensor_specs, DacError, DacModel, DacModelBuilder};
use crate::dia::{DiaError, DiaModel, DiaModelBuilder, TensorValues};
use crate::gpu::Gpu;
use crate::kernels::Numerics;

/// xorshift64*: small, fast and good enough for test data and random weights (not for anything secret).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose state is derived from `seed` (any seed, 0 included, gives a usable state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A generator starting from exactly this state (must not be 0).
    pub fn from_state(state: u64) -> Rng {
        assert!(state != 0, "xorshift's state must not be 0");
        Rng(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1), in steps of 2⁻²³.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }

    /// Uniform in 0..n (n > 0; the modulo bias is irrelevant for test data).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Pseudo-random values in [-1, 1) from one block generated once and read at a different offset for each
/// request: for models of billions of weights, where the values only need to be finite and not all alike, and
/// generating each one fresh on the CPU would dominate a benchmark's run.
pub struct Noise {
    block: Vec<f32>,
    next_offset: usize,
}

impl Noise {
    /// A prime length, so offsets and tensor lengths do not line up.
    const LEN: usize = (1 << 22) + 15;

    /// The block is `Rng::from_state(seed | 1)`'s first values: uniform in [-1, 1).
    pub fn new(seed: u64) -> Noise {
        Noise { block: Rng::from_state(seed | 1).vec(Self::LEN, 1.0), next_offset: 0 }
    }

    /// A block of normal values with the uniform block's variance (σ = 1/√3), by Box–Muller from
    /// `Rng::from_state(seed | 1)`: weights with tails, nearer a trained model's than uniform ones (block
    /// quantization's scale choice depends on them; `dia-bench --quality --random-weights gaussian`).
    pub fn gaussian(seed: u64) -> Noise {
        let mut rng = Rng::from_state(seed | 1);
        let sigma = 1.0 / 3f64.sqrt();
        let mut block = Vec::with_capacity(Self::LEN + 1);
        while block.len() < Self::LEN {
            // u1 in (0, 1], u2 in [0, 1).
            let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let r = (-2.0 * u1.ln()).sqrt() * sigma;
            let t = std::f64::consts::TAU * u2;
            block.extend([(r * t.cos()) as f32, (r * t.sin()) as f32]);
        }
        block.truncate(Self::LEN);
        Noise { block, next_offset: 0 }
    }

    /// `n` values of the block times `scale` (uniform: in [-scale, scale)), the block from the next offset,
    /// wrapping around.
    pub fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        let mut i = self.next_offset % self.block.len();
        while out.len() < n {
            let k = (self.block.len() - i).min(n - out.len());
            out.extend(self.block[i..i + k].iter().map(|v| v * scale));
            i = 0;
        }
        self.next_offset += 7_919;
        out
    }
}

/// Where a random model's values come from: fresh from an `Rng`, or read from a `Noise` block.
pub trait Values {
    /// `n` values of spread `scale`: uniform in [-scale, scale) (`Rng`, `Noise::new`), or normal with that
    /// distribution's variance (`Noise::gaussian`).
    fn take(&mut self, n: usize, scale: f32) -> Vec<f32>;
}

impl Values for Rng {
    fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        self.vec(n, scale)
    }
}

impl Values for Noise {
    fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        Noise::take(self, n, scale)
    }
}

/// Dia with random weights: norm weights 1, matrices scaled by 1/√fan-in so activations stay in range through
/// the layers (as a trained model's initialisation), embeddings unscaled. With `never_eos`, channel 0's EOS
/// row of the logits head is zero, so its logit is 0 against random others and generations run to their length
/// instead of ending wherever random weights happen to pick EOS (benchmarks).
pub fn dia_model(gpu: &Gpu, cfg: &DiaConfig, numerics: Numerics, values: &mut dyn Values, never_eos: bool) -> Result<DiaModel, DiaError> {
    let mut b = DiaModelBuilder::new(gpu, cfg, numerics)?;
    b.put_all(|name, shape| {
        // Submitting flushes the previous tensor's staged upload, so staging memory stays one tensor.
        gpu.queue.submit(std::iter::empty());
        gpu.poll_nonblocking();
        let n: usize = shape.iter().product();
        if name.ends_with("norm.weight") {
            return Ok(TensorValues::F32(vec![1.0; n]));
        }
        let scale = if shape.len() == 2 && !name.contains("embed") { 1.0 / (shape[1] as f32).sqrt() } else { 1.0 };
        let mut data = values.take(n, scale);
        if never_eos && name.ends_with("logits_dense.weight") {
            data[cfg.eos as usize * cfg.decoder.hidden..][..cfg.decoder.hidden].fill(0.0);
        }
        Ok(TensorValues::F32(data))
    })?;
    b.finish()
}

/// The DAC's decoder with random weights (decode only: the encoder's tensors are not loaded): Snake's alpha in
/// [0.5, 1.5), weight-normed convolutions scaled by 1/√fan-in, the rest (biases, codebooks, projections) in
/// [-0.1, 0.1).
pub fn dac_decoder(gpu: &Gpu, cfg: &DacConfig, numerics: Numerics, values: &mut dyn Values) -> Result<DacModel, DacError> {
    let mut b = DacModelBuilder::new(gpu, cfg, numerics, false)?;
    for spec in dac_tensor_specs(cfg).into_iter().filter(|s| !s.name.starts_with("encoder.")) {
        let n: usize = spec.shape.iter().product();
        let data = if spec.name.ends_with(".alpha") {
            values.take(n, 0.5).into_iter().map(|v| 1.0 + v).collect()
        } else if spec.weight_norm {
            // A transposed convolution's weight is [cin, cout, k]: its fan-in is cin.
            let fan_in = if spec.name.contains("conv_t") { spec.shape[0] } else { n / spec.shape[0] };
            values.take(n, 1.0 / (fan_in as f32).sqrt())
        } else {
            values.take(n, 0.1)
        };
        b.accept(&spec.name, &spec.shape, &data)?;
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_stays_in_range_and_seeds_differ() {
        let mut a = Rng::new(1);
        let v = a.vec(10_000, 1.0);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert_ne!(Rng::new(0).next_u64(), 0, "seed 0 gives a live state");
    }

    #[test]
    fn noise_is_the_generator_read_at_offsets() {
        let mut noise = Noise::new(42);
        let first = noise.take(5, 2.0);
        let want: Vec<f32> = Rng::from_state(43).vec(5, 1.0).iter().map(|v| v * 2.0).collect();
        assert_eq!(first, want);
        let second = noise.take(3, 1.0);
        assert_eq!(second, Rng::from_state(43).vec(7_919 + 3, 1.0)[7_919..]);
    }

    #[test]
    fn gaussian_noise_has_the_uniform_variance_and_tails() {
        let v = Noise::gaussian(5).take(1 << 20, 1.0);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurtosis = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
        assert!(mean.abs() < 2e-3 && (var - 1.0 / 3.0).abs() < 3e-3, "mean {mean}, variance {var}");
        assert!((kurtosis - 3.0).abs() < 0.05, "kurtosis {kurtosis} (normal: 3; uniform: 1.8)");
        assert!(v.iter().all(|x| x.is_finite()) && v.iter().any(|&x| x.abs() > 1.5), "tails beyond the uniform range");
        assert_eq!(Noise::gaussian(5).take(8, 1.0), v[..8], "deterministic");
    }
}
