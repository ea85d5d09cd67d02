//! What a configuration change changes, item by item: `[node]`, each `[[trunk]]` and each
//! `[[route]]` (by name), down to the keys that differ, plus the order of routes (the first route
//! that fits a call wins). Pure: two TOML texts in, a list of changes out. Both texts have passed
//! validation (the old one may be empty: a pool with no configuration yet).

use std::collections::BTreeMap;

use medpool_proto::admin::{ChangeKind, ConfigChange};
use toml::{Table, Value};

/// The changes from `old` to `new`, `[node]` first, then trunks, then routes.
pub fn diff(old: &str, new: &str) -> Vec<ConfigChange> {
    let old = parse(old);
    let new = parse(new);
    let mut out = Vec::new();
    let empty = Table::new();
    let old_node = old.get("node").and_then(Value::as_table).unwrap_or(&empty);
    let new_node = new.get("node").and_then(Value::as_table).unwrap_or(&empty);
    let details = key_changes(old_node, new_node);
    if !details.is_empty() {
        out.push(change(ChangeKind::Changed, "node".to_owned(), details));
    }
    for (section, label) in [("trunk", "trunk"), ("route", "route")] {
        let before = named(&old, section);
        let after = named(&new, section);
        for (name, t) in &before {
            match after.iter().find(|(n, _)| n == name) {
                None => out.push(change(
                    ChangeKind::Removed,
                    format!("{label} {name}"),
                    vec![],
                )),
                Some((_, u)) => {
                    let d = key_changes(t, u);
                    if !d.is_empty() {
                        out.push(change(ChangeKind::Changed, format!("{label} {name}"), d));
                    }
                }
            }
        }
        for (name, _) in &after {
            if !before.iter().any(|(n, _)| n == name) {
                out.push(change(ChangeKind::Added, format!("{label} {name}"), vec![]));
            }
        }
        if section == "route" {
            let kept_before: Vec<&str> = before
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| after.iter().any(|(m, _)| m == n))
                .collect();
            let kept_after: Vec<&str> = after
                .iter()
                .map(|(n, _)| n.as_str())
                .filter(|n| before.iter().any(|(m, _)| m == n))
                .collect();
            if kept_before != kept_after {
                out.push(change(
                    ChangeKind::Changed,
                    "route order".to_owned(),
                    vec![format!(
                        "{} -> {}",
                        kept_before.join(", "),
                        kept_after.join(", ")
                    )],
                ));
            }
        }
    }
    out
}

/// One line per change, e.g. `~ trunk gw1: max_calls: (none) -> 20`.
pub fn render(changes: &[ConfigChange]) -> Vec<String> {
    let mut lines = Vec::new();
    for c in changes {
        let sign = match c.kind() {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Changed | ChangeKind::Unspecified => '~',
        };
        if c.details.is_empty() {
            lines.push(format!("{sign} {}", c.item));
        }
        for d in &c.details {
            lines.push(format!("{sign} {}: {d}", c.item));
        }
    }
    lines
}

fn change(kind: ChangeKind, item: String, details: Vec<String>) -> ConfigChange {
    ConfigChange {
        kind: kind.into(),
        item,
        details,
    }
}

fn parse(text: &str) -> Table {
    toml::from_str(text).unwrap_or_default()
}

/// The tables of an array section by name (`name` key, else the position).
fn named(doc: &Table, section: &str) -> Vec<(String, Table)> {
    doc.get(section)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let t = v.as_table()?;
                    let name = t
                        .get("name")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("#{i}"), str::to_owned);
                    Some((name, t.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn key_changes(old: &Table, new: &Table) -> Vec<String> {
    let keys: BTreeMap<&String, ()> = old.keys().chain(new.keys()).map(|k| (k, ())).collect();
    keys.into_keys()
        .filter_map(|k| match (old.get(k), new.get(k)) {
            (Some(a), Some(b)) if a == b => None,
            (a, b) => Some(format!("{k}: {} -> {}", show(a), show(b))),
        })
        .collect()
}

fn show(v: Option<&Value>) -> String {
    let Some(v) = v else {
        return "(unset)".to_owned();
    };
    let text = v.to_string();
    if text.chars().count() > 200 {
        let cut: String = text.chars().take(197).collect();
        format!("{cut}...")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"
[node]
max_calls = 100
[[trunk]]
name = "pbx"
address = "127.0.0.1"
[[trunk]]
name = "gw1"
address = "127.0.0.21"
[[route]]
name = "a"
pattern = ".*"
trunks = ["gw1"]
[[route]]
name = "b"
pattern = "^1"
trunks = ["gw1"]
"#;

    const NEW: &str = r#"
[node]
max_calls = 200
[[trunk]]
name = "pbx"
address = "127.0.0.1"
[[trunk]]
name = "gw2"
address = "127.0.0.22"
[[route]]
name = "b"
pattern = "^1"
trunks = ["gw1"]
[[route]]
name = "a"
pattern = ".*"
trunks = ["gw1"]
max = 3
"#;

    #[test]
    fn lists_items_and_keys() {
        let lines = render(&diff(OLD, NEW));
        assert_eq!(
            lines,
            vec![
                "~ node: max_calls: 100 -> 200",
                "- trunk gw1",
                "+ trunk gw2",
                "~ route a: max: (unset) -> 3",
                "~ route order: a, b -> b, a",
            ]
        );
        assert!(diff(OLD, OLD).is_empty());
        assert_eq!(render(&diff("", OLD)).len(), 5);
    }
}
