//! The results table: one row per measure, linkrelay's median beside the peers' medians from
//! the same run, the ratios, and the target (docs/benchmarks.md).

use std::fmt::Write;

/// Whether bigger or smaller is better for a measure (for ratios and targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput.
    Higher,
    /// Latency, memory, wake-ups.
    Lower,
}

/// A target a measure must meet.
#[derive(Debug, Clone)]
pub enum Target {
    /// At least this value.
    AtLeast(f64),
    /// Below this value.
    Below(f64),
    /// No target (context only).
    None,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured, with its unit.
    pub measure: String,
    /// linkrelay's median; `None` when the measurement failed or was not run.
    pub ours: Option<f64>,
    /// Unit for display ("msg/s", "ms", "MiB", "wake-ups/min").
    pub unit: &'static str,
    /// Which way is better.
    pub better: Better,
    /// Peers measured in the same run: (name, median).
    pub peers: Vec<(String, Option<f64>)>,
    /// The disk's durable floor that matches a durable row, measured in the same run:
    /// (which floor, its median in records/s).
    pub floor: Option<(String, Option<f64>)>,
    /// The target.
    pub target: Target,
    /// How the target was derived ("50% of smtp-source c1"); empty for a fixed one.
    pub target_text: String,
    /// Anything the reader must know (sample count, an error).
    pub note: String,
}

impl Row {
    /// A row without peers or target yet.
    pub fn new(measure: &str, unit: &'static str, better: Better, ours: Option<f64>) -> Row {
        Row {
            measure: measure.to_string(),
            ours,
            unit,
            better,
            peers: Vec::new(),
            floor: None,
            target: Target::None,
            target_text: String::new(),
            note: String::new(),
        }
    }

    /// Adds a peer's median.
    pub fn peer(mut self, name: &str, value: Option<f64>) -> Row {
        self.peers.push((name.to_string(), value));
        self
    }

    /// Sets the durable floor this row is compared with (`bench/src/floor.rs`).
    pub fn floor(mut self, name: &str, value: Option<f64>) -> Row {
        self.floor = Some((name.to_string(), value));
        self
    }

    /// Sets the target and how it was derived (empty for a fixed target).
    pub fn target(mut self, target: Target, text: &str) -> Row {
        self.target = target;
        self.target_text = text.to_string();
        self
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        let note = note.into();
        if !self.note.is_empty() {
            self.note.push_str("; ");
        }
        self.note.push_str(&note);
        self
    }

    /// `Some(true)` met, `Some(false)` missed, `None` no target or no figure.
    pub fn met(&self) -> Option<bool> {
        let v = self.ours?;
        match self.target {
            Target::AtLeast(t) => Some(v >= t),
            Target::Below(t) => Some(v < t),
            Target::None => None,
        }
    }
}

/// A number with a sensible number of digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// How many times better linkrelay is than a peer (>1: better), by the row's direction.
fn ratio(better: Better, ours: f64, peer: f64) -> Option<f64> {
    let r = match better {
        Better::Higher => ours / peer,
        Better::Lower => peer / ours,
    };
    r.is_finite().then_some(r)
}

/// Renders the rows as a Markdown table, followed by the notes.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| measure | linkrelay | of the disk's floor, same run | peers, same run (linkrelay's advantage) | target | met |"
    );
    let _ = writeln!(out, "|---|---:|---|---|---|---|");
    for r in rows {
        let ours = match r.ours {
            Some(v) => format!("{} {}", fmt_num(v), r.unit),
            None => "n/a".into(),
        };
        let peers: Vec<String> = r
            .peers
            .iter()
            .map(|(name, v)| match (v, r.ours) {
                (Some(p), Some(o)) => match ratio(r.better, o, *p) {
                    Some(x) => format!("{name} {} ({}x)", fmt_num(*p), fmt_num(x)),
                    None => format!("{name} {}", fmt_num(*p)),
                },
                (Some(p), None) => format!("{name} {}", fmt_num(*p)),
                (None, _) => format!("{name} n/a"),
            })
            .collect();
        let floor = match (&r.floor, r.ours) {
            (None, _) => "-".to_string(),
            (Some((name, Some(f))), Some(o)) => {
                format!("{}% of {name} {}/s", fmt_num(100.0 * o / f), fmt_num(*f))
            }
            (Some((name, Some(f))), None) => format!("{name} {}/s", fmt_num(*f)),
            (Some((name, None)), _) => format!("{name} n/a"),
        };
        let derived = match r.target_text.as_str() {
            "" => String::new(),
            text => format!(" ({text})"),
        };
        let target = match r.target {
            Target::AtLeast(t) => format!(">= {}{derived}", fmt_num(t)),
            Target::Below(t) => format!("< {}{derived}", fmt_num(t)),
            Target::None => "-".into(),
        };
        let met = match r.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let peers = if peers.is_empty() {
            "-".to_string()
        } else {
            peers.join("; ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.measure, ours, floor, peers, target, met
        );
    }
    let notes: Vec<&Row> = rows.iter().filter(|r| !r.note.is_empty()).collect();
    if !notes.is_empty() {
        let _ = writeln!(out);
        for r in notes {
            let _ = writeln!(out, "- {}: {}", r.measure, r.note);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_ratio_and_verdict() {
        let rows = vec![
            Row::new("flush", "msg/s", Better::Higher, Some(200.0))
                .floor("1 append", Some(400.0))
                .peer("peer", Some(20.0))
                .target(Target::AtLeast(500.0), "half of x"),
            Row::new("rss", "MiB", Better::Lower, Some(4.0))
                .peer("postfix", Some(19.0))
                .target(Target::Below(8.0), ""),
        ];
        let t = render(&rows);
        assert!(
            t.contains(
                "| flush | 200.0 msg/s | 50.00% of 1 append 400.0/s | peer 20.00 (10.00x) | >= 500.0 (half of x) | **no** |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| rss | 4.000 MiB | - | postfix 19.00 (4.750x) | < 8.000 | yes |"),
            "{t}"
        );
    }
}
