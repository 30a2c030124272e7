//! `callbridge demo`: arguments, narration and the printed report. The
//! demo itself is [`callbridge_sim::demo::run`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use callbridge::audio::AudioMode;
use callbridge::config::Dialect;
use callbridge_sim::demo::{run_with, tool_arguments, DemoOptions, GOODBYE_WINDOW};
use callbridge_sim::first_turn::{measure, FirstTurn};
use callbridge_sim::tool_server::LOOKUP_ORDER;

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
    /// Talk over the echo of the caller's request once this many ms of it
    /// have been heard.
    #[arg(long, default_value_t = 1500, value_name = "MS")]
    pub barge_in_after: u64,
    /// The local peer holds each WebSocket handshake this many ms, standing for a
    /// real provider's connect time (what pre-warm hides).
    #[arg(long, default_value_t = 0, value_name = "MS", value_parser = clap::value_parser!(u64).range(..=10_000))]
    pub connect_delay_ms: u64,
    /// Run with realtime.prewarm = false: the model session is opened when the
    /// stream starts, not at the voice webhook.
    #[arg(long)]
    pub no_prewarm: bool,
    /// The simulated Twilio waits this many ms between the webhook's answer and
    /// opening the stream (Twilio fetches the TwiML, then connects the stream).
    #[arg(long, default_value_t = 0, value_name = "MS", value_parser = clap::value_parser!(u64).range(..=10_000))]
    pub stream_gap_ms: u64,
    /// Measure the first turn only (the greeting call) and skip the demo call: one
    /// line, for tables.
    #[arg(long)]
    pub first_turn_only: bool,
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
/// answered by `clear`, the tool round trip, the assistant ending the call
/// after its goodbye, no errors), so the README's first command cannot pass
/// silently when something is broken.
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
        "callbridge demo: bridge + local {protocol} peer + tool endpoint + simulated caller on 127.0.0.1 ({} dialect, {} mode)",
        args.dialect, args.mode
    );
    eprintln!(
        "(the local peer is a test tool, not a model: it echoes your words back, calls {LOOKUP_ORDER} after your first words, and says goodbye and calls end_call on your third turn)"
    );
    let options = DemoOptions {
        barge_in_after: Duration::from_millis(args.barge_in_after),
        connect_delay: Duration::from_millis(args.connect_delay_ms),
        prewarm: !args.no_prewarm,
        stream_gap: Duration::from_millis(args.stream_gap_ms),
        ..DemoOptions::new(args.dialect, args.mode)
    };
    if args.first_turn_only {
        let turn = runtime.block_on(measure(options.first_turn()))?;
        println!("{}", first_turn_line(&args, &turn));
        if !turn.errors.is_empty() {
            bail!("the first-turn call had errors: {}", turn.errors.join("; "));
        }
        return Ok(());
    }
    let demo = runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let narrator = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                eprintln!("{}", super::sim::describe(&event, true));
            }
        });
        let result = run_with(&options, Some(tx)).await;
        let _ = narrator.await;
        result
    })?;
    let (report, side) = (&demo.call, &demo.bridge);
    report
        .write_stereo_wav(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let ms = |d: Option<Duration>| {
        d.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.3} ms", d.as_secs_f64() * 1e3),
        )
    };
    let secs = |d: Option<Duration>| {
        d.map_or_else(|| "-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
    };
    println!("{report}");
    println!("bridge side");
    println!(
        "  frames relayed    {} caller frames to the model, {} media messages of answer audio to Twilio",
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
    println!("{}", first_turn_line(&args, &demo.first_turn));
    println!("the assistant acting");
    let outcome = if side.tool_calls_ok > 0 && side.tool_calls_failed == 0 {
        "ok".to_owned()
    } else {
        format!(
            "{} ok, {} failed",
            side.tool_calls_ok, side.tool_calls_failed
        )
    };
    println!(
        "  tool call         {LOOKUP_ORDER} {} at {}: {outcome} in {} (bridge: tool_calls_total{{name=\"{LOOKUP_ORDER}\",outcome=\"ok\"}} = {})",
        tool_arguments(),
        secs(demo.tool_called_at),
        ms(side.tool_duration),
        side.tool_calls_ok
    );
    match demo.tool_requests.first() {
        Some(request) => println!(
            "  tool endpoint saw POST /{LOOKUP_ORDER} for call {} (profile {}), arguments {}; answered {} {}",
            request.call_sid().unwrap_or("?"),
            request.call("profile").unwrap_or("?"),
            request
                .arguments()
                .map_or_else(|| "none".to_owned(), ToString::to_string),
            request.status,
            request.answer
        ),
        None => println!("  tool endpoint saw nothing"),
    }
    println!(
        "  end_call          {} call, with the goodbye; once that was heard: REST hang-up (Status=completed) at the local stand-in for Twilio's API, {} ok",
        side.end_calls, side.rest_hangups
    );
    println!(
        "  goodbye heard     {:.2} s of answer audio in the {} s before the close, the last of it {} before",
        demo.ending.goodbye_heard.as_secs_f64(),
        GOODBYE_WINDOW.as_secs(),
        secs(demo.ending.quiet_before_close)
    );
    let ended = demo.ended_by_assistant();
    match &ended {
        Ok(()) => println!(
            "  call ended        by the assistant after its goodbye was heard: stream closed with 1000 at {}, the caller still on the line",
            secs(demo.ending.closed_at)
        ),
        Err(why) => println!("  call ended        NOT by the assistant: {why}"),
    }
    match side.cost_usd {
        Some(cost) if args.dialect.is_live() => println!(
            "  estimated cost    ${cost:.4} for {:.1} s of GPT-Live session time (callbridge_call_cost_usd, at [pricing]'s default live_per_minute; the local peer reports usage as the service does)",
            side.model_seconds
        ),
        Some(cost) => println!(
            "  estimated cost    ${cost:.4} for {} input and {} output tokens (callbridge_call_cost_usd, at [pricing]'s default gpt-realtime prices; the local peer reports usage as the service does)",
            side.input_tokens, side.output_tokens
        ),
        None => println!("  estimated cost    - (the bridge did not count the call)"),
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
    if let Err(why) = demo.tool_round_trip() {
        bail!("the tool round trip did not happen: {why}");
    }
    if let Err(why) = ended {
        bail!("the assistant did not end the call: {why}");
    }
    Ok(())
}

/// The "first turn" line: the greeting call measured before the demo call.
fn first_turn_line(args: &DemoArgs, turn: &FirstTurn) -> String {
    let ms = |d: Option<Duration>| {
        d.map_or_else(
            || "-".to_owned(),
            |d| format!("{:.0} ms", d.as_secs_f64() * 1e3),
        )
    };
    let prewarm = match (args.no_prewarm, turn.prewarm_hit) {
        (true, _) => "off",
        (false, true) => "on (hit)",
        (false, false) => "on (miss)",
    };
    format!(
        "  first turn        pre-warm {prewarm}, model connect {} ms, stream {} ms after the webhook: start -> model ready {} (bridge), start -> first answer audio {} (caller; a greeting, on a call of its own)",
        args.connect_delay_ms,
        args.stream_gap_ms,
        ms(turn.model_ready),
        ms(turn.first_answer)
    )
}
