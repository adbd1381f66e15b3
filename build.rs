//! Build script: the CUDA kernels, twice.
//!
//! Every `kernels/*.cu` (the ops) and `kernels/fixtures/*.cu` (test fixtures) is
//!  1. compiled to PTX by nvcc when one is found (`NVCC`, then `$CUDA_HOME/bin/nvcc`, then
//!     `PATH`), checked for a PTX ISA the GPU machine's driver can load (<= 9.0), assembled by
//!     ptxas for sm_90 so that errors and register spills show in every build, and embedded;
//!  2. always compiled as C++ with `kernels/emu/cuda_emu.h` into a static library (the
//!     "cuda-emu" executor), with one generated `extern "C"` launcher per `__global__`
//!     function taking `cuLaunchKernel`-style arguments.
//!
//! The result is `$OUT_DIR/focalflow_kernels.rs`, included by `src/gpu/kernels.rs`: a table
//! of kernels (name, file, emulator launcher, PTX symbol, parameter sizes, ptxas figures),
//! the PTX modules, and what the build found (nvcc version, PTX ISA, dependency versions).
//! Adding a kernel file needs no edit here. Outputs are cached in `OUT_DIR` by content hash,
//! so touching one kernel recompiles that one only.
//!
//! Environment: `NVCC` (a path, or `none` to build without kernels), `CUDA_HOME`,
//! `FOCALFLOW_PTX_ARCH` (default compute_80), `FOCALFLOW_SASS_ARCH` (default sm_90).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "build/nvcc.rs"]
mod nvcc;

use nvcc::{Nvcc, find_nvcc};

/// Dependencies whose versions `focalflow info` reports.
const REPORTED_DEPS: &[&str] = &[
    "cudarc",
    "gemm",
    "matrixmultiply",
    "rayon",
    "image",
    "clap",
    "bytemuck",
    "safetensors",
    "cc",
];

struct KernelFile {
    /// Path relative to the crate root, e.g. `kernels/relu.cu`.
    rel: String,
    path: PathBuf,
    /// Unique identifier for generated file names, e.g. `relu` or `fixtures_emu_basic`.
    id: String,
    fixture: bool,
    source: String,
    kernels: Vec<String>,
    /// The source with `extern __shared__` declarations rewritten for the emulator.
    emu_source: String,
}

#[derive(Default, Clone)]
struct PtxEntry {
    symbol: String,
    param_sizes: Vec<u32>,
    max_threads: Option<u32>,
    registers: u32,
    static_smem: u32,
    stack_frame: u32,
    spill_stores: u32,
    spill_loads: u32,
}

struct PtxOutput {
    /// The fat binary: machine code for each embedded architecture and the PTX.
    fatbin_path: PathBuf,
    isa: String,
    /// Keyed by kernel name (the demangled entry name).
    entries: HashMap<String, PtxEntry>,
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // A directory: cargo rescans it, so new kernel files trigger a rebuild too.
    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ROOT",
        "CUDA_TOOLKIT_ROOT_DIR",
        "PATH",
        "FOCALFLOW_PTX_ARCH",
        "FOCALFLOW_CUDA_ARCHS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let kernels_dir = root.join("kernels");
    let mut files = Vec::new();
    collect_kernel_files(&root, &kernels_dir, false, &mut files);
    collect_kernel_files(&root, &kernels_dir.join("fixtures"), true, &mut files);
    let headers = collect_headers(&kernels_dir);
    for h in &headers {
        println!("cargo:rerun-if-changed={}", h.display());
    }
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.path.display());
    }
    check_unique_names(&files);
    // nvcc sees the project's headers; the emulator build also kernels/emu/*.
    let emu_dir = kernels_dir.join("emu");
    let kernel_headers: Vec<PathBuf> = headers
        .iter()
        .filter(|h| !h.starts_with(&emu_dir))
        .cloned()
        .collect();
    let headers_hash = hash_files(&kernel_headers);
    let emu_hash = hash_files(&headers);
    let jobs = env::var("NUM_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .unwrap_or(2usize)
        .max(1);

    // ---- PTX --------------------------------------------------------------------------------
    let (nvcc, no_nvcc_reason) = match find_nvcc() {
        Ok(n) => (Some(n), None),
        Err(reason) => {
            println!(
                "cargo:warning=CUDA kernels not compiled ({reason}): this build has the cpu and \
                 cuda-emu executors only; run scripts/install-cuda-toolchain.sh and build with \
                 NVCC=<path> for --device cuda"
            );
            (None, Some(reason))
        }
    };
    if let Some(n) = &nvcc {
        println!(
            "cargo:warning=CUDA kernels: nvcc {} from {} ({}): machine code for {}, PTX {}{}",
            n.version,
            n.found_by,
            n.path.display(),
            n.sass_archs.join(" "),
            n.ptx_arch,
            n.newest_ptx_arch
                .as_ref()
                .map_or(String::new(), |a| format!(" and {a}"))
        );
    }
    let mut ptx: Vec<Option<PtxOutput>> = files.iter().map(|_| None).collect();
    if let Some(nvcc) = &nvcc {
        fs::create_dir_all(out.join("ptx")).expect("create OUT_DIR/ptx");
        let results = run_parallel(jobs, files.len(), |i| {
            compile_ptx(nvcc, &files[i], &kernels_dir, &out, headers_hash)
        });
        let mut errors = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(p) => ptx[i] = Some(p),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            panic!("\n{}\n", errors.join("\n\n"));
        }
    }

    // ---- emulator -----------------------------------------------------------------------------
    let unix = env::var("CARGO_CFG_TARGET_FAMILY").is_ok_and(|f| f.split(',').any(|x| x == "unix"));
    let emulator = unix;
    if emulator {
        build_emulator(&root, &out, &files, emu_hash, jobs);
    } else {
        println!("cargo:warning=the CUDA emulator (cuda-emu) is built on unix targets only");
    }

    // ---- libjpeg-turbo -------------------------------------------------------------------------
    build_libjpeg(&root);

    // ---- the generated table -------------------------------------------------------------------
    let generated = generate_rust(
        &files,
        &ptx,
        nvcc.as_ref(),
        no_nvcc_reason.as_deref(),
        emulator,
        &root,
    );
    write_if_changed(&out.join("focalflow_kernels.rs"), &generated);
}

// ---- the libjpeg-turbo JPEG path ---------------------------------------------------------------------

/// Compiles `src/data/libjpeg_decode.c` against the system's libjpeg(-turbo) and sets the
/// `focalflow_libjpeg` cfg, so that JPEGs decode as `tf.image.decode_jpeg` decodes them.
/// Without the headers (Debian: `libjpeg62-turbo-dev`), the build goes on with zune-jpeg
/// alone and says so. `FOCALFLOW_LIBJPEG=0` leaves libjpeg out; `=require` makes its
/// absence an error (CI sets it, so the libjpeg tests cannot be skipped there).
fn build_libjpeg(root: &Path) {
    println!("cargo::rustc-check-cfg=cfg(focalflow_libjpeg)");
    println!("cargo:rerun-if-env-changed=FOCALFLOW_LIBJPEG");
    let shim = root.join("src").join("data").join("libjpeg_decode.c");
    println!("cargo:rerun-if-changed={}", shim.display());
    let setting = env::var("FOCALFLOW_LIBJPEG").unwrap_or_default();
    if setting == "0" {
        println!("cargo:warning=FOCALFLOW_LIBJPEG=0: JPEGs decode with zune-jpeg only");
        return;
    }
    let compiled = cc::Build::new()
        .file(&shim)
        .opt_level(2)
        .warnings(true)
        .cargo_warnings(false)
        .try_compile("focalflow_libjpeg");
    match compiled {
        Ok(()) => {
            println!("cargo:rustc-link-lib=jpeg");
            println!("cargo:rustc-cfg=focalflow_libjpeg");
        }
        Err(e) if setting == "require" => panic!(
            "FOCALFLOW_LIBJPEG=require, but {} does not compile against libjpeg ({e}); \
             install libjpeg-turbo's headers (Debian: apt install libjpeg62-turbo-dev)",
            shim.display()
        ),
        Err(_) => println!(
            "cargo:warning=libjpeg-turbo headers not found (Debian: libjpeg62-turbo-dev): \
             JPEGs decode with zune-jpeg, close to but not bit-identical with tf.image"
        ),
    }
}

// ---- finding and scanning kernel files ---------------------------------------------------------------

fn collect_kernel_files(root: &Path, dir: &Path, fixture: bool, files: &mut Vec<KernelFile>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu") && p.is_file())
        .collect();
    paths.sort();
    for path in paths {
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let source = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
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
            id,
            fixture,
            source,
            kernels,
            emu_source,
        });
    }
}

fn collect_headers(dir: &Path) -> Vec<PathBuf> {
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
                .is_some_and(|e| e == "cuh" || e == "h" || e == "hpp" || e == "cpp")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn check_unique_names(files: &[KernelFile]) {
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
fn strip_comments_and_strings(src: &str) -> String {
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

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Byte offsets of `word` as a whole identifier in `s`.
fn find_word(s: &str, word: &str) -> Vec<usize> {
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

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn matching_paren(b: &[u8], open: usize) -> Option<usize> {
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

fn line_of(s: &str, at: usize) -> usize {
    s[..at].bytes().filter(|&c| c == b'\n').count() + 1
}

/// Names of the `__global__` functions defined in a (comment-stripped) source.
fn scan_kernels(s: &str) -> Result<Vec<String>, String> {
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
fn rewrite_extern_shared(src: &str, stripped: &str) -> Result<String, String> {
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

// ---- nvcc ---------------------------------------------------------------------------------------------

/// Runs `cmd`, failing with its stderr; returns its stderr (warnings, ptxas reports).
fn run_tool(cmd: &mut Command, what: &str) -> Result<String, String> {
    let o = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    if !o.status.success() {
        return Err(format!("{what} failed:\n{stderr}"));
    }
    Ok(stderr)
}

/// Compiles one kernel file into a fat binary: PTX for `nvcc.ptx_arch` (whose entries give
/// the launch facts), machine code from it by ptxas for every architecture in
/// `nvcc.sass_archs` (each one's register and spill report checked), and the PTX of the
/// newest architecture for GPUs newer than all of them. Cached in OUT_DIR by a hash of
/// the source, headers, toolkit and choices.
fn compile_ptx(
    nvcc: &Nvcc,
    f: &KernelFile,
    kernels_dir: &Path,
    out: &Path,
    headers_hash: u64,
) -> Result<PtxOutput, String> {
    let nvcc_args = |arch: &str| -> Vec<String> {
        vec![
            "-ptx".into(),
            format!("-arch={arch}"),
            "-std=c++17".into(),
            "-O3".into(),
            "-lineinfo".into(),
            "-I".into(),
            kernels_dir.display().to_string(),
        ]
    };
    let mut h = DefaultHasher::new();
    (
        &f.source,
        headers_hash,
        &nvcc.path,
        &nvcc.version,
        nvcc_args(&nvcc.ptx_arch),
        &nvcc.sass_archs,
        &nvcc.newest_ptx_arch,
    )
        .hash(&mut h);
    let key = format!("{}-{:016x}", f.id, h.finish());
    let dir = out.join("ptx");
    let ptx_path = dir.join(format!("{key}.ptx"));
    let report_path = dir.join(format!("{key}.ptxas.txt"));
    let fatbin_path = dir.join(format!("{key}.fatbin"));

    if !(ptx_path.is_file() && report_path.is_file() && fatbin_path.is_file()) {
        let compile = |arch: &str, dst: &Path| -> Result<(), String> {
            let tmp = dst.with_extension("ptx.tmp");
            let stderr = run_tool(
                Command::new(&nvcc.path)
                    .args(nvcc_args(arch))
                    .arg("-o")
                    .arg(&tmp)
                    .arg(&f.path),
                &format!("nvcc -arch={arch} on {}", f.rel),
            )?;
            for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
                println!("cargo:warning=nvcc {}: {line}", f.rel);
            }
            fs::rename(&tmp, dst).map_err(|e| e.to_string())
        };
        let ptx_tmp = dir.join(format!("{key}.base.ptx"));
        compile(&nvcc.ptx_arch, &ptx_tmp)?;
        let ptxas = nvcc.path.with_file_name("ptxas");
        let fatbinary = nvcc.path.with_file_name("fatbinary");
        let number = |a: &str| {
            a.trim_start_matches(|c: char| !c.is_ascii_digit())
                .to_string()
        };
        let mut images = Vec::new();
        let mut report_of_record = String::new();
        for arch in &nvcc.sass_archs {
            let cubin = dir.join(format!("{key}.{arch}.cubin"));
            let report = run_tool(
                Command::new(&ptxas)
                    .arg(format!("-arch={arch}"))
                    .arg("-v")
                    .arg("-o")
                    .arg(&cubin)
                    .arg(&ptx_tmp),
                &format!("ptxas ({arch}) on the PTX of {}", f.rel),
            )?;
            // Every architecture's warnings and spills are reported (the table's own below).
            if *arch == nvcc.report_arch {
                report_of_record = report;
            } else {
                let text = fs::read_to_string(&ptx_tmp).map_err(|e| e.to_string())?;
                apply_ptxas_report(&report, &mut parse_ptx_entries(&text), &f.rel, arch);
            }
            images.push(format!(
                "--image3=kind=elf,sm={},file={}",
                number(arch),
                cubin.display()
            ));
        }
        images.push(format!(
            "--image3=kind=ptx,sm={},file={}",
            number(&nvcc.ptx_arch),
            ptx_tmp.display()
        ));
        if let Some(newest) = &nvcc.newest_ptx_arch {
            let newest_ptx = dir.join(format!("{key}.{newest}.ptx"));
            compile(newest, &newest_ptx)?;
            images.push(format!(
                "--image3=kind=ptx,sm={},file={}",
                number(newest),
                newest_ptx.display()
            ));
        }
        let fatbin_tmp = fatbin_path.with_extension("fatbin.tmp");
        run_tool(
            Command::new(&fatbinary)
                .arg(format!("--create={}", fatbin_tmp.display()))
                .arg("-64")
                .args(&images),
            &format!("fatbinary for {}", f.rel),
        )?;
        fs::write(&report_path, &report_of_record).map_err(|e| e.to_string())?;
        fs::rename(&fatbin_tmp, &fatbin_path).map_err(|e| e.to_string())?;
        fs::rename(&ptx_tmp, &ptx_path).map_err(|e| e.to_string())?;
    }

    let text = fs::read_to_string(&ptx_path).map_err(|e| e.to_string())?;
    let report = fs::read_to_string(&report_path).map_err(|e| e.to_string())?;
    let isa = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .ok_or(format!("{}: no .version in the PTX", f.rel))?
        .trim()
        .to_string();
    let mut entries = parse_ptx_entries(&text);
    apply_ptxas_report(&report, &mut entries, &f.rel, &nvcc.report_arch);

    let mut by_name = HashMap::new();
    for e in entries {
        let name = demangle_kernel_name(&e.symbol);
        if f.kernels.contains(&name) {
            by_name.insert(name, e);
        } else {
            println!(
                "cargo:warning={}: PTX entry {} does not match a __global__ function found in the source",
                f.rel, e.symbol
            );
        }
    }
    for k in &f.kernels {
        if !by_name.contains_key(k) {
            return Err(format!(
                "{}: kernel `{k}` has no entry in the PTX (namespaced kernels are not supported)",
                f.rel
            ));
        }
    }
    Ok(PtxOutput {
        fatbin_path,
        isa,
        entries: by_name,
    })
}

fn parse_ptx_entries(ptx: &str) -> Vec<PtxEntry> {
    let mut out = Vec::new();
    let mut lines = ptx.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(p) = line.find(".entry ") else {
            continue;
        };
        let rest = &line[p + ".entry ".len()..];
        let symbol = rest
            .split(|c: char| c == '(' || c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_string();
        let mut e = PtxEntry {
            symbol,
            ..Default::default()
        };
        // Parameters, one per line, until `)`; then directives such as .maxntid until `{`.
        for l in lines.by_ref() {
            let t = l.trim();
            if t.starts_with('{') {
                break;
            }
            if let Some(spec) = t.strip_prefix(".param") {
                let toks: Vec<&str> = spec.split_whitespace().collect();
                let elem = toks
                    .iter()
                    .find_map(|t| {
                        let t = t.trim_start_matches('.');
                        let bits: u32 = t.get(1..)?.parse().ok()?;
                        matches!(t.as_bytes()[0], b'u' | b's' | b'f' | b'b').then_some(bits / 8)
                    })
                    .unwrap_or(0);
                let name = toks.last().copied().unwrap_or("");
                let count = name
                    .split_once('[')
                    .and_then(|(_, n)| n.trim_end_matches([']', ',']).parse::<u32>().ok())
                    .unwrap_or(1);
                e.param_sizes.push(elem * count);
            } else if let Some(v) = t.strip_prefix(".maxntid") {
                let dims: Vec<u32> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
                e.max_threads = Some(dims.iter().product());
            }
        }
        out.push(e);
    }
    out
}

fn apply_ptxas_report(report: &str, entries: &mut [PtxEntry], file: &str, arch: &str) {
    let num_before = |s: &str, unit: &str| -> Option<u32> {
        let p = s.find(unit)?;
        s[..p]
            .split(|c: char| !c.is_ascii_digit())
            .rfind(|w| !w.is_empty())?
            .parse()
            .ok()
    };
    let mut cur: Option<usize> = None;
    for line in report.lines() {
        if let Some(p) = line.find("Compiling entry function '") {
            let rest = &line[p + "Compiling entry function '".len()..];
            let sym = rest.split('\'').next().unwrap_or("");
            cur = entries.iter().position(|e| e.symbol == sym);
        } else if line.contains("ptxas warning") || line.contains("ptxas error") {
            println!("cargo:warning=ptxas {arch} {file}: {}", line.trim());
        } else if let Some(i) = cur {
            let e = &mut entries[i];
            if line.contains("bytes stack frame") {
                e.stack_frame = num_before(line, "bytes stack frame").unwrap_or(0);
                e.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
                e.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used ") && line.contains("registers") {
                e.registers = num_before(line, "registers").unwrap_or(0);
                e.static_smem = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    for e in entries.iter() {
        if e.spill_stores > 0 || e.spill_loads > 0 {
            println!(
                "cargo:warning=ptxas {arch} {file}: kernel {} spills registers ({} bytes stores, {} bytes loads, \
                 {} registers)",
                demangle_kernel_name(&e.symbol),
                e.spill_stores,
                e.spill_loads,
                e.registers
            );
        }
    }
}

/// `_Z6reducePKfPfi` -> `reduce`; `cfun` (extern "C") -> `cfun`.
fn demangle_kernel_name(symbol: &str) -> String {
    if let Some(rest) = symbol.strip_prefix("_Z") {
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(n) = digits.parse::<usize>()
            && let Some(name) = rest.get(digits.len()..digits.len() + n)
        {
            return name.to_string();
        }
    }
    symbol.to_string()
}

// ---- the emulator -----------------------------------------------------------------------------------

fn build_emulator(root: &Path, out: &Path, files: &[KernelFile], emu_hash: u64, jobs: usize) {
    let emu_dir = root.join("kernels").join("emu");
    let header = emu_dir.join("cuda_emu.h");
    let gen_dir = out.join("emu");
    fs::create_dir_all(&gen_dir).expect("create OUT_DIR/emu");

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .warnings(true)
        .extra_warnings(false)
        .flag("-fno-strict-aliasing")
        .flag("-ftls-model=initial-exec")
        .flag("-Wno-sign-compare")
        .flag("-Wno-unknown-pragmas") // #pragma unroll
        // Large local arrays probe page by page, so an overflow hits the fiber's guard page
        // (and is reported) instead of skipping it into a neighbour's stack.
        .flag_if_supported("-fstack-clash-protection")
        .include(root.join("kernels"))
        .include(root.join("kernels").join("fixtures"))
        .include(&emu_dir);
    let compiler = build.get_compiler();
    let cmd_key = format!("{:?} {:?}", compiler.path(), compiler.args());

    // One translation unit per kernel file plus the runtime.
    let mut units: Vec<(String, String, PathBuf)> = Vec::new(); // (label, text or "", source)
    units.push((
        "kernels/emu/runtime.cpp".into(),
        String::new(),
        emu_dir.join("runtime.cpp"),
    ));
    for f in files {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "// Generated by build.rs from {}: do not edit.",
            f.rel
        );
        let _ = writeln!(text, "#include \"{}\"", header.display());
        let _ = writeln!(text, "namespace {{");
        let _ = writeln!(text, "#line 1 \"{}\"", f.rel);
        text.push_str(&f.emu_source);
        let _ = writeln!(text, "\n}}  // namespace");
        let _ = writeln!(text, "#line 1 \"{}.emu.cpp\"", f.id);
        for k in &f.kernels {
            let _ = writeln!(
                text,
                "extern \"C\" int focalflow_emu_launch_{k}(const ::emu::LaunchParams* p, void** args, \
                 const uint32_t* arg_sizes, uint32_t nargs, char* err, size_t err_len) {{\n    \
                 return ::emu::launch_kernel(p, \"{k}\", \"{}\", &{k}, args, arg_sizes, nargs, err, err_len);\n}}",
                f.rel
            );
        }
        let path = gen_dir.join(format!("{}.emu.cpp", f.id));
        write_if_changed(&path, &text);
        units.push((f.rel.clone(), text, path));
    }

    let results = run_parallel(jobs, units.len(), |i| {
        let (label, text, src) = &units[i];
        let mut h = DefaultHasher::new();
        let body = if text.is_empty() {
            fs::read_to_string(src).unwrap_or_default()
        } else {
            text.clone()
        };
        (body, emu_hash, &cmd_key).hash(&mut h);
        let stem = src.file_stem().unwrap().to_string_lossy().replace('.', "_");
        let obj = gen_dir.join(format!("{stem}-{:016x}.o", h.finish()));
        if obj.is_file() {
            return Ok(obj);
        }
        let tmp = obj.with_extension("o.tmp");
        let o = compiler
            .to_command()
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(&tmp)
            .output()
            .map_err(|e| format!("{label}: cannot run the C++ compiler: {e}"))?;
        let stderr = String::from_utf8_lossy(&o.stderr);
        if !o.status.success() {
            return Err(format!(
                "the emulator build (C++) of {label} failed:\n{stderr}"
            ));
        }
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            println!("cargo:warning=emulator build of {label}: {line}");
        }
        fs::rename(&tmp, &obj).map_err(|e| e.to_string())?;
        Ok(obj)
    });
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(o) => objects.push(o),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        panic!("\n{}\n", errors.join("\n\n"));
    }
    build.objects(&objects).compile("focalflow_emu");
}

// ---- generated Rust -----------------------------------------------------------------------------------

fn generate_rust(
    files: &[KernelFile],
    ptx: &[Option<PtxOutput>],
    nvcc: Option<&Nvcc>,
    no_nvcc_reason: Option<&str>,
    emulator: bool,
    root: &Path,
) -> String {
    let mut s = String::from("// Generated by build.rs: do not edit.\n\n");
    let opt = |v: Option<String>| v.map_or("None".to_string(), |v| format!("Some({v:?})"));
    let isa = ptx.iter().flatten().map(|p| p.isa.clone()).max();
    let deps = dependency_versions(root);
    let rustc = env::var("RUSTC")
        .ok()
        .and_then(|r| Command::new(r).arg("--version").output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let switch = if env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
    {
        "x86-64 assembly context switch"
    } else {
        "ucontext"
    };
    let _ = writeln!(
        s,
        "pub static BUILD: BuildInfo = BuildInfo {{\n    nvcc_path: {},\n    nvcc_version: {},\n    \
         nvcc_found_by: {},\n    no_nvcc_reason: {},\n    ptx_arch: {},\n    sass_arch: {},\n    \
         sass_archs: &{:?},\n    newest_ptx_arch: {},\n    ptx_isa: {},\n    \
         emulator: {emulator},\n    emulator_switch: {switch:?},\n    target: {:?},\n    profile: {:?},\n    \
         rustc: {rustc:?},\n    dependencies: &[{}],\n}};\n",
        opt(nvcc.map(|n| n.path.display().to_string())),
        opt(nvcc.map(|n| n.version.clone())),
        opt(nvcc.map(|n| n.found_by.clone())),
        opt(no_nvcc_reason.map(str::to_string)),
        opt(nvcc.map(|n| n.ptx_arch.clone())),
        opt(nvcc.map(|n| n.report_arch.clone())),
        nvcc.map_or(Vec::new(), |n| n.sass_archs.clone()),
        opt(nvcc.and_then(|n| n.newest_ptx_arch.clone())),
        opt(isa),
        env::var("TARGET").unwrap_or_default(),
        env::var("PROFILE").unwrap_or_default(),
        deps.iter()
            .map(|(n, v)| format!("({n:?}, {v:?})"))
            .collect::<Vec<_>>()
            .join(", "),
    );

    s.push_str("pub static PTX_MODULES: &[PtxModule] = &[\n");
    let mut module_index = HashMap::new();
    for (i, (f, p)) in files.iter().zip(ptx).enumerate() {
        if let Some(p) = p {
            module_index.insert(i, module_index.len());
            let _ = writeln!(
                s,
                "    PtxModule {{ file: {:?}, isa: {:?}, fatbin: include_bytes!({:?}) }},",
                f.rel,
                p.isa,
                p.fatbin_path.display().to_string()
            );
        }
    }
    s.push_str("];\n\n");

    if emulator {
        s.push_str("unsafe extern \"C\" {\n");
        for f in files {
            for k in &f.kernels {
                let _ = writeln!(
                    s,
                    "    fn focalflow_emu_launch_{k}(p: *const EmuLaunchParams, args: *mut *mut c_void, \
                     arg_sizes: *const u32, nargs: u32, err: *mut c_char, err_len: usize) -> c_int;"
                );
            }
        }
        s.push_str("}\n\n");
    }

    s.push_str("pub static KERNELS: &[KernelInfo] = &[\n");
    for (i, (f, p)) in files.iter().zip(ptx).enumerate() {
        for k in &f.kernels {
            let emu = if emulator {
                format!("Some(focalflow_emu_launch_{k})")
            } else {
                "None".into()
            };
            let ptx_info = match p.as_ref().and_then(|p| p.entries.get(k)) {
                Some(e) => format!(
                    "Some(PtxKernel {{ module: {}, symbol: {:?}, param_sizes: &{:?}, max_threads: {:?}, \
                     registers: {}, static_smem: {}, stack_frame: {}, spill_stores: {}, spill_loads: {} }})",
                    module_index[&i],
                    e.symbol,
                    e.param_sizes,
                    e.max_threads,
                    e.registers,
                    e.static_smem,
                    e.stack_frame,
                    e.spill_stores,
                    e.spill_loads
                ),
                None => "None".into(),
            };
            let _ = writeln!(
                s,
                "    KernelInfo {{ name: {k:?}, file: {:?}, fixture: {}, emu: {emu}, ptx: {ptx_info} }},",
                f.rel, f.fixture
            );
        }
    }
    s.push_str("];\n");
    s
}

/// Versions of the reported dependencies, from Cargo.lock (name -> highest version).
fn dependency_versions(root: &Path) -> Vec<(String, String)> {
    let lock = fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    let mut name: Option<String> = None;
    for line in lock.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            name = None;
        } else if let Some(v) = line.strip_prefix("name = ") {
            name = Some(v.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.as_ref())
            && REPORTED_DEPS.contains(&n.as_str())
        {
            found.insert(n.clone(), v.trim_matches('"').to_string());
        }
    }
    REPORTED_DEPS
        .iter()
        .filter_map(|d| found.get(*d).map(|v| (d.to_string(), v.clone())))
        .collect()
}

// ---- helpers -------------------------------------------------------------------------------------------

fn hash_files(paths: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for p in paths {
        p.hash(&mut h);
        fs::read(p).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Runs `task(0..n)` on up to `jobs` threads; results in index order.
fn run_parallel<T: Send>(jobs: usize, n: usize, task: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(n) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let r = task(i);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("task result"))
        .collect()
}
