//! Renders the configuration templates in `packaging/conf/` (Postfix's main.cf and
//! master.cf, Dovecot's dovecot.conf and auth.conf, the Postfix lookup tables): each
//! `{{name}}` is replaced by its value. The test relays and `loopback-relay` render the
//! same files an operator installs (docs/relay.md), with their own ports and paths.

use std::fs;
use std::path::PathBuf;

use crate::binaries::workspace_root;

/// Where the templates live, relative to the workspace root.
pub const CONF_DIR: &str = "packaging/conf";

/// The path of template `name` (e.g. `postfix/main.cf`).
pub fn template_path(name: &str) -> PathBuf {
    workspace_root().join(CONF_DIR).join(name)
}

/// Reads template `name` and replaces its placeholders by `values`; panics naming the
/// template if it cannot be read, if a placeholder has no value, or if a value matches no
/// placeholder (a renamed placeholder must not be silently ignored).
pub fn render_template(name: &str, values: &[(&str, String)]) -> String {
    let path = template_path(name);
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read template {}: {err}", path.display()));
    render(&text, values).unwrap_or_else(|err| panic!("template {name}: {err}"))
}

/// Replaces every `{{name}}` in `text` by its value.
///
/// Errors name an unknown placeholder, a value no placeholder uses, or an unclosed `{{`.
pub fn render(text: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut used = vec![false; values.len()];
    let mut rest = text;
    while let Some((before, after)) = rest.split_once("{{") {
        out.push_str(before);
        let (name, tail) = after
            .split_once("}}")
            .ok_or_else(|| format!("unclosed {{{{ before {:?}", first_line(after)))?;
        let index = values
            .iter()
            .position(|(key, _)| *key == name)
            .ok_or_else(|| format!("no value for {{{{{name}}}}}"))?;
        if let (Some((_, value)), Some(flag)) = (values.get(index), used.get_mut(index)) {
            out.push_str(value);
            *flag = true;
        }
        rest = tail;
    }
    out.push_str(rest);
    let unused: Vec<&str> = values
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|((key, _), _)| *key)
        .collect();
    if unused.is_empty() {
        Ok(out)
    } else {
        Err(format!("no placeholder for {}", unused.join(", ")))
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_placeholder() {
        let values = [("a", "1".to_string()), ("b", "two".to_string())];
        assert_eq!(
            render("x={{a}} y={{b}} z={{a}}", &values).unwrap(),
            "x=1 y=two z=1"
        );
    }

    #[test]
    fn refuses_unknown_unused_and_unclosed() {
        let values = [("a", "1".to_string())];
        assert!(render("{{b}}", &values).unwrap_err().contains("{{b}}"));
        assert!(render("none", &values).unwrap_err().contains("a"));
        assert!(render("{{a", &values).unwrap_err().contains("unclosed"));
    }
}
