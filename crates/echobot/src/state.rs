//! Private files in the state directory: written atomically, readable only by the bot.

use std::fs;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

/// Replaces `path` with `content` atomically (`chatmail_mailbox::write_atomic`: a synced
/// temporary sibling renamed over `path`), the new file mode 0600 from its creation on, so
/// there is no moment where another user could open it.
pub fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    chatmail_mailbox::write_atomic_with_mode(path, content, 0o600)
        .map_err(|err| Error::io(path, err))
}

/// Reads `path`, `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(content) => Ok(Some(content)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Error::io(path, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_0600_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_optional(&dir.path().join("nothing")).unwrap(), None);
    }
}
