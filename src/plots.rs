//! Plots a person would rather look at than read, each written as SVG and PNG: training
//! curves (loss, accuracy and calibration per epoch, train vs validation) and a reliability
//! diagram (accuracy vs confidence per bin, with the gap to the diagonal, the bin counts and
//! the ECE in the title).
//!
//! Drawn with `plotters` without its font features, so nothing needs system fonts,
//! fontconfig or FreeType: SVGs carry their text as `<text>` (the viewer's font renders
//! it), and PNGs get their text from a built-in 8x8 bitmap font (`font8x8`, ASCII), drawn
//! by [`TextRaster`], a bitmap backend whose only change is text.

use std::path::{Path, PathBuf};

use font8x8::UnicodeFonts;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind,
};

use crate::metrics::Metrics;
use crate::run::EpochMetrics;
use crate::{Error, Result};

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const EXTRA: RGBColor = RGBColor(44, 160, 44);
const GAP: RGBColor = RGBColor(214, 39, 40);
const FONT: &str = "sans-serif";

/// Something drawn the same way on every backend.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Writes `dir/stem.svg` and `dir/stem.png`; returns their paths.
fn render(fig: &impl Figure, dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let (w, h) = fig.size();
    let svg_path = dir.join(format!("{stem}.svg"));
    let png_path = dir.join(format!("{stem}.png"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present().map_err(err))
            .map_err(|e| Error::file(&svg_path, format!("cannot draw: {e}")))?;
    }
    let mut rgb = vec![255u8; w as usize * h as usize * 3];
    {
        let root = TextRaster(BitMapBackend::with_buffer(&mut rgb, (w, h))).into_drawing_area();
        fig.draw(&root)
            .and_then(|_| root.present().map_err(err))
            .map_err(|e| Error::file(&png_path, format!("cannot draw: {e}")))?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::file(&png_path, format!("cannot encode the PNG: {e}")))?;
    crate::run::write_atomically(&svg_path, svg.as_bytes())?;
    crate::run::write_atomically(&png_path, &png)?;
    Ok(vec![svg_path, png_path])
}

/// Loss, accuracy and (with a validation split) calibration per epoch, train vs
/// validation: `dir/stem.svg` and `dir/stem.png`.
pub fn training_curves(history: &[EpochMetrics], dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    if history.is_empty() {
        return Err(Error::invalid("no epochs to plot"));
    }
    render(&Curves { history }, dir, stem)
}

/// The reliability diagram of `metrics`, titled `what` (e.g. "validation, epoch 10"):
/// `dir/stem.svg` and `dir/stem.png`.
pub fn reliability_diagram(
    metrics: &Metrics,
    what: &str,
    dir: &Path,
    stem: &str,
) -> Result<Vec<PathBuf>> {
    render(&Reliability { metrics, what }, dir, stem)
}

struct Curves<'a> {
    history: &'a [EpochMetrics],
}

/// A named line: its legend label, colour and (epoch, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One panel of lines over epochs.
struct Panel<'a> {
    title: &'a str,
    y_desc: &'a str,
    percent: bool,
    series: Vec<Line<'a>>,
}

impl Panel<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        epochs: usize,
    ) -> Result<(), String> {
        let values = self.series.iter().flat_map(|s| s.2.iter().map(|p| p.1));
        let (lo, hi) = values
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        let (lo, hi) = if self.percent {
            (0.0, 1.0)
        } else if lo.is_finite() {
            let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.05).max(1e-3);
            ((lo - pad).max(0.0), hi + pad)
        } else {
            (0.0, 1.0)
        };
        let percent = self.percent;
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, (FONT, 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(62)
            .build_cartesian_2d(0.7..epochs as f64 + 0.3, lo..hi)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(self.y_desc)
            .x_labels(epochs.clamp(2, 10))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if percent {
                    format!("{:.0}%", y * 100.0)
                } else {
                    format!("{y:.3}")
                }
            })
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (name, color, points) in &self.series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    Color::stroke_width(&color, 2),
                ))
                .map_err(err)?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], Color::stroke_width(&color, 2))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)
    }
}

impl Figure for Curves<'_> {
    fn size(&self) -> (u32, u32) {
        let panels = if self.has_val() { 3 } else { 2 };
        (430 * panels, 420)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        root.fill(&WHITE).map_err(err)?;
        let h = self.history;
        let pts = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
            h.iter()
                .filter_map(|m| f(m).map(|v| (m.epoch as f64, v)))
                .collect()
        };
        let mut loss = Panel {
            title: "loss",
            y_desc: "loss",
            percent: false,
            series: vec![("train", TRAIN, pts(&|m| Some(m.train_loss)))],
        };
        let mut acc = Panel {
            title: "accuracy",
            y_desc: "accuracy",
            percent: true,
            series: vec![("train", TRAIN, pts(&|m| Some(m.train_accuracy)))],
        };
        if self.has_val() {
            loss.series.push(("val", VAL, pts(&|m| m.val_loss)));
            acc.series.push(("val", VAL, pts(&|m| m.val_accuracy)));
            acc.series.push((
                "val balanced",
                EXTRA,
                pts(&|m| m.validation.as_ref().map(|v| v.val_balanced_accuracy)),
            ));
        }
        let epochs = h.iter().map(|m| m.epoch).max().unwrap_or(1);
        let areas = root.split_evenly((1, if self.has_val() { 3 } else { 2 }));
        loss.draw(&areas[0], epochs)?;
        acc.draw(&areas[1], epochs)?;
        if self.has_val() {
            let cal = Panel {
                title: "calibration (val)",
                y_desc: "ECE / Brier",
                percent: false,
                series: vec![
                    (
                        "ECE",
                        GAP,
                        pts(&|m| m.validation.as_ref().map(|v| v.val_ece)),
                    ),
                    (
                        "Brier",
                        VAL,
                        pts(&|m| m.validation.as_ref().map(|v| v.val_brier)),
                    ),
                ],
            };
            cal.draw(&areas[2], epochs)?;
        }
        Ok(())
    }
}

impl Curves<'_> {
    fn has_val(&self) -> bool {
        self.history.iter().any(|m| m.validation.is_some())
    }
}

struct Reliability<'a> {
    metrics: &'a Metrics,
    what: &'a str,
}

impl Figure for Reliability<'_> {
    fn size(&self) -> (u32, u32) {
        (720, 800)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let m = self.metrics;
        root.fill(&WHITE).map_err(err)?;
        let root = root
            .titled(&format!("Reliability: {}", self.what), (FONT, 20))
            .map_err(err)?;
        let subtitle = format!(
            "ECE {:.2}%   MCE {:.2}%   mean confidence {:.1}%   accuracy {:.1}%   {} images",
            m.ece * 100.0,
            m.mce * 100.0,
            m.mean_confidence * 100.0,
            m.accuracy * 100.0,
            m.images
        );
        let (top, bottom) = root.split_vertically(560);
        let mut chart = ChartBuilder::on(&top)
            .caption(subtitle, (FONT, 14))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..1.0, 0.0..1.08)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("confidence (probability of the predicted class)")
            .y_desc("accuracy")
            .x_labels(11)
            .y_labels(11)
            .x_label_formatter(&|x| format!("{x:.1}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        let bins: Vec<_> = m
            .reliability
            .iter()
            .filter_map(|b| Some((b, b.accuracy?, b.confidence?)))
            .collect();
        chart
            .draw_series(bins.iter().map(|(b, acc, _)| {
                Rectangle::new([(b.lower, 0.0), (b.upper, *acc)], TRAIN.mix(0.85).filled())
            }))
            .map_err(err)?
            .label("accuracy")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], TRAIN.filled()));
        chart
            .draw_series(bins.iter().map(|(b, acc, conf)| {
                Rectangle::new([(b.lower, *acc), (b.upper, *conf)], GAP.mix(0.35).filled())
            }))
            .map_err(err)?
            .label("gap to mean confidence")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], GAP.mix(0.35).filled()));
        chart
            .draw_series(bins.iter().map(|(b, acc, _)| {
                Rectangle::new([(b.lower, 0.0), (b.upper, *acc)], BLACK.mix(0.6))
            }))
            .map_err(err)?;
        chart
            .draw_series(bins.iter().map(|(b, _, conf)| {
                PathElement::new(
                    vec![(b.lower, *conf), (b.upper, *conf)],
                    Color::stroke_width(&GAP, 2),
                )
            }))
            .map_err(err)?
            .label("mean confidence of the bin")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], Color::stroke_width(&GAP, 2))
            });
        chart
            .draw_series(LineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                Color::stroke_width(&BLACK.mix(0.5), 1),
            ))
            .map_err(err)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK.mix(0.5)));
        chart
            .draw_series(bins.iter().map(|(b, acc, conf)| {
                Text::new(
                    b.count.to_string(),
                    ((b.lower + b.upper) / 2.0, acc.max(*conf) + 0.035),
                    (FONT, 12)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )
            }))
            .map_err(err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
            .map_err(err)?;

        // Bin counts as a fraction of the images (where the confidence mass is).
        let most = m
            .reliability
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(0)
            .max(1);
        let top_frac = (most as f64 / m.images.max(1) as f64 * 1.15).min(1.0);
        let mut hist = ChartBuilder::on(&bottom)
            .margin(14)
            .margin_top(0)
            .x_label_area_size(36)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..1.0, 0.0..top_frac)
            .map_err(err)?;
        hist.configure_mesh()
            .x_desc("confidence")
            .y_desc("images")
            .x_labels(11)
            .y_labels(4)
            .x_label_formatter(&|x| format!("{x:.1}"))
            .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 14))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        let n = m.images.max(1) as f64;
        hist.draw_series(m.reliability.iter().filter(|b| b.count > 0).map(|b| {
            Rectangle::new(
                [(b.lower, 0.0), (b.upper, b.count as f64 / n)],
                BLACK.mix(0.45).filled(),
            )
        }))
        .map_err(err)?;
        Ok(())
    }
}

/// A bitmap backend that draws text with the built-in 8x8 font instead of a system font
/// (everything else is `BitMapBackend`'s own drawing).
pub struct TextRaster<'a>(pub BitMapBackend<'a>);

impl TextRaster<'_> {
    /// Pixel scale of the 8x8 glyphs for a font size (up to 16 -> 1, 17 to 27 -> 2).
    fn scale(size: f64) -> i32 {
        ((size / 11.0).round() as i32).max(1)
    }
    /// Horizontal advance per character.
    fn advance(size: f64) -> i32 {
        8 * Self::scale(size)
    }
}

impl<'a> DrawingBackend for TextRaster<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }
    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }
    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }
    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(point, color)
    }
    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(from, to, style)
    }
    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }
    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_path(path, style)
    }
    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }
    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.fill_polygon(vert, style)
    }
    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<TStyle: BackendTextStyle>(
        &self,
        text: &str,
        style: &TStyle,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let size = style.size();
        Ok((
            (Self::advance(size) * text.chars().count() as i32) as u32,
            (8 * Self::scale(size)) as u32,
        ))
    }

    fn draw_text<TStyle: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &TStyle,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let (scale, advance) = (Self::scale(style.size()), Self::advance(style.size()));
        let width = advance * text.chars().count() as i32;
        let height = 8 * scale;
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (w, h) = self.get_size();
        for (i, c) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(c)
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 0 {
                        continue;
                    }
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let x = dx + i as i32 * advance + col * scale + sx;
                            let y = dy + row as i32 * scale + sy;
                            let (x, y) = transform.transform(x, y);
                            let (x, y) = (pos.0 + x, pos.1 + y);
                            if x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                                self.0.draw_pixel((x, y), color)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
