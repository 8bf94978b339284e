//! Replays the fuzzers' seeds, every input they ever crashed on (fuzz/regressions), and a fixed
//! set of random mutations of each through the library's fuzz entry points; it runs no fuzzer.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use gilscope::dev::fuzzing::{read_elf_bytes, walk_snapshot, Snapshot};

/// Mutations of each seed: enough to reach the corners the seeds alone do not.
const MUTATIONS: usize = 300;
/// One call over a few hundred KB reads far less than this; longer is a hang.
const CALL_LIMIT: Duration = Duration::from_secs(10);

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(dir);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    found.retain(|p| p.is_file() && !p.ends_with(".gitkeep"));
    found.sort();
    found
}

/// Overwrite, flip, cut or splice bytes; pointers are replaced by others found in the input,
/// by the edges of the address space, or by themselves nudged, which garbage in a live target
/// looks like.
fn mutate(rng: &mut fastrand::Rng, seed: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    if bytes.is_empty() {
        return (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
    }
    for _ in 0..rng.usize(1..8) {
        let at = rng.usize(..bytes.len());
        match rng.u8(..6) {
            0 => bytes[at] = rng.u8(..),
            1 => bytes[at] ^= 1 << rng.u8(..8),
            2 if at + 8 <= bytes.len() => {
                let other = rng.usize(..bytes.len() - 7);
                let word: [u8; 8] = bytes[other..other + 8].try_into().unwrap();
                bytes[at..at + 8].copy_from_slice(&word);
            }
            3 if at + 8 <= bytes.len() => {
                let value: u64 = match rng.u8(..5) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => 1 << 47,
                    3 => rng.u64(..),
                    _ => u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
                        .wrapping_add(rng.u64(..64) * 8),
                };
                bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            4 => bytes.truncate(at.max(1)),
            _ => {
                let end = (at + rng.usize(1..256)).min(bytes.len());
                let chunk = bytes[at..end].to_vec();
                let to = rng.usize(..bytes.len());
                bytes.splice(to..to, chunk);
            }
        }
    }
    bytes
}

/// Run `call` on every input in a worker thread; fail on the first panic, or on a call that
/// does not return within `CALL_LIMIT`. Failing inputs are saved to replay one by one.
fn replay(name: &str, inputs: Vec<(String, Vec<u8>)>, call: fn(&[u8])) {
    let (progress, seen) = mpsc::channel::<usize>();
    let shared = std::sync::Arc::new(inputs);
    let worker_inputs = shared.clone();
    std::thread::spawn(move || {
        for (i, (_, bytes)) in worker_inputs.iter().enumerate() {
            let _ = progress.send(i);
            let ok = std::panic::catch_unwind(|| call(bytes)).is_ok();
            if !ok {
                return;
            }
        }
        let _ = progress.send(usize::MAX);
    });
    let mut current = None;
    loop {
        match seen.recv_timeout(CALL_LIMIT) {
            Ok(usize::MAX) => return,
            Ok(i) => current = Some(i),
            Err(mpsc::RecvTimeoutError::Timeout) => fail(name, &shared, current, "hangs"),
            Err(mpsc::RecvTimeoutError::Disconnected) => fail(name, &shared, current, "panics"),
        }
    }
}

fn fail(name: &str, inputs: &[(String, Vec<u8>)], current: Option<usize>, what: &str) -> ! {
    let Some((label, bytes)) = current.and_then(|i| inputs.get(i)) else {
        panic!("{name}: the replay {what} before its first input");
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz_replay");
    let _ = std::fs::create_dir_all(&dir);
    let saved = dir.join(format!("{name}-{}", label.replace(['/', ' '], "_")));
    let _ = std::fs::write(&saved, bytes);
    panic!(
        "{name} {what} on {label}; input saved to {} (reproduce with cargo fuzz run {name} FILE)",
        saved.display()
    );
}

/// The seeds, the regression inputs, and `MUTATIONS` deterministic mutations of each seed.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut rng = fastrand::Rng::with_seed(0x6115_c09e);
    let read = |p: &PathBuf| (p.display().to_string(), std::fs::read(p).unwrap());
    let seeds: Vec<(String, Vec<u8>)> =
        files(&format!("seeds/{target}")).iter().map(read).collect();
    let mut all: Vec<(String, Vec<u8>)> = files(&format!("regressions/{target}"))
        .iter()
        .map(read)
        .collect();
    for (label, bytes) in &seeds {
        all.push((label.clone(), bytes.clone()));
        for n in 0..MUTATIONS {
            all.push((format!("{label} mutation {n}"), mutate(&mut rng, bytes)));
        }
    }
    all
}

#[test]
fn seed_snapshots_replay_their_threads_and_stacks() {
    let seeds = files("seeds/remote_walk");
    assert!(!seeds.is_empty(), "no seed snapshots under fuzz/seeds");
    for path in seeds {
        let bytes = std::fs::read(&path).unwrap();
        assert!(Snapshot::parse(&bytes).is_some(), "{}", path.display());
        let walked = walk_snapshot(&bytes);
        // spinners.py --threads 2: the main thread and two spinners, each with a stack.
        assert_eq!(walked.threads, 3, "{}: {walked:?}", path.display());
        assert!(walked.frames >= 3, "{}: {walked:?}", path.display());
    }
}

#[test]
fn mutated_snapshots_never_panic_or_hang() {
    replay("remote_walk", inputs("remote_walk"), |b| {
        walk_snapshot(b);
    });
}

#[test]
fn mutated_elf_files_never_panic_or_hang() {
    replay("elf_reader", inputs("elf_reader"), read_elf_bytes);
}
