//! Every relative link in the project's Markdown (the README, `docs/`, the
//! other top-level pages and `envoy/k8s/README.md`) points at a file or
//! directory that exists, and a `#fragment` into a Markdown page at one of
//! its headings. Links to other sites are not followed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// The pages checked: top-level `*.md`, `docs/*.md`, `envoy/k8s/README.md`.
fn pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = Vec::new();
    for dir in [root.to_path_buf(), root.join("docs")] {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|x| x == "md") {
                pages.push(path);
            }
        }
    }
    pages.push(root.join("envoy/k8s/README.md"));
    pages.sort();
    pages
}

/// The text outside fenced code blocks and inline code spans.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop inline code: every other backtick-delimited span.
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                out.push_str(part);
            }
        }
        out.push('\n');
    }
    out
}

/// Targets of inline links and images: `[text](target)`, `![alt](target)`.
fn link_targets(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut targets = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].trim();
        // `[text](target "title")`: the target is the first word.
        let target = target.split_whitespace().next().unwrap_or_default();
        targets.push(target.to_string());
        rest = &rest[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lowercase, punctuation other than `-` and
/// `_` removed, spaces turned into `-`; repeated headings get `-1`, `-2`...
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let base: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// What is wrong with `target` as a link from `page`, if anything.
fn broken(page: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("empty link".to_string());
    }
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        page.parent().expect("a page has a directory").join(path)
    };
    if !file.exists() {
        return Some(format!("{} does not exist", file.display()));
    }
    let fragment = fragment?;
    if file.extension().is_none_or(|x| x != "md") {
        return None;
    }
    let text = std::fs::read_to_string(&file).expect("a Markdown page reads");
    (!anchors(&text).contains(fragment))
        .then(|| format!("{} has no heading for #{fragment}", file.display()))
}

#[test]
fn every_relative_markdown_link_resolves() {
    let root = root();
    let pages = pages(&root);
    assert!(
        pages.iter().any(|p| p.ends_with("README.md")),
        "no README.md found under {}",
        root.display()
    );
    let mut problems = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", page.display()));
        for target in link_targets(&text) {
            if let Some(problem) = broken(page, &target) {
                let shown = page.strip_prefix(&root).unwrap_or(page);
                problems.push(format!("{}: ({target}): {problem}", shown.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn link_targets_skip_code_and_anchors_follow_github() {
    let md =
        "See [a](docs/a.md#x-y) and `[not](code)`.\n```\n[no](block)\n```\n![img](i.svg \"t\")\n";
    assert_eq!(link_targets(md), ["docs/a.md#x-y", "i.svg"]);
    let a = anchors("# The shim: drainpipe without Envoy\n## Configuration reload (`hardening_reload.rs`)\n## CLI\n## CLI\n");
    for want in [
        "the-shim-drainpipe-without-envoy",
        "configuration-reload-hardening_reloadrs",
        "cli",
        "cli-1",
    ] {
        assert!(a.contains(want), "{want} missing from {a:?}");
    }
}
