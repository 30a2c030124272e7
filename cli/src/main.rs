//! The `callbridge` command line: parses arguments and calls the library.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod cli;

use callbridge::config::{Config, LogFormat, Secrets};
use callbridge::metrics::Metrics;
use callbridge::server::Server;
use callbridge_sim::echo::{EchoMode, EchoOptions, EchoProtocol, ToolCall};

#[derive(Parser)]
#[command(
    name = "callbridge",
    version,
    about = "Bridge Twilio phone calls to OpenAI Realtime speech-to-speech models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: Twilio webhook and Media Streams; metrics and probes on the admin port.
    ///
    /// Twilio's endpoints (/voice, /media, /stream-status) are served on `listen`
    /// (default 0.0.0.0:8080); /metrics, /healthz and /readyz on `admin_listen`
    /// (default 0.0.0.0:9091). SIGTERM or Ctrl-C drains: /readyz turns 503, no new
    /// calls, live calls run on for up to `drain_timeout` seconds.
    #[command(after_help = SERVE_REQUIRED)]
    Serve {
        /// TOML configuration file (see config/default.toml); env overrides it.
        #[arg(long, env = "CALLBRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Try it with no phone, keys or network: bridge, local Realtime peer and a simulated
    /// caller on loopback; a whole call with a barge-in; prints a report, writes a stereo WAV.
    Demo(cli::demo::DemoArgs),
    /// Place a simulated Twilio call against a running bridge (signed with TWILIO_AUTH_TOKEN when set).
    Call(cli::sim::CallArgs),
    /// Place a real outbound call through a running bridge (POST /calls on its admin port); prints the CallSid.
    ///
    /// The admin token is read from CALLBRIDGE_ADMIN_TOKEN (or --token-file), never
    /// from a flag. The bridge needs the same token, Twilio REST credentials and
    /// TWILIO_ACCOUNT_SID.
    Dial(cli::dial::DialArgs),
    /// N concurrent simulated calls in real time: relay latency, lost/late frames, bridge CPU and memory.
    Loadtest(cli::sim::LoadtestArgs),
    /// Audio tools that use exactly the code calls use.
    Audio {
        #[command(subcommand)]
        command: AudioCommand,
    },
    /// A local model peer (a test tool, not a model): OpenAI Realtime or GPT-Live; detects speech by energy and speaks the caller's words back.
    ///
    /// Point the bridge at it with realtime.url = ws://ADDR/v1/realtime (Realtime; send
    /// `OpenAI-Beta: realtime=v1` for beta event names) or ws://ADDR/v1/live/sessions
    /// (`--protocol live`). Any path works. No API key, no network.
    EchoRealtime(EchoRealtimeArgs),
}

/// `serve --help`: what it cannot run without (checked by `Server::missing_settings`).
const SERVE_REQUIRED: &str = "\
Required settings (every missing one is reported in one error):
  public_url         the https://host[:port] Twilio uses to reach this server:
                     CALLBRIDGE_PUBLIC_URL, or public_url in the config file
  OPENAI_API_KEY     (or OPENAI_API_KEY_FILE) when realtime.url is OpenAI's or
                     Azure's service, as the default URL is
  TWILIO_AUTH_TOKEN  (or TWILIO_AUTH_TOKEN_FILE) while twilio.validate_signatures
                     is true, as it is by default

Every other key has a default (config/default.toml lists them all). The
environment overrides the file: CALLBRIDGE_<SECTION>__<KEY>, e.g.
CALLBRIDGE_REALTIME__URL; top-level keys have no section (CALLBRIDGE_LISTEN,
CALLBRIDGE_ADMIN_LISTEN, CALLBRIDGE_MAX_CALLS).";

#[derive(clap::Args)]
struct EchoRealtimeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// What to do with the caller's audio.
    #[arg(long, value_enum, default_value = "turn")]
    mode: EchoMode,
    /// The model protocol to speak.
    #[arg(long, value_enum, default_value = "realtime")]
    protocol: EchoProtocol,
    /// After the caller's first turn, call this function (NAME:ARGS_JSON, e.g.
    /// 'lookup_order:{"order_id":"123"}'; NAME alone means {}). Realtime: the response
    /// to that turn is the function call; after the client's function_call_output and
    /// response.create the peer speaks the output. GPT-Live: the call is delegated to
    /// the Responses backend. The function must be declared (Realtime: session.tools;
    /// GPT-Live: session.delegation.responses.tools), else the peer logs a warning and
    /// answers the turn normally.
    #[arg(long, value_name = "NAME:ARGS_JSON", value_parser = clap::value_parser!(ToolCall))]
    tool_call: Option<ToolCall>,
    /// On the caller's Nth turn, say "Goodbye, thanks for calling." and call the end_call
    /// tool with {"reason":"the caller is done"} (Realtime: one response with the goodbye
    /// and the function call; GPT-Live: the goodbye, then a delegated call). Needs a
    /// function named end_call declared in the session; without one the peer logs and
    /// answers normally.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    end_call_after: Option<u32>,
    /// Hold each WebSocket handshake this many ms before answering it, to stand for
    /// a real provider's connect time (TLS, upgrade, session placement), which on
    /// loopback is next to nothing. The session setup itself is answered at once.
    #[arg(long, value_name = "MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(..=60_000))]
    connect_delay_ms: u64,
}

#[derive(Subcommand)]
enum AudioCommand {
    /// Convert between raw μ-law 8 kHz (.ulaw) and PCM16 mono WAV (.wav, 8 or 24 kHz).
    Convert {
        /// Input file (.ulaw or .wav).
        input: PathBuf,
        /// Output file (.ulaw or .wav).
        output: PathBuf,
        /// Sample rate of a .wav output: 8000 or 24000 (default: the input's rate).
        #[arg(long)]
        rate: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("callbridge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Audio {
            command:
                AudioCommand::Convert {
                    input,
                    output,
                    rate,
                },
        } => {
            let report = callbridge::audio::convert::convert(&input, &output, rate)?;
            println!("{report}");
            Ok(())
        }
        Command::Serve { config } => serve(config),
        Command::Demo(args) => cli::demo::demo(args),
        Command::Call(args) => cli::sim::call(args),
        Command::Dial(args) => cli::dial::dial(args),
        Command::Loadtest(args) => cli::sim::loadtest(args),
        Command::EchoRealtime(args) => echo_realtime(args),
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only for a person at a terminal: a file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = Config::load(config_path.as_deref(), &env)?;
    let secrets = Secrets::from_env(&env)?;
    init_logging(config.log.format, &config.log.level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let server = Server::new(config.clone(), secrets, Metrics::new())?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding listen address {}", config.listen))?;
        let admin = tokio::net::TcpListener::bind(config.admin_listen)
            .await
            .with_context(|| format!("binding admin_listen address {}", config.admin_listen))?;
        tracing::info!(
            listen = %listener.local_addr()?,
            admin_listen = %admin.local_addr()?,
            public_url = config.public_url.as_deref().unwrap_or(""),
            // Never the query: an Azure URL may carry a key there.
            model_url = %config.realtime_url().map(|u| callbridge::config::redact_query(&u)).unwrap_or_default(),
            dialect = %config.realtime.dialect,
            audio_mode = %config.audio.mode,
            max_calls = config.max_calls,
            "callbridge serving"
        );
        server.run(listener, admin, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

fn echo_realtime(args: EchoRealtimeArgs) -> anyhow::Result<()> {
    let EchoRealtimeArgs {
        listen,
        mode,
        protocol,
        tool_call,
        end_call_after,
        connect_delay_ms,
    } = args;
    if mode == EchoMode::Loopback && (tool_call.is_some() || end_call_after.is_some()) {
        anyhow::bail!("--tool-call and --end-call-after need --mode turn");
    }
    init_logging(LogFormat::Text, "info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding listen address {listen}"))?;
        println!(
            "echo-realtime ({protocol}) listening on ws://{}{}",
            listener.local_addr()?,
            protocol.path()
        );
        let options = EchoOptions {
            protocol,
            mode,
            tool_call,
            end_call_after,
            connect_delay: Duration::from_millis(connect_delay_ms),
            ..EchoOptions::default()
        };
        callbridge_sim::echo::serve(listener, options, shutdown_signal()).await?;
        anyhow::Ok(())
    })
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
