//! SVG pictures: the bench table as cycles per operation on a log scale
//! (`vmm bench --plot`), and where the exits of one run went, by reason and by hottest
//! trap site with its instruction class (`vmm run --profile`).
//!
//! Only plotters' SVG backend is used: it writes text as `<text>` elements and estimates
//! their extent, so no system font (fontconfig, TrueType files) is read.

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use vmm::vm::stats::SiteCount;

use crate::bench::{Column, Figure, Table};

/// Width and height of the bench picture, in pixels.
const BENCH_SIZE: (u32, u32) = (1200, 560);
/// Width of the profile picture; its height grows with the number of bars.
const PROFILE_WIDTH: u32 = 1000;
/// Height of one bar of the profile picture, with its gap.
const PROFILE_BAR: u32 = 24;

/// A drawing failed; plotters' error, as text.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the picture: {0}")]
pub struct PlotError(String);

fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// The colour of a bench column.
fn column_colour(column: Column) -> RGBColor {
    match column {
        Column::Native => RGBColor(0x4c, 0x72, 0xb0),
        Column::Translate => RGBColor(0xdd, 0x84, 0x52),
        Column::Patch => RGBColor(0x93, 0x70, 0xc4),
        Column::Qemu => RGBColor(0x55, 0xa8, 0x68),
    }
}

/// The legend name of a bench column.
fn column_label(column: Column) -> &'static str {
    match column {
        Column::Native => "native",
        Column::Translate => "vmm --exec translate (translation cache)",
        Column::Patch => "vmm --exec patch (in-place traps)",
        Column::Qemu => "QEMU TCG",
    }
}

/// The bench table as an SVG document: one group of bars per operation, one bar per
/// environment that measured it, cycles per operation on a log scale. Cells without a
/// figure (not applicable, failed) have no bar.
pub fn bench_svg(table: &Table) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, BENCH_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let measured: Vec<f64> = table
            .rows
            .iter()
            .flat_map(|row| row.figures.iter())
            .filter_map(|f| match f {
                Figure::Measured { cycles_per_op, .. } => Some(*cycles_per_op),
                _ => None,
            })
            .filter(|c| *c > 0.0)
            .collect();
        let lowest = measured.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = measured.iter().copied().fold(0.0, f64::max);
        let (low, high) = if measured.is_empty() {
            (1.0, 10.0)
        } else {
            // Headroom above the tallest bar keeps the legend clear of the bars.
            (lowest / 2.0, highest * 30.0)
        };
        let count = i32::try_from(table.rows.len().max(1)).unwrap_or(i32::MAX);
        let caption = format!(
            "cycles per operation, median of {} run{} (log scale)",
            table.reps,
            if table.reps == 1 { "" } else { "s" }
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((0..count).into_segmented(), (low..high).log_scale())
            .map_err(err)?;
        let names: Vec<&str> = table.rows.iter().map(|r| r.name).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(names.len().max(1))
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(*i)
                    .ok()
                    .and_then(|i| names.get(i))
                    .map_or_else(String::new, |name| (*name).to_string()),
                SegmentValue::Last => String::new(),
            })
            .x_label_style(("sans-serif", 12))
            .y_desc("cycles per operation")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()
            .map_err(err)?;
        // Bars sit side by side inside their operation's segment: pixel margins place
        // them, since the segment is the coordinate's unit.
        let (plot_width, _) = chart.plotting_area().dim_in_pixel();
        let segment = plot_width / u32::try_from(count).unwrap_or(1).max(1);
        let columns = u32::try_from(Column::ALL.len()).unwrap_or(1);
        let bar = segment * 8 / 10 / columns;
        for (c, column) in Column::ALL.into_iter().enumerate() {
            let colour = column_colour(column);
            let bars: Vec<Rectangle<(SegmentValue<i32>, f64)>> = table
                .rows
                .iter()
                .enumerate()
                .filter_map(|(i, row)| match row.figure(column) {
                    Figure::Measured { cycles_per_op, .. } => {
                        let i = i32::try_from(i).ok()?;
                        let left = segment / 10 + u32::try_from(c).ok()? * bar;
                        let right = segment.saturating_sub(left + bar);
                        let mut rect = Rectangle::new(
                            [
                                (SegmentValue::Exact(i), low),
                                (SegmentValue::Exact(i + 1), *cycles_per_op),
                            ],
                            colour.filled(),
                        );
                        rect.set_margin(0, 0, left, right);
                        Some(rect)
                    }
                    _ => None,
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(column_label(column))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Where the exits of a run went, as an SVG document: exits per reason above, the
/// hottest trap sites (address and instruction class) below, both as horizontal bars.
/// `reasons` are (name, count) pairs; reasons without exits are left out.
pub fn profile_svg(reasons: &[(&str, u64)], sites: &[SiteCount]) -> Result<String, PlotError> {
    let reasons: Vec<(String, u64)> = reasons
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| ((*name).to_string(), *n))
        .collect();
    let sites: Vec<(String, u64)> = sites
        .iter()
        .map(|s| (format!("{} {}", s.address, s.class), s.count))
        .collect();
    let total: u64 = reasons.iter().map(|(_, n)| n).sum();
    let bars = u32::try_from(reasons.len().max(1) + sites.len().max(1)).unwrap_or(u32::MAX);
    let height = bars.saturating_mul(PROFILE_BAR).saturating_add(200);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (PROFILE_WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let split = u32::try_from(reasons.len().max(1))
            .unwrap_or(u32::MAX)
            .saturating_mul(PROFILE_BAR)
            .saturating_add(100);
        let (top, bottom) = root.split_vertically(split);
        horizontal_bars(
            &top,
            &format!("exits by reason ({total} in all)"),
            &reasons,
            RGBColor(0xdd, 0x84, 0x52),
        )?;
        horizontal_bars(
            &bottom,
            "hottest trap sites (guest address, instruction class)",
            &sites,
            RGBColor(0x4c, 0x72, 0xb0),
        )?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// One horizontal bar per (label, count), first at the top, with the count at its end.
fn horizontal_bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    bars: &[(String, u64)],
    colour: RGBColor,
) -> Result<(), PlotError> {
    let count = i32::try_from(bars.len().max(1)).unwrap_or(i32::MAX);
    let most = bars.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    // Room after the longest bar for its count.
    let right = most.saturating_add(most / 6).saturating_add(1);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(260)
        .build_cartesian_2d(0..right, (0..count).into_segmented())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(bars.len().max(1))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(count - 1 - i)
                .ok()
                .and_then(|k| bars.get(k))
                .map_or_else(String::new, |(label, _)| label.clone()),
            SegmentValue::Last => String::new(),
        })
        .x_desc("exits")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(k, (_, n))| {
            let row = count - 1 - i32::try_from(k).unwrap_or(i32::MAX);
            let mut bar = Rectangle::new(
                [
                    (0, SegmentValue::Exact(row)),
                    (*n, SegmentValue::Exact(row + 1)),
                ],
                colour.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(k, (_, n))| {
            let row = count - 1 - i32::try_from(k).unwrap_or(i32::MAX);
            Text::new(
                format!(" {n}"),
                (*n, SegmentValue::CenterOf(row)),
                TextStyle::from(("sans-serif", 13).into_font())
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            )
        }))
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Results, OPERATIONS};

    fn table() -> Table {
        let mut results = Results::default();
        for (i, op) in OPERATIONS.iter().enumerate() {
            let base = f64::from(u32::try_from(i + 1).expect("few")) * 10.0;
            results
                .entry(op.name, Column::Native)
                .cycles_per_op
                .push(base);
            results
                .entry(op.name, Column::Translate)
                .cycles_per_op
                .push(base * 100.0);
            results
                .entry(op.name, Column::Patch)
                .cycles_per_op
                .push(base * 150.0);
            results
                .entry(op.name, Column::Qemu)
                .cycles_per_op
                .push(base * 20.0);
        }
        Table::build(OPERATIONS, &results, |_, _| None, None, 1)
    }

    #[test]
    fn bench_picture_has_every_operation_and_environment() {
        let svg = bench_svg(&table()).expect("drawn");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for op in OPERATIONS {
            assert!(svg.contains(op.name), "no label {}", op.name);
        }
        for column in Column::ALL {
            assert!(svg.contains(column_label(column)), "no legend {column:?}");
            let RGBColor(r, g, b) = column_colour(column);
            let fill = format!("#{r:02X}{g:02X}{b:02X}");
            let bars = svg.matches(&fill).count();
            // One bar per operation, one legend swatch.
            assert_eq!(bars, OPERATIONS.len() + 1, "{column:?} bars ({fill})");
        }
    }

    #[test]
    fn bench_picture_leaves_out_cells_without_figures() {
        let mut results = Results::default();
        results
            .entry("syscall", Column::Translate)
            .cycles_per_op
            .push(5000.0);
        results
            .unavailable
            .insert(Column::Qemu, "not installed".to_string());
        let table = Table::build(&OPERATIONS[..1], &results, |_, _| None, None, 1);
        let svg = bench_svg(&table).expect("drawn");
        let RGBColor(r, g, b) = column_colour(Column::Qemu);
        assert_eq!(
            svg.matches(&format!("#{r:02X}{g:02X}{b:02X}")).count(),
            1,
            "legend only"
        );
    }

    #[test]
    fn profile_picture_names_reasons_and_sites() {
        let sites = vec![
            SiteCount {
                address: "0x00101234".to_string(),
                class: "pushf",
                count: 900,
            },
            SiteCount {
                address: "0x00105678".to_string(),
                class: "port_in",
                count: 40,
            },
        ];
        let svg = profile_svg(
            &[("rewrite_trap", 940), ("port_io", 40), ("cpuid", 0)],
            &sites,
        )
        .expect("drawn");
        for text in [
            "rewrite_trap",
            "port_io",
            "0x00101234 pushf",
            "0x00105678 port_in",
            "980 in all",
        ] {
            assert!(svg.contains(text), "no {text}");
        }
        assert!(!svg.contains("cpuid"), "a reason without exits has no bar");
    }

    #[test]
    fn empty_run_still_draws() {
        let svg = profile_svg(&[], &[]).expect("drawn");
        assert!(svg.contains("0 in all"));
    }
}
