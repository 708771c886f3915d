//! The JSON the plugin reads and writes: its configuration, a drain
//! controller's status, and the bodies of its local replies.
//!
//! A small strict reader (RFC 8259: no comments, no trailing commas, no
//! trailing characters, nesting at most [`MAX_DEPTH`]) into a [`Value`]
//! tree, and a writer of objects ([`Object`]) that writes each member as it
//! is given, instead of a general-purpose JSON library, to keep the wasm
//! module small (BENCHMARKS.md measures serde_json against it). Objects keep
//! their members in document order; of a repeated key, the last value
//! counts ([`Map::get`]). The writer escapes like common JSON libraries
//! (`"`, `\`, control characters; nothing else).
//!
//! ```
//! use drainpipe::json::{self, Object};
//! let v = json::parse(br#"{"b": [1, true], "a": null}"#).unwrap();
//! assert_eq!(v.get("b").and_then(|b| b.as_array()).map(|a| a.len()), Some(2));
//! assert_eq!(v.to_string(), r#"{"b":[1,true],"a":null}"#);
//! let reply = Object::new().str("status", "serving").u64("inflight", 3).finish();
//! assert_eq!(reply, r#"{"status":"serving","inflight":3}"#);
//! ```

use std::fmt;

/// Deepest nesting of arrays and objects the reader accepts.
pub const MAX_DEPTH: usize = 128;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

/// A JSON number: an integer when it is one and fits 64 bits, otherwise the
/// text as written (it is only ever shown, never computed with).
#[derive(Debug, Clone, PartialEq)]
pub enum Number {
    Unsigned(u64),
    Negative(i64),
    Other(String),
}

/// A JSON object: its members in document order, a repeated key kept
/// (the last one counts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Map(Vec<(String, Value)>);

impl Map {
    /// The value of `key`: of a repeated key, the last.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The members, in document order, a repeated key as often as written.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The distinct keys with the value that counts (the last), in the
    /// order of their last occurrence. Quadratic in the members: for the
    /// configuration's small objects.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0
            .iter()
            .enumerate()
            .filter(|(i, (k, _))| !self.0[i + 1..].iter().any(|(later, _)| later == k))
            .map(|(_, (k, v))| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_object()?.get(key)
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is one (`1.0` is not).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(Number::Unsigned(n)) => Some(*n),
            _ => None,
        }
    }
}

/// A JSON object written member by member, in the order given.
///
/// ```
/// use drainpipe::json::Object;
/// let error = Object::new().str("code", "x").null("param");
/// let body = Object::new().object("error", error).finish();
/// assert_eq!(body, r#"{"error":{"code":"x","param":null}}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object(String);

impl Default for Object {
    fn default() -> Self {
        Object::new()
    }
}

impl Object {
    pub fn new() -> Object {
        Object(String::from("{"))
    }

    /// Starts a member: the separator, the key and the colon.
    fn key(&mut self, key: &str) -> &mut String {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        write_str(&mut self.0, key);
        self.0.push(':');
        &mut self.0
    }

    /// A string member.
    pub fn str(mut self, key: &str, value: &str) -> Object {
        write_str(self.key(key), value);
        self
    }

    /// An integer member.
    pub fn u64(mut self, key: &str, value: u64) -> Object {
        push_u64(self.key(key), value);
        self
    }

    /// An integer member, `null` for `None`.
    pub fn opt_u64(self, key: &str, value: Option<u64>) -> Object {
        match value {
            Some(n) => self.u64(key, n),
            None => self.null(key),
        }
    }

    /// A `null` member.
    pub fn null(mut self, key: &str) -> Object {
        self.key(key).push_str("null");
        self
    }

    /// An object member.
    pub fn object(mut self, key: &str, value: Object) -> Object {
        let value = value.finish();
        self.key(key).push_str(&value);
        self
    }

    /// The object's text.
    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Why a text is not JSON, and where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub problem: &'static str,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.problem, self.line, self.column
        )
    }
}

impl std::error::Error for Error {}

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(text: &[u8]) -> Result<Value, Error> {
    let mut r = Reader { text, pos: 0 };
    let value = r.value(0)?;
    r.skip_ws();
    if r.pos < text.len() {
        return Err(r.error("trailing characters"));
    }
    Ok(value)
}

struct Reader<'t> {
    text: &'t [u8],
    pos: usize,
}

impl Reader<'_> {
    fn error(&self, problem: &'static str) -> Error {
        let before = &self.text[..self.pos.min(self.text.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        Error {
            problem,
            line,
            column: self.pos - line_start + 1,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, literal: &[u8]) -> bool {
        let found = self.text[self.pos..].starts_with(literal);
        if found {
            self.pos += literal.len();
        }
        found
    }

    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        self.skip_ws();
        let Some(b) = self.peek() else {
            return Err(self.error("EOF while parsing a value"));
        };
        match b {
            b'{' | b'[' if depth >= MAX_DEPTH => Err(self.error("recursion limit exceeded")),
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => self.string().map(Value::String),
            b'-' | b'0'..=b'9' => self.number(),
            _ if self.eat(b"true") => Ok(Value::Bool(true)),
            _ if self.eat(b"false") => Ok(Value::Bool(false)),
            _ if self.eat(b"null") => Ok(Value::Null),
            _ => Err(self.error("expected value")),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.eat(b"]") {
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth)?);
            self.skip_ws();
            if self.eat(b"]") {
                return Ok(Value::Array(items));
            }
            if !self.eat(b",") {
                return Err(self.error("expected `,` or `]`"));
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        self.pos += 1;
        let mut map = Map::default();
        self.skip_ws();
        if self.eat(b"}") {
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("key must be a string"));
            }
            let key = self.string()?;
            self.skip_ws();
            if !self.eat(b":") {
                return Err(self.error("expected `:`"));
            }
            let value = self.value(depth)?;
            map.0.push((key, value));
            self.skip_ws();
            if self.eat(b"}") {
                return Ok(Value::Object(map));
            }
            if !self.eat(b",") {
                return Err(self.error("expected `,` or `}`"));
            }
        }
    }

    /// A string, the reader on its opening quote.
    fn string(&mut self) -> Result<String, Error> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error("EOF while parsing a string"));
            };
            self.pos += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let Some(e) = self.peek() else {
                        return Err(self.error("EOF while parsing a string"));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.error("invalid escape")),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => {
                    return Err(self
                        .error("control character (\\u0000-\\u001F) found while parsing a string"))
                }
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid unicode code point"))
    }

    /// The character of a `\uXXXX` escape (two for a surrogate pair), the
    /// reader after the `u`.
    fn unicode_escape(&mut self) -> Result<char, Error> {
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                if !self.eat(b"\\u") {
                    return Err(self.error("unexpected end of hex escape"));
                }
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(self.error("lone leading surrogate in hex escape"));
                }
                0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
            }
            0xdc00..=0xdfff => return Err(self.error("lone trailing surrogate in hex escape")),
            _ => first,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid unicode code point"))
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut n = 0;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.error("invalid escape")),
            };
            self.pos += 1;
            n = n * 16 + u32::from(d);
        }
        Ok(n)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        let negative = self.eat(b"-");
        let digits = |r: &mut Self| {
            let from = r.pos;
            while matches!(r.peek(), Some(b'0'..=b'9')) {
                r.pos += 1;
            }
            r.pos - from
        };
        let int_start = self.pos;
        match digits(self) {
            0 => return Err(self.error("invalid number")),
            n if n > 1 && self.text[int_start] == b'0' => {
                self.pos = int_start + 1;
                return Err(self.error("invalid number"));
            }
            _ => {}
        }
        let int_end = self.pos;
        let mut integer = true;
        if self.eat(b".") {
            integer = false;
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            integer = false;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        // ASCII digits only from here: valid UTF-8.
        let text = std::str::from_utf8(&self.text[start..self.pos]).unwrap_or_default();
        if integer {
            let magnitude = &self.text[int_start..int_end];
            let mut n: u64 = 0;
            let fits = magnitude.iter().all(|d| {
                n.checked_mul(10)
                    .and_then(|n10| n10.checked_add(u64::from(d - b'0')))
                    .map(|next| n = next)
                    .is_some()
            });
            if fits && !negative {
                return Ok(Value::Number(Number::Unsigned(n)));
            }
            if fits && n <= i64::MAX as u64 + 1 {
                return Ok(Value::Number(Number::Negative((n as i64).wrapping_neg())));
            }
        }
        Ok(Value::Number(Number::Other(text.to_string())))
    }
}

impl fmt::Display for Value {
    /// Compact JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        write_value(&mut out, self);
        f.write_str(&out)
    }
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(Number::Unsigned(n)) => push_u64(out, *n),
        Value::Number(Number::Negative(n)) => {
            out.push('-');
            push_u64(out, n.unsigned_abs());
        }
        Value::Number(Number::Other(text)) => out.push_str(text),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, k);
                out.push(':');
                write_value(out, v);
            }
            out.push('}');
        }
    }
}

/// Appends `n` in decimal (no `core::fmt`).
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// `s` as a JSON string literal, for messages: `"a\"b"`. The plugin's
/// messages quote with this rather than `{:?}`, whose escaping brings
/// Unicode tables into the module; for printable text both read the same.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

/// A JSON string literal: `"` and `\` escaped, control characters as
/// `\n`-style or `\u00XX` escapes, everything else as is.
pub fn write_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let b = c as usize;
                out.push_str("\\u00");
                out.push(HEX[b >> 4] as char);
                out.push(HEX[b & 0xf] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Value {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn err(text: &str) -> Error {
        parse(text.as_bytes()).expect_err(text)
    }

    #[test]
    fn scalars_and_nesting() {
        assert_eq!(ok(" null "), Value::Null);
        assert_eq!(ok("true"), Value::Bool(true));
        assert_eq!(ok("false"), Value::Bool(false));
        assert_eq!(ok("0").as_u64(), Some(0));
        assert_eq!(ok("18446744073709551615").as_u64(), Some(u64::MAX));
        assert_eq!(ok(r#""a\"b""#).as_str(), Some("a\"b"));
        let v = ok(r#"{"a": [1, {"b": null}], "c": "d"}"#);
        assert_eq!(v.get("c").and_then(Value::as_str), Some("d"));
        assert_eq!(
            v.get("a").and_then(Value::as_array).map(<[_]>::len),
            Some(2)
        );
    }

    #[test]
    fn only_unsigned_integers_are_u64() {
        for text in [
            "-1",
            "1.0",
            "1e3",
            "1E+2",
            "0.5",
            "-0",
            "18446744073709551616",
            "-9223372036854775809",
        ] {
            assert_eq!(ok(text).as_u64(), None, "{text}");
        }
        assert_eq!(
            ok("-9223372036854775808"),
            Value::Number(Number::Negative(i64::MIN))
        );
    }

    #[test]
    fn numbers_print_as_written_or_as_integers() {
        for text in [
            "0",
            "7",
            "-3",
            "1.25",
            "1e3",
            "-0",
            "-9223372036854775808",
            "123456789012345678901234567890",
        ] {
            assert_eq!(ok(text).to_string(), text);
        }
    }

    #[test]
    fn malformed_documents_are_errors_with_a_position() {
        for (text, problem) in [
            ("", "EOF while parsing a value"),
            ("{", "key must be a string"),
            ("{\"a\" 1}", "expected `:`"),
            ("{\"a\":1,}", "key must be a string"),
            ("[1,]", "expected value"),
            ("[1 2]", "expected `,` or `]`"),
            ("{\"a\":1 \"b\":2}", "expected `,` or `}`"),
            ("01", "invalid number"),
            ("1.", "invalid number"),
            ("1e", "invalid number"),
            ("-", "invalid number"),
            (".5", "expected value"),
            ("+1", "expected value"),
            ("tru", "expected value"),
            ("nul", "expected value"),
            ("\"abc", "EOF while parsing a string"),
            ("\"\\x\"", "invalid escape"),
            ("\"\\u12\"", "invalid escape"),
            ("\"\\ud800\"", "unexpected end of hex escape"),
            ("\"\\ud800\\u0041\"", "lone leading surrogate in hex escape"),
            ("\"\\udc00\"", "lone trailing surrogate in hex escape"),
            (
                "\"a\nb\"",
                "control character (\\u0000-\\u001F) found while parsing a string",
            ),
            ("{} {}", "trailing characters"),
            ("{}x", "trailing characters"),
            ("// c\n{}", "expected value"),
        ] {
            assert_eq!(err(text).problem, problem, "{text:?}");
        }
        let e = err("{\n  \"a\": tru\n}");
        assert_eq!((e.line, e.column), (2, 8));
        assert_eq!(e.to_string(), "expected value at line 2 column 8");
    }

    #[test]
    fn invalid_utf8_in_a_string_is_an_error() {
        assert_eq!(
            parse(b"\"\xff\"").unwrap_err().problem,
            "invalid unicode code point"
        );
        assert_eq!(parse(b"\xff").unwrap_err().problem, "expected value");
    }

    #[test]
    fn nesting_is_limited() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(deep(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            parse(deep(MAX_DEPTH + 1).as_bytes()).unwrap_err().problem,
            "recursion limit exceeded"
        );
        assert!(parse(deep(100_000).as_bytes()).is_err());
    }

    #[test]
    fn escapes_and_surrogate_pairs_decode() {
        assert_eq!(
            ok(r#""\u00e9\ud83d\ude00\/\b\f\n\r\t""#).as_str(),
            Some("é😀/\u{8}\u{c}\n\r\t")
        );
        assert_eq!(ok("\"é\"").as_str(), Some("é"));
    }

    #[test]
    fn members_keep_document_order_and_the_last_repeat_counts() {
        let v = ok(r#"{"b":1,"a":2,"b":3}"#);
        let map = v.as_object().unwrap();
        let keys: Vec<&String> = map.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b", "a", "b"]);
        assert_eq!(v.get("b").and_then(Value::as_u64), Some(3));
        let entries: Vec<(&str, Option<u64>)> = map
            .entries()
            .map(|(k, v)| (k.as_str(), v.as_u64()))
            .collect();
        assert_eq!(entries, [("a", Some(2)), ("b", Some(3))]);
    }

    #[test]
    fn writer_escapes_only_quotes_backslashes_and_controls() {
        let body = Object::new()
            .str("q\"", "q\" b\\ n\n t\t \u{1} \u{1f} \u{7f} é / <")
            .finish();
        assert_eq!(
            body,
            "{\"q\\\"\":\"q\\\" b\\\\ n\\n t\\t \\u0001 \\u001f \u{7f} é / <\"}"
        );
        let theirs: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(serde_json::to_string(&theirs).unwrap(), body);
    }

    #[test]
    fn objects_are_written_in_the_order_given() {
        let inner = Object::new().null("param").str("code", "x");
        let body = Object::new()
            .u64("z", 1)
            .opt_u64("a", None)
            .opt_u64("b", Some(u64::MAX))
            .object("e", inner)
            .object("empty", Object::new())
            .finish();
        assert_eq!(
            body,
            r#"{"z":1,"a":null,"b":18446744073709551615,"e":{"param":null,"code":"x"},"empty":{}}"#
        );
        assert_eq!(Object::default().finish(), "{}");
    }

    /// Non-integers are kept as text and never converted, so a number too
    /// large for a float is accepted (serde_json refuses it); no reader of a
    /// setting takes it as an integer either way.
    #[test]
    fn huge_floats_are_kept_as_text() {
        assert_eq!(ok("1E400").to_string(), "1E400");
        assert_eq!(ok("1E400").as_u64(), None);
    }

    /// serde_json as the reference, on valid and invalid documents alike.
    #[test]
    fn agrees_with_serde_json() {
        let cases = [
            "{}",
            "[]",
            "null",
            "0",
            "-0",
            "1.5",
            "1e2",
            "-1",
            "18446744073709551615",
            "18446744073709551616",
            "\"\\u0000\"",
            "\"\\u001f\\u007f\\u00ff\"",
            r#"{"role":"traffic","deadline":{"max_timeout_ms":1,"x":[true,false,null]}}"#,
            r#"{"a":"\ud83d\ude00 \" \\ \/ \b\f\n\r\t","b":-9223372036854775808}"#,
            "[1,2",
            "{\"a\":}",
            "[-]",
            "[00]",
            "[1.e1]",
            "[\"\\ud800x\"]",
            " [ 1 , [ ] , { } ] ",
            "{\"a\":1,\"a\":2}",
            "[1]x",
            "\"tab\there\"",
            "[true false]",
            "[nan]",
            "[Infinity]",
            "[-1e-400]",
            "[0.1e+1]",
        ];
        for text in cases {
            let ours = parse(text.as_bytes());
            let theirs: Result<serde_json::Value, _> = serde_json::from_str(text);
            assert_eq!(
                ours.is_ok(),
                theirs.is_ok(),
                "{text:?}: {ours:?} vs {theirs:?}"
            );
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                assert_eq!(a.as_u64(), b.as_u64(), "{text:?}");
                // What ours writes reads back as the same document
                // (members in document order, numbers as written).
                let again: serde_json::Value = serde_json::from_str(&a.to_string()).unwrap();
                assert_eq!(again, b, "{text:?}");
            }
        }
    }
}
