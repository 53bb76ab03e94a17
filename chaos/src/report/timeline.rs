//! The timeline picture (`timeline.svg`): every operation's latency over
//! time coloured by outcome, fault windows shaded and labelled, leader
//! changes as vertical lines, so a person sees at a glance what each fault
//! did. Drawn with plotters' SVG backend: text is SVG `<text>`, so no
//! system fonts are needed.

use std::path::Path;

use plotters::prelude::*;

use super::{Histories, Summary};
use crate::check::leaders;
use crate::check::linearizable::Outcome;
use crate::nemesis::schedule::Nemesis;
use crate::workload::kv::KvOutcome;

/// Most points drawn; acknowledged operations are thinned past this, failed
/// and unknown ones are always drawn.
const MAX_POINTS: usize = 30_000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Ok,
    Fail,
    Unknown,
}

fn fault_colour(n: Nemesis) -> RGBColor {
    match n {
        Nemesis::Kill | Nemesis::LeaderKill => RGBColor(220, 50, 47),
        Nemesis::Pause => RGBColor(181, 137, 0),
        Nemesis::Restart => RGBColor(108, 113, 196),
        Nemesis::MemberReplace => RGBColor(211, 54, 130),
        _ => RGBColor(38, 139, 210),
    }
}

/// Draws the picture into `path`.
pub fn draw(path: &Path, s: &Summary, h: &Histories, names: &[String]) -> Result<(), String> {
    let mut points: Vec<(f64, f64, Kind)> = Vec::new();
    for o in &h.register {
        let k = match o.outcome {
            Outcome::Failed => Kind::Fail,
            Outcome::Unknown => Kind::Unknown,
            _ => Kind::Ok,
        };
        points.push((
            o.call as f64 / 1e6,
            (o.ret.saturating_sub(o.call)) as f64 / 1e3,
            k,
        ));
    }
    for o in h.kv.iter().chain(&h.watch.writes) {
        let k = match o.outcome {
            KvOutcome::Ok(_) => Kind::Ok,
            KvOutcome::Fail => Kind::Fail,
            KvOutcome::Unknown => Kind::Unknown,
        };
        points.push((
            o.call as f64 / 1e6,
            (o.ret.saturating_sub(o.call)) as f64 / 1e3,
            k,
        ));
    }
    for o in &h.deployments {
        let k = match o.outcome {
            "ok" => Kind::Ok,
            "fail" => Kind::Fail,
            _ => Kind::Unknown,
        };
        points.push((
            o.invoke_us as f64 / 1e6,
            (o.complete_us.saturating_sub(o.invoke_us)) as f64 / 1e3,
            k,
        ));
    }
    let oks = points.iter().filter(|p| p.2 == Kind::Ok).count();
    let keep_every = oks.div_ceil(MAX_POINTS).max(1);
    let mut i = 0usize;
    points.retain(|p| {
        if p.2 != Kind::Ok {
            return true;
        }
        i += 1;
        i.is_multiple_of(keep_every)
    });
    let x_max = s
        .duration_s
        .max(points.iter().map(|p| p.0).fold(0.0, f64::max))
        + 1.0;
    let y_max = points
        .iter()
        .map(|p| p.1)
        .fold(10.0, f64::max)
        .min(60_000.0)
        * 1.1;
    let e = |e: DrawingAreaErrorKind<<SVGBackend as DrawingBackend>::ErrorType>| e.to_string();

    let root = SVGBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let title = format!(
        "keel chaos: {} masters, seed {}, {} ({} violations)",
        s.masters,
        s.seed,
        s.nemeses.join(","),
        s.violations.len()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("operation latency (ms)")
        .light_line_style(WHITE)
        .draw()
        .map_err(e)?;
    // Fault windows: injection to heal shaded, heal to recovery lighter.
    for f in &s.faults {
        let c = fault_colour(f.nemesis);
        let (a, b) = (f.start as f64 / 1e6, f.healed as f64 / 1e6);
        let r = f.recovered.map(|r| r as f64 / 1e6).unwrap_or(b).max(b);
        chart
            .draw_series([
                Rectangle::new([(a, 0.0), (b.max(a + 0.05), y_max)], c.mix(0.18).filled()),
                Rectangle::new([(b, 0.0), (r, y_max)], c.mix(0.07).filled()),
            ])
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                f.nemesis.name().to_string(),
                (a, y_max * 0.97),
                ("sans-serif", 11).into_font().color(&c),
            )))
            .map_err(e)?;
    }
    // Leader changes.
    for (at, term, leader) in leaders::changes(&h.status) {
        let x = at as f64 / 1e6;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, y_max * 0.9)],
                BLACK.mix(0.6).stroke_width(1),
            )))
            .map_err(e)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!("t{term} {}", leader_name(h, names, leader)),
                (x, y_max * 0.92),
                ("sans-serif", 10).into_font().color(&BLACK),
            )))
            .map_err(e)?;
    }
    for (kind, colour, label) in [
        (Kind::Ok, RGBColor(0, 150, 60), "ok"),
        (Kind::Fail, RGBColor(230, 140, 0), "fail"),
        (Kind::Unknown, RGBColor(200, 0, 0), "unknown (timeout)"),
    ] {
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.2 == kind)
                    .map(|p| Circle::new((p.0, p.1), 2, colour.filled())),
            )
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| Circle::new((x, y), 3, colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// The name of the member with id `leader`, from the status answers.
fn leader_name(h: &Histories, names: &[String], leader: u64) -> String {
    h.status
        .iter()
        .find(|o| o.id == leader)
        .and_then(|o| names.get(o.member))
        .cloned()
        .unwrap_or_else(|| format!("{leader:x}"))
}
