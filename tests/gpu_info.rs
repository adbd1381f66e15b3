//! `focalflow info`'s report: complete on any machine, never a panic.

use focalflow::executor::BUILD;
use focalflow::info::info_report;

#[test]
fn info_report_names_build_executors_gpus_and_versions() {
    let r = info_report();
    println!("{r}");
    for section in ["\nBuild\n", "\nExecutors\n", "\nGPUs\n", "\nVersions\n"] {
        assert!(r.contains(section), "missing {section:?} in:\n{r}");
    }
    assert!(r.contains("  cpu            available"), "{r}");
    assert!(r.contains("  cuda-emu       available"), "{r}");
    assert!(r.contains("  cuda           "), "{r}");
    if BUILD.emulator {
        // What the emulator checks, and what only a GPU can tell.
        assert!(
            r.contains("  emulator checks every kernel access to device memory inside"),
            "{r}"
        );
        assert!(
            r.contains("memory checks on") || r.contains("memory checks off"),
            "{r}"
        );
        assert!(r.contains("  only a GPU     timing;"), "{r}");
    }
    assert!(
        r.contains(&format!("focalflow {}", env!("CARGO_PKG_VERSION"))),
        "{r}"
    );
    assert!(r.contains("cudarc 0.19"), "{r}");
    match BUILD.ptx_isa {
        Some(isa) => {
            assert!(r.contains(&format!("(ISA {isa})")), "{r}");
            // The embedded architectures and where the nvcc came from.
            assert!(!BUILD.sass_archs.is_empty());
            assert!(r.contains(&BUILD.sass_archs.join(" ")), "{r}");
            assert!(r.contains("found by "), "{r}");
        }
        None => assert!(r.contains("not compiled"), "{r}"),
    }
}

#[test]
fn the_gpu_runs_the_machine_code_of_its_generation() {
    use focalflow::executor::ModuleLoad;
    if BUILD.sass_archs.is_empty() {
        return; // no kernels compiled: nothing is embedded (the test above says so)
    }
    // The driver takes the highest minor of the same major, never a newer one.
    let has = |a: &str| BUILD.sass_archs.contains(&a);
    if has("sm_90") {
        assert_eq!(ModuleLoad::expected((9, 0)), Some("sm_90"));
    }
    if has("sm_80") && has("sm_86") {
        assert_eq!(ModuleLoad::expected((8, 7)), Some("sm_86"));
        assert_eq!(ModuleLoad::expected((8, 0)), Some("sm_80"));
    }
    // A generation without machine code in the build compiles the PTX.
    assert_eq!(ModuleLoad::expected((7, 5)), None);
    assert_eq!(ModuleLoad::expected((15, 0)), None);
}
