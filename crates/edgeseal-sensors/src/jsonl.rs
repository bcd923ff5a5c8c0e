//! JSON lines: one reading per line, for any sensor edgeseal has no driver for.
//!
//! ```json
//! {"stream": "garden.soil", "value": 41.5, "unit": "%", "label": "dry", "ts": "2026-11-22T10:00:00Z"}
//! {"stream": "door.camera", "blob": "<base64>", "media_type": "image/jpeg"}
//! ```
//! `ts` is RFC 3339 or milliseconds since the Unix epoch, and defaults to the
//! time the line was read. The original project's readout shape
//! (`{"sensor_type": "Temperature", "value": 21.0, "description": "Normal"}`)
//! is accepted too: `sensor_type` becomes the stream name, `description` the label.

use base64::Engine as _;
use edgeseal_core::{Reading, StreamName, Value};
use serde::Deserialize;

use crate::Error;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(alias = "sensor_type")]
    stream: String,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default, alias = "description")]
    label: Option<String>,
    #[serde(default, alias = "time")]
    ts: Option<serde_json::Value>,
    #[serde(default)]
    blob: Option<String>,
    #[serde(default)]
    media_type: Option<String>,
}

/// Parses one line. `line_no` is for the error message; `now_ms` is the default timestamp.
pub fn parse_line(text: &str, line_no: u64, now_ms: i64) -> Result<Reading, Error> {
    let bad = |why: String| Error::BadLine { line: line_no, why };
    let line: Line = serde_json::from_str(text).map_err(|e| bad(format!("not a reading: {e}")))?;
    let stream = StreamName::new(normalise_stream(&line.stream)).map_err(|e| bad(e.to_string()))?;
    let ts = match &line.ts {
        None | Some(serde_json::Value::Null) => now_ms,
        Some(serde_json::Value::Number(n)) => n.as_i64().ok_or_else(|| bad("ts must be whole milliseconds".into()))?,
        Some(serde_json::Value::String(s)) => {
            parse_rfc3339_ms(s).ok_or_else(|| bad(format!("ts {s:?} is not RFC 3339")))?
        }
        Some(other) => {
            return Err(bad(format!("ts {other} is neither RFC 3339 nor milliseconds")));
        }
    };
    let value = match (&line.blob, &line.value) {
        (Some(b64), None) => Value::Blob {
            media_type: line.media_type.clone().unwrap_or_else(|| "application/octet-stream".into()),
            data: base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| bad(format!("blob is not base64: {e}")))?,
        },
        (None, Some(v)) => {
            let value = match v {
                serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| bad("value is not a number".into()))?,
                serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                other => {
                    return Err(bad(format!("value {other} is not a number (NaN or a failed read?)")));
                }
            };
            Value::Scalar { value, unit: line.unit.clone().unwrap_or_default(), label: line.label.clone() }
        }
        (Some(_), Some(_)) => {
            return Err(bad("a line has either \"value\" or \"blob\", not both".into()));
        }
        (None, None) => return Err(bad("a line needs \"value\" or \"blob\"".into())),
    };
    Ok(Reading { stream, ts, value })
}

/// `"Air Quality"` → `"air_quality"`; valid names pass unchanged.
fn normalise_stream(s: &str) -> String {
    if StreamName::new(s).is_ok() {
        return s.to_string();
    }
    s.trim().to_lowercase().replace(' ', "_")
}

fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let ms = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).ok()?,
        Err(e) => -i64::try_from(e.duration().as_millis()).ok()?,
    };
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_blobs_and_the_original_shape() {
        let r = parse_line(r#"{"stream":"soil","value":41.5,"unit":"%","ts":1000}"#, 1, 0).unwrap();
        assert_eq!(r.ts, 1000);
        assert_eq!(r.value, Value::Scalar { value: 41.5, unit: "%".into(), label: None });
        let r = parse_line(r#"{"stream":"cam","blob":"aGk=","media_type":"image/jpeg"}"#, 1, 7).unwrap();
        assert_eq!(r.value, Value::Blob { media_type: "image/jpeg".into(), data: b"hi".to_vec() });
        assert_eq!(r.ts, 7);
        let r = parse_line(
            r#"{"sensor_type":"Air Quality","value":310,"description":"Low pollution","time":"2026-01-01T00:00:00Z"}"#,
            1,
            0,
        )
        .unwrap();
        assert_eq!(r.stream.as_str(), "air_quality");
        assert_eq!(r.ts, 1_767_225_600_000);
    }

    #[test]
    fn bad_lines_name_the_line_and_the_problem() {
        for (line, needle) in [
            ("not json", "not a reading"),
            (r#"{"stream":"a/b","value":1}"#, "invalid stream name"),
            (r#"{"stream":"t","value":null}"#, "a line needs"),
            (r#"{"stream":"t","value":"NaN"}"#, "not a number"),
            (r#"{"stream":"t","blob":"!!"}"#, "not base64"),
            (r#"{"stream":"t","value":1,"ts":"yesterday"}"#, "RFC 3339"),
            (r#"{"stream":"t","value":1,"extra":2}"#, "unknown field"),
        ] {
            let e = parse_line(line, 42, 0).unwrap_err().to_string();
            assert!(e.starts_with("line 42:") && e.contains(needle), "{line}: {e}");
        }
    }
}
