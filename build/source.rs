//! Finding the kernel files and scanning their (comment-stripped) sources: the
//! `__global__` functions, and the rewrite of `extern __shared__` for the emulator.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::path::PathBuf;

use crate::abi::gemm_kernels_for;
use crate::util::write_if_changed;

pub(crate) struct KernelFile {
    /// Path relative to the crate root, e.g. `kernels/relu.cu`.
    pub(crate) rel: String,
    pub(crate) path: PathBuf,
    /// What nvcc compiles: `path`, or for a file with generated GEMM kernels a wrapper in
    /// `OUT_DIR` that includes it and appends them (build/abi.rs).
    pub(crate) compile_path: PathBuf,
    /// Unique identifier for generated file names, e.g. `relu` or `fixtures_emu_basic`.
    pub(crate) id: String,
    pub(crate) fixture: bool,
    /// The file's text, followed by its generated kernels if it has any.
    pub(crate) source: String,
    pub(crate) kernels: Vec<String>,
    /// The source with `extern __shared__` declarations rewritten for the emulator.
    pub(crate) emu_source: String,
}

pub(crate) fn collect_kernel_files(
    root: &Path,
    dir: &Path,
    out: &Path,
    fixture: bool,
    files: &mut Vec<KernelFile>,
) {
    let mut paths = files_under(dir, &["cu"]);
    paths.sort();
    for path in paths {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let mut source = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let generated = if fixture {
            String::new()
        } else {
            gemm_kernels_for(&name)
        };
        let compile_path = if generated.is_empty() {
            path.clone()
        } else {
            // The file, then the same text that `source` gets below: nvcc and the emulator
            // compile the same kernels.
            let dir = out.join("generated");
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let wrapper = dir.join(&name);
            let text = format!("#include \"{}\"\n{generated}", path.display());
            write_if_changed(&wrapper, &text);
            source.push_str(&generated);
            wrapper
        };
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let id: String = if fixture {
            format!("fixtures_{stem}")
        } else {
            stem
        }
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
        let stripped = strip_comments_and_strings(&source);
        let kernels = scan_kernels(&stripped).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let emu_source =
            rewrite_extern_shared(&source, &stripped).unwrap_or_else(|e| panic!("{rel}: {e}"));
        files.push(KernelFile {
            rel,
            path,
            compile_path,
            id,
            fixture,
            source,
            kernels,
            emu_source,
        });
    }
}

impl KernelFile {
    /// The file's name, e.g. `conv2d.cu`.
    pub(crate) fn name(&self) -> String {
        self.path.file_name().unwrap().to_string_lossy().to_string()
    }
}

/// The C/C++ headers (and the emulator's runtime source) under `dir`, sorted.
pub(crate) fn collect_headers(dir: &Path) -> Vec<PathBuf> {
    let mut out = files_under(dir, &["cuh", "h", "hpp", "cpp"]);
    out.sort();
    out
}

/// Every file under `dir` (recursively) whose extension is one of `extensions`.
fn files_under(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|e| extensions.iter().any(|x| e == *x))
            {
                out.push(p);
            }
        }
    }
    out
}

pub(crate) fn check_unique_names(files: &[KernelFile]) {
    // A file's id names its generated files and its module: two files may not share a stem.
    let mut ids: HashMap<&str, &str> = HashMap::new();
    for f in files {
        if let Some(other) = ids.insert(&f.id, &f.rel) {
            panic!(
                "kernel files {other} and {} have the same name: each kernel file needs a \
                 unique file name (it names the module)",
                f.rel
            );
        }
    }
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for f in files {
        for k in &f.kernels {
            if let Some(other) = seen.insert(k, &f.rel) {
                panic!(
                    "kernel `{k}` is defined in both {other} and {}: kernels are launched by name, \
                     so every __global__ function needs a unique name",
                    f.rel
                );
            }
        }
    }
}

/// Replaces comments and the contents of string/char literals by spaces, keeping newlines,
/// so that byte offsets and line numbers stay those of the original.
pub(crate) fn strip_comments_and_strings(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                out[i] = b' ';
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            let start = i;
            i += 2;
            while i < b.len() && !(b[i] == b'*' && i + 1 < b.len() && b[i + 1] == b'/') {
                i += 1;
            }
            let end = (i + 2).min(b.len());
            for (k, o) in out.iter_mut().enumerate().take(end).skip(start) {
                if b[k] != b'\n' {
                    *o = b' ';
                }
            }
            i = end;
        } else if b[i] == b'"' || b[i] == b'\'' {
            let q = b[i];
            i += 1;
            while i < b.len() && b[i] != q && b[i] != b'\n' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    out[i] = b' ';
                    i += 1;
                }
                out[i] = b' ';
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    // Only ASCII bytes were replaced by ASCII spaces inside comments/literals; multi-byte
    // characters there become spaces byte by byte, which keeps offsets and stays valid UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| src.to_string())
}

pub(crate) fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Byte offsets of `word` as a whole identifier in `s`.
pub(crate) fn find_word(s: &str, word: &str) -> Vec<usize> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = s[from..].find(word) {
        let at = from + p;
        let end = at + word.len();
        if (at == 0 || !is_ident(b[at - 1])) && (end >= b.len() || !is_ident(b[end])) {
            out.push(at);
        }
        from = end;
    }
    out
}

pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

pub(crate) fn matching_paren(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

pub(crate) fn line_of(s: &str, at: usize) -> usize {
    s[..at].bytes().filter(|&c| c == b'\n').count() + 1
}

/// Names of the `__global__` functions defined in a (comment-stripped) source.
pub(crate) fn scan_kernels(s: &str) -> Result<Vec<String>, String> {
    let b = s.as_bytes();
    let mut names = Vec::new();
    for at in find_word(s, "__global__") {
        let line = line_of(s, at);
        if s[..at].trim_end().ends_with('>') {
            return Err(format!(
                "line {line}: template kernels are not supported (launch by name needs one symbol); \
                 write a plain __global__ wrapper per instantiation"
            ));
        }
        let mut i = at + "__global__".len();
        let mut last_ident: Option<String> = None;
        let name = loop {
            i = skip_ws(b, i);
            if i >= b.len() {
                return Err(format!("line {line}: unterminated __global__ declaration"));
            }
            if is_ident(b[i]) {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                let ident = &s[start..i];
                if ident == "__launch_bounds__" {
                    let open = skip_ws(b, i);
                    i = matching_paren(b, open)
                        .ok_or(format!("line {line}: bad __launch_bounds__"))?
                        + 1;
                } else {
                    last_ident = Some(ident.to_string());
                }
            } else if b[i] == b'(' {
                match last_ident.take() {
                    Some(n) => break n,
                    None => return Err(format!("line {line}: cannot find the kernel's name")),
                }
            } else if b[i] == b'*' || b[i] == b'&' || b[i] == b':' {
                i += 1;
            } else {
                return Err(format!(
                    "line {line}: cannot parse the __global__ declaration"
                ));
            }
        };
        let close = matching_paren(b, i).ok_or(format!("line {line}: unbalanced parentheses"))?;
        let next = skip_ws(b, close + 1);
        // A definition (not a forward declaration) follows with its body.
        if next < b.len() && b[next] == b'{' && !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// `extern __shared__ T name[];` becomes a pointer to the block's dynamic shared buffer in
/// the emulator's copy of the source (same line count, so __LINE__ stays right).
pub(crate) fn rewrite_extern_shared(src: &str, stripped: &str) -> Result<String, String> {
    let b = stripped.as_bytes();
    let mut out = String::new();
    let mut last = 0;
    for at in find_word(stripped, "extern") {
        let j = skip_ws(b, at + "extern".len());
        if !stripped[j..].starts_with("__shared__") {
            continue;
        }
        let line = line_of(stripped, at);
        let semi = stripped[j..]
            .find(';')
            .map(|p| j + p)
            .ok_or(format!("line {line}: missing `;`"))?;
        let decl = &stripped[j + "__shared__".len()..semi];
        let bad = || {
            format!(
                "line {line}: cannot read the dynamic shared memory declaration `{}`; write it as \
                 `extern __shared__ [__align__(N)] TYPE NAME[];`",
                stripped[at..semi].trim()
            )
        };
        let open = decl.find('[').ok_or_else(bad)?;
        if decl[open + 1..].trim() != "]" {
            return Err(bad());
        }
        let mut head = decl[..open].trim().to_string();
        for attr in ["__align__", "alignas"] {
            while let Some(p) = find_word(&head, attr).first().copied() {
                let hb = head.as_bytes();
                let o = skip_ws(hb, p + attr.len());
                let c = matching_paren(hb, o).ok_or_else(bad)?;
                head.replace_range(p..=c, " ");
            }
        }
        let head = head.split_whitespace().collect::<Vec<_>>().join(" ");
        let name_start = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |p| p + 1);
        let (ty, name) = (head[..name_start].trim(), &head[name_start..]);
        if ty.is_empty() || name.is_empty() {
            return Err(bad());
        }
        let depth = b[..at].iter().fold(0i64, |d, &c| match c {
            b'{' => d + 1,
            b'}' => d - 1,
            _ => d,
        });
        if depth <= 0 {
            return Err(format!(
                "line {line}: declare `extern __shared__` inside the kernel (or device function) \
                 that uses it; the emulator cannot back a namespace-scope declaration"
            ));
        }
        let newlines = src[at..=semi].matches('\n').count();
        out.push_str(&src[last..at]);
        let _ = write!(
            out,
            "{ty}* const {name} = reinterpret_cast<{ty}*>(::emu::dynamic_shared());{}",
            "\n".repeat(newlines)
        );
        last = semi + 1;
    }
    out.push_str(&src[last..]);
    Ok(out)
}
