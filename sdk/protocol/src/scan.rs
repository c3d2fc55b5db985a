//! A validating scanner for the JSON of a message's envelope: it finds the members of an object
//! and delimits their values without building them.
//!
//! Why: plugind passes `params` and `result` on as raw JSON text. serde_json delimits such a
//! value by walking it (`ignore_value`), checking strings eight bytes at a time; on a 64 KiB
//! payload that walk was the largest single cost of a call. This scanner checks the same grammar
//! (RFC 8259) with strings scanned 32 bytes at a time (AVX2, where the CPU has it; 16 with
//! SSE2, x86-64's baseline; one at a time elsewhere).
//!
//! It is a fast path, never the judge: it accepts a subset of what serde_json accepts, and the
//! callers ([`crate::jsonrpc::Message::parse`], plugind's control `execute`) go back to serde_json
//! for anything it does not take (keys with escapes, duplicate members, nesting deeper than
//! [`MAX_DEPTH`], any error), so that errors and their wording stay serde_json's. The tests
//! check that whatever it accepts, serde_json accepts with the same members.
//!
//! It reads bytes and checks UTF-8 itself, in the same pass: outside strings the grammar allows
//! only ASCII, and a string's bytes from its first non-ASCII one to its closing quote are checked
//! with `str::from_utf8` (most payloads have none: base64, numbers, ASCII text). A separate
//! `from_utf8` over the whole line was another pass over every payload, 7 % of plugind's time on
//! a 64 KiB call. So every key and value it hands out is valid UTF-8 and is handed out as `&str`.
//!
//! A value can be read as text ([`Value::text`]) or walked in turn as an object
//! ([`Value::fields`]), in the same pass: a control `execute`'s params object is walked once,
//! not delimited first and walked again.

use serde_json::value::RawValue;

/// Deepest nesting of arrays and objects taken (serde_json's own limit when it builds values).
pub const MAX_DEPTH: usize = 128;

/// The text is not something this scanner takes (it may still be valid JSON: ask serde_json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotTaken;

type Scan<T> = Result<T, NotTaken>;

/// One member's value, where the scanner stands: read it as text ([`Value::text`]) or walk it as
/// an object ([`Value::fields`]). A value left unread is delimited and checked all the same.
pub struct Value<'a, 's> {
    b: &'a [u8],
    start: usize,
    depth: usize,
    /// Set once the value has been scanned: where it ends.
    end: &'s mut Option<usize>,
}

impl<'a> Value<'a, '_> {
    /// The value as JSON text, checked.
    pub fn text(self) -> Scan<&'a str> {
        let end = skip_value(self.b, self.start, self.depth)?;
        *self.end = Some(end);
        Ok(text_of(self.b, self.start, end))
    }

    /// The value as a string without escapes (the text between its quotes, borrowed), or None
    /// for `null`; anything else (an escaped string, another type) is `NotTaken`. The scan
    /// itself says whether there was an escape: no second search of the text for a `\`.
    pub fn plain_str(self) -> Scan<Option<&'a str>> {
        if self.b.get(self.start) != Some(&b'"') {
            let end = literal(self.b, self.start, b"null")?;
            *self.end = Some(end);
            return Ok(None);
        }
        let (end, escaped) = string_end(self.b, self.start)?;
        *self.end = Some(end);
        if escaped {
            return Err(NotTaken);
        }
        Ok(Some(text_of(self.b, self.start + 1, end - 1)))
    }

    /// Whether the value starts as `null` would (read it to have it checked).
    pub fn is_null(&self) -> bool {
        self.b.get(self.start) == Some(&b'n')
    }

    /// [`Value::plain_str`] where the member must be a string: `null` is `NotTaken` too.
    pub fn required_str(self) -> Scan<&'a str> {
        self.plain_str()?.ok_or(NotTaken)
    }

    /// The value as raw JSON, or None for `null` (as an `Option` reads in serde).
    pub fn raw_opt(self) -> Scan<Option<&'a RawValue>> {
        let text = self.text()?;
        Ok((text != "null").then(|| raw(text)))
    }

    /// The value as an unsigned integer, or None for `null`. A number with a fraction, an
    /// exponent or a sign is `NotTaken` (serde decides).
    pub fn u64_opt(self) -> Scan<Option<u64>> {
        match self.text()? {
            "null" => Ok(None),
            text => text.parse().map(Some).map_err(|_| NotTaken),
        }
    }

    /// Walks the value, which must be an object, as [`fields`] does; returns its text.
    pub fn fields<const N: usize>(
        self,
        keys: [&'a str; N],
        field: impl FnMut(usize, Value<'a, '_>) -> Scan<()>,
    ) -> Scan<&'a str> {
        if self.b.get(self.start) != Some(&b'{') || self.depth >= MAX_DEPTH {
            return Err(NotTaken);
        }
        let end = object(self.b, self.start, self.depth, named(keys, field))?;
        *self.end = Some(end);
        Ok(text_of(self.b, self.start, end))
    }
}

/// `b[start..end]` as text: a value or key the scanner checked, so valid UTF-8.
fn text_of(b: &[u8], start: usize, end: usize) -> &str {
    // SAFETY: only called on a span the scanner has checked: ASCII outside strings (the grammar
    // allows nothing else there) and strings whose non-ASCII bytes passed `str::from_utf8` (see
    // `skip_string`). A span never starts or ends inside a multi-byte character, as it starts and
    // ends at ASCII bytes (quotes, brackets, digits, letters of literals).
    unsafe { std::str::from_utf8_unchecked(&b[start..end]) }
}

/// Calls `member(key, value)` for each member of the JSON object `text` (whitespace around it
/// allowed), in order. `key` is the text between the key's quotes (a key with an escape is not
/// taken). Stops at the first error `member` returns. Whatever it takes is valid UTF-8.
pub fn members<'a>(text: &'a [u8], member: impl FnMut(&'a str, Value<'a, '_>) -> Scan<()>) -> Scan<()> {
    let i = skip_ws(text, 0);
    if text.get(i) != Some(&b'{') {
        return Err(NotTaken);
    }
    let end = object(text, i, 0, member)?;
    if skip_ws(text, end) == text.len() {
        Ok(())
    } else {
        Err(NotTaken)
    }
}

/// [`members`] for the members named in `keys`: `field(n, value)` for each member named
/// `keys[n]`, the others skipped. A name twice is `NotTaken`: serde's "duplicate field", even
/// when the first was `null`.
pub fn fields<'a, const N: usize>(
    text: &'a [u8],
    keys: [&'a str; N],
    field: impl FnMut(usize, Value<'a, '_>) -> Scan<()>,
) -> Scan<()> {
    members(text, named(keys, field))
}

/// A member callback that passes on the members named in `keys`, by index, once each.
fn named<'a, const N: usize>(
    keys: [&'a str; N],
    mut field: impl FnMut(usize, Value<'a, '_>) -> Scan<()>,
) -> impl FnMut(&'a str, Value<'a, '_>) -> Scan<()> {
    let mut seen = [false; N];
    move |key, value| {
        let Some(n) = keys.iter().position(|k| same_name(k.as_bytes(), key.as_bytes())) else { return Ok(()) };
        if std::mem::replace(&mut seen[n], true) {
            return Err(NotTaken);
        }
        field(n, value)
    }
}

/// `a == b` for the short names of an envelope's members, compared in one or two word loads
/// rather than a call of `memcmp` (which was a fortieth of plugind's instructions per call).
#[inline]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Two loads that overlap when `n` is not a multiple of the word: every byte is compared.
    match n {
        0 => true,
        1..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => word::<4>(a, 0) == word::<4>(b, 0) && word::<4>(a, n - 4) == word::<4>(b, n - 4),
        8..=16 => word::<8>(a, 0) == word::<8>(b, 0) && word::<8>(a, n - 8) == word::<8>(b, n - 8),
        _ => a == b,
    }
}

/// `N` bytes of `s` from `at`, as an integer to compare.
#[inline(always)]
fn word<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
    let mut w = [0u8; N];
    w.copy_from_slice(&s[at..at + N]);
    w
}

/// Whether `s` needs escaping as a JSON string: it holds a `"`, a `\` or a control character.
/// Searched as the scanner searches strings (16 or 32 bytes at a time).
pub fn needs_escape(s: &str) -> bool {
    find_special::<false>(s.as_bytes(), 0) < s.len()
}

/// The object starting at `i` (its `{`), at nesting `depth`, its members given to `member`; its
/// end (exclusive).
fn object<'a>(
    b: &'a [u8],
    i: usize,
    depth: usize,
    mut member: impl FnMut(&'a str, Value<'a, '_>) -> Scan<()>,
) -> Scan<usize> {
    let mut i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    loop {
        let (key_end, escaped) = string_end(b, i)?;
        if escaped {
            return Err(NotTaken);
        }
        let key = text_of(b, i + 1, key_end - 1);
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(NotTaken);
        }
        let start = skip_ws(b, i + 1);
        let mut end = None;
        member(key, Value { b, start, depth: depth + 1, end: &mut end })?;
        let end = match end {
            Some(end) => end,
            None => skip_value(b, start, depth + 1)?,
        };
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return Err(NotTaken),
        }
    }
}

/// A value the scanner delimited, as serde_json's raw value type, without a second pass.
pub fn raw(value: &str) -> &RawValue {
    // SAFETY: `RawValue` is `#[repr(transparent)]` over `str`, and serde_json makes its own
    // borrowed raw values with this very cast (`RawValue::from_borrowed`). The test
    // `raw_is_the_same_text` fails if that layout ever changes. `value` is one JSON value: the
    // scanner checked it.
    unsafe { &*(value as *const str as *const RawValue) }
}

/// Every text that differs from `seed` by one byte of `with` put in place of a byte or inserted
/// before it, or by one byte dropped (the valid UTF-8 ones): inputs for tests that compare a fast
/// path with serde_json, here and in plugind.
#[doc(hidden)]
pub fn one_byte_mutations(seed: &str, with: &[u8]) -> Vec<String> {
    one_byte_mutations_raw(seed.as_bytes(), with).into_iter().filter_map(|v| String::from_utf8(v).ok()).collect()
}

/// [`one_byte_mutations`], invalid UTF-8 included.
#[doc(hidden)]
pub fn one_byte_mutations_raw(seed: &[u8], with: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for pos in 0..seed.len() {
        for &c in with {
            let mut replaced = seed.to_vec();
            replaced[pos] = c;
            let mut inserted = seed.to_vec();
            inserted.insert(pos, c);
            out.extend([replaced, inserted]);
        }
        let mut dropped = seed.to_vec();
        dropped.remove(pos);
        out.push(dropped);
    }
    out
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the JSON value that starts at `i`.
fn skip_value(b: &[u8], i: usize, depth: usize) -> Scan<usize> {
    match b.get(i) {
        Some(b'"') => skip_string(b, i),
        Some(b'{') => skip_container(b, i, depth, b'}', true),
        Some(b'[') => skip_container(b, i, depth, b']', false),
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        Some(b'-' | b'0'..=b'9') => skip_number(b, i),
        _ => Err(NotTaken),
    }
}

/// An object (`keyed`) or an array starting at `i`, ending with `close`.
fn skip_container(b: &[u8], i: usize, depth: usize, close: u8, keyed: bool) -> Scan<usize> {
    if depth >= MAX_DEPTH {
        return Err(NotTaken);
    }
    let mut i = skip_ws(b, i + 1);
    if b.get(i) == Some(&close) {
        return Ok(i + 1);
    }
    loop {
        if keyed {
            if b.get(i) != Some(&b'"') {
                return Err(NotTaken);
            }
            i = skip_ws(b, skip_string(b, i)?);
            if b.get(i) != Some(&b':') {
                return Err(NotTaken);
            }
            i = skip_ws(b, i + 1);
        }
        i = skip_ws(b, skip_value(b, i, depth + 1)?);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(&c) if c == close => return Ok(i + 1),
            _ => return Err(NotTaken),
        }
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Scan<usize> {
    match b.get(i..i + word.len()) {
        Some(w) if w == word => Ok(i + word.len()),
        _ => Err(NotTaken),
    }
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
fn skip_number(b: &[u8], mut i: usize) -> Scan<usize> {
    let digits = |i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i += digits(i),
        _ => return Err(NotTaken),
    }
    if b.get(i) == Some(&b'.') {
        let n = digits(i + 1);
        if n == 0 {
            return Err(NotTaken);
        }
        i += 1 + n;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let n = digits(i);
        if n == 0 {
            return Err(NotTaken);
        }
        i += n;
    }
    Ok(i)
}

/// The end (exclusive, after the closing quote) of the string starting at `i` (its opening
/// quote): no control characters, only the escapes JSON has, valid UTF-8.
fn skip_string(b: &[u8], i: usize) -> Scan<usize> {
    string_end(b, i).map(|(end, _)| end)
}

/// [`skip_string`], and whether the string has an escape.
#[inline]
fn string_end(b: &[u8], i: usize) -> Scan<(usize, bool)> {
    if b.get(i) != Some(&b'"') {
        return Err(NotTaken);
    }
    // Nearly every string of an envelope is plain ASCII: its end is the first special byte.
    let i = find_special::<true>(b, i + 1);
    if b.get(i) == Some(&b'"') {
        return Ok((i + 1, false));
    }
    string_rest(b, i)
}

/// The rest of [`string_end`] from `i`, a special byte inside the string: escapes, non-ASCII
/// text, or an error. Apart, so that the common case stays small enough to inline.
#[cold]
#[inline(never)]
fn string_rest(b: &[u8], mut i: usize) -> Scan<(usize, bool)> {
    let mut escaped = false;
    // The string's first non-ASCII byte, once seen: from there to the closing quote is checked
    // as UTF-8 in one call (a valid multi-byte character never holds an ASCII byte, so the span
    // between two ASCII bytes is valid exactly when its characters are).
    let mut wide: Option<usize> = None;
    loop {
        match b.get(i) {
            Some(b'"') => {
                if let Some(w) = wide {
                    std::str::from_utf8(&b[w..i]).map_err(|_| NotTaken)?;
                }
                return Ok((i + 1, escaped));
            }
            Some(b'\\') => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                    escaped = true;
                    i += 2
                }
                Some(b'u') => match b.get(i + 2..i + 6) {
                    Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => {
                        escaped = true;
                        i += 6
                    }
                    _ => return Err(NotTaken),
                },
                _ => return Err(NotTaken),
            },
            Some(0x80..) => {
                wide.get_or_insert(i);
                i += 1;
            }
            // A control character, or the end of the text.
            _ => return Err(NotTaken),
        }
        i = match wide {
            None => find_special::<true>(b, i),
            Some(_) => find_special::<false>(b, i),
        };
    }
}

/// The index of the first `"`, `\`, control character (below 0x20) or, with `HIGH`, non-ASCII
/// byte (0x80 and up) at or after `i`; `b.len()` if none. On x86-64: one 16-byte SSE2 step
/// (x86-64's baseline) inlined into the caller, then 32 bytes at a time with AVX2 where the CPU
/// has it, else 16 with SSE2; fewer than 16 bytes left, one at a time. Elsewhere one at a time.
#[inline]
fn find_special<const HIGH: bool>(b: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        // Most strings of an envelope (keys, method names, ids) end within 16 bytes: one SSE2
        // step, inlined here, finds their end without a call or the CPU feature check.
        if i + 16 > b.len() {
            // The last few bytes of a line (its last strings): one at a time.
            return find_special_scalar::<HIGH>(b, i);
        }
        let mask = sse2_step::<HIGH>(b, i);
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2")) {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { find_special_avx2::<HIGH>(b, i) };
        }
        find_special_sse2::<HIGH>(b, i)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        find_special_scalar::<HIGH>(b, i)
    }
}

/// [`find_special`] with AVX2. Only called where the CPU has it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn find_special_avx2<const HIGH: bool>(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_min_epu8, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set1_epi8,
    };
    let quote = _mm256_set1_epi8(b'"' as i8);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    let below_space = _mm256_set1_epi8(0x1f);
    while i + 32 <= b.len() {
        // SAFETY: `i + 32 <= b.len()`: thirty-two readable bytes; unaligned loads are allowed.
        let x = unsafe { _mm256_loadu_si256(b.as_ptr().add(i).cast::<__m256i>()) };
        let control = _mm256_cmpeq_epi8(_mm256_min_epu8(x, below_space), x);
        let mut hit =
            _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(x, quote), _mm256_cmpeq_epi8(x, backslash)), control);
        if HIGH {
            // The mask takes each byte's top bit: set exactly for the non-ASCII ones.
            hit = _mm256_or_si256(hit, x);
        }
        let mask = _mm256_movemask_epi8(hit) as u32;
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 32;
    }
    find_special_sse2::<HIGH>(b, i)
}

fn find_special_scalar<const HIGH: bool>(b: &[u8], i: usize) -> usize {
    b[i.min(b.len())..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20 || (HIGH && c >= 0x80))
        .map_or(b.len(), |p| i + p)
}

/// The special bytes of `b[i..i + 16]` as a bit mask (bit n: byte `i + n`). `i + 16 <= b.len()`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn sse2_step<const HIGH: bool>(b: &[u8], i: usize) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    assert!(i + 16 <= b.len());
    // SAFETY: SSE2 is part of the x86-64 baseline, so these instructions exist on every CPU this
    // code runs on; the only memory access is the load, of sixteen bytes inside `b` (asserted
    // above; the callers' own checks let the compiler drop the assertion).
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let below_space = _mm_set1_epi8(0x1f);
        // Unaligned loads are allowed.
        let x = _mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>());
        // A byte is at most 0x1f exactly when min(byte, 0x1f) is the byte (unsigned compare).
        let control = _mm_cmpeq_epi8(_mm_min_epu8(x, below_space), x);
        let mut hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, backslash)), control);
        if HIGH {
            hit = _mm_or_si128(hit, x);
        }
        _mm_movemask_epi8(hit) as u32
    }
}

#[cfg(target_arch = "x86_64")]
fn find_special_sse2<const HIGH: bool>(b: &[u8], mut i: usize) -> usize {
    while i + 16 <= b.len() {
        let mask = sse2_step::<HIGH>(b, i);
        if mask != 0 {
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    find_special_scalar::<HIGH>(b, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every member the scanner reports, or None if it does not take the text.
    fn scan(text: &str) -> Option<Vec<(String, String)>> {
        scan_bytes(text.as_bytes())
    }

    fn scan_bytes(text: &[u8]) -> Option<Vec<(String, String)>> {
        let mut out = Vec::new();
        members(text, |k, v| {
            out.push((k.to_owned(), v.text()?.to_owned()));
            Ok(())
        })
        .ok()
        .map(|()| out)
    }

    /// serde_json's view of an object's members, values as raw text, in order; None if it rejects
    /// the text or it is not an object.
    fn serde_members(text: &str) -> Option<Vec<(String, String)>> {
        struct Members(Vec<(String, String)>);
        impl<'de> serde::Deserialize<'de> for Members {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Members;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                        let mut out = Vec::new();
                        while let Some((k, v)) = m.next_entry::<String, &RawValue>()? {
                            out.push((k, v.get().to_owned()));
                        }
                        Ok(Members(out))
                    }
                }
                d.deserialize_map(V)
            }
        }
        serde_json::from_str::<Members>(text).ok().map(|m| m.0)
    }

    /// Whatever the scanner takes, serde_json takes with the same members.
    fn agrees(text: &str) {
        if let Some(ours) = scan(text) {
            assert_eq!(Some(&ours), serde_members(text).as_ref(), "scanner took {text:?}");
        }
    }

    #[test]
    fn takes_envelopes_and_delimits_values() {
        let text = r#" {"jsonrpc":"2.0", "id" : 7,"method":"execute","params":{"a":[1,-2.5e+3,true,null,"x\"\\\u00e9y"],"b":{}}}  "#;
        let m = scan(text).unwrap();
        assert_eq!(m[1], ("id".into(), "7".into()));
        assert_eq!(m[3].1, r#"{"a":[1,-2.5e+3,true,null,"x\"\\\u00e9y"],"b":{}}"#);
        assert_eq!(Some(m), serde_members(text));
        assert_eq!(scan("{}"), Some(vec![]));
    }

    #[test]
    fn rejects_what_json_does_not_allow() {
        for bad in [
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":.5}"#,
            r#"{"a":"x"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12g4"}"#,
            r#"{"a":tru}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}}"#,
            r#"[1]"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b"}}"#,
        ] {
            assert_eq!(scan(bad), None, "{bad:?}");
            agrees(bad);
        }
    }

    #[test]
    fn leaves_hard_cases_to_serde() {
        // Escaped keys, and nesting past the limit, are valid JSON the scanner does not take.
        assert_eq!(scan(r#"{"\u0069d":1}"#), None);
        let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(scan(&deep), None);
        let ok = format!(r#"{{"a":{}{}}}"#, "[".repeat(MAX_DEPTH - 2), "]".repeat(MAX_DEPTH - 2));
        assert!(scan(&ok).is_some());
    }

    #[test]
    fn long_strings_cross_the_vector_width() {
        for n in 0..70 {
            for special in ["", "\\\"", "\\u0041", "é"] {
                let s = format!(r#"{{"k":"{}{special}{}"}}"#, "x".repeat(n), "y".repeat(n % 17));
                assert!(scan(&s).is_some(), "{s:?}");
                agrees(&s);
                // A control character anywhere in it is refused.
                let bad = format!("{{\"k\":\"{}\u{1}{}\"}}", "x".repeat(n), "y".repeat(n % 17));
                assert_eq!(scan(&bad), None, "{bad:?}");
            }
        }
    }

    /// Every implementation finds the same first special byte, wherever it is, with and without
    /// stopping at non-ASCII bytes.
    #[test]
    fn vector_and_scalar_searches_agree() {
        fn check<const HIGH: bool>(b: &[u8], start: usize, what: &str) {
            let want = find_special_scalar::<HIGH>(b, start);
            assert_eq!(find_special::<HIGH>(b, start), want, "{what}");
            #[cfg(target_arch = "x86_64")]
            assert_eq!(find_special_sse2::<HIGH>(b, start), want, "{what}");
        }
        for len in 0..100 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f, 0x80, 0xc3, 0xff] {
                    let mut b = vec![b'a'; len];
                    b.extend([0x20, 0x7f, 0x80, 0xff, b'"']);
                    if at < len {
                        b[at] = special;
                    }
                    for start in [0, 1, 3].into_iter().filter(|&s| s <= b.len()) {
                        let what = format!("len {len} at {at} byte {special:#x} start {start}");
                        check::<true>(&b, start, &what);
                        check::<false>(&b, start, &what);
                    }
                }
            }
        }
    }

    /// Non-ASCII text is taken where it is valid UTF-8, inside strings only, at every offset
    /// across the vector width; invalid sequences are not.
    #[test]
    fn checks_utf8_itself() {
        for n in 0..70 {
            for text in ["é", "€uro", "日本語", r"\u00e9é", "x😀y"] {
                let s = format!(r#"{{"k":"{}{text}{}","{text}":1}}"#, "x".repeat(n), "é".repeat(n % 5));
                if !text.contains('\\') {
                    assert!(scan(&s).is_some(), "{s:?}");
                }
                agrees(&s);
            }
            for bad in [&[0x80][..], &[0xc3], &[0xc3, 0x28], &[0xe2, 0x82], &[0xed, 0xa0, 0x80], &[0xc0, 0xaf], &[0xff]]
            {
                let mut s = format!(r#"{{"k":"{}"#, "x".repeat(n)).into_bytes();
                s.extend_from_slice(bad);
                s.extend_from_slice(br#"y"}"#);
                assert_eq!(scan_bytes(&s), None, "{s:?}");
            }
        }
        // Outside strings, nothing but ASCII.
        assert_eq!(scan_bytes("{\"a\":1\u{a0}}".as_bytes()), None);
        assert_eq!(scan_bytes("\u{feff}{}".as_bytes()), None);
    }

    /// Mutations of valid messages by bytes that are not ASCII, invalid UTF-8 included: whatever
    /// the scanner takes is valid UTF-8, and serde_json takes it alike.
    #[test]
    fn agrees_with_serde_on_non_ascii_mutations() {
        let seed = r#"{"id":1,"result":{"t":"é€😀 \u00e9","n":[1,"ü"]}}"#;
        let mut checked = 0;
        for t in one_byte_mutations_raw(seed.as_bytes(), &[0x80, 0xbf, 0xc3, 0xe2, 0xf0, 0xff, b'"']) {
            if scan_bytes(&t).is_some() {
                let text = std::str::from_utf8(&t).expect("the scanner took invalid UTF-8");
                agrees(text);
                checked += 1;
            }
        }
        assert!(checked > 10, "{checked}");
    }

    /// A value walked as an object in place gives the same members as walking its text again,
    /// and the scan goes on after it.
    #[test]
    fn values_walked_in_place() {
        let text = br#"{"a":1,"params":{"x":"y","p":[1,{"q":2}]},"z":true}"#;
        let (mut inner, mut after) = (Vec::new(), None);
        members(text, |k, v| {
            match k {
                "params" => {
                    let whole = v.fields(["p", "x"], |n, v| {
                        inner.push((n, v.text()?));
                        Ok(())
                    })?;
                    assert_eq!(whole, r#"{"x":"y","p":[1,{"q":2}]}"#);
                }
                "z" => after = Some(v.text()?),
                _ => {}
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(inner, [(1, r#""y""#), (0, r#"[1,{"q":2}]"#)]);
        assert_eq!(after, Some("true"));
        // Not an object, or a member twice: not taken.
        assert_eq!(members(br#"{"params":[1]}"#, |_, v| v.fields(["x"], |_, _| Ok(())).map(drop)), Err(NotTaken));
        assert_eq!(
            members(br#"{"params":{"x":1,"x":2}}"#, |_, v| v.fields(["x"], |_, _| Ok(())).map(drop)),
            Err(NotTaken)
        );
    }

    /// Names of every length up to 20, equal or differing in any one byte, compare as `==` does.
    #[test]
    fn same_name_is_equality() {
        for n in 0..20 {
            let a: Vec<u8> = (0..n as u8).map(|i| b'a' + i).collect();
            assert!(same_name(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!same_name(&a, &b), "{n} {at}");
            }
            assert!(!same_name(&a, &a[..n.saturating_sub(1)]) || n == 0);
        }
    }

    #[test]
    fn needs_escape_finds_what_serde_escapes() {
        for len in [0usize, 1, 15, 16, 17, 40] {
            for c in 0u8..=0x7f {
                for at in [0, len / 2, len.saturating_sub(1)] {
                    let mut text = vec![b'x'; len];
                    if len > 0 {
                        text[at] = c;
                    }
                    let text = String::from_utf8(text).unwrap();
                    let escaped = serde_json::to_string(&text).unwrap() != format!("\"{text}\"");
                    assert_eq!(needs_escape(&text), escaped, "{text:?}");
                }
            }
        }
        assert!(!needs_escape("é ✓"));
    }

    #[test]
    fn raw_is_the_same_text() {
        let text = r#"{"a": [1, 2]}"#;
        let r = raw(text);
        assert_eq!(r.get().as_ptr(), text.as_ptr());
        assert_eq!(r.get().len(), text.len());
        assert_eq!(std::mem::size_of::<&RawValue>(), std::mem::size_of::<&str>());
    }

    #[test]
    fn plain_str_only_for_unescaped_strings() {
        // The value of member `v` in `{"v":VALUE}`, read with `Value::plain_str`.
        fn plain_str(value: &str) -> Scan<Option<String>> {
            let text = format!(r#"{{"v":{value}}}"#);
            let mut out = None;
            fields(text.as_bytes(), ["v"], |_, v| {
                out = v.plain_str()?.map(str::to_owned);
                Ok(())
            })?;
            Ok(out)
        }
        assert_eq!(plain_str(r#""echo""#), Ok(Some("echo".to_owned())));
        assert_eq!(plain_str(r#""e\"cho""#), Err(NotTaken));
        assert_eq!(plain_str("12"), Err(NotTaken));
        assert_eq!(plain_str("null"), Ok(None));
    }

    /// Mutations of valid messages (a byte replaced, dropped or doubled, at every position, by
    /// the bytes JSON's grammar turns on): whatever the scanner takes, serde_json takes alike.
    #[test]
    fn agrees_with_serde_on_mutated_messages() {
        let seeds = [
            r#"{"jsonrpc":"2.0","id":12,"method":"execute","params":{"plugin":"echo","method":"echo","params":{"msg":"hi \"x\" \\ \u00e9","n":[1,2.5,-3e2,true,false,null]},"timeout_ms":500}}"#,
            r#"{"jsonrpc":"2.0","id":"a-1","result":{"ok":true,"list":[{},[],"",0]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32601,"message":"no","data":{"x":[1]}}}"#,
        ];
        let specials = b"\"\\{}[],:-+.eE0123456789tfnu \x01x";
        let mut checked = 0;
        for seed in seeds {
            agrees(seed);
            for t in one_byte_mutations(seed, specials) {
                agrees(&t);
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
