//! The shape of the source tree, checked: every CUDA source in `kernels/` (none under
//! `src/`), no source file in `src/` above 800 lines, and no import cycle among the modules
//! of `src/`.
//!
//! The import graph is read from the text of `src/**/*.rs`: every `crate::`, `super::` and
//! `self::` path, in `use` items and inline, is an edge from the file to the module it names
//! (the longest prefix that is a module; a name re-exported by that module with
//! `pub use child::{..}` leads on to the child that defines it). A module's own `mod` and
//! `pub use` of its descendants are its structure, not imports: edges from a module to its
//! descendants are left out. Comments are stripped first, so doc links are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn src_files(ext: &str) -> Vec<PathBuf> {
    let mut all = Vec::new();
    files_under(&root().join("src"), &mut all);
    all.retain(|p| p.extension().is_some_and(|e| e == ext));
    all.sort();
    all
}

#[test]
fn every_kernel_source_is_in_kernels() {
    for ext in ["cu", "cuh"] {
        let misplaced = src_files(ext);
        assert!(
            misplaced.is_empty(),
            "CUDA sources under src/ (they belong in kernels/): {misplaced:?}"
        );
    }
    let mut kernels = Vec::new();
    files_under(&root().join("kernels"), &mut kernels);
    assert!(
        kernels
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "cu")),
        "kernels/ holds no .cu file"
    );
}

#[test]
fn no_source_file_is_above_800_lines() {
    let long: Vec<String> = src_files("rs")
        .into_iter()
        .filter_map(|p| {
            let lines = fs::read_to_string(&p).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", p.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these by concern (at most {MAX_LINES} lines each): {long:?}"
    );
}

/// A module path (`["ops", "cuda"]`; the crate root is `[]`).
type ModPath = Vec<String>;

/// The module of a file under src/ (`src/ops/mod.rs` and `src/ops.rs` are `ops`).
fn module_of(file: &Path) -> ModPath {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().to_string())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// Source text without comments (line and block), with every string literal (plain, raw
/// `r#".."#`) emptied and character literals (`'"'`, `b'\''`) dropped, so that neither a
/// doc link nor a quote in a literal reads as code.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let ident_before = |i: usize| i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'r' && !ident_before(i) && matches!(b.get(i + 1), Some(b'#' | b'"')) {
            // A raw string: r, hashes, a quote, then up to a quote and as many hashes.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && (b.get(i + 1) == Some(&b'\\') || b.get(i + 2) == Some(&b'\'')) {
            // A character literal ('x', '\n', '\''); a lifetime has no closing quote.
            i += if b[i + 1] == b'\\' { 2 } else { 1 };
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path the source names from `crate::`, `super::` or `self::`, expanded over
/// `{..}` groups, as segments.
fn paths_in(src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|s| chars[i..].iter().take(s.len()).copied().eq(s.chars()));
        let preceded = i > 0 && (is_ident(chars[i - 1]) || chars[i - 1] == ':');
        match starts {
            Some(_) if !preceded => {
                let (paths, end) = parse_tree(&chars, i);
                out.extend(paths);
                i = end.max(i + 1);
            }
            _ => i += 1,
        }
    }
    out
}

/// Parses `a::b::{c, d::e}` from `start`: the expanded paths and where it ends.
fn parse_tree(chars: &[char], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = start;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && chars[i] == '{' {
            let mut paths = Vec::new();
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    break;
                }
                let (sub, end) = parse_tree(chars, i);
                for s in sub {
                    let mut p = prefix.clone();
                    p.extend(s);
                    paths.push(p);
                }
                i = end;
            }
            return (paths, i + 1);
        }
        let s = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        if s == i {
            return (vec![prefix], i);
        }
        prefix.push(chars[s..i].iter().collect());
        if chars[i..].starts_with(&[':', ':']) {
            i += 2;
        } else {
            // `as name` and the rest of the item are not part of the path.
            return (vec![prefix], i);
        }
    }
}

struct Crate {
    /// Module path -> its file's stripped source.
    modules: BTreeMap<ModPath, String>,
    files: BTreeMap<ModPath, PathBuf>,
}

impl Crate {
    fn read() -> Crate {
        let mut modules = BTreeMap::new();
        let mut files = BTreeMap::new();
        for f in src_files("rs") {
            if f.ends_with("main.rs") {
                continue; // the binary: uses the library by name, not `crate::`
            }
            let m = module_of(&f);
            modules.insert(m.clone(), strip(&fs::read_to_string(&f).unwrap()));
            files.insert(m, f);
        }
        Crate { modules, files }
    }

    /// The absolute form of a path seen in module `from`.
    fn absolute(&self, from: &ModPath, path: &[String]) -> ModPath {
        let mut base: ModPath = Vec::new();
        let mut rest = path;
        match path.first().map(String::as_str) {
            Some("crate") => rest = &path[1..],
            Some("self") => {
                base = from.clone();
                rest = &path[1..];
            }
            Some("super") => {
                base = from.clone();
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            _ => {}
        }
        base.extend(rest.iter().cloned());
        base
    }

    /// The module that defines what `path` (absolute) names: its longest module prefix,
    /// followed through that module's `pub use child::{..}` re-exports.
    fn resolve(&self, path: &ModPath) -> Option<ModPath> {
        let mut len = path.len();
        while !self.modules.contains_key(&path[..len]) {
            if len == 0 {
                return None;
            }
            len -= 1;
        }
        let module = path[..len].to_vec();
        if let Some(name) = path.get(len) {
            let src = &self.modules[&module];
            for reexport in paths_reexported(src) {
                if reexport.last() == Some(name) && reexport.len() > 1 {
                    let target = match reexport[0].as_str() {
                        "crate" | "super" | "self" => self.absolute(&module, &reexport),
                        // `pub use child::Name`: relative to the module.
                        _ => module.iter().chain(&reexport).cloned().collect(),
                    };
                    if target != *path {
                        return self.resolve(&target).or(Some(module));
                    }
                }
            }
        }
        Some(module)
    }

    /// Module -> the modules it imports (not its own descendants, not itself).
    fn edges(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut out = BTreeMap::new();
        for (m, src) in &self.modules {
            let mut to = BTreeSet::new();
            for p in paths_in(src) {
                let abs = self.absolute(m, &p);
                if let Some(t) = self.resolve(&abs)
                    && !t.starts_with(m)
                {
                    to.insert(t);
                }
            }
            out.insert(m.clone(), to);
        }
        out
    }
}

/// The paths of a module's `pub use` items, expanded (relative ones as written).
fn paths_reexported(src: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let chars: Vec<char> = src.chars().collect();
    let text: String = chars.iter().collect();
    let mut from = 0;
    while let Some(p) = text[from..].find("pub use ") {
        let at = from + p + "pub use ".len();
        let start = text[..at].chars().count();
        let (paths, _) = parse_tree(&chars, start);
        out.extend(paths);
        from = at;
    }
    out
}

/// The cycles of the graph (each as a list of modules), by Tarjan's strongly connected
/// components.
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let Some((w, _)) = s.edges.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_import_cycle_among_modules() {
    let krate = Crate::read();
    let edges = krate.edges();
    let found = cycles(&edges);
    let describe = |c: &Vec<ModPath>| -> String {
        c.iter()
            .map(|m| {
                let file = krate.files[m]
                    .strip_prefix(root())
                    .unwrap()
                    .display()
                    .to_string();
                let imports: Vec<String> = edges[m]
                    .iter()
                    .filter(|t| c.contains(t))
                    .map(|t| {
                        krate.files[t]
                            .strip_prefix(root())
                            .unwrap()
                            .display()
                            .to_string()
                    })
                    .collect();
                format!("{file} imports {imports:?}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    assert!(
        found.is_empty(),
        "import cycles (move what both sides need into a module below them):\n{}",
        found.iter().map(describe).collect::<Vec<_>>().join("\n")
    );
    // The check sees the graph at all: the training loop imports the ops.
    assert!(
        edges.values().map(BTreeSet::len).sum::<usize>() > 100,
        "the import graph is implausibly small: the parser reads no imports"
    );
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle() {
    let m = |s: &str| -> ModPath { s.split("::").map(String::from).collect() };
    let mut edges = BTreeMap::new();
    edges.insert(m("ops::cuda"), BTreeSet::from([m("ops::gemm::cuda")]));
    edges.insert(m("ops::gemm::cuda"), BTreeSet::from([m("ops::launch")]));
    edges.insert(m("ops::launch"), BTreeSet::new());
    assert!(cycles(&edges).is_empty());
    edges.insert(m("ops::launch"), BTreeSet::from([m("ops::cuda")]));
    assert_eq!(cycles(&edges).len(), 1);
    assert_eq!(cycles(&edges)[0].len(), 3);
    // Literals and comments are not code: the paths after them are still read.
    let tricky = "let q = '\"'; use crate::w::V; let s = \"x\"; let b = b'\\''; \
                  let r = r#\"a \" crate::no\"#; /* crate::x */ fn f<'a>() {}\nuse crate::y::Z;";
    assert_eq!(
        paths_in(&strip(tricky)),
        vec![m("crate::w::V"), m("crate::y::Z")]
    );
    // Paths as the parser reads them.
    let paths = paths_in(&strip(
        "use crate::ops::{cuda::CudaBackend, launch::int};\n// crate::x::y\n",
    ));
    assert_eq!(
        paths,
        vec![
            m("crate::ops::cuda::CudaBackend"),
            m("crate::ops::launch::int")
        ]
    );
}
