//! Delay pattern (docs/model.md §4.1, §4.7): the delayed decoder prefix, its revert, and the output crop.

/// Delayed prefix `[1 + n + max_delay, C]` (row-major) for an undelayed grid of BOS, the `n` prompt frames
/// (`prompt`, `[n, C]` row-major) and `max_delay` PAD rows. PAD marks "to be generated".
pub fn build_prefix(delay: &[usize], bos: u32, pad: u32, prompt: &[u32]) -> Vec<u32> {
    let c = delay.len();
    let n = prompt.len() / c;
    let max_delay = delay.iter().copied().max().unwrap_or(0);
    let rows = 1 + n + max_delay;
    let mut grid = vec![pad; rows * c];
    grid[..c].fill(bos);
    grid[c..c + prompt.len()].copy_from_slice(prompt);
    apply_delay(&grid, rows, delay, bos)
}

/// The undelayed prompt frames `[n, C]` inside a delayed prefix built by `build_prefix` (inverse of it):
/// n = rows − 1 − max_delay, frame t = prefix[t + 1 + δ_c, c].
pub fn prompt_from_prefix(prefix: &[u32], delay: &[usize], pad: u32) -> Vec<u32> {
    let c = delay.len();
    let rows = prefix.len() / c;
    let max_delay = delay.iter().copied().max().unwrap_or(0);
    let n = rows.saturating_sub(1 + max_delay);
    let mut out = Vec::with_capacity(n * c);
    for t in 1..=n {
        for (ch, &d) in delay.iter().enumerate() {
            let v = prefix[(t + d) * c + ch];
            debug_assert_ne!(v, pad, "a prompt frame is marked unknown");
            out.push(v);
        }
    }
    out
}

/// out[t, c] = codes[t − δ_c, c], BOS where t − δ_c < 0.
pub fn apply_delay(codes: &[u32], rows: usize, delay: &[usize], bos: u32) -> Vec<u32> {
    let c = delay.len();
    let mut out = vec![0; rows * c];
    for t in 0..rows {
        for (ch, &d) in delay.iter().enumerate() {
            out[t * c + ch] = if t >= d { codes[(t - d) * c + ch] } else { bos };
        }
    }
    out
}

/// Rows fed at the start: the prefix length minus the PAD count of channel 0 (docs/model.md §4.7).
pub fn rows_to_feed(prefix: &[u32], channels: usize, pad: u32) -> usize {
    let rows = prefix.len() / channels;
    rows - (0..rows).filter(|&t| prefix[t * channels] == pad).count()
}

/// HF `batch_decode` crop of one item's delayed codes `[S, C]`: revert the delay and keep undelayed rows
/// `[start, end)` with start = `prompt_rows` (BOS + prompt) or the channel-0 BOS count, end = the channel-0
/// EOS row. Values outside the codebook are clamped to 0 (docs/model.md §4.1). A sequence cut before its EOS tail is
/// complete (fewer than 16 new rows) has frames whose later channels were never generated: it ends at the last
/// frame whose every channel exists, rather than decoding made-up codes. Returns `[T, C]` row-major.
pub fn codes_for_decode(seq: &[u32], delay: &[usize], bos: u32, pad: u32, codebook: u32, prompt_rows: Option<usize>) -> Vec<u32> {
    let c = delay.len();
    let s = seq.len() / c;
    let start = prompt_rows.unwrap_or_else(|| (0..s).filter(|&t| seq[t * c] == bos).count());
    let pads = (0..s).filter(|&t| seq[t * c] == pad).count();
    let complete = s.saturating_sub(delay.iter().copied().max().unwrap_or(0));
    let end = (s - pads).saturating_sub(1).min(complete);
    let mut out = Vec::new();
    for t in start..end.max(start) {
        for (ch, &d) in delay.iter().enumerate() {
            let v = seq[(t + d) * c + ch];
            out.push(if v < codebook { v } else { 0 });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_without_prompt_is_bos_staircase() {
        let delay = [0, 2, 3];
        let p = build_prefix(&delay, 9, 8, &[]);
        // rows: 1 + 0 + 3; channel c holds BOS in rows 0..=δ_c, PAD after.
        assert_eq!(p, vec![9, 9, 9, 8, 9, 9, 8, 9, 9, 8, 8, 9]);
        assert_eq!(rows_to_feed(&p, 3, 8), 1);
        assert!(prompt_from_prefix(&p, &delay, 8).is_empty());
    }

    #[test]
    fn prompt_round_trips_through_prefix() {
        let delay = [0, 2, 3];
        let prompt = vec![1, 2, 3, 4, 5, 6];
        let p = build_prefix(&delay, 9, 8, &prompt);
        assert_eq!(rows_to_feed(&p, 3, 8), 3);
        assert_eq!(prompt_from_prefix(&p, &delay, 8), prompt);
    }

    #[test]
    fn crop_reverts_delay() {
        let delay = [0, 1];
        // undelayed frames a0=(1,2), a1=(3,4); delayed with BOS 9, then EOS(7)/PAD(8) tail.
        let seq = vec![9, 9, 1, 9, 3, 2, 7, 4, 8, 7];
        assert_eq!(codes_for_decode(&seq, &delay, 9, 8, 5, None), vec![1, 2, 3, 4]);
    }

    #[test]
    fn crop_of_a_sequence_cut_before_its_tail_keeps_complete_frames_only() {
        let delay = [0, 2];
        // BOS row, then 3 generated rows and no EOS: frame 1 has channel 1 at row 3, frame 2 would need row 4.
        let seq = vec![9, 9, 1, 9, 3, 9, 4, 2];
        assert_eq!(codes_for_decode(&seq, &delay, 9, 8, 5, None), vec![1, 2]);
        // Fewer rows than the delay: no frame is complete.
        assert!(codes_for_decode(&seq[..4], &delay, 9, 8, 5, None).is_empty());
    }
}
