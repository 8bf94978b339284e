//! `gilscope top`: sample in a thread, and every second redraw the live view on a terminal
//! (or print one plain line into a pipe). Owns the terminal, and always gives it back as it was.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Read;
use std::os::fd::AsFd;

use crossterm::{cursor, execute, queue, terminal};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::cli::TopArgs;
use crate::error::{Error, Result};
use crate::formats::live::{self, ViewState};
use crate::model::live::{History, Slice};
use crate::model::{EndReason, TargetInfo};
use crate::recorder::{self, RecordOptions, Recorder, Slices};
use crate::target::process;

/// How often the view is refreshed.
pub const REFRESH: Duration = Duration::from_secs(1);
/// How long the terminal loop waits for a key before it looks for news from the sampler.
const KEY_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct TopOptions {
    pub pid: i32,
    pub rate_hz: f64,
    pub view: ViewState,
    /// Also watch the Python processes below `pid`, grouped by process.
    pub subprocesses: bool,
    /// Merge native frames into the stacks (`--native`).
    pub native: bool,
    /// Where runnable threads left their CPU (`--switch-sites`).
    pub switch_sites: bool,
}

/// Why `top` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopEnd {
    /// q, Ctrl-C or a signal.
    Quit,
    TargetExited,
}

enum News {
    /// A second of one process; `exited` when it is that process's last.
    Slice {
        target: Box<TargetInfo>,
        slice: Box<Slice>,
        exited: bool,
    },
    Ended(EndReason),
}

/// The sampler's thread; stopped and joined when dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `gilscope top`.
pub fn run(args: TopArgs) -> Result<()> {
    recorder::check_target(args.pid)?;
    // The view polls this flag: no forced exit on a second signal, which could leave the
    // terminal in raw mode.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let _ = signal_hook::flag::register(signal, stop.clone());
    }
    let options = TopOptions {
        pid: args.pid,
        rate_hz: args.rate,
        view: ViewState {
            sort: args.sort.into(),
            show_idle: args.idle,
            stacks: !args.gil_only,
        },
        subprocesses: args.subprocesses,
        native: args.native,
        switch_sites: args.switch_sites,
    };
    if top(options, stop)? == TopEnd::TargetExited {
        eprintln!("gilscope: process {} exited", args.pid);
    }
    Ok(())
}

/// Watch process `options.pid` until q, Ctrl-C, `stop` or its exit.
pub fn top(options: TopOptions, stop: Arc<AtomicBool>) -> Result<TopEnd> {
    let observer = recorder::attach(options.pid)?;
    let target = recorder::target_info(&observer);
    let mut recording = Recorder::from_observer(observer, options.subprocesses);
    let (news, receiver) = mpsc::channel();
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let record_options = RecordOptions {
        rate_hz: options.rate_hz,
        duration: None,
        stacks: options.view.stacks,
        native: options.native,
        switch_sites: options.switch_sites,
        timeline: false,
        progress: None,
    };
    let root = options.pid;
    let thread = {
        let stop = sampler_stop.clone();
        std::thread::Builder::new()
            .name("gilscope-sampler".into())
            .spawn(move || {
                let mut cpu = process::cpu_times();
                let mut steal = None;
                let mut send = |part: recorder::ProcessSlice| {
                    // One reading of steal per refresh, shared by the processes of that refresh.
                    if part.observer.pid == root {
                        let now = process::cpu_times();
                        steal = process::steal_share(cpu, now);
                        cpu = now;
                    }
                    let mut slice =
                        Slice::from_profile(&part.profile, part.observer.stack_table(), steal);
                    slice.switch_sites = recorder::switch_sites(part.observer);
                    let _ = news.send(News::Slice {
                        target: Box::new(recorder::target_info(part.observer)),
                        slice: Box::new(slice),
                        exited: part.exited,
                    });
                };
                let slices = Some(Slices {
                    every: REFRESH,
                    sink: &mut send,
                });
                let ended = recording
                    .run(&record_options, &stop, None, slices)
                    .iter()
                    .map(|(r, _)| r.sampler.ended)
                    .find(|e| !e.target_gone())
                    .unwrap_or(EndReason::TargetExited);
                let _ = news.send(News::Ended(ended));
            })
            .map_err(|e| Error::Internal(format!("cannot start the sampler thread: {e}")))?
    };
    let sampler = Sampler {
        stop: sampler_stop,
        thread: Some(thread),
    };
    let watch = Watch {
        root: options.pid,
        processes: vec![(target, History::new())],
        exited: Vec::new(),
        subprocesses: options.subprocesses,
        rate_hz: options.rate_hz,
        view: options.view,
        started: Instant::now(),
        receiver,
        stop,
    };
    let end = if std::io::stdout().is_terminal() {
        watch.on_terminal()
    } else {
        watch.in_plain_lines()
    };
    drop(sampler);
    end
}

struct Watch {
    root: i32,
    /// The processes watched, each with its seconds; the first is `root`.
    processes: Vec<(TargetInfo, History)>,
    /// Processes whose last second was the latest news.
    exited: Vec<i32>,
    subprocesses: bool,
    rate_hz: f64,
    view: ViewState,
    started: Instant,
    receiver: Receiver<News>,
    stop: Arc<AtomicBool>,
}

/// What a look at the sampler found.
enum Heard {
    /// A second of this process.
    Slice(i32),
    End(TopEnd),
}

impl Watch {
    fn hear(&mut self, news: std::result::Result<News, ()>) -> Result<Heard> {
        match news {
            Ok(News::Slice {
                target,
                slice,
                exited,
            }) => {
                // Alone, the target's exit ends the view; among several, a process that
                // exited leaves it once its last second has been shown.
                self.processes
                    .retain(|(t, _)| !self.exited.contains(&t.pid));
                self.exited.clear();
                let pid = target.pid;
                match self.processes.iter_mut().find(|(t, _)| t.pid == pid) {
                    Some((_, history)) => history.push(*slice),
                    None => {
                        let mut history = History::new();
                        history.push(*slice);
                        self.processes.push((*target, history));
                    }
                }
                if exited && self.subprocesses {
                    self.exited.push(pid);
                }
                Ok(Heard::Slice(pid))
            }
            Ok(News::Ended(e)) if e.target_gone() => Ok(Heard::End(TopEnd::TargetExited)),
            Ok(News::Ended(_)) => Ok(Heard::End(TopEnd::Quit)),
            Err(()) => Err(Error::Internal("the sampler thread stopped".into())),
        }
    }

    /// Print one line per refresh until stopped or the target exits.
    fn in_plain_lines(mut self) -> Result<TopEnd> {
        let (target, _) = &self.processes[0];
        eprintln!(
            "gilscope: watching process {} (Python {}){} at {} Hz; a line per second of the \
             last second's figures{}; Ctrl-C to stop",
            target.pid,
            target.python_version,
            if self.subprocesses {
                " and the Python processes below it"
            } else {
                ""
            },
            self.rate_hz,
            if self.subprocesses {
                ", per process"
            } else {
                ""
            }
        );
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(TopEnd::Quit);
            }
            let news = match self.receiver.recv_timeout(KEY_POLL) {
                Ok(news) => Ok(news),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => Err(()),
            };
            match self.hear(news)? {
                Heard::End(end) => return Ok(end),
                Heard::Slice(pid) => {
                    let elapsed = self.started.elapsed().as_secs_f64();
                    let Some((target, history)) = self.processes.iter().find(|(t, _)| t.pid == pid)
                    else {
                        continue;
                    };
                    let mut line =
                        live::plain_line(elapsed, history, &self.view, target.wait_measured);
                    if self.subprocesses {
                        line = format!("pid {pid}: {line}");
                    }
                    let mut out = std::io::stdout().lock();
                    // A closed pipe (`| head`) is the reader's way of saying it has enough.
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        return Ok(TopEnd::Quit);
                    }
                }
            }
        }
    }

    /// Draw the view on the terminal and follow the keys until quit or the target exits.
    fn on_terminal(mut self) -> Result<TopEnd> {
        let _terminal = Screen::enter()?;
        let mut keyboard = Keyboard::open();
        let mut dirty = true;
        let mut drawn = (0, 0);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(TopEnd::Quit);
            }
            if dirty {
                drawn = self.draw()?;
                dirty = false;
            }
            let size = terminal::size().map_err(terminal_error)?;
            if size != drawn {
                dirty = true;
                continue;
            }
            let keys = match keyboard.as_mut() {
                Some(keyboard) => match keyboard.keys(KEY_POLL) {
                    Ok(keys) => keys,
                    // The terminal hung up: nobody is watching.
                    Err(()) => return Ok(TopEnd::Quit),
                },
                None => {
                    std::thread::sleep(KEY_POLL);
                    Vec::new()
                }
            };
            for key in keys {
                match key {
                    Key::Quit => return Ok(TopEnd::Quit),
                    Key::SortHold => self.view.sort = live::SortBy::Hold,
                    Key::SortWait => self.view.sort = live::SortBy::Wait,
                    Key::ToggleIdle => self.view.show_idle = !self.view.show_idle,
                }
                dirty = true;
            }
            loop {
                let news = match self.receiver.try_recv() {
                    Ok(news) => Ok(news),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => Err(()),
                };
                match self.hear(news)? {
                    Heard::Slice(_) => dirty = true,
                    Heard::End(end) => return Ok(end),
                }
            }
        }
    }

    /// Draw the view to fit the terminal; the size it was drawn for.
    fn draw(&self) -> Result<(u16, u16)> {
        let (width, height) = terminal::size().map_err(terminal_error)?;
        let elapsed = self.started.elapsed().as_secs_f64();
        let lines = if self.subprocesses {
            let processes: Vec<(&TargetInfo, &History)> =
                self.processes.iter().map(|(t, h)| (t, h)).collect();
            live::screen_processes(
                self.root,
                &processes,
                self.rate_hz,
                elapsed,
                &self.view,
                width as usize,
                height as usize,
            )
        } else {
            let (target, history) = &self.processes[0];
            live::screen(
                target,
                self.rate_hz,
                elapsed,
                history,
                &self.view,
                width as usize,
                height as usize,
            )
        };
        let mut out = std::io::stdout().lock();
        queue!(out, cursor::MoveTo(0, 0)).map_err(terminal_error)?;
        // https://no-color.org: colour only where the user did not turn it off.
        let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        for (i, line) in lines.iter().enumerate() {
            let line = if colour {
                live::coloured(line)
            } else {
                line.clone()
            };
            queue!(
                out,
                cursor::MoveTo(0, i as u16),
                crossterm::style::Print(line),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )
            .map_err(terminal_error)?;
        }
        queue!(
            out,
            cursor::MoveTo(0, lines.len() as u16),
            terminal::Clear(terminal::ClearType::FromCursorDown)
        )
        .map_err(terminal_error)?;
        out.flush().map_err(terminal_error)?;
        Ok((width, height))
    }
}

/// A key that means something to the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Quit,
    SortHold,
    SortWait,
    ToggleIdle,
}

/// The terminal's input, read with poll(2) and read(2). (crossterm's event reader spins for
/// ever at full CPU on a terminal that has hung up; this one reports the hang-up.)
struct Keyboard {
    tty: std::fs::File,
}

impl Keyboard {
    /// The terminal: standard input if it is one, else /dev/tty; None if neither is there.
    fn open() -> Option<Keyboard> {
        let tty = if std::io::stdin().is_terminal() {
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(std::fs::File::from)
        } else {
            std::fs::File::open("/dev/tty").ok()
        }?;
        Some(Keyboard { tty })
    }

    /// The keys typed within `timeout`; Err when the terminal is gone.
    fn keys(&mut self, timeout: Duration) -> std::result::Result<Vec<Key>, ()> {
        let millis = timeout.as_millis().min(u16::MAX as u128) as u16;
        let mut fds = [PollFd::new(self.tty.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(_) => return Err(()),
        }
        let mut bytes = [0u8; 64];
        match self.tty.read(&mut bytes) {
            Ok(0) => Err(()),
            Ok(n) => Ok(parse_keys(&bytes[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(Vec::new()),
            Err(_) => Err(()),
        }
    }
}

/// Keys in what one read of the terminal gave. In raw mode Ctrl-C arrives as byte 3. An
/// escape sequence (an arrow key) starts with ESC and means nothing here; ESC alone quits.
fn parse_keys(bytes: &[u8]) -> Vec<Key> {
    if bytes == [0x1b] {
        return vec![Key::Quit];
    }
    if bytes.first() == Some(&0x1b) {
        return Vec::new();
    }
    bytes
        .iter()
        .filter_map(|b| match b {
            b'q' | b'Q' | 0x03 => Some(Key::Quit),
            b'h' | b'H' => Some(Key::SortHold),
            b'w' | b'W' => Some(Key::SortWait),
            b'i' | b'I' => Some(Key::ToggleIdle),
            _ => None,
        })
        .collect()
}

fn terminal_error(e: std::io::Error) -> Error {
    Error::Internal(format!("the terminal failed: {e}"))
}

/// The terminal in the view's mode (raw, alternate screen, no cursor) while this lives; put
/// back as it was when dropped, and before a panic's message is printed.
struct Screen;

impl Screen {
    fn enter() -> Result<Screen> {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            Screen::leave();
            default_hook(info);
        }));
        terminal::enable_raw_mode().map_err(terminal_error)?;
        let screen = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .map_err(terminal_error)?;
        Ok(screen)
    }

    fn leave() {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        Screen::leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_from_raw_bytes() {
        assert_eq!(parse_keys(b"q"), vec![Key::Quit]);
        assert_eq!(parse_keys(&[3]), vec![Key::Quit]);
        assert_eq!(parse_keys(&[0x1b]), vec![Key::Quit]);
        assert_eq!(parse_keys(b"\x1b[A"), vec![]);
        assert_eq!(
            parse_keys(b"wih"),
            vec![Key::SortWait, Key::ToggleIdle, Key::SortHold]
        );
        assert_eq!(parse_keys(b"xyz"), vec![]);
    }
}
