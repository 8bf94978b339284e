//! Developer tool: what one read of a thread's CPU clock costs, perf counter against
//! schedstat, for a thread on a CPU and for a sleeping one.
use std::time::Instant;

use gilscope::target::cpu_clock::CpuClocks;
use gilscope::target::task::Tasks;

fn main() {
    let spinner = std::thread::spawn(|| loop {
        std::hint::black_box(0);
    });
    let _ = spinner;
    let sleeper = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(60)));
    let _ = sleeper;
    std::thread::sleep(std::time::Duration::from_millis(100));
    let pid = std::process::id() as i32;
    let mut tasks = Tasks::new(pid);
    let tids = tasks.list().unwrap();
    let mut clocks = CpuClocks::new();
    for &tid in &tids {
        let _ = clocks.read(tid);
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(clocks.read(tid));
        }
        let perf = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for _ in 0..n {
            let _ = std::hint::black_box(tasks.read(tid, true));
        }
        let proc = t.elapsed().as_nanos() as f64 / n as f64;
        let state = tasks.state_letter(tid).unwrap_or('?');
        println!("tid {tid} ({state}): perf read {perf:.0} ns, syscall+schedstat {proc:.0} ns");
    }
    std::process::exit(0);
}
