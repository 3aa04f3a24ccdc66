//! Safetensors reading tensor by tensor from any byte source; HF and nari layouts mapped to one internal
//! (HF, `[out, in]`) layout; dtype conversion. Knows nothing of GPUs or model math.
