use super::forms::{base64_interior, base64_std, percent_encoded};
use super::*;

const SECRET: &str = "s3cr3t/p@ss w0rd+x=y";

fn masker(values: &[&str]) -> Masker {
    Masker::new(Arc::new(Patterns::new(values.iter().map(|v| v.as_bytes()))))
}

/// Feeds `chunks` in order, then flushes; returns everything emitted.
fn run(m: &mut Masker, chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend(m.feed(c));
    }
    out.extend(m.flush());
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every form the tests print: raw, base64 standard and URL-safe, percent.
fn printed_forms(value: &str) -> Vec<Vec<u8>> {
    let b64 = base64_std(value.as_bytes());
    let url_safe: Vec<u8> = b64
        .iter()
        .map(|&c| match c {
            b'+' => b'-',
            b'/' => b'_',
            c => c,
        })
        .collect();
    vec![
        value.as_bytes().to_vec(),
        b64,
        url_safe,
        percent_encoded(value.as_bytes()),
    ]
}

#[test]
fn a_whole_secret_is_masked_in_every_form() {
    for form in printed_forms(SECRET) {
        let mut line = b"token: ".to_vec();
        line.extend(&form);
        line.extend(b" end\n");
        let out = run(&mut masker(&[SECRET]), &[&line]);
        assert_eq!(text(&out), "token: [MASKED] end\n", "form {}", text(&form));
    }
}

#[test]
fn a_secret_split_at_every_position_across_two_chunks_is_masked() {
    for form in printed_forms(SECRET) {
        let mut line = b"before ".to_vec();
        line.extend(&form);
        line.extend(b" after");
        for split in 0..=line.len() {
            let (a, b) = line.split_at(split);
            let out = run(&mut masker(&[SECRET]), &[a, b]);
            assert_eq!(
                text(&out),
                "before [MASKED] after",
                "form {} split at {split}",
                text(&form)
            );
        }
    }
}

#[test]
fn a_secret_fed_byte_by_byte_is_masked() {
    for form in printed_forms(SECRET) {
        let mut line = b"x".to_vec();
        line.extend(&form);
        line.extend(&form);
        line.extend(b"\n");
        let chunks: Vec<&[u8]> = line.chunks(1).collect();
        let out = run(&mut masker(&[SECRET]), &chunks);
        assert_eq!(text(&out), "x[MASKED][MASKED]\n", "form {}", text(&form));
    }
}

#[test]
fn output_without_secrets_passes_at_once() {
    let mut m = masker(&[SECRET]);
    assert_eq!(m.feed(b"hello world\n"), b"hello world\n");
    assert_eq!(m.pending(), 0);
    // Only a possible start of a secret is held back.
    assert_eq!(m.feed(b"prompt: s3c"), b"prompt: ");
    assert_eq!(m.pending(), 3);
    assert_eq!(m.flush(), b"s3c");
    assert_eq!(m.pending(), 0);
    // A false start is released as soon as it cannot be a secret.
    assert_eq!(m.feed(b"s3"), b"");
    assert_eq!(m.feed(b"cX"), b"s3cX");
}

#[test]
fn no_secrets_means_no_change() {
    let mut m = masker(&[]);
    let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    assert_eq!(m.feed(&data), data);
    assert!(m.flush().is_empty());
}

#[test]
fn short_values_are_not_patterns() {
    let mut m = masker(&["abc"]);
    assert_eq!(run(&mut m, &[b"abc abcd"]), b"abc abcd");
}

#[test]
fn the_longest_of_overlapping_secrets_wins() {
    let mut m = masker(&["abcd", "abcdefgh"]);
    assert_eq!(
        text(&run(&mut m, &[b"abcdefgh abcdxyz"])),
        "[MASKED] [MASKED]xyz"
    );
    let mut m = masker(&["abcd", "abcdefgh"]);
    let chunks: Vec<&[u8]> = b"-abcdefg-".chunks(1).collect();
    assert_eq!(text(&run(&mut m, &chunks)), "-[MASKED]efg-");
}

#[test]
fn several_secrets_and_repeats_are_all_masked() {
    let mut m = masker(&["alpha-key", "beta-key-2"]);
    let out = run(
        &mut m,
        &[b"alpha-keybeta-key-2 al", b"pha-key alpha-", b"ke"],
    );
    assert_eq!(text(&out), "[MASKED][MASKED] [MASKED] alpha-ke");
}

#[test]
fn base64_inside_longer_base64_text_is_masked_at_every_alignment() {
    let value = b"correct horse battery";
    for prefix in 0..6 {
        let mut data = vec![b'#'; prefix];
        data.extend_from_slice(value);
        data.extend_from_slice(b"!trailer");
        let encoded = base64_std(&data);
        let out = run(&mut masker(&["correct horse battery"]), &[&encoded]);
        let interior = base64_interior(
            value,
            prefix % 3,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        );
        assert!(
            text(&out).contains("[MASKED]"),
            "prefix {prefix}: {}",
            text(&out)
        );
        assert!(
            !out.windows(interior.len()).any(|w| w == interior),
            "prefix {prefix}"
        );
        // Everything around the value stays: at most 3 characters of the
        // encoding mix the value's bits with its neighbours'.
        assert!(out.len() + interior.len() == encoded.len() + MASK.len());
    }
}

#[test]
fn url_encoding_variants_are_masked() {
    let value = "a b/c!d'e";
    let mut m = masker(&[value]);
    for form in ["a%20b%2Fc%21d%27e", "a+b%2fc%21d%27e", "a%20b%2Fc!d'e"] {
        let line = format!("[{form}]");
        assert_eq!(
            text(&run(&mut m, &[line.as_bytes()])),
            "[[MASKED]]",
            "{form}"
        );
    }
}

#[test]
fn binary_output_around_secrets_is_kept_byte_exact() {
    let mut m = masker(&["\u{1b}[31mRED"]);
    let mut data = vec![0xff, 0x00, 0x1b];
    data.extend_from_slice("\u{1b}[31mRED".as_bytes());
    data.extend_from_slice(&[0xfe, 0x1b]);
    let mut want = vec![0xff, 0x00, 0x1b];
    want.extend_from_slice(MASK);
    want.extend_from_slice(&[0xfe, 0x1b]);
    for split in 0..=data.len() {
        let (a, b) = data.split_at(split);
        assert_eq!(run(&mut m, &[a, b]), want, "split {split}");
    }
}

#[test]
fn held_back_bytes_never_exceed_the_longest_form() {
    let mut m = masker(&[SECRET]);
    let longest = forms::forms(SECRET.as_bytes(), MIN_SECRET_LEN)[0].len();
    let form = percent_encoded(SECRET.as_bytes());
    for n in 0..form.len() {
        m.feed(&form[..n]);
        assert!(m.pending() < longest);
        m.flush();
    }
}

#[test]
fn names_and_values_are_checked() {
    assert!(validate_secret_name("DB_PASSWORD").is_ok());
    assert!(validate_secret_name("_x1").is_ok());
    for bad in ["", "1ABC", "A-B", "A B", "HODEI_JOB_ID", "É"] {
        assert!(validate_secret_name(bad).is_err(), "{bad:?}");
    }
    assert!(validate_secret_name(&"A".repeat(129)).is_err());
    assert!(validate_secret_value("abcd").is_ok());
    let short = validate_secret_value("abc").unwrap_err();
    assert!(short.contains("at least 4"), "{short}");
    assert!(!short.contains("abc"));
    assert!(validate_secret_value("ab\0cd").is_err());
    assert!(validate_secret_value(&"x".repeat(MAX_SECRET_LEN + 1)).is_err());
}

#[test]
fn debug_output_never_shows_a_pattern() {
    let m = masker(&[SECRET]);
    let shown = format!("{m:?}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

#[test]
fn job_specs_check_their_secret_names() {
    use crate::JobSpec;
    let mut spec = JobSpec {
        secrets: vec!["DB_PASSWORD".into()],
        ..JobSpec::command(["true"])
    };
    assert!(spec.validate().is_ok());
    spec.secrets.push("bad-name".into());
    assert_eq!(spec.validate().unwrap_err().field, "secrets");
    spec.secrets = vec!["A".into()];
    spec.env.insert("A".into(), "x".into());
    let err = spec.validate().unwrap_err();
    assert_eq!(err.field, "secrets");
    assert!(err.message.contains("also set in env"), "{err}");
    spec.env.clear();
    spec.secrets = (0..=MAX_JOB_SECRETS).map(|i| format!("S{i}")).collect();
    assert_eq!(spec.validate().unwrap_err().field, "secrets");
    // Specs stored before secrets existed still read.
    let old: JobSpec = serde_json::from_str(r#"{"command":["true"]}"#).unwrap();
    assert!(old.secrets.is_empty());
}

#[test]
fn the_automaton_finds_what_a_search_at_every_position_finds() {
    let values = [SECRET, "abcd", "abcdefgh", "hunter2!"];
    let patterns = || Patterns::new(values.iter().map(|v| v.as_bytes()));
    let fast = Arc::new(patterns());
    assert!(fast.finder.is_some());
    let slow = Arc::new(Patterns {
        finder: None,
        ..patterns()
    });
    // Output made of pieces of every form, noise and partial forms, fed in
    // chunks of varying sizes (a fixed pseudo-random sequence).
    let mut pieces: Vec<Vec<u8>> = values.iter().flat_map(|v| printed_forms(v)).collect();
    let partial: Vec<Vec<u8>> = pieces.iter().map(|p| p[..p.len() / 2].to_vec()).collect();
    pieces.extend(partial);
    pieces.extend([
        b"x".to_vec(),
        b" \n".to_vec(),
        b"abc".to_vec(),
        vec![0, 255],
    ]);
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for _ in 0..200 {
        let data: Vec<u8> = (0..40)
            .flat_map(|_| pieces[next(pieces.len())].clone())
            .collect();
        let (mut a, mut b) = (Masker::new(fast.clone()), Masker::new(slow.clone()));
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let mut at = 0;
        while at < data.len() {
            let end = (at + 1 + next(64)).min(data.len());
            out_a.extend(a.feed(&data[at..end]));
            out_b.extend(b.feed(&data[at..end]));
            assert_eq!(a.pending(), b.pending());
            at = end;
        }
        out_a.extend(a.flush());
        out_b.extend(b.flush());
        assert_eq!(text(&out_a), text(&out_b));
        // And the same as masking it whole.
        let whole = run(&mut Masker::new(fast.clone()), &[&data]);
        assert_eq!(text(&out_a), text(&whole));
    }
}
