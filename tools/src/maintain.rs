//! `tessera gc` and `tessera repack`: reclaiming space.

use std::io::{self, Write};
use std::time::Duration;

use tessera::{GcOptions, GcReport, RepackOptions};

use crate::location::Location;
use crate::{human, open_store, out_err, progress_bar, write_json, CliError, CliResult};

/// Options GC and repack share.
#[derive(clap::Args, Debug)]
pub(crate) struct GcArgs {
    /// Keep unnamed files stored, and packs sealed, less than this long ago
    /// (uploads in flight name their files last). `0s` collects everything
    /// unnamed; only safe when nothing writes. A whole number of s, m, h or
    /// d (a bare number is seconds).
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_duration)]
    grace: Duration,
    /// Report what would be reclaimed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// On an s3:// store other nodes write too: how long to wait between
    /// publishing what is condemned and deleting it, so writers on other
    /// nodes see it first (at least twice their 30 s writer check; the GC
    /// lease is held meanwhile). Ignored for a directory store.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_duration)]
    writer_window: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `repack`'s options.
#[derive(clap::Args, Debug)]
pub(crate) struct RepackArgs {
    #[command(flatten)]
    gc: GcArgs,
    /// Rewrite packs whose live bytes are below this fraction of their size.
    #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
    threshold: f64,
    /// Then rewrite more packs, least live first, until the garbage left
    /// inside packs is at most this fraction of the stored bytes (1 turns
    /// this off).
    #[arg(long, default_value_t = 0.05, value_name = "FRACTION")]
    max_garbage: f64,
    /// Re-encode copied chunks with the store's codec (slower) instead of
    /// copying their stored bytes.
    #[arg(long)]
    recompress: bool,
    /// Leave small packs as they are (by default packs under a quarter of
    /// the pack size are combined when there are two or more).
    #[arg(long)]
    no_combine: bool,
}

/// Parses `90`, `90s`, `15m`, `1h`, `7d`; at most 100 years
/// ([`tessera::MAX_DURATION`]), so no clock arithmetic on it overflows or
/// wraps (a huge `--grace` must not become none).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    const WANT: &str = "want a whole number of seconds, or of a unit (s, m, h, d), e.g. 90m";
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: {WANT}"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ if unit.starts_with(['.', ',']) => {
            return Err(format!("{s:?}: not a whole number; {WANT}"))
        }
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; {WANT}")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .filter(|d| *d <= tessera::MAX_DURATION)
        .ok_or_else(|| too_long(s))
}

fn too_long(s: &str) -> String {
    format!(
        "{s:?}: too long (at most {} s, 100 years)",
        tessera::MAX_DURATION.as_secs()
    )
}

/// Parses a number of seconds, at most 100 years ([`tessera::MAX_DURATION`]):
/// longer spans would overflow the clock arithmetic done with them.
pub(crate) fn parse_secs(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: want a whole number of seconds"))?;
    if n > tessera::MAX_DURATION.as_secs() {
        return Err(too_long(s));
    }
    Ok(n)
}

fn gc_options(a: &GcArgs) -> GcOptions {
    GcOptions {
        grace: a.grace,
        dry_run: a.dry_run,
        writer_window: a.writer_window,
        ..GcOptions::default()
    }
}

fn progress() -> (indicatif::ProgressBar, impl FnMut(&str, u64, u64)) {
    let pb = progress_bar(0);
    let bar = pb.clone();
    (pb, move |phase: &str, done: u64, total: u64| {
        bar.set_message(phase.to_string());
        bar.set_length(total);
        bar.set_position(done);
    })
}

fn print_gc(out: &mut impl Write, r: &GcReport) -> CliResult {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    writeln!(
        out,
        "gc: {verb} {} of {} files and {} of {} packs ({} young packs kept); {} reclaimed; packs {} -> {}; live chunk data {} ({:.1}s)",
        r.dead_files,
        r.files,
        r.dead_packs,
        r.packs,
        r.young_packs,
        human(r.reclaimed_bytes),
        human(r.stored_bytes_before),
        human(r.stored_bytes_after),
        human(r.live_bytes),
        r.seconds
    )
    .map_err(out_err)?;
    if r.duplicate_bytes > 0 {
        writeln!(
            out,
            "gc: {} of chunks stored twice by nodes at once (repack reclaims them)",
            human(r.duplicate_bytes)
        )
        .map_err(out_err)?;
    }
    for d in &r.damaged {
        writeln!(out, "DAMAGED  {d}").map_err(out_err)?;
    }
    Ok(())
}

/// Exit 4 when GC met damage it worked around (with `--json` too: the
/// report says what, the status that the store holds damage).
fn met_damage(r: &GcReport) -> CliResult {
    if r.damaged.is_empty() {
        Ok(())
    } else {
        Err(CliError::Damaged(format!(
            "gc met {} damaged chunk copies that live files name (listed above); run `tessera repair index`",
            r.damaged.len()
        )))
    }
}

pub(crate) fn gc(loc: &Location, args: GcArgs, wait: bool) -> CliResult {
    let store = open_store(loc, false, wait)?;
    let (pb, mut cb) = progress();
    let rep = store.gc_with_progress(&gc_options(&args), &mut cb)?;
    pb.finish_and_clear();
    store.close()?;
    let mut out = io::stdout().lock();
    if args.json {
        write_json(&mut out, &rep)?;
    } else {
        print_gc(&mut out, &rep)?;
    }
    met_damage(&rep)
}

pub(crate) fn repack(loc: &Location, args: RepackArgs, wait: bool) -> CliResult {
    for (flag, v) in [
        ("--threshold", args.threshold),
        ("--max-garbage", args.max_garbage),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(CliError::Usage(format!(
                "{flag} {v}: want a fraction between 0 and 1"
            )));
        }
    }
    let store = open_store(loc, false, wait)?;
    let (pb, mut cb) = progress();
    let opts = RepackOptions {
        threshold: args.threshold,
        max_garbage: args.max_garbage,
        combine_small: !args.no_combine,
        recompress: args.recompress,
        gc: gc_options(&args.gc),
    };
    let rep = store.repack_with_progress(&opts, &mut cb)?;
    pb.finish_and_clear();
    store.close()?;
    let mut out = io::stdout().lock();
    if args.gc.json {
        write_json(&mut out, &rep)?;
        return left_alone(&rep);
    }
    print_gc(&mut out, &rep.gc)?;
    for s in &rep.skipped {
        writeln!(out, "SKIPPED  {s}").map_err(out_err)?;
    }
    if rep.dry_run {
        // What a run would write is known only by copying: a dry run says
        // what it would rewrite and the live bytes that stay.
        let live = rep
            .stored_bytes_after
            .saturating_add(rep.bytes_rewritten)
            .saturating_sub(rep.stored_bytes_before);
        writeln!(
            out,
            "repack: would rewrite {} packs ({}) holding {} live; packs {} -> {} ({:.1}s)",
            rep.candidates,
            human(rep.bytes_rewritten),
            human(live),
            human(rep.stored_bytes_before),
            human(rep.stored_bytes_after),
            rep.seconds
        )
        .map_err(out_err)?;
    } else {
        writeln!(
            out,
            "repack: rewrote {} packs ({}) into {} ({} chunks, {} recipes switched); packs {} -> {} ({:.1}s)",
            rep.packs_rewritten,
            human(rep.bytes_rewritten),
            rep.packs_written,
            rep.chunks_copied,
            rep.recipes_rewritten,
            human(rep.stored_bytes_before),
            human(rep.stored_bytes_after),
            rep.seconds
        )
        .map_err(out_err)?;
    }
    left_alone(&rep)
}

/// Exit 4 when repack left a pack alone because a chunk in it does not
/// verify (with `--json` too: the report says which, the status that the
/// store holds damage).
fn left_alone(rep: &tessera::RepackReport) -> CliResult {
    met_damage(&rep.gc)?;
    if rep.skipped.is_empty() {
        Ok(())
    } else {
        Err(CliError::Damaged(format!(
            "{} packs were left alone because a chunk in them does not verify; run `tessera verify`",
            rep.skipped.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_numbers_of_a_unit_or_of_seconds() {
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
        let e = parse_duration("1.5h").expect_err("fraction");
        assert!(e.contains("not a whole number") && e.contains("90m"), "{e}");
        let e = parse_duration("1w").expect_err("unit");
        assert!(e.contains("unknown unit \"w\""), "{e}");
        let e = parse_duration("-1s").expect_err("sign");
        assert!(e.contains("whole number of seconds"), "{e}");
        assert!(parse_duration("36600d")
            .expect_err("long")
            .contains("too long"));
    }
}
