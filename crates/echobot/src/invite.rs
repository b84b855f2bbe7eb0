//! The invite: the `https://i.delta.chat/#…` link a Delta Chat client scans or opens to
//! start SecureJoin with the bot, and its QR code as a PNG image.

use std::fmt::Write as _;
use std::path::Path;

use qrcode::{Color, EcLevel, QrCode};

use crate::error::{Error, Result};
use crate::state::write_private;

/// File name of the invite link in the state dir.
pub const LINK_FILE: &str = "invite-link.txt";
/// File name of the QR code image in the state dir.
pub const QR_FILE: &str = "invite-qr.png";

/// What goes into the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite<'a> {
    /// The bot's fingerprint, 40 upper-case hex digits.
    pub fingerprint: &'a str,
    /// The INVITENUMBER (legacy `vc-request` start).
    pub invitenumber: &'a str,
    /// The AUTH token.
    pub auth: &'a str,
    /// The bot's address.
    pub addr: &'a str,
    /// The bot's display name.
    pub name: &'a str,
    /// Whether to announce SecureJoin v3 (`v=3`): only when the bot can decrypt the
    /// AES-OCB `vc-request-pubkey` clients then send.
    pub v3: bool,
}

impl Invite<'_> {
    /// `https://i.delta.chat/#FP&v=3&i=…&s=…&a=…&n=…` (`v=3` only when [`Invite::v3`]).
    pub fn link(&self) -> String {
        let mut link = format!("https://i.delta.chat/#{}", self.fingerprint);
        if self.v3 {
            link.push_str("&v=3");
        }
        let _ = write!(
            link,
            "&i={}&s={}&a={}&n={}",
            self.invitenumber,
            self.auth,
            percent_encode(self.addr),
            percent_encode(self.name).replace("%20", "+"),
        );
        link
    }
}

/// Percent-encodes everything but ASCII letters, digits and `.` (as Delta Chat core).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'.' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Pixels per QR module and the quiet zone in modules.
const SCALE: usize = 8;
const QUIET_ZONE: usize = 4;

/// The QR code of `text` as a grayscale PNG image.
pub fn qr_png(text: &str) -> Result<Vec<u8>> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|err| Error::Qr(err.to_string()))?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * SCALE..(my + 1) * SCALE {
            if let Some(row) = pixels.get_mut(y * side + mx * SCALE..y * side + (mx + 1) * SCALE) {
                row.fill(0);
            }
        }
    }
    let side_u32 = u32::try_from(side).map_err(|err| Error::Qr(err.to_string()))?;
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, side_u32, side_u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|err| Error::Qr(err.to_string()))?;
    writer
        .write_image_data(&pixels)
        .map_err(|err| Error::Qr(err.to_string()))?;
    writer.finish().map_err(|err| Error::Qr(err.to_string()))?;
    Ok(png_bytes)
}

/// Writes `DIR/invite-link.txt` (the link and a newline) and `DIR/invite-qr.png`, each
/// atomically.
pub fn write_invite(dir: &Path, link: &str) -> Result<()> {
    write_private(&dir.join(LINK_FILE), format!("{link}\n").as_bytes())?;
    write_private(&dir.join(QR_FILE), &qr_png(link)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(v3: bool) -> Invite<'static> {
        Invite {
            fingerprint: "0123456789ABCDEF0123456789ABCDEF01234567",
            invitenumber: "inviteNUMBER-_123456789a",
            auth: "authTOKEN-_1234567890abc",
            addr: "bot+x@example.org",
            name: "Echo Bot ü",
            v3,
        }
    }

    #[test]
    fn link_has_core_format() {
        assert_eq!(
            invite(true).link(),
            "https://i.delta.chat/#0123456789ABCDEF0123456789ABCDEF01234567&v=3\
             &i=inviteNUMBER-_123456789a&s=authTOKEN-_1234567890abc\
             &a=bot%2Bx%40example.org&n=Echo+Bot+%C3%BC"
        );
        assert!(!invite(false).link().contains("v=3"));
    }

    #[test]
    fn qr_png_reads_back_as_the_link() {
        let link = invite(true).link();
        let bytes = qr_png(&link).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.width, info.height);
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        let modules = QrCode::with_error_correction_level(link.as_bytes(), EcLevel::M)
            .unwrap()
            .width();
        assert_eq!(info.width as usize, (modules + 2 * QUIET_ZONE) * SCALE);
        // Quiet zone white; the top-left finder pattern's corner dark.
        let side = info.width as usize;
        assert_eq!(pixels[0], 255);
        let corner = QUIET_ZONE * SCALE;
        assert_eq!(pixels[corner * side + corner], 0);
        // A QR reader finds the link in it.
        let mut image =
            rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| pixels[y * side + x]);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, content) = grids[0].decode().unwrap();
        assert_eq!(content, link);
    }

    #[test]
    fn invite_files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let link = invite(true).link();
        write_invite(dir.path(), &link).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LINK_FILE)).unwrap(),
            format!("{link}\n")
        );
        let png = std::fs::read(dir.path().join(QR_FILE)).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    }
}
