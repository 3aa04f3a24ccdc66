//! The Dia model on the GPU: encoder, decoder, generation session.
