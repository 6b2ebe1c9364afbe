//! Labels of the translated series: attribute values as strings, Prometheus' merge rules,
//! and the resource's `job`, `instance`, `target_info` and promoted labels.

use super::*;

/// A small label set with Prometheus' merge rules. Few labels per series, so a vector beats a
/// map.
#[derive(Clone, Default)]
pub(super) struct Labels<'a> {
    pub(super) v: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Labels<'a> {
    /// Sets `name`, replacing an earlier value.
    pub(super) fn set(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        match self.v.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.v.push((name, value)),
        }
    }
    /// Sets `name` unless present.
    pub(super) fn set_default(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        if !self.v.iter().any(|(n, _)| *n == name) {
            self.v.push((name, value));
        }
    }
    /// Adds an attribute; two attributes that sanitise to the same name keep both values,
    /// joined with `;` in key order (Prometheus' rule).
    pub(super) fn merge(&mut self, name: Cow<'a, str>, value: Cow<'a, str>) {
        match self.v.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => {
                let mut joined = slot.1.to_string();
                joined.push(';');
                joined.push_str(&value);
                slot.1 = Cow::Owned(joined);
            }
            None => self.v.push((name, value)),
        }
    }
    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.v.iter().map(|(n, v)| (n.as_ref(), v.as_ref()))
    }
    pub(super) fn is_empty(&self) -> bool {
        self.v.is_empty()
    }
}

/// Attributes in key order, so that collisions join deterministically.
pub(super) fn sorted(attrs: &[KeyValue]) -> Vec<&KeyValue> {
    let mut v: Vec<&KeyValue> = attrs.iter().collect();
    v.sort_by(|a, b| a.key.cmp(&b.key));
    v
}

/// Adds `attrs` as labels. More attributes than a series may have labels is refused before
/// any work, which also keeps the merge of colliding names (linear per attribute) bounded.
pub(super) fn attribute_labels<'a>(
    attrs: &'a [KeyValue],
    naming: Naming,
    max: usize,
    into: &mut Labels<'a>,
) -> Result<(), DecodeError> {
    if attrs.len() > max {
        return Err(DecodeError::TooManyAttributes {
            count: attrs.len(),
            limit: max,
        });
    }
    for kv in sorted(attrs) {
        let name = label_name(&kv.key, naming);
        if name.is_empty() {
            continue;
        }
        let value = kv.value.as_ref().map_or(Cow::Borrowed(""), value_string);
        into.merge(name, value);
    }
    Ok(())
}

pub(super) struct ResourceLabels<'a> {
    /// `job`, `instance` and promoted attributes.
    pub(super) labels: Labels<'a>,
    /// `target_info` labels: `job`, `instance` and every other resource attribute.
    pub(super) info: Labels<'a>,
}

pub(super) const SERVICE_NAME: &str = "service.name";
pub(super) const SERVICE_NAMESPACE: &str = "service.namespace";
pub(super) const SERVICE_INSTANCE_ID: &str = "service.instance.id";

impl<'a> ResourceLabels<'a> {
    pub(super) fn new(
        attrs: &'a [KeyValue],
        options: &'a TranslateOptions,
        max_attrs: usize,
    ) -> Result<Self, DecodeError> {
        if attrs.len() > max_attrs {
            return Err(DecodeError::TooManyAttributes {
                count: attrs.len(),
                limit: max_attrs,
            });
        }
        let mut job_instance = Labels::default();
        if let Some(name) = find(attrs, SERVICE_NAME) {
            let name = value_string(name);
            let job = match find(attrs, SERVICE_NAMESPACE).map(value_string) {
                Some(ns) if !ns.is_empty() => Cow::Owned(format!("{ns}/{name}")),
                _ => name,
            };
            job_instance.set("job".into(), job);
        }
        if let Some(id) = find(attrs, SERVICE_INSTANCE_ID) {
            job_instance.set("instance".into(), value_string(id));
        }
        let mut others = Labels::default();
        for kv in sorted(attrs) {
            if matches!(
                kv.key.as_str(),
                SERVICE_NAME | SERVICE_NAMESPACE | SERVICE_INSTANCE_ID
            ) {
                continue;
            }
            let name = label_name(&kv.key, options.naming);
            if name.is_empty() {
                continue;
            }
            others.merge(
                name,
                kv.value.as_ref().map_or(Cow::Borrowed(""), value_string),
            );
        }
        let mut labels = Labels::default();
        for key in &options.promote_resource_attributes {
            let name = label_name(key, options.naming);
            if let (Some(v), false) = (find(attrs, key), name.is_empty()) {
                labels.merge(name, value_string(v));
            }
        }
        let mut info = Labels::default();
        // Without job or instance a `target_info` could not be joined to anything.
        if !others.is_empty() && !job_instance.is_empty() {
            info = others;
            for (n, v) in job_instance.v.iter() {
                info.set(n.clone(), v.clone());
            }
        }
        for (n, v) in job_instance.v {
            labels.set(n, v);
        }
        Ok(ResourceLabels { labels, info })
    }
}

pub(super) fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// An attribute value as a label value: strings as they are, other scalars in their usual
/// text form, arrays and maps as JSON (as Prometheus does).
pub(super) fn value_string(v: &AnyValue) -> Cow<'_, str> {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s),
        Some(any_value::Value::BoolValue(b)) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Some(any_value::Value::IntValue(i)) => Cow::Owned(i.to_string()),
        Some(any_value::Value::DoubleValue(d)) => Cow::Owned(format_float(*d)),
        Some(any_value::Value::BytesValue(b)) => {
            use base64::Engine;
            Cow::Owned(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Some(any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_)) => {
            let mut s = String::new();
            write_json(v, &mut s);
            Cow::Owned(s)
        }
        None => Cow::Borrowed(""),
    }
}

pub(super) fn write_json(v: &AnyValue, out: &mut String) {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => {
            out.push_str(&serde_json::Value::from(s.as_str()).to_string())
        }
        Some(any_value::Value::ArrayValue(a)) => {
            out.push('[');
            for (i, item) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            out.push('{');
            for (i, item) in kv.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::from(item.key.as_str()).to_string());
                out.push(':');
                match &item.value {
                    Some(v) => write_json(v, out),
                    None => out.push_str("null"),
                }
            }
            out.push('}');
        }
        Some(any_value::Value::DoubleValue(d)) if !d.is_finite() => {
            out.push_str(&serde_json::Value::from(format_float(*d)).to_string())
        }
        None => out.push_str("null"),
        Some(_) => out.push_str(&value_string(v)),
    }
}

/// Floats as Go's `strconv.FormatFloat(v, 'f', -1, 64)`, which Prometheus uses for `le` and
/// `quantile`: shortest round-trip digits, no exponent; infinities as `+Inf`/`-Inf`.
pub(super) fn format_float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        format!("{v}")
    }
}
