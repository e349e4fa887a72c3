//! Decoding the QR code `palisade client-config` prints on a terminal
//! (half-block characters, two module rows per line) with rqrr, so a test
//! compares what a phone would scan with the config printed above it.

use anyhow::{bail, Context, Result};

/// Module rows of one character: (top, bottom), true = dark.
fn modules(c: char) -> Option<(bool, bool)> {
    match c {
        ' ' => Some((false, false)),
        '\u{2584}' => Some((false, true)), // ▄
        '\u{2580}' => Some((true, false)), // ▀
        '\u{2588}' => Some((true, true)),  // █
        _ => None,
    }
}

/// The module grid of the first block of half-block lines in `text`
/// (`grid[row][col]`, true = dark). Lines of other text around it are skipped.
pub fn terminal_grid(text: &str) -> Result<Vec<Vec<bool>>> {
    let is_qr_line = |l: &str| {
        l.chars().any(|c| c != ' ') && l.chars().all(|c| modules(c).is_some())
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| is_qr_line(l))
        .context("no QR code (half-block lines) in the output")?;
    let len = lines[start..]
        .iter()
        .position(|l| !is_qr_line(l))
        .unwrap_or(lines.len() - start);
    let block = &lines[start..start + len];
    let width = block.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut grid = Vec::with_capacity(block.len() * 2);
    for l in block {
        let mut top = vec![false; width];
        let mut bottom = vec![false; width];
        for (i, c) in l.chars().enumerate() {
            let (t, b) = modules(c).expect("checked above");
            top[i] = t;
            bottom[i] = b;
        }
        grid.push(top);
        grid.push(bottom);
    }
    Ok(grid)
}

/// Decode the QR code drawn in `text` (see [`terminal_grid`]): exactly one code,
/// its payload as text.
pub fn decode_terminal(text: &str) -> Result<String> {
    let grid = terminal_grid(text)?;
    // Render it as a greyscale image: 4 pixels per module, a white margin of
    // 8 modules (whatever quiet zone the output had).
    const SCALE: usize = 4;
    const MARGIN: usize = 8;
    let rows = grid.len();
    let cols = grid.first().map(Vec::len).unwrap_or(0);
    let (w, h) = ((cols + 2 * MARGIN) * SCALE, (rows + 2 * MARGIN) * SCALE);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        let (mx, my) = (x / SCALE, y / SCALE);
        let dark = mx >= MARGIN
            && my >= MARGIN
            && grid
                .get(my - MARGIN)
                .and_then(|r| r.get(mx - MARGIN))
                .copied()
                .unwrap_or(false);
        if dark {
            0
        } else {
            255
        }
    });
    let grids = img.detect_grids();
    if grids.len() != 1 {
        bail!("expected one QR code, found {}", grids.len());
    }
    let (_, payload) = grids[0].decode().context("decode the QR code")?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(text: &str) -> String {
        qrcode::QrCode::new(text.as_bytes())
            .unwrap()
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build()
    }

    #[test]
    fn decodes_what_the_cli_renderer_draws() {
        let config = "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\nAddress = 10.66.0.4/32, fd66::4/128\nDNS = 10.66.0.1, fd66::1\n\n[Peer]\nPublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\nAllowedIPs = 0.0.0.0/0, ::/0\nEndpoint = 203.0.113.10:51820\n";
        let out = format!("some text before\n{config}\n{}\n", render(config));
        assert_eq!(decode_terminal(&out).unwrap(), config);
    }

    #[test]
    fn a_different_payload_decodes_differently_and_garbage_is_an_error() {
        let a = render("one");
        assert_eq!(decode_terminal(&a).unwrap(), "one");
        assert!(decode_terminal("no code here\n").is_err());
        // A damaged code (the two module rows of every line swapped) does not
        // decode to the text.
        let damaged: String = a
            .chars()
            .map(|c| match c {
                '\u{2580}' => '\u{2584}',
                '\u{2584}' => '\u{2580}',
                c => c,
            })
            .collect();
        assert_ne!(decode_terminal(&damaged).ok().as_deref(), Some("one"));
    }
}
