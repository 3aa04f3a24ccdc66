//! Long-form scripts → segments that Dia speaks one at a time (issue 16; rules in docs/long-form.md).
//!
//! Dia reads at most 1024 bytes of text and generates at most 3072 rows (35.7 s) per call, and its usage guide
//! asks for 5–20 s of speech per call for natural pacing. A script is cut at speaker turns (`[S1]`/`[S2]`)
//! first, at sentence ends inside a turn that is too long, then at clause marks, spaces, and as a last resort
//! at any character boundary. Non-verbal tags such as `(laughs)` stay with the sentence they follow, and every
//! segment starts with the speaker tag in force. Everything here works on byte offsets of valid UTF-8 and only
//! ever cuts at character boundaries.

/// Largest script accepted: 256 KiB of text is about 4.7 hours of speech at `BYTES_PER_SECOND`.
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;

/// Audio frames (decoder rows) per second: 44 100 Hz / 512 samples per frame.
pub const FRAMES_PER_SECOND: f64 = 44_100.0 / 512.0;

/// Bytes of script text spoken per second, for estimating lengths before generating: conversational English runs
/// at about 150 words a minute (2.5 words/s) and an English word with its space and punctuation is about 6 bytes.
/// Speaker tags are not speech and are not counted (`spoken_bytes`).
pub const BYTES_PER_SECOND: f64 = 15.0;

/// Estimated decoder rows per spoken byte: `FRAMES_PER_SECOND / BYTES_PER_SECOND` ≈ 5.74.
pub const ROWS_PER_BYTE: f64 = FRAMES_PER_SECOND / BYTES_PER_SECOND;

const TAGS: [&str; 2] = ["[S1]", "[S2]"];

/// Sizes the splitter aims for, in bytes of segment text (speaker tags included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentLimits {
    /// No segment is longer (except a whole script that already fits, which is kept verbatim).
    pub max_bytes: usize,
    /// A segment shorter than this is filled with the next turn's first sentences rather than closed at the
    /// turn boundary.
    pub min_bytes: usize,
}

impl Default for SegmentLimits {
    /// 160 bytes (≈ 10.7 s, ≈ 920 rows estimated) at most and 75 bytes (5 s) at least: inside the usage guide's
    /// 5–20 s, and short enough that the previous segment can ride along as context (`pipeline`) with room left
    /// for the new one to run 60 % slower than estimated within the decoder's 3072 rows.
    fn default() -> Self {
        SegmentLimits { max_bytes: 160, min_bytes: 75 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("the script is {bytes} bytes long; at most {limit} bytes are taken")]
    TooLong { bytes: usize, limit: usize },
    #[error("the script has nothing to speak (it is empty, only whitespace or only speaker tags)")]
    NothingToSpeak,
    #[error("bad segment limits: {0}")]
    BadLimits(String),
}

/// Bytes of `text` that are spoken: everything but the speaker tags.
pub fn spoken_bytes(text: &str) -> usize {
    text.len() - TAGS.iter().map(|t| text.matches(t).count() * t.len()).sum::<usize>()
}

/// Estimated decoder rows for speaking `text` (`ROWS_PER_BYTE` per spoken byte).
pub fn estimated_rows(text: &str) -> usize {
    (spoken_bytes(text) as f64 * ROWS_PER_BYTE).ceil() as usize
}

/// A piece of one speaker turn: a sentence, or part of one too long for a segment.
#[derive(Debug, Clone, Copy)]
struct Piece<'s> {
    tag: Option<&'static str>,
    text: &'s str,
    turn: usize,
}

/// Splits `script` into segments (see the module doc). A script of at most `max_bytes` bytes comes back
/// unchanged as its only segment, so a short text is spoken exactly as before long-form existed.
pub fn split_script(script: &str, limits: &SegmentLimits) -> Result<Vec<String>, ScriptError> {
    if limits.max_bytes < 16 || limits.min_bytes > limits.max_bytes {
        return Err(ScriptError::BadLimits(format!("max {} bytes (at least 16), min {} bytes (at most max)", limits.max_bytes, limits.min_bytes)));
    }
    if script.len() > MAX_SCRIPT_BYTES {
        return Err(ScriptError::TooLong { bytes: script.len(), limit: MAX_SCRIPT_BYTES });
    }
    if script.trim().is_empty() {
        return Err(ScriptError::NothingToSpeak);
    }
    if script.len() <= limits.max_bytes {
        return Ok(vec![script.to_string()]);
    }
    let turns = speaker_turns(script);
    if turns.is_empty() {
        return Err(ScriptError::NothingToSpeak);
    }
    // Pieces of every turn, each short enough to start a segment with its tag.
    let mut turn_pieces: Vec<Vec<Piece>> = Vec::new();
    for (turn, &(tag, body)) in turns.iter().enumerate() {
        let room = limits.max_bytes - tag.map_or(0, |t| t.len() + 1);
        let mut pieces = Vec::new();
        for sentence in sentences(body) {
            for part in split_long(sentence, room) {
                pieces.push(Piece { tag, text: part, turn });
            }
        }
        turn_pieces.push(pieces);
    }
    let mut packer = Packer { limits, segments: Vec::new(), current: String::new(), last_turn: None };
    for pieces in &turn_pieces {
        let whole = render_len(pieces, true);
        // A turn goes whole into the current segment when it fits; otherwise the segment closes at the turn
        // boundary, unless it is still shorter than `min_bytes`: then the turn's first sentences fill it up.
        if !packer.current.is_empty() && packer.current.len() + 1 + whole > limits.max_bytes && packer.current.len() >= limits.min_bytes {
            packer.close();
        }
        for &p in pieces {
            packer.push(p);
        }
    }
    packer.close();
    Ok(packer.segments)
}

/// Greedy packing of pieces into segments of at most `max_bytes`.
struct Packer<'l> {
    limits: &'l SegmentLimits,
    segments: Vec<String>,
    current: String,
    /// Turn of the last piece in `current`.
    last_turn: Option<usize>,
}

impl Packer<'_> {
    fn close(&mut self) {
        if !self.current.is_empty() {
            self.segments.push(std::mem::take(&mut self.current));
        }
        self.last_turn = None;
    }

    fn push(&mut self, p: Piece) {
        if !self.current.is_empty() && self.current.len() + 1 + piece_len(&p, self.last_turn != Some(p.turn)) > self.limits.max_bytes {
            self.close();
        }
        if !self.current.is_empty() {
            self.current.push(' ');
        }
        // A segment, and a turn inside one, starts with the speaker tag in force.
        if let (Some(tag), true) = (p.tag, self.last_turn != Some(p.turn)) {
            self.current.push_str(tag);
            self.current.push(' ');
        }
        self.current.push_str(p.text);
        self.last_turn = Some(p.turn);
    }
}

fn piece_len(p: &Piece, with_tag: bool) -> usize {
    p.text.len() + if with_tag { p.tag.map_or(0, |t| t.len() + 1) } else { 0 }
}

/// Bytes of a turn's pieces joined by spaces, its tag in front.
fn render_len(pieces: &[Piece], with_tag: bool) -> usize {
    pieces.iter().enumerate().map(|(i, p)| piece_len(p, with_tag && i == 0) + usize::from(i > 0)).sum()
}

/// (speaker tag, trimmed body) per turn, in order; text before the first tag is a turn without a tag. Turns with
/// nothing but whitespace are dropped.
fn speaker_turns(script: &str) -> Vec<(Option<&'static str>, &str)> {
    let mut turns = Vec::new();
    let mut tag = None;
    let mut body_start = 0;
    let mut i = 0;
    let bytes = script.as_bytes();
    while i < bytes.len() {
        if let Some(&t) = TAGS.iter().find(|t| bytes[i..].starts_with(t.as_bytes())) {
            turns.push((tag, &script[body_start..i]));
            tag = Some(t);
            i += t.len();
            body_start = i;
        } else {
            i += 1;
        }
    }
    turns.push((tag, &script[body_start..]));
    turns.into_iter().map(|(t, b)| (t, b.trim())).filter(|(_, b)| !b.is_empty()).collect()
}

fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？')
}

/// Terminators that end a sentence without a following space (CJK).
fn is_wide_terminator(c: char) -> bool {
    matches!(c, '。' | '！' | '？')
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»' | '」' | '』')
}

/// Non-verbal tags are short parenthesised words: `(laughs)`, `(clears throat)`.
const MAX_NONVERBAL_BYTES: usize = 32;

/// End (exclusive) of a non-verbal tag starting at `at` (which holds `(`), if there is one.
fn nonverbal_end(text: &str, at: usize) -> Option<usize> {
    let rest = &text[at..];
    let close = rest[..rest.len().min(MAX_NONVERBAL_BYTES)].find(')')?;
    (!rest[1..close].contains('(')).then_some(at + close + 1)
}

/// Sentences of a turn body, trimmed. A sentence ends after a run of terminators and closing quotes/brackets
/// followed by whitespace (or the end; CJK terminators need no space), never inside parentheses; non-verbal
/// tags right after the end stay with the sentence.
fn sentences(body: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut depth = 0usize;
    let chars: Vec<(usize, char)> = body.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (_, c) = chars[k];
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > 0 || !is_terminator(c) {
            k += 1;
            continue;
        }
        let wide = is_wide_terminator(c);
        let mut j = k + 1;
        while j < chars.len() && (is_terminator(chars[j].1) || is_closer(chars[j].1)) {
            j += 1;
        }
        let at_end = j == chars.len();
        if !(at_end || wide || chars[j].1.is_whitespace()) {
            k = j;
            continue;
        }
        // The sentence's end: after the terminators, plus any non-verbal tags that follow.
        let mut end = if at_end { body.len() } else { chars[j].0 };
        loop {
            let after = &body[end..];
            let ws = after.len() - after.trim_start().len();
            let next = end + ws;
            if !after.trim_start().starts_with('(') {
                break;
            }
            match nonverbal_end(body, next) {
                Some(e) if body[e..].chars().next().is_none_or(|c| c.is_whitespace() || is_terminator(c)) => end = e,
                _ => break,
            }
        }
        let sentence = body[start..end].trim();
        if !sentence.is_empty() {
            out.push(sentence);
        }
        start = end;
        while k < chars.len() && chars[k].0 < end {
            k += 1;
        }
    }
    let last = body[start..].trim();
    if !last.is_empty() {
        out.push(last);
    }
    out
}

/// Cuts `s` into parts of at most `limit` bytes: at the last clause mark (`,;:` and dashes) followed by a space in
/// the second two thirds of the allowed span, else at the last space, else at the last character boundary; never
/// inside a non-verbal tag (unless one alone is longer than the limit). Parts are trimmed.
fn split_long(s: &str, limit: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while rest.len() > limit {
        let cut = best_cut(rest, limit);
        let (head, tail) = rest.split_at(cut);
        if !head.trim().is_empty() {
            out.push(head.trim());
        }
        rest = tail.trim_start();
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Where to cut `s` (longer than `limit`) so that the head is at most `limit` bytes; always > 0.
fn best_cut(s: &str, limit: usize) -> usize {
    // Spans of non-verbal tags: no cut strictly inside.
    let mut protected = Vec::new();
    for (i, c) in s.char_indices() {
        if c == '(' {
            if let Some(e) = nonverbal_end(s, i) {
                protected.push(i..e);
            }
        }
    }
    let inside = |p: usize| protected.iter().any(|r| r.start < p && p < r.end);
    let mut clause = None;
    let mut space = None;
    let mut boundary = None;
    for (i, c) in s.char_indices() {
        let after = i + c.len_utf8();
        if i > limit {
            break;
        }
        if i > 0 && !inside(i) {
            boundary = Some(i);
        }
        if after > limit {
            continue;
        }
        if c.is_whitespace() && i > 0 && !inside(i) {
            space = Some(i);
        }
        let followed_by_space = s[after..].starts_with(char::is_whitespace);
        if matches!(c, ',' | ';' | ':' | '—' | '–' | '、' | '，' | '；') && (followed_by_space || matches!(c, '、' | '，' | '；')) && after * 3 >= limit && !inside(after) {
            clause = Some(after);
        }
    }
    if let Some(cut) = clause.or(space).or(boundary) {
        return cut;
    }
    // Only possible when a non-verbal tag longer than the limit starts the text: cut at a character boundary.
    let mut cut = limit;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    cut.max(s.chars().next().map_or(1, char::len_utf8))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_script(s, &SegmentLimits::default()).unwrap()
    }

    /// Every segment is within the limit, non-empty, and starts with a tag when the script has tags.
    fn check(segments: &[String], limits: &SegmentLimits, tagged: bool) {
        for s in segments {
            assert!(s.len() <= limits.max_bytes, "{} bytes > {}: {s:?}", s.len(), limits.max_bytes);
            assert!(!s.trim().is_empty());
            assert_eq!(s, s.trim(), "untrimmed segment {s:?}");
            if tagged {
                assert!(s.starts_with("[S1] ") || s.starts_with("[S2] "), "segment without a leading tag: {s:?}");
            }
        }
    }

    /// The words of a text (tags dropped), for checking that nothing is lost or duplicated.
    fn words(s: &str) -> Vec<String> {
        s.replace("[S1]", " ").replace("[S2]", " ").split_whitespace().map(str::to_string).collect()
    }

    fn dialogue(turns: usize) -> String {
        (0..turns)
            .map(|i| format!("[S{}] This is turn number {i}, and it says a little something. Then it stops. (laughs)", 1 + i % 2))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn short_script_is_kept_verbatim() {
        let s = "  [S1] Hello there.[S2]Hi!  \n";
        assert_eq!(split(s), vec![s.to_string()]);
    }

    #[test]
    fn turns_are_packed_and_split_at_their_boundaries() {
        let script = dialogue(12);
        let segs = split(&script);
        check(&segs, &SegmentLimits::default(), true);
        assert!(segs.len() >= 6, "{segs:#?}");
        assert_eq!(words(&segs.join(" ")), words(&script));
        // Each turn (86 bytes with its tag) fits whole: segments end at turn boundaries, one turn each.
        for s in &segs {
            assert_eq!(s.matches("[S").count(), 1, "{s:?}");
            assert!(s.ends_with("(laughs)"), "non-verbal tag kept with its sentence: {s:?}");
        }
    }

    #[test]
    fn short_turns_share_segments() {
        let script = (0..40).map(|i| format!("[S{}] Yes, number {i}.", 1 + i % 2)).collect::<Vec<_>>().join(" ");
        let segs = split(&script);
        check(&segs, &SegmentLimits::default(), true);
        assert!(segs.len() < 10, "{} segments", segs.len());
        assert!(segs[..segs.len() - 1].iter().all(|s| s.len() >= 75), "{segs:#?}");
        assert_eq!(words(&segs.join(" ")), words(&script));
    }

    #[test]
    fn a_long_turn_is_cut_at_sentences_and_each_part_keeps_its_tag() {
        let turn = "First sentence here, quite long indeed. Second one! Is this the third? (sighs) Fourth, with \"quotes.\" Fifth… sixth.";
        let script = format!("[S2] {}", turn.repeat(4));
        let segs = split(&script);
        check(&segs, &SegmentLimits::default(), true);
        assert!(segs.len() >= 3);
        assert!(segs.iter().all(|s| s.starts_with("[S2] ")));
        assert_eq!(words(&segs.join(" ")), words(&script));
        // Cuts fall after sentence ends, and "(sighs)" stays with the question before it.
        for s in &segs {
            assert!(s.ends_with('.') || s.ends_with('!') || s.ends_with('?') || s.ends_with("(sighs)") || s.ends_with('"') || s.ends_with('…'), "{s:?}");
            assert!(!s.starts_with("[S2] (sighs)"), "{s:?}");
        }
    }

    #[test]
    fn sentences_keep_nonverbal_tags_and_parentheses() {
        assert_eq!(sentences("Wow. Amazing. (laughs) Next one (a. b.) ends here!"), vec!["Wow.", "Amazing. (laughs)", "Next one (a. b.) ends here!"]);
        assert_eq!(sentences("Dr.Who e.g. fine. 3.14 is pi."), vec!["Dr.Who e.g.", "fine.", "3.14 is pi."]);
        assert_eq!(sentences("我很好。你呢？好的"), vec!["我很好。", "你呢？", "好的"]);
        assert_eq!(sentences("He said \"stop!\" Then (coughs) left."), vec!["He said \"stop!\"", "Then (coughs) left."]);
    }

    #[test]
    fn no_tags() {
        let script = "Plain text without any speaker tag. ".repeat(20);
        let segs = split(&script);
        check(&segs, &SegmentLimits::default(), false);
        assert!(segs.len() >= 4);
        assert!(segs.iter().all(|s| !s.contains("[S")));
        assert_eq!(words(&segs.join(" ")), words(&script));
    }

    #[test]
    fn one_five_kilobyte_sentence() {
        let sentence = format!("[S1] {} end.", "word, another word and more words".repeat(160));
        assert!(sentence.len() > 5000);
        let segs = split(&sentence);
        check(&segs, &SegmentLimits::default(), true);
        assert!(segs.len() >= 5000 / 160);
        assert_eq!(words(&segs.join(" ")), words(&sentence));
        // Cut at clause marks where there are some.
        assert!(segs[..segs.len() - 1].iter().filter(|s| s.ends_with(',')).count() * 2 > segs.len());
    }

    #[test]
    fn no_spaces_at_all_and_multibyte_characters_at_every_cut() {
        // 3- and 4-byte characters with no space or punctuation: cuts at character boundaries only.
        let script = format!("[S1] {}", "日本語🎤".repeat(400));
        for max in [16, 17, 18, 19, 20, 33, 160] {
            let limits = SegmentLimits { max_bytes: max, min_bytes: 0 };
            let segs = split_script(&script, &limits).unwrap();
            check(&segs, &limits, true);
            assert_eq!(segs.iter().map(|s| s.trim_start_matches("[S1] ")).collect::<String>(), script.trim_start_matches("[S1] "), "max {max}");
        }
        // Accented Latin with spaces.
        let script = "[S2] Ça a été très désagréable, n'est-ce pas ? Où êtes-vous allés à Noël ? ".repeat(30);
        let segs = split(&script);
        check(&segs, &SegmentLimits::default(), true);
        assert_eq!(words(&segs.join(" ")), words(&script));
    }

    #[test]
    fn tags_only_and_empty_scripts() {
        assert_eq!(split_script(&"[S1][S2]".repeat(100), &SegmentLimits::default()), Err(ScriptError::NothingToSpeak));
        assert_eq!(split_script(&"[S1] \n [S2]\t".repeat(100), &SegmentLimits::default()), Err(ScriptError::NothingToSpeak));
        assert_eq!(split_script(" \n ", &SegmentLimits::default()), Err(ScriptError::NothingToSpeak));
        assert_eq!(split_script("", &SegmentLimits::default()), Err(ScriptError::NothingToSpeak));
        // Tags with a few words among many empty turns: only the words are spoken.
        let script = format!("{}[S2] Finally something.{}", "[S1][S2]".repeat(100), "[S1]".repeat(50));
        assert_eq!(split(&script), vec!["[S2] Finally something.".to_string()]);
    }

    #[test]
    fn tags_are_never_cut_and_half_tags_are_text() {
        // A tag right at every possible cut position of a space-free run.
        for pad in 0..12 {
            let script = format!("[S1] {}[S2]{}", "x".repeat(150 + pad), "y".repeat(300));
            let segs = split(&script);
            check(&segs, &SegmentLimits::default(), true);
            for s in &segs {
                assert_eq!(s.matches("[S").count(), s.matches("[S1] ").count() + s.matches("[S2] ").count(), "a cut tag in {s:?}");
            }
            let content: String = segs.iter().map(|s| s.replace("[S1] ", "").replace("[S2] ", "")).collect();
            assert_eq!(content, format!("{}{}", "x".repeat(150 + pad), "y".repeat(300)));
        }
        // "[S1" without its bracket, and "[S3]", are ordinary text.
        let script = format!("[S1] {} [S3] and [S1 too", "words and words. ".repeat(20));
        let segs = split(&script);
        check(&segs, &SegmentLimits::default(), true);
        assert!(segs.last().unwrap().ends_with("[S3] and [S1 too"));
    }

    #[test]
    fn nonverbal_tags_are_not_cut() {
        let script = format!("[S1] {}", "blah (clears throat) ".repeat(40));
        let limits = SegmentLimits { max_bytes: 40, min_bytes: 0 };
        for s in split_script(&script, &limits).unwrap() {
            assert_eq!(s.matches('(').count(), s.matches(')').count(), "{s:?}");
        }
    }

    #[test]
    fn maximum_script_size() {
        let big = dialogue(MAX_SCRIPT_BYTES / 90);
        assert!(big.len() > 100_000 && big.len() <= MAX_SCRIPT_BYTES);
        let segs = split(&big);
        check(&segs, &SegmentLimits::default(), true);
        let too_big = "a".repeat(MAX_SCRIPT_BYTES + 1);
        assert_eq!(split_script(&too_big, &SegmentLimits::default()), Err(ScriptError::TooLong { bytes: MAX_SCRIPT_BYTES + 1, limit: MAX_SCRIPT_BYTES }));
        assert!(matches!(split_script("[S1] hi", &SegmentLimits { max_bytes: 8, min_bytes: 0 }), Err(ScriptError::BadLimits(_))));
    }

    #[test]
    fn estimates() {
        assert_eq!(spoken_bytes("[S1] ab [S2] c"), 6);
        // 15 spoken bytes ≈ one second ≈ 86 rows.
        assert_eq!(estimated_rows("[S1]abcdefghijklmno"), 87);
    }
}
