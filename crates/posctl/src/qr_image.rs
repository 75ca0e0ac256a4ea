//! The merchant-presented code as something a phone can scan: a PNG file
//! (`posctl qr order --png FILE`) and the same matrix drawn in the terminal
//! with Unicode half blocks. The matrix is `qrcode`'s; the PNG is written
//! with the small `png` encoder, one 8-bit grey sample per pixel, so the
//! heavy `image` crate stays out of the tree.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result, bail};
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, QrCode};

/// Pixels per module: large enough for a phone to read off a screen.
pub const SCALE: usize = 8;
/// Light modules around the symbol; scanners need four (ISO/IEC 18004).
pub const QUIET_ZONE: usize = 4;

const DARK: u8 = 0x00;
const LIGHT: u8 = 0xff;

/// The QR symbol of an order's code content.
pub fn encode(content: &str) -> Result<QrCode> {
    QrCode::new(content.as_bytes()).context("the order's code does not fit in a QR symbol")
}

/// Side of the PNG in pixels for a symbol `modules` wide.
pub fn side_px(modules: usize) -> usize {
    (modules + 2 * QUIET_ZONE) * SCALE
}

/// The grey samples of `code`, row by row, with its quiet zone.
pub fn pixels(code: &QrCode) -> Vec<u8> {
    let width = code.width();
    let side = side_px(width);
    let colors = code.to_colors();
    let mut pixels = vec![LIGHT; side * side];
    for (index, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (x, y) = (index % width, index / width);
        for row in 0..SCALE {
            let top = (QUIET_ZONE + y) * SCALE + row;
            let left = (QUIET_ZONE + x) * SCALE;
            pixels[top * side + left..top * side + left + SCALE].fill(DARK);
        }
    }
    pixels
}

/// Writes `code` to `path` as a greyscale PNG.
pub fn write_png(code: &QrCode, path: &Path) -> Result<()> {
    let side = side_px(code.width());
    let side_u32 = u32::try_from(side).context("the QR image is too large")?;
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), side_u32, side_u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(&pixels(code))
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `code` drawn with half blocks, two modules per character cell. The
/// colours are swapped because terminals are mostly light text on a dark
/// background: drawing the light modules keeps the symbol's dark modules
/// dark, as a scanner expects.
pub fn terminal_art(code: &QrCode) -> String {
    code.render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build()
}

/// What `posctl qr order` shows after the record: the symbol drawn (text
/// output only; JSON stays one line) and, with `--png`, written to `png`.
pub fn show_order(content: &str, png: Option<&Path>, as_json: bool) -> Result<()> {
    if content.is_empty() {
        if let Some(path) = png {
            bail!(
                "the order has no code to show; {} not written",
                path.display()
            );
        }
        return Ok(());
    }
    let code = encode(content)?;
    if !as_json {
        print!("{}", terminal_art(&code));
        println!();
    }
    if let Some(path) = png {
        write_png(&code, path)?;
        if !as_json {
            println!("QR image written to {}", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufReader, Read};

    use super::*;

    const CONTENT: &str = "https://qr.example/pay/ORD0000000001?sig=abc";

    fn decoded(path: &Path) -> (png::OutputInfo, Vec<u8>) {
        let decoder = png::Decoder::new(BufReader::new(File::open(path).expect("open")));
        let mut reader = decoder.read_info().expect("a PNG header");
        let mut buffer = vec![0; reader.output_buffer_size().expect("a known size")];
        let info = reader.next_frame(&mut buffer).expect("one frame");
        buffer.truncate(info.buffer_size());
        (info, buffer)
    }

    #[test]
    fn the_png_holds_the_symbols_modules_pixel_for_pixel() {
        let code = encode(CONTENT).expect("fits");
        let path = std::env::temp_dir().join(format!("posctl-qr-{}.png", std::process::id()));
        write_png(&code, &path).expect("written");

        let mut signature = [0u8; 8];
        File::open(&path)
            .expect("open")
            .read_exact(&mut signature)
            .expect("eight bytes");
        assert_eq!(&signature, b"\x89PNG\r\n\x1a\n");

        let (info, samples) = decoded(&path);
        let side = side_px(code.width());
        assert_eq!((info.width as usize, info.height as usize), (side, side));
        assert_eq!(
            (info.color_type, info.bit_depth),
            (png::ColorType::Grayscale, png::BitDepth::Eight)
        );
        // Every pixel of every module is that module's colour, and the
        // quiet zone is light all round.
        let width = code.width();
        for py in 0..side {
            for px in 0..side {
                let (mx, my) = (px / SCALE, py / SCALE);
                let inside = (QUIET_ZONE..QUIET_ZONE + width).contains(&mx)
                    && (QUIET_ZONE..QUIET_ZONE + width).contains(&my);
                let dark = inside && code[(mx - QUIET_ZONE, my - QUIET_ZONE)] == Color::Dark;
                let expected = if dark { DARK } else { LIGHT };
                assert_eq!(samples[py * side + px], expected, "pixel ({px}, {py})");
            }
        }
        // Read back module by module, the matrix is qrcode's own.
        let read_back: Vec<Color> = (0..width * width)
            .map(|i| {
                let (x, y) = (QUIET_ZONE + i % width, QUIET_ZONE + i / width);
                let centre = (y * SCALE + SCALE / 2) * side + x * SCALE + SCALE / 2;
                if samples[centre] == DARK {
                    Color::Dark
                } else {
                    Color::Light
                }
            })
            .collect();
        assert_eq!(read_back, code.to_colors());
        std::fs::remove_file(&path).expect("removed");
    }

    #[test]
    fn the_terminal_drawing_packs_two_rows_per_line() {
        let code = encode(CONTENT).expect("fits");
        let art = terminal_art(&code);
        let lines: Vec<&str> = art.lines().collect();
        let side = code.width() + 2 * QUIET_ZONE;
        assert_eq!(lines.len(), side.div_ceil(2));
        assert!(lines.iter().all(|line| line.chars().count() == side));
        // The quiet zone is drawn (swapped colours): a full block row.
        assert!(lines[0].chars().all(|c| c == '█'), "{}", lines[0]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let code = encode(CONTENT).expect("fits");
        let error = write_png(&code, Path::new("/nonexistent/dir/order.png"))
            .expect_err("no such directory")
            .to_string();
        assert!(error.contains("/nonexistent/dir/order.png"), "{error}");
    }
}
