//! The fleet benchmark's outputs: `fleet-<N>.json` (everything),
//! `fleet-<N>.png` (nodes there over time, per operation) and `fleet.md` (one
//! table over every `fleet-*.json` of the directory).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use super::run::{BenchResult, is_result_file};

/// The font of the plot's text (Debian's fonts-dejavu-core).
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Writes `fleet-<N>.json` and `fleet-<N>.png` into `dir`, then rewrites
/// `fleet.md` from every result there. Returns the paths written.
///
/// # Errors
/// If a file cannot be written, or the font is missing.
pub fn write(dir: &Path, result: &BenchResult) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join(format!("fleet-{}.json", result.nodes));
    std::fs::write(&json, serde_json::to_string_pretty(result)? + "\n")?;
    let png = dir.join(format!("fleet-{}.png", result.nodes));
    plot(&png, result)?;
    let md = dir.join("fleet.md");
    std::fs::write(&md, markdown(&read_all(dir)?))?;
    Ok(vec![json, png, md])
}

/// Every result in `dir`, by node count.
///
/// # Errors
/// If a result file cannot be read or parsed.
pub fn read_all(dir: &Path) -> Result<Vec<BenchResult>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_result_file(&path) {
            let text = std::fs::read_to_string(&path)?;
            out.push(
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?,
            );
        }
    }
    out.sort_by_key(|r: &BenchResult| r.nodes);
    Ok(out)
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

/// The markdown tables of `results`.
pub fn markdown(results: &[BenchResult]) -> String {
    let mut s = String::from(
        "# Fleet benchmark\n\n\
         Written by `benches/cluster.sh` (`make bench`); method in benches/README.md. \
         Requests counted from the API server's audit log by User-Agent; \
         per node = total / N.\n\n\
         | N | fleet | operation | time s | last agent write s | agent writes/node | agent reads/node | controller writes/node | controller reads/node | API server CPU s | etcd CPU s | agents CPU s | controller CPU s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        for op in &r.operations {
            let p = &op.per_node;
            s.push_str(&format!(
                "| {} | {:?} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.1} | {} |\n",
                r.nodes,
                r.fleet,
                op.name,
                num(op.seconds, 2),
                num(op.last_agent_write_s, 2),
                p.agent_writes,
                p.agent_reads,
                p.controller_writes,
                p.controller_reads,
                num(op.cpu_s.apiserver, 1),
                num(op.cpu_s.etcd, 1),
                op.cpu_s.agents,
                num(op.cpu_s.controller, 1),
            ));
        }
    }
    s.push_str(
        "\n| N | fleet | date | CPUs | startup s | agents RSS idle MiB (per agent) | after load MiB (per agent) | controller RSS after load MiB |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let m = &r.memory_mib;
        s.push_str(&format!(
            "| {} | {:?} | {} | {} | {:.1} | {:.1} ({:.2}) | {:.1} ({:.2}) | {} |\n",
            r.nodes,
            r.fleet,
            r.date,
            r.cpus,
            r.startup_s,
            m.agents_idle_total,
            m.agent_idle,
            m.agents_after_load_total,
            m.agent_after_load,
            num(m.controller_after_load, 1),
        ));
    }
    s
}

fn register_font() -> Result<()> {
    static FONT_BYTES: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    if FONT_BYTES.get().is_some() {
        return Ok(());
    }
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = FONT_BYTES.get_or_init(|| Box::leak(bytes.into_boxed_slice()));
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))
}

/// Nodes there over time, one line per operation that waits for nodes.
fn plot(path: &Path, r: &BenchResult) -> Result<()> {
    register_font()?;
    let ops: Vec<_> = r
        .operations
        .iter()
        .filter(|o| !o.timeline.is_empty())
        .collect();
    let x_max = ops
        .iter()
        .filter_map(|o| o.timeline.last().map(|p| p.0))
        .fold(1.0_f64, f64::max)
        * 1.05;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "kmm-rs: {} nodes ({:?} fleet, {} CPUs), nodes there after each change",
                r.nodes, r.fleet, r.cpus
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0..r.nodes + r.nodes / 20 + 1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the change")
        .y_desc("nodes")
        .draw()
        .map_err(plot_error)?;
    let colours = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (op, colour) in ops.iter().zip(colours.iter().cycle()) {
        // A step line: the count holds until the next change.
        let mut points = Vec::with_capacity(op.timeline.len() * 2);
        for (i, (t, c)) in op.timeline.iter().enumerate() {
            if i > 0 {
                points.push((*t, op.timeline[i - 1].1));
            }
            points.push((*t, *c));
        }
        let colour = *colour;
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(plot_error)?
            .label(format!("{} ({})", op.name, num(op.seconds, 1) + " s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting: {e}")
}
