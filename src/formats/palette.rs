//! The one set of colours every picture gives the thread states (flamegraphs, the timeline,
//! the HTML report, `top`), and the colours of code frames. Colours only: no drawing here.
//!
//! The state colours come from Okabe and Ito's palette for colour-blind readers (the wait
//! yellow a little deeper, to stand out on white); a test checks that they stay apart under
//! simulated protanopia, deuteranopia and tritanopia.

use crate::sample::ThreadState;

/// An sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

impl Rgb {
    /// "#rrggbb", for SVG, CSS and HTML.
    pub fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.0, self.1, self.2)
    }
}

/// The colour of a thread state, the same in every picture.
pub fn state(state: ThreadState) -> Rgb {
    match state {
        // Vermillion: running Python with the lock, the "hot" state.
        ThreadState::Hold => Rgb(0xd5, 0x5e, 0x00),
        // Yellow: blocked, waiting for the lock.
        ThreadState::Wait => Rgb(0xe5, 0xc8, 0x00),
        // Blue: on a CPU without the GIL (native code).
        ThreadState::Running => Rgb(0x00, 0x72, 0xb2),
        // Grey: asleep on something else.
        ThreadState::Idle => Rgb(0xc8, 0xc8, 0xc8),
        // Bluish green: running Python without a GIL (free-threaded builds).
        ThreadState::Attached => Rgb(0x00, 0x9e, 0x73),
        // Reddish purple: stopped by a stop-the-world pause.
        ThreadState::Suspended => Rgb(0xcc, 0x79, 0xa7),
        // Black: the kernel stopped it (SIGSTOP, a debugger); nothing ran.
        ThreadState::Stopped => Rgb(0x00, 0x00, 0x00),
    }
}

/// Where a code frame's file comes from, which its colour family tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The program's own code.
    Program,
    /// The standard library.
    Stdlib,
    /// An installed package (site-packages, dist-packages).
    Package,
    /// Machine code (C, C++, Rust).
    Native,
    /// Threads, processes, GILs and markers gilscope adds.
    Gilscope,
}

/// A code frame's colour: a pale tint of its origin's hue (so that the state colours stay
/// the only strong ones), varied a little by `name` so that neighbours differ.
pub fn frame(origin: Origin, name: &str) -> Rgb {
    // FNV-1a: stable across runs and platforms, unlike the std hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let vary = (hash % 24) as i32 - 12;
    let (r, g, b) = match origin {
        Origin::Program => (236, 214, 170),
        Origin::Stdlib => (214, 222, 232),
        Origin::Package => (224, 212, 232),
        Origin::Native => (208, 230, 214),
        Origin::Gilscope => (226, 226, 226),
    };
    let channel = |v: i32| (v + vary).clamp(0, 255) as u8;
    Rgb(channel(r), channel(g), channel(b))
}

/// "\x1b[38;2;R;G;Bm": the state's colour as a terminal foreground (24-bit colour).
pub fn ansi_foreground(state: ThreadState) -> String {
    let Rgb(r, g, b) = self::state(state);
    format!("\x1b[38;2;{r};{g};{b}m")
}

/// The terminal's colours back to normal.
pub const ANSI_RESET: &str = "\x1b[0m";

#[cfg(test)]
mod tests {
    use super::*;

    /// CIELAB of an sRGB colour seen through a colour-vision-deficiency matrix (Machado,
    /// Oliveira and Fernandes 2009, severity 1.0; applied to linear RGB).
    fn seen(colour: Rgb, matrix: [[f64; 3]; 3]) -> [f64; 3] {
        let linear = |c: u8| {
            let c = f64::from(c) / 255.0;
            if c <= 0.04045 {
                c / 12.92
            } else {
                ((c + 0.055) / 1.055).powf(2.4)
            }
        };
        let rgb = [linear(colour.0), linear(colour.1), linear(colour.2)];
        let [r, g, b] =
            matrix.map(|row| (row[0] * rgb[0] + row[1] * rgb[1] + row[2] * rgb[2]).clamp(0.0, 1.0));
        let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
        let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
        let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
        let f = |t: f64| {
            if t > 0.008856 {
                t.cbrt()
            } else {
                7.787 * t + 16.0 / 116.0
            }
        };
        let (fx, fy, fz) = (f(x), f(y), f(z));
        [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
    }

    #[test]
    fn state_colours_stay_apart_for_colour_blind_readers() {
        let visions: [(&str, [[f64; 3]; 3]); 4] = [
            (
                "normal",
                [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            ),
            (
                "protanopia",
                [
                    [0.152286, 1.052583, -0.204868],
                    [0.114503, 0.786281, 0.099216],
                    [-0.003882, -0.048116, 1.051998],
                ],
            ),
            (
                "deuteranopia",
                [
                    [0.367322, 0.860646, -0.227968],
                    [0.280085, 0.672501, 0.047413],
                    [-0.011820, 0.042940, 0.968881],
                ],
            ),
            (
                "tritanopia",
                [
                    [1.255528, -0.076749, -0.178779],
                    [-0.078411, 0.930809, 0.147602],
                    [0.004733, 0.691367, 0.303900],
                ],
            ),
        ];
        // A CIELAB distance of 15 reads as clearly different colours side by side; the
        // four GIL states, shown together everywhere, keep 18.
        for (vision, matrix) in visions {
            for (i, a) in ThreadState::ALL.iter().enumerate() {
                for b in &ThreadState::ALL[i + 1..] {
                    let (pa, pb) = (seen(state(*a), matrix), seen(state(*b), matrix));
                    let distance = ((pa[0] - pb[0]).powi(2)
                        + (pa[1] - pb[1]).powi(2)
                        + (pa[2] - pb[2]).powi(2))
                    .sqrt();
                    let both_gil =
                        ThreadState::WITH_GIL.contains(a) && ThreadState::WITH_GIL.contains(b);
                    let needed = if both_gil { 18.0 } else { 15.0 };
                    assert!(
                        distance >= needed,
                        "{} and {} are {distance:.1} apart under {vision}",
                        a.name(),
                        b.name()
                    );
                }
            }
        }
    }

    #[test]
    fn frame_colours_are_pale_and_stable() {
        let a = frame(Origin::Program, "spin (demo.py:3)");
        assert_eq!(a, frame(Origin::Program, "spin (demo.py:3)"));
        for origin in [
            Origin::Program,
            Origin::Stdlib,
            Origin::Package,
            Origin::Native,
            Origin::Gilscope,
        ] {
            let Rgb(r, g, b) = frame(origin, "x");
            assert!(r.min(g).min(b) >= 150, "{origin:?} is not pale");
        }
        assert_eq!(state(ThreadState::Hold).hex(), "#d55e00");
    }
}
