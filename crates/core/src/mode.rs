//! Which pre-dump mode and which dirty tracking a pre-dump uses: the names a
//! caller may give (`--pre-dump-mode`, `--track-mem`), the combinations that
//! are refused, and what `auto` resolves to. This is the one place that
//! decides: the binding converts its options with [`resolve`], the CLI passes
//! the names through (and has them checked by [`check_names`] before it
//! touches anything), and `predump check` prints [`default_mode`]'s answer.
//! A tree's mode is decided here too: [`check_tree`] and [`resolve_tree`]
//! (its `auto`, [`DEFAULT_TREE_MODE`]; what it can run, [`tree_runs`]).

use crate::predump::Mode;
use crate::track::Backend;
use crate::{Error, Result};

/// A mode asked for: `auto`, or one mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeRequest {
    Auto,
    Mode(Mode),
}

/// A dirty tracking asked for: `auto`, or one backend (`none` is
/// [`Backend::None`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackRequest {
    Auto,
    Backend(Backend),
}

/// A pre-dump's mode and tracking, `auto` resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub mode: Mode,
    /// None: no tracking, every pre-dump is a full one.
    pub backend: Option<Backend>,
    /// The tracking was `auto`: where it cannot work with the process, the
    /// pre-dump goes on without it (see `predump::TrackOptions::auto`).
    pub auto_track: bool,
}

impl Mode {
    /// The mode named `name` ("read", "splice", "freeze-free").
    pub fn parse(name: &str) -> Option<Mode> {
        [Mode::Read, Mode::Splice, Mode::FreezeFree]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

impl Backend {
    /// The backend named `name` ("soft-dirty", "uffd-wp", "none").
    pub fn parse(name: &str) -> Option<Backend> {
        [Backend::SoftDirty, Backend::UffdWp, Backend::None]
            .into_iter()
            .find(|b| b.name() == name)
    }
}

/// Checks the names and their combination, probing nothing. `mode` absent is
/// `auto`; `track_mem` absent is `none` (the CLI passes `auto` by default).
/// The messages are the CLI's (code EINVAL).
pub fn check_names(
    mode: Option<&str>,
    track_mem: Option<&str>,
    final_dump: bool,
) -> Result<(ModeRequest, TrackRequest)> {
    let mode_name = mode.unwrap_or("auto");
    if final_dump && mode_name != "read" && mode_name != "auto" {
        return Err(Error::InvalidArgument(format!(
            "a final dump copies while frozen throughout: it has no {mode_name} mode"
        )));
    }
    let mode = match mode_name {
        "auto" => ModeRequest::Auto,
        name => ModeRequest::Mode(Mode::parse(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown pre-dump mode '{name}': use auto, read, splice or freeze-free"
            ))
        })?),
    };
    let track_name = track_mem.unwrap_or("none");
    let track = match track_name {
        "auto" => TrackRequest::Auto,
        name => TrackRequest::Backend(Backend::parse(name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "unknown dirty tracking '{name}': use auto, uffd-wp, soft-dirty or none"
            ))
        })?),
    };
    if mode == ModeRequest::Mode(Mode::FreezeFree)
        && !matches!(
            track,
            TrackRequest::Auto | TrackRequest::Backend(Backend::UffdWp)
        )
    {
        return Err(Error::InvalidArgument(format!(
            "the freeze-free mode needs uffd-wp dirty tracking, not '{track_name}'"
        )));
    }
    Ok((mode, track))
}

/// The names checked and `auto` resolved on this machine (the probes run once
/// per process: see [`Backend::detect`]).
pub fn resolve(mode: Option<&str>, track_mem: Option<&str>, final_dump: bool) -> Result<Choice> {
    let (mode, track) = check_names(mode, track_mem, final_dump)?;
    usable(
        track,
        decide(
            mode,
            track,
            final_dump,
            || Backend::UffdWp.works(),
            Backend::detect,
        ),
        soft_dirty_missing,
    )
}

/// Why soft-dirty tracking does not work here (the probe of `predump check`),
/// or None where it does.
fn soft_dirty_missing() -> Option<String> {
    match crate::probe::soft_dirty() {
        Ok(p) if p.supported => None,
        Ok(p) => Some(p.detail),
        Err(e) => Some(e.to_string()),
    }
}

/// `choice`, unless it tracks with soft-dirty asked for by name on a kernel
/// that keeps no soft-dirty bits (`missing` says why, as the probe does).
/// There the kernel accepts clear_refs 4 and never sets bit 55: every page
/// would look unwritten, and a pre-dump on a parent would leave the pages
/// written since to it, images that restore the wrong memory. (uffd-wp asked
/// for where it does not work fails on its own, at its first ioctl.)
fn usable(
    track: TrackRequest,
    choice: Choice,
    missing: impl FnOnce() -> Option<String>,
) -> Result<Choice> {
    if track != TrackRequest::Backend(Backend::SoftDirty) {
        return Ok(choice);
    }
    match missing() {
        None => Ok(choice),
        Some(why) => Err(Error::InvalidArgument(format!(
            "soft-dirty tracking does not work on this kernel ({why}): use --track-mem \
             uffd-wp, auto or none ('predump check' says which work)"
        ))),
    }
}

/// [`resolve`] without I/O: `uffd_wp_works` and `detect` answer what the
/// probes would.
pub fn decide(
    mode: ModeRequest,
    track: TrackRequest,
    final_dump: bool,
    uffd_wp_works: impl FnOnce() -> bool,
    detect: impl FnOnce() -> Backend,
) -> Choice {
    let backend = match track {
        TrackRequest::Backend(Backend::None) => None,
        TrackRequest::Backend(b) => Some(b),
        // The freeze-free mode asked for: its tracking is uffd-wp, though auto
        // would otherwise take soft-dirty where both work (6.12).
        TrackRequest::Auto if mode == ModeRequest::Mode(Mode::FreezeFree) && uffd_wp_works() => {
            Some(Backend::UffdWp)
        }
        TrackRequest::Auto => match detect() {
            Backend::None => None,
            b => Some(b),
        },
    };
    let mode = match mode {
        ModeRequest::Mode(m) => m,
        ModeRequest::Auto => default_mode(backend.unwrap_or(Backend::None), final_dump),
    };
    Choice {
        mode,
        backend,
        auto_track: track == TrackRequest::Auto,
    }
}

/// What mode `auto` takes with tracking `backend`: freeze-free where uffd-wp
/// tracking is used (not for a final dump, frozen throughout), else read.
pub fn default_mode(backend: Backend, final_dump: bool) -> Mode {
    match backend {
        Backend::UffdWp if !final_dump => Mode::FreezeFree,
        _ => Mode::Read,
    }
}

/// What `--pre-dump-mode auto` takes on a tree: read mode (docs/TREES.md,
/// "Freeze-free pre-dumps of a tree" and "Splice mode on a tree", say why);
/// freeze-free and splice are taken only when asked for.
pub const DEFAULT_TREE_MODE: Mode = Mode::Read;

/// Whether a tree pre-dump can run in `mode`, into a directory or to a page
/// server: every mode does (splice since 2026-12-05, see `tree_dump::splice`).
pub fn tree_runs(mode: Mode, _to_page_server: bool) -> bool {
    match mode {
        Mode::Read | Mode::FreezeFree | Mode::Splice => true,
    }
}

/// The mode a tree pre-dump takes for `mode` (auto: [`DEFAULT_TREE_MODE`]),
/// or why it cannot run it (code EINVAL). `processes`, where known, is named
/// in the message ("a tree of 4 processes").
pub fn tree_mode(
    mode: ModeRequest,
    to_page_server: bool,
    processes: Option<usize>,
) -> Result<Mode> {
    let mode = match mode {
        ModeRequest::Auto => DEFAULT_TREE_MODE,
        ModeRequest::Mode(m) => m,
    };
    if tree_runs(mode, to_page_server) {
        return Ok(mode);
    }
    let tree = match processes {
        Some(n) => format!("a tree of {n} processes"),
        None => "a tree".to_string(),
    };
    Err(Error::InvalidArgument(format!(
        "the {} mode is not supported on {tree} yet: use --pre-dump-mode read, \
         freeze-free or auto",
        mode.name()
    )))
}

/// [`check_names`] and [`tree_mode`], probing nothing: a tree's mode and the
/// tracking asked for.
pub fn check_tree(
    mode: Option<&str>,
    track_mem: Option<&str>,
    final_dump: bool,
    to_page_server: bool,
    processes: Option<usize>,
) -> Result<(Mode, TrackRequest)> {
    let (mode, track) = check_names(mode, track_mem, final_dump)?;
    Ok((tree_mode(mode, to_page_server, processes)?, track))
}

/// A tree pre-dump's mode and tracking: [`check_tree`], then the tracking
/// resolved as for one process in that mode.
pub fn resolve_tree(
    mode: Option<&str>,
    track_mem: Option<&str>,
    final_dump: bool,
    to_page_server: bool,
    processes: Option<usize>,
) -> Result<Choice> {
    let (mode, track) = check_tree(mode, track_mem, final_dump, to_page_server, processes)?;
    usable(
        track,
        decide(
            ModeRequest::Mode(mode),
            track,
            final_dump,
            || Backend::UffdWp.works(),
            Backend::detect,
        ),
        soft_dirty_missing,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_dirty_by_name_only_where_it_works() {
        let choice = Choice {
            mode: Mode::Read,
            backend: Some(Backend::SoftDirty),
            auto_track: false,
        };
        let by_name = TrackRequest::Backend(Backend::SoftDirty);
        assert_eq!(usable(by_name, choice, || None).unwrap(), choice);
        match usable(by_name, choice, || {
            Some("CONFIG_MEM_SOFT_DIRTY is off".into())
        }) {
            Err(Error::InvalidArgument(m)) => assert_eq!(
                m,
                "soft-dirty tracking does not work on this kernel (CONFIG_MEM_SOFT_DIRTY is \
                 off): use --track-mem uffd-wp, auto or none ('predump check' says which work)"
            ),
            other => panic!("expected EINVAL, got {other:?}"),
        }
        // auto never takes soft-dirty where the probe says no (detect), and other
        // requests are not probed.
        for track in [TrackRequest::Auto, TrackRequest::Backend(Backend::UffdWp)] {
            assert!(usable(track, choice, || panic!("not asked")).is_ok());
        }
    }

    fn invalid(mode: Option<&str>, track: Option<&str>, final_dump: bool) -> String {
        match check_names(mode, track, final_dump) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected EINVAL, got {other:?}"),
        }
    }

    #[test]
    fn names() {
        for m in [Mode::Read, Mode::Splice, Mode::FreezeFree] {
            assert_eq!(Mode::parse(m.name()), Some(m));
        }
        for b in [Backend::SoftDirty, Backend::UffdWp, Backend::None] {
            assert_eq!(Backend::parse(b.name()), Some(b));
        }
        assert_eq!(Mode::parse("auto"), None);
        assert_eq!(Backend::parse("auto"), None);
        assert_eq!(
            check_names(None, None, false).unwrap(),
            (ModeRequest::Auto, TrackRequest::Backend(Backend::None))
        );
    }

    #[test]
    fn refused_names_and_combinations() {
        assert_eq!(
            invalid(Some("fast"), None, false),
            "unknown pre-dump mode 'fast': use auto, read, splice or freeze-free"
        );
        assert_eq!(
            invalid(None, Some("dirty"), false),
            "unknown dirty tracking 'dirty': use auto, uffd-wp, soft-dirty or none"
        );
        assert_eq!(
            invalid(Some("splice"), Some("auto"), true),
            "a final dump copies while frozen throughout: it has no splice mode"
        );
        assert_eq!(
            invalid(Some("freeze-free"), Some("soft-dirty"), false),
            "the freeze-free mode needs uffd-wp dirty tracking, not 'soft-dirty'"
        );
        assert!(check_names(Some("freeze-free"), Some("uffd-wp"), false).is_ok());
        assert!(check_names(Some("read"), Some("auto"), true).is_ok());
    }

    #[test]
    fn auto_resolved() {
        let never = || -> bool { panic!("not asked") };
        let choose = |mode, track, final_dump, uffd_wp: bool, detected: Backend| {
            decide(mode, track, final_dump, || uffd_wp, || detected)
        };
        // auto with auto: freeze-free where auto tracking takes uffd-wp.
        let c = choose(
            ModeRequest::Auto,
            TrackRequest::Auto,
            false,
            true,
            Backend::UffdWp,
        );
        assert_eq!(
            (c.mode, c.backend, c.auto_track),
            (Mode::FreezeFree, Some(Backend::UffdWp), true)
        );
        // ... read where it takes soft-dirty (6.12 has both), or a final dump.
        let c = choose(
            ModeRequest::Auto,
            TrackRequest::Auto,
            false,
            true,
            Backend::SoftDirty,
        );
        assert_eq!((c.mode, c.backend), (Mode::Read, Some(Backend::SoftDirty)));
        let c = choose(
            ModeRequest::Auto,
            TrackRequest::Auto,
            true,
            true,
            Backend::UffdWp,
        );
        assert_eq!((c.mode, c.backend), (Mode::Read, Some(Backend::UffdWp)));
        let c = choose(
            ModeRequest::Auto,
            TrackRequest::Auto,
            false,
            false,
            Backend::None,
        );
        assert_eq!((c.mode, c.backend), (Mode::Read, None));
        // freeze-free asked for takes uffd-wp over soft-dirty where uffd-wp works.
        let ff = ModeRequest::Mode(Mode::FreezeFree);
        let c = choose(ff, TrackRequest::Auto, false, true, Backend::SoftDirty);
        assert_eq!(
            (c.mode, c.backend),
            (Mode::FreezeFree, Some(Backend::UffdWp))
        );
        let c = choose(ff, TrackRequest::Auto, false, false, Backend::SoftDirty);
        assert_eq!(
            (c.mode, c.backend),
            (Mode::FreezeFree, Some(Backend::SoftDirty))
        );
        // A backend named is taken as it is, without probing.
        let c = decide(
            ModeRequest::Auto,
            TrackRequest::Backend(Backend::UffdWp),
            false,
            never,
            || panic!("not asked"),
        );
        assert_eq!(
            (c.mode, c.backend, c.auto_track),
            (Mode::FreezeFree, Some(Backend::UffdWp), false)
        );
        let c = decide(
            ModeRequest::Mode(Mode::Splice),
            TrackRequest::Backend(Backend::None),
            false,
            never,
            || panic!("not asked"),
        );
        assert_eq!((c.mode, c.backend), (Mode::Splice, None));
    }

    #[test]
    fn tree_modes() {
        let tree = |mode, ps| check_tree(mode, Some("auto"), false, ps, Some(4));
        // auto is read on a tree, whatever one process would take.
        assert_eq!(DEFAULT_TREE_MODE, Mode::Read);
        assert_eq!(tree(None, false).unwrap().0, Mode::Read);
        assert_eq!(tree(Some("auto"), true).unwrap().0, Mode::Read);
        assert_eq!(tree(Some("read"), true).unwrap().0, Mode::Read);
        assert_eq!(
            tree(Some("freeze-free"), false).unwrap().0,
            Mode::FreezeFree
        );
        let refused = |r: Result<(Mode, TrackRequest)>| match r {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected EINVAL, got {other:?}"),
        };
        // Splice mode runs on a tree, to a page server too; so does freeze-free.
        assert_eq!(tree(Some("splice"), false).unwrap().0, Mode::Splice);
        assert_eq!(tree(Some("splice"), true).unwrap().0, Mode::Splice);
        assert_eq!(tree(Some("freeze-free"), true).unwrap().0, Mode::FreezeFree);
        // The names are checked first, with one process's messages.
        assert_eq!(
            refused(check_tree(Some("splice"), None, true, false, Some(4))),
            "a final dump copies while frozen throughout: it has no splice mode"
        );
        assert_eq!(
            refused(check_tree(
                Some("freeze-free"),
                Some("none"),
                false,
                false,
                Some(4)
            )),
            "the freeze-free mode needs uffd-wp dirty tracking, not 'none'"
        );
        assert_eq!(
            check_tree(None, Some("soft-dirty"), false, false, None).unwrap(),
            (Mode::Read, TrackRequest::Backend(Backend::SoftDirty))
        );
        // What runs on a tree: the route a process alone with shared memory takes.
        assert!(tree_runs(Mode::Read, true));
        assert!(tree_runs(Mode::FreezeFree, false));
        assert!(tree_runs(Mode::FreezeFree, true));
        assert!(tree_runs(Mode::Splice, false));
        assert!(tree_runs(Mode::Splice, true));
    }
}
