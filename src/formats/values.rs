//! Variables' values shown the way Python writes them (`repr`), shortened: the previews
//! `dump --locals` prints. Rendering only: the values were read elsewhere.

use crate::model::snapshot::{ContainerKind, Value};

/// Decimal digits of an int shown at each end of a longer one.
const INT_END_DIGITS: usize = 24;

/// What a value shows as in a dump: Python's `repr`, cut where the preview was, with the
/// full length after it ("'abc'... (10000 characters)").
pub fn repr(value: &Value) -> String {
    let mut out = String::new();
    write_repr(&mut out, value);
    out
}

fn write_repr(out: &mut String, value: &Value) {
    match value {
        Value::None => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Int {
            negative,
            digits,
            bits,
        } => out.push_str(&int_repr(*negative, digits, *bits)),
        Value::Float(x) => out.push_str(&float_repr(*x)),
        Value::Str { text, length } => {
            out.push_str(&quoted(text.chars(), false));
            let shown = text.chars().count() as u64;
            if shown < *length {
                out.push_str(&format!("... ({length} characters)"));
            }
        }
        Value::Bytes { data, length } => {
            out.push('b');
            out.push_str(&quoted(data.iter().map(|&b| char::from(b)), true));
            if (data.len() as u64) < *length {
                out.push_str(&format!("... ({length} bytes)"));
            }
        }
        Value::Sequence {
            kind,
            length,
            items,
            ..
        } => match items {
            None => out.push_str(&format!("<{}, {}>", kind.type_name(), items_count(*length))),
            Some(items) => {
                let (open, close) = match kind {
                    ContainerKind::Tuple => ("(", ")"),
                    ContainerKind::List => ("[", "]"),
                    _ if *length == 0 => {
                        out.push_str(kind.type_name());
                        out.push_str("()");
                        return;
                    }
                    ContainerKind::FrozenSet => ("frozenset({", "})"),
                    _ => ("{", "}"),
                };
                out.push_str(open);
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, item);
                }
                let more = (items.len() as u64) < *length;
                if more {
                    out.push_str(if items.is_empty() { "..." } else { ", ..." });
                } else if *kind == ContainerKind::Tuple && items.len() == 1 {
                    out.push(',');
                }
                out.push_str(close);
                if more {
                    out.push_str(&format!(" ({})", items_count(*length)));
                }
            }
        },
        Value::Dict { length, items, .. } => match items {
            None => out.push_str(&format!("<dict, {}>", items_count(*length))),
            Some(items) => {
                out.push('{');
                for (i, (key, value)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_repr(out, key);
                    out.push_str(": ");
                    write_repr(out, value);
                }
                let more = (items.len() as u64) < *length;
                if more {
                    out.push_str(if items.is_empty() { "..." } else { ", ..." });
                }
                out.push('}');
                if more {
                    out.push_str(&format!(" ({})", items_count(*length)));
                }
            }
        },
        Value::Recursive { kind, .. } => out.push_str(match kind {
            ContainerKind::Tuple => "(...)",
            ContainerKind::List => "[...]",
            _ => "{...}",
        }),
        Value::Object { type_name, addr } => {
            out.push_str(&format!("<{} at {addr:#x}>", escaped(type_name)));
        }
        Value::Changed => out.push_str("(changed while being read)"),
        Value::Unreadable { .. } => out.push_str("(unreadable)"),
    }
}

fn items_count(length: u64) -> String {
    match length {
        1 => "1 item".to_string(),
        n => format!("{n} items"),
    }
}

/// Text from the target with every character Python would not print as is (controls,
/// bidirectional and other format characters, separators, private use) escaped the way
/// Python's `repr` does: safe in a terminal, and unchanged where it is ordinary text.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_char(&mut out, c);
    }
    out
}

/// `chars` in quotes, escaped as by `repr`: single quotes unless the text has some and no
/// double quotes. `bytes`: each char is a byte, shown as is only if printable ASCII.
fn quoted(chars: impl Iterator<Item = char> + Clone, bytes: bool) -> String {
    let has = |q: char| chars.clone().any(|c| c == q);
    let quote = if has('\'') && !has('"') { '"' } else { '\'' };
    let mut out = String::new();
    out.push(quote);
    for c in chars {
        match c {
            '\\' => out.push_str("\\\\"),
            _ if c == quote => {
                out.push('\\');
                out.push(c);
            }
            // Bytes show only printable ASCII as is.
            _ if bytes && !(' '..='~').contains(&c) && !matches!(c, '\t' | '\n' | '\r') => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            _ => push_char(&mut out, c),
        }
    }
    out.push(quote);
    out
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        _ if printable(c) => out.push(c),
        _ if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
        _ if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
        _ => out.push_str(&format!("\\U{:08x}", c as u32)),
    }
}

/// Python's `str.isprintable` for the characters that matter in a terminal: not controls
/// (Cc), format characters (Cf: bidirectional overrides, zero-width marks), separators other
/// than the space (Z), surrogates, private use or noncharacters.
fn printable(c: char) -> bool {
    let v = c as u32;
    !(c.is_control()
        || matches!(v,
            0xa0 | 0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x8e2 | 0x1680 | 0x180e
            | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0x3000 | 0xd800..=0xf8ff
            | 0xfeff | 0xfff9..=0xfffb | 0x110bd | 0x110cd | 0x13430..=0x1343f
            | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a | 0xe0001..=0xe007f | 0xf0000..=0x10ffff)
        || v & 0xfffe == 0xfffe
        || (0xfdd0..=0xfdef).contains(&v))
}

/// An int in decimal, its middle cut out past 2 x [`INT_END_DIGITS`] digits; by its size
/// where its digits were not read.
fn int_repr(negative: bool, digits: &[u32], bits: u64) -> String {
    let sign = if negative { "-" } else { "" };
    if digits.is_empty() && bits > 0 {
        return format!("<int of {bits} bits>");
    }
    let decimal = decimal(digits);
    if decimal.len() <= 2 * INT_END_DIGITS + 3 {
        return format!("{sign}{decimal}");
    }
    format!(
        "{sign}{}...{} ({} digits)",
        &decimal[..INT_END_DIGITS],
        &decimal[decimal.len() - INT_END_DIGITS..],
        decimal.len()
    )
}

/// The decimal digits of a number given in 30-bit digits, least significant first.
fn decimal(digits: &[u32]) -> String {
    let mut number: Vec<u32> = digits.to_vec();
    let mut chunks: Vec<u32> = Vec::new();
    const BILLION: u64 = 1_000_000_000;
    while number.iter().any(|&d| d != 0) {
        let mut rest = 0u64;
        for digit in number.iter_mut().rev() {
            let value = (rest << 30) | u64::from(*digit);
            *digit = (value / BILLION) as u32;
            rest = value % BILLION;
        }
        chunks.push(rest as u32);
        while number.last() == Some(&0) {
            number.pop();
        }
    }
    let Some((top, rest)) = chunks.split_last() else {
        return "0".to_string();
    };
    let mut out = top.to_string();
    for chunk in rest.iter().rev() {
        out.push_str(&format!("{chunk:09}"));
    }
    out
}

/// A float as Python's `repr` writes it: the shortest digits that read back the same, in
/// positional notation from 1e-4 up to 1e16, in scientific notation outside ("1e+16").
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    let scientific = format!("{x:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return scientific;
    };
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    if !(-4..16).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        return format!(
            "{sign}{first}{fraction}e{exponent_sign}{:02}",
            exponent.unsigned_abs()
        );
    }
    if exponent < 0 {
        let zeros = "0".repeat(exponent.unsigned_abs() as usize - 1);
        return format!("{sign}0.{zeros}{digits}");
    }
    let whole = exponent as usize + 1;
    if digits.len() <= whole {
        let zeros = "0".repeat(whole - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        format!("{sign}{}.{}", &digits[..whole], &digits[whole..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_python_writes_them() {
        for (x, python) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (2.5, "2.5"),
            (-3.25, "-3.25"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.6, "123456789012345.6"),
            (9999999999999998.0, "9999999999999998.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (1e300, "1e+300"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(float_repr(x), python, "{x:e}");
        }
    }

    fn int(value: i64) -> Value {
        Value::int(value)
    }

    #[test]
    fn ints_of_every_size() {
        assert_eq!(repr(&int(0)), "0");
        assert_eq!(repr(&int(-7)), "-7");
        assert_eq!(repr(&int(i64::MIN)), "-9223372036854775808");
        // 2**100 in 30-bit digits.
        let big = Value::Int {
            negative: false,
            digits: vec![0, 0, 0, 1 << 10],
            bits: 101,
        };
        assert_eq!(repr(&big), "1267650600228229401496703205376");
        // 10**60 - 1: 60 nines, cut in the middle.
        let digits = {
            // n = n * 10 + 9, sixty times.
            let mut n: Vec<u32> = Vec::new();
            for _ in 0..60 {
                let mut carry = 9u64;
                for d in n.iter_mut() {
                    let v = u64::from(*d) * 10 + carry;
                    *d = (v & ((1 << 30) - 1)) as u32;
                    carry = v >> 30;
                }
                if carry > 0 {
                    n.push(carry as u32);
                }
            }
            n
        };
        let nines = Value::Int {
            negative: true,
            digits,
            bits: 200,
        };
        let nine24 = "9".repeat(24);
        assert_eq!(repr(&nines), format!("-{nine24}...{nine24} (60 digits)"));
        let huge = Value::Int {
            negative: false,
            digits: Vec::new(),
            bits: 30_001,
        };
        assert_eq!(repr(&huge), "<int of 30001 bits>");
    }

    #[test]
    fn strings_are_quoted_and_escaped_like_repr() {
        let s = |text: &str, length: u64| Value::Str {
            text: text.into(),
            length,
        };
        assert_eq!(repr(&s("spam", 4)), "'spam'");
        assert_eq!(repr(&s("it's", 4)), "\"it's\"");
        assert_eq!(repr(&s("a'b\"c", 5)), "'a\\'b\"c'");
        assert_eq!(repr(&s("données 数据 🐍", 12)), "'données 数据 🐍'");
        assert_eq!(
            repr(&s("\x1b[31m\n\t\\\u{202e}\u{a0}\u{7f}\u{85}", 8)),
            "'\\x1b[31m\\n\\t\\\\\\u202e\\xa0\\x7f\\x85'"
        );
        assert_eq!(repr(&s("xx", 10_000)), "'xx'... (10000 characters)");
        let b = Value::Bytes {
            data: b"ab\x00\xff'\n".to_vec(),
            length: 6,
        };
        assert_eq!(repr(&b), "b\"ab\\x00\\xff'\\n\"");
        let cut = Value::Bytes {
            data: b"ab".to_vec(),
            length: 3,
        };
        assert_eq!(repr(&cut), "b'ab'... (3 bytes)");
        assert_eq!(escaped("na\u{202e}me\x1b"), "na\\u202eme\\x1b");
    }

    #[test]
    fn containers_show_their_first_items_and_their_length() {
        let seq = |kind, length, items: Vec<Value>| Value::Sequence {
            kind,
            addr: 0x1000,
            length,
            items: Some(items),
        };
        assert_eq!(repr(&seq(ContainerKind::Tuple, 1, vec![int(1)])), "(1,)");
        assert_eq!(repr(&seq(ContainerKind::Tuple, 0, vec![])), "()");
        assert_eq!(repr(&seq(ContainerKind::Set, 0, vec![])), "set()");
        assert_eq!(
            repr(&seq(ContainerKind::FrozenSet, 2, vec![int(1), int(2)])),
            "frozenset({1, 2})"
        );
        assert_eq!(
            repr(&seq(ContainerKind::List, 1_000_000, vec![int(0), int(1)])),
            "[0, 1, ...] (1000000 items)"
        );
        let inner = Value::Recursive {
            kind: ContainerKind::List,
            addr: 0x1000,
        };
        assert_eq!(repr(&seq(ContainerKind::List, 1, vec![inner])), "[[...]]");
        let deep = Value::Sequence {
            kind: ContainerKind::List,
            addr: 0x2000,
            length: 1,
            items: None,
        };
        assert_eq!(
            repr(&seq(ContainerKind::List, 1, vec![deep])),
            "[<list, 1 item>]"
        );
        let dict = Value::Dict {
            addr: 0x3000,
            length: 3,
            items: Some(vec![(
                Value::Str {
                    text: "k".into(),
                    length: 1,
                },
                Value::None,
            )]),
        };
        assert_eq!(repr(&dict), "{'k': None, ...} (3 items)");
        let object = Value::Object {
            type_name: "Evil\x1b[2J".into(),
            addr: 0x7f00_0000_1000,
        };
        assert_eq!(repr(&object), "<Evil\\x1b[2J at 0x7f0000001000>");
    }
}
