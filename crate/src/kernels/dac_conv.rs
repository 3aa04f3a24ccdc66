//! `shaders/dac_conv.wgsl`: DAC convolutions (to be written).
