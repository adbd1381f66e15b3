//! `focalflow info`'s report: complete on any machine, never a panic.

use focalflow::gpu::BUILD;
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
    assert!(
        r.contains(&format!("focalflow {}", env!("CARGO_PKG_VERSION"))),
        "{r}"
    );
    assert!(r.contains("cudarc 0.19"), "{r}");
    match BUILD.ptx_isa {
        Some(isa) => {
            assert!(r.contains(&format!("PTX ISA {isa}")), "{r}");
            let (major, minor) = isa.split_once('.').unwrap();
            let v: (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
            assert!(
                v <= (9, 0),
                "PTX ISA {isa} is newer than the GPU machine's driver loads"
            );
        }
        None => assert!(r.contains("not compiled"), "{r}"),
    }
}
