//! The CUDA toolkit for build.rs: finding nvcc as the CUDA ecosystem does, and choosing the
//! architectures to embed machine code (SASS) for.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// Machine code is embedded for these (Ampere, Ampere GA10x, Ada, Hopper, Blackwell
/// datacenter and consumer) where the toolkit supports them; `FOCALFLOW_CUDA_ARCHS` narrows.
const DEFAULT_SASS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120"];
/// The virtual architecture the kernels are written for (and whose PTX gives the launch
/// facts: parameter sizes, registers).
const DEFAULT_PTX_ARCH: &str = "compute_80";
/// ptxas's register/spill report of this architecture goes into the kernel table (the
/// H200's), or of the first one embedded.
const REPORT_ARCH: &str = "sm_90";

pub struct Nvcc {
    pub path: PathBuf,
    /// e.g. "13.0.88".
    pub version: String,
    /// Where it was found: "NVCC", "CUDA_PATH", "PATH", "/usr/local/cuda", ...
    pub found_by: String,
    /// The PTX the kernels are compiled to first, e.g. "compute_80".
    pub ptx_arch: String,
    /// The architectures to embed machine code for, e.g. ["sm_80", "sm_90"].
    pub sass_archs: Vec<String>,
    /// Whose ptxas report the kernel table carries.
    pub report_arch: String,
    /// The newest virtual architecture among the embedded ones, when newer than
    /// `ptx_arch`: its PTX is embedded too, for GPUs newer than all of them.
    pub newest_ptx_arch: Option<String>,
}

/// Where to look for nvcc, in order, with the name of each place, given the environment.
fn candidates(var: &dyn Fn(&str) -> Option<OsString>) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for name in [
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ROOT",
        "CUDA_TOOLKIT_ROOT_DIR",
    ] {
        if let Some(dir) = var(name).filter(|v| !v.is_empty()) {
            out.push((
                format!("${name}"),
                PathBuf::from(dir).join("bin").join("nvcc"),
            ));
        }
    }
    if let Some(paths) = var("PATH") {
        for dir in env::split_paths(&paths) {
            out.push(("PATH".into(), dir.join("nvcc")));
        }
    }
    for dir in ["/usr/local/cuda", "/opt/cuda"] {
        out.push((dir.into(), PathBuf::from(dir).join("bin").join("nvcc")));
    }
    out
}

/// The nvcc the environment points to (`NVCC`, then the [`candidates`] that exist) and
/// where it was found, or why there is none.
pub fn locate(var: &dyn Fn(&str) -> Option<OsString>) -> Result<(String, PathBuf), String> {
    match var("NVCC") {
        Some(v) if v.is_empty() || v == "none" => Err("NVCC=none".into()),
        Some(v) => {
            let p = PathBuf::from(v);
            if p.is_file() {
                Ok(("NVCC".to_string(), p))
            } else {
                Err(format!("NVCC={} does not exist", p.display()))
            }
        }
        None => candidates(var)
            .into_iter()
            .find(|(_, p)| p.is_file())
            .ok_or_else(|| {
                "no nvcc: NVCC unset; none in $CUDA_HOME, $CUDA_PATH, $CUDA_ROOT or \
                 $CUDA_TOOLKIT_ROOT_DIR (bin/nvcc), on PATH, in /usr/local/cuda/bin or /opt/cuda/bin"
                    .to_string()
            }),
    }
}

/// The nvcc to build with, or why there is none.
pub fn find_nvcc() -> Result<Nvcc, String> {
    let (found_by, candidate) = locate(&|name| env::var_os(name))?;
    // nvcc finds cicc, headers and ptxas relative to its real location.
    let path = fs::canonicalize(&candidate).unwrap_or(candidate);
    let run = |arg: &str| -> Result<String, String> {
        let o = Command::new(&path)
            .arg(arg)
            .output()
            .map_err(|e| format!("{} {arg} failed: {e}", path.display()))?;
        if !o.status.success() {
            return Err(format!("{} {arg} failed", path.display()));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let version = run("--version")?
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix('V')
                .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        })
        .unwrap_or("unknown")
        .trim_end_matches(',')
        .to_string();
    // What this toolkit can generate machine code for (older ones lack --list-gpu-code:
    // then assume the default list and let ptxas say otherwise).
    let supported: Vec<String> = run("--list-gpu-code")
        .map(|t| t.split_whitespace().map(String::from).collect())
        .unwrap_or_else(|_| DEFAULT_SASS.iter().map(|s| s.to_string()).collect());
    let wanted: Vec<String> = match env::var("FOCALFLOW_CUDA_ARCHS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|a| {
                let a = a.trim();
                if a.starts_with("sm_") {
                    a.to_string()
                } else {
                    format!("sm_{a}")
                }
            })
            .collect(),
        _ => DEFAULT_SASS.iter().map(|s| s.to_string()).collect(),
    };
    let sass_archs: Vec<String> = wanted
        .iter()
        .filter(|a| supported.contains(a))
        .cloned()
        .collect();
    if sass_archs.is_empty() {
        return Err(format!(
            "nvcc {version} ({}) supports none of the architectures {} (it lists {}); set FOCALFLOW_CUDA_ARCHS to some of those",
            path.display(),
            wanted.join(", "),
            supported.join(" ")
        ));
    }
    let ptx_arch = env::var("FOCALFLOW_PTX_ARCH").unwrap_or_else(|_| DEFAULT_PTX_ARCH.into());
    let number = |a: &str| -> u32 {
        a.trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or(0)
    };
    let newest = sass_archs.iter().map(|a| number(a)).max().unwrap_or(0);
    let newest_ptx_arch = (newest > number(&ptx_arch)).then(|| format!("compute_{newest}"));
    let report_arch = if sass_archs.iter().any(|a| a == REPORT_ARCH) {
        REPORT_ARCH.to_string()
    } else {
        sass_archs[0].clone()
    };
    Ok(Nvcc {
        path,
        version,
        found_by,
        ptx_arch,
        sass_archs,
        report_arch,
        newest_ptx_arch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvcc_is_found_where_the_cuda_ecosystem_puts_it() {
        let root = env::temp_dir().join(format!("focalflow-nvcc-{}", std::process::id()));
        let toolkit = |name: &str| {
            let bin = root.join(name).join("bin");
            fs::create_dir_all(&bin).unwrap();
            fs::write(bin.join("nvcc"), "").unwrap();
            root.join(name)
        };
        let (home, path_dir, cuda_path) =
            (toolkit("home"), toolkit("on-path"), toolkit("cuda-path"));
        let env_of = |pairs: Vec<(&'static str, OsString)>| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let path = env::join_paths([root.join("nowhere"), path_dir.join("bin")]).unwrap();
        // CUDA_HOME before CUDA_PATH before PATH.
        let all = env_of(vec![
            ("CUDA_PATH", cuda_path.clone().into()),
            ("CUDA_HOME", home.clone().into()),
            ("PATH", path.clone()),
        ]);
        assert_eq!(
            locate(&all).unwrap(),
            ("$CUDA_HOME".into(), home.join("bin/nvcc"))
        );
        let no_home = env_of(vec![
            ("CUDA_PATH", cuda_path.clone().into()),
            ("PATH", path.clone()),
        ]);
        assert_eq!(
            locate(&no_home).unwrap(),
            ("$CUDA_PATH".into(), cuda_path.join("bin/nvcc"))
        );
        let root_var = env_of(vec![("CUDA_TOOLKIT_ROOT_DIR", cuda_path.clone().into())]);
        assert_eq!(locate(&root_var).unwrap().0, "$CUDA_TOOLKIT_ROOT_DIR");
        let only_path = env_of(vec![("PATH", path)]);
        assert_eq!(
            locate(&only_path).unwrap(),
            ("PATH".into(), path_dir.join("bin/nvcc"))
        );
        // NVCC wins, and a wrong one is an error rather than a silent fallback.
        let nvcc = env_of(vec![
            ("NVCC", home.join("bin/nvcc").into()),
            ("CUDA_PATH", cuda_path.into()),
        ]);
        assert_eq!(locate(&nvcc).unwrap().0, "NVCC");
        let wrong = env_of(vec![("NVCC", root.join("missing").into())]);
        assert!(locate(&wrong).unwrap_err().contains("does not exist"));
        assert_eq!(
            locate(&env_of(vec![("NVCC", "none".into())])).unwrap_err(),
            "NVCC=none"
        );
        // The default places are tried last (/usr/local/cuda, /opt/cuda).
        let places: Vec<String> = candidates(&env_of(vec![]))
            .into_iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(places, ["/usr/local/cuda", "/opt/cuda"]);
        let _ = fs::remove_dir_all(&root);
    }
}
