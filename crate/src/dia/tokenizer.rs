//! Byte-level text tokenizer (docs/model.md §3.1): UTF-8 bytes, with the literal `[S1]`/`[S2]` replaced by 0x01/0x02.

/// Token ids for `text`. Nothing else is special; non-ASCII characters become their UTF-8 bytes.
pub fn encode_text(text: &str) -> Vec<u32> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"[S1]") {
            out.push(1);
            i += 4;
        } else if bytes[i..].starts_with(b"[S2]") {
            out.push(2);
            i += 4;
        } else {
            out.push(bytes[i] as u32);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaker_tags_and_utf8() {
        assert_eq!(encode_text("[S1] hi[S2]é"), vec![1, 32, 104, 105, 2, 0xC3, 0xA9]);
        assert_eq!(encode_text("[S3]"), "[S3]".bytes().map(u32::from).collect::<Vec<_>>());
    }
}
