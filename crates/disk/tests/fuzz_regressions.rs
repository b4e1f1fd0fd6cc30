//! Replays the fuzz seeds and every input a fuzzer ever flagged (`fuzz/seeds/<format>/`,
//! `fuzz/regressions/<format>/`, in the encoded form of `paddock_disk::fuzzing::decode`) through the same harness the fuzz targets use. A panic here
//! is a regression of a fixed bug.

use std::path::Path;

use paddock_disk::Format;

fn replay(dir: &Path) -> usize {
    let mut n = 0;
    let Ok(formats) = std::fs::read_dir(dir) else {
        return 0;
    };
    for fdir in formats.flatten().filter(|d| d.path().is_dir()) {
        let name = fdir.file_name().to_string_lossy().to_string();
        let format: Option<Format> = if name == "probe" {
            None
        } else {
            Some(name.parse().unwrap())
        };
        for input in std::fs::read_dir(fdir.path()).unwrap().flatten() {
            let data = std::fs::read(input.path()).unwrap();
            paddock_disk::fuzzing::exercise_encoded(format, &data);
            n += 1;
        }
    }
    n
}

#[test]
fn fuzz_seeds_and_regressions_replay_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let n = replay(&root.join("seeds")) + replay(&root.join("regressions"));
    assert!(n > 0, "no fuzz inputs found under {}", root.display());
}
