//! Secrets in a job's output: the rules for secret names and values, and
//! the streaming masker that replaces every secret value with `[MASKED]`
//! before output is stored or shown.
//!
//! A [`Masker`] is fed one stream's chunks in order and returns the bytes
//! that are safe to pass on. It holds back only a tail that could still
//! become a secret (a prefix of one of its forms), so output that has
//! nothing to do with a secret is never delayed; [`Masker::flush`] releases
//! the tail at the end of the stream (or after the shell's idle timeout).
//!
//! Forms looked for (see [`forms::forms`]): the raw value; base64 with the
//! standard and the URL-safe alphabet, whole (padded or not) and, for
//! longer base64 text, the characters that depend only on the value at each
//! of the three byte alignments (the one or two characters at each end that
//! mix in neighbouring bytes stay visible); percent-encoding, upper- and
//! lower-case hex, RFC 3986 and `encodeURIComponent` character sets, with a
//! space as `%20` or `+`. Values shorter than [`MIN_SECRET_LEN`] are refused
//! when set; encoded forms shorter than it are not looked for.

pub mod forms;

use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind};

/// What a secret value is replaced with.
pub const MASK: &[u8] = b"[MASKED]";

/// Shortest secret value accepted: shorter ones would mask common words and
/// say too much by what they mask.
pub const MIN_SECRET_LEN: usize = 4;

/// Longest secret value accepted (it becomes an environment variable).
pub const MAX_SECRET_LEN: usize = 32 * 1024;

/// Longest secret name.
pub const MAX_SECRET_NAME_LEN: usize = 128;

/// Most secrets one job may reference.
pub const MAX_JOB_SECRETS: usize = 64;

/// A secret's name is also the name of the environment variable the job
/// gets it in: a letter or `_`, then letters, digits and `_`, at most 128.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || name.len() > MAX_SECRET_NAME_LEN
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "secret name {:?} must be 1 to {MAX_SECRET_NAME_LEN} characters: a letter or '_', \
             then letters, digits and '_' (it is the job's environment variable)",
            name.chars().take(40).collect::<String>()
        ));
    }
    if name.starts_with("HODEI_") {
        return Err(format!(
            "secret name {name:?} starts with HODEI_, which is reserved for Hodei's own variables"
        ));
    }
    Ok(())
}

/// A value must be 4 bytes to 32 KiB of text without NUL (the message never
/// contains the value).
pub fn validate_secret_value(value: &str) -> Result<(), String> {
    if value.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the value is {} bytes long; secrets must be at least {MIN_SECRET_LEN} bytes \
             (shorter values cannot be masked in logs safely)",
            value.len()
        ));
    }
    if value.len() > MAX_SECRET_LEN {
        return Err(format!(
            "the value is {} bytes long; the limit is {MAX_SECRET_LEN}",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err("the value contains a NUL byte".into());
    }
    Ok(())
}

/// The byte strings to mask, longest first, an index by first byte, and an
/// automaton that finds them all in one pass.
#[derive(Default)]
pub struct Patterns {
    patterns: Vec<Vec<u8>>,
    /// Indexes into `patterns` (longest first) by first byte.
    by_first: Vec<Vec<u32>>,
    /// Leftmost-longest search for every pattern at once (SIMD prefilters
    /// skip the bytes no form can start with). `None` without patterns, or
    /// if it could not be built (then [`Patterns::longest_at`] is tried at
    /// every position, which finds the same matches more slowly).
    finder: Option<AhoCorasick>,
}

impl std::fmt::Debug for Patterns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the patterns themselves: they are secrets.
        write!(f, "Patterns({} forms)", self.patterns.len())
    }
}

impl Patterns {
    /// Every form of every value; values shorter than [`MIN_SECRET_LEN`]
    /// are skipped.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Patterns {
        let mut patterns: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_SECRET_LEN)
            .flat_map(|v| forms::forms(v, MIN_SECRET_LEN))
            .collect();
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        let mut by_first = vec![Vec::new(); 256];
        for (i, p) in patterns.iter().enumerate() {
            by_first[usize::from(p[0])].push(i as u32);
        }
        let finder = (!patterns.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .ok()
            })
            .flatten();
        Patterns {
            patterns,
            by_first,
            finder,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The first match at or after `from`, as (start, length): the leftmost,
    /// and the longest of those starting there.
    fn next_match(&self, buf: &[u8], from: usize) -> Option<(usize, usize)> {
        match &self.finder {
            Some(finder) => finder
                .find(Input::new(buf).range(from..))
                .map(|m| (m.start(), m.len())),
            None => (from..buf.len()).find_map(|i| self.longest_at(&buf[i..]).map(|n| (i, n))),
        }
    }

    /// The length of the longest pattern `rest` starts with.
    fn longest_at(&self, rest: &[u8]) -> Option<usize> {
        self.by_first[usize::from(rest[0])]
            .iter()
            .map(|&i| &self.patterns[i as usize])
            .find(|p| rest.starts_with(p))
            .map(Vec::len)
    }

    /// The first position at or after `from` where a pattern could start
    /// and run past the end of `buf` (the rest of `buf` is a proper prefix
    /// of it): `buf.len()` if none. Only the last bytes, shorter than the
    /// longest pattern, can be such a start.
    fn first_partial(&self, buf: &[u8], from: usize) -> usize {
        let longest = self.patterns.first().map_or(0, Vec::len);
        let start = from.max(buf.len().saturating_sub(longest.saturating_sub(1)));
        (start..buf.len())
            .find(|&i| {
                let rest = &buf[i..];
                self.by_first[usize::from(rest[0])]
                    .iter()
                    .map(|&k| &self.patterns[k as usize])
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            })
            .unwrap_or(buf.len())
    }
}

/// Masks one stream. See the module docs.
pub struct Masker {
    patterns: Arc<Patterns>,
    /// Bytes received but not yet returned: a possible start of a secret.
    pending: Vec<u8>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The held-back bytes may be the start of a secret: only their count.
        write!(
            f,
            "Masker({:?}, {} bytes held)",
            self.patterns,
            self.pending.len()
        )
    }
}

impl Masker {
    pub fn new(patterns: Arc<Patterns>) -> Masker {
        Masker {
            patterns,
            pending: Vec::new(),
        }
    }

    /// Takes the next chunk of the stream; returns what can be passed on.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return chunk.to_vec();
        }
        self.scan(chunk, false)
    }

    /// Returns everything held back (end of the stream, or a pause long
    /// enough that waiting for the rest of a secret is not worth it).
    pub fn flush(&mut self) -> Vec<u8> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        self.scan(&[], true)
    }

    /// How many bytes are held back.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Masks what came, leftmost-longest, up to the first place where a
    /// pattern could still start and need bytes not seen yet (none when
    /// `last`): a match found there could yet turn into a longer one. That
    /// tail is held back for the next call.
    fn scan(&mut self, chunk: &[u8], last: bool) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(buf.len());
        let partial = |from| {
            if last {
                buf.len()
            } else {
                self.patterns.first_partial(&buf, from)
            }
        };
        let mut emitted = 0;
        let mut hold = partial(0);
        while let Some((start, len)) = self.patterns.next_match(&buf, emitted) {
            if start >= hold {
                break;
            }
            out.extend_from_slice(&buf[emitted..start]);
            out.extend_from_slice(MASK);
            emitted = start + len;
            // A match that ran past the held-back start: look again after it.
            if emitted > hold {
                hold = partial(emitted);
            }
        }
        out.extend_from_slice(&buf[emitted..hold]);
        buf.drain(..hold);
        self.pending = buf;
        out
    }
}

#[cfg(test)]
mod tests;
