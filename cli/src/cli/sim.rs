//! The `callbridge call` and `callbridge loadtest` commands: argument
//! definitions and what they print. Kept here rather than in `main.rs` so
//! the binary only wires subcommands, and so the output format lives next
//! to the reports it prints.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use url::Url;

use callbridge::config::Secrets;
use callbridge_sim::{caller, loadtest, BargeIn, CallOptions, LoadOptions, Progress, Transport};

/// How to reach a bridge behind TLS: shared by `call` and `loadtest`.
#[derive(Debug, clap::Args)]
pub struct ReachArgs {
    /// Also trust the CA certificates in this PEM file for https:// and
    /// wss:// (a private CA), besides the public web roots.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Connect to ADDR (ip:port) whenever a URL's host is HOST, like curl's
    /// --resolve; TLS and the Host header still use HOST, and signatures the
    /// URL as given. Repeatable. E.g. bridge.example.com:203.0.113.5:443.
    #[arg(long, value_name = "HOST:ADDR")]
    pub resolve: Vec<String>,
}

impl ReachArgs {
    fn transport(&self) -> anyhow::Result<Transport> {
        Ok(Transport::new(self.ca_file.as_deref(), &self.resolve)?)
    }
}

/// `callbridge call`: one simulated Twilio call against a running bridge.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The bridge's base URL (its public URL: the http:// or https:// address
    /// Twilio uses), e.g. http://127.0.0.1:8080 or https://bridge.example.com.
    #[arg(long)]
    pub bridge: Url,
    #[command(flatten)]
    pub reach: ReachArgs,
    /// What the caller says: .ulaw (μ-law 8 kHz) or 16-bit mono .wav (8 or 24 kHz).
    /// Default: a built-in six-second spoken request (the demo's).
    #[arg(long)]
    pub audio: Option<PathBuf>,
    /// Where to write what the caller heard (PCM16 8 kHz WAV).
    #[arg(long, default_value = "call-heard.wav")]
    pub out: PathBuf,
    /// Talk over the answer once this many ms of it have been heard.
    #[arg(long, value_name = "MS")]
    pub barge_in_after: Option<u64>,
    /// What the caller says when barging in. Default: a built-in interjection.
    #[arg(long)]
    pub barge_in_audio: Option<PathBuf>,
    /// Silence sent after the audio before hanging up, in seconds (the
    /// call also stays up until the answer has finished).
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub trailing_silence: f64,
    /// Hang up after this many seconds whatever happens.
    #[arg(long, default_value_t = 120.0, value_name = "SECS")]
    pub max_duration: f64,
    /// Answer an outbound call instead of calling in: the file holds the
    /// TwiML the bridge sent Twilio in `Calls.json` (needs --call-sid, the
    /// SID the REST API returned). The webhook is skipped.
    #[arg(long, value_name = "FILE", requires = "call_sid")]
    pub twiml: Option<PathBuf>,
    /// The call's SID (`CA` + 32 hex digits); default: a random one.
    #[arg(long, value_name = "SID")]
    pub call_sid: Option<String>,
}

/// `callbridge loadtest`: N concurrent simulated calls, relay latency and
/// bridge CPU/memory.
#[derive(Debug, clap::Args)]
pub struct LoadtestArgs {
    /// The bridge's base URL (http:// or https://), e.g. http://127.0.0.1:8080.
    /// Its realtime.url should be `callbridge echo-realtime --mode loopback`.
    #[arg(long)]
    pub bridge: Url,
    #[command(flatten)]
    pub reach: ReachArgs,
    /// Concurrent calls (at most 5000).
    #[arg(long)]
    pub calls: u32,
    /// Seconds each call sends audio (at most 3600).
    #[arg(long, value_name = "SECS")]
    pub duration: f64,
    /// Seconds over which the calls start (clamped to --duration).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub ramp: f64,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// The bridge's process id, for CPU and memory (default: the process
    /// listening on the bridge URL's port, if it can be found).
    #[arg(long, value_name = "PID")]
    pub bridge_pid: Option<u32>,
    /// Caller audio, looped (.ulaw or .wav); default: a built-in tone pattern.
    #[arg(long)]
    pub audio: Option<PathBuf>,
}

fn seconds(what: &str, secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("{what}: invalid number of seconds"))
}

fn auth_token() -> anyhow::Result<Option<String>> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let secrets = Secrets::from_env(&env)?;
    Ok(secrets.twilio_auth_token.map(|s| s.expose().to_owned()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Places the call, narrates it on stderr, prints the summary on stdout and
/// writes what was heard. Fails (non-zero exit) when the call could not be
/// placed or had errors.
pub fn call(args: CallArgs) -> anyhow::Result<()> {
    let audio = match &args.audio {
        Some(path) => callbridge_sim::load_audio(path)?,
        None => callbridge_sim::demo::SPEECH.to_vec(),
    };
    let mut opts = CallOptions::new(args.bridge, audio);
    opts.transport = args.reach.transport()?;
    opts.auth_token = auth_token()?;
    opts.trailing_silence = seconds("--trailing-silence", args.trailing_silence)?;
    opts.max_duration = seconds("--max-duration", args.max_duration)?;
    opts.call_sid = args.call_sid;
    if let Some(path) = &args.twiml {
        opts.twiml = Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --twiml {}", path.display()))?,
        );
    }
    if let Some(ms) = args.barge_in_after {
        opts.barge_in = Some(BargeIn {
            audio: match &args.barge_in_audio {
                Some(path) => callbridge_sim::load_audio(path)?,
                None => callbridge_sim::demo::BARGE_IN.to_vec(),
            },
            after_heard: Duration::from_millis(ms),
        });
    }
    let signed = opts.auth_token.is_some();
    let report = runtime()?.block_on(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let narrator = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                eprintln!("{}", describe(&event, signed));
            }
        });
        let report = caller::place_call(opts, Some(tx)).await;
        let _ = narrator.await;
        report
    })?;
    report.write_heard_wav(&args.out)?;
    println!("{report}");
    println!("  heard audio       {}", args.out.display());
    if !report.errors.is_empty() {
        bail!(
            "the call had {} error(s), listed above",
            report.errors.len()
        );
    }
    Ok(())
}

pub(crate) fn describe(event: &Progress, signed: bool) -> String {
    let t = |at: &Duration| format!("[{:>6.2} s]", at.as_secs_f64());
    match event {
        Progress::Streaming {
            call_sid,
            stream_url,
            ..
        } => format!(
            "[  0.00 s] call {call_sid} answered; streaming to {stream_url} ({})",
            if signed { "signed" } else { "unsigned" }
        ),
        Progress::AnswerStarted { at, turn, latency } => match latency {
            Some(l) => format!(
                "{} answer {turn} starts, {} ms after the caller stopped speaking",
                t(at),
                l.as_millis()
            ),
            None => format!("{} answer {turn} starts", t(at)),
        },
        Progress::BargeIn { at } => format!("{} caller talks over the answer", t(at)),
        Progress::Cleared { at, dropped_ms } => {
            format!("{} clear: {dropped_ms} ms of queued answer dropped", t(at))
        }
        Progress::Stopped { at } => format!("{} caller hangs up (stop)", t(at)),
        Progress::Closed { at, code } => format!(
            "{} bridge closed the stream (code {})",
            t(at),
            code.map_or_else(|| "none".to_owned(), |c| c.to_string())
        ),
    }
}

/// Runs the load test and prints the summary or one JSON object. Fails
/// when a call failed, after printing the report.
pub fn loadtest(args: LoadtestArgs) -> anyhow::Result<()> {
    let mut opts = LoadOptions::new(
        args.bridge,
        args.calls,
        seconds("--duration", args.duration)?,
    );
    opts.ramp = seconds("--ramp", args.ramp)?;
    opts.transport = args.reach.transport()?;
    opts.bridge_pid = args.bridge_pid;
    opts.auth_token = auth_token()?;
    if let Some(path) = &args.audio {
        opts.audio = callbridge_sim::load_audio(path)?;
    }
    let report = runtime()?.block_on(loadtest::run(opts))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    if report.calls_failed > 0 {
        bail!(
            "{} of {} calls failed (see errors)",
            report.calls_failed,
            report.calls
        );
    }
    Ok(())
}
