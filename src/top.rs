//! `gilscope top`: sample in a thread, and every second redraw the live view on a terminal
//! (or print one plain line into a pipe). Owns the terminal, and always gives it back as it was.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, terminal};

use crate::error::{Error, Result};
use crate::record::{self, RecordOptions, Slices, Target};
use crate::report::live::{self, History, Slice, ViewState};
use crate::report::{EndReason, TargetInfo};
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
}

/// Why `top` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopEnd {
    /// q, Ctrl-C or a signal.
    Quit,
    TargetExited,
}

enum News {
    Slice(Box<Slice>),
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

/// Watch process `options.pid` until q, Ctrl-C, `stop` or its exit.
pub fn top(options: TopOptions, stop: Arc<AtomicBool>) -> Result<TopEnd> {
    let mut observer = record::attach(options.pid)?;
    let target = record::target_info(&observer);
    let (news, receiver) = mpsc::channel();
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let record_options = RecordOptions {
        target: Target::Pid(options.pid),
        rate_hz: options.rate_hz,
        duration: None,
        stacks: options.view.stacks,
        progress: None,
    };
    let thread = {
        let stop = sampler_stop.clone();
        std::thread::Builder::new()
            .name("gilscope-sampler".into())
            .spawn(move || {
                let mut cpu = process::cpu_times();
                let mut send =
                    |profile: crate::report::Profile,
                     observer: &crate::sample::observe::Observer<_>| {
                        let now = process::cpu_times();
                        let steal = process::steal_share(cpu, now);
                        cpu = now;
                        let slice = Slice::from_profile(&profile, observer.stack_table(), steal);
                        let _ = news.send(News::Slice(Box::new(slice)));
                    };
                let recording = record::run(
                    &mut observer,
                    None,
                    &record_options,
                    &stop,
                    None,
                    Some(Slices {
                        every: REFRESH,
                        sink: &mut send,
                    }),
                );
                let _ = news.send(News::Ended(recording.sampler.ended));
            })
            .map_err(|e| Error::Internal(format!("cannot start the sampler thread: {e}")))?
    };
    let sampler = Sampler {
        stop: sampler_stop,
        thread: Some(thread),
    };
    let watch = Watch {
        target,
        rate_hz: options.rate_hz,
        view: options.view,
        history: History::new(),
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
    target: TargetInfo,
    rate_hz: f64,
    view: ViewState,
    history: History,
    started: Instant,
    receiver: Receiver<News>,
    stop: Arc<AtomicBool>,
}

/// What a look at the sampler found.
enum Heard {
    Slice,
    End(TopEnd),
}

impl Watch {
    fn hear(&mut self, news: std::result::Result<News, ()>) -> Result<Heard> {
        match news {
            Ok(News::Slice(slice)) => {
                self.history.push(*slice);
                Ok(Heard::Slice)
            }
            Ok(News::Ended(EndReason::TargetExited)) => Ok(Heard::End(TopEnd::TargetExited)),
            Ok(News::Ended(_)) => Ok(Heard::End(TopEnd::Quit)),
            Err(()) => Err(Error::Internal("the sampler thread stopped".into())),
        }
    }

    /// Print one line per refresh until stopped or the target exits.
    fn in_plain_lines(mut self) -> Result<TopEnd> {
        eprintln!(
            "gilscope: watching process {} (Python {}) at {} Hz; a line per second of the last \
             second's figures; Ctrl-C to stop",
            self.target.pid, self.target.python_version, self.rate_hz
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
                Heard::Slice => {
                    let line = live::plain_line(
                        self.started.elapsed().as_secs_f64(),
                        &self.history,
                        &self.view,
                    );
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
        let mut dirty = true;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(TopEnd::Quit);
            }
            if dirty {
                self.draw()?;
                dirty = false;
            }
            if event::poll(KEY_POLL).map_err(terminal_error)? {
                match event::read().map_err(terminal_error)? {
                    Event::Key(key) if key.kind != KeyEventKind::Release => {
                        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
                        match key.code {
                            KeyCode::Char('c') if ctrl => return Ok(TopEnd::Quit),
                            KeyCode::Char('q' | 'Q') | KeyCode::Esc => return Ok(TopEnd::Quit),
                            KeyCode::Char('h' | 'H') => self.view.sort = live::SortBy::Hold,
                            KeyCode::Char('w' | 'W') => self.view.sort = live::SortBy::Wait,
                            KeyCode::Char('i' | 'I') => self.view.show_idle = !self.view.show_idle,
                            _ => continue,
                        }
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
            loop {
                let news = match self.receiver.try_recv() {
                    Ok(news) => Ok(news),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => Err(()),
                };
                match self.hear(news)? {
                    Heard::Slice => dirty = true,
                    Heard::End(end) => return Ok(end),
                }
            }
        }
    }

    fn draw(&self) -> Result<()> {
        let (width, height) = terminal::size().map_err(terminal_error)?;
        let lines = live::screen(
            &self.target,
            self.rate_hz,
            self.started.elapsed().as_secs_f64(),
            &self.history,
            &self.view,
            width as usize,
            height as usize,
        );
        let mut out = std::io::stdout().lock();
        queue!(out, cursor::MoveTo(0, 0)).map_err(terminal_error)?;
        for (i, line) in lines.iter().enumerate() {
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
        out.flush().map_err(terminal_error)
    }
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
