//! The run as a terminal table, a Markdown report and JSON, with B/A ratios per
//! metric when several targets ran side by side.

use std::fmt::Write;

use crate::runner::{BenchResult, LevelResult};
use crate::stats::Summary;

fn ms(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{:.0}", s * 1e3))
}

fn ms1(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{:.1}", s * 1e3))
}

const HEADER: [&str; 16] = [
    "target",
    "level",
    "ok/fail",
    "out tok/s",
    "req/s",
    "TTFT p50",
    "TTFT p90",
    "TTFT p99",
    "TPOT p50",
    "TPOT p99",
    "ITL p50",
    "ITL p99",
    "e2e p50",
    "goodput",
    "srv TTFT p50",
    "prefix hit",
];

fn row(l: &LevelResult) -> Vec<String> {
    let s = &l.summary;
    vec![
        l.target.clone(),
        l.label.clone(),
        format!("{}/{}", s.requests - s.failed, s.failed),
        format!("{:.1}", s.output_tokens_per_s),
        format!("{:.2}", s.requests_per_s),
        ms(s.ttft.p50),
        ms(s.ttft.p90),
        ms(s.ttft.p99),
        ms1(s.tpot.p50),
        ms1(s.tpot.p99),
        ms1(s.itl.p50),
        ms1(s.itl.p99),
        ms(s.e2e.p50),
        match (s.goodput_rps, s.slo_attainment) {
            (Some(g), Some(a)) => format!("{g:.2} ({:.0}%)", a * 100.0),
            (Some(g), None) => format!("{g:.2}"),
            _ => "-".into(),
        },
        ms(s.server_ttft.p50),
        s.prefix_hit_rate
            .map_or("-".into(), |h| format!("{:.0}%", h * 100.0)),
    ]
}

/// The metrics compared between targets: (name, value, whether higher is better).
fn compared(s: &Summary) -> [(&'static str, Option<f64>, bool); 8] {
    [
        ("output tok/s", Some(s.output_tokens_per_s), true),
        ("TTFT p50", s.ttft.p50, false),
        ("TTFT p99", s.ttft.p99, false),
        ("TPOT p50", s.tpot.p50, false),
        ("ITL p50", s.itl.p50, false),
        ("ITL p99", s.itl.p99, false),
        ("e2e p50", s.e2e.p50, false),
        ("goodput", s.goodput_rps, true),
    ]
}

/// Rows of `other / first target` per level.
fn ratio_rows(r: &BenchResult) -> Vec<Vec<String>> {
    let Some(base) = r.targets.first() else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for other in r.targets.iter().skip(1) {
        for a in r.of_target(&base.name) {
            let Some(b) = r.of_target(&other.name).find(|b| b.level == a.level) else {
                continue;
            };
            let mut row = vec![format!("{} / {}", other.name, base.name), a.label.clone()];
            for ((_, va, _), (_, vb, _)) in
                compared(&a.summary).iter().zip(compared(&b.summary).iter())
            {
                row.push(match (va, vb) {
                    (Some(x), Some(y)) if *x > 0.0 => format!("{:.2}x", y / x),
                    _ => "-".into(),
                });
            }
            rows.push(row);
        }
    }
    rows
}

fn ratio_header() -> Vec<String> {
    let mut h = vec!["ratio".to_string(), "level".to_string()];
    h.extend(
        compared(&Summary::default())
            .iter()
            .map(|(n, _, _)| n.to_string()),
    );
    h
}

fn text_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i < 2 {
                let _ = write!(out, "{c:<w$}  ");
            } else {
                let _ = write!(out, "{c:>w$}  ");
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&mut out, header);
    for r in rows {
        line(&mut out, r);
    }
    out
}

fn md_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        " --- |".repeat(header.len())
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out
}

/// The summary printed at the end of a run.
pub fn terminal(r: &BenchResult) -> String {
    let header: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
    let rows: Vec<Vec<String>> = r.levels.iter().map(row).collect();
    let mut out = format!(
        "{}\nlatencies in ms (e2e too); SLO: {}\n\n",
        r.workload,
        slo_text(r)
    );
    out.push_str(&text_table(&header, &rows));
    let ratios = ratio_rows(r);
    if !ratios.is_empty() {
        out.push('\n');
        out.push_str(&text_table(&ratio_header(), &ratios));
    }
    for l in &r.levels {
        if let Some(e) = l.records.iter().find_map(|x| x.error.as_deref()) {
            let _ = writeln!(
                out,
                "\n{} {}: {} failed, first: {e}",
                l.target, l.label, l.summary.failed
            );
        }
    }
    out
}

fn slo_text(r: &BenchResult) -> String {
    if r.slo.is_empty() {
        "none".into()
    } else {
        r.slo.to_string()
    }
}

/// The Markdown report (`report.md`).
pub fn markdown(r: &BenchResult, plots: &[String]) -> String {
    let header: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
    let rows: Vec<Vec<String>> = r.levels.iter().map(row).collect();
    let mut out = String::new();
    let _ = writeln!(out, "# inferd bench: {}\n", r.workload);
    if !r.command.is_empty() {
        let _ = writeln!(out, "```sh\n{}\n```\n", r.command);
    }
    let targets: Vec<String> = r
        .targets
        .iter()
        .map(|t| format!("`{}` = {} (model `{}`)", t.name, t.base, t.model))
        .collect();
    let _ = writeln!(
        out,
        "Targets: {}. {} requests per level and target, seed {}, SLO for goodput: {}. \
         Levels alternate between targets. Latencies in ms; TTFT, TPOT, ITL and e2e are \
         measured by this client; \"srv TTFT\" is the server's own report where it sends one.\n",
        targets.join(", "),
        r.requests_per_level,
        r.seed,
        slo_text(r)
    );
    out.push_str(&md_table(&header, &rows));
    let ratios = ratio_rows(r);
    if !ratios.is_empty() {
        let _ = writeln!(out, "\nRatios (second target over the first; below 1 is better for latencies, above 1 for throughput and goodput):\n");
        out.push_str(&md_table(&ratio_header(), &ratios));
    }
    if !plots.is_empty() {
        out.push('\n');
        for p in plots {
            let _ = writeln!(out, "![{p}]({p})");
        }
    }
    let failures: Vec<&str> = r
        .levels
        .iter()
        .flat_map(|l| l.records.iter().filter_map(|x| x.error.as_deref()))
        .take(5)
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFirst failures:\n");
        for f in failures {
            let _ = writeln!(out, "- `{}`", f.replace('`', "'"));
        }
    }
    out
}
