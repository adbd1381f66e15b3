//! The GPU half: each kernel file compiled to PTX and to a fat binary (machine code per
//! architecture, PTX), and the launch facts read from the PTX and ptxas's reports.

use crate::nvcc::Nvcc;
use crate::source::KernelFile;
use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

#[derive(Default, Clone)]
pub(crate) struct PtxEntry {
    pub(crate) symbol: String,
    pub(crate) param_sizes: Vec<u32>,
    pub(crate) max_threads: Option<u32>,
    pub(crate) registers: u32,
    pub(crate) static_smem: u32,
    pub(crate) stack_frame: u32,
    pub(crate) spill_stores: u32,
    pub(crate) spill_loads: u32,
}

pub(crate) struct PtxOutput {
    /// The fat binary: machine code for each embedded architecture and the PTX.
    pub(crate) fatbin_path: PathBuf,
    pub(crate) isa: String,
    /// Keyed by kernel name (the demangled entry name).
    pub(crate) entries: HashMap<String, PtxEntry>,
}

/// Runs `cmd`, failing with its stderr; returns its stderr (warnings, ptxas reports).
pub(crate) fn run_tool(cmd: &mut Command, what: &str) -> Result<String, String> {
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
pub(crate) fn compile_ptx(
    nvcc: &Nvcc,
    f: &KernelFile,
    include_dirs: &[PathBuf],
    out: &Path,
    headers_hash: u64,
) -> Result<PtxOutput, String> {
    let nvcc_args = |arch: &str| -> Vec<String> {
        let mut args = vec![
            "-ptx".into(),
            format!("-arch={arch}"),
            "-std=c++17".into(),
            "-O3".into(),
            "-lineinfo".into(),
        ];
        for dir in include_dirs {
            args.push("-I".into());
            args.push(dir.display().to_string());
        }
        args
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
                    .arg(&f.compile_path),
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
        // The kernels' entries, to check each architecture's ptxas report against.
        let base_entries =
            parse_ptx_entries(&fs::read_to_string(&ptx_tmp).map_err(|e| e.to_string())?);
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
                apply_ptxas_report(&report, &mut base_entries.clone(), &f.rel, arch);
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

pub(crate) fn parse_ptx_entries(ptx: &str) -> Vec<PtxEntry> {
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

pub(crate) fn apply_ptxas_report(report: &str, entries: &mut [PtxEntry], file: &str, arch: &str) {
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
pub(crate) fn demangle_kernel_name(symbol: &str) -> String {
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
