//! Stacked bar charts drawn on the server as SVG.
//!
//! Why SVG from the server and not a chart library: the usage page needs bars
//! over time split by group, which is a few rectangles per bucket; drawing them
//! here keeps the dashboard free of third-party script (nothing to vendor,
//! audit or allow in the CSP), works without JavaScript, costs the browser
//! nothing to lay out, and lets screen readers read it: `role="img"`, an
//! `aria-label`, and a `<title>` on every segment with its exact value. Colours
//! come from `app.css` classes (`s0` … `s8`), so nothing is inline for the CSP.

use maud::{html, Markup};

/// Width and height of the drawing, in SVG units (the CSS scales it).
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 240.0;
/// Room for the value axis on the left and the bucket labels below.
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 8.0;
/// Colour classes in `app.css`; series beyond the last reuse it.
pub const COLOURS: usize = 9;

/// One series: a group's values, one per bucket (in the chart's bucket order).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The group's name, in the legend and in every segment's title.
    pub name: String,
    /// Its value in each bucket.
    pub values: Vec<f64>,
}

/// A stacked bar chart titled `title` (its accessible name): one bar per
/// bucket (`labels`), split by `series`, scaled to the tallest bar; `shown`
/// writes a value as people read it (`$1.23`, `4,096`). An empty or all-zero
/// chart draws the axes and says so.
pub fn stacked(
    title: &str,
    labels: &[String],
    series: &[Series],
    shown: fn(f64) -> String,
) -> Markup {
    let value = |s: &Series, i: usize| s.values.get(i).copied().unwrap_or(0.0).max(0.0);
    let totals: Vec<f64> = (0..labels.len())
        .map(|i| series.iter().map(|s| value(s, i)).sum())
        .collect();
    let max = totals.iter().copied().fold(0.0_f64, f64::max);
    let plot_w = WIDTH - LEFT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / labels.len().max(1) as f64;
    // At most about twelve labels under the axis, whatever the bar count.
    let every = labels.len().div_ceil(12).max(1);
    // Each bar's segments, bottom up: (series index, y, height, value).
    let bars: Vec<Vec<(usize, f64, f64, f64)>> = (0..labels.len())
        .map(|i| {
            let mut base = HEIGHT - BOTTOM;
            let mut segments = Vec::new();
            for (n, s) in series.iter().enumerate() {
                let v = value(s, i);
                if v > 0.0 && max > 0.0 {
                    let h = v / max * plot_h;
                    base -= h;
                    segments.push((n, base, h, v));
                }
            }
            segments
        })
        .collect();
    html! {
        svg.chart role="img" aria-label=(title) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
            xmlns="http://www.w3.org/2000/svg" {
            title { (title) }
            line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
            line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
            @if max > 0.0 {
                text x=(LEFT - 4.0) y=(TOP + 10.0) text-anchor="end" { (shown(max)) }
            } @else {
                text x=(LEFT + plot_w / 2.0) y=(TOP + plot_h / 2.0) text-anchor="middle" { "No usage in this period" }
            }
            text x=(LEFT - 4.0) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
            @for (i, (label, segments)) in labels.iter().zip(&bars).enumerate() {
                @let x = round(LEFT + slot * i as f64 + slot * 0.1);
                @for (n, y, h, v) in segments {
                    rect class={ "bar s" ((*n).min(COLOURS - 1)) } x=(x) y=(round(*y)) width=(round(slot * 0.8)) height=(round(*h)) {
                        title { (label) " · " (series[*n].name) ": " (shown(*v)) }
                    }
                }
                @if i % every == 0 {
                    text x=(round(x + slot * 0.4)) y=(HEIGHT - BOTTOM + 16.0) text-anchor="middle" { (label) }
                }
            }
        }
    }
}

/// The legend of a [`stacked`] chart: each series' colour and name.
pub fn legend(series: &[Series]) -> Markup {
    html! {
        ul.legend {
            @for (n, s) in series.iter().enumerate() {
                li { span class={ "swatch s" (n.min(COLOURS - 1)) } aria-hidden="true" {} (s.name) }
            }
        }
    }
}

/// Two decimals are plenty for a drawing and keep the page small.
fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, values: &[f64]) -> Series {
        Series {
            name: name.into(),
            values: values.to_vec(),
        }
    }

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i}")).collect()
    }

    fn plain(v: f64) -> String {
        format!("{v}")
    }

    /// (class, height) of every segment, in drawing order.
    fn segments(svg: &str) -> Vec<(String, f64)> {
        svg.split("<rect")
            .skip(1)
            .map(|r| {
                let attr = |name: &str| {
                    let v = r.split(&format!("{name}=\"")).nth(1).unwrap();
                    v[..v.find('"').unwrap()].to_owned()
                };
                (attr("class"), attr("height").parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn bars_stack_their_series_and_scale_to_the_tallest_total() {
        let svg = stacked(
            "Cost",
            &labels(2),
            &[series("a", &[1.0, 3.0]), series("b", &[1.0, 1.0])],
            plain,
        )
        .into_string();
        let plot = HEIGHT - TOP - BOTTOM;
        let got = segments(&svg);
        assert_eq!(
            got,
            vec![
                ("bar s0".into(), round(plot / 4.0)),
                ("bar s1".into(), round(plot / 4.0)),
                ("bar s0".into(), round(plot * 3.0 / 4.0)),
                ("bar s1".into(), round(plot / 4.0)),
            ]
        );
        assert!(svg.contains("<title>d1 · a: 3</title>"), "{svg}");
        assert!(svg.contains("role=\"img\"") && svg.contains("aria-label=\"Cost\""));
        assert!(
            svg.contains(">4</text>"),
            "the axis names the tallest total: {svg}"
        );
    }

    #[test]
    fn an_empty_chart_draws_axes_and_says_so() {
        for data in [vec![], vec![series("a", &[0.0, 0.0])]] {
            let svg = stacked("Cost", &labels(2), &data, plain).into_string();
            assert!(svg.contains("No usage in this period"), "{svg}");
            assert!(segments(&svg).is_empty());
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
        let svg = stacked("Cost", &[], &[], plain).into_string();
        assert!(svg.contains("No usage in this period"));
    }

    #[test]
    fn series_beyond_the_palette_share_its_last_colour() {
        let many: Vec<Series> = (0..12).map(|i| series(&format!("g{i}"), &[1.0])).collect();
        let svg = stacked("Cost", &labels(1), &many, plain).into_string();
        let classes: Vec<String> = segments(&svg).into_iter().map(|(c, _)| c).collect();
        assert_eq!(classes[8], "bar s8");
        assert_eq!(classes[11], "bar s8");
        assert!(legend(&many).into_string().contains("swatch s8"));
    }

    #[test]
    fn names_and_labels_cannot_inject_markup() {
        let svg = stacked(
            "<script>",
            &["</title><script>x</script>".to_owned()],
            &[series("<img src=x>", &[1.0])],
            plain,
        )
        .into_string();
        assert!(!svg.contains("<script>") && !svg.contains("<img"), "{svg}");
        assert!(svg.contains("&lt;/title&gt;&lt;script&gt;"));
        assert!(!legend(&[series("<b>", &[])]).into_string().contains("<b>"));
    }
}
