//! `callbridge dial`: place an outbound call through a running bridge's
//! admin port (`POST /calls`) and print its CallSid.
//!
//! The admin token comes from `CALLBRIDGE_ADMIN_TOKEN` or a file
//! (`--token-file`), never from a flag: command lines are visible to every
//! user of the machine in `ps`.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use callbridge::config::Secret;
use callbridge::outbound::client::dial as place;
use callbridge::outbound::CallRequest;

/// `callbridge dial`.
#[derive(Debug, clap::Args)]
pub struct DialArgs {
    /// The bridge's admin URL (its admin_listen address), e.g. http://127.0.0.1:9091.
    #[arg(long)]
    pub bridge: String,
    /// The number to call, E.164 (+ and 8-15 digits).
    #[arg(long)]
    pub to: String,
    /// Your Twilio number the call comes from, E.164.
    #[arg(long)]
    pub from: String,
    /// The assistant profile. Default: the profile answering --from, else `default`.
    #[arg(long)]
    pub profile: Option<String>,
    /// A small JSON object (at most 2 KiB) the assistant is given for this call, e.g.
    /// '{"name":"Ann","reason":"appointment reminder"}'.
    #[arg(long, value_name = "JSON")]
    pub context: Option<String>,
    /// Read the admin token from this file instead of CALLBRIDGE_ADMIN_TOKEN.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

fn admin_token(file: Option<&PathBuf>) -> anyhow::Result<Secret> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading --token-file {}", path.display()))?,
        None => std::env::var("CALLBRIDGE_ADMIN_TOKEN").unwrap_or_default(),
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("no admin token: set CALLBRIDGE_ADMIN_TOKEN (or pass --token-file)");
    }
    Ok(Secret::new(token))
}

pub fn dial(args: DialArgs) -> anyhow::Result<()> {
    let token = admin_token(args.token_file.as_ref())?;
    let context = match &args.context {
        None => None,
        // Sent as written: the bridge keeps the caller's tokens.
        Some(text) => Some(
            serde_json::value::RawValue::from_string(text.clone())
                .context("--context is not valid JSON")?,
        ),
    };
    let request = CallRequest {
        to: args.to,
        from: args.from,
        profile: args.profile,
        context,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let call_sid = runtime.block_on(place(&args.bridge, &token, &request))?;
    println!("{call_sid}");
    Ok(())
}
