//! The secrets masker (`hodei_core::mask`): a job's output, cut into chunks
//! anywhere, with one or two secrets in it anywhere.
//!
//! Input: a secret length byte, the secret, a second secret length byte and
//! secret, then chunk sizes (one byte each, until a 0), then the output.
//! The output goes through the masker chunk by chunk, then `flush`.
//!
//! Must never panic, and no text between two `[MASKED]` marks may hold a
//! secret or its whole base64 form (the marks themselves may happen to
//! spell part of one: they are not the job's bytes). Without secrets the
//! output passes unchanged; nothing is held back after `flush`.
#![no_main]

use std::sync::Arc;

use hodei_core::mask::{MASK, MIN_SECRET_LEN, Masker, Patterns, forms};
use libfuzzer_sys::fuzz_target;

fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if data.len() < n {
        return None;
    }
    let (head, tail) = data.split_at(n);
    *data = tail;
    Some(head)
}

/// The pieces of `out` between `[MASKED]` marks.
fn pieces(out: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = out;
    while let Some(i) = rest.windows(MASK.len()).position(|w| w == MASK) {
        pieces.push(&rest[..i]);
        rest = &rest[i + MASK.len()..];
    }
    pieces.push(rest);
    pieces
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut secrets = Vec::new();
    for _ in 0..2 {
        let Some(&[n]) = take(&mut data, 1) else { return };
        let Some(secret) = take(&mut data, usize::from(n % 48)) else {
            return;
        };
        if secret.len() >= MIN_SECRET_LEN {
            secrets.push(secret);
        }
    }
    let mut cuts = Vec::new();
    while let Some(&[n]) = take(&mut data, 1) {
        if n == 0 {
            break;
        }
        cuts.push(usize::from(n));
    }
    let output = data;

    let patterns = Arc::new(Patterns::new(secrets.iter().copied()));
    let mut masker = Masker::new(patterns);
    let mut masked = Vec::new();
    let mut rest = output;
    for cut in cuts.iter().cycle().take(if cuts.is_empty() { 0 } else { 4096 }) {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
        masked.extend(masker.feed(chunk));
        rest = tail;
    }
    masked.extend(masker.feed(rest));
    masked.extend(masker.flush());
    assert_eq!(masker.pending(), 0, "bytes held back after flush");

    if secrets.is_empty() {
        assert_eq!(masked, output, "output changed without secrets");
        return;
    }
    for piece in pieces(&masked) {
        for secret in &secrets {
            assert!(!contains(piece, secret), "a secret passed the masker");
            let b64 = forms::base64_std(secret);
            assert!(!contains(piece, &b64), "a secret's base64 passed the masker");
        }
    }
});
