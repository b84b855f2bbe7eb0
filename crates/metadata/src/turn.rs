//! TURN credentials from the chatmail-turn service: connect to its unix socket, read one
//! line `<username>:<password>`. Bounded by a timeout, so a hung TURN service costs one
//! `N` reply and never a dict connection.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;

/// Upstream's socket timeout for connect and read.
pub const TURN_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest credentials line read; chatmail-turn's are under 100 bytes.
const MAX_LINE: u64 = 4096;

/// The first line from the TURN socket at `path`, decoded and stripped of blanks.
pub async fn credentials(path: &Path, timeout: Duration) -> io::Result<String> {
    let read = async {
        let stream = UnixStream::connect(path).await?;
        let mut reader = BufReader::new(stream).take(MAX_LINE);
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await?;
        let text = String::from_utf8(line)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        Ok(text.trim().to_owned())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from {} within {timeout:?}", path.display()),
        )
    })?
}
