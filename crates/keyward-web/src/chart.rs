//! Bar charts drawn on the server as SVG: no script, nothing inline for the
//! CSP to allow, readable by screen readers (`role="img"`, an `aria-label`,
//! and a `<title>` per bar with its exact value), and styled by `app.css`.

use maud::{html, Markup};

/// Width and height of the drawing, in SVG units (the CSS scales it).
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 240.0;
/// Room for the value axis on the left and the bucket labels below.
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 8.0;

/// One bar: its label (a bucket's time, a group's name), its value, and the
/// value as people read it (`$1.23`, `4,096 tokens`).
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// Shown under the bar (when there is room) and in its title.
    pub label: String,
    /// Its height, relative to the tallest bar.
    pub value: f64,
    /// The exact value, in its title.
    pub shown: String,
}

/// A bar chart titled `title` (its accessible name). Bars scale to the
/// tallest; an empty or all-zero series draws the axes and says so.
pub fn bars(title: &str, data: &[Bar]) -> Markup {
    let max = data.iter().map(|b| b.value).fold(0.0_f64, f64::max);
    let plot_w = WIDTH - LEFT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = if data.is_empty() {
        plot_w
    } else {
        plot_w / data.len() as f64
    };
    // At most about twelve labels under the axis, whatever the bar count.
    let every = data.len().div_ceil(12).max(1);
    let top_label = data
        .iter()
        .find(|b| b.value == max)
        .map(|b| b.shown.clone())
        .unwrap_or_default();
    html! {
        svg.chart role="img" aria-label=(title) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
            xmlns="http://www.w3.org/2000/svg" {
            title { (title) }
            line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
            line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH) y2=(HEIGHT - BOTTOM) {}
            @if max > 0.0 {
                text x=(LEFT - 4.0) y=(TOP + 10.0) text-anchor="end" { (top_label) }
            }
            text x=(LEFT - 4.0) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
            @if max <= 0.0 {
                text x=(LEFT + plot_w / 2.0) y=(TOP + plot_h / 2.0) text-anchor="middle" { "No usage in this period" }
            }
            @for (i, b) in data.iter().enumerate() {
                @let h = if max > 0.0 { (b.value.max(0.0) / max) * plot_h } else { 0.0 };
                @let x = LEFT + slot * i as f64 + slot * 0.1;
                rect.bar x=(round(x)) y=(round(HEIGHT - BOTTOM - h)) width=(round(slot * 0.8)) height=(round(h)) {
                    title { (b.label) ": " (b.shown) }
                }
                @if i % every == 0 {
                    text x=(round(x + slot * 0.4)) y=(HEIGHT - BOTTOM + 16.0) text-anchor="middle" { (b.label) }
                }
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

    fn bar(label: &str, value: f64) -> Bar {
        Bar {
            label: label.into(),
            value,
            shown: format!("{value}"),
        }
    }

    fn heights(svg: &str) -> Vec<f64> {
        svg.split("<rect")
            .skip(1)
            .map(|r| {
                let h = r.split("height=\"").nth(1).unwrap();
                h[..h.find('"').unwrap()].parse().unwrap()
            })
            .collect()
    }

    #[test]
    fn bars_scale_to_the_tallest() {
        let svg = bars("Cost", &[bar("a", 1.0), bar("b", 4.0), bar("c", 2.0)]).into_string();
        let h = heights(&svg);
        let plot = HEIGHT - TOP - BOTTOM;
        assert_eq!(h, vec![round(plot / 4.0), round(plot), round(plot / 2.0)]);
        assert!(svg.contains("role=\"img\"") && svg.contains("aria-label=\"Cost\""));
        assert!(svg.contains("<title>b: 4</title>"), "{svg}");
    }

    #[test]
    fn an_empty_series_draws_axes_and_says_so() {
        for data in [vec![], vec![bar("a", 0.0)]] {
            let svg = bars("Cost", &data).into_string();
            assert!(svg.contains("No usage in this period"), "{svg}");
            assert!(heights(&svg).iter().all(|h| *h == 0.0));
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn labels_cannot_inject_markup() {
        let svg = bars("<script>", &[bar("</title><script>x</script>", 1.0)]).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;/title&gt;&lt;script&gt;"));
    }
}
