//! Field deserializers for the OTLP JSON mapping
//! (<https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding>), where it differs from
//! what serde does by default: 64-bit integers arrive as decimal strings (numbers are accepted
//! too), doubles may be `"NaN"`/`"Infinity"`/`"-Infinity"`, enums are integers (names are
//! accepted too), trace and span ids are hex, `bytesValue` is base64, and `null` means the
//! field's default.

use std::fmt;
use std::marker::PhantomData;

use base64::Engine;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A repeated field; `null` is empty.
pub(super) fn vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A string field; `null` is empty.
pub(super) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// A bool field; `null` is false.
pub(super) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or_default())
}

/// A number that may arrive as a JSON number or as a decimal string.
#[derive(Default)]
struct Num<T>(T);

/// `$upper` is the type's exclusive upper bound as a float (2^bits or 2^(bits-1)): `MAX as
/// f64` rounds up for 64-bit types, so comparing against it would accept 2^63 and clamp it.
macro_rules! integer_visitor {
    ($t:ty, $name:literal, $upper:expr) => {
        impl<'de> Deserialize<'de> for Num<$t> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Num<$t>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        write!(f, "{} as a number or a decimal string", $name)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                        <$t>::try_from(v)
                            .map(Num)
                            .map_err(|_| E::custom(format!("{v} is out of range for {}", $name)))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                        <$t>::try_from(v)
                            .map(Num)
                            .map_err(|_| E::custom(format!("{v} is out of range for {}", $name)))
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                        // `1e3` parses as a float; accept it only when it is an exact integer.
                        if v.fract() == 0.0 && v >= <$t>::MIN as f64 && v < $upper {
                            Ok(Num(v as $t))
                        } else {
                            Err(E::custom(format!("{v} is not a valid {}", $name)))
                        }
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                        v.trim()
                            .parse::<$t>()
                            .map(Num)
                            .map_err(|_| E::custom(format!("{v:?} is not a valid {}", $name)))
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                        Ok(Num(0))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

integer_visitor!(u64, "uint64", 18_446_744_073_709_551_616.0);
integer_visitor!(i64, "int64", 9_223_372_036_854_775_808.0);
integer_visitor!(u32, "uint32", 4_294_967_296.0);
integer_visitor!(i32, "int32", 2_147_483_648.0);

impl<'de> Deserialize<'de> for Num<f64> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Num<f64>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a double, or \"NaN\", \"Infinity\" or \"-Infinity\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Num(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Num(v as f64))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Num(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "NaN" => Ok(Num(f64::NAN)),
                    "Infinity" => Ok(Num(f64::INFINITY)),
                    "-Infinity" => Ok(Num(f64::NEG_INFINITY)),
                    _ => v
                        .trim()
                        .parse::<f64>()
                        .map(Num)
                        .map_err(|_| E::custom(format!("{v:?} is not a valid double"))),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Num(0.0))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Num::<u64>::deserialize(d).map(|n| n.0)
}
pub(super) fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Num::<u32>::deserialize(d).map(|n| n.0)
}
pub(super) fn i32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    Num::<i32>::deserialize(d).map(|n| n.0)
}
pub(super) fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Num::<f64>::deserialize(d).map(|n| n.0)
}

/// An optional double (`optional double sum`): absent or `null` is `None`.
pub(super) fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(Option::<Num<f64>>::deserialize(d)?.map(|n| n.0))
}

struct NumSeq<T>(PhantomData<T>);

impl<'de, T> Visitor<'de> for NumSeq<T>
where
    Num<T>: Deserialize<'de>,
{
    type Value = Vec<T>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The hint comes from the input; cap it so a lying length cannot pre-allocate.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Num(v)) = seq.next_element::<Num<T>>()? {
            out.push(v);
        }
        Ok(out)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
}

pub(super) fn u64_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    d.deserialize_any(NumSeq::<u64>(PhantomData))
}
pub(super) fn f64_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    d.deserialize_any(NumSeq::<f64>(PhantomData))
}

/// `AggregationTemporality` as its number or its enum name.
pub(super) fn temporality<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = i32;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an AggregationTemporality number (1 delta, 2 cumulative)")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("{v} is not a temporality")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom(format!("{v} is not a temporality")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
            match v {
                "AGGREGATION_TEMPORALITY_UNSPECIFIED" => Ok(0),
                "AGGREGATION_TEMPORALITY_DELTA" => Ok(1),
                "AGGREGATION_TEMPORALITY_CUMULATIVE" => Ok(2),
                _ => Err(E::custom(format!("{v:?} is not an AggregationTemporality"))),
            }
        }
        fn visit_unit<E: de::Error>(self) -> Result<i32, E> {
            Ok(0)
        }
    }
    d.deserialize_any(V)
}

/// Deserializes a protobuf `oneof`, whose members the JSON mapping puts beside the parent's
/// own fields (`{"name": "x", "gauge": {...}}`). Used with `#[serde(flatten)]`: serde hands over
/// the keys the parent did not claim, this picks the member's key and decodes its value, so an
/// error inside the member reaches the client instead of turning into an absent member.
macro_rules! oneof {
    ($(#[$doc:meta])* $fn:ident -> $ty:ty { $($key:pat => $inner:ty => $make:expr),+ $(,)? }) => {
        $(#[$doc])*
        pub(super) fn $fn<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Option<$ty>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str(concat!("one of ", $(stringify!($key), " "),+))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = None;
                    while let Some(key) = map.next_key::<String>()? {
                        match key.as_str() {
                            $($key => {
                                let v: $inner = map.next_value()?;
                                out = Some($make(v));
                            })+
                            _ => {
                                map.next_value::<de::IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(out)
                }
            }
            d.deserialize_map(V)
        }
    };
}

oneof!(
    /// `Metric.data`.
    metric_data -> super::proto::metric::Data {
        "gauge" => super::proto::Gauge => super::proto::metric::Data::Gauge,
        "sum" => super::proto::Sum => super::proto::metric::Data::Sum,
        "histogram" => super::proto::Histogram => super::proto::metric::Data::Histogram,
        "exponentialHistogram" | "exponential_histogram" => super::proto::ExponentialHistogram
            => super::proto::metric::Data::ExponentialHistogram,
        "summary" => super::proto::Summary => super::proto::metric::Data::Summary,
    }
);

oneof!(
    /// `NumberDataPoint.value`.
    number_value -> super::proto::number_data_point::Value {
        "asDouble" | "as_double" => Num<f64> => |n: Num<f64>| super::proto::number_data_point::Value::AsDouble(n.0),
        "asInt" | "as_int" => Num<i64> => |n: Num<i64>| super::proto::number_data_point::Value::AsInt(n.0),
    }
);

oneof!(
    /// `Exemplar.value`.
    exemplar_value -> super::proto::exemplar::Value {
        "asDouble" | "as_double" => Num<f64> => |n: Num<f64>| super::proto::exemplar::Value::AsDouble(n.0),
        "asInt" | "as_int" => Num<i64> => |n: Num<i64>| super::proto::exemplar::Value::AsInt(n.0),
    }
);

oneof!(
    /// `AnyValue.value`.
    any_value -> super::proto::any_value::Value {
        "stringValue" | "string_value" => Option<String> => |s: Option<String>| {
            super::proto::any_value::Value::StringValue(s.unwrap_or_default())
        },
        "boolValue" | "bool_value" => Option<bool> => |b: Option<bool>| {
            super::proto::any_value::Value::BoolValue(b.unwrap_or_default())
        },
        "intValue" | "int_value" => Num<i64> => |n: Num<i64>| super::proto::any_value::Value::IntValue(n.0),
        "doubleValue" | "double_value" => Num<f64> => |n: Num<f64>| super::proto::any_value::Value::DoubleValue(n.0),
        "arrayValue" | "array_value" => super::proto::ArrayValue => super::proto::any_value::Value::ArrayValue,
        "kvlistValue" | "kvlist_value" => super::proto::KeyValueList => super::proto::any_value::Value::KvlistValue,
        "bytesValue" | "bytes_value" => Base64 => |b: Base64| super::proto::any_value::Value::BytesValue(b.0),
    }
);

/// Trace and span ids: hex in OTLP JSON (the one departure from protobuf's base64).
pub(super) fn hex<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    decode_hex(&s).ok_or_else(|| de::Error::custom(format!("{s:?} is not a hex id")))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// `bytesValue`: standard base64, as protobuf's JSON mapping has it.
struct Base64(Vec<u8>);

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        base64(d).map(Base64)
    }
}

fn base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::PAD.with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let s = String::deserialize(d)?;
    ENGINE
        .decode(s)
        .map_err(|_| de::Error::custom("bytesValue is not base64"))
}

#[cfg(test)]
mod tests {
    use super::decode_hex;

    #[test]
    fn hex_ids() {
        assert_eq!(decode_hex("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex(""), Some(vec![]));
    }
}
