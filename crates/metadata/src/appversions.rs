//! The `appversions` lookup: which Delta Chat versions exist, as one line of JSON.
//!
//! Upstream serves a file inside its Python package and re-reads it on every lookup. We
//! embed the same shipped content and serve a file instead when the operator puts one in
//! place (by default `appversions.json` beside chatmail.ini), re-read on every lookup so it
//! can be replaced without a restart.

use std::io;
use std::path::PathBuf;

use serde_json::Value;

use crate::json::to_compact_json;

/// The content upstream ships (relay 1.12).
pub const SHIPPED: &str = include_str!("../appversions.json");

/// Name of the operator's file, looked for beside chatmail.ini.
pub const FILE_NAME: &str = "appversions.json";

/// Where the app versions come from.
#[derive(Debug, Clone)]
pub struct AppVersions {
    /// The operator's file; while it does not exist the shipped content is served.
    path: Option<PathBuf>,
}

impl AppVersions {
    pub fn new(path: Option<PathBuf>) -> Self {
        AppVersions { path }
    }

    /// The lookup's value: the JSON re-serialised on one line (key order kept, non-ASCII
    /// escaped), or `None` (answered `N`) when the operator's file is unreadable or invalid.
    pub async fn value(&self) -> Option<String> {
        let bytes = match &self.path {
            None => SHIPPED.as_bytes().to_vec(),
            Some(path) => match tokio::fs::read(path).await {
                Ok(bytes) => bytes,
                Err(err) if err.kind() == io::ErrorKind::NotFound => SHIPPED.as_bytes().to_vec(),
                Err(err) => {
                    tracing::error!("failed to read {}: {err}", path.display());
                    return None;
                }
            },
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => Some(to_compact_json(&value)),
            Err(err) => {
                let shown = self.path.as_ref().map(|p| p.display().to_string());
                tracing::error!("failed to read {}: {err}", shown.unwrap_or_default());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVED: &str = r#"{"clients":[{"clientId":"deltachat","sources":[{"sourceId":"gplay","versionInteger":754,"versionString":"2.57.0","downloadUrl":"https://github.com/deltachat/deltachat-android/releases/download/v2.57.0/deltachat-gplay-release-2.57.0.apk"}]}]}"#;

    #[tokio::test]
    async fn shipped_content_is_served_compactly() {
        assert_eq!(AppVersions::new(None).value().await.unwrap(), SERVED);
        let dir = tempfile::tempdir().unwrap();
        let missing = AppVersions::new(Some(dir.path().join(FILE_NAME)));
        assert_eq!(missing.value().await.unwrap(), SERVED);
    }

    #[tokio::test]
    async fn operators_file_is_reread_on_every_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let versions = AppVersions::new(Some(path.clone()));
        std::fs::write(&path, "{\"b\": 1,\n \"a\": \"\u{e9}\\n\"}\n").unwrap();
        assert_eq!(versions.value().await.unwrap(), r#"{"b":1,"a":"\u00e9\n"}"#);
        std::fs::write(&path, "{\"clients\": []}").unwrap();
        assert_eq!(versions.value().await.unwrap(), r#"{"clients":[]}"#);
        std::fs::write(&path, "{broken").unwrap();
        assert_eq!(versions.value().await, None);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(versions.value().await, None, "unreadable");
    }

    /// Delta Chat core drops the whole payload on a type mismatch: check the shipped file
    /// against the schema it relies on.
    #[test]
    fn shipped_file_satisfies_the_client_schema() {
        let value: Value = serde_json::from_str(SHIPPED).unwrap();
        let top = value.as_object().unwrap();
        assert_eq!(top.keys().collect::<Vec<_>>(), ["clients"]);
        let clients = top["clients"].as_array().unwrap();
        assert!(!clients.is_empty());
        let mut client_ids = std::collections::HashSet::new();
        for client in clients {
            let client = client.as_object().unwrap();
            assert_eq!(client.keys().collect::<Vec<_>>(), ["clientId", "sources"]);
            let id = client["clientId"].as_str().unwrap();
            assert!(!id.is_empty() && client_ids.insert(id));
            let sources = client["sources"].as_array().unwrap();
            assert!(!sources.is_empty());
            let mut source_ids = std::collections::HashSet::new();
            for source in sources {
                let source = source.as_object().unwrap();
                assert_eq!(
                    source.keys().collect::<Vec<_>>(),
                    ["sourceId", "versionInteger", "versionString", "downloadUrl"]
                );
                let id = source["sourceId"].as_str().unwrap();
                assert!(!id.is_empty() && source_ids.insert(id));
                let version = source["versionInteger"].as_u64().unwrap();
                assert!(version < 1 << 32);
                assert!(!source["versionString"].as_str().unwrap().is_empty());
                let url = source["downloadUrl"].as_str().unwrap();
                assert!(
                    url.starts_with("https://github.com/deltachat/")
                        || url.starts_with("https://download.delta.chat/")
                );
            }
        }
    }
}
