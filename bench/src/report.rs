//! The table printed at the end, and the raw results file.

use serde::Serialize;
use serde_json::Value;

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub phase: String,
    pub metric: String,
    /// Switchboard's figure (median over rounds where there are rounds).
    pub ours: String,
    /// The reference's (or the baseline's) figure, if any.
    pub reference: String,
    /// ours / reference: the median of per-round ratios where interleaved.
    pub ratio: Option<f64>,
    pub goal: String,
    /// Whether the goal holds (None: no goal, or not measurable).
    pub holds: Option<bool>,
}

impl Row {
    pub fn new(phase: &str, metric: &str, ours: String) -> Self {
        Self {
            phase: phase.into(),
            metric: metric.into(),
            ours,
            reference: String::new(),
            ratio: None,
            goal: String::new(),
            holds: None,
        }
    }

    pub fn reference(mut self, reference: String) -> Self {
        self.reference = reference;
        self
    }

    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    /// A goal and whether it holds.
    pub fn goal(mut self, goal: &str, holds: bool) -> Self {
        self.goal = goal.into();
        self.holds = Some(holds);
        self
    }

    /// A goal stated for information (e.g. "quiet machine" targets).
    pub fn note(mut self, goal: &str) -> Self {
        self.goal = goal.into();
        self
    }
}

/// What a phase hands back: table rows and raw data.
#[derive(Debug, Default)]
pub struct PhaseOut {
    pub rows: Vec<Row>,
    pub raw: Value,
}

/// Format a number with sensible precision.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        "n/a".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// The table as Markdown (readable in a terminal too).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| phase | metric | switchboard | reference | ratio | goal | holds |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let ratio = r.ratio.map(|x| format!("{x:.2}x")).unwrap_or_default();
        let holds = match r.holds {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.phase, r.metric, r.ours, r.reference, ratio, r.goal, holds
        ));
    }
    out
}

/// The machine, for the record.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "memory": mem,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
