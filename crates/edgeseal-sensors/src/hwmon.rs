//! Real readings on any Linux box: temperatures from hwmon
//! (`/sys/class/hwmon/hwmon*/temp*_input`, millidegrees) and, where hwmon has
//! none, thermal zones (`/sys/class/thermal/thermal_zone*/temp`).

use std::path::{Path, PathBuf};

use edgeseal_core::{Reading, StreamName, Value};

use crate::{Error, Sensor};

/// One sysfs temperature file.
#[derive(Debug, Clone)]
pub struct Hwmon {
    stream: StreamName,
    path: PathBuf,
}

impl Hwmon {
    pub fn new(stream: StreamName, path: PathBuf) -> Hwmon {
        Hwmon { stream, path }
    }

    pub fn stream(&self) -> &StreamName {
        &self.stream
    }
}

impl Sensor for Hwmon {
    fn describe(&self) -> String {
        format!("hwmon {} → {}", self.path.display(), self.stream)
    }

    fn read(&mut self, now_ms: i64) -> Result<Vec<Reading>, Error> {
        let what = || self.path.display().to_string();
        let text = std::fs::read_to_string(&self.path).map_err(|e| Error::Io { what: what(), why: e.to_string() })?;
        let milli: i64 =
            text.trim().parse().map_err(|_| Error::BadValue { what: what(), why: format!("{:?}", text.trim()) })?;
        if !(-60_000..=200_000).contains(&milli) {
            return Err(Error::BadValue { what: what(), why: format!("{milli} m°C is out of range") });
        }
        Ok(vec![Reading {
            stream: self.stream.clone(),
            ts: now_ms,
            value: Value::Scalar { value: milli as f64 / 1000.0, unit: "°C".into(), label: None },
        }])
    }
}

/// Finds temperature sensors under a sysfs root (`/sys` normally).
pub fn discover(sys: &Path) -> Vec<Hwmon> {
    let mut found = Vec::new();
    for dir in sorted_dirs(&sys.join("class/hwmon")) {
        let chip = std::fs::read_to_string(dir.join("name")).map(|s| s.trim().to_string()).unwrap_or_default();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut inputs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("temp") && n.ends_with("_input"))
            })
            .collect();
        inputs.sort();
        for input in inputs {
            let sensor =
                input.file_name().and_then(|n| n.to_str()).unwrap_or("temp").trim_end_matches("_input").to_string();
            let hw = dir.file_name().and_then(|n| n.to_str()).unwrap_or("hwmon").to_string();
            if let Ok(stream) = StreamName::new(sanitize(&format!(
                "hwmon.{}.{hw}.{sensor}",
                if chip.is_empty() { "chip" } else { &chip }
            ))) {
                found.push(Hwmon::new(stream, input));
            }
        }
    }
    if found.is_empty() {
        for dir in sorted_dirs(&sys.join("class/thermal")) {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if !name.starts_with("thermal_zone") || !dir.join("temp").exists() {
                continue;
            }
            let kind = std::fs::read_to_string(dir.join("type")).map(|s| s.trim().to_string()).unwrap_or_default();
            let label = if kind.is_empty() { format!("thermal.{name}") } else { format!("thermal.{kind}.{name}") };
            if let Ok(stream) = StreamName::new(sanitize(&label)) {
                found.push(Hwmon::new(stream, dir.join("temp")));
            }
        }
    }
    found
}

fn sorted_dirs(path: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(path).map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    dirs.sort();
    dirs
}

/// Keeps the characters stream names allow; truncates to the limit.
fn sanitize(s: &str) -> String {
    let mut out: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    out.truncate(StreamName::MAX_LEN);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_and_reads_a_fake_sysfs() {
        let root = std::env::temp_dir().join(format!("edgeseal-hwmon-{}", std::process::id()));
        let chip = root.join("class/hwmon/hwmon0");
        std::fs::create_dir_all(&chip).unwrap();
        std::fs::write(chip.join("name"), "coretemp\n").unwrap();
        std::fs::write(chip.join("temp1_input"), "45000\n").unwrap();
        std::fs::write(chip.join("temp2_input"), "garbage\n").unwrap();
        let zone = root.join("class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("temp"), "40000").unwrap();
        let mut found = discover(&root);
        assert_eq!(found.len(), 2, "thermal zones are only a fallback");
        assert_eq!(found[0].stream.as_str(), "hwmon.coretemp.hwmon0.temp1");
        let r = found[0].read(5).unwrap();
        assert_eq!(r[0].value, Value::Scalar { value: 45.0, unit: "°C".into(), label: None });
        assert!(matches!(found[1].read(5), Err(Error::BadValue { .. })));
        std::fs::remove_dir_all(chip).unwrap();
        let found = discover(&root);
        assert_eq!(found[0].stream.as_str(), "thermal.thermal_zone0");
        std::fs::remove_dir_all(root).unwrap();
    }
}
