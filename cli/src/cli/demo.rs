//! `callbridge demo`: arguments, narration and the printed report. The
//! demo itself is [`callbridge_sim::demo::run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use callbridge::audio::AudioMode;
use callbridge::config::Dialect;
use callbridge_sim::demo::run;

/// `callbridge demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to write the call (stereo WAV: caller left, heard right).
    #[arg(long, default_value = "demo-call.wav")]
    pub out: PathBuf,
    /// `pcm16` (transcode to 24 kHz) or `pcmu` (μ-law passed through).
    #[arg(long, default_value = "pcm16")]
    pub mode: AudioMode,
    /// The model protocol: `ga`, `beta` or `azure` (OpenAI Realtime), `live` or
    /// `azure-live` (GPT-Live). The local peer speaks whichever is chosen.
    #[arg(long, default_value = "ga", value_parser = parse_dialect)]
    pub dialect: Dialect,
    /// Talk over the answer once this many ms of it have been heard.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    pub barge_in_after: u64,
}

fn parse_dialect(s: &str) -> Result<Dialect, String> {
    Dialect::ALL
        .into_iter()
        .find(|d| d.as_str() == s)
        .ok_or_else(|| {
            let names: Vec<&str> = Dialect::ALL.iter().map(|d| d.as_str()).collect();
            format!(
                "unknown dialect {s:?} (expected one of {})",
                names.join(", ")
            )
        })
}

/// The CLI: narrates the call, prints the report, writes the WAV. Exits
/// non-zero if the call did not go as a demo call must (a turn, a barge-in
/// answered by `clear`, no errors), so the README's first command cannot
/// pass silently when something is broken.
pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let protocol = if args.dialect.is_live() {
        "GPT-Live"
    } else {
        "Realtime"
    };
    eprintln!(
        "callbridge demo: bridge + local {protocol} peer + simulated caller on 127.0.0.1 ({} dialect, {} mode)",
        args.dialect, args.mode
    );
    eprintln!(
        "(the local peer is a test tool, not a model: it answers by echoing your words back)"
    );
    let (report, side) = runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let narrator = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                eprintln!("{}", super::sim::describe(&event, true));
            }
        });
        let result = run(
            args.dialect,
            args.mode,
            Duration::from_millis(args.barge_in_after),
            Some(tx),
        )
        .await;
        let _ = narrator.await;
        result
    })?;
    report
        .write_stereo_wav(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let ms = |d: Option<Duration>| {
        d.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.3} ms", d.as_secs_f64() * 1e3),
        )
    };
    println!("{report}");
    println!("bridge side");
    println!(
        "  frames relayed    {} in, {} out (20 ms frames to Twilio)",
        side.frames_in, side.frames_out
    );
    if args.dialect.is_live() {
        println!("  barge-ins         none by the bridge: the GPT-Live model yields by itself (no clear, cancel or truncate exist)");
        println!("  turn latency      not measured here: GPT-Live signals no end of the caller's speech (see 'first answer' above, measured by the caller)");
    } else {
        println!(
            "  barge-ins         {} (truncations sent: {})",
            side.bargeins, side.truncations
        );
        println!(
            "  barge-in reaction {} (bridge-side: the model's speech_started received -> clear sent)",
            ms(side.bargein_reaction)
        );
        println!(
            "  turn latency      {} (bridge-side: the model's speech_stopped -> first answer audio sent; the caller-side figure above adds the network and the model's VAD)",
            ms(side.turn_latency)
        );
    }
    println!(
        "  call recording    {} (caller left, heard right)",
        args.out.display()
    );
    if !report.errors.is_empty() {
        bail!(
            "the demo call had {} error(s), listed above",
            report.errors.len()
        );
    }
    // Realtime: the bridge stops playback with `clear`. GPT-Live: the model
    // yields by itself and the bridge sends nothing special.
    let stopped = if args.dialect.is_live() {
        report.talk_over_stop.is_some() && report.clears == 0
    } else {
        report.clears > 0 && side.bargeins > 0
    };
    if report.turns == 0 || report.bargeins == 0 || !stopped {
        bail!(
            "the demo call did not complete a turn with a barge-in (turns {}, barge-ins {}, clears {}, talk-over stop {:?})",
            report.turns,
            report.bargeins,
            report.clears,
            report.talk_over_stop
        );
    }
    Ok(())
}
