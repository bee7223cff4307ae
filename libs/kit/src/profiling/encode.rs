//! A CPU profile's samples in the two formats tools read: pprof's protobuf
//! (`go tool pprof`, Grafana Pyroscope, speedscope) and folded stacks
//! (`inferno-flamegraph`, `flamegraph.pl`, speedscope).
//!
//! The pprof messages are the subset of `perftools.profiles.Profile`
//! (github.com/google/pprof, proto/profile.proto) a CPU profile uses,
//! written as prost structs with the same field numbers: the `pprof`
//! crate's own encoder would pull a second prost into the build.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use pprof::Report;

#[derive(Clone, PartialEq, prost::Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
}

/// The string table: index 0 is the empty string, as the format requires.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut strings = Self::default();
        strings.get("");
        strings
    }

    fn get(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.index.get(text) {
            return index;
        }
        let index = i64::try_from(self.table.len()).unwrap_or(i64::MAX);
        self.table.push(text.to_owned());
        self.index.insert(text.to_owned(), index);
        index
    }
}

/// The report as an encoded `perftools.profiles.Profile`: two values per
/// sample (sample count, CPU nanoseconds), one location per symbol (leaf
/// first, inlined frames included) and the thread as a label.
pub(crate) fn pprof(report: &Report) -> Vec<u8> {
    let mut strings = Strings::new();
    let mut functions: Vec<Function> = Vec::new();
    let mut locations: Vec<Location> = Vec::new();
    let mut by_name: HashMap<String, u64> = HashMap::new();
    let frequency = i64::from(report.timing.frequency.max(1));
    let period = 1_000_000_000 / frequency;
    let thread = strings.get("thread");
    let mut samples = Vec::with_capacity(report.data.len());
    for (frames, count) in &report.data {
        let mut location_id = Vec::new();
        for symbol in frames.frames.iter().flatten() {
            let name = symbol.name();
            let id = match by_name.get(&name) {
                Some(&id) => id,
                None => {
                    let id = u64::try_from(functions.len()).unwrap_or(u64::MAX) + 1;
                    functions.push(Function {
                        id,
                        name: strings.get(&name),
                        system_name: strings.get(&symbol.sys_name()),
                        filename: strings.get(&symbol.filename()),
                    });
                    locations.push(Location {
                        id,
                        line: vec![Line {
                            function_id: id,
                            line: i64::from(symbol.lineno()),
                        }],
                    });
                    by_name.insert(name, id);
                    id
                }
            };
            location_id.push(id);
        }
        let count = i64::try_from(*count).unwrap_or(i64::MAX);
        samples.push(Sample {
            location_id,
            value: vec![count, count.saturating_mul(period)],
            label: vec![Label {
                key: thread,
                str: strings.get(&frames.thread_name_or_id()),
            }],
        });
    }
    let cpu = ValueType {
        r#type: strings.get("cpu"),
        unit: strings.get("nanoseconds"),
    };
    let profile = Profile {
        sample_type: vec![
            ValueType {
                r#type: strings.get("samples"),
                unit: strings.get("count"),
            },
            cpu,
        ],
        sample: samples,
        location: locations,
        function: functions,
        string_table: strings.table,
        time_nanos: nanos_since_epoch(report.timing.start_time),
        duration_nanos: i64::try_from(report.timing.duration.as_nanos()).unwrap_or(i64::MAX),
        period_type: Some(cpu),
        period,
    };
    prost::Message::encode_to_vec(&profile)
}

fn nanos_since_epoch(time: std::time::SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The report as folded stacks: one line per distinct stack, `thread;root;…;leaf count`,
/// heaviest first.
pub(crate) fn folded(report: &Report) -> String {
    let mut lines: Vec<(String, isize)> = report
        .data
        .iter()
        .map(|(frames, count)| {
            let mut line = frames.thread_name_or_id();
            for symbol in frames
                .frames
                .iter()
                .rev()
                .flat_map(|frame| frame.iter().rev())
            {
                // `;` separates frames and a space the count: neither may
                // appear inside a name.
                line.push(';');
                line.push_str(&symbol.name().replace([';', ' '], "_"));
            }
            (line, *count)
        })
        .collect();
    lines.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut text = String::new();
    for (line, count) in lines {
        let _ = writeln!(text, "{line} {count}");
    }
    text
}

/// The string table and total sample count of an encoded profile.
#[cfg(test)]
pub(crate) fn tests_decode(bytes: &[u8]) -> (Vec<String>, i64) {
    let profile = <Profile as prost::Message>::decode(bytes).unwrap_or_default();
    let samples = profile
        .sample
        .iter()
        .filter_map(|sample| sample.value.first())
        .sum();
    (profile.string_table, samples)
}
