//! Metric and label names: Prometheus' escaping and the unit and type suffixes.

use super::*;

/// A label name per the naming mode, with Prometheus' default sanitisation: every character
/// outside `[a-zA-Z0-9_]` becomes `_` (runs are kept), a leading digit gets a `key_` prefix and
/// a single leading `_` a `key` prefix; `__`-prefixed (reserved) names are kept. A name that
/// would be only underscores is dropped (empty result).
pub(super) fn label_name(key: &str, naming: Naming) -> Cow<'_, str> {
    if naming == Naming::NoTranslation || key.is_empty() {
        return Cow::Borrowed(key);
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let bytes = key.as_bytes();
    let starts_digit = bytes[0].is_ascii_digit();
    let single_underscore = bytes[0] == b'_' && bytes.get(1) != Some(&b'_');
    let name: Cow<'_, str> = if key.chars().all(valid) && !starts_digit && !single_underscore {
        Cow::Borrowed(key)
    } else {
        let mut s = String::with_capacity(key.len() + 4);
        if starts_digit {
            s.push_str("key_");
        } else if single_underscore {
            s.push_str("key");
        }
        s.extend(key.chars().map(|c| if valid(c) { c } else { '_' }));
        Cow::Owned(s)
    };
    if name.bytes().all(|b| b == b'_') {
        return Cow::Borrowed("");
    }
    name
}

/// What kind of Prometheus metric a name is built for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum NameKind {
    Counter,
    Gauge,
    Other,
}

/// Prometheus' metric name with unit and type suffixes (`otlptranslator`'s rules).
pub(super) fn metric_name(name: &str, unit: &str, kind: NameKind, naming: Naming) -> String {
    if naming == Naming::NoTranslation {
        return name.to_string();
    }
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == ':';
    let mut tokens: Vec<String> = name
        .split(|c: char| !is_name_char(c))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let (main, per) = match unit.split_once('/') {
        Some((m, p)) => (m.trim(), Some(p.trim())),
        None => (unit.trim(), None),
    };
    let braces = |u: &str| u.contains('{') || u.contains('}');
    let mut main = if main.is_empty() || braces(main) {
        String::new()
    } else {
        clean_unit(lookup(UNITS, main))
    };
    let mut per = match per {
        Some(p) if !p.is_empty() && !braces(p) => {
            clean_unit(&format!("per_{}", lookup(PER_UNITS, p)))
        }
        _ => String::new(),
    };
    if tokens.contains(&main) {
        main.clear();
    }
    if per == "per_" {
        per.clear();
    } else {
        while per.ends_with('_') {
            per.pop();
        }
        if tokens.contains(&per) {
            per.clear();
        }
    }
    if !per.is_empty() {
        while main.ends_with('_') {
            main.pop();
        }
    }
    tokens.extend([main, per].into_iter().filter(|t| !t.is_empty()));
    if kind == NameKind::Counter {
        tokens.retain(|t| t != "total");
        tokens.push("total".to_string());
    }
    if kind == NameKind::Gauge && unit == "1" {
        tokens.retain(|t| t != "ratio");
        tokens.push("ratio".to_string());
    }
    let mut out = tokens.join("_");
    if out.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        out.insert(0, '_');
    }
    out
}

pub(super) fn lookup<'a>(table: &[(&str, &'a str)], unit: &'a str) -> &'a str {
    table
        .iter()
        .find(|(k, _)| *k == unit)
        .map_or(unit, |(_, v)| v)
}

/// A unit as one name token: characters outside `[a-zA-Z0-9:]` become `_`, runs collapse, one
/// leading `_` goes.
pub(super) fn clean_unit(u: &str) -> String {
    let mut out = String::with_capacity(u.len());
    for c in u.chars() {
        let c = if c.is_ascii_alphanumeric() || c == ':' {
            c
        } else {
            '_'
        };
        if !(c == '_' && out.ends_with('_')) {
            out.push(c);
        }
    }
    if out.starts_with('_') {
        out.remove(0);
    }
    out
}

/// UCUM units Prometheus spells out (`otlptranslator`'s unit map, its `tibibytes` included).
pub(super) const UNITS: &[(&str, &str)] = &[
    ("d", "days"),
    ("h", "hours"),
    ("min", "minutes"),
    ("s", "seconds"),
    ("ms", "milliseconds"),
    ("us", "microseconds"),
    ("ns", "nanoseconds"),
    ("By", "bytes"),
    ("KiBy", "kibibytes"),
    ("MiBy", "mebibytes"),
    ("GiBy", "gibibytes"),
    ("TiBy", "tibibytes"),
    ("KBy", "kilobytes"),
    ("MBy", "megabytes"),
    ("GBy", "gigabytes"),
    ("TBy", "terabytes"),
    ("m", "meters"),
    ("V", "volts"),
    ("A", "amperes"),
    ("J", "joules"),
    ("W", "watts"),
    ("g", "grams"),
    ("Cel", "celsius"),
    ("Hz", "hertz"),
    ("1", ""),
    ("%", "percent"),
];

/// Units after `/`.
pub(super) const PER_UNITS: &[(&str, &str)] = &[
    ("s", "second"),
    ("m", "minute"),
    ("h", "hour"),
    ("d", "day"),
    ("w", "week"),
    ("mo", "month"),
    ("y", "year"),
];
