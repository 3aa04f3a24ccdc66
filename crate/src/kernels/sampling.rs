//! `shaders/sampling.wgsl`: GPU-side CFG + sampling + Dia's EOS/delay rules; writes next step's tokens.
